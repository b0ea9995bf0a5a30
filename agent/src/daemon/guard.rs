//! Keeping the pins in place and checking, against the kernel, that every
//! program is still attached.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::kernel::pins::{Attachment, PinDamage, PinRepair};

/// How often pins are checked: a removed pin is back well within a
/// second. A check lists the two pin folders and compares inode numbers,
/// so it costs a few system calls however many pins there are.
const GUARD_INTERVAL: Duration = Duration::from_millis(250);

/// Every how many pin checks the kernel is asked whether each program is
/// still attached (a call or two per program, some forty in all): every
/// 2 s. It is most of what an idle daemon does (`cargo xtask bench idle`).
const ATTACHMENT_EVERY: u32 = 8;

/// Puts back pins that were removed or replaced, and reports programs the
/// kernel no longer runs: in the audit log, the metrics and `/readyz`
/// (which `ready` answers).
///
/// An idle daemon must cost nothing measurable next to the agents it
/// watches, so a tick that finds everything in place touches neither the
/// daemon's state nor its lock.
pub(super) async fn guard_pins(
    daemon: Weak<Daemon>,
    pins: Arc<PinDir>,
    cgroup_root: PathBuf,
    ready: Arc<AtomicBool>,
) {
    let mut interval = tokio::time::interval(GUARD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Programs reported detached, so each change is recorded once.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    let mut ticks: u32 = 0;
    loop {
        interval.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let repairs = pins.repair();
        let check_attachment = ticks.is_multiple_of(ATTACHMENT_EVERY) || !repairs.is_empty();
        ticks = ticks.wrapping_add(1);
        if !check_attachment {
            continue;
        }
        // A removed cgroup took its attachment with it.
        let pruned = daemon
            .backstop
            .lock()
            .map(|mut backstop| backstop.prune())
            .unwrap_or_default();
        if !pruned.is_empty() {
            let dirs: Vec<String> = pruned.iter().map(|d| d.display().to_string()).collect();
            tracing::info!(cgroups = %dirs.join(", "), "packet backstop: attachments of removed cgroups forgotten");
        }
        let detached: BTreeMap<String, String> = pins
            .attachment(&cgroup_root)
            .into_iter()
            .filter_map(|(program, state)| match state {
                Attachment::Detached(why) => Some((program, why)),
                Attachment::Attached => None,
            })
            .collect();
        ready.store(detached.is_empty(), Ordering::Release);
        if repairs.is_empty() && detached == reported {
            continue;
        }
        let Ok(mut state) = daemon.policy.lock() else {
            return;
        };
        state.metrics.set_programs_detached(detached.len());
        for repair in repairs {
            state.record_repair(&repair);
        }
        let host = state.host.clone();
        for (program, why) in &detached {
            if reported.get(program) != Some(why) {
                let message = format!(
                    "control off: program {program} is not attached ({why}); what it enforces is NOT enforced until the daemon restarts"
                );
                tracing::error!("{message}");
                state.record(AuditRecord::lifecycle(&host, "daemon", message));
            }
        }
        for program in reported.keys() {
            if !detached.contains_key(program) {
                let message = format!("program {program} is attached again");
                tracing::info!("{message}");
                state.record(AuditRecord::lifecycle(&host, "daemon", message));
            }
        }
        reported = detached;
    }
}

impl PolicyService {
    /// Records a pin found missing or replaced, and counts it.
    fn record_repair(&mut self, repair: &PinRepair) {
        let (kind, object) = if repair.pin.starts_with("maps/") {
            ("map", "map")
        } else {
            ("link", "program")
        };
        let found = match repair.damage {
            PinDamage::Missing => "was removed".to_string(),
            PinDamage::Replaced(id) => {
                format!(
                    "named another object (id {id} instead of {})",
                    repair.held_id
                )
            }
            PinDamage::Unreadable => "held something that is not a pinned object".to_string(),
        };
        // bpffs tells no one who unlinked a file. Where BPF LSM holds the
        // agents, their attempts are denied and recorded with the process;
        // a removal that succeeded came from outside every agent.
        let who = if self.held_by_bpf_lsm {
            "no agent can change the pins here (BPF LSM denies it and records the process that tried), so a process in no agent did this"
        } else {
            "the process that did this is not known: bpffs names no remover, and without BPF LSM no kernel hook sees the change"
        };
        let message = match &repair.result {
            Ok(()) => format!(
                "pin {}/{} {found}; the daemon's own descriptor kept the {object} in force, and the pin is restored; {who}",
                self.pin_dir.display(),
                repair.pin
            ),
            Err(error) => format!(
                "pin {}/{} {found} and cannot be restored ({error}); the daemon's own descriptor keeps the {object} in force while it runs, but a restarted daemon cannot adopt it; {who}",
                self.pin_dir.display(),
                repair.pin
            ),
        };
        tracing::warn!("{message}");
        self.metrics
            .record_pin_restored(kind, repair.damage.as_str());
        let host = self.host.clone();
        self.record(AuditRecord::lifecycle(&host, "daemon", message));
    }

    /// The daemon's programs the kernel does not run, with why, asked of
    /// the kernel now.
    pub(super) fn detached_programs(&self) -> BTreeMap<String, String> {
        self.pins
            .attachment(&self.cgroup_root)
            .into_iter()
            .filter_map(|(program, state)| match state {
                Attachment::Detached(why) => Some((program, why)),
                Attachment::Attached => None,
            })
            .collect()
    }
}

//! Keeping the pins in place and checking, against the kernel, that every
//! program is still attached.

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use nix::sys::inotify::{AddWatchFlags, AddWatchFlags as InotifyMask, InitFlags, Inotify};

use super::*;
use crate::kernel::pins::{Attachment, PinDamage, PinRepair};

/// How often, at the latest, every pin is listed and the kernel is asked
/// whether each program is still attached (a call or two per program,
/// some forty in all). A pin removed, renamed or pinned over is seen at
/// once through inotify on the pin folders; this pass finds what inotify
/// cannot report (a link detached with `bpftool link detach`, events lost
/// to a full inotify queue). It is most of what an idle daemon does
/// (`cargo xtask bench idle`).
const GUARD_INTERVAL: Duration = Duration::from_secs(2);

/// Changes in the pin folders wake the guard.
const PIN_FOLDER_CHANGES: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The inotify instance watching the pin folders, registered with tokio.
struct PinWatch(Inotify);

impl AsRawFd for PinWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PinWatch {
    /// Watches the pin directory and its `maps/` and `links/` folders.
    /// Called again after every repair: a folder removed and made anew is
    /// a new inode, which the old watch does not see.
    fn watch(&self, pins: &Path) {
        for folder in [pins.to_path_buf(), pins.join("maps"), pins.join("links")] {
            // A folder that is missing is made again by the repair this
            // change sets off, which then calls here again.
            let _ = self.0.add_watch(&folder, PIN_FOLDER_CHANGES);
        }
    }

    /// Reads every queued event. A folder moved away keeps its watch,
    /// which is dropped here, so renaming the folders in a loop cannot
    /// pile up watches.
    fn drain(&self) {
        while let Ok(changes) = self.0.read_events() {
            for change in changes {
                if change.mask.contains(InotifyMask::IN_MOVE_SELF) {
                    let _ = self.0.rm_watch(change.wd);
                }
            }
        }
    }
}

/// The guard's inotify instance, or `None` (the periodic pass alone then
/// keeps the pins) when the kernel refuses one.
fn pin_watch(pins: &Path) -> Option<AsyncFd<PinWatch>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .inspect_err(|error| {
            tracing::warn!(%error, "no inotify for the pin folders: a removed pin is put back within {} s instead of at once", GUARD_INTERVAL.as_secs());
        })
        .ok()?;
    // SAFETY: `PinWatch` owns the descriptor and the `AsyncFd` owns the
    // `PinWatch`, so the descriptor outlives the registration.
    let watch = unsafe { AsyncFd::register(PinWatch(inotify)) }.ok()?;
    watch.get_ref().watch(pins);
    Some(watch)
}

/// Waits for the next pass: the interval's tick (`true`: a full pass) or a
/// change in the pin folders (`false`: the pins only).
async fn next_pass(
    interval: &mut tokio::time::Interval,
    watch: Option<&AsyncFd<PinWatch>>,
) -> bool {
    let Some(watch) = watch else {
        interval.tick().await;
        return true;
    };
    tokio::select! {
        _ = interval.tick() => true,
        ready = watch.readable() => {
            if let Ok(mut ready) = ready {
                ready.get_inner().drain();
                ready.clear_ready();
            }
            false
        }
    }
}

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
    let watch = pin_watch(pins.path());
    // Programs reported detached, so each change is recorded once.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let full = next_pass(&mut interval, watch.as_ref()).await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let repairs = pins.repair();
        if !repairs.is_empty()
            && let Some(watch) = &watch
        {
            watch.get_ref().watch(pins.path());
        }
        if !full && repairs.is_empty() {
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

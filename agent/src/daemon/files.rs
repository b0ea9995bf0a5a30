//! File and exec rules where BPF LSM is refused: the fanotify listener
//! and what each agent's rights are held by.

use super::*;

/// The fanotify listener, where BPF LSM does not enforce file rules.
pub(super) fn start_fanotify(
    enforcer: &Enforcer,
    maps: &PolicyMaps,
    runtime: &RuntimeMaps,
    allowed: bool,
    landlock_audit: bool,
) -> (
    Option<crate::fallback::fanotify::Watcher>,
    Option<tokio::sync::mpsc::Receiver<crate::fallback::fanotify::Finding>>,
) {
    if enforcer.files == ControlState::Enforced {
        return (None, None);
    }
    if !allowed {
        tracing::warn!("the fanotify fallback is switched off (files.fanotify: false)");
        return (None, None);
    }
    let started = maps
        .identity_handle()
        .and_then(|identity| {
            Ok((
                identity,
                maps.exited_handle()?,
                runtime.state_handle()?,
                runtime.taints_handle()?,
            ))
        })
        .map_err(|e| e.to_string())
        .and_then(|(identity, exited, state, taints)| {
            crate::fallback::fanotify::Watcher::start(
                identity,
                exited,
                state,
                taints,
                landlock_audit,
            )
            .map_err(|e| e.to_string())
        });
    match started {
        Ok((watcher, events)) => (Some(watcher), Some(events)),
        Err(error) => {
            tracing::warn!(%error, "no fanotify fallback");
            (None, None)
        }
    }
}

/// Writes the fanotify listener's decisions to the audit trail, as kernel
/// file events are. Takes the writer's lock alone, like the event drain:
/// the listener's losses come from its own handle, not from `PolicyService`.
pub(super) async fn record_fanotify_events(
    daemon: Weak<Daemon>,
    listener: crate::fallback::fanotify::FallbackCounter,
    host: String,
    mut events: tokio::sync::mpsc::Receiver<crate::fallback::fanotify::Finding>,
) {
    let clock = Clock::new();
    let mut processes = ProcessCache::default();
    let mut lost_recorded = 0;
    let mut overflows_recorded = 0;
    while let Some(finding) = events.recv().await {
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let Ok(mut writer) = daemon.writer.lock() else {
            return;
        };
        let event = match finding {
            crate::fallback::fanotify::Finding::Decision(event) => event,
            crate::fallback::fanotify::Finding::Degraded(message) => {
                writer.record(AuditRecord::lifecycle(&host, "file", message));
                continue;
            }
        };
        // SAFETY: `FileEvent` is plain old data; the bytes are read as the
        // ring buffer's are.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&*event as *const agent_common::event::FileEvent).cast::<u8>(),
                size_of::<agent_common::event::FileEvent>(),
            )
        };
        match writer.decoder().decode(bytes, &clock, &mut processes) {
            Ok(record) => writer.record(record),
            Err(error) => tracing::warn!(%error, "undecodable fanotify decision"),
        }
        for (now, recorded, reason) in [
            (
                listener.lost(),
                &mut lost_recorded,
                "the fanotify listener's queue was full; every decision was still made",
            ),
            (
                listener.landlock_lost(),
                &mut overflows_recorded,
                "Landlock's denial reports overflowed the daemon's audit socket (count: overflows, not reports); those denials stood but are not recorded",
            ),
        ] {
            if now > *recorded {
                writer.record(AuditRecord::suppressed(
                    &host,
                    None,
                    now - *recorded,
                    reason,
                ));
                *recorded = now;
            }
        }
        drop(writer);
        daemon.breakers_due.notify_one();
    }
}

impl PolicyService {
    /// Brings the fanotify marks and rules in line with the policies in
    /// force, and records what cannot be watched.
    pub(super) fn refresh_fanotify(&mut self) {
        let Some(watcher) = self.fanotify.as_mut() else {
            return;
        };
        let unwatched = watcher.update(
            &self.policies,
            self.registry.ids(),
            self.maps.active_generation(),
            &self.protected,
        );
        let host = self.host.clone();
        for what in unwatched {
            let message = format!("control degraded: fanotify does not enforce {what}");
            tracing::warn!("{message}");
            self.record(AuditRecord::lifecycle(&host, "file", message));
        }
    }

    /// Per right, which mechanism holds `agent` to its file and exec rules.
    pub(super) fn file_coverage(
        &self,
        agent: &crate::policy::compile::CompiledAgent,
    ) -> BTreeMap<&'static str, String> {
        crate::fallback::fanotify::coverage(
            agent,
            self.files_enforced,
            crate::fallback::landlock::landlock_abi().is_some(),
            self.fanotify.is_some(),
            self.detection,
        )
    }

    /// One "control degraded" record per agent, saying per right which
    /// mechanism applies.
    pub(super) fn record_file_coverage(&mut self) {
        let lines: Vec<(String, String)> = self
            .policies
            .agents
            .iter()
            .map(|(name, agent)| {
                let rights = self.file_coverage(agent);
                let text = rights
                    .iter()
                    .map(|(right, how)| format!("{right}: {how}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                (name.to_string(), text)
            })
            .collect();
        let host = self.host.clone();
        for (agent, text) in lines {
            let message = format!("control degraded: file and exec rules of agent {agent}: {text}");
            tracing::warn!("{message}");
            let mut record = AuditRecord::lifecycle(&host, "file", message);
            record.agent = Some(agent);
            self.record(record);
        }
        if self.fanotify.is_none() {
            let message = if self.detection {
                "control degraded: fanotify is unavailable or switched off, so file and exec rules of agents selected by cgroup, unit or executable are only detected, not enforced"
            } else {
                "control degraded: fanotify is unavailable, so file and exec rules are NOT enforced for agents selected by cgroup, unit or executable"
            }
            .to_string();
            tracing::warn!("{message}");
            self.record(AuditRecord::lifecycle(&host, "file", message));
        }
    }
}

//! Handing over to the next daemon: what it needs saved, and taking over
//! from the previous one.

use super::*;

/// The pins and the state a previous daemon left.
pub(super) struct Takeover {
    pub(super) pins: PinDir,
    pub(super) handover: StateDir,
    pub(super) registry: Option<Registry>,
}

impl State {
    /// Saves agent ids and rule names for a daemon that takes over from
    /// this one.
    pub(super) fn save_registry(&self) {
        let registry = Registry {
            agents: self
                .registry
                .ids()
                .iter()
                .map(|(name, id)| (name.to_string(), *id))
                .collect(),
            first_rule_id: self.policies.first_rule_id,
            rules: self.policies.rules.clone(),
        };
        if let Err(error) = self.handover.save_registry(&registry) {
            tracing::error!(%error, "cannot save the agent registry; a restart may misname queued events");
        }
    }

    /// Saves the counters reported so far and the open breakers, when they
    /// changed.
    pub(super) fn save_progress(&mut self) {
        let mut progress = Progress {
            pid: std::process::id(),
            suppressions_recorded: self
                .suppressions_recorded
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            drops_recorded: self.drops_recorded.iter().map(|(k, v)| (*k, *v)).collect(),
            counters: self
                .registry
                .ids()
                .values()
                .map(|id| (*id, self.counters(*id).into()))
                .collect(),
            open_breakers: self
                .breakers
                .lock()
                .expect("breakers lock poisoned")
                .engine()
                .open_breakers()
                .into_iter()
                .map(|(agent_id, agent, breaker, action, reason)| OpenBreaker {
                    agent_id,
                    agent,
                    breaker,
                    action,
                    reason,
                })
                .collect(),
            fallback_counters: self
                .fanotify
                .as_ref()
                .map(|watcher| {
                    watcher
                        .counts()
                        .into_iter()
                        .map(|(agent_id, counts)| {
                            let mut counters = agent_common::identity::AgentCounters::default();
                            counts.add_to(&mut counters);
                            (agent_id, counters.into())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ..Progress::default()
        };
        if progress == self.saved_progress {
            return;
        }
        let unchanged = progress.clone();
        progress.saved_at = crate::audit::record::format_time(std::time::SystemTime::now());
        match self.handover.save_progress(&progress) {
            Ok(()) => self.saved_progress = unchanged,
            Err(error) => tracing::error!(%error, "cannot save progress for a restart"),
        }
    }

    /// Takes over from a previous daemon whose pins were adopted: reports
    /// what happened while no daemon ran, continues loss accounting where
    /// it stopped, and re-opens its breakers.
    pub(super) fn take_over(&mut self, previous: Option<Progress>) {
        let host = self.host.clone();
        let links = self
            .adopted
            .iter()
            .filter(|p| p.starts_with("links/"))
            .count();
        let maps = self
            .adopted
            .iter()
            .filter(|p| p.starts_with("maps/"))
            .count();
        let previous_desc = previous.as_ref().map_or_else(
            || "no saved state".to_string(),
            |p| format!("pid {}, state saved at {}", p.pid, p.saved_at),
        );
        self.record(AuditRecord::lifecycle(
            &host,
            "daemon",
            format!(
                "adopted {links} links and {maps} maps pinned under {} by a previous daemon ({previous_desc}); enforcement continued while no daemon ran",
                self.pin_dir.display()
            ),
        ));
        let Some(previous) = previous else {
            // Without saved state, a quarantine still in the kernel is the
            // only breaker left to find.
            for (name, id) in self.registry.ids().clone() {
                let quarantined = self
                    .breakers
                    .lock()
                    .expect("breakers lock poisoned")
                    .runtime()
                    .quarantined(id);
                if quarantined {
                    let counters = self.counters(id).into();
                    self.breakers
                        .lock()
                        .expect("breakers lock poisoned")
                        .engine()
                        .restore(
                            id,
                            name.as_str(),
                            "restored",
                            Action::Quarantine,
                            "quarantined in the kernel when the daemon started",
                            counters,
                        );
                }
            }
            return;
        };
        if let Some(watcher) = &self.fanotify {
            let saved = previous
                .fallback_counters
                .iter()
                .map(|(agent_id, saved)| {
                    (
                        *agent_id,
                        crate::fallback::fanotify::FallbackCounts {
                            denied_files: saved.denied_files,
                            file_writes: saved.file_writes,
                            canary_hits: saved.canary_hits,
                            denied_sockets: saved.denied_sockets,
                        },
                    )
                })
                .collect();
            watcher.carry_over(&saved);
        }
        for (name, id) in self.registry.ids().clone() {
            let now: crate::breaker::CounterSnapshot = self.counters(id).into();
            let Some(before) = previous.counters.get(&id) else {
                continue;
            };
            if now == *before {
                continue;
            }
            let mut record = AuditRecord::lifecycle(
                &host,
                "daemon",
                format!(
                    "while no daemon ran, agent {}: {} connects ({} denied, {} rate-limited), {} file and exec denials, {} denied sockets, {} execs, {} events lost to a full ring buffer",
                    name.as_str(),
                    now.connects.saturating_sub(before.connects),
                    now.denied_connects.saturating_sub(before.denied_connects),
                    now.rate_limited.saturating_sub(before.rate_limited),
                    now.denied_files.saturating_sub(before.denied_files),
                    now.denied_sockets.saturating_sub(before.denied_sockets),
                    now.execs.saturating_sub(before.execs),
                    now.events_dropped.saturating_sub(before.events_dropped),
                ),
            );
            record.agent = Some(name.to_string());
            self.record(record);
        }
        self.suppressions_recorded = previous.suppressions_recorded.into_iter().collect();
        self.drops_recorded = previous.drops_recorded.into_iter().collect();
        for open in previous.open_breakers {
            if self.registry.name_of(open.agent_id).is_none() {
                continue;
            }
            let counters = self.counters(open.agent_id).into();
            self.breakers
                .lock()
                .expect("breakers lock poisoned")
                .engine()
                .restore(
                    open.agent_id,
                    &open.agent,
                    &open.breaker,
                    open.action,
                    &open.reason,
                    counters,
                );
            let mut record = AuditRecord::lifecycle(
                &host,
                "breaker",
                format!(
                    "breaker {} of agent {} is still open ({}) after the restart",
                    open.breaker,
                    open.agent,
                    serde_json::to_string(&open.action).unwrap_or_default()
                ),
            );
            record.agent = Some(open.agent.clone());
            self.record(record);
        }
        // The rest of the loss is reported by the usual accounting.
        self.record_drops();
    }
}

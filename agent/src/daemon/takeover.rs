//! Handing over to the next daemon: what it needs saved, and taking over
//! from the previous one.

use super::*;

/// The pins and the state a previous daemon left.
pub(super) struct Takeover {
    pub(super) pins: PinDir,
    pub(super) handover: StateDir,
    pub(super) registry: Option<Registry>,
}

impl PolicyService {
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

    /// Takes over from a previous daemon whose pins were adopted: records
    /// what was adopted, then hands the previous daemon's progress to the
    /// breakers ([`breakers::Breakers::take_over`]).
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
        self.breakers
            .lock()
            .expect("breakers lock poisoned")
            .take_over(previous);
    }
}

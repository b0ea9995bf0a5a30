//! Circuit breakers: feeding them the kernel counters and carrying out
//! what they decide.

use super::*;

/// Breaker rules per agent id.
pub(super) fn breaker_rules(
    set: &CompiledPolicySet,
    registry: &AgentRegistry,
) -> BTreeMap<AgentId, (String, Vec<crate::policy::compile::BreakerRule>)> {
    set.agents
        .iter()
        .filter(|(_, agent)| !agent.breakers.is_empty())
        .filter_map(|(name, agent)| {
            let id = registry.id_of(name.as_str())?;
            Some((id, (name.to_string(), agent.breakers.clone())))
        })
        .collect()
}

/// One line about a breaker transition, for records and replies.
fn describe(transition: &Transition) -> String {
    let name = |state: &BreakerState| match state {
        BreakerState::Closed => "closed".to_string(),
        BreakerState::Open { action, .. } => format!("open ({action:?})").to_lowercase(),
        BreakerState::HalfOpen { .. } => "half-open".to_string(),
    };
    let why = match &transition.to {
        BreakerState::Open {
            breaker, reason, ..
        } => format!(": breaker {breaker}: {reason}"),
        BreakerState::HalfOpen { breaker } => format!(": breaker {breaker} cooled down"),
        BreakerState::Closed => String::new(),
    };
    format!(
        "agent {}: {} -> {}{why}; counters {}",
        transition.agent,
        name(&transition.from),
        name(&transition.to),
        serde_json::to_string(&transition.counters).unwrap_or_default()
    )
}

/// Sends `signal` to every process of an agent, repeating until no new
/// process appears (children forked while the signal went out are caught
/// by the next round; the kernel's identity record finds double-forked
/// and re-parented processes too).
fn signal_agent(maps: &PolicyMaps, agent_id: AgentId, signal: nix::sys::signal::Signal) -> usize {
    use nix::{sys::signal::kill, unistd::Pid};
    let mut signalled = std::collections::HashSet::new();
    for _ in 0..20 {
        let members = maps.members(agent_id);
        let fresh: Vec<u32> = members
            .into_iter()
            .filter(|pid| !signalled.contains(pid) || signal == nix::sys::signal::Signal::SIGKILL)
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in &fresh {
            let _ = kill(Pid::from_raw(*pid as i32), signal);
            signalled.insert(*pid);
        }
        if signal != nix::sys::signal::Signal::SIGKILL {
            // A stopped process forks no more; one more round catches what
            // was forked in between.
            if maps.members(agent_id).iter().all(|p| signalled.contains(p)) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signalled.len()
}

/// Reads the breakers' counters often: a trip takes effect within one
/// period even when no event arrives (events are rate-limited, counters
/// are not). A decision the event drain or the fanotify listener writes
/// wakes it at once.
pub(super) async fn watch_breakers(daemon: Weak<Daemon>) {
    loop {
        let (watched, due) = {
            let Some(daemon) = daemon.upgrade() else {
                return;
            };
            let Ok(mut state) = daemon.state.lock() else {
                return;
            };
            state.notice_taints();
            state.evaluate_breakers();
            (!state.breakers.agent_ids().is_empty(), daemon.clone())
        };
        // Often while an agent has breakers; rarely otherwise, so an idle
        // daemon costs nothing measurable.
        let period = if watched { 10 } else { 500 };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(period)) => {}
            () = due.breakers_due.notified() => {}
        }
    }
}

impl State {
    /// Carries out a breaker transition and records it.
    pub(super) fn carry_out(&mut self, transition: &Transition) {
        use nix::sys::signal::Signal;
        let agent_id = transition.agent_id;
        // Lift what the previous state imposed.
        if let BreakerState::Open { action, .. } = &transition.from
            && !matches!(transition.to, BreakerState::Open { .. })
        {
            match action {
                Action::Quarantine => {
                    if let Err(error) = self.runtime.set_quarantine(agent_id, false) {
                        tracing::error!(%error, "cannot lift quarantine");
                    }
                }
                Action::Freeze => {
                    signal_agent(&self.maps, agent_id, Signal::SIGCONT);
                }
                Action::Kill => {}
            }
        }
        if let BreakerState::Open { action, .. } = &transition.to {
            match action {
                Action::Quarantine => {
                    if let Err(error) = self.runtime.set_quarantine(agent_id, true) {
                        tracing::error!(%error, "cannot quarantine");
                    }
                }
                Action::Freeze => {
                    signal_agent(&self.maps, agent_id, Signal::SIGSTOP);
                }
                Action::Kill => {
                    let killed = signal_agent(&self.maps, agent_id, Signal::SIGKILL);
                    tracing::info!(agent = transition.agent, killed, "agent killed");
                }
            }
        }
        self.metrics.set_breaker_state(
            &transition.agent,
            match transition.to {
                BreakerState::Closed => crate::metrics::BreakerState::Closed,
                BreakerState::Open { .. } => crate::metrics::BreakerState::Open,
                BreakerState::HalfOpen { .. } => crate::metrics::BreakerState::HalfOpen,
            },
        );
        let message = describe(transition);
        tracing::warn!("{message}");
        let mut record = AuditRecord::lifecycle(&self.host, "breaker", message);
        record.agent = Some(transition.agent.clone());
        self.record(record);
    }

    /// Feeds every watched agent's counters to the breakers and acts on
    /// what trips.
    pub(super) fn evaluate_breakers(&mut self) {
        let now = std::time::Instant::now();
        for agent_id in self.breakers.agent_ids() {
            let counters = self.counters(agent_id).into();
            for transition in self.breakers.observe(now, agent_id, counters) {
                self.carry_out(&transition);
            }
        }
    }
}

impl Daemon {
    /// `baton breaker reset` (no action) or `baton breaker trip`.
    pub(super) fn breaker_command(&self, agent: &str, trip: Option<Action>) -> Reply {
        let mut state = self.state.lock().expect("state lock poisoned");
        let Some(agent_id) = state.registry.id_of(agent) else {
            return Reply::Error {
                message: format!("no loaded policy selects agent {agent:?}"),
            };
        };
        let counters = state.counters(agent_id).into();
        let transition = match trip {
            Some(action) => Some(state.breakers.trip(agent_id, agent, action, counters)),
            None => state.breakers.reset(agent_id, counters),
        };
        match transition {
            Some(transition) => {
                let message = describe(&transition);
                state.carry_out(&transition);
                Reply::Done { message }
            }
            None => Reply::Done {
                message: format!("agent {agent} has no breaker state to reset"),
            },
        }
    }
}

//! Circuit breakers: conditions over each agent's kernel counters, and the
//! state machine closed → open (tripped) → half-open → closed.
//!
//! The engine only decides; the daemon carries out the actions (quarantine
//! in the kernel, freeze, kill) and records every transition. Counters come
//! from the kernel, where every decision is counted whatever the event rate,
//! so a flood of denials cannot hide behind rate-limited events.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use agent_common::identity::AgentCounters;
use serde::Serialize;

use crate::{
    ids::AgentId,
    policy::{
        compile::BreakerRule,
        spec::{BreakerAction, BreakerSpec, Threshold},
    },
};

pub mod limits;

/// Where an agent's breaker stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum State {
    /// Normal operation.
    Closed,
    /// Tripped: the action is in force.
    Open {
        /// Breaker that tripped.
        breaker: String,
        /// What it did.
        action: Action,
        /// Why.
        reason: String,
    },
    /// Cooled down: the action is lifted while the agent is watched.
    HalfOpen {
        /// Breaker that had tripped.
        breaker: String,
    },
}

/// Actions, as the engine reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deny egress, writes and exec in the kernel.
    Quarantine,
    /// Stop every process.
    Freeze,
    /// Kill every process.
    Kill,
}

impl From<BreakerAction> for Action {
    fn from(action: BreakerAction) -> Self {
        match action {
            BreakerAction::Quarantine => Action::Quarantine,
            BreakerAction::Freeze => Action::Freeze,
            BreakerAction::Kill => Action::Kill,
        }
    }
}

/// A state change the daemon must act on and record.
#[derive(Clone, Debug, Serialize)]
pub struct Transition {
    /// Agent id.
    pub agent_id: AgentId,
    /// Agent name.
    pub agent: String,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// The counters at the transition.
    pub counters: CounterSnapshot,
}

/// Counters as they appear in records and `baton breaker list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    /// Connects and sends decided.
    pub connects: u64,
    /// Connects denied.
    pub denied_connects: u64,
    /// Distinct destinations denied.
    pub distinct_denied_destinations: u64,
    /// Connects refused by the rate limit.
    pub rate_limited: u64,
    /// File and exec calls denied.
    pub denied_files: u64,
    /// Changes to files.
    pub file_writes: u64,
    /// Execs.
    pub execs: u64,
    /// Canary accesses.
    pub canary_hits: u64,
    /// Sockets denied.
    pub denied_sockets: u64,
    /// Events the ring buffer had no room for.
    pub events_dropped: u64,
    /// Events left out because the agent was over its event rate.
    pub events_suppressed: u64,
    /// Packets of agent sockets the packet-level backstop dropped.
    #[serde(default)]
    pub dropped_packets: u64,
    /// Socket options refused because they reroute packets.
    #[serde(default)]
    pub denied_sockopts: u64,
    /// Requests for a DNS proxy in a new network namespace that found no
    /// room in their ring buffer.
    #[serde(default)]
    pub netns_requests_dropped: u64,
    /// 1 while the agent is tainted by a secret it opened.
    #[serde(default)]
    pub secret_touches: u64,
}

impl From<AgentCounters> for CounterSnapshot {
    fn from(c: AgentCounters) -> Self {
        Self {
            connects: c.connects,
            denied_connects: c.denied_connects,
            distinct_denied_destinations: c.distinct_denied_destinations,
            rate_limited: c.rate_limited,
            denied_files: c.denied_files,
            file_writes: c.file_writes,
            execs: c.execs,
            canary_hits: c.canary_hits,
            denied_sockets: c.denied_sockets,
            events_dropped: c.events_dropped,
            events_suppressed: c.events_suppressed,
            dropped_packets: c.dropped_packets,
            denied_sockopts: c.denied_sockopts,
            netns_requests_dropped: c.netns_requests_dropped,
            secret_touches: c.secret_touches,
        }
    }
}

/// One agent's breakers.
#[derive(Debug)]
struct AgentBreakers {
    agent: String,
    rules: Vec<BreakerRule>,
    state: State,
    /// When the current state began.
    since: Instant,
    /// Counters at the start of the half-open watch.
    half_open_base: CounterSnapshot,
    /// Samples, oldest first; the first is the baseline when the agent was
    /// first seen.
    history: VecDeque<(Instant, CounterSnapshot)>,
    /// The rule that tripped last, for its cooldown and probe window.
    tripped: Option<BreakerSpec>,
}

/// A breaker with no rule behind it (a manual trip, or one a previous
/// daemon left open whose rule is gone): it stays open until reset, with no
/// automatic cooldown.
fn held_open(name: &str, action: Action) -> BreakerSpec {
    BreakerSpec {
        name: crate::policy::spec::Name::from_trusted(name.to_string()),
        when: Default::default(),
        action: match action {
            Action::Quarantine => BreakerAction::Quarantine,
            Action::Freeze => BreakerAction::Freeze,
            Action::Kill => BreakerAction::Kill,
        },
        cooldown_seconds: u64::MAX / 4,
        probe_seconds: 30,
    }
}

/// Longest window kept in the history, whatever the rules say.
const MAX_WINDOW: Duration = Duration::from_secs(3600);

fn field(counters: &CounterSnapshot, name: &str) -> u64 {
    match name {
        "denied_connects" => counters.denied_connects,
        "distinct_denied_destinations" => counters.distinct_denied_destinations,
        "denied_files" => counters.denied_files,
        "connects" => counters.connects,
        "execs" => counters.execs,
        _ => 0,
    }
}

impl AgentBreakers {
    /// The counters at or just before `now - window`, or the baseline.
    fn at(&self, when: Instant) -> CounterSnapshot {
        self.history
            .iter()
            .rev()
            .find(|(at, _)| *at <= when)
            .or(self.history.front())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// The first rule whose condition holds now, with the reason.
    fn firing(
        &self,
        now: Instant,
        current: &CounterSnapshot,
        since: Option<&CounterSnapshot>,
    ) -> Option<(BreakerRule, String)> {
        for rule in &self.rules {
            let when = &rule.spec.when;
            let thresholds: [(&str, Option<Threshold>); 5] = [
                ("denied_connects", when.denied_connects),
                (
                    "distinct_denied_destinations",
                    when.distinct_denied_destinations,
                ),
                ("denied_files", when.denied_files),
                ("connects", when.connects),
                ("execs", when.execs),
            ];
            for (name, threshold) in thresholds {
                let Some(threshold) = threshold else {
                    continue;
                };
                let window = Duration::from_secs(threshold.within_seconds).min(MAX_WINDOW);
                let mut base = self.at(now.checked_sub(window).unwrap_or(now));
                if let Some(since) = since {
                    // In half-open only what happened since counts.
                    if field(since, name) > field(&base, name) {
                        base = *since;
                    }
                }
                let delta = field(current, name).saturating_sub(field(&base, name));
                if delta > threshold.more_than {
                    return Some((
                        rule.clone(),
                        format!(
                            "{name}: {delta} in the last {}s, more than {}",
                            threshold.within_seconds, threshold.more_than
                        ),
                    ));
                }
            }
            if when.canary {
                let previous = self.history.back().map(|(_, c)| c.canary_hits).unwrap_or(0);
                let base = since.map_or(previous, |s| s.canary_hits.max(previous));
                if current.canary_hits > base {
                    return Some((rule.clone(), "a canary was touched".into()));
                }
            }
            if when.secret {
                let previous = self
                    .history
                    .back()
                    .map(|(_, c)| c.secret_touches)
                    .unwrap_or(0);
                let base = since.map_or(previous, |s| s.secret_touches.max(previous));
                if current.secret_touches > base {
                    return Some((rule.clone(), "a secret was opened".into()));
                }
            }
        }
        None
    }
}

/// All agents' breakers.
#[derive(Debug, Default)]
pub struct Engine {
    agents: BTreeMap<AgentId, AgentBreakers>,
}

/// A row of `baton breaker list`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Agent name.
    pub agent: String,
    /// Breakers configured.
    pub breakers: Vec<String>,
    /// Current state.
    pub state: State,
    /// Seconds in that state.
    pub for_seconds: u64,
    /// Latest counters.
    pub counters: CounterSnapshot,
}

impl Engine {
    /// Sets the rules of every agent (after a policy load); states, history
    /// and counters are kept.
    pub fn set_rules(&mut self, rules: BTreeMap<AgentId, (String, Vec<BreakerRule>)>) {
        let now = Instant::now();
        for (agent_id, (agent, agent_rules)) in rules {
            let entry = self
                .agents
                .entry(agent_id)
                .or_insert_with(|| AgentBreakers {
                    agent: agent.clone(),
                    rules: Vec::new(),
                    state: State::Closed,
                    since: now,
                    half_open_base: CounterSnapshot::default(),
                    history: VecDeque::from([(now, CounterSnapshot::default())]),
                    tripped: None,
                });
            entry.agent = agent;
            entry.rules = agent_rules;
        }
    }

    /// Agents with breakers or manual trips to watch.
    pub fn agent_ids(&self) -> Vec<AgentId> {
        self.agents.keys().copied().collect()
    }

    /// Feeds the agent's current counters; returns the transitions to act on.
    pub fn observe(
        &mut self,
        now: Instant,
        agent_id: AgentId,
        counters: CounterSnapshot,
    ) -> Vec<Transition> {
        let Some(agent) = self.agents.get_mut(&agent_id) else {
            return Vec::new();
        };
        let mut transitions = Vec::new();
        let mut change = |agent: &mut AgentBreakers, to: State| {
            let from = std::mem::replace(&mut agent.state, to.clone());
            agent.since = now;
            transitions.push(Transition {
                agent_id,
                agent: agent.agent.clone(),
                from,
                to,
                counters,
            });
        };
        match agent.state.clone() {
            State::Closed => {
                if let Some((rule, reason)) = agent.firing(now, &counters, None) {
                    agent.tripped = Some(rule.spec.clone());
                    let to = State::Open {
                        breaker: format!("{}/{}", rule.policy, rule.spec.name),
                        action: rule.spec.action.into(),
                        reason,
                    };
                    change(agent, to);
                }
            }
            State::Open { breaker, .. } => {
                let cooldown = agent
                    .tripped
                    .as_ref()
                    .map_or(Duration::from_secs(300), |t| {
                        Duration::from_secs(t.cooldown_seconds)
                    });
                if now.duration_since(agent.since) >= cooldown {
                    agent.half_open_base = counters;
                    change(agent, State::HalfOpen { breaker });
                }
            }
            State::HalfOpen { breaker } => {
                let base = agent.half_open_base;
                if let Some((rule, reason)) = agent.firing(now, &counters, Some(&base)) {
                    agent.tripped = Some(rule.spec.clone());
                    let to = State::Open {
                        breaker: format!("{}/{}", rule.policy, rule.spec.name),
                        action: rule.spec.action.into(),
                        reason: format!("again while half-open: {reason}"),
                    };
                    change(agent, to);
                } else {
                    let probe = agent.tripped.as_ref().map_or(Duration::from_secs(30), |t| {
                        Duration::from_secs(t.probe_seconds)
                    });
                    if now.duration_since(agent.since) >= probe {
                        let _ = breaker;
                        change(agent, State::Closed);
                    }
                }
            }
        }
        // Keep a sample when something changed, and the history bounded.
        if agent.history.back().is_none_or(|(_, c)| *c != counters) {
            agent.history.push_back((now, counters));
        }
        while agent.history.len() > 2
            && agent
                .history
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) > MAX_WINDOW)
        {
            agent.history.pop_front();
        }
        transitions
    }

    /// Closes the agent's breaker at once (`baton breaker reset`).
    pub fn reset(&mut self, agent_id: AgentId, counters: CounterSnapshot) -> Option<Transition> {
        let agent = self.agents.get_mut(&agent_id)?;
        let from = std::mem::replace(&mut agent.state, State::Closed);
        agent.since = Instant::now();
        // Forget the past: what tripped it must not trip it again at once.
        agent.history = VecDeque::from([(agent.since, counters)]);
        Some(Transition {
            agent_id,
            agent: agent.agent.clone(),
            from,
            to: State::Closed,
            counters,
        })
    }

    /// The agent's breakers, first seen now with `counters` as the baseline
    /// when it has none yet (a manual trip of an agent without rules).
    fn entry(
        &mut self,
        agent_id: AgentId,
        agent: &str,
        counters: CounterSnapshot,
        now: Instant,
    ) -> &mut AgentBreakers {
        self.agents
            .entry(agent_id)
            .or_insert_with(|| AgentBreakers {
                agent: agent.to_string(),
                rules: Vec::new(),
                state: State::Closed,
                since: now,
                half_open_base: CounterSnapshot::default(),
                history: VecDeque::from([(now, counters)]),
                tripped: None,
            })
    }

    /// Opens the agent's breaker by hand (`baton breaker trip`).
    pub fn trip(
        &mut self,
        agent_id: AgentId,
        agent: &str,
        action: Action,
        counters: CounterSnapshot,
    ) -> Transition {
        let now = Instant::now();
        let entry = self.entry(agent_id, agent, counters, now);
        let to = State::Open {
            breaker: "manual".into(),
            action,
            reason: "tripped by an operator".into(),
        };
        // A manual trip stays open until reset: no automatic cooldown.
        entry.tripped = Some(held_open("manual", action));
        let from = std::mem::replace(&mut entry.state, to.clone());
        entry.since = now;
        Transition {
            agent_id,
            agent: agent.to_string(),
            from,
            to,
            counters,
        }
    }

    /// Re-opens a breaker a previous daemon had open, without acting again:
    /// the action is still in force in the kernel (quarantine lives in a
    /// pinned map, a frozen agent stays stopped). A breaker of the agent's
    /// current rules gets its cooldown again, counted from now; any other
    /// (a manual trip, a rule since removed) stays open until reset.
    pub fn restore(
        &mut self,
        agent_id: AgentId,
        agent: &str,
        breaker: &str,
        action: Action,
        reason: &str,
        counters: CounterSnapshot,
    ) {
        let now = Instant::now();
        let entry = self.entry(agent_id, agent, counters, now);
        let rule = entry
            .rules
            .iter()
            .find(|r| format!("{}/{}", r.policy, r.spec.name) == breaker)
            .map(|r| r.spec.clone());
        entry.tripped = Some(rule.unwrap_or_else(|| held_open(breaker, action)));
        entry.state = State::Open {
            breaker: breaker.to_string(),
            action,
            reason: reason.to_string(),
        };
        entry.since = now;
        entry.history = VecDeque::from([(now, counters)]);
    }

    /// Breakers that are open: (agent id, agent, breaker, action, reason).
    pub fn open_breakers(&self) -> Vec<(AgentId, String, String, Action, String)> {
        self.agents
            .iter()
            .filter_map(|(id, a)| match &a.state {
                State::Open {
                    breaker,
                    action,
                    reason,
                } => Some((
                    *id,
                    a.agent.clone(),
                    breaker.clone(),
                    *action,
                    reason.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Every agent's state.
    pub fn list(&self, now: Instant) -> Vec<Status> {
        self.agents
            .values()
            .map(|a| Status {
                agent: a.agent.clone(),
                breakers: a
                    .rules
                    .iter()
                    .map(|r| format!("{}/{}", r.policy, r.spec.name))
                    .collect(),
                state: a.state.clone(),
                for_seconds: now.duration_since(a.since).as_secs(),
                counters: a.history.back().map(|(_, c)| *c).unwrap_or_default(),
            })
            .collect()
    }

    /// The action in force for an agent, if its breaker is open.
    pub fn action_of(&self, agent_id: AgentId) -> Option<Action> {
        match self.agents.get(&agent_id)?.state {
            State::Open { action, .. } => Some(action),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::{Condition, Name};

    fn rule(when: Condition, cooldown: u64) -> BreakerRule {
        BreakerRule {
            policy: "p".into(),
            spec: BreakerSpec {
                name: Name::parse("b").unwrap(),
                when,
                action: BreakerAction::Quarantine,
                cooldown_seconds: cooldown,
                probe_seconds: 1,
            },
        }
    }

    const AGENT: AgentId = AgentId::from_raw(1);

    fn engine(when: Condition, cooldown: u64) -> Engine {
        let mut engine = Engine::default();
        engine.set_rules(BTreeMap::from([(
            AGENT,
            ("a".to_string(), vec![rule(when, cooldown)]),
        )]));
        engine
    }

    fn denied(n: u64) -> CounterSnapshot {
        CounterSnapshot {
            denied_connects: n,
            ..Default::default()
        }
    }

    #[test]
    fn trips_over_the_threshold_then_cools_down_and_closes() {
        let when = Condition {
            denied_connects: Some(Threshold {
                more_than: 20,
                within_seconds: 60,
            }),
            ..Default::default()
        };
        let mut engine = engine(when, 0);
        let t0 = Instant::now();
        assert!(engine.observe(t0, AGENT, denied(20)).is_empty());
        let trip = engine.observe(t0, AGENT, denied(21));
        assert!(matches!(trip[0].to, State::Open { .. }), "{trip:?}");
        // Cooldown 0: half-open at the next look, closed after the probe.
        let half = engine.observe(t0 + Duration::from_millis(10), AGENT, denied(21));
        assert!(matches!(half[0].to, State::HalfOpen { .. }));
        let closed = engine.observe(t0 + Duration::from_secs(2), AGENT, denied(21));
        assert_eq!(closed[0].to, State::Closed);
    }

    #[test]
    fn half_open_re_trips_on_new_misbehaviour() {
        let when = Condition {
            denied_connects: Some(Threshold {
                more_than: 2,
                within_seconds: 60,
            }),
            ..Default::default()
        };
        let mut engine = engine(when, 0);
        let t0 = Instant::now();
        engine.observe(t0, AGENT, denied(3));
        engine.observe(t0 + Duration::from_millis(1), AGENT, denied(3));
        let again = engine.observe(t0 + Duration::from_millis(2), AGENT, denied(6));
        assert!(matches!(&again[0].to, State::Open { reason, .. } if reason.contains("again")));
    }

    #[test]
    fn canaries_trip_at_the_first_touch_and_reset_closes() {
        let mut engine = engine(
            Condition {
                canary: true,
                ..Default::default()
            },
            300,
        );
        let t0 = Instant::now();
        let touched = CounterSnapshot {
            canary_hits: 1,
            ..Default::default()
        };
        assert!(matches!(
            engine.observe(t0, AGENT, touched)[0].to,
            State::Open { .. }
        ));
        assert_eq!(engine.action_of(AGENT), Some(Action::Quarantine));
        let reset = engine.reset(AGENT, touched).unwrap();
        assert_eq!(reset.to, State::Closed);
        assert!(
            engine.observe(t0, AGENT, touched).is_empty(),
            "old hits do not re-trip"
        );
    }
}

//! Circuit breakers, as a service of their own: the engine, the run-time
//! maps they read and act through (counters, quarantine, secrets' taints),
//! what they record, and the accounting that follows the counters: loss
//! reports (events the kernel dropped or rate-limited) and the progress a
//! successor daemon takes over.
//!
//! `Breakers` sits behind its own lock (`SharedBreakers`), shared by the
//! daemon (the watcher, the audit ticker, breaker and taint commands) and
//! `PolicyService` (a reload hands it the new rules and names; status and takeover
//! read counters). The watcher takes only this lock, so a reload or a slow
//! control request never holds a trip up. Lock order: `PolicyService`, then
//! `Breakers`, then the writer; code holding `Breakers` never takes
//! `PolicyService`.

use super::*;
use crate::{
    audit::record::{AuditObject, AuditProcess, AuditRule},
    fallback::fanotify::FallbackCounter,
};

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

/// A secret as records name it: its policy, its rule and its path.
#[derive(Clone, Debug)]
struct SecretName {
    policy: String,
    rule: String,
    path: String,
}

/// The circuit breakers and what they act through.
pub(super) struct Breakers {
    engine: Engine,
    runtime: RuntimeMaps,
    /// Taints already recorded: agent → boot time of the open.
    taints_seen: BTreeMap<AgentId, u64>,
    /// What the fanotify listener decided, counted with the kernel's
    /// counters so every mechanism's denials feed the same breakers.
    fallback: Option<FallbackCounter>,
    /// The kernel's `tgid → agent` map, to find the processes to signal.
    identity: aya::maps::HashMap<MapData, u32, AgentRecord>,
    /// Agent names in force.
    agents: BTreeMap<AgentId, String>,
    /// Secrets in force, by rule id.
    secrets: BTreeMap<RuleId, SecretName>,
    /// Agents whose policy in force lists secrets.
    with_secrets: BTreeSet<AgentId>,
    /// Kernel event drops already recorded, per agent.
    drops_recorded: HashMap<AgentId, u64>,
    /// Rate-limit suppressions already recorded, per agent.
    suppressions_recorded: HashMap<AgentId, u64>,
    /// Where the progress a successor takes over is saved.
    handover: StateDir,
    /// The progress last saved there.
    saved_progress: Progress,
    metrics: Arc<crate::metrics::Metrics>,
    writer: Arc<Mutex<AuditWriter>>,
    host: String,
}

/// The breakers behind their own lock; see the module's lock order.
pub(super) type SharedBreakers = Arc<Mutex<Breakers>>;

impl Breakers {
    /// The service, with no rules yet ([`Self::follow`] gives them).
    pub(super) fn new(
        runtime: RuntimeMaps,
        fallback: Option<FallbackCounter>,
        identity: MapData,
        handover: StateDir,
        metrics: Arc<crate::metrics::Metrics>,
        writer: Arc<Mutex<AuditWriter>>,
        host: String,
    ) -> anyhow::Result<Self> {
        let identity = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(identity))
            .context("the identity map is not a hash map")?;
        Ok(Self {
            engine: Engine::default(),
            runtime,
            taints_seen: BTreeMap::new(),
            fallback,
            identity,
            agents: BTreeMap::new(),
            secrets: BTreeMap::new(),
            with_secrets: BTreeSet::new(),
            drops_recorded: HashMap::new(),
            suppressions_recorded: HashMap::new(),
            handover,
            saved_progress: Progress::default(),
            metrics,
            writer,
            host,
        })
    }

    /// Follows a policy set now in force: its breaker rules, agent names
    /// and secrets.
    pub(super) fn follow(&mut self, set: &CompiledPolicySet, registry: &AgentRegistry) {
        self.engine.set_rules(breaker_rules(set, registry));
        self.agents = registry
            .ids()
            .iter()
            .map(|(name, id)| (*id, name.to_string()))
            .collect();
        self.with_secrets = set
            .agents
            .iter()
            .filter(|(_, agent)| !agent.secrets.is_empty())
            .filter_map(|(name, _)| registry.id_of(name.as_str()))
            .collect();
        // Rules of the set before stay named too: a taint set under them
        // may be noticed after the swap.
        for agent in set.agents.values() {
            for (path, rule_id) in &agent.secrets {
                if let Some(rule) = set.rule(*rule_id) {
                    self.secrets.insert(
                        *rule_id,
                        SecretName {
                            policy: rule.policy.clone(),
                            rule: rule.rule.clone(),
                            path: path.clone(),
                        },
                    );
                }
            }
        }
        self.secrets
            .retain(|rule_id, _| *rule_id >= set.first_rule_id);
    }

    /// The engine: states, rules and what it restores.
    pub(super) fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// An agent's counters: the kernel's, plus what the fanotify listener
    /// decided, plus whether a secret tainted it.
    pub(super) fn counters(&self, agent_id: AgentId) -> agent_common::identity::AgentCounters {
        let mut counters = self.runtime.counters(agent_id);
        counters.secret_touches = u64::from(self.taints_seen.contains_key(&agent_id));
        if let Some(counts) = self.fallback.as_ref().and_then(|f| f.of(agent_id)) {
            counts.add_to(&mut counters);
        }
        counters
    }

    /// Writes a record for events the kernel could not queue since the last
    /// look: loss is counted and recorded, never silent.
    pub(super) fn record_drops(&mut self) {
        let agents: Vec<(AgentId, String)> = self
            .agents
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        for (agent_id, agent) in agents {
            let counters = self.counters(agent_id);
            self.metrics
                .observe_events_suppressed_total(&agent, counters.events_suppressed);
            let suppressed_seen = self.suppressions_recorded.entry(agent_id).or_insert(0);
            if counters.events_suppressed > *suppressed_seen {
                let count = counters.events_suppressed - *suppressed_seen;
                *suppressed_seen = counters.events_suppressed;
                self.record(AuditRecord::suppressed(
                    &self.host,
                    Some(&agent),
                    count,
                    "over the per-agent event rate; every decision was still enforced and counted",
                ));
            }
            let dropped = counters.events_dropped;
            self.metrics.observe_events_dropped_total(&agent, dropped);
            let seen = self.drops_recorded.entry(agent_id).or_insert(0);
            if dropped > *seen {
                let count = dropped - *seen;
                *seen = dropped;
                self.record(AuditRecord::suppressed(
                    &self.host,
                    Some(&agent),
                    count,
                    "the kernel's event ring buffer was full",
                ));
            }
        }
    }

    /// Saves the counters reported so far and the open breakers, when they
    /// changed, for a daemon that takes over from this one.
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
                .agents
                .keys()
                .map(|id| (*id, self.counters(*id).into()))
                .collect(),
            open_breakers: self
                .engine
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
                .fallback
                .as_ref()
                .map(|listener| {
                    listener
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

    /// Continues where a previous daemon stopped: reports what its agents
    /// did while no daemon ran, continues loss accounting from its counts,
    /// and re-opens its breakers. Without its progress, a quarantine still
    /// in the kernel is the only breaker left to find.
    pub(super) fn take_over(&mut self, previous: Option<Progress>) {
        let agents: Vec<(AgentId, String)> = self
            .agents
            .iter()
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        let Some(previous) = previous else {
            for (id, name) in agents {
                if self.runtime.quarantined(id) {
                    let counters = self.counters(id).into();
                    self.engine.restore(
                        id,
                        &name,
                        "restored",
                        Action::Quarantine,
                        "quarantined in the kernel when the daemon started",
                        counters,
                    );
                }
            }
            return;
        };
        if let Some(listener) = &self.fallback {
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
            listener.carry_over(&saved);
        }
        for (id, name) in &agents {
            let now: crate::breaker::CounterSnapshot = self.counters(*id).into();
            let Some(before) = previous.counters.get(id) else {
                continue;
            };
            if now == *before {
                continue;
            }
            let mut record = AuditRecord::lifecycle(
                &self.host,
                "daemon",
                format!(
                    "while no daemon ran, agent {name}: {} connects ({} denied, {} rate-limited), {} file and exec denials, {} denied sockets, {} execs, {} events lost to a full ring buffer",
                    now.connects.saturating_sub(before.connects),
                    now.denied_connects.saturating_sub(before.denied_connects),
                    now.rate_limited.saturating_sub(before.rate_limited),
                    now.denied_files.saturating_sub(before.denied_files),
                    now.denied_sockets.saturating_sub(before.denied_sockets),
                    now.execs.saturating_sub(before.execs),
                    now.events_dropped.saturating_sub(before.events_dropped),
                ),
            );
            record.agent = Some(name.clone());
            self.record(record);
        }
        self.suppressions_recorded = previous.suppressions_recorded.into_iter().collect();
        self.drops_recorded = previous.drops_recorded.into_iter().collect();
        for open in previous.open_breakers {
            if !self.agents.contains_key(&open.agent_id) {
                continue;
            }
            let counters = self.counters(open.agent_id).into();
            self.engine.restore(
                open.agent_id,
                &open.agent,
                &open.breaker,
                open.action,
                &open.reason,
                counters,
            );
            let mut record = AuditRecord::lifecycle(
                &self.host,
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

    /// Whether the DNS proxy must refuse the agent every name: it opened a
    /// secret, or it is quarantined. The taint is read from the kernel's
    /// map (the kernel or the listener writes it before the secret's open
    /// returns), and only for agents with secrets; the quarantine from the
    /// engine, which is what puts it in the kernel. Most queries so cost no
    /// system call.
    pub(super) fn held(&self, agent_id: AgentId) -> Option<Hold> {
        if self.with_secrets.contains(&agent_id) && self.runtime.tainted(agent_id) {
            Some(Hold::Secret)
        } else if self.engine.action_of(agent_id) == Some(Action::Quarantine) {
            Some(Hold::Quarantine)
        } else {
            None
        }
    }

    fn name_of(&self, agent_id: AgentId) -> String {
        self.agents
            .get(&agent_id)
            .cloned()
            .unwrap_or_else(|| format!("#{agent_id}"))
    }

    fn record(&self, record: AuditRecord) {
        self.writer
            .lock()
            .expect("audit writer lock poisoned")
            .record(record);
    }

    /// Sends `signal` to every process of an agent, repeating until no
    /// new process appears (children forked while the signal went out are
    /// caught by the next round; the kernel's identity record finds
    /// double-forked and re-parented processes too).
    fn signal_agent(&self, agent_id: AgentId, signal: nix::sys::signal::Signal) -> usize {
        use nix::{sys::signal::kill, unistd::Pid};
        let members = || crate::kernel::maps::members_of(&self.identity, agent_id);
        let mut signalled = std::collections::HashSet::new();
        for _ in 0..20 {
            let fresh: Vec<u32> = members()
                .into_iter()
                .filter(|pid| {
                    !signalled.contains(pid) || signal == nix::sys::signal::Signal::SIGKILL
                })
                .collect();
            if fresh.is_empty() {
                break;
            }
            for pid in &fresh {
                let _ = kill(Pid::from_raw(*pid as i32), signal);
                signalled.insert(*pid);
            }
            if signal != nix::sys::signal::Signal::SIGKILL {
                // A stopped process forks no more; one more round catches
                // what was forked in between.
                if members().iter().all(|p| signalled.contains(p)) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        signalled.len()
    }

    /// Carries out a breaker transition and records it.
    fn carry_out(&mut self, transition: &Transition) {
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
                    self.signal_agent(agent_id, Signal::SIGCONT);
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
                    self.signal_agent(agent_id, Signal::SIGSTOP);
                }
                Action::Kill => {
                    let killed = self.signal_agent(agent_id, Signal::SIGKILL);
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

    /// Records new taints, feeds every watched agent's counters to the
    /// breakers and acts on what trips.
    pub(super) fn evaluate(&mut self) {
        self.notice_taints();
        let now = std::time::Instant::now();
        for agent_id in self.engine.agent_ids() {
            let counters = self.counters(agent_id).into();
            for transition in self.engine.observe(now, agent_id, counters) {
                self.carry_out(&transition);
            }
        }
    }

    /// `baton breaker reset` (no action) or `baton breaker trip`.
    pub(super) fn command(
        &mut self,
        agent_id: AgentId,
        agent: &str,
        trip: Option<Action>,
    ) -> Reply {
        let counters = self.counters(agent_id).into();
        let transition = match trip {
            Some(action) => Some(self.engine.trip(agent_id, agent, action, counters)),
            None => self.engine.reset(agent_id, counters),
        };
        match transition {
            Some(transition) => {
                let message = describe(&transition);
                self.carry_out(&transition);
                Reply::Done { message }
            }
            None => Reply::Done {
                message: format!("agent {agent} has no breaker state to reset"),
            },
        }
    }

    /// What the daemon says about one taint, in records, replies and
    /// status.
    fn describe_taint(
        &self,
        agent_id: AgentId,
        taint: &agent_common::identity::SecretTaint,
    ) -> serde_json::Value {
        let secret = self.secrets.get(&RuleId::from_raw(taint.rule_id));
        let comm_len = taint
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(taint.comm.len());
        serde_json::json!({
            "agent": self.name_of(agent_id),
            "secret": secret.map_or("a secret of an earlier policy", |s| s.path.as_str()),
            "rule": secret.map_or_else(|| format!("rule {}", taint.rule_id), |s| s.rule.clone()),
            "policy": secret.map_or("", |s| s.policy.as_str()),
            "time": crate::audit::record::format_time(Clock::new().wall(taint.at_boot_ns)),
            "pid": taint.tgid,
            "tid": taint.pid,
            "uid": taint.uid,
            "comm": String::from_utf8_lossy(&taint.comm[..comm_len]),
        })
    }

    /// Every taint in force, described.
    pub(super) fn taints(&self) -> Vec<serde_json::Value> {
        self.runtime
            .taints()
            .iter()
            .map(|(agent_id, taint)| self.describe_taint(*agent_id, taint))
            .collect()
    }

    /// Records each taint the kernel or the fanotify listener set since the
    /// last look (they wrote it before the open returned; this only
    /// notices), and forgets the ones an operator lifted.
    pub(super) fn notice_taints(&mut self) {
        let taints = self.runtime.taints();
        self.taints_seen.retain(|agent_id, at| {
            taints
                .get(agent_id)
                .is_some_and(|taint| taint.at_boot_ns == *at)
        });
        for (agent_id, taint) in &taints {
            if self.taints_seen.contains_key(agent_id) {
                continue;
            }
            self.taints_seen.insert(*agent_id, taint.at_boot_ns);
            let name = self.name_of(*agent_id);
            let described = self.describe_taint(*agent_id, taint);
            self.metrics.set_secret_tainted(&name, true);
            let text = |key: &str| described[key].as_str().unwrap_or_default().to_string();
            let message = format!(
                "agent {name} opened secret {} ({}): its egress is held to egress.afterSecret until `baton taint clear {name}`",
                text("secret"),
                text("rule"),
            );
            tracing::warn!("{message}");
            let mut process = AuditProcess::live(taint.tgid, 0);
            process.pid = taint.tgid;
            process.tid = taint.pid;
            process.uid = taint.uid;
            process.comm = text("comm");
            let record = AuditRecord {
                time: text("time"),
                agent: Some(name.clone()),
                mode: Some("enforce"),
                verdict: "allowed",
                control: "secret",
                hook: Some("secret_taint"),
                object: AuditObject::Message { message },
                rule: Some(AuditRule {
                    policy: text("policy"),
                    id: text("rule"),
                    kernel_id: taint.rule_id,
                }),
                process: Some(process),
                ..AuditRecord::lifecycle(&self.host, "secret", String::new())
            };
            self.record(record);
        }
    }

    /// `baton taint clear`: lifts agent `agent_id`'s taint.
    pub(super) fn clear_taint(&mut self, agent_id: AgentId, agent: &str) -> Reply {
        // A taint not noticed yet is recorded before it goes.
        self.notice_taints();
        match self.runtime.clear_taint(agent_id) {
            Ok(false) => Reply::Done {
                message: format!("agent {agent} is not tainted"),
            },
            Ok(true) => {
                self.taints_seen.remove(&agent_id);
                self.metrics.set_secret_tainted(agent, false);
                let message = format!(
                    "agent {agent}: taint cleared by an operator; its full egress policy applies again"
                );
                tracing::info!("{message}");
                let mut record = AuditRecord::lifecycle(&self.host, "secret", message.clone());
                record.agent = Some(agent.to_string());
                self.record(record);
                Reply::Done { message }
            }
            Err(error) => Reply::Error {
                message: format!("cannot clear agent {agent}'s taint: {error}"),
            },
        }
    }
}

/// Reads the breakers' counters often: a trip takes effect within one
/// period even when no event arrives (events are rate-limited, counters
/// are not). A decision the event drain or the fanotify listener writes
/// wakes it at once. Takes the breakers' lock only.
pub(super) async fn watch_breakers(daemon: Weak<Daemon>) {
    loop {
        let (watched, due) = {
            let Some(daemon) = daemon.upgrade() else {
                return;
            };
            let Ok(mut breakers) = daemon.breakers.lock() else {
                return;
            };
            breakers.evaluate();
            (!breakers.engine.agent_ids().is_empty(), daemon.clone())
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

impl Daemon {
    /// The id of agent `agent`, or the reply that says there is none.
    fn agent_id_of(&self, agent: &str) -> Result<AgentId, Reply> {
        self.policy
            .lock()
            .expect("policy lock poisoned")
            .registry
            .id_of(agent)
            .ok_or_else(|| Reply::Error {
                message: format!("no loaded policy selects agent {agent:?}"),
            })
    }

    /// `baton breaker reset` (no action) or `baton breaker trip`.
    pub(super) fn breaker_command(&self, agent: &str, trip: Option<Action>) -> Reply {
        match self.agent_id_of(agent) {
            Ok(agent_id) => self
                .breakers
                .lock()
                .expect("breakers lock poisoned")
                .command(agent_id, agent, trip),
            Err(reply) => reply,
        }
    }

    /// `baton breaker list`.
    pub(super) fn breaker_list(&self) -> Reply {
        let mut breakers = self.breakers.lock().expect("breakers lock poisoned");
        let agents = breakers
            .engine()
            .list(std::time::Instant::now())
            .into_iter()
            .filter_map(|status| serde_json::to_value(status).ok())
            .collect();
        Reply::Breakers { agents }
    }

    /// `baton taint list`.
    pub(super) fn taint_list(&self) -> Reply {
        Reply::Taints {
            taints: self
                .breakers
                .lock()
                .expect("breakers lock poisoned")
                .taints(),
        }
    }

    /// `baton taint clear AGENT`.
    pub(super) fn taint_clear(&self, agent: &str) -> Reply {
        match self.agent_id_of(agent) {
            Ok(agent_id) => self
                .breakers
                .lock()
                .expect("breakers lock poisoned")
                .clear_taint(agent_id, agent),
            Err(reply) => reply,
        }
    }
}

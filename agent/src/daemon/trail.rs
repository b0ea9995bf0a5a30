//! The audit writer: names kernel events and writes every record to the
//! trail, under a lock of its own.
//!
//! The event drain writes whole batches of records, thousands at a time
//! under a flood of denials. Were it to hold the daemon's [`PolicyService`] while
//! it does, control requests, admissions and DNS learning would wait on
//! the audit log. So the writer owns what writing needs (the trail, the
//! explainer, the names of agents and rules), and the drain takes only
//! its lock. Lock order: `PolicyService`, then the writer, then DNS learning; the
//! writer never takes `PolicyService`.

use super::*;
use prometheus_client::metrics::counter::Counter;

use crate::{explain::Explainer, metrics::Metrics, policy::compile::RuleRef};

/// The daemon's one writer of audit records.
pub(super) struct AuditWriter {
    pub(super) sink: AuditTrail,
    explainer: Option<Explainer>,
    metrics: Arc<Metrics>,
    /// The decision counters used so far, by agent, then control and
    /// verdict: a flood of denials counts each without building labels.
    /// Bounded by the agents in force (and those before them) times the
    /// few controls and verdicts.
    decision_counters: HashMap<String, HashMap<(&'static str, &'static str), Counter>>,
    decoder: Decoder,
}

/// What turning a kernel event into a record takes, cheap to clone: the
/// event drain decodes outside every lock with a copy it takes per batch.
#[derive(Clone)]
pub(super) struct Decoder {
    naming: Arc<Naming>,
    /// The names in force now, shared with the writer: for an event that
    /// the copy above predates (a reload swapped generations while the
    /// batch was read), looked at only when the copy does not know a name.
    latest: Arc<RwLock<Arc<Naming>>>,
    learning: Arc<Mutex<dns::Learning>>,
    host: Arc<str>,
}

/// What the writer needs to name an event: a copy of the agent registry
/// and the rule table, published by the policy service before the kernel
/// can decide by them.
#[derive(Default)]
pub(super) struct Naming {
    agent_names: HashMap<AgentId, String>,
    /// Per agent name: its id, its `spec.explain` setting and whether it
    /// is selected by more than `baton exec`.
    explain: HashMap<String, (AgentId, Option<bool>, bool)>,
    /// Rule `first_rule_id + i` is `rules[i]`.
    rules: Vec<RuleRef>,
    first_rule_id: RuleId,
}

impl Naming {
    /// The names of `registry`'s agents and the rules of `set`, preceded by
    /// `kept`: older rules (from `kept_first`) that queued events may
    /// still cite.
    pub(super) fn new<'a>(
        registry: &AgentRegistry,
        set: &CompiledPolicySet,
        kept: impl Iterator<Item = &'a RuleRef>,
        kept_first: RuleId,
    ) -> Self {
        let agent_names = registry
            .ids()
            .iter()
            .map(|(name, id)| (*id, name.to_string()))
            .collect();
        let explain = set
            .agents
            .iter()
            .filter_map(|(name, agent)| {
                let id = registry.id_of(name.as_str())?;
                Some((
                    name.to_string(),
                    (id, agent.explain, agent.selected_outside_exec()),
                ))
            })
            .collect();
        let mut rules: Vec<RuleRef> = kept.cloned().collect();
        let first_rule_id = if rules.is_empty() {
            set.first_rule_id
        } else {
            kept_first
        };
        rules.extend(set.rules.iter().cloned());
        Self {
            agent_names,
            explain,
            rules,
            first_rule_id,
        }
    }

    fn rule(&self, id: RuleId) -> Option<&RuleRef> {
        id.index_from(self.first_rule_id)
            .and_then(|i| self.rules.get(i))
    }
}

impl AuditWriter {
    pub(super) fn new(
        sink: AuditTrail,
        explainer: Option<Explainer>,
        metrics: Arc<Metrics>,
        learning: Arc<Mutex<dns::Learning>>,
        host: String,
    ) -> Self {
        Self {
            sink,
            explainer,
            metrics,
            decision_counters: HashMap::new(),
            decoder: Decoder {
                naming: Arc::new(Naming::default()),
                latest: Arc::default(),
                learning,
                host: host.into(),
            },
        }
    }

    /// The host name records carry.
    pub(super) fn host(&self) -> &str {
        &self.decoder.host
    }

    /// A copy of what decoding events takes, with the names in force now.
    pub(super) fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    /// The metrics the writer counts decisions in.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Replaces the names events are decoded with.
    pub(super) fn set_naming(&mut self, naming: Naming) {
        let naming = Arc::new(naming);
        if let Ok(mut latest) = self.decoder.latest.write() {
            *latest = naming.clone();
        }
        self.decoder.naming = naming;
    }

    /// Writes `record`, counts its decision and, for a denial, offers the
    /// denied process its `spec.explain` line.
    pub(super) fn record(&mut self, mut record: AuditRecord) {
        if record.verdict != "info" {
            let agent = record.agent.as_deref().unwrap_or("");
            let labels = (record.control, record.verdict);
            if let Some(counter) = self
                .decision_counters
                .get(agent)
                .and_then(|by_labels| by_labels.get(&labels))
            {
                counter.inc();
            } else {
                let counter = self.metrics.decision_counter(agent, labels.0, labels.1);
                counter.inc();
                self.decision_counters
                    .entry(agent.to_string())
                    .or_default()
                    .insert(labels, counter);
            }
        }
        if let Err(error) = self.sink.write(&mut record) {
            tracing::error!(%error, "audit record lost");
        }
        if record.verdict == "denied" {
            self.explain(&record);
        }
    }

    /// Offers the denied process its `spec.explain` line.
    fn explain(&mut self, record: &AuditRecord) {
        let (Some(explainer), Some(agent), Some(process)) =
            (&mut self.explainer, &record.agent, &record.process)
        else {
            return;
        };
        let Some(&(agent_id, setting, other_selectors)) =
            self.decoder.naming.explain.get(agent.as_str())
        else {
            return;
        };
        // Under a flood, most denials are past the agent's budget: they
        // cost a lookup, not a serialization.
        if setting == Some(false) || !explainer.wants(agent_id) {
            return;
        }
        let Some(line) = serde_json::to_value(record)
            .ok()
            .and_then(|value| crate::explain::line_for(&value))
        else {
            return;
        };
        explainer.offer(crate::explain::Explanation {
            agent_id,
            pid: process.pid,
            root_pid: process.agent_root_pid,
            // Unset: `baton exec` processes only. An agent selected by name
            // alone has no others.
            exec_only: setting.is_none() && other_selectors,
            line,
        });
    }

    /// Writes a checkpoint or rotates the log when one is due, and
    /// publishes the trail's health.
    pub(super) fn tick(&mut self) {
        if let Err(error) = self.sink.tick() {
            tracing::error!(%error, "audit checkpoint failed");
        }
        let health = self.sink.health();
        self.metrics.set_audit_health(&health);
    }
}

impl Decoder {
    /// Turns a kernel (or fanotify listener) event into a record, naming
    /// its agent, rule and learned domain from what the daemon knows.
    pub(super) fn decode(
        &self,
        bytes: &[u8],
        clock: &Clock,
        processes: &mut ProcessCache,
    ) -> Result<AuditRecord, crate::audit::record::DecodeError> {
        let latest = || self.latest.read().ok().map(|naming| Arc::clone(&naming));
        let agent_name = |id: AgentId| {
            self.naming
                .agent_names
                .get(&id)
                .cloned()
                .or_else(|| latest()?.agent_names.get(&id).cloned())
        };
        let rule = |id: RuleId| {
            if id.raw() == agent_common::backstop::UNCOVERED_RULE {
                return Some(("baton".to_string(), "backstop.uncovered".to_string()));
            }
            if id.raw() & agent_common::egress::GRANT_RULE_BIT != 0 {
                let grant = id.raw() & !agent_common::egress::GRANT_RULE_BIT;
                return Some(("grant".to_string(), format!("grant/{grant}")));
            }
            let named =
                |naming: &Naming| naming.rule(id).map(|r| (r.policy.clone(), r.rule.clone()));
            named(&self.naming).or_else(|| named(latest()?.as_ref()))
        };
        // Only the learned row the kernel matched names a domain. In audit
        // mode names no rule allows are resolved with rule 0 and open no
        // row; a would-deny to such an address still names the name.
        let domain_of = |agent_id: AgentId, addr: IpAddr, learned_rule: RuleId, audit: bool| {
            if learned_rule.is_none() && !audit {
                return None;
            }
            self.learning
                .lock()
                .ok()?
                .learned_names
                .get(&(agent_id, addr, learned_rule))
                .cloned()
        };
        let context = Context {
            host: &self.host,
            clock,
            agent_name: &agent_name,
            rule: &rule,
            domain_of: &domain_of,
        };
        AuditRecord::from_event(bytes, &context, processes)
    }
}

/// How long the event drain may take to catch up with the denials a
/// `baton exec` agent's first process made before it exited.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(1500);

/// Where BPF LSM is missing, denials also reach the writer from Landlock's
/// reports and the fanotify listener, outside the ring buffer: a little
/// longer for those.
const FALLBACK_GRACE: Duration = Duration::from_millis(25);

/// Keeps the standard error of process `pid`, just admitted to `agent` by
/// `baton exec`, for its explanations (see [`crate::explain`]), and lets it
/// go once the process has exited and the denials it made before are
/// offered.
pub(super) fn keep_stderr(daemon: &Daemon, state: &PolicyService, agent: &str, pid: u32) {
    let wanted = state
        .policies
        .agents
        .iter()
        .find(|(name, _)| name.as_str() == agent)
        .is_some_and(|(_, compiled)| compiled.explain != Some(false));
    if !wanted {
        return;
    }
    let Some(keeper) = daemon.writer.lock().ok().and_then(|writer| {
        writer
            .explainer
            .as_ref()
            .map(crate::explain::Explainer::keeper)
    }) else {
        return;
    };
    let Some(pidfd) = keeper.keep(pid) else {
        return;
    };
    let grace = !state.files_enforced;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        keeper.release(pid);
        return;
    };
    let daemon = daemon.weak_self();
    runtime.spawn(async move {
        if let Ok(exited) = dns::watch_pidfd(pidfd) {
            let _ = exited.readable().await;
        }
        catch_up(&daemon).await;
        if grace {
            tokio::time::sleep(FALLBACK_GRACE).await;
        }
        let _ = tokio::task::spawn_blocking(move || keeper.release(pid)).await;
    });
}

/// Waits (up to [`CATCH_UP_LIMIT`]) until the event drain has given back
/// everything the kernel had queued when it was called.
async fn catch_up(daemon: &std::sync::Weak<Daemon>) {
    let position = |daemon: &std::sync::Weak<Daemon>| {
        let daemon = daemon.upgrade()?;
        let ring = daemon.event_backlog.state();
        Some((ring.consumer, ring.producer))
    };
    let Some((_, target)) = position(daemon) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match position(daemon) {
            Some((consumer, _)) if consumer < target => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ => return,
        }
    }
}

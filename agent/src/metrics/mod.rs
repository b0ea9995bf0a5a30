//! Prometheus metrics and the health endpoints.
//!
//! [`Metrics`] holds every `baton_*` family; the daemon records into it as
//! things happen, and [`serve`] exposes it over HTTP as OpenMetrics text
//! (which Prometheus scrapes natively) on `/metrics`, next to `/healthz`
//! and `/readyz`. `docs/metrics.md` describes every family.
//!
//! Label values are bounded: agents come from the loaded policies, the
//! other labels from fixed sets, so a misbehaving agent cannot grow the
//! exposition without bound.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

mod server;

pub use server::{DEFAULT_ADDRESS, MetricsError, MetricsServer, OPENMETRICS_CONTENT_TYPE, serve};

/// State of an agent's circuit breaker, as `baton_breaker_state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// The agent runs under its policy.
    Closed,
    /// The breaker tripped: the agent is quarantined.
    Open,
    /// The agent is let out on probation; the next violation reopens it.
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Outcome of a policy reload, the `result` label of
/// `baton_policy_reload_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new policies are in force.
    Success,
    /// The new policies were refused; the previous ones stay in force.
    Failure,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// A step of a policy reload, the `phase` label of
/// `baton_policy_reload_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadPhase {
    /// Reading and parsing the policy files.
    Parse,
    /// Checking and compiling the set into map entries.
    Compile,
    /// Writing the new generation into the kernel maps, flipping the
    /// active generation, deleting the old one and updating the daemon's
    /// own state (agents, breakers, DNS proxies).
    Swap,
}

impl ReloadPhase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Compile => "compile",
            Self::Swap => "swap",
        }
    }
}

/// Outcome of one query to an agent's DNS proxy, the `result` label of
/// `baton_dns_queries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsResult {
    /// The name is allowed: the answer was forwarded and its addresses
    /// learned.
    Allowed,
    /// The name is not allowed: the agent got a refusal.
    Refused,
    /// Audit mode: the name is not allowed, but the answer was forwarded.
    WouldRefuse,
    /// The upstream resolver failed or timed out: the agent got SERVFAIL.
    Failed,
}

impl DnsResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::WouldRefuse => "would-refuse",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    agent: String,
    control: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// The reload histograms' buckets: 1 ms, doubling, to about 16 s. A small
/// set reloads in a few milliseconds; tens of thousands of rules take
/// hundreds.
fn reload_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PinLabels {
    kind: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    agent: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Which kernel counter a running total came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum KernelTotal {
    Dropped,
    Suppressed,
}

/// Every `baton_*` metric family. Cheap to share: wrap it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    events_dropped: Family<AgentLabels, Counter>,
    events_suppressed: Family<AgentLabels, Counter>,
    breaker_state: Family<AgentLabels, Gauge>,
    secret_tainted: Family<AgentLabels, Gauge>,
    policy_generation: Gauge,
    policy_reloads: Family<ResultLabels, Counter>,
    policy_last_reload_success: Gauge,
    policy_last_reload_time: Gauge<f64, AtomicU64>,
    policy_reload_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    dns_queries: Family<DnsLabels, Counter>,
    dns_duration: Histogram,
    pins_restored: Family<PinLabels, Counter>,
    programs_detached: Gauge,
    audit_write_failing: Gauge,
    audit_spooled_records: Gauge,
    audit_spooled_bytes: Gauge,
    events_pending_bytes: Gauge,
    audit_records_lost: Counter,
    /// Why the audit log cannot be written, while it cannot (`/readyz`).
    audit_failure: Mutex<Option<String>>,
    /// Last kernel total seen per counter and agent, so that running totals
    /// read from the kernel become counter increments.
    kernel_totals: Mutex<HashMap<(KernelTotal, String), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every family, all empty but the build information.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions recorded in the audit log, by agent, control and verdict",
            decisions.clone(),
        );
        let events_dropped = Family::<AgentLabels, Counter>::default();
        registry.register(
            "events_dropped",
            "Kernel events lost because the ring buffer was full",
            events_dropped.clone(),
        );
        let events_suppressed = Family::<AgentLabels, Counter>::default();
        registry.register(
            "events_suppressed",
            "Kernel events not sent because the agent exceeded its event rate",
            events_suppressed.clone(),
        );
        let breaker_state = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state per agent: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let secret_tainted = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "secret_tainted",
            "1 while the agent is held to its afterSecret egress for having opened a secret",
            secret_tainted.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the policy set the kernel enforces",
            policy_generation.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reload",
            "Policy loads and reloads, by result",
            policy_reloads.clone(),
        );
        let policy_last_reload_success = Gauge::default();
        registry.register(
            "policy_last_reload_success",
            "Whether the last policy load or reload succeeded (1) or was refused (0)",
            policy_last_reload_success.clone(),
        );
        let policy_last_reload_time = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "policy_last_reload_timestamp_seconds",
            "Time of the last policy load or reload, in seconds since the Unix epoch",
            policy_last_reload_time.clone(),
        );
        let policy_reload_duration =
            Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reload_histogram,
            );
        registry.register(
            "policy_reload_duration_seconds",
            "Time each phase of a successful policy reload took: parse, compile, swap",
            policy_reload_duration.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries in a kernel map",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Maximum entries of a kernel map",
            map_capacity.clone(),
        );
        let dns_queries = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_queries",
            "Queries answered by the agents' DNS proxies, by agent and result",
            dns_queries.clone(),
        );
        // 0.5 ms to about 4 s: a local cache answers in well under a
        // millisecond, and the upstream timeout defaults to 2 s.
        let dns_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "dns_query_duration_seconds",
            "Time from a query's arrival at a DNS proxy to its answer",
            dns_duration.clone(),
        );
        let pins_restored = Family::<PinLabels, Counter>::default();
        registry.register(
            "pins_restored",
            "Pins of Baton's maps and links found missing or replaced and put back, by kind (map, link) and cause (missing, replaced, unreadable)",
            pins_restored.clone(),
        );
        let programs_detached = Gauge::default();
        registry.register(
            "programs_detached",
            "Baton programs the kernel no longer runs at their hook (checked against the kernel every second); 0 when every control is in force",
            programs_detached.clone(),
        );
        let audit_write_failing = Gauge::default();
        registry.register(
            "audit_write_failing",
            "1 while the audit log cannot be written (records wait in the spool or are lost), else 0",
            audit_write_failing.clone(),
        );
        let audit_spooled_records = Gauge::default();
        registry.register(
            "audit_spooled_records",
            "Audit records waiting in the spool for the log to take them",
            audit_spooled_records.clone(),
        );
        let audit_spooled_bytes = Gauge::default();
        registry.register(
            "audit_spooled_bytes",
            "Bytes of audit records waiting in the spool",
            audit_spooled_bytes.clone(),
        );
        let events_pending_bytes = Gauge::default();
        registry.register(
            "events_pending_bytes",
            "Bytes of kernel events in the ring buffer that the daemon has not yet written to the audit log",
            events_pending_bytes.clone(),
        );
        let audit_records_lost = Counter::default();
        registry.register(
            "audit_records_lost",
            "Audit records lost because the spool was full; gap records in the log name them",
            audit_records_lost.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the version label names the running Baton",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Self {
            registry,
            decisions,
            events_dropped,
            events_suppressed,
            breaker_state,
            secret_tainted,
            policy_generation,
            policy_reloads,
            policy_last_reload_success,
            policy_last_reload_time,
            policy_reload_duration,
            map_entries,
            map_capacity,
            dns_queries,
            dns_duration,
            pins_restored,
            programs_detached,
            audit_write_failing,
            audit_spooled_records,
            audit_spooled_bytes,
            events_pending_bytes,
            audit_records_lost,
            audit_failure: Mutex::new(None),
            kernel_totals: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one decision, with the `agent`, `control` and `verdict` its
    /// audit record carries (`egress`, `denied`, say). Lifecycle records
    /// are not decisions and are not counted.
    pub fn record_decision(&self, agent: &str, control: &str, verdict: &str) {
        self.decision_counter(agent, control, verdict).inc();
    }

    /// The counter of decisions with these labels, for a caller that
    /// counts many and keeps it (building the labels costs three
    /// allocations and a lookup).
    pub fn decision_counter(&self, agent: &str, control: &str, verdict: &str) -> Counter {
        self.decisions
            .get_or_create(&DecisionLabels {
                agent: agent.to_owned(),
                control: control.to_owned(),
                verdict: verdict.to_owned(),
            })
            .clone()
    }

    /// Adds `count` events of `agent` lost to a full ring buffer.
    pub fn add_events_dropped(&self, agent: &str, count: u64) {
        Self::add(&self.events_dropped, agent, count);
    }

    /// Adds `count` events of `agent` that its rate limit held back.
    pub fn add_events_suppressed(&self, agent: &str, count: u64) {
        Self::add(&self.events_suppressed, agent, count);
    }

    /// Takes the kernel's running total of `agent`'s dropped events; the
    /// counter grows by what is new since the last call. The first call
    /// after a start counts everything the kernel saw, including what was
    /// dropped while no daemon ran.
    pub fn observe_events_dropped_total(&self, agent: &str, total: u64) {
        let delta = self.kernel_delta(KernelTotal::Dropped, agent, total);
        self.add_events_dropped(agent, delta);
    }

    /// Like [`Metrics::observe_events_dropped_total`], for suppressed events.
    pub fn observe_events_suppressed_total(&self, agent: &str, total: u64) {
        let delta = self.kernel_delta(KernelTotal::Suppressed, agent, total);
        self.add_events_suppressed(agent, delta);
    }

    /// Takes the audit trail's state: whether it is failing, what waits in
    /// the spool, and its running total of lost records.
    pub fn set_audit_health(&self, health: &crate::audit::trail::AuditHealth) {
        self.audit_write_failing
            .set(i64::from(health.failing.is_some()));
        self.audit_spooled_records
            .set(saturating_i64(health.spooled_records));
        self.audit_spooled_bytes
            .set(saturating_i64(health.spooled_bytes));
        let counted = self.audit_records_lost.get();
        if health.lost_total > counted {
            self.audit_records_lost.inc_by(health.lost_total - counted);
        }
        *self.audit_failure.lock().unwrap_or_else(|e| e.into_inner()) = health.failing.clone();
    }

    /// Sets the bytes of kernel events not yet drained.
    pub fn set_events_pending(&self, bytes: u64) {
        self.events_pending_bytes.set(saturating_i64(bytes));
    }

    /// Why the audit log cannot be written, while it cannot.
    pub fn audit_failure(&self) -> Option<String> {
        self.audit_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets `agent`'s breaker state.
    pub fn set_breaker_state(&self, agent: &str, state: BreakerState) {
        self.breaker_state
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .set(state.value());
    }

    /// Sets whether `agent` is tainted by a secret it opened.
    pub fn set_secret_tainted(&self, agent: &str, tainted: bool) {
        self.secret_tainted
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .set(i64::from(tainted));
    }

    /// Forgets an agent that no policy selects any more: its breaker state
    /// would otherwise be reported forever. Its counters stay, as counters
    /// must.
    pub fn forget_agent(&self, agent: &str) {
        let labels = AgentLabels {
            agent: agent.to_owned(),
        };
        self.breaker_state.remove(&labels);
        self.secret_tainted.remove(&labels);
    }

    /// Sets the generation of the policy set in force.
    pub fn set_policy_generation(&self, generation: u64) {
        self.policy_generation.set(saturating_i64(generation));
    }

    /// Counts a policy load or reload and remembers it as the last one.
    pub fn record_policy_reload(&self, result: ReloadResult) {
        self.policy_reloads
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        self.policy_last_reload_success
            .set(i64::from(result == ReloadResult::Success));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.policy_last_reload_time.set(now);
    }

    /// Records how long one phase of a successful reload took.
    pub fn observe_reload_phase(&self, phase: ReloadPhase, duration: Duration) {
        self.policy_reload_duration
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Sets how full the kernel map `map` is.
    pub fn set_map_usage(&self, map: &str, entries: u64, capacity: u64) {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        self.map_entries
            .get_or_create(&labels)
            .set(saturating_i64(entries));
        self.map_capacity
            .get_or_create(&labels)
            .set(saturating_i64(capacity));
    }

    /// Counts one query to `agent`'s DNS proxy and how long it took to
    /// answer.
    pub fn record_dns_query(&self, agent: &str, result: DnsResult, duration: Duration) {
        self.dns_queries
            .get_or_create(&DnsLabels {
                agent: agent.to_owned(),
                result: result.as_str(),
            })
            .inc();
        self.dns_duration.observe(duration.as_secs_f64());
    }

    /// Counts a pin put back: `kind` is `map` or `link`, `cause` one of
    /// [`crate::kernel::pins::PinDamage::as_str`].
    pub fn record_pin_restored(&self, kind: &'static str, cause: &'static str) {
        self.pins_restored
            .get_or_create(&PinLabels { kind, cause })
            .inc();
    }

    /// Sets how many of Baton's programs the kernel does not run.
    pub fn set_programs_detached(&self, count: usize) {
        self.programs_detached.set(saturating_i64(count as u64));
    }

    /// The OpenMetrics text exposition of every family, ending in `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn add(family: &Family<AgentLabels, Counter>, agent: &str, count: u64) {
        if count == 0 {
            return;
        }
        family
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .inc_by(count);
    }

    fn kernel_delta(&self, kind: KernelTotal, agent: &str, total: u64) -> u64 {
        let mut seen = self
            .kernel_totals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = seen.insert((kind, agent.to_owned()), total).unwrap_or(0);
        // A total below the last one means the kernel counter started over
        // (the maps were recreated): all of it is new.
        if total >= last { total - last } else { total }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn families_are_named_as_documented() {
        let metrics = Metrics::new();
        metrics.record_decision("demo", "egress", "denied");
        metrics.add_events_dropped("demo", 1);
        metrics.add_events_suppressed("demo", 1);
        metrics.set_breaker_state("demo", BreakerState::Closed);
        metrics.set_secret_tainted("demo", false);
        metrics.set_policy_generation(1);
        metrics.record_policy_reload(ReloadResult::Success);
        metrics.observe_reload_phase(ReloadPhase::Compile, Duration::from_millis(3));
        metrics.set_map_usage("EGRESS_V4", 1, 2);
        metrics.record_dns_query("demo", DnsResult::Allowed, Duration::from_millis(1));
        let text = metrics.encode().unwrap();
        for (name, kind) in [
            ("baton_decisions", "counter"),
            ("baton_events_dropped", "counter"),
            ("baton_events_suppressed", "counter"),
            ("baton_breaker_state", "gauge"),
            ("baton_secret_tainted", "gauge"),
            ("baton_policy_generation", "gauge"),
            ("baton_policy_reload", "counter"),
            ("baton_policy_last_reload_success", "gauge"),
            ("baton_policy_last_reload_timestamp_seconds", "gauge"),
            ("baton_policy_reload_duration_seconds", "histogram"),
            ("baton_map_entries", "gauge"),
            ("baton_map_capacity", "gauge"),
            ("baton_dns_queries", "counter"),
            ("baton_dns_query_duration_seconds", "histogram"),
            ("baton_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "no {kind} {name} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn decisions_are_counted_per_label_set() {
        let metrics = Metrics::new();
        metrics.record_decision("demo", "egress", "denied");
        metrics.record_decision("demo", "egress", "denied");
        metrics.record_decision("demo", "file", "would-deny");
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample_line(
                &text,
                "baton_decisions_total{agent=\"demo\",control=\"egress\""
            ),
            Some("baton_decisions_total{agent=\"demo\",control=\"egress\",verdict=\"denied\"} 2")
        );
        assert_eq!(
            sample_line(
                &text,
                "baton_decisions_total{agent=\"demo\",control=\"file\""
            ),
            Some("baton_decisions_total{agent=\"demo\",control=\"file\",verdict=\"would-deny\"} 1")
        );
    }

    #[test]
    fn kernel_totals_become_increments() {
        let metrics = Metrics::new();
        metrics.observe_events_dropped_total("demo", 5);
        metrics.observe_events_dropped_total("demo", 5);
        metrics.observe_events_dropped_total("demo", 8);
        // The kernel counter started over: its whole value is new.
        metrics.observe_events_dropped_total("demo", 2);
        metrics.observe_events_suppressed_total("demo", 3);
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample_line(&text, "baton_events_dropped_total"),
            Some("baton_events_dropped_total{agent=\"demo\"} 10")
        );
        assert_eq!(
            sample_line(&text, "baton_events_suppressed_total"),
            Some("baton_events_suppressed_total{agent=\"demo\"} 3")
        );
    }

    #[test]
    fn reloads_keep_the_last_result() {
        let metrics = Metrics::new();
        metrics.record_policy_reload(ReloadResult::Success);
        metrics.record_policy_reload(ReloadResult::Failure);
        metrics.set_policy_generation(7);
        let text = metrics.encode().unwrap();
        assert!(text.contains("baton_policy_reload_total{result=\"success\"} 1\n"));
        assert!(text.contains("baton_policy_reload_total{result=\"failure\"} 1\n"));
        assert!(text.contains("baton_policy_last_reload_success 0\n"));
        assert!(text.contains("baton_policy_generation 7\n"));
        let stamp: f64 = sample_line(&text, "baton_policy_last_reload_timestamp_seconds ")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(stamp > 1.7e9, "{stamp}");
    }

    #[test]
    fn forgotten_agents_leave_the_breaker_gauge() {
        let metrics = Metrics::new();
        metrics.set_breaker_state("gone", BreakerState::HalfOpen);
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("baton_breaker_state{agent=\"gone\"} 2\n")
        );
        metrics.forget_agent("gone");
        assert!(!metrics.encode().unwrap().contains("agent=\"gone\""));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.record_decision("a\"b\\c\nd", "egress", "denied");
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"agent="a\"b\\c\nd""#),
            "label value not escaped:\n{text}"
        );
    }
}

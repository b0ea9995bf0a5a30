//! From the kernel's ring buffer to the audit trail, and the loss
//! accounting around it.

use super::*;
use crate::{kernel::ring::EventRing, policy::compile::CompiledAgent};

/// Writes checkpoints and rotates the log on time even when no record
/// arrives.
pub(super) async fn tick_audit(daemon: Weak<Daemon>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        if let Ok(mut state) = daemon.state.lock() {
            state.record_drops();
            state.save_progress();
            for (map, entries, capacity) in state.maps.usage() {
                state.metrics.set_map_usage(map, entries, capacity);
            }
            // Only the daemon writes the proxy map: its proxies are its entries.
            let proxies = state.proxies.len() as u64;
            state.metrics.set_map_usage(
                agent_common::map_names::DNS_PROXY_PORTS,
                proxies,
                u64::from(agent_common::egress::DNS_PROXY_ENTRIES),
            );
            if let Err(error) = state.sink.tick() {
                tracing::error!(%error, "audit checkpoint failed");
            }
            let health = state.sink.health();
            state.metrics.set_audit_health(&health);
            state
                .metrics
                .set_events_pending(state.event_backlog.bytes());
        }
    }
}

/// Records drained per hold of the state lock. A flood of denials (a
/// restarted daemon finds the ring buffer full, and a flooding agent keeps
/// it so) must not hold the lock for as long as the flood lasts: `baton
/// status`, admissions and DNS learning wait on it. Past this many the
/// drain lets go for a moment and then goes on.
const DRAIN_BATCH: usize = 1024;

/// How long the drain waits for a wake-up before it looks at the ring
/// itself. The kernel wakes the reader only for an event committed at the
/// consumer position; should that wake-up be missed, events would sit in
/// the ring, unrecorded, until the next one came.
const WAKE_UP_PATIENCE: Duration = Duration::from_secs(1);

pub(super) async fn drain_events(events: EventRing, daemon: Arc<Daemon>) -> anyhow::Result<()> {
    // SAFETY: the ring owns its descriptor and `AsyncFd` owns the ring, so
    // the descriptor outlives the registration.
    let mut events = unsafe { AsyncFd::register(events) }.map_err(|e| e.into_parts().1)?;
    let clock = Clock::new();
    let mut processes = ProcessCache::default();
    let mut waiter = RingWaiter::default();
    let mut more = true;
    loop {
        waiter.wait(&mut events, more).await?;
        more = drain_batch(events.get_mut(), &daemon, &clock, &mut processes);
    }
}

/// Takes requests for a DNS proxy in a new network namespace from their
/// own ring, which a flood of denials in the event ring cannot fill.
pub(super) async fn serve_netns_requests(
    requests: EventRing,
    daemon: Weak<Daemon>,
) -> anyhow::Result<()> {
    // SAFETY: as in `drain_events`.
    let mut requests = unsafe { AsyncFd::register(requests) }.map_err(|e| e.into_parts().1)?;
    let mut waiter = RingWaiter::default();
    let mut more = true;
    loop {
        waiter.wait(&mut requests, more).await?;
        let Some(daemon) = daemon.upgrade() else {
            return Ok(());
        };
        let ring = requests.get_mut();
        let mut taken = 0;
        while taken < DRAIN_BATCH
            && let Some(item) = ring.read_next()
        {
            taken += 1;
            hand_over_netns_request(&daemon, item);
        }
        more = ring.commit();
    }
}

/// Opens the DNS proxy `item` asks for, if it is such a request, on a
/// blocking thread (entering a namespace blocks).
fn hand_over_netns_request(daemon: &Arc<Daemon>, item: &[u8]) {
    if let Some((agent_id, netns_cookie, pid)) = netns_request(item) {
        let daemon = daemon.clone();
        tokio::task::spawn_blocking(move || open_netns_proxy(&daemon, agent_id, netns_cookie, pid));
    }
}

/// Waits until a ring is worth reading.
#[derive(Default)]
struct RingWaiter {
    missed_wake_ups: u64,
}

impl RingWaiter {
    /// Returns when `ring` may hold events: at once (after a pause for the
    /// lock's other users) when the last read said `more`, else on the
    /// kernel's wake-up, or after [`WAKE_UP_PATIENCE`] if events wait
    /// without one.
    async fn wait(&mut self, ring: &mut AsyncFd<EventRing>, more: bool) -> std::io::Result<()> {
        if more {
            // The kernel sends no wake-up for events queued behind a
            // read-ahead batch: read on, but let the state lock's other
            // users in first (the tokio timer's granularity is a
            // millisecond).
            tokio::time::sleep(Duration::from_micros(100)).await;
            return Ok(());
        }
        loop {
            let woken = match tokio::time::timeout(WAKE_UP_PATIENCE, ring.readable_mut()).await {
                // Readiness is cleared before the ring is read: an event
                // committed while it is read wakes the next wait.
                Ok(guard) => {
                    guard?.clear_ready();
                    true
                }
                Err(_) => false,
            };
            if woken {
                return Ok(());
            }
            if ring.get_ref().pending() {
                self.missed_wake_ups += 1;
                if self.missed_wake_ups.is_power_of_two() {
                    tracing::warn!(
                        missed_wake_ups = self.missed_wake_ups,
                        "events waited in a ring buffer without a wake-up; reading them"
                    );
                }
                return Ok(());
            }
        }
    }
}

/// Moves one batch from the ring to the audit trail, and gives its events
/// back to the kernel once they are written. Returns whether more wait.
fn drain_batch(
    ring: &mut EventRing,
    daemon: &Arc<Daemon>,
    clock: &Clock,
    processes: &mut ProcessCache,
) -> bool {
    // The lock is held in this function only, never across an await.
    let mut state = daemon.state.lock().expect("state lock poisoned");
    // One write for what this batch drains, not one per record.
    state.sink.begin_batch();
    let mut drained = 0;
    // A batch ends before the trail would write part of it early: written
    // in parts, a batch killed midway would be read again whole by the
    // next daemon, and its first part written twice.
    while drained < DRAIN_BATCH
        && !state.sink.batch_is_full()
        && let Some(item) = ring.read_next()
    {
        drained += 1;
        let record = state.decode_event(item, clock, processes);
        match record {
            Ok(record) => state.record(record),
            Err(error) => tracing::warn!(%error, "undecodable kernel event"),
        }
    }
    if let Err(error) = state.sink.end_batch() {
        tracing::error!(%error, "audit records lost");
    }
    // Only now, with the batch in the log (or in the spool, which accounts
    // for what it loses), may the kernel reuse the events' space: a daemon
    // killed before this line leaves them to the next one.
    let more = ring.commit();
    if let Err(error) = state.sink.settle() {
        tracing::error!(%error, "audit checkpoint failed");
    }
    let health = state.sink.health();
    state.metrics.set_audit_health(&health);
    state.evaluate_breakers();
    more
}

impl State {
    /// Writes a record for events the kernel could not queue since the last
    /// look: loss is counted and recorded, never silent.
    pub(super) fn record_drops(&mut self) {
        let agents: Vec<(u32, String)> = self
            .registry
            .ids()
            .iter()
            .map(|(name, id)| (*id, name.to_string()))
            .collect();
        for (agent_id, agent) in agents {
            let counters = self.counters(agent_id);
            self.metrics
                .observe_events_suppressed_total(&agent, counters.events_suppressed);
            let suppressed_seen = self.suppressions_recorded.entry(agent_id).or_insert(0);
            if counters.events_suppressed > *suppressed_seen {
                let count = counters.events_suppressed - *suppressed_seen;
                *suppressed_seen = counters.events_suppressed;
                let host = self.host.clone();
                self.record(AuditRecord::suppressed(
                    &host,
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
                let host = self.host.clone();
                self.record(AuditRecord::suppressed(
                    &host,
                    Some(&agent),
                    count,
                    "the kernel's event ring buffer was full",
                ));
            }
        }
    }

    pub(super) fn record(&mut self, mut record: AuditRecord) {
        if record.verdict != "info" {
            self.metrics.record_decision(
                record.agent.as_deref().unwrap_or(""),
                record.control,
                record.verdict,
            );
        }
        if let Err(error) = self.sink.write(&mut record) {
            tracing::error!(%error, "audit record lost");
        }
        if record.verdict == "denied" {
            self.explain(&record);
        }
    }

    /// Offers the denied process its `spec.explain` line.
    fn explain(&self, record: &AuditRecord) {
        let (Some(explainer), Some(agent), Some(process)) =
            (&self.explainer, &record.agent, &record.process)
        else {
            return;
        };
        let Some((agent_id, setting, other_selectors)) = self.registry.id_of(agent).map(|id| {
            let compiled = self
                .policies
                .agents
                .iter()
                .find(|(name, _)| name.as_str() == *agent)
                .map(|(_, compiled)| compiled);
            (
                id,
                compiled.and_then(|c| c.explain),
                compiled.is_some_and(CompiledAgent::selected_outside_exec),
            )
        }) else {
            return;
        };
        if setting == Some(false) {
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
}

impl State {
    /// Turns a kernel (or fanotify listener) event into a record, naming
    /// its agent, rule and learned domain from what the daemon knows.
    pub(super) fn decode_event(
        &self,
        bytes: &[u8],
        clock: &Clock,
        processes: &mut ProcessCache,
    ) -> Result<AuditRecord, crate::audit::record::DecodeError> {
        let agent_name = |id: u32| self.registry.name_of(id).map(|n| n.to_string());
        let rule = |id: u32| {
            self.policies
                .rule(id)
                .map(|r| (r.policy.clone(), r.rule.clone()))
        };
        // Only the learned row the kernel matched names a domain. In audit
        // mode names no rule allows are resolved with rule 0 and open no
        // row; a would-deny to such an address still names the name.
        let domain_of = |agent_id: u32, addr: IpAddr, learned_rule: u32, audit: bool| {
            if learned_rule == 0 && !audit {
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

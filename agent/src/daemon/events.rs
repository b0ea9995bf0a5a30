//! From the kernel's ring buffer to the audit trail, and the loss
//! accounting around it.

use super::*;
use crate::kernel::ring::EventRing;

/// Writes checkpoints and rotates the log on time even when no record
/// arrives.
pub(super) async fn tick_audit(daemon: Weak<Daemon>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        if let Ok(mut breakers) = daemon.breakers.lock() {
            breakers.record_drops();
            breakers.save_progress();
        }
        if let Ok(state) = daemon.policy.lock() {
            for (map, entries, capacity) in state.maps.usage() {
                state.metrics.set_map_usage(map, entries, capacity);
            }
            // Only the daemon writes the proxy map: its proxies are its entries.
            let proxies = state
                .proxies
                .lock()
                .map_or(0, |proxies| proxies.running.len()) as u64;
            state.metrics.set_map_usage(
                agent_common::map_names::DNS_PROXY_PORTS,
                proxies,
                u64::from(agent_common::egress::DNS_PROXY_ENTRIES),
            );
        }
        daemon
            .writer
            .lock()
            .map(|writer| {
                writer
                    .metrics()
                    .set_events_pending(daemon.event_backlog.bytes())
            })
            .ok();
        if let Ok(mut writer) = daemon.writer.lock() {
            writer.tick();
        }
    }
}

/// Events decoded, then written under one hold of the writer's lock. A
/// flood of denials (a restarted daemon finds the ring buffer full, and a
/// flooding agent keeps it so) must not hold the lock for as long as the
/// flood lasts: every other record (control requests, breakers, DNS
/// refusals) waits on it. Between batches the drain decodes the next one
/// with the lock let go.
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
    // The writer redacts every record; processes the drain reads are
    // redacted once, as they enter its cache.
    let redactor = daemon
        .writer
        .lock()
        .map_err(|_| anyhow::anyhow!("audit writer lock poisoned"))?
        .sink
        .redactor()
        .clone();
    let mut processes = ProcessCache::redacting(redactor);
    // Kept from batch to batch: a batch's records take some hundreds of
    // kilobytes, and allocating (and growing) that anew for every batch
    // made the allocator's work a good part of the drain's.
    let mut decoded = Vec::with_capacity(DRAIN_BATCH);
    let mut waiter = RingWaiter::default();
    let mut last = Drained {
        more: true,
        read: true,
    };
    loop {
        waiter.wait(&mut events, last).await?;
        last = drain_batch(
            events.get_mut(),
            &daemon,
            &clock,
            &mut processes,
            &mut decoded,
        );
    }
}

/// What one pass over a ring found.
#[derive(Clone, Copy)]
struct Drained {
    /// More events wait (or are being written) past what was read.
    more: bool,
    /// The pass read at least one event.
    read: bool,
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
    let mut last = Drained {
        more: true,
        read: true,
    };
    loop {
        waiter.wait(&mut requests, last).await?;
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
        last = Drained {
            more: ring.commit(),
            read: taken > 0,
        };
    }
}

/// Opens the DNS proxy `item` asks for, if it is such a request, on a
/// blocking thread (entering a namespace blocks).
fn hand_over_netns_request(daemon: &Arc<Daemon>, item: &[u8]) {
    if let Some((agent_id, netns_cookie, pid)) = netns_request(item) {
        let daemon = daemon.clone();
        tokio::task::spawn_blocking(move || open_netns_proxy(&daemon, agent_id, netns_cookie, pid));
    } else if let Some((agent_id, cgroup_id, pid)) = backstop_request(item) {
        let daemon = daemon.clone();
        // Attaching a program waits on the kernel's cgroup lock.
        tokio::task::spawn_blocking(move || {
            super::backstop::answer_request(&daemon, agent_id, pid, cgroup_id);
        });
    }
}

/// `(agent id, netns cookie, pid)` of a "needs a proxy here" event.
fn netns_request(bytes: &[u8]) -> Option<(AgentId, u64, u32)> {
    use agent_common::event::{NetnsEvent, kind};
    let (header, event) = request::<NetnsEvent>(bytes, kind::NETNS_PROXY_NEEDED)?;
    Some((
        AgentId::from_raw(header.agent_id),
        event.netns_cookie,
        header.tgid,
    ))
}

/// `(agent id, cgroup id, pid)` of a "cover this cgroup" request.
fn backstop_request(bytes: &[u8]) -> Option<(AgentId, u64, u32)> {
    use agent_common::event::{CgroupEvent, kind};
    let (header, event) = request::<CgroupEvent>(bytes, kind::BACKSTOP_NEEDED)?;
    Some((
        AgentId::from_raw(header.agent_id),
        event.cgroup_id,
        header.tgid,
    ))
}

/// The header and body of a request of `kind` read from the requests ring,
/// `None` for another kind or a short record.
fn request<T: aya::Pod>(bytes: &[u8], kind: u16) -> Option<(agent_common::event::EventHeader, T)> {
    use agent_common::event::EventHeader;
    if bytes.len() < size_of::<T>() || bytes.len() < size_of::<EventHeader>() {
        return None;
    }
    // SAFETY: length checked; the header and `T` are plain old data (`Pod`).
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.kind != kind {
        return None;
    }
    // SAFETY: as above.
    let event: T = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some((header, event))
}

/// Waits until a ring is worth reading.
#[derive(Default)]
struct RingWaiter {
    missed_wake_ups: u64,
}

impl RingWaiter {
    /// Returns when `ring` may hold events: at once when the last pass
    /// read some and said more wait, after a pause when it read none (the
    /// next event is still being written), else on the kernel's wake-up,
    /// or after [`WAKE_UP_PATIENCE`] if events wait without one.
    async fn wait(&mut self, ring: &mut AsyncFd<EventRing>, last: Drained) -> std::io::Result<()> {
        if last.more && last.read {
            // The kernel sends no wake-up for events queued behind a
            // read-ahead batch: read on at once (a timer would wait a
            // millisecond, its granularity, and cap the drain at a batch
            // per millisecond), after letting the signal handlers that
            // share this thread look.
            tokio::task::yield_now().await;
            return Ok(());
        }
        if last.more {
            // A producer (preempted, on a preemptible kernel) still holds
            // the next event: wait for it rather than spin.
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
/// back to the kernel once they are written.
fn drain_batch(
    ring: &mut EventRing,
    daemon: &Arc<Daemon>,
    clock: &Clock,
    processes: &mut ProcessCache,
    decoded: &mut Vec<(AuditRecord, u64)>,
) -> Drained {
    // Decoding (which reads /proc for every process it has not seen) takes
    // no lock: only the names in force, copied out for a moment.
    let decoder = daemon
        .writer
        .lock()
        .expect("audit writer lock poisoned")
        .decoder();
    decoded.clear();
    let mut read = 0;
    while read < DRAIN_BATCH
        && let Some(item) = ring.read_next()
    {
        read += 1;
        let record = decoder.decode(item, clock, processes);
        match record {
            Ok(record) => decoded.push((record, ring.position())),
            Err(error) => tracing::warn!(%error, "undecodable kernel event"),
        }
    }
    let decisions = decoded.iter().any(|(record, _)| record.verdict != "info");
    let mut writer = daemon.writer.lock().expect("audit writer lock poisoned");
    // One write for what the batch holds, not one per record.
    writer.sink.begin_batch();
    for (record, after) in decoded.drain(..) {
        writer.record(record);
        // A batch is written whole before the trail would write part of
        // it early: written in parts, a batch killed midway would be read
        // again whole by the next daemon, and its first part written twice.
        // Its events go back to the kernel with it; the rest wait for the
        // next one.
        if writer.sink.batch_is_full() {
            if let Err(error) = writer.sink.end_batch() {
                tracing::error!(%error, "audit records lost");
            }
            ring.commit_to(after);
            writer.sink.begin_batch();
        }
    }
    if let Err(error) = writer.sink.end_batch() {
        tracing::error!(%error, "audit records lost");
    }
    // Only now, with the batch in the log (or in the spool, which accounts
    // for what it loses), may the kernel reuse the events' space: a daemon
    // killed before this line leaves them to the next one.
    let more = ring.commit();
    if let Err(error) = writer.sink.settle() {
        tracing::error!(%error, "audit checkpoint failed");
    }
    let health = writer.sink.health();
    writer.metrics().set_audit_health(&health);
    drop(writer);
    // A denial may trip a breaker: the breaker service looks at once
    // rather than at its next period.
    if decisions {
        daemon.breakers_due.notify_one();
    }
    Drained {
        more,
        read: read > 0,
    }
}

impl PolicyService {
    /// Writes `record` to the audit trail.
    pub(super) fn record(&mut self, record: AuditRecord) {
        self.writer
            .lock()
            .expect("audit writer lock poisoned")
            .record(record);
    }
}

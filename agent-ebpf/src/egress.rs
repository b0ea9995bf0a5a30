//! Egress decisions on the cgroup v2 root.
//!
//! Hook choice: `cgroup/connect4` and `connect6` (4.17) see every TCP
//! connect and connected-UDP setup, including those from io_uring, before
//! any packet leaves; `sendmsg4`/`sendmsg6` (4.18) see unconnected UDP sends,
//! which would otherwise escape. An IPv4-mapped IPv6 destination arrives at
//! the `*6` hooks and is matched against IPv4 rules because keys store IPv4
//! addresses mapped.
//!
//! DNS: for agents with domain rules, every port-53 connect or send is
//! rewritten to the daemon's proxy for that agent, and the original server
//! is remembered per socket; `recvmsg4/6` and `getpeername4/6` (5.8) put it back, so resolvers accept the replies. Addresses the proxy
//! learns are allowed until an expiry the programs check themselves.

use agent_common::{
    backstop::SocketTag,
    egress::{
        DNS_PORT, DnsProxyKey, DnsProxyPorts, EGRESS_KEY_HEADER_BITS, EgressKey,
        GRANT_KEY_HEADER_BITS, GRANT_RULE_BIT, GrantKey, LEARNED_ADDR_ROWS, LearnedKey, LearnedRow,
        OriginalDestination, PORT_TABLE_ROWS, PortRule, ipv4_mapped, protocol,
    },
    event::{ConnectEvent, NetnsEvent, hook, kind},
    identity::{AgentRecord, AgentRuntime, DeniedDestination, NARROWED_AGENT_BIT, policy_flags},
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        AGENT_STATE, DENIED_DESTINATIONS, DNS_ORIGINAL, DNS_PROXY_PORTS, EGRESS_GRANTS,
        EGRESS_PORT_TABLES, EGRESS_RULES, EVENTS, GRANT_CONNECTS, LEARNED_ADDRS, NETNS_REQUESTS,
        active_generation, agent_policy, count, current_agent, quarantined, tainted,
        take_event_token,
    },
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CONNECT4).to_cgroup_sock()
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CONNECT6).to_cgroup_sock()
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::SENDMSG4).to_cgroup_sock()
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::SENDMSG6).to_cgroup_sock()
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, false);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, true);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, false);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore_dns_source(&ctx, true);
    1
}

const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Makes a reply from (or the peer name of) the proxy look as if it came
/// from the DNS server the agent addressed. Only sockets that were
/// redirected have an entry, so everything else costs one lookup.
///
/// Every socket on the host runs this on each UDP receive and on `accept`
/// and `getpeername`, so the socket's tag is asked first: only a socket an
/// address hook redirected carries the flag, and an untagged socket (any
/// process in no agent) costs one storage lookup that finds nothing.
#[inline(always)]
fn restore_dns_source(ctx: &SockAddrContext, ipv6: bool) {
    // SAFETY: the context pointer is valid for the whole program run.
    let tag = backstop::tag_of(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk });
    // SAFETY: a pointer from a successful storage lookup.
    if tag.is_null() || unsafe { (*tag).flags } & backstop::DNS_REDIRECTED == 0 {
        return;
    }
    // SAFETY: the helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(original) = DNS_ORIGINAL.get_ptr(cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup.
    let original: OriginalDestination = unsafe { *original };
    // SAFETY: the context pointer is valid for the whole program run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if u16::from_be(sa.user_port as u16) != original.proxy_port {
        return;
    }
    if ipv6 {
        unroll!(i in [0, 1, 2, 3] {
            sa.user_ip6[i] = u32::from_ne_bytes([
                original.addr[i * 4],
                original.addr[i * 4 + 1],
                original.addr[i * 4 + 2],
                original.addr[i * 4 + 3],
            ]);
        });
    } else {
        sa.user_ip4 = u32::from_ne_bytes([
            original.addr[12],
            original.addr[13],
            original.addr[14],
            original.addr[15],
        ]);
    }
    sa.user_port = u32::from(original.port.to_be());
}

/// Sends an agent's DNS traffic to its proxy. Returns the verdict: allowed
/// when redirected, denied when the proxy has no socket of that kind (a
/// query must never slip past the proxy).
#[inline(always)]
fn redirect_dns(
    ctx: &SockAddrContext,
    tag: *mut SocketTag,
    destination: &Destination,
    ipv6_hook: bool,
    ports: &DnsProxyPorts,
) -> Verdict {
    if tag.is_null() {
        // Without the tag's flag the reply's source would never be put
        // back, and the resolver would drop it: fail now, visibly.
        return Verdict::Denied;
    }
    let tcp = destination.protocol as u32 == IPPROTO_TCP;
    let mapped = destination.addr[..12] == ipv4_mapped([0; 4])[..12];
    let (proxy_port, to_ipv4) = match (ipv6_hook && !mapped, tcp) {
        (false, false) => (ports.udp4, true),
        (false, true) => (ports.tcp4, true),
        (true, false) => (ports.udp6, false),
        (true, true) => (ports.tcp6, false),
    };
    if proxy_port == 0 {
        return Verdict::Denied;
    }
    // SAFETY: the helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let original = OriginalDestination {
        addr: destination.addr,
        port: destination.port,
        proxy_port,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    // The flag first: a reply may arrive on another CPU as soon as the
    // query leaves.
    // SAFETY: a pointer from a successful storage lookup, checked above.
    unsafe { (*tag).flags |= backstop::DNS_REDIRECTED };
    if DNS_ORIGINAL.insert(cookie, original, 0).is_err() {
        return Verdict::Denied;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if !ipv6_hook {
        sa.user_ip4 = u32::from_ne_bytes(LOOPBACK4);
    } else {
        let target = if to_ipv4 {
            ipv4_mapped(LOOPBACK4)
        } else {
            LOOPBACK6
        };
        unroll!(i in [0, 1, 2, 3] {
            sa.user_ip6[i] = u32::from_ne_bytes([
                target[i * 4],
                target[i * 4 + 1],
                target[i * 4 + 2],
                target[i * 4 + 3],
            ]);
        });
    }
    sa.user_port = u32::from(proxy_port.to_be());
    Verdict::Allowed
}

/// Allows a destination the agent's DNS proxy learned from an allowed name,
/// on the ports of the rule it was learned through, until that (address,
/// rule) pair expires. Returns the rule's id.
#[inline(always)]
fn match_learned(agent_id: u32, destination: &Destination, protocol_bit: u8) -> (u8, u32) {
    let key = LearnedKey {
        agent_id,
        _pad: 0,
        addr: destination.addr,
    };
    let Some(learned) = LEARNED_ADDRS.get_ptr(key) else {
        return (decision::NONE, 0);
    };
    // SAFETY: the pointer comes from a successful lookup.
    let learned = unsafe { &*learned };
    // SAFETY: helper without memory arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let len = learned.len as usize;
    const _: () = assert!(LEARNED_ADDR_ROWS == 16, "the unrolled scan lists every row");
    unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        if i < len {
            let row: &LearnedRow = &learned.rows[i];
            if now < row.expires_boot_ns
                && destination.port >= row.port_lo
                && destination.port <= row.port_hi
                && row.protocols & protocol_bit != 0
            {
                return (decision::ALLOW, row.rule_id);
            }
        }
    });
    (decision::NONE, 0)
}

/// Allows a destination an unexpired operator grant covers, for an agent
/// neither its rules nor its learned names decide. A grant opens what the
/// default denies; a rule the policy writes (a `deny` included) stays in
/// force. With `consume`, the connect spends one of the grant's connects
/// and is allowed only while the budget lasts; the backstop judges the
/// packets of connections already allowed and checks the time only.
#[inline(always)]
fn match_grant(agent_id: u32, destination: &Destination, consume: bool) -> (u8, u32) {
    let key = Key::new(
        GRANT_KEY_HEADER_BITS + 128,
        GrantKey {
            agent_id: agent_id.to_be_bytes(),
            port: destination.port.to_be_bytes(),
            addr: destination.addr,
            _pad: [0; 2],
        },
    );
    let Some(grant) = EGRESS_GRANTS.get(&key) else {
        return (decision::NONE, 0);
    };
    if grant.protocols & protocol_bit(destination.protocol) == 0 {
        return (decision::NONE, 0);
    }
    // SAFETY: helper without memory arguments.
    if unsafe { bpf_ktime_get_boot_ns() } >= grant.expires_boot_ns {
        return (decision::NONE, 0);
    }
    if consume {
        // Counted without a budget too: the record of the grant's end
        // says how much it was used.
        let Some(used) = GRANT_CONNECTS.get_ptr_mut(grant.slot) else {
            return (decision::NONE, 0);
        };
        // Add first (an atomic add: the BPF target has no atomic types),
        // then read: of connects racing on other CPUs for the last of the
        // budget, all may be refused, but never one too many allowed.
        // SAFETY: the pointer comes from a successful lookup and is
        // aligned for a u32; the kernel keeps the value while we run.
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                used, 1,
            );
        }
        // SAFETY: as above.
        if grant.max_connects != 0 && unsafe { core::ptr::read_volatile(used) } > grant.max_connects
        {
            return (decision::NONE, 0);
        }
    }
    (decision::ALLOW, GRANT_RULE_BIT | grant.grant_id)
}

/// The destination of a connect or send, normalised.
struct Destination {
    family: u16,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
    sock_type: u8,
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, hook: u16) -> Verdict {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return Verdict::Allowed;
    };
    // SAFETY: the context pointer is valid for the whole program run.
    let tag = backstop::tag_socket(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }, &agent);
    let verdict = try_decide(ctx, hook, &agent, tag);
    // Here, once per program, and not beside the record or inside the
    // decision: there, on every path that writes a record, it took
    // `connect6` past 6.1's instruction limit with logging on, and it
    // changed how the compiler laid out the address reads.
    klog!(
        EGRESS,
        debug,
        "egress hook {}: agent {} verdict {}",
        hook,
        agent.agent_id,
        verdict as u8
    );
    verdict
}

#[inline(always)]
fn try_decide(
    ctx: &SockAddrContext,
    hook: u16,
    agent: &AgentRecord,
    tag: *mut SocketTag,
) -> Verdict {
    let generation = active_generation();
    // SAFETY: the context pointer is valid for the whole program run.
    let sa = unsafe { &*ctx.sock_addr };
    let destination = if hook == hook::CONNECT4 || hook == hook::SENDMSG4 {
        Destination {
            family: AF_INET,
            addr: ipv4_mapped(sa.user_ip4.to_ne_bytes()),
            port: u16::from_be(sa.user_port as u16),
            protocol: sa.protocol as u8,
            sock_type: sa.type_ as u8,
        }
    } else {
        let mut addr = [0u8; 16];
        unroll!(i in [0, 1, 2, 3] {
            let bytes = sa.user_ip6[i].to_ne_bytes();
            addr[i * 4] = bytes[0];
            addr[i * 4 + 1] = bytes[1];
            addr[i * 4 + 2] = bytes[2];
            addr[i * 4 + 3] = bytes[3];
        });
        Destination {
            family: AF_INET6,
            addr,
            port: u16::from_be(sa.user_port as u16),
            protocol: sa.protocol as u8,
            sock_type: sa.type_ as u8,
        }
    };

    let mut destination = destination;
    normalise_wildcard(&mut destination);

    if backstop::uncovered(tag) {
        return refuse_uncovered(agent, &destination, hook, generation);
    }

    let policy = agent_policy(generation, agent.agent_id);
    if destination.port == DNS_PORT
        && policy.is_some_and(|p| p.flags & policy_flags::DNS_PROXY != 0)
    {
        // SAFETY: the helper takes the program context.
        let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let key = DnsProxyKey {
            agent_id: agent.agent_id,
            _pad: 0,
            netns_cookie,
        };
        return match DNS_PROXY_PORTS.get_ptr(key) {
            Some(ports) => {
                // SAFETY: the pointer comes from a successful lookup.
                let ports = unsafe { *ports };
                let ipv6_hook = hook == hook::CONNECT6 || hook == hook::SENDMSG6;
                redirect_dns(ctx, tag, &destination, ipv6_hook, &ports)
            }
            None => {
                // No proxy socket in this namespace yet: the query may not
                // go anywhere else, so it fails now and the daemon opens a
                // socket there for the resolver's next try.
                request_netns_proxy(agent, netns_cookie, hook, generation);
                Verdict::Denied
            }
        };
    }

    // The learned row this connect used, for the record's domain.
    let mut learned_rule = 0;
    let mut by_rule = false;
    let mut by_learned = false;
    let mut by_grant = false;
    let (agent_mode, rule_decision, mut rule_id) = match policy {
        // An agent whose policy is gone is held closed rather than let loose.
        None => (mode::ENFORCE, decision::DENY, 0),
        Some(policy) => {
            let (mut found, mut rule_id) = match_rules(generation, agent.agent_id, &destination);
            by_rule = found != decision::NONE;
            if found == decision::NONE {
                (found, rule_id) = match_learned(
                    agent.agent_id,
                    &destination,
                    protocol_bit(destination.protocol),
                );
                if found != decision::NONE {
                    learned_rule = rule_id;
                    by_learned = true;
                }
            }
            // A held agent spends no grant: the connect is refused anyway.
            if found == decision::NONE
                && policy.mode != mode::QUARANTINE
                && !quarantined(agent.agent_id)
            {
                (found, rule_id) = match_grant(agent.agent_id, &destination, true);
                by_grant = found != decision::NONE;
            }
            if found == decision::NONE {
                (
                    policy.mode,
                    policy.egress_default,
                    policy.egress_default_rule,
                )
            } else {
                (policy.mode, found, rule_id)
            }
        }
    };
    let quarantine = agent_mode == mode::QUARANTINE || quarantined(agent.agent_id);
    let mut verdict = if quarantine {
        // A breaker's quarantine overrides audit mode.
        Verdict::Denied
    } else {
        verdict_for(rule_decision, agent_mode)
    };
    // An agent that opened a secret is held to its narrowed rules on top of
    // the rules above: they can only take an allow away.
    let mut judged_tainted = false;
    if !quarantine && rule_decision == decision::ALLOW {
        let packed = narrowed(generation, agent.agent_id, &destination);
        judged_tainted = packed & NARROWED_TAINTED != 0;
        if packed as u8 == decision::DENY {
            rule_id = (packed >> 32) as u32;
            verdict = verdict_for(decision::DENY, agent_mode);
            by_grant = false;
        }
    }
    let mut rate_limited = false;
    if verdict == Verdict::Allowed
        && let Some(policy) = policy
        && policy.connects_per_second > 0
        && !take_connect_token(agent.agent_id, policy.connects_per_second)
    {
        rate_limited = true;
        verdict = verdict_for(decision::DENY, agent_mode);
    }
    let denied = verdict != Verdict::Allowed;
    if !denied && !quarantine {
        // Names and grants expire: their allows are judged again.
        backstop::seed(
            tag,
            generation,
            &destination,
            rule_id,
            by_learned || by_grant,
            judged_tainted,
        );
    }
    let new_destination = denied && first_denial(agent.agent_id, &destination);
    count(agent.agent_id, |c| {
        c.connects += 1;
        if denied {
            c.denied_connects += 1;
        }
        if new_destination {
            c.distinct_denied_destinations += 1;
        }
        if rate_limited {
            c.rate_limited += 1;
        }
    });
    if denied && by_rule {
        // A CIDR rule decided, but a learned row matched too (an explicit
        // deny beats a learned name): the record still names the domain.
        let (found, rule) = match_learned(
            agent.agent_id,
            &destination,
            protocol_bit(destination.protocol),
        );
        if found != decision::NONE {
            learned_rule = rule;
        }
    }
    // Every connect a grant allows is recorded: grants are exceptions an
    // operator answers for.
    if denied || by_grant {
        emit(
            agent,
            &destination,
            &Decision {
                hook,
                verdict,
                mode: if quarantine {
                    mode::QUARANTINE
                } else {
                    agent_mode
                },
                rule_id,
                generation,
            },
            learned_rule,
        );
    }
    verdict
}

/// Refuses a connect or send on a socket the backstop may not see (see
/// [`backstop::uncovered`]), records it and asks the daemon to cover the
/// whole host, after which tries are judged as usual.
#[inline(always)]
fn refuse_uncovered(
    agent: &AgentRecord,
    destination: &Destination,
    hook: u16,
    generation: u32,
) -> Verdict {
    let agent_mode = agent_policy(generation, agent.agent_id).map_or(mode::ENFORCE, |p| p.mode);
    let verdict = verdict_for(decision::DENY, agent_mode);
    count(agent.agent_id, |c| {
        c.connects += 1;
        c.denied_connects += 1;
    });
    emit(
        agent,
        destination,
        &Decision {
            hook,
            verdict,
            mode: agent_mode,
            rule_id: agent_common::backstop::UNCOVERED_RULE,
            generation,
        },
        0,
    );
    backstop::request_backstop(agent, 0, hook, generation);
    verdict
}

/// Whether this is the first time the agent was denied this destination.
#[inline(always)]
fn first_denial(agent_id: u32, destination: &Destination) -> bool {
    let key = DeniedDestination {
        agent_id,
        port: destination.port,
        _pad: 0,
        addr: destination.addr,
    };
    // BPF_NOEXIST: only the first insert of a key succeeds.
    DENIED_DESTINATIONS.insert(key, 1, 1).is_ok()
}

/// Takes one token from the agent's connect bucket (capacity: one second's
/// worth). Updates race between CPUs; the limit is approximate by a few
/// calls under contention, never unbounded.
#[inline(always)]
fn take_connect_token(agent_id: u32, per_second: u32) -> bool {
    // SAFETY: helper without memory arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(state) = AGENT_STATE.get_ptr_mut(agent_id) else {
        let fresh = AgentRuntime {
            connect_tokens: per_second.saturating_sub(1),
            last_refill_ns: now,
            event_tokens: crate::maps::events_per_second(),
            event_refill_ns: now,
            ..AgentRuntime::default()
        };
        return AGENT_STATE.insert(agent_id, fresh, 0).is_ok();
    };
    // SAFETY: the pointer comes from a successful lookup.
    let state = unsafe { &mut *state };
    // Capped at two seconds so the product fits in 64 bits (BPF has no
    // 128-bit multiply); a full bucket needs only one.
    let elapsed = now.saturating_sub(state.last_refill_ns).min(2_000_000_000);
    let refill = elapsed * per_second as u64 / 1_000_000_000;
    if refill > 0 {
        let tokens = (state.connect_tokens as u64 + refill).min(per_second as u64);
        state.connect_tokens = tokens as u32;
        state.last_refill_ns = now;
    }
    if state.connect_tokens == 0 {
        return false;
    }
    state.connect_tokens -= 1;
    true
}

/// Bit of [`narrowed`]'s answer: the agent is tainted, whatever its
/// narrowed rules said.
const NARROWED_TAINTED: u64 = 1 << 8;

/// The narrowed rules' answer for a tainted agent (one that opened a
/// secret): their decision in bits 0-7, [`NARROWED_TAINTED`], and the rule
/// in bits 32-63; 0 for an agent that is not tainted. A tainted agent whose
/// policy has no narrowing (it lists no secrets now) gets no decision.
/// A subprogram, so the address hooks, near the instruction limit on 6.1,
/// check its rule scan once.
#[inline(never)]
fn narrowed(generation: u32, agent_id: u32, destination: &Destination) -> u64 {
    if !tainted(agent_id) {
        return 0;
    }
    let (found, rule_id) = match_rules(generation, agent_id | NARROWED_AGENT_BIT, destination);
    u64::from(found) | NARROWED_TAINTED | (u64::from(rule_id) << 32)
}

/// Finds the most specific rule for the destination: the trie picks the
/// longest address prefix, its port table the first matching row.
#[inline(always)]
fn match_rules(generation: u32, agent_id: u32, destination: &Destination) -> (u8, u32) {
    let key = Key::new(
        EGRESS_KEY_HEADER_BITS + 128,
        EgressKey {
            generation: generation.to_be_bytes(),
            agent_id: agent_id.to_be_bytes(),
            addr: destination.addr,
        },
    );
    let Some(value) = EGRESS_RULES.get(&key) else {
        return (decision::NONE, 0);
    };
    let Some(table) = EGRESS_PORT_TABLES.get(value.port_table) else {
        return (decision::NONE, 0);
    };
    let protocol_bit = protocol_bit(destination.protocol);
    let len = table.len as usize;
    const _: () = assert!(PORT_TABLE_ROWS == 16, "the unrolled scan lists every row");
    unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        if i < len {
            let row: &PortRule = &table.rows[i];
            if destination.port >= row.port_lo
                && destination.port <= row.port_hi
                && row.protocols & protocol_bit != 0
            {
                return (row.decision, row.rule_id);
            }
        }
    });
    (decision::NONE, 0)
}

#[inline(always)]
fn request_netns_proxy(agent: &AgentRecord, netns_cookie: u64, hook: u16, generation: u32) {
    let Some(mut entry) = NETNS_REQUESTS.reserve::<NetnsEvent>(0) else {
        count(agent.agent_id, |c| c.netns_requests_dropped += 1);
        return;
    };
    // SAFETY: the reservation is exactly one `NetnsEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::NETNS_PROXY_NEEDED,
        core::mem::size_of::<NetnsEvent>(),
        agent,
        &Decision {
            hook,
            verdict: Verdict::Denied,
            mode: mode::ENFORCE,
            rule_id: 0,
            generation,
        },
    );
    event.netns_cookie = netns_cookie;
    entry.submit(0);
}

#[inline(always)]
fn protocol_bit(ip_protocol: u8) -> u8 {
    match ip_protocol as u32 {
        IPPROTO_TCP => protocol::TCP,
        IPPROTO_UDP => protocol::UDP,
        _ => 0,
    }
}

#[inline(always)]
fn emit(agent: &AgentRecord, destination: &Destination, decision: &Decision, learned_rule: u32) {
    if !take_event_token(agent.agent_id) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(agent.agent_id);
        return;
    };
    // SAFETY: the reservation is exactly one `ConnectEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::CONNECT,
        core::mem::size_of::<ConnectEvent>(),
        agent,
        decision,
    );
    event.family = destination.family;
    event.port = destination.port;
    event.protocol = destination.protocol;
    event.sock_type = destination.sock_type;
    event._pad = [0; 2];
    event.addr = destination.addr;
    event.learned_rule = learned_rule;
    event._pad2 = 0;
    entry.submit(0);
}

/// Judges a wildcard destination as the loopback address the kernel sends
/// it to: a connect or send to `0.0.0.0`, `::` or `::ffff:0.0.0.0` is
/// routed to `127.0.0.1` or `::1` after this hook has run, so judging the
/// wildcard itself would let an agent reach a denied local service.
#[inline(always)]
fn normalise_wildcard(destination: &mut Destination) {
    if destination.addr == ipv4_mapped([0; 4]) {
        destination.addr = ipv4_mapped(LOOPBACK4);
    } else if destination.addr == [0; 16] {
        destination.addr = LOOPBACK6;
    }
}

/// The packet-level backstop, a child module so that it judges packets with
/// this module's own matching functions.
mod backstop;

pub(crate) use backstop::{current_cgroup_covered, mark_covered, request_backstop, tag_socket};

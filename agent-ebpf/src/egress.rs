//! Egress decisions on the cgroup v2 root.
//!
//! Hook choice: `cgroup/connect4` and `connect6` (4.17) see every TCP
//! connect and connected-UDP setup, including those from io_uring, before
//! any packet leaves; `sendmsg4`/`sendmsg6` (4.18) see unconnected UDP sends,
//! which would otherwise escape. An IPv4-mapped IPv6 destination arrives at
//! the `*6` hooks and is matched against IPv4 rules because keys store IPv4
//! addresses mapped.

use agent_common::{
    egress::{EGRESS_KEY_HEADER_BITS, EgressKey, PORT_TABLE_ROWS, PortRule, ipv4_mapped, protocol},
    event::{ConnectEvent, hook, kind},
    identity::AgentRecord,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::cgroup_sock_addr, maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        EGRESS_PORT_TABLES, EGRESS_RULES, EVENTS, active_generation, agent_policy, current_agent,
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
    try_decide(ctx, hook, &agent)
}

#[inline(always)]
fn try_decide(ctx: &SockAddrContext, hook: u16, agent: &AgentRecord) -> Verdict {
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
        let words = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        let mut addr = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            let bytes = word.to_ne_bytes();
            addr[i * 4] = bytes[0];
            addr[i * 4 + 1] = bytes[1];
            addr[i * 4 + 2] = bytes[2];
            addr[i * 4 + 3] = bytes[3];
        }
        Destination {
            family: AF_INET6,
            addr,
            port: u16::from_be(sa.user_port as u16),
            protocol: sa.protocol as u8,
            sock_type: sa.type_ as u8,
        }
    };

    let (agent_mode, rule_decision, rule_id) = match agent_policy(generation, agent.agent_id) {
        // An agent whose policy is gone is held closed rather than let loose.
        None => (mode::ENFORCE, decision::DENY, 0),
        Some(policy) => {
            let (found, rule_id) = match_rules(generation, agent.agent_id, &destination);
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
    let verdict = if agent_mode == mode::QUARANTINE {
        Verdict::Denied
    } else {
        verdict_for(rule_decision, agent_mode)
    };
    if verdict != Verdict::Allowed {
        emit(
            agent,
            &destination,
            &Decision {
                hook,
                verdict,
                mode: agent_mode,
                rule_id,
                generation,
            },
        );
    }
    verdict
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
    let protocol_bit = match destination.protocol as u32 {
        IPPROTO_TCP => protocol::TCP,
        IPPROTO_UDP => protocol::UDP,
        _ => 0,
    };
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
fn emit(agent: &AgentRecord, destination: &Destination, decision: &Decision) {
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
    entry.submit(0);
}

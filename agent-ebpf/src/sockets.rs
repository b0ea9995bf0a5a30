//! Which kinds of socket an agent may create.
//!
//! Hook choice: `cgroup/sock_create` (4.10) runs when any socket is created
//! by a process in the cgroup subtree. Raw and packet sockets bypass the
//! address hooks entirely (they send hand-built packets), so they are denied
//! to agents outright; ICMP "ping" sockets are denied unless the policy
//! allows ICMP.

use agent_common::{
    backstop::UNCOVERED_RULE,
    event::{ConnectEvent, hook, kind},
    identity::{AgentRecord, DEFAULT_FAMILIES, family_allowed, policy_flags},
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::cgroup_sock,
    programs::SockContext,
};

use crate::{
    egress::{current_cgroup_covered, mark_covered, request_backstop, tag_socket},
    events::{Decision, count_drop, fill_header},
    maps::{EVENTS, active_generation, agent_policy, count, current_agent, take_event_token},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

/// Decides the socket, then tags an allowed one for the packet backstop
/// (`egress/backstop.rs`). Both in one program: every socket created on
/// the host runs it, and processes in no agent leave after one array load.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return 1;
    };
    let verdict = try_sock_create(&ctx, &agent);
    if verdict != Verdict::Allowed {
        return verdict.to_cgroup_sock();
    }
    // The socket's cgroup is the task's: its packets run the backstop only
    // if the program is attached there or above. Where it is not, the
    // socket is refused and the daemon attaches it; tries after that work.
    if !current_cgroup_covered() {
        return refuse_uncovered(&ctx, &agent).to_cgroup_sock();
    }
    mark_covered(tag_socket(ctx.sock, &agent));
    Verdict::Allowed.to_cgroup_sock()
}

/// Refuses a socket whose cgroup the backstop does not cover, records it
/// and asks the daemon for coverage.
#[inline(always)]
fn refuse_uncovered(ctx: &SockContext, agent: &AgentRecord) -> Verdict {
    // SAFETY: the context pointer is valid for the whole program run.
    let sock = unsafe { &*ctx.sock };
    let verdict = deny_socket(
        agent,
        hook::SOCK_CREATE,
        UNCOVERED_RULE,
        sock.family,
        sock.type_,
        sock.protocol,
    );
    // SAFETY: helper without memory arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    request_backstop(agent, cgroup_id, hook::SOCK_CREATE, active_generation());
    verdict
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext, agent: &AgentRecord) -> Verdict {
    // SAFETY: the context pointer is valid for the whole program run.
    let sock = unsafe { &*ctx.sock };
    let (family, sock_type, protocol) = (sock.family, sock.type_, sock.protocol);
    let is_icmp = sock_type == SOCK_DGRAM
        && ((family == AF_INET && protocol == IPPROTO_ICMP)
            || (family == AF_INET6 && protocol == IPPROTO_ICMPV6));
    let forbidden = family == AF_PACKET
        || sock_type == SOCK_RAW
        // The policy is looked up only for the rare ICMP socket.
        || (is_icmp
            && !agent_policy(active_generation(), agent.agent_id)
                .is_some_and(|p| p.flags & policy_flags::ALLOW_ICMP != 0));
    if !forbidden {
        return Verdict::Allowed;
    }
    deny_socket(agent, hook::SOCK_CREATE, 0, family, sock_type, protocol)
}

/// Records and returns the verdict for a socket the agent may not have.
#[inline(always)]
fn deny_socket(
    agent: &AgentRecord,
    hook: u16,
    rule_id: u32,
    family: u32,
    sock_type: u32,
    protocol: u32,
) -> Verdict {
    let generation = active_generation();
    let agent_mode = agent_policy(generation, agent.agent_id).map_or(mode::ENFORCE, |p| p.mode);
    let verdict = verdict_for(decision::DENY, agent_mode);
    count(agent.agent_id, |c| c.denied_sockets += 1);
    if !take_event_token(agent.agent_id) {
        return verdict;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(agent.agent_id);
        return verdict;
    };
    // SAFETY: the reservation is exactly one `ConnectEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::CONNECT,
        core::mem::size_of::<ConnectEvent>(),
        agent,
        &Decision {
            hook,
            verdict,
            mode: agent_mode,
            rule_id,
            generation,
        },
    );
    event.family = family as u16;
    event.port = 0;
    event.protocol = protocol as u8;
    event.sock_type = sock_type as u8;
    event._pad = [0; 2];
    event.addr = [0; 16];
    event.learned_rule = 0;
    event._pad2 = 0;
    entry.submit(0);
    verdict
}

/// The BPF LSM second line: `socket_create` (5.7) sees every socket family,
/// which `cgroup/sock_create` (inet families only) never does. An agent may
/// create only the families its policy allows (`AF_PACKET` never): the
/// others (`AF_VSOCK` to a VM's host, `AF_PACKET`, `AF_BLUETOOTH`, ...) carry
/// traffic that no address hook sees.
#[aya_ebpf::macros::lsm(hook = "socket_create")]
pub fn socket_create(ctx: aya_ebpf::programs::LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern, int ret)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return 0;
    };
    try_socket_create(&ctx, &agent).to_lsm(previous)
}

#[inline(always)]
fn try_socket_create(ctx: &aya_ebpf::programs::LsmContext, agent: &AgentRecord) -> Verdict {
    let family: i32 = ctx.arg(0);
    let family = family as u32;
    // An agent whose policy is gone keeps the default families rather than
    // losing its local sockets.
    let families =
        agent_policy(active_generation(), agent.agent_id).map_or(DEFAULT_FAMILIES, |p| p.families);
    if family != AF_PACKET && family_allowed(families, family) {
        return Verdict::Allowed;
    }
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    deny_socket(
        agent,
        hook::SOCKET_CREATE,
        0,
        family,
        sock_type as u32 & 0xf,
        protocol as u32,
    )
}

//! Which kinds of socket an agent may create.
//!
//! Hook choice: `cgroup/sock_create` (4.10) runs when any socket is created
//! by a process in the cgroup subtree. Raw and packet sockets bypass the
//! address hooks entirely (they send hand-built packets), so they are denied
//! to agents outright; ICMP "ping" sockets are denied unless the policy
//! allows ICMP.

use agent_common::{
    event::{ConnectEvent, hook, kind},
    identity::{AgentRecord, policy_flags},
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::cgroup_sock, programs::SockContext};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{EVENTS, active_generation, agent_policy, current_agent},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return 1;
    };
    try_sock_create(&ctx, &agent).to_cgroup_sock()
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext, agent: &AgentRecord) -> Verdict {
    // SAFETY: the context pointer is valid for the whole program run.
    let sock = unsafe { &*ctx.sock };
    let (family, sock_type, protocol) = (sock.family, sock.type_, sock.protocol);
    let generation = active_generation();
    let policy = agent_policy(generation, agent.agent_id);
    let agent_mode = policy.map_or(mode::ENFORCE, |p| p.mode);
    let allow_icmp = policy.is_some_and(|p| p.flags & policy_flags::ALLOW_ICMP != 0);

    let is_icmp = sock_type == SOCK_DGRAM
        && ((family == AF_INET && protocol == IPPROTO_ICMP)
            || (family == AF_INET6 && protocol == IPPROTO_ICMPV6));
    let forbidden = family == AF_PACKET || sock_type == SOCK_RAW || (is_icmp && !allow_icmp);
    if !forbidden {
        return Verdict::Allowed;
    }
    let verdict = verdict_for(decision::DENY, agent_mode);
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
            hook: hook::SOCK_CREATE,
            verdict,
            mode: agent_mode,
            rule_id: 0,
            generation,
        },
    );
    event.family = family as u16;
    event.port = 0;
    event.protocol = protocol as u8;
    event.sock_type = sock_type as u8;
    event._pad = [0; 2];
    event.addr = [0; 16];
    entry.submit(0);
    verdict
}

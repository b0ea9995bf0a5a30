//! The packet-level backstop: every packet an agent socket sends is judged
//! by the destination the packet carries.
//!
//! The socket-address hooks (`egress.rs`) judge the address a program
//! writes and give it a clean `EPERM`. The kernel can then send the packet
//! somewhere else: an IPv6 routing header or an IPv4 source route sends it
//! to the first hop, and no address hook runs for an unconnected send on an
//! ICMP socket. Those packets are only visible here.
//!
//! Hook choice:
//! - `cgroup/sock_create` (4.10; `bpf_sk_storage_get` with the socket as
//!   context, 5.x, present on 6.1) tags every inet socket an agent creates
//!   with the agent, in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`,
//!   5.2), which the kernel frees with the socket. The tagging is part of
//!   the `sock_create` program (`sockets.rs`): every socket on the host
//!   runs that program, and one program run is cheaper than two. The
//!   address hooks tag sockets an agent uses but did not create (created
//!   before it was admitted, or passed in).
//! - `cgroup_skb/egress` (4.10; socket storage 5.2) on the cgroup v2 root
//!   runs for every packet a full socket sends, also from softirq context,
//!   where the current task is not the sender: the record names the
//!   process stored in the tag. Untagged sockets (every process in no
//!   agent) cost one socket-storage lookup, which finds no storage on the
//!   socket and returns.
//! - The address hooks seed the tag's verdict cache with their own allow,
//!   so a connected socket's first packet is a cache hit too when it goes
//!   where the connect said; a packet that goes elsewhere (routing header,
//!   source route) misses and is judged.
//! - `cgroup/setsockopt` (5.3) refuses agents the options that reroute
//!   packets. Ancillary data (`cmsg`) on `sendmsg` reaches no hook; the
//!   backstop drops those packets.

use core::{ffi::c_void, ptr};

use agent_common::{
    backstop::{BACKSTOP_ANCESTOR_LEVELS, COVERED, LEARNED_RECHECK_NS, NEVER, SocketTag},
    egress::ipv4_mapped,
    event::{CgroupEvent, ConnectEvent, EVENT_VERSION, hook, kind},
    identity::AgentRecord,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_sk_storage_get,
        },
    },
    macros::{btf_map, cgroup_skb, cgroup_sockopt},
    programs::{SkBuffContext, SockoptContext},
};

use super::{
    Destination, NARROWED_TAINTED, match_grant, match_learned, match_rules, narrowed, protocol_bit,
};
use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        BACKSTOP_CGROUPS, DNS_ORIGINAL, EVENTS, NETNS_REQUESTS, active_generation, agent_policy,
        count, quarantined, tainted, take_event_token,
    },
};

/// The agent each socket belongs to, and its last verdict.
#[btf_map(name = "SOCKET_TAGS")]
static SOCKET_TAGS: SkStorage<SocketTag> = SkStorage::new();

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// IPv6 extension headers that may come before the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

/// `SOL_IP`, `SOL_IPV6` and the options that reroute packets.
const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const IP_OPTIONS: i32 = 4;
const IPV6_2292RTHDR: i32 = 24;
const IPV6_RTHDR: i32 = 57;
/// IPv4 loose and strict source route option types.
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
/// IPv4 options are at most 40 bytes.
const IP_OPTIONS_MAX: usize = 40;
/// [`SocketTag::cache_flags`]: the cached allow came from a learned name or
/// an operator's grant, both of which expire.
pub(super) const LEARNED_ALLOW: u32 = 1;
/// [`SocketTag::cache_flags`]: the cached verdict was reached with the
/// agent tainted (it had opened a secret), so its narrowed rules were
/// applied; a verdict without it is judged again once the agent is.
pub(super) const JUDGED_TAINTED: u32 = 2;
/// [`SocketTag::flags`]: an address hook sent this socket's DNS to the
/// agent's proxy, so `DNS_ORIGINAL` may hold its original server.
pub(super) const DNS_REDIRECTED: u32 = 1;
/// Buffers above a page are not shown to the program (`PAGE_SIZE` on
/// x86_64 and arm64 with 4 KiB pages).
const SOCKOPT_MAX_VISIBLE: i32 = 4096;

#[inline(always)]
fn tags() -> *mut c_void {
    ptr::from_ref(&SOCKET_TAGS).cast_mut().cast()
}

/// Writes the calling process into `tag` unless it is already there.
/// Returns without writing for the common case (the same process sending
/// again), so a busy UDP sender does not rewrite its tag on every send.
#[inline(always)]
fn fill_tag(tag: *mut SocketTag, agent: &AgentRecord) {
    // SAFETY: the pointer comes from a successful storage lookup; the
    // storage lives as long as the socket, which outlives the program run.
    let tag = unsafe { &mut *tag };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tag.agent_id == agent.agent_id && tag.tgid == tgid {
        return;
    }
    if tag.agent_id != agent.agent_id {
        // Another agent's verdicts say nothing about this one.
        tag.cache_generation = 0;
    }
    let uid_gid = bpf_get_current_uid_gid();
    tag.agent_id = agent.agent_id;
    tag.tgid = tgid;
    tag.pid = pid_tgid as u32;
    tag.uid = uid_gid as u32;
    tag.gid = (uid_gid >> 32) as u32;
    tag.root_tgid = agent.root_tgid;
    // SAFETY: helper without memory arguments.
    tag.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    tag.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Tags a socket with the calling agent process: called by `sock_create`
/// for every inet socket an agent creates, and by the address hooks for
/// sockets an agent uses (all run in the caller's context). Returns the
/// tag, or null when the kernel could not allocate one.
#[inline(always)]
pub(crate) fn tag_socket(sk: *mut bpf_sock, agent: &AgentRecord) -> *mut SocketTag {
    if sk.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `sk` is the context's socket; a null value asks the kernel
    // for a zeroed entry.
    let tag = unsafe {
        bpf_sk_storage_get(
            tags(),
            sk.cast(),
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
    .cast::<SocketTag>();
    if !tag.is_null() {
        fill_tag(tag, agent);
    }
    tag
}

/// Whether the backstop runs for a socket the current task creates now:
/// the program is attached to the task's cgroup or an ancestor of it.
///
/// `bpf_get_current_ancestor_cgroup_id` in `cgroup_sock` and
/// `cgroup_sock_addr` programs: 6.1. Only agent processes ask.
#[inline(always)]
pub(crate) fn current_cgroup_covered() -> bool {
    const _: () = assert!(
        BACKSTOP_ANCESTOR_LEVELS == 8,
        "the unrolled walk lists every level"
    );
    // The root first: when the backstop covers the whole host, one lookup.
    unroll!(level in [0, 1, 2, 3, 4, 5, 6, 7, 8] {
        // SAFETY: helper without memory arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        // Past the task's own level: its cgroup and every ancestor were
        // asked already.
        if id == 0 {
            return false;
        }
        if BACKSTOP_CGROUPS.get_ptr(id).is_some() {
            return true;
        }
    });
    // A cgroup deeper than the walk: its own entry.
    // SAFETY: helper without memory arguments.
    BACKSTOP_CGROUPS
        .get_ptr(unsafe { bpf_get_current_cgroup_id() })
        .is_some()
}

/// Whether the backstop covers the whole host (attached to the cgroup v2
/// root), so that every socket runs it wherever it was made.
#[inline(always)]
pub(crate) fn host_covered() -> bool {
    // SAFETY: helper without memory arguments.
    let root = unsafe { bpf_get_current_ancestor_cgroup_id(0) };
    BACKSTOP_CGROUPS.get_ptr(root).is_some()
}

/// Whether an agent's use of the socket behind `tag` escapes the
/// backstop: the agent did not create it in a covered cgroup (it was
/// created before the process joined its agent, or passed in), and the
/// backstop does not cover the whole host. Such a socket's cgroup is not
/// known here, so its packets may not run the backstop.
#[inline(always)]
pub(crate) fn uncovered(tag: *mut SocketTag) -> bool {
    // SAFETY: a pointer from a successful storage lookup, checked non-null.
    !tag.is_null() && unsafe { (*tag).flags } & COVERED == 0 && !host_covered()
}

/// Marks a socket the agent created in a covered cgroup.
#[inline(always)]
pub(crate) fn mark_covered(tag: *mut SocketTag) {
    if !tag.is_null() {
        // SAFETY: as in `uncovered`.
        unsafe { (*tag).flags |= COVERED };
    }
}

/// Asks the daemon to cover `cgroup_id` (0: a socket whose cgroup is not
/// known, so the whole host) with the backstop. Not rate-limited by the
/// agent's event budget: the daemon must hear it for the agent's next try
/// to succeed; a full ring is counted and the next try asks again.
#[inline(always)]
pub(crate) fn request_backstop(agent: &AgentRecord, cgroup_id: u64, hook: u16, generation: u32) {
    let Some(mut entry) = NETNS_REQUESTS.reserve::<CgroupEvent>(0) else {
        count(agent.agent_id, |c| c.netns_requests_dropped += 1);
        return;
    };
    // SAFETY: the reservation is exactly one `CgroupEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::BACKSTOP_NEEDED,
        core::mem::size_of::<CgroupEvent>(),
        agent,
        &Decision {
            hook,
            verdict: Verdict::Denied,
            mode: mode::ENFORCE,
            rule_id: agent_common::backstop::UNCOVERED_RULE,
            generation,
        },
    );
    event.cgroup_id = cgroup_id;
    entry.submit(0);
}

/// The tag of a socket, or null for sockets of no agent.
#[inline(always)]
pub(super) fn tag_of(sk: *mut bpf_sock) -> *mut SocketTag {
    // SAFETY: `sk` is a full socket from the kernel; no value and no flags
    // make this a pure lookup.
    unsafe { bpf_sk_storage_get(tags(), sk.cast(), ptr::null_mut(), 0) }.cast::<SocketTag>()
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    // No `bpf_sk_fullsock` first: the kernel runs egress programs only for
    // a full socket (request and time-wait sockets' packets are run as
    // their listener's or not at all), and the storage lookup checks it
    // again itself, so a second helper call would only add to every packet
    // on the host.
    let tag = tag_of(sk);
    if tag.is_null() {
        return 1;
    }
    // SAFETY: a pointer from a successful storage lookup of a socket that
    // outlives the program run.
    try_skb_egress(&ctx, unsafe { &mut *tag }).to_cgroup_sock()
}

/// The destination a packet carries. `port_known` is false for IPv6
/// fragments after the first and packets whose headers could not be read
/// up to the transport header.
struct PacketDestination {
    destination: Destination,
    port_known: bool,
}

/// Reads the destination from the IPv4 or IPv6 header, and the port from
/// the TCP or UDP header after any IPv6 extension headers (routing headers
/// included: the IPv6 destination is already the hop the kernel sends to).
#[inline(always)]
fn packet_destination(ctx: &SkBuffContext) -> Option<PacketDestination> {
    if let Some(destination) = plain_destination(ctx) {
        return Some(destination);
    }
    let first: u8 = ctx.load(0).ok()?;
    let mut destination = Destination {
        family: AF_INET,
        addr: [0; 16],
        port: 0,
        protocol: 0,
        sock_type: 0,
    };
    let (mut next, mut offset, mut port_known) = match first >> 4 {
        4 => {
            let header: [u8; 20] = ctx.load(0).ok()?;
            destination.addr = ipv4_mapped([header[16], header[17], header[18], header[19]]);
            // A fragment after the first has no transport header.
            let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
            (
                header[9],
                u32::from(header[0] & 0x0f) * 4,
                fragment_offset == 0,
            )
        }
        6 => {
            let header: [u8; 40] = ctx.load(0).ok()?;
            destination.family = AF_INET6;
            unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                destination.addr[i] = header[24 + i];
            });
            (header[6], 40u32, true)
        }
        _ => return None,
    };
    if destination.family == AF_INET6 {
        // Hop-by-hop, routing, destination options and fragment headers,
        // up to four: more than a well-formed packet from a socket has.
        unroll!(_i in [0, 1, 2, 3] {
            if next == NEXTHDR_HOP || next == NEXTHDR_ROUTING || next == NEXTHDR_DEST {
                match ctx.load::<[u8; 2]>((offset & 0x3ff) as usize) {
                    Ok(ext) => {
                        next = ext[0];
                        offset += (u32::from(ext[1]) + 1) * 8;
                    }
                    Err(_) => port_known = false,
                }
            } else if next == NEXTHDR_FRAGMENT {
                match ctx.load::<[u8; 4]>((offset & 0x3ff) as usize) {
                    Ok(ext) => {
                        next = ext[0];
                        offset += 8;
                        if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                            port_known = false;
                        }
                    }
                    Err(_) => port_known = false,
                }
            }
        });
    }
    destination.protocol = next;
    if next == IPPROTO_TCP || next == IPPROTO_UDP {
        if port_known {
            match ctx.load::<[u8; 2]>(((offset + 2) & 0x7ff) as usize) {
                Ok(port) => destination.port = u16::from_be_bytes(port),
                Err(_) => port_known = false,
            }
        }
    } else {
        // Ports mean nothing to ICMP: rules name TCP and UDP ports, so
        // ICMP is decided by the agent's default, as at connect.
        port_known = true;
    }
    Some(PacketDestination {
        destination,
        port_known,
    })
}

/// The destination of the common packet, read in place: TCP or UDP right
/// after an IPv4 header without options (not a later fragment) or an IPv6
/// header without extension headers, all in the packet's linear part.
/// Every agent packet is read, so three `bpf_skb_load_bytes` calls per
/// packet are worth avoiding. Anything else (options, extension headers,
/// fragments, ICMP, headers outside the linear part) returns `None` and is
/// read by [`packet_destination`] with the helper.
///
/// Direct packet reads in `cgroup_skb` programs: 5.2, for loaders with
/// `CAP_BPF` or `CAP_SYS_ADMIN`. At egress the packet data starts at the
/// network header.
#[inline(always)]
fn plain_destination(ctx: &SkBuffContext) -> Option<PacketDestination> {
    // SAFETY: reading the context's packet bounds.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // An IPv4 header without options and the ports after it.
    if data + 24 > end {
        return None;
    }
    let packet = data as *const u8;
    // SAFETY: bytes 0..24 are before `end`, checked above.
    let byte = |at: usize| unsafe { *packet.add(at) };
    let mut destination = Destination {
        family: AF_INET,
        addr: [0; 16],
        port: 0,
        protocol: 0,
        sock_type: 0,
    };
    let first = byte(0);
    if first == 0x45 {
        let protocol = byte(9);
        let fragment_offset = u16::from_be_bytes([byte(6), byte(7)]) & 0x1fff;
        if fragment_offset != 0 || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
            return None;
        }
        destination.addr = ipv4_mapped([byte(16), byte(17), byte(18), byte(19)]);
        destination.port = u16::from_be_bytes([byte(22), byte(23)]);
        destination.protocol = protocol;
    } else if first >> 4 == 6 {
        // The IPv6 header and the ports after it.
        if data + 44 > end {
            return None;
        }
        // SAFETY: bytes 0..44 are before `end`, checked above.
        let byte = |at: usize| unsafe { *packet.add(at) };
        let protocol = byte(6);
        if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
            return None;
        }
        destination.family = AF_INET6;
        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            destination.addr[i] = byte(24 + i);
        });
        destination.port = u16::from_be_bytes([byte(42), byte(43)]);
        destination.protocol = protocol;
    } else {
        return None;
    }
    Some(PacketDestination {
        destination,
        port_known: true,
    })
}

/// Whether the cached verdict answers for this packet.
#[inline(always)]
fn cache_hit(tag: &SocketTag, generation: u32, packet: &PacketDestination) -> bool {
    let destination = &packet.destination;
    if tag.cache_generation != generation
        || tag.cache_protocol != destination.protocol
        || tag.cache_addr != destination.addr
    {
        return false;
    }
    // A fragment without ports belongs to the datagram whose first
    // fragment was just judged.
    if packet.port_known && tag.cache_port != destination.port {
        return false;
    }
    // SAFETY: helper without memory arguments; only read when the entry
    // can expire, so connected sockets under rules never pay for it.
    tag.cache_expires_ns == NEVER || unsafe { bpf_ktime_get_boot_ns() } < tag.cache_expires_ns
}

#[inline(always)]
fn try_skb_egress(ctx: &SkBuffContext, tag: &mut SocketTag) -> Verdict {
    let Some(packet) = packet_destination(ctx) else {
        return Verdict::Allowed;
    };
    let generation = active_generation();
    let agent_id = tag.agent_id;
    if cache_hit(tag, generation, &packet) {
        let verdict = Verdict::from_u8(tag.cache_verdict).unwrap_or(Verdict::Denied);
        if verdict == Verdict::Denied {
            count(agent_id, |c| c.dropped_packets += 1);
            return verdict;
        }
        // Neither a breaker's quarantine nor a secret's taint changes the
        // generation.
        if !quarantined(agent_id) && (tag.cache_flags & JUDGED_TAINTED != 0 || !tainted(agent_id)) {
            return verdict;
        }
    }
    judge(ctx, tag, &packet, generation)
}

/// The redirect to the agent's DNS proxy: the packet goes to loopback
/// because the address hook sent it there, which the rules must not undo
/// (a policy may deny loopback).
#[inline(always)]
fn to_dns_proxy(ctx: &SkBuffContext, destination: &Destination, tag_flags: u32) -> bool {
    let loopback = destination.addr == ipv4_mapped([127, 0, 0, 1])
        || destination.addr == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    if !loopback || tag_flags & DNS_REDIRECTED == 0 {
        return false;
    }
    // SAFETY: the helper takes the program context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    DNS_ORIGINAL.get_ptr(cookie).is_some_and(|original| {
        // SAFETY: the pointer comes from a successful lookup.
        unsafe { (*original).proxy_port == destination.port }
    })
}

#[inline(always)]
fn judge(
    ctx: &SkBuffContext,
    tag: &mut SocketTag,
    packet: &PacketDestination,
    generation: u32,
) -> Verdict {
    let destination = &packet.destination;
    let agent_id = tag.agent_id;
    let mut expires = NEVER;
    let mut flags = 0;
    let (verdict, agent_mode, rule_id) = if to_dns_proxy(ctx, destination, tag.flags) {
        // Allowed in quarantine too, as the address hooks redirect then.
        (Verdict::Allowed, mode::ENFORCE, 0)
    } else {
        let policy = agent_policy(generation, agent_id);
        let (agent_mode, rule_decision, rule_id) = match policy {
            // An agent whose policy is gone is held closed, as at connect.
            None => (mode::ENFORCE, decision::DENY, 0),
            Some(policy) => {
                let (mut found, mut rule_id) = match_rules(generation, agent_id, destination);
                if found == decision::NONE {
                    (found, rule_id) =
                        match_learned(agent_id, destination, protocol_bit(destination.protocol));
                    if found == decision::ALLOW {
                        flags = LEARNED_ALLOW;
                        // A TCP connection a learned name allowed stays
                        // allowed, as it does at connect; a datagram
                        // socket's sends are judged again soon, so an
                        // expired name stops working for them.
                        if destination.protocol != IPPROTO_TCP {
                            // SAFETY: helper without memory arguments.
                            expires = unsafe { bpf_ktime_get_boot_ns() } + LEARNED_RECHECK_NS;
                        }
                    } else if let (decision::ALLOW, granted) =
                        match_grant(agent_id, destination, false)
                    {
                        // As a learned name: a TCP connection stays, other
                        // sends are judged again soon after the grant ends.
                        found = decision::ALLOW;
                        rule_id = granted;
                        flags = LEARNED_ALLOW;
                        if destination.protocol != IPPROTO_TCP {
                            // SAFETY: helper without memory arguments.
                            expires = unsafe { bpf_ktime_get_boot_ns() } + LEARNED_RECHECK_NS;
                        }
                    } else if kept_learned_connection(tag, destination) {
                        // The policy was reloaded after the name expired:
                        // no rule decides this connection now, so it keeps
                        // the allow it was made with.
                        found = decision::ALLOW;
                        rule_id = tag.cache_rule_id;
                        flags = LEARNED_ALLOW;
                    }
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
        if agent_mode == mode::QUARANTINE || quarantined(agent_id) {
            (Verdict::Denied, mode::QUARANTINE, rule_id)
        } else if rule_decision == decision::ALLOW {
            // As at connect: a tainted agent's narrowed rules can only take
            // the allow away.
            let packed = narrowed(generation, agent_id, destination);
            if packed & NARROWED_TAINTED != 0 {
                flags |= JUDGED_TAINTED;
            }
            if packed as u8 == decision::DENY {
                (
                    verdict_for(decision::DENY, agent_mode),
                    agent_mode,
                    (packed >> 32) as u32,
                )
            } else {
                (verdict_for(rule_decision, agent_mode), agent_mode, rule_id)
            }
        } else {
            (verdict_for(rule_decision, agent_mode), agent_mode, rule_id)
        }
    };
    remember(
        tag,
        generation,
        destination,
        verdict,
        rule_id,
        expires,
        flags,
    );
    if verdict == Verdict::Denied {
        klog!(
            BACKSTOP,
            debug,
            "backstop: agent {} packet to port {} dropped by rule {}",
            agent_id,
            destination.port,
            rule_id
        );
        count(agent_id, |c| c.dropped_packets += 1);
        emit(tag, destination, agent_mode, rule_id, generation);
    }
    verdict
}

/// Caches a verdict for `destination` in the tag.
#[inline(always)]
fn remember(
    tag: &mut SocketTag,
    generation: u32,
    destination: &Destination,
    verdict: Verdict,
    rule_id: u32,
    expires: u64,
    flags: u32,
) {
    tag.cache_generation = generation;
    tag.cache_addr = destination.addr;
    tag.cache_port = destination.port;
    tag.cache_protocol = destination.protocol;
    tag.cache_verdict = verdict as u8;
    tag.cache_rule_id = rule_id;
    tag.cache_expires_ns = expires;
    tag.cache_flags = flags;
}

/// Caches an address hook's allow, exactly as [`judge`] would cache its
/// own verdict for a packet to the same destination (the same rules,
/// learned names, default and mode decide both), so that the socket's
/// first packet need not be judged again. Only the destination the packet
/// carries can hit: a packet routed elsewhere misses and is judged.
#[inline(always)]
pub(super) fn seed(
    tag: *mut SocketTag,
    generation: u32,
    destination: &Destination,
    rule_id: u32,
    learned: bool,
    judged_tainted: bool,
) {
    if tag.is_null() {
        return;
    }
    // SAFETY: a pointer from a successful storage lookup of the socket the
    // calling hook runs for.
    let tag = unsafe { &mut *tag };
    let (expires, flags) = if !learned {
        (NEVER, 0)
    } else if destination.protocol == IPPROTO_TCP {
        (NEVER, LEARNED_ALLOW)
    } else {
        // SAFETY: helper without memory arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        (now + LEARNED_RECHECK_NS, LEARNED_ALLOW)
    };
    let flags = if judged_tainted {
        flags | JUDGED_TAINTED
    } else {
        flags
    };
    remember(
        tag,
        generation,
        destination,
        Verdict::Allowed,
        rule_id,
        expires,
        flags,
    );
}

/// Whether this TCP packet belongs to a connection whose last verdict was
/// an allow from a learned name, for the same destination.
#[inline(always)]
fn kept_learned_connection(tag: &SocketTag, destination: &Destination) -> bool {
    destination.protocol == IPPROTO_TCP
        && tag.cache_generation != 0
        && tag.cache_flags & LEARNED_ALLOW != 0
        && tag.cache_verdict == Verdict::Allowed as u8
        && tag.cache_protocol == IPPROTO_TCP
        && tag.cache_port == destination.port
        && tag.cache_addr == destination.addr
}

/// Records a dropped packet once per socket and destination (the verdict
/// is cached, so retransmits are counted, not recorded again), within the
/// agent's event rate. The process is the one in the tag: the packet may
/// be sent from softirq context, where the current task is not the sender.
/// In audit mode nothing is dropped and the address hooks have recorded
/// the would-be denial already.
#[inline(always)]
fn emit(tag: &SocketTag, destination: &Destination, agent_mode: u8, rule_id: u32, generation: u32) {
    let decision = TagDecision {
        hook: hook::SKB_EGRESS,
        verdict: Verdict::Denied,
        mode: agent_mode,
        rule_id,
        generation,
    };
    emit_for_tag(tag, &decision, destination);
}

/// What a record of the backstop or the setsockopt program decided.
struct TagDecision {
    hook: u16,
    verdict: Verdict,
    mode: u8,
    rule_id: u32,
    generation: u32,
}

/// Writes one connect record for the process in `tag`, within the agent's
/// event rate. Every field is written: reserved ring-buffer memory holds
/// whatever an earlier record left there.
#[inline(always)]
fn emit_for_tag(tag: &SocketTag, decision: &TagDecision, object: &Destination) {
    if !take_event_token(tag.agent_id) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count_drop(tag.agent_id);
        return;
    };
    // SAFETY: the reservation is exactly one `ConnectEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    let header = &mut event.header;
    header.version = EVENT_VERSION;
    header.kind = kind::CONNECT;
    header.size = core::mem::size_of::<ConnectEvent>() as u32;
    // SAFETY: helper without memory arguments.
    header.time_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.cgroup_id = tag.cgroup_id;
    header.agent_id = tag.agent_id;
    header.pid = tag.pid;
    header.tgid = tag.tgid;
    header.uid = tag.uid;
    header.gid = tag.gid;
    header.root_tgid = tag.root_tgid;
    header.hook = decision.hook;
    header.verdict = decision.verdict as u8;
    header.mode = decision.mode;
    header.rule_id = decision.rule_id;
    header.generation = decision.generation;
    header.ppid = 0;
    header.comm = tag.comm;
    event.family = object.family;
    event.port = object.port;
    event.protocol = object.protocol;
    event.sock_type = 0;
    event._pad = [0; 2];
    event.addr = object.addr;
    // The backstop judges the packet, not a learned row: no domain.
    event.learned_rule = 0;
    event._pad2 = 0;
    entry.submit(0);
}

/// Refuses agents the socket options that make the kernel send packets to
/// another address than the one the address hooks judge: IPv4 source
/// routes (`IP_OPTIONS` with LSRR or SSRR) and IPv6 routing headers
/// (`IPV6_RTHDR`, `IPV6_2292RTHDR`). The agent is found by the socket's tag
/// (on 6.1 this program type cannot ask for the current process).
#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let sockopt = unsafe { &mut *ctx.sockopt };
    if sockopt.optlen > SOCKOPT_MAX_VISIBLE {
        // Only the first page is shown to programs; before 6.5 the kernel
        // fails such a call with EFAULT unless the program says it leaves
        // the value alone.
        sockopt.optlen = 0;
        return 1;
    }
    let (level, optname) = (sockopt.level, sockopt.optname);
    let rthdr = level == SOL_IPV6 && (optname == IPV6_RTHDR || optname == IPV6_2292RTHDR);
    let ip_options = level == SOL_IP && optname == IP_OPTIONS;
    if !(rthdr || ip_options) || sockopt.optlen <= 0 {
        // Clearing an option (an empty value) reroutes nothing.
        return 1;
    }
    // SAFETY: reading the context's socket pointer.
    let sk = unsafe { sockopt.__bindgen_anon_1.sk };
    if sk.is_null() {
        return 1;
    }
    let tag = tag_of(sk);
    if tag.is_null() {
        return 1;
    }
    if ip_options && !has_source_route(sockopt) {
        return 1;
    }
    // SAFETY: a pointer from a successful storage lookup.
    let tag = unsafe { &*tag };
    let generation = active_generation();
    let agent_mode = agent_policy(generation, tag.agent_id).map_or(mode::ENFORCE, |p| p.mode);
    let verdict = verdict_for(decision::DENY, agent_mode);
    count(tag.agent_id, |c| c.denied_sockopts += 1);
    emit_sockopt(tag, verdict, agent_mode, generation, level, optname);
    verdict.to_cgroup_sock()
}

/// Whether the IPv4 options in the value hold a loose or strict source
/// route. Options are walked as the kernel does: END stops, NOOP is one
/// byte, every other option has a length byte.
///
/// The walk reads the value in place, each byte behind its own check
/// against the buffer's end, with the offset bounded by a comparison
/// against a constant first. 6.1's verifier cannot prune a branch that
/// compares a known value with a range (it only folds comparisons with a
/// constant operand), so an index compared with a length it tracks as a
/// register reaches impossible states there, in which a stack or map
/// access is refused.
// The last unrolled step's update of `at` is never read.
#[allow(unused_assignments)]
#[inline(always)]
fn has_source_route(sockopt: &aya_ebpf::bindings::bpf_sockopt) -> bool {
    // SAFETY: reading the context's buffer bounds.
    let (start, end) = unsafe {
        (
            sockopt.__bindgen_anon_2.optval as *const u8,
            sockopt.__bindgen_anon_3.optval_end as *const u8,
        )
    };
    let mut at = 0usize;
    unroll!(_i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                   20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39] {
        if at >= IP_OPTIONS_MAX {
            return false;
        }
        // `wrapping_add`: the verifier, not the compiler, checks the
        // bounds; the pointer is compared with the end before each read.
        let option_at = start.wrapping_add(at);
        if option_at.wrapping_add(1) > end {
            return false;
        }
        // SAFETY: the byte is before `end`, checked above.
        let option = unsafe { *option_at };
        if option == IPOPT_LSRR || option == IPOPT_SSRR {
            return true;
        }
        if option == IPOPT_END {
            return false;
        }
        if option == IPOPT_NOOP {
            at += 1;
        } else {
            if option_at.wrapping_add(2) > end {
                return false;
            }
            // SAFETY: the byte is before `end`, checked above.
            let length = unsafe { *option_at.wrapping_add(1) } as usize;
            // The kernel rejects a length below 2; stop rather than loop.
            if length < 2 {
                return false;
            }
            at += length;
        }
    });
    // More than 40 bytes of options is invalid; the kernel refuses it.
    false
}

/// Records a refused socket option, as a connect record without an address
/// (the port field carries the option name, the protocol field its level).
#[inline(always)]
fn emit_sockopt(
    tag: &SocketTag,
    verdict: Verdict,
    agent_mode: u8,
    generation: u32,
    level: i32,
    optname: i32,
) {
    let decision = TagDecision {
        hook: hook::SETSOCKOPT,
        verdict,
        mode: agent_mode,
        rule_id: 0,
        generation,
    };
    let object = Destination {
        family: if level == SOL_IP { AF_INET } else { AF_INET6 },
        addr: [0; 16],
        port: optname as u16,
        protocol: level as u8,
        sock_type: 0,
    };
    emit_for_tag(tag, &decision, &object);
}

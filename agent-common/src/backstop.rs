//! The packet-level backstop: what Baton remembers on each agent socket.
//!
//! The socket-address hooks judge the address a program writes; the kernel
//! may then send the packet elsewhere (wildcards routed to loopback, IPv6
//! routing headers, IPv4 source routes, ICMP sockets whose sends no
//! address hook sees). Every socket an agent creates or first uses is
//! tagged with the agent in socket-local storage; a `cgroup_skb/egress`
//! program judges each packet of a tagged socket by the destination in the
//! packet itself.

use core::mem::size_of;

use crate::event::COMM_BYTES;

/// Name of the socket-local storage map holding a [`SocketTag`] per socket.
pub const SOCKET_TAGS: &str = "SOCKET_TAGS";

/// Name of the hash map `cgroup v2 id → 1` of the cgroups the backstop
/// program is attached to (the cgroup v2 root's id when it covers the
/// whole host).
///
/// The backstop is a per-packet program: attached at the root it costs
/// every packet on the host. It is attached where agents live instead,
/// and `sock_create` refuses an agent a socket in a cgroup that no entry
/// here (the cgroup itself or an ancestor) covers, asking the daemon for
/// coverage with a [`crate::event::kind::BACKSTOP_NEEDED`] event.
pub const BACKSTOP_CGROUPS: &str = "BACKSTOP_CGROUPS";

/// Capacity of [`BACKSTOP_CGROUPS`]. Past this many cgroups the daemon
/// covers the whole host from the root instead.
pub const MAX_BACKSTOP_CGROUPS: u32 = 64;

/// How many levels below its cgroup's own `sock_create` looks for a
/// covering ancestor (the root is level 0). A cgroup deeper than this is
/// covered only by its own entry or the root's.
pub const BACKSTOP_ANCESTOR_LEVELS: usize = 8;

/// The rule id of a denial because no backstop covered the socket: a
/// socket an agent creates in a cgroup the backstop is not attached to
/// (the daemon attaches it, and tries after that succeed), or a socket it did
/// not create while the backstop does not cover the whole host. Below
/// [`crate::egress::GRANT_RULE_BIT`], far above any compiled rule.
pub const UNCOVERED_RULE: u32 = crate::egress::GRANT_RULE_BIT - 1;

/// [`SocketTag::flags`]: the socket was created by an agent in a cgroup the
/// backstop covered, so every packet it sends runs the backstop.
pub const COVERED: u32 = 2;

/// What the backstop knows about one agent socket: whose it is, and the
/// last verdict it reached for it.
///
/// The identity is the process that created (or first connected or sent
/// on) the socket. Packets leave from softirq context too (TCP
/// retransmits, delayed ACKs), where the current task is not the sender, so
/// records name this process instead of the current one.
///
/// The verdict cache holds one destination per socket: a connected socket
/// sends to one destination, so every packet after the first costs a
/// compare. It is valid only under the policy generation it was made in,
/// and only until `cache_expires_ns` (a learned name's allow is re-judged
/// every [`LEARNED_RECHECK_NS`], so a name that expires stops working for
/// sends that no address hook sees).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketTag {
    /// Agent id; 0 never occurs (ids start at 1).
    pub agent_id: u32,
    /// tgid of the process that tagged the socket.
    pub tgid: u32,
    /// Thread id of that process's thread.
    pub pid: u32,
    /// Real uid of that process.
    pub uid: u32,
    /// Real gid of that process.
    pub gid: u32,
    /// tgid of the agent's root process.
    pub root_tgid: u32,
    /// cgroup v2 id of that process when it tagged the socket.
    pub cgroup_id: u64,
    /// `comm` of that thread.
    pub comm: [u8; COMM_BYTES],
    /// Generation the cached verdict was reached under; 0: nothing cached.
    pub cache_generation: u32,
    /// Destination port of the cached verdict, host order.
    pub cache_port: u16,
    /// IP protocol of the cached verdict.
    pub cache_protocol: u8,
    /// The cached [`crate::verdict::Verdict`] as `u8`.
    pub cache_verdict: u8,
    /// Destination address of the cached verdict, IPv6 or IPv4-mapped.
    pub cache_addr: [u8; 16],
    /// Boot-time nanoseconds after which the cached verdict is re-judged.
    pub cache_expires_ns: u64,
    /// Rule that decided the cached verdict.
    pub cache_rule_id: u32,
    /// Flags of the cached verdict (the backstop's own bits).
    pub cache_flags: u32,
    /// Flags of the socket, kept across verdicts (the programs' own bits).
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<SocketTag>() == 96);

/// How long an allow that came from a learned DNS name is trusted before
/// the packet is judged again.
pub const LEARNED_RECHECK_NS: u64 = 1_000_000_000;

/// A cached verdict that never expires within its generation.
pub const NEVER: u64 = u64::MAX;

//! Types shared by Baton's kernel programs (`agent-ebpf`) and its daemon (`agent`).
//!
//! Every type here crosses the user/kernel boundary, either as a BPF map key or
//! value, a read-only global, or a ring-buffer event. They are all `#[repr(C)]`,
//! `Copy`, carry explicit padding so no byte is left uninitialised, and have
//! their size pinned by a compile-time assertion: a layout change breaks the
//! build instead of silently desynchronising the kernel and the daemon.
//!
//! Enable the `user` feature in userspace to get `aya::Pod` implementations.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod backstop;
pub mod detect;
pub mod egress;
pub mod event;
pub mod files;
pub mod identity;
pub mod klog;
pub mod offsets;
pub mod programs;
pub mod verdict;

/// Names of the BPF maps, shared so both sides spell them the same way.
pub mod map_names {
    /// `tgid → AgentRecord`: which agent a process belongs to.
    pub const AGENT_OF_TGID: &str = "AGENT_OF_TGID";
    /// One byte per tgid, non-zero for every tgid `AGENT_OF_TGID` may
    /// hold: see [`crate::identity::AGENT_MARKS_PER_ENTRY`].
    pub const AGENT_MARKS: &str = "AGENT_MARKS";
    /// `AgentPolicyKey → AgentPolicy`: per-generation, per-agent settings.
    pub const AGENT_POLICIES: &str = "AGENT_POLICIES";
    /// One-element array holding the generation every program must use.
    pub const ACTIVE_GENERATION: &str = "ACTIVE_GENERATION";
    /// LPM trie of egress rules.
    pub const EGRESS_RULES: &str = "EGRESS_RULES";
    /// Array of port tables referenced by egress rules.
    pub const EGRESS_PORT_TABLES: &str = "EGRESS_PORT_TABLES";
    /// LPM trie of file rules.
    pub const FILE_RULES: &str = "FILE_RULES";
    /// (generation, agent, object id) → a rule object's decisions.
    pub const FILE_OBJECTS: &str = "FILE_OBJECTS";
    /// Inode-local storage: the object id the daemon put on each rule
    /// object's inode.
    pub const INODE_MARKS: &str = "INODE_MARKS";
    /// cgroup v2 id → agent id, for cgroup and systemd unit selectors.
    pub const SELECTED_CGROUPS: &str = "SELECTED_CGROUPS";
    /// Executable identity → agent id, for executable selectors.
    pub const SELECTED_EXECUTABLES: &str = "SELECTED_EXECUTABLES";
    /// Learned (agent, address) → expiry and ports, from the DNS proxy.
    pub const LEARNED_ADDRS: &str = "LEARNED_ADDRS";
    /// (Agent id, network namespace) → its DNS proxy ports.
    pub const DNS_PROXY_PORTS: &str = "DNS_PROXY_PORTS";
    /// Socket cookie → the DNS server it was redirected from.
    pub const DNS_ORIGINAL: &str = "DNS_ORIGINAL";
    /// Agent id → run-time state (quarantine, rate limiter).
    pub const AGENT_STATE: &str = "AGENT_STATE";
    /// Agent id → per-CPU counters.
    pub const AGENT_COUNTERS: &str = "AGENT_COUNTERS";
    /// Distinct denied destinations, per agent (LRU).
    pub const DENIED_DESTINATIONS: &str = "DENIED_DESTINATIONS";
    /// Ring buffer of events.
    pub const EVENTS: &str = "EVENTS";
    /// One-element array: the fingerprint of the attached programs' object
    /// and load-time settings.
    pub const PROGRAMS_FINGERPRINT: &str = "PROGRAMS_FINGERPRINT";
    /// Ring buffer of requests for a DNS proxy in a network namespace.
    pub const NETNS_REQUESTS: &str = "NETNS_REQUESTS";
    /// Per-CPU counters of events that could not be queued.
    pub const EVENT_DROPS: &str = "EVENT_DROPS";
    /// One-element array: the daemon's tgid, which agents may not signal or trace.
    pub const DAEMON_TGID: &str = "DAEMON_TGID";
    /// Thread id → a detection waiting for its syscall's result (LRU).
    pub const DETECT_PENDING: &str = "DETECT_PENDING";
    /// `tgid → AgentRecord` of agent processes that exited lately (LRU).
    pub const EXITED_AGENTS: &str = "EXITED_AGENTS";
    /// `(agent, port, address prefix) → GrantValue`: operators' grants.
    pub const EGRESS_GRANTS: &str = "EGRESS_GRANTS";
    /// `slot → connects made`: each grant's use of its connect budget.
    pub const GRANT_CONNECTS: &str = "GRANT_CONNECTS";
    /// Agent id → the open of a secret that tainted it.
    pub const SECRET_TAINTS: &str = "SECRET_TAINTS";
    /// cgroup v2 id → 1: where the packet backstop is attached.
    pub const BACKSTOP_CGROUPS: &str = crate::backstop::BACKSTOP_CGROUPS;
    /// Every map the daemon opens by name, for the check that the compiled
    /// object has each of them.
    pub const ALL: [&str; 28] = [
        AGENT_OF_TGID,
        AGENT_MARKS,
        AGENT_POLICIES,
        ACTIVE_GENERATION,
        EGRESS_RULES,
        EGRESS_PORT_TABLES,
        FILE_RULES,
        FILE_OBJECTS,
        INODE_MARKS,
        SELECTED_CGROUPS,
        SELECTED_EXECUTABLES,
        LEARNED_ADDRS,
        DNS_PROXY_PORTS,
        DNS_ORIGINAL,
        AGENT_STATE,
        AGENT_COUNTERS,
        DENIED_DESTINATIONS,
        EVENTS,
        NETNS_REQUESTS,
        PROGRAMS_FINGERPRINT,
        EVENT_DROPS,
        DAEMON_TGID,
        DETECT_PENDING,
        EXITED_AGENTS,
        EGRESS_GRANTS,
        GRANT_CONNECTS,
        SECRET_TAINTS,
        BACKSTOP_CGROUPS,
    ];
}

/// Implements `aya::Pod` for shared types when the `user` feature is on.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, `Copy`, and has explicit padding
            // fields, so every byte pattern is valid and none is uninitialised.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

#[cfg(feature = "user")]
impl_pod!(
    identity::AgentRecord,
    identity::AgentPolicyKey,
    identity::AgentPolicy,
    identity::ExecutableKey,
    identity::AgentRuntime,
    identity::AgentCounters,
    identity::SecretTaint,
    identity::DeniedDestination,
    egress::EgressKey,
    egress::EgressValue,
    egress::PortRule,
    egress::PortTable,
    egress::LearnedKey,
    egress::LearnedValue,
    egress::GrantKey,
    egress::GrantValue,
    egress::DnsProxyPorts,
    egress::DnsProxyKey,
    event::NetnsEvent,
    event::CgroupEvent,
    egress::OriginalDestination,
    files::FileKey,
    files::FileValue,
    files::ObjectKey,
    files::ObjectValue,
    files::InodeMark,
    offsets::KernelOffsets,
    detect::DetectOffsets,
    event::EventHeader,
    event::ConnectEvent,
    event::FileEvent,
    backstop::SocketTag,
);

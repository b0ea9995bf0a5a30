//! Which process belongs to which agent, and per-agent settings.

use core::mem::size_of;

/// How a process became an agent. Stored in [`AgentRecord::admission`].
pub mod admission {
    /// Placed by `baton exec`.
    pub const EXEC: u8 = 1;
    /// Inherited from its parent at fork.
    pub const FORK: u8 = 2;
    /// Found in a selected cgroup or systemd unit.
    pub const CGROUP: u8 = 3;
    /// Exec'd a selected executable.
    pub const EXECUTABLE: u8 = 4;
}

/// Value of the `tgid → agent` map, the authoritative identity record.
///
/// Set when a process is admitted, copied to children at fork, removed when
/// the last thread of the process exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentRecord {
    /// The agent's numeric id, allocated by the daemon and stable across reloads.
    pub agent_id: u32,
    /// The tgid of the process that was admitted; descendants keep it, so the
    /// audit trail can show the chain back to the agent's root process.
    pub root_tgid: u32,
    /// One of [`admission`].
    pub admission: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<AgentRecord>() == 16);

/// Tgids each entry of the agent marks array covers, one byte each.
///
/// The marks array is a filter in front of the `tgid → agent` hash map, which
/// every process on the host would otherwise look up on every open and
/// connect: a process whose byte is 0 is in no agent, found with an array
/// load the verifier inlines. Every writer of the hash map sets the byte
/// before it inserts; the exit program clears it after it removes. A byte
/// left set for a process that is gone (a pid reused, an admission racing an
/// exit) only costs its next owner the hash lookup.
///
/// Writers store single bytes and never read-modify-write a whole entry, so
/// the daemon (through `mmap`) and the programs on every CPU write side by
/// side without losing each other's marks.
pub const AGENT_MARKS_PER_ENTRY: usize = 64;

/// Entries of the agent marks array: one byte for every tgid below the
/// kernel's `PID_MAX_LIMIT` on 64-bit (2^22), so 4 MiB. A tgid beyond it
/// (none, on any kernel) finds no entry and is looked up in the hash map.
pub const AGENT_MARKS_ENTRIES: u32 = (1 << 22) / AGENT_MARKS_PER_ENTRY as u32;

/// `BPF_F_MMAPABLE`: the daemon writes the marks through a shared mapping,
/// one byte at a time.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Key of the per-generation agent settings map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AgentPolicyKey {
    /// Policy generation the entry belongs to.
    pub generation: u32,
    /// Agent id.
    pub agent_id: u32,
}
const _: () = assert!(size_of::<AgentPolicyKey>() == 8);

/// Per-generation, per-agent settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentPolicy {
    /// One of [`crate::verdict::mode`].
    pub mode: u8,
    /// Decision when no egress rule matches.
    pub egress_default: u8,
    /// Decision when no file rule matches.
    pub file_default: u8,
    /// Decision when no exec rule matches.
    pub exec_default: u8,
    /// Bit set of [`policy_flags`].
    pub flags: u32,
    /// Rule id reported when the egress default decides.
    pub egress_default_rule: u32,
    /// Rule id reported when the file default decides.
    pub file_default_rule: u32,
    /// Rule id reported when the exec default decides.
    pub exec_default_rule: u32,
    /// Connects (and unconnected sends) allowed per second; 0 is unlimited.
    pub connects_per_second: u32,
    /// Socket address families the agent may create: bit `n` allows family
    /// `n` (`AF_*`). Families from 64 up are never allowed.
    pub families: u64,
}
const _: () = assert!(size_of::<AgentPolicy>() == 32);

/// Socket families every agent may create: `AF_UNIX`, `AF_INET`,
/// `AF_INET6` and `AF_NETLINK`.
pub const DEFAULT_FAMILIES: u64 = (1 << 1) | (1 << 2) | (1 << 10) | (1 << 16);

/// Whether family `family` is in the set `families`.
#[inline(always)]
pub const fn family_allowed(families: u64, family: u32) -> bool {
    family < 64 && families & (1u64 << (family & 63)) != 0
}

/// Bits of [`AgentPolicy::flags`].
pub mod policy_flags {
    /// Record allowed connects too.
    pub const LOG_ALLOWED_EGRESS: u32 = 1 << 0;
    /// Record allowed file accesses too.
    pub const LOG_ALLOWED_FILES: u32 = 1 << 1;
    /// Let the agent open ICMP ("ping") sockets.
    pub const ALLOW_ICMP: u32 = 1 << 2;
    /// The agent's DNS goes through a Baton proxy (it has domain rules).
    pub const DNS_PROXY: u32 = 1 << 3;
    /// The agent may execute files with no name on disk (memfd, deleted).
    pub const ALLOW_ANONYMOUS_EXEC: u32 = 1 << 4;
    /// The agent may create user namespaces, mount (bind, move, remount and
    /// new file systems included), `chroot` and `pivot_root`
    /// (`process.namespaces: allow`).
    pub const ALLOW_NAMESPACES: u32 = 1 << 5;
    /// Detect (not deny) opens for reading or writing that a rule denies:
    /// nothing enforces them for this agent (no BPF LSM, no fanotify).
    pub const DETECT_OPEN: u32 = 1 << 8;
    /// Detect execs that a rule denies (no BPF LSM, no fanotify).
    pub const DETECT_EXEC: u32 = 1 << 9;
    /// Detect executable mappings that a rule denies (no BPF LSM).
    pub const DETECT_MMAP_EXEC: u32 = 1 << 10;
    /// Detect create, delete, rename, link, chmod and truncate that a rule
    /// denies (no BPF LSM).
    pub const DETECT_CHANGES: u32 = 1 << 11;
    /// Kill (`SIGKILL`) a process at the syscall a detection catches.
    pub const KILL_ON_DETECT: u32 = 1 << 12;
    /// Every detection bit.
    pub const DETECT_ANY: u32 = DETECT_OPEN | DETECT_EXEC | DETECT_MMAP_EXEC | DETECT_CHANGES;
}

/// Key of the selected-executables map: the file's identity, not its name,
/// so a copy or a rename of another binary does not match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecutableKey {
    /// Inode number.
    pub ino: u64,
    /// Kernel-internal device number of the file system (`MKDEV(major, minor)`,
    /// major in the top 12 bits of 32).
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExecutableKey>() == 16);

/// Name of the global holding the per-agent event rate (events per second).
pub const EVENTS_PER_SECOND_GLOBAL: &str = "EVENTS_PER_SECOND";

/// Events per second per agent unless configured otherwise.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 1000;

/// Deepest cgroup level the kernel checks when looking for a selected
/// ancestor cgroup.
pub const MAX_CGROUP_LEVELS: u32 = 8;

/// Run-time state of an agent, outside the generation-keyed maps so that a
/// policy reload keeps it: breaker quarantine and the connect rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentRuntime {
    /// Non-zero while a breaker holds the agent in quarantine.
    pub quarantined: u32,
    /// Connect tokens left in the current bucket.
    pub connect_tokens: u32,
    /// `CLOCK_BOOTTIME` of the last refill, nanoseconds.
    pub last_refill_ns: u64,
    /// Event tokens left in the current bucket.
    pub event_tokens: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` of the last event-token refill, nanoseconds.
    pub event_refill_ns: u64,
}
const _: () = assert!(size_of::<AgentRuntime>() == 32);

/// Value of [`SECRET_TAINTS`](crate::map_names::SECRET_TAINTS): the first
/// open of a secret that tainted the agent. Written once, by the program
/// that saw the open (BPF LSM `file_open`) or the daemon's fanotify
/// listener before it answers, before the open returns; removed only by an
/// operator (`baton taint clear`). While it is there, the agent's egress is
/// held to its `egress.afterSecret` rules (see [`NARROWED_AGENT_BIT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecretTaint {
    /// Rule id of the secret (`files.secrets[i]`).
    pub rule_id: u32,
    /// Policy generation the rule id belongs to.
    pub generation: u32,
    /// tgid of the process that opened it.
    pub tgid: u32,
    /// Thread id of that process's thread.
    pub pid: u32,
    /// Real uid of that process.
    pub uid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `CLOCK_BOOTTIME` of the open, nanoseconds.
    pub at_boot_ns: u64,
    /// `comm` of that thread.
    pub comm: [u8; crate::event::COMM_BYTES],
}
const _: () = assert!(size_of::<SecretTaint>() == 48);

/// Set in the agent id of the egress rules (`EGRESS_RULES` keys) that hold
/// a tainted agent: its `egress.afterSecret` allow list and a catch-all
/// deny. Agent ids never reach this bit (the registry counts from 1).
pub const NARROWED_AGENT_BIT: u32 = 1 << 31;

/// Per-agent counters the breakers read. Kept per CPU in the kernel and
/// summed by the daemon; every decision counts, whatever the event rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Connects and sends decided.
    pub connects: u64,
    /// Connects and sends denied (or would-be denied).
    pub denied_connects: u64,
    /// Distinct destinations (address, port) denied.
    pub distinct_denied_destinations: u64,
    /// Connects refused by the rate limit.
    pub rate_limited: u64,
    /// File and exec calls denied (or would-be denied).
    pub denied_files: u64,
    /// Opens for writing and other changes decided.
    pub file_writes: u64,
    /// Execs.
    pub execs: u64,
    /// Canary accesses.
    pub canary_hits: u64,
    /// Sockets denied (raw, packet, ICMP).
    pub denied_sockets: u64,
    /// Events the ring buffer had no room for.
    pub events_dropped: u64,
    /// Events left out by the per-agent event rate limit.
    pub events_suppressed: u64,
    /// Secrets opened: 1 while the agent is tainted. The programs record a
    /// taint in `SECRET_TAINTS`; the daemon fills this in for the breakers.
    pub secret_touches: u64,
    /// Reserved for counters added later, so the layout stays.
    pub _reserved: [u64; 3],
    /// Requests for a DNS proxy in a new network namespace that found
    /// their ring buffer full (the namespace's resolver retries).
    pub netns_requests_dropped: u64,
    /// Packets of agent sockets the packet-level backstop dropped.
    pub dropped_packets: u64,
    /// Socket options refused because they reroute packets.
    pub denied_sockopts: u64,
}
const _: () = assert!(size_of::<AgentCounters>() == 144);

impl AgentCounters {
    /// Every counter at zero, as a constant (a zeroed static in the
    /// programs, where a zeroed stack value costs a `memset` call).
    // SAFETY: every field is an integer, for which all-zero bytes are zero.
    pub const ZERO: Self = unsafe { core::mem::zeroed() };
}

/// Key of the distinct-denied-destinations set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeniedDestination {
    /// Agent id.
    pub agent_id: u32,
    /// Port, host order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Address, IPv6 or IPv4-mapped.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DeniedDestination>() == 24);

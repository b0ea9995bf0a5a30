//! Every map and global the programs share. Names match
//! `agent_common::map_names`; sizes are the capacity the daemon reports.

use agent_common::{
    egress::{
        DNS_PROXY_ENTRIES, DnsProxyKey, DnsProxyPorts, EgressKey, EgressValue, GRANT_SLOTS,
        GrantKey, GrantValue, LearnedKey, LearnedValue, OriginalDestination,
        PORT_TABLES_PER_GENERATION, PortTable,
    },
    files::{FileKey, FileValue, InodeMark, ObjectKey, ObjectValue},
    identity::{
        AGENT_MARKS_ENTRIES, AGENT_MARKS_PER_ENTRY, AgentCounters, AgentPolicy, AgentPolicyKey,
        AgentRecord, AgentRuntime, BPF_F_MMAPABLE, DeniedDestination, ExecutableKey, SecretTaint,
    },
    offsets::KernelOffsets,
};
use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::{
    btf_maps::InodeStorage,
    macros::{btf_map, map},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};

/// Processes an agent may have at once, host-wide.
const MAX_AGENT_PROCESSES: u32 = 65_536;

#[map(name = "AGENT_OF_TGID")]
pub static AGENT_OF_TGID: HashMap<u32, AgentRecord> =
    HashMap::with_max_entries(MAX_AGENT_PROCESSES, 0);

/// Agent processes that exited lately, `tgid → AgentRecord`, the oldest
/// evicted first: a report that reaches the daemon after its process is
/// gone (the audit subsystem's, of a seccomp refusal) still finds its
/// agent. Written at exit only, so it costs other processes nothing.
#[map(name = "EXITED_AGENTS")]
pub static EXITED_AGENTS: LruHashMap<u32, AgentRecord> = LruHashMap::with_max_entries(4096, 0);

/// One byte per tgid: 0 means the process is in no agent. See
/// [`agent_common::identity::AGENT_MARKS_PER_ENTRY`].
#[map(name = "AGENT_MARKS")]
pub static AGENT_MARKS: Array<[u8; AGENT_MARKS_PER_ENTRY]> =
    Array::with_max_entries(AGENT_MARKS_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "AGENT_POLICIES")]
pub static AGENT_POLICIES: HashMap<AgentPolicyKey, AgentPolicy> =
    HashMap::with_max_entries(4096, 0);

#[map(name = "ACTIVE_GENERATION")]
pub static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "EGRESS_RULES")]
pub static EGRESS_RULES: LpmTrie<EgressKey, EgressValue> = LpmTrie::with_max_entries(65_536, 0);

/// Operators' time-limited grants (`baton grant`), apart from the policy
/// generations: a reload neither copies nor drops them.
#[map(name = "EGRESS_GRANTS")]
pub static EGRESS_GRANTS: LpmTrie<GrantKey, GrantValue> = LpmTrie::with_max_entries(GRANT_SLOTS, 0);

/// Connects each grant has allowed, by its slot; compared with its budget.
#[map(name = "GRANT_CONNECTS")]
pub static GRANT_CONNECTS: Array<u32> = Array::with_max_entries(GRANT_SLOTS, 0);

#[map(name = "EGRESS_PORT_TABLES")]
pub static EGRESS_PORT_TABLES: Array<PortTable> =
    Array::with_max_entries(2 * PORT_TABLES_PER_GENERATION, 0);

#[map(name = "FILE_RULES")]
pub static FILE_RULES: LpmTrie<FileKey, FileValue> = LpmTrie::with_max_entries(65_536, 0);

/// A rule object's decisions per agent and generation; the object is named
/// by the id the daemon put in its inode's [`INODE_MARKS`] storage.
#[map(name = "FILE_OBJECTS")]
pub static FILE_OBJECTS: HashMap<ObjectKey, ObjectValue> = HashMap::with_max_entries(65_536, 0);

/// Inode-local storage (5.10): the object id on each rule object's inode.
/// Freed with the inode, so a mark can never outlive the object it was put
/// on and be found on another one that reuses its memory or number.
#[btf_map(name = "INODE_MARKS")]
pub static INODE_MARKS: InodeStorage<InodeMark> = InodeStorage::new();

/// Addresses learned from allowed DNS answers, per agent, with an expiry
/// the programs check themselves.
#[map(name = "LEARNED_ADDRS")]
///
/// Not preallocated: a value holds 16 rows (392 bytes), and most agents
/// learn far fewer than 65,536 addresses. Only the daemon inserts, so the
/// allocation never happens in a program.
pub static LEARNED_ADDRS: HashMap<LearnedKey, LearnedValue> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// Agents whose DNS goes to the daemon's proxy, and where.
#[map(name = "DNS_PROXY_PORTS")]
pub static DNS_PROXY_PORTS: HashMap<DnsProxyKey, DnsProxyPorts> =
    HashMap::with_max_entries(DNS_PROXY_ENTRIES, 0);

/// Socket cookie → the DNS server the socket was redirected from. LRU:
/// sockets close without telling us.
#[map(name = "DNS_ORIGINAL")]
pub static DNS_ORIGINAL: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(65_536, 0);

/// Run-time agent state: quarantine and the connect rate limiter.
#[map(name = "AGENT_STATE")]
pub static AGENT_STATE: HashMap<u32, AgentRuntime> = HashMap::with_max_entries(4096, 0);

/// Agents that opened a secret: the first such open, until an operator
/// clears it. A map of its own, not a field of [`AGENT_STATE`], because the
/// daemon rewrites whole `AGENT_STATE` values (quarantine) and would lose
/// a taint set between its read and its write.
#[map(name = "SECRET_TAINTS")]
pub static SECRET_TAINTS: HashMap<u32, SecretTaint> = HashMap::with_max_entries(4096, 0);

/// Per-agent, per-CPU counters for the breakers.
#[map(name = "AGENT_COUNTERS")]
pub static AGENT_COUNTERS: PerCpuHashMap<u32, AgentCounters> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Destinations each agent was denied, to count distinct ones.
#[map(name = "DENIED_DESTINATIONS")]
pub static DENIED_DESTINATIONS: LruHashMap<DeniedDestination, u8> =
    LruHashMap::with_max_entries(65_536, 0);

/// cgroup v2 id → agent id, for cgroup and systemd unit selectors.
#[map(name = "SELECTED_CGROUPS")]
pub static SELECTED_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Executable identity → agent id, for executable selectors.
#[map(name = "SELECTED_EXECUTABLES")]
pub static SELECTED_EXECUTABLES: HashMap<ExecutableKey, u32> = HashMap::with_max_entries(4096, 0);

/// cgroup v2 id → 1 for each cgroup the packet backstop (`skb_egress`) is
/// attached to; written by the daemon after it attaches, read by
/// `sock_create` and the address hooks.
#[map(name = "BACKSTOP_CGROUPS")]
pub static BACKSTOP_CGROUPS: HashMap<u64, u8> =
    HashMap::with_max_entries(agent_common::backstop::MAX_BACKSTOP_CGROUPS + 1, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// The fingerprint of the object and load-time settings the attached
/// programs came from, written by the daemon once every program is
/// attached. No program reads it: it lives with the pinned maps, so a
/// restarted daemon that finds its own fingerprint keeps the running
/// programs instead of loading them again.
#[map(name = "PROGRAMS_FINGERPRINT")]
pub static PROGRAMS_FINGERPRINT: Array<[u8; 32]> = Array::with_max_entries(1, 0);

/// Requests for a DNS proxy in a network namespace, apart from `EVENTS`:
/// one agent's flood of denials fills `EVENTS`, and must not leave another
/// agent's new namespace without DNS. 64 KiB holds about 700 requests,
/// which the daemon takes without writing anything.
#[map(name = "NETNS_REQUESTS")]
pub static NETNS_REQUESTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Events that could not be queued, per agent and per CPU.
#[map(name = "EVENT_DROPS")]
pub static EVENT_DROPS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Bytes `bpf_d_path` may write: the kernel's `PATH_MAX`.
pub const PATH_BUF_BYTES: usize = 4096;

/// Per-CPU scratch space for path resolution; the 512-byte stack cannot hold
/// a path or an LPM key.
///
/// The first 12 bytes are the head of a `Key<FileKey>` (prefix length,
/// generation, agent id) whose path bytes are the start of `buf`: a path
/// that `bpf_d_path` writes to the start of `buf` is already the LPM key,
/// with no copy (see [`PathScratch::in_place_key`]). Paths built by the
/// dentry walk end in the middle of `buf` and are copied into `key`.
#[repr(C)]
pub struct PathScratch {
    pub prefix_len: u32,
    pub generation: [u8; 4],
    pub agent_id: [u8; 4],
    pub buf: [u8; PATH_BUF_BYTES],
    pub key: Key<FileKey>,
    /// A record on its way to the ring buffer (see `files::emit`).
    pub pending: PendingRecord,
}

/// The fields of a file record, between the decision and the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingRecord {
    pub rights: u32,
    pub denied_rights: u32,
    pub rule_id: u32,
    pub verdict: u32,
    pub hook: u32,
    pub flags: u32,
    pub start: u32,
    pub len: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    let data = offset_of!(Key<FileKey>, data);
    assert!(offset_of!(PathScratch, prefix_len) == offset_of!(Key<FileKey>, prefix_len));
    assert!(offset_of!(PathScratch, generation) == data + offset_of!(FileKey, generation));
    assert!(offset_of!(PathScratch, agent_id) == data + offset_of!(FileKey, agent_id));
    assert!(offset_of!(PathScratch, buf) == data + offset_of!(FileKey, path));
    assert!(size_of::<Key<FileKey>>() == data + size_of::<FileKey>());
    assert!(PATH_BUF_BYTES >= agent_common::files::PATH_KEY_BYTES);
};

impl PathScratch {
    /// The LPM key made of the header fields and the first
    /// `PATH_KEY_BYTES` bytes of `buf`.
    #[inline(always)]
    pub fn in_place_key(&self) -> &Key<FileKey> {
        // SAFETY: `#[repr(C)]` puts `prefix_len`, `generation`, `agent_id`
        // and `buf` exactly where `Key<FileKey>` has its prefix length,
        // generation, agent id and path (asserted above), every byte
        // pattern is a valid key, and the alignment is the same (4).
        unsafe { &*(self as *const Self).cast::<Key<FileKey>>() }
    }
}

#[map(name = "PATH_SCRATCH")]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Filled in by the daemon from the running kernel's BTF before load. Read
/// it through [`kernel_offsets`] or [`offset!`](crate::offset), never
/// directly: the compiler would fold in the zeros.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    file_f_path: 0,
    file_f_mode: 0,
    task_pid: 0,
    task_tgid: 0,
    task_signal: 0,
    signal_live: 0,
    binprm_file: 0,
    file_f_inode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
    inode_i_nlink: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    task_real_parent: 0,
    inode_i_mode: 0,
    vma_vm_file: 0,
    dentry_d_inode: 0,
    dentry_d_flags: 0,
    resolved: 0,
};

/// Reads the offsets through a volatile load so the compiler cannot fold the
/// zero placeholder in; the verifier then sees the loaded constant.
#[inline(always)]
pub fn kernel_offsets() -> KernelOffsets {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// One field of [`KERNEL_OFFSETS`], through a volatile load of that field
/// alone: cheaper than [`kernel_offsets`], which copies all of them, on
/// hooks that run on every open.
#[macro_export]
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading one field of a plain static.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::KERNEL_OFFSETS.$field))
        }
    };
}

/// The policy generation this call must use, read once per call.
#[inline(always)]
pub fn active_generation() -> u32 {
    match ACTIVE_GENERATION.get(0) {
        Some(generation) => *generation,
        None => 0,
    }
}

/// The calling process's agent, or `None` for processes in no agent.
///
/// Every open and connect on the host asks, so the answer for a process in
/// no agent comes from its byte in [`AGENT_MARKS`], an array load the
/// verifier inlines, instead of a hash lookup (a helper call that hashes
/// the key and walks a bucket).
#[inline(always)]
pub fn current_agent(tgid: u32) -> Option<AgentRecord> {
    if let Some(marks) = AGENT_MARKS.get(tgid / AGENT_MARKS_PER_ENTRY as u32)
        && marks[tgid as usize % AGENT_MARKS_PER_ENTRY] == 0
    {
        return None;
    }
    AGENT_OF_TGID.get_ptr(tgid).map(|record| {
        // SAFETY: the pointer comes from a successful lookup.
        unsafe { *record }
    })
}

/// Admits `tgid` to an agent: its mark first, so that no reader finds the
/// record without the mark.
#[inline(always)]
pub fn admit(tgid: u32, record: AgentRecord) -> Result<(), i64> {
    set_mark(tgid, 1);
    AGENT_OF_TGID.insert(tgid, record, 0).map_err(i64::from)
}

/// Forgets `tgid`: the record first, then the mark.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = AGENT_OF_TGID.remove(tgid);
    set_mark(tgid, 0);
}

/// Stores `tgid`'s byte alone (never the whole entry: other CPUs and the
/// daemon write its neighbours).
#[inline(always)]
fn set_mark(tgid: u32, value: u8) {
    if let Some(marks) = AGENT_MARKS.get_ptr_mut(tgid / AGENT_MARKS_PER_ENTRY as u32) {
        // SAFETY: a pointer from a successful lookup; the index is below
        // the entry's length.
        unsafe {
            core::ptr::write_volatile(
                (marks as *mut u8).add(tgid as usize % AGENT_MARKS_PER_ENTRY),
                value,
            );
        }
    }
}

/// The agent's settings under `generation`.
#[inline(always)]
pub fn agent_policy(generation: u32, agent_id: u32) -> Option<AgentPolicy> {
    let key = AgentPolicyKey {
        generation,
        agent_id,
    };
    AGENT_POLICIES.get_ptr(key).map(|policy| {
        // SAFETY: the pointer comes from a successful lookup.
        unsafe { *policy }
    })
}

/// Applies `update` to the calling CPU's counters of `agent_id`. Per CPU, so
/// no atomics are needed and nothing is lost.
#[inline(always)]
pub fn count(agent_id: u32, update: impl FnOnce(&mut AgentCounters)) {
    match AGENT_COUNTERS.get_ptr_mut(agent_id) {
        Some(counters) => {
            // SAFETY: per-CPU value from a successful lookup; no other writer
            // runs on this CPU while the program does.
            update(unsafe { &mut *counters });
        }
        None => {
            // The first count of an agent on this CPU. The entry starts from
            // a zeroed static, not a zeroed copy on the stack: zeroing one
            // there is a call to `memset`, which the verifier walks byte by
            // byte on every path that counts (enough to take `file_open`
            // past the instruction limit on 6.1).
            #[allow(
                clippy::needless_borrows_for_generic_args,
                reason = "by value, the static would be copied to the stack"
            )]
            let _ = AGENT_COUNTERS.insert(agent_id, &ZERO_COUNTERS, 0);
            if let Some(counters) = AGENT_COUNTERS.get_ptr_mut(agent_id) {
                // SAFETY: as above.
                update(unsafe { &mut *counters });
            }
        }
    }
}

/// The value a new [`AGENT_COUNTERS`] entry starts from.
static ZERO_COUNTERS: AgentCounters = AgentCounters::ZERO;

/// Whether a breaker holds the agent in quarantine.
#[inline(always)]
pub fn quarantined(agent_id: u32) -> bool {
    AGENT_STATE.get_ptr(agent_id).is_some_and(|state| {
        // SAFETY: the pointer comes from a successful lookup.
        unsafe { (*state).quarantined != 0 }
    })
}

/// Whether the agent opened a secret and is held to its narrowed egress.
#[inline(always)]
pub fn tainted(agent_id: u32) -> bool {
    SECRET_TAINTS.get_ptr(agent_id).is_some()
}

/// Per-agent event rate, set by the daemon from its configuration.
#[unsafe(no_mangle)]
static EVENTS_PER_SECOND: u32 = agent_common::identity::DEFAULT_EVENTS_PER_SECOND;

/// The configured per-agent event rate.
#[inline(always)]
pub fn events_per_second() -> u32 {
    // SAFETY: reading a plain static through a volatile load so the
    // daemon's value is used.
    unsafe { core::ptr::read_volatile(&EVENTS_PER_SECOND) }
}

/// Takes one event token for `agent_id`; false means the event is left
/// out (and counted). Decisions are never affected, only their records.
#[inline(always)]
pub fn take_event_token(agent_id: u32) -> bool {
    let per_second = events_per_second();
    if per_second == 0 {
        return true;
    }
    // SAFETY: helper without memory arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let Some(state) = AGENT_STATE.get_ptr_mut(agent_id) else {
        let fresh = AgentRuntime {
            event_tokens: per_second.saturating_sub(1),
            event_refill_ns: now,
            ..AgentRuntime::default()
        };
        return AGENT_STATE.insert(agent_id, fresh, 0).is_ok();
    };
    // SAFETY: the pointer comes from a successful lookup.
    let state = unsafe { &mut *state };
    let elapsed = now.saturating_sub(state.event_refill_ns).min(2_000_000_000);
    let refill = elapsed * per_second as u64 / 1_000_000_000;
    if refill > 0 {
        state.event_tokens = (state.event_tokens as u64 + refill).min(per_second as u64) as u32;
        state.event_refill_ns = now;
    }
    if state.event_tokens == 0 {
        count(agent_id, |c| c.events_suppressed += 1);
        return false;
    }
    state.event_tokens -= 1;
    true
}

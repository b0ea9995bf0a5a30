//! Writing compiled policies into the kernel maps with an atomic generation
//! swap, and the identity map that admission writes.
//!
//! The new generation's entries are written next to the live ones (every key
//! starts with its generation), then one array slot is flipped, then the old
//! entries are deleted. A program reads the generation once per call, so it
//! always sees one complete policy set and never none.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::Path,
    time::Duration,
};

use agent_common::{
    egress::{
        DnsProxyKey, DnsProxyPorts, EGRESS_KEY_HEADER_BITS, EgressKey, EgressValue,
        GRANT_KEY_HEADER_BITS, GRANT_SLOTS, GrantKey, GrantValue, LEARNED_ADDR_ROWS, LEARNED_ROWS,
        LearnedKey, LearnedRow, LearnedValue, OriginalDestination, PORT_TABLES_PER_GENERATION,
        PortRule, PortTable, ipv4_mapped,
    },
    files::{
        FILE_KEY_HEADER_BITS, FileKey, FileValue, InodeMark, ObjectKey, ObjectValue,
        PATH_KEY_BYTES, object_flags,
    },
    identity::{
        AGENT_MARKS_ENTRIES, AGENT_MARKS_PER_ENTRY, AgentCounters, AgentPolicy, AgentPolicyKey,
        AgentRecord, AgentRuntime, ExecutableKey, NARROWED_AGENT_BIT, SecretTaint, policy_flags,
    },
    map_names,
};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, InodeStorage, LpmTrie, MapData, MapError, PerCpuHashMap, lpm_trie::Key,
    },
};

use super::KernelError;
use crate::{
    ids::{AgentId, Generation, RuleId},
    policy::{CompiledPolicySet, spec::Name},
};

fn map_error(map: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// Keys written for one generation, so they can be deleted after the next swap.
#[derive(Default)]
struct WrittenKeys {
    generation: Generation,
    agents: Vec<AgentPolicyKey>,
    egress: Vec<Key<EgressKey>>,
    files: Vec<Key<FileKey>>,
    objects: Vec<ObjectKey>,
}

/// Owns the policy maps.
pub struct PolicyMaps {
    agent_policies: HashMap<MapData, AgentPolicyKey, AgentPolicy>,
    active_generation: Array<MapData, u32>,
    egress_rules: LpmTrie<MapData, EgressKey, EgressValue>,
    port_tables: Array<MapData, PortTable>,
    file_rules: LpmTrie<MapData, FileKey, FileValue>,
    file_objects: HashMap<MapData, ObjectKey, ObjectValue>,
    objects: RuleObjects,
    identity: HashMap<MapData, u32, AgentRecord>,
    /// Agent processes that exited lately (`EXITED_AGENTS`, LRU).
    exited: HashMap<MapData, u32, AgentRecord>,
    marks: AgentMarks,
    selected_cgroups: HashMap<MapData, u64, u32>,
    selected_executables: HashMap<MapData, ExecutableKey, u32>,
    live: Option<WrittenKeys>,
    live_cgroups: BTreeSet<u64>,
    live_executables: BTreeSet<(u64, u32)>,
    /// Which agents and rights the detection programs watch; set before the
    /// first policy is applied, from what the kernel and fanotify provide.
    pub detect_scope: super::detect::DetectScope,
}

/// A selector the daemon could not turn into a kernel entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedSelector {
    /// Agent.
    pub agent: String,
    /// `cgroup` or `executable`.
    pub what: &'static str,
    /// The path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Identity of an executable as the kernel sees it.
pub fn executable_key(path: &Path) -> std::io::Result<ExecutableKey> {
    let metadata = std::fs::metadata(path)?;
    let dev = metadata.dev();
    // The kernel keeps `MKDEV(major, minor)` (major above bit 20); stat(2)
    // reports the user-space encoding of the same number.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Ok(ExecutableKey {
        ino: metadata.ino(),
        dev: (major << 20) | minor,
        _pad: 0,
    })
}

/// The cgroup v2 id of a cgroup directory: its inode number.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Another descriptor on the same kernel map.
fn reopen<K: aya::Pod, V: aya::Pod>(
    map: &impl aya::maps::IterableMap<K, V>,
    name: &'static str,
) -> Result<MapData, KernelError> {
    use std::os::fd::AsFd as _;
    let fd = map.map().fd().as_fd().try_clone_to_owned().map_err(|e| {
        map_error(name)(MapError::from(aya::sys::SyscallError {
            call: "dup",
            io_error: e,
        }))
    })?;
    MapData::from_fd(fd).map_err(map_error(name))
}

/// The daemon's view of the agent marks array (see
/// [`agent_common::identity::AGENT_MARKS_PER_ENTRY`]): a shared mapping of
/// the map's memory, so that the daemon stores one tgid's byte alone, as
/// the programs do. Writing a whole entry through `bpf()` would put back
/// neighbours' bytes a program changed meanwhile, and could erase a mark.
struct AgentMarks {
    /// Keeps the map, and so the mapping's memory, alive.
    _map: Array<MapData, [u8; AGENT_MARKS_PER_ENTRY]>,
    bytes: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this value; stores through
// it are single volatile bytes.
unsafe impl Send for AgentMarks {}
// SAFETY: as above; no reference into the mapping is ever handed out.
unsafe impl Sync for AgentMarks {}

impl AgentMarks {
    fn new(map: Array<MapData, [u8; AGENT_MARKS_PER_ENTRY]>) -> Result<Self, KernelError> {
        use std::os::fd::AsFd as _;

        use aya::maps::IterableMap as _;
        let len = AGENT_MARKS_ENTRIES as usize * AGENT_MARKS_PER_ENTRY;
        let length = std::num::NonZeroUsize::new(len).expect("the marks array is not empty");
        // SAFETY: a new shared mapping of the map's own memory, which the
        // kernel sized when it created the map (asserted by the pin layout
        // check and the program's definition); nothing else maps it here.
        let mapped = unsafe {
            nix::sys::mman::mmap(
                None,
                length,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.map().fd().as_fd(),
                0,
            )
        }
        .map_err(|errno| {
            map_error(map_names::AGENT_MARKS)(MapError::from(aya::sys::SyscallError {
                call: "mmap",
                io_error: std::io::Error::from(errno),
            }))
        })?;
        Ok(Self {
            _map: map,
            bytes: mapped.cast(),
            len,
        })
    }

    /// Marks `tgid` as (possibly) in an agent. A tgid beyond the array has
    /// no entry there, and programs look it up in the hash map.
    fn set(&self, tgid: u32) {
        let at = tgid as usize;
        if at < self.len {
            // SAFETY: inside the mapping, which lives as long as `self`.
            unsafe { self.bytes.as_ptr().add(at).write_volatile(1) };
        }
    }
}

impl Drop for AgentMarks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.bytes.cast(), self.len) };
    }
}

/// Rule objects held at once, host-wide: the capacity of `FILE_OBJECTS`,
/// and the descriptors the daemon holds for them. Rule paths beyond it stay
/// path-only (and a warning says so).
pub const MAX_RULE_OBJECTS: usize = 65_536;

/// How many rule objects the daemon may hold open under a descriptor limit
/// of `nofile`: a quarter of it, so that the control socket's share (at
/// most half), the fanotify and audit reserves and the daemon's own
/// descriptors always fit beside them; and never more than
/// [`MAX_RULE_OBJECTS`].
pub fn rule_object_cap(nofile: u64) -> usize {
    usize::try_from(nofile / 4)
        .unwrap_or(MAX_RULE_OBJECTS)
        .min(MAX_RULE_OBJECTS)
}

/// The soft `RLIMIT_NOFILE` now.
fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// The path of a rule entry's key (`/a/b/` → `/a/b`, `/` → `/`).
fn entry_path(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    match text.strip_suffix('/') {
        Some("") | None => "/".to_string(),
        Some(path) => path.to_string(),
    }
}

/// One rule object: the descriptor that keeps its inode (and so its mark)
/// alive, and the id in its mark.
struct HeldObject {
    id: u64,
    fd: std::os::fd::OwnedFd,
}

/// The inodes of rule paths, marked with ids the programs look up.
///
/// Each object is opened `O_PATH` and held for as long as a live rule
/// names it. Holding it keeps the inode in memory: the mark (inode-local
/// storage) is freed only with the inode, and an evicted inode would come
/// back from disk unmarked (`drop_caches`, then `open_by_handle_at`).
/// Object ids are never reused: the high half is a random epoch drawn at
/// each daemon start (top bit set) and the low half counts up, so a mark a previous
/// daemon left on an inode cannot name an object of this one.
struct RuleObjects {
    marks: InodeStorage<MapData, InodeMark>,
    epoch: u64,
    next: u32,
    held: BTreeMap<(u64, u64), HeldObject>,
    warned_full: bool,
    /// [`rule_object_cap`] of the descriptor limit at start.
    cap: usize,
}

impl RuleObjects {
    fn new(marks: InodeStorage<MapData, InodeMark>) -> Self {
        Self {
            marks,
            // The top bit is always set: the programs read 0 and 1 as "no
            // object" and "no known parents".
            epoch: u64::from(rand::random::<u32>() | 0x8000_0000) << 32,
            next: 0,
            held: BTreeMap::new(),
            warned_full: false,
            cap: rule_object_cap(descriptor_limit()),
        }
    }

    /// The object id of `path`, marking and holding its inode if it is
    /// new; `None` when the path does not exist, goes through a symbolic
    /// link (which an agent could point anywhere before the next load), or
    /// cannot be held.
    fn resolve(&mut self, path: &str) -> Option<u64> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(nix::fcntl::AT_FDCWD, path, how).ok()?;
        let stat = nix::sys::stat::fstat(&fd).ok()?;
        let identity = (stat.st_dev, stat.st_ino);
        if let Some(held) = self.held.get(&identity) {
            return Some(held.id);
        }
        if self.held.len() >= self.cap {
            if !self.warned_full {
                tracing::warn!(
                    limit = self.cap,
                    "rule objects: limit reached (a quarter of the descriptor limit, at most 65,536); further rule paths are matched by path only"
                );
                self.warned_full = true;
            }
            return None;
        }
        self.next = self.next.checked_add(1)?;
        let id = self.epoch | u64::from(self.next);
        if let Err(error) = self.marks.insert(&fd, InodeMark { object: id }, 0) {
            tracing::debug!(path, %error, "rule object: cannot mark the inode; matched by path only");
            return None;
        }
        self.held.insert(identity, HeldObject { id, fd });
        Some(id)
    }

    /// Unmarks and closes every held object no live rule names.
    fn release_unreferenced(&mut self, referenced: &BTreeSet<u64>) {
        let marks = &mut self.marks;
        self.held.retain(|_, held| {
            let keep = referenced.contains(&held.id);
            if !keep {
                let _ = marks.remove(&held.fd);
            }
            keep
        });
        self.warned_full = false;
    }
}

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(map_error(name))
}

impl PolicyMaps {
    /// Takes the policy and identity maps out of the loaded object.
    ///
    /// Maps adopted from a previous daemon already hold a live generation:
    /// it stays in force, and is what the next [`PolicyMaps::apply`]
    /// replaces. Entries of any other generation (a swap the previous daemon
    /// did not finish) are deleted; no program reads them.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let mut maps = Self {
            agent_policies: take(ebpf, map_names::AGENT_POLICIES)?,
            active_generation: take(ebpf, map_names::ACTIVE_GENERATION)?,
            egress_rules: take(ebpf, map_names::EGRESS_RULES)?,
            port_tables: take(ebpf, map_names::EGRESS_PORT_TABLES)?,
            file_rules: take(ebpf, map_names::FILE_RULES)?,
            file_objects: take(ebpf, map_names::FILE_OBJECTS)?,
            objects: RuleObjects::new(take(ebpf, map_names::INODE_MARKS)?),
            identity: take(ebpf, map_names::AGENT_OF_TGID)?,
            exited: take(ebpf, map_names::EXITED_AGENTS)?,
            marks: AgentMarks::new(take(ebpf, map_names::AGENT_MARKS)?)?,
            selected_cgroups: take(ebpf, map_names::SELECTED_CGROUPS)?,
            selected_executables: take(ebpf, map_names::SELECTED_EXECUTABLES)?,
            live: None,
            live_cgroups: BTreeSet::new(),
            live_executables: BTreeSet::new(),
            detect_scope: Default::default(),
        };
        maps.adopt();
        Ok(maps)
    }

    fn adopt(&mut self) {
        let generation = self.active_generation.get(&0, 0).unwrap_or(0);
        let mut live = WrittenKeys {
            generation: Generation::from_raw(generation),
            ..WrittenKeys::default()
        };
        let mut stale = WrittenKeys::default();
        for key in self.agent_policies.keys().filter_map(Result::ok) {
            if key.generation == generation {
                live.agents.push(key);
            } else {
                stale.agents.push(key);
            }
        }
        for key in self.egress_rules.keys().filter_map(Result::ok) {
            if u32::from_be_bytes(key.data().generation) == generation {
                live.egress.push(key);
            } else {
                stale.egress.push(key);
            }
        }
        for key in self.file_rules.keys().filter_map(Result::ok) {
            if u32::from_be_bytes(key.data().generation) == generation {
                live.files.push(key);
            } else {
                stale.files.push(key);
            }
        }
        for key in self.file_objects.keys().filter_map(Result::ok) {
            if key.generation == generation {
                live.objects.push(key);
            } else {
                stale.objects.push(key);
            }
        }
        self.delete(&stale);
        if generation != 0 {
            self.live = Some(live);
        }
        self.live_cgroups = self
            .selected_cgroups
            .keys()
            .filter_map(Result::ok)
            .collect();
        self.live_executables = self
            .selected_executables
            .keys()
            .filter_map(Result::ok)
            .map(|key| (key.ino, key.dev))
            .collect();
    }

    /// The generation in force, 0 before the first policy set (an adopted
    /// one counts).
    pub fn active_generation(&self) -> Generation {
        self.live
            .as_ref()
            .map_or(Generation::NONE, |l| l.generation)
    }

    /// Writes `set` as the next generation and makes it live. On error the
    /// previous generation stays in force and the partial new one is removed.
    pub fn apply(
        &mut self,
        set: &CompiledPolicySet,
        agent_ids: &BTreeMap<Name, AgentId>,
    ) -> Result<Generation, KernelError> {
        let generation = self.active_generation().next();
        let mut written = WrittenKeys {
            generation,
            ..WrittenKeys::default()
        };
        if let Err(error) = self.write_generation(set, agent_ids, &mut written) {
            self.delete(&written);
            return Err(error);
        }
        self.active_generation
            .set(0, generation.raw(), 0)
            .map_err(map_error(map_names::ACTIVE_GENERATION))?;
        if let Some(old) = self.live.replace(written) {
            self.delete(&old);
        }
        if let Some(live) = &self.live {
            let referenced: BTreeSet<u64> = live.objects.iter().map(|key| key.object).collect();
            self.objects.release_unreferenced(&referenced);
        }
        Ok(generation)
    }

    fn write_generation(
        &mut self,
        set: &CompiledPolicySet,
        agent_ids: &BTreeMap<Name, AgentId>,
        written: &mut WrittenKeys,
    ) -> Result<(), KernelError> {
        let generation = written.generation;
        let mut next_table = generation.slot() * PORT_TABLES_PER_GENERATION;
        let table_end = next_table + PORT_TABLES_PER_GENERATION;
        for (name, agent) in &set.agents {
            let Some(&agent_id) = agent_ids.get(name) else {
                continue;
            };
            let key = AgentPolicyKey {
                generation: generation.raw(),
                agent_id: agent_id.raw(),
            };
            let value = AgentPolicy {
                mode: agent.mode,
                egress_default: agent.egress_default,
                file_default: agent.file_default,
                exec_default: agent.exec_default,
                flags: if agent.allow_icmp {
                    policy_flags::ALLOW_ICMP
                } else {
                    0
                } | if agent.domains.is_empty() {
                    0
                } else {
                    policy_flags::DNS_PROXY
                } | if agent.allow_anonymous_exec {
                    policy_flags::ALLOW_ANONYMOUS_EXEC
                } else {
                    0
                } | if agent.allow_namespaces {
                    policy_flags::ALLOW_NAMESPACES
                } else {
                    0
                } | self.detect_scope.flags(agent),
                egress_default_rule: agent.egress_default_rule.raw(),
                file_default_rule: agent.file_default_rule.raw(),
                exec_default_rule: agent.exec_default_rule.raw(),
                connects_per_second: agent.connects_per_second,
                families: agent.families,
            };
            self.agent_policies
                .insert(key, value, 0)
                .map_err(map_error(map_names::AGENT_POLICIES))?;
            written.agents.push(key);

            // A tainted agent's narrowed rules sit beside its own, under
            // its id with the narrowed bit.
            let narrowed_id = agent_id.raw() | NARROWED_AGENT_BIT;
            for (rules_id, entry) in agent
                .egress
                .iter()
                .map(|entry| (agent_id.raw(), entry))
                .chain(agent.after_secret.iter().map(|entry| (narrowed_id, entry)))
            {
                if next_table >= table_end {
                    return Err(KernelError::Map {
                        map: map_names::EGRESS_PORT_TABLES,
                        source: MapError::OutOfBounds {
                            index: next_table,
                            max_entries: table_end,
                        },
                    });
                }
                let mut table = PortTable {
                    len: entry.rows.len() as u32,
                    ..PortTable::default()
                };
                table.rows[..entry.rows.len()].copy_from_slice(&entry.rows);
                self.port_tables
                    .set(next_table, table, 0)
                    .map_err(map_error(map_names::EGRESS_PORT_TABLES))?;
                let key = Key::new(
                    EGRESS_KEY_HEADER_BITS + entry.prefix_len,
                    EgressKey {
                        generation: generation.raw().to_be_bytes(),
                        agent_id: rules_id.to_be_bytes(),
                        addr: entry.addr,
                    },
                );
                self.egress_rules
                    .insert(
                        &key,
                        EgressValue {
                            port_table: next_table,
                        },
                        0,
                    )
                    .map_err(map_error(map_names::EGRESS_RULES))?;
                written.egress.push(key);
                next_table += 1;
            }

            self.write_objects(generation, agent_id, &agent.files, written)?;
            for entry in &agent.files {
                let mut data = FileKey {
                    generation: generation.raw().to_be_bytes(),
                    agent_id: agent_id.raw().to_be_bytes(),
                    path: [0; PATH_KEY_BYTES],
                };
                let len = entry.key.len().min(PATH_KEY_BYTES);
                data.path[..len].copy_from_slice(&entry.key[..len]);
                let key = Key::new(FILE_KEY_HEADER_BITS + 8 * len as u32, data);
                self.file_rules
                    .insert(&key, entry.value, 0)
                    .map_err(map_error(map_names::FILE_RULES))?;
                written.files.push(key);
            }
        }
        Ok(())
    }

    /// Points the cgroup and executable selectors at their agents. Entries
    /// for selectors that went away are removed after the new ones are in.
    /// Selectors that cannot be resolved now (a cgroup or file that does not
    /// exist yet) are returned so the caller can say so.
    pub fn apply_selectors(
        &mut self,
        set: &CompiledPolicySet,
        agent_ids: &BTreeMap<Name, AgentId>,
        cgroup_root: &Path,
    ) -> Result<Vec<UnresolvedSelector>, KernelError> {
        let mut unresolved = Vec::new();
        let mut cgroups = BTreeSet::new();
        let mut executables = BTreeSet::new();
        for (name, agent) in &set.agents {
            let Some(&agent_id) = agent_ids.get(name) else {
                continue;
            };
            for path in &agent.cgroups {
                let dir = cgroup_root.join(path.trim_start_matches('/'));
                match cgroup_id(&dir) {
                    Ok(id) => {
                        self.selected_cgroups
                            .insert(id, agent_id.raw(), 0)
                            .map_err(map_error(map_names::SELECTED_CGROUPS))?;
                        cgroups.insert(id);
                    }
                    Err(error) => unresolved.push(UnresolvedSelector {
                        agent: name.to_string(),
                        what: "cgroup",
                        path: dir.display().to_string(),
                        reason: error.to_string(),
                    }),
                }
            }
            for path in &agent.executables {
                match executable_key(Path::new(path)) {
                    Ok(key) => {
                        self.selected_executables
                            .insert(key, agent_id.raw(), 0)
                            .map_err(map_error(map_names::SELECTED_EXECUTABLES))?;
                        executables.insert((key.ino, key.dev));
                    }
                    Err(error) => unresolved.push(UnresolvedSelector {
                        agent: name.to_string(),
                        what: "executable",
                        path: path.clone(),
                        reason: error.to_string(),
                    }),
                }
            }
        }
        for stale in self.live_cgroups.difference(&cgroups) {
            let _ = self.selected_cgroups.remove(stale);
        }
        for (ino, dev) in self.live_executables.difference(&executables) {
            let _ = self.selected_executables.remove(&ExecutableKey {
                ino: *ino,
                dev: *dev,
                _pad: 0,
            });
        }
        self.live_cgroups = cgroups;
        self.live_executables = executables;
        Ok(unresolved)
    }

    fn delete(&mut self, keys: &WrittenKeys) {
        for key in &keys.agents {
            let _ = self.agent_policies.remove(key);
        }
        for key in &keys.egress {
            let _ = self.egress_rules.remove(key);
        }
        for key in &keys.files {
            let _ = self.file_rules.remove(key);
        }
        for key in &keys.objects {
            let _ = self.file_objects.remove(key);
        }
    }

    /// Writes the rule objects of one agent: every rule entry whose path
    /// exists now becomes an object the programs find by walking up from
    /// the accessed file. An object is [`object_flags::COMPLETE`] when no
    /// entry of the agent that stays path-only (a path that does not exist,
    /// or that goes through a symbolic link) lies at or under it.
    fn write_objects(
        &mut self,
        generation: Generation,
        agent_id: AgentId,
        entries: &[crate::policy::compile::FileEntry],
        written: &mut WrittenKeys,
    ) -> Result<(), KernelError> {
        let mut resolved = Vec::with_capacity(entries.len());
        let mut covers_path_only: std::collections::HashSet<String> = Default::default();
        for entry in entries {
            let path = entry_path(&entry.key);
            match self.objects.resolve(&path) {
                Some(object) => resolved.push((path, object, entry.value)),
                None => covers_path_only.extend(
                    crate::policy::spec::AbsolutePath(path)
                        .ancestors()
                        .map(str::to_string),
                ),
            }
        }
        // Two rule paths may be one object (a bind mount seen twice): the
        // longer path is the more specific rule, and the object is complete
        // only if both are.
        let mut by_object: BTreeMap<u64, (usize, ObjectValue)> = BTreeMap::new();
        for (path, object, value) in resolved {
            let complete = !covers_path_only.contains(&path);
            let candidate = ObjectValue {
                value,
                flags: if complete { object_flags::COMPLETE } else { 0 },
                _pad: 0,
            };
            by_object
                .entry(object)
                .and_modify(|(len, held)| {
                    let flags = held.flags & candidate.flags;
                    if path.len() > *len {
                        *len = path.len();
                        *held = candidate;
                    }
                    held.flags = flags;
                })
                .or_insert((path.len(), candidate));
        }
        for (object, (_, value)) in by_object {
            let key = ObjectKey {
                generation: generation.raw(),
                agent_id: agent_id.raw(),
                object,
            };
            self.file_objects
                .insert(key, value, 0)
                .map_err(map_error(map_names::FILE_OBJECTS))?;
            written.objects.push(key);
        }
        Ok(())
    }

    /// Makes process `tgid` (and, through fork tracking, its future
    /// children) a member of `agent_id`.
    pub fn admit(&mut self, tgid: u32, record: AgentRecord) -> Result<(), KernelError> {
        // The mark first: a program that finds no mark never looks for the
        // record.
        self.marks.set(tgid);
        self.identity
            .insert(tgid, record, 0)
            .map_err(map_error(map_names::AGENT_OF_TGID))
    }

    /// Admits `tgid` only if it is alive once admitted, and returns
    /// whether it was. A pid read from a socket peer or `cgroup.procs` may
    /// belong to a process that exits before the record is written; its
    /// exit, finding no record yet, would leave one behind for a stranger
    /// that reuses the pid. So the process is pinned with a pidfd first,
    /// and after the write a process already exiting (its exit may have
    /// run before the record existed) has its record taken back.
    /// `in_cgroup`, when given, is a check that the pidfd's process is the
    /// one that was selected (a pid reused between the read and the pidfd
    /// would name another).
    pub fn admit_live(
        &mut self,
        tgid: u32,
        record: AgentRecord,
        in_cgroup: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<bool, KernelError> {
        let Some(pidfd) = pidfd_open(tgid) else {
            return Ok(false);
        };
        if in_cgroup.is_some_and(|check| !check(tgid)) {
            return Ok(false);
        }
        self.admit(tgid, record)?;
        // The stat read first, then the pidfd: a pidfd that has not
        // signalled exit proves the stat was this process's.
        let exiting = process_exiting(tgid) || pidfd_exited(&pidfd);
        if exiting {
            if self.agent_of(tgid).is_some_and(|now| {
                now.agent_id == record.agent_id && now.root_tgid == record.root_tgid
            }) {
                self.forget(tgid);
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// The agent record of `tgid`, if it belongs to one.
    pub fn agent_of(&self, tgid: u32) -> Option<AgentRecord> {
        self.identity.get(&tgid, 0).ok()
    }

    /// A second handle on the identity map, for a reader on another thread.
    pub fn identity_handle(&self) -> Result<MapData, KernelError> {
        reopen(&self.identity, map_names::AGENT_OF_TGID)
    }

    /// A second handle on the kernel's record of agent processes that
    /// exited lately, for reports that arrive after their process is gone.
    pub fn exited_handle(&self) -> Result<MapData, KernelError> {
        reopen(&self.exited, map_names::EXITED_AGENTS)
    }

    /// Every process of an agent, from the kernel's identity record: forked,
    /// double-forked and re-parented ones included.
    pub fn members(&self, agent_id: AgentId) -> Vec<u32> {
        members_of(&self.identity, agent_id)
    }

    /// Entries and capacity of the policy and identity maps, for metrics.
    /// Capacities are the ones the programs declare.
    ///
    /// Only the daemon writes the policy maps, so their entries are the
    /// keys it wrote for the live generation (the previous one is gone
    /// after each swap); counting them in the kernel would take a system
    /// call per entry, every second, 10,000 rules or not. The identity map,
    /// which the programs write, is counted (one entry per agent process).
    pub fn usage(&self) -> Vec<(&'static str, u64, u64)> {
        let live = |keys: fn(&WrittenKeys) -> usize| self.live.as_ref().map_or(0, keys) as u64;
        vec![
            (
                map_names::AGENT_OF_TGID,
                self.identity.keys().count() as u64,
                65_536,
            ),
            (
                map_names::EGRESS_RULES,
                live(|keys| keys.egress.len()),
                65_536,
            ),
            (map_names::FILE_RULES, live(|keys| keys.files.len()), 65_536),
            (
                map_names::FILE_OBJECTS,
                live(|keys| keys.objects.len()),
                MAX_RULE_OBJECTS as u64,
            ),
            (
                map_names::AGENT_POLICIES,
                live(|keys| keys.agents.len()),
                4096,
            ),
        ]
    }

    /// Forgets a process that no longer exists (its exit was not seen, for
    /// instance because it died while the daemon was starting).
    pub fn forget(&mut self, tgid: u32) {
        let _ = self.identity.remove(&tgid);
    }
}

/// `PF_EXITING` in `/proc/PID/stat`'s flags: set before the exit
/// tracepoint runs.
const PF_EXITING: u64 = 0x4;

/// A pidfd for `tgid`, or `None` when no such process exists.
fn pidfd_open(tgid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open(2) takes no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    // SAFETY: a new descriptor the kernel just returned.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has exited (a zombie or gone).
fn pidfd_exited(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready != 0
}

/// Whether `tgid`'s leader is exiting or gone: no stat, a zombie or dead
/// state, or `PF_EXITING`. A process whose leader exited while other
/// threads run counts as exiting: it is refused rather than half-tracked.
fn process_exiting(tgid: u32) -> bool {
    let Some(stat) = i32::try_from(tgid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
    else {
        return true;
    };
    matches!(stat.state, 'Z' | 'X' | 'x') || u64::from(stat.flags) & PF_EXITING != 0
}

/// The maps the DNS proxy writes: where each agent's DNS goes, and the
/// addresses it learned.
pub struct DnsMaps {
    learned: HashMap<MapData, LearnedKey, LearnedValue>,
    proxy_ports: HashMap<MapData, DnsProxyKey, DnsProxyPorts>,
    /// An LRU hash in the kernel; aya reads it through its `HashMap`.
    original: HashMap<MapData, u64, OriginalDestination>,
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock the programs compare
/// expiry times with.
pub fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl DnsMaps {
    /// Takes the DNS maps out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            learned: take(ebpf, map_names::LEARNED_ADDRS)?,
            proxy_ports: take(ebpf, map_names::DNS_PROXY_PORTS)?,
            original: take(ebpf, map_names::DNS_ORIGINAL)?,
        })
    }

    /// Sends `agent_id`'s DNS traffic in network namespace `netns_cookie`
    /// to these proxy ports.
    pub fn set_proxy(
        &mut self,
        agent_id: AgentId,
        netns_cookie: u64,
        ports: DnsProxyPorts,
    ) -> Result<(), KernelError> {
        let key = DnsProxyKey {
            agent_id: agent_id.raw(),
            _pad: 0,
            netns_cookie,
        };
        self.proxy_ports
            .insert(key, ports, 0)
            .map_err(map_error(map_names::DNS_PROXY_PORTS))
    }

    /// The process that last sent DNS through the socket with this cookie
    /// (recorded by the redirect), if the kernel still has it.
    pub fn sender(&self, socket_cookie: u64) -> Option<u32> {
        self.original
            .get(&socket_cookie, 0)
            .ok()
            .map(|original| original.tgid)
            .filter(|&tgid| tgid != 0)
    }

    /// Forgets every proxy (a previous daemon's, whose sockets are gone).
    pub fn clear_proxies(&mut self) {
        let keys: Vec<DnsProxyKey> = self.proxy_ports.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.proxy_ports.remove(&key);
        }
    }

    /// Stops redirecting `agent_id`'s DNS traffic in that namespace.
    pub fn remove_proxy(&mut self, agent_id: AgentId, netns_cookie: u64) {
        let _ = self.proxy_ports.remove(&DnsProxyKey {
            agent_id: agent_id.raw(),
            _pad: 0,
            netns_cookie,
        });
    }

    /// Allows `addr` to `agent_id` on `rows` (the ports of domain rule
    /// `rule_id`) for `ttl`. The (address, rule) pair is extended, never
    /// shortened; other rules' pairs on the same address keep their own
    /// rows and expiry. When they leave no room, nothing changes and
    /// [`Learned::Full`] says so.
    pub fn learn(
        &mut self,
        agent_id: AgentId,
        addr: IpAddr,
        ttl: Duration,
        rule_id: RuleId,
        rows: &[PortRule],
    ) -> Result<Learned, KernelError> {
        let key = LearnedKey {
            agent_id: agent_id.raw(),
            _pad: 0,
            addr: match addr {
                IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(v6.octets(), |v4| ipv4_mapped(v4.octets())),
            },
        };
        let now = boot_time_ns();
        let expires = now.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let existing = self.learned.get(&key, 0).ok();
        let Some(value) = merge_learned(existing.as_ref(), now, expires, rule_id.raw(), rows)
        else {
            return Ok(Learned::Full);
        };
        // The same answer again (from the proxy's cache, or another name
        // of the same rule with no later expiry) changes nothing: one
        // system call per address instead of two on the query's path.
        if existing.as_ref() == Some(&value) {
            return Ok(Learned::Allowed);
        }
        self.learned
            .insert(key, value, 0)
            .map_err(map_error(map_names::LEARNED_ADDRS))?;
        Ok(Learned::Allowed)
    }

    /// Deletes entries whose every row expired (the kernel already ignores
    /// them; this frees the space). Returns how many were removed.
    pub fn sweep_expired(&mut self) -> usize {
        let now = boot_time_ns();
        let expired: Vec<LearnedKey> = self
            .learned
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, value)| {
                value
                    .rows
                    .iter()
                    .take(value.len as usize)
                    .all(|row| row.expires_boot_ns <= now)
            })
            .map(|(key, _)| key)
            .collect();
        for key in &expired {
            let _ = self.learned.remove(key);
        }
        expired.len()
    }
}

/// What [`DnsMaps::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// The (address, rule) pair is allowed until its expiry.
    Allowed,
    /// The address already holds [`LEARNED_ADDR_ROWS`] unexpired rows of
    /// other rules; nothing was changed, so none of them closed early.
    Full,
}

/// `existing` with rule `rule_id`'s rows set to `rows`, expiring at
/// `expires` or at the pair's current expiry if that is later, and with the
/// rows that expired before `now` dropped. `None` when the rows of the other
/// rules still in force leave no room.
pub fn merge_learned(
    existing: Option<&LearnedValue>,
    now: u64,
    expires: u64,
    rule_id: u32,
    rows: &[PortRule],
) -> Option<LearnedValue> {
    let mut expires = expires;
    let mut merged: Vec<LearnedRow> = Vec::with_capacity(LEARNED_ADDR_ROWS);
    if let Some(existing) = existing {
        let len = (existing.len as usize).min(LEARNED_ADDR_ROWS);
        for row in &existing.rows[..len] {
            if row.expires_boot_ns <= now {
                continue;
            }
            if row.rule_id == rule_id {
                // The same rule through another name: one pair, the
                // longer expiry. Its rows are written again from `rows`
                // (a reload may have changed them).
                expires = expires.max(row.expires_boot_ns);
                continue;
            }
            merged.push(*row);
        }
    }
    let rows = &rows[..rows.len().min(LEARNED_ROWS)];
    if merged.len() + rows.len() > LEARNED_ADDR_ROWS {
        return None;
    }
    merged.extend(rows.iter().map(|row| LearnedRow {
        expires_boot_ns: expires,
        port_lo: row.port_lo,
        port_hi: row.port_hi,
        protocols: row.protocols,
        _pad: [0; 3],
        rule_id,
        _pad2: 0,
    }));
    let mut value = LearnedValue {
        len: merged.len() as u32,
        ..LearnedValue::default()
    };
    value.rows[..merged.len()].copy_from_slice(&merged);
    Some(value)
}

/// The processes (tgids) of agent `agent_id` in the identity map.
pub fn members_of(identity: &HashMap<MapData, u32, AgentRecord>, agent_id: AgentId) -> Vec<u32> {
    identity
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, record)| record.agent_id == agent_id.raw())
        .map(|(tgid, _)| tgid)
        .collect()
}

/// Run-time agent state and counters: quarantine, secrets' taints, and what
/// the breakers read.
pub struct RuntimeMaps {
    state: HashMap<MapData, u32, AgentRuntime>,
    counters: PerCpuHashMap<MapData, u32, AgentCounters>,
    taints: HashMap<MapData, u32, SecretTaint>,
}

impl RuntimeMaps {
    /// Takes the maps out of the loaded object, and tells the programs the
    /// daemon's own process id (self-protection needs it).
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let mut daemon: Array<MapData, u32> = take(ebpf, map_names::DAEMON_TGID)?;
        daemon
            .set(0, std::process::id(), 0)
            .map_err(map_error(map_names::DAEMON_TGID))?;
        Ok(Self {
            state: take(ebpf, map_names::AGENT_STATE)?,
            counters: take(ebpf, map_names::AGENT_COUNTERS)?,
            taints: take(ebpf, map_names::SECRET_TAINTS)?,
        })
    }

    /// A second handle on the taint map, for the fanotify listener, which
    /// taints agents itself where BPF LSM is missing.
    pub fn taints_handle(&self) -> Result<MapData, KernelError> {
        reopen(&self.taints, map_names::SECRET_TAINTS)
    }

    /// Every tainted agent and the open that tainted it.
    pub fn taints(&self) -> BTreeMap<AgentId, SecretTaint> {
        self.taints
            .iter()
            .filter_map(Result::ok)
            .map(|(agent_id, taint)| (AgentId::from_raw(agent_id), taint))
            .collect()
    }

    /// Whether a process of the agent opened one of its secrets.
    pub fn tainted(&self, agent_id: AgentId) -> bool {
        self.taints.get(&agent_id.raw(), 0).is_ok()
    }

    /// Lifts an agent's taint (`baton taint clear`); false if it had none.
    pub fn clear_taint(&mut self, agent_id: AgentId) -> Result<bool, KernelError> {
        match self.taints.remove(&agent_id.raw()) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(error) => Err(map_error(map_names::SECRET_TAINTS)(error)),
        }
    }

    /// A second handle on the agent state map (quarantine), for a reader
    /// on another thread.
    pub fn state_handle(&self) -> Result<MapData, KernelError> {
        reopen(&self.state, map_names::AGENT_STATE)
    }

    /// Puts an agent in quarantine, or lets it out.
    pub fn set_quarantine(&mut self, agent_id: AgentId, on: bool) -> Result<(), KernelError> {
        let mut state = self.state.get(&agent_id.raw(), 0).unwrap_or_default();
        state.quarantined = u32::from(on);
        self.state
            .insert(agent_id.raw(), state, 0)
            .map_err(map_error(map_names::AGENT_STATE))
    }

    /// Whether the agent is quarantined in the kernel.
    pub fn quarantined(&self, agent_id: AgentId) -> bool {
        self.state
            .get(&agent_id.raw(), 0)
            .is_ok_and(|state| state.quarantined != 0)
    }

    /// The agent's counters, summed over CPUs.
    pub fn counters(&self, agent_id: AgentId) -> AgentCounters {
        let Ok(per_cpu) = self.counters.get(&agent_id.raw(), 0) else {
            return AgentCounters::default();
        };
        per_cpu.iter().fold(AgentCounters::default(), |mut sum, c| {
            sum.connects += c.connects;
            sum.denied_connects += c.denied_connects;
            sum.distinct_denied_destinations += c.distinct_denied_destinations;
            sum.rate_limited += c.rate_limited;
            sum.denied_files += c.denied_files;
            sum.file_writes += c.file_writes;
            sum.execs += c.execs;
            sum.canary_hits += c.canary_hits;
            sum.denied_sockets += c.denied_sockets;
            sum.events_dropped += c.events_dropped;
            sum.events_suppressed += c.events_suppressed;
            sum.netns_requests_dropped += c.netns_requests_dropped;
            sum.dropped_packets += c.dropped_packets;
            sum.denied_sockopts += c.denied_sockopts;
            sum
        })
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{egress::protocol, verdict::decision};

    use super::*;

    fn port(rule_id: u32, port: u16) -> PortRule {
        PortRule {
            port_lo: port,
            port_hi: port,
            protocols: protocol::TCP,
            decision: decision::ALLOW,
            _pad: [0; 2],
            rule_id,
        }
    }

    fn rules(value: &LearnedValue) -> Vec<(u32, u16, u64)> {
        value.rows[..value.len as usize]
            .iter()
            .map(|row| (row.rule_id, row.port_lo, row.expires_boot_ns))
            .collect()
    }

    #[test]
    fn rule_objects_take_a_quarter_of_the_descriptor_limit_at_most() {
        assert_eq!(rule_object_cap(1024), 256);
        assert_eq!(rule_object_cap(65_536), 16_384);
        assert_eq!(rule_object_cap(1 << 20), MAX_RULE_OBJECTS);
        assert_eq!(rule_object_cap(0), 0);
    }

    #[test]
    fn every_rule_keeps_its_rows_and_expiry() {
        let mut value = None;
        for rule in 1..=5u32 {
            let expires = 1_000 * u64::from(rule);
            value = merge_learned(
                value.as_ref(),
                0,
                expires,
                rule,
                &[port(rule, 8000 + rule as u16)],
            );
        }
        let value = value.unwrap();
        assert_eq!(
            rules(&value),
            [
                (1, 8001, 1_000),
                (2, 8002, 2_000),
                (3, 8003, 3_000),
                (4, 8004, 4_000),
                (5, 8005, 5_000)
            ]
        );
        // The same rule again (another name): one pair, the later expiry.
        let again = merge_learned(Some(&value), 0, 500, 3, &[port(3, 8003)]).unwrap();
        assert_eq!(rules(&again).len(), 5);
        assert!(rules(&again).contains(&(3, 8003, 3_000)));
        // Expired pairs make room and are dropped.
        let later = merge_learned(Some(&value), 2_500, 9_000, 6, &[port(6, 8006)]).unwrap();
        assert_eq!(
            rules(&later),
            [
                (3, 8003, 3_000),
                (4, 8004, 4_000),
                (5, 8005, 5_000),
                (6, 8006, 9_000)
            ]
        );
    }

    #[test]
    fn a_full_address_refuses_the_new_pair_and_keeps_the_old() {
        let mut value = None;
        for rule in 1..=LEARNED_ADDR_ROWS as u32 {
            value = merge_learned(value.as_ref(), 0, 1_000, rule, &[port(rule, rule as u16)]);
        }
        let value = value.unwrap();
        assert_eq!(value.len as usize, LEARNED_ADDR_ROWS);
        assert_eq!(
            merge_learned(Some(&value), 0, 1_000, 99, &[port(99, 99)]),
            None
        );
        // A rule already there still renews.
        assert!(merge_learned(Some(&value), 0, 2_000, 1, &[port(1, 1)]).is_some());
        // Once a pair expired, the new one fits.
        assert!(merge_learned(Some(&value), 1_000, 2_000, 99, &[port(99, 99)]).is_some());
    }
}

/// Operators' grants in the kernel: the trie the address hooks and the
/// backstop consult after the rules, and each grant's connect count.
pub struct GrantMaps {
    grants: LpmTrie<MapData, GrantKey, GrantValue>,
    connects: Array<MapData, u32>,
}

/// Where one grant sits in the trie: its agent, port and address prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantPlace {
    /// The agent granted.
    pub agent_id: AgentId,
    /// Destination port.
    pub port: u16,
    /// Address prefix (IPv4 is stored IPv4-mapped).
    pub addr: IpAddr,
    /// Prefix length in the address's own family.
    pub prefix_len: u8,
}

impl GrantPlace {
    fn key(&self) -> Key<GrantKey> {
        let (addr, prefix) = match self.addr {
            IpAddr::V4(v4) => (ipv4_mapped(v4.octets()), 96 + u32::from(self.prefix_len)),
            IpAddr::V6(v6) => (v6.octets(), u32::from(self.prefix_len)),
        };
        Key::new(
            GRANT_KEY_HEADER_BITS + prefix,
            GrantKey {
                agent_id: self.agent_id.raw().to_be_bytes(),
                port: self.port.to_be_bytes(),
                addr,
                _pad: [0; 2],
            },
        )
    }
}

impl GrantMaps {
    /// Takes the grant maps out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            grants: take(ebpf, map_names::EGRESS_GRANTS)?,
            connects: take(ebpf, map_names::GRANT_CONNECTS)?,
        })
    }

    /// Puts a grant in force: its connect count starts at zero before the
    /// trie entry that refers to it appears.
    pub fn insert(&mut self, place: &GrantPlace, value: GrantValue) -> Result<(), KernelError> {
        if value.slot >= GRANT_SLOTS {
            return Err(KernelError::Map {
                map: map_names::GRANT_CONNECTS,
                source: MapError::OutOfBounds {
                    index: value.slot,
                    max_entries: GRANT_SLOTS,
                },
            });
        }
        self.connects
            .set(value.slot, 0, 0)
            .map_err(map_error(map_names::GRANT_CONNECTS))?;
        self.grants
            .insert(&place.key(), value, 0)
            .map_err(map_error(map_names::EGRESS_GRANTS))
    }

    /// Sets the connect count of `slot` to zero, for a grant whose entries
    /// come later (a grant of a name, as answers for it arrive).
    pub fn reset_connects(&mut self, slot: u32) -> Result<(), KernelError> {
        self.connects
            .set(slot, 0, 0)
            .map_err(map_error(map_names::GRANT_CONNECTS))
    }

    /// Puts back a grant a previous daemon wrote, keeping its connect
    /// count; also each further entry of a grant already counting.
    pub fn restore(&mut self, place: &GrantPlace, value: GrantValue) -> Result<(), KernelError> {
        self.grants
            .insert(&place.key(), value, 0)
            .map_err(map_error(map_names::EGRESS_GRANTS))
    }

    /// Takes a grant out of force; a grant already gone is no error.
    pub fn remove(&mut self, place: &GrantPlace) -> Result<(), KernelError> {
        match self.grants.remove(&place.key()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(KernelError::Map {
                map: map_names::EGRESS_GRANTS,
                source,
            }),
        }
    }

    /// Connects the grant in `slot` has allowed (attempts beyond the budget
    /// count too, so this may exceed it).
    pub fn connects(&self, slot: u32) -> u32 {
        self.connects.get(&slot, 0).unwrap_or(0)
    }

    /// Removes every trie entry whose place `keep` does not list: grants a
    /// previous daemon left that are no longer on record.
    pub fn retain(&mut self, keep: &[GrantPlace]) -> usize {
        let keep: Vec<Key<GrantKey>> = keep.iter().map(GrantPlace::key).collect();
        let stale: Vec<Key<GrantKey>> = self
            .grants
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                !keep
                    .iter()
                    .any(|k| k.prefix_len() == key.prefix_len() && k.data() == key.data())
            })
            .collect();
        stale
            .iter()
            .filter(|key| self.grants.remove(key).is_ok())
            .count()
    }
}

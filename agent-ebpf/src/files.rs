//! File and exec decisions with BPF LSM (5.7).
//!
//! Hook choice:
//! - `file_open` runs for every open after the path walk, on the `struct
//!   file` actually being opened, so symlinks, `..`, relative and `openat`
//!   paths and `/proc/self/fd` re-opens all arrive resolved.
//! - `bprm_check_security` runs for every binary the kernel is about to
//!   execute (the script and then its interpreter, for `#!`), whatever the
//!   path was: `fexecve`, `/proc/self/fd/N` and `execveat` included.
//! - `mmap_file` with `PROT_EXEC` is how the dynamic loader runs a program
//!   (`ld.so /usr/bin/nc`) without exec'ing it, so it needs the exec right.
//! - the `path_*` hooks see creation, removal, rename, link, truncate,
//!   chmod and chown with the parent directory's `struct path`.
//! - `file_truncate` (6.2) sees truncation through an open file: from 6.2
//!   `open(O_RDONLY | O_TRUNC)` and `ftruncate` truncate through it, not
//!   through `path_truncate`, so a file opened for reading could be
//!   emptied. It needs the write right.
//! - `file_mprotect` with `PROT_EXEC` is `mmap(PROT_READ)` then
//!   `mprotect(PROT_EXEC)`, which `mmap_file` never sees executable: the
//!   exec right, as for `mmap_file`.
//! - `file_receive` runs when a descriptor arrives (`SCM_RIGHTS`,
//!   `pidfd_getfd`): a regular file or directory received open for reading
//!   or writing needs the rights an open of it would need, so a process
//!   outside the agent cannot open a denied file on its behalf. Sockets,
//!   pipes and other files with no path pass; `O_PATH` descriptors pass,
//!   as every open through them is decided.
//!
//! Matching: rules are matched by **object** first. The daemon marks the
//! inode of every rule path that exists (inode-local storage, 5.10), and
//! each decision walks from the accessed dentry up its parents to the root
//! of its file system, looking for the nearest marked ancestor. That walk
//! never looks at mounts, names, the caller's root or its namespaces, so a
//! bind mount, a `chroot`, `/proc/<pid>/root`, a file handle or a renamed
//! parent reaches the same object and the same verdict. The path is still
//! built where an object cannot answer: no marked ancestor (a file on a
//! file system no rule path is on), or rules on paths that did not exist
//! at load under the object found. `bpf_d_path` is allowed on
//! `file_open`, `bprm_check_security` and `mmap_file` on every kernel with
//! BPF LSM; on the other hooks it is only allowed from about 6.8, so there
//! the path is built by walking the dentry and mount chain with offsets
//! from BTF, in a `bpf_loop` (5.17) of one component per step. A path that
//! cannot be resolved is denied to an agent in enforce mode.

use core::ffi::c_void;

use agent_common::{
    event::{EVENT_PATH_BYTES, FileEvent, file_flags, hook, kind},
    files::{
        FILE_KEY_HEADER_BITS, FileValue, ObjectKey, PATH_KEY_BYTES, SECRET_SLOT, object_flags,
        right,
    },
    identity::{AgentPolicy, AgentRecord, SecretTaint, policy_flags},
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, inode, path},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
        generated::{bpf_d_path, bpf_loop, bpf_probe_read_kernel},
    },
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        EVENTS, FILE_OBJECTS, FILE_RULES, INODE_MARKS, PATH_BUF_BYTES, PATH_SCRATCH, PathScratch,
        PendingRecord, active_generation, agent_policy, count, current_agent, quarantined,
        take_event_token,
    },
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const PROT_EXEC: u64 = 0x4;
/// `DCACHE_DISCONNECTED` (`BIT(5)` in every kernel with BPF LSM): a dentry
/// made for a file handle (`open_by_handle_at`, NFS export) whose parents
/// are not known, so no walk can find the objects above it.
const DCACHE_DISCONNECTED: u32 = 1 << 5;

/// Where walked paths end in the scratch buffer; they are built backwards
/// from here, so every start offset is below it and `start + PATH_KEY_BYTES`
/// and `start + EVENT_PATH_BYTES` stay inside the buffer.
pub(crate) const WALK_END: usize = PATH_BUF_BYTES / 2;
/// Mask that keeps a start offset below [`WALK_END`] for the verifier.
pub(crate) const START_MASK: usize = WALK_END - 1;

/// A resolved path in the per-CPU scratch buffer: `buf[start..start + len]`,
/// followed by a `/` at `buf[start + len]`.
#[derive(Clone, Copy)]
pub(crate) struct ResolvedPath {
    pub(crate) start: usize,
    /// Length; 0 when the path could not be resolved.
    pub(crate) len: usize,
    pub(crate) flags: u32,
}

impl ResolvedPath {
    pub(crate) const UNRESOLVED: Self = Self {
        start: 0,
        len: 0,
        flags: file_flags::PATH_UNRESOLVED,
    };
}

/// The rights an open file's `f_mode` asks for: read, write, both or (for
/// `O_PATH` and the like) none.
#[inline(always)]
pub(crate) fn open_rights(f_mode: u32) -> u32 {
    let mut rights = 0;
    if f_mode & FMODE_READ != 0 {
        rights |= right::bit(right::READ);
    }
    if f_mode & FMODE_WRITE != 0 {
        rights |= right::bit(right::WRITE);
    }
    rights
}

/// Everything a decision needs about the calling agent. Kernel offsets are
/// not copied in: they are read where used, from the load-time constant,
/// which keeps this small on the 512-byte stack.
pub(crate) struct Caller {
    pub(crate) agent: AgentRecord,
    pub(crate) policy: CallerPolicy,
    pub(crate) generation: u32,
}

/// The calling process's agent and policy, or `None` for processes in no
/// agent.
#[inline(always)]
pub(crate) fn caller() -> Option<Caller> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let agent = current_agent(tgid)?;
    Some(Caller::new(agent, active_generation()))
}

impl Caller {
    /// `agent`'s caller under `generation`, with its policy.
    #[inline(always)]
    fn new(agent: AgentRecord, generation: u32) -> Self {
        Self {
            agent,
            policy: policy_or_closed(generation, agent.agent_id),
            generation,
        }
    }
}

/// The settings of [`AgentPolicy`] that file and exec decisions read. Only
/// these are copied: the detection programs run close to the 512-byte stack
/// limit, and the egress-only fields would only take room there.
#[derive(Clone, Copy)]
pub(crate) struct CallerPolicy {
    pub(crate) mode: u8,
    pub(crate) file_default: u8,
    pub(crate) exec_default: u8,
    pub(crate) flags: u32,
    pub(crate) file_default_rule: u32,
    pub(crate) exec_default_rule: u32,
}

/// The agent's settings under `generation`. An agent whose policy is gone
/// gets an enforce-mode, deny-all policy: it is held closed rather than let
/// loose.
#[inline(always)]
fn policy_or_closed(generation: u32, agent_id: u32) -> CallerPolicy {
    match agent_policy(generation, agent_id) {
        Some(AgentPolicy {
            mode,
            file_default,
            exec_default,
            flags,
            file_default_rule,
            exec_default_rule,
            ..
        }) => CallerPolicy {
            mode,
            file_default,
            exec_default,
            flags,
            file_default_rule,
            exec_default_rule,
        },
        None => CallerPolicy {
            mode: mode::ENFORCE,
            file_default: decision::DENY,
            exec_default: decision::DENY,
            flags: 0,
            file_default_rule: 0,
            exec_default_rule: 0,
        },
    }
}

#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut PathScratch> {
    let scratch = PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch from a successful lookup; nothing else uses it
    // while this program runs on this CPU.
    Some(unsafe { &mut *scratch })
}

/// Reads a kernel value at `base + offset`; `None` if the read faults.
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: the helper faults safely on a bad address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.add(offset as usize) as *const T).ok() }
}

/// Loads the pointer at `base + offset` with a plain load, not a probe
/// read: `base` must be a BTF-typed pointer (a hook argument or a pointer
/// loaded this way), so the verifier checks the offset against the type
/// from BTF, types the result, and turns the load into a fault-safe one.
/// Only BTF-typed pointers may be passed to `bpf_d_path` and
/// `bpf_inode_storage_get`.
#[inline(always)]
fn load_btf_ptr(base: *const u8, offset: u32) -> *const u8 {
    // SAFETY: see above; the offset comes from this kernel's BTF.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const *const u8) }
}

/// The dentry of an open file (`file->f_path.dentry`), BTF-typed.
#[inline(always)]
fn file_dentry(file: *const u8) -> *const u8 {
    load_btf_ptr(
        file,
        crate::offset!(file_f_path) + crate::offset!(path_dentry),
    )
}

/// The dentry of a `struct path`, BTF-typed.
#[inline(always)]
fn path_dentry(path: *const u8) -> *const u8 {
    load_btf_ptr(path, crate::offset!(path_dentry))
}

// ---------------------------------------------------------------- objects

/// Directory levels the object walk climbs. Deeper files are still
/// decided, by path, when no object is found within this many levels.
const MAX_OBJECT_DEPTH: u32 = 64;

/// What the walk from a dentry up to its file system's root found.
#[derive(Clone, Copy)]
enum Objects {
    /// The nearest rule object of this agent above (or at) the dentry.
    Found(&'static agent_common::files::ObjectValue),
    /// No rule object of this agent within reach.
    None,
    /// A dentry whose parents the kernel does not know (made for a file
    /// handle): what is above it cannot be checked.
    Disconnected,
}

/// [`nearest_object`]'s answer for a dentry with no known parents. Object
/// ids always have their top bit set, so no id is this.
const DISCONNECTED_OBJECT: u64 = 1;

/// Walks from `dentry` (BTF-typed) up its parents to the root of its file
/// system and returns the nearest marked object with decisions for this
/// agent. Unmarked inodes, the common case, cost one storage lookup that
/// finds nothing. The walk follows `d_parent` only, never mounts: an
/// object is the same object whichever mount, root or name it is reached
/// through.
#[inline(always)]
fn find_object(generation: u32, agent_id: u32, dentry: *const u8) -> Objects {
    if dentry.is_null() || crate::offset!(resolved) == 0 {
        return Objects::None;
    }
    match nearest_object(generation, agent_id, dentry) {
        0 => Objects::None,
        DISCONNECTED_OBJECT => Objects::Disconnected,
        object => {
            let key = ObjectKey {
                generation,
                agent_id,
                object,
            };
            // SAFETY: the daemon writes a generation's entries before it is
            // made live and never changes them in place.
            match unsafe { FILE_OBJECTS.get(key) } {
                Some(value) => Objects::Found(value),
                None => Objects::None,
            }
        }
    }
}

/// The id of the nearest object above `dentry` that has rules for the
/// agent, 0 for none, or [`DISCONNECTED_OBJECT`].
///
/// A BPF subprogram of its own, returning a number: the verifier then
/// checks the caller's decision code once, not once for every level the
/// loop could have stopped at (inlined, that took `file_open` past the
/// million-instruction limit on 6.1).
#[inline(never)]
fn nearest_object(generation: u32, agent_id: u32, dentry: *const u8) -> u64 {
    let d_inode = crate::offset!(dentry_d_inode);
    let d_parent = crate::offset!(dentry_d_parent);
    let mut key = ObjectKey {
        generation,
        agent_id,
        object: 0,
    };
    let mut current = dentry;
    for _ in 0..MAX_OBJECT_DEPTH {
        let inode = load_btf_ptr(current, d_inode);
        if !inode.is_null() {
            // SAFETY: `inode` is a BTF-typed `struct inode` pointer; the
            // helper only looks its storage up (no create flag).
            let mark = unsafe { INODE_MARKS.get_ptr_mut(inode as *mut inode) };
            if !mark.is_null() {
                // SAFETY: a value from a successful storage lookup.
                key.object = unsafe { (*mark).object };
                // SAFETY: only whether the entry exists is read.
                if unsafe { FILE_OBJECTS.get(key) }.is_some() {
                    return key.object;
                }
            }
        }
        let parent = load_btf_ptr(current, d_parent);
        if parent.is_null() || parent == current {
            let d_flags = crate::offset!(dentry_d_flags) as usize;
            // SAFETY: a load from a BTF-typed dentry, as above.
            let flags = unsafe { core::ptr::read_volatile(current.add(d_flags) as *const u32) };
            if flags & DCACHE_DISCONNECTED != 0 {
                return DISCONNECTED_OBJECT;
            }
            return 0;
        }
        current = parent;
    }
    0
}

/// How the path of an access is built, when the decision needs it.
#[derive(Clone, Copy)]
enum PathSource {
    /// `bpf_d_path` on a BTF-typed `struct file` (only on the hooks that
    /// allow the helper).
    DPath(*const u8),
    /// A walk from `dentry` on mount `mnt` (a `vfsmount`), then `/leaf`
    /// when `leaf` is not null. Null `mnt` or `dentry`: unresolved.
    Walk(*const u8, *const u8, *const u8),
    /// No path can be built (a hook that sees a dentry but no mount): the
    /// object decides, else the agent's default.
    Nameless,
}

#[inline(always)]
fn resolve(scratch: &mut PathScratch, source: PathSource) -> ResolvedPath {
    match source {
        PathSource::DPath(file) => file_path(scratch, file),
        PathSource::Walk(mnt, dentry, leaf) => walk(scratch, mnt, dentry, leaf),
        PathSource::Nameless => ResolvedPath::UNRESOLVED,
    }
}

// ---------------------------------------------------------------- hooks

/// Runs on every open in the system, so a process in no agent costs the
/// identity lookup and nothing else. For an agent, a read that the nearest
/// rule object allows outright, the common case, builds no path and looks
/// up no other map: an allow is the same verdict in every mode, a
/// quarantine holds only changes, and an allowed read counts nothing.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return 0;
    };
    try_file_open(agent, ctx.arg(0)).to_lsm(previous)
}

#[inline(always)]
fn try_file_open(agent: AgentRecord, file: *const u8) -> Verdict {
    let offsets_resolved = crate::offset!(resolved);
    let rights = if offsets_resolved == 0 {
        // Without offsets the path cannot be named either: denied below.
        right::bit(right::READ) | right::bit(right::WRITE)
    } else {
        // A direct load, not a probe read: `file` is the hook's BTF-typed
        // argument.
        let at = crate::offset!(file_f_mode) as usize;
        // SAFETY: the offset of `f_mode` in this kernel's `struct file`,
        // from BTF.
        open_rights(unsafe { core::ptr::read_volatile(file.add(at) as *const u32) })
    };
    if rights == 0 {
        return Verdict::Allowed;
    }
    let generation = active_generation();
    let objects = if offsets_resolved == 0 {
        Objects::None
    } else {
        find_object(generation, agent.agent_id, file_dentry(file))
    };
    if let Objects::Found(found) = objects
        && found.flags & object_flags::COMPLETE != 0
        && rights == right::bit(right::READ)
        && found.value.decisions[right::READ] == decision::ALLOW
        && found.value.decisions[SECRET_SLOT] == decision::NONE
    {
        return Verdict::Allowed;
    }
    let Some(scratch) = scratch() else {
        return Verdict::Denied;
    };
    decide(
        scratch,
        &Caller::new(agent, generation),
        objects,
        PathSource::DPath(file),
        rights,
        hook::FILE_OPEN,
        0,
    )
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    if crate::offset!(resolved) == 0 {
        return Verdict::Denied.to_lsm(previous);
    }
    // A direct load: the verifier then knows the result is the `struct
    // file` of this binprm, which `bpf_d_path` requires.
    let file = load_btf_ptr(bprm, crate::offset!(binprm_file));
    check_exec(&caller, file, PathSource::DPath(file), hook::BPRM_CHECK).to_lsm(previous)
}

#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    // mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    //           unsigned long flags, int ret)
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    // Anonymous executable memory (a JIT) has no file to decide on.
    if file.is_null() || prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    check_exec(&caller, file, PathSource::DPath(file), hook::MMAP_FILE).to_lsm(previous)
}

/// The exec right on `file` (BTF-typed), with files that have no name on
/// disk (memfd, deleted files) denied unless the policy allows them.
#[inline(always)]
fn check_exec(caller: &Caller, file: *const u8, source: PathSource, hook: u16) -> Verdict {
    let Some(scratch) = scratch() else {
        return Verdict::Denied;
    };
    let anonymous = read::<*const u8>(file, crate::offset!(file_f_inode))
        .and_then(|inode| read::<u32>(inode, crate::offset!(inode_i_nlink)))
        .is_none_or(|nlink| nlink == 0);
    if anonymous && caller.policy.flags & policy_flags::ALLOW_ANONYMOUS_EXEC == 0 {
        let mut resolved = resolve(scratch, source);
        resolved.flags |= file_flags::ANONYMOUS;
        let verdict = verdict_for(decision::DENY, caller.policy.mode);
        emit(
            scratch,
            caller,
            &resolved,
            right::bit(right::EXEC),
            right::bit(right::EXEC),
            caller.policy.exec_default_rule,
            verdict,
            hook,
        );
        return verdict;
    }
    let objects = find_object(caller.generation, caller.agent.agent_id, file_dentry(file));
    decide(
        scratch,
        caller,
        objects,
        source,
        right::bit(right::EXEC),
        hook,
        0,
    )
}

/// `path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
/// unsigned int dev)`: creating a file (including `open(O_CREAT)`).
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    entry_hook(&ctx, 4, right::bit(right::CREATE), hook::PATH_MKNOD)
}

/// `path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    entry_hook(&ctx, 3, right::bit(right::CREATE), hook::PATH_MKDIR)
}

/// `path_symlink(const struct path *dir, struct dentry *dentry,
/// const char *old_name)`.
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    entry_hook(&ctx, 3, right::bit(right::CREATE), hook::PATH_SYMLINK)
}

/// `path_unlink(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    entry_hook(&ctx, 2, right::bit(right::DELETE), hook::PATH_UNLINK)
}

/// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    entry_hook(&ctx, 2, right::bit(right::DELETE), hook::PATH_RMDIR)
}

/// `path_truncate(const struct path *path)`.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    whole_path_hook(&ctx, 1, hook::PATH_TRUNCATE)
}

/// `path_chmod(const struct path *path, umode_t mode)`.
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    whole_path_hook(&ctx, 2, hook::PATH_CHMOD)
}

/// `path_chown(const struct path *path, kuid_t uid, kgid_t gid)`: a change
/// of owner, like a change of mode, needs the write right.
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    whole_path_hook(&ctx, 3, hook::PATH_CHOWN)
}

/// `file_truncate(struct file *file)` (6.2).
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let file: *const u8 = ctx.arg(0);
    decide_file(
        scratch,
        &caller,
        file,
        right::bit(right::WRITE),
        hook::FILE_TRUNCATE,
    )
    .to_lsm(previous)
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
/// unsigned long prot)`.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let vma: *const u8 = ctx.arg(0);
    let file = load_btf_ptr(vma, crate::offset!(vma_vm_file));
    // Anonymous memory made executable (a JIT) has no file to decide on.
    if file.is_null() {
        return 0;
    }
    // Only an address computed: the walk reads through the fault-safe
    // helper.
    let source = path_source(
        file.wrapping_add(crate::offset!(file_f_path) as usize),
        core::ptr::null(),
    );
    check_exec(&caller, file, source, hook::FILE_MPROTECT).to_lsm(previous)
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFDIR: u16 = 0o040000;

/// `file_receive(struct file *file)`.
#[lsm(hook = "file_receive")]
pub fn file_receive(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let file: *const u8 = ctx.arg(0);
    let Some(inode) = read::<*const u8>(file, crate::offset!(file_f_inode)) else {
        return Verdict::Denied.to_lsm(previous);
    };
    match read::<u16>(inode, crate::offset!(inode_i_mode)).map(|mode| mode & S_IFMT) {
        Some(S_IFREG) | Some(S_IFDIR) => {}
        Some(_) => return 0,
        None => return Verdict::Denied.to_lsm(previous),
    }
    // A file with no name on disk (memfd, deleted) has no path to protect.
    match read::<u32>(inode, crate::offset!(inode_i_nlink)) {
        Some(0) => return 0,
        Some(_) => {}
        None => return Verdict::Denied.to_lsm(previous),
    }
    let rights = match read::<u32>(file, crate::offset!(file_f_mode)) {
        Some(f_mode) => open_rights(f_mode),
        None => return Verdict::Denied.to_lsm(previous),
    };
    if rights == 0 {
        return 0;
    }
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    decide_file(scratch, &caller, file, rights, hook::FILE_RECEIVE).to_lsm(previous)
}

/// Decides `rights` on an open file (BTF-typed) on a hook where the path,
/// when needed, is walked.
#[inline(always)]
fn decide_file(
    scratch: &mut PathScratch,
    caller: &Caller,
    file: *const u8,
    rights: u32,
    hook: u16,
) -> Verdict {
    let objects = find_object(caller.generation, caller.agent.agent_id, file_dentry(file));
    // Only an address computed: the walk reads through the fault-safe
    // helper.
    let source = path_source(
        file.wrapping_add(crate::offset!(file_f_path) as usize),
        core::ptr::null(),
    );
    decide(scratch, caller, objects, source, rights, hook, 0)
}

/// `inode_setxattr(struct mnt_idmap *idmap, struct dentry *dentry, const
/// char *name, const void *value, size_t size, int flags)` (a `struct
/// user_namespace *` first before 6.3). Extended attributes carry
/// capabilities, ACLs and security labels, so setting one needs the write
/// right. The hook sees no mount, so no path can be named: the nearest
/// rule object decides, else the agent's default for writes.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    xattr_hook(&ctx, 6, hook::INODE_SETXATTR)
}

/// `inode_removexattr(struct mnt_idmap *idmap, struct dentry *dentry,
/// const char *name)`: as [`inode_setxattr`].
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    xattr_hook(&ctx, 3, hook::INODE_REMOVEXATTR)
}

#[inline(always)]
fn xattr_hook(ctx: &LsmContext, ret_arg: usize, hook: u16) -> i32 {
    let previous: i32 = match ret_arg {
        3 => ctx.arg(3),
        _ => ctx.arg(6),
    };
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let dentry: *const u8 = ctx.arg(1);
    let objects = find_object(caller.generation, caller.agent.agent_id, dentry);
    decide(
        scratch,
        &caller,
        objects,
        PathSource::Nameless,
        right::bit(right::WRITE),
        hook,
        0,
    )
    .to_lsm(previous)
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir,
/// struct dentry *new_dentry)`: creating a link needs the create right where
/// it appears, and the read and write rights on what it points to, so a
/// denied file cannot be given a second, allowed name.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let old_dentry: *const u8 = ctx.arg(0);
    let new_dir: *const u8 = ctx.arg(1);
    let new_dentry: *const u8 = ctx.arg(2);
    let created = find_object(caller.generation, caller.agent.agent_id, new_dentry);
    let verdict = decide(
        scratch,
        &caller,
        created,
        path_source(new_dir, new_dentry),
        right::bit(right::CREATE),
        hook::PATH_LINK,
        0,
    );
    if verdict == Verdict::Denied {
        return verdict.to_lsm(previous);
    }
    // Links stay inside one mount, so the target shares the new name's mount.
    let target_source = match read::<*const u8>(new_dir, crate::offset!(path_mnt)) {
        Some(mnt) => PathSource::Walk(mnt, old_dentry, core::ptr::null()),
        None => PathSource::Walk(core::ptr::null(), core::ptr::null(), core::ptr::null()),
    };
    let target = find_object(caller.generation, caller.agent.agent_id, old_dentry);
    let rights = right::bit(right::READ) | right::bit(right::WRITE);
    decide(
        scratch,
        &caller,
        target,
        target_source,
        rights,
        hook::PATH_LINK,
        0,
    )
    .to_lsm(previous)
}

/// `path_rename(const struct path *old_dir, struct dentry *old_dentry,
/// const struct path *new_dir, struct dentry *new_dentry, unsigned int
/// flags)`: both ends need the rename right, so a denied directory cannot
/// be moved to an allowed name, nor an allowed file into a denied one.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let rights = right::bit(right::RENAME);
    let old_dentry: *const u8 = ctx.arg(1);
    let from = find_object(caller.generation, caller.agent.agent_id, old_dentry);
    let verdict = decide(
        scratch,
        &caller,
        from,
        path_source(ctx.arg(0), old_dentry),
        rights,
        hook::PATH_RENAME,
        0,
    );
    if verdict == Verdict::Denied {
        return verdict.to_lsm(previous);
    }
    let new_dentry: *const u8 = ctx.arg(3);
    let to = find_object(caller.generation, caller.agent.agent_id, new_dentry);
    decide(
        scratch,
        &caller,
        to,
        path_source(ctx.arg(2), new_dentry),
        rights,
        hook::PATH_RENAME,
        0,
    )
    .to_lsm(previous)
}

/// Hooks whose first two arguments are a directory and an entry in it.
/// The object walk starts at the entry: an existing one (unlink, rename)
/// is itself checked, a new one (create) has no inode yet and the walk
/// goes on to its directory.
#[inline(always)]
fn entry_hook(ctx: &LsmContext, ret_arg: usize, rights: u32, hook: u16) -> i32 {
    let previous: i32 = match ret_arg {
        2 => ctx.arg(2),
        3 => ctx.arg(3),
        _ => ctx.arg(4),
    };
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let entry: *const u8 = ctx.arg(1);
    let objects = find_object(caller.generation, caller.agent.agent_id, entry);
    decide(
        scratch,
        &caller,
        objects,
        path_source(ctx.arg(0), entry),
        rights,
        hook,
        0,
    )
    .to_lsm(previous)
}

/// Hooks on a whole `struct path` that change a file's content, mode or
/// owner.
#[inline(always)]
fn whole_path_hook(ctx: &LsmContext, ret_arg: usize, hook: u16) -> i32 {
    let previous: i32 = match ret_arg {
        1 => ctx.arg(1),
        2 => ctx.arg(2),
        _ => ctx.arg(3),
    };
    if previous != 0 {
        return previous;
    }
    let Some(caller) = caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let path: *const u8 = ctx.arg(0);
    let objects = find_object(caller.generation, caller.agent.agent_id, path_dentry(path));
    decide(
        scratch,
        &caller,
        objects,
        path_source(path, core::ptr::null()),
        right::bit(right::WRITE),
        hook,
        0,
    )
    .to_lsm(previous)
}

// ---------------------------------------------------------------- paths

/// The path of an open file, with `bpf_d_path`, at the start of the buffer
/// (where [`lookup_in_place`] finds it).
#[inline(always)]
fn file_path(scratch: &mut PathScratch, file: *const u8) -> ResolvedPath {
    if crate::offset!(resolved) == 0 {
        return ResolvedPath::UNRESOLVED;
    }
    let f_path = crate::offset!(file_f_path) as usize;
    // SAFETY: `file + f_path` is the `struct path` inside a file the hook
    // hands us; the verifier checks the type from BTF.
    let written = unsafe {
        let path_ptr = file.add(f_path) as *mut path;
        bpf_d_path(
            path_ptr,
            scratch.buf.as_mut_ptr().cast(),
            PATH_BUF_BYTES as u32,
        )
    };
    if written <= 1 {
        return ResolvedPath::UNRESOLVED;
    }
    // `bpf_d_path` never writes more than the buffer; the mask says so to
    // the verifier, which cannot know it.
    let len = ((written - 1) as usize) & (PATH_BUF_BYTES - 1);
    if len < PATH_KEY_BYTES {
        // The trailing `/` puts the path on a component boundary.
        scratch.buf[len & (PATH_BUF_BYTES - 1)] = b'/';
    }
    ResolvedPath {
        start: 0,
        len,
        flags: 0,
    }
}

/// Where a `struct path` (any pointer; read through the fault-safe helper)
/// is walked from, then `/leaf` when `leaf` is not null.
#[inline(always)]
fn path_source(path: *const u8, leaf: *const u8) -> PathSource {
    match (
        read::<*const u8>(path, crate::offset!(path_mnt)),
        read::<*const u8>(path, crate::offset!(path_dentry)),
    ) {
        (Some(mnt), Some(dentry)) => PathSource::Walk(mnt, dentry, leaf),
        _ => PathSource::Walk(core::ptr::null(), core::ptr::null(), core::ptr::null()),
    }
}

/// The absolute path of a `struct path`, then `/leaf` when `leaf` is not
/// null.
#[inline(always)]
pub(crate) fn walk_path(
    scratch: &mut PathScratch,
    path: *const u8,
    leaf: *const u8,
) -> ResolvedPath {
    resolve(scratch, path_source(path, leaf))
}

/// Steps the dentry walk may take: path components plus mount crossings.
/// `PATH_MAX` allows at most 2,048 components in a path a program can
/// name, and a file can be created deeper only one relative step at a
/// time; a walk that does not reach the root is unresolved (and denied).
const MAX_WALK_STEPS: u32 = 4096;

/// [`WalkState::flags`].
mod walk_flags {
    pub(super) const DONE: u32 = 1;
    pub(super) const FAILED: u32 = 2;
    /// Only count the bytes the path would take; write nothing.
    pub(super) const COUNT: u32 = 4;
    /// Components were left out at the deep end.
    pub(super) const TRUNCATED: u32 = 8;
}

/// The state of a walk between `bpf_loop` steps.
#[repr(C)]
pub struct WalkState {
    mount: u64,
    vfsmount: u64,
    current: u64,
    /// Where the next name ends in the buffer ([`WALK_END`] at first).
    pos: u32,
    flags: u32,
    /// Bytes counted so far ([`walk_flags::COUNT`]), or bytes of deep
    /// components still to leave out.
    bytes: u32,
    _pad: u32,
}

#[map(name = "WALK_STATE")]
static WALK_STATE: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);

/// Builds the absolute path of `dentry` on mount `mnt` (a `vfsmount`),
/// followed by `/leaf` when `leaf` is not null, ending at [`WALK_END`]: up
/// the dentry chain, across mounts to the root of the mount namespace
/// (not the caller's root: a `chroot` does not change the name).
///
/// A path longer than the buffer keeps its start: the walk is run once
/// more to count its length and then a third time leaving the deepest
/// components out, so that the first `PATH_KEY_BYTES` (all a rule can
/// match on) are always exact. The record then says the path is cut.
#[inline(always)]
fn walk(
    scratch: &mut PathScratch,
    mnt: *const u8,
    dentry: *const u8,
    leaf: *const u8,
) -> ResolvedPath {
    // The walk writes into the same per-CPU scratch buffer.
    let _ = scratch;
    let packed = walk_packed(mnt, dentry, leaf);
    ResolvedPath {
        start: (packed as usize) & START_MASK,
        len: ((packed >> 16) as usize) & 0xfff,
        flags: (packed >> 32) as u32,
    }
}

/// [`walk`] as a BPF subprogram returning its result packed into a number
/// (start in bits 0-15, length in 16-31, flags in 32-63), so that the
/// verifier checks what follows a walk once, not once for every way each
/// of its passes can end.
#[inline(never)]
fn walk_packed(mnt: *const u8, dentry: *const u8, leaf: *const u8) -> u64 {
    let Some(scratch) = scratch() else {
        return u64::from(file_flags::PATH_UNRESOLVED) << 32;
    };
    let resolved = walk_passes(scratch, mnt, dentry, leaf);
    (resolved.start as u64 & 0xffff)
        | ((resolved.len as u64 & 0xffff) << 16)
        | (u64::from(resolved.flags) << 32)
}

#[inline(always)]
fn walk_passes(
    scratch: &mut PathScratch,
    mnt: *const u8,
    dentry: *const u8,
    leaf: *const u8,
) -> ResolvedPath {
    if crate::offset!(resolved) == 0 || mnt.is_null() || dentry.is_null() {
        return ResolvedPath::UNRESOLVED;
    }
    let first = walk_pass(scratch, mnt, dentry, leaf, 0, 0);
    if first.flags & file_flags::PATH_TRUNCATED == 0 {
        return first;
    }
    let counted = walk_pass(scratch, mnt, dentry, leaf, walk_flags::COUNT, 0);
    if counted.flags & file_flags::PATH_UNRESOLVED != 0 {
        return counted;
    }
    // `counted.len` is the whole path's length; leave out enough of the
    // deep end for the rest to fit, with room for one more name.
    let fits = (WALK_END - 256) as u32;
    let skip = (counted.len as u32).saturating_sub(fits);
    walk_pass(scratch, mnt, dentry, leaf, 0, skip)
}

/// One pass of [`walk`]. Without [`walk_flags::COUNT`], a name that does
/// not fit ends the pass with `PATH_TRUNCATED` set and nothing usable.
#[inline(always)]
fn walk_pass(
    scratch: &mut PathScratch,
    mnt: *const u8,
    dentry: *const u8,
    leaf: *const u8,
    mode: u32,
    skip: u32,
) -> ResolvedPath {
    let Some(state) = WALK_STATE.get_ptr_mut(0) else {
        return ResolvedPath::UNRESOLVED;
    };
    // SAFETY: per-CPU value from a successful lookup.
    let state = unsafe { &mut *state };
    scratch.buf[WALK_END] = b'/';
    state.pos = WALK_END as u32;
    state.flags = mode;
    state.bytes = skip;
    if !leaf.is_null() {
        if !put_name(state, scratch, leaf) {
            return ResolvedPath::UNRESOLVED;
        }
        if state.flags & walk_flags::FAILED != 0 {
            return overflowed(state);
        }
    }
    state.vfsmount = mnt as u64;
    // A `vfsmount` always lives inside a `struct mount`.
    state.mount = (mnt as u64).wrapping_sub(u64::from(crate::offset!(mount_mnt)));
    state.current = dentry as u64;
    // SAFETY: `walk_step` is a BPF subprogram with the callback signature;
    // it takes no context (its state is the per-CPU `WALK_STATE`).
    let looped = unsafe {
        bpf_loop(
            MAX_WALK_STEPS,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if looped < 0 || state.flags & walk_flags::DONE == 0 {
        return ResolvedPath::UNRESOLVED;
    }
    if state.flags & walk_flags::FAILED != 0 {
        return overflowed(state);
    }
    let truncated = if state.flags & walk_flags::TRUNCATED != 0 {
        file_flags::PATH_TRUNCATED
    } else {
        0
    };
    if mode & walk_flags::COUNT != 0 {
        return ResolvedPath {
            start: 0,
            len: state.bytes as usize,
            flags: 0,
        };
    }
    let pos = state.pos as usize;
    if pos >= WALK_END {
        // The root itself.
        scratch.buf[WALK_END - 1] = b'/';
        return ResolvedPath {
            start: WALK_END - 1,
            len: 1,
            flags: truncated,
        };
    }
    ResolvedPath {
        start: pos & START_MASK,
        len: WALK_END - pos,
        flags: truncated,
    }
}

/// The result of a pass whose path did not fit, or failed.
#[inline(always)]
fn overflowed(state: &WalkState) -> ResolvedPath {
    if state.flags & walk_flags::TRUNCATED != 0 {
        ResolvedPath {
            start: 0,
            len: 0,
            flags: file_flags::PATH_TRUNCATED | file_flags::PATH_UNRESOLVED,
        }
    } else {
        ResolvedPath::UNRESOLVED
    }
}

/// Puts `/name` of `dentry` in front of the path so far: counts it, leaves
/// it out (the deep end of a path too long for the buffer), or writes it.
/// Returns `false` when the name cannot be read. A name that does not fit
/// sets [`walk_flags::FAILED`] and [`walk_flags::TRUNCATED`].
#[inline(always)]
fn put_name(state: &mut WalkState, scratch: &mut PathScratch, dentry: *const u8) -> bool {
    let name_at = crate::offset!(dentry_d_name);
    let Some(len) = read::<u32>(dentry, name_at + crate::offset!(qstr_len)) else {
        return false;
    };
    if len == 0 || len > 255 {
        return false;
    }
    if state.flags & walk_flags::COUNT != 0 {
        state.bytes = state.bytes.saturating_add(len + 1);
        return true;
    }
    if state.bytes > 0 {
        state.bytes = state.bytes.saturating_sub(len + 1);
        state.flags |= walk_flags::TRUNCATED;
        return true;
    }
    let Some(name) = read::<*const u8>(dentry, name_at + crate::offset!(qstr_name)) else {
        return false;
    };
    let pos = state.pos as usize;
    let len = len as usize;
    if pos < len + 1 {
        state.flags |= walk_flags::FAILED | walk_flags::TRUNCATED;
        return true;
    }
    let start = (pos - len) & START_MASK;
    // Read back through a volatile load so the compiler keeps the mask:
    // it knows `len` is at most 255 from the check above, but the 6.1
    // verifier does not, and refuses an unbounded size.
    // SAFETY: a load from a local.
    let size = unsafe { core::ptr::read_volatile(&len) } & 255;
    // SAFETY: `start + size` is at most `WALK_END + 255`, inside the
    // buffer.
    let copied = unsafe {
        bpf_probe_read_kernel(
            scratch.buf.as_mut_ptr().add(start).cast(),
            size as u32,
            name.cast(),
        )
    };
    if copied != 0 {
        return false;
    }
    let slash = (start - 1) & START_MASK;
    scratch.buf[slash] = b'/';
    state.pos = slash as u32;
    true
}

/// One step of the walk: a path component, or a mount crossing. Returns 1
/// to stop the loop.
extern "C" fn walk_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(state) = WALK_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value from a successful lookup.
    let state = unsafe { &mut *state };
    let Some(scratch) = scratch() else {
        state.flags |= walk_flags::FAILED;
        return 1;
    };
    let current = state.current as *const u8;
    let mount = state.mount as *const u8;
    let Some(mnt_root) = read::<*const u8>(
        state.vfsmount as *const u8,
        crate::offset!(vfsmount_mnt_root),
    ) else {
        return 1;
    };
    if current == mnt_root {
        let Some(parent_mount) = read::<*const u8>(mount, crate::offset!(mount_mnt_parent)) else {
            return 1;
        };
        if parent_mount == mount {
            state.flags |= walk_flags::DONE;
            return 1;
        }
        let Some(mountpoint) = read::<*const u8>(mount, crate::offset!(mount_mnt_mountpoint))
        else {
            return 1;
        };
        state.current = mountpoint as u64;
        state.mount = parent_mount as u64;
        state.vfsmount = (parent_mount as u64).wrapping_add(u64::from(crate::offset!(mount_mnt)));
        return 0;
    }
    let Some(parent) = read::<*const u8>(current, crate::offset!(dentry_d_parent)) else {
        return 1;
    };
    if parent == current {
        state.flags |= walk_flags::DONE;
        return 1;
    }
    if !put_name(state, scratch, current) {
        return 1;
    }
    if state.flags & walk_flags::FAILED != 0 {
        // Done as far as this pass goes: [`walk`] counts and retries.
        state.flags |= walk_flags::DONE;
        return 1;
    }
    state.current = parent as u64;
    0
}

// ---------------------------------------------------------------- decisions

/// Decides `rights` on an access: by the nearest rule object when it is
/// the whole answer, else together with the rules on the access's path.
/// Records anything but an allow.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide(
    scratch: &mut PathScratch,
    caller: &Caller,
    objects: Objects,
    source: PathSource,
    rights: u32,
    hook: u16,
    flags: u32,
) -> Verdict {
    let nameless = matches!(source, PathSource::Nameless);
    let (object, by_path) = match objects {
        Objects::Found(found) => (
            Some(&found.value),
            !nameless && found.flags & object_flags::COMPLETE == 0,
        ),
        Objects::None => (None, !nameless),
        Objects::Disconnected => (None, false),
    };
    let mut flags = flags;
    if object.is_some() {
        flags |= file_flags::BY_OBJECT;
    }
    // Without the path, the object (or a dentry with no known parents) is
    // the whole answer, and an allow needs no path at all.
    let early = if by_path {
        None
    } else {
        let matched = if let Objects::Disconnected = objects {
            flags |= file_flags::DISCONNECTED;
            klog!(
                FILES,
                debug,
                "file hook {}: agent {} reached a disconnected dentry, denied",
                hook,
                caller.agent.agent_id
            );
            (decision::DENY, 0, rights)
        } else {
            combine(caller, object, None, rights)
        };
        let verdict = settle(caller, matched, rights);
        if verdict == Verdict::Allowed {
            return verdict;
        }
        Some((matched, verdict))
    };
    // One place builds the path, to decide on it or to name it in the
    // record: each call of the walk is checked by the verifier on its own.
    let mut resolved = resolve(scratch, source);
    let (matched, verdict) = match early {
        Some(done) => done,
        None => {
            let matched = if resolved.len == 0 {
                // A path we cannot name is a path we cannot allow.
                klog!(
                    FILES,
                    warn,
                    "file hook {}: agent {} path not resolved, denied",
                    hook,
                    caller.agent.agent_id
                );
                (decision::DENY, 0, rights)
            } else {
                let by_path = lookup(scratch, caller, &resolved);
                combine(caller, object, by_path, rights)
            };
            (matched, settle(caller, matched, rights))
        }
    };
    if verdict == Verdict::Allowed {
        return verdict;
    }
    resolved.flags |= flags;
    let (rule_decision, rule_id, denied) = matched;
    if rule_decision == decision::CANARY {
        resolved.flags |= file_flags::CANARY;
    }
    let denied = if rule_decision == decision::ALLOW {
        // Held by a quarantine.
        rights
    } else {
        denied
    };
    emit(
        scratch, caller, &resolved, rights, denied, rule_id, verdict, hook,
    );
    verdict
}

/// The verdict for a matched decision, with quarantine and counters.
#[inline(always)]
fn settle(caller: &Caller, matched: (u8, u32, u32), rights: u32) -> Verdict {
    let (rule_decision, _, _) = matched;
    let agent_mode = caller.policy.mode;
    let changes = rights & !right::bit(right::READ) != 0;
    let held = changes && (agent_mode == mode::QUARANTINE || quarantined(caller.agent.agent_id));
    let verdict = if held {
        // A breaker's quarantine overrides audit mode.
        Verdict::Denied
    } else {
        verdict_for(rule_decision, agent_mode)
    };
    let canary = rule_decision == decision::CANARY;
    count(caller.agent.agent_id, |c| {
        if verdict != Verdict::Allowed {
            c.denied_files += 1;
        }
        if changes {
            c.file_writes += 1;
        }
        if canary {
            c.canary_hits += 1;
        }
    });
    verdict
}

/// The most specific path rule entry for a resolved path.
#[inline(always)]
fn lookup(
    scratch: &mut PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
) -> Option<&'static FileValue> {
    if resolved.start == 0 {
        // `bpf_d_path` wrote it where the key's path bytes are.
        return lookup_in_place(
            scratch,
            caller.generation,
            caller.agent.agent_id,
            resolved.len,
        );
    }
    scratch.key.data.generation = caller.generation.to_be_bytes();
    scratch.key.data.agent_id = caller.agent.agent_id.to_be_bytes();
    let key_bytes = if resolved.len < PATH_KEY_BYTES {
        resolved.len + 1
    } else {
        PATH_KEY_BYTES
    };
    // SAFETY: the start is below `WALK_END`, so `PATH_KEY_BYTES` bytes from
    // it are inside the buffer.
    unsafe {
        bpf_probe_read_kernel(
            scratch.key.data.path.as_mut_ptr().cast(),
            PATH_KEY_BYTES as u32,
            scratch.buf.as_ptr().add(resolved.start & START_MASK).cast(),
        );
    }
    scratch.key.prefix_len = FILE_KEY_HEADER_BITS + (key_bytes as u32) * 8;
    FILE_RULES.get(&scratch.key)
}

/// The most specific rule entry for a path `bpf_d_path` wrote at the start
/// of the buffer, which is where the key's path bytes are: only the key's
/// header is written.
#[inline(always)]
fn lookup_in_place(
    scratch: &mut PathScratch,
    generation: u32,
    agent_id: u32,
    len: usize,
) -> Option<&'static FileValue> {
    let key_bytes = if len < PATH_KEY_BYTES {
        len + 1
    } else {
        PATH_KEY_BYTES
    };
    scratch.prefix_len = FILE_KEY_HEADER_BITS + (key_bytes as u32) * 8;
    scratch.generation = generation.to_be_bytes();
    scratch.agent_id = agent_id.to_be_bytes();
    FILE_RULES.get(scratch.in_place_key())
}

/// Looks the path up on component boundaries and combines the decisions of
/// every requested right: any denied right denies the call.
#[inline(always)]
pub(crate) fn match_rules(
    scratch: &mut PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
    rights: u32,
) -> (u8, u32, u32) {
    let value = lookup(scratch, caller, resolved);
    combine(caller, None, value, rights)
}

/// Combines, per requested right, the nearest rule object's decision and
/// the path rule's: a deny (or canary) from either wins; else an allow from
/// either; the agent's default when neither has a rule for the right.
/// Returns the decision, the rule to cite and the denied rights.
#[inline(always)]
fn combine(
    caller: &Caller,
    object: Option<&FileValue>,
    by_path: Option<&FileValue>,
    rights: u32,
) -> (u8, u32, u32) {
    let ids = (u64::from(caller.generation) << 32) | u64::from(caller.agent.agent_id);
    let packed = combine_packed(&caller.policy, object, by_path, rights, ids);
    (
        packed as u8,
        (packed >> 32) as u32,
        ((packed >> 8) as u32) & right::ALL,
    )
}

/// [`combine`], as a BPF subprogram that returns its answer packed into a
/// number (decision in bits 0-7, denied rights in 8-15, rule id in 32-63).
/// Each right can end several ways, and inlined, the verifier followed
/// every combination of them through everything after (the decision, the
/// counters, the record): on 6.1 that took `file_open` past the
/// million-instruction limit. Returned as one unknown number, the code
/// after it is checked once.
///
/// A read of a secret that is let through taints the agent here, before
/// the open returns, so no connect of any of its processes can come
/// between the read and the narrowing. `ids` is the generation (high 32
/// bits) and the agent id (low 32 bits): a subprogram takes five
/// arguments at most.
#[inline(never)]
fn combine_packed(
    policy: &CallerPolicy,
    object: Option<&FileValue>,
    by_path: Option<&FileValue>,
    rights: u32,
    ids: u64,
) -> u64 {
    let mut denied = 0u32;
    let mut deny_rule = 0u32;
    let mut allow_rule = 0u32;
    let mut canary = false;
    const _: () = assert!(right::COUNT == 6, "the unrolled scan lists every right");
    unroll!(r in [0, 1, 2, 3, 4, 5] {
        if rights & right::bit(r) != 0 {
            let (from_object, object_rule) = match object {
                Some(value) => (value.decisions[r], value.rule_ids[r]),
                None => (decision::NONE, 0),
            };
            let (from_path, path_rule) = match by_path {
                Some(value) => (value.decisions[r], value.rule_ids[r]),
                None => (decision::NONE, 0),
            };
            let refuses = |d: u8| d == decision::DENY || d == decision::CANARY;
            let (mut found, mut rule_id) = if from_object == decision::CANARY
                || (refuses(from_object) && from_path != decision::CANARY)
            {
                (from_object, object_rule)
            } else if refuses(from_path) || from_object == decision::NONE {
                (from_path, path_rule)
            } else {
                (from_object, object_rule)
            };
            if found == decision::NONE {
                if r == right::EXEC {
                    found = policy.exec_default;
                    rule_id = policy.exec_default_rule;
                } else {
                    found = policy.file_default;
                    rule_id = policy.file_default_rule;
                }
            }
            if found == decision::DENY || found == decision::CANARY {
                denied |= right::bit(r);
                if deny_rule == 0 || found == decision::CANARY {
                    deny_rule = rule_id;
                }
                if found == decision::CANARY {
                    canary = true;
                }
            } else if allow_rule == 0 {
                allow_rule = rule_id;
            }
        }
    });
    // A read of a secret taints; so does a rename of one (or of a file
    // into a secret directory): moved out of a secret directory, the file
    // would be read under a name no secret covers. (A hard link checks the
    // linked file for reading, so it taints too.)
    let touching = rights & (right::bit(right::READ) | right::bit(right::RENAME));
    // In audit mode a denied access goes through, and so does the secret.
    if touching != 0 && (denied & touching == 0 || policy.mode == mode::AUDIT) {
        let secret_of = |value: Option<&FileValue>| match value {
            Some(value) if value.decisions[SECRET_SLOT] == decision::ALLOW => {
                value.rule_ids[SECRET_SLOT]
            }
            _ => 0,
        };
        let mut secret = secret_of(object);
        if secret == 0 {
            secret = secret_of(by_path);
        }
        if secret != 0 && !taint(ids, secret) {
            // The narrowing could not be put in force: the secret stays
            // closed rather than readable with egress wide open.
            denied |= touching;
            if deny_rule == 0 {
                deny_rule = secret;
            }
        }
    }
    let (decided, rule) = if canary {
        (decision::CANARY, deny_rule)
    } else if denied != 0 {
        (decision::DENY, deny_rule)
    } else {
        (decision::ALLOW, allow_rule)
    };
    u64::from(decided) | (u64::from(denied & right::ALL) << 8) | (u64::from(rule) << 32)
}

/// Marks the agent in `ids` as having opened secret `rule_id`, unless an
/// earlier open did. False if the mark could not be written.
#[inline(always)]
fn taint(ids: u64, rule_id: u32) -> bool {
    let agent_id = ids as u32;
    if crate::maps::tainted(agent_id) {
        return true;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let taint = SecretTaint {
        rule_id,
        generation: (ids >> 32) as u32,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        // SAFETY: helper without memory arguments.
        at_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // Another CPU may have tainted the agent since the check: that is the
    // one `EEXIST` means, and the agent is tainted either way.
    const EEXIST: i32 = 17;
    match crate::maps::SECRET_TAINTS.insert(agent_id, taint, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(error) => error == -EEXIST,
    }
}

/// Records a decision on `resolved`. The record's fields go through the
/// per-CPU scratch space and are read back with volatile loads: to the
/// verifier they are then unknown numbers, so every path that ends in a
/// record (each combination of flags, rights and verdict is a distinct
/// path to it) reaches the same state and the record code is checked once,
/// not once per combination. Inlined with constants, that alone took
/// `file_open` past the instruction limit on 6.1.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    scratch: &mut PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
    rights: u32,
    denied_rights: u32,
    rule_id: u32,
    verdict: Verdict,
    hook: u16,
) {
    scratch.pending = PendingRecord {
        rights,
        denied_rights,
        rule_id,
        verdict: verdict as u32,
        hook: u32::from(hook),
        flags: resolved.flags,
        start: resolved.start as u32,
        len: resolved.len as u32,
    };
    emit_pending(scratch, caller);
}

/// Writes the record [`emit`] left in the scratch space.
#[inline(always)]
fn emit_pending(scratch: &PathScratch, caller: &Caller) {
    // SAFETY: a volatile copy of a plain per-CPU value.
    let pending = unsafe { core::ptr::read_volatile(&scratch.pending) };
    let Some(verdict) = Verdict::from_u8(pending.verdict as u8) else {
        return;
    };
    if !take_event_token(caller.agent.agent_id) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        count_drop(caller.agent.agent_id);
        return;
    };
    // SAFETY: the reservation is exactly one `FileEvent`; `fill_event`
    // writes every field before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    let resolved = ResolvedPath {
        start: pending.start as usize & START_MASK,
        len: pending.len as usize & (PATH_BUF_BYTES - 1),
        flags: pending.flags,
    };
    fill_event(
        event,
        scratch,
        caller,
        &resolved,
        pending.rights,
        pending.denied_rights,
        pending.rule_id,
        verdict,
        pending.hook as u16,
    );
    entry.submit(0);
}

/// Writes every field of a file event: the header, the rights and the
/// resolved path. Shared by the LSM programs (into the ring buffer) and the
/// detection programs (into a map, until the syscall's result is known).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_event(
    event: &mut FileEvent,
    scratch: &PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
    rights: u32,
    denied_rights: u32,
    rule_id: u32,
    verdict: Verdict,
    hook: u16,
) {
    fill_header(
        &mut event.header,
        kind::FILE,
        core::mem::size_of::<FileEvent>(),
        &caller.agent,
        &Decision {
            hook,
            verdict,
            mode: caller.policy.mode,
            rule_id,
            generation: caller.generation,
        },
    );
    event.rights = rights;
    event.denied_rights = denied_rights;
    let mut flags = resolved.flags;
    let mut len = resolved.len;
    if len > EVENT_PATH_BYTES {
        flags |= file_flags::PATH_TRUNCATED;
        len = EVENT_PATH_BYTES;
    }
    event.flags = flags;
    event.path_len = len as u32;
    // SAFETY: the start is below `WALK_END`, so `EVENT_PATH_BYTES` bytes from
    // it are inside the buffer.
    unsafe {
        bpf_probe_read_kernel(
            event.path.as_mut_ptr().cast(),
            EVENT_PATH_BYTES as u32,
            scratch.buf.as_ptr().add(resolved.start & START_MASK).cast(),
        );
    }
}

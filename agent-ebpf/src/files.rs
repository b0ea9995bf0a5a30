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
//! `bpf_d_path` is allowed on `file_open`, `bprm_check_security` and
//! `mmap_file` on every kernel with BPF LSM. On the `path_*` hooks it is only
//! allowed from about 6.8, so there the path is built by walking the dentry
//! and mount chain with offsets from BTF, in a bounded number of steps. A
//! path that cannot be resolved is denied to an agent in enforce mode.

use agent_common::{
    event::{EVENT_PATH_BYTES, FileEvent, file_flags, hook, kind},
    files::{FILE_KEY_HEADER_BITS, FileValue, PATH_KEY_BYTES, right},
    identity::{AgentPolicy, AgentRecord, policy_flags},
    offsets::KernelOffsets,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    bindings::path,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_d_path, generated::bpf_probe_read_kernel},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        EVENTS, FILE_RULES, PATH_BUF_BYTES, PATH_SCRATCH, PathScratch, active_generation,
        agent_policy, count, current_agent, kernel_offsets, quarantined, take_event_token,
    },
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const PROT_EXEC: u64 = 0x4;

/// Where walked paths end in the scratch buffer; they are built backwards
/// from here, so every start offset is below it and `start + PATH_KEY_BYTES`
/// and `start + EVENT_PATH_BYTES` stay inside the buffer.
pub(crate) const WALK_END: usize = PATH_BUF_BYTES / 2;
/// Mask that keeps a start offset below [`WALK_END`] for the verifier.
pub(crate) const START_MASK: usize = WALK_END - 1;

/// A resolved path in the per-CPU scratch buffer: `buf[start..start + len]`,
/// followed by a `/` at `buf[start + len]`.
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

/// Everything a decision needs about the calling agent.
pub(crate) struct Caller {
    pub(crate) agent: AgentRecord,
    pub(crate) policy: CallerPolicy,
    pub(crate) generation: u32,
    pub(crate) offsets: KernelOffsets,
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
    /// `agent`'s caller under `generation`, with its policy and the
    /// kernel's offsets.
    #[inline(always)]
    fn new(agent: AgentRecord, generation: u32) -> Self {
        Self {
            agent,
            policy: policy_or_closed(generation, agent.agent_id),
            generation,
            offsets: kernel_offsets(),
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

// ---------------------------------------------------------------- hooks

/// Runs on every open in the system, so a process in no agent costs the
/// identity lookup and nothing else. For an agent, the path `bpf_d_path`
/// writes is the LPM key where it lies (no copy), and a read the rules
/// allow outright, the common case, looks up no other map: an allow is the
/// same verdict in every mode, a quarantine holds only changes, and an
/// allowed read counts nothing.
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
        // A direct load, not a probe read (a helper call): `file` is the
        // hook's BTF-typed argument, so the verifier checks the access
        // against `struct file` and makes it a fault-safe load.
        // SAFETY: the offset of `f_mode` in this kernel's `struct file`,
        // from BTF.
        let at = crate::offset!(file_f_mode) as usize;
        open_rights(unsafe { core::ptr::read_volatile(file.add(at) as *const u32) })
    };
    if rights == 0 {
        return Verdict::Allowed;
    }
    let Some(scratch) = scratch() else {
        return Verdict::Denied;
    };
    let generation = active_generation();
    let path = file_path(scratch, offsets_resolved, crate::offset!(file_f_path), file);
    let value = if path.len == 0 {
        None
    } else {
        lookup_in_place(scratch, generation, agent.agent_id, path.len)
    };
    if rights == right::bit(right::READ)
        && value.is_some_and(|v| v.decisions[right::READ] == decision::ALLOW)
    {
        return Verdict::Allowed;
    }
    // Anything else is decided as on every other hook. The rules are
    // looked up again there, which only costs denials and writes.
    check(
        scratch,
        &Caller::new(agent, generation),
        &path,
        rights,
        hook::FILE_OPEN,
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
    if caller.offsets.resolved == 0 {
        return Verdict::Denied.to_lsm(previous);
    }
    // A direct load, not a probe read: the verifier then knows the result
    // is the `struct file` of this binprm (from BTF), which `bpf_d_path`
    // requires; a probe read would give it a plain number.
    // SAFETY: `bprm` is the hook's BTF-typed argument and the offset comes
    // from this kernel's BTF; the verifier turns the load into a checked one.
    let file: *const u8 = unsafe {
        core::ptr::read_volatile(bprm.add(caller.offsets.binprm_file as usize) as *const *const u8)
    };
    check_exec(&caller, file, hook::BPRM_CHECK).to_lsm(previous)
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
    check_exec(&caller, file, hook::MMAP_FILE).to_lsm(previous)
}

/// The exec right on `file`, with files that have no name on disk (memfd,
/// deleted files) denied unless the policy allows them.
#[inline(always)]
fn check_exec(caller: &Caller, file: *const u8, hook: u16) -> Verdict {
    let Some(scratch) = scratch() else {
        return Verdict::Denied;
    };
    let resolved = file_path(
        scratch,
        caller.offsets.resolved,
        caller.offsets.file_f_path,
        file,
    );
    decide_exec(scratch, caller, file, resolved, hook)
}

/// The exec right on `file`, whose path is `resolved`.
#[inline(always)]
fn decide_exec(
    scratch: &mut PathScratch,
    caller: &Caller,
    file: *const u8,
    mut resolved: ResolvedPath,
    hook: u16,
) -> Verdict {
    let anonymous = read::<*const u8>(file, caller.offsets.file_f_inode)
        .and_then(|inode| read::<u32>(inode, caller.offsets.inode_i_nlink))
        .is_none_or(|nlink| nlink == 0);
    if anonymous && caller.policy.flags & policy_flags::ALLOW_ANONYMOUS_EXEC == 0 {
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
    check(scratch, caller, &resolved, right::bit(right::EXEC), hook)
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
    let resolved = walk_file(scratch, &caller.offsets, ctx.arg(0));
    check(
        scratch,
        &caller,
        &resolved,
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
    let file = match read::<*const u8>(vma, caller.offsets.vma_vm_file) {
        Some(file) => file,
        None => return Verdict::Denied.to_lsm(previous),
    };
    // Anonymous memory made executable (a JIT) has no file to decide on.
    if file.is_null() {
        return 0;
    }
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let resolved = walk_file(scratch, &caller.offsets, file);
    decide_exec(scratch, &caller, file, resolved, hook::FILE_MPROTECT).to_lsm(previous)
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
    let offsets = &caller.offsets;
    let Some(inode) = read::<*const u8>(file, offsets.file_f_inode) else {
        return Verdict::Denied.to_lsm(previous);
    };
    match read::<u16>(inode, offsets.inode_i_mode).map(|mode| mode & S_IFMT) {
        Some(S_IFREG) | Some(S_IFDIR) => {}
        Some(_) => return 0,
        None => return Verdict::Denied.to_lsm(previous),
    }
    // A file with no name on disk (memfd, deleted) has no path to protect.
    match read::<u32>(inode, offsets.inode_i_nlink) {
        Some(0) => return 0,
        Some(_) => {}
        None => return Verdict::Denied.to_lsm(previous),
    }
    let rights = match read::<u32>(file, offsets.file_f_mode) {
        Some(f_mode) => open_rights(f_mode),
        None => return Verdict::Denied.to_lsm(previous),
    };
    if rights == 0 {
        return 0;
    }
    let Some(scratch) = scratch() else {
        return Verdict::Denied.to_lsm(previous);
    };
    let resolved = walk_file(scratch, offsets, file);
    check(scratch, &caller, &resolved, rights, hook::FILE_RECEIVE).to_lsm(previous)
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
    let offsets = &caller.offsets;
    let Some(mnt) = read::<*const u8>(new_dir, offsets.path_mnt) else {
        return Verdict::Denied.to_lsm(previous);
    };
    let Some(new_parent) = read::<*const u8>(new_dir, offsets.path_dentry) else {
        return Verdict::Denied.to_lsm(previous);
    };
    let created = walk(scratch, offsets, mnt, new_parent, new_dentry);
    let verdict = check(
        scratch,
        &caller,
        &created,
        right::bit(right::CREATE),
        hook::PATH_LINK,
    );
    if verdict == Verdict::Denied {
        return verdict.to_lsm(previous);
    }
    // Links stay inside one mount, so the target shares the new name's mount.
    let target = walk(scratch, offsets, mnt, old_dentry, core::ptr::null());
    let rights = right::bit(right::READ) | right::bit(right::WRITE);
    check(scratch, &caller, &target, rights, hook::PATH_LINK).to_lsm(previous)
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
    let from = dir_entry_path(scratch, &caller.offsets, ctx.arg(0), ctx.arg(1));
    let verdict = check(scratch, &caller, &from, rights, hook::PATH_RENAME);
    if verdict == Verdict::Denied {
        return verdict.to_lsm(previous);
    }
    let to = dir_entry_path(scratch, &caller.offsets, ctx.arg(2), ctx.arg(3));
    check(scratch, &caller, &to, rights, hook::PATH_RENAME).to_lsm(previous)
}

/// Hooks whose first two arguments are a directory and an entry in it.
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
    let resolved = dir_entry_path(scratch, &caller.offsets, ctx.arg(0), ctx.arg(1));
    check(scratch, &caller, &resolved, rights, hook).to_lsm(previous)
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
    let offsets = &caller.offsets;
    let resolved = match (
        read::<*const u8>(path, offsets.path_mnt),
        read::<*const u8>(path, offsets.path_dentry),
    ) {
        (Some(mnt), Some(dentry)) => walk(scratch, offsets, mnt, dentry, core::ptr::null()),
        _ => ResolvedPath::UNRESOLVED,
    };
    check(scratch, &caller, &resolved, right::bit(right::WRITE), hook).to_lsm(previous)
}

// ---------------------------------------------------------------- paths

/// The path of an open file, with `bpf_d_path`, at the start of the buffer
/// (where [`lookup_in_place`] finds it).
#[inline(always)]
fn file_path(
    scratch: &mut PathScratch,
    offsets_resolved: u32,
    file_f_path: u32,
    file: *const u8,
) -> ResolvedPath {
    if offsets_resolved == 0 {
        return ResolvedPath::UNRESOLVED;
    }
    // SAFETY: `file + f_path` is the `struct path` inside a file the hook
    // hands us; the verifier checks the type from BTF.
    let written = unsafe {
        let path_ptr = file.add(file_f_path as usize) as *mut path;
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

/// The path of an open file, walked (for hooks where `bpf_d_path` is not
/// allowed, or the `struct file` is not the hook's own argument).
#[inline(always)]
fn walk_file(scratch: &mut PathScratch, offsets: &KernelOffsets, file: *const u8) -> ResolvedPath {
    // SAFETY: only an address computed, read through the fault-safe helper.
    let path = unsafe { file.add(offsets.file_f_path as usize) };
    match (
        read::<*const u8>(path, offsets.path_mnt),
        read::<*const u8>(path, offsets.path_dentry),
    ) {
        (Some(mnt), Some(dentry)) => walk(scratch, offsets, mnt, dentry, core::ptr::null()),
        _ => ResolvedPath::UNRESOLVED,
    }
}

/// The path of `entry` in directory `dir` (a `struct path`).
#[inline(always)]
fn dir_entry_path(
    scratch: &mut PathScratch,
    offsets: &KernelOffsets,
    dir: *const u8,
    entry: *const u8,
) -> ResolvedPath {
    match (
        read::<*const u8>(dir, offsets.path_mnt),
        read::<*const u8>(dir, offsets.path_dentry),
    ) {
        (Some(mnt), Some(dentry)) => walk(scratch, offsets, mnt, dentry, entry),
        _ => ResolvedPath::UNRESOLVED,
    }
}

/// Writes `/name` of `dentry` in front of `pos`; returns the new start.
#[inline(always)]
fn prepend_name(
    scratch: &mut PathScratch,
    offsets: &KernelOffsets,
    pos: usize,
    dentry: *const u8,
) -> Option<usize> {
    let name_at = offsets.dentry_d_name;
    let len = read::<u32>(dentry, name_at + offsets.qstr_len)? as usize;
    let name = read::<*const u8>(dentry, name_at + offsets.qstr_name)?;
    if len == 0 || len > 255 || pos < len + 1 {
        return None;
    }
    let start = (pos - len) & START_MASK;
    // SAFETY: `start + len` is at most `WALK_END`, inside the buffer.
    let copied = unsafe {
        bpf_probe_read_kernel(
            scratch.buf.as_mut_ptr().add(start).cast(),
            (len & 255) as u32,
            name.cast(),
        )
    };
    if copied != 0 {
        return None;
    }
    let slash = (start - 1) & START_MASK;
    scratch.buf[slash] = b'/';
    Some(slash)
}

/// Steps the dentry walk may take (path components plus mount crossings).
const MAX_WALK_STEPS: usize = 32;

/// Builds the absolute path of `dentry` on mount `mnt` (a `vfsmount`),
/// followed by `/leaf` when `leaf` is not null, ending at [`WALK_END`].
#[inline(always)]
#[allow(unused_assignments)]
pub(crate) fn walk(
    scratch: &mut PathScratch,
    offsets: &KernelOffsets,
    mnt: *const u8,
    dentry: *const u8,
    leaf: *const u8,
) -> ResolvedPath {
    if offsets.resolved == 0 {
        return ResolvedPath::UNRESOLVED;
    }
    scratch.buf[WALK_END] = b'/';
    let mut pos = WALK_END;
    if !leaf.is_null() {
        match prepend_name(scratch, offsets, pos, leaf) {
            Some(start) => pos = start,
            None => return ResolvedPath::UNRESOLVED,
        }
    }
    let mut vfsmount = mnt;
    // SAFETY: a `vfsmount` always lives inside a `struct mount`.
    let mut mount = unsafe { mnt.sub(offsets.mount_mnt as usize) };
    let mut current = dentry;
    let mut done = false;
    const _: () = assert!(MAX_WALK_STEPS == 32, "the unrolled walk lists every step");
    unroll!(step in [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    ] {
        let _ = step;
        if !done {
            let Some(mnt_root) = read::<*const u8>(vfsmount, offsets.vfsmount_mnt_root) else {
                return ResolvedPath::UNRESOLVED;
            };
            if current == mnt_root {
                let Some(parent_mount) = read::<*const u8>(mount, offsets.mount_mnt_parent) else {
                    return ResolvedPath::UNRESOLVED;
                };
                if parent_mount == mount {
                    done = true;
                } else {
                    let Some(mountpoint) =
                        read::<*const u8>(mount, offsets.mount_mnt_mountpoint)
                    else {
                        return ResolvedPath::UNRESOLVED;
                    };
                    current = mountpoint;
                    mount = parent_mount;
                    // SAFETY: as above.
                    vfsmount = unsafe { parent_mount.add(offsets.mount_mnt as usize) };
                }
            } else {
                let Some(parent) = read::<*const u8>(current, offsets.dentry_d_parent) else {
                    return ResolvedPath::UNRESOLVED;
                };
                if parent == current {
                    done = true;
                } else {
                    match prepend_name(scratch, offsets, pos, current) {
                        Some(start) => pos = start,
                        None => return ResolvedPath::UNRESOLVED,
                    }
                    current = parent;
                }
            }
        }
    });
    if !done {
        return ResolvedPath::UNRESOLVED;
    }
    if pos == WALK_END {
        // The root itself.
        pos = WALK_END - 1;
        scratch.buf[pos] = b'/';
        return ResolvedPath {
            start: pos,
            len: 1,
            flags: 0,
        };
    }
    ResolvedPath {
        start: pos & START_MASK,
        len: WALK_END - pos,
        flags: 0,
    }
}

// ---------------------------------------------------------------- decisions

/// Decides `rights` on a resolved path and records anything but an allow.
#[inline(always)]
fn check(
    scratch: &mut PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
    rights: u32,
    hook: u16,
) -> Verdict {
    let agent_mode = caller.policy.mode;
    let (rule_decision, rule_id, denied) = if resolved.len == 0 {
        // A path we cannot name is a path we cannot allow.
        (decision::DENY, 0, rights)
    } else {
        match_rules(scratch, caller, resolved, rights)
    };
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
    if verdict != Verdict::Allowed {
        let denied = if held { rights } else { denied };
        let flagged = ResolvedPath {
            start: resolved.start,
            len: resolved.len,
            flags: resolved.flags | if canary { file_flags::CANARY } else { 0 },
        };
        emit(
            scratch, caller, &flagged, rights, denied, rule_id, verdict, hook,
        );
    }
    verdict
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

    let value = FILE_RULES.get(&scratch.key);
    let policy = &caller.policy;
    let mut denied = 0u32;
    let mut deny_rule = 0u32;
    let mut allow_rule = 0u32;
    let mut canary = false;
    const _: () = assert!(right::COUNT == 6, "the unrolled scan lists every right");
    unroll!(r in [0, 1, 2, 3, 4, 5] {
        if rights & right::bit(r) != 0 {
            let (mut found, mut rule_id) = match value {
                Some(value) => (value.decisions[r], value.rule_ids[r]),
                None => (decision::NONE, 0),
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
    if canary {
        (decision::CANARY, deny_rule, denied)
    } else if denied != 0 {
        (decision::DENY, deny_rule, denied)
    } else {
        (decision::ALLOW, allow_rule, 0)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    scratch: &PathScratch,
    caller: &Caller,
    resolved: &ResolvedPath,
    rights: u32,
    denied_rights: u32,
    rule_id: u32,
    verdict: Verdict,
    hook: u16,
) {
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
    fill_event(
        event,
        scratch,
        caller,
        resolved,
        rights,
        denied_rights,
        rule_id,
        verdict,
        hook,
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

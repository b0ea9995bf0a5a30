//! Detection of file and exec rule violations where BPF LSM cannot deny them.
//!
//! These programs run only where the daemon found BPF LSM refused, and only
//! for agents whose policy value carries a `DETECT_*` flag (the rights
//! nothing else enforces for them). They decide with the same rules and the
//! same matching code as the LSM programs (`files.rs`), record a denied
//! access with the verdict `detected` once the syscall has succeeded, count
//! it for the breakers, and with `onDetect: kill` send `SIGKILL` to the
//! caller from inside the syscall, so it never runs another instruction. They
//! cannot change a syscall's outcome and never try to.
//!
//! Hook choice (all BTF tracepoints, which load where trampolines, kprobes
//! and BPF LSM do not; tp_btf needs 5.5, `bpf_send_signal` 5.3):
//! - `tp_btf/sys_enter` (raw_syscalls, 2.6.33): the arguments of `unlink`,
//!   `rename`, `mkdir`, `mknod`, `link`, `symlink`, `chmod`, `truncate` and
//!   `mmap(PROT_EXEC)` while the names they use still exist. A name is
//!   resolved as the kernel would start its walk: the directory part comes
//!   from the caller's working directory or `dirfd` (a `struct path`,
//!   walked through dentries and mounts), the rest from the caller's string
//!   with `.`, `..` and repeated `/` folded. Nothing is recorded yet: the
//!   decision waits in `DETECT_PENDING` for the result.
//! - `tp_btf/sys_exit` (2.6.33): records a waiting decision only when the
//!   syscall succeeded (one that failed, refused by Landlock for instance,
//!   changed nothing); and decides opens from the opened `struct file`
//!   itself (the descriptor the call returned), so symlinks, `..`, `openat`
//!   and `/proc/self/fd` all arrive resolved.
//! - `tp_btf/sched_process_exec` (5.5 for tp_btf): the `linux_binprm` of a
//!   successful exec, before the new image runs its first instruction; a
//!   kill there stops the program before it starts.
//!
//! `bpf_d_path` is not allowed on tracepoints (only on the functions in the
//! kernel's `btf_allowlist_d_path`), so paths are built with the bounded
//! dentry walk of `files.rs`.

use agent_common::{
    detect::{DetectOffsets, syscall},
    event::{FileEvent, file_flags, hook},
    files::right,
    identity::policy_flags,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task,
        generated::{bpf_loop, bpf_probe_read_user_str, bpf_send_signal},
    },
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    events::count_drop,
    files::{
        Caller, ResolvedPath, START_MASK, WALK_END, caller, fill_event, match_rules, open_rights,
        read, scratch,
    },
    maps::{
        EVENTS, PATH_BUF_BYTES, PATH_SCRATCH, PathScratch, count, quarantined, take_event_token,
    },
};

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;
const AT_FDCWD: i64 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const SIGKILL: u32 = 9;
/// Errors are returned as -1 ..= -4095 (`IS_ERR_VALUE`), also by `mmap`.
const MAX_ERRNO: i64 = 4095;

/// Filled in by the daemon from the running kernel's BTF before load.
#[unsafe(no_mangle)]
static DETECT_OFFSETS: DetectOffsets = DetectOffsets {
    regs_arg0: 0,
    regs_arg1: 0,
    regs_arg2: 0,
    regs_arg3: 0,
    regs_arg4: 0,
    regs_nr: 0,
    task_fs: 0,
    fs_pwd: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    resolved: 0,
};

#[inline(always)]
fn detect_offsets() -> DetectOffsets {
    // SAFETY: reading a plain static through a volatile load so the
    // daemon's values are used.
    unsafe { core::ptr::read_volatile(&DETECT_OFFSETS) }
}

/// A detection waiting for its syscall's result.
#[repr(C)]
pub struct Pending {
    /// The syscall it belongs to.
    nr: u64,
    /// Non-zero: kill the caller when the syscall succeeds.
    kill: u32,
    /// Non-zero: the rights are changes (for the counters).
    changes: u32,
    /// The record, complete but for the `KILLED` flag.
    event: FileEvent,
}

/// Thread id → its waiting detection. LRU: a thread that dies inside the
/// syscall never reaches `sys_exit`.
#[map(name = "DETECT_PENDING")]
static DETECT_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(4096, 0);

/// Where a [`Pending`] is built (too big for the stack).
#[map(name = "DETECT_SCRATCH")]
static DETECT_SCRATCH: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Components a resolved name may have.
const MAX_DEPTH: usize = 64;

/// State of the name folding loop.
#[repr(C)]
pub struct Fold {
    /// Next input byte.
    input: u32,
    /// End of the input.
    end: u32,
    /// Next output byte.
    out: u32,
    /// Start of the component being copied.
    component: u32,
    /// Components kept.
    depth: u32,
    /// Non-zero when the name could not be folded.
    failed: u32,
    /// Start of each kept component.
    starts: [u16; MAX_DEPTH],
}

#[map(name = "DETECT_FOLD")]
static DETECT_FOLD: PerCpuArray<Fold> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of a caller's name read from user memory.
const USER_NAME_BYTES: usize = 1024;
/// Where the caller's name is read to: right after the `/` that ends a
/// walked directory, so directory and name form one input.
const USER_AT: usize = WALK_END + 1;
/// Where an absolute name is folded to: below [`WALK_END`], as the matching
/// code requires of every path start.
const ABSOLUTE_OUT: usize = WALK_END - USER_NAME_BYTES;
const BUF_MASK: usize = PATH_BUF_BYTES - 1;

/// One step of the folding loop: one input byte (the end counts as `/`).
extern "C" fn fold_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(fold), Some(scratch)) = (DETECT_FOLD.get_ptr_mut(0), PATH_SCRATCH.get_ptr_mut(0))
    else {
        return 1;
    };
    // SAFETY: per-CPU values from successful lookups; nothing else uses
    // them while this program runs on this CPU.
    let (fold, scratch) = unsafe { (&mut *fold, &mut *scratch) };
    let at = fold.input as usize & BUF_MASK;
    let byte = if fold.input >= fold.end {
        b'/'
    } else {
        scratch.buf[at]
    };
    fold.input += 1;
    let out = fold.out as usize & BUF_MASK;
    if byte != b'/' {
        scratch.buf[out] = byte;
        fold.out += 1;
        return 0;
    }
    let component = fold.component as usize & BUF_MASK;
    let len = fold.out.wrapping_sub(fold.component);
    let first = scratch.buf[component];
    let second = scratch.buf[(component + 1) & BUF_MASK];
    if len == 0 {
        // A repeated `/`.
    } else if len == 1 && first == b'.' {
        fold.out = fold.component;
    } else if len == 2 && first == b'.' && second == b'.' {
        if fold.depth > 0 {
            fold.depth -= 1;
            fold.out = u32::from(fold.starts[fold.depth as usize & (MAX_DEPTH - 1)]);
        } else {
            // `..` of the root is the root.
            fold.out = fold.component;
        }
        fold.component = fold.out;
    } else {
        if fold.depth as usize >= MAX_DEPTH {
            fold.failed = 1;
            return 1;
        }
        fold.starts[fold.depth as usize & (MAX_DEPTH - 1)] = fold.component as u16;
        fold.depth += 1;
        scratch.buf[out] = b'/';
        fold.out += 1;
        fold.component = fold.out;
    }
    0
}

/// The `struct file` behind descriptor `fd` of the current process.
#[inline(always)]
fn fd_file(offsets: &DetectOffsets, fd: i64) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    // SAFETY: helper without memory arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read::<*const u8>(task, offsets.task_files)?;
    let fdt = read::<*const u8>(files, offsets.files_fdt)?;
    let max = read::<u32>(fdt, offsets.fdtable_max_fds)?;
    if fd as u64 >= u64::from(max) {
        return None;
    }
    let table = read::<*const u8>(fdt, offsets.fdtable_fd)?;
    // SAFETY: `fd` is below the table's size; the read faults safely.
    let slot = unsafe { table.add(fd as usize * 8) };
    let file = read::<*const u8>(slot, 0)?;
    (!file.is_null()).then_some(file)
}

/// Walks a `struct path` at `path` to its absolute name.
#[inline(always)]
fn path_name(scratch: &mut PathScratch, _caller: &Caller, path: *const u8) -> ResolvedPath {
    crate::files::walk_path(scratch, path, core::ptr::null())
}

/// The absolute name of an open file.
#[inline(always)]
fn file_name(scratch: &mut PathScratch, caller: &Caller, file: *const u8) -> ResolvedPath {
    // SAFETY: `f_path` is inside the file; reads through it fault safely.
    let f_path = crate::offset!(file_f_path) as usize;
    // SAFETY: only an address computed; reads through it fault safely.
    path_name(scratch, caller, unsafe { file.add(f_path) })
}

/// The absolute name a `*at` syscall's (`dirfd`, `name`) pair refers to, as
/// the kernel starts its walk: `name` itself when absolute, else the
/// directory (`dirfd`, or the working directory for `AT_FDCWD`) followed by
/// `name`; `.`, `..` and repeated `/` folded.
#[inline(always)]
fn user_name(
    scratch: &mut PathScratch,
    caller: &Caller,
    offsets: &DetectOffsets,
    dirfd: i64,
    name: u64,
) -> ResolvedPath {
    // SAFETY: `USER_AT + USER_NAME_BYTES` is inside the buffer; the helper
    // faults safely on a bad user pointer.
    let copied = unsafe {
        bpf_probe_read_user_str(
            scratch.buf.as_mut_ptr().add(USER_AT).cast(),
            USER_NAME_BYTES as u32,
            name as *const core::ffi::c_void,
        )
    };
    if copied <= 1 {
        return ResolvedPath::UNRESOLVED;
    }
    let end = USER_AT + ((copied - 1) as usize & (USER_NAME_BYTES - 1));
    let (input, out) = if scratch.buf[USER_AT] == b'/' {
        (USER_AT, ABSOLUTE_OUT)
    } else {
        let base = if dirfd == AT_FDCWD {
            // SAFETY: helper without memory arguments.
            let task = unsafe { bpf_get_current_task() } as *const u8;
            match read::<*const u8>(task, offsets.task_fs) {
                // SAFETY: `pwd` is inside the `fs_struct`; reads fault safely.
                Some(fs) => path_name(scratch, caller, unsafe { fs.add(offsets.fs_pwd as usize) }),
                None => ResolvedPath::UNRESOLVED,
            }
        } else {
            match fd_file(offsets, dirfd) {
                Some(file) => file_name(scratch, caller, file),
                None => ResolvedPath::UNRESOLVED,
            }
        };
        if base.len == 0 {
            return ResolvedPath::UNRESOLVED;
        }
        // The walk ends the directory with `/` at `WALK_END`, right before
        // the name.
        (base.start & START_MASK, base.start & START_MASK)
    };
    let Some(fold) = DETECT_FOLD.get_ptr_mut(0) else {
        return ResolvedPath::UNRESOLVED;
    };
    // SAFETY: per-CPU value from a successful lookup.
    let fold = unsafe { &mut *fold };
    scratch.buf[out & BUF_MASK] = b'/';
    fold.input = (input + 1) as u32;
    fold.end = end as u32;
    fold.out = (out + 1) as u32;
    fold.component = fold.out;
    fold.depth = 0;
    fold.failed = 0;
    // One step per input byte after the leading `/`, plus the end.
    let steps = (end - input) as u32;
    // SAFETY: `fold_step` is a BPF subprogram with the callback signature;
    // it takes no context.
    let looped = unsafe {
        bpf_loop(
            steps,
            fold_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if looped < 0 || fold.failed != 0 {
        return ResolvedPath::UNRESOLVED;
    }
    let folded = fold.out as usize;
    if folded <= out + 1 {
        // The root.
        scratch.buf[(out + 1) & BUF_MASK] = b'/';
        return ResolvedPath {
            start: out,
            len: 1,
            flags: 0,
        };
    }
    // Without the `/` that ends the last component, which stays in the
    // buffer as the matching code wants.
    ResolvedPath {
        start: out,
        len: folded - out - 1,
        flags: 0,
    }
}

/// What detection makes of `rights` on `resolved`: `None` when the rules
/// allow it, else the verdict, the rule and the denied rights.
#[inline(always)]
fn judge(
    scratch: &mut PathScratch,
    caller: &Caller,
    resolved: &mut ResolvedPath,
    rights: u32,
) -> Option<(Verdict, u32, u32)> {
    let (rule_decision, rule_id, denied) = if resolved.len == 0 {
        // As for the LSM programs: a path we cannot name is not allowed.
        (decision::DENY, 0, rights)
    } else {
        match_rules(scratch, caller, resolved, rights)
    };
    if rule_decision == decision::CANARY {
        resolved.flags |= file_flags::CANARY;
    }
    let changes = rights & !right::bit(right::READ) != 0;
    let held =
        changes && (caller.policy.mode == mode::QUARANTINE || quarantined(caller.agent.agent_id));
    if held {
        return Some((Verdict::Detected, rule_id, rights));
    }
    match verdict_for(rule_decision, caller.policy.mode) {
        Verdict::Allowed => None,
        // Nothing here can deny: what the policy denies is detected.
        Verdict::Denied => Some((Verdict::Detected, rule_id, denied)),
        other => Some((other, rule_id, denied)),
    }
}

/// Decides `rights` on `resolved` and, if the policy denies them, writes
/// the record into the per-CPU [`Pending`] and returns it.
#[inline(always)]
fn decide(
    scratch: &mut PathScratch,
    caller: &Caller,
    mut resolved: ResolvedPath,
    rights: u32,
    hook: u16,
    nr: u64,
) -> Option<&'static mut Pending> {
    let (verdict, rule_id, denied) = judge(scratch, caller, &mut resolved, rights)?;
    let pending = DETECT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value from a successful lookup.
    let pending = unsafe { &mut *pending };
    pending.nr = nr;
    pending.kill = u32::from(
        verdict == Verdict::Detected && caller.policy.flags & policy_flags::KILL_ON_DETECT != 0,
    );
    pending.changes = u32::from(rights & !right::bit(right::READ) != 0);
    fill_event(
        &mut pending.event,
        scratch,
        caller,
        &resolved,
        rights,
        denied,
        rule_id,
        verdict,
        hook,
    );
    Some(pending)
}

/// The syscall succeeded: count, kill if asked, record.
#[inline(always)]
fn finish(pending: &mut Pending) {
    let agent_id = pending.event.header.agent_id;
    let canary = pending.event.flags & file_flags::CANARY != 0;
    let changes = pending.changes != 0;
    count(agent_id, |c| {
        c.denied_files += 1;
        if changes {
            c.file_writes += 1;
        }
        if canary {
            c.canary_hits += 1;
        }
    });
    // SAFETY: helper without memory arguments; it signals the current
    // process, which dies before it returns to user space.
    if pending.kill != 0 && unsafe { bpf_send_signal(SIGKILL) } == 0 {
        pending.event.flags |= file_flags::KILLED;
    }
    if !take_event_token(agent_id) {
        return;
    }
    if EVENTS.output::<FileEvent>(&pending.event, 0).is_err() {
        count_drop(agent_id);
    }
}

/// A name or a descriptor a syscall acts on.
#[derive(Clone, Copy)]
enum Target {
    /// `(dirfd, user pointer to the name)`.
    Name(i64, u64),
    /// An open descriptor.
    Fd(i64),
    /// Nothing to check.
    None,
}

#[inline(always)]
fn resolve(
    scratch: &mut PathScratch,
    caller: &Caller,
    offsets: &DetectOffsets,
    target: Target,
) -> ResolvedPath {
    match target {
        Target::Name(dirfd, name) => user_name(scratch, caller, offsets, dirfd, name),
        Target::Fd(fd) => match fd_file(offsets, fd) {
            Some(file) => file_name(scratch, caller, file),
            None => ResolvedPath::UNRESOLVED,
        },
        Target::None => ResolvedPath::UNRESOLVED,
    }
}

// ---------------------------------------------------------------- hooks

#[btf_tracepoint(function = "sys_enter")]
pub fn detect_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let Some(caller) = caller() else {
        return 0;
    };
    let flags = caller.policy.flags;
    if flags & (policy_flags::DETECT_CHANGES | policy_flags::DETECT_MMAP_EXEC) == 0 {
        return 0;
    }
    let offsets = detect_offsets();
    if offsets.resolved == 0 {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let nr: u64 = ctx.arg(1);
    let arg = |at: u32| read::<u64>(regs, at).unwrap_or(0);
    let cwd = AT_FDCWD;
    let create = right::bit(right::CREATE);
    let delete = right::bit(right::DELETE);
    let rename = right::bit(right::RENAME);
    let write = right::bit(right::WRITE);
    let linked = right::bit(right::READ) | right::bit(right::WRITE);
    let (a0, a1, a2, a3) = (
        offsets.regs_arg0,
        offsets.regs_arg1,
        offsets.regs_arg2,
        offsets.regs_arg3,
    );
    // (first target, its rights, second target, its rights, hook)
    let (first, first_rights, second, second_rights, hook) = match nr {
        syscall::MMAP => {
            if flags & policy_flags::DETECT_MMAP_EXEC == 0
                || arg(a2) & PROT_EXEC == 0
                || arg(a3) & MAP_ANONYMOUS != 0
            {
                return 0;
            }
            let fd = arg(offsets.regs_arg4) as i64;
            let exec = right::bit(right::EXEC);
            (Target::Fd(fd), exec, Target::None, 0, hook::DETECT_MMAP)
        }
        _ if flags & policy_flags::DETECT_CHANGES == 0 => return 0,
        syscall::UNLINK => (
            Target::Name(cwd, arg(a0)),
            delete,
            Target::None,
            0,
            hook::DETECT_UNLINK,
        ),
        syscall::RMDIR => (
            Target::Name(cwd, arg(a0)),
            delete,
            Target::None,
            0,
            hook::DETECT_RMDIR,
        ),
        syscall::UNLINKAT => {
            let hook = if arg(a2) & AT_REMOVEDIR != 0 {
                hook::DETECT_RMDIR
            } else {
                hook::DETECT_UNLINK
            };
            (
                Target::Name(arg(a0) as i32 as i64, arg(a1)),
                delete,
                Target::None,
                0,
                hook,
            )
        }
        syscall::MKDIR => (
            Target::Name(cwd, arg(a0)),
            create,
            Target::None,
            0,
            hook::DETECT_MKDIR,
        ),
        syscall::MKDIRAT => (
            Target::Name(arg(a0) as i32 as i64, arg(a1)),
            create,
            Target::None,
            0,
            hook::DETECT_MKDIR,
        ),
        syscall::MKNOD => (
            Target::Name(cwd, arg(a0)),
            create,
            Target::None,
            0,
            hook::DETECT_MKNOD,
        ),
        syscall::MKNODAT => (
            Target::Name(arg(a0) as i32 as i64, arg(a1)),
            create,
            Target::None,
            0,
            hook::DETECT_MKNOD,
        ),
        syscall::RENAME => (
            Target::Name(cwd, arg(a0)),
            rename,
            Target::Name(cwd, arg(a1)),
            rename,
            hook::DETECT_RENAME,
        ),
        syscall::RENAMEAT | syscall::RENAMEAT2 => (
            Target::Name(arg(a0) as i32 as i64, arg(a1)),
            rename,
            Target::Name(arg(a2) as i32 as i64, arg(a3)),
            rename,
            hook::DETECT_RENAME,
        ),
        // As for the LSM hook: create where the new name appears, read and
        // write on what it points to.
        syscall::LINK => (
            Target::Name(cwd, arg(a1)),
            create,
            Target::Name(cwd, arg(a0)),
            linked,
            hook::DETECT_LINK,
        ),
        syscall::LINKAT => (
            Target::Name(arg(a2) as i32 as i64, arg(a3)),
            create,
            Target::Name(arg(a0) as i32 as i64, arg(a1)),
            linked,
            hook::DETECT_LINK,
        ),
        syscall::SYMLINK => (
            Target::Name(cwd, arg(a1)),
            create,
            Target::None,
            0,
            hook::DETECT_SYMLINK,
        ),
        syscall::SYMLINKAT => (
            Target::Name(arg(a1) as i32 as i64, arg(a2)),
            create,
            Target::None,
            0,
            hook::DETECT_SYMLINK,
        ),
        syscall::CHMOD => (
            Target::Name(cwd, arg(a0)),
            write,
            Target::None,
            0,
            hook::DETECT_CHMOD,
        ),
        syscall::FCHMOD => (
            Target::Fd(arg(a0) as i32 as i64),
            write,
            Target::None,
            0,
            hook::DETECT_CHMOD,
        ),
        syscall::FCHMODAT | syscall::FCHMODAT2 => (
            Target::Name(arg(a0) as i32 as i64, arg(a1)),
            write,
            Target::None,
            0,
            hook::DETECT_CHMOD,
        ),
        syscall::TRUNCATE => (
            Target::Name(cwd, arg(a0)),
            write,
            Target::None,
            0,
            hook::DETECT_TRUNCATE,
        ),
        syscall::FTRUNCATE => (
            Target::Fd(arg(a0) as i32 as i64),
            write,
            Target::None,
            0,
            hook::DETECT_TRUNCATE,
        ),
        _ => return 0,
    };
    let Some(scratch) = scratch() else {
        return 0;
    };
    let resolved = resolve(scratch, &caller, &offsets, first);
    let mut pending = decide(scratch, &caller, resolved, first_rights, hook, nr);
    if pending.is_none() && second_rights != 0 {
        let resolved = resolve(scratch, &caller, &offsets, second);
        pending = decide(scratch, &caller, resolved, second_rights, hook, nr);
    }
    if let Some(pending) = pending {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = DETECT_PENDING.insert(tid, pending, 0);
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn detect_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let Some(caller) = caller() else {
        return 0;
    };
    let flags = caller.policy.flags;
    if flags & policy_flags::DETECT_ANY == 0 {
        return 0;
    }
    let offsets = detect_offsets();
    if offsets.resolved == 0 {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let Some(nr) = read::<u64>(regs, offsets.regs_nr) else {
        return 0;
    };
    let succeeded = !(-MAX_ERRNO..0).contains(&ret);
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(pending) = DETECT_PENDING.get_ptr_mut(tid) {
        // SAFETY: the pointer comes from a successful lookup; only this
        // thread uses its entry.
        let pending = unsafe { &mut *pending };
        if pending.nr == nr && succeeded {
            finish(pending);
        }
        let _ = DETECT_PENDING.remove(tid);
        return 0;
    }
    if flags & policy_flags::DETECT_OPEN == 0
        || !succeeded
        || !matches!(
            nr,
            syscall::OPEN | syscall::OPENAT | syscall::OPENAT2 | syscall::CREAT
        )
    {
        return 0;
    }
    let Some(file) = fd_file(&offsets, ret) else {
        return 0;
    };
    let rights = match read::<u32>(file, crate::offset!(file_f_mode)) {
        Some(f_mode) => open_rights(f_mode),
        None => right::bit(right::READ) | right::bit(right::WRITE),
    };
    if rights == 0 {
        return 0;
    }
    let Some(scratch) = scratch() else {
        return 0;
    };
    let resolved = file_name(scratch, &caller, file);
    if let Some(pending) = decide(scratch, &caller, resolved, rights, hook::DETECT_OPEN, nr) {
        finish(pending);
    }
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn detect_exec(ctx: BtfTracePointContext) -> i32 {
    let Some(caller) = caller() else {
        return 0;
    };
    if caller.policy.flags & policy_flags::DETECT_EXEC == 0 || crate::offset!(resolved) == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(2);
    let Some(file) = read::<*const u8>(bprm, crate::offset!(binprm_file)) else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return 0;
    };
    let mut resolved = file_name(scratch, &caller, file);
    let anonymous = read::<*const u8>(file, crate::offset!(file_f_inode))
        .and_then(|inode| read::<u32>(inode, crate::offset!(inode_i_nlink)))
        .is_none_or(|nlink| nlink == 0);
    let exec = right::bit(right::EXEC);
    let pending = if anonymous && caller.policy.flags & policy_flags::ALLOW_ANONYMOUS_EXEC == 0 {
        // A file with no name on disk: denied unless the policy allows
        // it, whatever the rules say about the name it had.
        resolved.flags |= file_flags::ANONYMOUS;
        let verdict = match verdict_for(decision::DENY, caller.policy.mode) {
            Verdict::Denied => Verdict::Detected,
            other => other,
        };
        DETECT_SCRATCH.get_ptr_mut(0).map(|pending| {
            // SAFETY: per-CPU value from a successful lookup.
            let pending = unsafe { &mut *pending };
            pending.nr = 0;
            pending.kill = u32::from(
                verdict == Verdict::Detected
                    && caller.policy.flags & policy_flags::KILL_ON_DETECT != 0,
            );
            pending.changes = 0;
            fill_event(
                &mut pending.event,
                scratch,
                &caller,
                &resolved,
                exec,
                exec,
                caller.policy.exec_default_rule,
                verdict,
                hook::DETECT_EXEC,
            );
            pending
        })
    } else {
        decide(scratch, &caller, resolved, exec, hook::DETECT_EXEC, 0)
    };
    if let Some(pending) = pending {
        finish(pending);
    }
    0
}

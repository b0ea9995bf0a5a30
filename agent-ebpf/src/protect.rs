//! Self-protection with BPF LSM: an agent, even one running as root, must
//! not be able to switch Baton off.
//!
//! Hook choice:
//! - `bpf` runs at the top of every `bpf()` call, before the command is
//!   looked at: detaching or replacing programs, reading or writing maps and
//!   opening pinned objects all go through it. Agents get none of it.
//! - `ptrace_access_check` is the kernel's single check for reaching into
//!   another process: `ptrace` attach, `process_vm_readv`/`writev`,
//!   `/proc/PID/mem`, `pidfd_getfd` (attach mode) and `/proc/PID/environ`,
//!   `maps`, `fd` and friends (read mode). Attach is denied towards any
//!   process outside the caller's own agent; read only towards the daemon.
//! - `task_kill` sees every signal a process sends (`kill`, `tgkill`,
//!   `rt_sigqueueinfo`, `pidfd_send_signal`); `file_send_sigiotask` sees the
//!   signals `F_SETOWN` makes the kernel send on a process's behalf, and
//!   `task_setrlimit` a `prlimit` on another process (`RLIMIT_CPU` kills).
//! - `kernel_read_file` and `kernel_load_data` see module and kexec loads
//!   (`finit_module`, `init_module`, `kexec_file_load`, `kexec_load`): a
//!   module can undo anything a BPF program does.
//! - `perf_event_open` (5.10) runs for every `perf_event_open()` before
//!   the event is made: perf events sample the kernel and other processes
//!   and carry the BPF programs of kprobes and tracepoints. Agents get none,
//!   as under the seccomp filter `baton exec` applies where BPF LSM is
//!   missing; with this hook loaded that filter is left out.
//!
//! Writes under `/sys/fs/bpf`, to cgroup control files and to Baton's own
//! files are file rules the daemon adds to every agent, decided by the file
//! hooks.
//!
//! These decisions do not depend on the agent's policy: audit mode does not
//! turn them into "would deny". Every denial is recorded as a file event
//! whose path names what was refused ("bpf() command 0", "signal 15 to pid
//! 812"); probes the kernel marks as not worth auditing (`NOAUDIT`) are
//! denied without a record.
//!
//! The retval argument these programs would pass through sits at a position
//! that differs between kernels for `bpf` (a `kernel` flag was added in
//! 6.15) and `perf_event_open` (its `attr` was dropped), so those two
//! programs do not read it: the BPF LSM trampoline never runs a program
//! after one that returned non-zero, so it is always 0 there.

use agent_common::{
    event::{EVENT_PATH_BYTES, FileEvent, hook, kind},
    identity::AgentRecord,
    verdict::{EPERM, Verdict, mode},
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{lsm, map},
    maps::Array,
    programs::LsmContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{EVENTS, active_generation, agent_policy, current_agent, kernel_offsets},
};

/// The daemon's tgid (in the initial PID namespace), written by the daemon
/// before it admits anyone; 0 until then.
#[map(name = "DAEMON_TGID")]
pub static DAEMON_TGID: Array<u32> = Array::with_max_entries(1, 0);

const PTRACE_MODE_ATTACH: u32 = 0x02;
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// `enum kernel_read_file_id` and `enum kernel_load_data_id` share these
/// values (the same on every kernel with BPF LSM).
const LOADING_MODULE: i32 = 2;
const LOADING_KEXEC_IMAGE: i32 = 3;
const LOADING_KEXEC_INITRAMFS: i32 = 4;
const LOADING_POLICY: i32 = 5;

const DENIED: i32 = -EPERM;

#[inline(always)]
fn daemon_tgid() -> u32 {
    match DAEMON_TGID.get(0) {
        Some(tgid) => *tgid,
        None => 0,
    }
}

/// The calling process and its agent, or `None` outside every agent.
#[inline(always)]
fn caller() -> Option<(u32, AgentRecord)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    current_agent(tgid).map(|agent| (tgid, agent))
}

/// The tgid of a `struct task_struct`; `None` if it cannot be read.
#[inline(always)]
fn task_tgid(task: *const u8) -> Option<u32> {
    let offsets = kernel_offsets();
    if offsets.resolved == 0 || task.is_null() {
        return None;
    }
    // SAFETY: the helper faults safely on a bad address; the offset comes
    // from this kernel's BTF.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(task.add(offsets.task_tgid as usize) as *const i32)
            .ok()
            .map(|tgid| tgid as u32)
    }
}

// ---------------------------------------------------------------- hooks

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size)` (6.15 adds
/// `bool kernel`): every call from an agent is refused.
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some((_, agent)) = caller() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    deny(&agent, hook::BPF, |text| {
        text.push(*b"bpf() command ");
        text.push_u32(cmd as u32);
    })
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some((tgid, agent)) = caller() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(0);
    let access: u32 = ctx.arg(1);
    let Some(target) = task_tgid(child) else {
        return DENIED;
    };
    if target == tgid {
        return 0;
    }
    let daemon = daemon_tgid();
    let is_daemon = daemon != 0 && target == daemon;
    let attach = access & PTRACE_MODE_ATTACH != 0;
    // Read-mode checks (procfs `environ`, `maps`, `fd`, `stat` fields) only
    // protect the daemon: tools like `ps` and `lsof` keep working.
    if !is_daemon && !attach {
        return 0;
    }
    if !is_daemon && current_agent(target).is_some_and(|other| other.agent_id == agent.agent_id) {
        return 0;
    }
    if access & PTRACE_MODE_NOAUDIT != 0 {
        return DENIED;
    }
    deny(&agent, hook::PTRACE_ACCESS_CHECK, |text| {
        if attach {
            text.push(*b"ptrace attach to pid ");
        } else {
            text.push(*b"ptrace read of pid ");
        }
        text.push_u32(target);
        if is_daemon {
            text.push(*b" (the Baton daemon)");
        }
    })
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig,
/// const struct cred *cred)`: no signal from an agent reaches the daemon.
/// Signal 0 delivers nothing and only says the process exists; it passes.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let Some((_, agent)) = caller() else {
        return 0;
    };
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    let daemon = daemon_tgid();
    if daemon == 0 {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    if task_tgid(target) != Some(daemon) {
        return 0;
    }
    deny(&agent, hook::TASK_KILL, |text| {
        text.push(*b"signal ");
        text.push_u32(sig as u32);
        text.push(*b" to pid ");
        text.push_u32(daemon);
        text.push(*b" (the Baton daemon)");
    })
}

/// `file_send_sigiotask(struct task_struct *tsk, struct fown_struct *fown,
/// int sig)`: the signal `F_SETOWN`/`F_SETSIG` asks the kernel to send when
/// a file becomes ready. The daemon never asks for one, so none reaches it,
/// whoever set the owner. This runs wherever the I/O completes (softirq
/// included), so the current task says nothing; there is no record.
#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let daemon = daemon_tgid();
    if daemon == 0 {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    match task_tgid(target) {
        Some(tgid) if tgid == daemon => DENIED,
        _ => 0,
    }
}

/// `task_setrlimit(struct task_struct *p, unsigned int resource,
/// struct rlimit *new_rlim)`: `prlimit` on the daemon.
#[lsm(hook = "task_setrlimit")]
pub fn task_setrlimit(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some((_, agent)) = caller() else {
        return 0;
    };
    let daemon = daemon_tgid();
    if daemon == 0 {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    if task_tgid(target) != Some(daemon) {
        return 0;
    }
    deny(&agent, hook::TASK_SETRLIMIT, |text| {
        text.push(*b"prlimit of pid ");
        text.push_u32(daemon);
        text.push(*b" (the Baton daemon)");
    })
}

/// `kernel_read_file(struct file *file, enum kernel_read_file_id id,
/// bool contents)`: `finit_module`, `kexec_file_load`, IMA policy files.
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let id: i32 = ctx.arg(1);
    kernel_load(id, hook::KERNEL_READ_FILE)
}

/// `kernel_load_data(enum kernel_load_data_id id, bool contents)`:
/// `init_module`, `kexec_load`.
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let id: i32 = ctx.arg(0);
    kernel_load(id, hook::KERNEL_LOAD_DATA)
}

/// Refuses agents the loads that change the running kernel; firmware and
/// certificates load as usual.
#[inline(always)]
fn kernel_load(id: i32, hook: u16) -> i32 {
    if !matches!(
        id,
        LOADING_MODULE | LOADING_KEXEC_IMAGE | LOADING_KEXEC_INITRAMFS | LOADING_POLICY
    ) {
        return 0;
    }
    let Some((_, agent)) = caller() else {
        return 0;
    };
    deny(&agent, hook, |text| match id {
        LOADING_MODULE => text.push(*b"kernel module load"),
        LOADING_POLICY => text.push(*b"security policy load"),
        _ => text.push(*b"kexec image load"),
    })
}

/// `perf_event_open(struct perf_event_attr *attr, int type)`, `(int type)`
/// on newer kernels (6.12 has it): every perf event an agent asks for is refused, whatever
/// the `type` of the check (the open itself, then CPU-wide, kernel and
/// tracepoint access). It reads no argument, as their positions differ.
#[lsm(hook = "perf_event_open")]
pub fn perf_event_open(_ctx: LsmContext) -> i32 {
    let Some((_, agent)) = caller() else {
        return 0;
    };
    deny(&agent, hook::PERF_EVENT_OPEN, |text| {
        text.push(*b"perf_event_open()");
    })
}

// ---------------------------------------------------------------- records

/// Records the denial and returns the LSM's "no".
#[inline(always)]
fn deny(agent: &AgentRecord, hook: u16, describe: impl FnOnce(&mut Text<'_>)) -> i32 {
    let generation = active_generation();
    let agent_mode = agent_policy(generation, agent.agent_id).map_or(mode::ENFORCE, |p| p.mode);
    record(
        agent,
        &Decision {
            hook,
            verdict: Verdict::Denied,
            mode: agent_mode,
            rule_id: 0,
            generation,
        },
        describe,
    );
    DENIED
}

/// Writes one record whose path is the text `describe` builds.
#[inline(always)]
pub(crate) fn record(
    agent: &AgentRecord,
    decision: &Decision,
    describe: impl FnOnce(&mut Text<'_>),
) {
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        count_drop(agent.agent_id);
        return;
    };
    // SAFETY: the reservation is exactly one `FileEvent`; the header, the
    // right sets, the flags and the path up to `path_len` are written below
    // before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::FILE,
        core::mem::size_of::<FileEvent>(),
        agent,
        decision,
    );
    event.rights = 0;
    event.denied_rights = 0;
    event.flags = 0;
    let len = {
        let mut text = Text {
            buf: &mut event.path,
            len: 0,
        };
        describe(&mut text);
        text.len
    };
    event.path_len = len as u32;
    entry.submit(0);
}

/// Keeps every write inside the event's path buffer, for the verifier.
const TEXT_MASK: usize = EVENT_PATH_BYTES - 1;
const _: () = assert!(EVENT_PATH_BYTES.is_power_of_two() && EVENT_PATH_BYTES >= 512);

/// A short description built in an event's path buffer, with stores of
/// immediates only (no string section, no loop).
pub(crate) struct Text<'a> {
    buf: &'a mut [u8; EVENT_PATH_BYTES],
    len: usize,
}

impl Text<'_> {
    /// Appends up to 32 bytes.
    #[inline(always)]
    pub(crate) fn push<const N: usize>(&mut self, bytes: [u8; N]) {
        const { assert!(N <= 32) };
        let at = self.len & 255;
        unroll!(i in [
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
        ] {
            if i < N {
                self.buf[(at + i) & TEXT_MASK] = bytes[i];
            }
        });
        self.len = at + N;
    }

    /// Appends `value` in decimal.
    #[inline(always)]
    #[allow(unused_assignments)]
    pub(crate) fn push_u32(&mut self, value: u32) {
        const POWERS: [u32; 10] = [
            1_000_000_000,
            100_000_000,
            10_000_000,
            1_000_000,
            100_000,
            10_000,
            1_000,
            100,
            10,
            1,
        ];
        let mut started = false;
        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
            let digit = (value / POWERS[i]) % 10;
            if started || digit != 0 || i == 9 {
                started = true;
                self.buf[self.len & TEXT_MASK] = b'0' + digit as u8;
                self.len = (self.len & 255) + 1;
            }
        });
    }
}

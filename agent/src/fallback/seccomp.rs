//! Self-protection for `baton exec` agents without BPF LSM: a seccomp
//! filter and Landlock signal scoping, applied by `baton exec` to itself
//! right before it execs the agent's command, inherited by every
//! descendant and impossible to lift.
//!
//! - seccomp makes the calls that reach into the kernel or into other
//!   processes fail with `EPERM`: `bpf` (detach Baton's programs, edit its
//!   maps), `ptrace`, `process_vm_readv`/`writev` and `pidfd_getfd` (read or
//!   change the daemon's memory and descriptors), `perf_event_open`, and
//!   module and kexec loads (replace the kernel that enforces). This holds
//!   for root agents too. Every system call of a foreign ABI (32-bit x86
//!   through `int 0x80`) kills the process: the filter is written for the
//!   native numbers, and the x32 numbers of the same calls are refused too.
//! - seccomp also makes `socket` and `socketpair` fail with `EPERM` for
//!   every address family the agent's policy does not allow (`AF_VSOCK`,
//!   `AF_PACKET`, ...). It cannot see io_uring's `IORING_OP_SOCKET`
//!   (Linux 5.19), which creates a socket without either call; only BPF LSM
//!   `socket_create` covers that.
//! - Landlock `LANDLOCK_SCOPE_SIGNAL` (ABI 6, Linux 6.12) stops the agent
//!   from signalling any process outside its own Landlock domain, the
//!   daemon included, whatever its user. Older kernels lack it; then only
//!   ordinary permissions stop an agent running as the daemon's user.
//!
//! Where every self-protection LSM hook loads, the kernel programs decide
//! the same things with a finer grain (ptrace inside the agent's own
//! processes stays allowed) and record each denial, and `baton exec`
//! applies neither of these: the daemon's admission reply says which holds.
//! The filter asks the kernel to log what it refuses
//! (`SECCOMP_FILTER_FLAG_LOG`); where the daemon reads the audit log
//! multicast group (Linux 6.15+, see `landlock_log`), each refusal becomes
//! a record with hook `seccomp`. Elsewhere they are not recorded.

use std::{collections::BTreeMap, io};

use agent_common::identity::family_allowed;

use landlock::{
    CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// Landlock ABI that added signal scoping.
pub const SIGNAL_SCOPE_ABI: i64 = 6;

/// Errors applying the fallback.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The filter could not be built for this architecture.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// This architecture is not one the filter knows.
    #[error("no seccomp filter for this architecture: {0}")]
    Arch(String),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(io::Error),
    /// The kernel refused the Landlock signal scope.
    #[error("cannot apply Landlock signal scoping: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

/// The system calls denied, by name, with their numbers on this
/// architecture.
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    vec![
        ("bpf", libc::SYS_bpf),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
    ]
}

/// The x32 ABI shares the x86-64 entry point: its numbers carry this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// x32 numbers of the denied calls that x32 implements under numbers of its
/// own (the others are the x86-64 number with [`X32_SYSCALL_BIT`]).
#[cfg(target_arch = "x86_64")]
const X32_OWN_NUMBERS: [i64; 4] = [
    521, // ptrace
    528, // kexec_load
    539, // process_vm_readv
    540, // process_vm_writev
];

/// x32's `execveat`, which has a number of its own.
#[cfg(target_arch = "x86_64")]
const X32_EXECVEAT: i64 = 545;

/// The rule that matches `socket(AF_NETLINK, _, NETLINK_AUDIT)`.
fn audit_socket_rule() -> Result<SeccompRule, SeccompError> {
    let netlink = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_NETLINK as u64,
    )?;
    let audit = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::NETLINK_AUDIT as u64,
    )?;
    Ok(SeccompRule::new(vec![netlink, audit])?)
}

/// Rules that match a `socket` or `socketpair` call whose family (the
/// first argument) is not in `families`.
///
/// One rule per run of refused families, not one per family: an allowed
/// call passes every rule of its number before the filter lets it
/// through, and a policy allows a handful of the 64 families, so a rule
/// per refused family made every `socket()` of an agent run some 400
/// filter instructions (about 200 ns here). Runs keep it to a few.
fn family_rules(families: u64) -> Result<Vec<SeccompRule>, SeccompError> {
    let on_family = |op, value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value);
    refused_family_runs(families)
        .into_iter()
        .map(|(first, last)| {
            let mut conditions = Vec::with_capacity(2);
            if first > 0 {
                conditions.push(on_family(SeccompCmpOp::Ge, first)?);
            }
            // Families from 64 up (and negative ones, as unsigned) are
            // never allowed, so the last run has no upper end.
            if let Some(last) = last {
                conditions.push(on_family(SeccompCmpOp::Le, last)?);
            }
            if conditions.is_empty() {
                // Nothing is allowed: every call of the number matches.
                conditions.push(on_family(SeccompCmpOp::Ge, 0)?);
            }
            Ok(SeccompRule::new(conditions)?)
        })
        .collect()
}

/// The refused socket families as runs `(first, last)`, `last` being `None`
/// for the run that goes on past 63 to every larger (or negative) value.
fn refused_family_runs(families: u64) -> Vec<(u64, Option<u64>)> {
    let mut runs = Vec::new();
    let mut start = None;
    for family in 0..64u32 {
        match (family_allowed(families, family), start) {
            (false, None) => start = Some(u64::from(family)),
            (true, Some(first)) => {
                runs.push((first, Some(u64::from(family) - 1)));
                start = None;
            }
            _ => {}
        }
    }
    runs.push((start.unwrap_or(64), None));
    runs
}

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
const MFD_NOEXEC_SEAL: u64 = 0x0008;

/// Rules for the programs Landlock's execute right does not see, for agents
/// whose exec rules Landlock enforces: it checks the file an `execve` path
/// names, but a memfd lives on an internal mount Landlock leaves alone, so
/// `memfd_create` + `fexecve` (or an exec through `/proc/self/fd/N`) would
/// run any program. A memfd may still be made when it is sealed against
/// execution (`MFD_NOEXEC_SEAL`), and `execveat` with `AT_EMPTY_PATH` (an
/// exec of an open descriptor, which is what `fexecve` does) is refused.
fn exec_rules(rules: &mut BTreeMap<i64, Vec<SeccompRule>>) -> Result<(), SeccompError> {
    let executable_memfd = || -> Result<SeccompRule, SeccompError> {
        Ok(SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(MFD_NOEXEC_SEAL),
            0,
        )?])?)
    };
    let descriptor_exec = || -> Result<SeccompRule, SeccompError> {
        Ok(SeccompRule::new(vec![SeccompCondition::new(
            4,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::AT_EMPTY_PATH as u64),
            libc::AT_EMPTY_PATH as u64,
        )?])?)
    };
    rules.insert(libc::SYS_memfd_create, vec![executable_memfd()?]);
    rules.insert(libc::SYS_execveat, vec![descriptor_exec()?]);
    #[cfg(target_arch = "x86_64")]
    {
        rules.insert(
            libc::SYS_memfd_create | X32_SYSCALL_BIT,
            vec![executable_memfd()?],
        );
        rules.insert(X32_EXECVEAT | X32_SYSCALL_BIT, vec![descriptor_exec()?]);
    }
    Ok(())
}

/// Self-protection and, when `families` is given, the socket families
/// allowed, and with `exec_by_landlock` the execs Landlock cannot see
/// ([`exec_rules`]): the classic BPF program of the filter.
pub fn filter(families: Option<u64>, exec_by_landlock: bool) -> Result<BpfProgram, SeccompError> {
    build(true, families, exec_by_landlock)
}

/// Only the socket family check (and the exec rules, with
/// `exec_by_landlock`), for agents whose self-protection BPF LSM already
/// holds but whose kernel lacks the `socket_create` program.
pub fn families_filter(
    families: Option<u64>,
    exec_by_landlock: bool,
) -> Result<BpfProgram, SeccompError> {
    build(false, families, exec_by_landlock)
}

fn build(
    self_protection: bool,
    families: Option<u64>,
    exec_by_landlock: bool,
) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_string()))?;
    let mut rules = BTreeMap::new();
    if self_protection {
        for (_, number) in denied_syscalls() {
            // An empty rule list matches every call of that number.
            rules.insert(number, Vec::new());
            #[cfg(target_arch = "x86_64")]
            rules.insert(number | X32_SYSCALL_BIT, Vec::new());
        }
        #[cfg(target_arch = "x86_64")]
        for number in X32_OWN_NUMBERS {
            rules.insert(number | X32_SYSCALL_BIT, Vec::new());
        }
    }
    if let Some(families) = families {
        for number in [libc::SYS_socket, libc::SYS_socketpair] {
            rules.insert(number, family_rules(families)?);
            // x32 shares these numbers; its processes are held the same way.
            #[cfg(target_arch = "x86_64")]
            rules.insert(number | X32_SYSCALL_BIT, family_rules(families)?);
        }
    }
    if exec_by_landlock {
        exec_rules(&mut rules)?;
    }
    if self_protection {
        // The audit netlink socket: a root agent could switch the audit
        // subsystem off or filter Landlock's reports out, and its denials
        // would go unrecorded (`landlock_log`).
        let numbers = [
            libc::SYS_socket,
            #[cfg(target_arch = "x86_64")]
            (libc::SYS_socket | X32_SYSCALL_BIT),
        ];
        for number in numbers {
            rules.entry(number).or_default().push(audit_socket_rule()?);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Whether the calling thread holds `CAP_SYS_ADMIN`: then seccomp and
/// Landlock need no `no_new_privs`, and a `setuid` program the agent runs
/// still gains its privileges (inside the same filter and domain).
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    crate::kernel::process::status(nix::unistd::gettid().as_raw() as u32)
        .is_some_and(|status| status.capeff & (1 << CAP_SYS_ADMIN) != 0)
}

/// Installs `program` on the calling thread (and so on whatever it execs).
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    if !has_cap_sys_admin() {
        // The kernel demands it of unprivileged callers.
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SeccompError::Install(io::Error::last_os_error()));
        }
    }
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| {
            SeccompError::Install(io::Error::new(
                io::ErrorKind::InvalidInput,
                "filter too long",
            ))
        })?,
        // `seccompiler::sock_filter` is `#[repr(C)]` with the kernel's layout.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let install = |flags: libc::c_ulong| {
        // SAFETY: `prog` points into `program`, which outlives the call;
        // the kernel copies the filter.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // Logged, each refusal becomes an audit record the daemon's reader
    // turns into a Baton record (`landlock_log`). Kernels before 4.14 lack
    // the flag: the filter holds the same, unrecorded.
    match install(SECCOMP_FILTER_FLAG_LOG) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => install(0),
        other => other,
    }
    .map_err(SeccompError::Install)
}

/// `SECCOMP_FILTER_FLAG_LOG` (Linux 4.14): have the kernel's audit
/// subsystem report every call the filter refuses.
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;

/// `AUDIT_ARCH_*` of this build's native system call ABI.
#[cfg(target_arch = "x86_64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE_AUDIT_ARCH: u32 = 0;

/// What a record calls a system call `baton exec`'s filter refuses (or
/// kills the caller for), from what the audit subsystem reports of it;
/// `None` for a call the filter lets through, which another seccomp
/// filter (the agent's own sandbox, a container runtime's) must have
/// refused.
pub fn refused_call(syscall: i64, arch: u32, killed: bool) -> Option<String> {
    if arch != NATIVE_AUDIT_ARCH {
        // Every call of a foreign ABI kills; nothing else in the filter
        // does.
        return killed
            .then(|| format!("system call {syscall} of a foreign ABI (audit arch {arch:#x})"));
    }
    #[cfg(target_arch = "x86_64")]
    let native = {
        let number = syscall & !X32_SYSCALL_BIT;
        match X32_OWN_NUMBERS.iter().position(|&own| own == number) {
            Some(at) => [
                libc::SYS_ptrace,
                libc::SYS_kexec_load,
                libc::SYS_process_vm_readv,
                libc::SYS_process_vm_writev,
            ][at],
            None if number == X32_EXECVEAT => libc::SYS_execveat,
            None => number,
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let native = syscall;
    let name = denied_syscalls()
        .into_iter()
        .chain([
            ("socket", libc::SYS_socket),
            ("socketpair", libc::SYS_socketpair),
            ("memfd_create", libc::SYS_memfd_create),
            ("execveat", libc::SYS_execveat),
        ])
        .find(|&(_, number)| number == native)
        .map(|(name, _)| name)?;
    Some(format!("{name}()"))
}

/// Stops the calling thread, and whatever it execs, from signalling
/// processes outside its Landlock domain. Returns whether it was applied:
/// `false` on kernels before Landlock ABI 6.
pub fn scope_signals(landlock_abi: Option<i64>) -> Result<bool, SeccompError> {
    if landlock_abi.is_none_or(|abi| abi < SIGNAL_SCOPE_ABI) {
        return Ok(false);
    }
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(Scope::Signal)?
        .create()?
        .no_new_privs(!has_cap_sys_admin())
        .restrict_self()?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

/// What [`apply`] put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Landlock's ABI on this kernel, if it has Landlock.
    pub landlock_abi: Option<i64>,
    /// Whether signals are scoped.
    pub signals_scoped: bool,
}

impl Applied {
    /// One line for logs and audit records.
    pub fn describe(&self) -> String {
        describe(self.landlock_abi, self.signals_scoped)
    }
}

/// Applies the seccomp filter (with the agent's socket `families`, where
/// nothing else holds them) and, where Landlock has it, signal scoping to
/// the calling thread. Call right before exec: irrevocable.
pub fn apply(families: Option<u64>, exec_by_landlock: bool) -> Result<Applied, SeccompError> {
    let program = filter(families, exec_by_landlock)?;
    let landlock_abi = crate::fallback::landlock::landlock_abi();
    // Landlock first: the filter does not deny its calls, but nothing needs
    // to run under the filter that does not have to.
    let signals_scoped = scope_signals(landlock_abi)?;
    install(&program)?;
    Ok(Applied {
        landlock_abi,
        signals_scoped,
    })
}

/// Applies only the socket family filter and, with `exec_by_landlock`, the
/// exec rules. Call right before exec.
pub fn apply_families(families: Option<u64>, exec_by_landlock: bool) -> Result<(), SeccompError> {
    install(&families_filter(families, exec_by_landlock)?)
}

/// What a `baton exec` agent gets from the fallback on a kernel with this
/// Landlock ABI, for the daemon to log without asking the agent.
pub fn describe_for_kernel(landlock_abi: Option<i64>) -> String {
    describe(
        landlock_abi,
        landlock_abi.is_some_and(|abi| abi >= SIGNAL_SCOPE_ABI),
    )
}

fn describe(landlock_abi: Option<i64>, signals_scoped: bool) -> String {
    let names: Vec<&str> = denied_syscalls().iter().map(|(name, _)| *name).collect();
    let signals = if signals_scoped {
        format!(
            "Landlock (ABI {}) stops signals to processes outside the agent, the daemon included",
            landlock_abi.unwrap_or(0)
        )
    } else {
        match landlock_abi {
            Some(abi) => format!(
                "signals are NOT scoped: Landlock ABI {abi} is older than {SIGNAL_SCOPE_ABI}, so an agent running as the daemon's user can signal it"
            ),
            None => "signals are NOT scoped: this kernel has no Landlock, so an agent running as the daemon's user can signal it".to_string(),
        }
    };
    format!(
        "seccomp denies {} (EPERM, even for root); {signals}",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child that first installs the filter; returns
    /// how the child ended (`Ok(exit code)` or `Err(signal)`).
    fn in_filtered_child(body: fn() -> i32) -> Result<i32, i32> {
        in_child_with(filter(None, false).unwrap(), body)
    }

    fn in_child_with(program: BpfProgram, body: fn() -> i32) -> Result<i32, i32> {
        // SAFETY: the child only makes raw system calls and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = match install(&program) {
                    Ok(()) => body(),
                    Err(_) => 100,
                };
                // SAFETY: leaves the child without running the parent's
                // destructors or test harness.
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFEXITED(status) {
                    Ok(libc::WEXITSTATUS(status))
                } else {
                    Err(libc::WTERMSIG(status))
                }
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    #[test]
    fn the_filter_lists_every_call_and_compiles() {
        let names: Vec<&str> = denied_syscalls().iter().map(|(n, _)| *n).collect();
        for name in [
            "bpf",
            "ptrace",
            "process_vm_writev",
            "kexec_load",
            "init_module",
            "finit_module",
            "perf_event_open",
        ] {
            assert!(names.contains(&name), "{name} is denied");
        }
        assert!(!filter(None, false).unwrap().is_empty());
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_others_work() {
        let outcome = in_filtered_child(|| {
            let mut attr = [0u8; 128];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[4] = 4;
            attr[8] = 4;
            attr[12] = 1;
            // SAFETY: raw system calls with valid or null pointers.
            let checks = unsafe {
                [
                    libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()),
                    libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0),
                    libc::syscall(libc::SYS_process_vm_writev, 1, 0, 0, 0, 0, 0),
                    libc::syscall(libc::SYS_process_vm_readv, 1, 0, 0, 0, 0, 0),
                    libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0),
                    libc::syscall(libc::SYS_finit_module, -1, 0, 0),
                    libc::syscall(libc::SYS_init_module, 0, 0, 0),
                    libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0),
                ]
            };
            for (i, rc) in checks.into_iter().enumerate() {
                if errno_of(rc) != libc::EPERM {
                    return 10 + i as i32;
                }
            }
            // Everything else goes through.
            // SAFETY: plain system calls.
            if unsafe { libc::getpid() } <= 0 || unsafe { libc::kill(libc::getpid(), 0) } != 0 {
                return 2;
            }
            0
        });
        assert_eq!(
            outcome,
            Ok(0),
            "exit 10+i: the i-th denied call was not EPERM"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_are_denied_too() {
        let outcome = in_filtered_child(|| {
            for number in [libc::SYS_bpf | X32_SYSCALL_BIT, 521 | X32_SYSCALL_BIT] {
                let rc: i64;
                // SAFETY: a system call with zero arguments; the filter
                // answers before the kernel looks at them.
                unsafe {
                    std::arch::asm!(
                        "syscall",
                        inlateout("rax") number => rc,
                        in("rdi") 0, in("rsi") 0, in("rdx") 0,
                        lateout("rcx") _, lateout("r11") _,
                    );
                }
                if rc != -i64::from(libc::EPERM) {
                    return 20;
                }
            }
            0
        });
        assert_eq!(outcome, Ok(0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_32_bit_entry_point_is_closed() {
        let outcome = in_filtered_child(|| {
            // getpid (20) through the i386 entry point.
            let rc: i32;
            // SAFETY: `int 0x80` with a call that takes no arguments.
            unsafe {
                std::arch::asm!("int 0x80", inlateout("eax") 20 => rc);
            }
            rc
        });
        // SIGSEGV where the kernel has no 32-bit emulation at all.
        assert!(
            matches!(outcome, Err(libc::SIGSYS | libc::SIGSEGV)),
            "a foreign ABI kills the process: {outcome:?}"
        );
    }

    #[test]
    fn socket_families_outside_the_set_fail_with_eperm() {
        use agent_common::identity::DEFAULT_FAMILIES;
        fn try_socket(family: i32, kind: i32) -> i32 {
            // SAFETY: plain socket(2); the descriptor is closed at once.
            let fd = unsafe { libc::socket(family, kind, 0) };
            if fd >= 0 {
                // SAFETY: our own descriptor.
                unsafe { libc::close(fd) };
                return 0;
            }
            io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
        fn body() -> i32 {
            let mut pair = [0; 2];
            // SAFETY: socketpair(2) into a local array.
            let pair_rc = unsafe {
                libc::socketpair(libc::AF_VSOCK, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
            };
            let pair_errno = io::Error::last_os_error().raw_os_error().unwrap_or(-1);
            let checks = [
                try_socket(libc::AF_VSOCK, libc::SOCK_STREAM) == libc::EPERM,
                try_socket(libc::AF_PACKET, libc::SOCK_DGRAM) == libc::EPERM,
                try_socket(1000, libc::SOCK_STREAM) == libc::EPERM,
                try_socket(-1, libc::SOCK_STREAM) == libc::EPERM,
                pair_rc == -1 && pair_errno == libc::EPERM,
                try_socket(libc::AF_UNIX, libc::SOCK_STREAM) == 0,
                try_socket(libc::AF_INET, libc::SOCK_STREAM) == 0,
                try_socket(libc::AF_NETLINK, libc::SOCK_RAW) == 0,
                try_socket(libc::AF_INET6, libc::SOCK_DGRAM) == 0,
            ];
            checks
                .iter()
                .position(|ok| !ok)
                .map_or(0, |i| 30 + i as i32)
        }
        assert_eq!(
            in_child_with(
                families_filter(Some(DEFAULT_FAMILIES), false).unwrap(),
                body
            ),
            Ok(0),
            "exit 30+i: the i-th check failed"
        );
        // vsock allowed: the first check now fails, so the test can fail.
        let with_vsock = DEFAULT_FAMILIES | 1 << libc::AF_VSOCK;
        assert_eq!(
            in_child_with(families_filter(Some(with_vsock), false).unwrap(), body),
            Ok(30)
        );
    }

    #[test]
    fn refused_families_are_runs_that_cover_every_other_value() {
        let allowed = (1u64 << 1) | (1 << 2) | (1 << 10) | (1 << 16);
        assert_eq!(
            refused_family_runs(allowed),
            vec![(0, Some(0)), (3, Some(9)), (11, Some(15)), (17, None)]
        );
        assert_eq!(refused_family_runs(0), vec![(0, None)]);
        assert_eq!(
            refused_family_runs(1 << 63),
            vec![(0, Some(62)), (64, None)]
        );
        // Every family is refused exactly when no run leaves it out.
        for families in [allowed, 0, 1 << 63, u64::MAX, 0x5555_5555_5555_5555] {
            let runs = refused_family_runs(families);
            for family in 0..200u64 {
                let refused = runs.iter().any(|&(first, last)| {
                    family >= first && last.is_none_or(|last| family <= last)
                });
                assert_eq!(
                    refused,
                    !family_allowed(families, family as u32),
                    "{families:#x} {family}"
                );
            }
        }
    }

    #[test]
    fn descriptions_say_what_holds() {
        assert!(describe_for_kernel(Some(7)).contains("Landlock (ABI 7)"));
        assert!(describe_for_kernel(Some(5)).contains("NOT scoped"));
        assert!(describe_for_kernel(None).contains("no Landlock"));
        assert!(describe_for_kernel(Some(7)).starts_with("seccomp denies bpf, ptrace"));
    }
}

//! Every kernel program Baton ships, in one table.
//!
//! The loader attaches from it, the audit decoder names hooks from it,
//! `baton probe` and the self-protection lists read it, and a unit test in
//! the daemon crate parses the compiled eBPF object and fails when a
//! program is in one and not the other. Adding a hook means a program in
//! `agent-ebpf`, a hook id in [`crate::event::hook`] if it writes records,
//! and a row here.

use crate::event::hook;

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `tp_btf` on the scheduler tracepoint named [`Program::target`].
    Tracepoint,
    /// A `cgroup/<name>` socket-address hook on the cgroup v2 root.
    SockAddr,
    /// `cgroup/sock_create` on the cgroup v2 root.
    SockCreate,
    /// `cgroup_skb/egress` on the cgroup v2 root.
    SkbEgress,
    /// `cgroup/setsockopt` on the cgroup v2 root.
    Sockopt,
    /// The BPF LSM hook named [`Program::target`].
    Lsm,
    /// `tp_btf` on [`Program::target`], attached only where BPF LSM is
    /// refused, to detect what nothing else can deny.
    Detect,
}

/// What a program is for, which decides when the loader attaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Which process belongs to which agent.
    Identity,
    /// Egress at the socket-address hooks.
    Egress,
    /// Socket kinds, the packet backstop and rerouting options.
    Sockets,
    /// `file_open`: the program whose load proves BPF LSM works.
    FileOpen,
    /// File and exec rules beyond `file_open`.
    Files,
    /// Namespace and mount operations (`process.namespaces`).
    Namespaces,
    /// Keeping agents away from the daemon and the kernel's state.
    SelfProtection,
    /// BPF LSM `socket_create`: socket families.
    Families,
    /// Detection without BPF LSM.
    Detection,
    /// Loaded by `baton probe` to learn whether BPF LSM loads; never
    /// attached by the daemon.
    Probe,
}

/// One program of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// Its name in the object, and of its pin under `links/`.
    pub name: &'static str,
    /// The tracepoint or LSM hook it attaches to (for socket hooks, the
    /// program's own name).
    pub target: &'static str,
    /// How it is attached.
    pub attach: Attach,
    /// What it is for.
    pub role: Role,
    /// The hook id of the records it writes under its own name, if any
    /// ([`crate::event::hook`]).
    pub hook: Option<u16>,
    /// For LSM hooks: the numbers of context arguments the program may
    /// find (the hook's parameters plus the previous verdict). A kernel
    /// whose hook takes another number does not get the program. Empty:
    /// not checked.
    pub lsm_args: &'static [usize],
}

const fn program(
    name: &'static str,
    attach: Attach,
    role: Role,
    hook: Option<u16>,
    lsm_args: &'static [usize],
) -> Program {
    Program {
        name,
        target: name,
        attach,
        role,
        hook,
        lsm_args,
    }
}

const fn lsm(name: &'static str, role: Role, hook: Option<u16>, args: &'static [usize]) -> Program {
    program(name, Attach::Lsm, role, hook, args)
}

/// Every program, in the order the loader attaches each group.
pub const PROGRAMS: [Program; 51] = [
    program(
        "sched_process_fork",
        Attach::Tracepoint,
        Role::Identity,
        None,
        &[],
    ),
    program(
        "sched_process_exec",
        Attach::Tracepoint,
        Role::Identity,
        Some(hook::EXEC_ADMIT),
        &[],
    ),
    program(
        "sched_process_exit",
        Attach::Tracepoint,
        Role::Identity,
        None,
        &[],
    ),
    program(
        "connect4",
        Attach::SockAddr,
        Role::Egress,
        Some(hook::CONNECT4),
        &[],
    ),
    program(
        "connect6",
        Attach::SockAddr,
        Role::Egress,
        Some(hook::CONNECT6),
        &[],
    ),
    program(
        "sendmsg4",
        Attach::SockAddr,
        Role::Egress,
        Some(hook::SENDMSG4),
        &[],
    ),
    program(
        "sendmsg6",
        Attach::SockAddr,
        Role::Egress,
        Some(hook::SENDMSG6),
        &[],
    ),
    program("recvmsg4", Attach::SockAddr, Role::Egress, None, &[]),
    program("recvmsg6", Attach::SockAddr, Role::Egress, None, &[]),
    program("getpeername4", Attach::SockAddr, Role::Egress, None, &[]),
    program("getpeername6", Attach::SockAddr, Role::Egress, None, &[]),
    program(
        "sock_create",
        Attach::SockCreate,
        Role::Sockets,
        Some(hook::SOCK_CREATE),
        &[],
    ),
    program(
        "skb_egress",
        Attach::SkbEgress,
        Role::Sockets,
        Some(hook::SKB_EGRESS),
        &[],
    ),
    program(
        "setsockopt",
        Attach::Sockopt,
        Role::Sockets,
        Some(hook::SETSOCKOPT),
        &[],
    ),
    lsm("file_open", Role::FileOpen, Some(hook::FILE_OPEN), &[]),
    lsm(
        "bprm_check_security",
        Role::Files,
        Some(hook::BPRM_CHECK),
        &[2],
    ),
    lsm("mmap_file", Role::Files, Some(hook::MMAP_FILE), &[5]),
    lsm("path_mknod", Role::Files, Some(hook::PATH_MKNOD), &[5]),
    lsm("path_mkdir", Role::Files, Some(hook::PATH_MKDIR), &[4]),
    lsm("path_symlink", Role::Files, Some(hook::PATH_SYMLINK), &[4]),
    lsm("path_link", Role::Files, Some(hook::PATH_LINK), &[4]),
    lsm("path_unlink", Role::Files, Some(hook::PATH_UNLINK), &[3]),
    lsm("path_rmdir", Role::Files, Some(hook::PATH_RMDIR), &[3]),
    lsm("path_rename", Role::Files, Some(hook::PATH_RENAME), &[6]),
    lsm(
        "path_truncate",
        Role::Files,
        Some(hook::PATH_TRUNCATE),
        &[2],
    ),
    lsm("path_chmod", Role::Files, Some(hook::PATH_CHMOD), &[3]),
    lsm("path_chown", Role::Files, Some(hook::PATH_CHOWN), &[4]),
    // 6.2+; older kernels truncate through path_truncate.
    lsm(
        "file_truncate",
        Role::Files,
        Some(hook::FILE_TRUNCATE),
        &[2],
    ),
    lsm(
        "file_mprotect",
        Role::Files,
        Some(hook::FILE_MPROTECT),
        &[4],
    ),
    lsm("file_receive", Role::Files, Some(hook::FILE_RECEIVE), &[2]),
    // The first parameter changed type (user namespace, then idmap) but
    // not position.
    lsm(
        "inode_setxattr",
        Role::Files,
        Some(hook::INODE_SETXATTR),
        &[7],
    ),
    lsm(
        "inode_removexattr",
        Role::Files,
        Some(hook::INODE_REMOVEXATTR),
        &[4],
    ),
    // 6.15 added `bool kernel`.
    lsm("bpf", Role::SelfProtection, Some(hook::BPF), &[4, 5]),
    lsm(
        "ptrace_access_check",
        Role::SelfProtection,
        Some(hook::PTRACE_ACCESS_CHECK),
        &[3],
    ),
    lsm(
        "task_kill",
        Role::SelfProtection,
        Some(hook::TASK_KILL),
        &[5],
    ),
    // Records as `task_kill`: both are a signal to the daemon.
    lsm("file_send_sigiotask", Role::SelfProtection, None, &[4]),
    lsm(
        "task_setrlimit",
        Role::SelfProtection,
        Some(hook::TASK_SETRLIMIT),
        &[4],
    ),
    lsm(
        "kernel_read_file",
        Role::SelfProtection,
        Some(hook::KERNEL_READ_FILE),
        &[4],
    ),
    lsm(
        "kernel_load_data",
        Role::SelfProtection,
        Some(hook::KERNEL_LOAD_DATA),
        &[3],
    ),
    // Newer kernels (6.12 has it) dropped the `struct perf_event_attr *`.
    lsm(
        "perf_event_open",
        Role::SelfProtection,
        Some(hook::PERF_EVENT_OPEN),
        &[3, 2],
    ),
    // A kernel without one of these (userns_create is 6.1+) skips it, and
    // the daemon and `baton probe` say so.
    lsm(
        "userns_create",
        Role::Namespaces,
        Some(hook::USERNS_CREATE),
        &[2],
    ),
    lsm("sb_mount", Role::Namespaces, Some(hook::SB_MOUNT), &[6]),
    lsm(
        "sb_kern_mount",
        Role::Namespaces,
        Some(hook::SB_KERN_MOUNT),
        &[2],
    ),
    lsm("move_mount", Role::Namespaces, Some(hook::MOVE_MOUNT), &[3]),
    lsm(
        "path_chroot",
        Role::Namespaces,
        Some(hook::PATH_CHROOT),
        &[2],
    ),
    lsm(
        "sb_pivotroot",
        Role::Namespaces,
        Some(hook::SB_PIVOTROOT),
        &[3],
    ),
    lsm(
        "socket_create",
        Role::Families,
        Some(hook::SOCKET_CREATE),
        &[],
    ),
    Program {
        name: "detect_sys_enter",
        target: "sys_enter",
        attach: Attach::Detect,
        role: Role::Detection,
        hook: None,
        lsm_args: &[],
    },
    Program {
        name: "detect_sys_exit",
        target: "sys_exit",
        attach: Attach::Detect,
        role: Role::Detection,
        hook: None,
        lsm_args: &[],
    },
    Program {
        name: "detect_exec",
        target: "sched_process_exec",
        attach: Attach::Detect,
        role: Role::Detection,
        hook: None,
        lsm_args: &[],
    },
    Program {
        name: "probe_lsm",
        target: "file_open",
        attach: Attach::Lsm,
        role: Role::Probe,
        hook: None,
        lsm_args: &[],
    },
];

/// The programs with `role`, in table order.
pub fn with_role(role: Role) -> impl Iterator<Item = &'static Program> {
    PROGRAMS.iter().filter(move |p| p.role == role)
}

/// The program named `name`.
pub fn by_name(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// The audit name of hook id `id` when a program writes it under its own
/// name.
pub fn hook_name(id: u16) -> Option<&'static str> {
    PROGRAMS.iter().find(|p| p.hook == Some(id)).map(|p| p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hook_ids_are_unique() {
        for (i, a) in PROGRAMS.iter().enumerate() {
            for b in &PROGRAMS[i + 1..] {
                assert_ne!(a.name, b.name);
                if a.hook.is_some() {
                    assert_ne!(a.hook, b.hook, "{} and {}", a.name, b.name);
                }
            }
        }
    }
}

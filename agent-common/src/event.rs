//! Events the kernel sends to the daemon through the ring buffer.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which body
//! follows and `size` how many bytes the whole record has, so a reader can
//! skip kinds it does not know. Bump [`EVENT_VERSION`] on any layout change.

use core::mem::size_of;

/// Layout version of the records below.
pub const EVENT_VERSION: u16 = 1;

/// Record kinds. Stored in [`EventHeader::kind`].
pub mod kind {
    /// A network connect or send: [`super::ConnectEvent`].
    pub const CONNECT: u16 = 1;
    /// A file access: [`super::FileEvent`].
    pub const FILE: u16 = 2;
    /// An agent sent DNS from a network namespace that has no proxy socket
    /// yet: [`super::NetnsEvent`]. The query was denied; the daemon opens a
    /// socket there so the resolver's next try succeeds.
    pub const NETNS_PROXY_NEEDED: u16 = 3;
    /// An agent needed a socket in a cgroup the packet backstop does not
    /// cover: [`super::CgroupEvent`], on the same ring as
    /// [`NETNS_PROXY_NEEDED`]. The socket was refused; the daemon covers
    /// the host so tries after that succeed.
    pub const BACKSTOP_NEEDED: u16 = 4;
}

/// The hook that decided. Stored in [`EventHeader::hook`].
pub mod hook {
    /// `cgroup/connect4`.
    pub const CONNECT4: u16 = 1;
    /// `cgroup/connect6`.
    pub const CONNECT6: u16 = 2;
    /// `cgroup/sendmsg4`.
    pub const SENDMSG4: u16 = 3;
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: u16 = 4;
    /// `cgroup/sock_create`.
    pub const SOCK_CREATE: u16 = 5;
    /// `tp_btf/sched_process_exec` (admission of a selected executable).
    pub const EXEC_ADMIT: u16 = 6;
    /// `cgroup_skb/egress`: the packet-level backstop judged a packet of
    /// an agent socket by the destination it carries.
    pub const SKB_EGRESS: u16 = 7;
    /// `cgroup/setsockopt`: an agent set a socket option that reroutes
    /// packets (IPv4 source routes, IPv6 routing headers).
    pub const SETSOCKOPT: u16 = 8;
    /// LSM `file_open`.
    pub const FILE_OPEN: u16 = 16;
    /// LSM `bprm_check_security`.
    pub const BPRM_CHECK: u16 = 17;
    /// LSM `mmap_file`.
    pub const MMAP_FILE: u16 = 18;
    /// LSM `socket_create`.
    pub const SOCKET_CREATE: u16 = 19;
    /// LSM `path_mknod` (file creation).
    pub const PATH_MKNOD: u16 = 20;
    /// LSM `path_mkdir`.
    pub const PATH_MKDIR: u16 = 21;
    /// LSM `path_symlink`.
    pub const PATH_SYMLINK: u16 = 22;
    /// LSM `path_link`.
    pub const PATH_LINK: u16 = 23;
    /// LSM `path_unlink`.
    pub const PATH_UNLINK: u16 = 24;
    /// LSM `path_rmdir`.
    pub const PATH_RMDIR: u16 = 25;
    /// LSM `path_rename`.
    pub const PATH_RENAME: u16 = 26;
    /// LSM `path_truncate`.
    pub const PATH_TRUNCATE: u16 = 27;
    /// LSM `path_chmod`.
    pub const PATH_CHMOD: u16 = 28;
    /// LSM `userns_create` (6.1): an agent creating a user namespace.
    pub const USERNS_CREATE: u16 = 29;
    /// LSM `sb_mount`: `mount(2)`, bind, move, remount and propagation
    /// changes included.
    pub const SB_MOUNT: u16 = 30;
    /// LSM `move_mount` (5.2): attaching or moving a mount with the new
    /// mount API.
    pub const MOVE_MOUNT: u16 = 31;
    /// LSM `bpf`: an agent's `bpf()` call (self-protection).
    pub const BPF: u16 = 32;
    /// LSM `ptrace_access_check`: an agent reaching into another process.
    pub const PTRACE_ACCESS_CHECK: u16 = 33;
    /// LSM `task_kill`: an agent signalling the daemon.
    pub const TASK_KILL: u16 = 34;
    /// LSM `task_setrlimit`: an agent changing the daemon's limits.
    pub const TASK_SETRLIMIT: u16 = 35;
    /// LSM `kernel_read_file`: an agent loading a module or kexec image from a file.
    pub const KERNEL_READ_FILE: u16 = 36;
    /// LSM `kernel_load_data`: an agent loading a module or kexec image from memory.
    pub const KERNEL_LOAD_DATA: u16 = 37;
    /// LSM `perf_event_open`: an agent opening a perf event.
    pub const PERF_EVENT_OPEN: u16 = 38;
    /// LSM `sb_kern_mount`: a new file system instance (`mount(2)` of a
    /// file system, or `fsconfig(FSCONFIG_CMD_CREATE)`).
    pub const SB_KERN_MOUNT: u16 = 39;
    /// LSM `path_chroot`.
    pub const PATH_CHROOT: u16 = 40;
    /// LSM `sb_pivotroot`.
    pub const SB_PIVOTROOT: u16 = 41;
    /// LSM `file_truncate` (6.2): truncation through an open file,
    /// `open(O_TRUNC)` included.
    pub const FILE_TRUNCATE: u16 = 42;
    /// LSM `path_chown`.
    pub const PATH_CHOWN: u16 = 43;
    /// LSM `inode_setxattr`: setting an extended attribute.
    pub const INODE_SETXATTR: u16 = 44;
    /// LSM `inode_removexattr`: removing an extended attribute.
    pub const INODE_REMOVEXATTR: u16 = 45;
    /// LSM `file_mprotect`: making a file mapping executable.
    pub const FILE_MPROTECT: u16 = 46;
    /// LSM `file_receive`: a descriptor received (`SCM_RIGHTS`,
    /// `pidfd_getfd`).
    pub const FILE_RECEIVE: u16 = 47;
    /// Not a kernel program: the daemon's fanotify listener answering a
    /// `FAN_OPEN_PERM` event (where BPF LSM is unavailable).
    pub const FANOTIFY_OPEN: u16 = 48;
    /// The daemon's fanotify listener answering a `FAN_OPEN_EXEC_PERM` event.
    pub const FANOTIFY_OPEN_EXEC: u16 = 49;
    /// Not a kernel program: a Landlock denial of a `baton exec` agent,
    /// as Landlock reported it through the audit subsystem (Linux 6.15+).
    pub const LANDLOCK: u16 = 50;
    /// Not a kernel program: a call the seccomp filter of `baton exec`
    /// refused an agent, as the audit subsystem reported it.
    pub const SECCOMP: u16 = 51;
    /// Detection: an open, seen at `tp_btf/sys_exit` once it succeeded.
    pub const DETECT_OPEN: u16 = 64;
    /// Detection: an exec, at `tp_btf/sched_process_exec`.
    pub const DETECT_EXEC: u16 = 65;
    /// Detection: `mmap` with `PROT_EXEC` of a file, at `tp_btf/sys_enter`.
    pub const DETECT_MMAP: u16 = 66;
    /// Detection: `unlink`, `unlinkat` (without `AT_REMOVEDIR`).
    pub const DETECT_UNLINK: u16 = 67;
    /// Detection: `rmdir`, `unlinkat(AT_REMOVEDIR)`.
    pub const DETECT_RMDIR: u16 = 68;
    /// Detection: `rename`, `renameat`, `renameat2`.
    pub const DETECT_RENAME: u16 = 69;
    /// Detection: `mkdir`, `mkdirat`.
    pub const DETECT_MKDIR: u16 = 70;
    /// Detection: `mknod`, `mknodat`.
    pub const DETECT_MKNOD: u16 = 71;
    /// Detection: `link`, `linkat`.
    pub const DETECT_LINK: u16 = 72;
    /// Detection: `symlink`, `symlinkat`.
    pub const DETECT_SYMLINK: u16 = 73;
    /// Detection: `chmod`, `fchmod`, `fchmodat`, `fchmodat2`.
    pub const DETECT_CHMOD: u16 = 74;
    /// Detection: `truncate`, `ftruncate`.
    pub const DETECT_TRUNCATE: u16 = 75;
}

/// Bytes of the process name carried in every event.
pub const COMM_BYTES: usize = 16;

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EVENT_VERSION`].
    pub version: u16,
    /// One of [`kind`].
    pub kind: u16,
    /// Size of the whole record in bytes.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub time_boot_ns: u64,
    /// cgroup v2 id of the process.
    pub cgroup_id: u64,
    /// Agent id.
    pub agent_id: u32,
    /// Thread id (kernel `pid`).
    pub pid: u32,
    /// Process id (kernel `tgid`).
    pub tgid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// tgid of the agent's root process.
    pub root_tgid: u32,
    /// One of [`hook`].
    pub hook: u16,
    /// A [`crate::verdict::Verdict`] as `u8`.
    pub verdict: u8,
    /// The agent's [`crate::verdict::mode`].
    pub mode: u8,
    /// Id of the deciding rule (0 when a default decided without a rule).
    pub rule_id: u32,
    /// Policy generation the decision was made under.
    pub generation: u32,
    /// tgid of the process's parent (`real_parent`) at the decision; 0 when
    /// it could not be read. Carried so the ancestor chain can be walked
    /// from the parent even when the process exits before the daemon
    /// looks it up in procfs.
    pub ppid: u32,
    /// `comm` of the thread, NUL-padded.
    pub comm: [u8; COMM_BYTES],
}
const _: () = assert!(size_of::<EventHeader>() == 80);

/// A connect or send decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// Common header; `kind` is [`kind::CONNECT`].
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6` as the caller used it.
    pub family: u16,
    /// Destination port, host order.
    pub port: u16,
    /// `IPPROTO_*` of the socket.
    pub protocol: u8,
    /// `SOCK_*` type of the socket.
    pub sock_type: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Destination, IPv6 or IPv4-mapped, network order.
    pub addr: [u8; 16],
    /// The domain rule of the learned-address row that matched this
    /// destination (address, port and protocol, unexpired), 0 if none:
    /// a record names the domain only when the agent's connect used what
    /// the DNS proxy learned, not merely because the address was learned
    /// once.
    pub learned_rule: u32,
    /// Explicit padding.
    pub _pad2: u32,
}
const _: () = assert!(size_of::<ConnectEvent>() == 80 + 32);

/// A DNS query from a network namespace without a proxy socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEvent {
    /// Common header; `kind` is [`kind::NETNS_PROXY_NEEDED`].
    pub header: EventHeader,
    /// The namespace's cookie.
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<NetnsEvent>() == 80 + 8);

/// A socket refused because the backstop did not cover its cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEvent {
    /// Common header; `kind` is [`kind::BACKSTOP_NEEDED`].
    pub header: EventHeader,
    /// cgroup v2 id of the process that asked (0 for a socket it did not
    /// create, whose cgroup the program cannot see).
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<CgroupEvent>() == 80 + 8);

/// Path bytes carried in a file event.
pub const EVENT_PATH_BYTES: usize = 512;

/// Bits of [`FileEvent::flags`].
pub mod file_flags {
    /// The path was longer than [`super::EVENT_PATH_BYTES`] and is cut.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    /// The path could not be resolved at all.
    pub const PATH_UNRESOLVED: u32 = 1 << 1;
    /// The file has no name on disk (memfd, deleted file).
    pub const ANONYMOUS: u32 = 1 << 2;
    /// The path is a canary.
    pub const CANARY: u32 = 1 << 3;
    /// The process was killed (`SIGKILL`) at this call (detection with
    /// `onDetect: kill`).
    pub const KILLED: u32 = 1 << 4;
    /// The rule was found by the object it names (the inode of a rule path
    /// that existed at load, or a directory above the file), whatever name
    /// the access used.
    pub const BY_OBJECT: u32 = 1 << 5;
    /// The file was reached through a file handle whose parent directories
    /// the kernel does not know (`open_by_handle_at`): denied, since no
    /// rule above it can be checked.
    pub const DISCONNECTED: u32 = 1 << 6;
    /// Landlock denied an access the policy allows: its translation of the
    /// policy takes more than the policy (the `landlock_gaps` of `baton
    /// status`), so no rule decided.
    pub const BEYOND_POLICY: u32 = 1 << 7;
}

/// A file access decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// Common header; `kind` is [`kind::FILE`].
    pub header: EventHeader,
    /// Right set requested (bits of [`crate::files::right`]).
    pub rights: u32,
    /// Right set that was denied.
    pub denied_rights: u32,
    /// Bit set of [`file_flags`].
    pub flags: u32,
    /// Length of the path in `path`, without the NUL.
    pub path_len: u32,
    /// The resolved absolute path.
    pub path: [u8; EVENT_PATH_BYTES],
}
const _: () = assert!(size_of::<FileEvent>() == 80 + 16 + EVENT_PATH_BYTES);

impl Default for FileEvent {
    fn default() -> Self {
        Self {
            header: EventHeader::default(),
            rights: 0,
            denied_rights: 0,
            flags: 0,
            path_len: 0,
            path: [0; EVENT_PATH_BYTES],
        }
    }
}

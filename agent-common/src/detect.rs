//! Detection of file and exec rule violations where nothing can deny them.
//!
//! Where BPF LSM is refused, trampoline programs (`fentry`) usually are too,
//! but BTF tracepoints still load. The detection programs sit on the
//! `raw_syscalls` tracepoints (`sys_enter`, `sys_exit`) and on
//! `sched_process_exec`; they decide with the same rules as the LSM
//! programs, record what a rule denies with the verdict `detected`, and may
//! kill the caller. They change no syscall's outcome.
//!
//! Syscall arguments come from the tracepoint's `struct pt_regs`, whose
//! member offsets are read from BTF like every other offset; syscall
//! numbers are per architecture, and only x86_64's are listed here, so the
//! daemon attaches the detection programs only there.

use core::mem::size_of;

/// Offsets (in bytes) the detection programs read besides
/// [`crate::offsets::KernelOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectOffsets {
    /// `struct pt_regs.di` (first syscall argument on x86_64).
    pub regs_arg0: u32,
    /// `struct pt_regs.si` (second argument).
    pub regs_arg1: u32,
    /// `struct pt_regs.dx` (third argument).
    pub regs_arg2: u32,
    /// `struct pt_regs.r10` (fourth argument).
    pub regs_arg3: u32,
    /// `struct pt_regs.r8` (fifth argument).
    pub regs_arg4: u32,
    /// `struct pt_regs.orig_ax` (the syscall number, at `sys_exit`).
    pub regs_nr: u32,
    /// `struct task_struct.fs`.
    pub task_fs: u32,
    /// `struct fs_struct.pwd` (a `struct path`).
    pub fs_pwd: u32,
    /// `struct task_struct.files`.
    pub task_files: u32,
    /// `struct files_struct.fdt`.
    pub files_fdt: u32,
    /// `struct fdtable.fd`.
    pub fdtable_fd: u32,
    /// `struct fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// Non-zero once the daemon has filled the offsets in.
    pub resolved: u32,
}
const _: () = assert!(size_of::<DetectOffsets>() == 52);

/// Name of the global holding [`DetectOffsets`] in the eBPF object.
pub const DETECT_OFFSETS_GLOBAL: &str = "DETECT_OFFSETS";

/// x86_64 syscall numbers the detection programs look at.
pub mod syscall {
    #![allow(missing_docs)]
    pub const OPEN: u64 = 2;
    pub const MMAP: u64 = 9;
    pub const TRUNCATE: u64 = 76;
    pub const FTRUNCATE: u64 = 77;
    pub const RENAME: u64 = 82;
    pub const MKDIR: u64 = 83;
    pub const RMDIR: u64 = 84;
    pub const CREAT: u64 = 85;
    pub const LINK: u64 = 86;
    pub const UNLINK: u64 = 87;
    pub const SYMLINK: u64 = 88;
    pub const CHMOD: u64 = 90;
    pub const FCHMOD: u64 = 91;
    pub const MKNOD: u64 = 133;
    pub const OPENAT: u64 = 257;
    pub const MKDIRAT: u64 = 258;
    pub const MKNODAT: u64 = 259;
    pub const UNLINKAT: u64 = 263;
    pub const RENAMEAT: u64 = 264;
    pub const LINKAT: u64 = 265;
    pub const SYMLINKAT: u64 = 266;
    pub const FCHMODAT: u64 = 268;
    pub const RENAMEAT2: u64 = 316;
    pub const OPENAT2: u64 = 437;
    pub const FCHMODAT2: u64 = 452;
}

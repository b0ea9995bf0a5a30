//! Kernel struct offsets, resolved from the running kernel's BTF at load time.
//!
//! Rust eBPF has no CO-RE relocations, and these offsets really differ between
//! kernels (`file.f_path` is at byte 16 on 6.1 and 64 on 6.12), so the daemon
//! reads them from `/sys/kernel/btf/vmlinux` and hands them to the programs as
//! one read-only global. The verifier sees them as constants.

use core::mem::size_of;

/// Offsets (in bytes) of the kernel struct members the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct file.f_path`.
    pub file_f_path: u32,
    /// `struct file.f_mode`.
    pub file_f_mode: u32,
    /// `struct task_struct.pid`.
    pub task_pid: u32,
    /// `struct task_struct.tgid`.
    pub task_tgid: u32,
    /// `struct task_struct.signal`.
    pub task_signal: u32,
    /// `struct signal_struct.live`.
    pub signal_live: u32,
    /// `struct linux_binprm.file`.
    pub binprm_file: u32,
    /// `struct file.f_inode`.
    pub file_f_inode: u32,
    /// `struct inode.i_ino`.
    pub inode_i_ino: u32,
    /// `struct inode.i_sb`.
    pub inode_i_sb: u32,
    /// `struct super_block.s_dev`.
    pub sb_s_dev: u32,
    /// `struct inode.i_nlink` (through its anonymous union).
    pub inode_i_nlink: u32,
    /// `struct path.mnt`.
    pub path_mnt: u32,
    /// `struct path.dentry`.
    pub path_dentry: u32,
    /// `struct dentry.d_parent`.
    pub dentry_d_parent: u32,
    /// `struct dentry.d_name`.
    pub dentry_d_name: u32,
    /// `struct qstr.len` (through its anonymous union).
    pub qstr_len: u32,
    /// `struct qstr.name`.
    pub qstr_name: u32,
    /// `struct mount.mnt` (the `vfsmount` inside a `mount`).
    pub mount_mnt: u32,
    /// `struct mount.mnt_parent`.
    pub mount_mnt_parent: u32,
    /// `struct mount.mnt_mountpoint`.
    pub mount_mnt_mountpoint: u32,
    /// `struct vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `struct task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `struct inode.i_mode`.
    pub inode_i_mode: u32,
    /// `struct vm_area_struct.vm_file`.
    pub vma_vm_file: u32,
    /// `struct dentry.d_inode`.
    pub dentry_d_inode: u32,
    /// `struct dentry.d_flags`.
    pub dentry_d_flags: u32,
    /// Non-zero once the daemon has filled the offsets in; programs refuse to
    /// read kernel memory before that.
    pub resolved: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 112);

/// Name of the global holding [`KernelOffsets`] in the eBPF object.
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";

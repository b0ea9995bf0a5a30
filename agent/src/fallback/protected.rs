//! What no agent may change, whatever its policy says, and how each agent
//! is held to it.
//!
//! Baton's kernel state (pinned objects under bpffs, the cgroups its
//! programs attach to and that its limits use) and its own files (config,
//! policies, audit log) are protected by file rules the daemon adds to
//! every agent: the BPF LSM file hooks decide them like any other rule, so
//! symlinks, `..` and renames cannot dodge them, and where BPF LSM is
//! missing the same rules reach `baton exec` agents through Landlock.

use std::{
    collections::BTreeSet,
    path::{Component, Path, PathBuf},
};

use agent_common::{files::right, identity::admission};

use crate::kernel::{
    ControlState,
    cgroup::{mount_points, mounts},
};

/// Rights taken away beneath a protected path: every change. Reading stays
/// allowed (an agent may look at its own policy).
pub const PROTECTED_RIGHTS: u32 = right::bit(right::WRITE)
    | right::bit(right::CREATE)
    | right::bit(right::DELETE)
    | right::bit(right::RENAME);

/// The self-protection hooks among the loader's LSM hooks.
pub fn protect_hooks() -> impl Iterator<Item = &'static str> {
    agent_common::programs::with_role(agent_common::programs::Role::SelfProtection).map(|p| p.name)
}

/// File systems whose mounts hold Baton's kernel state.
const KERNEL_FS_TYPES: [&str; 3] = ["bpf", "cgroup", "cgroup2"];

/// Every bpffs and cgroup mount point (v1 and v2), and `/sys/fs/bpf`
/// even when nothing is mounted there yet, with [`PROTECTED_RIGHTS`].
pub fn kernel_interface_paths() -> Vec<(String, u32)> {
    let mut paths = mount_points(&mounts().unwrap_or_default(), &KERNEL_FS_TYPES);
    paths.push("/sys/fs/bpf".to_string());
    with_rights(paths)
}

/// The paths every agent's file rules deny [`PROTECTED_RIGHTS`] on: the
/// kernel interfaces of [`kernel_interface_paths`] and `config_paths`
/// (Baton's config file, policy directory, audit log directory, control
/// socket, keys, its own executable). Relative paths are skipped; paths
/// that exist are resolved as the kernel will see them (symlinks
/// followed); a path inside another one is left out.
pub fn protected_paths(config_paths: &[PathBuf]) -> Vec<(String, u32)> {
    let mut paths: Vec<String> = kernel_interface_paths()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    paths.extend(config_paths.iter().filter_map(|path| kernel_view(path)));
    with_rights(paths)
}

/// The daemon's own `/proc/PID` directory, whose writable files
/// (`oom_score_adj`, `attr/*`, ...) an agent could use against it: for the
/// BPF LSM file rules only. Do not give it to Landlock: Landlock can only
/// deny it by granting every other `/proc` entry that exists at exec, and
/// the agent could then write to no process started later.
pub fn daemon_proc_path(pid: u32) -> (String, u32) {
    (format!("/proc/{pid}"), right::bit(right::WRITE))
}

/// How `path` will look to the kernel: absolute, symlinks resolved where it
/// exists, `.` and `..` folded otherwise.
fn kernel_view(path: &Path) -> Option<String> {
    if !path.is_absolute() {
        return None;
    }
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| {
        let mut out = PathBuf::from("/");
        for component in path.components() {
            match component {
                Component::Normal(name) => out.push(name),
                Component::ParentDir => {
                    out.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        out
    });
    resolved.to_str().map(str::to_string)
}

fn covers(outer: &str, inner: &str) -> bool {
    outer == "/" || inner == outer || inner.starts_with(&format!("{outer}/"))
}

/// Sorted, without duplicates or paths inside another one, with
/// [`PROTECTED_RIGHTS`].
fn with_rights(paths: Vec<String>) -> Vec<(String, u32)> {
    let paths: BTreeSet<String> = paths
        .into_iter()
        .map(|p| {
            if p.len() > 1 {
                p.trim_end_matches('/').to_string()
            } else {
                p
            }
        })
        .filter(|p| p.starts_with('/'))
        .collect();
    paths
        .iter()
        .filter(|path| {
            !paths
                .iter()
                .any(|other| other != *path && covers(other, path))
        })
        .map(|path| (path.clone(), PROTECTED_RIGHTS))
        .collect()
}

/// Whether every self-protection hook is attached: then BPF LSM holds every
/// agent to everything `baton exec`'s seccomp filter would, and records it,
/// so `baton exec` applies no filter (which would put every system call of
/// the agent on the kernel's slow path for nothing).
pub fn held_by_bpf_lsm(lsm_hooks: &[(&str, ControlState)]) -> bool {
    missing_hooks(lsm_hooks).is_empty()
}

/// The self-protection hooks `lsm_hooks` does not have attached.
fn missing_hooks(lsm_hooks: &[(&str, ControlState)]) -> Vec<&'static str> {
    protect_hooks()
        .filter(|hook| {
            !lsm_hooks
                .iter()
                .any(|(name, state)| name == hook && *state == ControlState::Enforced)
        })
        .collect()
}

/// How one agent is kept from switching Baton off, in one line for the
/// daemon's log and audit records.
///
/// `lsm_hooks` are the loader's LSM hook states; `admitted` is how the
/// agent's processes join it (one of [`admission`]); `landlock_abi` is the
/// kernel's (see [`crate::fallback::landlock::landlock_abi`]).
pub fn self_protection(
    lsm_hooks: &[(&str, ControlState)],
    admitted: u8,
    landlock_abi: Option<i64>,
) -> String {
    let missing = missing_hooks(lsm_hooks);
    let via_exec = admitted == admission::EXEC;
    if missing.is_empty() {
        return "BPF LSM: bpf(), perf_event_open(), module and kexec loads, ptrace outside the agent, and signals, prlimit and ptrace to the daemon are denied (even to root) and recorded; file rules deny changes to bpffs, cgroup files and Baton's files".to_string();
    }
    let gap = if missing.len() == protect_hooks().count() {
        "BPF LSM is not available".to_string()
    } else {
        format!("BPF LSM lacks {}", missing.join(", "))
    };
    if via_exec {
        format!(
            "{gap}; baton exec fallback: {}; Landlock file rules deny changes to bpffs, cgroup files and Baton's files",
            super::seccomp::describe_for_kernel(landlock_abi)
        )
    } else {
        format!(
            "{gap}, and this agent was not started by baton exec, so nothing but its user's permissions keeps it from bpf(), ptrace or signals to the daemon: run it unprivileged"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpf_and_cgroup_mounts() {
        let mountinfo = "\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
38 35 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
40 24 0:35 / /sys/fs/bpf rw - bpf bpf rw
41 24 0:36 / /mnt/my\\040bpf rw - bpf bpf rw
";
        assert_eq!(
            mount_points(
                &crate::kernel::cgroup::parse_mounts(mountinfo),
                &KERNEL_FS_TYPES
            ),
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/pids",
                "/sys/fs/bpf",
                "/mnt/my bpf"
            ]
        );
    }

    #[test]
    fn nested_and_duplicate_paths_collapse() {
        let paths = with_rights(vec![
            "/etc/baton/policies".into(),
            "/etc/baton".into(),
            "/etc/baton/".into(),
            "/var/log/baton".into(),
            "relative".into(),
            "/etc/baton_old".into(),
        ]);
        let names: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["/etc/baton", "/etc/baton_old", "/var/log/baton"]);
        assert!(paths.iter().all(|(_, r)| *r == PROTECTED_RIGHTS));
        assert_eq!(PROTECTED_RIGHTS & right::bit(right::READ), 0);
    }

    #[test]
    fn protected_paths_include_the_kernel_interfaces_and_config() {
        let dir = std::env::temp_dir().join(format!("baton-protected-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("real"), &link).unwrap();
        let paths = protected_paths(&[
            link.clone(),
            PathBuf::from("/nonexistent/baton/../baton/policies"),
        ]);
        let names: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
        assert!(names.contains(&"/sys/fs/bpf"), "{names:?}");
        let real = std::fs::canonicalize(dir.join("real")).unwrap();
        assert!(
            names.contains(&real.to_str().unwrap()),
            "symlinks resolved: {names:?}"
        );
        assert!(names.contains(&"/nonexistent/baton/policies"), "{names:?}");
        let cgroup2 = crate::kernel::cgroup::cgroup2_mount().unwrap();
        assert!(
            names.iter().any(|p| covers(p, cgroup2.to_str().unwrap())),
            "the cgroup v2 mount: {names:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describes_each_case() {
        let all: Vec<(&str, ControlState)> = protect_hooks()
            .map(|h| (h, ControlState::Enforced))
            .collect();
        let line = self_protection(&all, admission::CGROUP, Some(7));
        assert!(line.starts_with("BPF LSM: bpf()"), "{line}");
        assert!(!line.contains("seccomp"), "{line}");
        assert_eq!(self_protection(&all, admission::EXEC, Some(7)), line);
        assert!(held_by_bpf_lsm(&all));

        let line = self_protection(&[], admission::EXEC, Some(7));
        assert!(
            line.starts_with("BPF LSM is not available; baton exec fallback: seccomp denies bpf"),
            "{line}"
        );
        assert!(line.contains("Landlock (ABI 7)"), "{line}");
        let line = self_protection(&[], admission::EXECUTABLE, Some(7));
        assert!(line.contains("run it unprivileged"), "{line}");

        let mut partial = all.clone();
        partial[0].1 = ControlState::Unavailable("signature".into());
        assert!(!held_by_bpf_lsm(&partial));
        assert!(!held_by_bpf_lsm(&all[1..]));
        let line = self_protection(&partial, admission::EXEC, Some(5));
        assert!(line.starts_with("BPF LSM lacks bpf;"), "{line}");
        assert!(line.contains("NOT scoped"), "{line}");
    }

    #[test]
    fn the_daemon_proc_directory_is_write_protected() {
        assert_eq!(
            daemon_proc_path(812),
            ("/proc/812".to_string(), right::bit(right::WRITE))
        );
    }
}

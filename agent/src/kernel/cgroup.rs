//! Finding the cgroup v2 hierarchy.

use std::path::{Path, PathBuf};

use procfs::process::MountInfo;
use thiserror::Error;

/// Errors while locating cgroup v2.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    /// No cgroup2 mount exists.
    #[error("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")]
    NotMounted,
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (hybrid hosts mount
/// it at `/sys/fs/cgroup/unified`, unified hosts at `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    mount_points(&mounts().map_err(CgroupError::MountInfo)?, &["cgroup2"])
        .into_iter()
        .next()
        .map(PathBuf::from)
        .ok_or(CgroupError::NotMounted)
}

/// This process's mounts, one procfs [`MountInfo`] per line of
/// `/proc/self/mountinfo`. A line procfs cannot parse is skipped rather
/// than the whole table: one odd mount must not hide the others.
pub fn mounts() -> std::io::Result<Vec<MountInfo>> {
    let bytes = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mounts(&String::from_utf8_lossy(&bytes)))
}

/// [`mounts`] of a mountinfo text.
pub fn parse_mounts(mountinfo: &str) -> Vec<MountInfo> {
    mountinfo
        .lines()
        .filter_map(|line| MountInfo::from_line(line).ok())
        .collect()
}

/// A mount's mount point, unescaped: procfs leaves mountinfo's octal
/// escapes (`\040` for a space) in place.
pub fn mount_point(mount: &MountInfo) -> String {
    unescape_mount_path(&mount.mount_point.to_string_lossy())
}

/// Mount points of the given file system types, in mountinfo order.
pub fn mount_points(mounts: &[MountInfo], types: &[&str]) -> Vec<String> {
    mounts
        .iter()
        .filter(|mount| types.contains(&mount.fs_type.as_str()))
        .map(mount_point)
        .collect()
}

/// Every mount point, in mountinfo order.
pub fn all_mount_points(mounts: &[MountInfo]) -> Vec<String> {
    mounts.iter().map(mount_point).collect()
}

/// Undoes the octal escapes mountinfo uses for spaces and the like.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(Ok(value)) = field.get(i + 1..i + 4).map(|d| u8::from_str_radix(d, 8))
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Controllers enabled in the v2 hierarchy (`cgroup.controllers` at its root).
pub fn cgroup2_controllers(mount: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(mount.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `dir` and every cgroup directory beneath it, depth first, listed as the
/// walk reaches them (so a caller that stops early reads no more).
pub fn subtree(dir: &Path) -> impl Iterator<Item = PathBuf> {
    let mut pending = vec![dir.to_path_buf()];
    std::iter::from_fn(move || {
        let dir = pending.pop()?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(dir)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }

    #[test]
    fn finds_the_mount() {
        let mount = cgroup2_mount().unwrap();
        assert!(mount.join("cgroup.procs").exists(), "{}", mount.display());
    }
}

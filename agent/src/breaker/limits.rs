//! Process limits with the cgroup `pids` controller.
//!
//! Hybrid hosts bind `pids` to a v1 hierarchy (`/sys/fs/cgroup/pids`);
//! unified hosts have it in v2, where it must be enabled for children of
//! the root first. Either way the agent's process goes into a cgroup of its
//! own whose `pids.max` caps every process and thread it will ever have.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors setting a limit.
#[derive(Debug, Error)]
pub enum LimitError {
    /// No `pids` controller is available.
    #[error("no cgroup pids controller is available (v1 or v2); process limits cannot be enforced")]
    NoPidsController,
    /// A cgroup file could not be written.
    #[error("cannot set up the process limit in {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LimitError + '_ {
    move |source| LimitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the pids controller lives.
fn pids_hierarchy(cgroup2_root: &Path) -> Result<PathBuf, LimitError> {
    let mounts = crate::kernel::cgroup::mounts().unwrap_or_default();
    if let Some(v1) = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("pids"))
    {
        return Ok(PathBuf::from(crate::kernel::cgroup::mount_point(v1)));
    }
    let controllers =
        std::fs::read_to_string(cgroup2_root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "pids") {
        let control = cgroup2_root.join("cgroup.subtree_control");
        std::fs::write(&control, "+pids").map_err(io(&control))?;
        return Ok(cgroup2_root.to_path_buf());
    }
    Err(LimitError::NoPidsController)
}

/// Puts process `pid` into a new cgroup limited to `max` processes and
/// returns the cgroup's directory.
pub fn limit_processes(
    cgroup2_root: &Path,
    agent: &str,
    pid: u32,
    max: u32,
) -> Result<PathBuf, LimitError> {
    let hierarchy = pids_hierarchy(cgroup2_root)?;
    let parent = hierarchy.join("baton");
    if !parent.exists() {
        std::fs::create_dir(&parent).map_err(io(&parent))?;
        if hierarchy == cgroup2_root {
            let control = parent.join("cgroup.subtree_control");
            std::fs::write(&control, "+pids").map_err(io(&control))?;
        }
    }
    let dir = parent.join(format!("{agent}-{pid}"));
    if !dir.exists() {
        std::fs::create_dir(&dir).map_err(io(&dir))?;
    }
    let limit = dir.join("pids.max");
    std::fs::write(&limit, max.to_string()).map_err(io(&limit))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(io(&procs))?;
    Ok(dir)
}

/// Removes limit cgroups whose processes are all gone.
pub fn remove_empty(cgroup2_root: &Path) {
    let Ok(hierarchy) = pids_hierarchy(cgroup2_root) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(hierarchy.join("baton")) else {
        return;
    };
    for entry in entries.flatten() {
        let procs = std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

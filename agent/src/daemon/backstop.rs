//! Keeping the packet backstop where the agents are (see
//! [`crate::kernel::backstop`]): before a policy's selectors take effect,
//! before a `baton exec` agent is admitted, and when the kernel refused an
//! agent a socket because no attachment covered it.
//!
//! The service's state is the [`Backstop`] behind its own lock, shared by
//! the policy state (reload, admission) and the request ring. Lock order:
//! `PolicyService` → Backstop → audit writer; the request handler never holds the
//! backstop while it takes the state lock.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::{
    audit::AuditRecord,
    ids::AgentId,
    kernel::backstop::{Backstop, BackstopError, Coverage},
    policy::compile::CompiledPolicySet,
};

use super::Daemon;

/// The service's handle, shared by whoever must widen coverage.
pub(super) type SharedBackstop = Arc<Mutex<Backstop>>;

/// Covers every agent `set` selects before its selectors are written:
/// the whole host when one selects executables (their processes may be
/// anywhere), else each selected cgroup, or its nearest existing ancestor
/// for one not made yet. Returns what changed, for the log and the trail.
pub(super) fn cover_policies(
    backstop: &SharedBackstop,
    set: &CompiledPolicySet,
    cgroup_root: &Path,
) -> Vec<String> {
    let mut backstop = backstop.lock().expect("backstop lock poisoned");
    let mut changes = Vec::new();
    let executables: Vec<&str> = set
        .agents
        .iter()
        .filter(|(_, agent)| !agent.executables.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    if !executables.is_empty() {
        match backstop.cover_host() {
            Ok(true) => changes.push(format!(
                "packet backstop: covers the whole host, because agents {} are selected by executable and may run in any cgroup",
                executables.join(", ")
            )),
            Ok(false) => {}
            Err(error) => changes.push(failure(&error)),
        }
        return changes;
    }
    for (name, agent) in &set.agents {
        for path in &agent.cgroups {
            let dir = nearest_existing(&cgroup_root.join(path.trim_start_matches('/')));
            changes.extend(describe(backstop.cover(&dir), &format!("agent {name}")));
        }
    }
    changes
}

/// Covers the cgroup process `pid` is in, for an agent admitted by
/// `baton exec`. An error means the agent's sockets would be refused
/// until coverage is found some other way.
pub(super) fn cover_process(
    backstop: &SharedBackstop,
    pid: u32,
    cgroup_root: &Path,
) -> Result<Option<String>, BackstopError> {
    // A `maxProcesses` agent has a cgroup of its own per exec under
    // `baton/`: covering their parent once keeps one attachment for all.
    let limits = cgroup_root.join("baton");
    let dir = process_cgroup(pid, cgroup_root).map(|dir| {
        if dir.parent() == Some(limits.as_path()) {
            limits.clone()
        } else {
            dir
        }
    });
    let mut backstop = backstop.lock().expect("backstop lock poisoned");
    let coverage = match dir {
        Some(dir) => backstop.cover(&dir)?,
        None => backstop.cover_host().map(|changed| {
            if changed {
                Coverage::Host
            } else {
                Coverage::Already
            }
        })?,
    };
    Ok(message(
        &coverage,
        &format!("for process {pid}, admitted by baton exec"),
    ))
}

/// Answers a [`agent_common::event::kind::BACKSTOP_NEEDED`] request: the
/// kernel refused `pid` a socket in cgroup `cgroup_id` (0: a socket it did
/// not create, whose cgroup is unknown). Covers that cgroup where it can
/// be found, else the whole host, and records the change.
pub(super) fn answer_request(daemon: &Arc<Daemon>, agent_id: AgentId, pid: u32, cgroup_id: u64) {
    let (backstop, cgroup_root, host, agent) = {
        let Ok(state) = daemon.policy.lock() else {
            return;
        };
        (
            state.backstop.clone(),
            state.cgroup_root.clone(),
            state.host.clone(),
            state
                .registry
                .name_of(agent_id)
                .map_or_else(|| format!("#{agent_id}"), |name| name.to_string()),
        )
    };
    let dir = (cgroup_id != 0)
        .then(|| process_cgroup(pid, &cgroup_root))
        .flatten()
        .filter(|dir| crate::kernel::maps::cgroup_id(dir).ok() == Some(cgroup_id))
        .or_else(|| {
            // The process may be gone already (a short-lived one often is):
            // the cgroup is looked for by its id.
            (cgroup_id != 0)
                .then(|| {
                    crate::kernel::cgroup::subtree(&cgroup_root)
                        .find(|dir| crate::kernel::maps::cgroup_id(dir).ok() == Some(cgroup_id))
                })
                .flatten()
        });
    let why = match (&dir, cgroup_id) {
        (_, 0) => format!(
            "agent {agent}'s process {pid} was refused the use of a socket it did not create, whose packets only a backstop on the whole host sees; a later try succeeds"
        ),
        (Some(dir), _) => format!(
            "agent {agent}'s process {pid} was refused a socket in cgroup {}, which the backstop did not cover; a later try succeeds",
            dir.display()
        ),
        (None, _) => format!(
            "agent {agent}'s process {pid} was refused a socket in cgroup {cgroup_id}, which the backstop did not cover and which is gone or cannot be found; a later try succeeds"
        ),
    };
    let outcome = {
        let mut backstop = backstop.lock().expect("backstop lock poisoned");
        match dir {
            Some(dir) => backstop.cover(&dir),
            None => backstop.cover_host().map(|changed| {
                if changed {
                    Coverage::Host
                } else {
                    Coverage::Already
                }
            }),
        }
    };
    let text = match outcome {
        Ok(coverage) => match message(&coverage, &why) {
            Some(text) => text,
            None => return,
        },
        Err(error) => format!("{why}; {}", failure(&error)),
    };
    tracing::info!("{text}");
    if let Ok(mut state) = daemon.policy.lock() {
        state.record(AuditRecord::lifecycle(&host, "egress", text));
    }
}

/// `what changed` for a coverage outcome, `None` when nothing did.
fn message(coverage: &Coverage, why: &str) -> Option<String> {
    match coverage {
        Coverage::Already => None,
        Coverage::Attached(dir) => Some(format!(
            "packet backstop: now attached to cgroup {} ({why})",
            dir.display()
        )),
        Coverage::Host => Some(format!(
            "packet backstop: covers the whole host ({why}); every packet on the host now runs it"
        )),
    }
}

fn describe(outcome: Result<Coverage, BackstopError>, why: &str) -> Option<String> {
    match outcome {
        Ok(coverage) => message(&coverage, why),
        Err(error) => Some(failure(&error)),
    }
}

fn failure(error: &BackstopError) -> String {
    format!("packet backstop: {error}; agents there are refused new sockets until it is attached")
}

/// The cgroup v2 directory of process `pid`, if it still runs.
fn process_cgroup(pid: u32, cgroup_root: &Path) -> Option<PathBuf> {
    let path = crate::kernel::process::cgroup(pid)?;
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// `dir`, or its nearest ancestor that exists.
fn nearest_existing(dir: &Path) -> PathBuf {
    let mut dir = dir;
    while !dir.is_dir() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    dir.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_existing_climbs_to_a_directory() {
        let root = std::env::temp_dir();
        let missing = root.join("baton-no-such-cgroup").join("child");
        assert_eq!(nearest_existing(&missing), root);
        assert_eq!(nearest_existing(&root), root);
    }
}

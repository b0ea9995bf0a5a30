//! Policy → Landlock ruleset, and applying it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use agent_common::{files::right, verdict::decision};
use landlock::{
    ABI, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::compile::SourceRule;

/// The Landlock ABI the translation targets (Linux 6.2: `Truncate`).
const TARGET_ABI: ABI = ABI::V3;

/// Errors applying a ruleset.
#[derive(Debug, Error)]
pub enum LandlockError {
    /// The kernel refused the ruleset.
    #[error("cannot apply the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel has no Landlock, or too old a one, so nothing would be
    /// enforced: refuse to start the agent rather than pretend.
    #[error(
        "Landlock is not available here (ABI {found:?}), so file rules cannot be enforced for this agent"
    )]
    Unavailable {
        /// What the kernel offered.
        found: String,
    },
}

/// A Landlock ruleset derived from a policy, sent from the daemon to
/// `baton exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    /// Rights (bits of [`right`]) the ruleset restricts.
    pub handled: u32,
    /// Paths and the rights granted beneath them.
    pub grants: BTreeMap<String, u32>,
    /// Directories on the way to a denied path, granted listing only
    /// (beneath them too: Landlock's rights cover a whole tree), so that
    /// `ls /` and `ls $HOME` work while a path below is denied.
    #[serde(default)]
    pub list_dirs: std::collections::BTreeSet<String>,
    /// What the policy says that Landlock cannot, in words for the user:
    /// both what stays unenforced and what Landlock restricts more than
    /// the policy does.
    pub unexpressible: Vec<String>,
    /// Those of [`LandlockPlan::unexpressible`] that leave something the
    /// policy denies allowed.
    #[serde(default)]
    pub not_enforced: Vec<String>,
    /// The policy's `exec.allowAnonymous`: when unset and Landlock handles
    /// exec, `baton exec`'s seccomp filter refuses executable memfds and
    /// `fexecve`, which Landlock cannot see.
    #[serde(default)]
    pub allow_anonymous_exec: bool,
}

fn right_name(r: usize) -> &'static str {
    match r {
        right::READ => "read",
        right::WRITE => "write",
        right::CREATE => "create",
        right::DELETE => "delete",
        right::RENAME => "rename",
        _ => "exec",
    }
}

fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(at) => Some(&path[..at]),
        None => None,
    }
}

fn children(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if dir == "/" {
                        format!("/{name}")
                    } else {
                        format!("{dir}/{name}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Translates the rules of one agent. `defaults[r]` is the decision when no
/// rule matches right `r`.
pub fn plan(rules: &[SourceRule], file_default: u8, exec_default: u8) -> LandlockPlan {
    let mut out = LandlockPlan::default();
    for r in 0..right::COUNT {
        let bit = right::bit(r);
        let default = if r == right::EXEC {
            exec_default
        } else {
            file_default
        };
        let allows: Vec<&str> = rules
            .iter()
            .filter(|x| x.rights & bit != 0 && x.decision == decision::ALLOW)
            .map(|x| x.path.as_str())
            .collect();
        let denies: Vec<&str> = rules
            .iter()
            .filter(|x| {
                x.rights & bit != 0
                    && (x.decision == decision::DENY || x.decision == decision::CANARY)
            })
            .map(|x| x.path.as_str())
            .collect();
        if default != decision::DENY && denies.is_empty() {
            continue;
        }
        out.handled |= bit;
        let name = right_name(r);
        if default == decision::DENY {
            for allow in &allows {
                for deny in denies.iter().filter(|d| covers(allow, d) && *d != allow) {
                    out.not_enforced.push(format!(
                        "{name}: the deny of {deny} inside the allowed {allow} cannot be expressed; Landlock allows all of {allow}"
                    ));
                }
                if Path::new(allow).exists() {
                    *out.grants.entry(allow.to_string()).or_default() |= bit;
                } else {
                    out.unexpressible.push(format!(
                        "{name}: {allow} does not exist yet, so Landlock cannot allow it"
                    ));
                }
            }
            continue;
        }
        // Default allow with denies: grant everything except the denied
        // paths, by granting every sibling along the way to each of them.
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        for deny in &denies {
            let mut at = Some(*deny);
            while let Some(path) = at {
                blocked.insert(path.to_string());
                at = parent(path);
            }
        }
        let ancestors: BTreeSet<&String> = blocked
            .iter()
            .filter(|b| !denies.contains(&b.as_str()))
            .collect();
        for ancestor in &ancestors {
            for child in children(ancestor) {
                if !blocked.contains(&child) {
                    *out.grants.entry(child).or_default() |= bit;
                }
            }
            if matches!(r, right::CREATE | right::DELETE | right::RENAME) {
                out.unexpressible.push(format!(
                    "{name}: entries directly in {ancestor} (on the way to a denied path) get no {name} right under Landlock, and paths created there later are not covered"
                ));
            }
            if r == right::READ && Path::new(ancestor.as_str()).is_dir() {
                // Listing the directories above a denied path is ordinary
                // work (`ls /`, `ls $HOME`, `find`). Landlock cannot grant
                // it to a directory alone, so the denied path below can be
                // listed too: its names, never its files' contents.
                out.list_dirs.insert((*ancestor).clone());
                out.unexpressible.push(format!(
                    "read: files created later directly in {ancestor} (on the way to a denied path) cannot be read under Landlock"
                ));
            }
        }
        if r == right::READ && !ancestors.is_empty() {
            for deny in &denies {
                out.not_enforced.push(format!(
                    "read: {deny} can be listed (the names in it, not what its files hold), so that the directories above it can be: Landlock's listing right covers a whole tree"
                ));
            }
        }
        // A more specific allow beneath a deny still applies.
        for allow in allows
            .iter()
            .filter(|a| denies.iter().any(|d| covers(d, a)))
        {
            if Path::new(allow).exists() {
                *out.grants.entry(allow.to_string()).or_default() |= bit;
            }
        }
        if r == right::WRITE {
            out.not_enforced.push(
                "write: chmod cannot be restricted by Landlock; only writes and truncation are"
                    .into(),
            );
        }
    }
    if out.handled & right::bit(right::EXEC) != 0 {
        out.not_enforced.push(
            "exec: Landlock judges execve only: a program outside the allowed paths still runs through the dynamic loader (ld.so FILE) or as an executable mapping (mmap PROT_EXEC); memfds and fexecve are refused by the seccomp filter unless exec.allowAnonymous is set"
                .into(),
        );
    }
    if out.handled != 0 {
        out.unexpressible.push(
            "mounts: a process under Landlock cannot change mounts, so unshare -m, bind mounts and container tools that mount fail with EPERM"
                .into(),
        );
    }
    out.not_enforced.sort();
    out.not_enforced.dedup();
    out.unexpressible.extend(out.not_enforced.iter().cloned());
    out.unexpressible.sort();
    out.unexpressible.dedup();
    out
}

/// Landlock access flags for a set of rights, on a directory or a file.
fn access(rights: u32, is_dir: bool) -> BitFlags<AccessFs> {
    let mut flags = BitFlags::<AccessFs>::empty();
    let has = |r: usize| rights & right::bit(r) != 0;
    if has(right::READ) {
        flags |= AccessFs::ReadFile;
        if is_dir {
            flags |= AccessFs::ReadDir;
        }
    }
    if has(right::WRITE) {
        flags |= AccessFs::WriteFile | AccessFs::Truncate;
    }
    if has(right::EXEC) {
        flags |= AccessFs::Execute;
    }
    if is_dir {
        if has(right::CREATE) {
            flags |= AccessFs::MakeReg
                | AccessFs::MakeDir
                | AccessFs::MakeSym
                | AccessFs::MakeFifo
                | AccessFs::MakeSock
                | AccessFs::MakeChar
                | AccessFs::MakeBlock;
        }
        if has(right::DELETE) {
            flags |= AccessFs::RemoveFile | AccessFs::RemoveDir;
        }
        if has(right::RENAME) {
            flags |= AccessFs::Refer;
        }
    }
    flags
}

/// Applies the plan to the calling thread (and so to the program it execs
/// and every descendant). Irrevocable. Call right before exec.
pub fn apply(plan: &LandlockPlan) -> Result<(), LandlockError> {
    if plan.handled == 0 {
        return Ok(());
    }
    let handled = access(plan.handled, true);
    let mut ruleset = Ruleset::default().handle_access(handled)?.create()?;
    for (path, rights) in &plan.grants {
        let Ok(fd) = PathFd::new(PathBuf::from(path)) else {
            continue;
        };
        let is_dir = Path::new(path).is_dir();
        let flags = access(*rights, is_dir) & handled;
        if flags.is_empty() {
            continue;
        }
        ruleset = ruleset.add_rule(PathBeneath::new(fd, flags))?;
    }
    let list = BitFlags::from(AccessFs::ReadDir) & handled;
    for path in plan.list_dirs.iter().filter(|_| !list.is_empty()) {
        let Ok(fd) = PathFd::new(PathBuf::from(path)) else {
            continue;
        };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, list))?;
    }
    // Denials after the exec are reported to the audit subsystem (ABI 7+;
    // ignored before), where the daemon reads them (`landlock_log`).
    let status = ruleset.log_new_exec(true)?.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::Unavailable {
            found: format!("{status:?}"),
        });
    }
    Ok(())
}

/// The access rights the translation may use on this kernel, for messages.
pub fn target_abi() -> String {
    format!("{TARGET_ABI:?}")
}

/// Landlock ABI version, or `None` when Landlock is off.
pub fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no ruleset and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str, rights: u32, d: u8) -> SourceRule {
        SourceRule {
            path: path.into(),
            rights,
            decision: d,
        }
    }

    #[test]
    fn nothing_to_restrict() {
        let plan = plan(&[], decision::ALLOW, decision::ALLOW);
        assert_eq!(plan.handled, 0);
    }

    #[test]
    fn a_deny_becomes_grants_on_its_siblings() {
        let dir = std::env::temp_dir().join(format!("baton-ll-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secret")).unwrap();
        std::fs::create_dir_all(dir.join("public")).unwrap();
        let secret = dir.join("secret").display().to_string();
        let all = (0..right::COUNT - 1).fold(0, |a, r| a | right::bit(r));
        let plan = plan(
            &[rule(&secret, all, decision::DENY)],
            decision::ALLOW,
            decision::ALLOW,
        );
        let public = dir.join("public").display().to_string();
        assert_eq!(plan.handled, all);
        assert_eq!(plan.grants.get(&public), Some(&all));
        assert!(!plan.grants.contains_key(&secret));
        assert!(
            plan.grants.contains_key("/usr"),
            "siblings at the root are granted"
        );
        assert!(plan.unexpressible.iter().any(|u| u.contains("chmod")));
        // The directories above it may be listed, and so (its names only)
        // may the denied one: said as something left unenforced.
        assert!(plan.list_dirs.contains(&dir.display().to_string()));
        assert!(plan.list_dirs.contains("/"));
        assert!(!plan.list_dirs.contains(&secret));
        assert!(
            plan.not_enforced
                .iter()
                .any(|u| u.contains(&format!("read: {secret} can be listed"))),
            "{:?}",
            plan.not_enforced
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_deny_lists_nothing_more() {
        let plan = plan(
            &[rule("/etc", right::bit(right::WRITE), decision::DENY)],
            decision::ALLOW,
            decision::ALLOW,
        );
        assert!(plan.list_dirs.is_empty(), "{:?}", plan.list_dirs);
    }

    #[test]
    fn a_deny_inside_an_allow_is_reported() {
        let plan = plan(
            &[
                rule("/usr", right::bit(right::EXEC), decision::ALLOW),
                rule("/usr/bin/nc", right::bit(right::EXEC), decision::DENY),
            ],
            decision::ALLOW,
            decision::DENY,
        );
        assert_eq!(plan.grants.get("/usr"), Some(&right::bit(right::EXEC)));
        assert!(
            plan.unexpressible.iter().any(|u| u.contains("/usr/bin/nc")),
            "{plan:?}"
        );
    }
}

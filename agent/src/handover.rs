//! What a restarted daemon takes over from the one before it.
//!
//! The kernel side survives in pinned maps (see [`crate::kernel::pins`]);
//! what lives only in the daemon is kept here, in a state directory
//! (default `/run/baton`, which like bpffs starts empty at boot):
//!
//! - `registry.json`, written at every policy load: agent names and the ids
//!   the kernel knows them by (processes stay in their agents across a
//!   restart), and the rule table the live generation's rule ids refer to
//!   (events queued while the daemon was down still name their rule).
//! - `progress.json`, written every second while something changes: the
//!   counters and event-loss totals the daemon has already reported, and
//!   the breakers that are open. A restarted daemon reports the difference
//!   as what happened while it was down.
//!
//! - `grants.json`, written at every change: operators' grants in force
//!   (see the daemon's grant service).
//!
//! All are replaced atomically (write, then rename), so a daemon killed
//! mid-write leaves the previous version.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

use crate::{
    breaker::{Action, CounterSnapshot},
    ids::{AgentId, RuleId},
    policy::compile::RuleRef,
};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/baton";

const REGISTRY_FILE: &str = "registry.json";
const PROGRESS_FILE: &str = "progress.json";
/// Operators' grants in force, written by the grant service.
pub const GRANTS_FILE: &str = "grants.json";

/// Errors reading or writing the state directory.
#[derive(Debug, Error)]
pub enum HandoverError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A file is not what this version writes.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
}

/// Agent ids and rule names of the policies in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    /// Agent name to kernel id.
    pub agents: BTreeMap<String, AgentId>,
    /// Id of `rules[0]`.
    pub first_rule_id: RuleId,
    /// Rules by id, from `first_rule_id` on.
    pub rules: Vec<RuleRef>,
}

impl Registry {
    /// The first rule id a new compile may use.
    pub fn next_rule_id(&self) -> RuleId {
        self.first_rule_id.after(self.rules.len())
    }
}

/// A breaker that was open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBreaker {
    /// Agent id.
    pub agent_id: AgentId,
    /// Agent name.
    pub agent: String,
    /// Breaker that tripped.
    pub breaker: String,
    /// Its action.
    pub action: Action,
    /// Why it tripped.
    pub reason: String,
}

/// What the daemon had reported, and the breakers it held open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// When this was written (RFC 3339).
    pub saved_at: String,
    /// The daemon that wrote it.
    pub pid: u32,
    /// Each agent's kernel counters at that time, by agent id.
    pub counters: BTreeMap<AgentId, CounterSnapshot>,
    /// Events suppressed by the rate limit already recorded, by agent id.
    pub suppressions_recorded: BTreeMap<AgentId, u64>,
    /// Ring-buffer drops already recorded, by agent id.
    pub drops_recorded: BTreeMap<AgentId, u64>,
    /// Breakers that were open.
    pub open_breakers: Vec<OpenBreaker>,
    /// Each agent's counts from the fanotify listener (denied files, file
    /// writes, canary hits), which live in the daemon and not the kernel:
    /// the next daemon starts from them.
    #[serde(default)]
    pub fallback_counters: BTreeMap<AgentId, CounterSnapshot>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates the directory (mode 0700) if needed.
    pub fn open(path: &Path) -> Result<Self, HandoverError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| HandoverError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry a previous daemon left, if any.
    pub fn registry(&self) -> Result<Option<Registry>, HandoverError> {
        self.read(REGISTRY_FILE)
    }

    /// Saves the registry of the policies now in force.
    pub fn save_registry(&self, registry: &Registry) -> Result<(), HandoverError> {
        self.write(REGISTRY_FILE, registry)
    }

    /// The progress a previous daemon left, if any.
    pub fn progress(&self) -> Result<Option<Progress>, HandoverError> {
        self.read(PROGRESS_FILE)
    }

    /// Saves what has been reported so far.
    pub fn save_progress(&self, progress: &Progress) -> Result<(), HandoverError> {
        self.write(PROGRESS_FILE, progress)
    }

    /// Removes what this module wrote (the directory too, when empty).
    pub fn remove(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for name in [REGISTRY_FILE, PROGRESS_FILE, GRANTS_FILE] {
            let path = self.path.join(name);
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
        removed
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, HandoverError> {
        let path = self.path.join(name);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HandoverError::Io { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| HandoverError::Parse { path, source })
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), HandoverError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec(value).map_err(|source| HandoverError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| HandoverError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_progress_round_trip() {
        let dir = std::env::temp_dir().join(format!("baton-handover-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        assert!(state.registry().unwrap().is_none());
        let registry = Registry {
            agents: BTreeMap::from([("coder".to_string(), AgentId::from_raw(3))]),
            first_rule_id: RuleId::from_raw(10),
            rules: vec![RuleRef {
                policy: "p".into(),
                rule: "egress.deny[0]".into(),
                source: "/etc/baton/policies/p.yaml".into(),
            }],
        };
        state.save_registry(&registry).unwrap();
        let back = state.registry().unwrap().unwrap();
        assert_eq!(back.agents, registry.agents);
        assert_eq!(back.next_rule_id(), RuleId::from_raw(11));
        let progress = Progress {
            pid: 7,
            drops_recorded: BTreeMap::from([(AgentId::from_raw(3), 5)]),
            ..Progress::default()
        };
        state.save_progress(&progress).unwrap();
        // Earlier daemons wrote the bare numbers; their files still read.
        let written = std::fs::read_to_string(dir.join(PROGRESS_FILE)).unwrap();
        assert!(written.contains(r#""drops_recorded":{"3":5}"#), "{written}");
        assert_eq!(state.progress().unwrap().unwrap(), progress);
        std::fs::write(dir.join(PROGRESS_FILE), "{").unwrap();
        assert!(matches!(state.progress(), Err(HandoverError::Parse { .. })));
        assert_eq!(state.remove().len(), 2);
        assert!(!dir.exists());
    }
}

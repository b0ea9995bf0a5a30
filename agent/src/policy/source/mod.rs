//! Where policies come from: a watched directory and an HTTP(S) server.
//!
//! Each source runs on its own tokio task and sends a [`SourceUpdate`]
//! whenever its set of policies changes: first the set it finds when it
//! starts, then one update per change. An update carries either the
//! complete new set of that source, parsed and signature-checked, or the
//! error that stopped it; a source never sends part of a set. The daemon
//! merges the sources with [`DesiredSet`], compiles the result and swaps it
//! in; on any error the last good set stays in force.

pub mod directory;
pub mod http;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use tokio::sync::mpsc;

pub use self::{
    directory::DirectorySource,
    http::{HttpOptions, HttpSource},
};
use super::{
    bundle::{BundleError, ParseBundleError, TrustPolicy, check_unique_names},
    load::{LoadedPolicy, PolicyError},
};

/// Default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "/etc/baton/policies";

/// RFC 3339 with nanoseconds, UTC, as audit records write times.
pub(crate) fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

/// Updates a source may queue before the daemon reads them.
const UPDATE_QUEUE: usize = 8;

/// Default cache of the last good HTTP bundle.
pub const DEFAULT_HTTP_CACHE: &str = "/var/lib/baton/policy-bundle.json";

/// One change of one source.
#[derive(Debug)]
pub struct SourceUpdate {
    /// The source, as [`DirectorySource::name`] or [`HttpSource::name`]
    /// spells it; stable for the life of the source.
    pub source: String,
    /// Where exactly this set was read: the directory and its `..data`
    /// target, the URL and its `ETag`, or the cache file.
    pub origin: String,
    /// SHA-256 (hex) of the bytes the set was read from, when they could be
    /// read; equal digests mean equal content.
    pub digest: Option<String>,
    /// The complete new set, or why there is none.
    pub policies: Result<Vec<LoadedPolicy>, SourceError>,
    /// When the source read it.
    pub loaded_at: SystemTime,
    /// How long reading and parsing the set took, where the source measures
    /// it apart from waiting: the directory source does; the HTTP source,
    /// whose time is mostly the download, does not.
    pub read_time: Option<Duration>,
}

/// Why a source has no new set.
#[derive(Debug, Error)]
pub enum SourceError {
    /// A policy file or bundle is not a valid policy set.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A signature is missing, untrusted or wrong.
    #[error(transparent)]
    Signature(#[from] BundleError),
    /// The server could not be reached or the transfer failed.
    #[error("{url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with a status other than 200 or 304.
    #[error("{url}: the server answered HTTP {status}; keeping the last good set")]
    Status {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The directory cannot be watched.
    #[error("cannot watch {path}: {message}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The configuration of the sources is not usable.
    #[error("policySources: {0}")]
    Config(String),
}

impl From<ParseBundleError> for SourceError {
    fn from(error: ParseBundleError) -> Self {
        match error {
            ParseBundleError::Signature(e) => Self::Signature(e),
            ParseBundleError::Policy(e) => Self::Policy(e),
        }
    }
}

/// `policySources:` in the daemon's configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySourcesConfig {
    /// Directory to watch. When absent, the daemon's policy directory
    /// (`--policy-dir`, `policyDir`, or `/etc/baton/policies`) is watched,
    /// except that the default directory is left out when `http` is set.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// A server to poll for a bundle.
    #[serde(default)]
    pub http: Option<HttpSourceConfig>,
    /// Reject every bundle and policy file without a valid signature by a
    /// trusted key.
    #[serde(default)]
    pub require_signatures: bool,
    /// Public keys whose signatures are accepted: 64 hex digits, 44 base64
    /// characters, or the path of a file holding either or a PEM public key.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

/// `policySources.http:`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSourceConfig {
    /// URL of the bundle, `http://` or `https://`.
    pub url: String,
    /// Seconds between polls [default: 30].
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Where the last good bundle is kept, to be enforced after a restart
    /// while the server is down [default: /var/lib/baton/policy-bundle.json].
    #[serde(default)]
    pub cache_path: Option<PathBuf>,
    /// Extra request headers, such as `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds one request may take [default: 10].
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Longest wait between retries while the server fails [default: 300].
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
}

fn default_interval() -> u64 {
    30
}

fn default_timeout() -> u64 {
    10
}

fn default_max_backoff() -> u64 {
    300
}

impl PolicySourcesConfig {
    /// The directory to watch. `policy_dir` is the directory the daemon was
    /// given (`--policy-dir` or `policyDir`), `None` when it was not given.
    pub fn effective_directory(&self, policy_dir: Option<&Path>) -> Option<PathBuf> {
        if let Some(dir) = &self.directory {
            return Some(dir.clone());
        }
        match (policy_dir, &self.http) {
            (Some(dir), _) => Some(dir.to_path_buf()),
            (None, None) => Some(PathBuf::from(DEFAULT_POLICY_DIR)),
            // An HTTP-only host need not have a policy directory.
            (None, Some(_)) => None,
        }
    }

    /// The signature rules the sources apply.
    pub fn trust(&self) -> Result<TrustPolicy, SourceError> {
        Ok(TrustPolicy::from_config(
            self.require_signatures,
            &self.trusted_keys,
        )?)
    }
}

/// The running sources.
#[derive(Debug)]
pub struct Sources {
    /// Names of the sources, as their updates spell them.
    pub names: Vec<String>,
    /// Updates of every source, in the order they happen.
    pub updates: mpsc::Receiver<SourceUpdate>,
}

/// Starts every configured source; see
/// [`PolicySourcesConfig::effective_directory`] for `policy_dir`. Each
/// source sends its initial set (or error) first. Needs a tokio runtime.
pub fn start(
    config: &PolicySourcesConfig,
    policy_dir: Option<&Path>,
) -> Result<Sources, SourceError> {
    let trust = config.trust()?;
    let (tx, updates) = mpsc::channel(UPDATE_QUEUE);
    let mut names = Vec::new();
    if let Some(dir) = config.effective_directory(policy_dir) {
        let source = DirectorySource::new(dir, trust.clone());
        names.push(source.name());
        forward(source.watch()?, tx.clone());
    }
    if let Some(http) = &config.http {
        let source = HttpSource::new(HttpOptions::from_config(http)?, trust);
        names.push(source.name());
        forward(source.watch()?, tx);
    }
    Ok(Sources { names, updates })
}

fn forward(mut from: mpsc::Receiver<SourceUpdate>, to: mpsc::Sender<SourceUpdate>) {
    tokio::spawn(async move {
        while let Some(update) = from.recv().await {
            if to.send(update).await.is_err() {
                return;
            }
        }
    });
}

/// SHA-256 of `bytes`, hex.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A set one source delivered and the daemon accepted.
#[derive(Clone, Debug)]
struct Accepted {
    policies: Vec<LoadedPolicy>,
    origin: String,
    digest: Option<String>,
    loaded_at: SystemTime,
}

#[derive(Clone, Debug, Default)]
struct SourceState {
    current: Option<Accepted>,
    /// The set before `current`, to return to if `current` is rejected.
    previous: Option<Accepted>,
    last_error: Option<(String, SystemTime)>,
    reported: bool,
}

/// The state of one source, for `baton status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source.
    pub source: String,
    /// Where the set in force came from; absent before the first good set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// SHA-256 of the set in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the set in force was read, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    /// Policies in the set in force.
    pub policies: usize,
    /// The last error, until a good set replaces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the last error happened, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

/// What the daemon should do after [`DesiredSet::apply`].
#[derive(Debug)]
pub enum Step {
    /// Compile and swap in this set: the last good set of every source,
    /// merged. If it cannot be applied (it does not compile, or does not fit
    /// the kernel's maps), call [`DesiredSet::reject`] with the source of
    /// the update.
    Apply(Vec<LoadedPolicy>),
    /// The update was rejected (the source's error, or its set clashes with
    /// another source's); the set in force stays. Already in the status;
    /// record it (audit record, metric).
    Rejected(String),
    /// Nothing to apply yet: other sources have not sent their first
    /// update.
    Wait,
}

/// The set the daemon should enforce: the last good set of every source,
/// merged.
#[derive(Clone, Debug, Default)]
pub struct DesiredSet {
    sources: BTreeMap<String, SourceState>,
}

impl DesiredSet {
    /// Tracks the sources named.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            sources: names
                .into_iter()
                .map(|n| (n, SourceState::default()))
                .collect(),
        }
    }

    /// Records an update and says what to do; see [`Step`].
    ///
    /// Nothing is applied before every source has sent its first update:
    /// applying the first source's set alone would drop the policies of the
    /// others until they report. When that moment comes, the merged set of
    /// the sources that have a good set is applied, unless none has.
    pub fn apply(&mut self, update: SourceUpdate) -> Step {
        let was_ready = self.ready();
        let source = update.source.clone();
        let failed = update.policies.as_ref().err().map(ToString::to_string);
        self.record(update);
        if !self.ready() {
            return match failed {
                Some(error) => Step::Rejected(error),
                None => Step::Wait,
            };
        }
        let any_set = self.sources.values().any(|s| s.current.is_some());
        // When the last source to report fails, the others' first sets
        // still wait to be applied; its error is in the status.
        if let Some(error) = failed
            && (was_ready || !any_set)
        {
            return Step::Rejected(error);
        }
        match self.merged() {
            Ok(policies) => Step::Apply(policies),
            Err(clash) => {
                self.reject(&source, &clash);
                Step::Rejected(clash.to_string())
            }
        }
    }

    fn record(&mut self, update: SourceUpdate) {
        let state = self.sources.entry(update.source).or_default();
        state.reported = true;
        match update.policies {
            Ok(policies) => {
                state.previous = state.current.take();
                state.current = Some(Accepted {
                    policies,
                    origin: update.origin,
                    digest: update.digest,
                    loaded_at: update.loaded_at,
                });
                state.last_error = None;
            }
            Err(error) => {
                state.last_error = Some((error.to_string(), update.loaded_at));
            }
        }
    }

    /// Records an update. Returns the merged set to compile and apply when
    /// the update brought a new set (an error if the sources now clash), or
    /// `None` when there is nothing to apply: the update was an error, and
    /// the last good set stays. Unlike [`DesiredSet::apply`], this does not
    /// wait for every source's first update; prefer `apply`.
    pub fn update(
        &mut self,
        update: SourceUpdate,
    ) -> Option<Result<Vec<LoadedPolicy>, PolicyError>> {
        let state = self.sources.entry(update.source).or_default();
        state.reported = true;
        match update.policies {
            Ok(policies) => {
                state.previous = state.current.take();
                state.current = Some(Accepted {
                    policies,
                    origin: update.origin,
                    digest: update.digest,
                    loaded_at: update.loaded_at,
                });
                state.last_error = None;
                Some(self.merged())
            }
            Err(error) => {
                state.last_error = Some((error.to_string(), update.loaded_at));
                None
            }
        }
    }

    /// The daemon could not apply the set `source` last delivered (it does
    /// not compile, or does not fit the kernel's maps): that source goes
    /// back to its previous set and reports `error`.
    pub fn reject(&mut self, source: &str, error: impl std::fmt::Display) {
        if let Some(state) = self.sources.get_mut(source) {
            state.current = state.previous.take();
            state.last_error = Some((error.to_string(), SystemTime::now()));
        }
    }

    /// Whether every source has sent its first update.
    pub fn ready(&self) -> bool {
        self.sources.values().all(|s| s.reported)
    }

    /// The last good sets of all sources together. Two sources may not
    /// define policies of the same name.
    pub fn merged(&self) -> Result<Vec<LoadedPolicy>, PolicyError> {
        let policies: Vec<LoadedPolicy> = self
            .sources
            .values()
            .filter_map(|s| s.current.as_ref())
            .flat_map(|a| a.policies.iter().cloned())
            .collect();
        check_unique_names(&policies)?;
        Ok(policies)
    }

    /// Per source: the set in force and the last error.
    pub fn status(&self) -> Vec<SourceStatus> {
        let time = |t: &SystemTime| format_time(*t);
        self.sources
            .iter()
            .map(|(name, state)| SourceStatus {
                source: name.clone(),
                origin: state.current.as_ref().map(|a| a.origin.clone()),
                digest: state.current.as_ref().and_then(|a| a.digest.clone()),
                loaded_at: state.current.as_ref().map(|a| time(&a.loaded_at)),
                policies: state.current.as_ref().map_or(0, |a| a.policies.len()),
                last_error: state.last_error.as_ref().map(|(e, _)| e.clone()),
                last_error_at: state.last_error.as_ref().map(|(_, t)| time(t)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    fn policies(name: &str) -> Vec<LoadedPolicy> {
        let text = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    agent: a\n"
        );
        parse_str(Path::new("p.yaml"), &text).unwrap()
    }

    fn update(source: &str, policies: Result<Vec<LoadedPolicy>, SourceError>) -> SourceUpdate {
        SourceUpdate {
            source: source.into(),
            origin: "test".into(),
            digest: None,
            policies,
            loaded_at: SystemTime::now(),
            read_time: None,
        }
    }

    #[test]
    fn merges_sources_and_keeps_the_last_good_set() {
        let mut desired = DesiredSet::new(["d".to_string(), "h".to_string()]);
        let first = desired
            .update(update("d", Ok(policies("one"))))
            .unwrap()
            .unwrap();
        assert_eq!(first.len(), 1);
        assert!(!desired.ready());
        let error = SourceError::Config("broken".into());
        assert!(desired.update(update("h", Err(error))).is_none());
        assert!(desired.ready());
        assert_eq!(desired.merged().unwrap().len(), 1);
        let both = desired
            .update(update("h", Ok(policies("two"))))
            .unwrap()
            .unwrap();
        assert_eq!(both.len(), 2);
        // A name defined by both sources is a clash.
        assert!(
            desired
                .update(update("h", Ok(policies("one"))))
                .unwrap()
                .is_err()
        );
        desired.reject("h", "policy name clash");
        assert_eq!(desired.merged().unwrap().len(), 2);
        let status = desired.status();
        assert_eq!(status[1].last_error.as_deref(), Some("policy name clash"));
        assert_eq!(status[1].policies, 1);
    }

    #[test]
    fn applies_nothing_until_every_source_has_reported() {
        let mut desired = DesiredSet::new(["d".to_string(), "h".to_string()]);
        assert!(matches!(
            desired.apply(update("h", Ok(policies("two")))),
            Step::Wait
        ));
        let Step::Apply(set) = desired.apply(update("d", Ok(policies("one")))) else {
            panic!("both sources reported: apply");
        };
        assert_eq!(set.len(), 2);
        let error = SourceError::Config("down".into());
        assert!(matches!(
            desired.apply(update("h", Err(error))),
            Step::Rejected(_)
        ));
        assert!(matches!(
            desired.apply(update("h", Ok(policies("one")))),
            Step::Rejected(e) if e.contains("already used")
        ));
        // The clash put the source back on its previous set.
        assert_eq!(desired.merged().unwrap().len(), 2);

        // The last source to report fails: the others' sets are applied.
        let mut desired = DesiredSet::new(["d".to_string(), "h".to_string()]);
        assert!(matches!(
            desired.apply(update("d", Ok(policies("one")))),
            Step::Wait
        ));
        let error = SourceError::Config("down".into());
        assert!(
            matches!(desired.apply(update("h", Err(error))), Step::Apply(set) if set.len() == 1)
        );
        // No source has a set: nothing to apply.
        let mut desired = DesiredSet::new(["h".to_string()]);
        let error = SourceError::Config("down".into());
        assert!(matches!(
            desired.apply(update("h", Err(error))),
            Step::Rejected(_)
        ));
    }

    #[test]
    fn configuration() {
        let config: PolicySourcesConfig = serde_norway::from_str(
            "http:\n  url: https://config.example/bundle.yaml\n  headers: {Authorization: Bearer x}\nrequireSignatures: false\n",
        )
        .unwrap();
        assert_eq!(config.http.as_ref().unwrap().interval_seconds, 30);
        assert_eq!(config.effective_directory(None), None);
        assert_eq!(
            config.effective_directory(Some(Path::new("/p"))),
            Some(PathBuf::from("/p"))
        );
        assert_eq!(
            PolicySourcesConfig::default().effective_directory(None),
            Some(PathBuf::from(DEFAULT_POLICY_DIR))
        );
        let error = serde_norway::from_str::<PolicySourcesConfig>("http: {url: x, interval: 3}\n")
            .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `interval`"),
            "{error}"
        );
    }
}

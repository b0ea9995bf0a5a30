//! A policy directory, watched with inotify.
//!
//! Two layouts are understood:
//!
//! * A plain directory: every `*.yaml` / `*.yml` file that is not hidden.
//!   Changes are debounced, so an editor's save or a `cp` of several files
//!   is one reload.
//! * A Kubernetes ConfigMap (or Secret) volume. The kubelet writes every
//!   version into a new hidden directory (`..2024_05_01_10_00_00.123`),
//!   points a `..data_tmp` symlink at it and renames that over `..data`;
//!   the visible files are symlinks to `..data/<name>`. The rename is the
//!   one atomic step, so it is the only event that counts, and the files
//!   are read through the directory `..data` pointed at when the read
//!   began: a swap is exactly one reload, to the complete new set, never a
//!   mix of old and new files.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::{SourceError, SourceUpdate, UPDATE_QUEUE, digest};
use crate::policy::{
    bundle::{TrustPolicy, check_unique_names},
    load::{LoadedPolicy, PolicyError, parse_str},
};

/// The symlink a ConfigMap volume swaps.
pub const DATA_LINK: &str = "..data";

/// How long the directory must be quiet after a change before it is read.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

/// Reads retried when the kubelet removes the directory being read: the
/// next read follows the new `..data`.
const READ_ATTEMPTS: usize = 5;

/// A watched policy directory.
#[derive(Clone, Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    trust: TrustPolicy,
    debounce: Duration,
}

/// Watches `dir` without signature checks; see [`DirectorySource::watch`].
pub fn watch(dir: &Path) -> Result<mpsc::Receiver<SourceUpdate>, SourceError> {
    DirectorySource::new(dir, TrustPolicy::none()).watch()
}

impl DirectorySource {
    /// A source for `dir` whose files must pass `trust`. With signatures
    /// required, every policy file must carry its own signature line.
    pub fn new(dir: impl Into<PathBuf>, trust: TrustPolicy) -> Self {
        Self {
            dir: dir.into(),
            trust,
            debounce: DEFAULT_DEBOUNCE,
        }
    }

    /// Sets how long the directory must be quiet before a change is read.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// The source's name in updates: `directory /etc/baton/policies`.
    pub fn name(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    /// Reads the directory now.
    pub fn read(&self) -> SourceUpdate {
        let loaded_at = SystemTime::now();
        let started = Instant::now();
        let (origin, digest, policies) = match snapshot(&self.dir) {
            Ok(snapshot) => {
                let digest = snapshot.digest();
                (snapshot.origin.clone(), Some(digest), self.parse(&snapshot))
            }
            Err(error) => (self.dir.display().to_string(), None, Err(error)),
        };
        SourceUpdate {
            source: self.name(),
            origin,
            digest,
            policies,
            loaded_at,
            read_time: Some(started.elapsed()),
        }
    }

    fn parse(&self, snapshot: &Snapshot) -> Result<Vec<LoadedPolicy>, SourceError> {
        let mut policies = Vec::new();
        for (path, bytes) in &snapshot.files {
            self.trust.check(&path.display().to_string(), bytes)?;
            let text = std::str::from_utf8(bytes).map_err(|_| PolicyError::Invalid {
                path: path.clone(),
                position: None,
                message: "not UTF-8 text".into(),
            })?;
            policies.extend(parse_str(path, text)?);
        }
        check_unique_names(&policies)?;
        Ok(policies)
    }

    /// Starts watching. The first update is the set as it is now; then one
    /// update per change: a new set, or an error when the directory no
    /// longer holds a valid one. A change that leaves every file as it was
    /// sends nothing. Stops when the receiver is dropped. Needs a tokio
    /// runtime.
    pub fn watch(self) -> Result<mpsc::Receiver<SourceUpdate>, SourceError> {
        let watch_error = |e: notify::Error| SourceError::Watch {
            path: self.dir.clone(),
            message: e.to_string(),
        };
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
        // The watch is set up before the first read, so that no change
        // between the two goes unseen.
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = raw_tx.send(event);
        })
        .map_err(watch_error)?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        let source = Arc::new(self);
        tokio::spawn(async move {
            // Dropping the watcher stops its inotify thread.
            let _watcher = watcher;
            let mut last: Option<(bool, Option<String>)> = None;
            loop {
                let reader = source.clone();
                let Ok(update) = tokio::task::spawn_blocking(move || reader.read()).await else {
                    return;
                };
                let seen = (update.policies.is_ok(), update.digest.clone());
                // Nothing new: same bytes with the same outcome.
                let unchanged = seen.1.is_some() && last.as_ref() == Some(&seen);
                last = Some(seen);
                if !unchanged && tx.send(update).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = next_change(&source, &mut raw_rx) => if !changed {
                        return;
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// Waits for a change that matters, then for the directory to be quiet.
/// Returns false when the watcher is gone.
async fn next_change(
    source: &DirectorySource,
    events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
) -> bool {
    loop {
        match events.recv().await {
            None => return false,
            Some(Ok(event)) if relevant(&source.dir, &event) => break,
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                // Lost events (a full inotify queue): read again to be sure.
                tracing::warn!(dir = %source.dir.display(), %error, "policy directory watch error");
                break;
            }
        }
    }
    loop {
        match tokio::time::timeout(source.debounce, events.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(Ok(event))) if !relevant(&source.dir, &event) => {}
            Ok(Some(_)) => {}
        }
    }
}

/// Whether an event can change the set.
fn relevant(dir: &Path, event: &notify::Event) -> bool {
    // Reads, including this source's own, change nothing.
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    if event.need_rescan() {
        return true;
    }
    // Once `..data` exists, the visible names are symlinks through it:
    // their creation and removal follow a swap that has already been seen.
    let configmap = dir.join(DATA_LINK).symlink_metadata().is_ok();
    event.paths.iter().any(|path| {
        if path == dir {
            return true;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        if name == DATA_LINK {
            return true;
        }
        !name.starts_with('.') && !configmap && is_policy_file_name(name)
    })
}

fn is_policy_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The bytes of every policy file, read from one version of the directory.
struct Snapshot {
    /// The directory, and the `..data` target read through.
    origin: String,
    /// Files as the user sees them, with their bytes, in name order.
    files: Vec<NamedBytes>,
}

impl Snapshot {
    fn digest(&self) -> String {
        let mut all = Vec::new();
        for (path, bytes) in &self.files {
            let name = path
                .file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default();
            all.extend_from_slice(&(name.len() as u64).to_le_bytes());
            all.extend_from_slice(name);
            all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            all.extend_from_slice(bytes);
        }
        digest(&all)
    }
}

fn snapshot(dir: &Path) -> Result<Snapshot, SourceError> {
    let io = |path: &Path, source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = dir.join(DATA_LINK);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (base, origin) = match std::fs::read_link(&data) {
            // Resolved once: every file is read from this one version even
            // if `..data` moves on meanwhile.
            Ok(target) => (
                dir.join(&target),
                format!("{} ({DATA_LINK} -> {})", dir.display(), target.display()),
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                (dir.to_path_buf(), dir.display().to_string())
            }
            // `..data` that is not a symlink: read it as the directory.
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                (data.clone(), format!("{} ({DATA_LINK})", dir.display()))
            }
            Err(e) => return Err(io(&data, e)),
        };
        match read_files(&base, dir) {
            Ok(files) if files.is_empty() => {
                return Err(PolicyError::Empty(dir.to_path_buf()).into());
            }
            Ok(files) => return Ok(Snapshot { origin, files }),
            // The kubelet removed that version after a newer swap.
            Err((_, e))
                if e.kind() == ErrorKind::NotFound && base != dir && attempt < READ_ATTEMPTS => {}
            Err((path, e)) => return Err(io(&path, e)),
        }
    }
}

/// A file as the user sees it (`dir/name`) and its bytes.
type NamedBytes = (PathBuf, Vec<u8>);

/// An I/O error and the path it happened on.
type PathError = (PathBuf, std::io::Error);

/// Reads the policy files in `base`, naming them as files of `shown`.
fn read_files(base: &Path, shown: &Path) -> Result<Vec<NamedBytes>, PathError> {
    let entries = std::fs::read_dir(base).map_err(|e| (base.to_path_buf(), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| (base.to_path_buf(), e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_policy_file_name(&name) {
            continue;
        }
        // Following symlinks: the visible names of a ConfigMap are links.
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_file() => names.push(name),
            Ok(_) => {}
            Err(e) => return Err((entry.path(), e)),
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(base.join(&name)).map_err(|e| (base.join(&name), e))?;
            Ok((shown.join(name), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    #[test]
    fn only_the_data_swap_counts_in_a_configmap() {
        let dir = std::env::temp_dir().join(format!("baton-dir-relevant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let create = EventKind::Create(CreateKind::Any);
        assert!(relevant(&dir, &event(create, &dir.join("a.yaml"))));
        assert!(!relevant(&dir, &event(create, &dir.join(".a.yaml.swp"))));
        assert!(!relevant(&dir, &event(create, &dir.join("notes.txt"))));
        std::os::unix::fs::symlink("..2024", dir.join(DATA_LINK)).unwrap();
        assert!(!relevant(&dir, &event(create, &dir.join("a.yaml"))));
        assert!(!relevant(&dir, &event(create, &dir.join("..data_tmp"))));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(relevant(&dir, &event(renamed, &dir.join(DATA_LINK))));
        let read = EventKind::Access(notify::event::AccessKind::Any);
        assert!(!relevant(&dir, &event(read, &dir.join(DATA_LINK))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

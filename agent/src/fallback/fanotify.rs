//! Fanotify permission events: file and exec deny rules for agents that no
//! Landlock ruleset covers (selected by cgroup, systemd unit or executable)
//! on kernels where BPF LSM cannot load.
//!
//! The daemon marks the paths that some such agent's rules deny with
//! `FAN_OPEN_PERM` and `FAN_OPEN_EXEC_PERM`. The kernel then holds every
//! open (and every open for exec) of a marked object until a dedicated
//! thread answers; opens of anything unmarked never reach the daemon.
//!
//! What is marked, and why:
//! - a rule naming a file (or anything but a directory): its parent
//!   directory, with `FAN_EVENT_ON_CHILD`, so a file replaced by a rename
//!   is still covered; the listener matches the path itself.
//! - a rule naming a directory (a subtree): every folder in it (with
//!   `FAN_EVENT_ON_CHILD`) and every file in it (an inode mark, which
//!   moves with the file), up to [`TREE_MARKS`] objects in all, plus every
//!   mount below it. Opens elsewhere on its mount never reach the daemon.
//!   A folder made in the tree later is reported by inotify and marked by
//!   a thread of its own; a file of the tree opened through another name
//!   (moved or linked out, a bind mount, another root) is decided as the
//!   path it had when the policy was loaded.
//! - a bigger tree, or a path that does not exist yet: the mount holding
//!   it and every mount below it. A mount mark sees the whole subtree, at
//!   the cost that every open on that mount, by any process, waits for the
//!   daemon's answer (about 100 us on a small VM, against 1 us).
//!
//! The listener never opens a marked object itself: it only reads `/proc`
//! (which cannot carry permission marks) and the kernel's maps, so it cannot
//! wait on its own events. Audit records are built on another thread.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use serde::{Deserialize, Serialize};

use agent_common::{
    event::{EVENT_PATH_BYTES, EVENT_VERSION, FileEvent, file_flags, hook, kind},
    files::{FileValue, PATH_KEY_BYTES, SECRET_SLOT, right},
    identity::{AgentCounters, AgentRecord, AgentRuntime, SecretTaint},
    map_names,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use nix::{
    errno::Errno,
    sys::{
        fanotify::{
            EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
        },
        inotify::{AddWatchFlags, InitFlags as InotifyFlags, Inotify, WatchDescriptor},
    },
};
use thiserror::Error;

use procfs::process::Syscall;

use crate::{
    ids::{AgentId, Generation},
    policy::{CompiledPolicySet, compile::CompiledAgent, spec::Name},
};

/// Audit events waiting for the daemon before new ones are counted as lost.
const EVENT_QUEUE: usize = 4096;

/// Errors starting the fanotify fallback.
#[derive(Debug, Error)]
pub enum FanotifyError {
    /// No fanotify group with permission events: the kernel lacks
    /// `CONFIG_FANOTIFY_ACCESS_PERMISSIONS`, or the daemon lacks
    /// `CAP_SYS_ADMIN`.
    #[error(
        "cannot open a fanotify group for permission events (needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS and CAP_SYS_ADMIN): {0}"
    )]
    Init(#[source] Errno),
    /// A kernel map the listener reads could not be opened.
    #[error("cannot open the kernel map {map} for the fanotify listener: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The listener thread could not be started.
    #[error("cannot start the fanotify listener thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Whether this kernel gives Baton fanotify permission events; the error
/// says why not.
pub fn available() -> Result<(), String> {
    Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY,
    )
    .map(drop)
    .map_err(|e| FanotifyError::Init(e).to_string())
}

// ---------------------------------------------------------------- rules

/// One agent's rules as the listener evaluates them: the same flattened
/// prefixes and defaults the kernel programs get.
#[derive(Clone, Debug)]
struct AgentRules {
    mode: u8,
    file_default: u8,
    file_default_rule: u32,
    exec_default: u8,
    exec_default_rule: u32,
    allow_anonymous_exec: bool,
    /// Key bytes (path with a trailing `/`) and decisions.
    entries: Vec<(Vec<u8>, FileValue)>,
    /// The files of the agent's secrets by (device, inode), found when the
    /// policy was loaded, with their rule ids: an open through another name
    /// (a hard link, a rename, a bind mount) is still an open of the
    /// secret. Shared, as the rules are copied for every event.
    secret_inodes: Arc<HashMap<(u64, u64), u32>>,
}

/// Files looked at per secret directory when its inodes are collected.
const SECRET_FILES_PER_DIRECTORY: usize = 4096;

/// The regular files of `path` (itself, or those under it, at most
/// [`SECRET_FILES_PER_DIRECTORY`]) by (device, inode).
fn secret_files(path: &str) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = Vec::new();
    let mut pending = vec![std::path::PathBuf::from(path)];
    let mut seen = 0;
    while let Some(at) = pending.pop() {
        seen += 1;
        if seen > SECRET_FILES_PER_DIRECTORY {
            tracing::warn!(
                path,
                "secret directory holds more than {SECRET_FILES_PER_DIRECTORY} entries: the rest are matched by path only"
            );
            break;
        }
        let Ok(metadata) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if metadata.is_file() {
            found.push((metadata.dev(), metadata.ino()));
        } else if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&at)
        {
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    found
}

impl AgentRules {
    fn of(agent: &CompiledAgent) -> Self {
        Self {
            mode: agent.mode,
            file_default: agent.file_default,
            file_default_rule: agent.file_default_rule.raw(),
            exec_default: agent.exec_default,
            exec_default_rule: agent.exec_default_rule.raw(),
            allow_anonymous_exec: agent.allow_anonymous_exec,
            entries: agent
                .files
                .iter()
                .map(|entry| (entry.key.clone(), entry.value))
                .collect(),
            secret_inodes: Arc::new(
                agent
                    .secrets
                    .iter()
                    .flat_map(|(path, rule_id)| {
                        secret_files(path)
                            .into_iter()
                            .map(move |inode| (inode, rule_id.raw()))
                    })
                    .collect(),
            ),
        }
    }

    /// What the kernel programs do for an agent whose policy is gone: hold
    /// it closed rather than let it loose.
    fn deny_all() -> Self {
        Self {
            mode: mode::ENFORCE,
            file_default: decision::DENY,
            file_default_rule: 0,
            exec_default: decision::DENY,
            exec_default_rule: 0,
            allow_anonymous_exec: false,
            entries: Vec::new(),
            secret_inodes: Arc::default(),
        }
    }

    /// The entry the kernel's longest-prefix lookup finds for `path`.
    fn entry(&self, path: &str) -> Option<&FileValue> {
        let mut key = path.as_bytes().to_vec();
        if key.len() < PATH_KEY_BYTES {
            if key.last() != Some(&b'/') {
                key.push(b'/');
            }
        } else {
            key.truncate(PATH_KEY_BYTES);
        }
        self.entries
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, value)| value)
    }

    /// The rule id of the secret `path` is, or is under.
    fn secret_of(&self, path: &str) -> Option<u32> {
        self.entry(path)
            .filter(|value| value.decisions[SECRET_SLOT] == decision::ALLOW)
            .map(|value| value.rule_ids[SECRET_SLOT])
    }

    /// `(decision, rule id, denied rights)` for `rights` on `path`, as the
    /// kernel's longest-prefix lookup and per-right scan decide them.
    fn decide(&self, path: &str, rights: u32) -> (u8, u32, u32) {
        let value = self.entry(path);
        let (mut denied, mut deny_rule, mut allow_rule, mut canary) = (0, 0, 0, false);
        for r in (0..right::COUNT).filter(|r| rights & right::bit(*r) != 0) {
            let (mut found, mut rule_id) =
                value.map_or((decision::NONE, 0), |v| (v.decisions[r], v.rule_ids[r]));
            if found == decision::NONE {
                (found, rule_id) = if r == right::EXEC {
                    (self.exec_default, self.exec_default_rule)
                } else {
                    (self.file_default, self.file_default_rule)
                };
            }
            if found == decision::DENY || found == decision::CANARY {
                denied |= right::bit(r);
                if deny_rule == 0 || found == decision::CANARY {
                    deny_rule = rule_id;
                }
                canary |= found == decision::CANARY;
            } else if allow_rule == 0 {
                allow_rule = rule_id;
            }
        }
        if canary {
            (decision::CANARY, deny_rule, denied)
        } else if denied != 0 {
            (decision::DENY, deny_rule, denied)
        } else {
            (decision::ALLOW, allow_rule, 0)
        }
    }
}

/// The rules in force, swapped whole on every policy reload.
#[derive(Default)]
struct Rules {
    generation: Generation,
    agents: HashMap<AgentId, AgentRules>,
}

// ---------------------------------------------------------------- marks

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MarkKind {
    /// `FAN_MARK_MOUNT` on a mount point.
    Mount,
    /// An inode mark on a directory, with `FAN_EVENT_ON_CHILD`.
    Directory,
    /// An inode mark on a file (a secret): its opens through any name.
    File,
}

/// Marks by kind and path, with their mask bits.
type Marks = BTreeMap<(MarkKind, String), u64>;

fn covers(outer: &str, inner: &str) -> bool {
    outer == "/" || inner == outer || inner.starts_with(&format!("{outer}/"))
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(at) if at > 0 => Some(&path[..at]),
        _ => None,
    }
}

/// The mount point holding `path`: the longest one that covers it.
fn mount_of<'a>(mounts: &'a [String], path: &str) -> &'a str {
    mounts
        .iter()
        .filter(|mount| covers(mount, path))
        .max_by_key(|mount| mount.len())
        .map_or("/", String::as_str)
}

/// Folders and files marked one by one across every denied tree (see
/// [`walk_tree`]); a tree that would pass it is watched through its mount.
/// Each inode mark pins its inode in the kernel's memory.
const TREE_MARKS: usize = 4096;

/// A denied folder's subtree, as marked object by object.
#[derive(Debug, Default, PartialEq)]
struct Tree {
    folders: Vec<String>,
    /// Regular files and what they are, by (device, inode).
    files: Vec<(String, (u64, u64))>,
}

/// The folders and regular files under `root` on its own mount (mounts
/// below it are marked as mounts), symbolic links not followed; `None`
/// when there are more than `budget`, which is then left as it was.
fn walk_tree(root: &str, budget: &mut usize) -> Option<Tree> {
    use std::os::unix::fs::MetadataExt as _;
    let device = std::fs::symlink_metadata(root).ok()?.dev();
    let mut tree = Tree::default();
    let mut pending = vec![root.to_string()];
    let mut used = 0;
    while let Some(at) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if metadata.dev() != device {
            continue;
        }
        used += 1;
        if used > *budget {
            return None;
        }
        if metadata.is_file() {
            tree.files.push((at, (metadata.dev(), metadata.ino())));
        } else if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&at) {
                pending.extend(
                    entries
                        .flatten()
                        .map(|entry| entry.path().display().to_string()),
                );
            }
            tree.folders.push(at);
        }
    }
    *budget -= used;
    Some(tree)
}

/// What the listener is told to watch, and how.
#[derive(Debug, Default)]
struct Plan {
    marks: Marks,
    /// What cannot be watched, for the daemon to report.
    unwatched: Vec<String>,
    /// Denied folders marked one by one, with their mask: a folder made in
    /// one of them later is marked as it appears ([`TreeWatch`]).
    folders: BTreeMap<String, u64>,
    /// The files of those trees, by (device, inode), with their path when
    /// the policy was loaded: moved or linked elsewhere, they are still
    /// decided as that path.
    files: HashMap<(u64, u64), String>,
    /// Each tree's root and how many objects it marked, for `baton status`.
    trees: Vec<(String, usize)>,
}

impl Plan {
    /// Marks `tree`'s folders (their children's opens too) and files.
    fn add_tree(&mut self, tree: Tree, mask: u64) {
        for folder in tree.folders {
            *self
                .marks
                .entry((MarkKind::Directory, folder.clone()))
                .or_default() |= mask | MaskFlags::FAN_EVENT_ON_CHILD.bits();
            *self.folders.entry(folder).or_default() |= mask;
        }
        for (file, inode) in tree.files {
            *self
                .marks
                .entry((MarkKind::File, file.clone()))
                .or_default() |= mask;
            self.files.insert(inode, file);
        }
    }
}

/// The marks that make the kernel ask about every open of `rules`' paths,
/// and what cannot be watched. `rules` are `(path, rights denied)`.
///
/// A denied folder is marked object by object (every folder and file in
/// it, up to `budget` in all), so that opens anywhere else on its mount
/// never wait for the daemon; a bigger tree, or a path that does not exist
/// yet, is watched through its mount, as are mounts below a denied folder.
fn plan_marks(rules: &[(String, u32)], mounts: &[String], mut budget: usize) -> Plan {
    let mut plan = Plan::default();
    let open_rights = right::bit(right::READ) | right::bit(right::WRITE);
    for (path, rights) in rules {
        let mut mask = 0;
        if rights & open_rights != 0 {
            mask |= MaskFlags::FAN_OPEN_PERM.bits();
        }
        if rights & right::bit(right::EXEC) != 0 {
            mask |= MaskFlags::FAN_OPEN_EXEC_PERM.bits();
        }
        if mask == 0 {
            plan.unwatched.push(format!(
                "{path}: only create, delete or rename are denied, which fanotify cannot see"
            ));
            continue;
        }
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if !metadata.is_dir() => {
                let dir = parent(path).unwrap_or("/").to_string();
                *plan.marks.entry((MarkKind::Directory, dir)).or_default() |=
                    mask | MaskFlags::FAN_EVENT_ON_CHILD.bits();
            }
            found => {
                for below in mounts.iter().filter(|m| *m != path && covers(path, m)) {
                    *plan
                        .marks
                        .entry((MarkKind::Mount, below.clone()))
                        .or_default() |= mask;
                }
                if found.is_ok()
                    && let Some(tree) = walk_tree(path, &mut budget)
                {
                    plan.trees
                        .push((path.clone(), tree.folders.len() + tree.files.len()));
                    plan.add_tree(tree, mask);
                    continue;
                }
                // A path that may appear later, or a tree too big to mark
                // object by object: everything on its mount.
                let mut at = path.as_str();
                if found.is_err() {
                    while !Path::new(at).exists() {
                        at = parent(at).unwrap_or("/");
                    }
                }
                *plan
                    .marks
                    .entry((MarkKind::Mount, mount_of(mounts, at).to_string()))
                    .or_default() |= mask;
            }
        }
    }
    plan
}

/// What inotify is asked to report in a marked folder: a folder made in
/// it, or moved into it.
fn folder_watch_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR
}

/// Folders made in a tree marked object by object, marked as they appear:
/// inotify reports each one, and a thread of its own marks it (and what
/// it holds, when it was moved in) within moments. Until then, a file
/// created in it is not watched; a file moved into it from the tree still
/// is (its own mark moves with it).
struct TreeWatch {
    inotify: Inotify,
    /// Each watched folder, with the fanotify mask its tree is marked with.
    folders: Mutex<HashMap<WatchDescriptor, (String, u64)>>,
}

impl TreeWatch {
    fn new() -> Result<Self, FanotifyError> {
        Ok(Self {
            inotify: Inotify::init(InotifyFlags::IN_CLOEXEC).map_err(FanotifyError::Init)?,
            folders: Mutex::default(),
        })
    }

    /// Watches exactly `folders`: new ones first, then the others go.
    fn replace(&self, folders: &BTreeMap<String, u64>) {
        let mut watched = self.folders.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fresh = HashMap::new();
        for (folder, mask) in folders {
            match self
                .inotify
                .add_watch(folder.as_str(), folder_watch_flags())
            {
                Ok(wd) => {
                    fresh.insert(wd, (folder.clone(), *mask));
                }
                Err(error) => {
                    tracing::warn!(folder, %error, "new folders here will not be watched");
                }
            }
        }
        for wd in watched.keys().filter(|wd| !fresh.contains_key(wd)) {
            // Gone with its folder, or no longer denied.
            let _ = self.inotify.rm_watch(*wd);
        }
        *watched = fresh;
    }
}

/// Marks each folder made in a marked tree, forever.
fn follow_trees(group: &Fanotify, watch: &TreeWatch, shared: &Shared) {
    loop {
        let events = match watch.inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(error) => {
                tracing::error!(%error, "cannot read inotify events");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Reports were lost: look at every watched folder again.
                tracing::warn!("inotify's queue overflowed; looking at the denied trees again");
                rescan_trees(group, watch, shared);
                continue;
            }
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The folder is gone (or no longer watched): its share of
                // the bound is free again.
                let forgotten = watch
                    .folders
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&event.wd);
                if forgotten.is_some() {
                    let _ = shared.tree_budget.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |left| Some((left + 1).min(TREE_MARKS)),
                    );
                }
                continue;
            }
            if !event.mask.contains(AddWatchFlags::IN_ISDIR) {
                continue;
            }
            let Some(name) = event.name else {
                continue;
            };
            let parent = watch
                .folders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&event.wd)
                .cloned();
            let Some((parent, mask)) = parent else {
                continue;
            };
            let folder = format!("{parent}/{}", name.to_string_lossy());
            mark_new_folder(group, watch, shared, &folder, mask);
        }
    }
}

/// Marks every folder in a watched folder that is not watched yet, after
/// inotify lost reports.
fn rescan_trees(group: &Fanotify, watch: &TreeWatch, shared: &Shared) {
    let watched: Vec<(String, u64)> = watch
        .folders
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    let known: std::collections::HashSet<&str> =
        watched.iter().map(|(folder, _)| folder.as_str()).collect();
    for (folder, mask) in &watched {
        let Ok(entries) = std::fs::read_dir(folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path().display().to_string();
            let is_folder = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if is_folder && !known.contains(path.as_str()) {
                mark_new_folder(group, watch, shared, &path, *mask);
            }
        }
    }
}

/// Marks `folder`, new in a marked tree, and what it holds. Each folder
/// is watched before it is listed, so that none made meanwhile is missed.
fn mark_new_folder(group: &Fanotify, watch: &TreeWatch, shared: &Shared, folder: &str, mask: u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(top) = std::fs::symlink_metadata(folder) else {
        return;
    };
    let device = top.dev();
    let mut pending = vec![folder.to_string()];
    let mut files = Vec::new();
    while let Some(at) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if metadata.dev() != device {
            continue;
        }
        let over = shared
            .tree_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_err();
        if over {
            mark_whole_mount(group, shared, &at, mask);
            return;
        }
        let (kind, bits) = if metadata.is_dir() {
            if let Ok(wd) = watch.inotify.add_watch(at.as_str(), folder_watch_flags()) {
                watch
                    .folders
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(wd, (at.clone(), mask));
            }
            (
                MarkKind::Directory,
                mask | MaskFlags::FAN_EVENT_ON_CHILD.bits(),
            )
        } else if metadata.is_file() {
            files.push(((metadata.dev(), metadata.ino()), at.clone()));
            (MarkKind::File, mask)
        } else {
            continue;
        };
        match group.mark(
            MarkFlags::FAN_MARK_ADD | mark_flags(kind),
            MaskFlags::from_bits_retain(bits),
            nix::fcntl::AT_FDCWD,
            Some(at.as_str()),
        ) {
            Ok(()) => add_mark(shared, kind, &at, bits),
            Err(error) => {
                tracing::warn!(path = at, %error, "an object new in a denied tree is not watched");
            }
        }
        if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&at)
        {
            pending.extend(
                entries
                    .flatten()
                    .map(|entry| entry.path().display().to_string()),
            );
        }
    }
    shared
        .tree_files
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(files);
}

/// Past [`TREE_MARKS`]: the whole mount of `path`, which sees everything.
fn mark_whole_mount(group: &Fanotify, shared: &Shared, path: &str, mask: u64) {
    let mounts = crate::kernel::cgroup::all_mount_points(
        &crate::kernel::cgroup::mounts().unwrap_or_default(),
    );
    let mount = mount_of(&mounts, path).to_string();
    if group
        .mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::from_bits_retain(mask),
            nix::fcntl::AT_FDCWD,
            Some(mount.as_str()),
        )
        .is_ok()
    {
        add_mark(shared, MarkKind::Mount, &mount, mask);
    }
    // Once until the next policy load: every folder after it would say
    // the same.
    if !shared.past_tree_marks.swap(true, Ordering::Relaxed) {
        shared.degraded(format!(
            "control degraded: {path} is new in a denied folder past the {TREE_MARKS} objects marked one by one; the whole mount {mount} is watched until the next policy load"
        ));
    }
}

/// Remembers a mark the tree thread added, for the next policy load.
fn add_mark(shared: &Shared, kind: MarkKind, path: &str, mask: u64) {
    *shared
        .added_marks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((kind, path.to_string()))
        .or_default() |= mask;
}

fn mark_flags(kind: MarkKind) -> MarkFlags {
    match kind {
        MarkKind::Mount => MarkFlags::FAN_MARK_MOUNT,
        MarkKind::Directory => MarkFlags::FAN_MARK_ONLYDIR,
        MarkKind::File => MarkFlags::empty(),
    }
}

// ---------------------------------------------------------------- listener

/// What the listener thread shares with the daemon.
struct Shared {
    rules: RwLock<Rules>,
    /// The files of the trees marked object by object, by (device, inode),
    /// with their path when the policy was loaded.
    tree_files: RwLock<HashMap<(u64, u64), String>>,
    /// Marks the tree thread added since the last policy load.
    added_marks: Mutex<Marks>,
    /// How many more objects the tree thread may mark one by one.
    tree_budget: AtomicUsize,
    /// Whether the tree thread said it went past [`TREE_MARKS`] since the
    /// last policy load.
    past_tree_marks: AtomicBool,
    identity: BpfHashMap<MapData, u32, AgentRecord>,
    /// Agent processes that exited lately, for reports that arrive after
    /// their process (the audit subsystem's of seccomp refusals).
    exited: BpfHashMap<MapData, u32, AgentRecord>,
    runtime: BpfHashMap<MapData, u32, AgentRuntime>,
    /// Where the listener taints an agent that opened a secret, as BPF LSM
    /// would, before it answers the open.
    taints: Mutex<BpfHashMap<MapData, u32, SecretTaint>>,
    events: tokio::sync::mpsc::Sender<Finding>,
    lost: AtomicU64,
    own_tgid: u32,
    /// What the listener decided, per agent, for the breakers: counted
    /// here, where every decision is made, not from the records, which a
    /// full queue can lose.
    counts: Mutex<HashMap<AgentId, FallbackCounts>>,
    /// `baton exec` root processes admitted with a Landlock plan, newest
    /// last: Landlock's report of a denial arrives after the syscall, when
    /// the denied process (and its identity entry) may be gone, but it
    /// names the domain's creator, which is such a root.
    exec_roots: Mutex<std::collections::VecDeque<AgentRecord>>,
    /// Times Landlock's reports were lost (the audit socket overflowed).
    landlock_lost: AtomicU64,
    /// Times the audit subsystem was found switched off.
    audit_switched_off: AtomicU64,
    /// Why the reader of Landlock's reports stopped, if it did.
    landlock_stopped: Mutex<Option<String>>,
    /// The daemon's executable, which `baton exec` also runs.
    own_exe: Option<String>,
}

/// How many `baton exec` roots [`Shared::exec_roots`] remembers.
const EXEC_ROOTS_REMEMBERED: usize = 4096;

/// A handle on the fanotify listener's per-agent counts.
#[derive(Clone)]
pub struct FallbackCounter(Arc<Shared>);

impl FallbackCounter {
    /// What the listener decided for `agent_id` so far.
    pub fn of(&self, agent_id: AgentId) -> Option<FallbackCounts> {
        self.0
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent_id)
            .copied()
    }

    /// What the listener has decided for each agent so far, the counts a
    /// previous daemon handed over ([`Self::carry_over`]) included.
    pub fn counts(&self) -> HashMap<AgentId, FallbackCounts> {
        self.0
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts from the counts a previous daemon saved, so that counters
    /// never go backwards across a restart.
    pub fn carry_over(&self, saved: &HashMap<AgentId, FallbackCounts>) {
        let mut counts = self.0.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for (agent_id, saved) in saved {
            let now = counts.entry(*agent_id).or_default();
            now.denied_files += saved.denied_files;
            now.file_writes += saved.file_writes;
            now.canary_hits += saved.canary_hits;
            now.denied_sockets += saved.denied_sockets;
        }
    }

    /// Decisions the listener could not queue for the audit trail (each
    /// was still made).
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Ordering::Relaxed)
    }

    /// Times Landlock's denial reports were lost before the daemon read
    /// them (the audit socket overflowed); the denials themselves stood.
    pub fn landlock_lost(&self) -> u64 {
        self.0.landlock_lost.load(Ordering::Relaxed)
    }
}

/// Per-agent counts of the fanotify listener's decisions, added to the
/// kernel's counters of the same names wherever counters are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackCounts {
    /// Opens and execs denied (or would-be denied, in audit mode).
    pub denied_files: u64,
    /// Opens for writing decided.
    pub file_writes: u64,
    /// Opens of a canary.
    pub canary_hits: u64,
    /// Sockets of a family the policy does not allow, refused by the
    /// seccomp filter of `baton exec`.
    #[serde(default)]
    pub denied_sockets: u64,
}

impl FallbackCounts {
    /// Adds these counts to the kernel's.
    pub fn add_to(self, counters: &mut AgentCounters) {
        counters.denied_files += self.denied_files;
        counters.file_writes += self.file_writes;
        counters.canary_hits += self.canary_hits;
        counters.denied_sockets += self.denied_sockets;
    }
}

/// The daemon's fanotify group, its marks and its listener thread.
pub struct Watcher {
    group: Arc<Fanotify>,
    shared: Arc<Shared>,
    marks: Marks,
    /// New folders in the trees marked object by object.
    tree_watch: Arc<TreeWatch>,
    /// Those trees' roots and how many objects each marked.
    trees: Vec<(String, usize)>,
    /// Objects a policy load may mark one by one: [`TREE_MARKS`], or none
    /// when denied folders are watched through their whole mount.
    tree_marks: usize,
    /// Why Landlock's denials are not recorded, when they are not.
    landlock_log: Option<String>,
}

/// What [`Watcher::start`] hands the daemon: the watcher and the stream of
/// decisions to record.
pub type Started = (Watcher, tokio::sync::mpsc::Receiver<Finding>);

/// What the listener and the Landlock report reader hand the daemon to
/// record.
#[derive(Debug)]
pub enum Finding {
    /// A decision, as a kernel file event.
    Decision(Box<FileEvent>),
    /// Something that weakens what is recorded (the audit subsystem found
    /// off, a rule filtering Landlock's reports out, records the kernel
    /// dropped), for a `control degraded` record.
    Degraded(String),
}

impl Watcher {
    /// Opens the group and starts the listener. `identity` and `runtime`
    /// are handles on the kernel's `tgid → agent` and agent state maps
    /// (the listener reads them without the daemon's locks). Nothing is
    /// marked until [`Watcher::update`].
    /// `landlock_audit` (`files.landlockAudit`): whether to also record
    /// the denials Landlock reports for `baton exec` agents
    /// ([`super::landlock_log`]), through the same decisions and counts.
    pub fn start(
        identity: MapData,
        exited: MapData,
        runtime: MapData,
        taints: MapData,
        landlock_audit: bool,
    ) -> Result<Started, FanotifyError> {
        // FAN_REPORT_TID: the opening thread, whose pending syscall says
        // whether it opens for reading or writing.
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_REPORT_TID
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            // O_NONBLOCK: the kernel opens each event's file for the
            // listener, and a FIFO must not make it wait for a writer.
            EventFFlags::O_RDONLY
                | EventFFlags::O_LARGEFILE
                | EventFFlags::O_CLOEXEC
                | EventFFlags::O_NONBLOCK
                | EventFFlags::O_NOATIME,
        )
        .map_err(FanotifyError::Init)?;
        let identity =
            BpfHashMap::try_from(Map::HashMap(identity)).map_err(|source| FanotifyError::Map {
                map: map_names::AGENT_OF_TGID,
                source,
            })?;
        let exited =
            BpfHashMap::try_from(Map::LruHashMap(exited)).map_err(|source| FanotifyError::Map {
                map: map_names::EXITED_AGENTS,
                source,
            })?;
        let runtime =
            BpfHashMap::try_from(Map::HashMap(runtime)).map_err(|source| FanotifyError::Map {
                map: map_names::AGENT_STATE,
                source,
            })?;
        let taints =
            BpfHashMap::try_from(Map::HashMap(taints)).map_err(|source| FanotifyError::Map {
                map: map_names::SECRET_TAINTS,
                source,
            })?;
        let (sender, receiver) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            rules: RwLock::new(Rules::default()),
            tree_files: RwLock::default(),
            added_marks: Mutex::default(),
            tree_budget: AtomicUsize::new(0),
            past_tree_marks: AtomicBool::new(false),
            identity,
            exited,
            runtime,
            taints: Mutex::new(taints),
            events: sender,
            lost: AtomicU64::new(0),
            own_tgid: std::process::id(),
            counts: Mutex::default(),
            exec_roots: Mutex::default(),
            landlock_lost: AtomicU64::new(0),
            audit_switched_off: AtomicU64::new(0),
            landlock_stopped: Mutex::default(),
            own_exe: std::env::current_exe()
                .ok()
                .map(|exe| exe.display().to_string()),
        });
        let group = Arc::new(group);
        let (listener_group, listener_shared) = (group.clone(), shared.clone());
        std::thread::Builder::new()
            .name("baton-fanotify".into())
            .spawn(move || listen(&listener_group, &listener_shared))
            .map_err(FanotifyError::Thread)?;
        let tree_watch = Arc::new(TreeWatch::new()?);
        let (tree_group, tree_shared, tree_follower) =
            (group.clone(), shared.clone(), tree_watch.clone());
        std::thread::Builder::new()
            .name("baton-fan-trees".into())
            .spawn(move || follow_trees(&tree_group, &tree_follower, &tree_shared))
            .map_err(FanotifyError::Thread)?;
        let reporter = shared.clone();
        let landlock_log = super::landlock_log::start(landlock_audit, move |report| {
            reporter.landlock_report(report);
        })
        .err()
        .map(|error| {
            tracing::warn!(%error, "Landlock denials are not recorded");
            error.to_string()
        });
        Ok((
            Self {
                group,
                shared,
                marks: Marks::new(),
                tree_watch,
                trees: Vec::new(),
                tree_marks: TREE_MARKS,
                landlock_log,
            },
            receiver,
        ))
    }

    /// Follows a new policy set: the listener decides by the new rules
    /// from now on, and the marks are recomputed (new marks are added
    /// before stale ones go, so nothing is unwatched in between).
    /// `exclude` are rule paths to leave unmarked (Baton's own paths).
    /// Returns what cannot be watched, for the daemon to report.
    pub fn update(
        &mut self,
        set: &CompiledPolicySet,
        ids: &BTreeMap<Name, AgentId>,
        generation: Generation,
        exclude: &[(String, u32)],
    ) -> Vec<String> {
        let agents = set
            .agents
            .iter()
            .filter_map(|(name, agent)| Some((*ids.get(name)?, AgentRules::of(agent))))
            .collect();
        if let Ok(mut rules) = self.shared.rules.write() {
            *rules = Rules { generation, agents };
        }
        let mut denied: BTreeMap<String, u32> = BTreeMap::new();
        for agent in set.agents.values().filter(|a| a.selected_outside_exec()) {
            for rule in agent.file_rules.iter().filter(|rule| {
                matches!(rule.decision, decision::DENY | decision::CANARY)
                    && !exclude.iter().any(|(path, _)| *path == rule.path)
            }) {
                *denied.entry(rule.path.clone()).or_default() |= rule.rights;
            }
        }
        // Secrets of every agent, `baton exec` ones included: an open of
        // one must reach the listener, which taints the agent before it
        // answers (Landlock reports denials only).
        for agent in set.agents.values() {
            for (path, _) in agent
                .secrets
                .iter()
                .filter(|(path, _)| !exclude.iter().any(|(excluded, _)| excluded == path))
            {
                *denied.entry(path.clone()).or_default() |= right::bit(right::READ);
            }
        }
        let mounts = crate::kernel::cgroup::all_mount_points(
            &crate::kernel::cgroup::mounts().unwrap_or_default(),
        );
        let plan = plan_marks(
            &denied.into_iter().collect::<Vec<_>>(),
            &mounts,
            self.tree_marks,
        );
        let (mut wanted, mut unwatched) = (plan.marks, plan.unwatched);
        // A secret file is marked itself too: opened through a hard link
        // elsewhere, it raises no event in its directory.
        for agent in set.agents.values() {
            for (path, _) in &agent.secrets {
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
                    *wanted.entry((MarkKind::File, path.clone())).or_default() |=
                        MaskFlags::FAN_OPEN_PERM.bits();
                }
            }
        }
        // What the tree thread marked since is on the group too.
        for (key, mask) in std::mem::take(
            &mut *self
                .shared
                .added_marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            *self.marks.entry(key).or_default() |= mask;
        }
        let mut applied = Marks::new();
        for ((kind, path), mask) in &wanted {
            let old = self.marks.get(&(*kind, path.clone())).copied().unwrap_or(0);
            let result = if mask & !old == 0 {
                Ok(())
            } else {
                self.group.mark(
                    MarkFlags::FAN_MARK_ADD | mark_flags(*kind),
                    MaskFlags::from_bits_retain(*mask),
                    nix::fcntl::AT_FDCWD,
                    Some(path.as_str()),
                )
            };
            match result {
                Ok(()) => {
                    applied.insert((*kind, path.clone()), *mask);
                }
                Err(error) => unwatched.push(format!("{path}: cannot be watched: {error}")),
            }
        }
        for ((kind, path), old) in &self.marks {
            let keep = applied.get(&(*kind, path.clone())).copied().unwrap_or(0);
            let removed = old & !keep;
            if removed == 0 {
                continue;
            }
            if let Err(error) = self.group.mark(
                MarkFlags::FAN_MARK_REMOVE | mark_flags(*kind),
                MaskFlags::from_bits_retain(removed),
                nix::fcntl::AT_FDCWD,
                Some(path.as_str()),
            ) {
                // Gone with its directory or mount: nothing left to unmark.
                tracing::debug!(path, %error, "fanotify mark not removed");
            }
        }
        self.marks = applied;
        let marked_one_by_one: usize = plan.trees.iter().map(|(_, count)| count).sum();
        self.shared.tree_budget.store(
            self.tree_marks.saturating_sub(marked_one_by_one),
            Ordering::Relaxed,
        );
        self.shared.past_tree_marks.store(false, Ordering::Relaxed);
        *self
            .shared
            .tree_files
            .write()
            .unwrap_or_else(PoisonError::into_inner) = plan.files;
        self.tree_watch.replace(&plan.folders);
        // Folders made between the walk and their watch: marked now.
        for (root, _) in &plan.trees {
            let mut budget = usize::MAX;
            let Some(now) = walk_tree(root, &mut budget) else {
                continue;
            };
            for folder in now.folders {
                if let Some(parent_mask) = parent(&folder)
                    .and_then(|p| plan.folders.get(p))
                    .filter(|_| !plan.folders.contains_key(&folder))
                {
                    mark_new_folder(
                        &self.group,
                        &self.tree_watch,
                        &self.shared,
                        &folder,
                        *parent_mask,
                    );
                }
            }
        }
        self.trees = plan.trees;
        tracing::debug!(marks = ?self.marks, "fanotify marks");
        unwatched
    }

    /// Watches denied folders through their whole mount (no moment in
    /// which a new folder is unwatched; every open on the mount waits for
    /// the daemon), from the next [`Watcher::update`] on.
    pub fn watch_whole_mounts(&mut self, whole: bool) {
        self.tree_marks = if whole { 0 } else { TREE_MARKS };
    }

    /// Remembers a `baton exec` root admitted with a Landlock plan, so that
    /// Landlock's reports of its denials find their agent after the
    /// process is gone.
    pub fn admitted_exec(&self, record: AgentRecord) {
        let mut roots = self
            .shared
            .exec_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        roots.retain(|known| known.root_tgid != record.root_tgid);
        if roots.len() >= EXEC_ROOTS_REMEMBERED {
            roots.pop_front();
        }
        roots.push_back(record);
    }

    /// Why Landlock's denials of `baton exec` agents are not recorded, or
    /// `None` when they are.
    pub fn landlock_log(&self) -> Option<String> {
        self.landlock_log.clone().or_else(|| {
            self.shared
                .landlock_stopped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Times the audit subsystem was found switched off (and switched back
    /// on); Landlock's denials in between were not reported.
    pub fn audit_switched_off(&self) -> u64 {
        self.shared.audit_switched_off.load(Ordering::Relaxed)
    }

    /// A handle on the listener's per-agent counts, for the breakers.
    pub fn counter(&self) -> FallbackCounter {
        FallbackCounter(self.shared.clone())
    }

    /// The watched paths, for `baton status`: `mount PATH`, `dir PATH`,
    /// `file PATH`, or `tree PATH (N objects)` for a denied folder marked
    /// object by object.
    pub fn watched(&self) -> Vec<String> {
        let in_tree = |path: &str| self.trees.iter().any(|(root, _)| covers(root, path));
        let mut watched: Vec<String> = self
            .marks
            .keys()
            .filter_map(|(kind, path)| match kind {
                MarkKind::Mount => Some(format!("mount {path}")),
                _ if in_tree(path) => None,
                MarkKind::Directory => Some(format!("dir {path}")),
                MarkKind::File => Some(format!("file {path}")),
            })
            .collect();
        // A long list says nothing more than its count.
        const TREES_LISTED: usize = 8;
        watched.extend(
            self.trees
                .iter()
                .take(TREES_LISTED)
                .map(|(root, count)| format!("tree {root} ({count} objects)")),
        );
        if let Some(rest) = self
            .trees
            .get(TREES_LISTED..)
            .filter(|rest| !rest.is_empty())
        {
            let objects: usize = rest.iter().map(|(_, count)| count).sum();
            watched.push(format!("{} more trees ({objects} objects)", rest.len()));
        }
        watched
    }
}

/// Answers every permission event, forever. Every event gets an answer,
/// whatever goes wrong deciding it: an unanswered event would hang the
/// process that opened the file.
fn listen(group: &Fanotify, shared: &Shared) {
    loop {
        let events = match group.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(error) => {
                tracing::error!(%error, "cannot read fanotify events");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        for event in events {
            let Some(fd) = event.fd() else {
                continue;
            };
            let mask = event.mask();
            if !mask.intersects(MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM) {
                continue;
            }
            let exec = mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM);
            let tid = event.pid() as u32;
            // A bug in deciding must not leave the opener hanging; not
            // knowing who it is, let it through.
            let (allow, record) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                shared.decide(tid, fd, exec)
            }))
            .unwrap_or((true, None));
            let response = if allow {
                Response::FAN_ALLOW
            } else {
                Response::FAN_DENY
            };
            if let Err(error) = group.write_response(FanotifyResponse::new(fd, response)) {
                tracing::error!(%error, "cannot answer a fanotify event");
            }
            if let Some(record) = record
                && shared.events.try_send(Finding::Decision(record)).is_err()
            {
                shared.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// From `/proc/TID/status`: `(tgid, real uid, real gid)`.
fn proc_status(tid: u32) -> Option<(u32, u32, u32)> {
    let status = crate::kernel::process::status(tid)?;
    Some((u32::try_from(status.tgid).ok()?, status.ruid, status.rgid))
}

/// How many times the opener's pending syscall is read while the opener
/// is still on its way to sleep (see [`pending_open_rights`]); with the
/// pauses in between, at most a few milliseconds per event.
const SYSCALL_READ_ATTEMPTS: u32 = 200;

/// The rights an open in progress asks for, from the opening thread's
/// pending syscall (`/proc/TID/syscall`), as `f_mode` will have them.
/// `None` when it cannot be told for certain (io_uring, `openat2`, another
/// architecture, an opener that never went to sleep); the caller then
/// judges the open as both read and write.
///
/// The answer comes from the opener's saved registers, which nothing can
/// change while the opener waits for this very answer. The kernel queues
/// the event before the opener sleeps, so the listener can get here first:
/// the file then says `running`, and is read again until the opener
/// sleeps. (Taking `running` for "unknown" denied concurrent reads of
/// write-denied files as writes.)
fn pending_open_rights(tid: u32) -> Option<u32> {
    let task = crate::kernel::process::task(tid)?;
    let mut syscall = task.syscall().ok()?;
    let mut attempt = 0;
    while syscall == Syscall::Running {
        attempt += 1;
        if attempt >= SYSCALL_READ_ATTEMPTS {
            return None;
        }
        if attempt < 20 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        syscall = task.syscall().ok()?;
    }
    open_rights_of_syscall(&syscall)
}

/// The rights asked for by the syscall that `/proc/TID/syscall` shows.
fn open_rights_of_syscall(syscall: &Syscall) -> Option<u32> {
    let Syscall::Blocked {
        syscall_number: nr,
        argument_registers: args,
        ..
    } = *syscall
    else {
        return None;
    };
    let from_flags = |flags: u64| match flags & libc::O_ACCMODE as u64 {
        0 => right::bit(right::READ),
        1 => right::bit(right::WRITE),
        2 => right::bit(right::READ) | right::bit(right::WRITE),
        // O_ACCMODE itself: ioctl only, neither read nor write.
        _ => 0,
    };
    match nr {
        libc::SYS_open => Some(from_flags(*args.get(1)?)),
        libc::SYS_openat | libc::SYS_open_by_handle_at => Some(from_flags(*args.get(2)?)),
        libc::SYS_creat => Some(right::bit(right::WRITE)),
        // `openat2` keeps its flags in the caller's memory, which another
        // thread of the caller may rewrite after the kernel read it: a
        // write open could be shown as a read. Unknown, so both.
        libc::SYS_openat2 => None,
        // The open of the binary and its interpreter: read, as `f_mode`
        // says; the exec itself is its own event.
        libc::SYS_execve | libc::SYS_execveat | libc::SYS_uselib => Some(right::bit(right::READ)),
        _ => None,
    }
}

fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// Handles what the reader of Landlock's reports hands over.
    fn landlock_report(&self, report: super::landlock_log::Report) {
        match report {
            super::landlock_log::Report::Denial(denial) => self.landlock_denied(&denial),
            super::landlock_log::Report::Seccomp(denial) => self.seccomp_denied(&denial),
            super::landlock_log::Report::Lost => {
                let overflows = self.landlock_lost.fetch_add(1, Ordering::Relaxed) + 1;
                // A flood would otherwise flood the log too.
                if overflows.is_power_of_two() {
                    tracing::warn!(
                        overflows,
                        "Landlock denial reports were lost: the audit socket's buffer was full"
                    );
                }
            }
            super::landlock_log::Report::AuditSwitchedOff { back_on } => {
                self.audit_switched_off.fetch_add(1, Ordering::Relaxed);
                self.degraded(format!(
                    "control degraded: the kernel's audit subsystem was found switched off; {}. Landlock denials of baton exec agents meanwhile were enforced but not recorded",
                    if back_on { "the daemon switched it back on" } else { "the daemon could NOT switch it back on" }
                ));
            }
            super::landlock_log::Report::ExcludeRules(count) => {
                self.degraded(format!(
                    "control degraded: {count} audit exclude rule(s) are loaded; if one matches Landlock's records (type 1423), denials of baton exec agents are enforced but not recorded"
                ));
            }
            super::landlock_log::Report::KernelLost(count) => {
                self.degraded(format!(
                    "control degraded: the kernel's audit subsystem dropped {count} record(s) (its rate limit or backlog); Landlock denials of baton exec agents may be among them, enforced but not recorded"
                ));
            }
            super::landlock_log::Report::Stopped(error) => {
                *self
                    .landlock_stopped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("the reader of Landlock's reports stopped: {error}"));
            }
        }
    }

    /// Queues a `control degraded` notice for the audit trail. A full queue
    /// leaves it in the daemon's log only.
    fn degraded(&self, message: String) {
        tracing::warn!("{message}");
        let _ = self.events.try_send(Finding::Degraded(message));
    }

    /// The policy generation in force and `agent_id`'s rules under it (an
    /// agent the listener does not know yet is denied everything); `None`
    /// when the rules' lock is poisoned.
    fn rules_of(&self, agent_id: AgentId) -> Option<(Generation, AgentRules)> {
        let rules = self.rules.read().ok()?;
        let agent = rules
            .agents
            .get(&agent_id)
            .cloned()
            .unwrap_or_else(AgentRules::deny_all);
        Some((rules.generation, agent))
    }

    /// `(allow, record)` for one event of thread `tid` on `fd`.
    fn decide(&self, tid: u32, fd: BorrowedFd<'_>, exec: bool) -> (bool, Option<Box<FileEvent>>) {
        // The identity record is per process (tgid). A thread id that is a
        // key is its process's main thread; any other needs /proc.
        let (tgid, member) = match self.identity.get(&tid, 0) {
            Ok(member) => (tid, member),
            Err(_) => {
                let Some((tgid, _, _)) = proc_status(tid) else {
                    return (true, None);
                };
                if tgid == tid || tgid == self.own_tgid {
                    return (true, None);
                }
                match self.identity.get(&tgid, 0) {
                    Ok(member) => (tgid, member),
                    Err(_) => return (true, None),
                }
            }
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let mut flags = 0;
        let path = match link {
            Ok(link) => {
                let text = link.to_string_lossy().into_owned();
                match text.strip_suffix(" (deleted)") {
                    Some(deleted) => {
                        flags |= file_flags::ANONYMOUS;
                        deleted.to_string()
                    }
                    None => text,
                }
            }
            Err(_) => {
                flags |= file_flags::PATH_UNRESOLVED;
                String::new()
            }
        };
        let Some((generation, agent)) = self.rules_of(AgentId::from_raw(member.agent_id)) else {
            return (false, None);
        };
        // A file of a denied tree, opened through another name (moved or
        // linked out of it, a bind mount, another root): decided as the
        // path it had, recorded as the one it was opened by.
        let moved_from = (flags & file_flags::PATH_UNRESOLVED == 0)
            .then(|| self.tree_file_path(fd))
            .flatten()
            .filter(|original| *original != path);
        let judged = moved_from.as_deref().unwrap_or(&path);
        let quarantined = self
            .runtime
            .get(&member.agent_id, 0)
            .is_ok_and(|state| state.quarantined != 0);
        // Which way the open goes is not known for sure (see
        // `pending_open_rights`): any open of a secret the agent is let
        // through taints it, before the answer lets the open return.
        let secret = if exec {
            None
        } else {
            (flags & file_flags::PATH_UNRESOLVED == 0)
                .then(|| agent.secret_of(judged))
                .flatten()
                .or_else(|| {
                    if agent.secret_inodes.is_empty() {
                        return None;
                    }
                    let stat = nix::sys::stat::fstat(fd).ok()?;
                    agent
                        .secret_inodes
                        .get(&(stat.st_dev, stat.st_ino))
                        .copied()
                })
        };
        let let_through = |allowed: bool| {
            allowed
                && secret.is_none_or(|rule_id| {
                    self.taint(member.agent_id, generation, rule_id, tid, tgid)
                })
        };
        let both = right::bit(right::READ) | right::bit(right::WRITE);
        let rights = if exec {
            right::bit(right::EXEC)
        } else if flags & file_flags::PATH_UNRESOLVED == 0
            && !quarantined
            && agent.decide(judged, both).0 == decision::ALLOW
        {
            // Allowed whatever the open asks for: no need to ask.
            return (let_through(true), None);
        } else {
            // Not knowing what is asked, assume both: the denial stands.
            pending_open_rights(tid).unwrap_or(both)
        };
        if rights == 0 {
            return (true, None);
        }
        let (found, rule_id, denied) = if flags & file_flags::PATH_UNRESOLVED != 0 {
            // A path we cannot name is a path we cannot allow.
            (decision::DENY, 0, rights)
        } else if exec && flags & file_flags::ANONYMOUS != 0 && !agent.allow_anonymous_exec {
            (decision::DENY, agent.exec_default_rule, rights)
        } else {
            agent.decide(judged, rights)
        };
        let changes = rights & !right::bit(right::READ) != 0;
        let held = changes && quarantined;
        let verdict = if held {
            // A breaker's quarantine overrides audit mode.
            Verdict::Denied
        } else {
            verdict_for(found, agent.mode)
        };
        {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let counts = counts
                .entry(AgentId::from_raw(member.agent_id))
                .or_default();
            if verdict != Verdict::Allowed {
                counts.denied_files += 1;
            }
            if changes {
                counts.file_writes += 1;
            }
            if found == decision::CANARY {
                counts.canary_hits += 1;
            }
        }
        if verdict == Verdict::Allowed {
            return (let_through(true), None);
        }
        if found == decision::CANARY {
            flags |= file_flags::CANARY;
        }
        let (_, uid, gid) = proc_status(tid).unwrap_or((tgid, 0, 0));
        let denied = if held { rights } else { denied };
        let mut event = file_event(&path, flags, rights, denied);
        let header = &mut event.header;
        header.agent_id = member.agent_id;
        header.pid = tid;
        header.tgid = tgid;
        header.uid = uid;
        header.gid = gid;
        header.root_tgid = member.root_tgid;
        header.hook = if exec {
            hook::FANOTIFY_OPEN_EXEC
        } else {
            hook::FANOTIFY_OPEN
        };
        header.verdict = verdict as u8;
        header.mode = if held { mode::QUARANTINE } else { agent.mode };
        header.rule_id = rule_id;
        header.generation = generation.raw();
        if let Some(stat) = crate::kernel::process::task(tid).and_then(|task| task.stat().ok()) {
            set_comm(header, stat.comm.as_bytes());
        }
        (let_through(verdict != Verdict::Denied), Some(event))
    }

    /// The path a file of a denied tree had when the policy was loaded,
    /// found by what the event's descriptor is.
    fn tree_file_path(&self, fd: BorrowedFd<'_>) -> Option<String> {
        let files = self.tree_files.read().ok()?;
        if files.is_empty() {
            return None;
        }
        let stat = nix::sys::stat::fstat(fd).ok()?;
        files.get(&(stat.st_dev, stat.st_ino)).cloned()
    }

    /// Taints `agent_id` for opening secret `rule_id`, unless it is
    /// already. False if the taint could not be written: the open is then
    /// refused, as the kernel programs refuse it.
    fn taint(
        &self,
        agent_id: u32,
        generation: Generation,
        rule_id: u32,
        tid: u32,
        tgid: u32,
    ) -> bool {
        let mut taints = self.taints.lock().unwrap_or_else(PoisonError::into_inner);
        if taints.get(&agent_id, 0).is_ok() {
            return true;
        }
        let mut comm = [0u8; agent_common::event::COMM_BYTES];
        if let Some(stat) = crate::kernel::process::task(tid).and_then(|task| task.stat().ok()) {
            let bytes = stat.comm.as_bytes();
            let len = bytes.len().min(comm.len() - 1);
            comm[..len].copy_from_slice(&bytes[..len]);
        }
        let taint = SecretTaint {
            rule_id,
            generation: generation.raw(),
            tgid,
            pid: tid,
            uid: proc_status(tid).map_or(u32::MAX, |(_, uid, _)| uid),
            _pad: 0,
            at_boot_ns: boot_time_ns(),
            comm,
        };
        // BPF_NOEXIST: a kernel program may have tainted it meanwhile.
        match taints.insert(agent_id, taint, 1) {
            Ok(()) => true,
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                true
            }
            Err(error) => {
                tracing::error!(%error, agent_id, "cannot taint an agent that opened a secret: the open is refused");
                false
            }
        }
    }

    /// Records and counts one denial Landlock reported for a `baton exec`
    /// agent. Landlock has decided already; this finds the agent and the
    /// rule the path falls under.
    fn landlock_denied(&self, denial: &super::landlock_log::Denial) {
        // No process in the report (a task the audit subsystem does not
        // follow): the domain's creator, the agent's root process, stands
        // in for it.
        let Some(tgid) = denial.tgid.or(denial.domain_creator) else {
            return;
        };
        let member = self.identity.get(&tgid, 0).ok().or_else(|| {
            // Only a domain `baton exec` made (its creator ran Baton's own
            // executable): a pid reused by another program's sandbox must
            // not pass for the root it once was.
            let creator = denial.domain_creator?;
            if denial.domain_creator_exe.is_none() || denial.domain_creator_exe != self.own_exe {
                return None;
            }
            let roots = self
                .exec_roots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            roots.iter().rev().find(|r| r.root_tgid == creator).copied()
        });
        let Some(member) = member else {
            // Not an agent's process: another program's own sandbox.
            return;
        };
        if denial.is_agents_own_sandbox(member.root_tgid) {
            return;
        }
        let Some((generation, agent)) = self.rules_of(AgentId::from_raw(member.agent_id)) else {
            return;
        };
        let mut flags = 0;
        let (found, rule_id) = match &denial.path {
            Some(path) => {
                let (found, rule_id, _) = agent.decide(path, denial.rights);
                if found != decision::ALLOW {
                    (found, rule_id)
                } else if same_file(path, denial.ino) {
                    // Landlock's plan denies more than the policy (what it
                    // cannot express): no rule decided.
                    flags |= file_flags::BEYOND_POLICY;
                    (decision::DENY, 0)
                } else {
                    // The path is the process's view (a chroot, a mount
                    // namespace of its own), not the daemon's: which rule
                    // is unknown, but the denial is the policy's and
                    // counts.
                    (decision::DENY, 0)
                }
            }
            None => {
                flags |= file_flags::PATH_UNRESOLVED;
                (decision::DENY, 0)
            }
        };
        // What Landlock takes beyond the policy is the fallback's doing,
        // not the agent's: recorded, but no breaker counts it.
        if flags & file_flags::BEYOND_POLICY == 0 {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let counts = counts
                .entry(AgentId::from_raw(member.agent_id))
                .or_default();
            counts.denied_files += 1;
            if found == decision::CANARY {
                counts.canary_hits += 1;
            }
        }
        if found == decision::CANARY {
            flags |= file_flags::CANARY;
        }
        let path = denial.path.as_deref().unwrap_or_default();
        let mut event = file_event(path, flags, denial.rights, denial.rights);
        let header = &mut event.header;
        header.agent_id = member.agent_id;
        // Landlock's reports name the process, not the thread.
        header.pid = tgid;
        header.tgid = tgid;
        header.uid = denial.uid;
        header.gid = denial.gid;
        header.root_tgid = member.root_tgid;
        header.ppid = if denial.tgid == Some(tgid) {
            denial.ppid
        } else {
            0
        };
        header.hook = hook::LANDLOCK;
        header.verdict = Verdict::Denied as u8;
        header.mode = agent.mode;
        header.rule_id = rule_id;
        header.generation = generation.raw();
        set_comm(header, denial.comm.as_bytes());
        if self.events.try_send(Finding::Decision(event)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Records one call the seccomp filter of `baton exec` refused an
    /// agent's process. Refusals of processes in no agent, and of calls
    /// Baton's filter lets through (an agent's own sandbox), are not
    /// Baton's and are left out.
    fn seccomp_denied(&self, denial: &super::landlock_log::SeccompDenial) {
        // The process may have exited by now: the kernel keeps the last
        // 4,096 agent processes that did. (A pid reused since by a process
        // in no agent, whose own logging filter refused one of these very
        // calls, would be taken for the agent's; pids wrap around after
        // `pid_max`, by default 4,194,304 of them.)
        let member = self
            .identity
            .get(&denial.tgid, 0)
            .or_else(|_| self.exited.get(&denial.tgid, 0))
            .ok();
        let Some(member) = member else {
            return;
        };
        let Some(what) = super::seccomp::refused_call(denial.syscall, denial.arch, denial.killed)
        else {
            return;
        };
        let Some((generation, agent)) = self.rules_of(AgentId::from_raw(member.agent_id)) else {
            return;
        };
        if what.starts_with("socket") {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts
                .entry(AgentId::from_raw(member.agent_id))
                .or_default()
                .denied_sockets += 1;
        }
        let flags = if denial.killed { file_flags::KILLED } else { 0 };
        let mut event = file_event(&what, flags, 0, 0);
        let header = &mut event.header;
        header.agent_id = member.agent_id;
        header.pid = denial.tgid;
        header.tgid = denial.tgid;
        header.uid = denial.uid;
        header.gid = denial.gid;
        header.root_tgid = member.root_tgid;
        header.hook = hook::SECCOMP;
        header.verdict = Verdict::Denied as u8;
        header.mode = agent.mode;
        header.generation = generation.raw();
        set_comm(header, denial.comm.as_bytes());
        if self.events.try_send(Finding::Decision(event)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `path`, looked up from the daemon's root and mounts, is the file
/// with inode number `ino`.
fn same_file(path: &str, ino: Option<u64>) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    ino.is_some_and(|ino| std::fs::metadata(path).is_ok_and(|found| found.ino() == ino))
}

/// A file event for `path`, stamped now; the caller fills in who and why.
fn file_event(path: &str, flags: u32, rights: u32, denied: u32) -> Box<FileEvent> {
    let mut event = Box::new(FileEvent::default());
    let header = &mut event.header;
    header.version = EVENT_VERSION;
    header.kind = kind::FILE;
    header.size = size_of::<FileEvent>() as u32;
    header.time_boot_ns = boot_time_ns();
    event.rights = rights;
    event.denied_rights = denied;
    let bytes = path.as_bytes();
    let len = bytes.len().min(EVENT_PATH_BYTES);
    event.path[..len].copy_from_slice(&bytes[..len]);
    event.path_len = len as u32;
    if bytes.len() > EVENT_PATH_BYTES {
        event.flags |= file_flags::PATH_TRUNCATED;
    }
    event.flags |= flags;
    event
}

fn set_comm(header: &mut agent_common::event::EventHeader, comm: &[u8]) {
    let len = comm.len().min(header.comm.len());
    header.comm[..len].copy_from_slice(&comm[..len]);
}

// ---------------------------------------------------------------- reporting

/// Which mechanism holds one agent to each right, in words, keyed by right
/// name (`read`, `write`, `create`, `delete`, `rename`, `exec`). Each says
/// `enforced: HOW`, `detected only` (with or without a kill) or `none`.
///
/// `lsm`: BPF LSM enforces file rules; `landlock`: the kernel has
/// Landlock (for `baton exec`); `fanotify`: the listener is running;
/// `detection`: the kernel's detection programs are attached.
pub fn coverage(
    agent: &CompiledAgent,
    lsm: bool,
    landlock: bool,
    fanotify: bool,
    detection: bool,
) -> BTreeMap<&'static str, String> {
    const RIGHTS: [(usize, &str); right::COUNT] = [
        (right::READ, "read"),
        (right::WRITE, "write"),
        (right::CREATE, "create"),
        (right::DELETE, "delete"),
        (right::RENAME, "rename"),
        (right::EXEC, "exec"),
    ];
    let detected = if agent.kill_on_detect {
        "detected only, the process is killed at the call (onDetect: kill)"
    } else {
        "detected only, not prevented (onDetect: record)"
    };
    RIGHTS
        .iter()
        .map(|(r, name)| {
            if lsm {
                return (*name, "BPF LSM".to_string());
            }
            let exec_started = if landlock {
                "baton exec: Landlock"
            } else {
                "baton exec: none (no Landlock)"
            };
            if !agent.selected_outside_exec() {
                return (*name, exec_started.to_string());
            }
            let default_deny = if *r == right::EXEC {
                agent.exec_default == decision::DENY
            } else {
                agent.file_default == decision::DENY
            };
            let others = match *r {
                right::READ | right::WRITE | right::EXEC if fanotify => {
                    let what = match *r {
                        right::EXEC => "exec of deny-listed paths",
                        _ => "opens of deny-listed paths",
                    };
                    let mut text = format!("fanotify, {what}");
                    if default_deny {
                        text.push_str("; the default deny applies only on watched paths");
                    }
                    let rest = match *r {
                        right::EXEC => "executable mappings",
                        right::WRITE => "chmod and truncate",
                        _ => "",
                    };
                    match (rest.is_empty(), detection) {
                        (true, _) => {}
                        (false, true) => text.push_str(&format!("; {rest}: {detected}")),
                        (false, false) => text.push_str(&format!("; {rest}: none")),
                    }
                    text
                }
                _ if detection => detected.to_string(),
                _ if !fanotify => "none".to_string(),
                _ => "none (fanotify cannot see it)".to_string(),
            };
            (
                *name,
                format!("{exec_started}; cgroup, unit or executable: {others}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{compile, parse_str};

    fn agent(body: &str) -> CompiledAgent {
        let text = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n  selector:\n    agent: a\n    executables: [/opt/a]\n{body}"
        );
        let set = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        set.agents["a"].clone()
    }

    #[test]
    fn the_opens_flags_come_from_its_registers_and_never_from_its_memory() {
        let read = right::bit(right::READ);
        let write = right::bit(right::WRITE);
        let line = |nr: i64, args: &[u64; 6]| Syscall::Blocked {
            syscall_number: nr,
            argument_registers: *args,
            stack_pointer: 0x7ffc,
            program_counter: 0x7f00,
        };
        let openat = |flags: u64| line(libc::SYS_openat, &[0xffff_ff9c, 0x5555, flags, 0, 0, 0]);
        assert_eq!(open_rights_of_syscall(&openat(0)), Some(read));
        assert_eq!(open_rights_of_syscall(&openat(1 | 0o1000)), Some(write));
        assert_eq!(open_rights_of_syscall(&openat(2)), Some(read | write));
        assert_eq!(
            open_rights_of_syscall(&line(libc::SYS_open, &[0x5555, 0, 0, 0, 0, 0])),
            Some(read)
        );
        // openat2's flags live in memory another thread may rewrite.
        assert_eq!(
            open_rights_of_syscall(&line(
                libc::SYS_openat2,
                &[0xffff_ff9c, 0x5555, 0x6666, 24, 0, 0]
            )),
            None
        );
        assert_eq!(
            open_rights_of_syscall(&line(libc::SYS_io_uring_enter, &[3, 1, 0, 0, 0, 0])),
            None
        );
        // Not in a syscall, or on a CPU: unknown.
        assert_eq!(open_rights_of_syscall(&line(-1, &[0; 6])), None);
        assert_eq!(open_rights_of_syscall(&Syscall::Running), None);
    }

    #[test]
    fn decides_as_the_kernel_does() {
        let rules = AgentRules::of(&agent(
            "  files:
    deny:
      - /srv/secret
      - path: /etc
        rights: [write]
    allow:
      - path: /srv/secret/public
        rights: [read]
  exec:
    deny: [/usr/bin/nc]
",
        ));
        let read = right::bit(right::READ);
        let write = right::bit(right::WRITE);
        let exec = right::bit(right::EXEC);
        assert_eq!(rules.decide("/srv/secret/key", read).0, decision::DENY);
        assert_eq!(rules.decide("/srv/secret", read).0, decision::DENY);
        assert_eq!(rules.decide("/srv/secret-old", read).0, decision::ALLOW);
        assert_eq!(
            rules.decide("/srv/secret/public/x", read).0,
            decision::ALLOW
        );
        assert_eq!(rules.decide("/etc/passwd", read).0, decision::ALLOW);
        let (found, _, denied) = rules.decide("/etc/passwd", read | write);
        assert_eq!((found, denied), (decision::DENY, write));
        assert_eq!(rules.decide("/usr/bin/nc", exec).0, decision::DENY);
        assert_eq!(rules.decide("/usr/bin/nc", read).0, decision::ALLOW);
        assert_ne!(rules.decide("/usr/bin/nc", exec).1, 0, "the rule is named");
    }

    #[test]
    fn files_mark_their_directory_trees_their_objects_and_big_trees_their_mount() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("baton-fan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tree/inner")).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        std::fs::write(dir.join("tree/inner/key"), "x").unwrap();
        std::fs::create_dir_all(dir.join("big")).unwrap();
        for i in 0..TREE_MARKS {
            std::fs::write(dir.join(format!("big/{i}")), "x").unwrap();
        }
        let d = dir.display().to_string();
        let mounts = vec!["/".to_string(), format!("{d}/tree/mnt"), "/proc".into()];
        let read = right::bit(right::READ);
        let plan = plan_marks(
            &[
                (format!("{d}/file"), read),
                (format!("{d}/tree"), right::bit(right::EXEC)),
                (format!("{d}/missing/x"), read),
                (format!("{d}/file2"), right::bit(right::DELETE)),
                (format!("{d}/big"), read),
            ],
            &mounts,
            TREE_MARKS,
        );
        let open = MaskFlags::FAN_OPEN_PERM.bits();
        let exec = MaskFlags::FAN_OPEN_EXEC_PERM.bits();
        let child = MaskFlags::FAN_EVENT_ON_CHILD.bits();
        let marks = &plan.marks;
        assert_eq!(
            marks.get(&(MarkKind::Directory, d.clone())),
            Some(&(open | child)),
            "a file rule marks its folder"
        );
        for folder in [format!("{d}/tree"), format!("{d}/tree/inner")] {
            assert_eq!(
                marks.get(&(MarkKind::Directory, folder.clone())),
                Some(&(exec | child)),
                "{folder}"
            );
        }
        let key = format!("{d}/tree/inner/key");
        assert_eq!(marks.get(&(MarkKind::File, key.clone())), Some(&exec));
        let metadata = std::fs::metadata(&key).unwrap();
        assert_eq!(
            plan.files.get(&(metadata.dev(), metadata.ino())),
            Some(&key),
            "a tree's file is known by what it is"
        );
        assert_eq!(plan.trees, vec![(format!("{d}/tree"), 3)]);
        assert_eq!(
            marks.get(&(MarkKind::Mount, format!("{d}/tree/mnt"))),
            Some(&exec),
            "a mount below a denied tree is marked too"
        );
        assert_eq!(
            marks.get(&(MarkKind::Mount, "/".into())),
            Some(&open),
            "a missing path and a tree past the bound mark their mount"
        );
        assert!(!marks.contains_key(&(MarkKind::Directory, format!("{d}/big"))));
        assert!(!marks.contains_key(&(MarkKind::Mount, "/proc".into())));
        assert_eq!(plan.unwatched.len(), 1, "{:?}", plan.unwatched);
        let whole = plan_marks(
            &[(format!("{d}/tree"), right::bit(right::EXEC))],
            &mounts,
            0,
        );
        assert_eq!(
            whole.marks.get(&(MarkKind::Mount, "/".into())),
            Some(&exec),
            "with no objects to mark one by one, a tree is watched through its mount"
        );
        assert!(whole.trees.is_empty() && whole.files.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn coverage_never_claims_what_fanotify_cannot_do() {
        let a = agent("  exec:\n    default: deny\n    allow: [/usr]\n");
        let by_right = coverage(&a, false, true, true, false);
        assert!(by_right["read"].contains("fanotify"));
        assert!(by_right["create"].ends_with("none (fanotify cannot see it)"));
        assert!(by_right["exec"].contains("only on watched paths"));
        assert!(by_right["exec"].ends_with("executable mappings: none"));
        let none = coverage(&a, false, true, false, false);
        assert!(none["read"].ends_with("executable: none"));
        assert_eq!(coverage(&a, true, true, true, true)["delete"], "BPF LSM");
    }

    #[test]
    fn coverage_says_detected_where_only_detection_sees() {
        let a = agent("  exec:\n    default: deny\n    allow: [/usr]\n");
        let with_fanotify = coverage(&a, false, true, true, true);
        assert!(with_fanotify["read"].contains("fanotify"));
        assert!(!with_fanotify["read"].contains("detected"));
        assert!(
            with_fanotify["write"]
                .ends_with("chmod and truncate: detected only, not prevented (onDetect: record)")
        );
        assert!(
            with_fanotify["delete"]
                .ends_with("executable: detected only, not prevented (onDetect: record)")
        );
        assert!(with_fanotify["exec"].contains("executable mappings: detected only"));
        let killing = agent("  files:\n    onDetect: kill\n    deny: [/srv]\n");
        let alone = coverage(&killing, false, true, false, true);
        for right in ["read", "write", "create", "delete", "rename", "exec"] {
            assert!(
                alone[right].ends_with(
                    "executable: detected only, the process is killed at the call (onDetect: kill)"
                ),
                "{right}: {}",
                alone[right]
            );
        }
    }
}

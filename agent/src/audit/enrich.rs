//! Enrichment from procfs: executable, command line, cgroup path and the
//! ancestor chain up to the agent's root process.
//!
//! Everything here is best effort. The kernel event already names the
//! process (pid, comm, ids, cgroup id, agent root); a process that exited
//! before the daemon looked still yields a complete record from that.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::redact::Redactor;

/// One ancestor of the acting process.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditAncestor {
    /// Process id.
    pub pid: u32,
    /// Executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Vec<String>>,
    /// Whether arguments were left off `cmdline`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
}

/// Bytes of command line kept per process. Whole arguments only: cutting
/// one in the middle could leave a secret too short for a redaction
/// pattern to recognise.
pub const CMDLINE_LIMIT: usize = 8192;

/// Ancestors walked at most; deeper trees are cut at the top.
const ANCESTOR_LIMIT: usize = 32;

/// Entries kept before the cache is cleared; processes come and go, and a
/// stale entry is worse than a second read.
const PROCESS_CACHE_LIMIT: usize = 4096;

/// How long an entry is trusted. A process that execs keeps its pid, so an
/// entry must not outlive a plausible exec by much; a burst of events from
/// one process still costs one set of reads.
const PROCESS_CACHE_TTL: Duration = Duration::from_secs(2);

/// What procfs said about a process.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProcessInfo {
    pub(crate) exe: Option<String>,
    pub(crate) cmdline: Option<Vec<String>>,
    pub(crate) cmdline_truncated: bool,
    pub(crate) cgroup: Option<String>,
    pub(crate) ppid: Option<u32>,
}

/// cgroup directories visited at most when resolving one cgroup id.
const CGROUP_WALK_LIMIT: usize = 16_384;

/// How long a cgroup id that matched no directory is not looked for again:
/// a flood of events from exited processes must not walk the tree each.
const CGROUP_MISS_TTL: Duration = Duration::from_secs(2);

/// Per-process enrichment cache.
#[derive(Debug, Default)]
pub struct ProcessCache {
    entries: HashMap<u32, (Instant, ProcessInfo)>,
    /// cgroup v2 id → path, as procfs or the cgroup tree named it.
    cgroups: HashMap<u64, String>,
    /// cgroup ids lately looked for in vain.
    cgroup_misses: HashMap<u64, Instant>,
    /// The cgroup v2 mount point, once found.
    cgroup_root: Option<std::path::PathBuf>,
    /// Redacts what procfs says as it is read, so a process's command
    /// line runs through the patterns once, not once per record.
    redactor: Option<Redactor>,
}

impl ProcessCache {
    /// A cache whose every entry (executable and command line) is
    /// redacted with `redactor` when it is read: see
    /// [`AuditProcess::redacted`](super::record::AuditProcess::redacted).
    pub fn redacting(redactor: Redactor) -> Self {
        Self {
            redactor: Some(redactor),
            ..Self::default()
        }
    }

    /// Whether what this cache hands out is redacted already.
    pub fn redacts(&self) -> bool {
        self.redactor.is_some()
    }

    /// What procfs says about `tgid`, from the cache while it is fresh.
    pub(crate) fn lookup(&mut self, tgid: u32) -> ProcessInfo {
        if let Some((at, info)) = self.entries.get(&tgid)
            && at.elapsed() < PROCESS_CACHE_TTL
        {
            return info.clone();
        }
        let mut info = read_process(tgid);
        if let Some(redactor) = &self.redactor {
            if let Some(exe) = &mut info.exe
                && let Some(clean) = redactor.redact_str(exe)
            {
                *exe = clean;
            }
            if let Some(cmdline) = &mut info.cmdline {
                redactor.redact_args(cmdline);
            }
        }
        if info.exe.is_some() || info.ppid.is_some() {
            if self.entries.len() >= PROCESS_CACHE_LIMIT {
                self.entries.clear();
            }
            self.entries.insert(tgid, (Instant::now(), info.clone()));
        } else if let Some((_, cached)) = self.entries.get(&tgid) {
            // The process is gone: what was seen while it lived is still
            // the best account of it.
            return cached.clone();
        }
        info
    }

    /// [`Self::ancestors_from`] with the parent read from procfs only.
    #[cfg(test)]
    pub(crate) fn ancestors(&mut self, tgid: u32, root: u32) -> Vec<AuditAncestor> {
        self.ancestors_from(tgid, None, root)
    }

    /// The ancestors of `tgid` from its parent up to `root` (the agent's
    /// root process) inclusive. Stops early where a process has exited
    /// and is not cached, and at pid 1, which is never part of an agent.
    ///
    /// `parent` is the parent's pid as the kernel saw it at the event. It
    /// wins over procfs: the chain can then be walked even when `tgid` has
    /// already exited, and a process whose parent exited since (and which
    /// was reparented) still names the parent it had when it acted.
    pub fn ancestors_from(
        &mut self,
        tgid: u32,
        parent: Option<u32>,
        root: u32,
    ) -> Vec<AuditAncestor> {
        let mut chain = Vec::new();
        if tgid == root || tgid == 0 {
            return chain;
        }
        let mut current = parent.or_else(|| self.lookup(tgid).ppid);
        while let Some(pid) = current {
            if pid <= 1 || chain.len() >= ANCESTOR_LIMIT {
                break;
            }
            let info = self.lookup(pid);
            chain.push(AuditAncestor {
                pid,
                exe: info.exe,
                cmdline: info.cmdline,
                cmdline_truncated: info.cmdline_truncated,
            });
            if pid == root {
                break;
            }
            current = info.ppid;
        }
        chain
    }

    /// The cgroup v2 path of the cgroup with id `id`, for a process procfs
    /// no longer has. `seen` is what procfs said for this id, if anything,
    /// and is remembered for later.
    ///
    /// A cgroup v2 id is the inode number of the cgroup's directory, so an
    /// id not seen before is looked up in the cgroup tree itself.
    pub(crate) fn cgroup_path(&mut self, id: u64, seen: Option<&str>) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        if self.cgroup_root.is_none() {
            self.cgroup_root = crate::kernel::cgroup::cgroup2_mount().ok();
        }
        let root = self.cgroup_root.clone();
        if let Some(path) = seen {
            // Checked once per (id, path): this runs for every record.
            if self.cgroups.get(&id).is_some_and(|known| known == path) {
                return Some(path.to_string());
            }
            // Remembered only if it is the event's cgroup: the process may
            // have moved since.
            let same = root.as_ref().is_some_and(|root| {
                std::fs::metadata(root.join(path.trim_start_matches('/')))
                    .is_ok_and(|m| m.ino() == id)
            });
            if same {
                if self.cgroups.len() >= PROCESS_CACHE_LIMIT {
                    self.cgroups.clear();
                }
                self.cgroups.insert(id, path.to_string());
            }
            return Some(path.to_string());
        }
        if let Some(path) = self.cgroups.get(&id) {
            return Some(path.clone());
        }
        if self
            .cgroup_misses
            .get(&id)
            .is_some_and(|at| at.elapsed() < CGROUP_MISS_TTL)
        {
            return None;
        }
        match find_cgroup(&root?, id) {
            Some(path) => {
                self.cgroup_misses.remove(&id);
                self.cgroups.insert(id, path.clone());
                Some(path)
            }
            None => {
                if self.cgroup_misses.len() >= PROCESS_CACHE_LIMIT {
                    self.cgroup_misses.clear();
                }
                self.cgroup_misses.insert(id, Instant::now());
                None
            }
        }
    }

    /// Drops what is cached for `tgid` (its process is gone or exec'd).
    pub fn forget(&mut self, tgid: u32) {
        self.entries.remove(&tgid);
    }
}

fn read_process(tgid: u32) -> ProcessInfo {
    let Ok(process) = i32::try_from(tgid)
        .map_err(drop)
        .and_then(|pid| procfs::process::Process::new(pid).map_err(drop))
    else {
        return ProcessInfo::default();
    };
    let exe = process.exe().ok().map(|p| p.to_string_lossy().into_owned());
    // Read raw rather than through procfs's `cmdline()`, which drops empty
    // arguments and fails outright on one that is not UTF-8: an argument
    // the agent chose must not hide its whole command line.
    let (cmdline, cmdline_truncated) = std::fs::read(format!("/proc/{tgid}/cmdline"))
        .ok()
        .filter(|raw| !raw.is_empty())
        .map(|raw| split_cmdline(&raw))
        .map_or((None, false), |(args, cut)| (Some(args), cut));
    let cgroup = crate::kernel::process::cgroup(tgid);
    let ppid = process
        .stat()
        .ok()
        .and_then(|stat| u32::try_from(stat.ppid).ok());
    ProcessInfo {
        exe,
        cmdline,
        cmdline_truncated,
        cgroup,
        ppid,
    }
}

/// The path (from the cgroup v2 root, `/` for the root itself) of the
/// directory under `root` whose inode number is `id`, walking at most
/// [`CGROUP_WALK_LIMIT`] directories.
fn find_cgroup(root: &std::path::Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = crate::kernel::cgroup::subtree(root)
        .take(CGROUP_WALK_LIMIT)
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.ino() == id))?;
    let relative = dir.strip_prefix(root).ok()?;
    Some(format!("/{}", relative.display()))
}

/// Splits a NUL-separated command line, keeping whole arguments up to
/// [`CMDLINE_LIMIT`] bytes. Returns the arguments and whether some were
/// left off.
pub(crate) fn split_cmdline(raw: &[u8]) -> (Vec<String>, bool) {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let mut args = Vec::new();
    let mut used = 0;
    for arg in raw.split(|&b| b == 0) {
        if used + arg.len() > CMDLINE_LIMIT {
            return (args, true);
        }
        used += arg.len() + 1;
        args.push(String::from_utf8_lossy(arg).into_owned());
    }
    (args, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_read_whole() {
        let me = read_process(std::process::id());
        assert_eq!(me.ppid, Some(nix::unistd::getppid().as_raw() as u32));
        assert_eq!(
            me.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned))
                .as_deref()
        );
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(
            me.cgroup.as_deref(),
            mine.lines().find_map(|l| l.strip_prefix("0::"))
        );
        assert!(me.cmdline.is_some_and(|args| !args.is_empty()));
        // No such process: nothing, and no error.
        let gone = read_process(u32::MAX);
        assert!(gone.exe.is_none() && gone.ppid.is_none() && gone.cgroup.is_none());
    }

    #[test]
    fn a_redacting_cache_hands_out_redacted_command_lines() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "sh", "--password", "hunter2"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut plain = ProcessCache::default();
        let mut redacting = ProcessCache::redacting(Redactor::new(true, &[]).unwrap());
        assert!(!plain.redacts() && redacting.redacts());
        let raw = plain.lookup(pid).cmdline.unwrap_or_default();
        let redacted = redacting.lookup(pid).cmdline.unwrap_or_default();
        // From the cache the second time, redacted still.
        let again = redacting.lookup(pid).cmdline.unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert!(raw.iter().any(|arg| arg == "hunter2"), "{raw:?}");
        assert!(
            !redacted.iter().any(|arg| arg.contains("hunter2"))
                && redacted
                    .iter()
                    .any(|arg| arg.contains(super::super::redact::MARK)),
            "{redacted:?}"
        );
        assert_eq!(again, redacted);
    }

    #[test]
    fn command_lines_keep_whole_arguments() {
        let (args, cut) = split_cmdline(b"curl\0-sS\0http://x/\0");
        assert_eq!(args, ["curl", "-sS", "http://x/"]);
        assert!(!cut);
        let long = "a".repeat(CMDLINE_LIMIT);
        let raw = format!("sh\0{long}\0tail\0");
        let (args, cut) = split_cmdline(raw.as_bytes());
        assert_eq!(args, ["sh"]);
        assert!(cut);
        // Empty arguments are arguments too.
        let (args, _) = split_cmdline(b"printf\0\0x\0");
        assert_eq!(args, ["printf", "", "x"]);
    }

    #[test]
    fn cgroup_ids_resolve_to_their_paths() {
        use std::os::unix::fs::MetadataExt;
        let root = crate::kernel::cgroup::cgroup2_mount().expect("cgroup v2 is mounted");
        let mine = std::fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .expect("a cgroup v2 line");
        let dir = root.join(mine.trim_start_matches('/'));
        let id = std::fs::metadata(&dir).unwrap().ino();
        let mut cache = ProcessCache::default();
        assert_eq!(cache.cgroup_path(id, None).as_deref(), Some(mine.as_str()));
        assert_eq!(cache.cgroup_path(1, None).as_deref(), Some("/"));
        // No directory has inode 0; the miss is remembered, not re-walked.
        assert_eq!(cache.cgroup_path(0, None), None);
        assert!(cache.cgroup_misses.contains_key(&0));
        // What procfs said is remembered for the process's exited
        // siblings, when it is the event's cgroup.
        let mut cache = ProcessCache::default();
        assert_eq!(
            cache.cgroup_path(id, Some(&mine)).as_deref(),
            Some(mine.as_str())
        );
        assert_eq!(cache.cgroups.get(&id), Some(&mine));
        assert_eq!(
            cache.cgroup_path(u64::MAX, Some("/x")).as_deref(),
            Some("/x")
        );
        assert!(!cache.cgroups.contains_key(&u64::MAX));
    }

    #[test]
    fn ancestors_of_this_test_reach_the_named_root() {
        let me = std::process::id();
        let mut cache = ProcessCache::default();
        let parent = cache.lookup(me).ppid.expect("this process has a parent");
        let chain = cache.ancestors(me, parent);
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].pid, parent);
        assert!(chain[0].exe.is_some());
        // A root that is not an ancestor: the walk stops below pid 1.
        let chain = cache.ancestors(me, u32::MAX);
        assert!(!chain.is_empty());
        assert!(chain.iter().all(|a| a.pid > 1));
        // An exited process yields no chain and no error, unless the
        // kernel named its parent.
        assert!(cache.ancestors(u32::MAX - 1, 1).is_empty());
        let chain = cache.ancestors_from(u32::MAX - 1, Some(me), parent);
        assert_eq!(
            chain.iter().map(|a| a.pid).collect::<Vec<_>>(),
            [me, parent]
        );
    }
}

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

use super::record::AuditAncestor;

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

/// Per-process enrichment cache.
#[derive(Debug, Default)]
pub struct ProcessCache {
    entries: HashMap<u32, (Instant, ProcessInfo)>,
}

impl ProcessCache {
    /// What procfs says about `tgid`, from the cache while it is fresh.
    pub(crate) fn lookup(&mut self, tgid: u32) -> ProcessInfo {
        if let Some((at, info)) = self.entries.get(&tgid)
            && at.elapsed() < PROCESS_CACHE_TTL
        {
            return info.clone();
        }
        let info = read_process(tgid);
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

    /// The ancestors of `tgid` from its parent up to `root` (the agent's
    /// root process) inclusive. Stops early where a process has exited
    /// and is not cached, and at pid 1, which is never part of an agent.
    pub(crate) fn ancestors(&mut self, tgid: u32, root: u32) -> Vec<AuditAncestor> {
        self.ancestors_from(tgid, None, root)
    }

    /// Like [`Self::ancestors`], with the parent's pid as the kernel saw it
    /// at the event: the chain can then be walked even when `tgid` itself
    /// has already exited.
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
        let mut current = self.lookup(tgid).ppid.or(parent);
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

    /// Drops what is cached for `tgid` (its process is gone or exec'd).
    pub fn forget(&mut self, tgid: u32) {
        self.entries.remove(&tgid);
    }
}

fn read_process(tgid: u32) -> ProcessInfo {
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let (cmdline, cmdline_truncated) = std::fs::read(format!("/proc/{tgid}/cmdline"))
        .ok()
        .filter(|raw| !raw.is_empty())
        .map(|raw| split_cmdline(&raw))
        .map_or((None, false), |(args, cut)| (Some(args), cut));
    let cgroup = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("0::"))
                .map(str::to_string)
        });
    let ppid = std::fs::read_to_string(format!("/proc/{tgid}/stat"))
        .ok()
        .and_then(|stat| parse_ppid(&stat));
    ProcessInfo {
        exe,
        cmdline,
        cmdline_truncated,
        cgroup,
        ppid,
    }
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

/// The parent pid from `/proc/PID/stat`. The command name in parentheses
/// may hold spaces and parentheses itself, so fields are counted from the
/// last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
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

//! Where a case's time goes, per kernel program: the kernel's own run-time
//! statistics (`BPF_ENABLE_STATS`), switched on for a pass of their own
//! after the timed rounds, since they add a clock read to every program run.

use std::{collections::BTreeMap, fmt::Write as _, os::fd::OwnedFd};

use anyhow::{Context, Result};

/// Every loaded program's counters at one moment, by program id.
pub(super) struct Snapshot(BTreeMap<u32, (String, u64, u64)>);

/// Keeps the statistics on while it lives.
pub(super) struct StatsOn {
    _enabled: OwnedFd,
}

/// Switches the kernel's run-time statistics on.
pub(super) fn enable() -> Result<StatsOn> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map(|enabled| StatsOn { _enabled: enabled })
        .context("cannot switch on the kernel's BPF run-time statistics")
}

/// The counters of every loaded program.
pub(super) fn snapshot() -> Snapshot {
    Snapshot(
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|info| {
                (
                    info.id(),
                    (
                        info.name_as_str().unwrap_or("?").to_string(),
                        u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                        info.run_count(),
                    ),
                )
            })
            .collect(),
    )
}

impl Snapshot {
    /// `(id, run time in ns, run count)` of each program named `name`.
    pub(super) fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (u32, u64, u64)> + 'a {
        self.0
            .iter()
            .filter(move |(_, (program, _, _))| program == name)
            .map(|(id, (_, time, count))| (*id, *time, *count))
    }
}

/// One program's share of a pass.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Share {
    pub(super) program: String,
    pub(super) ns_per_iteration: f64,
    pub(super) runs_per_iteration: f64,
    pub(super) ns_per_run: f64,
}

/// What each program that ran between `before` and `after` cost per
/// iteration of a pass of `iterations`, costliest first.
pub(super) fn shares(before: &Snapshot, after: &Snapshot, iterations: u64) -> Vec<Share> {
    let iterations = iterations.max(1) as f64;
    let mut shares: Vec<Share> = after
        .0
        .iter()
        .filter_map(|(id, (name, time, count))| {
            let (_, time_before, count_before) = before.0.get(id)?;
            let runs = count.checked_sub(*count_before).filter(|runs| *runs > 0)?;
            let time = time.saturating_sub(*time_before) as f64;
            Some(Share {
                program: name.clone(),
                ns_per_iteration: time / iterations,
                runs_per_iteration: runs as f64 / iterations,
                ns_per_run: time / runs as f64,
            })
        })
        .collect();
    shares.sort_by(|a, b| b.ns_per_iteration.total_cmp(&a.ns_per_iteration));
    shares
}

/// A table of `shares` under `title`, with their sum.
pub(super) fn table(title: &str, unit: &str, shares: &[Share]) -> String {
    let total: f64 = shares.iter().map(|s| s.ns_per_iteration).sum();
    let mut out = format!("{title}: {total:.0} ns per {unit} in all\n");
    let _ = writeln!(
        out,
        "  {:>10}  {:>9}  {:>8}  program",
        format!("ns/{unit}"),
        "runs",
        "ns/run"
    );
    for share in shares {
        let _ = writeln!(
            out,
            "  {:>10.1}  {:>9.2}  {:>8.1}  {}",
            share.ns_per_iteration, share.runs_per_iteration, share.ns_per_run, share.program
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_the_differences_per_iteration_costliest_first() {
        let before = Snapshot(BTreeMap::from([
            (1, ("a".to_string(), 1_000, 10)),
            (2, ("b".to_string(), 500, 5)),
            (3, ("idle".to_string(), 100, 1)),
        ]));
        let after = Snapshot(BTreeMap::from([
            (1, ("a".to_string(), 3_000, 30)),
            (2, ("b".to_string(), 10_500, 15)),
            (3, ("idle".to_string(), 100, 1)),
            (4, ("new".to_string(), 50, 1)),
        ]));
        let shares = shares(&before, &after, 10);
        assert_eq!(
            shares,
            vec![
                Share {
                    program: "b".to_string(),
                    ns_per_iteration: 1_000.0,
                    runs_per_iteration: 1.0,
                    ns_per_run: 1_000.0,
                },
                Share {
                    program: "a".to_string(),
                    ns_per_iteration: 200.0,
                    runs_per_iteration: 2.0,
                    ns_per_run: 100.0,
                },
            ],
            "programs that did not run, or were loaded since, are left out"
        );
        assert!(table("t", "connect", &shares).starts_with("t: 1200 ns per connect in all\n"));
    }
}

//! `cargo xtask bench audit`: how many events a second go from the kernel
//! to the hash-chained audit log with none lost, and what the daemon spends
//! on them.
//!
//! The per-agent event limit is lifted (`audit.eventsPerSecond: 0`), so
//! that every denial is an event. Several processes in the agent make
//! denied connects at a fixed total rate, rising step by step; every step
//! starts a fresh daemon with a fresh log. A step counts as sustained when
//! nothing was lost (every denial the kernel counted is a record in the
//! log, and the kernel dropped and suppressed nothing) and the daemon had
//! written the last record within a second of the load stopping, so that
//! the ring buffer was not quietly filling up.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{
    AGENT, Daemon, Listener, Params, WorkDir, build, clock_ticks_per_second, run_client, verdict,
};
use crate::{setup, util, workspace_root};

/// Goal from the issue.
const TARGET_PER_SECOND: f64 = 200_000.0;
/// Offered rates, events per second; 0 is as fast as the processes can.
const RATES: [u64; 8] = [
    50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 0,
];
/// Processes making denied connects; the host has two CPUs, shared with
/// the daemon.
const PROCESSES: usize = 4;
/// The daemon must have written the last record this soon after the load
/// stopped for a step to count as sustained: a daemon 10% slower than the
/// load builds a backlog of 0.3 s in a 3 s step, which the ring buffer
/// hides for a while but not for ever.
const MAX_LAG: Duration = Duration::from_millis(200);
/// The log has stopped growing when it has not grown for this long.
const QUIET: Duration = Duration::from_millis(1500);

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    /// Offered rate, events/s (0: unpaced).
    offered: u64,
    /// Denied connects the processes made, and at what rate.
    made: u64,
    made_per_second: f64,
    /// Denials the kernel counted, and what it dropped or suppressed.
    kernel_denied: u64,
    dropped: u64,
    suppressed: u64,
    /// Denial records in the log.
    records: u64,
    /// Records per second from the load's start to the last record.
    written_per_second: f64,
    /// From the load's end to the last record.
    lag: Duration,
    /// The daemon's CPU over the step, in CPUs (1.0: one whole CPU).
    cpu: f64,
    /// VmHWM and VmRSS at the end, KiB.
    peak_kib: u64,
    rss_kib: u64,
    /// Bytes of log written.
    log_bytes: u64,
}

impl Step {
    /// Denials the kernel counted that have no record; `dropped` and
    /// `suppressed` say why, if the kernel knows.
    fn lost(&self) -> u64 {
        self.kernel_denied.saturating_sub(self.records)
    }

    fn sustained(&self) -> bool {
        self.lost() == 0
            && self.dropped == 0
            && self.suppressed == 0
            && self.made == self.kernel_denied
            && self.lag <= MAX_LAG
    }
}

/// Every audit file of the log at `log` (the active one and rotated ones).
fn log_files(log: &Path) -> Result<Vec<std::path::PathBuf>> {
    let dir = log.parent().context("log directory")?;
    let name = log
        .file_name()
        .context("log file name")?
        .to_string_lossy()
        .into_owned();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file == name || file.starts_with(&format!("{name}.")) {
            files.push(entry.path());
        }
    }
    Ok(files)
}

fn log_size(log: &Path) -> Result<u64> {
    Ok(log_files(log)?
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum())
}

/// Lines of the log that contain `pattern`, with grep (much faster than
/// this debug-built program on hundreds of megabytes).
fn count_lines(log: &Path, pattern: &str) -> Result<u64> {
    let output = Command::new("grep")
        .args(["-c", "-h", "-F", "--", pattern])
        .args(log_files(log)?)
        .output()
        .context("cannot run grep")?;
    // grep exits 1 when nothing matched, which is a count of 0.
    ensure!(
        output.status.code().is_some_and(|c| c <= 1),
        "grep failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum())
}

/// The agent's kernel counters, from `baton status --json`.
fn counters(daemon: &Daemon, baton: &Path) -> Result<Value> {
    let status = daemon.status(baton)?;
    status["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["agent"] == AGENT))
        .map(|a| a["counters"].clone())
        .with_context(|| format!("baton status shows no agent {AGENT}: {status}"))
}

fn counter(counters: &Value, name: &str) -> Result<u64> {
    counters[name]
        .as_u64()
        .with_context(|| format!("no counter {name} in {counters}"))
}

/// A record of a connect the kernel denied for the agent, as the log
/// spells it.
fn denial_pattern() -> String {
    format!(
        "\"agent\":\"{AGENT}\",\"mode\":\"enforce\",\"verdict\":\"denied\",\"control\":\"egress\""
    )
}

fn policy_yaml() -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
         spec:\n  selector:\n    agent: {AGENT}\n  egress:\n    default: deny\n"
    )
}

fn config_yaml(work: &Path) -> String {
    format!(
        "audit:\n  eventsPerSecond: 0\n  keyFile: {}\n  stateDir: {}\n",
        work.join("audit.key").display(),
        work.display()
    )
}

struct AuditBench<'a> {
    baton: &'a Path,
    client: &'a Path,
    work: &'a Path,
    target: &'a str,
    seconds: u32,
}

impl AuditBench<'_> {
    /// One step: a fresh daemon and log, the load at `offered` events/s.
    fn step(&self, offered: u64) -> Result<Step> {
        let log = self.work.join("audit.jsonl");
        for file in log_files(&log)? {
            std::fs::remove_file(file)?;
        }
        let daemon = Daemon::start(self.baton, self.work, &config_yaml(self.work))?;
        // The start-up's own records and work are not the step's.
        thread::sleep(Duration::from_millis(500));
        let before = counters(&daemon, self.baton)?;
        let ticks_before = daemon.cpu_ticks()?;
        let spawned = Instant::now();
        let mut cmd = daemon.exec_command(
            self.baton,
            self.client,
            &[
                self.target.to_string(),
                PROCESSES.to_string(),
                offered.to_string(),
                self.seconds.to_string(),
            ],
        );
        let output = run_client(&mut cmd, Duration::from_secs(u64::from(self.seconds) + 60))?;
        let ended = Instant::now();
        let client: Value = serde_json::from_str(output.trim())
            .with_context(|| format!("bench-flood printed {output:?}, not JSON"))?;
        let field = |name: &str| {
            client[name]
                .as_u64()
                .with_context(|| format!("bench-flood's report lacks {name}: {output}"))
        };
        let (made, other, elapsed) = (field("denied")?, field("other")?, field("elapsed_ns")?);
        ensure!(
            other == 0,
            "{other} connects to {} were not denied with EPERM: the agent's policy is not in force",
            self.target
        );
        let load_started = ended
            .checked_sub(Duration::from_nanos(elapsed))
            .unwrap_or(spawned);
        // Drained once the log has stopped growing.
        let mut size = log_size(&log)?;
        let mut grown = Instant::now();
        while grown.elapsed() < QUIET {
            thread::sleep(Duration::from_millis(10));
            let now = log_size(&log)?;
            if now != size {
                size = now;
                grown = Instant::now();
            }
        }
        let ticks = daemon.cpu_ticks()? - ticks_before;
        let cpu_window = grown.duration_since(spawned).as_secs_f64().max(1e-3);
        let after = counters(&daemon, self.baton)?;
        let (rss_kib, peak_kib) = daemon.memory()?;
        let delta =
            |name: &str| -> Result<u64> { Ok(counter(&after, name)? - counter(&before, name)?) };
        let kernel_denied = delta("denied_connects")?;
        let dropped = delta("events_dropped")?;
        let suppressed = delta("events_suppressed")?;
        daemon.stop()?;
        let records = count_lines(&log, &denial_pattern())?;
        let load_seconds = elapsed as f64 / 1e9;
        let last_record = grown.duration_since(load_started).as_secs_f64().max(1e-3);
        Ok(Step {
            offered,
            made,
            made_per_second: made as f64 / load_seconds,
            kernel_denied,
            dropped,
            suppressed,
            records,
            written_per_second: records as f64 / last_record,
            lag: grown.saturating_duration_since(ended),
            cpu: ticks as f64 / clock_ticks_per_second() as f64 / cpu_window,
            peak_kib,
            rss_kib,
            log_bytes: size,
        })
    }
}

pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the audit benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let root = workspace_root();
    let client = root.join("target/debug/bench-flood");
    let connect = root.join("target/debug/bench-connect");
    let baton = params.baton();
    let seconds = params.iterations as u32;

    let work = WorkDir::create()?;
    // A listener, so that only Baton can be what refuses the connects.
    let listener = Listener::start(&connect)?;
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    std::fs::write(&policy, policy_yaml())?;
    println!(
        "bench: audit: {PROCESSES} processes in agent {AGENT} make denied connects to {} at a \
         rising total rate for {seconds} s each ({} rounds); audit.eventsPerSecond: 0; a fresh \
         daemon and log per step",
        listener.addr, params.rounds
    );
    let bench = AuditBench {
        baton: &baton,
        client: &client,
        work: work.path(),
        target: &listener.addr,
        seconds,
    };
    let mut steps = Vec::new();
    for round in 0..params.rounds {
        let mut failed = false;
        for &offered in &RATES {
            // Past the first rate that is not sustained, only the unpaced
            // step still says something new.
            if failed && offered != 0 {
                continue;
            }
            let step = bench.step(offered)?;
            failed |= !step.sustained();
            println!(
                "bench: round {}: offered {:>9}/s: made {:>9.0}/s, written {:>9.0}/s; {} records of \
                 {} kernel denials, {} dropped, {} suppressed; last record {:.2} s after the load; \
                 daemon CPU {:.0}%, peak RSS {:.1} MiB",
                round + 1,
                rate_label(step.offered),
                step.made_per_second,
                step.written_per_second,
                step.records,
                step.kernel_denied,
                step.dropped,
                step.suppressed,
                step.lag.as_secs_f64(),
                step.cpu * 100.0,
                step.peak_kib as f64 / 1024.0
            );
            steps.push(step);
        }
    }
    drop(listener);
    print!("{}", report(&steps, seconds, &baton));
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rate_label(offered: u64) -> String {
    if offered == 0 {
        "unpaced".to_string()
    } else {
        offered.to_string()
    }
}

fn report(steps: &[Step], seconds: u32, baton: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\naudit: denied connects -> kernel events -> hash-chained, signed log ({PROCESSES} \
         processes, {seconds} s per step, per-agent event limit lifted)\n\
         made: denials per second the processes achieved; written: denial records / (last record \
         - start of the load); lost: kernel denials without a record (the kernel's drop and suppression counters \
         say why)\n"
    );
    let _ = writeln!(
        out,
        "{:>9} {:>10} {:>10} {:>10} {:>6} {:>8} {:>7} {:>9} {:>9} {:>9}  sustained",
        "offered/s",
        "made/s",
        "written/s",
        "records",
        "lost",
        "lag s",
        "CPU",
        "peak MiB",
        "RSS MiB",
        "log MiB",
    );
    for s in steps {
        let _ = writeln!(
            out,
            "{:>9} {:>10.0} {:>10.0} {:>10} {:>6} {:>8.2} {:>6.0}% {:>9.1} {:>9.1} {:>9.0}  {}",
            rate_label(s.offered),
            s.made_per_second,
            s.written_per_second,
            s.records,
            s.lost(),
            s.lag.as_secs_f64(),
            s.cpu * 100.0,
            s.peak_kib as f64 / 1024.0,
            s.rss_kib as f64 / 1024.0,
            s.log_bytes as f64 / (1024.0 * 1024.0),
            if s.sustained() { "yes" } else { "no" }
        );
    }
    let best = steps
        .iter()
        .filter(|s| s.sustained())
        .max_by(|a, b| a.made_per_second.total_cmp(&b.made_per_second));
    let _ = writeln!(out, "baton: {}", baton.display());
    match best {
        Some(s) => {
            let _ = writeln!(
                out,
                "\nbest sustained with zero loss: {:.0} events/s ({} records, {:.0} bytes each), \
                 daemon CPU {:.0}% of one CPU, peak RSS {:.1} MiB",
                s.made_per_second,
                s.records,
                s.log_bytes as f64 / s.records.max(1) as f64,
                s.cpu * 100.0,
                s.peak_kib as f64 / 1024.0
            );
            let _ = writeln!(
                out,
                "target >= {TARGET_PER_SECOND:.0} events/s with zero loss: {:.0}  {}",
                s.made_per_second,
                verdict(s.made_per_second >= TARGET_PER_SECOND)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nno step was sustained with zero loss\ntarget >= {TARGET_PER_SECOND:.0} events/s \
                 with zero loss: 0  FAIL"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(made: u64, records: u64, lag_ms: u64) -> Step {
        Step {
            offered: 100,
            made,
            made_per_second: made as f64,
            kernel_denied: made,
            dropped: 0,
            suppressed: 0,
            records,
            written_per_second: records as f64,
            lag: Duration::from_millis(lag_ms),
            cpu: 0.5,
            peak_kib: 1024,
            rss_kib: 1024,
            log_bytes: 600 * records,
        }
    }

    #[test]
    fn sustained_means_nothing_lost_and_no_backlog() {
        assert!(step(1000, 1000, 100).sustained());
        assert!(!step(1000, 999, 100).sustained());
        assert!(!step(1000, 1000, 500).sustained());
        let mut dropped = step(1000, 999, 100);
        dropped.dropped = 1;
        assert_eq!(dropped.lost(), 1);
        assert!(!dropped.sustained());
    }

    #[test]
    fn the_report_picks_the_fastest_sustained_step() {
        let steps = [
            step(150_000, 150_000, 100),
            step(250_000, 250_000, 200),
            step(300_000, 1, 100),
        ];
        let text = report(&steps, 3, Path::new("baton"));
        assert!(
            text.contains("best sustained with zero loss: 250000 events/s"),
            "{text}"
        );
        assert!(text.contains("with zero loss: 250000  PASS"), "{text}");
    }

    #[test]
    fn the_policy_denies_all_egress() {
        assert!(policy_yaml().ends_with("  egress:\n    default: deny\n"));
        assert!(config_yaml(Path::new("/w")).starts_with("audit:\n  eventsPerSecond: 0\n"));
    }
}

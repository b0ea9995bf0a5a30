//! `cargo xtask bench idle`: what a running daemon costs the host when no
//! agent does anything.
//!
//! A daemon with 1,000 rules is started and left to finish its start-up
//! work; then its user plus system CPU time (all threads, from
//! `/proc/PID/stat`) is read over a quiet window. Nothing else the
//! benchmark starts runs meanwhile. The figure is absolute, not a ratio:
//! an idle daemon's baseline is zero.

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::{
    Daemon, Params, WorkDir, build, clock_ticks_per_second, median, reload::policy_set, verdict,
};
use crate::{setup, util};

/// Target from the issue: at most 0.2% of one CPU.
const TARGET_PERCENT: f64 = 0.2;
/// Agents the rules are spread over; each has as many egress as file rules.
const AGENTS: usize = 5;
/// Rules in the set (egress and file rules together).
const RULES: usize = 1_000;
/// How long the daemon may take to finish starting before the window.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the idle benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let baton = params.baton();
    let window = Duration::from_secs(params.iterations as u64);
    let hz = clock_ticks_per_second() as f64;

    let work = WorkDir::create()?;
    let policies = work.path().join("policies");
    util::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("set.yaml"),
        policy_set(AGENTS, RULES / (2 * AGENTS), 0),
    )?;
    let config = format!(
        "audit:\n  keyFile: {}\n  stateDir: {}\n",
        work.path().join("audit.key").display(),
        work.path().display()
    );
    println!(
        "bench: idle: a daemon with {RULES} rules ({AGENTS} agents), no agent process; its CPU \
         time over {} s once started ({} rounds, a fresh daemon each)",
        window.as_secs(),
        params.rounds
    );
    let mut percents = Vec::new();
    for round in 0..params.rounds {
        let daemon = Daemon::start(&baton, work.path(), &config)?;
        let (settled, _) = daemon.settle(SETTLE_LIMIT)?;
        let before = daemon.cpu_ticks()?;
        thread::sleep(window);
        let ticks = daemon.cpu_ticks()? - before;
        daemon.stop()?;
        let percent = 100.0 * ticks as f64 / hz / window.as_secs_f64();
        println!(
            "bench: round {}: settled {:.1} s after start; {ticks} clock ticks in {} s = {percent:.3}% \
             of one CPU",
            round + 1,
            settled.as_secs_f64(),
            window.as_secs()
        );
        percents.push(percent);
    }
    let idle = median(percents.iter().copied());
    let mut out = String::new();
    let _ = writeln!(out, "\nbench: idle daemon, {RULES} rules");
    let _ = writeln!(out, "baton: {}", baton.display());
    let _ = writeln!(
        out,
        "CPU while idle: median {idle:.3}% of one CPU over {} round(s) of {} s (clock: {hz} \
         ticks/s, so one tick in the window is {:.3}%)",
        params.rounds,
        window.as_secs(),
        100.0 / hz / window.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "target: at most {TARGET_PERCENT}% of one CPU: {}",
        verdict(idle <= TARGET_PERCENT)
    );
    print!("{out}");
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! `cargo xtask bench reload`: how long the daemon takes to parse, compile
//! and swap in a set of 10,000 rules, and what it costs in memory.
//!
//! The daemon measures its own phases (the `policy loaded` audit record,
//! `baton status`, `baton_policy_reload_duration_seconds`); this benchmark
//! reads them from `baton status --json` and also times the whole reload
//! from outside: from the rename that puts the new set in the policy
//! directory to the moment `baton status` reports the new generation, which
//! includes the directory watch's debounce.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::{Daemon, Params, WorkDir, build, median, percentile, verdict};
use crate::{setup, util};

/// Target: parse, compile and swap 10,000 rules in 200 ms.
const TARGET_MS: f64 = 200.0;
/// Target: the daemon's resident memory after the last of (c)'s reloads
/// stays within this factor of what it was after the first of them (both
/// hold two big generations). A daemon that keeps a little of every
/// generation grows without bound on a host whose policies change all day.
const TARGET_RSS_GROWTH: f64 = 1.10;
/// Agents the big sets spread their rules over.
const AGENTS: usize = 5;
/// Rules per agent and kind in the tiny sets.
const TINY_RULES: usize = 2;
/// The one policy file every set is written to.
const SET_FILE: &str = "set.yaml";
/// The directory watch waits this long for quiet after a change
/// (`DEFAULT_DEBOUNCE` in the daemon's directory source).
const DEBOUNCE_MS: f64 = 300.0;

/// A policy set: `agents` agents, each with `per_agent` egress rules and as
/// many file rules. `variant` changes every rule's ports and paths, so two
/// variants differ in every map entry and a reload between them rewrites
/// the whole set.
pub(super) fn policy_set(agents: usize, per_agent: usize, variant: usize) -> String {
    const PREFIXES: [u32; 5] = [18, 20, 24, 28, 32];
    let mut yaml = String::new();
    for agent in 0..agents {
        let _ = write!(
            yaml,
            "---\napiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: reload-{agent}\n\
             spec:\n  selector:\n    agent: reload-{agent}\n  egress:\n    default: deny\n    allow:\n"
        );
        for i in 0..per_agent {
            // Each rule owns one /18 block of 10.0.0.0/8, as in the egress
            // benchmark: disjoint prefixes, one port table each.
            let base = format!("10.{}.{}.0", (i / 4) % 256, (i % 4) * 64);
            let port = 1000 + (i % 50) as u32 * 10 + variant as u32;
            let _ = writeln!(
                yaml,
                "      - cidr: {base}/{}\n        ports: [{port}, \"{}-{}\"]\n        protocol: tcp",
                PREFIXES[i % PREFIXES.len()],
                port + 20_000,
                port + 20_100
            );
        }
        yaml.push_str("  files:\n    default: allow\n    deny:\n");
        for i in 0..per_agent {
            let _ = writeln!(
                yaml,
                "      - /srv/baton-reload-bench/v{variant}/a{agent}/d{:02}/f{i}",
                i % 37
            );
        }
    }
    yaml
}

/// One reload as measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reload {
    /// The daemon's own figures, ms.
    parse: f64,
    compile: f64,
    swap: f64,
    /// Rules the daemon counted in the new set.
    rules: u64,
    /// From the rename to `baton status` showing the new generation, ms.
    outside: f64,
}

impl Reload {
    fn total(&self) -> f64 {
        self.parse + self.compile + self.swap
    }
}

/// Reads what `baton status --json` says about the last reload.
fn last_reload(status: &Value) -> Result<(f64, f64, f64, u64)> {
    let reload = &status["policy"]["last_reload"];
    let ms = |name: &str| {
        reload[name]
            .as_f64()
            .with_context(|| format!("baton status has no policy.last_reload.{name}: {status}"))
    };
    Ok((
        ms("parse_ms")?,
        ms("compile_ms")?,
        ms("swap_ms")?,
        reload["rules"].as_u64().unwrap_or_default(),
    ))
}

fn generation(status: &Value) -> Result<u64> {
    status["policy"]["generation"]
        .as_u64()
        .context("baton status has no policy.generation")
}

/// Puts `yaml` in the policy directory in one step (a rename, so the
/// daemon never reads half a file) and waits until the daemon has it in
/// force.
fn swap_in(daemon: &Daemon, baton: &Path, policies: &Path, yaml: &str) -> Result<Reload> {
    let before = generation(&daemon.status(baton)?)?;
    // Hidden files are not policies: the daemon skips it until the rename.
    let staged = policies.join(".set.yaml.new");
    std::fs::write(&staged, yaml).with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, policies.join(SET_FILE))?;
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(60);
    loop {
        let status = daemon.status(baton)?;
        if generation(&status)? != before {
            let outside = changed.elapsed().as_secs_f64() * 1e3;
            ensure!(
                status["policy"]["last_error"].is_null(),
                "the daemon refused the set: {}",
                status["policy"]["last_error"]
            );
            let (parse, compile, swap, rules) = last_reload(&status)?;
            return Ok(Reload {
                parse,
                compile,
                swap,
                rules,
                outside,
            });
        }
        if let Some(error) = status["policy"]["last_error"].as_str() {
            anyhow::bail!("the daemon refused the set: {error}");
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon did not load the new set within 60 s"
        );
        // Often enough for the outside figure, rarely enough not to slow
        // the daemon down: each look is a `baton status` process.
        thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the reload benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let baton = params.baton();
    let rounds = params.rounds;
    let per_agent = params.iterations.div_ceil(2 * AGENTS);
    let big_rules = 2 * AGENTS * per_agent;
    let tiny_rules = 2 * TINY_RULES;

    let work = WorkDir::create()?;
    let policies = work.path().join("policies");
    util::create_dir_all(&policies)?;
    let tiny = [policy_set(1, TINY_RULES, 0), policy_set(1, TINY_RULES, 1)];
    let big = [
        policy_set(AGENTS, per_agent, 0),
        policy_set(AGENTS, per_agent, 1),
    ];
    for (name, yaml) in [("tiny", &tiny[0]), ("big", &big[0])] {
        let check = work.path().join(format!("check-{name}.yaml"));
        std::fs::write(&check, yaml)?;
        util::output(Command::new(&baton).arg("policy").arg("check").arg(&check))
            .with_context(|| format!("the generated {name} policy set does not compile"))?;
        std::fs::remove_file(&check)?;
    }
    std::fs::write(policies.join(SET_FILE), &tiny[0])?;
    let config = format!(
        "audit:\n  keyFile: {}\n  stateDir: {}\n",
        work.path().join("audit.key").display(),
        work.path().display()
    );
    let daemon = Daemon::start(&baton, work.path(), &config)?;
    // Let the start-up work finish before the first figure.
    thread::sleep(Duration::from_secs(1));
    let memory_before = daemon.memory()?;
    println!(
        "bench: reload: {rounds} reloads between two sets of {tiny_rules} rules (1 agent), then \
         {rounds} between two sets of {big_rules} rules ({AGENTS} agents x ({per_agent} egress + \
         {per_agent} file rules)), each written to {} with one rename",
        policies.join(SET_FILE).display()
    );
    let show = |label: &str, i: usize, r: &Reload| {
        println!(
            "bench: {label} {:>2}: parse {:>6.1} ms  compile {:>6.1} ms  swap {:>6.1} ms  \
             total {:>6.1} ms  ({} rules); rename -> new generation {:>6.1} ms",
            i + 1,
            r.parse,
            r.compile,
            r.swap,
            r.total(),
            r.rules,
            r.outside
        );
    };
    let mut small = Vec::new();
    for i in 0..rounds {
        let r = swap_in(&daemon, &baton, &policies, &tiny[(i + 1) % 2])?;
        show("tiny   ", i, &r);
        small.push(r);
    }
    let first = swap_in(&daemon, &baton, &policies, &big[0])?;
    show("tiny->big", 0, &first);
    let memory_loaded = memory_at_rest(&daemon)?;
    let mut large = Vec::new();
    let mut memory_first_big = memory_loaded;
    for i in 0..rounds {
        let r = swap_in(&daemon, &baton, &policies, &big[(i + 1) % 2])?;
        show("big    ", i, &r);
        large.push(r);
        if i == 0 {
            memory_first_big = memory_at_rest(&daemon)?;
        }
        if (i + 1) % 10 == 0 {
            let (rss, _) = memory_at_rest(&daemon)?;
            println!(
                "bench: VmRSS after {} big reloads: {:.1} MiB",
                i + 1,
                rss as f64 / 1024.0
            );
        }
    }
    let memory_after = memory_at_rest(&daemon)?;
    daemon.stop()?;

    print!(
        "{}",
        report(&Figures {
            small: &small,
            first: &first,
            large: &large,
            tiny_rules,
            big_rules,
            memory: [memory_before, memory_loaded, memory_first_big, memory_after],
            baton: &baton,
        })
    );
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The daemon's memory once the reload it just reported is over. `baton
/// status` shows the new generation while the reload is still returning
/// what it freed to the system (after it lets go of the daemon's state), so
/// a reading taken at once catches the old set half-freed.
fn memory_at_rest(daemon: &Daemon) -> Result<(u64, u64)> {
    thread::sleep(Duration::from_millis(500));
    daemon.memory()
}

/// Everything the report shows.
struct Figures<'a> {
    small: &'a [Reload],
    first: &'a Reload,
    large: &'a [Reload],
    tiny_rules: usize,
    big_rules: usize,
    /// (VmRSS, VmHWM) in KiB: on the tiny set, after the first big load,
    /// after the first of (c)'s reloads and after the last.
    memory: [(u64, u64); 4],
    baton: &'a Path,
}

fn report(f: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nreload: the daemon's own figures (baton status, policy.last_reload) and rename -> new \
         generation seen by `baton status` (includes the {DEBOUNCE_MS:.0} ms debounce of the \
         directory watch)\n"
    );
    let _ = writeln!(
        out,
        "{:<4} {:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "case",
        "median over the reloads",
        "parse ms",
        "compile",
        "swap",
        "total",
        "p99 total",
        "outside ms"
    );
    let row = |out: &mut String, tag: &str, label: String, rs: &[Reload]| {
        let of = |g: fn(&Reload) -> f64| median(rs.iter().map(g));
        let _ = writeln!(
            out,
            "{tag:<4} {label:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
            of(|r| r.parse),
            of(|r| r.compile),
            of(|r| r.swap),
            of(Reload::total),
            percentile(rs.iter().map(Reload::total), 99),
            of(|r| r.outside)
        );
    };
    row(
        &mut out,
        "(a)",
        format!(
            "{} rules <-> {} rules, x{}",
            f.tiny_rules,
            f.tiny_rules,
            f.small.len()
        ),
        f.small,
    );
    row(
        &mut out,
        "(b)",
        format!("{} rules -> {} rules, once", f.tiny_rules, f.big_rules),
        std::slice::from_ref(f.first),
    );
    row(
        &mut out,
        "(c)",
        format!(
            "{} rules <-> {} rules, x{}",
            f.big_rules,
            f.big_rules,
            f.large.len()
        ),
        f.large,
    );
    let total_c = median(f.large.iter().map(Reload::total));
    let total_a = median(f.small.iter().map(Reload::total));
    let _ = writeln!(
        out,
        "     (c) - (a): {:.1} ms; (c) / (a): {:.0}x; the daemon counted {} rules in each big set",
        total_c - total_a,
        total_c / total_a.max(1e-3),
        f.large.first().map_or(0, |r| r.rules)
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let [before, loaded, first_big, after] = f.memory;
    let _ = writeln!(
        out,
        "\nbaton run memory, VmRSS (VmHWM): on the tiny set {:.1} MiB ({:.1}); after (b) {:.1} MiB \
         ({:.1}); after (c)'s first reload {:.1} MiB ({:.1}); after its last {:.1} MiB ({:.1})",
        mib(before.0),
        mib(before.1),
        mib(loaded.0),
        mib(loaded.1),
        mib(first_big.0),
        mib(first_big.1),
        mib(after.0),
        mib(after.1)
    );
    let _ = writeln!(out, "baton: {}", f.baton.display());
    let _ = writeln!(
        out,
        "\ntarget (c) parse+compile+swap < {TARGET_MS:.0} ms: {total_c:.1} ms  {}",
        verdict(total_c < TARGET_MS)
    );
    let growth = after.0 as f64 / first_big.0.max(1) as f64;
    let _ = writeln!(
        out,
        "target VmRSS after (c)'s {} reloads <= {TARGET_RSS_GROWTH:.2}x after its first: {growth:.3}x  {}",
        f.large.len(),
        verdict(growth <= TARGET_RSS_GROWTH)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_have_the_asked_rules_and_variants_differ_everywhere() {
        let a = policy_set(AGENTS, 1000, 0);
        let b = policy_set(AGENTS, 1000, 1);
        let count =
            |yaml: &str, prefix: &str| yaml.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count(&a, "      - cidr: "), 5_000);
        assert_eq!(count(&a, "      - /srv/"), 5_000);
        assert_eq!(count(&a, "kind: AgentPolicy"), AGENTS);
        let same = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x == y && (x.contains("ports") || x.contains("/srv/")))
            .count();
        assert_eq!(same, 0);
        assert!(
            a.contains("      - cidr: 10.0.64.0/20\n        ports: [1010, \"21010-21110\"]\n"),
            "{}",
            &a[..600]
        );
    }
}

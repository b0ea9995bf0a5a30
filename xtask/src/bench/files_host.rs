//! `cargo xtask bench files --host`: what Baton's fallbacks add to `open()`
//! on a kernel that refuses BPF LSM programs, such as this machine's.
//!
//! Cases, in one round each: (a) no Baton; (b) the daemon running, the
//! process in no agent; (c) a `baton exec` agent, held by the Landlock
//! ruleset the daemon plans; (d) an agent selected by its cgroup, whose
//! opens the fanotify listener decides; (L) no Baton, the same rules as a
//! Landlock ruleset the process applies to itself. The tree and its 1,000
//! rules are those of the VM benchmark, on a tmpfs of the benchmark's own:
//! the listener marks the mount of each denied folder, and on a mount of
//! its own that mark taxes no other program of the host.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    AGENT, Cgroup, Daemon, Params, WorkDir, build, cgroup2_root, median, parse_timing, probe,
    run_client,
};
use crate::{setup, util, workspace_root};

/// Where the tree lives: a tmpfs the benchmark mounts and unmounts.
const HOST_ROOT: &str = "/run/baton-bench-files-host";
/// The agent of case (d), and its cgroup below the cgroup v2 root.
const CGROUP_AGENT: &str = "bench-cgroup";
const CGROUP_NAME: &str = "baton-bench-files";
/// Rounds and opens per case and round, unless `--rounds` and
/// `--iterations` say otherwise: on the host a run takes well under a
/// second.
pub(super) const ROUNDS: u32 = 20;
pub(super) const ITERATIONS: u32 = 20_000;
/// Target for (b)/(a): a daemon holding no agent may cost a process in no
/// agent this much.
const DAEMON_RATIO_TARGET: f64 = 1.05;
/// Target for (c)-(a) and (d)-(a) against (L)-(a).
const LANDLOCK_FACTOR: f64 = 1.5;
/// The CPU bench-open runs on (`BATON_BENCH_CPU`).
const BENCH_CPU: (&str, &str) = ("BATON_BENCH_CPU", "0");
/// How long bench-open waits before it measures, so that the daemon's work
/// on the new process (admission, fanotify's first look) is over.
const DELAY_MS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Baseline,
    Daemon,
    Exec,
    Cgroup,
    Landlock,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Baseline,
        Case::Landlock,
        Case::Daemon,
        Case::Exec,
        Case::Cgroup,
    ];

    fn tag(self) -> &'static str {
        match self {
            Case::Baseline => "(a)",
            Case::Daemon => "(b)",
            Case::Exec => "(c)",
            Case::Cgroup => "(d)",
            Case::Landlock => "(L)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Baseline => "no Baton",
            Case::Daemon => "Baton running, not in an agent",
            Case::Exec => "baton exec agent, 1,000 rules (Landlock plan)",
            Case::Cgroup => "cgroup-selected agent, 1,000 rules (fanotify)",
            Case::Landlock => "no Baton, the same rules as a Landlock ruleset",
        }
    }

    fn needs_daemon(self) -> bool {
        matches!(self, Case::Daemon | Case::Exec | Case::Cgroup)
    }

    /// What opening the tree's secret gives in this case.
    fn secret_outcome(self) -> &'static str {
        match self {
            Case::Baseline | Case::Daemon => "ok",
            // Landlock refuses with EACCES, fanotify with EPERM.
            Case::Exec | Case::Landlock => "errno=13",
            Case::Cgroup => "errno=1",
        }
    }
}

/// The benchmark's tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Result<Self> {
        if util::mount_points("tmpfs")?.iter().any(|m| m == at) {
            // Left by an interrupted run.
            util::output(Command::new("umount").arg(at))?;
        }
        util::create_dir_all(at)?;
        util::output(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "baton-bench"])
                .arg(at),
        )?;
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(error) = util::output(Command::new("umount").arg(&self.0)) {
            eprintln!("bench: cannot unmount {}: {error:#}", self.0.display());
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether this kernel loads BPF LSM programs, as `baton probe` finds out
/// (being listed among the active LSMs is not enough: some kernels list
/// `bpf` and refuse its programs).
fn bpf_lsm_loads(baton: &Path) -> Result<bool> {
    let output = util::output(Command::new(baton).args(["probe", "--json"]))?;
    let report: serde_json::Value =
        serde_json::from_str(&output).context("baton probe --json printed no JSON")?;
    report["bpf_lsm_loadable"]
        .as_bool()
        .context("baton probe --json does not say whether BPF LSM loads")
}

struct HostBench {
    client: PathBuf,
    baton: PathBuf,
    target: PathBuf,
    secret: PathBuf,
    grants: PathBuf,
    cgroup: Cgroup,
    iterations: usize,
}

impl HostBench {
    fn args(&self, rest: &[String]) -> Vec<String> {
        let mut args = vec!["--delay-ms".to_string(), DELAY_MS.to_string()];
        args.extend_from_slice(rest);
        args
    }

    /// `bench-open ARGS` as `case` runs it.
    fn command(&self, case: Case, daemon: Option<&Daemon>, args: &[String]) -> Result<Command> {
        let daemon = || daemon.with_context(|| format!("case {} needs the daemon", case.tag()));
        let mut cmd = match case {
            Case::Baseline | Case::Daemon => {
                let mut cmd = Command::new(&self.client);
                cmd.args(args);
                cmd
            }
            Case::Landlock => {
                let mut cmd = Command::new(&self.client);
                cmd.arg("--landlock").arg(&self.grants).args(args);
                cmd
            }
            Case::Exec => daemon()?.exec_command_in(AGENT, &self.baton, &self.client, args),
            Case::Cgroup => self.cgroup.command(&self.client, args),
        };
        // One CPU for every case: a lone client moving between CPUs
        // swung a round's median by a third.
        cmd.env(BENCH_CPU.0, BENCH_CPU.1);
        Ok(cmd)
    }

    fn sanity(&self, case: Case, daemon: Option<&Daemon>) -> Result<()> {
        let args = vec!["--probe".to_string(), self.secret.display().to_string()];
        let outcome = probe(&mut self.command(case, daemon, &args)?)?;
        ensure!(
            outcome == case.secret_outcome(),
            "{} ({}) opening {} gave {outcome:?}, not {:?}",
            case.tag(),
            case.label(),
            self.secret.display(),
            case.secret_outcome()
        );
        Ok(())
    }

    fn measure(&self, case: Case, daemon: Option<&Daemon>) -> Result<u64> {
        let args = self.args(&[
            self.target.display().to_string(),
            self.iterations.to_string(),
        ]);
        let output = run_client(
            &mut self.command(case, daemon, &args)?,
            std::time::Duration::from_secs(120),
        )?;
        Ok(parse_timing("bench-open", &output)?.0.median)
    }
}

impl HostBench {
    /// One more pass of (b), (c) and (d) with the kernel's run-time
    /// statistics on: what each kernel program costs an open. Kept out of
    /// the timed rounds, as the statistics add a clock read to every run.
    fn program_breakdown(&self, work: &Path) -> Result<String> {
        let daemon = Daemon::start(&self.baton, work, "")?;
        let stats = super::programs::enable()?;
        let mut out = format!(
            "\nfiles --host: where the time goes, per kernel program (one more pass of {} \
             opens per case, with the kernel's run-time statistics on)\n",
            self.iterations
        );
        let args = self.args(&[
            self.target.display().to_string(),
            self.iterations.to_string(),
        ]);
        for case in [Case::Daemon, Case::Exec, Case::Cgroup] {
            let before = super::programs::snapshot();
            run_client(
                &mut self.command(case, Some(&daemon), &args)?,
                std::time::Duration::from_secs(120),
            )?;
            let after = super::programs::snapshot();
            let shares = super::programs::shares(&before, &after, self.iterations as u64);
            out.push_str(&super::programs::table(
                &format!("{} {}", case.tag(), case.label()),
                "open",
                &shares,
            ));
        }
        drop(stats);
        daemon.stop()?;
        Ok(out)
    }
}

/// `cargo xtask bench files --host`.
pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the files benchmark loads eBPF programs and mounts a tmpfs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let root = workspace_root();
    let client = root.join("target/debug/bench-open");
    let baton = params.baton();
    if bpf_lsm_loads(&baton)? {
        bail!(
            "this kernel loads BPF LSM programs, so Baton uses no fallback here; \
             `cargo xtask bench files` (without --host) measures BPF LSM"
        );
    }

    let tmpfs = Tmpfs::mount(Path::new(HOST_ROOT))?;
    let tree = super::files::FileTree::at(&tmpfs.0, AGENT);
    tree.create(&[])?;
    let work = WorkDir::create()?;
    let (grants, grant_count) =
        super::files::write_landlock_grants(&tree, &work.path().join("grants"))?;
    let policies = work.path().join("policies");
    util::create_dir_all(&policies)?;
    let cgroup = Cgroup::create(&cgroup2_root()?, CGROUP_NAME)?;
    let exec_policy = tree.policy_yaml();
    let cgroup_policy = exec_policy
        .replace(
            &format!("name: {AGENT}\n"),
            &format!("name: {CGROUP_AGENT}\n"),
        )
        .replace(
            &format!("    agent: {AGENT}\n"),
            &format!("    agent: {CGROUP_AGENT}\n    cgroups: [/{CGROUP_NAME}]\n"),
        );
    for (file, yaml) in [("exec.yaml", &exec_policy), ("cgroup.yaml", &cgroup_policy)] {
        let path = policies.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    }
    util::output(
        Command::new(&baton)
            .arg("policy")
            .arg("check")
            .arg(&policies),
    )
    .context("the generated benchmark policies do not compile")?;

    let bench = HostBench {
        client,
        baton,
        target: tree.target(),
        secret: tree.secret(),
        grants,
        cgroup,
        iterations: params.iterations,
    };
    println!(
        "bench: files --host: {} rounds x {} cases x {} open()+close() of {} \
         ({} deny rules + 1 allow rule; Landlock: {grant_count} grants)",
        params.rounds,
        Case::ALL.len(),
        params.iterations,
        bench.target.display(),
        tree.deny_rules(),
    );

    let mut rounds: Vec<Vec<(Case, u64)>> = Vec::new();
    let mut enforcement = String::new();
    for round in 0..params.rounds {
        let mut measured = Vec::new();
        for with_daemon in super::halves(round) {
            let cases = super::half_cases(round, &Case::ALL, with_daemon, Case::needs_daemon);
            let daemon = if with_daemon {
                let daemon = Daemon::start(&bench.baton, work.path(), "")?;
                if enforcement.is_empty() {
                    let status = daemon.status(&bench.baton)?;
                    enforcement = status["file_enforcement"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                Some(daemon)
            } else {
                None
            };
            for case in cases {
                bench.sanity(case, daemon.as_ref())?;
                let median_ns = bench.measure(case, daemon.as_ref())?;
                println!(
                    "bench: round {:>width$}/{} {} {:<48} median {:>7} ns",
                    round + 1,
                    params.rounds,
                    case.tag(),
                    case.label(),
                    median_ns,
                    width = params.rounds.to_string().len(),
                );
                measured.push((case, median_ns));
            }
            if let Some(daemon) = daemon {
                daemon.stop()?;
            }
        }
        rounds.push(measured);
    }
    let breakdown = bench.program_breakdown(work.path())?;
    print!("{}", report(&rounds, &enforcement));
    print!("{breakdown}");
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    drop(tmpfs);
    Ok(())
}

/// The summary: each case's median over the rounds, and the targets.
fn report(rounds: &[Vec<(Case, u64)>], enforcement: &str) -> String {
    let of = |case: Case| {
        median(
            rounds
                .iter()
                .flat_map(|round| round.iter())
                .filter(|(c, _)| *c == case)
                .map(|(_, ns)| *ns as f64),
        )
    };
    // Ratios per round, then their median: slow drift between rounds
    // cancels.
    let ratio = |case: Case| {
        median(rounds.iter().filter_map(|round| {
            let find = |c: Case| {
                round
                    .iter()
                    .find(|(x, _)| *x == c)
                    .map(|(_, ns)| *ns as f64)
            };
            Some(find(case)? / find(Case::Baseline)?)
        }))
    };
    let mut out = format!(
        "\nfiles --host: open()+close() of a file in the allowed folder; median over {} rounds\n\
         the daemon's file enforcement: {enforcement}\n\n",
        rounds.len()
    );
    let _ = writeln!(out, "{:<54} {:>10} {:>8}", "case", "median ns", "vs (a)");
    for case in Case::ALL {
        let _ = writeln!(
            out,
            "{} {:<50} {:>10.0} {:>8.3}",
            case.tag(),
            case.label(),
            of(case),
            ratio(case)
        );
    }
    let baseline = of(Case::Baseline);
    let landlock = of(Case::Landlock) - baseline;
    let daemon = ratio(Case::Daemon);
    let _ = writeln!(
        out,
        "\ntarget (b)/(a) <= {DAEMON_RATIO_TARGET}:            {daemon:.3}  {}",
        super::verdict(daemon <= DAEMON_RATIO_TARGET)
    );
    for case in [Case::Exec, Case::Cgroup] {
        let cost = of(case) - baseline;
        let _ = writeln!(
            out,
            "target {}-(a) <= {LANDLOCK_FACTOR} x (L)-(a):  {cost:.0} ns vs {:.0} ns  {}",
            case.tag(),
            LANDLOCK_FACTOR * landlock,
            super::verdict(cost <= LANDLOCK_FACTOR * landlock)
        );
    }
    out
}

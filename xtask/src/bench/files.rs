//! `cargo xtask bench files`: what Baton adds to `open()`, against
//! Landlock; inside a test VM, the only place BPF LSM loads.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{
    AGENT, Daemon, Paired, Params, Timing, WorkDir, build, clock_ticks_per_second, median, pair,
    parse_timing, probe, run_client, timing_of, verdict,
};
use crate::{setup, util, vm, workspace_root};

/// Defaults of the files benchmark: QEMU without KVM runs everything
/// some ten times slower, and the whole run should stay near ten minutes.
/// A run of one case takes about a second and a daemon start half a
/// minute, so each half of a round runs every case [`RUNS_PER_HALF`]
/// times: the rounds' figures then vary less for little extra time.
pub(super) const ROUNDS: u32 = 6;
pub(super) const ITERATIONS: u32 = 20_000;
/// Runs of each case per half of a round, in ABBA order (a multiple of 2).
const RUNS_PER_HALF: usize = 4;
/// How long detached programs may take to go: the kernel frees them after
/// an RCU grace period, which under QEMU without KVM takes a while.
const PROGRAMS_GONE_WITHIN: Duration = Duration::from_secs(30);
/// The tree the file rules name and the measured file lives in, inside the
/// VM: on the guest's own tmpfs at /run, so nothing touches the host, and
/// the folders on the way (`/`, `/run`), whose entries the Landlock
/// ruleset lists, do not change under it (the guest's /tmp shows the
/// host's, where other programs come and go).
const FILES_ROOT: &str = "/run/baton-bench-files";
/// Deny rules for paths elsewhere; with the allow rule for the measured
/// file's folder the agent policy has 1,000.
const FILE_DENY_RULES: usize = 999;
/// Target for (b)/(a).
const FILES_DAEMON_RATIO_TARGET: f64 = 1.05;
/// Target for (c)-(a) against (d)-(a).
const FILES_LANDLOCK_FACTOR: f64 = 1.5;
/// How long bench-open waits before it measures, in every case: under
/// QEMU without KVM the daemon goes on handling the new process (its exec,
/// its admission to the agent) for a while after it starts, on the same
/// two virtual CPUs.
const FILES_DELAY_MS: u64 = 500;
/// Where the kernel's BPF run-time statistics are switched on and off.
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Baton's program on the `file_open` LSM hook, as bpftool names it.
const FILE_OPEN_PROGRAM: &str = "file_open";
/// What a BPF LSM denial and a Landlock denial give `open()`.
const EPERM: &str = "errno=1";
const EACCES: &str = "errno=13";

/// One measured configuration of the files benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileCase {
    /// (a) no Baton running.
    Baseline,
    /// (b) Baton running; the process belongs to no agent.
    Daemon,
    /// (c) the process belongs to an agent with 1,000 path rules.
    Agent,
    /// (d) no Baton; the process restricted itself with the equivalent
    /// Landlock ruleset.
    Landlock,
}

impl FileCase {
    const ALL: [FileCase; 4] = [
        FileCase::Baseline,
        FileCase::Daemon,
        FileCase::Agent,
        FileCase::Landlock,
    ];

    fn tag(self) -> &'static str {
        match self {
            FileCase::Baseline => "(a)",
            FileCase::Daemon => "(b)",
            FileCase::Agent => "(c)",
            FileCase::Landlock => "(d)",
        }
    }

    /// The key of the case in the VM's results file.
    fn key(self) -> &'static str {
        match self {
            FileCase::Baseline => "a",
            FileCase::Daemon => "b",
            FileCase::Agent => "c",
            FileCase::Landlock => "d",
        }
    }

    fn label(self) -> &'static str {
        match self {
            FileCase::Baseline => "no Baton",
            FileCase::Daemon => "Baton running, not in an agent",
            FileCase::Agent => "in an agent, 1,000 path rules (BPF LSM)",
            FileCase::Landlock => "no Baton, Landlock, equivalent ruleset",
        }
    }

    fn needs_daemon(self) -> bool {
        matches!(self, FileCase::Daemon | FileCase::Agent)
    }
}

/// The files benchmark's folders inside the VM:
/// `ROOT/aNNN/{secret,pub}` for every deny rule (`secret` denied), and
/// `ROOT/open/target`, the measured file, under the one allow rule.
struct FileTree {
    root: PathBuf,
}

impl FileTree {
    fn new() -> Self {
        Self {
            root: PathBuf::from(FILES_ROOT),
        }
    }

    fn denied(&self) -> Vec<PathBuf> {
        (0..FILE_DENY_RULES)
            .map(|i| self.root.join(format!("a{i:03}/secret")))
            .collect()
    }

    fn allowed(&self) -> PathBuf {
        self.root.join("open")
    }

    /// The measured file.
    fn target(&self) -> PathBuf {
        self.allowed().join("target")
    }

    /// A file under the first deny rule, for checking that it holds.
    fn secret(&self) -> PathBuf {
        self.root.join("a000/secret/file")
    }

    fn create(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.root);
        for denied in self.denied() {
            util::create_dir_all(&denied)?;
            util::create_dir_all(&denied.with_file_name("pub"))?;
        }
        util::create_dir_all(&self.allowed())?;
        for file in [self.target(), self.secret()] {
            std::fs::write(&file, "bench\n")
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Ok(())
    }

    fn policy_yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
             spec:\n  selector:\n    agent: {AGENT}\n  files:\n    default: allow\n    allow:\n\
             \x20     - {}\n    deny:\n",
            self.allowed().display()
        );
        for denied in self.denied() {
            let _ = writeln!(yaml, "      - {}", denied.display());
        }
        yaml
    }
}

/// The Landlock ruleset equivalent to "allow everything except `denied`,
/// but allow `allowed` even beneath a deny". Landlock can only grant, so,
/// as Baton's own Landlock translation does, it grants every entry next
/// to each folder on the way down to a denied path (`list` gives a
/// folder's entries), and every allowed path beneath a deny.
fn landlock_grants(
    denied: &[PathBuf],
    allowed: &[PathBuf],
    list: impl Fn(&Path) -> Result<Vec<PathBuf>>,
) -> Result<Vec<PathBuf>> {
    let mut blocked: BTreeSet<&Path> = BTreeSet::new();
    for path in denied {
        blocked.extend(path.ancestors());
    }
    let mut grants = BTreeSet::new();
    for folder in blocked.iter().filter(|p| !denied.iter().any(|d| d == *p)) {
        for entry in list(folder)? {
            if !blocked.contains(entry.as_path()) {
                grants.insert(entry);
            }
        }
    }
    for path in allowed {
        if denied.iter().any(|d| path.starts_with(d)) {
            grants.insert(path.clone());
        }
    }
    Ok(grants.into_iter().collect())
}

/// The entries of `folder`.
fn list_dir(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot list {}", folder.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", folder.display()))?;
    entries.sort();
    Ok(entries)
}

/// `cargo xtask bench files`: boots the VM and runs [`run_in_vm`] in it.
pub(super) fn run(params: &Params, kernel: &str) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the files benchmark boots a VM and loads eBPF programs in it: run it as root"
    );
    let started = Instant::now();
    let kit = setup::setup(&setup::SetupOptions { vm: true })?;
    let image = kit
        .kernels
        .iter()
        .find(|k| k.name == kernel)
        .with_context(|| format!("no {kernel} kernel in the kit"))?;
    build(params)?;
    let root = workspace_root();

    // Checked here too, where a mistake costs no VM boot.
    let check = WorkDir::create()?;
    let policy = check.path().join("bench.yaml");
    std::fs::write(&policy, FileTree::new().policy_yaml())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    util::output(
        Command::new(params.baton())
            .arg("policy")
            .arg("check")
            .arg(&policy),
    )
    .context("the generated benchmark policy does not compile")?;
    drop(check);

    let results = root.join("target/bench-files").join(kernel);
    let _ = std::fs::remove_dir_all(&results);
    util::create_dir_all(&results)?;
    // Not the running binary: the build above may have replaced it.
    let xtask = root.join("target/debug/xtask");
    ensure!(xtask.exists(), "{} was not built", xtask.display());
    let command = format!(
        "mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security\n\
         exec {} bench files --in-vm {} --rounds {} --iterations {}{}\n",
        util::shell_quote(&xtask),
        util::shell_quote(&results),
        params.rounds,
        params.iterations,
        if params.release {
            " --profile release"
        } else {
            " --profile debug"
        }
    );
    println!(
        "bench: files: {} rounds x {} cases x {} open()+close() inside the {kernel} VM",
        params.rounds,
        FileCase::ALL.len(),
        params.iterations
    );
    let outcome = vm::run_in_vm(&kit, image, &command, std::slice::from_ref(&results))?;
    ensure!(
        outcome.exit_code == 0,
        "the files benchmark failed inside the {kernel} VM (exit {}); console log: {}",
        outcome.exit_code,
        outcome.log.display()
    );
    let path = results.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("the VM wrote no {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    print!("{}", files_report(&value, kernel)?);
    println!(
        "bench: results in {}; done in {:.0} s (build and VM boot included)",
        results.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What Baton's `file_open` program cost, from the kernel's own
/// statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProgramStats {
    id: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Every loaded LSM program named [`FILE_OPEN_PROGRAM`], with its
/// statistics so far.
fn file_open_programs() -> Result<Vec<ProgramStats>> {
    let listing = util::output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let programs: Value =
        serde_json::from_str(&listing).context("bpftool prog show printed no JSON")?;
    Ok(programs
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| p["type"] == "lsm" && p["name"] == FILE_OPEN_PROGRAM)
        .map(|p| ProgramStats {
            id: p["id"].as_u64().unwrap_or_default(),
            // Absent until the statistics have counted something.
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or_default(),
            run_cnt: p["run_cnt"].as_u64().unwrap_or_default(),
        })
        .collect())
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write(BPF_STATS_SYSCTL, if on { "1" } else { "0" })
        .with_context(|| format!("cannot write {BPF_STATS_SYSCTL}"))
}

/// Switches the BPF statistics off on drop, whatever happened meanwhile.
struct BpfStats;

impl BpfStats {
    fn enable() -> Result<Self> {
        set_bpf_stats(true)?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(error) = set_bpf_stats(false) {
            eprintln!("bench: {error:#}");
        }
    }
}

/// Everything the files cases share, inside the VM.
struct FilesBench {
    client: PathBuf,
    baton: PathBuf,
    tree: FileTree,
    /// The Landlock grants of case (d), one path per line.
    grants: PathBuf,
    work: WorkDir,
    params: Params,
}

impl FilesBench {
    fn timeout(&self) -> Duration {
        // Far above the tens of microseconds an iteration takes under
        // QEMU without KVM, far below forever.
        Duration::from_secs(60) + Duration::from_millis(1) * self.params.iterations as u32
    }

    /// `bench-open ARGS`, in no agent.
    fn client(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.args(args);
        cmd
    }

    fn measure_args(&self) -> Vec<String> {
        vec![
            "--delay-ms".to_string(),
            FILES_DELAY_MS.to_string(),
            self.tree.target().display().to_string(),
            self.params.iterations.to_string(),
        ]
    }

    fn landlock_args(&self, rest: &[String]) -> Vec<String> {
        let mut args = vec!["--landlock".to_string(), self.grants.display().to_string()];
        args.extend_from_slice(rest);
        args
    }

    fn probe_args(&self, path: &Path) -> Vec<String> {
        vec!["--probe".to_string(), path.display().to_string()]
    }

    /// Measures `case` once; the daemon is running exactly when the case
    /// needs it. Returns the timing and bench-open's whole report.
    fn measure(
        &self,
        case: FileCase,
        round: usize,
        daemon: Option<&Daemon>,
    ) -> Result<(Timing, Value)> {
        let secret = self.tree.secret();
        let mut cmd = match case {
            FileCase::Baseline => self.client(&self.measure_args()),
            FileCase::Daemon => {
                if round == 0 {
                    let outcome = probe(&mut self.client(&self.probe_args(&secret)))?;
                    ensure!(
                        outcome == "ok",
                        "(b) a process in no agent opening {} got {outcome:?}, not ok",
                        secret.display()
                    );
                    println!(
                        "bench: sanity: (b) a process in no agent still opens {}",
                        secret.display()
                    );
                }
                self.client(&self.measure_args())
            }
            FileCase::Agent => {
                let daemon = daemon.context("case (c) needs the daemon")?;
                // Checked every round: each round starts a new daemon.
                let outcome = daemon.exec(&self.baton, &self.client, &self.probe_args(&secret))?;
                ensure!(
                    outcome == EPERM,
                    "(c) does not enforce: opening {} from inside the agent gave {outcome:?}, \
                     not EPERM",
                    secret.display()
                );
                if round == 0 {
                    println!(
                        "bench: sanity: (c) the agent gets EPERM opening {}",
                        secret.display()
                    );
                }
                daemon.exec_command(&self.baton, &self.client, &self.measure_args())
            }
            FileCase::Landlock => {
                if round == 0 {
                    let outcome =
                        probe(&mut self.client(&self.landlock_args(&self.probe_args(&secret))))?;
                    ensure!(
                        outcome == EACCES,
                        "(d) does not enforce: opening {} under the Landlock ruleset gave \
                         {outcome:?}, not EACCES",
                        secret.display()
                    );
                    println!(
                        "bench: sanity: (d) the Landlock ruleset gives EACCES opening {}",
                        secret.display()
                    );
                }
                self.client(&self.landlock_args(&self.measure_args()))
            }
        };
        parse_timing("bench-open", &run_client(&mut cmd, self.timeout())?)
    }

    /// Runs `case`, (b) or (c), once more with the kernel's BPF statistics
    /// on, and returns what Baton's `file_open` program cost meanwhile and
    /// that run's timing. The statistics slow every program run a little,
    /// so these runs are kept out of the cases' own figures.
    fn measure_program(&self, case: FileCase, daemon: &Daemon) -> Result<(ProgramStats, Timing)> {
        let mut cmd = match case {
            FileCase::Daemon => self.client(&self.measure_args()),
            FileCase::Agent => daemon.exec_command(&self.baton, &self.client, &self.measure_args()),
            _ => bail!("case {} runs no Baton program", case.tag()),
        };
        let before = file_open_programs()?;
        let stats = BpfStats::enable()?;
        let output = run_client(&mut cmd, self.timeout());
        drop(stats);
        let (timing, _) = parse_timing("bench-open", &output?)?;
        let after = file_open_programs()?;
        let [program] = after.as_slice() else {
            bail!(
                "expected one LSM program named {FILE_OPEN_PROGRAM}, found {}",
                after.len()
            );
        };
        let earlier = before
            .iter()
            .find(|p| p.id == program.id)
            .copied()
            .unwrap_or_default();
        Ok((
            ProgramStats {
                id: program.id,
                run_time_ns: program.run_time_ns - earlier.run_time_ns,
                run_cnt: program.run_cnt - earlier.run_cnt,
            },
            timing,
        ))
    }
}

/// The files cases, run inside the VM by `cargo xtask bench files`; the
/// results go to `results/results.json`.
pub(super) fn run_in_vm(results: &Path, params: &Params) -> Result<()> {
    let root = workspace_root();
    let release = util::output(Command::new("uname").arg("-r"))?
        .trim()
        .to_string();
    let tree = FileTree::new();
    tree.create()?;
    let work = WorkDir::create()?;
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    std::fs::write(&policy, tree.policy_yaml())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    let grants = landlock_grants(&tree.denied(), &[tree.allowed()], list_dir)?;
    let grants_file = work.path().join("landlock-grants.txt");
    let lines: Vec<String> = grants.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&grants_file, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", grants_file.display()))?;
    let bench = FilesBench {
        client: root.join("target/debug/bench-open"),
        baton: params.baton(),
        tree,
        grants: grants_file,
        work,
        params: *params,
    };
    ensure!(
        file_open_programs()?.is_empty(),
        "an LSM program named {FILE_OPEN_PROGRAM} is loaded before the benchmark started"
    );
    println!(
        "bench: files in {release}: {} rounds x {} cases x {} open()+close() of {}; \
         {} deny rules + 1 allow rule; Landlock: {} grants",
        params.rounds,
        FileCase::ALL.len(),
        params.iterations,
        bench.tree.target().display(),
        FILE_DENY_RULES,
        grants.len()
    );

    let mut rounds = vec![serde_json::Map::new(); params.rounds];
    let mut programs = serde_json::Map::new();
    let mut daemon_start_ms: Vec<u64> = Vec::new();
    let mut daemon_idle_ticks: Vec<u64> = Vec::new();
    let mut landlock = Value::Null;
    // Every round has a half without the daemon and a half with it; as in
    // the egress benchmark, which half goes first alternates, so a round's
    // daemon half follows the previous round's and one daemon start (tens
    // of seconds here) serves both.
    let phases: Vec<(usize, bool)> = (0..params.rounds)
        .flat_map(|round| {
            let mut halves = [false, true];
            if round % 2 == 1 {
                halves.reverse();
            }
            halves.map(|with_daemon| (round, with_daemon))
        })
        .collect();
    let mut daemon: Option<Daemon> = None;
    for (at, &(round, with_daemon)) in phases.iter().enumerate() {
        let measured = &mut rounds[round];
        let mut cases: Vec<FileCase> = FileCase::ALL
            .iter()
            .copied()
            .filter(|c| c.needs_daemon() == with_daemon)
            .collect();
        if round % 2 == 1 {
            cases.reverse();
        }
        if with_daemon && daemon.is_none() {
            let started = Instant::now();
            let started_daemon = Daemon::start(&bench.baton, bench.work.path(), "")?;
            let ready = started.elapsed();
            let (settled, ticks) = started_daemon.settle(Duration::from_secs(30))?;
            daemon_start_ms.push(ready.as_millis() as u64);
            daemon_idle_ticks.push(ticks);
            println!(
                "bench: round {}: baton run ready after {:.1} s; {:.1} s later it used \
                 {ticks} clock ticks of CPU in one second",
                round + 1,
                ready.as_secs_f64(),
                settled.as_secs_f64()
            );
            daemon = Some(started_daemon);
        }
        let expected = usize::from(with_daemon);
        let deadline = Instant::now() + PROGRAMS_GONE_WITHIN;
        let mut loaded = file_open_programs()?.len();
        while loaded != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            loaded = file_open_programs()?.len();
        }
        ensure!(
            loaded == expected,
            "round {}: {loaded} LSM programs named {FILE_OPEN_PROGRAM} loaded where {expected} \
             expected",
            round + 1,
        );
        let daemon_here = daemon.as_ref().filter(|_| with_daemon);
        // Each case several times, every other time in reverse order
        // (ABBA ABBA), so that slow drifts hit every case alike and one
        // daemon start serves more measurements.
        let order: Vec<FileCase> = (0..RUNS_PER_HALF)
            .flat_map(|run| {
                let mut pass = cases.clone();
                if run % 2 == 1 {
                    pass.reverse();
                }
                pass
            })
            .collect();
        for (i, &case) in order.iter().enumerate() {
            let ticks = daemon_here.map(Daemon::cpu_ticks).transpose()?;
            let (timing, mut report) = bench.measure(case, round, daemon_here)?;
            let busy = match (daemon_here, ticks) {
                (Some(daemon), Some(before)) => {
                    let ticks = daemon.cpu_ticks()? - before;
                    report["daemon_cpu_ticks"] = ticks.into();
                    format!("  (baton run used {ticks} clock ticks of CPU meanwhile)")
                }
                _ => String::new(),
            };
            println!(
                "bench: round {:>width$}/{} {} {:<44} median {:>7} ns  p99 {:>8} ns{busy}",
                round + 1,
                params.rounds,
                case.tag(),
                case.label(),
                timing.median,
                timing.p99,
                width = params.rounds.to_string().len(),
            );
            if case == FileCase::Landlock {
                landlock = json!({
                    "rules": report["landlock_rules"],
                    "skipped": report["landlock_skipped"],
                    "status": report["landlock_status"],
                });
            }
            if let Value::Array(reports) = measured
                .entry(case.key())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                reports.push(report);
            }
            if let Some(daemon) = daemon_here.filter(|_| i < cases.len()) {
                let (stats, timing) = bench.measure_program(case, daemon)?;
                println!(
                    "bench: round {:>width$}/{} {} again, kernel.bpf_stats_enabled=1: \
                     {FILE_OPEN_PROGRAM} ran {} times, {:.0} ns per run; median {} ns",
                    round + 1,
                    params.rounds,
                    case.tag(),
                    stats.run_cnt,
                    stats.run_time_ns as f64 / stats.run_cnt.max(1) as f64,
                    timing.median,
                    width = params.rounds.to_string().len(),
                );
                let entry = programs
                    .entry(case.key())
                    .or_insert_with(|| json!({"run_time_ns": 0, "run_cnt": 0, "runs": []}));
                let add = |v: &Value, n: u64| v.as_u64().unwrap_or_default() + n;
                entry["run_time_ns"] = add(&entry["run_time_ns"], stats.run_time_ns).into();
                entry["run_cnt"] = add(&entry["run_cnt"], stats.run_cnt).into();
                if let Some(runs) = entry["runs"].as_array_mut() {
                    runs.push(json!({
                        "median_ns": timing.median,
                        "p99_ns": timing.p99,
                        "run_time_ns": stats.run_time_ns,
                        "run_cnt": stats.run_cnt,
                    }));
                }
            }
        }
        // Stopped unless the next half needs it too.
        let next_needs_daemon = phases.get(at + 1).is_some_and(|&(_, next)| next);
        if with_daemon
            && !next_needs_daemon
            && let Some(daemon) = daemon.take()
        {
            daemon.stop()?;
        }
    }
    let rounds: Vec<Value> = rounds.into_iter().map(Value::Object).collect();

    let out = json!({
        "release": release,
        "iterations": params.iterations,
        "file": bench.tree.target().display().to_string(),
        "rules": {"deny": FILE_DENY_RULES, "allow": 1},
        "landlock": landlock,
        "rounds": rounds,
        "baton": bench.baton.display().to_string(),
        "bpf_stats": programs,
        "daemon_start_ms": daemon_start_ms,
        "daemon_idle_ticks_per_s": daemon_idle_ticks,
        "clock_ticks_per_s": clock_ticks_per_second(),
    });
    let path = results.join("results.json");
    util::write_atomic(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// The median of the timings of a case's runs in one round: one run in
/// four that a burst of other work on the machine slowed does not move it.
fn repeated_timing(runs: &Value) -> Result<Timing> {
    let timings: Vec<Timing> = runs
        .as_array()
        .context("a case's runs are not a list")?
        .iter()
        .map(timing_of)
        .collect::<Result<_>>()?;
    ensure!(!timings.is_empty(), "a case has no runs");
    let middle = |f: fn(&Timing) -> u64| median(timings.iter().map(|t| f(t) as f64)).round() as u64;
    Ok(Timing {
        median: middle(|t| t.median),
        p99: middle(|t| t.p99),
    })
}

/// The rounds of the VM's results, as (case, timing) pairs.
fn file_rounds(value: &Value) -> Result<Vec<Vec<(FileCase, Timing)>>> {
    value["rounds"]
        .as_array()
        .context("no rounds in the results")?
        .iter()
        .map(|round| {
            FileCase::ALL
                .iter()
                .map(|&case| Ok((case, repeated_timing(&round[case.key()])?)))
                .collect()
        })
        .collect()
}

fn files_report(value: &Value, kernel: &str) -> Result<String> {
    let rounds = file_rounds(value)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfiles: open()+close() of {} in the {kernel} VM ({}, QEMU without KVM); {} rounds of {} \
         iterations per case\n\
         median, p99: median over the rounds of each round's figure, ns\n\
         vs (a): median over the rounds of (case / that round's (a)); +ns: the same for \
         (case - (a))\n",
        value["file"].as_str().unwrap_or("?"),
        value["release"].as_str().unwrap_or("?"),
        rounds.len(),
        value["iterations"]
    );
    let _ = writeln!(
        out,
        "{:<4} {:<52} {:>10} {:>10} {:>8} {:>8}",
        "case", "", "median ns", "p99 ns", "vs (a)", "+ns"
    );
    let summaries: Vec<(FileCase, Paired)> = FileCase::ALL
        .iter()
        .filter_map(|&c| Some((c, pair(&rounds, c, FileCase::Baseline)?)))
        .collect();
    let landlock_rules = value["landlock"]["rules"].as_u64().unwrap_or_default();
    let landlock_status = value["landlock"]["status"].as_str().unwrap_or("?");
    for (case, s) in &summaries {
        let label = match case {
            FileCase::Landlock => format!("{} ({landlock_rules} rules)", case.label()),
            _ => case.label().to_string(),
        };
        let _ = writeln!(
            out,
            "{:<4} {:<52} {:>10.0} {:>10.0} {:>8.3} {:>+8.0}",
            case.tag(),
            label,
            s.median,
            s.p99,
            s.ratio,
            s.cost
        );
    }
    let _ = writeln!(
        out,
        "(c): {} deny rules + 1 allow rule, default allow; (d): the same policy as Landlock \
         grants (Landlock ABI 3 rights but execute), enforcement {landlock_status}",
        value["rules"]["deny"]
    );
    let _ = writeln!(
        out,
        "\nBaton's BPF LSM program {FILE_OPEN_PROGRAM}, from kernel.bpf_stats_enabled=1 during \
         one extra run of (b) and of (c) per round\n\
         (run_time_ns / run_cnt of each such run; every open in the VM counts):"
    );
    for case in [FileCase::Daemon, FileCase::Agent] {
        let stats = &value["bpf_stats"][case.key()];
        let runs = stats["runs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let per_run: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some((r["run_time_ns"].as_u64()?, r["run_cnt"].as_u64()?)))
            .filter(|&(_, count)| count > 0)
            .map(|(time, count)| time as f64 / count as f64)
            .collect();
        let medians: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["median_ns"].as_u64())
            .map(|m| m as f64)
            .collect();
        let run_time = stats["run_time_ns"].as_u64().unwrap_or_default();
        let count = stats["run_cnt"].as_u64().unwrap_or_default();
        if per_run.is_empty() || medians.is_empty() || count == 0 {
            let _ = writeln!(out, "  {} not measured", case.tag());
            continue;
        }
        let each: Vec<String> = per_run.iter().map(|n| format!("{n:.0}")).collect();
        let _ = writeln!(
            out,
            "  {} {:<44} {:>6.0} ns per run (median of the rounds' {}; all runs together {:.0}, \
             {count} runs); open()+close() median {:.0} ns with the statistics on",
            case.tag(),
            case.label(),
            median(per_run.iter().copied()),
            each.join(", "),
            run_time as f64 / count as f64,
            median(medians)
        );
    }
    let _ = writeln!(out, "baton: {}", value["baton"].as_str().unwrap_or("?"));
    if let Some(starts) = value["daemon_start_ms"]
        .as_array()
        .filter(|s| !s.is_empty())
    {
        let _ = writeln!(
            out,
            "baton run ready in the VM after a median of {:.1} s",
            median(starts.iter().filter_map(Value::as_u64).map(|m| m as f64)) / 1e3
        );
    }
    if let Some(idle) = value["daemon_idle_ticks_per_s"]
        .as_array()
        .filter(|s| !s.is_empty())
    {
        let hz = value["clock_ticks_per_s"].as_u64().unwrap_or(100).max(1) as f64;
        let _ = writeln!(
            out,
            "baton run's CPU use once started, before (b) and (c): a median of {:.0}% of one CPU",
            100.0 * median(idle.iter().filter_map(Value::as_u64).map(|t| t as f64)) / hz
        );
    }
    let find = |case| summaries.iter().find(|(c, _)| *c == case).map(|(_, s)| s);
    if let (Some(b), Some(c), Some(d)) = (
        find(FileCase::Daemon),
        find(FileCase::Agent),
        find(FileCase::Landlock),
    ) {
        let _ = writeln!(
            out,
            "\ntarget (b)/(a) <= {FILES_DAEMON_RATIO_TARGET:.2}:            {:.3}  {}",
            b.ratio,
            verdict(b.ratio <= FILES_DAEMON_RATIO_TARGET)
        );
        let allowed = FILES_LANDLOCK_FACTOR * d.cost;
        let _ = writeln!(
            out,
            "target (c)-(a) <= {FILES_LANDLOCK_FACTOR} x ((d)-(a)): {:.0} ns vs {FILES_LANDLOCK_FACTOR} x \
             {:.0} = {:.0} ns  {}",
            c.cost,
            d.cost,
            allowed,
            verdict(c.cost <= allowed)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_policy_has_one_thousand_rules_and_allows_the_target() {
        let tree = FileTree::new();
        let yaml = tree.policy_yaml();
        assert_eq!(
            yaml.lines().filter(|l| l.starts_with("      - ")).count(),
            1_000
        );
        assert!(yaml.contains("    allow:\n      - /run/baton-bench-files/open\n    deny:\n"));
        assert!(yaml.contains("      - /run/baton-bench-files/a998/secret\n"));
        assert!(tree.target().starts_with(tree.allowed()));
        assert!(tree.denied().iter().all(|d| !tree.target().starts_with(d)));
        assert!(tree.secret().starts_with(&tree.denied()[0]));
    }

    #[test]
    fn landlock_grants_everything_but_the_denied_paths() {
        let p = PathBuf::from;
        let list = |folder: &Path| -> Result<Vec<PathBuf>> {
            Ok(match folder.to_str().unwrap() {
                "/" => vec![p("/etc"), p("/tmp"), p("/usr")],
                "/tmp" => vec![p("/tmp/b"), p("/tmp/x")],
                "/tmp/b" => vec![p("/tmp/b/a0"), p("/tmp/b/a1"), p("/tmp/b/open")],
                "/tmp/b/a0" => vec![p("/tmp/b/a0/pub"), p("/tmp/b/a0/secret")],
                "/tmp/b/a1" => vec![p("/tmp/b/a1/pub"), p("/tmp/b/a1/secret")],
                other => panic!("{other} is not on the way to a denied path"),
            })
        };
        let denied = [p("/tmp/b/a0/secret"), p("/tmp/b/a1/secret")];
        let allowed = [p("/tmp/b/open"), p("/tmp/b/a1/secret/keep")];
        let grants = landlock_grants(&denied, &allowed, list).unwrap();
        assert_eq!(
            grants,
            [
                "/etc",
                "/tmp/b/a0/pub",
                "/tmp/b/a1/pub",
                "/tmp/b/a1/secret/keep",
                "/tmp/b/open",
                "/tmp/x",
                "/usr"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn file_rounds_read_the_vm_results() {
        let case = |m: u64| json!({"median_ns": m, "p99_ns": 2 * m, "iterations": 10});
        let value = json!({
            "release": "6.12.0", "iterations": 10, "file": "/f",
            "landlock": {"rules": 7, "status": "FullyEnforced"},
            "rounds": [{
                "a": [case(1000), case(1000)],
                "b": [case(1010)],
                "c": [case(1300)],
                "d": [case(1199), case(1201)],
            }],
            "bpf_stats": {"c": {"run_time_ns": 5000, "run_cnt": 10, "runs": [
                {"median_ns": 1400, "run_time_ns": 3000, "run_cnt": 5},
                {"median_ns": 1400, "run_time_ns": 2000, "run_cnt": 5},
            ]}},
            "daemon_start_ms": [2500],
        });
        let rounds = file_rounds(&value).unwrap();
        assert_eq!(
            rounds[0][2],
            (
                FileCase::Agent,
                Timing {
                    median: 1300,
                    p99: 2600
                }
            )
        );
        assert_eq!(
            rounds[0][3],
            (
                FileCase::Landlock,
                Timing {
                    median: 1200,
                    p99: 2400
                }
            )
        );
        let report = files_report(&value, "6.12").unwrap();
        assert!(
            report
                .contains("500 ns per run (median of the rounds' 600, 400; all runs together 500"),
            "{report}"
        );
        assert!(report.contains("(b) not measured"), "{report}");
        assert!(report.contains("1.010  PASS"), "{report}");
        // 300 <= 1.5 x 200
        assert!(
            report.contains("300 ns vs 1.5 x 200 = 300 ns  PASS"),
            "{report}"
        );
    }
}

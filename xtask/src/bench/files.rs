//! `cargo xtask bench files`: what Baton adds to `open()`, against
//! Landlock; inside a test VM, the only place BPF LSM loads.
//!
//! Cases: (a) no Baton; (b) the daemon running, the process in no agent;
//! (c) in an agent with 1,000 path rules; (d) no Baton, the equivalent
//! Landlock ruleset; (e) in a second agent of the same daemon, 10,000 path
//! rules, and (eL) its Landlock equivalent; (f) files 2, 8 and 24
//! components below the allowed folder of (c), opened with no Baton
//! (fNa), in the agent of (c) (fNc) and under the ruleset of (d) (fNd).
//! Every cost is against a baseline measured in the same round: (a), or
//! for (f) the same depth without Baton. To keep a run near ten minutes
//! per kernel, (e) and (f) run half as many times per round as (a) to (d),
//! with half the iterations ([`RUNS_PER_HALF_EXTRA`],
//! [`ITERATIONS_DIVISOR_EXTRA`]).

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
/// Runs of each of the cases (a) to (d) per half of a round, in ABBA order
/// (a multiple of 2).
const RUNS_PER_HALF: usize = 4;
/// Runs of each of the cases (e) and (f) per half of a round: one each
/// way (AB BA). There are eleven of them against four of (a) to (d), and
/// a run takes about a second whatever its iterations (the start, the
/// delay, the warm-up); with four runs each they would double the run
/// time, with two they add about a third.
const RUNS_PER_HALF_EXTRA: usize = 2;
/// The cases (e) and (f) measure `iterations / ITERATIONS_DIVISOR_EXTRA`
/// opens per run: the median of 10,000 opens moves less than the run to
/// run noise, which the rounds take care of.
const ITERATIONS_DIVISOR_EXTRA: usize = 2;
/// How long detached programs may take to go: the kernel frees them after
/// an RCU grace period, which under QEMU without KVM takes a while.
const PROGRAMS_GONE_WITHIN: Duration = Duration::from_secs(30);
/// The tree the file rules name and the measured file lives in, inside the
/// VM: on the guest's own tmpfs at /run, so nothing touches the host, and
/// the folders on the way (`/`, `/run`), whose entries the Landlock
/// ruleset lists, do not change under it (the guest's /tmp shows the
/// host's, where other programs come and go).
const FILES_ROOT: &str = "/run/baton-bench-files";
/// The tree of case (e), next to [`FILES_ROOT`] rather than inside it: each
/// Landlock ruleset then grants the other tree as one path, not one path
/// per entry of the other's folder.
const FILES_ROOT_LARGE: &str = "/run/baton-bench-files-10k";
/// Deny rules for paths elsewhere; with the allow rule for the measured
/// file's folder the agent policy has 1,000.
const FILE_DENY_RULES: usize = 999;
/// The same for case (e): 10,000 rules.
const FILE_DENY_RULES_LARGE: usize = 9_999;
/// The agent of case (e), next to [`AGENT`] in the same daemon.
const AGENT_LARGE: &str = "bench-10k";
/// Depths of the measured files of case (f), in path components below the
/// allowed folder (the file of (c) and (d) is at depth 1).
const DEPTHS: [usize; 3] = [2, 8, 24];
/// Target for (b)/(a).
const FILES_DAEMON_RATIO_TARGET: f64 = 1.02;
/// Target for (c)-(a) against (d)-(a), and for (f) at each depth.
const FILES_LANDLOCK_FACTOR: f64 = 1.0;
/// Target for (e)-(a) against (eL)-(a), 10,000 rules.
const FILES_LANDLOCK_FACTOR_LARGE: f64 = 1.2;
/// How long bench-open waits before it measures, in every case: under
/// QEMU without KVM the daemon goes on handling the new process (its exec,
/// its admission to the agent) for a while after it starts, on the same
/// two virtual CPUs.
const FILES_DELAY_MS: u64 = 500;
/// Baton's program on the `file_open` LSM hook, as bpftool names it.
const FILE_OPEN_PROGRAM: &str = "file_open";
/// What a BPF LSM denial and a Landlock denial give `open()`.
const EPERM: &str = "errno=1";
const EACCES: &str = "errno=13";

/// What runs in a case of (f), a file deep below the allowed folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeepSetup {
    /// As (a): no Baton.
    Baseline,
    /// As (c): in the agent with 1,000 path rules.
    Agent,
    /// As (d): no Baton, (d)'s Landlock ruleset.
    Landlock,
}

impl DeepSetup {
    const ALL: [DeepSetup; 3] = [DeepSetup::Baseline, DeepSetup::Agent, DeepSetup::Landlock];

    /// The letter of the case it mirrors.
    fn letter(self) -> char {
        match self {
            DeepSetup::Baseline => 'a',
            DeepSetup::Agent => 'c',
            DeepSetup::Landlock => 'd',
        }
    }
}

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
    /// (e) the process belongs to an agent with 10,000 path rules, in the
    /// same daemon as (c).
    AgentLarge,
    /// (eL) no Baton; the Landlock ruleset equivalent to (e)'s.
    LandlockLarge,
    /// (f) a file `depth` components below the allowed folder of (c).
    Deep { setup: DeepSetup, depth: usize },
}

impl FileCase {
    /// Every case, in the order of the report.
    fn all() -> Vec<FileCase> {
        let mut all = vec![
            FileCase::Baseline,
            FileCase::Daemon,
            FileCase::Agent,
            FileCase::Landlock,
            FileCase::AgentLarge,
            FileCase::LandlockLarge,
        ];
        for depth in DEPTHS {
            all.extend(
                DeepSetup::ALL
                    .iter()
                    .map(|&setup| FileCase::Deep { setup, depth }),
            );
        }
        all
    }

    fn tag(self) -> String {
        format!("({})", self.key())
    }

    /// The key of the case in the VM's results file.
    fn key(self) -> String {
        match self {
            FileCase::Baseline => "a".to_string(),
            FileCase::Daemon => "b".to_string(),
            FileCase::Agent => "c".to_string(),
            FileCase::Landlock => "d".to_string(),
            FileCase::AgentLarge => "e".to_string(),
            FileCase::LandlockLarge => "eL".to_string(),
            FileCase::Deep { setup, depth } => format!("f{depth}{}", setup.letter()),
        }
    }

    fn label(self) -> String {
        match self {
            FileCase::Baseline => "no Baton".to_string(),
            FileCase::Daemon => "Baton running, not in an agent".to_string(),
            FileCase::Agent => "in an agent, 1,000 path rules (BPF LSM)".to_string(),
            FileCase::Landlock => "no Baton, Landlock, equivalent ruleset".to_string(),
            FileCase::AgentLarge => "in an agent, 10,000 path rules (BPF LSM)".to_string(),
            FileCase::LandlockLarge => "no Baton, Landlock, equivalent of (e)".to_string(),
            FileCase::Deep { setup, depth } => format!(
                "depth {depth}, {}",
                match setup {
                    DeepSetup::Baseline => "no Baton",
                    DeepSetup::Agent => "in the agent of (c)",
                    DeepSetup::Landlock => "Landlock, ruleset of (d)",
                }
            ),
        }
    }

    fn needs_daemon(self) -> bool {
        matches!(
            self,
            FileCase::Daemon
                | FileCase::Agent
                | FileCase::AgentLarge
                | FileCase::Deep {
                    setup: DeepSetup::Agent,
                    ..
                }
        )
    }

    /// The case its cost is measured against: (a), or for (f) the file at
    /// the same depth without Baton, whose longer path walk costs the
    /// kernel more by itself.
    fn baseline(self) -> FileCase {
        match self {
            FileCase::Deep { depth, .. } => FileCase::Deep {
                setup: DeepSetup::Baseline,
                depth,
            },
            _ => FileCase::Baseline,
        }
    }

    /// One of the cases (a) to (d), measured more often than the others.
    fn is_core(self) -> bool {
        matches!(
            self,
            FileCase::Baseline | FileCase::Daemon | FileCase::Agent | FileCase::Landlock
        )
    }

    fn runs_per_half(self) -> usize {
        if self.is_core() {
            RUNS_PER_HALF
        } else {
            RUNS_PER_HALF_EXTRA
        }
    }

    fn iterations(self, params: &Params) -> usize {
        if self.is_core() {
            params.iterations
        } else {
            (params.iterations / ITERATIONS_DIVISOR_EXTRA).max(1)
        }
    }
}

/// A tree of the files benchmark inside the VM: `ROOT/aNNN/{secret,pub}`
/// for every deny rule (`secret` denied), and `ROOT/open/target`, the
/// measured file, under the one allow rule; for (f), `ROOT/open/d01/…/target`
/// deeper down.
pub(super) struct FileTree {
    root: PathBuf,
    /// The agent whose policy names the tree.
    agent: &'static str,
    deny_rules: usize,
}

impl FileTree {
    /// A tree of 1,000 rules under `root`, named by `agent`'s policy.
    pub(super) fn at(root: &Path, agent: &'static str) -> Self {
        Self {
            root: root.to_path_buf(),
            agent,
            deny_rules: FILE_DENY_RULES,
        }
    }

    /// How many deny rules its policy has.
    pub(super) fn deny_rules(&self) -> usize {
        self.deny_rules
    }

    /// The tree of (c), (d) and (f): 1,000 rules.
    fn new() -> Self {
        Self {
            root: PathBuf::from(FILES_ROOT),
            agent: AGENT,
            deny_rules: FILE_DENY_RULES,
        }
    }

    /// The tree of (e): 10,000 rules.
    fn large() -> Self {
        Self {
            root: PathBuf::from(FILES_ROOT_LARGE),
            agent: AGENT_LARGE,
            deny_rules: FILE_DENY_RULES_LARGE,
        }
    }

    fn denied(&self) -> Vec<PathBuf> {
        let width = self.deny_rules.to_string().len();
        (0..self.deny_rules)
            .map(|i| self.root.join(format!("a{i:0width$}/secret")))
            .collect()
    }

    fn allowed(&self) -> PathBuf {
        self.root.join("open")
    }

    /// The measured file.
    pub(super) fn target(&self) -> PathBuf {
        self.deep_target(1)
    }

    /// The measured file `depth` components below the allowed folder:
    /// `open/target` at 1, `open/d01/target` at 2, and so on.
    fn deep_target(&self, depth: usize) -> PathBuf {
        let mut path = self.allowed();
        for level in 1..depth {
            path.push(format!("d{level:02}"));
        }
        path.join("target")
    }

    /// A file under the last deny rule, for checking that it holds: the
    /// last, so that a policy loaded only in part shows.
    pub(super) fn secret(&self) -> PathBuf {
        self.denied()
            .last()
            .map_or_else(|| self.root.join("secret"), |d| d.join("file"))
    }

    /// Creates the tree, with measured files at each of `depths` too.
    pub(super) fn create(&self, depths: &[usize]) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.root);
        for denied in self.denied() {
            util::create_dir_all(&denied)?;
            util::create_dir_all(&denied.with_file_name("pub"))?;
        }
        util::create_dir_all(&self.allowed())?;
        let deep = depths.iter().map(|&d| self.deep_target(d));
        for file in [self.target(), self.secret()].into_iter().chain(deep) {
            if let Some(folder) = file.parent() {
                util::create_dir_all(folder)?;
            }
            std::fs::write(&file, "bench\n")
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Ok(())
    }

    pub(super) fn policy_yaml(&self) -> String {
        let agent = self.agent;
        let mut yaml = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {agent}\n\
             spec:\n  selector:\n    agent: {agent}\n  files:\n    default: allow\n    allow:\n\
             \x20     - {}\n    deny:\n",
            self.allowed().display()
        );
        for denied in self.denied() {
            let _ = writeln!(yaml, "      - {}", denied.display());
        }
        yaml
    }

    /// The tree's policy file name.
    fn policy_file(&self) -> String {
        format!("{}.yaml", self.agent)
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
    // Sets, not lists: with 10,000 denied paths a scan of the list per
    // folder would take minutes under QEMU without KVM.
    let denied_set: BTreeSet<&Path> = denied.iter().map(PathBuf::as_path).collect();
    let mut blocked: BTreeSet<&Path> = BTreeSet::new();
    for path in denied {
        blocked.extend(path.ancestors());
    }
    let mut grants = BTreeSet::new();
    for folder in blocked.iter().filter(|p| !denied_set.contains(*p)) {
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

/// Writes the Landlock grants equivalent to `tree`'s policy to `file`, one
/// path per line, for bench-open; returns the file and how many grants.
pub(super) fn write_landlock_grants(tree: &FileTree, file: &Path) -> Result<(PathBuf, usize)> {
    let grants = landlock_grants(&tree.denied(), &[tree.allowed()], list_dir)?;
    let lines: Vec<String> = grants.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(file, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok((file.to_path_buf(), grants.len()))
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
    let mut policies = Vec::new();
    for tree in [FileTree::new(), FileTree::large()] {
        let policy = check.path().join(tree.policy_file());
        std::fs::write(&policy, tree.policy_yaml())
            .with_context(|| format!("cannot write {}", policy.display()))?;
        policies.push(policy);
    }
    util::output(
        Command::new(params.baton())
            .arg("policy")
            .arg("check")
            .args(&policies),
    )
    .context("the generated benchmark policies do not compile")?;
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
    let all = FileCase::all();
    let core = all.iter().filter(|c| c.is_core()).count();
    println!(
        "bench: files: {} rounds x ({core} cases x {RUNS_PER_HALF} runs x {} open()+close() + \
         {} cases x {RUNS_PER_HALF_EXTRA} runs x {}) inside the {kernel} VM",
        params.rounds,
        params.iterations,
        all.len() - core,
        FileCase::AgentLarge.iterations(params),
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
    id: u32,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Every loaded program named [`FILE_OPEN_PROGRAM`], with its statistics
/// so far.
fn file_open_programs() -> Result<Vec<ProgramStats>> {
    Ok(super::programs::snapshot()
        .named(FILE_OPEN_PROGRAM)
        .map(|(id, run_time_ns, run_cnt)| ProgramStats {
            id,
            run_time_ns,
            run_cnt,
        })
        .collect())
}

/// Everything the files cases share, inside the VM.
struct FilesBench {
    client: PathBuf,
    baton: PathBuf,
    /// The tree of (c), (d) and (f).
    tree: FileTree,
    /// The tree of (e) and (eL).
    large: FileTree,
    /// The Landlock grants of case (d), one path per line.
    grants: PathBuf,
    /// The Landlock grants of case (eL).
    grants_large: PathBuf,
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

    /// The file `case` opens.
    fn target(&self, case: FileCase) -> PathBuf {
        match case {
            FileCase::AgentLarge | FileCase::LandlockLarge => self.large.target(),
            FileCase::Deep { depth, .. } => self.tree.deep_target(depth),
            _ => self.tree.target(),
        }
    }

    fn measure_args(&self, case: FileCase) -> Vec<String> {
        vec![
            "--delay-ms".to_string(),
            FILES_DELAY_MS.to_string(),
            self.target(case).display().to_string(),
            case.iterations(&self.params).to_string(),
        ]
    }

    fn landlock_args(&self, grants: &Path, rest: &[String]) -> Vec<String> {
        let mut args = vec!["--landlock".to_string(), grants.display().to_string()];
        args.extend_from_slice(rest);
        args
    }

    fn probe_args(&self, path: &Path) -> Vec<String> {
        vec!["--probe".to_string(), path.display().to_string()]
    }

    /// The command that measures `case`.
    fn command(&self, case: FileCase, daemon: Option<&Daemon>) -> Result<Command> {
        let args = self.measure_args(case);
        let in_agent = |agent: &str| -> Result<Command> {
            let daemon = daemon.with_context(|| format!("case {} needs the daemon", case.tag()))?;
            Ok(daemon.exec_command_in(agent, &self.baton, &self.client, &args))
        };
        Ok(match case {
            FileCase::Baseline
            | FileCase::Daemon
            | FileCase::Deep {
                setup: DeepSetup::Baseline,
                ..
            } => self.client(&args),
            FileCase::Agent
            | FileCase::Deep {
                setup: DeepSetup::Agent,
                ..
            } => in_agent(AGENT)?,
            FileCase::AgentLarge => in_agent(AGENT_LARGE)?,
            FileCase::Landlock
            | FileCase::Deep {
                setup: DeepSetup::Landlock,
                ..
            } => self.client(&self.landlock_args(&self.grants, &args)),
            FileCase::LandlockLarge => self.client(&self.landlock_args(&self.grants_large, &args)),
        })
    }

    /// Checks that `case` enforces what it should: the agents and the
    /// Landlock rulesets deny their tree's secret, a process in no agent
    /// opens it. The agents every round (each round may start a new
    /// daemon), the rest in the first round.
    fn sanity(&self, case: FileCase, round: usize, daemon: Option<&Daemon>) -> Result<()> {
        let (tree, grants, agent) = match case {
            FileCase::Agent | FileCase::Daemon | FileCase::Landlock => {
                (&self.tree, &self.grants, AGENT)
            }
            FileCase::AgentLarge | FileCase::LandlockLarge => {
                (&self.large, &self.grants_large, AGENT_LARGE)
            }
            // The same agent and ruleset as (c) and (d), checked there;
            // a deep file that cannot be opened fails its run.
            FileCase::Baseline | FileCase::Deep { .. } => return Ok(()),
        };
        let secret = tree.secret();
        let probe_args = self.probe_args(&secret);
        let tag = case.tag();
        match case {
            FileCase::Agent | FileCase::AgentLarge => {
                let daemon = daemon.with_context(|| format!("case {tag} needs the daemon"))?;
                let outcome = daemon.exec_in(agent, &self.baton, &self.client, &probe_args)?;
                ensure!(
                    outcome == EPERM,
                    "{tag} does not enforce: opening {} from inside the agent gave {outcome:?}, \
                     not EPERM",
                    secret.display()
                );
                if round == 0 {
                    println!(
                        "bench: sanity: {tag} the agent gets EPERM opening {}",
                        secret.display()
                    );
                }
            }
            FileCase::Daemon if round == 0 => {
                let outcome = probe(&mut self.client(&probe_args))?;
                ensure!(
                    outcome == "ok",
                    "{tag} a process in no agent opening {} got {outcome:?}, not ok",
                    secret.display()
                );
                println!(
                    "bench: sanity: {tag} a process in no agent still opens {}",
                    secret.display()
                );
            }
            FileCase::Landlock | FileCase::LandlockLarge if round == 0 => {
                let outcome = probe(&mut self.client(&self.landlock_args(grants, &probe_args)))?;
                ensure!(
                    outcome == EACCES,
                    "{tag} does not enforce: opening {} under the Landlock ruleset gave \
                     {outcome:?}, not EACCES",
                    secret.display()
                );
                println!(
                    "bench: sanity: {tag} the Landlock ruleset gives EACCES opening {}",
                    secret.display()
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Measures `case` once; the daemon is running exactly when the case
    /// needs it. Returns the timing and bench-open's whole report.
    fn measure(
        &self,
        case: FileCase,
        round: usize,
        daemon: Option<&Daemon>,
    ) -> Result<(Timing, Value)> {
        self.sanity(case, round, daemon)?;
        let mut cmd = self.command(case, daemon)?;
        parse_timing("bench-open", &run_client(&mut cmd, self.timeout())?)
    }

    /// Runs `case`, one that runs with the daemon, once more with the
    /// kernel's BPF statistics on, and returns what Baton's `file_open`
    /// program cost meanwhile and that run's timing. The statistics slow
    /// every program run a little, so these runs are kept out of the
    /// cases' own figures.
    fn measure_program(&self, case: FileCase, daemon: &Daemon) -> Result<(ProgramStats, Timing)> {
        ensure!(
            case.needs_daemon(),
            "case {} runs no Baton program",
            case.tag()
        );
        let mut cmd = self.command(case, Some(daemon))?;
        let before = file_open_programs()?;
        let stats = super::programs::enable()?;
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
    tree.create(&DEPTHS)?;
    let large = FileTree::large();
    large.create(&[])?;
    let work = WorkDir::create()?;
    let policies = work.path().join("policies");
    util::create_dir_all(&policies)?;
    for tree in [&tree, &large] {
        let policy = policies.join(tree.policy_file());
        std::fs::write(&policy, tree.policy_yaml())
            .with_context(|| format!("cannot write {}", policy.display()))?;
    }
    // After both trees exist: each ruleset lists `/run`, where the other
    // tree is one more entry to grant.
    let (grants, grant_count) =
        write_landlock_grants(&tree, &work.path().join("landlock-grants.txt"))?;
    let (grants_large, grant_count_large) =
        write_landlock_grants(&large, &work.path().join("landlock-grants-10k.txt"))?;
    let bench = FilesBench {
        client: root.join("target/debug/bench-open"),
        baton: params.baton(),
        tree,
        large,
        grants,
        grants_large,
        work,
        params: params.clone(),
    };
    ensure!(
        file_open_programs()?.is_empty(),
        "an LSM program named {FILE_OPEN_PROGRAM} is loaded before the benchmark started"
    );
    let all = FileCase::all();
    println!(
        "bench: files in {release}: {} rounds x {} cases; open()+close() of {} ({} deny rules + \
         1 allow rule; Landlock: {} grants), of {} ({} deny rules + 1 allow rule; Landlock: {} \
         grants), and at depths {DEPTHS:?} below {}",
        params.rounds,
        all.len(),
        bench.tree.target().display(),
        bench.tree.deny_rules,
        grant_count,
        bench.large.target().display(),
        bench.large.deny_rules,
        grant_count_large,
        bench.tree.allowed().display(),
    );

    let mut rounds = vec![serde_json::Map::new(); params.rounds];
    let mut programs = serde_json::Map::new();
    let mut daemon_start_ms: Vec<u64> = Vec::new();
    let mut daemon_idle_ticks: Vec<u64> = Vec::new();
    let mut landlock = serde_json::Map::new();
    // Every round has a half without the daemon and a half with it; as in
    // the egress benchmark, which half goes first alternates, so a round's
    // daemon half follows the previous round's and one daemon start (tens
    // of seconds here) serves both.
    let phases: Vec<(usize, bool)> = (0..params.rounds)
        .flat_map(|round| super::halves(round).map(|with_daemon| (round, with_daemon)))
        .collect();
    let mut daemon: Option<Daemon> = None;
    for (at, &(round, with_daemon)) in phases.iter().enumerate() {
        let measured = &mut rounds[round];
        let cases = super::half_cases(round, &all, with_daemon, FileCase::needs_daemon);
        if with_daemon && daemon.is_none() {
            let started = Instant::now();
            let started_daemon = Daemon::start(&bench.baton, bench.work.path(), "")?;
            let ready = started.elapsed();
            let (settled, ticks) = started_daemon.settle(Duration::from_secs(30))?;
            // Past the cap, rules fall back to path matching: the cases
            // would then measure something else than they say.
            let log = std::fs::read_to_string(&started_daemon.stderr).unwrap_or_default();
            ensure!(
                !log.contains("rule objects: limit reached"),
                "the daemon could not hold every rule object, so rules are matched by path: \
                 {}",
                log.lines()
                    .find(|line| line.contains("rule objects"))
                    .unwrap_or_default()
            );
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
        // Each case several times, so that one daemon start serves more
        // measurements.
        let order = run_order(&cases);
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
                "bench: round {:>width$}/{} {:<6} {:<44} median {:>7} ns  p99 {:>8} ns{busy}",
                round + 1,
                params.rounds,
                case.tag(),
                case.label(),
                timing.median,
                timing.p99,
                width = params.rounds.to_string().len(),
            );
            if matches!(case, FileCase::Landlock | FileCase::LandlockLarge) {
                landlock.insert(
                    case.key(),
                    json!({
                        "rules": report["landlock_rules"],
                        "skipped": report["landlock_skipped"],
                        "status": report["landlock_status"],
                    }),
                );
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
        "iterations_extra": FileCase::AgentLarge.iterations(params),
        "file": bench.tree.target().display().to_string(),
        "file_large": bench.large.target().display().to_string(),
        "depths": DEPTHS,
        "rules": {"deny": bench.tree.deny_rules, "allow": 1},
        "rules_large": {"deny": bench.large.deny_rules, "allow": 1},
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

/// The order in which one half of a round runs `cases`: [`RUNS_PER_HALF`]
/// passes, every other one reversed (ABBA ABBA), so that slow drifts hit
/// every case alike; the cases measured fewer times take part in the first
/// passes only, one each way.
fn run_order(cases: &[FileCase]) -> Vec<FileCase> {
    (0..RUNS_PER_HALF)
        .flat_map(|run| {
            let mut pass: Vec<FileCase> = cases
                .iter()
                .copied()
                .filter(|c| run < c.runs_per_half())
                .collect();
            if run % 2 == 1 {
                pass.reverse();
            }
            pass
        })
        .collect()
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

/// The rounds of the VM's results, as (case, timing) pairs; a case a
/// round did not measure (results of an older version) is left out.
fn file_rounds(value: &Value) -> Result<Vec<Vec<(FileCase, Timing)>>> {
    value["rounds"]
        .as_array()
        .context("no rounds in the results")?
        .iter()
        .map(|round| {
            FileCase::all()
                .into_iter()
                .filter_map(|case| round.get(case.key()).map(|runs| (case, runs)))
                .map(|(case, runs)| Ok((case, repeated_timing(runs)?)))
                .collect()
        })
        .collect()
}

/// A target of the form "Baton's cost <= `factor` x Landlock's", each
/// cost against the same baseline, as one report line.
fn landlock_target(
    baton: (FileCase, &Paired),
    landlock: (FileCase, &Paired),
    factor: f64,
) -> String {
    let base = baton.0.baseline().tag();
    let allowed = factor * landlock.1.cost;
    format!(
        "target {}-{base} <= {factor:.1} x ({}-{base}): {:.0} ns vs {factor:.1} x {:.0} = {:.0} ns  {}",
        baton.0.tag(),
        landlock.0.tag(),
        baton.1.cost,
        landlock.1.cost,
        allowed,
        verdict(baton.1.cost <= allowed)
    )
}

fn files_report(value: &Value, kernel: &str) -> Result<String> {
    let rounds = file_rounds(value)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nfiles: open()+close() of {} in the {kernel} VM ({}, QEMU without KVM); {} rounds of {} \
         iterations per case{}\n\
         median, p99: median over the rounds of each round's figure, ns\n\
         vs (a): median over the rounds of (case / that round's (a), for (fNc) and (fNd) that \
         round's (fNa), the same depth without Baton); +ns: the same for (case - (a))\n",
        value["file"].as_str().unwrap_or("?"),
        value["release"].as_str().unwrap_or("?"),
        rounds.len(),
        value["iterations"],
        match value["file_large"].as_str() {
            Some(file) => format!(
                "\n(e) opens {file}, (f) files {DEPTHS:?} levels below the allowed folder of \
                 (c); (e) and (f) run {} iterations, half as many times as (a) to (d)",
                value["iterations_extra"]
            ),
            None => String::new(),
        },
    );
    let _ = writeln!(
        out,
        "{:<6} {:<52} {:>10} {:>10} {:>8} {:>8}",
        "case", "", "median ns", "p99 ns", "vs (a)", "+ns"
    );
    let summaries: Vec<(FileCase, Paired)> = FileCase::all()
        .into_iter()
        .filter_map(|c| Some((c, pair(&rounds, c, c.baseline())?)))
        .collect();
    let landlock = |case: FileCase| &value["landlock"][case.key()];
    for (case, s) in &summaries {
        let label = match case {
            FileCase::Landlock | FileCase::LandlockLarge => format!(
                "{} ({} rules)",
                case.label(),
                landlock(*case)["rules"].as_u64().unwrap_or_default()
            ),
            _ => case.label(),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<52} {:>10.0} {:>10.0} {:>8.3} {:>+8.0}",
            case.tag(),
            label,
            s.median,
            s.p99,
            s.ratio,
            s.cost
        );
    }
    let status = |case: FileCase| landlock(case)["status"].as_str().unwrap_or("?").to_string();
    let _ = writeln!(
        out,
        "(c): {} deny rules + 1 allow rule, default allow; (d): the same policy as Landlock \
         grants (Landlock ABI 3 rights but execute), enforcement {}",
        value["rules"]["deny"],
        status(FileCase::Landlock),
    );
    if value["rules_large"].is_object() {
        let _ = writeln!(
            out,
            "(e): {} deny rules + 1 allow rule, a second agent in the same daemon; (eL): its \
             policy as Landlock grants, enforcement {}",
            value["rules_large"]["deny"],
            status(FileCase::LandlockLarge),
        );
    }
    let _ = writeln!(
        out,
        "\nBaton's BPF LSM program {FILE_OPEN_PROGRAM}, from kernel.bpf_stats_enabled=1 during \
         one extra run of each case with the daemon per round\n\
         (run_time_ns / run_cnt of each such run; every open in the VM counts):"
    );
    for case in FileCase::all().into_iter().filter(|c| c.needs_daemon()) {
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
            let _ = writeln!(out, "  {:<6} not measured", case.tag());
            continue;
        }
        let each: Vec<String> = per_run.iter().map(|n| format!("{n:.0}")).collect();
        let _ = writeln!(
            out,
            "  {:<6} {:<44} {:>6.0} ns per run (median of the rounds' {}; all runs together \
             {:.0}, {count} runs); open()+close() median {:.0} ns with the statistics on",
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
    let deep = |setup, depth| find(FileCase::Deep { setup, depth });
    // Depth 1 is the file of (c) and (d).
    let by_depth: Vec<(usize, &Paired, &Paired)> =
        std::iter::once((1, find(FileCase::Agent), find(FileCase::Landlock)))
            .chain(DEPTHS.iter().map(|&depth| {
                (
                    depth,
                    deep(DeepSetup::Agent, depth),
                    deep(DeepSetup::Landlock, depth),
                )
            }))
            .filter_map(|(depth, baton, landlock)| Some((depth, baton?, landlock?)))
            .collect();
    if by_depth.len() > 1 {
        let _ = writeln!(
            out,
            "\n(f): cost by depth below the allowed folder (depth 1: (c) and (d)), ns; per \
             level: the growth from the depth above, divided by the levels between\n\
             {:>5} {:>10} {:>12} {:>16} {:>19}",
            "depth", "Baton +ns", "Landlock +ns", "Baton per level", "Landlock per level"
        );
        let mut previous: Option<(usize, f64, f64)> = None;
        for &(depth, baton, landlock) in &by_depth {
            let (baton_step, landlock_step) = match previous {
                Some((d, b, l)) => {
                    let levels = (depth - d) as f64;
                    (
                        format!("{:+.0}", (baton.cost - b) / levels),
                        format!("{:+.0}", (landlock.cost - l) / levels),
                    )
                }
                None => (String::new(), String::new()),
            };
            let line = format!(
                "{depth:>5} {:>+10.0} {:>+12.0} {baton_step:>16} {landlock_step:>19}",
                baton.cost, landlock.cost
            );
            let _ = writeln!(out, "{}", line.trim_end());
            previous = Some((depth, baton.cost, landlock.cost));
        }
    }
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
        let _ = writeln!(
            out,
            "{}",
            landlock_target(
                (FileCase::Agent, c),
                (FileCase::Landlock, d),
                FILES_LANDLOCK_FACTOR
            )
        );
    }
    if let (Some(e), Some(el)) = (find(FileCase::AgentLarge), find(FileCase::LandlockLarge)) {
        let _ = writeln!(
            out,
            "{}",
            landlock_target(
                (FileCase::AgentLarge, e),
                (FileCase::LandlockLarge, el),
                FILES_LANDLOCK_FACTOR_LARGE
            )
        );
    }
    for depth in DEPTHS {
        let agent = FileCase::Deep {
            setup: DeepSetup::Agent,
            depth,
        };
        let landlock = FileCase::Deep {
            setup: DeepSetup::Landlock,
            depth,
        };
        if let (Some(f), Some(l)) = (find(agent), find(landlock)) {
            let _ = writeln!(
                out,
                "{}",
                landlock_target((agent, f), (landlock, l), FILES_LANDLOCK_FACTOR)
            );
        }
    }
    let _ = write!(
        out,
        "{}",
        linear_targets(|depth| deep(DeepSetup::Agent, depth).copied())
    );
    Ok(out)
}

/// The target "Baton's cost grows at most linearly with depth": at each
/// depth `d` of (f) below the first, cost(d) <= d / d0 x cost(d0), d0 the
/// shallowest. A cost of the form fixed + per level always meets it; one
/// that grows faster than the depth (a path rebuilt at every level, say)
/// misses it once the depth matters. Each cost is against the baseline at
/// its own depth.
fn linear_targets(cost: impl Fn(usize) -> Option<Paired>) -> String {
    let mut out = String::new();
    let [first, deeper @ ..] = DEPTHS;
    let Some(shallow) = cost(first) else {
        return out;
    };
    for depth in deeper {
        let Some(deep) = cost(depth) else { continue };
        let factor = depth as f64 / first as f64;
        let allowed = factor * shallow.cost;
        let _ = writeln!(
            out,
            "target (f) at most linear in depth: (f{depth}c)-(f{depth}a) <= {depth}/{first} x \
             ((f{first}c)-(f{first}a)): {:.0} ns vs {factor:.0} x {:.0} = {:.0} ns  {}",
            deep.cost,
            shallow.cost,
            allowed,
            verdict(deep.cost <= allowed)
        );
    }
    out
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
        assert!(tree.secret().starts_with(tree.denied().last().unwrap()));
    }

    #[test]
    fn large_file_policy_has_ten_thousand_rules_for_its_own_agent() {
        let tree = FileTree::large();
        let yaml = tree.policy_yaml();
        assert_eq!(
            yaml.lines().filter(|l| l.starts_with("      - ")).count(),
            10_000
        );
        assert!(yaml.contains("  name: bench-10k\n"), "{yaml}");
        assert!(yaml.contains("    agent: bench-10k\n"), "{yaml}");
        assert!(yaml.contains("    allow:\n      - /run/baton-bench-files-10k/open\n    deny:\n"));
        assert!(yaml.contains("      - /run/baton-bench-files-10k/a0000/secret\n"));
        assert!(yaml.contains("      - /run/baton-bench-files-10k/a9998/secret\n"));
        let denied = tree.denied();
        assert_eq!(denied.iter().collect::<BTreeSet<_>>().len(), 10_000 - 1);
        assert!(denied.iter().all(|d| !tree.target().starts_with(d)));
        assert!(tree.secret().starts_with(denied.last().unwrap()));
        // Neither tree lies inside the other, so neither agent's rules nor
        // Landlock grants name the other's files.
        let small = FileTree::new();
        assert!(!tree.root.starts_with(&small.root) && !small.root.starts_with(&tree.root));
        assert_ne!(tree.policy_file(), small.policy_file());
    }

    #[test]
    fn deep_targets_lie_their_depth_below_the_allowed_folder() {
        let tree = FileTree::new();
        assert_eq!(tree.deep_target(1), tree.target());
        assert_eq!(
            tree.deep_target(2),
            PathBuf::from("/run/baton-bench-files/open/d01/target")
        );
        for depth in DEPTHS {
            let target = tree.deep_target(depth);
            let below = target.strip_prefix(tree.allowed()).unwrap();
            assert_eq!(below.components().count(), depth, "{}", target.display());
            assert!(tree.denied().iter().all(|d| !target.starts_with(d)));
        }
        // One chain of folders serves every depth.
        assert!(
            tree.deep_target(24)
                .starts_with(tree.deep_target(8).parent().unwrap())
        );
    }

    #[test]
    fn trees_are_created_with_every_measured_file_and_landlock_denies_only_secrets() {
        let root =
            std::env::temp_dir().join(format!("baton-xtask-files-tree-{}", std::process::id()));
        let tree = FileTree {
            root: root.join("tree"),
            agent: AGENT,
            deny_rules: 12,
        };
        tree.create(&DEPTHS).unwrap();
        let result = (|| -> Result<()> {
            for file in DEPTHS
                .iter()
                .map(|&d| tree.deep_target(d))
                .chain([tree.target(), tree.secret()])
            {
                ensure!(file.is_file(), "{} was not created", file.display());
            }
            let denied = tree.denied();
            ensure!(
                denied.iter().all(|d| d.is_dir()),
                "a denied folder is missing"
            );
            ensure!(denied[0].ends_with("a00/secret"), "{}", denied[0].display());
            let grants = landlock_grants(&denied, &[tree.allowed()], list_dir)?;
            ensure!(grants.contains(&tree.allowed()), "{grants:?}");
            for d in &denied {
                ensure!(grants.contains(&d.with_file_name("pub")), "{grants:?}");
                ensure!(
                    !grants.iter().any(|g| g.starts_with(d) || d.starts_with(g)),
                    "{grants:?}"
                );
            }
            // Every measured file is granted, through the allowed folder.
            for depth in DEPTHS {
                let target = tree.deep_target(depth);
                ensure!(
                    grants.iter().any(|g| target.starts_with(g)),
                    "{}",
                    target.display()
                );
            }
            Ok(())
        })();
        std::fs::remove_dir_all(&root).unwrap();
        result.unwrap();
    }

    #[test]
    fn cases_have_distinct_keys_and_baselines_at_their_depth() {
        let all = FileCase::all();
        assert_eq!(all.len(), 6 + 3 * DEPTHS.len());
        let keys: BTreeSet<String> = all.iter().map(|c| c.key()).collect();
        assert_eq!(keys.len(), all.len());
        assert!(keys.contains("f24c") && keys.contains("eL"));
        let deep = |setup| FileCase::Deep { setup, depth: 8 };
        assert_eq!(deep(DeepSetup::Agent).baseline(), deep(DeepSetup::Baseline));
        assert_eq!(
            deep(DeepSetup::Landlock).baseline(),
            deep(DeepSetup::Baseline)
        );
        assert_eq!(FileCase::AgentLarge.baseline(), FileCase::Baseline);
        let with_daemon: Vec<String> = all
            .iter()
            .filter(|c| c.needs_daemon())
            .map(|c| c.key())
            .collect();
        assert_eq!(with_daemon, ["b", "c", "e", "f2c", "f8c", "f24c"]);
    }

    #[test]
    fn run_order_measures_the_extra_cases_half_as_often_both_ways() {
        let params = Params {
            rounds: 1,
            iterations: 20_000,
            release: true,
            baton: None,
        };
        let a = FileCase::Baseline;
        let d = FileCase::Landlock;
        let e = FileCase::LandlockLarge;
        let order = run_order(&[a, e, d]);
        assert_eq!(order, [a, e, d, d, e, a, a, d, d, a]);
        assert_eq!(a.iterations(&params), 20_000);
        assert_eq!(e.iterations(&params), 10_000);
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
            "release": "6.12.0", "iterations": 10, "iterations_extra": 5, "file": "/f",
            "file_large": "/g",
            "landlock": {
                "d": {"rules": 7, "status": "FullyEnforced"},
                "eL": {"rules": 70, "status": "FullyEnforced"},
            },
            "rules": {"deny": 6, "allow": 1},
            "rules_large": {"deny": 69, "allow": 1},
            "rounds": [{
                "a": [case(1000), case(1000)],
                "b": [case(1010)],
                "c": [case(1200)],
                "d": [case(1199), case(1201)],
                "e": [case(1300)],
                "eL": [case(1300)],
                "f2a": [case(2000)], "f2c": [case(2100)], "f2d": [case(2150)],
                "f8a": [case(3000)], "f8c": [case(3400)], "f8d": [case(3500)],
                "f24a": [case(5000)], "f24c": [case(6300)], "f24d": [case(6000)],
            }],
            "bpf_stats": {"c": {"run_time_ns": 5000, "run_cnt": 10, "runs": [
                {"median_ns": 1400, "run_time_ns": 3000, "run_cnt": 5},
                {"median_ns": 1400, "run_time_ns": 2000, "run_cnt": 5},
            ]}},
            "daemon_start_ms": [2500],
        });
        let rounds = file_rounds(&value).unwrap();
        assert_eq!(rounds[0].len(), FileCase::all().len());
        assert_eq!(
            rounds[0][2],
            (
                FileCase::Agent,
                Timing {
                    median: 1200,
                    p99: 2400
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
        assert!(report.contains("(b)    not measured"), "{report}");
        assert!(report.contains("1.010  PASS"), "{report}");
        assert!(
            report.contains("no Baton, Landlock, equivalent of (e) (70 rules)"),
            "{report}"
        );
        // 200 <= 1.0 x 200
        assert!(
            report
                .contains("target (c)-(a) <= 1.0 x ((d)-(a)): 200 ns vs 1.0 x 200 = 200 ns  PASS"),
            "{report}"
        );
        // 300 <= 1.2 x 300
        assert!(
            report
                .contains("target (e)-(a) <= 1.2 x ((eL)-(a)): 300 ns vs 1.2 x 300 = 360 ns  PASS"),
            "{report}"
        );
        // Against the baseline at the same depth, not (a).
        assert!(
            report
                .contains("(f8c)-(f8a) <= 1.0 x ((f8d)-(f8a)): 400 ns vs 1.0 x 500 = 500 ns  PASS"),
            "{report}"
        );
        assert!(
            report.contains(
                "(f24c)-(f24a) <= 1.0 x ((f24d)-(f24a)): 1300 ns vs 1.0 x 1000 = 1000 ns  FAIL"
            ),
            "{report}"
        );
        // 400 <= 8/2 x 100; 1300 > 24/2 x 100
        assert!(
            report.contains("(f8c)-(f8a) <= 8/2 x ((f2c)-(f2a)): 400 ns vs 4 x 100 = 400 ns  PASS"),
            "{report}"
        );
        assert!(
            report.contains(
                "(f24c)-(f24a) <= 24/2 x ((f2c)-(f2a)): 1300 ns vs 12 x 100 = 1200 ns  FAIL"
            ),
            "{report}"
        );
        // Depth 1 is (c) and (d); per level from 8 to 24: (1300 - 400) / 16.
        assert!(report.contains("    1       +200         +200"), "{report}");
        assert!(
            report.contains("   24      +1300        +1000              +56"),
            "{report}"
        );
    }

    #[test]
    fn file_rounds_leave_out_cases_an_older_run_did_not_measure() {
        let case = |m: u64| json!({"median_ns": m, "p99_ns": m});
        let value = json!({
            "rounds": [{"a": [case(1000)], "b": [case(1010)], "c": [case(1300)], "d": [case(1200)]}],
        });
        let rounds = file_rounds(&value).unwrap();
        assert_eq!(rounds[0].len(), 4);
        let report = files_report(&value, "6.1").unwrap();
        assert!(report.contains("target (c)-(a)"), "{report}");
        assert!(!report.contains("target (e)"), "{report}");
        assert!(!report.contains("(f): cost by depth"), "{report}");
    }
}

//! `cargo xtask bench egress`: what Baton adds to `connect()`, against
//! nftables, and to a bulk TCP stream, whose every packet the packet-level
//! backstop judges when the sender is in an agent.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use super::{
    AGENT, Cgroup, Daemon, Listener, Params, WorkDir, build, cgroup2_root, median, port_of, probe,
    run_client,
};
use crate::{setup, util, workspace_root};

/// Allow rules for other destinations; with the listener's rule the agent
/// policy has 1,000.
const OTHER_RULES: usize = 999;
/// The nftables table of case (d).
const NFT_TABLE: &str = "baton_bench";
/// The cgroup of case (d), directly below the cgroup v2 root.
const CGROUP_NAME: &str = "baton-bench";
/// Target for (b)/(a): a daemon that holds no agent must be nearly free.
const DAEMON_RATIO_TARGET: f64 = 1.03;
/// Bulk throughput targets against (a): a daemon holding no agent, and an
/// agent whose packets the backstop judges.
const BULK_DAEMON_TARGET: f64 = 0.98;
const BULK_AGENT_TARGET: f64 = 0.95;
/// How long each bulk stream writes.
const BULK_MILLIS: u64 = 1_000;
/// Bulk streams per case and round; the round's figure is their median.
const BULK_STREAMS: usize = 3;
/// Every bench-connect process (clients, listener, sink) runs on this CPU
/// (`BATON_BENCH_CPU`): left to the scheduler, whether a client and its
/// listener shared a CPU changed a round's figure by up to 2.5x on a
/// two-CPU machine. The daemon is not pinned.
const BENCH_CPU: (&str, &str) = ("BATON_BENCH_CPU", "0");

/// One measured configuration of the egress benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// (a) no Baton running.
    Baseline,
    /// (b) Baton running; the process belongs to no agent.
    Daemon,
    /// (c) the process belongs to an agent with 1,000 egress rules.
    Agent,
    /// (d) no Baton; the same rules as an nftables set matched on the
    /// process's cgroup.
    Nftables,
    /// (e) as (c), in an agent whose policy also lists a secret and an
    /// `afterSecret` allow list, not tainted.
    Secret,
    /// (f) as (e), the agent tainted (it read its secret): every connect
    /// is also judged by the narrowed rules.
    Tainted,
}

/// The agent of case (e), and the one of case (f): the same policy.
const SECRET_AGENT: &str = "bench-secret";
const TAINTED_AGENT: &str = "bench-tainted";
/// Targets for (e) and (f) against (c): a secret costs nothing until it is
/// read, and little after.
const SECRET_RATIO_TARGET: f64 = 1.05;

impl Case {
    const ALL: [Case; 6] = [
        Case::Baseline,
        Case::Daemon,
        Case::Agent,
        Case::Nftables,
        Case::Secret,
        Case::Tainted,
    ];

    fn tag(self) -> &'static str {
        match self {
            Case::Baseline => "(a)",
            Case::Daemon => "(b)",
            Case::Agent => "(c)",
            Case::Nftables => "(d)",
            Case::Secret => "(e)",
            Case::Tainted => "(f)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Baseline => "no Baton",
            Case::Daemon => "Baton running, not in an agent",
            Case::Agent => "in an agent, 1,000 rules (eBPF)",
            Case::Nftables => "no Baton, nftables cgroup set, 1,000 rules",
            Case::Secret => "as (c), with a secret, not read",
            Case::Tainted => "as (c), secret read: narrowed",
        }
    }

    fn needs_daemon(self) -> bool {
        matches!(
            self,
            Case::Daemon | Case::Agent | Case::Secret | Case::Tainted
        )
    }

    /// Whether the bulk-transfer case runs in this configuration.
    fn bulk(self) -> bool {
        matches!(self, Case::Baseline | Case::Daemon | Case::Agent)
    }
}

/// What `bench-connect --bulk` reports for one stream.
#[derive(Debug, Clone, Copy)]
struct BulkSample {
    bytes_per_second: f64,
    segments_per_second: f64,
}

/// What bench-connect reports for one run, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    median: u64,
    p99: u64,
    connect_median: u64,
}

/// Everything the cases share.
struct Bench {
    /// bench-connect.
    client: PathBuf,
    baton: PathBuf,
    /// The listener every measured connect goes to.
    target: String,
    /// A second listener that no rule allows: enforcement must stop it.
    unlisted: String,
    /// The listener that drains the bulk streams.
    sink: String,
    work: WorkDir,
    cgroup: Cgroup,
    /// The cgroup v2 mount, where the daemon attaches.
    cgroup_root: PathBuf,
    nft_script: PathBuf,
    params: Params,
    warnings: Vec<String>,
}

pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the egress benchmark loads eBPF programs and nftables rules: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let root = workspace_root();
    let client = root.join("target/debug/bench-connect");
    let baton = params.baton();

    let work = WorkDir::create()?;
    // Both live until the end of the function, every case included.
    let target_listener = Listener::start_with(&client, "--listen", &[BENCH_CPU])?;
    let unlisted_listener = Listener::start_with(&client, "--listen", &[BENCH_CPU])?;
    let sink_listener = Listener::start_with(&client, "--sink", &[BENCH_CPU])?;
    let target = target_listener.addr.clone();
    let unlisted = unlisted_listener.addr.clone();
    let sink = sink_listener.addr.clone();
    let port: u16 = port_of(&target)?;

    let rules = bench_rules(port, port_of(&sink)?);
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    let secret = work.path().join("deploy-token");
    std::fs::write(&secret, "bench token\n")
        .with_context(|| format!("cannot write {}", secret.display()))?;
    let mut yaml = policy_yaml(AGENT, &rules, None);
    for agent in [SECRET_AGENT, TAINTED_AGENT] {
        yaml.push_str("---\n");
        yaml.push_str(&policy_yaml(agent, &rules, Some((&secret, &target))));
    }
    std::fs::write(&policy, yaml).with_context(|| format!("cannot write {}", policy.display()))?;
    util::output(Command::new(&baton).arg("policy").arg("check").arg(&policy))
        .context("the generated benchmark policy does not compile")?;

    let cgroup_root = cgroup2_root()?;
    let cgroup = Cgroup::create(&cgroup_root, CGROUP_NAME)?;
    let nft_script = work.path().join("bench.nft");
    std::fs::write(&nft_script, nft_ruleset(&rules, &cgroup)?)
        .with_context(|| format!("cannot write {}", nft_script.display()))?;
    // A table left by an interrupted run would filter the baseline.
    if nft_table_exists() {
        println!("bench: removing the table inet {NFT_TABLE} left by an earlier run");
        util::output(Command::new("nft").args(["delete", "table", "inet", NFT_TABLE]))?;
    }

    let mut bench = Bench {
        client,
        baton,
        target,
        unlisted,
        sink,
        work,
        cgroup,
        cgroup_root,
        nft_script,
        params: params.clone(),
        warnings: Vec::new(),
    };
    println!(
        "bench: egress: {} rounds x {} cases x {} connect()+close() to {} \
         ({} egress rules, nftables set of {} elements)",
        params.rounds,
        Case::ALL.len(),
        params.iterations,
        bench.target,
        rules.len(),
        rules.iter().map(|r| r.ports.len()).sum::<usize>()
    );

    let mut clean_rounds: Vec<Vec<(Case, Sample)>> = Vec::new();
    let mut clean_bulk: Vec<Vec<(Case, BulkSample)>> = Vec::new();
    for round in 0..params.rounds {
        let mut measured = Vec::new();
        let mut bulk = Vec::new();
        let mut clean = true;
        for with_daemon in super::halves(round) {
            let cases = super::half_cases(round, &Case::ALL, with_daemon, Case::needs_daemon);
            let daemon = if with_daemon {
                Some(Daemon::start(&bench.baton, bench.work.path(), "")?)
            } else {
                None
            };
            clean &= bench.programs_as_expected(with_daemon, round)?;
            for case in cases.iter().copied() {
                let sample = bench.measure(case, round, daemon.as_ref())?;
                println!(
                    "bench: round {:>width$}/{} {} {:<44} median {:>7} ns  p99 {:>8} ns",
                    round + 1,
                    params.rounds,
                    case.tag(),
                    case.label(),
                    sample.median,
                    sample.p99,
                    width = params.rounds.to_string().len(),
                );
                measured.push((case, sample));
            }
            // Several short streams per case, taken in turn, and their
            // median: one stream's throughput swings by a tenth from one
            // second to the next on a shared machine.
            let bulk_cases: Vec<Case> = cases.iter().copied().filter(|c| c.bulk()).collect();
            let mut streams: Vec<Vec<BulkSample>> = vec![Vec::new(); bulk_cases.len()];
            for _ in 0..BULK_STREAMS {
                for (i, case) in bulk_cases.iter().enumerate() {
                    streams[i].push(bench.measure_bulk(*case, daemon.as_ref())?);
                }
            }
            for (case, samples) in bulk_cases.iter().copied().zip(streams) {
                let sample = BulkSample {
                    bytes_per_second: median(samples.iter().map(|s| s.bytes_per_second)),
                    segments_per_second: median(samples.iter().map(|s| s.segments_per_second)),
                };
                println!(
                    "bench: round {:>width$}/{} {} bulk {:<39} {:>7.2} Gbit/s  {:>9.0} segments/s",
                    round + 1,
                    params.rounds,
                    case.tag(),
                    case.label(),
                    sample.bytes_per_second * 8.0 / 1e9,
                    sample.segments_per_second,
                    width = params.rounds.to_string().len(),
                );
                bulk.push((case, sample));
            }
            // Checked again: another daemon may have come or gone meanwhile.
            clean &= bench.programs_as_expected(with_daemon, round)?;
            if let Some(daemon) = daemon {
                daemon.stop()?;
            }
        }
        if !clean {
            println!("bench: round {} left out of the summary", round + 1);
            continue;
        }
        clean_rounds.push(measured);
        clean_bulk.push(bulk);
    }
    ensure!(
        !clean_rounds.is_empty(),
        "no round ran without foreign programs on the cgroup v2 root: {}",
        bench.warnings.join("; ")
    );

    let breakdown = bench.program_breakdown()?;
    print!("{}", report(&clean_rounds, params, &bench.warnings));
    print!("{}", bulk_report(&clean_bulk));
    print!("{breakdown}");
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Bench {
    /// One more pass of (b) and (c) with the kernel's run-time statistics
    /// on: what each kernel program costs a connect, to show where (c)'s
    /// time over (a) goes. Kept out of the timed rounds, as the statistics
    /// add a clock read to every program run.
    fn program_breakdown(&self) -> Result<String> {
        let daemon = Daemon::start(&self.baton, self.work.path(), "")?;
        let stats = super::programs::enable()?;
        let mut out = format!(
            "\negress: where the time goes, per kernel program (one more pass of \
             {} connects per case, with the kernel's run-time statistics on, which \
             add their own clock reads to every run)\n",
            self.params.iterations
        );
        for case in [Case::Daemon, Case::Agent] {
            let before = super::programs::snapshot();
            // Round 1: the sanity checks of round 0 already ran.
            self.measure(case, 1, Some(&daemon))?;
            let after = super::programs::snapshot();
            let shares = super::programs::shares(&before, &after, self.params.iterations as u64);
            out.push_str(&super::programs::table(
                &format!("{} {}", case.tag(), case.label()),
                "connect",
                &shares,
            ));
        }
        drop(stats);
        daemon.stop()?;
        Ok(out)
    }

    /// Measures `case` once; the daemon is running exactly when the case
    /// needs it.
    fn measure(&self, case: Case, round: usize, daemon: Option<&Daemon>) -> Result<Sample> {
        let args = [self.target.clone(), self.params.iterations.to_string()];
        let table = if case == Case::Nftables {
            Some(NftTable::load(&self.nft_script)?)
        } else {
            None
        };
        let mut cmd = match case {
            Case::Baseline | Case::Daemon => {
                let mut cmd = Command::new(&self.client);
                cmd.args(&args);
                cmd
            }
            Case::Agent => {
                let daemon = daemon.context("case (c) needs the daemon")?;
                // Checked every round: each round starts a new daemon.
                let outcome = probe(
                    &mut self.in_agent(daemon, &["--probe".to_string(), self.unlisted.clone()]),
                )?;
                ensure!(
                    outcome == "errno=1",
                    "(c) does not enforce: a connect to the unlisted {} from inside the agent \
                     gave {outcome:?}, not EPERM",
                    self.unlisted
                );
                if round == 0 {
                    println!(
                        "bench: sanity: (c) the agent gets EPERM connecting to the unlisted {}",
                        self.unlisted
                    );
                }
                self.in_agent(daemon, &args)
            }
            Case::Nftables => {
                if round == 0 {
                    self.check_nftables()?;
                }
                self.cgroup.command(&self.client, &args)
            }
            Case::Secret | Case::Tainted => {
                let daemon = daemon.context("cases (e) and (f) need the daemon")?;
                let agent = if case == Case::Secret {
                    SECRET_AGENT
                } else {
                    // Read the secret (again: a no-op once tainted).
                    let secret = self.work.path().join("deploy-token");
                    let read = probe(&mut self.in_agent_named(
                        TAINTED_AGENT,
                        Path::new("/bin/cat"),
                        daemon,
                        &[secret.display().to_string()],
                    ))?;
                    ensure!(
                        read == "bench token",
                        "(f) cannot read its secret: {read:?}"
                    );
                    TAINTED_AGENT
                };
                // The sink is allowed by the rules but not after a secret.
                let outcome = probe(&mut self.in_agent_named(
                    agent,
                    &self.client,
                    daemon,
                    &["--probe".to_string(), self.sink.clone()],
                ))?;
                let expected = if case == Case::Secret {
                    "ok"
                } else {
                    "errno=1"
                };
                ensure!(
                    outcome == expected,
                    "{}: a connect to {} (allowed by the rules, not after a secret) gave \
                     {outcome:?}, not {expected}",
                    case.tag(),
                    self.sink
                );
                if round == 0 {
                    println!(
                        "bench: sanity: {} a connect to {} (not in afterSecret) gives {expected}",
                        case.tag(),
                        self.sink
                    );
                }
                self.in_agent_named(agent, &self.client, daemon, &args)
            }
        };
        cmd.env(BENCH_CPU.0, BENCH_CPU.1);
        // Far above the ~30 µs an iteration takes, far below forever.
        let timeout =
            Duration::from_secs(30) + Duration::from_millis(1) * self.params.iterations as u32;
        let sample = parse_sample(&run_client(&mut cmd, timeout)?);
        drop(table);
        sample
    }

    /// `bench-connect args` in the benchmark agent, started by `baton exec`
    /// from the benchmark's own cgroup (that of case (d)), as an agent in
    /// production runs in a cgroup of its own (a unit, a pod, a
    /// `maxProcesses` cgroup): the daemon attaches the packet backstop
    /// there, and processes elsewhere, case (b)'s, never run it.
    fn in_agent(&self, daemon: &Daemon, args: &[String]) -> Command {
        self.in_agent_named(AGENT, &self.client, daemon, args)
    }

    /// `program args` in `agent`, as [`Self::in_agent`] runs them.
    fn in_agent_named(
        &self,
        agent: &str,
        program: &Path,
        daemon: &Daemon,
        args: &[String],
    ) -> Command {
        let exec = daemon.exec_command_in(agent, &self.baton, program, args);
        let exec_args: Vec<String> = exec
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        self.cgroup.command(&self.baton, &exec_args)
    }

    /// One bulk stream to the sink for `case`.
    fn measure_bulk(&self, case: Case, daemon: Option<&Daemon>) -> Result<BulkSample> {
        let args = [
            "--bulk".to_string(),
            self.sink.clone(),
            BULK_MILLIS.to_string(),
        ];
        let mut cmd = match case {
            Case::Agent => self.in_agent(daemon.context("case (c) needs the daemon")?, &args),
            _ => {
                let mut cmd = Command::new(&self.client);
                cmd.args(&args);
                cmd
            }
        };
        cmd.env(BENCH_CPU.0, BENCH_CPU.1);
        let output = run_client(&mut cmd, Duration::from_millis(BULK_MILLIS * 3 + 30_000))?;
        let value: serde_json::Value = serde_json::from_str(output.trim())
            .with_context(|| format!("bench-connect --bulk printed {output:?}, not JSON"))?;
        let field = |name: &str| {
            value[name]
                .as_f64()
                .with_context(|| format!("bench-connect --bulk's report lacks {name}: {output}"))
        };
        Ok(BulkSample {
            bytes_per_second: field("bytes_per_second")?,
            segments_per_second: field("segments_per_second")?,
        })
    }

    /// The nftables rule must drop what the set leaves out, and only for
    /// the cgroup; a rule that never matches would make (d) look free.
    fn check_nftables(&self) -> Result<()> {
        let outside = probe(Command::new(&self.client).args(["--probe", &self.unlisted]))?;
        ensure!(
            outside == "ok",
            "outside the benchmark cgroup a connect to {} gave {outside:?}, not ok",
            self.unlisted
        );
        let inside = probe(&mut self.cgroup.command(
            &self.client,
            &["--probe".to_string(), self.unlisted.clone()],
        ))?;
        ensure!(
            inside == "timeout" || inside == "errno=1",
            "(d) does not filter: inside the cgroup a connect to the unlisted {} gave \
             {inside:?}; does `socket cgroupv2 level {} \"{}\"` name {}?",
            self.unlisted,
            self.cgroup.level,
            self.cgroup.nft_path()?,
            self.cgroup.dir.display()
        );
        println!(
            "bench: sanity: (d) the nftables rule drops {} from inside the cgroup only",
            self.unlisted
        );
        Ok(())
    }

    /// Whether the cgroup v2 root holds exactly the connect programs this
    /// run expects: the daemon's, or none. Others (a second Baton, another
    /// eBPF tool) would be measured in every case; a warning says so.
    fn programs_as_expected(&mut self, with_daemon: bool, round: usize) -> Result<bool> {
        let listing = util::output(
            Command::new("bpftool")
                .args(["cgroup", "show"])
                .arg(&self.cgroup_root),
        )?;
        let attached = listing
            .lines()
            .filter(|l| l.contains("inet4_connect"))
            .count();
        let expected = usize::from(with_daemon);
        if attached != expected {
            let warning = format!(
                "round {}: {attached} connect4 program(s) attached at {} where {expected} \
                 expected (another Baton or eBPF tool is running)",
                round + 1,
                self.cgroup_root.display()
            );
            println!("bench: warning: {warning}");
            self.warnings.push(warning);
        }
        // The agent runs in the benchmark's cgroup, so the daemon attaches
        // the packet backstop there; on the root it would be in (b) too.
        let backstop_on_root = listing.lines().any(|l| l.contains("skb_egress"));
        if with_daemon && backstop_on_root {
            let warning = format!(
                "round {}: the packet backstop is attached to {}, so (b) pays for it on every packet",
                round + 1,
                self.cgroup_root.display()
            );
            println!("bench: warning: {warning}");
            self.warnings.push(warning);
        }
        Ok(attached == expected)
    }
}

fn parse_sample(output: &str) -> Result<Sample> {
    let value: serde_json::Value = serde_json::from_str(output.trim())
        .with_context(|| format!("bench-connect printed {output:?}, not JSON"))?;
    let field = |name: &str| {
        value[name]
            .as_u64()
            .with_context(|| format!("bench-connect's report lacks {name}: {output}"))
    };
    Ok(Sample {
        median: field("median_ns")?,
        p99: field("p99_ns")?,
        connect_median: field("connect_median_ns")?,
    })
}

/// Summary of one case over every clean round.
struct Summary {
    case: Case,
    /// Medians over the rounds of each round's figure, ns.
    median: f64,
    p99: f64,
    connect_median: f64,
    /// Median over the rounds of (this case / that round's baseline).
    ratio: f64,
    /// Median over the rounds of (this case - that round's baseline), ns.
    cost: f64,
}

/// Summarizes every case measured in `rounds`.
///
/// Ratios and costs pair each case with the baseline of its own round
/// before taking the median: load from other work on the machine comes
/// and goes over seconds, so it shifts a round's cases together, and
/// pairing cancels it. On these machines that halves the spread of
/// (b)/(a) compared with dividing the two cases' overall medians.
fn summarize(rounds: &[Vec<(Case, Sample)>]) -> Vec<Summary> {
    let of = |round: &[(Case, Sample)], case: Case| {
        round.iter().find(|(c, _)| *c == case).map(|(_, s)| *s)
    };
    Case::ALL
        .iter()
        .filter_map(|&case| {
            let paired: Vec<(Sample, Option<Sample>)> = rounds
                .iter()
                .filter_map(|round| Some((of(round, case)?, of(round, Case::Baseline))))
                .collect();
            if paired.is_empty() {
                return None;
            }
            let pick = |f: fn(&Sample) -> u64| median(paired.iter().map(|(s, _)| f(s) as f64));
            let baseline: Vec<(f64, f64)> = paired
                .iter()
                .filter_map(|&(s, a)| Some((s.median as f64, a?.median as f64)))
                .collect();
            Some(Summary {
                case,
                median: pick(|s| s.median),
                p99: pick(|s| s.p99),
                connect_median: pick(|s| s.connect_median),
                ratio: median(baseline.iter().map(|(s, a)| s / a)),
                cost: median(baseline.iter().map(|(s, a)| s - a)),
            })
        })
        .collect()
}

fn report(rounds: &[Vec<(Case, Sample)>], params: &Params, warnings: &[String]) -> String {
    let summaries = summarize(rounds);
    let find = |case| summaries.iter().find(|s| s.case == case);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\negress: connect()+close() to a loopback listener; {} rounds of {} iterations per case\n\
         median, p99, connect(): median over the rounds of each round's figure, ns\n\
         vs (a): median over the rounds of (case / that round's (a))\n",
        rounds.len(),
        params.iterations
    );
    if rounds.len() < params.rounds {
        let _ = writeln!(
            out,
            "{} of {} rounds left out: foreign programs on the cgroup v2 root (warnings below)\n",
            params.rounds - rounds.len(),
            params.rounds
        );
    }
    let _ = writeln!(
        out,
        "{:<4} {:<44} {:>10} {:>10} {:>12} {:>8}",
        "case", "", "median ns", "p99 ns", "connect() ns", "vs (a)"
    );
    for s in &summaries {
        let _ = writeln!(
            out,
            "{:<4} {:<44} {:>10.0} {:>10.0} {:>12.0} {:>8.3}",
            s.case.tag(),
            s.case.label(),
            s.median,
            s.p99,
            s.connect_median,
            s.ratio
        );
    }
    let _ = writeln!(
        out,
        "     DNS proxy latency: measured by `cargo xtask bench dns`\n"
    );
    if let (Some(b), Some(c), Some(d)) =
        (find(Case::Daemon), find(Case::Agent), find(Case::Nftables))
    {
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let _ = writeln!(
            out,
            "target (b)/(a) <= {DAEMON_RATIO_TARGET:.2}:       {:.3}  {}",
            b.ratio,
            verdict(b.ratio <= DAEMON_RATIO_TARGET)
        );
        let _ = writeln!(
            out,
            "target (c)-(a) <= (d)-(a): {:.0} ns vs {:.0} ns  {}",
            c.cost,
            d.cost,
            verdict(c.cost <= d.cost)
        );
        for case in [Case::Secret, Case::Tainted] {
            if let Some(e) = find(case) {
                let ratio = e.median / c.median;
                let _ = writeln!(
                    out,
                    "target {}/(c) <= {SECRET_RATIO_TARGET:.2}:       {ratio:.3}  {}",
                    case.tag(),
                    verdict(ratio <= SECRET_RATIO_TARGET)
                );
            }
        }
    }
    for warning in warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

/// The bulk-transfer summary: each case's throughput over the rounds, and
/// its ratio to (a) paired within each round.
fn bulk_report(rounds: &[Vec<(Case, BulkSample)>]) -> String {
    let of = |round: &[(Case, BulkSample)], case: Case| {
        round.iter().find(|(c, _)| *c == case).map(|(_, s)| *s)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\negress bulk: one TCP stream over loopback for {BULK_MILLIS} ms, {BULK_STREAMS} streams per \
         case and round, taken in turn (a round's figure: their median); median over {} rounds; \
         vs (a): median of (case / that round's (a))\n\
         segments/s: TCP segments the stream sent (TCP_INFO); in (c) the backstop judges \
         every one, in GSO batches of up to 64 KiB\n",
        rounds.len()
    );
    let _ = writeln!(
        out,
        "{:<4} {:<44} {:>10} {:>14} {:>8}",
        "case", "", "Gbit/s", "segments/s", "vs (a)"
    );
    let mut ratios = Vec::new();
    for case in Case::ALL.into_iter().filter(|c| c.bulk()) {
        let samples: Vec<BulkSample> = rounds.iter().filter_map(|r| of(r, case)).collect();
        if samples.is_empty() {
            continue;
        }
        let ratio = median(rounds.iter().filter_map(|r| {
            Some(of(r, case)?.bytes_per_second / of(r, Case::Baseline)?.bytes_per_second)
        }));
        let _ = writeln!(
            out,
            "{:<4} {:<44} {:>10.2} {:>14.0} {:>8.3}",
            case.tag(),
            case.label(),
            median(samples.iter().map(|s| s.bytes_per_second * 8.0 / 1e9)),
            median(samples.iter().map(|s| s.segments_per_second)),
            ratio
        );
        ratios.push((case, ratio));
    }
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for (case, target) in [
        (Case::Daemon, BULK_DAEMON_TARGET),
        (Case::Agent, BULK_AGENT_TARGET),
    ] {
        if let Some((_, ratio)) = ratios.iter().find(|(c, _)| *c == case) {
            let _ = writeln!(
                out,
                "target bulk {}/(a) >= {target:.2}:     {ratio:.3}  {}",
                case.tag(),
                verdict(*ratio >= target)
            );
        }
    }
    out
}

/// One egress allow rule, as both Baton and nftables express it.
struct Rule {
    /// `a.b.c.d/len`.
    cidr: String,
    /// Inclusive port ranges; `(0, 65535)` alone stands for every port.
    ports: Vec<(u16, u16)>,
    /// `tcp` or `any`: nftables matches TCP only, so both are TCP there.
    protocol: &'static str,
}

/// 999 disjoint allow rules spread over 10.0.0.0/8 with prefixes from /18
/// to /32 and a mix of port lists, then the rule that allows the listener
/// and the bulk sink.
///
/// Disjoint prefixes keep each one's flattened port table far below the
/// 16 rows Baton allows per prefix.
fn bench_rules(listener_port: u16, sink_port: u16) -> Vec<Rule> {
    const PREFIXES: [u32; 5] = [18, 20, 24, 28, 32];
    let mut rules: Vec<Rule> = (0..OTHER_RULES)
        .map(|i| {
            // Each rule owns one /18 block: 10.(i/4).(i%4*64).0.
            let base = format!("10.{}.{}.0", i / 4, (i % 4) * 64);
            let ports = match i % 4 {
                0 => vec![(0, 65535)],
                1 => vec![(443, 443)],
                2 => vec![(80, 80), (443, 443)],
                _ => vec![(8000, 8099)],
            };
            Rule {
                cidr: format!("{base}/{}", PREFIXES[i % PREFIXES.len()]),
                ports,
                protocol: if i % 3 == 0 { "any" } else { "tcp" },
            }
        })
        .collect();
    rules.push(Rule {
        cidr: "127.0.0.1/32".to_string(),
        ports: vec![(listener_port, listener_port), (sink_port, sink_port)],
        protocol: "tcp",
    });
    rules
}

/// The policy of `agent`: `rules` as its egress allow list, and with
/// `secret` a secret file and an `afterSecret` list of one address.
fn policy_yaml(agent: &str, rules: &[Rule], secret: Option<(&Path, &str)>) -> String {
    let mut yaml = format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {agent}\n\
         spec:\n  selector:\n    agent: {agent}\n"
    );
    if let Some((secret, after)) = secret {
        let (ip, port) = after.rsplit_once(':').unwrap_or((after, "0"));
        let _ = write!(
            yaml,
            "  files:\n    secrets: [{}]\n  egress:\n    afterSecret:\n      allow:\n        - cidr: {ip}\n          ports: [{port}]\n",
            secret.display()
        );
    } else {
        yaml.push_str("  egress:\n");
    }
    yaml.push_str("    default: deny\n    allow:\n");
    for rule in rules {
        let _ = writeln!(yaml, "      - cidr: {}", rule.cidr);
        if rule.ports != [(0, 65535)] {
            let ports: Vec<String> = rule
                .ports
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("\"{lo}-{hi}\"")
                    }
                })
                .collect();
            let _ = writeln!(yaml, "        ports: [{}]", ports.join(", "));
        }
        let _ = writeln!(yaml, "        protocol: {}", rule.protocol);
    }
    yaml
}

/// The nftables equivalent of the agent policy: one interval set of
/// address-and-port elements, and a rule dropping TCP from the cgroup to
/// anything outside it.
fn nft_ruleset(rules: &[Rule], cgroup: &Cgroup) -> Result<String> {
    let elements: Vec<String> = rules
        .iter()
        .flat_map(|rule| {
            rule.ports.iter().map(move |&(lo, hi)| {
                if lo == hi {
                    format!("{} . {lo}", rule.cidr)
                } else {
                    format!("{} . {lo}-{hi}", rule.cidr)
                }
            })
        })
        .collect();
    let path = cgroup.nft_path()?;
    Ok(format!(
        "table inet {NFT_TABLE} {{\n\
         \tset allowed {{\n\
         \t\ttype ipv4_addr . inet_service\n\
         \t\tflags interval\n\
         \t\telements = {{\n\t\t\t{}\n\t\t}}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\tsocket cgroupv2 level {} \"{path}\" ip daddr . tcp dport != @allowed drop\n\
         \t}}\n\
         }}\n",
        elements.join(",\n\t\t\t"),
        cgroup.level,
    ))
}

fn nft_table_exists() -> bool {
    util::probe(Command::new("nft").args(["list", "table", "inet", NFT_TABLE])).is_some()
}

/// The loaded nftables table of case (d), deleted on drop.
///
/// It is loaded only around (d): its output chain sees every packet of
/// every process, so leaving it in place would tax the other cases too.
struct NftTable;

impl NftTable {
    fn load(script: &Path) -> Result<Self> {
        util::output(Command::new("nft").arg("-f").arg(script))?;
        Ok(Self)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(error) =
            util::output(Command::new("nft").args(["delete", "table", "inet", NFT_TABLE]))
        {
            eprintln!("bench: cannot delete the table inet {NFT_TABLE}: {error:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_disjoint_and_number_one_thousand() {
        let rules = bench_rules(4242, 4343);
        assert_eq!(rules.len(), 1_000);
        let mut cidrs: Vec<&str> = rules.iter().map(|r| r.cidr.as_str()).collect();
        cidrs.sort_unstable();
        cidrs.dedup();
        assert_eq!(cidrs.len(), 1_000);
        assert_eq!(rules[999].cidr, "127.0.0.1/32");
    }

    #[test]
    fn policy_lists_ports_and_ranges() {
        let yaml = policy_yaml(AGENT, &bench_rules(4242, 4343), None);
        assert!(yaml.contains("      - cidr: 10.0.0.0/18\n        protocol: any\n"));
        assert!(yaml.contains("        ports: [80, 443]\n"));
        assert!(yaml.contains("        ports: [\"8000-8099\"]\n"));
        assert!(yaml.contains("      - cidr: 127.0.0.1/32\n        ports: [4242, 4343]\n"));
        let yaml = policy_yaml(
            "s",
            &bench_rules(4242, 4343),
            Some((Path::new("/tmp/token"), "127.0.0.1:4242")),
        );
        assert!(yaml.contains(
            "  files:\n    secrets: [/tmp/token]\n  egress:\n    afterSecret:\n      allow:\n        - cidr: 127.0.0.1\n          ports: [4242]\n    default: deny\n"
        ));
    }

    #[test]
    fn ratios_pair_each_case_with_its_round() {
        let sample = |median| Sample {
            median,
            p99: 2 * median,
            connect_median: median / 2,
        };
        // The machine slows down by half in the second round; the ratio
        // within each round stays 1.1.
        let rounds = vec![
            vec![(Case::Baseline, sample(1000)), (Case::Daemon, sample(1100))],
            vec![(Case::Daemon, sample(1650)), (Case::Baseline, sample(1500))],
        ];
        let summaries = summarize(&rounds);
        assert_eq!(summaries.len(), 2);
        let daemon = &summaries[1];
        assert_eq!(daemon.case, Case::Daemon);
        assert!((daemon.ratio - 1.1).abs() < 1e-9);
        assert_eq!(daemon.cost, 125.0);
        assert_eq!(daemon.median, 1375.0);
        assert_eq!(summaries[0].ratio, 1.0);
    }
}

//! `cargo xtask bench`: benchmarks reported as ratios against a baseline
//! measured in the same run.
//!
//! The machines this runs on are shared and noisy, so no absolute time is
//! ever a verdict: every case is measured in several rounds, interleaved with
//! the baseline, and compared with it.
//!
//! - `egress`: what Baton adds to `connect()`, against nftables.
//! - `dns`: what the DNS proxy adds to a query, against asking the DNS
//!   server directly.
//! - `files`: what Baton adds to `open()`, against Landlock; inside a test
//!   VM, the only place BPF LSM loads.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{setup, util, vm, workspace_root};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `egress` (the cost Baton adds to `connect()`), `dns`
    /// (the latency the DNS proxy adds to a query) or `files` (the cost
    /// Baton adds to `open()`, measured in a test VM).
    pub which: String,
    /// Rounds; every case is measured once per round (files: twice), and
    /// the reported figure is the median over the rounds [default: egress
    /// 20, dns 20, files 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Iterations per case and round, after a warm-up [default: egress
    /// 10,000 connects, dns 2,000 queries, files 20,000 opens].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,
    /// Build of `baton` to measure: `release` (`cargo build --release`) or
    /// `debug`. The kernel programs are optimized either way; the daemon's
    /// own work (the DNS proxy, its start-up and background work) is much
    /// slower in a debug build [default: egress debug, dns and files
    /// release].
    #[arg(long, value_parser = ["debug", "release"])]
    pub profile: Option<String>,
    /// Test kernel the `files` benchmark boots.
    #[arg(long, value_parser = ["6.1", "6.12"], default_value = "6.12")]
    pub kernel: String,
    /// Run the `files` cases in this machine and write the results to DIR;
    /// `cargo xtask bench files` passes it to itself inside the VM.
    #[arg(long, hide = true, value_name = "DIR")]
    pub in_vm: Option<PathBuf>,
}

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    let params = |rounds: u32, iterations: u32, release: bool| Params {
        rounds: args.rounds.unwrap_or(rounds) as usize,
        iterations: args.iterations.unwrap_or(iterations) as usize,
        release: args.profile.as_deref().map_or(release, |p| p == "release"),
    };
    match args.which.as_str() {
        "egress" => egress(&params(20, 10_000, false)),
        "dns" => dns(&params(20, 2_000, true)),
        "files" => {
            let params = params(FILES_ROUNDS, FILES_ITERATIONS, true);
            match &args.in_vm {
                Some(results) => files_in_vm(results, &params),
                None => files(&params, &args.kernel),
            }
        }
        other => bail!("unknown benchmark {other:?}; known: egress, dns, files"),
    }
}

/// How much to measure.
///
/// Consecutive runs of one case on these machines differ by a few percent
/// (the medians jump between two levels), so many short rounds beat a few
/// long ones.
#[derive(Debug, Clone, Copy)]
struct Params {
    rounds: usize,
    iterations: usize,
    /// Measure a release build of `baton` instead of the debug one.
    release: bool,
}

impl Params {
    /// The `baton` binary the benchmark runs.
    fn baton(&self) -> PathBuf {
        let profile = if self.release { "release" } else { "debug" };
        workspace_root().join("target").join(profile).join("baton")
    }
}

/// Builds what the benchmarks run: everything [`crate::build`] builds, and
/// for a release profile an optimized `baton` too.
fn build(params: &Params) -> Result<()> {
    crate::build()?;
    if params.release {
        println!("build: cargo build --release --package agent --bin baton");
        util::run(crate::cargo().args([
            "build",
            "--release",
            "--package",
            "agent",
            "--bin",
            "baton",
        ]))?;
    }
    Ok(())
}

/// Allow rules for other destinations; with the listener's rule the agent
/// policy has 1,000.
const OTHER_RULES: usize = 999;
/// The agent the measured process joins in case (c).
const AGENT: &str = "bench";
/// The nftables table of case (d).
const NFT_TABLE: &str = "baton_bench";
/// The cgroup of case (d), directly below the cgroup v2 root.
const CGROUP_NAME: &str = "baton-bench";
/// Target for (b)/(a): a daemon that holds no agent must be nearly free.
const DAEMON_RATIO_TARGET: f64 = 1.03;

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
}

impl Case {
    const ALL: [Case; 4] = [Case::Baseline, Case::Daemon, Case::Agent, Case::Nftables];

    fn tag(self) -> &'static str {
        match self {
            Case::Baseline => "(a)",
            Case::Daemon => "(b)",
            Case::Agent => "(c)",
            Case::Nftables => "(d)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Baseline => "no Baton",
            Case::Daemon => "Baton running, not in an agent",
            Case::Agent => "in an agent, 1,000 rules (eBPF)",
            Case::Nftables => "no Baton, nftables cgroup set, 1,000 rules",
        }
    }

    fn needs_daemon(self) -> bool {
        matches!(self, Case::Daemon | Case::Agent)
    }
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
    work: WorkDir,
    cgroup: Cgroup,
    /// The cgroup v2 mount, where the daemon attaches.
    cgroup_root: PathBuf,
    nft_script: PathBuf,
    params: Params,
    warnings: Vec<String>,
}

fn egress(params: &Params) -> Result<()> {
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
    let target_listener = Listener::start(&client)?;
    let unlisted_listener = Listener::start(&client)?;
    let target = target_listener.addr.clone();
    let unlisted = unlisted_listener.addr.clone();
    let port: u16 = port_of(&target)?;

    let rules = bench_rules(port);
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    std::fs::write(&policy, policy_yaml(&rules))
        .with_context(|| format!("cannot write {}", policy.display()))?;
    util::output(Command::new(&baton).arg("policy").arg("check").arg(&policy))
        .context("the generated benchmark policy does not compile")?;

    let cgroup_root = cgroup2_root()?;
    let cgroup = Cgroup::create(&cgroup_root)?;
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
        work,
        cgroup,
        cgroup_root,
        nft_script,
        params: *params,
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
    for round in 0..params.rounds {
        let mut measured = Vec::new();
        let mut clean = true;
        // Alternating which half goes first cancels slow drift between
        // the daemon-off and daemon-on cases.
        let mut phases = [false, true];
        if round % 2 == 1 {
            phases.reverse();
        }
        for with_daemon in phases {
            let mut cases: Vec<Case> = Case::ALL
                .iter()
                .copied()
                .filter(|c| c.needs_daemon() == with_daemon)
                .collect();
            if round % 2 == 1 {
                cases.reverse();
            }
            let daemon = if with_daemon {
                Some(Daemon::start(&bench.baton, bench.work.path(), "")?)
            } else {
                None
            };
            clean &= bench.programs_as_expected(with_daemon, round)?;
            for case in cases {
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
    }
    ensure!(
        !clean_rounds.is_empty(),
        "no round ran without foreign programs on the cgroup v2 root: {}",
        bench.warnings.join("; ")
    );

    print!("{}", report(&clean_rounds, params, &bench.warnings));
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Bench {
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
                let outcome = daemon.exec(
                    &self.baton,
                    &self.client,
                    &["--probe".to_string(), self.unlisted.clone()],
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
                daemon.exec_command(&self.baton, &self.client, &args)
            }
            Case::Nftables => {
                if round == 0 {
                    self.check_nftables()?;
                }
                self.cgroup.command(&self.client, &args)
            }
        };
        // Far above the ~30 µs an iteration takes, far below forever.
        let timeout =
            Duration::from_secs(30) + Duration::from_millis(1) * self.params.iterations as u32;
        let sample = parse_sample(&run_client(&mut cmd, timeout)?);
        drop(table);
        sample
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
        Ok(attached == expected)
    }
}

/// Runs bench-connect and returns its standard output, failing after
/// `timeout` rather than hanging on a filtered connect.
fn run_client(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let shown = util::display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {} s", timeout.as_secs());
        }
        // Seldom enough not to compete with the measured process.
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "`{shown}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).with_context(|| format!("`{shown}` printed invalid UTF-8"))
}

/// Runs a `bench-connect --probe` command; its connect gives up after 1 s.
fn probe(cmd: &mut Command) -> Result<String> {
    Ok(run_client(cmd, Duration::from_secs(10))?.trim().to_string())
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

/// The median of a non-empty list; the mean of the middle two for an even
/// count. Nanosecond counts are exact in an `f64`.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
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
    }
    for warning in warnings {
        let _ = writeln!(out, "warning: {warning}");
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
/// to /32 and a mix of port lists, then the rule that allows the listener.
///
/// Disjoint prefixes keep each one's flattened port table far below the
/// 16 rows Baton allows per prefix.
fn bench_rules(listener_port: u16) -> Vec<Rule> {
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
        ports: vec![(listener_port, listener_port)],
        protocol: "tcp",
    });
    rules
}

fn policy_yaml(rules: &[Rule]) -> String {
    let mut yaml = format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
         spec:\n  selector:\n    agent: {AGENT}\n  egress:\n    default: deny\n    allow:\n"
    );
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

fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in {addr:?}"))
}

/// The cgroup v2 mount point.
fn cgroup2_root() -> Result<PathBuf> {
    util::mount_points("cgroup2")?
        .into_iter()
        .next()
        .context("no cgroup v2 hierarchy is mounted")
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

/// The cgroup v2 directory of case (d), removed on drop.
struct Cgroup {
    dir: PathBuf,
    /// Depth below the cgroup v2 root, which is what `socket cgroupv2
    /// level` compares: 1 here. It is not the number of components of the
    /// path nftables is given, which on a hybrid host include the mount's
    /// own `unified/` (level 2 there silently matches nothing).
    level: usize,
}

impl Cgroup {
    fn create(root: &Path) -> Result<Self> {
        let dir = root.join(CGROUP_NAME);
        // Left by an interrupted run; empty, since its processes are gone.
        if dir.exists() {
            std::fs::remove_dir(&dir)
                .with_context(|| format!("cannot remove the stale cgroup {}", dir.display()))?;
        }
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        Ok(Self { dir, level: 1 })
    }

    /// The cgroup as nftables names it: relative to `/sys/fs/cgroup`, so
    /// on a hybrid host it starts with the v2 mount's own folder.
    fn nft_path(&self) -> Result<String> {
        let relative = self.dir.strip_prefix("/sys/fs/cgroup").with_context(|| {
            format!(
                "{} is not below /sys/fs/cgroup, where nftables resolves cgroup paths",
                self.dir.display()
            )
        })?;
        Ok(relative.to_string_lossy().into_owned())
    }

    /// `program args` run from inside the cgroup: the shell moves itself
    /// in, then execs, so every socket the program opens is the cgroup's.
    fn command(&self, program: &Path, args: &[String]) -> Command {
        let mut script = format!(
            "echo $$ > {} && exec {}",
            util::shell_quote(self.dir.join("cgroup.procs")),
            util::shell_quote(program)
        );
        for arg in args {
            script.push(' ');
            script.push_str(&util::shell_quote(arg));
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            eprintln!("bench: cannot remove {}: {error}", self.dir.display());
        }
    }
}

/// A bench-connect listener, killed on drop.
struct Listener {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
}

impl Listener {
    fn start(client: &Path) -> Result<Self> {
        let mut child = Command::new(client)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} --listen", client.display()))?;
        let stdout = child.stdout.take().context("listener stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let mut listener = Self {
            child,
            addr: line.trim().to_string(),
        };
        read.context("cannot read the listener's address")?;
        if listener.addr.is_empty() {
            let status = listener.child.wait()?;
            bail!("the listener exited ({status}) without listening");
        }
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `baton run` with the benchmark policy, stopped on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `baton run` with the policies in `work/policies` and
    /// `config_yaml` as its configuration file.
    fn start(baton: &Path, work: &Path, config_yaml: &str) -> Result<Self> {
        let socket = work.join("baton.sock");
        let stderr = work.join("daemon.stderr");
        // An explicit file, even an empty one, keeps the host's /etc/baton
        // out of it.
        let config = work.join("config.yaml");
        std::fs::write(&config, config_yaml)?;
        let child = Command::new(baton)
            .arg("run")
            .arg("--policy-dir")
            .arg(work.join("policies"))
            .arg("--audit-log")
            .arg(work.join("audit.jsonl"))
            .arg("--control-socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {} run", baton.display()))?;
        let mut daemon = Self {
            child,
            socket,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.socket.exists() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "baton run exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "baton run was not ready within 60 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// User plus system CPU time the daemon has used, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // The command name may hold spaces: the fields after it start at
        // the last `)`; utime and stime are the 14th and 15th fields.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (field(11), field(12)) {
            (Some(utime), Some(stime)) => Ok(utime + stime),
            _ => bail!("unexpected {path}: {stat}"),
        }
    }

    /// Waits until the daemon's start-up work is over: until it uses at
    /// most [`SETTLED_TICKS`] clock ticks of CPU in one second, or `limit`
    /// has passed. Under QEMU without KVM it goes on working for seconds
    /// after it opens its socket, which is not the cost of a running
    /// daemon. Returns how long that took and the last second's ticks.
    fn settle(&self, limit: Duration) -> Result<(Duration, u64)> {
        let started = Instant::now();
        loop {
            let before = self.cpu_ticks()?;
            thread::sleep(Duration::from_secs(1));
            let ticks = self.cpu_ticks()? - before;
            if ticks <= SETTLED_TICKS || started.elapsed() >= limit {
                return Ok((started.elapsed(), ticks));
            }
        }
    }

    /// `baton exec` into the benchmark agent, running `program args`.
    fn exec_command(&self, baton: &Path, program: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new(baton);
        cmd.args(["exec", "--agent", AGENT, "--control-socket"])
            .arg(&self.socket)
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `program args` inside the agent and returns its trimmed output.
    fn exec(&self, baton: &Path, program: &Path, args: &[String]) -> Result<String> {
        probe(&mut self.exec_command(baton, program, args))
    }

    /// Stops the daemon with SIGTERM, as a service manager would, so it
    /// detaches its programs before the next no-Baton case.
    fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // No libc in xtask: kill(1) sends the signal.
        util::output(
            Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string()),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("baton run did not stop within 10 s of SIGTERM; killed it")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            eprintln!("bench: {error:#}");
        }
    }
}

/// A private working directory (policies, audit log, socket), removed on
/// drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("baton-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        util::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------ dns and files

/// Latencies one run of bench-dns or bench-open reports, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    median: u64,
    p99: u64,
}

/// Parses the JSON line `tool` printed.
fn parse_timing(tool: &str, output: &str) -> Result<(Timing, Value)> {
    let value: Value = serde_json::from_str(output.trim())
        .with_context(|| format!("{tool} printed {output:?}, not JSON"))?;
    let timing = timing_of(&value).with_context(|| format!("{tool}'s report: {output}"))?;
    Ok((timing, value))
}

fn timing_of(value: &Value) -> Result<Timing> {
    let field = |name: &str| {
        value[name]
            .as_u64()
            .with_context(|| format!("no {name} in {value}"))
    };
    Ok(Timing {
        median: field("median_ns")?,
        p99: field("p99_ns")?,
    })
}

/// One case of the dns or files benchmark against its baseline, over
/// every round; see [`summarize`] for why each round is paired with its
/// own baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Paired {
    /// Medians over the rounds of each round's figure, ns.
    median: f64,
    p99: f64,
    /// Median over the rounds of (median / that round's baseline median).
    ratio: f64,
    /// Median over the rounds of (median - that round's baseline median), ns.
    cost: f64,
    /// Median over the rounds of (p99 - that round's baseline p99), ns.
    p99_cost: f64,
}

/// Summarizes `case` against `baseline` over the rounds that measured both.
fn pair<C: Copy + PartialEq>(rounds: &[Vec<(C, Timing)>], case: C, baseline: C) -> Option<Paired> {
    let of = |round: &[(C, Timing)], c: C| round.iter().find(|(x, _)| *x == c).map(|(_, t)| *t);
    let pairs: Vec<(Timing, Timing)> = rounds
        .iter()
        .filter_map(|round| Some((of(round, case)?, of(round, baseline)?)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let each = |f: &dyn Fn(&(Timing, Timing)) -> f64| median(pairs.iter().map(f));
    Some(Paired {
        median: each(&|(s, _)| s.median as f64),
        p99: each(&|(s, _)| s.p99 as f64),
        ratio: each(&|(s, a)| s.median as f64 / a.median as f64),
        cost: each(&|(s, a)| s.median as f64 - a.median as f64),
        p99_cost: each(&|(s, a)| s.p99 as f64 - a.p99 as f64),
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

// -------------------------------------------------------------------- dns

/// The name every measured query asks for, and what dnsmasq answers.
const DNS_NAME: &str = "allowed.test";
const DNS_ANSWER: &str = "127.0.0.2";
/// A name dnsmasq answers but the agent's policy does not allow: the proxy
/// must refuse it, which proves the queries go through the proxy.
const DNS_REFUSED_NAME: &str = "blocked.test";
/// Where the agent sends its queries: the kernel sends an agent's port-53
/// traffic to its proxy whatever the address.
const DNS_AGENT_SERVER: &str = "127.0.0.1:53";
/// `REFUSED`.
const RCODE_REFUSED: u8 = 5;

/// One measured configuration of the dns benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsCase {
    /// (a) straight to dnsmasq, from a process in no agent.
    Direct,
    /// (b) from inside an agent, through the kernel redirect and the proxy.
    Proxied,
}

impl DnsCase {
    const ALL: [DnsCase; 2] = [DnsCase::Direct, DnsCase::Proxied];

    fn tag(self) -> &'static str {
        match self {
            DnsCase::Direct => "(a)",
            DnsCase::Proxied => "(b)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            DnsCase::Direct => "direct to dnsmasq, in no agent",
            DnsCase::Proxied => "in an agent, through Baton's DNS proxy",
        }
    }
}

fn dns(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the dns benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let root = workspace_root();
    let client = root.join("target/debug/bench-dns");
    let baton = params.baton();

    let work = WorkDir::create()?;
    let dnsmasq = Dnsmasq::start(&[(DNS_NAME, DNS_ANSWER), (DNS_REFUSED_NAME, "127.0.0.3")])?;
    let direct = format!("127.0.0.1:{}", dnsmasq.port);
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    std::fs::write(&policy, dns_policy_yaml())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    util::output(Command::new(&baton).arg("policy").arg("check").arg(&policy))
        .context("the generated benchmark policy does not compile")?;
    // The proxy answers from this dnsmasq only, never the host's resolver.
    let daemon = Daemon::start(&baton, work.path(), &dns_config_yaml(dnsmasq.port))?;

    let expected = format!("rcode=0 a={DNS_ANSWER}");
    let outside = probe(Command::new(&client).args(["--probe", &direct, DNS_NAME]))?;
    ensure!(
        outside == expected,
        "dnsmasq on {direct} answered {DNS_NAME} with {outside:?}, not {expected:?}"
    );
    let through = daemon.exec(
        &baton,
        &client,
        &["--probe".into(), DNS_AGENT_SERVER.into(), DNS_NAME.into()],
    )?;
    ensure!(
        through == expected,
        "inside the agent, {DNS_NAME} via {DNS_AGENT_SERVER} gave {through:?}, not {expected:?}"
    );
    let refused = daemon.exec(
        &baton,
        &client,
        &[
            "--probe".into(),
            DNS_AGENT_SERVER.into(),
            DNS_REFUSED_NAME.into(),
        ],
    )?;
    ensure!(
        refused == format!("rcode={RCODE_REFUSED}"),
        "inside the agent, {DNS_REFUSED_NAME} gave {refused:?}, not REFUSED: the queries do not \
         go through the proxy"
    );
    println!(
        "bench: sanity: inside the agent, {DNS_AGENT_SERVER} answers {DNS_NAME} with {DNS_ANSWER} \
         and refuses {DNS_REFUSED_NAME}, which dnsmasq itself would answer: the proxy is in the path"
    );
    println!(
        "bench: dns: {} rounds x {} cases x {} sequential UDP A queries for {DNS_NAME}",
        params.rounds,
        DnsCase::ALL.len(),
        params.iterations
    );

    let iterations = params.iterations.to_string();
    // Every query waits at most 2 s; a healthy one takes well under 1 ms.
    let timeout = Duration::from_secs(30) + Duration::from_millis(2) * params.iterations as u32;
    let mut rounds: Vec<Vec<(DnsCase, Timing)>> = Vec::new();
    for round in 0..params.rounds {
        let mut cases = DnsCase::ALL.to_vec();
        if round % 2 == 1 {
            cases.reverse();
        }
        let mut measured = Vec::new();
        for case in cases {
            let mut cmd = match case {
                DnsCase::Direct => {
                    let mut cmd = Command::new(&client);
                    cmd.args([direct.as_str(), &iterations, DNS_NAME]);
                    cmd
                }
                DnsCase::Proxied => daemon.exec_command(
                    &baton,
                    &client,
                    &[DNS_AGENT_SERVER.into(), iterations.clone(), DNS_NAME.into()],
                ),
            };
            let (timing, _) = parse_timing("bench-dns", &run_client(&mut cmd, timeout)?)?;
            println!(
                "bench: round {:>width$}/{} {} {:<40} p50 {:>7.1} us  p99 {:>7.1} us",
                round + 1,
                params.rounds,
                case.tag(),
                case.label(),
                timing.median as f64 / 1e3,
                timing.p99 as f64 / 1e3,
                width = params.rounds.to_string().len(),
            );
            measured.push((case, timing));
        }
        rounds.push(measured);
    }
    daemon.stop()?;
    drop(dnsmasq);

    print!("{}", dns_report(&rounds, params));
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dns_report(rounds: &[Vec<(DnsCase, Timing)>], params: &Params) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ndns: one UDP A query for {DNS_NAME} at a time, send to reply; {} rounds of {} queries \
         per case\n\
         p50, p99: median over the rounds of each round's figure, us\n\
         vs (a): median over the rounds of (case p50 / that round's (a) p50)\n",
        rounds.len(),
        params.iterations
    );
    let _ = writeln!(
        out,
        "{:<4} {:<40} {:>9} {:>9} {:>8}",
        "case", "", "p50 us", "p99 us", "vs (a)"
    );
    let summaries: Vec<(DnsCase, Paired)> = DnsCase::ALL
        .iter()
        .filter_map(|&c| Some((c, pair(rounds, c, DnsCase::Direct)?)))
        .collect();
    for (case, s) in &summaries {
        let _ = writeln!(
            out,
            "{:<4} {:<40} {:>9.1} {:>9.1} {:>8.2}",
            case.tag(),
            case.label(),
            s.median / 1e3,
            s.p99 / 1e3,
            s.ratio
        );
    }
    if let Some((_, b)) = summaries.iter().find(|(c, _)| *c == DnsCase::Proxied) {
        let _ = writeln!(
            out,
            "\nadded by the proxy per query, (b) - (a), median over the rounds: \
             p50 {:+.1} us, p99 {:+.1} us",
            b.cost / 1e3,
            b.p99_cost / 1e3
        );
    }
    let _ = writeln!(out, "baton: {}", params.baton().display());
    out
}

fn dns_policy_yaml() -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
         spec:\n  selector:\n    agent: {AGENT}\n  egress:\n    default: deny\n    allow:\n\
         \x20     - domain: {DNS_NAME}\n        ports: [443]\n        protocol: tcp\n"
    )
}

fn dns_config_yaml(upstream_port: u16) -> String {
    format!(
        "dns:\n  upstreams: [\"127.0.0.1:{upstream_port}\"]\n  minTtlSeconds: 1\n  \
         maxTtlSeconds: 60\n  timeoutMs: 2000\n"
    )
}

/// dnsmasq on 127.0.0.1, answering only from its `--address` entries and
/// never forwarding anywhere; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(addresses: &[(&str, &str)]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port on 127.0.0.1")?
            .port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file",
            "--local-ttl=60",
        ])
        .arg(format!("--port={port}"));
        for (name, addr) in addresses {
            cmd.arg(format!("--address=/{name}/{addr}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq (Debian dnsmasq-base; cargo xtask setup installs it)")?;
        let mut dnsmasq = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = dnsmasq.child.try_wait()? {
                bail!("dnsmasq exited ({status}) before it listened on port {port}");
            }
            ensure!(
                Instant::now() < deadline,
                "dnsmasq did not listen on 127.0.0.1:{port} within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(dnsmasq)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ files

/// Defaults of the files benchmark: QEMU without KVM runs everything
/// some ten times slower, and the whole run should stay near five minutes.
const FILES_ROUNDS: u32 = 4;
const FILES_ITERATIONS: u32 = 20_000;
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
/// A daemon that uses at most this many clock ticks of CPU in a second
/// (15% of a CPU at the usual 100 per second) has finished starting: in
/// the VM, once started, it polls its breakers every 10 ms, which costs
/// about 10% of a CPU under QEMU without KVM.
const SETTLED_TICKS: u64 = 15;
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

/// `cargo xtask bench files`: boots the VM and runs [`files_in_vm`] in it.
fn files(params: &Params, kernel: &str) -> Result<()> {
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
fn files_in_vm(results: &Path, params: &Params) -> Result<()> {
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
        let loaded = file_open_programs()?.len();
        ensure!(
            loaded == usize::from(with_daemon),
            "round {}: {loaded} LSM programs named {FILE_OPEN_PROGRAM} loaded where {} expected",
            round + 1,
            usize::from(with_daemon)
        );
        let daemon_here = daemon.as_ref().filter(|_| with_daemon);
        // Each case twice, the second time in reverse order (ABBA), so
        // that one daemon start serves more measurements.
        let order: Vec<FileCase> = cases.iter().chain(cases.iter().rev()).copied().collect();
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

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_second() -> u64 {
    util::probe(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The mean of the timings of a case's runs in one round.
fn repeated_timing(runs: &Value) -> Result<Timing> {
    let timings: Vec<Timing> = runs
        .as_array()
        .context("a case's runs are not a list")?
        .iter()
        .map(timing_of)
        .collect::<Result<_>>()?;
    ensure!(!timings.is_empty(), "a case has no runs");
    let mean = |f: fn(&Timing) -> u64| {
        (timings.iter().map(f).sum::<u64>() as f64 / timings.len() as f64).round() as u64
    };
    Ok(Timing {
        median: mean(|t| t.median),
        p99: mean(|t| t.p99),
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
    fn rules_are_disjoint_and_number_one_thousand() {
        let rules = bench_rules(4242);
        assert_eq!(rules.len(), 1_000);
        let mut cidrs: Vec<&str> = rules.iter().map(|r| r.cidr.as_str()).collect();
        cidrs.sort_unstable();
        cidrs.dedup();
        assert_eq!(cidrs.len(), 1_000);
        assert_eq!(rules[999].cidr, "127.0.0.1/32");
    }

    #[test]
    fn policy_lists_ports_and_ranges() {
        let yaml = policy_yaml(&bench_rules(4242));
        assert!(yaml.contains("      - cidr: 10.0.0.0/18\n        protocol: any\n"));
        assert!(yaml.contains("        ports: [80, 443]\n"));
        assert!(yaml.contains("        ports: [\"8000-8099\"]\n"));
        assert!(yaml.contains("      - cidr: 127.0.0.1/32\n        ports: [4242]\n"));
    }

    #[test]
    fn medians_of_rounds() {
        assert_eq!(median([5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median([7.0]), 7.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
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
    #[test]
    fn pairs_each_case_with_its_own_rounds_baseline() {
        let t = |median, p99| Timing { median, p99 };
        let rounds = vec![
            vec![
                (DnsCase::Direct, t(100, 200)),
                (DnsCase::Proxied, t(150, 400)),
            ],
            vec![
                (DnsCase::Proxied, t(300, 800)),
                (DnsCase::Direct, t(200, 400)),
            ],
            vec![(DnsCase::Direct, t(100, 200))],
        ];
        let proxied = pair(&rounds, DnsCase::Proxied, DnsCase::Direct).unwrap();
        assert_eq!(proxied.ratio, 1.5);
        assert_eq!(proxied.cost, 75.0);
        assert_eq!(proxied.p99_cost, 300.0);
        assert_eq!(proxied.median, 225.0);
        let direct = pair(&rounds, DnsCase::Direct, DnsCase::Direct).unwrap();
        assert_eq!(direct.ratio, 1.0);
        assert_eq!(direct.median, 100.0);
    }

    #[test]
    fn dns_policy_and_config_compile_to_what_the_daemon_reads() {
        let policy = dns_policy_yaml();
        assert!(
            policy.contains("    allow:\n      - domain: allowed.test\n        ports: [443]\n")
        );
        assert_eq!(
            dns_config_yaml(5353),
            "dns:\n  upstreams: [\"127.0.0.1:5353\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: 60\n  timeoutMs: 2000\n"
        );
    }

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

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
//! - `breakers`: from the event that trips a breaker to the first call it
//!   denies, against the duration of one connect.
//! - `reload`: parsing, compiling and swapping in 10,000 rules, against a
//!   tiny set, and the daemon's memory before and after.
//! - `audit`: sustained events per second from the kernel to the
//!   hash-chained log with zero loss, and the daemon's CPU and memory.
//!
//! The last three have absolute targets from their issues (10 ms, 200 ms,
//! 200,000 events/s); their baselines say what the machine did meanwhile.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{util, workspace_root};

mod audit;
mod breakers;
mod dns;
mod egress;
mod files;
mod files_host;
mod idle;
mod programs;
mod reload;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `egress` (the cost Baton adds to `connect()`), `dns`
    /// (the latency the DNS proxy adds to a query), `files` (the cost
    /// Baton adds to `open()`, measured in a test VM), `breakers` (from
    /// the event that trips a breaker to the first call it denies),
    /// `reload` (swapping in 10,000 rules), `audit` (events per second
    /// into the audit log with zero loss) or `idle` (the CPU a daemon with
    /// 1,000 rules uses when no agent does anything).
    pub which: String,
    /// Rounds; every case is measured once per round (files: four times,
    /// twice for the 10,000-rule and depth cases), and the reported figure
    /// is the median over the rounds [default: egress
    /// 20, dns 20, files 6; breakers: 200 trips; reload: 100 reloads of
    /// each size; audit: 1 pass over the rates; idle: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Iterations per case and round, after a warm-up [default: egress
    /// 10,000 connects, dns 2,000 queries, files 20,000 opens (half as
    /// many for the 10,000-rule and depth cases); breakers:
    /// denied connects that trip the breaker, 5; reload: rules in the big
    /// sets, 10,000; audit: seconds of load per rate, 3; idle: seconds
    /// measured, 60].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: Option<u32>,
    /// Build of `baton` to measure: `release` (`cargo build --release`) or
    /// `debug`. The kernel programs are optimized either way; the daemon's
    /// own work (the DNS proxy, its start-up and background work) is much
    /// slower in a debug build [default: egress debug, the others
    /// release].
    #[arg(long, value_parser = ["debug", "release"])]
    pub profile: Option<String>,
    /// Test kernel the `files` benchmark boots.
    #[arg(long, value_parser = ["6.1", "6.12"], default_value = "6.12")]
    pub kernel: String,
    /// `files` only: measure the fallbacks of a kernel without BPF LSM
    /// (Landlock for `baton exec` agents, fanotify for the others) on this
    /// machine instead of BPF LSM in a VM.
    #[arg(long)]
    pub host: bool,
    /// Run the `files` cases in this machine and write the results to DIR;
    /// `cargo xtask bench files` passes it to itself inside the VM.
    #[arg(long, hide = true, value_name = "DIR")]
    pub in_vm: Option<PathBuf>,
    /// Measure this `baton` binary instead of the one the benchmark builds,
    /// e.g. a copy of an earlier build for a before-and-after comparison in
    /// one sitting (not for `files`, which builds its own VM image).
    #[arg(long, value_name = "PATH")]
    pub baton: Option<PathBuf>,
}

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(baton) = &args.baton {
        if args.which == "files" {
            bail!("--baton does not apply to `files`: its VM image carries the baton it builds");
        }
        if !baton.is_file() {
            bail!("--baton {}: no such file", baton.display());
        }
    }
    let params = |rounds: u32, iterations: u32, release: bool| Params {
        rounds: args.rounds.unwrap_or(rounds) as usize,
        iterations: args.iterations.unwrap_or(iterations) as usize,
        release: args.profile.as_deref().map_or(release, |p| p == "release"),
        baton: args.baton.clone(),
    };
    match args.which.as_str() {
        "egress" => egress::run(&params(20, 10_000, false)),
        "dns" => dns::run(&params(20, 2_000, true)),
        "breakers" => breakers::run(&params(200, 5, true)),
        "reload" => reload::run(&params(100, 10_000, true)),
        "audit" => audit::run(&params(1, 3, true)),
        "idle" => idle::run(&params(1, 60, true)),
        "files" => {
            if args.host {
                return files_host::run(&params(files_host::ROUNDS, files_host::ITERATIONS, true));
            }
            let params = params(files::ROUNDS, files::ITERATIONS, true);
            match &args.in_vm {
                Some(results) => files::run_in_vm(results, &params),
                None => files::run(&params, &args.kernel),
            }
        }
        other => {
            bail!(
                "unknown benchmark {other:?}; known: egress, dns, files, breakers, reload, audit, idle"
            )
        }
    }
}

/// How much to measure.
///
/// Consecutive runs of one case on these machines differ by a few percent
/// (the medians jump between two levels), so many short rounds beat a few
/// long ones.
#[derive(Debug, Clone)]
struct Params {
    rounds: usize,
    iterations: usize,
    /// Measure a release build of `baton` instead of the debug one.
    release: bool,
    /// A `baton` binary to measure instead of a build.
    baton: Option<PathBuf>,
}

impl Params {
    /// The `baton` binary the benchmark runs.
    fn baton(&self) -> PathBuf {
        if let Some(baton) = &self.baton {
            return baton.clone();
        }
        let profile = if self.release { "release" } else { "debug" };
        workspace_root().join("target").join(profile).join("baton")
    }
}

/// Builds what the benchmarks run: everything [`crate::build`] builds, and
/// for a release profile an optimized `baton` too (unless `--baton` names
/// the binary to measure).
fn build(params: &Params) -> Result<()> {
    crate::build()?;
    if params.release && params.baton.is_none() {
        crate::build_release(&[("agent", "baton")])?;
    }
    Ok(())
}

/// The agent the measured process joins in case (c).
const AGENT: &str = "bench";

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

/// The port of `ADDR:PORT`.
fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in {addr:?}"))
}

/// Nearest-rank percentile `pct` (0-100) of a non-empty list.
fn percentile(values: impl IntoIterator<Item = f64>, pct: usize) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_unstable_by(f64::total_cmp);
    let rank = (values.len() * pct).div_ceil(100).max(1);
    values[rank - 1]
}

/// A bench-connect listener, killed on drop.
struct Listener {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
}

impl Listener {
    fn start(client: &Path) -> Result<Self> {
        Self::start_as(client, "--listen")
    }

    /// Starts `client MODE 127.0.0.1:0` (`--listen` or `--sink`).
    fn start_as(client: &Path, mode: &str) -> Result<Self> {
        Self::start_with(client, mode, &[])
    }

    /// As [`Listener::start_as`], with more environment variables.
    fn start_with(client: &Path, mode: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(client)
            .args([mode, "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} {mode}", client.display()))?;
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
/// The descriptor limit benchmarks start the daemon with: the unit's.
const DAEMON_NOFILE: u64 = 65_536;

struct Daemon {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
    baton: PathBuf,
    /// Pins of its own, removed when it stops, so that no benchmark case
    /// inherits another's programs.
    pin_dir: PathBuf,
    state_dir: PathBuf,
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
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/baton-bench-{}", std::process::id()));
        let state_dir = work.join("state");
        let mut command = Command::new(baton);
        // The descriptor limit of the installed unit (LimitNOFILE in
        // deploy/systemd/baton.service): the daemon holds a descriptor per
        // rule object, and the shell that starts a benchmark often has a
        // lower one (in the test VM, the kernel's default of 4,096).
        // A shell whose hard limit is lower and that lacks CAP_SYS_RESOURCE
        // (some sandboxes) cannot raise it: the daemon then gets that hard
        // limit and caps its rule objects to fit, as it would in production.
        // SAFETY: `getrlimit` and `setrlimit` are async-signal-safe, and
        // nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                use nix::sys::resource::{Resource, getrlimit, setrlimit};
                if setrlimit(Resource::RLIMIT_NOFILE, DAEMON_NOFILE, DAEMON_NOFILE).is_ok() {
                    return Ok(());
                }
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, hard.min(DAEMON_NOFILE), hard)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command
            .arg("run")
            .arg("--policy-dir")
            .arg(work.join("policies"))
            .arg("--audit-log")
            .arg(work.join("audit.jsonl"))
            .arg("--control-socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--cleanup-on-exit")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {} run", baton.display()))?;
        let mut daemon = Self {
            child,
            socket,
            stderr,
            baton: baton.to_path_buf(),
            pin_dir,
            state_dir,
        };
        // Under QEMU without KVM on 6.1, loading and verifying the programs
        // alone takes some 50 s; the files benchmark loads 11,000 rules too.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !daemon.socket.exists() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "baton run exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "baton run was not ready within 120 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident memory now and at its peak, in KiB
    /// (`VmRSS`, `VmHWM`).
    fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// `baton status --json`.
    fn status(&self, baton: &Path) -> Result<Value> {
        let text = util::output(
            Command::new(baton)
                .args(["status", "--json", "--control-socket"])
                .arg(&self.socket),
        )?;
        serde_json::from_str(&text).context("baton status --json printed no JSON")
    }

    /// `baton ARGS --control-socket SOCKET`.
    fn command(&self, baton: &Path, args: &[&str]) -> Result<String> {
        util::output(
            Command::new(baton)
                .args(args)
                .arg("--control-socket")
                .arg(&self.socket),
        )
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
        self.exec_command_in(AGENT, baton, program, args)
    }

    /// `baton exec` into `agent`, running `program args`.
    fn exec_command_in(
        &self,
        agent: &str,
        baton: &Path,
        program: &Path,
        args: &[String],
    ) -> Command {
        let mut cmd = Command::new(baton);
        cmd.args(["exec", "--agent", agent, "--control-socket"])
            .arg(&self.socket)
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `program args` inside the agent and returns its trimmed output.
    fn exec(&self, baton: &Path, program: &Path, args: &[String]) -> Result<String> {
        self.exec_in(AGENT, baton, program, args)
    }

    /// Runs `program args` inside `agent` and returns its trimmed output.
    fn exec_in(
        &self,
        agent: &str,
        baton: &Path,
        program: &Path,
        args: &[String],
    ) -> Result<String> {
        probe(&mut self.exec_command_in(agent, baton, program, args))
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
        // A daemon that had to be killed left its programs attached.
        if self.pin_dir.exists() {
            let _ = Command::new(&self.baton)
                .arg("uninstall")
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .arg("--state-dir")
                .arg(&self.state_dir)
                .stdout(Stdio::null())
                .status();
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
/// every round; see `egress::summarize` for why each round is paired with its
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

/// A daemon that uses at most this many clock ticks of CPU in a second
/// (15% of a CPU at the usual 100 per second) has finished starting: in
/// the VM, once started, it polls its breakers every 10 ms, which costs
/// about 10% of a CPU under QEMU without KVM.
const SETTLED_TICKS: u64 = 15;

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_second() -> u64 {
    util::probe(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The daemon-off and daemon-on halves of round `round`, in the order they
/// run: reversed every other round (ABBA), which cancels slow drift between
/// the two.
fn halves(round: usize) -> [bool; 2] {
    if round % 2 == 1 {
        [true, false]
    } else {
        [false, true]
    }
}

/// The cases of one half of round `round`, reversed every other round as
/// the halves are.
fn half_cases<C: Copy>(
    round: usize,
    cases: &[C],
    with_daemon: bool,
    needs_daemon: impl Fn(C) -> bool,
) -> Vec<C> {
    let mut half: Vec<C> = cases
        .iter()
        .copied()
        .filter(|case| needs_daemon(*case) == with_daemon)
        .collect();
    if round % 2 == 1 {
        half.reverse();
    }
    half
}

/// The cgroup v2 mount point.
fn cgroup2_root() -> Result<PathBuf> {
    util::mount_points("cgroup2")?
        .into_iter()
        .next()
        .context("no cgroup v2 hierarchy is mounted")
}

/// A cgroup v2 directory directly below the root, made for a benchmark
/// and removed on drop.
struct Cgroup {
    dir: PathBuf,
    /// Depth below the cgroup v2 root, which is what `socket cgroupv2
    /// level` compares: 1 here. It is not the number of components of the
    /// path nftables is given, which on a hybrid host include the mount's
    /// own `unified/` (level 2 there silently matches nothing).
    level: usize,
}

impl Cgroup {
    fn create(root: &Path, name: &str) -> Result<Self> {
        let dir = root.join(name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_their_halves_and_cases() {
        let cases = [1, 2, 3, 4];
        let on = |case: i32| case % 2 == 0;
        assert_eq!(halves(0), [false, true]);
        assert_eq!(halves(1), [true, false]);
        assert_eq!(half_cases(0, &cases, true, on), vec![2, 4]);
        assert_eq!(half_cases(1, &cases, true, on), vec![4, 2]);
        assert_eq!(half_cases(2, &cases, false, on), vec![1, 3]);
    }

    #[test]
    fn medians_of_rounds() {
        assert_eq!(median([5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median([7.0]), 7.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(values.iter().copied(), 50), 100.0);
        assert_eq!(percentile(values.iter().copied(), 99), 198.0);
        assert_eq!(percentile([7.0], 99), 7.0);
    }
}

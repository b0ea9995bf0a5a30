//! `cargo xtask soak`: a mixed hostile load against a real daemon for a
//! while, with a prober agent that checks enforcement the whole time.
//!
//! At once, for the whole duration:
//! - a prober agent connects to an allowed and a denied port in a loop;
//! - a flooder agent floods a denied port with connects;
//! - `nobody` holds many idle connections to the control socket and sends
//!   it endless lines;
//! - a `nobody` agent makes bursts of user and network namespaces, each
//!   sending one DNS query (one proxy per namespace in the daemon);
//! - policies are rewritten (reloads) every few seconds;
//! - the daemon is killed with SIGKILL every minute and restarted; the
//!   restart adopts the pins.
//!
//! It reports leaks (a denied connect that succeeded, at any time), misses
//! (an allowed connect that failed outside the windows around a kill),
//! the daemon's memory and descriptors after each start and at the end,
//! and the audit records against the kernel's counters.
//!
//! On the host the prober only connects: BPF LSM does not load there. With
//! `--kernel 6.1` or `--kernel 6.12` the whole soak runs inside that test
//! kernel (booted with BPF LSM under QEMU, as the VM suite is), and the
//! prober also opens an allowed and a denied file every round.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{util, workspace_root};

/// Arguments of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the load runs: seconds, or with a unit (`90s`, `2m`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seconds between SIGKILLs of the daemon.
    #[arg(long, default_value_t = 60)]
    pub kill_every: u64,
    /// Idle control-socket connections `nobody` holds.
    #[arg(long, default_value_t = 1000)]
    pub held_connections: usize,
    /// Run inside this test kernel (`6.1` or `6.12`) with BPF LSM, where
    /// the prober also opens files.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Set on the command run inside the VM: the host already set up and
    /// built everything.
    #[arg(long, hide = true)]
    pub in_vm: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("{text:?} is not a duration like 120, 90s or 2m"))
}

/// Unprivileged processes run as this uid and gid.
const NOBODY: &str = "65534";
/// Namespaces per burst, and the pause between bursts.
const NAMESPACES_PER_BURST: u32 = 50;
const BURST_PAUSE: Duration = Duration::from_secs(10);
/// Policy rewrites, one every this often.
const RELOAD_EVERY: Duration = Duration::from_secs(7);
/// Around a kill, from the SIGKILL to this long after the restart is ready,
/// an allowed connect that fails is not counted as a miss.
const KILL_WINDOW_GRACE: Duration = Duration::from_secs(2);
/// Resources must come back within this fraction of their start.
const RESOURCE_TOLERANCE: f64 = 0.10;
/// How long the soak waits, after the load, for the daemon to write what
/// the ring still holds.
const SETTLE_PATIENCE: Duration = Duration::from_secs(600);

/// Runs the soak and prints the report; fails if a target is missed.
pub fn run(args: &SoakArgs) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the soak starts baton run and needs root"
    );
    if let Some(kernel) = &args.kernel {
        return run_in_kernel(args, kernel);
    }
    if !args.in_vm {
        crate::setup::setup(&crate::setup::SetupOptions { vm: false })?;
        build_release()?;
    }
    let soak = Soak::prepare(args)?;
    soak.run(args)
}

/// Builds the daemon and the load generators as deployed.
fn build_release() -> Result<()> {
    crate::build_release(&[
        ("agent", "baton"),
        ("baton-tests", "soak-load"),
        ("baton-tests", "bench-connect"),
    ])
}

/// Boots the test kernel `name` and runs the soak inside it, with file
/// opens probed; the report is printed from inside the VM.
fn run_in_kernel(args: &SoakArgs, name: &str) -> Result<()> {
    let kit = crate::setup::setup(&crate::setup::SetupOptions { vm: true })?;
    crate::build()?;
    build_release()?;
    let kernel = kit
        .kernels
        .iter()
        .find(|k| k.name == name)
        .with_context(|| {
            let names: Vec<&str> = kit.kernels.iter().map(|k| k.name.as_str()).collect();
            format!("no test kernel {name:?}; the kit has {names:?}")
        })?;
    // Not current_exe(): the build above may have replaced this binary, and
    // the guest sees only the file system.
    let xtask = workspace_root().join("target/debug/xtask");
    let command = format!(
        "cd {} && {} soak --in-vm --duration {}s --kill-every {} --held-connections {}\n",
        util::shell_quote(workspace_root()),
        util::shell_quote(&xtask),
        args.duration.as_secs(),
        args.kill_every,
        args.held_connections
    );
    let outcome = crate::vm::run_in_vm(&kit, kernel, &command, &[])?;
    ensure!(
        outcome.exit_code == 0,
        "the soak in the {name} VM failed or missed a target (exit {}); console: {}",
        outcome.exit_code,
        outcome.log.display()
    );
    Ok(())
}

/// Processes killed (and reaped) on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn push(&mut self, child: Child) {
        self.0.push(child);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One daemon start: when it was ready, and its resources then and at the
/// end of its life.
#[derive(Debug, Clone)]
struct Incarnation {
    pid: u32,
    killed_at_ms: Option<u64>,
    ready_at_ms: u64,
    start: Resources,
    end: Option<Resources>,
}

#[derive(Debug, Clone, Copy)]
struct Resources {
    rss_kib: u64,
    fds: u64,
}

impl Resources {
    fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("daemon {pid} is gone"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .context("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        Ok(Self { rss_kib, fds })
    }
}

struct Soak {
    work: PathBuf,
    baton: PathBuf,
    load: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    socket: PathBuf,
    allowed: String,
    denied: String,
    /// A file the prober may open and one it may not, when BPF LSM
    /// enforces file rules (inside a test kernel).
    files: Option<(PathBuf, PathBuf)>,
    /// The allowed and denied listeners, stopped with the soak.
    _listeners: Children,
}

impl Soak {
    fn prepare(args: &SoakArgs) -> Result<Self> {
        // Release binaries, as deployed: the debug build decodes and writes
        // events several times slower, which an emulated VM multiplies.
        let target = workspace_root().join("target/release");
        let work = std::env::temp_dir().join(format!("baton-soak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        util::create_dir_all(&work.join("policies"))?;
        // `nobody` must reach the control socket and the load binary.
        util::run(Command::new("chmod").arg("755").arg(&work))?;
        let load = work.join("soak-load");
        std::fs::copy(target.join("soak-load"), &load)?;
        let mut listeners = Children::default();
        let bench_connect = target.join("bench-connect");
        let mut listen = || -> Result<String> {
            let mut child = Command::new(&bench_connect)
                .args(["--listen", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("listener stdout")?).read_line(&mut line)?;
            listeners.push(child);
            ensure!(!line.trim().is_empty(), "a listener did not start");
            Ok(line.trim().to_string())
        };
        let allowed = listen()?;
        let denied = listen()?;
        let files = if args.in_vm {
            let denied_dir = work.join("files/denied");
            util::create_dir_all(&denied_dir)?;
            let allowed_file = work.join("files/allowed.txt");
            let denied_file = denied_dir.join("secret.txt");
            std::fs::write(&allowed_file, "allowed")?;
            std::fs::write(&denied_file, "secret")?;
            Some((allowed_file, denied_file))
        } else {
            None
        };
        println!(
            "soak: {} s of load, daemon killed every {} s, {} held connections; allowed {allowed}, denied {denied}",
            args.duration.as_secs(),
            args.kill_every,
            args.held_connections
        );
        Ok(Self {
            baton: target.join("baton"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/baton-soak-{}", std::process::id())),
            state_dir: work.join("state"),
            socket: work.join("baton.sock"),
            work,
            load,
            allowed,
            denied,
            files,
            _listeners: listeners,
        })
    }

    fn write_policies(&self, variant: u64) -> Result<()> {
        let allowed_port = self.allowed.rsplit_once(':').map_or("0", |(_, p)| p);
        let policy = |name: &str, egress: &str| {
            format!(
                "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    agent: {name}\n  egress:\n{egress}"
            )
        };
        let prober_files = self.files.as_ref().map_or_else(String::new, |(_, denied)| {
            let dir = denied.parent().unwrap_or(denied);
            format!("  files:\n    deny: [{}]\n", dir.display())
        });
        let files = [
            (
                "prober.yaml",
                policy(
                    "soak-prober",
                    &format!(
                        "    default: deny\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{allowed_port}]\n        protocol: tcp\n{prober_files}"
                    ),
                ),
            ),
            (
                "flooder.yaml",
                policy("soak-flooder", "    default: deny\n"),
            ),
            (
                "namespaces.yaml",
                policy(
                    "soak-namespaces",
                    // Its bursts make user and network namespaces, which
                    // BPF LSM denies to agents by default.
                    "    default: deny\n    allow:\n      - domain: soak.test\n        ports: [443]\n  process:\n    namespaces: allow\n",
                ),
            ),
            // Rewritten with a different rule each time: a real reload.
            (
                "reloaded.yaml",
                policy(
                    "soak-reloaded",
                    &format!(
                        "    default: deny\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{}]\n",
                        10_000 + variant % 1000
                    ),
                ),
            ),
        ];
        for (name, text) in files {
            util::write_atomic(&self.work.join("policies").join(name), text)?;
        }
        Ok(())
    }

    fn start_daemon(&self) -> Result<Child> {
        let config = self.work.join("config.yaml");
        // The proxy's upstream is a loopback port nothing listens on: the
        // namespaces' queries get SERVFAIL quickly and never leave the host.
        util::write_atomic(
            &config,
            "dns:\n  upstreams: [\"127.0.0.1:9\"]\n  timeoutMs: 200\n",
        )?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("daemon.stderr"))?;
        let child = Command::new(&self.baton)
            .arg("run")
            .arg("--policy-dir")
            .arg(self.work.join("policies"))
            .arg("--audit-log")
            .arg(self.work.join("audit.jsonl"))
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("cannot start baton run")?;
        Ok(child)
    }

    /// Waits until a `baton status` answers.
    fn wait_ready(&self, daemon: &mut Child) -> Result<()> {
        // Under emulation the verifier alone takes about a minute.
        let patience = Duration::from_secs(if self.files.is_some() { 300 } else { 120 });
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "baton run exited ({status}):\n{}",
                    std::fs::read_to_string(self.work.join("daemon.stderr")).unwrap_or_default()
                );
            }
            if self.status().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.work.join("daemon.stderr")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                bail!(
                    "baton run was not ready within {} s; the end of its log:\n{}",
                    patience.as_secs(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self) -> Result<Value> {
        let output = Command::new(&self.baton)
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .stderr(Stdio::null())
            .output()?;
        ensure!(output.status.success(), "baton status failed");
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn exec(&self, agent: &str, user: Option<&str>, command: &[&str]) -> Command {
        let mut cmd = Command::new(&self.baton);
        cmd.args(["exec", "--agent", agent, "--control-socket"])
            .arg(&self.socket);
        if let Some(user) = user {
            cmd.args(["--user", user]);
        }
        cmd.arg("--").args(command);
        cmd
    }

    fn run(self, args: &SoakArgs) -> Result<()> {
        self.write_policies(0)?;
        let mut daemon = self.start_daemon()?;
        self.wait_ready(&mut daemon)?;
        println!(
            "soak: daemon ready (pid {}); starting the load",
            daemon.id()
        );
        let mut incarnations = vec![self.incarnation(&daemon, None)?];
        let mut loads = Children::default();
        let stop = Arc::new(AtomicBool::new(false));

        // The prober, whose every line is kept with its time.
        let load = self.load.to_str().context("path")?.to_string();
        let mut probe_args = vec![
            load.clone(),
            "probe".into(),
            self.allowed.clone(),
            self.denied.clone(),
            "20".into(),
        ];
        if let Some((allowed_file, denied_file)) = &self.files {
            probe_args.push(allowed_file.display().to_string());
            probe_args.push(denied_file.display().to_string());
        }
        let probe_args: Vec<&str> = probe_args.iter().map(String::as_str).collect();
        let mut prober = self
            .exec("soak-prober", None, &probe_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let probe_lines = prober.stdout.take().context("prober stdout")?;
        loads.push(prober);
        let rounds: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reader = {
            let rounds = Arc::clone(&rounds);
            thread::spawn(move || {
                for line in BufReader::new(probe_lines).lines().map_while(Result::ok) {
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        rounds.lock().expect("rounds").push(value);
                    }
                }
            })
        };

        loads.push(
            self.exec("soak-flooder", None, &[&load, "flood", &self.denied])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let socket = self.socket.to_str().context("path")?.to_string();
        let as_nobody = |command: &[&str]| -> Result<Child> {
            Ok(Command::new("setpriv")
                .args([
                    &format!("--reuid={NOBODY}"),
                    &format!("--regid={NOBODY}"),
                    "--clear-groups",
                    "--",
                ])
                .args(command)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?)
        };
        let held = args.held_connections.to_string();
        loads.push(as_nobody(&[&load, "hold-control", &socket, &held])?);
        loads.push(as_nobody(&[&load, "big-line", &socket, "268435456"])?);

        // Namespace bursts from a `nobody` agent, on their own thread.
        let namespaces_ok = Arc::new(AtomicU64::new(0));
        let namespaces_tried = Arc::new(AtomicU64::new(0));
        let bursts = {
            let stop = Arc::clone(&stop);
            let (ok, tried) = (Arc::clone(&namespaces_ok), Arc::clone(&namespaces_tried));
            let script = format!(
                "for i in $(seq {NAMESPACES_PER_BURST}); do unshare -Urn sh -c 'ip link set lo up && {load} dns 127.0.0.1:53 10' && echo ok || echo failed; done"
            );
            let mut command = self.exec("soak-namespaces", Some("nobody"), &["sh", "-c", &script]);
            command.stdout(Stdio::piped()).stderr(Stdio::null());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(output) = command.output() {
                        for line in String::from_utf8_lossy(&output.stdout).lines() {
                            tried.fetch_add(1, Ordering::Relaxed);
                            if line == "ok" {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    sleep_unless(&stop, BURST_PAUSE);
                }
            })
        };

        println!("soak: load running");
        let started = Instant::now();
        let mut next_kill = started + Duration::from_secs(args.kill_every);
        let mut next_reload = started + RELOAD_EVERY;
        let mut reloads = 0u64;
        while started.elapsed() < args.duration {
            thread::sleep(Duration::from_millis(200));
            if Instant::now() >= next_reload {
                reloads += 1;
                self.write_policies(reloads)?;
                next_reload += RELOAD_EVERY;
            }
            if Instant::now() >= next_kill {
                let last = incarnations.last_mut().expect("one incarnation");
                last.end = Resources::of(daemon.id()).ok();
                println!(
                    "soak: {:>4} s: killing the daemon (pid {})",
                    started.elapsed().as_secs(),
                    daemon.id()
                );
                let killed_at = now_ms();
                daemon.kill()?;
                daemon.wait()?;
                daemon = self.start_daemon()?;
                self.wait_ready(&mut daemon)?;
                incarnations.push(self.incarnation(&daemon, Some(killed_at))?);
                println!(
                    "soak: {:>4} s: daemon killed and restarted (pid {})",
                    started.elapsed().as_secs(),
                    daemon.id()
                );
                next_kill += Duration::from_secs(args.kill_every);
            }
        }

        // Stop the load, let the daemon drain and settle, then account.
        stop.store(true, Ordering::Relaxed);
        drop(loads);
        let _ = reader.join();
        let _ = bursts.join();
        thread::sleep(Duration::from_secs(5));
        let last = incarnations.last_mut().expect("one incarnation");
        last.end = Some(Resources::of(daemon.id())?);
        // A daemon restarted late in the run finds the ring full and
        // writes for a while after the load stops (in an emulated VM, for
        // minutes): count once the ring is empty and the log has stopped
        // growing for two looks in a row (so the once-a-second loss
        // records are out), within ten minutes.
        let settle_deadline = Instant::now() + SETTLE_PATIENCE;
        let mut last_report = Instant::now();
        let mut records = self.count_records()?;
        let mut unchanged = 0;
        let pending = |status: &Value| status["audit"]["events_pending_bytes"].as_u64();
        while (unchanged < 2 || self.status().ok().as_ref().and_then(pending) != Some(0))
            && Instant::now() < settle_deadline
        {
            thread::sleep(Duration::from_secs(2));
            if last_report.elapsed() >= Duration::from_secs(30) {
                last_report = Instant::now();
                if let Ok(status) = self.status() {
                    println!(
                        "soak: draining, {} bytes of events left",
                        pending(&status).unwrap_or_default()
                    );
                }
            }
            let now = self.count_records()?;
            unchanged = if now == records { unchanged + 1 } else { 0 };
            records = now;
        }
        let status = self.status()?;
        println!(
            "soak: settled; kernel events not yet drained: {} bytes ({})",
            pending(&status).map_or("unknown".to_string(), |b| b.to_string()),
            status["audit"]["event_ring"]
        );
        let _ = daemon.kill();
        let _ = daemon.wait();
        let records = self.count_records()?;
        // What the daemons warned about, for a report that misses a target.
        let log = std::fs::read_to_string(self.work.join("daemon.stderr")).unwrap_or_default();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        println!(
            "soak: the daemons logged {} warnings and errors; the last ones:",
            warnings.len()
        );
        for line in warnings.iter().rev().take(15).rev() {
            println!("  {line}");
        }

        let rounds = rounds.lock().expect("rounds").clone();
        let report = Report {
            rounds: &rounds,
            incarnations: &incarnations,
            status: &status,
            records: &records,
            reloads,
            namespaces: (
                namespaces_ok.load(Ordering::Relaxed),
                namespaces_tried.load(Ordering::Relaxed),
            ),
        };
        report.print()
    }

    fn incarnation(&self, daemon: &Child, killed_at_ms: Option<u64>) -> Result<Incarnation> {
        let ready_at_ms = now_ms();
        // Start-up work (loading, adopting, draining) is not the steady
        // state the end is compared with.
        thread::sleep(Duration::from_secs(3));
        Ok(Incarnation {
            pid: daemon.id(),
            killed_at_ms,
            ready_at_ms,
            start: Resources::of(daemon.id())?,
            end: None,
        })
    }

    /// Per agent: denied egress and file records, and events the records
    /// say were left out (rate limit, full ring buffer).
    fn count_records(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.work)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with("audit.jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                let Ok(record) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let Some(agent) = record["agent"].as_str() else {
                    continue;
                };
                let entry = counts.entry(agent.to_string()).or_default();
                // The packet backstop counts every dropped packet but
                // records a socket and destination once: its records are
                // not one per count, and its counter is left out too.
                if matches!(record["control"].as_str(), Some("egress" | "file"))
                    && record["verdict"] == "denied"
                    && record["hook"] != "skb_egress"
                {
                    entry.0 += 1;
                }
                // Rate-limit records only: the ring buffer's drops are
                // counted from the kernel's counter, and their records
                // would count them twice.
                if let Some(n) = record["object"]["suppressed"].as_u64()
                    && record["object"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("over the per-agent event rate"))
                {
                    entry.1 += n;
                }
            }
        }
        Ok(counts)
    }
}

impl Drop for Soak {
    fn drop(&mut self) {
        // The daemon ran with persistent pins, as in production.
        let _ = Command::new(&self.baton)
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
    }
}

struct Report<'a> {
    rounds: &'a [Value],
    incarnations: &'a [Incarnation],
    status: &'a Value,
    records: &'a BTreeMap<String, (u64, u64)>,
    reloads: u64,
    namespaces: (u64, u64),
}

impl Report<'_> {
    /// Whether `t_ms` falls in the window around a kill.
    fn in_kill_window(&self, t_ms: u64) -> bool {
        let grace = KILL_WINDOW_GRACE.as_millis() as u64;
        self.incarnations.iter().any(|inc| {
            inc.killed_at_ms
                .is_some_and(|killed| t_ms + 1_000 >= killed && t_ms <= inc.ready_at_ms + grace)
        })
    }

    fn print(&self) -> Result<()> {
        let mut ok = true;
        let leaks = self.rounds.iter().filter(|r| r["denied"] == "ok").count();
        let open_leaks = self
            .rounds
            .iter()
            .filter(|r| r["open_denied"] == "ok")
            .count();
        let opens_probed = self.rounds.iter().any(|r| r.get("open_denied").is_some());
        let failed_allowed: Vec<u64> = self
            .rounds
            .iter()
            .filter(|r| {
                r["allowed"] != "ok" || r.get("open_allowed").is_some_and(|open| open != "ok")
            })
            .filter_map(|r| r["t_ms"].as_u64())
            .collect();
        let misses = failed_allowed
            .iter()
            .filter(|t| !self.in_kill_window(**t))
            .count();
        println!("\nsoak report");
        println!(
            "  prober rounds {}: leaks {leaks} (target 0) {}, misses outside kill windows {misses} (target 0) {}, failed allowed connects in kill windows {}",
            self.rounds.len(),
            verdict(leaks == 0),
            verdict(misses == 0),
            failed_allowed.len() - misses
        );
        ok &= leaks == 0 && misses == 0 && !self.rounds.is_empty();
        if opens_probed {
            println!(
                "  prober opens: denied opens that succeeded {open_leaks} (target 0) {}; failed allowed opens are counted with the misses above",
                verdict(open_leaks == 0)
            );
            ok &= open_leaks == 0;
        }
        let netns_requests_dropped: u64 = self.status["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|agent| agent["counters"]["netns_requests_dropped"].as_u64())
            .sum();
        println!(
            "  reloads {}, daemon restarts {}, namespaces with a DNS answer {} of {} (proxy requests that found their ring full: {netns_requests_dropped})",
            self.reloads,
            self.incarnations.len() - 1,
            self.namespaces.0,
            self.namespaces.1
        );
        for inc in self.incarnations {
            let Some(end) = inc.end else { continue };
            println!(
                "  daemon {}: RSS {} -> {} KiB, descriptors {} -> {}",
                inc.pid, inc.start.rss_kib, end.rss_kib, inc.start.fds, end.fds
            );
        }
        // The first daemon was measured before any load began, the last
        // one after the load stopped and the daemon settled.
        let first = self.incarnations.first().expect("one incarnation").start;
        let last = self
            .incarnations
            .last()
            .and_then(|inc| inc.end)
            .context("the last daemon was not measured")?;
        let within = |start: u64, end: u64| end as f64 <= start as f64 * (1.0 + RESOURCE_TOLERANCE);
        let rss_ok = within(first.rss_kib, last.rss_kib);
        let fds_ok = within(first.fds, last.fds);
        println!(
            "  before the load -> after it: RSS {} -> {} KiB (within 10%: {}), descriptors {} -> {} (within 10%: {})",
            first.rss_kib,
            last.rss_kib,
            verdict(rss_ok),
            first.fds,
            last.fds,
            verdict(fds_ok)
        );
        ok &= rss_ok && fds_ok;
        for agent in self.status["agents"].as_array().into_iter().flatten() {
            let name = agent["agent"].as_str().unwrap_or("?");
            let counters = &agent["counters"];
            let connects = counters["denied_connects"].as_u64().unwrap_or(0)
                + counters["denied_sockets"].as_u64().unwrap_or(0)
                + counters["denied_sockopts"].as_u64().unwrap_or(0);
            let files = counters["denied_files"].as_u64().unwrap_or(0);
            let kernel_denied = connects + files;
            let dropped = counters["events_dropped"].as_u64().unwrap_or(0);
            let (records, suppressed) = self.records.get(name).copied().unwrap_or_default();
            let accounted = records + suppressed + dropped;
            let balanced = accounted == kernel_denied;
            println!(
                "  agent {name}: kernel denied connects, sockets and socket options {connects} + files {files}; records {records} + suppressed {suppressed} + lost {dropped} = {accounted} {}",
                verdict(balanced)
            );
            ok &= balanced;
        }
        ensure!(ok, "the soak missed a target (see the report above)");
        println!("soak: every target met");
        Ok(())
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

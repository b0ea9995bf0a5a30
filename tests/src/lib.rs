//! Shared harness for Baton's integration tests: start a real daemon with
//! real policies, run real processes inside and outside agents, read the
//! real audit log.
//!
//! Every test runs as root on a kernel that accepts the programs; nothing
//! here imitates the kernel.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The workspace's `target/debug` directory.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// The `baton` binary under test: `BATON_BIN`, or the workspace build.
pub fn baton_bin() -> PathBuf {
    let path = std::env::var_os("BATON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("baton"));
    assert!(
        path.exists(),
        "{} does not exist: build it first (cargo build -p agent) or set BATON_BIN",
        path.display()
    );
    path
}

/// A fresh, empty directory for one test, removed on drop.
pub struct TempDir(PathBuf);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// Creates the directory.
    pub fn new(label: &str) -> Self {
        let base = std::env::var_os("BATON_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "baton-test-{label}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test directory");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `baton run`, stopped on drop.
///
/// Each daemon pins its programs and maps in a bpffs directory of its own
/// (tests run in parallel, and two daemons never share pins) and keeps its
/// state in the test's directory. Dropping it removes both, even when the
/// test killed it.
pub struct Daemon {
    /// The running `baton run`; none between a kill and a restart.
    child: Option<Child>,
    /// The test's directory: policies, audit log, socket.
    pub dir: TempDir,
    /// Control socket.
    pub socket: PathBuf,
    /// Audit log.
    pub audit_log: PathBuf,
    /// Pin directory in bpffs.
    pub pin_dir: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    policy_dir: PathBuf,
    config: PathBuf,
    cleanup_on_exit: bool,
    /// `RLIMIT_NOFILE` (soft and hard) the daemon starts with, if set.
    descriptor_limit: Option<u64>,
}

impl Daemon {
    /// Writes `policies` (file name, YAML) and starts the daemon; returns once
    /// it is enforcing (its control socket exists).
    pub fn start(label: &str, policies: &[(&str, String)]) -> Self {
        Self::start_with_config(label, policies, "")
    }

    /// Starts a daemon on an existing policy directory (laid out by the
    /// test, a ConfigMap volume for instance).
    pub fn start_in(policy_dir: &Path, label: &str) -> Self {
        Self::launch(TempDir::new(label), policy_dir.to_path_buf(), "", true)
    }

    /// [`Daemon::start_in`] with a configuration file.
    pub fn start_in_with_config(policy_dir: &Path, label: &str, config_yaml: &str) -> Self {
        Self::launch(
            TempDir::new(label),
            policy_dir.to_path_buf(),
            config_yaml,
            true,
        )
    }

    /// [`Daemon::start_in_with_config`], the daemon started with
    /// `RLIMIT_NOFILE` at `limit` (soft and hard), as `LimitNOFILE=` in a
    /// unit would.
    pub fn start_in_with_descriptor_limit(
        policy_dir: &Path,
        label: &str,
        config_yaml: &str,
        limit: u64,
    ) -> Self {
        let mut daemon =
            Self::unstarted(TempDir::new(label), policy_dir.to_path_buf(), config_yaml);
        daemon.descriptor_limit = Some(limit);
        daemon.spawn();
        daemon
    }

    /// `baton run` on `policy_dir` with `config_yaml` and `RLIMIT_NOFILE`
    /// at `limit`, expected to refuse to start: its exit status and stderr.
    pub fn refused_start(
        policy_dir: &Path,
        label: &str,
        config_yaml: &str,
        limit: u64,
    ) -> (std::process::ExitStatus, String) {
        let mut daemon =
            Self::unstarted(TempDir::new(label), policy_dir.to_path_buf(), config_yaml);
        daemon.descriptor_limit = Some(limit);
        let output = daemon
            .command()
            .stdout(Stdio::null())
            .output()
            .expect("spawn baton run");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Like [`Daemon::start`], without `--cleanup-on-exit`: the pins stay
    /// when the daemon stops or dies, as in production, until
    /// [`Daemon::uninstall`] (or the drop) removes them.
    pub fn start_persistent(label: &str, policies: &[(&str, String)]) -> Self {
        let (dir, policy_dir) = Self::lay_out(label, policies);
        Self::launch(dir, policy_dir, "", false)
    }

    /// Like [`Daemon::start`], with `before` run on the daemon's pin
    /// directory (which does not exist yet) before it starts: a hostile
    /// user's preparations, say.
    pub fn start_after(
        label: &str,
        policies: &[(&str, String)],
        before: impl FnOnce(&Path),
    ) -> Self {
        let (dir, policy_dir) = Self::lay_out(label, policies);
        let mut daemon = Self::prepare(dir, policy_dir, "", true, None);
        before(&daemon.pin_dir);
        daemon.spawn();
        daemon
    }

    /// [`Daemon::start_persistent`] with a configuration file.
    pub fn start_persistent_with_config(
        label: &str,
        policies: &[(&str, String)],
        config_yaml: &str,
    ) -> Self {
        let (dir, policy_dir) = Self::lay_out(label, policies);
        Self::launch(dir, policy_dir, config_yaml, false)
    }

    /// Like [`Daemon::start`], with a configuration file.
    pub fn start_with_config(label: &str, policies: &[(&str, String)], config_yaml: &str) -> Self {
        let (dir, policy_dir) = Self::lay_out(label, policies);
        Self::launch(dir, policy_dir, config_yaml, true)
    }

    /// Like [`Daemon::start_with_config`], with the audit log at
    /// `audit_log` (on a file system the test made, say).
    pub fn start_with_audit_log(
        label: &str,
        policies: &[(&str, String)],
        config_yaml: &str,
        audit_log: &Path,
    ) -> Self {
        let (dir, policy_dir) = Self::lay_out(label, policies);
        Self::launch_with_log(dir, policy_dir, config_yaml, true, Some(audit_log))
    }

    fn lay_out(label: &str, policies: &[(&str, String)]) -> (TempDir, PathBuf) {
        let dir = TempDir::new(label);
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir).unwrap();
        for (name, text) in policies {
            std::fs::write(policy_dir.join(name), text).unwrap();
        }
        (dir, policy_dir)
    }

    fn launch(dir: TempDir, policy_dir: PathBuf, config_yaml: &str, cleanup_on_exit: bool) -> Self {
        Self::launch_with_log(dir, policy_dir, config_yaml, cleanup_on_exit, None)
    }

    fn unstarted(dir: TempDir, policy_dir: PathBuf, config_yaml: &str) -> Self {
        Self::prepare(dir, policy_dir, config_yaml, true, None)
    }

    fn launch_with_log(
        dir: TempDir,
        policy_dir: PathBuf,
        config_yaml: &str,
        cleanup_on_exit: bool,
        audit_log: Option<&Path>,
    ) -> Self {
        let mut daemon = Self::prepare(dir, policy_dir, config_yaml, cleanup_on_exit, audit_log);
        daemon.spawn();
        daemon
    }

    fn prepare(
        dir: TempDir,
        policy_dir: PathBuf,
        config_yaml: &str,
        cleanup_on_exit: bool,
        audit_log: Option<&Path>,
    ) -> Self {
        // An empty configuration keeps the host's /etc/baton out of the test.
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        // bpffs refuses names with a dot.
        let pin_name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "-");
        Self {
            child: None,
            socket: dir.path().join("baton.sock"),
            audit_log: audit_log
                .map_or_else(|| dir.path().join("log/audit.jsonl"), Path::to_path_buf),
            pin_dir: Path::new("/sys/fs/bpf").join(pin_name),
            state_dir: dir.path().join("state"),
            dir,
            policy_dir,
            config,
            cleanup_on_exit,
            descriptor_limit: None,
        }
    }

    /// The `baton run` command line for this daemon.
    fn command(&self) -> Command {
        let mut command = Command::new(baton_bin());
        command
            .arg("run")
            .arg("--policy-dir")
            .arg(&self.policy_dir)
            .arg("--audit-log")
            .arg(&self.audit_log)
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if self.cleanup_on_exit {
            command.arg("--cleanup-on-exit");
        }
        if let Some(limit) = self.descriptor_limit {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limit.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        command
    }

    /// Starts `baton run` and waits until it is enforcing.
    fn spawn(&mut self) {
        let stderr_path = self.dir.path().join("daemon.stderr");
        let mut command = self.command();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let child = self.child.insert(
            command
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn baton run"),
        );
        // Loading and verifying the programs takes about a second on a host
        // kernel, about a minute under the VM suite's emulated CPUs on 6.12
        // and two and a half on 6.1 (its verifier is slower on the dentry
        // walks), more on a busy machine. This bounds a hang, not speed.
        let deadline = Instant::now() + Duration::from_secs(420);
        while !self.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "baton run exited with {status} before it was ready:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "baton run was not ready within 420 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would:
    /// no shutdown code runs, no cleanup. Returns once it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The socket file outlives a killed daemon; the next start replaces
        // it, and `spawn` waits for it to appear again.
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Stops the daemon with SIGTERM (a clean shutdown, which signs the
    /// log's head) and waits for it; panics if it does not exit in 10 s.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "baton run did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again with the same policies, configuration, audit
    /// log, socket, pins and state, after [`Daemon::kill`] or
    /// [`Daemon::stop`].
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart needs the daemon stopped first"
        );
        // A killed daemon leaves its socket file behind; readiness is told
        // by the new daemon creating it.
        let _ = std::fs::remove_file(&self.socket);
        self.spawn();
    }

    /// `baton status --json` from the running daemon.
    pub fn status(&self) -> Value {
        let output = Command::new(baton_bin())
            .args(["status", "--json", "--control-socket"])
            .arg(&self.socket)
            .output()
            .expect("spawn baton status");
        assert!(
            output.status.success(),
            "baton status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("baton status --json prints JSON")
    }

    /// Runs `baton uninstall` on this daemon's pins and state.
    pub fn uninstall(&self) -> Output {
        Command::new(baton_bin())
            .arg("uninstall")
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .expect("spawn baton uninstall")
    }

    /// The `baton exec` command that runs `command` inside `agent`, to
    /// spawn and talk to while it runs.
    pub fn exec_command(&self, agent: &str, command: &[&str]) -> Command {
        let mut exec = Command::new(baton_bin());
        exec.arg("exec")
            .arg("--agent")
            .arg(agent)
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--")
            .args(command);
        exec
    }

    /// Runs `command` inside `agent` through `baton exec`.
    pub fn exec(&self, agent: &str, command: &[&str]) -> Output {
        Command::new(baton_bin())
            .arg("exec")
            .arg("--agent")
            .arg(agent)
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--")
            .args(command)
            .output()
            .expect("spawn baton exec")
    }

    /// Every audit record written so far.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit lines are JSON"))
            .collect()
    }

    /// Every decision record (lifecycle records, whose verdict is `info`,
    /// left out).
    pub fn decisions(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["verdict"] != "info")
            .collect()
    }

    /// Waits up to 10 s for a decision record matching `matches`.
    pub fn wait_for_record(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.decisions().into_iter().find(&matches) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit record within 10 s; log:\n{}",
                std::fs::read_to_string(&self.audit_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut stopped = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // A killed or persistent daemon leaves its programs attached; no
        // test may leave enforcement behind.
        if self.pin_dir.exists() {
            let _ = self.uninstall();
        }
    }
}

/// Output of the syscall helper: `ok` or `errno=N`.
pub fn helper_outcome(output: &Output) -> String {
    assert!(
        output.status.success(),
        "helper failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The errno text for EPERM as the helper prints it.
pub const EPERM: &str = "errno=1";

/// A policy document for agent `agent` with the given `spec` body (indented
/// by four spaces, below `spec:`), selecting `agent` by name.
pub fn policy(name: &str, agent: &str, spec_body: &str) -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    agent: {agent}\n{spec_body}"
    )
}

/// Runs `baton` with arguments and returns its output.
pub fn baton(args: &[&str]) -> Output {
    Command::new(baton_bin())
        .args(args)
        .output()
        .expect("spawn baton")
}

/// Loads a trivial BPF LSM program with raw `bpf(2)` calls, independently of
/// Baton's loader: `r0 = 0; exit` attached to `file_open`. Returns the errno
/// on refusal.
pub fn independent_lsm_load() -> Result<(), i32> {
    let btf_id = btf_func_id("bpf_lsm_file_open").expect("bpf_lsm_file_open in vmlinux BTF");
    // mov64 r0, 0 ; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    let put_u32 = |attr: &mut [u8; 128], at: usize, v: u32| {
        attr[at..at + 4].copy_from_slice(&v.to_ne_bytes())
    };
    let put_u64 = |attr: &mut [u8; 128], at: usize, v: u64| {
        attr[at..at + 8].copy_from_slice(&v.to_ne_bytes())
    };
    const BPF_PROG_TYPE_LSM: u32 = 29;
    const BPF_LSM_MAC: u32 = 27;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    put_u32(&mut attr, 0, BPF_PROG_TYPE_LSM);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 68, BPF_LSM_MAC);
    put_u32(&mut attr, 108, btf_id);
    // SAFETY: `attr` is a zero-padded bpf_attr for BPF_PROG_LOAD whose
    // pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    // Attaching proves the program can take effect, not only that it loads.
    let mut attach = [0u8; 16];
    attach[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: `attach` is a zero-padded bpf_attr for BPF_RAW_TRACEPOINT_OPEN.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            attach.as_ptr(),
            attach.len(),
        )
    };
    let result = if link < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        // SAFETY: closing descriptors we own.
        unsafe { libc::close(link as i32) };
        Ok(())
    };
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd as i32) };
    result
}

/// Type id of a kernel function in vmlinux BTF, from `bpftool`, so that the
/// independent load does not share Baton's BTF reader.
fn btf_func_id(name: &str) -> Option<u32> {
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
        .stderr(Stdio::inherit())
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    let text = String::from_utf8_lossy(&output.stdout);
    let needle = format!("] FUNC '{name}'");
    text.lines()
        .find(|line| line.contains(&needle))
        .and_then(|line| line.strip_prefix('[')?.split(']').next()?.parse().ok())
}

/// The cgroup v2 mount point (from `findmnt`, independently of Baton's own
/// lookup).
pub fn cgroup2_root() -> PathBuf {
    let output = Command::new("findmnt")
        .args(["-n", "-t", "cgroup2", "-o", "TARGET"])
        .output()
        .expect("findmnt");
    let text = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(text.lines().next().expect("a cgroup2 mount").trim())
}

/// A cgroup created for one test under the cgroup v2 root, removed on drop.
pub struct TestCgroup {
    /// Absolute directory.
    pub dir: PathBuf,
    /// Path relative to the cgroup v2 root, with a leading `/`.
    pub relative: String,
}

impl TestCgroup {
    /// Creates `relative` (and its parents) under the cgroup v2 root.
    pub fn new(relative: &str) -> Self {
        let dir = cgroup2_root().join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("create cgroup");
        Self {
            dir,
            relative: relative.to_string(),
        }
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }

    /// A shell command prefix that moves the shell into this cgroup before
    /// it execs the rest of the command.
    pub fn enter_and_exec(&self, command: &str) -> Vec<String> {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            format!(
                "echo $$ > {}/cgroup.procs && exec {command}",
                self.dir.display()
            ),
        ]
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Children first; a cgroup can only be removed once empty.
        let mut dirs = vec![self.dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(entry.path());
                    }
                }
            }
            i += 1;
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Runs a command and returns the helper outcome it printed.
pub fn run_outcome(command: &[String]) -> String {
    let output = Command::new(&command[0])
        .args(&command[1..])
        .output()
        .expect("spawn");
    helper_outcome(&output)
}

/// A TCP listener on `127.0.0.1` that accepts nothing (connects complete
/// in the kernel's backlog), and its port.
pub fn listener() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// Waits up to 10 s, polling every 50 ms, for `check` to hold; panics
/// naming `what` when it does not.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on `ip` (bound, then released for the caller to use).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_tcp(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real DNS server on 127.0.0.1: dnsmasq answering only from its own
/// `--address` entries, never forwarding anywhere.
pub fn dnsmasq(addresses: &[(&str, &str)]) -> (Service, u16) {
    let port = free_port("127.0.0.1");
    (dnsmasq_on("127.0.0.1", port, addresses), port)
}

/// [`dnsmasq`] on `ip:port`, for a resolver named in a resolv.conf (which
/// has no port: 53 it is).
pub fn dnsmasq_on(ip: &str, port: u16, addresses: &[(&str, &str)]) -> Service {
    let mut command = Command::new("dnsmasq");
    command.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        &format!("--listen-address={ip}"),
        "--user=root",
        "--pid-file",
        "--local-ttl=60",
        &format!("--port={port}"),
    ]);
    for (name, addr) in addresses {
        command.arg(format!("--address=/{name}/{addr}"));
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq is installed by cargo xtask setup");
    let service = Service(child);
    wait_for_tcp(&format!("{ip}:{port}"), "dnsmasq");
    service
}

/// A dnsmasq on a free port of 127.0.0.1 with these extra arguments
/// (`--host-record=NAME,ADDR,TTL` for per-name TTLs, say), answering only
/// from them.
pub fn dnsmasq_with(args: &[String]) -> (Service, u16) {
    let port = free_port("127.0.0.1");
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file",
            &format!("--port={port}"),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq is installed by cargo xtask setup");
    let service = Service(child);
    wait_for_tcp(&format!("127.0.0.1:{port}"), "dnsmasq");
    (service, port)
}

/// A static HTTP server (Python's) serving `dir` on `ip:port`.
pub fn http_server(ip: &str, port: u16, dir: &Path) -> Service {
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", ip, &port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let service = Service(child);
    wait_for_tcp(&format!("{ip}:{port}"), "http.server");
    service
}

/// Wraps `command` so it runs with `resolv_conf` bind-mounted over
/// /etc/resolv.conf in a private mount namespace: the agent's resolver then
/// asks a loopback address, never the host's real resolver.
pub fn with_resolv_conf(resolv_conf: &Path, command: &str) -> Vec<String> {
    vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount --bind {} /etc/resolv.conf && exec {command}",
            resolv_conf.display()
        ),
    ]
}

/// Whether BPF LSM programs load on this kernel (`baton probe`): true in
/// the test VMs, false on the development hosts.
pub fn bpf_lsm_loads() -> bool {
    let probe: Value = serde_json::from_slice(&baton(&["probe", "--json"]).stdout)
        .expect("baton probe --json prints JSON");
    probe["bpf_lsm_loadable"]
        .as_bool()
        .expect("probe says whether BPF LSM loads")
}

/// The kernel's Landlock ABI version, 0 without Landlock.
pub fn landlock_abi() -> i64 {
    // SAFETY: the version query takes no ruleset and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    abi.max(0)
}

/// Pins this process to the CPU `BATON_BENCH_CPU` names, when set, for the
/// benchmarks' clients (`tool` names the one complaining). Where the
/// scheduler put a client and its peer (same CPU or not) swung rounds by up
/// to 2.5x on a two-CPU machine, far more than the hooks being measured
/// cost; a lone client still moves between CPUs of different speeds.
pub fn pin_to_bench_cpu(tool: &str) {
    let Some(cpu) = std::env::var("BATON_BENCH_CPU")
        .ok()
        .and_then(|cpu| cpu.parse::<usize>().ok())
    else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it;
    // sched_setaffinity reads it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "{tool}: cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

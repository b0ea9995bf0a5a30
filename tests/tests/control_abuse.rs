//! The control socket is open to every local user: what a hostile user or
//! agent does with it must not starve the daemon of descriptors or memory,
//! stall file opens on the host, or let an agent operate its own breaker.
//! Real connections from real uids to the real daemon.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, EPERM, TempDir, baton_bin, helper_outcome, policy};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");
const CLIENT: &str = env!("CARGO_BIN_EXE_baton-control-client");
const NOBODY: u32 = 65534;

/// A test directory that `nobody` can reach (the control socket is in it).
fn reachable_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn client_as_nobody(args: &[&str]) -> Command {
    let mut command = Command::new(CLIENT);
    command.args(args).uid(NOBODY).gid(NOBODY);
    command
}

/// Runs `command` and returns what the test helper printed, or fails the
/// test if it has not finished within `bound` (generous: this is about a
/// process never getting an answer, not about speed).
fn outcome_within(command: &mut Command, bound: Duration) -> String {
    outcome_or(command, bound, String::new)
}

/// [`outcome_within`], adding `context()` to the failure.
fn outcome_or(command: &mut Command, bound: Duration, context: impl Fn() -> String) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + bound;
    loop {
        if child.try_wait().unwrap().is_some() {
            return helper_outcome(&child.wait_with_output().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {bound:?}{}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Sets process `pid`'s soft and hard descriptor limits.
fn set_descriptor_limit(pid: u32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads one rlimit and writes none.
    let result = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &raw const new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A mounted file system for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", at.display());
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A policy for `agent` that allows all egress: nothing in these tests is
/// about the policy itself.
fn permissive(agent: &str) -> String {
    policy(agent, agent, "  egress:\n    default: allow\n")
}

/// Waits for a child's first line of output.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_string()
}

/// 1,000 idle connections from `nobody`, with the daemon's descriptor limit
/// at systemd's default soft limit (1,024), used to take every descriptor
/// the daemon had: the kernel then denied every open on a mount the
/// fanotify fallback watches (it could not give the daemon the event's
/// descriptor), for every process on the host, and `baton status` and
/// `baton exec` hung. Now the daemon keeps a bounded number of them, an
/// outsider's open on the watched mount gets its answer, and root is
/// served.
#[test]
fn a_thousand_idle_connections_from_nobody_starve_neither_file_opens_nor_the_operator() {
    let dir = reachable_dir("abuse-hold");
    let agent_helper = dir.path().join("agent-helper");
    std::fs::copy(HELPER, &agent_helper).unwrap();
    // A directory rule on a file system of its own: its mount is marked,
    // so every open on it, by any process, waits for the daemon's answer.
    let mount = Tmpfs::mount(dir.path().join("mnt"));
    let tree = mount.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("secret"), "x").unwrap();
    std::fs::write(mount.0.join("beside"), "x").unwrap();
    let secret = tree.join("secret").display().to_string();
    let beside = mount.0.join("beside").display().to_string();
    let watched = policy(
        "watched",
        "watched",
        &format!("  files:\n    deny: [{}]\n", tree.display()),
    )
    .replace(
        "    agent: watched\n",
        &format!(
            "    agent: watched\n    executables: [{}]\n",
            agent_helper.display()
        ),
    );
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("watched.yaml"), watched).unwrap();
    std::fs::write(policy_dir.join("worker.yaml"), permissive("worker")).unwrap();
    let daemon = Daemon::start_in(&policy_dir, "abuse-hold");
    let pid = daemon.pid();
    let socket = daemon.socket.to_str().unwrap().to_string();
    let as_agent = || {
        outcome_within(
            Command::new(&agent_helper).args(["open", &secret, "read"]),
            Duration::from_secs(10),
        )
    };
    assert_eq!(as_agent(), EPERM, "the rule is enforced before the flood");

    set_descriptor_limit(pid, 1024);
    let before = open_fds(pid);
    let mut holder = client_as_nobody(&["hold", &socket, "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let report = first_line(&mut holder);
    let connected: usize = report
        .strip_prefix("connected=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected report {report:?}"));
    assert!(connected > 900, "{report}");

    // The daemon keeps at most the per-user share of them (16) open, each
    // with its socket and the peer's pidfd; the rest it accepts, answers
    // and closes, at most 16 at a time. Slack for descriptors the daemon
    // opens for its own work meanwhile.
    let bound = before + 16 * 2 + 16 + 16;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The count moves while connections come and go (and while fanotify
    // hands the daemon a descriptor per pending open): the bound must be
    // reached, not held at one arbitrary instant.
    let mut during = open_fds(pid);
    while during > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        during = open_fds(pid);
    }
    assert!(
        during <= bound,
        "the daemon holds {during} descriptors with 1,000 connections from nobody (before: {before})"
    );

    // Root in no agent opens a file on the watched mount: answered, allowed.
    assert_eq!(
        outcome_or(
            Command::new(HELPER).args(["open", &secret, "read"]),
            Duration::from_secs(10),
            || daemon_threads(&daemon),
        ),
        "ok"
    );
    // The agent is still denied: the answer is the policy's, not a default.
    assert_eq!(as_agent(), EPERM);
    // The operator is served, and `baton exec` admits.
    let status = daemon.status();
    assert!(status.is_object(), "{status}");
    let exec = outcome_or(
        Command::new(baton_bin())
            .args([
                "exec",
                "--agent",
                "worker",
                "--control-socket",
                &socket,
                "--",
            ])
            .args([HELPER, "open", &beside, "read"]),
        Duration::from_secs(60),
        || daemon_threads(&daemon),
    );
    assert_eq!(exec, "ok");
    drop_holder(holder, pid, before);
}

fn drop_holder(mut holder: Child, pid: u32, before: usize) {
    drop(holder.stdin.take());
    holder.wait().unwrap();
    // Everything given back once nobody lets go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_fds(pid) > before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open_fds(pid) <= before + 4, "descriptors leaked");
}

/// What each of the daemon's threads is doing, and its log, for failures.
fn daemon_threads(daemon: &Daemon) -> String {
    let pid = daemon.pid();
    {
        {
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|t| {
                    let t = t.ok()?.path();
                    Some(format!(
                        "{} {} {}",
                        std::fs::read_to_string(t.join("comm")).ok()?.trim(),
                        std::fs::read_to_string(t.join("wchan")).unwrap_or_default(),
                        std::fs::read_to_string(t.join("syscall"))
                            .unwrap_or_default()
                            .trim()
                    ))
                })
                .collect();
            format!(
                "\ndaemon threads: {threads:#?}\ndaemon stderr:\n{}",
                daemon.stderr()
            )
        }
    }
}

/// Descriptors the daemon keeps for the fanotify fallback (192), the audit
/// trail (64) and explanations (32), as documented: control-socket load
/// never takes them.
const RESERVE: usize = 288;

/// The daemon's descriptor limit in the reserve test: small, so that the
/// control socket's share is reached with a few hundred connections.
const SMALL_LIMIT: u64 = 1024;

/// Connects to `socket` as `uid` and prints the first line the daemon
/// sends (a refusal comes unasked).
fn first_reply_as(uid: u32, socket: &str) -> String {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(60)\ns.connect({socket:?})\nprint(s.makefile().readline().strip())\n"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The number after `key=` in the daemon's `descriptor budget` log line.
fn budget_field(daemon: &Daemon, key: &str) -> usize {
    let stderr = daemon.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("descriptor budget"))
        .unwrap_or_else(|| panic!("no descriptor budget in the log:\n{stderr}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// The descriptor reserve at its bound. The daemon starts with a descriptor
/// limit of 1,024 and, at start, sets aside 288 descriptors for the
/// fanotify fallback, the audit trail and explanations and caps the control socket at
/// half of the rest. Hostile users then hold every connection the cap
/// allows (`nobody` and enough other uids to reach the total) and
/// `nobody` keeps connecting past it: the daemon never holds more than its
/// limit less the reserve, fifty outsiders opening a file on the watched
/// mount at once are all answered and allowed, the agent's denied open is
/// denied and written to the audit trail, and the operator is served. A
/// configured connection limit that does not fit is refused at start,
/// naming the key and what would fit.
#[test]
fn at_a_small_descriptor_limit_control_load_never_takes_the_fanotify_and_audit_reserve() {
    let dir = reachable_dir("abuse-reserve");
    let agent_helper = dir.path().join("agent-helper");
    std::fs::copy(HELPER, &agent_helper).unwrap();
    let mount = Tmpfs::mount(dir.path().join("mnt"));
    let tree = mount.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("secret"), "x").unwrap();
    let secret = tree.join("secret").display().to_string();
    let watched = policy(
        "watched",
        "watched",
        &format!("  files:\n    deny: [{}]\n", tree.display()),
    )
    .replace(
        "    agent: watched\n",
        &format!(
            "    agent: watched\n    executables: [{}]\n",
            agent_helper.display()
        ),
    );
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("watched.yaml"), watched).unwrap();

    // A cap that cannot fit is refused before anything is enforced.
    let (status, stderr) = Daemon::refused_start(
        &policy_dir,
        "abuse-reserve-refused",
        "control:\n  maxConnections: 5000\n",
        SMALL_LIMIT,
    );
    assert!(!status.success(), "started with a cap that does not fit");
    assert!(
        stderr.contains("config.yaml:2:3: control.maxConnections: 5020 control connections")
            && stderr.contains(
                "192 for the fanotify fallback, 64 for the audit trail and 32 for explanations"
            )
            && stderr.contains("lower control.maxConnections to at most"),
        "{stderr}"
    );

    let daemon =
        Daemon::start_in_with_descriptor_limit(&policy_dir, "abuse-reserve", "", SMALL_LIMIT);
    let pid = daemon.pid();
    let socket = daemon.socket.to_str().unwrap().to_string();
    assert_eq!(budget_field(&daemon, "limit"), SMALL_LIMIT as usize);
    let connections = budget_field(&daemon, "connections");
    let per_user = budget_field(&daemon, "per_user");
    let ceiling = SMALL_LIMIT as usize - RESERVE;
    let as_agent = || {
        outcome_within(
            Command::new(&agent_helper).args(["open", &secret, "read"]),
            Duration::from_secs(10),
        )
    };
    assert_eq!(as_agent(), EPERM, "the rule is enforced before the load");
    let denials_before = daemon
        .decisions()
        .iter()
        .filter(|r| r["object"]["path"] == secret.as_str())
        .count();

    // Every place the cap allows, taken by hostile users; `nobody` asks
    // for 1,000 and gets its share.
    let uids: Vec<u32> = std::iter::once(NOBODY)
        .chain(60_100..)
        .take(connections.div_ceil(per_user) + 1)
        .collect();
    let mut holders: Vec<Child> = uids
        .iter()
        .map(|&uid| {
            let count = if uid == NOBODY { "1000" } else { "32" };
            let mut holder = Command::new(CLIENT)
                .args(["hold", &socket, count])
                .uid(uid)
                .gid(uid)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let report = first_line(&mut holder);
            assert!(report.starts_with("connected="), "{report}");
            holder
        })
        .collect();
    let refused = first_reply_as(60_099, &socket);
    assert!(
        refused.contains(&format!("too many connections: the limit is {connections}")),
        "the total is reached: {refused:?}"
    );
    // And `nobody` keeps knocking while the rest goes on.
    let knocker = client_as_nobody(&["hold", &socket, "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    holders.push(knocker);

    let mut peak = open_fds(pid);
    let openers: Vec<Child> = (0..50)
        .map(|_| {
            Command::new(HELPER)
                .args(["open", &secret, "read"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for opener in openers {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut opener = opener;
        while opener.try_wait().unwrap().is_none() {
            peak = peak.max(open_fds(pid));
            if Instant::now() > deadline {
                let _ = opener.kill();
                panic!(
                    "an outsider's open was not answered{}",
                    daemon_threads(&daemon)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            helper_outcome(&opener.wait_with_output().unwrap()),
            "ok",
            "an outsider's open on the watched mount"
        );
    }
    // The audit path works: the agent's denied open is denied and written.
    assert_eq!(as_agent(), EPERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon
        .decisions()
        .iter()
        .filter(|r| r["object"]["path"] == secret.as_str())
        .count()
        <= denials_before
    {
        assert!(Instant::now() < deadline, "the denial was not recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    let record = daemon
        .decisions()
        .into_iter()
        .rfind(|r| r["object"]["path"] == secret.as_str())
        .unwrap();
    assert_eq!(record["verdict"], "denied", "{record}");
    assert_eq!(record["agent"], "watched", "{record}");
    assert!(daemon.status().is_object(), "the operator is served");
    peak = peak.max(open_fds(pid));
    assert!(
        peak <= ceiling,
        "the daemon held {peak} descriptors: more than its limit {SMALL_LIMIT} less the reserve {RESERVE}"
    );
    eprintln!(
        "peak {peak} descriptors of {SMALL_LIMIT} with {} hostile holders; at start {} were open and the control socket may take {}",
        holders.len(),
        budget_field(&daemon, "in_use"),
        budget_field(&daemon, "control"),
    );
    for mut holder in holders {
        drop(holder.stdin.take());
        holder.wait().unwrap();
    }
}

/// A 256 MiB request line without a newline from `nobody` (the daemon used
/// to buffer all of it), from several connections at once: each is
/// refused with a clear reply once it passes the request size limit, and
/// the daemon's memory stays within 64 MiB of where it started. The bound:
/// at most 16 connections from one user, each holding at most one 64 KiB
/// request and its read buffer, is about 1 MiB; the rest of the 64 MiB is
/// room for the allocator and the runtime, and still four times less than
/// one unbounded line would take.
#[test]
fn a_256_mib_request_line_from_nobody_is_refused_and_memory_stays_bounded() {
    let dir = reachable_dir("abuse-line");
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("worker.yaml"), permissive("worker")).unwrap();
    let daemon = Daemon::start_in(&policy_dir, "abuse-line");
    let pid = daemon.pid();
    let socket = daemon.socket.to_str().unwrap().to_string();
    let before = vm_rss_kib(pid);
    let size = (256usize << 20).to_string();
    let flooders: Vec<Child> = (0..8)
        .map(|_| {
            client_as_nobody(&["flood", &socket, &size])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut peak = before;
    let mut outputs = Vec::new();
    for mut flooder in flooders {
        while flooder.try_wait().unwrap().is_none() {
            peak = peak.max(vm_rss_kib(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        outputs.push(String::from_utf8(flooder.wait_with_output().unwrap().stdout).unwrap());
    }
    peak = peak.max(vm_rss_kib(pid));
    for output in &outputs {
        let sent: usize = output
            .lines()
            .find_map(|l| l.strip_prefix("sent="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output {output:?}"));
        assert!(sent < 256 << 20, "the daemon read the whole line: {output}");
        let reply = output
            .lines()
            .find_map(|l| l.strip_prefix("reply="))
            .unwrap();
        assert!(
            reply.contains("request too large") && reply.contains("65536 bytes"),
            "{output}"
        );
    }
    assert!(
        peak <= before + 64 * 1024,
        "the daemon's RSS went from {before} KiB to {peak} KiB"
    );
    // And it still serves.
    assert!(daemon.status().is_object());
}

/// A root process in an agent is an agent, not the operator: it may not
/// reset its own breaker or trip another agent's, the refusal is recorded,
/// and the same reset from root outside every agent works.
#[test]
fn a_root_agent_cannot_operate_breakers_but_root_outside_every_agent_can() {
    let daemon = Daemon::start(
        "abuse-breaker",
        &[
            ("held.yaml", permissive("held")),
            ("other.yaml", permissive("other")),
        ],
    );
    let socket = daemon.socket.to_str().unwrap().to_string();
    let breaker = |args: &[&str]| {
        let output = Command::new(baton_bin())
            .arg("breaker")
            .args(args)
            .args(["--control-socket", &socket])
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    // A root process in agent `held`, connected before its breaker opens
    // (a quarantined agent may be denied new connections and execs).
    let mut agent = Command::new(baton_bin())
        .args(["exec", "--agent", "held", "--control-socket", &socket, "--"])
        .args([CLIENT, "requests", &socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = agent.stdin.take().unwrap();
    let mut replies = BufReader::new(agent.stdout.take().unwrap());
    let mut ask = |request: &str| {
        writeln!(input, "{request}").unwrap();
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        reply
    };
    assert!(
        ask(r#"{"op":"status"}"#).contains(r#""status":"status""#),
        "the agent reaches the daemon"
    );

    let (tripped, output) = breaker(&["trip", "held", "--action", "quarantine"]);
    assert!(tripped, "{output}");

    let reply = ask(r#"{"op":"breaker_reset","agent":"held"}"#);
    assert!(
        reply.contains(r#""status":"error""#) && reply.contains("belongs to agent held"),
        "{reply}"
    );
    let reply = ask(r#"{"op":"breaker_trip","agent":"other","action":"kill"}"#);
    assert!(reply.contains("belongs to agent held"), "{reply}");
    let record = daemon.wait_for_record(|r| {
        r["hook"] == "control_socket"
            && r["verdict"] == "denied"
            && r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("breaker reset of agent held refused"))
    });
    assert_eq!(record["agent"], "held");
    assert_eq!(record["control"], "breaker");

    let (_, list) = breaker(&["list"]);
    assert!(list.contains("open (quarantine)"), "still open: {list}");
    let (_, other) = breaker(&["list"]);
    assert!(!other.contains("open (kill)"), "{other}");

    // The operator: root, in no agent.
    let (reset, output) = breaker(&["reset", "held"]);
    assert!(reset, "{output}");
    assert!(output.contains("-> closed"), "{output}");

    drop(input);
    let _ = agent.wait();
}

/// Where BPF LSM loads, an agent running as root cannot make the daemon
/// the OOM killer's first choice: its `/proc` files are not writable to
/// agents.
#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_root_agent_cannot_write_the_daemons_oom_score_adj() {
    let daemon = Daemon::start("abuse-oom", &[("guard.yaml", permissive("guard"))]);
    let path = format!("/proc/{}/oom_score_adj", daemon.pid());
    let before = std::fs::read_to_string(&path).unwrap();
    let output = daemon.exec("guard", &["/bin/sh", "-c", &format!("echo 1000 > {path}")]);
    assert!(
        !output.status.success(),
        "the write succeeded: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    let record = daemon.wait_for_record(|r| r["object"]["path"] == path.as_str());
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["agent"], "guard");
    // Root outside every agent still can.
    std::fs::write(&path, before.trim()).unwrap();
    assert!(Path::new(&path).exists());
}

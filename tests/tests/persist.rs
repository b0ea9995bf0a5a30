//! Enforcement that survives the daemon: programs and maps pinned in bpffs
//! keep enforcing after `kill -9`, a restart adopts them with no window in
//! which a denied call gets through, and `baton uninstall` removes them.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, policy};
use serde_json::Value;

/// A listener that accepts and drops connections.
fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for connection in acceptor.incoming() {
            drop(connection);
        }
    });
    (listener, port)
}

/// Tries the denied and the allowed action in a tight loop until `stop`
/// exists, then prints how often the denied one got through and the
/// allowed one failed. `kind` is `connect` (ports) or `open` (paths).
const PROBER: &str = r#"
import os, socket, sys, time
kind, denied, allowed, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def attempt(target):
    if kind == 'connect':
        s = socket.socket()
        try:
            s.connect(('127.0.0.1', int(target)))
        finally:
            s.close()
    else:
        with open(target) as f:
            f.read(1)
leaks = misses = rounds = 0
# Opens are paced by a millisecond: under QEMU without KVM (the VM suite), a
# vCPU that runs into an LSM hook's call site while the restarting daemon
# re-patches it can take a stale int3 (seen as a soft lockup in
# bpf_lsm_file_open, and an int3 oops in bpf_lsm_socket_create), a fault of
# the emulator, not of Baton. Paced, the loop still runs thousands of rounds
# across the kill and the restart.
pace = 0.001 if kind == 'open' else 0
while not os.path.exists(stop):
    if pace:
        time.sleep(pace)
    try:
        attempt(denied)
        leaks += 1
    except OSError:
        pass
    try:
        attempt(allowed)
    except OSError:
        misses += 1
    rounds += 1
print(f"rounds {rounds} leaks {leaks} misses {misses}", flush=True)
"#;

struct Prober {
    child: Child,
    stop: std::path::PathBuf,
}

impl Prober {
    fn start(daemon: &Daemon, agent: &str, kind: &str, denied: &str, allowed: &str) -> Self {
        let stop = daemon.dir.path().join("stop-prober");
        let child = Command::new(baton_tests::baton_bin())
            .args(["exec", "--agent", agent, "--control-socket"])
            .arg(&daemon.socket)
            .args(["--", "python3", "-c", PROBER, kind, denied, allowed])
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child, stop }
    }

    /// Rounds so far cannot be read without stopping, so the caller waits
    /// a fixed time per phase; the loop runs thousands of rounds a second.
    fn finish(self) -> (u64, u64, u64) {
        std::fs::write(&self.stop, "").unwrap();
        let output = self.child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&output.stdout).to_string();
        let words: Vec<&str> = report.split_whitespace().collect();
        assert_eq!(words.len(), 6, "prober output: {report:?}");
        (
            words[1].parse().unwrap(),
            words[3].parse().unwrap(),
            words[5].parse().unwrap(),
        )
    }
}

/// Ids of the programs behind the links pinned in `pin_dir`, from bpftool
/// (independently of Baton's own view).
fn pinned_program_ids(pin_dir: &Path) -> Vec<(String, u64)> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(pin_dir.join("links")).unwrap() {
        let path = entry.unwrap().path();
        let output = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&path)
            .output()
            .expect("bpftool is installed by cargo xtask setup");
        let info: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("bpftool link show pinned {}", path.display()));
        ids.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            info["prog_id"].as_u64().unwrap(),
        ));
    }
    ids.sort();
    ids
}

/// Entries of a pinned map, from bpftool.
fn map_entries(pin_dir: &Path, map: &str) -> usize {
    let output = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("maps").join(map))
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    let entries: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("bpftool map dump of {map}"));
    entries.as_array().map_or(0, Vec::len)
}

/// Waits until the daemon has taken every event from the ring, as long as
/// it makes progress (a loaded machine drains slowly, a stalled drain not
/// at all). Returns the bytes left.
fn wait_for_drain(daemon: &Daemon) -> u64 {
    let pending = || {
        daemon.status()["audit"]["events_pending_bytes"]
            .as_u64()
            .unwrap()
    };
    let mut left = pending();
    let mut progress_at = Instant::now();
    while left > 0 && progress_at.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        let now = pending();
        if now < left {
            progress_at = Instant::now();
        }
        left = now;
    }
    left
}

/// Asserts that a connect from `agent` to `port` fails with `EPERM`.
fn assert_connect_denied(daemon: &Daemon, agent: &str, port: u16) {
    let script = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}))\n    print('connected')\nexcept OSError as e:\n    print(e.errno)"
    );
    let output = daemon.exec(agent, &["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "1",
        "the programs enforce (EPERM): {output:?}"
    );
}

/// Whether the kernel still has a program with this id.
fn program_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn message_records(daemon: &Daemon, prefix: &str) -> Vec<Value> {
    daemon
        .records()
        .into_iter()
        .filter(|r| {
            r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

/// The whole life cycle a test of `kind` goes through: enforce, kill -9,
/// enforce with no daemon, restart and adopt, enforce, uninstall.
fn survive_kill_and_restart(
    daemon: &mut Daemon,
    agent: &str,
    kind: &str,
    denied: &str,
    allowed: &str,
) {
    let prober = Prober::start(daemon, agent, kind, denied, allowed);
    // The prober's admission attaches the packet backstop to its cgroup
    // (one more link): the links are counted once it is in.
    let admitted = std::time::Instant::now();
    while !daemon.status()["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["agent"] == agent && a["processes"].as_u64() > Some(0))
    {
        assert!(
            admitted.elapsed() < Duration::from_secs(60),
            "the prober was not admitted within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = pinned_program_ids(&daemon.pin_dir);
    let rules_before = (
        map_entries(&daemon.pin_dir, "EGRESS_RULES"),
        map_entries(&daemon.pin_dir, "FILE_RULES"),
        map_entries(&daemon.pin_dir, "AGENT_POLICIES"),
    );
    assert!(
        before.iter().any(|(name, _)| name == "connect4"),
        "links are pinned: {before:?}"
    );
    daemon.kill();
    // No daemon at all for a while: the pinned programs decide alone.
    std::thread::sleep(Duration::from_secs(2));
    daemon.restart();
    std::thread::sleep(Duration::from_millis(500));
    let (rounds, leaks, misses) = prober.finish();
    assert!(
        rounds > 100,
        "the loop ran through the kill and restart: {rounds}"
    );
    assert_eq!(leaks, 0, "the denied {kind} got through ({rounds} rounds)");
    assert_eq!(misses, 0, "the allowed {kind} failed ({rounds} rounds)");

    // Adopted, not doubled: the same object and settings, so each hook
    // keeps the program that ran through the kill (no second load, no
    // re-attachment).
    let after = pinned_program_ids(&daemon.pin_dir);
    assert_eq!(
        before, after,
        "the restarted daemon kept the running programs"
    );
    // The restart swapped in its own generation and deleted the adopted
    // one: one generation's worth of rules, not two.
    let rules_after = (
        map_entries(&daemon.pin_dir, "EGRESS_RULES"),
        map_entries(&daemon.pin_dir, "FILE_RULES"),
        map_entries(&daemon.pin_dir, "AGENT_POLICIES"),
    );
    assert_eq!(rules_before, rules_after, "(egress, file, agent) entries");
    assert!(rules_after.2 > 0);
    let adopted = message_records(daemon, "adopted ");
    assert_eq!(adopted.len(), 1, "one adoption record");
    let message = adopted[0]["object"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{} links", before.len())),
        "{message}"
    );
    let down = message_records(daemon, &format!("while no daemon ran, agent {agent}:"));
    assert_eq!(
        down.len(),
        1,
        "what happened while no daemon ran is reported"
    );
}

#[test]
fn a_killed_daemon_keeps_enforcing_and_a_restart_adopts_with_no_gap() {
    let (_denied, denied) = listener();
    let (_allowed, allowed) = listener();
    let mut daemon = Daemon::start_persistent(
        "persist",
        &[(
            "p.yaml",
            policy(
                "persist",
                "persist",
                &format!(
                    "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1\n        ports: [{allowed}]\n"
                ),
            ),
        )],
    );
    survive_kill_and_restart(
        &mut daemon,
        "persist",
        "connect",
        &denied.to_string(),
        &allowed.to_string(),
    );
    // The restarted daemon still knows the agent's processes and rules:
    // a new denial names the agent and the rule.
    let output = daemon.exec(
        "persist",
        &[
            "python3",
            "-c",
            &format!(
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {denied}))\nexcept OSError as e:\n    print(e.errno)"
            ),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    let record = daemon.wait_for_record(|r| {
        r["object"]["port"] == denied && r["verdict"] == "denied" && r["agent"] == "persist"
    });
    assert_eq!(record["rule"]["policy"], "persist", "{record}");

    // A second daemon on the same pins is refused while this one runs.
    let config = daemon.dir.path().join("config.yaml");
    let second = Command::new(baton_tests::baton_bin())
        .args(["run", "--policy-dir"])
        .arg(daemon.dir.path().join("policies"))
        .arg("--config")
        .arg(&config)
        .arg("--audit-log")
        .arg(daemon.dir.path().join("second.jsonl"))
        .arg("--control-socket")
        .arg(daemon.dir.path().join("second.sock"))
        .arg("--pin-dir")
        .arg(&daemon.pin_dir)
        .arg("--state-dir")
        .arg(daemon.dir.path().join("second-state"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another running baton daemon"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // So is uninstall.
    assert!(!daemon.uninstall().status.success());

    // A clean stop without --cleanup-on-exit leaves enforcement in place
    // (fail-closed) ...
    daemon.kill();
    let outside_policy = Command::new("python3")
        .args(["-c", "print(1)"])
        .output()
        .unwrap();
    assert!(outside_policy.status.success());
    assert!(daemon.pin_dir.join("links/connect4").exists());
    // ... and uninstall removes everything under the pin directory.
    let output = daemon.uninstall();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !daemon.pin_dir.exists(),
        "nothing is left under {}",
        daemon.pin_dir.display()
    );
    assert!(!daemon.state_dir.join("registry.json").exists());
}

/// Denied connects as fast as one process can make them, until `stop`
/// exists.
const FLOOD: &str = r#"
import os, socket, sys
port, stop = int(sys.argv[1]), sys.argv[2]
while not os.path.exists(stop):
    for _ in range(200):
        s = socket.socket()
        try:
            s.connect(('127.0.0.1', port))
        except OSError:
            pass
        s.close()
"#;

/// A persistent daemon whose agent `agent` floods a denied port with
/// connects until `stop` exists; every denial is an event (no per-agent
/// rate limit) and the log stays one file.
struct Flood {
    daemon: Daemon,
    stop: std::path::PathBuf,
    child: std::process::Child,
}

impl Flood {
    fn start(label: &str, agent: &str, denied: u16) -> Self {
        let daemon = Daemon::start_persistent_with_config(
            label,
            &[(
                "p.yaml",
                policy(agent, agent, "  egress:\n    default: deny\n"),
            )],
            "audit:\n  eventsPerSecond: 0\n  rotation: { maxBytes: 0 }\n",
        );
        let stop = daemon.dir.path().join("stop-flood");
        let child = Command::new(baton_tests::baton_bin())
            .args(["exec", "--agent", agent, "--control-socket"])
            .arg(&daemon.socket)
            .args(["--", "python3", "-c", FLOOD, &denied.to_string()])
            .arg(&stop)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            daemon,
            stop,
            child,
        }
    }
}

#[test]
fn every_denial_is_recorded_across_kill_9_under_a_flood() {
    // A daemon killed while it holds a batch it has taken from the kernel
    // and not yet written must not lose it: the next daemon reads those
    // events again from the ring.
    let (_denied, denied) = listener();
    let Flood {
        mut daemon,
        stop,
        child: mut flood,
    } = Flood::start("persist-flood", "flood", denied);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        daemon.kill();
        std::thread::sleep(Duration::from_millis(200));
        daemon.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "").unwrap();
    assert!(flood.wait().unwrap().success());

    let counters = |daemon: &Daemon| {
        let status = daemon.status();
        let agent = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent"] == "flood")
            .cloned()
            .unwrap();
        (
            agent["counters"]["denied_connects"].as_u64().unwrap(),
            agent["counters"]["events_dropped"].as_u64().unwrap(),
        )
    };
    let denial_records = |daemon: &Daemon| {
        std::fs::read_to_string(&daemon.audit_log)
            .unwrap()
            .lines()
            .filter(|line| {
                line.contains("\"agent\":\"flood\"") && line.contains("\"verdict\":\"denied\"")
            })
            .count() as u64
    };
    let (kernel_denied, dropped) = counters(&daemon);
    assert!(
        kernel_denied > 5_000,
        "the flood ran: {kernel_denied} denials"
    );
    // The last daemon drains what is left: wait until the ring is empty,
    // then until the log holds a record for every denial the kernel did
    // not count as dropped (a full ring while no daemon ran) and stops
    // growing.
    assert_eq!(wait_for_drain(&daemon), 0, "the daemon stopped draining");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = denial_records(&daemon);
    let mut still = 0;
    while still < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = denial_records(&daemon);
        still = if now == records && records + dropped >= kernel_denied {
            still + 1
        } else {
            0
        };
        records = now;
    }
    assert!(
        records + dropped >= kernel_denied,
        "records lost: records {records} + dropped {dropped} < kernel denials {kernel_denied}"
    );
    // A kill between a batch's write and its hand-back to the kernel has
    // the next daemon write that batch again: at most one batch per kill.
    let batch = 1_024;
    assert!(
        records + dropped <= kernel_denied + 4 * batch,
        "more than a batch per kill written twice: records {records} + dropped {dropped} vs kernel denials {kernel_denied}"
    );
    daemon.kill();
    assert!(daemon.uninstall().status.success());
}

#[test]
fn a_restart_with_other_load_settings_replaces_every_program_once() {
    // The event rate is written into the programs at load: a daemon
    // restarted with another one must not keep the old programs (as it
    // does when nothing changed), and must not leave them attached next
    // to the new ones.
    let (_denied, denied) = listener();
    let mut daemon = Daemon::start_persistent_with_config(
        "persist-replace",
        &[(
            "p.yaml",
            policy("replace", "replace", "  egress:\n    default: deny\n"),
        )],
        "audit:\n  eventsPerSecond: 500\n",
    );
    let before = pinned_program_ids(&daemon.pin_dir);
    daemon.kill();
    std::fs::write(
        daemon.dir.path().join("config.yaml"),
        "audit:\n  eventsPerSecond: 700\n",
    )
    .unwrap();
    daemon.restart();
    let after = pinned_program_ids(&daemon.pin_dir);
    assert_eq!(
        before.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        after.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "the same links are pinned"
    );
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(
            old, new,
            "{name} kept its program across a changed event rate"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while before.iter().any(|(_, id)| program_exists(*id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, id) in &before {
        assert!(
            !program_exists(*id),
            "the old {name} program (id {id}) is still loaded: attached twice"
        );
    }
    assert_connect_denied(&daemon, "replace", denied);
    daemon.kill();
    assert!(daemon.uninstall().status.success());
}

#[test]
fn a_link_detached_while_no_daemon_ran_is_not_kept() {
    // A restart keeps the running programs only where they still run: a
    // link detached behind the daemon's back (by root, with no daemon to
    // notice) is replaced, or the restart would leave the hook empty.
    let (_denied, denied) = listener();
    let mut daemon = Daemon::start_persistent(
        "persist-detached",
        &[(
            "p.yaml",
            policy("detached", "detached", "  egress:\n    default: deny\n"),
        )],
    );
    let before = pinned_program_ids(&daemon.pin_dir);
    daemon.kill();
    let detach = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(daemon.pin_dir.join("links/connect4"))
        .output()
        .unwrap();
    assert!(detach.status.success(), "bpftool link detach: {detach:?}");
    daemon.restart();
    let after = pinned_program_ids(&daemon.pin_dir);
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if name == "connect4" {
            assert_ne!(old, new, "the detached connect4 link was kept");
        } else {
            assert_eq!(old, new, "{name} was loaded again though it still ran");
        }
    }
    assert_connect_denied(&daemon, "detached", denied);
    daemon.kill();
    assert!(daemon.uninstall().status.success());
}

#[test]
fn a_ring_that_filled_while_no_daemon_ran_is_drained_to_the_last_event() {
    // The ring buffer fills while the daemon is down (a slow restart, a
    // flood): the next daemon must read every event in it, not stop when
    // the kernel, finding no room, sends no more wake-ups.
    let (_denied, denied) = listener();
    let Flood {
        mut daemon,
        stop,
        child: mut flood,
    } = Flood::start("persist-full-ring", "full", denied);
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill();
    // Long enough for the flood to fill the 8 MiB ring (about 70,000
    // connect events) several times over.
    std::thread::sleep(Duration::from_secs(12));
    daemon.restart();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "").unwrap();
    assert!(flood.wait().unwrap().success());

    let status = daemon.status();
    let counters = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "full")
        .map(|a| a["counters"].clone())
        .unwrap();
    let kernel_denied = counters["denied_connects"].as_u64().unwrap();
    let dropped = counters["events_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "the ring never filled: {counters}");
    assert_eq!(
        wait_for_drain(&daemon),
        0,
        "the daemon stopped draining a full ring"
    );
    let records = std::fs::read_to_string(&daemon.audit_log)
        .unwrap()
        .lines()
        .filter(|line| {
            line.contains("\"agent\":\"full\"") && line.contains("\"verdict\":\"denied\"")
        })
        .count() as u64;
    let batch = 1_024;
    assert!(
        records + dropped >= kernel_denied && records + dropped <= kernel_denied + batch,
        "records {records} + dropped {dropped} vs kernel denials {kernel_denied}"
    );
    daemon.kill();
    assert!(daemon.uninstall().status.success());
}

#[test]
fn a_stopped_daemon_without_cleanup_keeps_enforcing_until_uninstall() {
    let (_denied, denied) = listener();
    let mut daemon = Daemon::start_persistent(
        "persist-stop",
        &[(
            "p.yaml",
            policy("stop", "stop", "  egress:\n    default: deny\n"),
        )],
    );
    // An agent process that outlives the daemon: it connects when told to
    // (a file appears), reports, and says it is done (another file).
    let dir = TempDir::new("persist-stop-agent");
    let script = format!(
        r#"
import os, socket, sys, time
for step in ('1', '2'):
    while not os.path.exists(os.path.join(sys.argv[1], 'go' + step)):
        time.sleep(0.02)
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', {denied}))
        print('ok', flush=True)
    except OSError as e:
        print(e.errno, flush=True)
    s.close()
    open(os.path.join(sys.argv[1], 'done' + step), 'w').close()
"#
    );
    let child = Command::new(baton_tests::baton_bin())
        .args(["exec", "--agent", "stop", "--control-socket"])
        .arg(&daemon.socket)
        .args(["--", "python3", "-c", &script])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM: a clean stop, without --cleanup-on-exit.
    // SAFETY: plain kill(2) on the daemon, our child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let step = |n: &str| {
        std::fs::write(dir.path().join(format!("go{n}")), "").unwrap();
        let done = dir.path().join(format!("done{n}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done.exists() {
            assert!(Instant::now() < deadline, "the agent did not try step {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // First attempt: the daemon is stopped, the pins still deny.
    step("1");
    // Second attempt after uninstall: nothing enforces any more, which is
    // what uninstall promises (and proves the first denial was the pins').
    let output = daemon.uninstall();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    step("2");
    let output = child.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        ["1", "ok"],
        "EPERM while stopped, allowed after uninstall"
    );
    daemon.kill();
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_killed_daemon_keeps_denying_opens_and_a_restart_adopts_with_no_gap() {
    let files = TempDir::new("persist-files");
    let secret_dir = files.path().join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("key.txt");
    let public = files.path().join("public.txt");
    std::fs::write(&secret, "s").unwrap();
    std::fs::write(&public, "p").unwrap();
    let mut daemon = Daemon::start_persistent(
        "persist-vm",
        &[(
            "p.yaml",
            policy(
                "persist-files",
                "persist-files",
                &format!(
                    "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n",
                    secret_dir.display()
                ),
            ),
        )],
    );
    assert!(
        !daemon.stderr().contains("file rules are NOT enforced"),
        "BPF LSM must load in the VM:\n{}",
        daemon.stderr()
    );
    assert!(daemon.pin_dir.join("links/file_open").exists());
    survive_kill_and_restart(
        &mut daemon,
        "persist-files",
        "open",
        secret.to_str().unwrap(),
        public.to_str().unwrap(),
    );
    daemon.kill();
    assert!(daemon.uninstall().status.success());
    assert!(!daemon.pin_dir.exists());
}

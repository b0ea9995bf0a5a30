//! Circuit breakers and limits on the host kernel: quarantine after
//! repeated denials, half-open recovery, manual reset and trip, freeze,
//! kill (double-forked processes included), a fork bomb under a process
//! limit, and the connect rate limit.

use std::time::{Duration, Instant};

use baton_tests::{Daemon, EPERM, TestCgroup, baton, helper_outcome, listener, policy, wait_until};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

fn breaker_policy(name: &str, allowed_port: u16, extra: &str) -> String {
    policy(
        name,
        name,
        &format!(
            "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1\n        ports: [{allowed_port}]\n  breakers:\n    - name: probing\n      when:\n        deniedConnects: {{moreThan: 20, withinSeconds: 60}}\n      action: quarantine\n      cooldownSeconds: 2\n      probeSeconds: 2\n{extra}"
        ),
    )
}

/// The helper's outcome; where BPF LSM enforces quarantine, exec'ing the
/// helper is itself denied, which is the same answer: EPERM.
fn quarantine_aware(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("Operation not permitted") {
        return EPERM.to_string();
    }
    helper_outcome(output)
}

fn breaker_cli(daemon: &Daemon, args: &[&str]) -> String {
    let mut full = vec!["breaker"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--control-socket", daemon.socket.to_str().unwrap()]);
    let output = baton(&full);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn repeated_denials_quarantine_the_agent_then_it_recovers() {
    let (_allowed, allowed) = listener();
    let (_denied, denied) = listener();
    let daemon = Daemon::start(
        "breaker",
        &[("p.yaml", breaker_policy("prober", allowed, ""))],
    );
    let connect = |port: u16| {
        quarantine_aware(&daemon.exec("prober", &[HELPER, "connect", &format!("127.0.0.1:{port}")]))
    };
    assert_eq!(connect(allowed), "ok", "before anything happened");
    let script = format!(
        "for i in $(seq 25); do {HELPER} connect 127.0.0.1:{denied} >/dev/null; done; sleep 0.1; {HELPER} connect 127.0.0.1:{allowed}"
    );
    let output = daemon.exec("prober", &["sh", "-c", &script]);
    assert_eq!(
        quarantine_aware(&output),
        EPERM,
        "quarantined: even the allowed port is denied"
    );
    let trip = daemon
        .records()
        .into_iter()
        .find(|r| r["control"] == "breaker")
        .expect("a trip record");
    let message = trip["object"]["message"].as_str().unwrap();
    assert!(message.contains("closed -> open (quarantine)"), "{message}");
    assert!(
        message.contains("prober/probing"),
        "the record names the breaker: {message}"
    );
    assert!(
        message.contains("\"denied_connects\":2"),
        "and the counts: {message}"
    );
    assert_eq!(trip["agent"], "prober");
    assert!(breaker_cli(&daemon, &["list"]).contains("open (quarantine)"));

    // After the cooldown the breaker is half-open and lets the agent work.
    wait_until("half-open", || {
        breaker_cli(&daemon, &["list"]).contains("half-open")
    });
    assert_eq!(connect(allowed), "ok", "half-open lifts the quarantine");
    // Misbehaving again re-opens it.
    let output = daemon.exec("prober", &["sh", "-c", &script]);
    assert_eq!(
        quarantine_aware(&output),
        EPERM,
        "re-tripped while half-open"
    );
    // An operator reset restores the agent at once.
    assert!(breaker_cli(&daemon, &["reset", "prober"]).contains("-> closed"));
    assert_eq!(connect(allowed), "ok", "reset restores the agent");
}

#[test]
fn manual_trip_and_reset() {
    let (_allowed, allowed) = listener();
    let daemon = Daemon::start(
        "manual",
        &[("p.yaml", breaker_policy("manual", allowed, ""))],
    );
    let connect = || {
        quarantine_aware(&daemon.exec(
            "manual",
            &[HELPER, "connect", &format!("127.0.0.1:{allowed}")],
        ))
    };
    assert_eq!(connect(), "ok");
    breaker_cli(&daemon, &["trip", "manual", "--action", "quarantine"]);
    assert_eq!(connect(), EPERM);
    breaker_cli(&daemon, &["reset", "manual"]);
    assert_eq!(connect(), "ok");
    let unprivileged = std::process::Command::new(baton_tests::baton_bin())
        .args([
            "breaker",
            "list",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ])
        .uid(65534)
        .output()
        .unwrap();
    assert!(!unprivileged.status.success(), "breaker commands need root");
}

use std::os::unix::process::CommandExt;

fn cpu_usage_usec(cgroup: &TestCgroup) -> u64 {
    std::fs::read_to_string(cgroup.dir.join("cpu.stat"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("usage_usec ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap()
}

#[test]
fn freeze_stops_a_busy_agent_and_reset_resumes_it() {
    let (_allowed, allowed) = listener();
    let cgroup = TestCgroup::new(&format!("/baton-test-freeze-{}", std::process::id()));
    let daemon = Daemon::start("freeze", &[("p.yaml", breaker_policy("busy", allowed, ""))]);
    // The busy loop runs in a cgroup of the test's own, to measure its CPU.
    let mut busy = std::process::Command::new(baton_tests::baton_bin())
        .args([
            "exec",
            "--agent",
            "busy",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ])
        .args(["--", "sh", "-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    cgroup.add(busy.id());
    std::thread::sleep(Duration::from_millis(300));
    let running = cpu_usage_usec(&cgroup);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cpu_usage_usec(&cgroup) - running > 100_000,
        "the loop burns CPU"
    );

    breaker_cli(&daemon, &["trip", "busy", "--action", "freeze"]);
    std::thread::sleep(Duration::from_millis(100));
    let frozen = cpu_usage_usec(&cgroup);
    std::thread::sleep(Duration::from_millis(1000));
    let used = cpu_usage_usec(&cgroup) - frozen;
    assert!(used < 20_000, "frozen: {used} µs of CPU in a second");

    breaker_cli(&daemon, &["reset", "busy"]);
    std::thread::sleep(Duration::from_millis(100));
    let resumed = cpu_usage_usec(&cgroup);
    std::thread::sleep(Duration::from_millis(500));
    assert!(cpu_usage_usec(&cgroup) - resumed > 100_000, "resumed");
    let _ = busy.kill();
    let _ = busy.wait();
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes: it runs no code.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

#[test]
fn kill_leaves_no_process_alive_even_double_forked_ones() {
    let (_allowed, allowed) = listener();
    let dir = baton_tests::TempDir::new("kill");
    let pids = dir.path().join("pids");
    let daemon = Daemon::start("kill", &[("p.yaml", breaker_policy("victim", allowed, ""))]);
    // A daemonised grandchild (setsid, parent gone) and a plain child.
    let script = format!(
        "setsid sh -c 'sleep 300 & echo $! >> {p}; sleep 300' & sleep 300 & echo $! >> {p}; echo $$ >> {p}; wait",
        p = pids.display()
    );
    let mut agent = std::process::Command::new(baton_tests::baton_bin())
        .args([
            "exec",
            "--agent",
            "victim",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ])
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_until("the agent's processes", || {
        std::fs::read_to_string(&pids)
            .map(|s| s.lines().count() >= 3)
            .unwrap_or(false)
    });
    let known: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(known.iter().all(|p| alive(*p)));
    breaker_cli(&daemon, &["trip", "victim", "--action", "kill"]);
    let _ = agent.wait();
    wait_until("every process to die", || known.iter().all(|p| !alive(*p)));
}

#[test]
fn a_fork_bomb_stays_under_the_process_limit() {
    let (_allowed, allowed) = listener();
    let daemon = Daemon::start(
        "forkbomb",
        &[(
            "p.yaml",
            breaker_policy("bomb", allowed, "  limits:\n    processes: 20\n"),
        )],
    );
    let started = Instant::now();
    // 200 sleepers requested; the limit lets at most 20 processes exist.
    // A fork bomb that counts: each child sleeps, the parent keeps forking
    // until the kernel says no.
    let bomb = r#"
import os, sys, time
print(open('/proc/self/cgroup').read(), flush=True)
started, refused = 0, 0
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        started += 1
    except BlockingIOError:
        refused += 1
print(f"started {started} refused {refused}", flush=True)
"#;
    let output = daemon.exec("bomb", &["python3", "-c", bomb]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("baton/bomb-"),
        "the agent has its own limited cgroup: {stdout}"
    );
    let counts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .expect("the counts");
    let mut words = counts.split_whitespace();
    let started_children: usize = words.next().unwrap().parse().unwrap();
    let refused: usize = words.nth(1).unwrap().parse().unwrap();
    assert!(
        started_children < 20,
        "{started_children} children ran at once under a limit of 20"
    );
    assert!(refused > 150, "the rest were refused: {refused}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the host stayed responsive"
    );
}

#[test]
fn connect_rate_limit_denies_the_excess() {
    let (_allowed, allowed) = listener();
    let daemon = Daemon::start(
        "rate",
        &[(
            "p.yaml",
            breaker_policy("rate", allowed, "  limits:\n    connectsPerSecond: 5\n"),
        )],
    );
    let script = format!("for i in $(seq 30); do {HELPER} connect 127.0.0.1:{allowed}; done");
    let output = daemon.exec("rate", &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ok = stdout.lines().filter(|l| *l == "ok").count();
    let denied = stdout.lines().filter(|l| *l == EPERM).count();
    assert_eq!(ok + denied, 30, "{stdout}");
    assert!(
        denied >= 15,
        "most of 30 quick connects exceed 5 per second: {ok} ok, {denied} denied"
    );
    assert!(ok >= 5, "the first five pass: {ok}");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_canary_trips_at_the_first_touch_and_quarantine_stops_writes_and_exec() {
    let (_allowed, allowed) = listener();
    let dir = baton_tests::TempDir::new("canary");
    let canary = dir.path().join("credentials");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&canary, "aws_secret_access_key = honey").unwrap();
    std::fs::write(&notes, "notes\n").unwrap();
    let daemon = Daemon::start(
        "canary",
        &[(
            "p.yaml",
            policy(
                "honey",
                "honey",
                &format!(
                    "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1\n        ports: [{allowed}]\n  files:\n    canaries:\n      - {}\n  breakers:\n    - name: honeypot\n      when: {{canary: true}}\n      action: quarantine\n      cooldownSeconds: 300\n",
                    canary.display()
                ),
            ),
        )],
    );
    // One bash process does it all: after the trip no new program may run
    // (exec is quarantined too), so the checks after it use only builtins.
    let script = format!(
        "(exec 3<>/dev/tcp/127.0.0.1/{allowed}) 2>/dev/null && echo connect-ok || echo connect-denied
{HELPER} open {canary} read
SECONDS=0; while [ $SECONDS -lt 2 ]; do :; done
(exec 3<>/dev/tcp/127.0.0.1/{allowed}) 2>/dev/null && echo connect-ok || echo connect-denied
(echo more >> {notes}) 2>/dev/null && echo write-ok || echo write-denied
/usr/bin/echo exec-ok 2>/dev/null || echo exec-denied
read line < {notes} && echo read-ok || echo read-failed
",
        canary = canary.display(),
        notes = notes.display()
    );
    let output = daemon.exec("honey", &["bash", "-c", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "connect-ok",
            EPERM,
            "connect-denied",
            "write-denied",
            "exec-denied",
            "read-ok"
        ],
        "before the canary, the canary itself, then quarantine (reads stay allowed)"
    );
    assert!(breaker_cli(&daemon, &["list"]).contains("open (quarantine)"));
    let record = daemon.wait_for_record(|r| {
        r["object"]["canary"] == true || r["rule"]["id"] == "files.canaries[0]"
    });
    assert_eq!(record["verdict"], "denied");
}

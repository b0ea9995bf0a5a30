//! `spec.explain`: a denied process learns why on its own standard error,
//! through its own open pipe, and never through a file.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, baton_bin, free_port, policy};

/// A Python agent process that tries a denied connect, prints `tried`,
/// then waits for its standard input to close.
fn denied_connect(port: u16) -> String {
    format!(
        "import socket, sys\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\nexcept OSError:\n    pass\nprint('tried', flush=True)\nsys.stdin.read()\n"
    )
}

fn spawn(daemon: &Daemon, agent: &str, command: &[&str]) -> Child {
    Command::new(baton_bin())
        .args(["exec", "--agent", agent, "--control-socket"])
        .arg(&daemon.socket)
        .arg("--")
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton exec")
}

/// Reads `child`'s standard error until a line contains `wanted` (or 30 s
/// pass: then the test fails), then lets the child finish.
fn wait_for_line(mut child: Child, wanted: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {wanted:?} on the agent's stderr; saw {seen:#?}"),
        }
    };
    drop(child.stdin.take());
    child.wait().unwrap();
    found
}

#[test]
fn a_denied_process_is_told_why_on_its_own_stderr_and_never_through_a_file() {
    let deny_all = "  egress:\n    default: deny\n";
    let daemon = Daemon::start(
        "explain",
        &[
            ("a.yaml", policy("explainpolicy", "told", deny_all)),
            (
                "b.yaml",
                policy(
                    "quietpolicy",
                    "quiet",
                    &format!("{deny_all}  explain: none\n"),
                ),
            ),
        ],
    );
    let port = free_port("127.0.0.1");
    let script = denied_connect(port);
    let expected = format!(
        "baton: connect to 127.0.0.1:{port} denied by policy explainpolicy (egress.default)"
    );

    // The denied process itself, a grandchild of the command baton exec ran.
    let child = spawn(&daemon, "told", &["sh", "-c", "python3 -c \"$0\"", &script]);
    let line = wait_for_line(child, &expected);
    assert!(line.ends_with("ask an operator to allow it"), "{line}");

    // Standard error on a file: a root-owned one, and one the agent opened
    // read-only (a write through that description would fail anyway; a
    // fresh open by the root daemon would not). Neither gets a byte.
    let dir = TempDir::new("explain");
    let owned = dir.path().join("root-owned");
    std::fs::write(&owned, "").unwrap();
    let read_only = dir.path().join("read-only");
    std::fs::write(&read_only, "").unwrap();
    for (target, redirect) in [(&owned, ">"), (&read_only, "<")] {
        let command = format!("python3 -c \"$0\" 2{redirect}{}", target.display());
        let mut child = spawn(&daemon, "told", &["sh", "-c", &command, &script]);
        drop(child.stdin.take());
        child.wait().unwrap();
    }
    // The writer handles lines in order: once a later line arrived, the
    // file cases were decided.
    let child = spawn(&daemon, "told", &["python3", "-c", &script]);
    wait_for_line(child, &expected);
    for file in [&owned, &read_only] {
        let content = std::fs::read_to_string(file).unwrap();
        assert!(!content.contains("baton:"), "{}: {content}", file.display());
    }

    // `explain: none`: nothing, decided before the next told line.
    let mut quiet = spawn(&daemon, "quiet", &["python3", "-c", &script]);
    let mut quiet_stderr = quiet.stderr.take().unwrap();
    let child = spawn(&daemon, "told", &["python3", "-c", &script]);
    wait_for_line(child, &expected);
    quiet.stdin.take().unwrap().write_all(b"").unwrap();
    quiet.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut quiet_stderr, &mut text).unwrap();
    assert!(!text.contains("baton: connect"), "{text}");
}

/// `command` in `agent` through `baton exec`, its standard error captured
/// to the end (which comes once the daemon lets go of its copy).
fn stderr_of(daemon: &Daemon, agent: &str, command: &[&str]) -> String {
    let output = daemon.exec(agent, command);
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Short commands, denied and gone before the daemon reads their denial,
/// still get their line: `curl` and `cat` straight under `baton exec`, and
/// a `curl` two shells down. A flood gets at most the per-second budget,
/// and `baton why` lists what was denied.
fn short_commands_are_told_why(label: &str) {
    let dir = TempDir::new(label);
    let secret = dir.path().join("deploy-key");
    std::fs::write(&secret, "key\n").unwrap();
    let agent = format!("{label}-agent");
    let policy_name = format!("{label}-policy");
    let daemon = Daemon::start(
        label,
        &[(
            "p.yaml",
            policy(
                &policy_name,
                &agent,
                &format!(
                    "  egress:\n    default: deny\n  files:\n    deny: [{}]\n",
                    secret.display()
                ),
            ),
        )],
    );
    let port = free_port("127.0.0.1");
    let url = format!("http://127.0.0.1:{port}/");
    let connect_line = format!(
        "baton: connect to 127.0.0.1:{port} denied by policy {policy_name} (egress.default)"
    );
    let read_line = format!(
        "baton: read of {} denied by policy {policy_name} (files.deny[0])",
        secret.display()
    );
    let secret_path = secret.display().to_string();
    // Three rounds, a second apart: two lines a round stay within the
    // agent's five a second.
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        let curl = stderr_of(&daemon, &agent, &["curl", "-sS", "--max-time", "5", &url]);
        assert!(curl.contains(&connect_line), "round {round}, curl: {curl}");
        let cat = stderr_of(&daemon, &agent, &["cat", &secret_path]);
        assert!(cat.contains(&read_line), "round {round}, cat: {cat}");
    }
    std::thread::sleep(Duration::from_millis(1100));
    let nested = format!("sh -c \"curl -sS --max-time 5 {url}; true\"; true");
    let grandchild = stderr_of(&daemon, &agent, &["sh", "-c", &nested]);
    assert!(
        grandchild.contains(&connect_line),
        "grandchild: {grandchild}"
    );

    // `baton why`, inside the agent: both kinds of denial, with their rule.
    let baton = baton_bin();
    let why = daemon.exec(
        &agent,
        &[
            baton.to_str().unwrap(),
            "why",
            "--recent",
            "50",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ],
    );
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(why.contains(&secret_path), "{why}");
    assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");

    // A flood: 300 denied connects as fast as one process makes them, and
    // the process stays two seconds more.
    std::thread::sleep(Duration::from_millis(1100));
    let flood = format!(
        "import socket, time\nstart = time.time()\nfor _ in range(300):\n    s = socket.socket()\n    try:\n        s.connect(('127.0.0.1', {port}))\n    except OSError:\n        pass\n    s.close()\ntime.sleep(2)\nprint(round(time.time() - start + 0.5))\n"
    );
    let output = daemon.exec(&agent, &["python3", "-c", &flood]);
    let seconds: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(3);
    let lines = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.contains(&connect_line))
        .count() as u32;
    assert!(lines >= 1, "the flood got no line");
    assert!(
        lines <= 5 * (seconds + 1),
        "{lines} lines in about {seconds} s: more than 5 a second"
    );
}

#[test]
fn short_commands_are_told_why_on_the_host() {
    short_commands_are_told_why("explain-short");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_short_commands_are_told_why_with_bpf_lsm() {
    short_commands_are_told_why("explain-short-vm");
}

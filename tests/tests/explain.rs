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

//! The audit trail end to end: a real denial from a real process tree,
//! enriched and redacted; the log verified, then tampered with, by the
//! `baton audit` commands; a log directory the daemon cannot write.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use baton_tests::{Daemon, TempDir, baton, baton_bin, policy};
use serde_json::Value;

/// The daemon's key unless the configuration names another.
const DEFAULT_KEY: &str = "/var/lib/baton/audit.key";

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn verify(pubkey: &str, files: &[&Path], extra: &[&str]) -> Output {
    Command::new(baton_bin())
        .args(["audit", "verify", "--pubkey", pubkey])
        .args(extra)
        .args(files)
        .output()
        .expect("spawn baton audit verify")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A copy of the daemon's log to tamper with, once the records are in.
fn snapshot(daemon: &Daemon, dir: &TempDir) -> PathBuf {
    let copy = dir.path().join("audit.jsonl");
    std::fs::copy(&daemon.audit_log, &copy).unwrap();
    copy
}

#[test]
fn a_denial_from_a_process_tree_is_recorded_whole_and_the_log_verifies() {
    let closed_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (port, second_port) = (closed_port(), closed_port());
    // Two more denials follow the first: the record after an edited one
    // shows which of two neighbours changed.
    let daemon = Daemon::start(
        "audit-tree",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
    );
    // shell -> python -> python, the last with a bearer token on its
    // command line. It stays alive after its denied connects, so procfs
    // still has it when the daemon enriches the records: a process that
    // exits at once leaves only what the kernel sent (pid, comm, ids).
    let connector = "import socket, sys, time\n\
                     for port in sys.argv[1:4]:\n    \
                         socket.socket().connect_ex((\"127.0.0.1\", int(port)))\n\
                     time.sleep(2)";
    let script = format!(
        "python3 -c 'import subprocess, sys; subprocess.run(sys.argv[1:])' \
         python3 -c '{connector}' {port} {second_port} {second_port} \
         'Authorization: Bearer sekrit-token-4242'; true"
    );
    let output = daemon.exec("demo", &["sh", "-c", &script]);
    assert!(output.status.success(), "{}", text(&output));

    let record = daemon
        .wait_for_record(|r| r["control"] == "egress" && r["object"]["port"] == u64::from(port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon
        .decisions()
        .iter()
        .filter(|r| r["object"]["port"] == u64::from(second_port))
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the later denials were not recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let raw = std::fs::read_to_string(&daemon.audit_log).unwrap();
    assert!(
        !raw.contains("sekrit-token"),
        "the secret reached the log:\n{raw}"
    );
    let process = &record["process"];
    assert_eq!(process["comm"], "python3");
    let cmdline: Vec<&str> = process["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        cmdline.contains(&"Authorization: Bearer [REDACTED]"),
        "{cmdline:?}"
    );
    assert!(
        process["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with('/')),
        "{process}"
    );
    // Ancestors: python, then the shell, which is the agent's root.
    let ancestors = process["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "{process}");
    assert!(
        ancestors[0]["cmdline"][0]
            .as_str()
            .unwrap()
            .contains("python3"),
        "{process}"
    );
    assert!(
        ancestors[0]["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "Authorization: Bearer [REDACTED]"),
        "the parent's command line is redacted too: {process}"
    );
    assert_eq!(ancestors[1]["pid"], process["agent_root_pid"]);
    assert_eq!(ancestors[1]["cmdline"][0], "sh");
    let seq = record["seq"].as_u64().unwrap();
    assert!(seq > 1);
    assert_eq!(record["prev_hash"].as_str().unwrap().len(), 64);

    let pubkey = baton(&["audit", "pubkey", "--key", DEFAULT_KEY]);
    assert!(pubkey.status.success(), "{}", text(&pubkey));
    let pubkey = String::from_utf8(pubkey.stdout).unwrap().trim().to_string();
    assert_eq!(pubkey.len(), 64);

    let scratch = TempDir::new("audit-tamper");
    let log = snapshot(&daemon, &scratch);
    let output = verify(&pubkey, &[&log], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("OK: the chain and every checkpoint verify"),
        "{stdout}"
    );

    let original = lines(&log);
    // One byte edited in the denial record.
    let index = original
        .iter()
        .position(|l| serde_json::from_str::<Value>(l).unwrap()["seq"] == seq)
        .unwrap();
    assert!(index + 2 < original.len(), "the later denials follow");
    let mut edited = original.clone();
    edited[index] = edited[index].replacen("\"python3\"", "\"python4\"", 1);
    write_lines(&log, &edited);
    let output = verify(&pubkey, &[&log], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "audit.jsonl:{}: seq {seq}: record was edited",
            index + 1
        )),
        "{}",
        text(&output)
    );

    // The tail cut, against a head taken before: named as truncation.
    let last: Value = serde_json::from_str(original.last().unwrap()).unwrap();
    let head = format!(
        "{}:{}",
        last["seq"],
        sha256_hex(original.last().unwrap().as_bytes())
    );
    write_lines(&log, &original[..original.len() - 1]);
    let output = verify(&pubkey, &[&log], &[]);
    assert!(
        output.status.success(),
        "offline, a cut tail is invisible: {}",
        text(&output)
    );
    let output = verify(&pubkey, &[&log], &["--head", &head]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("missing after this record"),
        "{}",
        text(&output)
    );

    // Killed mid-write: an incomplete final line, not tampering.
    let mut torn = original.join("\n") + "\n";
    torn.push_str(&original[0][..original[0].len() / 2]);
    std::fs::write(&log, torn).unwrap();
    let output = verify(&pubkey, &[&log], &[]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let all = text(&output);
    assert!(all.contains("incomplete final record"), "{all}");
    assert!(!all.contains("TAMPERED"), "{all}");
}

/// SHA-256 in hex, by coreutils, so the test does not share the daemon's
/// hashing code.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn an_unwritable_log_directory_stops_the_daemon_with_a_clear_error() {
    let dir = TempDir::new("audit-unwritable");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("demo.yaml"),
        policy("demo", "demo", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "").unwrap();
    let log = locked.join("log/audit.jsonl");
    // An unprivileged user: root writes through any permission bits.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(baton_bin())
        .arg("run")
        .arg("--policy-dir")
        .arg(&policies)
        .arg("--audit-log")
        .arg(&log)
        .arg("--control-socket")
        .arg(dir.path().join("baton.sock"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "baton: cannot open audit log {}: Permission denied",
            log.display()
        )),
        "{}",
        text(&output)
    );
}

#[test]
fn pubkey_without_a_key_says_so() {
    let dir = TempDir::new("audit-nokey");
    let missing = dir.path().join("none.key");
    let output = baton(&["audit", "pubkey", "--key", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "audit signing key {}: No such file",
            missing.display()
        )),
        "{stderr}"
    );
}

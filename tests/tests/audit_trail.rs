//! The audit trail end to end: a real denial from a real process tree,
//! enriched and redacted; the log verified, then tampered with, by the
//! `baton audit` commands; a daemon killed with SIGKILL while it writes;
//! a flood of denials far over the event rate; a log directory the daemon
//! cannot write.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, baton, baton_bin, free_port, policy};
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

/// An environment-style secret (`AWS_SECRET_ACCESS_KEY=...`) in the
/// command lines of the denied process and of both its ancestors, and a
/// secret matched only by an operator's pattern from the configuration:
/// neither reaches the log, and the rest of each command line does.
#[test]
fn environment_style_secrets_and_operator_patterns_are_redacted_in_ancestors() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let daemon = Daemon::start_with_config(
        "audit-envsecret",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
        "audit:\n  redaction:\n    patterns:\n      - 'corp-[0-9]{8}'\n",
    );
    // Synthetic, of the shape of an AWS secret access key.
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSYNTHETIC0";
    let connector = "import socket, sys, time\n\
                     socket.socket().connect_ex((\"127.0.0.1\", int(sys.argv[1])))\n\
                     time.sleep(2)";
    let script = format!(
        "python3 -c 'import subprocess, sys; subprocess.run(sys.argv[1:])' \
         python3 -c '{connector}' {port} AWS_SECRET_ACCESS_KEY={secret} corp-12345678; true"
    );
    let output = daemon.exec("demo", &["sh", "-c", &script]);
    assert!(output.status.success(), "{}", text(&output));
    let record = daemon
        .wait_for_record(|r| r["control"] == "egress" && r["object"]["port"] == u64::from(port));
    let raw = std::fs::read_to_string(&daemon.audit_log).unwrap();
    assert!(
        !raw.contains("wJalrXUtnFEMI"),
        "the secret reached the log:\n{raw}"
    );
    assert!(
        !raw.contains("corp-12345678"),
        "the operator's secret reached the log:\n{raw}"
    );
    let process = &record["process"];
    let cmdline = strings(&process["cmdline"]);
    assert!(
        cmdline.contains(&"AWS_SECRET_ACCESS_KEY=[REDACTED]") && cmdline.contains(&"[REDACTED]"),
        "{record}"
    );
    assert!(cmdline.contains(&port.to_string().as_str()), "{record}");
    let ancestors = process["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "python3 -> python3 -> sh: {record}");
    let parent = strings(&ancestors[0]["cmdline"]);
    assert!(
        parent[0].ends_with("python3") && parent[1] == "-c",
        "{record}"
    );
    assert!(
        parent.contains(&"AWS_SECRET_ACCESS_KEY=[REDACTED]"),
        "the parent's argument: {record}"
    );
    let shell = strings(&ancestors[1]["cmdline"]);
    assert_eq!(shell[..2], ["sh", "-c"], "{record}");
    assert!(
        shell[2].contains("AWS_SECRET_ACCESS_KEY=[REDACTED] [REDACTED]; true"),
        "the assignment inside the shell's script: {record}"
    );
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
    // Another user's private folder.
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&locked, Some(65534), Some(65534)).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "").unwrap();
    let log = locked.join("log/audit.jsonl");
    let pin_dir = std::path::Path::new("/sys/fs/bpf").join(format!(
        "baton-test-audit-unwritable-{}",
        std::process::id()
    ));
    // Root as the unit runs it, without CAP_DAC_OVERRIDE (or
    // CAP_DAC_READ_SEARCH here, which would let it in to look): permission
    // bits hold for it.
    let output = Command::new("setpriv")
        .args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            "--",
        ])
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
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("setpriv (util-linux)");
    // The daemon stopped before it pinned anything, but made the folder.
    let _ = std::fs::remove_dir_all(&pin_dir);
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

/// Debian's interpreter, not whatever `python3` a developer's PATH finds
/// first: the ancestor chain names its real executable.
const PYTHON: &str = "/usr/bin/python3";

/// The host name as the kernel has it, read independently of the daemon.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Where a command's path really leads (`/bin/sh` is `dash` on Debian).
fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .display()
        .to_string()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The public key of the daemon's default signing key, in hex.
fn default_pubkey() -> String {
    let output = baton(&["audit", "pubkey", "--key", DEFAULT_KEY]);
    assert!(output.status.success(), "{}", text(&output));
    let pubkey = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(pubkey.len(), 64);
    pubkey
}

/// Every file of the daemon's log: the active file and the rotated ones.
fn log_files(daemon: &Daemon) -> Vec<PathBuf> {
    let dir = daemon.audit_log.parent().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit.jsonl"))
        })
        .collect();
    files.sort();
    files
}

fn verify_all(pubkey: &str, daemon: &Daemon) -> Output {
    let files = log_files(daemon);
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    verify(pubkey, &files, &[])
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, and today or yesterday (UTC).
fn assert_rfc3339_now(time: &str) {
    let bytes = time.as_bytes();
    let shape_ok = bytes.len() == 30
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            29 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape_ok, "not RFC 3339 UTC with nanoseconds: {time}");
    let today = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    let today = String::from_utf8_lossy(&today.stdout).trim().to_string();
    let yesterday = Command::new("date")
        .args(["-u", "-d", "yesterday", "+%Y-%m-%d"])
        .output()
        .unwrap();
    let yesterday = String::from_utf8_lossy(&yesterday.stdout)
        .trim()
        .to_string();
    assert!(
        time.starts_with(&today) || time.starts_with(&yesterday),
        "{time} is not today ({today})"
    );
}

/// Asserts every field a kernel decision record carries, besides the
/// object and the process's enrichment: the header fields, the verdict,
/// control, hook, the deciding rule and the process ids.
fn assert_decision_header(
    record: &Value,
    agent: &str,
    control: &str,
    hook: &str,
    rule: (&str, &str),
    ids: (u64, u64),
) {
    assert_eq!(record["schema"], "baton.audit/v1", "{record}");
    assert!(record["seq"].as_u64().unwrap() > 1, "{record}");
    let prev = record["prev_hash"].as_str().unwrap();
    assert!(
        prev.len() == 64 && prev.bytes().all(|b| b.is_ascii_hexdigit()),
        "{record}"
    );
    assert_rfc3339_now(record["time"].as_str().unwrap());
    assert_eq!(record["host"], host_name().as_str(), "{record}");
    assert_eq!(record["agent"], agent, "{record}");
    assert_eq!(record["mode"], "enforce", "{record}");
    assert_eq!(record["verdict"], "denied", "{record}");
    assert_eq!(record["control"], control, "{record}");
    assert_eq!(record["hook"], hook, "{record}");
    assert_eq!(record["rule"]["policy"], rule.0, "{record}");
    assert_eq!(record["rule"]["id"], rule.1, "{record}");
    assert!(
        record["rule"]["kernel_id"].as_u64().unwrap() > 0,
        "{record}"
    );
    let process = &record["process"];
    assert!(process["pid"].as_u64().unwrap() > 1, "{record}");
    assert_eq!(process["tid"], process["pid"], "single-threaded: {record}");
    assert_eq!(process["uid"], ids.0, "{record}");
    assert_eq!(process["gid"], ids.1, "{record}");
    assert!(process["cgroup_id"].as_u64().unwrap() > 0, "{record}");
    assert!(
        process["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with('/')),
        "{record}"
    );
    assert!(process["agent_root_pid"].as_u64().unwrap() > 1, "{record}");
}

/// Asserts that the record's process is curl, started by python3, started
/// by `sh`, the agent's root process (`pids`: python's and the shell's, as
/// they printed them), each named with pid, executable and command line.
fn assert_curl_python_sh_chain(record: &Value, url: &str, pids: (u64, u64)) {
    let process = &record["process"];
    assert_eq!(process["comm"], "curl", "{record}");
    assert_eq!(
        process["exe"],
        canonical("/usr/bin/curl").as_str(),
        "{record}"
    );
    let cmdline = strings(&process["cmdline"]);
    assert_eq!(cmdline[0], "curl", "{record}");
    assert!(cmdline.contains(&url), "{record}");
    let ancestors = process["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "curl -> python3 -> sh: {record}");
    let (python, shell) = (&ancestors[0], &ancestors[1]);
    assert_eq!(python["pid"], pids.0, "{record}");
    assert_eq!(python["exe"], canonical(PYTHON).as_str(), "{record}");
    assert_eq!(strings(&python["cmdline"])[..2], [PYTHON, "-c"], "{record}");
    assert_eq!(shell["pid"], pids.1, "{record}");
    assert_eq!(shell["pid"], process["agent_root_pid"], "{record}");
    assert_eq!(shell["exe"], canonical("/bin/sh").as_str(), "{record}");
    assert_eq!(strings(&shell["cmdline"])[..2], ["sh", "-c"], "{record}");
}

/// `python=PID` and `sh=PID` as the agent's processes printed them.
fn printed_pids(output: &Output) -> (u64, u64) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid = |name: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= line: {}", text(output)))
            .trim()
            .parse()
            .unwrap()
    };
    (pid("python"), pid("sh"))
}

/// A shell, as an unprivileged user, runs python3, which runs `command`
/// (extra arguments after the script) and waits for it. The shell and
/// python print their pids.
fn sh_python_runs(command: &str) -> Vec<String> {
    let script = format!(
        "echo sh=$$; {PYTHON} -c 'import os, subprocess, sys; \
         print(\"python=%d\" % os.getpid(), flush=True); \
         subprocess.run(sys.argv[1:])' {command}; true"
    );
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        &script,
    ]
    .map(String::from)
    .to_vec()
}

/// curl retrying a failed transfer twice, a second apart: three attempts,
/// and curl still runs when the daemon enriches the first record.
fn curl_with_retries(url: &str) -> String {
    format!("curl -sS -o /dev/null --retry 2 --retry-delay 1 --retry-all-errors {url}")
}

#[test]
fn a_denied_connect_from_sh_python_curl_is_recorded_with_every_field_and_the_chain() {
    let port = free_port("127.0.0.1");
    let daemon = Daemon::start(
        "audit-chain",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
    );
    let url = format!("http://127.0.0.1:{port}/");
    let command = sh_python_runs(&curl_with_retries(&url));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let output = daemon.exec("demo", &command);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Failed to connect") || stderr.contains("Couldn't connect"),
        "curl was refused: {}",
        text(&output)
    );
    let pids = printed_pids(&output);

    let matches = |r: &Value| r["control"] == "egress" && r["object"]["port"] == u64::from(port);
    let record = daemon.wait_for_record(matches);
    assert_decision_header(
        &record,
        "demo",
        "egress",
        "connect4",
        ("demo", "egress.default"),
        (65534, 65534),
    );
    assert_eq!(record["object"]["address"], "127.0.0.1", "{record}");
    assert_eq!(record["object"]["protocol"], "tcp", "{record}");
    assert_curl_python_sh_chain(&record, &url, pids);

    // One record per denied connect: three attempts, three records.
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = || daemon.decisions().iter().filter(|r| matches(r)).count();
    while count() < 3 {
        assert!(Instant::now() < deadline, "{} of 3 records", count());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), 3, "exactly one record per denied connect");
}

/// Resumes a stopped process when dropped, so a failing test does not
/// leave the daemon stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        // SAFETY: plain kill(2) on the test's own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(content) = std::fs::read_to_string(path) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_process_that_exited_before_enrichment_still_names_its_parents() {
    let port = free_port("127.0.0.1");
    let daemon = Daemon::start(
        "audit-exited",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
    );
    let sync = TempDir::new("audit-exited-sync");
    std::fs::set_permissions(sync.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = |name: &str| sync.path().join(name);
    // python waits for `go`, runs curl once (no retries: it exits right
    // after its denied connect), reports curl's pid in `done`, and stays
    // until `end`.
    let url = format!("http://127.0.0.1:{port}/");
    let script = format!(
        "echo sh=$$; {PYTHON} -c '\
import os, subprocess, sys, time
d = sys.argv[1]
def wait(name):
    while not os.path.exists(os.path.join(d, name)): time.sleep(0.01)
print(\"python=%d\" % os.getpid(), flush=True)
open(os.path.join(d, \"ready\"), \"w\").close()
wait(\"go\")
curl = subprocess.Popen([\"curl\", \"-sS\", \"-o\", \"/dev/null\", sys.argv[2]])
curl.wait()
with open(os.path.join(d, \"done.tmp\"), \"w\") as f: f.write(str(curl.pid))
os.rename(os.path.join(d, \"done.tmp\"), os.path.join(d, \"done\"))
wait(\"end\")' {} {url}; true",
        sync.path().display()
    );
    let agent = Command::new(baton_bin())
        .args(["exec", "--agent", "demo", "--control-socket"])
        .arg(&daemon.socket)
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let agent = scopeguard(agent);
    wait_for_file(&file("ready"));

    // The daemon is stopped while curl runs, is denied and exits: when it
    // reads the event, procfs no longer has curl. Only the kernel's event
    // can lead from curl to its parent.
    let curl_pid: u32 = {
        let _stopped = Stopped::new(daemon.pid());
        std::fs::write(file("go"), "").unwrap();
        let pid = wait_for_file(&file("done")).trim().parse().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "curl has exited and been reaped"
        );
        pid
    };
    let record = daemon
        .wait_for_record(|r| r["control"] == "egress" && r["object"]["port"] == u64::from(port));
    std::fs::write(file("end"), "").unwrap();
    let output = agent.into_inner().wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let pids = printed_pids(&output);

    assert_decision_header(
        &record,
        "demo",
        "egress",
        "connect4",
        ("demo", "egress.default"),
        (65534, 65534),
    );
    let process = &record["process"];
    assert_eq!(process["pid"], curl_pid, "{record}");
    assert_eq!(process["comm"], "curl", "from the kernel: {record}");
    assert!(
        process.get("exe").is_none() && process.get("cmdline").is_none(),
        "procfs had nothing left of curl: {record}"
    );
    let ancestors = process["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "python3 -> sh: {record}");
    assert_eq!(ancestors[0]["pid"], pids.0, "{record}");
    assert_eq!(ancestors[0]["exe"], canonical(PYTHON).as_str(), "{record}");
    assert_eq!(ancestors[1]["pid"], pids.1, "{record}");
    assert_eq!(ancestors[1]["pid"], process["agent_root_pid"], "{record}");
    assert_eq!(strings(&ancestors[1]["cmdline"])[0], "sh", "{record}");
}

/// Kills a child on drop unless taken back with `into_inner`.
struct ChildGuard(Option<std::process::Child>);

fn scopeguard(child: std::process::Child) -> ChildGuard {
    ChildGuard(Some(child))
}

impl ChildGuard {
    fn into_inner(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Python program that connects to `127.0.0.1:PORT` as fast as it can
/// for SECONDS and prints how many connects it tried and how many did not
/// fail with EPERM.
const FLOOD: &str = "\
import os, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
tried = other = 0
while time.monotonic() < end:
    s = socket.socket()
    if s.connect_ex((\"127.0.0.1\", port)) != 1:
        other += 1
    s.close()
    tried += 1
# One write(2) per line: the flooders share the pipe, and print() may
# write the text and its newline separately, interleaving the lines.
os.write(1, (\"tried=%d other=%d\\n\" % (tried, other)).encode())
";

/// `baton exec` of `processes` flooders, each for `seconds`.
fn flood_command(daemon: &Daemon, agent: &str, port: u16, processes: u32, seconds: f64) -> Command {
    let script = daemon.dir.path().join("flood.py");
    std::fs::write(&script, FLOOD).unwrap();
    let mut command = Command::new(baton_bin());
    command
        .args(["exec", "--agent", agent, "--control-socket"])
        .arg(&daemon.socket)
        .args([
            "--",
            "sh",
            "-c",
            &format!(
                "i=0; while [ $i -lt {processes} ]; do {PYTHON} {} {port} {seconds} & i=$((i+1)); done; wait",
                script.display()
            ),
        ]);
    command
}

#[test]
fn a_daemon_killed_while_writing_leaves_a_log_that_verifies_or_ends_incomplete() {
    let port = free_port("127.0.0.1");
    // No event rate limit and frequent checkpoints: the daemon writes (and
    // syncs) all the time, so every kill lands in the middle of it.
    let mut daemon = Daemon::start_with_config(
        "audit-kill",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
        "audit:\n  eventsPerSecond: 0\n  checkpoints:\n    everyRecords: 50\n",
    );
    let pubkey = default_pubkey();
    let mut torn_seen = false;
    for round in 0..4 {
        let before = std::fs::metadata(&daemon.audit_log).map_or(0, |m| m.len());
        let flood = scopeguard(
            flood_command(&daemon, "demo", port, 2, 2.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Kill once records stream in, a little later each round.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&daemon.audit_log).map_or(0, |m| m.len()) < before + 20_000 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no records streamed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(37 * round));
        daemon.kill();
        let _ = flood.into_inner().wait();

        let output = verify_all(&pubkey, &daemon);
        let all = text(&output);
        eprintln!("round {round}: verify exited with {}", output.status);
        assert!(!all.contains("TAMPERED"), "round {round}: {all}");
        match output.status.code() {
            Some(0) => assert!(all.contains("OK: the chain"), "round {round}: {all}"),
            Some(3) => {
                assert!(
                    all.contains("incomplete final record") && all.contains("not tampering"),
                    "round {round}: {all}"
                );
                torn_seen = true;
            }
            _ => panic!("round {round}: a killed writer is not tampering: {all}"),
        }
        daemon.restart();
    }
    let output = Command::new(baton_bin())
        .args(["status", "--control-socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(daemon.stop().success(), "{}", daemon.stderr());
    // Four kills and restarts later, the whole log is one chain.
    let output = verify_all(&pubkey, &daemon);
    let all = text(&output);
    assert!(!all.contains("TAMPERED"), "{all}");
    let expected = if torn_seen { 3 } else { 0 };
    assert_eq!(output.status.code(), Some(expected), "{all}");
    let files = log_files(&daemon);
    let last: Value = serde_json::from_str(
        lines(files.iter().find(|f| f.ends_with("audit.jsonl")).unwrap())
            .last()
            .unwrap(),
    )
    .unwrap();
    assert!(
        all.contains(&format!("records seq 1 to {}", last["seq"])),
        "{all}"
    );
}

#[test]
fn a_restarted_daemon_chains_on_after_a_torn_final_record() {
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start(
        "audit-torn",
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
    );
    let pubkey = default_pubkey();
    let connect = |daemon: &Daemon| {
        let output = daemon.exec(
            "demo",
            &[
                PYTHON,
                "-c",
                &format!(
                    "import socket; print(socket.socket().connect_ex((\"127.0.0.1\", {port})))"
                ),
            ],
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1", "EPERM");
    };
    connect(&daemon);
    daemon.wait_for_record(|r| r["object"]["port"] == u64::from(port));
    daemon.kill();
    // A record cut short, as SIGKILL leaves one when it lands between the
    // pages of a write (the daemon writes a record with one write(2), so
    // only the final line can be cut): the first half of a real record,
    // with no newline.
    let complete = lines(&daemon.audit_log);
    let last_line = complete.last().unwrap().clone();
    let last: Value = serde_json::from_str(&last_line).unwrap();
    let last_seq = last["seq"].as_u64().unwrap();
    {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&daemon.audit_log)
            .unwrap();
        log.write_all(&last_line.as_bytes()[..last_line.len() / 2])
            .unwrap();
    }
    let output = verify_all(&pubkey, &daemon);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));

    daemon.restart();
    // The torn file was rotated as it was, fragment last, under the name
    // of its first record's seq; the new file opens with a record saying so.
    let rotated = daemon.audit_log.with_file_name("audit.jsonl.1");
    let rotated_text = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        rotated_text.ends_with(&last_line[..last_line.len() / 2]),
        "the fragment stays the rotated file's final line"
    );
    let first: Value = serde_json::from_str(&lines(&daemon.audit_log)[0]).unwrap();
    assert_eq!(first["seq"], last_seq + 1, "{first}");
    assert_eq!(
        first["prev_hash"],
        sha256_hex(last_line.as_bytes()).as_str(),
        "chained to the last complete record: {first}"
    );
    assert_eq!(first["control"], "audit", "{first}");
    assert!(
        first["object"]["message"]
            .as_str()
            .unwrap()
            .contains("ended with an incomplete record"),
        "{first}"
    );
    connect(&daemon);
    daemon.wait_for_record(|r| {
        r["object"]["port"] == u64::from(port) && r["seq"].as_u64().unwrap() > last_seq
    });
    assert!(daemon.stop().success(), "{}", daemon.stderr());

    let output = verify_all(&pubkey, &daemon);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(3), "{all}");
    assert!(!all.contains("TAMPERED"), "{all}");
    assert!(
        all.contains(&format!(
            "audit.jsonl.1:{}: incomplete final record",
            complete.len() + 1
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!("the chain continues after seq {last_seq}")),
        "{all}"
    );
    let end: Value = serde_json::from_str(lines(&daemon.audit_log).last().unwrap()).unwrap();
    assert!(
        all.contains(&format!("records seq 1 to {}", end["seq"])),
        "every record of both files verified: {all}"
    );
    assert!(end.get("checkpoint").is_some(), "signed at shutdown: {end}");
}

#[test]
fn a_flood_of_denials_is_rate_limited_counted_exactly_and_the_daemon_answers() {
    const RATE: u64 = 50;
    let port = free_port("127.0.0.1");
    let mut daemon = Daemon::start_with_config(
        "audit-flood",
        &[(
            "flood.yaml",
            policy("flood", "flood", "  egress:\n    default: deny\n"),
        )],
        &format!("audit:\n  eventsPerSecond: {RATE}\n"),
    );
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    let output = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            flood_command(&daemon, "flood", port, 4, 3.0)
                .output()
                .unwrap()
        });
        // The control socket answers while the flood goes on.
        while !flood.is_finished() {
            let before = Instant::now();
            let status = daemon.status();
            slowest = slowest.max(before.elapsed());
            assert!(status["agents"].is_array(), "{status}");
            asked += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        flood.join().unwrap()
    });
    let elapsed = started.elapsed();
    eprintln!("flood: {asked} status calls, slowest {slowest:?}, {elapsed:?}");
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        asked >= 3,
        "status was asked {asked} times during the flood"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "baton status took {slowest:?} during the flood"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (mut tried, mut other) = (0u64, 0u64);
    for line in stdout.lines() {
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| {
                    panic!("no {name}=N in {line:?}; the flooders printed:\n{stdout}")
                })
        };
        tried += field("tried");
        other += field("other");
    }
    assert_eq!(stdout.lines().count(), 4, "{}", text(&output));
    assert_eq!(other, 0, "every connect was denied with EPERM");

    // The kernel counted every denial, whatever the event rate.
    let status = daemon.status();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "flood")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    let denied = agent["counters"]["denied_connects"].as_u64().unwrap();
    assert_eq!(
        denied, tried,
        "the kernel counted each connect the agent tried"
    );
    assert!(
        tried > 20 * RATE * elapsed.as_secs().max(1),
        "not a flood: {tried} connects in {elapsed:?}"
    );

    // Records plus suppressed counts account for every denial; the
    // suppression records follow within the daemon's one-second tick.
    let account = |daemon: &Daemon| {
        let records = daemon.records();
        let written = records
            .iter()
            .filter(|r| r["agent"] == "flood" && r["control"] == "egress")
            .inspect(|r| assert_eq!(r["verdict"], "denied", "{r}"))
            .count() as u64;
        let suppressed: u64 = records
            .iter()
            .filter(|r| r["agent"] == "flood" && r["control"] == "audit")
            .map(|r| r["object"]["suppressed"].as_u64().unwrap_or(0))
            .sum();
        (written, suppressed)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        let (written, suppressed) = account(&daemon);
        written + suppressed != denied
    } {
        assert!(
            Instant::now() < deadline,
            "records and suppression counts {:?} never added up to {denied}",
            account(&daemon)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.stop().success(), "{}", daemon.stderr());
    let (written, suppressed) = account(&daemon);
    eprintln!("flood: {denied} denied, {written} recorded, {suppressed} suppressed");
    assert_eq!(written + suppressed, denied);
    assert!(suppressed > 0);
    // The bucket holds one second's worth and refills at the rate.
    let allowance = RATE * (elapsed.as_secs() + 2);
    assert!(
        written <= allowance,
        "{written} records in {elapsed:?} at {RATE}/s"
    );
    let reasons: Vec<String> = daemon
        .records()
        .iter()
        .filter(|r| r["agent"] == "flood" && r["control"] == "audit")
        .map(|r| r["object"]["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|m| m.contains("events suppressed: over the per-agent event rate")),
        "{reasons:?}"
    );

    let output = verify_all(&default_pubkey(), &daemon);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("OK: the chain and every checkpoint verify"),
        "{}",
        text(&output)
    );
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_denied_open_from_sh_python_curl_is_recorded_with_every_field_and_the_chain() {
    let files = TempDir::new("audit-open");
    // Readable by anyone: only Baton stands between the agent and it.
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret_dir = files.path().join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("key.txt");
    std::fs::write(&secret, "key").unwrap();
    let daemon = Daemon::start(
        "audit-open",
        &[(
            "p.yaml",
            policy(
                "no-secrets",
                "demo",
                &format!(
                    "  egress:\n    default: deny\n  files:\n    deny:\n      - {}\n",
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
    let url = format!("file://{}", secret.display());
    let command = sh_python_runs(&curl_with_retries(&url));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let output = daemon.exec("demo", &command);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Couldn't open file"),
        "curl was refused: {}",
        text(&output)
    );
    let pids = printed_pids(&output);

    let path = secret.display().to_string();
    let record =
        daemon.wait_for_record(|r| r["control"] == "file" && r["object"]["path"] == path.as_str());
    assert_decision_header(
        &record,
        "demo",
        "file",
        "file_open",
        ("no-secrets", "files.deny[0]"),
        (65534, 65534),
    );
    assert_eq!(strings(&record["object"]["rights"]), ["read"], "{record}");
    assert_eq!(
        strings(&record["object"]["denied_rights"]),
        ["read"],
        "{record}"
    );
    assert_curl_python_sh_chain(&record, &url, pids);
}

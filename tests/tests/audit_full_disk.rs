//! A full disk under the audit log: records wait in the spool (memory,
//! then a second directory) and reach the log in order once space returns;
//! what the spool cannot hold is counted, and a gap record names it, which
//! `baton audit verify` reports. Sequence numbers are never reused, and
//! records plus lost records add up to the kernel's denial counter.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, baton, baton_bin, free_port, policy};
use serde_json::Value;

/// A tmpfs the test mounts for the log, unmounted (and its mount point
/// removed) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &TempDir, bytes: u64) -> Self {
        let path = dir.path().join("full");
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0750"))
            .arg("baton-test-audit")
            .arg(&path)
            .status()
            .expect("spawn mount");
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Self(path)
    }

    /// Writes zeros until the file system refuses more; returns the file.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
                    break;
                }
            }
        }
        // Pages partly used by the log may still take a few bytes.
        let mut byte = [0u8; 1];
        while file.write(&byte).is_ok_and(|n| n == 1) {
            byte[0] = 0;
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `GET path` on the daemon's metrics endpoint: status code and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// The value of the sample `name` (labels included, as written).
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Denied connects the agent `demo` made to `port`: the kernel's count.
fn kernel_denied(daemon: &Daemon) -> u64 {
    let status = daemon.status();
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "demo")
        .unwrap_or_else(|| panic!("{status}"))["counters"]["denied_connects"]
        .as_u64()
        .unwrap()
}

/// `count` denied connects from one process of the agent.
fn deny(daemon: &Daemon, port: u16, count: u32) {
    let script = "import socket, sys\n\
                  for _ in range(int(sys.argv[2])):\n    \
                      s = socket.socket()\n    \
                      assert s.connect_ex((\"127.0.0.1\", int(sys.argv[1]))) == 1, \"not EPERM\"\n    \
                      s.close()";
    let output = daemon.exec(
        "demo",
        &[
            "python3",
            "-c",
            script,
            &port.to_string(),
            &count.to_string(),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
}

/// Waits up to 30 s for `done`, then fails with what `state` says.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; {}",
            state()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("audit.jsonl"))
        })
        .collect();
    files.sort();
    let mut records: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("whole JSON lines only"))
                .collect::<Vec<_>>()
        })
        .collect();
    records.sort_by_key(|r| r["seq"].as_u64().unwrap());
    records
}

fn verify(dir: &Path) -> Output {
    let pubkey = baton(&["audit", "pubkey", "--key", "/var/lib/baton/audit.key"]);
    assert!(pubkey.status.success(), "{}", text(&pubkey));
    let pubkey = String::from_utf8(pubkey.stdout).unwrap().trim().to_string();
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("audit.jsonl"))
        })
        .collect();
    Command::new(baton_bin())
        .args(["audit", "verify", "--pubkey", &pubkey])
        .args(&files)
        .output()
        .expect("spawn baton audit verify")
}

/// What one run saw.
struct Outcome {
    records: Vec<Value>,
    denied: u64,
    lost: u64,
    port: u16,
    verify: Output,
}

/// Runs the scenario with `spool` as the `audit.spool` section: a few
/// denials written, the disk filled, `during` denials, the disk freed,
/// a few more; returns the log and the counts.
fn run(label: &str, spool: &str, during: u32, expect_loss: bool) -> Outcome {
    let port = free_port("127.0.0.1");
    let metrics_port = free_port("127.0.0.1");
    let dir = TempDir::new(label);
    let tmpfs = Tmpfs::mount(&dir, 256 * 1024);
    let log = tmpfs.0.join("audit.jsonl");
    // Checkpoints off: every record in the gap is a denial, so records and
    // lost records add up to the kernel's count exactly.
    let config = format!(
        "metrics:\n  address: 127.0.0.1:{metrics_port}\n\
         audit:\n  checkpoints: {{ everyRecords: 0, everySeconds: 0 }}\n  spool: {spool}\n"
    );
    let mut daemon = Daemon::start_with_audit_log(
        label,
        &[(
            "demo.yaml",
            policy("demo", "demo", "  egress:\n    default: deny\n"),
        )],
        &config,
        &log,
    );
    let metrics = || get(metrics_port, "/metrics").1;
    let decided = || {
        sample(
            &metrics(),
            "baton_decisions_total{agent=\"demo\",control=\"egress\",verdict=\"denied\"}",
        )
    };
    deny(&daemon, port, 3);
    wait_until(
        "the first denials are written",
        || {
            log_lines(&tmpfs.0)
                .iter()
                .filter(|r| r["object"]["port"] == u64::from(port))
                .count()
                == 3
        },
        String::new,
    );
    assert_eq!(get(metrics_port, "/readyz").0, 200);

    let filler = tmpfs.fill();
    deny(&daemon, port, during);
    let denied = kernel_denied(&daemon);
    assert_eq!(denied, 3 + u64::from(during));
    // The last page of the log may still take a record or two; the rest
    // waits in the spool or is counted lost.
    let written_during = || {
        log_lines(&tmpfs.0)
            .iter()
            .filter(|r| r["object"]["port"] == u64::from(port))
            .count() as u64
            - 3
    };
    let accounted = |m: &str| {
        sample(m, "baton_audit_spooled_records")
            + sample(m, "baton_audit_records_lost_total")
            + written_during()
    };
    wait_until(
        "every denial of the full disk is written, spooled or counted lost",
        || decided() == denied && accounted(&metrics()) == u64::from(during),
        || format!("{} written meanwhile; {}", written_during(), metrics()),
    );
    let during_metrics = metrics();
    assert_eq!(
        sample(&during_metrics, "baton_audit_write_failing"),
        1,
        "{during_metrics}"
    );
    let (status, body) = get(metrics_port, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the audit log cannot be written (no space left on device)"),
        "{body}"
    );
    let lost_during = sample(&during_metrics, "baton_audit_records_lost_total");
    assert!(
        written_during() < u64::from(during) / 2,
        "the disk was not full: {} written",
        written_during()
    );
    assert_eq!(lost_during > 0, expect_loss, "{during_metrics}");

    std::fs::remove_file(&filler).unwrap();
    wait_until(
        "the spool drains once space returns",
        || {
            let m = metrics();
            sample(&m, "baton_audit_write_failing") == 0
                && sample(&m, "baton_audit_spooled_records") == 0
        },
        metrics,
    );
    assert_eq!(get(metrics_port, "/readyz").0, 200);
    deny(&daemon, port, 4);
    let denied = kernel_denied(&daemon);
    assert_eq!(denied, 7 + u64::from(during));
    wait_until(
        "the later denials are written",
        || {
            log_lines(&tmpfs.0)
                .iter()
                .filter(|r| r["object"]["port"] == u64::from(port))
                .count() as u64
                + lost_during
                == denied
        },
        metrics,
    );
    let lost = sample(&metrics(), "baton_audit_records_lost_total");
    assert_eq!(lost, lost_during, "nothing lost after the disk was freed");
    assert!(daemon.stop().success(), "{}", daemon.stderr());
    let verify = verify(&tmpfs.0);
    let records = log_lines(&tmpfs.0);
    drop(tmpfs);
    Outcome {
        records,
        denied,
        lost,
        port,
        verify,
    }
}

/// Sequence numbers strictly increase; each record names the hash of the
/// line before it in the file (checked by verify); the only numbers
/// skipped are those a gap record names. Returns the gaps as (first, last).
fn check_sequence(records: &[Value]) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    for pair in records.windows(2) {
        let (a, b) = (
            pair[0]["seq"].as_u64().unwrap(),
            pair[1]["seq"].as_u64().unwrap(),
        );
        assert!(b > a, "seq {b} after seq {a}: reused or reordered");
        if b != a + 1 {
            let object = &pair[1]["object"];
            assert_eq!(pair[1]["control"], "audit", "{}", pair[1]);
            assert_eq!(object["first_seq"], a + 1, "{}", pair[1]);
            assert_eq!(object["last_seq"], b - 1, "{}", pair[1]);
            assert_eq!(object["lost"], b - 1 - a, "{}", pair[1]);
            gaps.push((a + 1, b - 1));
        }
    }
    gaps
}

#[test]
fn a_full_disk_with_a_big_enough_spool_loses_nothing_and_the_log_verifies() {
    let scratch = TempDir::new("audit-spool-dir");
    let spool = format!(
        "{{ memoryBytes: 4096, directory: {}, directoryBytes: 4194304 }}",
        scratch.path().join("spool").display()
    );
    let outcome = run("audit-disk-spool", &spool, 40, false);
    assert_eq!(outcome.lost, 0);
    let gaps = check_sequence(&outcome.records);
    assert!(gaps.is_empty(), "{gaps:?}");
    let written = outcome
        .records
        .iter()
        .filter(|r| r["object"]["port"] == u64::from(outcome.port))
        .count() as u64;
    assert_eq!(written, outcome.denied, "every denial has its record");
    assert_eq!(
        outcome.verify.status.code(),
        Some(0),
        "{}",
        text(&outcome.verify)
    );
    let stdout = String::from_utf8_lossy(&outcome.verify.stdout);
    assert!(
        stdout.contains("OK: the chain and every checkpoint verify"),
        "{stdout}"
    );
    assert!(
        !scratch.path().join("spool/audit-spool.jsonl").exists(),
        "the spool file is removed once drained"
    );
}

#[test]
fn a_full_disk_with_a_small_spool_records_the_exact_gap_and_verify_names_it() {
    let outcome = run("audit-disk-gap", "{ memoryBytes: 4096 }", 40, true);
    let gaps = check_sequence(&outcome.records);
    assert_eq!(gaps.len(), 1, "one gap: {gaps:?}");
    let (first, last) = gaps[0];
    assert_eq!(
        last - first + 1,
        outcome.lost,
        "the gap is what the metric counted"
    );
    let written = outcome
        .records
        .iter()
        .filter(|r| r["object"]["port"] == u64::from(outcome.port))
        .count() as u64;
    assert_eq!(
        written + outcome.lost,
        outcome.denied,
        "records and lost records account for every denial the kernel counted"
    );
    let gap = outcome
        .records
        .iter()
        .find(|r| r["seq"] == last + 1)
        .unwrap();
    let message = format!(
        "{} records lost between seq {first} and {last}: no space left on device",
        outcome.lost
    );
    assert_eq!(gap["object"]["message"], message.as_str(), "{gap}");
    // Records after the gap chain on: verify checks every prev_hash.
    assert!(
        outcome.records.last().unwrap()["seq"].as_u64().unwrap() > last + 1,
        "records were written after the gap"
    );
    let all = text(&outcome.verify);
    assert_eq!(outcome.verify.status.code(), Some(4), "{all}");
    assert!(
        all.contains(&format!("seq {}: {message}", last + 1)),
        "{all}"
    );
    assert!(
        all.contains("GAPS: the chain and every checkpoint verify"),
        "{all}"
    );
    assert!(
        !all.contains("TAMPERED") && !all.contains("incomplete"),
        "{all}"
    );
}

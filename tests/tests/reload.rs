//! Live policy reload: no enforcement gap across 100 reloads, and a
//! ConfigMap-style `..data` swap is exactly one reload.

use std::{
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

use baton_tests::{Daemon, policy};

/// A listener that accepts and drops connections, so a long connect loop
/// never fills its backlog.
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

fn variant(allowed: u16, extra: Option<u16>) -> String {
    let ports = match extra {
        Some(extra) => format!("[{allowed}, {extra}]"),
        None => format!("[{allowed}]"),
    };
    policy(
        "reload",
        "reload",
        &format!(
            "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1\n        ports: {ports}\n"
        ),
    )
}

/// Replaces a file in one step, as a careful deployment tool would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for_generation(daemon: &Daemon, generation: u64) {
    let wanted = format!("\"message\":\"generation {generation} loaded");
    // A busy machine slows reloads down; the check is that each one happens,
    // not how fast.
    let deadline = Instant::now() + Duration::from_secs(60);
    // Only the part of the log written since the last look is searched: the
    // log grows by a thousand records a second while the prober runs.
    let mut log = std::fs::File::open(&daemon.audit_log).unwrap();
    let mut tail = String::new();
    loop {
        let mut chunk = String::new();
        std::io::Read::read_to_string(&mut log, &mut chunk).unwrap();
        tail.push_str(&chunk);
        if tail.contains(&wanted) {
            return;
        }
        // Keep the last line, which may be incomplete.
        if let Some(at) = tail.rfind('\n') {
            tail.drain(..=at);
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} never loaded:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to `denied` and `allowed` in a tight loop until `stop` exists,
/// then prints how often the denied one got through and the allowed one
/// failed.
const PROBER: &str = r#"
import os, socket, sys
denied, allowed, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
leaks = misses = rounds = 0
while not os.path.exists(stop) and os.path.isdir(os.path.dirname(stop)):
    for port, bad in ((denied, 'leak'), (allowed, 'miss')):
        s = socket.socket()
        try:
            s.connect(('127.0.0.1', port))
            if bad == 'leak':
                leaks += 1
        except OSError:
            if bad == 'miss':
                misses += 1
        finally:
            s.close()
    rounds += 1
print(f"rounds {rounds} leaks {leaks} misses {misses}", flush=True)
"#;

#[test]
fn a_hundred_reloads_leave_no_gap() {
    let (_denied, denied) = listener();
    let (_allowed, allowed) = listener();
    let (_other, other) = listener();
    let daemon = Daemon::start("reload", &[("p.yaml", variant(allowed, None))]);
    let stop = daemon.dir.path().join("stop");
    let prober = std::process::Command::new(baton_tests::baton_bin())
        .args([
            "exec",
            "--agent",
            "reload",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ])
        .args([
            "--",
            "python3",
            "-c",
            PROBER,
            &denied.to_string(),
            &allowed.to_string(),
        ])
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = daemon.dir.path().join("policies/p.yaml");
    for i in 0..100u64 {
        let extra = (i % 2 == 0).then_some(other);
        replace(&file, &variant(allowed, extra));
        wait_for_generation(&daemon, i + 2);
    }
    std::fs::write(&stop, "").unwrap();
    let output = prober.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let words: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{report}");
    let rounds: u64 = words[1].parse().unwrap();
    assert!(rounds > 100, "the loop ran through the reloads: {report}");
    assert_eq!(
        words[3], "0",
        "a denied connect got through during a reload: {report}"
    );
    assert_eq!(
        words[5], "0",
        "an allowed connect failed during a reload: {report}"
    );
}

#[test]
fn a_configmap_data_swap_is_one_reload() {
    let (_allowed, allowed) = listener();
    // Lay the directory out the way kubelet does: timestamped data, a
    // `..data` symlink to it, and user-visible symlinks through `..data`.
    let holder = baton_tests::TempDir::new("configmap-data");
    let dir = holder.path().join("configmap");
    let first = dir.join("..2026_11_27_00_00_00.000000001");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("a.yaml"), variant(allowed, None)).unwrap();
    std::fs::write(
        first.join("b.yaml"),
        policy("second", "second", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(first.file_name().unwrap(), dir.join("..data")).unwrap();
    for name in ["a.yaml", "b.yaml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    let daemon = Daemon::start_in(&dir, "configmap-run");
    // The update: new data, then one rename of the `..data` symlink.
    let second = dir.join("..2026_11_27_00_01_00.000000002");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("a.yaml"), variant(allowed, Some(1))).unwrap();
    std::fs::write(
        second.join("b.yaml"),
        policy("second", "second", "  mode: audit\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(second.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    wait_for_generation(&daemon, 2);
    std::thread::sleep(Duration::from_secs(2));
    let reloads = daemon
        .records()
        .iter()
        .filter(|r| {
            r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("generation ") && m.contains(" loaded"))
        })
        .count();
    assert_eq!(
        reloads, 2,
        "the start, then exactly one reload for the swap"
    );
}

//! The pins cannot switch enforcement off: the daemon holds its own
//! descriptor of every map and link, puts back pins that were removed, and
//! reports (in `baton status`, `/readyz`, `baton probe`, the audit log and
//! the metrics) a program the kernel really no longer runs.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use baton_tests::{Daemon, baton, baton_bin, free_port, policy};
use serde_json::Value;

/// A listener on loopback that counts the connections it accepted and the
/// bytes it received: proof that nothing got through.
fn counting_listener() -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (a, b) = (accepted.clone(), bytes.clone());
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = connection.set_read_timeout(Some(Duration::from_secs(1)));
            while let Ok(n) = connection.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                b.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    (port, accepted, bytes)
}

/// Connects to 127.0.0.1:`port` and sends a few bytes; prints `sent` or
/// `errno=N`.
fn connect_script(port: u16) -> String {
    format!(
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\n    s.sendall(b'leak')\n    print('sent')\nexcept OSError as e:\n    print(f'errno={{e.errno}}')\n"
    )
}

fn start(label: &str, metrics_port: u16) -> Daemon {
    Daemon::start_with_config(
        label,
        &[(
            "p.yaml",
            policy("guarded", "guarded", "  egress:\n    default: deny\n"),
        )],
        &format!("metrics:\n  address: 127.0.0.1:{metrics_port}\n"),
    )
}

/// `bpftool link show pinned PATH`, as JSON.
fn pinned_link(path: &Path) -> Value {
    let output = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// `GET path` on the metrics endpoint: status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.into(),
    )
}

/// The value of the sample `series` (name with labels, as exposed).
fn sample(port: u16, series: &str) -> Option<f64> {
    get(port, "/metrics")
        .1
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Waits (up to 20 s, on a busy machine) for `done`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lifecycle_messages(daemon: &Daemon) -> Vec<String> {
    daemon
        .records()
        .into_iter()
        .filter_map(|r| r["object"]["message"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_root_agent_removing_the_pins_switches_no_control_off() {
    let (port, accepted, bytes) = counting_listener();
    let metrics_port = free_port("127.0.0.1");
    let daemon = start("pins-guard", metrics_port);
    let connect4 = daemon.pin_dir.join("links/connect4");
    let program_before = pinned_link(&connect4)["prog_id"].as_u64().unwrap();
    let mut pins_before: Vec<String> = ["links", "maps"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(daemon.pin_dir.join(sub)).unwrap())
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    pins_before.sort();

    // The agent runs as root (the test does) and removes every pin, then
    // tries the denied connect.
    let script = format!(
        "import subprocess\nsubprocess.run(['rm', '-rf', '{}'])\n{}",
        daemon.pin_dir.display(),
        connect_script(port)
    );
    let output = daemon.exec("guarded", &["python3", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "errno=1",
        "the agent that removed the pins is still denied: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Every pin is back, naming the same objects.
    wait_until("every pin is back", || {
        let now: Vec<String> = ["links", "maps"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(daemon.pin_dir.join(sub)).ok())
            .flatten()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        // The admission may add one: the packet backstop's link for the
        // agent's cgroup.
        pins_before.iter().all(|pin| now.contains(pin))
    });
    assert_eq!(
        pinned_link(&connect4)["prog_id"].as_u64(),
        Some(program_before),
        "the same program is pinned back, not another"
    );

    // An agent admitted afterwards is denied too.
    let later = daemon.exec("guarded", &["python3", "-c", &connect_script(port)]);
    assert_eq!(String::from_utf8_lossy(&later.stdout).trim(), "errno=1");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection arrived");
    assert_eq!(bytes.load(Ordering::SeqCst), 0, "no byte arrived");

    // Recorded, counted, and still reported as enforced (it is).
    let messages = lifecycle_messages(&daemon);
    let restored = messages
        .iter()
        .find(|m| m.contains("links/connect4 was removed"))
        .unwrap_or_else(|| panic!("no record of the removed pin: {messages:#?}"));
    assert!(restored.contains("the pin is restored"), "{restored}");
    assert!(
        restored.contains("bpffs names no remover"),
        "says what it cannot name: {restored}"
    );
    let count = sample(
        metrics_port,
        "baton_pins_restored_total{kind=\"link\",cause=\"missing\"}",
    )
    .expect("baton_pins_restored_total is exposed");
    assert!(count >= 1.0, "{count}");
    assert_eq!(sample(metrics_port, "baton_programs_detached"), Some(0.0));
    assert_eq!(get(metrics_port, "/readyz").0, 200);
    let status = daemon.status();
    assert!(
        status["agents"][0]["controls"]["egress"]
            .as_str()
            .unwrap()
            .starts_with("enforced"),
        "{status}"
    );

    // A subtler swap: another of Baton's own links renamed over the pin,
    // so the name stays and only the object behind it changes.
    let connect6 = daemon.pin_dir.join("links/connect6");
    let connect6_program = pinned_link(&connect6)["prog_id"].as_u64().unwrap();
    std::fs::rename(&connect6, &connect4).unwrap();
    wait_until("both pins name their own programs again", || {
        connect6.exists()
            && pinned_link(&connect4)["prog_id"].as_u64() == Some(program_before)
            && pinned_link(&connect6)["prog_id"].as_u64() == Some(connect6_program)
    });
    let messages = lifecycle_messages(&daemon);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("links/connect4 named another object")),
        "no record of the replaced pin: {messages:#?}"
    );
    let replaced = sample(
        metrics_port,
        "baton_pins_restored_total{kind=\"link\",cause=\"replaced\"}",
    )
    .expect("the replaced pin is counted");
    assert!(replaced >= 1.0, "{replaced}");
    let denied = daemon.exec("guarded", &["python3", "-c", &connect_script(port)]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "errno=1");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection arrived");
}

#[test]
fn status_readyz_and_probe_report_a_program_detached_by_other_means() {
    let metrics_port = free_port("127.0.0.1");
    let daemon = start("pins-detach", metrics_port);
    assert_eq!(get(metrics_port, "/readyz").0, 200);

    // A tracing link cannot be detached while the daemon holds it.
    let exit_link = pinned_link(&daemon.pin_dir.join("links/sched_process_exit"));
    let refused = Command::new("bpftool")
        .args(["link", "detach", "id"])
        .arg(exit_link["id"].as_u64().unwrap().to_string())
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the kernel detached a tracing link"
    );

    // The host's root detaches the connect4 link for real.
    let link = pinned_link(&daemon.pin_dir.join("links/connect4"));
    let detach = Command::new("bpftool")
        .args(["link", "detach", "id"])
        .arg(link["id"].as_u64().unwrap().to_string())
        .output()
        .unwrap();
    assert!(
        detach.status.success(),
        "{}",
        String::from_utf8_lossy(&detach.stderr)
    );

    let egress = daemon.status()["agents"][0]["controls"]["egress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        egress.starts_with("NOT enforced") && egress.contains("connect4"),
        "{egress}"
    );
    wait_until("/readyz says not ready", || {
        get(metrics_port, "/readyz").0 == 503
    });
    assert_eq!(sample(metrics_port, "baton_programs_detached"), Some(1.0));
    wait_until("the record of the detached program", || {
        lifecycle_messages(&daemon)
            .iter()
            .any(|m| m.starts_with("control off: program connect4 is not attached"))
    });

    let probe: Value = serde_json::from_slice(
        &baton(&[
            "probe",
            "--json",
            "--pin-dir",
            daemon.pin_dir.to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    let check = probe["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Baton programs attached")
        .unwrap_or_else(|| panic!("{probe:#}"));
    assert_eq!(check["status"], "no", "{check}");
    assert!(check["detail"].as_str().unwrap().contains("connect4"));
    let control = probe["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "egress (address, port)")
        .unwrap();
    assert_eq!(control["level"], "unavailable", "{control}");

    // The text forms say the same.
    let text = Command::new(baton_bin())
        .args(["status", "--control-socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("egress    NOT enforced"), "{text}");
}

/// What `nobody` gets from `python3 -c SCRIPT PATH`: `ok` or `errno=N`.
fn as_nobody(script: &str, path: &Path) -> String {
    use std::os::unix::process::CommandExt as _;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn a_pin_directory_another_user_made_first_is_not_theirs_once_the_daemon_starts() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
    // bpffs is often world-writable (1777): a local user makes the pin
    // directory before the daemon ever starts, with a folder where a map
    // pin goes and a symlink where a link pin goes. Made here as root and
    // handed to `nobody`, which is what they would end up with.
    let daemon = Daemon::start_after(
        "pins-foreign",
        &[(
            "p.yaml",
            policy("foreign", "foreign", "  egress:\n    default: deny\n"),
        )],
        |pin_dir| {
            std::fs::create_dir_all(pin_dir.join("maps/EVENTS")).unwrap();
            std::fs::create_dir_all(pin_dir.join("links")).unwrap();
            symlink("/tmp", pin_dir.join("links/connect4")).unwrap();
            for path in [
                pin_dir.to_path_buf(),
                pin_dir.join("maps"),
                pin_dir.join("maps/EVENTS"),
                pin_dir.join("links"),
            ] {
                std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        },
    );
    // The daemon started and enforces.
    let (port, accepted, _) = counting_listener();
    let output = daemon.exec("foreign", &["python3", "-c", &connect_script(port)]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "errno=1");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    // Its pin directories are root's and closed to everyone else.
    for path in [
        daemon.pin_dir.clone(),
        daemon.pin_dir.join("maps"),
        daemon.pin_dir.join("links"),
    ] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_dir(), "{}", path.display());
        assert_eq!(meta.uid(), 0, "{}", path.display());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", path.display());
    }
    assert!(pinned_link(&daemon.pin_dir.join("links/connect4")).is_object());
    // The user can no longer open the directory (to hold its lock), list
    // it, or move a pin away.
    let open = "import os, sys\ntry:\n    os.open(sys.argv[1], os.O_RDONLY)\n    print('ok')\nexcept OSError as e:\n    print(f'errno={e.errno}')\n";
    assert_eq!(as_nobody(open, &daemon.pin_dir), "errno=13");
    let rename = "import os, sys\ntry:\n    os.rename(sys.argv[1] + '/links/connect4', sys.argv[1] + '-x')\n    print('ok')\nexcept OSError as e:\n    print(f'errno={e.errno}')\n";
    assert_eq!(as_nobody(rename, &daemon.pin_dir), "errno=13");
    // Nothing of theirs is left next to it, and the audit trail says what
    // was undone.
    let name = daemon
        .pin_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("{name}-foreign")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let messages = lifecycle_messages(&daemon);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("had been made by uid 65534, not root")),
        "{messages:?}"
    );
}

#[test]
fn baton_run_as_another_user_is_refused_before_it_makes_anything() {
    use std::os::unix::process::CommandExt as _;
    let dir = baton_tests::TempDir::new("run-nobody");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("p.yaml"),
        policy("x", "x", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    let pin_dir =
        Path::new("/sys/fs/bpf").join(format!("baton-test-run-nobody-{}", std::process::id()));
    let output = Command::new(baton_bin())
        .arg("run")
        .arg("--policy-dir")
        .arg(&policies)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--control-socket")
        .arg(dir.path().join("s.sock"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("baton run needs root"), "{stderr}");
    assert!(!pin_dir.exists(), "{} was made", pin_dir.display());
}

//! A process in no agent is never taken for an agent process whose pid it
//! reuses: not when the daemon admits a process that is already gone, not
//! across a daemon restart, and not when a stale record is left in the
//! identity map by any other means.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use baton_tests::{Daemon, baton_bin, policy};

const AGENT: &str = "reuse";

/// A listener on loopback counting the connections it accepted.
fn counting_listener() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            drop(connection);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, accepted)
}

/// Asks to be admitted and exits at once, before the daemon answers:
/// the daemon sees a pid whose process is gone (or going). Returns it.
fn admit_and_vanish(socket: &Path) -> u32 {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"op\":\"admit\",\"agent\":\"reuse\"}\\n')\nos._exit(0)",
        ])
        .arg(socket)
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Whether the identity map of `daemon` holds a record for `tgid`.
fn has_record(daemon: &Daemon, tgid: u32) -> bool {
    Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(daemon.pin_dir.join("maps/AGENT_OF_TGID"))
        .arg("key")
        .args(tgid.to_le_bytes().map(|b| b.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool is installed by cargo xtask setup")
        .success()
}

/// Writes a record of agent `agent_id` for `tgid`, with its mark: what a
/// lost exit would leave behind.
fn plant_record(daemon: &Daemon, tgid: u32, agent_id: u32) {
    let mut value = Vec::new();
    value.extend(agent_id.to_le_bytes());
    value.extend(tgid.to_le_bytes());
    value.extend([1u8, 0, 0, 0, 0, 0, 0, 0]);
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(daemon.pin_dir.join("maps/AGENT_OF_TGID"))
        .arg("key")
        .args(tgid.to_le_bytes().map(|b| b.to_string()))
        .arg("value")
        .args(value.iter().map(u8::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "plant a record for {tgid}");
    let marks = daemon.pin_dir.join("maps/AGENT_MARKS");
    let entry = (tgid / 64).to_le_bytes().map(|b| b.to_string());
    let output = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&marks)
        .arg("key")
        .args(&entry)
        .output()
        .unwrap();
    let current: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut bytes: Vec<u8> = current["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    bytes[(tgid % 64) as usize] = 1;
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&marks)
        .arg("key")
        .args(&entry)
        .arg("value")
        .args(bytes.iter().map(u8::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "mark {tgid}");
}

/// `struct clone_args` up to `set_tid_size` (clone3, 5.5+).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Starts a process with exactly pid `pid` (clone3 with `set_tid`, which
/// root may do) that connects to 127.0.0.1:`port`. Returns `None` when
/// the pid is taken, else the child's outcome: `ok`, `EPERM` or `error`.
fn connect_as_pid(pid: u32, port: u16) -> Option<&'static str> {
    let tid = pid as libc::pid_t;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const libc::pid_t as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: clone3 without CLONE_VM copies this process, like fork; the
    // child makes only system calls (no allocation, no lock) and _exits.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if child == 0 {
        // SAFETY: plain system calls on values prepared before the clone.
        unsafe {
            let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            let result = libc::connect(
                socket,
                &address as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let code = if result == 0 {
                0
            } else if *libc::__errno_location() == libc::EPERM {
                1
            } else {
                2
            };
            libc::_exit(code);
        }
    }
    if child < 0 {
        return None;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) };
    Some(match libc::WEXITSTATUS(status) {
        0 => "ok",
        1 => "EPERM",
        _ => "error",
    })
}

#[test]
fn admission_exit_and_pid_reuse_across_a_restart_never_misattribute() {
    let (port, accepted) = counting_listener();
    let mut daemon = Daemon::start_persistent(
        "pid-reuse",
        &[(
            "p.yaml",
            policy(AGENT, AGENT, "  egress:\n    default: deny\n"),
        )],
    );
    let agent_id = daemon.status()["agents"][0]["id"].as_u64().unwrap() as u32;
    let mut gone = Vec::new();
    for _ in 0..20 {
        gone.push(admit_and_vanish(&daemon.socket));
    }
    // Agent processes that exit while no daemon runs.
    let sleepers: Vec<_> = (0..5)
        .map(|_| {
            Command::new(baton_bin())
                .args(["exec", "--agent", AGENT, "--control-socket"])
                .arg(&daemon.socket)
                .args(["--", "sleep", "1"])
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill();
    for mut sleeper in sleepers {
        gone.push(sleeper.id());
        sleeper.wait().unwrap();
    }
    daemon.restart();
    for _ in 0..20 {
        gone.push(admit_and_vanish(&daemon.socket));
        let output = daemon.exec(AGENT, &["true"]);
        assert!(output.status.success(), "{output:?}");
    }
    // Requests whose caller is gone are still being answered; give them
    // time (this is no speed target: a slow answer only delays the check).
    std::thread::sleep(Duration::from_secs(1));
    let stale: Vec<u32> = gone
        .iter()
        .copied()
        .filter(|&pid| has_record(&daemon, pid))
        .collect();
    assert!(
        stale.is_empty(),
        "records left for processes that are gone: {stale:?}"
    );

    // Whatever leaves a record behind, a stranger that gets the pid is in
    // no agent: its connect goes through.
    let mut tried = 0;
    for &pid in &gone {
        plant_record(&daemon, pid, agent_id);
        match connect_as_pid(pid, port) {
            None => continue,
            Some(outcome) => {
                tried += 1;
                assert_eq!(outcome, "ok", "pid {pid}, reused outside every agent");
            }
        }
    }
    assert!(tried > 0, "no pid could be reused");
    assert_eq!(accepted.load(Ordering::SeqCst), tried);
    daemon.kill();
}

//! The audit subsystem that carries Landlock's denial reports is a
//! host-wide setting; this test switches it off, so it lives alone in its
//! test binary (cargo runs test binaries one at a time), where no other
//! test waits for a Landlock record meanwhile.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, helper_outcome, policy};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;

/// A bound `NETLINK_AUDIT` request socket.
fn audit_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_AUDIT,
        )
    };
    assert!(fd >= 0, "NETLINK_AUDIT socket");
    // SAFETY: `fd` was just returned by socket(2).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends one audit request and returns the type and bytes of each reply
/// datagram, up to `replies` of them.
fn request(socket: &OwnedFd, kind: u16, body: &[u8], replies: usize) -> Vec<(u16, Vec<u8>)> {
    let mut message = Vec::new();
    message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    // NLM_F_REQUEST | NLM_F_ACK
    message.extend_from_slice(&5u16.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(body);
    // SAFETY: the buffer outlives the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    assert_eq!(sent, message.len() as isize, "netlink send");
    (0..replies)
        .map(|_| {
            let mut buffer = vec![0u8; 8192];
            // SAFETY: the buffer outlives the call.
            let read = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            assert!(read >= 16, "netlink recv");
            buffer.truncate(read as usize);
            (u16::from_ne_bytes([buffer[4], buffer[5]]), buffer)
        })
        .collect()
}

/// `enabled` of the audit status: the ACK comes first, then the status.
fn audit_enabled(socket: &OwnedFd) -> u32 {
    let replies = request(socket, AUDIT_GET, &[], 2);
    let (_, status) = replies
        .iter()
        .find(|(kind, _)| *kind == AUDIT_GET)
        .expect("an AUDIT_GET answer");
    u32::from_ne_bytes([status[20], status[21], status[22], status[23]])
}

fn set_audit_enabled(socket: &OwnedFd, enabled: u32) {
    let mut status = [0u8; 40];
    status[..4].copy_from_slice(&1u32.to_ne_bytes());
    status[4..8].copy_from_slice(&enabled.to_ne_bytes());
    // Only the ACK comes back.
    request(socket, AUDIT_SET, &status, 1);
}

/// Switching the audit subsystem off, or loading a rule that excludes
/// Landlock's records (what a root agent with io_uring, or an operator,
/// can do), silences Landlock's reports. The daemon notices within
/// seconds: it switches audit back on, records that it was off and records
/// the denials that follow; an exclude rule it reports.
#[test]
fn audit_switched_off_or_filtered_is_recorded() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: Landlock's reports are not used");
        return;
    }
    let dir = TempDir::new("auditoff");
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let key = secret.join("key.txt").display().to_string();
    std::fs::write(&key, "key").unwrap();
    let body = format!(
        "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n",
        secret.display()
    );
    let daemon = Daemon::start("auditoff", &[("p.yaml", policy("tree", "tree", &body))]);
    let status = daemon.status();
    if status["landlock_denials"] != "recorded" {
        eprintln!(
            "Landlock's reports are not read here: {}",
            status["landlock_denials"]
        );
        return;
    }

    let socket = audit_socket();
    assert_eq!(audit_enabled(&socket), 1, "the daemon switched audit on");
    set_audit_enabled(&socket, 0);
    assert_eq!(audit_enabled(&socket), 0, "switched off by the test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit_enabled(&socket) != 1 {
        assert!(
            Instant::now() < deadline,
            "the daemon did not switch audit back on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let output = daemon.exec("tree", &[HELPER, "open", &key, "read"]);
    assert_eq!(helper_outcome(&output), "errno=13");
    let record = daemon.wait_for_record(|r| r["object"]["path"] == key.as_str());
    assert_eq!(record["hook"], "landlock", "{record}");
    wait_for_message(&daemon, "audit subsystem was found switched off");
    let status = daemon.status();
    assert!(
        status["landlock_reports"]["audit_switched_off"].as_u64() >= Some(1),
        "{status}"
    );

    // An exclude rule keeps Landlock's records from being emitted at all;
    // the daemon cannot undo it (an operator may want it), so it says so.
    let rule = ExcludeRule::add(&socket, LANDLOCK_ACCESS);
    wait_for_message(&daemon, "audit exclude rule");
    drop(rule);
}

const AUDIT_ADD_RULE: u16 = 1011;
const AUDIT_DEL_RULE: u16 = 1012;
const LANDLOCK_ACCESS: u32 = 1423;

/// An `auditctl -a never,exclude -F msgtype=N` rule, deleted on drop so
/// that a failing test leaves the host's audit rules as they were.
struct ExcludeRule<'a> {
    socket: &'a OwnedFd,
    data: Vec<u8>,
}

impl<'a> ExcludeRule<'a> {
    fn add(socket: &'a OwnedFd, msgtype: u32) -> Self {
        // struct audit_rule_data: flags, action, field_count, mask[64],
        // fields[64], values[64], fieldflags[64], buflen.
        let mut words = vec![0u32; 3 + 64 * 4 + 1];
        words[0] = 5; // AUDIT_FILTER_EXCLUDE
        words[1] = 0; // AUDIT_NEVER
        words[2] = 1;
        words[3 + 64] = 12; // fields[0] = AUDIT_MSGTYPE
        words[3 + 128] = msgtype; // values[0]
        words[3 + 192] = 0x4000_0000; // fieldflags[0] = AUDIT_EQUAL
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let (kind, reply) = &request(socket, AUDIT_ADD_RULE, &data, 1)[0];
        assert_eq!(*kind, 2, "an ACK");
        let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
        assert_eq!(error, 0, "the kernel refused the exclude rule");
        Self { socket, data }
    }
}

impl Drop for ExcludeRule<'_> {
    fn drop(&mut self) {
        request(self.socket, AUDIT_DEL_RULE, &self.data, 1);
    }
}

fn wait_for_message(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.records().iter().any(|r| {
        r["object"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(text))
    }) {
        assert!(
            Instant::now() < deadline,
            "no record saying {text:?}: {:#?}",
            daemon.records()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! Learn mode end to end, in the kernel: an agent runs a small workload
//! under a policy in audit mode; `baton policy suggest` turns the audit log
//! into a policy; enforced, that policy lets the same workload run with no
//! denial and denies a connection the workload did not make.

use std::net::{TcpListener, UdpSocket};

use baton_tests::{Daemon, baton, policy};

/// Opens a TCP connection (`tcp`) or sends a UDP datagram (`udp`) to
/// `addr` from inside the agent, with bash's `/dev/tcp` and `/dev/udp`;
/// returns `ok` or bash's error message.
fn reach(daemon: &Daemon, protocol: &str, addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!("exec 3<>/dev/{protocol}/{host}/{port} && echo x >&3");
    let output = daemon.exec("learner", &["bash", "-c", &script]);
    if output.status.success() {
        "ok".into()
    } else {
        String::from_utf8_lossy(&output.stderr).trim().to_string()
    }
}

#[test]
fn suggested_policy_allows_the_workload_and_denies_the_rest() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let extra = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap().to_string();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let extra_addr = extra.local_addr().unwrap().to_string();
    let workload = |daemon: &Daemon| -> Vec<String> {
        [("tcp", &tcp_addr), ("udp", &udp_addr)]
            .iter()
            .map(|(protocol, addr)| reach(daemon, protocol, addr))
            .collect()
    };

    let log = {
        let learning = Daemon::start(
            "learn",
            &[(
                "learn.yaml",
                policy(
                    "learn",
                    "learner",
                    "  mode: audit\n  egress:\n    default: deny\n",
                ),
            )],
        );
        assert_eq!(workload(&learning), ["ok", "ok"]);
        for addr in [&tcp_addr, &udp_addr] {
            let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
            let record = learning.wait_for_record(|r| r["object"]["port"] == port);
            assert_eq!(record["verdict"], "would-deny");
        }
        std::fs::read_to_string(&learning.audit_log).unwrap()
    };

    let dir = baton_tests::TempDir::new("learned");
    let log_path = dir.path().join("audit.jsonl");
    std::fs::write(&log_path, log).unwrap();
    let output = baton(&[
        "policy",
        "suggest",
        "--from",
        log_path.to_str().unwrap(),
        "--agent",
        "learner",
    ]);
    assert!(output.status.success(), "{output:?}");
    let suggested = String::from_utf8(output.stdout).unwrap();
    assert!(suggested.contains("  mode: enforce\n"), "{suggested}");

    let enforcing = Daemon::start("learned", &[("learned.yaml", suggested.clone())]);
    assert_eq!(workload(&enforcing), ["ok", "ok"], "{suggested}");
    let outcome = reach(&enforcing, "tcp", &extra_addr);
    assert!(
        outcome.contains("Operation not permitted"),
        "{outcome}\n{suggested}"
    );
    let extra_port: u64 = extra_addr.rsplit(':').next().unwrap().parse().unwrap();
    enforcing.wait_for_record(|r| r["verdict"] == "denied" && r["object"]["port"] == extra_port);
    let denied: Vec<_> = enforcing
        .decisions()
        .into_iter()
        .filter(|r| r["verdict"] == "denied")
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "only the extra connection is denied: {denied:?}"
    );
}

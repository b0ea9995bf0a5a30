//! `baton grant` on the host kernel: a grant opens a denied port for a
//! while and for a number of connects, the kernel stops honouring it at
//! either limit, every grant, use and end is recorded, an agent cannot
//! grant itself anything, and a restarted daemon keeps the grants in force.

use std::time::{Duration, Instant};

use baton_tests::{Daemon, EPERM, baton, baton_bin, helper_outcome, listener, policy, wait_until};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// An agent whose egress default denies everything, loopback included.
fn grant_policy(name: &str) -> String {
    policy(name, name, "  egress:\n    default: deny\n")
}

fn grant_cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let mut full = vec!["grant"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--control-socket", daemon.socket.to_str().unwrap()]);
    baton(&full)
}

fn granted(daemon: &Daemon, args: &[&str]) -> String {
    let output = grant_cli(daemon, args);
    assert!(
        output.status.success(),
        "baton grant {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn grant_list(daemon: &Daemon) -> Vec<Value> {
    let output = granted(daemon, &["list", "--json"]);
    output
        .lines()
        .map(|line| serde_json::from_str(line).expect("grant list --json prints JSON lines"))
        .collect()
}

fn connect(daemon: &Daemon, agent: &str, port: u16) -> String {
    helper_outcome(&daemon.exec(agent, &[HELPER, "connect", &format!("127.0.0.1:{port}")]))
}

fn grant_record(daemon: &Daemon, words: &str) -> Option<Value> {
    daemon.records().into_iter().find(|r| {
        r["control"] == "grant"
            && r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(words))
    })
}

#[test]
fn a_grant_ends_at_its_connect_budget_and_at_its_time() {
    let (_service, port) = listener();
    let daemon = Daemon::start("grant-limits", &[("p.yaml", grant_policy("granted"))]);
    assert_eq!(connect(&daemon, "granted", port), EPERM, "before any grant");

    let target = format!("127.0.0.1:{port}");
    let reply = granted(
        &daemon,
        &[
            "granted",
            "--allow",
            &target,
            "--for",
            "30s",
            "--max-connects",
            "5",
        ],
    );
    assert!(reply.contains("grant 1 opens any 127.0.0.1/32"), "{reply}");
    let listed = grant_list(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["agent"], "granted");
    assert_eq!(listed[0]["max_connects"], 5);
    let status = daemon.status();
    let agent = &status["agents"][0];
    assert_eq!(
        agent["grants"][0]["destination"],
        format!("127.0.0.1/32:{port}")
    );

    // Five connects from five processes (each a new child of the agent),
    // then the sixth is refused by the kernel.
    let script = format!("for i in 1 2 3 4 5 6; do {HELPER} connect 127.0.0.1:{port}; done");
    let output = daemon.exec("granted", &["sh", "-c", &script]);
    let outcomes: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        outcomes,
        ["ok", "ok", "ok", "ok", "ok", EPERM],
        "five connects within the budget, the sixth refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        connect(&daemon, "granted", port),
        EPERM,
        "still refused later"
    );

    // Each use is recorded with the grant as its rule, and the end too.
    wait_until("five recorded uses", || {
        daemon
            .decisions()
            .iter()
            .filter(|r| r["verdict"] == "allowed" && r["rule"]["policy"] == "grant")
            .count()
            == 5
    });
    let used = daemon
        .decisions()
        .into_iter()
        .find(|r| r["verdict"] == "allowed" && r["rule"]["policy"] == "grant")
        .unwrap();
    assert_eq!(used["rule"]["id"], "grant/1");
    assert_eq!(used["agent"], "granted");
    assert_eq!(used["object"]["port"], port);
    wait_until("the used-up record", || {
        grant_record(&daemon, "grant 1 of any to 127.0.0.1/32").is_some_and(|r| {
            r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("used up after 5 of 5 connects"))
        })
    });
    assert!(
        grant_list(&daemon).is_empty(),
        "a used-up grant is not listed"
    );
    let created = grant_record(&daemon, "grant 1 opens").expect("the grant is recorded");
    assert_eq!(created["agent"], "granted");
    assert_eq!(created["verdict"], "allowed");

    // Time: a grant of 3 s with no budget works until it ends, then the
    // kernel refuses, whether or not the daemon has swept it yet.
    granted(&daemon, &["granted", "--allow", &target, "--for", "3s"]);
    // The daemon set the expiry before it replied: 3 s from here is later.
    let granted_by = Instant::now();
    assert_eq!(
        connect(&daemon, "granted", port),
        "ok",
        "within the grant's time"
    );
    assert_eq!(grant_list(&daemon).len(), 1);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(granted_by.elapsed()));
    assert_eq!(
        connect(&daemon, "granted", port),
        EPERM,
        "after the grant's time"
    );
    wait_until("the expiry record", || {
        grant_record(&daemon, "grant 2 of any").is_some_and(|r| {
            r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("expired after 1 connects"))
        })
    });
    assert!(
        grant_list(&daemon).is_empty(),
        "an expired grant is not listed"
    );
}

#[test]
fn an_agent_cannot_grant_itself_and_bad_grants_are_refused() {
    let (_service, port) = listener();
    let daemon = Daemon::start("grant-refused", &[("p.yaml", grant_policy("asker"))]);
    let target = format!("127.0.0.1:{port}");
    let baton = baton_bin();
    let socket = daemon.socket.to_str().unwrap().to_string();
    let output = daemon.exec(
        "asker",
        &[
            baton.to_str().unwrap(),
            "grant",
            "asker",
            "--allow",
            &target,
            "--for",
            "1h",
            "--control-socket",
            &socket,
        ],
    );
    assert!(!output.status.success(), "an agent granted itself egress");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("grant of agent asker refused")
            && stderr.contains("belongs to agent asker"),
        "{stderr}"
    );
    let refusal = daemon.wait_for_record(|r| {
        r["control"] == "grant" && r["verdict"] == "denied" && r["hook"] == "control_socket"
    });
    assert_eq!(refusal["agent"], "asker");
    assert!(grant_list(&daemon).is_empty());
    assert_eq!(connect(&daemon, "asker", port), EPERM);

    for (args, says) in [
        (
            vec!["nobody-here", "--allow", target.as_str(), "--for", "1m"],
            "no agent named \"nobody-here\"",
        ),
        (
            vec!["asker", "--allow", "127.0.0.1", "--for", "1m"],
            "is not a destination",
        ),
        (
            vec!["asker", "--allow", "example.com:443", "--for", "1m"],
            "resolves names without Baton's DNS proxy",
        ),
        (
            vec!["asker", "--allow", target.as_str(), "--for", "8days"],
            "a grant lasts from 1 s to 7days",
        ),
    ] {
        let output = grant_cli(&daemon, &args);
        assert!(!output.status.success(), "{args:?} was granted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let output = grant_cli(&daemon, &["revoke", "77"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no grant 77 is in force"));
}

#[test]
fn a_restarted_daemon_keeps_unexpired_grants_and_revoke_ends_them() {
    let (_service, port) = listener();
    let mut daemon =
        Daemon::start_persistent("grant-restart", &[("p.yaml", grant_policy("keeper"))]);
    let target = format!("127.0.0.1:{port}");
    granted(
        &daemon,
        &[
            "keeper",
            "--allow",
            &target,
            "--for",
            "10m",
            "--max-connects",
            "3",
        ],
    );
    assert_eq!(connect(&daemon, "keeper", port), "ok");

    assert_eq!(connect(&daemon, "keeper", port), "ok");

    daemon.stop();
    daemon.restart();
    let listed = grant_list(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["connects"], 2, "the count survives the restart");
    assert_eq!(connect(&daemon, "keeper", port), "ok", "the third connect");
    assert_eq!(
        connect(&daemon, "keeper", port),
        EPERM,
        "the budget is spent"
    );
    wait_until("the spent grant to be swept", || {
        grant_list(&daemon).is_empty()
    });

    let id = listed[0]["id"].to_string();
    granted(&daemon, &["keeper", "--allow", &target, "--for", "10m"]);
    let list = grant_list(&daemon);
    let newest = list.last().unwrap()["id"].to_string();
    assert_ne!(newest, id);
    assert_eq!(connect(&daemon, "keeper", port), "ok");
    let reply = granted(&daemon, &["revoke", &newest]);
    assert!(reply.contains("revoked"), "{reply}");
    assert_eq!(connect(&daemon, "keeper", port), EPERM, "after revoke");
    assert!(grant_record(&daemon, &format!("grant {newest} of any")).is_some());
}

#[test]
fn a_grant_opens_only_what_the_default_denies() {
    let (_open, open_port) = listener();
    let (_denied, denied_port) = listener();
    let spec = format!(
        "  egress:\n    default: deny\n    deny:\n      - cidr: 127.0.0.1\n        ports: [{denied_port}]\n"
    );
    let daemon = Daemon::start(
        "grant-precedence",
        &[("p.yaml", policy("bounded", "bounded", &spec))],
    );
    for port in [open_port, denied_port] {
        let target = format!("127.0.0.0/8:{port}");
        granted(&daemon, &["bounded", "--allow", &target, "--for", "1m"]);
    }
    assert_eq!(
        connect(&daemon, "bounded", open_port),
        "ok",
        "the default is opened"
    );
    assert_eq!(
        connect(&daemon, "bounded", denied_port),
        EPERM,
        "the policy's own deny rule keeps deciding"
    );
    let denial =
        daemon.wait_for_record(|r| r["verdict"] == "denied" && r["object"]["port"] == denied_port);
    assert_ne!(denial["rule"]["policy"], "grant");
}

#[test]
fn a_datagram_grant_counts_each_unconnected_send_and_keeps_to_its_protocol() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let (_tcp, tcp_port) = listener();
    let daemon = Daemon::start("grant-udp", &[("p.yaml", grant_policy("sender"))]);
    let target = format!("127.0.0.1:{port}");
    granted(
        &daemon,
        &[
            "sender",
            "--allow",
            &target,
            "--for",
            "1m",
            "--max-connects",
            "2",
            "--protocol",
            "udp",
        ],
    );
    let tcp_target = format!("127.0.0.1:{tcp_port}");
    granted(
        &daemon,
        &[
            "sender",
            "--allow",
            &tcp_target,
            "--for",
            "1m",
            "--protocol",
            "udp",
        ],
    );
    let script = format!("for i in 1 2 3; do {HELPER} sendto 127.0.0.1:{port}; done");
    let output = daemon.exec("sender", &["sh", "-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["ok", "ok", EPERM],
        "each unconnected send spends one of the budget"
    );
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    for _ in 0..2 {
        receiver
            .recv(&mut buf)
            .expect("the granted datagrams arrive");
    }
    assert_eq!(
        connect(&daemon, "sender", tcp_port),
        EPERM,
        "a udp grant opens no tcp"
    );
}

/// What a grant of a name needs: a DNS server on loopback answering
/// `name` with `ip` (and `allowed.test`), a `resolv.conf` for the agent,
/// and an agent whose DNS goes through the proxy (one domain rule).
struct NameWorld {
    _dir: baton_tests::TempDir,
    _dns: baton_tests::Service,
    resolv_conf: std::path::PathBuf,
    /// The agent's policy.
    policy: String,
    /// The daemon's configuration: the DNS server as upstream.
    config: String,
}

fn name_world(label: &str, agent: &str, name: &str, ip: &str) -> NameWorld {
    let dir = baton_tests::TempDir::new(label);
    let (dns, dns_port) = baton_tests::dnsmasq(&[(name, ip), ("allowed.test", "127.0.0.2")]);
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "nameserver 127.0.0.53\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    NameWorld {
        _dir: dir,
        _dns: dns,
        resolv_conf,
        policy: policy(
            agent,
            agent,
            "  egress:\n    default: deny\n    allow:\n      - domain: allowed.test\n        ports: [80]\n",
        ),
        config: format!(
            "dns:\n  upstreams: [\"127.0.0.1:{dns_port}\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: 2\n"
        ),
    }
}

/// `command` in `agent`, with the world's `resolv.conf`.
fn in_named(
    world: &NameWorld,
    daemon: &Daemon,
    agent: &str,
    command: &str,
) -> std::process::Output {
    let wrapped = baton_tests::with_resolv_conf(&world.resolv_conf, command);
    let args: Vec<&str> = wrapped.iter().map(String::as_str).collect();
    daemon.exec(agent, &args)
}

#[test]
fn a_restarted_daemon_keeps_a_grant_of_a_name_and_its_addresses() {
    let world = name_world("grant-name-restart", "keepname", "kept.test", "127.0.0.6");
    let port = baton_tests::free_port("127.0.0.6");
    let _service = std::net::TcpListener::bind(("127.0.0.6", port)).unwrap();
    let mut daemon = Daemon::start_persistent_with_config(
        "grant-name-restart",
        &[("p.yaml", world.policy.clone())],
        &world.config,
    );
    let in_agent = |daemon: &Daemon, command: &str| {
        helper_outcome(&in_named(&world, daemon, "keepname", command))
    };
    granted(
        &daemon,
        &[
            "keepname",
            "--allow",
            &format!("kept.test:{port}"),
            "--for",
            "1h",
            "--max-connects",
            "3",
        ],
    );
    let resolve_and_connect =
        format!("sh -c 'getent hosts kept.test >/dev/null && {HELPER} connect 127.0.0.6:{port}'");
    assert_eq!(in_agent(&daemon, &resolve_and_connect), "ok");
    daemon.kill();
    daemon.restart();
    // The address it resolved to is still open, without a new lookup, and
    // the count goes on: 2 of 3 then 3 of 3, then refused.
    let connect = format!("{HELPER} connect 127.0.0.6:{port}");
    assert_eq!(in_agent(&daemon, &connect), "ok", "after the restart");
    let listed = grant_list(&daemon);
    assert_eq!(listed[0]["learned"][0], "127.0.0.6", "{listed:?}");
    assert_eq!(listed[0]["connects"], 2, "{listed:?}");
    assert_eq!(
        in_agent(&daemon, &resolve_and_connect),
        "ok",
        "and resolved"
    );
    assert_eq!(in_agent(&daemon, &connect), EPERM, "past the budget of 3");
}

#[test]
fn a_grant_of_a_name_resolves_it_and_opens_its_addresses_for_a_while() {
    let world = name_world("grant-name", "named", "granted.test", "127.0.0.5");
    let port = baton_tests::free_port("127.0.0.5");
    let _service = std::net::TcpListener::bind(("127.0.0.5", port)).unwrap();
    let other = std::net::TcpListener::bind(("127.0.0.5", 0)).unwrap();
    let other_port = other.local_addr().unwrap().port();
    let daemon = Daemon::start_with_config(
        "grant-name",
        &[("p.yaml", world.policy.clone())],
        &world.config,
    );
    let in_agent = |command: &str| in_named(&world, &daemon, "named", command);
    let resolve_and_connect = |port: u16| {
        helper_outcome(&in_agent(&format!(
            "sh -c 'getent hosts granted.test >/dev/null || {{ echo unresolved; exit 0; }}; {HELPER} connect 127.0.0.5:{port}'"
        )))
    };
    let unresolved = String::from_utf8_lossy(
        &in_agent("sh -c 'getent hosts granted.test || echo unresolved'").stdout,
    )
    .to_string();
    assert!(
        unresolved.contains("unresolved"),
        "before the grant: {unresolved}"
    );
    assert_eq!(
        helper_outcome(&in_agent(&format!("{HELPER} connect 127.0.0.5:{port}"))),
        EPERM,
        "before the grant"
    );

    let output = granted(
        &daemon,
        &[
            "named",
            "--allow",
            &format!("granted.test:{port}"),
            "--for",
            "4s",
            "--max-connects",
            "2",
        ],
    );
    assert!(output.contains("granted.test"), "{output}");
    assert_eq!(resolve_and_connect(port), "ok", "the first connect");
    assert_eq!(
        resolve_and_connect(other_port),
        EPERM,
        "only the granted port opens"
    );
    assert_eq!(resolve_and_connect(port), "ok", "the second connect");
    assert_eq!(resolve_and_connect(port), EPERM, "past the budget of 2");
    let listed = grant_list(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["destination"], format!("granted.test:{port}"));
    assert_eq!(listed[0]["learned"][0], "127.0.0.5", "{listed:?}");
    let allowed = daemon.wait_for_record(|r| {
        r["control"] == "egress" && r["verdict"] == "allowed" && r["rule"]["id"] == "grant/1"
    });
    assert_eq!(allowed["object"]["port"], port);
    // Used up: it ends, and with it the name.
    wait_until("the grant's end", || grant_list(&daemon).is_empty());
    let after = String::from_utf8_lossy(
        &in_agent("sh -c 'getent hosts granted.test || echo unresolved'").stdout,
    )
    .to_string();
    assert!(after.contains("unresolved"), "after the grant: {after}");
    assert!(grant_record(&daemon, "used up after 2 of 2 connects").is_some());
}

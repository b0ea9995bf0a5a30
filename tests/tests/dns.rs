//! Domain rules through the DNS proxy, against a real DNS server (dnsmasq on
//! loopback) and real clients: curl, Python's urllib, git over HTTP.
//!
//! `allowed.test` resolves to 127.0.0.2 and `blocked.test` to 127.0.0.3; an
//! HTTP server listens on both.

use std::path::Path;

use baton_tests::{
    Daemon, EPERM, Service, TempDir, dnsmasq, free_port, helper_outcome, http_server, policy,
    with_resolv_conf,
};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

struct World {
    _dns: Service,
    _allowed_http: Service,
    _blocked_http: Service,
    dns_port: u16,
    http_port: u16,
    dir: TempDir,
    resolv_conf: std::path::PathBuf,
}

fn world(label: &str) -> World {
    let dir = TempDir::new(label);
    let (dns, dns_port) = dnsmasq(&[
        ("allowed.test", "127.0.0.2"),
        ("blocked.test", "127.0.0.3"),
        ("other.test", "127.0.0.4"),
    ]);
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the test server\n").unwrap();
    // A bare repository served over "dumb" HTTP, for git clone.
    let repo = site.join("repo.git");
    let run = |args: &[&str], cwd: &Path| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    run(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "test repository\n").unwrap();
    run(&["add", "README"], &work);
    run(
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "init",
        ],
        &work,
    );
    run(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            repo.to_str().unwrap(),
        ],
        dir.path(),
    );
    run(&["update-server-info"], &repo);

    let http_port = free_port("127.0.0.2");
    let allowed_http = http_server("127.0.0.2", http_port, &site);
    let blocked_http = http_server("127.0.0.3", http_port, &site);
    let resolv_conf = dir.path().join("resolv.conf");
    // Any address will do: the agent's port-53 traffic goes to its proxy.
    std::fs::write(
        &resolv_conf,
        "nameserver 127.0.0.53\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    World {
        _dns: dns,
        _allowed_http: allowed_http,
        _blocked_http: blocked_http,
        dns_port,
        http_port,
        dir,
        resolv_conf,
    }
}

fn config(world: &World, max_ttl: u64) -> String {
    format!(
        "dns:\n  upstreams: [\"127.0.0.1:{}\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: {max_ttl}\n",
        world.dns_port
    )
}

fn web_policy(name: &str, domain: &str, port: u16, extra: &str) -> String {
    policy(
        name,
        name,
        &format!(
            "  egress:\n    default: deny\n    allow:\n      - domain: {domain}\n        ports: [{port}]\n        protocol: tcp\n{extra}"
        ),
    )
}

fn run_in_agent(
    daemon: &Daemon,
    agent: &str,
    world: &World,
    command: &str,
) -> std::process::Output {
    let wrapped = with_resolv_conf(&world.resolv_conf, command);
    let args: Vec<&str> = wrapped.iter().map(String::as_str).collect();
    daemon.exec(agent, &args)
}

#[test]
fn real_clients_reach_allowed_names_only() {
    let world = world("dns-clients");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-clients",
        &[("p.yaml", web_policy("web", "allowed.test", port, ""))],
        &config(&world, 60),
    );

    let curl = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!("curl -sS --noproxy '*' http://allowed.test:{port}/index.html"),
    );
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "hello from the test server\n",
        "curl to an allowed name: {}",
        String::from_utf8_lossy(&curl.stderr)
    );

    let blocked = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!("curl -sS --noproxy '*' http://blocked.test:{port}/index.html"),
    );
    assert_eq!(
        blocked.status.code(),
        Some(6),
        "curl cannot resolve blocked.test"
    );

    let by_address = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!("{HELPER} connect 127.0.0.3:{port}"),
    );
    assert_eq!(
        helper_outcome(&by_address),
        EPERM,
        "the blocked address by number"
    );

    let python = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!(
            "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://allowed.test:{port}/index.html', timeout=5).read().decode().strip())\""
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&python.stdout).trim(),
        "hello from the test server",
        "urllib: {}",
        String::from_utf8_lossy(&python.stderr)
    );

    let clone_dir = world.dir.path().join("clone");
    let git = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!(
            "env GIT_CONFIG_GLOBAL=/dev/null git clone -q http://allowed.test:{port}/repo.git {}",
            clone_dir.display()
        ),
    );
    assert!(
        git.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&git.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(clone_dir.join("README")).unwrap(),
        "test repository\n"
    );

    let refusal = daemon.wait_for_record(|r| r["control"] == "dns");
    assert_eq!(refusal["object"]["domain"], "blocked.test");
    assert_eq!(refusal["verdict"], "denied");
    assert_eq!(refusal["agent"], "web");
    let denied = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(denied["object"]["address"], "127.0.0.3");
}

/// A DNS query over TCP, built by hand, sent to a loopback "server" that
/// the kernel redirects to the proxy; prints the first A record or the
/// response code.
const TCP_QUERY: &str = r#"
import socket, struct, sys
name = sys.argv[1]
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0' + struct.pack('>HH', 1, 1)
s = socket.create_connection(('127.0.0.53', 53), timeout=5)
s.sendall(struct.pack('>H', len(q)) + q)
n = struct.unpack('>H', s.recv(2))[0]
r = b''
while len(r) < n:
    r += s.recv(n - len(r))
rcode = r[3] & 0xf
if rcode:
    print('rcode', rcode)
else:
    print('.'.join(str(b) for b in r[-4:]))
"#;

#[test]
fn dns_over_tcp_is_handled_the_same_way() {
    let world = world("dns-tcp");
    let daemon = Daemon::start_with_config(
        "dns-tcp",
        &[(
            "p.yaml",
            web_policy("tcp", "allowed.test", world.http_port, ""),
        )],
        &config(&world, 60),
    );
    let script = world.dir.path().join("query.py");
    std::fs::write(&script, TCP_QUERY).unwrap();
    let query = |name: &str| {
        let output = run_in_agent(
            &daemon,
            "tcp",
            &world,
            &format!("python3 {} {name}", script.display()),
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(query("allowed.test"), "127.0.0.2");
    assert_eq!(query("blocked.test"), "rcode 3", "NXDOMAIN");
}

#[test]
fn learned_addresses_expire_in_the_kernel() {
    let world = world("dns-ttl");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-ttl",
        &[("p.yaml", web_policy("ttl", "allowed.test", port, ""))],
        &config(&world, 2),
    );
    let resolve_then_connect = format!(
        "sh -c 'getent hosts allowed.test >/dev/null && {HELPER} connect 127.0.0.2:{port}'"
    );
    let first = run_in_agent(&daemon, "ttl", &world, &resolve_then_connect);
    assert_eq!(helper_outcome(&first), "ok", "within the TTL");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = run_in_agent(
        &daemon,
        "ttl",
        &world,
        &format!("{HELPER} connect 127.0.0.2:{port}"),
    );
    assert_eq!(
        helper_outcome(&later),
        EPERM,
        "after the TTL the address is closed again"
    );
}

#[test]
fn names_learned_by_one_agent_open_nothing_for_another() {
    let world = world("dns-two");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-two",
        &[
            ("a.yaml", web_policy("alpha", "allowed.test", port, "")),
            ("b.yaml", web_policy("beta", "other.test", port, "")),
        ],
        &config(&world, 60),
    );
    let alpha = run_in_agent(
        &daemon,
        "alpha",
        &world,
        &format!(
            "sh -c 'getent hosts allowed.test >/dev/null && {HELPER} connect 127.0.0.2:{port}'"
        ),
    );
    assert_eq!(helper_outcome(&alpha), "ok");
    let beta = run_in_agent(
        &daemon,
        "beta",
        &world,
        &format!("{HELPER} connect 127.0.0.2:{port}"),
    );
    assert_eq!(
        helper_outcome(&beta),
        EPERM,
        "alpha's learned address is alpha's only"
    );
    let beta_resolves = run_in_agent(&daemon, "beta", &world, "getent hosts allowed.test");
    assert!(
        !beta_resolves.status.success(),
        "beta may not resolve alpha's name"
    );
}

#[test]
fn an_explicit_cidr_deny_beats_a_learned_name() {
    let world = world("dns-deny");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-deny",
        &[(
            "p.yaml",
            web_policy(
                "strict",
                "allowed.test",
                port,
                "    deny:\n      - cidr: 127.0.0.2/32\n",
            ),
        )],
        &config(&world, 60),
    );
    let output = run_in_agent(
        &daemon,
        "strict",
        &world,
        &format!("sh -c 'getent hosts allowed.test && {HELPER} connect 127.0.0.2:{port}'"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("127.0.0.2"), "the name resolves: {stdout}");
    assert!(
        stdout.contains(EPERM),
        "but the address is denied: {stdout}"
    );
    let record = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(record["rule"]["id"], "egress.deny[0]");
    assert_eq!(record["object"]["domain"], "allowed.test");
}

#[test]
fn audit_mode_resolves_everything_and_records_would_deny() {
    let world = world("dns-audit");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-audit",
        &[(
            "p.yaml",
            web_policy("watch", "allowed.test", port, "")
                .replace("spec:\n", "spec:\n  mode: audit\n"),
        )],
        &config(&world, 60),
    );
    let output = run_in_agent(
        &daemon,
        "watch",
        &world,
        &format!(
            "sh -c 'getent hosts blocked.test >/dev/null && {HELPER} connect 127.0.0.3:{port}'"
        ),
    );
    assert_eq!(helper_outcome(&output), "ok");
    let dns = daemon.wait_for_record(|r| r["control"] == "dns");
    assert_eq!(dns["verdict"], "would-deny");
    let egress = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(egress["verdict"], "would-deny");
    assert_eq!(egress["object"]["domain"], "blocked.test");
}

#[test]
fn an_agent_in_its_own_network_namespace_resolves_through_the_proxy() {
    let world = world("dns-netns");
    let daemon = Daemon::start_with_config(
        "dns-netns",
        &[(
            "p.yaml",
            web_policy("boxed", "allowed.test", world.http_port, ""),
        )],
        &config(&world, 60),
    );
    // Like a container: a network namespace of its own. Its first query
    // fails fast while the daemon opens a proxy socket inside the
    // namespace; the resolver's next try gets the answer.
    let script = format!(
        "ip link set lo up; mount --bind {} /etc/resolv.conf; for i in $(seq 30); do getent hosts allowed.test && exit 0; sleep 0.3; done; exit 1",
        world.resolv_conf.display()
    );
    let output = daemon.exec(
        "boxed",
        &[
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("127.0.0.2"),
        "stdout: {stdout}\nstderr: {}\ndaemon: {}",
        String::from_utf8_lossy(&output.stderr),
        daemon.stderr()
    );
    assert!(
        daemon
            .stderr()
            .contains("DNS proxy opened in the agent's network namespace")
    );
    let blocked = daemon.exec(
        "boxed",
        &[
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script.replace("allowed.test", "blocked.test"),
        ],
    );
    assert!(
        !blocked.status.success(),
        "blocked.test stays refused in the namespace"
    );
}

/// A daemon that started with no usable resolver (none was needed: no
/// domain rules) sets the DNS proxy up when a reload brings the first
/// domain rules, reading the resolver configuration again.
#[test]
fn the_first_domain_rules_can_arrive_by_reload() {
    let world = world("dns-late");
    let port = world.http_port;
    let upstream_conf = world.dir.path().join("upstream-resolv.conf");
    let daemon = Daemon::start_with_config(
        "dns-late",
        &[(
            "p.yaml",
            policy("web", "web", "  egress:\n    default: deny\n"),
        )],
        &format!(
            "dns:\n  resolvConf: {}\n  minTtlSeconds: 1\n",
            upstream_conf.display()
        ),
    );
    // Now there is an upstream (resolv.conf has no ports: 53 on an address
    // of its own), and a policy that needs it.
    let _upstream = baton_tests::dnsmasq_on("127.0.0.77", 53, &[("allowed.test", "127.0.0.2")]);
    std::fs::write(&upstream_conf, "nameserver 127.0.0.77\n").unwrap();
    let file = daemon.dir.path().join("policies/p.yaml");
    let tmp = file.with_extension("tmp-write");
    std::fs::write(&tmp, web_policy("web", "allowed.test", port, "")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !daemon.records().iter().any(|r| {
        r["object"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("generation 2 loaded"))
    }) {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let curl = run_in_agent(
        &daemon,
        "web",
        &world,
        &format!("curl -sS --noproxy '*' http://allowed.test:{port}/index.html"),
    );
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        "hello from the test server\n",
        "curl to a name allowed by the reload: {}\n{}",
        String::from_utf8_lossy(&curl.stderr),
        daemon.stderr()
    );
}

/// Entries of one of the daemon's pinned maps, as `bpftool` lists them.
fn map_entries(daemon: &Daemon, map: &str) -> usize {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(daemon.pin_dir.join("maps").join(map))
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    assert!(
        output.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    entries.as_array().expect("a list of entries").len()
}

/// Descriptors the daemon holds open.
fn open_descriptors(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count()
}

/// Polls (up to two minutes: the machine may be busy) until the daemon
/// holds no more descriptors and proxy-map entries than `before`.
fn wait_for_release(daemon: &Daemon, before: (usize, usize)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let now = (
            open_descriptors(daemon),
            map_entries(daemon, "DNS_PROXY_PORTS"),
        );
        if now.0 <= before.0 && now.1 <= before.1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "descriptors and proxy-map entries {now:?}, before {before:?}\n{}",
            daemon.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A shell loop, run as `nobody` in a network namespace of its own (with
/// a user namespace: no privilege needed), that resolves `name` through
/// the namespace's proxy: the first query of a new namespace fails while
/// the daemon opens the proxy there, so it retries.
fn resolve_in_new_netns(name: &str, tries: u32) -> String {
    format!(
        "unshare -Urn sh -c 'for k in $(seq {tries}); do getent hosts {name} >/dev/null && exit 0; sleep 0.2; done; exit 1'"
    )
}

const AS_NOBODY: &str = "setpriv --reuid=nobody --regid=nogroup --clear-groups";

#[test]
fn a_burst_of_namespaces_leaves_no_proxy_behind() {
    let world = world("dns-burst");
    let daemon = Daemon::start_with_config(
        "dns-burst",
        &[(
            "p.yaml",
            web_policy("burst", "allowed.test", world.http_port, ""),
        )],
        &config(&world, 60),
    );
    let single = world.dir.path().join("one.sh");
    let script = world.dir.path().join("burst.sh");
    let one = resolve_in_new_netns("allowed.test", 100);
    std::fs::write(&single, format!("{one}\n")).unwrap();
    // 200 namespaces, ten at a time, each resolving once; one line per
    // namespace that got its answer.
    std::fs::write(
        &script,
        format!(
            "for i in $(seq 20); do for j in $(seq 10); do ( {one} && echo resolved ) & done; wait; done\n"
        ),
    )
    .unwrap();
    let as_nobody = |command: &str| {
        run_in_agent(
            &daemon,
            "burst",
            &world,
            &format!("{AS_NOBODY} -- {command}"),
        )
    };
    // One namespace first, so that whatever the daemon opens once (and
    // keeps) is part of the level the burst must return to.
    let warm_up = as_nobody(&format!("sh {}", single.display()));
    assert!(
        warm_up.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&warm_up.stderr),
        daemon.stderr()
    );
    wait_for_release(&daemon, (usize::MAX, 1));
    let before = (
        open_descriptors(&daemon),
        map_entries(&daemon, "DNS_PROXY_PORTS"),
    );

    let burst = as_nobody(&format!("sh {}", script.display()));
    let resolved = String::from_utf8_lossy(&burst.stdout)
        .lines()
        .filter(|line| *line == "resolved")
        .count();
    assert_eq!(
        resolved,
        200,
        "every namespace resolves: {}\n{}",
        String::from_utf8_lossy(&burst.stderr),
        daemon.stderr()
    );
    assert!(
        daemon
            .stderr()
            .contains("DNS proxy released: no process of the agent is left")
    );
    wait_for_release(&daemon, before);

    // And a namespace made after the burst still gets DNS.
    let after = as_nobody(&format!("sh {}", single.display()));
    assert!(after.status.success(), "{}", daemon.stderr());
}

#[test]
fn namespace_proxies_are_capped_per_agent() {
    let world = world("dns-cap");
    let daemon = Daemon::start_with_config(
        "dns-cap",
        &[(
            "p.yaml",
            web_policy("capped", "allowed.test", world.http_port, ""),
        )],
        &format!("{}  maxNamespaceProxiesPerAgent: 1\n", config(&world, 60)),
    );
    // The one namespace allowed: it resolves, then stays until `release`
    // exists.
    let release = world.dir.path().join("release");
    let hold = format!(
        "{AS_NOBODY} -- unshare -Urn sh -c 'for k in $(seq 100); do getent hosts allowed.test >/dev/null && break; sleep 0.2; done; echo held; while [ ! -e {} ]; do sleep 0.1; done'",
        release.display()
    );
    let mut holder = std::process::Command::new(baton_tests::baton_bin())
        .args(["exec", "--agent", "capped", "--control-socket"])
        .arg(&daemon.socket)
        .arg("--")
        .args(baton_tests::with_resolv_conf(&world.resolv_conf, &hold))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held", "{}", daemon.stderr());

    // A second namespace is over the cap: no proxy, no DNS, one record.
    let refused = run_in_agent(
        &daemon,
        "capped",
        &world,
        &format!("{AS_NOBODY} -- {}", resolve_in_new_netns("allowed.test", 5)),
    );
    assert!(!refused.status.success(), "{}", daemon.stderr());
    let records = daemon.records();
    let cap: Vec<_> = records
        .iter()
        .filter(|r| {
            r["control"] == "dns"
                && r["object"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("dns.maxNamespaceProxiesPerAgent"))
        })
        .collect();
    assert_eq!(cap.len(), 1, "one record per spell at the cap: {cap:?}");
    assert_eq!(cap[0]["agent"], "capped");
    assert_eq!(map_entries(&daemon, "DNS_PROXY_PORTS"), 2);

    // The held namespace empties: its proxy goes, and the next one gets DNS.
    std::fs::write(&release, "").unwrap();
    assert!(holder.wait().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let next = run_in_agent(
            &daemon,
            "capped",
            &world,
            &format!("{AS_NOBODY} -- {}", resolve_in_new_netns("allowed.test", 5)),
        );
        if next.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", daemon.stderr());
    }
}

/// Five allowed names on one address, each rule with its own port; the
/// first name's answer lives 2 s, the others' 600 s.
#[test]
fn names_sharing_an_address_keep_their_own_ports_and_expiry() {
    let dir = TempDir::new("dns-shared");
    let mut records = vec!["--host-record=n1.shared.test,127.0.0.2,2".to_owned()];
    for i in 2..=5 {
        records.push(format!("--host-record=n{i}.shared.test,127.0.0.2,600"));
    }
    let (_dns, dns_port) = baton_tests::dnsmasq_with(&records);
    // A listener per port, so an allowed connect completes.
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.2:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let rules: String = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "      - domain: n{}.shared.test\n        ports: [{port}]\n        protocol: tcp\n",
                i + 1
            )
        })
        .collect();
    let daemon = Daemon::start_with_config(
        "dns-shared",
        &[(
            "p.yaml",
            policy(
                "shared",
                "shared",
                &format!("  egress:\n    default: deny\n    allow:\n{rules}"),
            ),
        )],
        &format!(
            "dns:\n  upstreams: [\"127.0.0.1:{dns_port}\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: 600\n"
        ),
    );
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "nameserver 127.0.0.53\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    let connect = |port: u16| {
        let wrapped = with_resolv_conf(&resolv_conf, &format!("{HELPER} connect 127.0.0.2:{port}"));
        let args: Vec<&str> = wrapped.iter().map(String::as_str).collect();
        helper_outcome(&daemon.exec("shared", &args))
    };
    let resolve_all =
        "sh -c 'for i in 1 2 3 4 5; do getent hosts n$i.shared.test >/dev/null || exit 1; done'";
    let wrapped = with_resolv_conf(&resolv_conf, resolve_all);
    let args: Vec<&str> = wrapped.iter().map(String::as_str).collect();
    let resolved = daemon.exec("shared", &args);
    assert!(resolved.status.success(), "{}", daemon.stderr());
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(connect(*port), "ok", "n{}.shared.test's port", i + 1);
    }
    // Another port on the shared address was never allowed.
    let other = free_port("127.0.0.2");
    assert_eq!(connect(other), EPERM);

    // The short-TTL name's port closes on its own (polled: no timing
    // assumption beyond "within a minute")...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while connect(ports[0]) != EPERM {
        assert!(
            std::time::Instant::now() < deadline,
            "n1's port never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // ...while the long-TTL names on the same address stay open.
    for port in &ports[1..] {
        assert_eq!(connect(*port), "ok");
    }
}

/// What Python's resolver (glibc `getaddrinfo`) says about a name: `found`,
/// or the `gaierror` constant.
const GAI: &str = r#"
import socket, sys
try:
    socket.getaddrinfo(sys.argv[1], 80)
    print('found')
except socket.gaierror as e:
    names = {getattr(socket, n): n for n in dir(socket) if n.startswith('EAI_')}
    print(names.get(e.errno, e.errno))
"#;

#[test]
fn a_refused_name_is_not_found_for_good_and_cites_its_rule() {
    let world = world("dns-refused");
    let daemon = Daemon::start_with_config(
        "dns-refused",
        &[(
            "p.yaml",
            web_policy("strict", "allowed.test", world.http_port, ""),
        )],
        &config(&world, 60),
    );
    // glibc reports "not found" (getent's exit code 2, EAI_NONAME), not a
    // temporary failure (EAI_AGAIN) that callers retry.
    let getent = run_in_agent(
        &daemon,
        "strict",
        &world,
        "sh -c 'echo $$; exec getent hosts blocked.test'",
    );
    assert_eq!(getent.status.code(), Some(2), "{}", daemon.stderr());
    let pid: u64 = String::from_utf8_lossy(&getent.stdout)
        .trim()
        .parse()
        .unwrap();
    let script = world.dir.path().join("gai.py");
    std::fs::write(&script, GAI).unwrap();
    let gai = |name: &str| {
        let output = run_in_agent(
            &daemon,
            "strict",
            &world,
            &format!("python3 {} {name}", script.display()),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(gai("blocked.test"), "EAI_NONAME");
    assert_eq!(gai("allowed.test"), "found");

    // The record names the process that asked, as the kernel's redirect
    // saw it, and the rule that refused.
    let record = daemon.wait_for_record(|r| r["control"] == "dns");
    assert_eq!(record["object"]["domain"], "blocked.test");
    assert_eq!(record["process"]["pid"], pid, "{record}");
    assert_eq!(record["process"]["comm"], "getent");
    assert_eq!(record["process"]["uid"], 0);
    assert_eq!(record["agent"], "strict");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["rule"]["id"], "egress.default");
    assert_eq!(record["rule"]["policy"], "strict");
}

#[test]
fn a_denial_names_a_domain_only_when_the_learned_row_matched() {
    let world = world("dns-literal");
    let port = world.http_port;
    let daemon = Daemon::start_with_config(
        "dns-literal",
        &[("p.yaml", web_policy("literal", "allowed.test", port, ""))],
        &config(&world, 60),
    );
    // allowed.test is learned for `port` only; another port of the same
    // address, asked for by number, is denied by the default, and the
    // learned name had no part in it.
    let other = free_port("127.0.0.2");
    let output = run_in_agent(
        &daemon,
        "literal",
        &world,
        &format!(
            "sh -c 'getent hosts allowed.test >/dev/null && {HELPER} connect 127.0.0.2:{port} && {HELPER} connect 127.0.0.2:{other}'"
        ),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["ok", EPERM],
        "{stdout}"
    );
    let record = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(record["object"]["port"], other);
    assert!(record["object"]["domain"].is_null(), "{record}");
}

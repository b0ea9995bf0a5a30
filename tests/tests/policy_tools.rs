//! Tools for people who write policies: `baton policy diff`, `suggest`,
//! `keygen`, `sign` and `verify`, run as a user runs them.

use std::{net::IpAddr, path::Path};

use baton::policy::{
    compile, eval, parse_str,
    spec::{FileRight, Protocol},
    suggest,
};
use baton_tests::{TempDir, baton, policy};
use serde_json::Value;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn diff_says_what_a_change_allows_and_denies() {
    let dir = TempDir::new("diff");
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(
        old.join("coder.yaml"),
        policy(
            "coder",
            "coder",
            "  egress:
    allow:
      - cidr: 10.0.0.0/8
        ports: [443]
        protocol: tcp
      - domain: api.example.com
        ports: [443]
    deny:
      - cidr: 10.9.0.0/16
  files:
    deny:
      - /root/.ssh
",
        ),
    )
    .unwrap();
    std::fs::write(
        old.join("gone.yaml"),
        policy("gone", "gone", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        policy(
            "coder",
            "coder",
            "  mode: audit
  egress:
    allow:
      - cidr: 10.0.0.0/8
        ports: [443, 8443]
        protocol: tcp
    deny:
      - cidr: 10.9.0.0/16
  files:
    default: deny
    allow:
      - path: /srv/app
        rights: [read]
",
        ),
    )
    .unwrap();

    let text = stdout(&baton(&[
        "policy",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]));
    let expected = "\
agent coder (changed)
  now allowed:
    + everything the policy denies: mode enforce -> audit: only recorded now, never denied
    + egress to 10.0.0.0/8, ports 443, 8443, tcp: allow rule added [coder: egress.allow[0]]
    + files under /srv/app (read): allow rule added [coder: files.allow[0]]
    + files under /root/.ssh (every right): deny rule removed [coder: files.deny[0]]
  now denied:
    - files no rule names: default allow -> deny
    - egress to 10.0.0.0/8, port 443, tcp: allow rule removed [coder: egress.allow[0]]
    - egress to names matching api.example.com (their addresses), port 443: allow rule removed [coder: egress.allow[1]]
agent gone (removed)
  now denied:
    - agent gone: no policy selects it any more: `baton exec --agent` is refused, and processes already in the agent are held closed (every connect denied) [gone: removed]
2 agent(s) changed: 4 change(s) allow more, 4 deny more, 0 other
";
    assert_eq!(text, expected, "got:\n{text}");

    let json: Value = serde_json::from_str(&stdout(&baton(&[
        "policy",
        "diff",
        "--json",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ])))
    .unwrap();
    let coder = &json["agents"][0];
    assert_eq!(coder["agent"], "coder");
    assert_eq!(coder["status"], "changed");
    let first = &coder["changes"][0];
    assert_eq!(first["effect"], "allows");
    assert_eq!(first["area"], "mode");
    assert_eq!(json["agents"][1]["status"], "removed");

    // The same set on both sides: no change.
    let same = stdout(&baton(&[
        "policy",
        "diff",
        new.to_str().unwrap(),
        new.to_str().unwrap(),
    ]));
    assert_eq!(same, "no change; unchanged: coder\n");
}

#[test]
fn keygen_sign_and_verify() {
    let dir = TempDir::new("sign");
    let key = dir.path().join("policy.key");
    let public_hex = stdout(&baton(&[
        "policy",
        "keygen",
        "--out",
        key.to_str().unwrap(),
    ]));
    let public_hex = public_hex.trim();
    assert_eq!(public_hex.len(), 64, "{public_hex}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public_file = dir.path().join("policy.key.pub");
    assert!(
        std::fs::read_to_string(&public_file)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // Never overwrites a key.
    assert!(
        !baton(&["policy", "keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );

    let bundle = dir.path().join("bundle.yaml");
    let text = format!(
        "{}---\n{}",
        policy("a", "a", "  egress:\n    default: deny\n"),
        policy("b", "b", "  egress:\n    default: deny\n")
    );
    std::fs::write(&bundle, &text).unwrap();
    let verify = |pubkey: &str| {
        baton(&[
            "policy",
            "verify",
            "--pubkey",
            pubkey,
            bundle.to_str().unwrap(),
        ])
    };
    let unsigned = verify(public_hex);
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("not signed"));

    stdout(&baton(&[
        "policy",
        "sign",
        "--key",
        key.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ]));
    let signed = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        signed.starts_with("# baton-signature: v1 ed25519 key="),
        "{signed}"
    );
    assert!(signed.ends_with(&text));
    let ok = stdout(&verify(public_hex));
    assert!(ok.starts_with("ok: "), "{ok}");
    // The public key file works as well as the hex.
    stdout(&verify(public_file.to_str().unwrap()));
    // A signed bundle is still a policy file.
    stdout(&baton(&["policy", "check", bundle.to_str().unwrap()]));

    std::fs::write(&bundle, signed.replace("default: deny", "default: allow")).unwrap();
    let tampered = verify(public_hex);
    assert!(!tampered.status.success());
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("bad signature"),
        "{tampered:?}"
    );

    // Nothing that does not compile gets signed.
    std::fs::write(&bundle, "apiVersion: [unclosed\n").unwrap();
    assert!(
        !baton(&[
            "policy",
            "sign",
            "--key",
            key.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ])
        .status
        .success()
    );
}

/// An audit log as the daemon writes it for agent `coder` running in audit
/// mode under a policy with every default `deny`: names resolved through
/// the DNS proxy, connections to learned and literal addresses, files and
/// programs. Agent `other` is in the same log.
fn learning_log() -> Vec<String> {
    let record = |seq: u32, agent: &str, control: &str, hook: &str, object: Value, rule: &str| {
        let mut record = serde_json::json!({
            "schema": "baton.audit/v1", "seq": seq, "prev_hash": "00",
            "time": format!("2026-03-01T10:00:{seq:02}.000000001Z"), "host": "web1",
            "agent": agent, "mode": "audit", "verdict": "would-deny",
            "control": control, "hook": hook, "object": object,
            "process": {"pid": 4242, "tid": 4242, "uid": 1000, "gid": 1000, "comm": "python3",
                        "exe": "/usr/bin/python3.11", "cgroup_id": 8812, "agent_root_pid": 4240}
        });
        if !rule.is_empty() {
            record["rule"] = serde_json::json!({"policy": "learn", "id": rule, "kernel_id": 1});
        }
        record.to_string()
    };
    let connect = |address: &str, port: u16, protocol: &str, domain: Option<&str>| {
        let mut object =
            serde_json::json!({"address": address, "port": port, "protocol": protocol});
        if let Some(domain) = domain {
            object["domain"] = domain.into();
        }
        object
    };
    let file = |path: &str, rights: &[&str]| serde_json::json!({"path": path, "rights": rights, "denied_rights": rights});
    vec![
        r#"{"schema":"baton.audit/v1","seq":1,"prev_hash":"00","time":"2026-03-01T10:00:00Z","host":"web1","verdict":"info","control":"daemon","object":{"message":"baton 0.1.0 started"}}"#.to_string(),
        record(2, "coder", "dns", "dns_proxy", serde_json::json!({"domain": "api.example.com", "query_type": "A"}), ""),
        record(3, "coder", "egress", "connect4", connect("93.184.216.34", 443, "tcp", Some("api.example.com")), "egress.default"),
        record(4, "coder", "egress", "connect4", connect("93.184.216.35", 443, "tcp", Some("api.example.com")), "egress.default"),
        record(5, "coder", "dns", "dns_proxy", serde_json::json!({"domain": "pypi.org", "query_type": "AAAA"}), ""),
        record(6, "coder", "egress", "connect6", connect("2a04:4e42::223", 443, "tcp", Some("pypi.org")), "egress.default"),
        record(7, "coder", "egress", "connect4", connect("10.0.0.5", 5432, "tcp", None), "egress.default"),
        record(8, "coder", "egress", "sendmsg4", connect("10.0.0.5", 8125, "udp", None), "egress.default"),
        record(9, "coder", "file", "file_open", file("/srv/app/src/main.py", &["read"]), "files.default"),
        record(10, "coder", "file", "file_open", file("/srv/app/src/util.py", &["read"]), "files.default"),
        record(11, "coder", "file", "file_open", file("/srv/app/out.log", &["write"]), "files.default"),
        record(12, "coder", "file", "path_mknod", file("/srv/app/out.log", &["create"]), "files.default"),
        record(13, "coder", "file", "file_open", file("/etc/hosts", &["read"]), "files.default"),
        record(14, "coder", "file", "file_open", file("/proc/4242/status", &["read"]), "files.default"),
        record(15, "coder", "exec", "bprm_check_security", file("/usr/bin/git", &["exec"]), "exec.default"),
        record(16, "coder", "exec", "mmap_file", file("/usr/lib/x86_64-linux-gnu/libc.so.6", &["exec"]), "exec.default"),
        record(17, "coder", "exec", "mmap_file", file("/usr/lib/x86_64-linux-gnu/libz.so.1", &["exec"]), "exec.default"),
        record(18, "other", "egress", "connect4", connect("192.0.2.1", 80, "tcp", None), "egress.default"),
        // A torn last line, as a crash leaves it.
        r#"{"schema":"baton.audit/v1","seq":19,"#.to_string(),
    ]
}

#[test]
fn suggest_allows_what_the_agent_did_and_nothing_more() {
    let log = learning_log();
    let yaml = suggest::suggest(log.iter().map(String::as_str), "coder", None).unwrap();
    let policies = parse_str(Path::new("suggested.yaml"), &yaml).unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].document.metadata.name.as_str(), "coder");
    let set = compile(&policies, baton::ids::RuleId::FIRST).unwrap();
    let coder = &set.agents["coder"];
    assert_eq!(coder.mode, 0, "enforce");

    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let connect = |addr: &str, port: u16, protocol: Protocol, name: Option<&str>| {
        eval::connect(coder, ip(addr), port, protocol, name).allowed
    };
    // Everything in the log is allowed.
    assert!(eval::resolves(coder, "api.example.com").is_some());
    assert!(connect(
        "93.184.216.34",
        443,
        Protocol::Tcp,
        Some("api.example.com")
    ));
    assert!(connect(
        "93.184.216.35",
        443,
        Protocol::Tcp,
        Some("api.example.com")
    ));
    assert!(eval::resolves(coder, "pypi.org").is_some());
    assert!(connect(
        "2a04:4e42::223",
        443,
        Protocol::Tcp,
        Some("pypi.org")
    ));
    assert!(connect("10.0.0.5", 5432, Protocol::Tcp, None));
    assert!(connect("10.0.0.5", 8125, Protocol::Udp, None));
    let file = |path: &str, right| eval::file(coder, path, right).allowed;
    assert!(file("/srv/app/src/main.py", FileRight::Read));
    assert!(file("/srv/app/src/util.py", FileRight::Read));
    assert!(file("/srv/app/out.log", FileRight::Write));
    assert!(file("/srv/app/out.log", FileRight::Create));
    assert!(file("/etc/hosts", FileRight::Read));
    assert!(file("/proc/999/status", FileRight::Read));
    assert!(eval::exec(coder, "/usr/bin/git").allowed);
    assert!(eval::exec(coder, "/usr/lib/x86_64-linux-gnu/libc.so.6").allowed);

    // Nothing else is.
    assert!(eval::resolves(coder, "evil.example.com").is_none());
    assert!(
        !connect("93.184.216.34", 443, Protocol::Tcp, None),
        "an address, not its name"
    );
    assert!(!connect(
        "93.184.216.34",
        80,
        Protocol::Tcp,
        Some("api.example.com")
    ));
    assert!(!connect(
        "93.184.216.34",
        443,
        Protocol::Udp,
        Some("api.example.com")
    ));
    assert!(!connect("10.0.0.5", 5433, Protocol::Tcp, None));
    assert!(!connect("10.0.0.5", 5432, Protocol::Udp, None));
    assert!(!connect("10.0.0.6", 5432, Protocol::Tcp, None));
    assert!(
        !connect("192.0.2.1", 80, Protocol::Tcp, None),
        "another agent's destination"
    );
    assert!(!file("/srv/app/src/main.py", FileRight::Delete));
    assert!(!file("/srv/other/x", FileRight::Read));
    assert!(!file("/etc/passwd", FileRight::Read));
    assert!(!file("/etc/shadow", FileRight::Read));
    assert!(!eval::exec(coder, "/usr/bin/nc").allowed);

    // The comments say what was seen.
    assert!(
        yaml.contains("# api.example.com: 2 connection(s) (443/tcp ×2) to 93.184.216.34, 93.184.216.35; resolved 1 time(s)."),
        "{yaml}"
    );
    assert!(
        yaml.contains("# 2 paths under /srv/app/src (read ×2)"),
        "{yaml}"
    );
    assert!(
        yaml.contains("- path: /srv/app/out.log\n        rights: [create, write]"),
        "{yaml}"
    );
}

#[test]
fn suggest_on_the_command_line() {
    let dir = TempDir::new("suggest");
    let log = dir.path().join("audit.jsonl");
    std::fs::write(&log, learning_log().join("\n")).unwrap();
    let yaml = stdout(&baton(&[
        "policy",
        "suggest",
        "--from",
        log.to_str().unwrap(),
        "--agent",
        "coder",
        "--name",
        "coder-learned",
    ]));
    let suggested = dir.path().join("suggested.yaml");
    std::fs::write(&suggested, &yaml).unwrap();
    let check = stdout(&baton(&["policy", "check", suggested.to_str().unwrap()]));
    assert!(
        check.contains("agent coder: policies coder-learned"),
        "{check}"
    );

    let missing = baton(&[
        "policy",
        "suggest",
        "--from",
        log.to_str().unwrap(),
        "--agent",
        "nobody",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no decision record for agent \"nobody\""),
        "{missing:?}"
    );
}

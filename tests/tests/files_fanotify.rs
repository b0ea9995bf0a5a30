//! The fanotify fallback: where BPF LSM cannot load, the file and exec deny
//! rules of agents that `baton exec` did not start (here: selected by
//! executable) are enforced with fanotify permission events. Real opens and
//! execs, real errnos, real audit records.
//!
//! On a kernel where BPF LSM loads, the daemon uses it instead and these
//! tests would test BPF LSM, so each one first asks `baton probe`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use baton_tests::{Daemon, EPERM, TempDir, baton, helper_outcome, policy};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// Files for one test: a copy of the helper that the agent's policy selects
/// by executable, and files for it to touch.
struct Setup {
    dir: TempDir,
    agent_helper: PathBuf,
}

impl Setup {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let agent_helper = dir.path().join("agent-helper");
        std::fs::copy(HELPER, &agent_helper).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        for name in ["secret.txt", "public.txt", "config.txt"] {
            std::fs::write(dir.path().join(name), "content\n").unwrap();
        }
        Self { dir, agent_helper }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A policy for agent `fan` selecting the helper copy (and `extra`
    /// selected executables), with `body` below `spec:`.
    fn policy(&self, extra: &[&Path], body: &str) -> String {
        let mut selected = vec![self.agent_helper.display().to_string()];
        selected.extend(extra.iter().map(|p| p.display().to_string()));
        policy("fanpolicy", "fan", body).replace(
            "    agent: fan\n",
            &format!(
                "    agent: fan\n    executables: [{}]\n",
                selected.join(", ")
            ),
        )
    }

    /// Runs the selected helper copy (so the process is the agent).
    fn as_agent(&self, args: &[&str]) -> String {
        helper_outcome(
            &Command::new(&self.agent_helper)
                .args(args)
                .output()
                .unwrap(),
        )
    }
}

/// Runs the ordinary helper, outside every agent.
fn outside(args: &[&str]) -> String {
    helper_outcome(&Command::new(HELPER).args(args).output().unwrap())
}

fn file_record<'a>(records: &'a [Value], path: &str, hook: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["control"] == "file" && r["object"]["path"] == path && r["hook"] == hook)
}

#[test]
fn fanotify_denies_deny_listed_reads_writes_and_execs_of_an_executable_selected_agent() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fan");
    let cat = setup.dir.path().join("cat");
    std::fs::copy("/bin/cat", &cat).unwrap();
    let denied_tool = setup.dir.path().join("bin/denied-tool");
    std::fs::copy(HELPER, &denied_tool).unwrap();
    let allowed_tool = setup.dir.path().join("bin/allowed-tool");
    std::fs::copy(HELPER, &allowed_tool).unwrap();
    let (secret, public, config) = (
        setup.path("secret.txt"),
        setup.path("public.txt"),
        setup.path("config.txt"),
    );
    let body = format!(
        "  files:\n    deny:\n      - {secret}\n      - path: {config}\n        rights: [write]\n  exec:\n    deny: [{}]\n",
        denied_tool.display()
    );
    let daemon = Daemon::start("fan", &[("p.yaml", setup.policy(&[&cat], &body))]);

    // Reads.
    assert_eq!(setup.as_agent(&["open", &secret, "read"]), EPERM);
    assert_eq!(setup.as_agent(&["open", &public, "read"]), "ok");
    assert_eq!(
        outside(&["open", &secret, "read"]),
        "ok",
        "a process outside the agent is not affected"
    );
    let output = Command::new(&cat).arg(&secret).output().unwrap();
    assert!(!output.status.success(), "cat of a denied file succeeded");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(&cat).arg(&public).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "content\n");

    // A write-only deny: reading the file stays allowed, writing it is not.
    assert_eq!(setup.as_agent(&["open", &config, "read"]), "ok");
    assert_eq!(setup.as_agent(&["open", &config, "write"]), EPERM);
    assert_eq!(outside(&["open", &config, "write"]), "ok");

    // Execs: the deny-listed binary is refused, its neighbour runs.
    let denied = denied_tool.display().to_string();
    assert_eq!(
        setup.as_agent(&["exec", &denied, "open", &public, "read"]),
        EPERM
    );
    assert_eq!(
        setup.as_agent(&[
            "exec",
            &allowed_tool.display().to_string(),
            "open",
            &secret,
            "read"
        ]),
        EPERM,
        "the agent's child runs, and is still the agent"
    );
    assert_eq!(outside(&["exec", &denied, "open", &public, "read"]), "ok");

    // Each denial is an audit record, with the path, the rights and the rule.
    daemon.wait_for_record(|r| r["object"]["path"] == denied.as_str());
    daemon.wait_for_record(|r| r["object"]["path"] == config.as_str());
    let records = daemon.decisions();
    let read = file_record(&records, &secret, "fanotify_open_perm").expect("a record of the read");
    assert_eq!(read["agent"], "fan");
    assert_eq!(read["verdict"], "denied");
    assert_eq!(read["mode"], "enforce");
    assert_eq!(read["object"]["rights"], serde_json::json!(["read"]));
    assert_eq!(read["rule"]["policy"], "fanpolicy");
    assert_eq!(read["rule"]["id"], "files.deny[0]");
    let write =
        file_record(&records, &config, "fanotify_open_perm").expect("a record of the write");
    assert_eq!(
        write["object"]["denied_rights"],
        serde_json::json!(["write"])
    );
    assert_eq!(write["rule"]["id"], "files.deny[1]");
    let exec =
        file_record(&records, &denied, "fanotify_open_exec_perm").expect("a record of the exec");
    assert_eq!(exec["verdict"], "denied");
    assert_eq!(exec["object"]["rights"], serde_json::json!(["exec"]));
    assert_eq!(exec["rule"]["id"], "exec.deny[0]");
    assert!(
        exec["process"]["pid"].as_u64().unwrap() > 0,
        "the process is named: {exec}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["object"]["path"] == public.as_str()),
        "allowed opens are not recorded"
    );

    // The daemon says which mechanism holds the agent, per right.
    let output = baton(&[
        "status",
        "--json",
        "--control-socket",
        daemon.socket.to_str().unwrap(),
    ]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rights = &status["agents"][0]["rights"];
    assert!(
        rights["read"].as_str().unwrap().contains("fanotify"),
        "{rights}"
    );
    assert!(
        rights["exec"].as_str().unwrap().contains("fanotify"),
        "{rights}"
    );
    // What fanotify cannot see is detected by the kernel (never called
    // enforced), or not covered at all where detection does not load.
    let delete = rights["delete"].as_str().unwrap();
    assert!(
        delete.ends_with("executable: detected only, not prevented (onDetect: record)")
            || delete.ends_with("none (fanotify cannot see it)"),
        "{rights}"
    );
    let degraded: Vec<Value> = daemon
        .records()
        .into_iter()
        .filter(|r| {
            r["control"] == "file"
                && r["verdict"] == "info"
                && r["agent"] == "fan"
                && r["object"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("control degraded"))
        })
        .collect();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
}

#[test]
fn fanotify_follows_reloads() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fanreload");
    let secret = setup.path("secret.txt");
    let daemon = Daemon::start("fanreload", &[("p.yaml", setup.policy(&[], ""))]);
    assert_eq!(setup.as_agent(&["open", &secret, "read"]), "ok");

    let policy_file = daemon.dir.path().join("policies/p.yaml");
    let wait_for = |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = setup.as_agent(&["open", &secret, "read"]);
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {got} 10 s after the reload; daemon:\n{}",
                daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    std::fs::write(
        &policy_file,
        setup.policy(&[], &format!("  files:\n    deny: [{secret}]\n")),
    )
    .unwrap();
    wait_for(EPERM);
    assert_eq!(outside(&["open", &secret, "read"]), "ok");
    // And back: the rule removed, the read allowed again.
    std::fs::write(&policy_file, setup.policy(&[], "")).unwrap();
    wait_for("ok");
}

/// A mounted file system for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", at.display());
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn fanotify_denies_a_whole_subtree_and_records_would_deny_in_audit_mode() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fantree");
    // Watched through its whole mount (`files.fanotifyWholeMounts`), which
    // sees a folder made later from its first moment. The subtree lives on
    // a file system of its own, so that the mount mark covers only this
    // test's files.
    let mount = Tmpfs::mount(setup.dir.path().join("mnt"));
    let tree = mount.0.join("tree");
    std::fs::create_dir_all(tree.join("deep/er")).unwrap();
    std::fs::write(tree.join("deep/er/file"), "x").unwrap();
    std::fs::write(mount.0.join("beside"), "x").unwrap();
    let deep = tree.join("deep/er/file").display().to_string();
    let beside = mount.0.join("beside").display().to_string();
    let body = format!("  files:\n    deny: [{}]\n", tree.display());
    let daemon = Daemon::start_with_config(
        "fantree",
        &[("p.yaml", setup.policy(&[], &body))],
        "files:\n  fanotifyWholeMounts: true\n",
    );
    let enforcement = daemon.status()["file_enforcement"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        enforcement.contains(&format!("mount {}", mount.0.display())),
        "{enforcement}"
    );
    assert_eq!(setup.as_agent(&["open", &deep, "read"]), EPERM);
    // Created after the marks were set: still inside the denied tree.
    std::fs::create_dir_all(tree.join("later")).unwrap();
    let later = tree.join("later/new").display().to_string();
    std::fs::write(&later, "x").unwrap();
    assert_eq!(setup.as_agent(&["open", &later, "read"]), EPERM);
    assert_eq!(setup.as_agent(&["open", &beside, "read"]), "ok");
    assert_eq!(outside(&["open", &deep, "read"]), "ok");
    drop(daemon);

    // Audit mode: nothing denied, every would-be denial recorded.
    let audit_body = format!("  mode: audit\n{body}");
    let daemon = Daemon::start(
        "fantree-audit",
        &[("p.yaml", setup.policy(&[], &audit_body))],
    );
    assert_eq!(setup.as_agent(&["open", &deep, "read"]), "ok");
    let record = daemon.wait_for_record(|r| r["object"]["path"] == deep.as_str());
    assert_eq!(record["verdict"], "would-deny");
    assert_eq!(record["mode"], "audit");
    assert_eq!(record["hook"], "fanotify_open_perm");
}

#[test]
fn probe_says_which_file_fallback_applies() {
    let output = baton(&["probe", "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let fanotify = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fanotify")
        .expect("a fanotify check");
    // An independent look: can this process open a fanotify group with
    // permission events?
    // SAFETY: plain syscalls on a descriptor we own.
    let fd = unsafe { libc::fanotify_init(libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC, 0) };
    let available = fd >= 0;
    if available {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    }
    assert_eq!(fanotify["status"], if available { "yes" } else { "no" });
    let files = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "file and exec rules")
        .unwrap();
    let detail = files["detail"].as_str().unwrap();
    if report["bpf_lsm_loadable"].as_bool().unwrap() {
        assert_eq!(files["level"], "enforced");
    } else if available {
        assert_eq!(files["level"], "degraded");
        assert!(
            detail.contains("fanotify fallback: deny-listed paths only"),
            "{detail}"
        );
        assert!(
            detail
                .contains("create, delete, rename, chmod and executable mappings are NOT enforced"),
            "{detail}"
        );
    } else {
        assert!(detail.contains("NOT enforced (no fanotify"), "{detail}");
    }
}

fn breaker(daemon: &Daemon, args: &[&str]) {
    let mut all = vec!["breaker"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--control-socket", daemon.socket.to_str().unwrap()]);
    let output = baton(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn quarantine_denies_writes_on_watched_paths() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fanquar");
    let (secret, public) = (setup.path("secret.txt"), setup.path("public.txt"));
    let body = format!("  files:\n    deny: [{secret}]\n");
    let daemon = Daemon::start("fanquar", &[("p.yaml", setup.policy(&[], &body))]);
    assert_eq!(setup.as_agent(&["open", &public, "write"]), "ok");
    breaker(&daemon, &["trip", "fan", "--action", "quarantine"]);
    // public.txt sits beside a denied file, so fanotify sees its opens.
    assert_eq!(setup.as_agent(&["open", &public, "write"]), EPERM);
    assert_eq!(setup.as_agent(&["open", &public, "read"]), "ok");
    let record = daemon.wait_for_record(|r| r["object"]["path"] == public.as_str());
    assert_eq!(record["mode"], "quarantine");
    assert_eq!(record["verdict"], "denied");
    breaker(&daemon, &["reset", "fan"]);
    assert_eq!(setup.as_agent(&["open", &public, "write"]), "ok");
}

/// Eight threads of an agent read files under a write-only deny at once:
/// every read is allowed. The listener tells a read from a write by the
/// opener's pending syscall, which reads `running` until the opener has
/// gone to sleep on the event; taking that for "unknown" denied such reads
/// as writes (and with them `/etc/ld.so.cache`, so programs failed to
/// start).
#[test]
fn parallel_reads_of_write_denied_files_are_never_denied() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fanpar");
    let dir = setup.dir.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = ["hostname", "passwd", "hosts", "ld.so.cache"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::write(&path, "content\n").unwrap();
            path.display().to_string()
        })
        .collect();
    let body = format!(
        "  files:\n    deny:\n      - path: {}\n        rights: [write]\n",
        dir.display()
    );
    let daemon = Daemon::start("fanpar", &[("p.yaml", setup.policy(&[], &body))]);
    // The rule is in force: a write is denied, and recorded.
    assert_eq!(setup.as_agent(&["open", &files[0], "write"]), EPERM);
    daemon.wait_for_record(|r| r["object"]["path"] == files[0].as_str());

    let mut args = vec!["read-parallel", "8", "100"];
    args.extend(files.iter().map(String::as_str));
    assert_eq!(setup.as_agent(&args), "ok", "3,200 parallel reads");

    let read_denials: Vec<Value> = daemon
        .records()
        .into_iter()
        .filter(|r| {
            r["control"] == "file"
                && r["object"]["rights"]
                    .as_array()
                    .is_some_and(|rights| rights.iter().any(|right| right == "read"))
        })
        .collect();
    assert!(
        read_denials.is_empty(),
        "reads recorded as denied: {read_denials:#?}"
    );
}

/// A canary touched by an agent that fanotify holds counts like one BPF
/// LSM denies: `canary_hits` and `denied_files` go up and the canary's
/// breaker trips at the first touch, and the quarantine then holds.
#[test]
fn fanotify_denials_count_for_breakers_and_canaries() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fancount");
    let (canary, public) = (setup.path("secret.txt"), setup.path("public.txt"));
    let body = format!(
        "  files:\n    canaries:\n      - {canary}\n  breakers:\n    - name: honeypot\n      when: {{canary: true}}\n      action: quarantine\n      cooldownSeconds: 300\n"
    );
    let daemon = Daemon::start("fancount", &[("p.yaml", setup.policy(&[], &body))]);
    assert_eq!(setup.as_agent(&["open", &public, "write"]), "ok");
    assert_eq!(setup.as_agent(&["open", &canary, "read"]), EPERM);

    // Breaker records are lifecycle records (`info`), which
    // `wait_for_record` leaves out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let trip = loop {
        if let Some(trip) = daemon
            .records()
            .into_iter()
            .find(|r| r["control"] == "breaker")
        {
            break trip;
        }
        assert!(
            Instant::now() < deadline,
            "no trip: {:#?}",
            daemon.records()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let message = trip["object"]["message"].as_str().unwrap();
    assert!(message.contains("closed -> open (quarantine)"), "{message}");
    assert!(message.contains("fanpolicy/honeypot"), "{message}");
    assert!(message.contains("\"canary_hits\":1"), "{message}");
    let status = daemon.status();
    let counters = &status["agents"][0]["counters"];
    assert!(counters["canary_hits"].as_u64() >= Some(1), "{counters}");
    assert!(counters["denied_files"].as_u64() >= Some(1), "{counters}");
    // The quarantine is in force: the write allowed before is refused.
    assert_eq!(setup.as_agent(&["open", &public, "write"]), EPERM);
}

/// The listener learns a thread's process from `/proc/TID/status`, whose
/// `Name:` line carries the thread's name unescaped. A thread that names
/// itself with bytes that are not UTF-8 must not make that read fail and
/// its open pass as a stranger's.
#[test]
fn a_thread_named_with_invalid_utf8_is_still_held() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fan-thread-name");
    let secret = setup.path("secret.txt");
    let body = format!("  files:\n    deny: [{secret}]\n");
    let _daemon = Daemon::start("fan-thread-name", &[("p.yaml", setup.policy(&[], &body))]);
    assert_eq!(
        setup.as_agent(&["open-in-thread", &secret, "61626364"]),
        EPERM,
        "a second thread with a plain name"
    );
    assert_eq!(
        setup.as_agent(&["open-in-thread", &secret, "fffe0a41"]),
        EPERM,
        "a second thread named with bytes that are not UTF-8"
    );
    assert_eq!(outside(&["open-in-thread", &secret, "fffe0a41"]), "ok");
}

/// A denied folder is marked object by object, not through its mount: the
/// rest of the mount never waits for the daemon. What that must not lose:
/// folders made in it later (nested, at once), and its files opened
/// through another name.
#[test]
fn a_denied_folder_is_watched_object_by_object_and_its_files_wherever_they_go() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fanobj");
    let mount = Tmpfs::mount(setup.dir.path().join("mnt"));
    let tree = mount.0.join("keys");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("id_rsa"), "key\n").unwrap();
    std::fs::write(tree.join("sub/token"), "token\n").unwrap();
    std::fs::write(mount.0.join("beside"), "x").unwrap();
    let body = format!("  files:\n    deny: [{}]\n", tree.display());
    let daemon = Daemon::start("fanobj", &[("p.yaml", setup.policy(&[], &body))]);

    let status = daemon.status();
    let enforcement = status["file_enforcement"].as_str().unwrap_or_default();
    assert!(
        enforcement.contains(&format!("tree {} (4 objects)", tree.display())),
        "{enforcement}"
    );
    assert!(
        !enforcement.contains("mount "),
        "no mount is watched for a folder that exists: {enforcement}"
    );
    let in_tree = |name: &str| tree.join(name).display().to_string();
    assert_eq!(setup.as_agent(&["open", &in_tree("id_rsa"), "read"]), EPERM);
    assert_eq!(
        setup.as_agent(&["open", &in_tree("sub/token"), "read"]),
        EPERM
    );
    let beside = mount.0.join("beside").display().to_string();
    assert_eq!(setup.as_agent(&["open", &beside, "read"]), "ok");

    // Folders made at once, nested, after the policy loaded: marked within
    // about a millisecond of inotify's report (what is opened in them
    // before that is not seen; docs/policy.md says so).
    let nested = tree.join("a/b/c");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("late"), "late\n").unwrap();
    let late = in_tree("a/b/c/late");
    let started = Instant::now();
    while setup.as_agent(&["open", &late, "read"]) != EPERM {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a folder made in the tree was never watched"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    // Moved out of the tree (by a process in no agent), hard-linked out of
    // it: still the tree's files, decided as the paths they had.
    let moved = mount.0.join("moved");
    std::fs::rename(tree.join("id_rsa"), &moved).unwrap();
    let moved = moved.display().to_string();
    assert_eq!(setup.as_agent(&["open", &moved, "read"]), EPERM);
    let linked = mount.0.join("linked");
    std::fs::hard_link(tree.join("sub/token"), &linked).unwrap();
    let linked = linked.display().to_string();
    assert_eq!(setup.as_agent(&["open", &linked, "read"]), EPERM);
    assert_eq!(outside(&["open", &moved, "read"]), "ok");
    let record =
        daemon.wait_for_record(|r| r["control"] == "file" && r["object"]["path"] == moved.as_str());
    assert_eq!(record["verdict"], "denied", "{record}");
    assert_eq!(record["hook"], "fanotify_open_perm", "{record}");
}

/// The objects marked one by one are bounded (4,096): a folder that comes
/// and goes gives its share back, and past the bound the whole mount is
/// watched, with a record saying so.
#[test]
fn new_folders_in_a_denied_tree_are_bounded_and_past_the_bound_the_mount_is_watched() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here, so the fanotify fallback is not used");
        return;
    }
    let setup = Setup::new("fanbound");
    let mount = Tmpfs::mount(setup.dir.path().join("mnt"));
    let tree = mount.0.join("keys");
    std::fs::create_dir_all(&tree).unwrap();
    let body = format!("  files:\n    deny: [{}]\n", tree.display());
    let daemon = Daemon::start("fanbound", &[("p.yaml", setup.policy(&[], &body))]);
    let past_the_bound = |r: &Value| {
        r["control"] == "file"
            && r["object"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("past the 4096 objects"))
    };

    // Churn well past the bound: each folder's share comes back.
    for i in 0..5_000 {
        let folder = tree.join(format!("churn{i}"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::remove_dir(&folder).unwrap();
    }
    let folder = tree.join("after");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("f"), "x").unwrap();
    let file = folder.join("f").display().to_string();
    let started = Instant::now();
    while setup.as_agent(&["open", &file, "read"]) != EPERM {
        assert!(started.elapsed() < Duration::from_secs(5), "never watched");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !daemon.records().iter().any(past_the_bound),
        "folders that came and went used up the bound"
    );

    // Past the bound: the mount, and a record.
    for i in 0..4_100 {
        std::fs::create_dir(tree.join(format!("kept{i}"))).unwrap();
    }
    let started = Instant::now();
    let record = loop {
        let records = daemon.records();
        let found: Vec<&Value> = records.iter().filter(|r| past_the_bound(r)).collect();
        if let [record] = found.as_slice() {
            break (*record).clone();
        }
        assert!(found.len() < 2, "one record, not one per folder: {found:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "no record");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        record["object"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("the whole mount {}", mount.0.display())),
        "{record}"
    );
    let beside = mount.0.join("beside");
    std::fs::write(&beside, "x").unwrap();
    // Watched through the mount now: a new file anywhere in the tree is
    // seen at once.
    let deep = tree.join("kept4099/new");
    std::fs::write(&deep, "x").unwrap();
    assert_eq!(
        setup.as_agent(&["open", &deep.display().to_string(), "read"]),
        EPERM
    );
    assert_eq!(
        setup.as_agent(&["open", &beside.display().to_string(), "read"]),
        "ok"
    );
    assert_eq!(
        daemon
            .records()
            .iter()
            .filter(|r| past_the_bound(r))
            .count(),
        1,
        "said once until the next policy load"
    );
}

//! Detection, the last fallback for file and exec rules: where BPF LSM is
//! refused, what fanotify cannot deny for an agent selected by executable
//! (deletes, renames, ...) or everything once fanotify is switched off, is
//! seen in the kernel and recorded as `detected`, with the resolved path,
//! the right and the rule, and with `onDetect: kill` the process dies by
//! `SIGKILL` inside the call. Real syscalls, real signals, real records.
//!
//! Where BPF LSM loads, those calls are denied instead (tests/files.rs in
//! the VMs), so each test first asks `baton probe`.

use std::{
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, TempDir, baton, helper_outcome, policy};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");
const SIGKILL: i32 = 9;

/// A directory with a copy of the helper that the policy selects by
/// executable, and a `denied` directory the policy denies.
struct Setup {
    dir: TempDir,
    agent_helper: PathBuf,
}

impl Setup {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let agent_helper = dir.path().join("agent-helper");
        std::fs::copy(HELPER, &agent_helper).unwrap();
        std::fs::create_dir_all(dir.path().join("denied")).unwrap();
        for name in ["a.txt", "b.txt", "c.txt", "d.txt", "canary"] {
            std::fs::write(dir.path().join("denied").join(name), "content\n").unwrap();
        }
        std::fs::write(dir.path().join("free.txt"), "content\n").unwrap();
        Self { dir, agent_helper }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Agent `det`, selected by the helper copy, denied `denied/`, with
    /// `denied/canary` a canary that trips a quarantine breaker.
    fn policy(&self, files_extra: &str) -> String {
        let body = format!(
            "  files:\n{files_extra}    deny:\n      - {}\n    canaries:\n      - {}\n  breakers:\n    - name: honeypot\n      when: {{canary: true}}\n      action: quarantine\n      cooldownSeconds: 300\n",
            self.path("denied"),
            self.path("denied/canary"),
        );
        policy("detpolicy", "det", &body).replace(
            "    agent: det\n",
            &format!(
                "    agent: det\n    executables: [{}]\n",
                self.agent_helper.display()
            ),
        )
    }

    /// Runs the selected helper copy (so the process is the agent), in the
    /// test's directory so relative names resolve against it.
    fn as_agent(&self, args: &[&str]) -> Output {
        Command::new(&self.agent_helper)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

fn file_records(daemon: &Daemon, path: &str) -> Vec<Value> {
    daemon
        .decisions()
        .into_iter()
        .filter(|r| r["control"] == "file" && r["object"]["path"] == path)
        .collect()
}

fn wait_for_file_record(daemon: &Daemon, path: &str, hook: &str) -> Value {
    daemon.wait_for_record(|r| {
        r["control"] == "file" && r["object"]["path"] == path && r["hook"] == hook
    })
}

fn status(daemon: &Daemon) -> Value {
    let output = baton(&[
        "status",
        "--json",
        "--control-socket",
        daemon.socket.to_str().unwrap(),
    ]);
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn detection_records_deletes_and_renames_that_fanotify_cannot_deny() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: these calls are denied, not detected");
        return;
    }
    let setup = Setup::new("detect");
    let daemon = Daemon::start("detect", &[("p.yaml", setup.policy(""))]);
    let (a, b, c) = (
        setup.path("denied/a.txt"),
        setup.path("denied/b.txt"),
        setup.path("denied/c.txt"),
    );

    // Not preventable here: the unlink succeeds, and is recorded.
    assert_eq!(helper_outcome(&setup.as_agent(&["unlink", &a])), "ok");
    assert!(!std::path::Path::new(&a).exists());
    let record = wait_for_file_record(&daemon, &a, "detect_unlink");
    assert_eq!(record["verdict"], "detected", "{record}");
    assert_eq!(record["agent"], "det");
    assert_eq!(record["object"]["denied_rights"][0], "delete");
    assert_eq!(record["rule"]["id"], "files.deny[0]");
    assert_eq!(record["rule"]["policy"], "detpolicy");
    assert!(record["object"].get("killed").is_none(), "{record}");

    // A relative name with `..` and `.`, from the test directory: the record
    // names the file by its resolved absolute path.
    let moved = setup.path("moved.txt");
    assert_eq!(
        helper_outcome(&setup.as_agent(&["rename", "denied/../denied/./b.txt", "moved.txt"])),
        "ok"
    );
    let record = wait_for_file_record(&daemon, &b, "detect_rename");
    assert_eq!(record["verdict"], "detected", "{record}");
    assert_eq!(record["object"]["denied_rights"][0], "rename");
    assert_eq!(record["rule"]["id"], "files.deny[0]");
    assert!(
        file_records(&daemon, &moved).is_empty(),
        "the allowed end is not recorded"
    );

    // Outside the agent: nothing is recorded.
    let outside = Command::new(HELPER).args(["unlink", &c]).output().unwrap();
    assert_eq!(helper_outcome(&outside), "ok");
    // A failed call by the agent changed nothing and is not recorded either.
    assert_eq!(
        helper_outcome(&setup.as_agent(&["unlink", &setup.path("denied/missing")])),
        "errno=2"
    );
    // Allowed calls are not recorded.
    assert_eq!(
        helper_outcome(&setup.as_agent(&["unlink", &setup.path("free.txt")])),
        "ok"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(file_records(&daemon, &c).is_empty());
    assert!(file_records(&daemon, &setup.path("denied/missing")).is_empty());
    assert!(file_records(&daemon, &setup.path("free.txt")).is_empty());

    // Opens stay with fanotify, which denies them: no second record.
    assert_eq!(
        helper_outcome(&setup.as_agent(&["open", &setup.path("denied/d.txt"), "read"])),
        "errno=1"
    );
    std::thread::sleep(Duration::from_millis(300));
    let d = file_records(&daemon, &setup.path("denied/d.txt"));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["verdict"], "denied");

    // Status and start-up records say detected, never enforced.
    let status = status(&daemon);
    let rights = &status["agents"][0]["rights"];
    for right in ["delete", "rename", "create"] {
        let text = rights[right].as_str().unwrap();
        assert!(
            text.ends_with("executable: detected only, not prevented (onDetect: record)"),
            "{right}: {text}"
        );
    }
    assert!(rights["read"].as_str().unwrap().contains("fanotify"));
    let degraded = daemon
        .records()
        .into_iter()
        .find(|r| {
            r["agent"] == "det"
                && r["object"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("control degraded: file and exec rules"))
        })
        .expect("a control degraded record for the agent");
    assert!(
        degraded["object"]["message"]
            .as_str()
            .unwrap()
            .contains("delete: baton exec: Landlock; cgroup, unit or executable: detected only"),
        "{degraded}"
    );
}

#[test]
fn detection_kills_at_the_call_and_canaries_trip_the_breaker() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: these calls are denied, not detected");
        return;
    }
    let setup = Setup::new("detectkill");
    let daemon = Daemon::start(
        "detectkill",
        &[("p.yaml", setup.policy("    onDetect: kill\n"))],
    );
    let a = setup.path("denied/a.txt");
    let output = setup.as_agent(&["unlink", &a]);
    assert_eq!(
        output.status.signal(),
        Some(SIGKILL),
        "killed inside the call, before it could print: {output:?}"
    );
    assert!(output.stdout.is_empty(), "{output:?}");
    let record = wait_for_file_record(&daemon, &a, "detect_unlink");
    assert_eq!(record["verdict"], "detected");
    assert_eq!(record["object"]["killed"], true, "{record}");

    // The canary, touched through a detected call, trips the breaker.
    let canary = setup.path("denied/canary");
    let output = setup.as_agent(&["chmod", &canary]);
    assert_eq!(output.status.signal(), Some(SIGKILL), "{output:?}");
    let record = wait_for_file_record(&daemon, &canary, "detect_chmod");
    assert_eq!(record["rule"]["id"], "files.canaries[0]", "{record}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = baton(&[
            "breaker",
            "list",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ]);
        if String::from_utf8_lossy(&list.stdout).contains("open (quarantine)") {
            break;
        }
        assert!(Instant::now() < deadline, "the canary breaker did not trip");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_fanotify_off_denied_opens_are_detected_and_killed() {
    if baton_tests::bpf_lsm_loads() {
        eprintln!("BPF LSM loads here: opens are denied, not detected");
        return;
    }
    let setup = Setup::new("detectopen");
    let config = "files:\n  fanotify: false\n";
    let daemon = Daemon::start_with_config("detectopen", &[("p.yaml", setup.policy(""))], config);
    let a = setup.path("denied/a.txt");
    // Not denied (nothing can deny it here), but recorded.
    assert_eq!(helper_outcome(&setup.as_agent(&["open", &a, "read"])), "ok");
    let record = wait_for_file_record(&daemon, &a, "detect_open");
    assert_eq!(record["verdict"], "detected", "{record}");
    assert_eq!(record["object"]["rights"][0], "read");
    assert_eq!(record["rule"]["id"], "files.deny[0]");
    // Allowed opens are not recorded.
    assert_eq!(
        helper_outcome(&setup.as_agent(&["open", &setup.path("free.txt"), "read"])),
        "ok"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(file_records(&daemon, &setup.path("free.txt")).is_empty());
    let rights = &status(&daemon)["agents"][0]["rights"];
    assert!(
        rights["read"]
            .as_str()
            .unwrap()
            .ends_with("executable: detected only, not prevented (onDetect: record)"),
        "{rights}"
    );
    drop(daemon);

    let setup = Setup::new("detectopenkill");
    let daemon = Daemon::start_with_config(
        "detectopenkill",
        &[("p.yaml", setup.policy("    onDetect: kill\n"))],
        config,
    );
    let b = setup.path("denied/b.txt");
    let output = setup.as_agent(&["open", &b, "read"]);
    assert_eq!(output.status.signal(), Some(SIGKILL), "{output:?}");
    let record = wait_for_file_record(&daemon, &b, "detect_open");
    assert_eq!(record["object"]["killed"], true, "{record}");
}

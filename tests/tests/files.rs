//! File enforcement with BPF LSM. The host kernel refuses BPF LSM programs,
//! so these run inside the test VMs (`cargo xtask test` boots each test
//! kernel once and runs every ignored test in it).

use baton_tests::{Daemon, EPERM, TempDir, helper_outcome, policy};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_agent_is_denied_files_under_a_denied_prefix_and_others_are_not() {
    let files = TempDir::new("files-data");
    let secret_dir = files.path().join("secret");
    let sibling_dir = files.path().join("secret_old");
    let public_dir = files.path().join("public");
    for dir in [&secret_dir, &sibling_dir, &public_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let secret = secret_dir.join("key.txt");
    let sibling = sibling_dir.join("key.txt");
    let public = public_dir.join("ok.txt");
    for file in [&secret, &sibling, &public] {
        std::fs::write(file, "data").unwrap();
    }
    let daemon = Daemon::start(
        "files",
        &[(
            "p.yaml",
            policy(
                "no-secrets",
                "demo",
                &format!(
                    "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n",
                    secret_dir.display()
                ),
            ),
        )],
    );
    assert!(
        !daemon.stderr().contains("file rules are NOT enforced"),
        "BPF LSM must load in the VM:\n{}",
        daemon.stderr()
    );
    let open = |path: &std::path::Path, mode: &str| {
        helper_outcome(&daemon.exec("demo", &[HELPER, "open", path.to_str().unwrap(), mode]))
    };
    assert_eq!(open(&secret, "read"), EPERM, "read under the denied prefix");
    assert_eq!(
        open(&secret, "write"),
        EPERM,
        "write under the denied prefix"
    );
    assert_eq!(open(&public, "read"), "ok", "a file elsewhere");
    assert_eq!(
        open(&sibling, "read"),
        "ok",
        "secret_old is not under secret/"
    );

    let outside = |path: &std::path::Path| {
        helper_outcome(
            &std::process::Command::new(HELPER)
                .args(["open", path.to_str().unwrap(), "read"])
                .output()
                .unwrap(),
        )
    };
    assert_eq!(
        outside(&secret),
        "ok",
        "a process in no agent is unaffected"
    );
    assert_eq!(outside(&public), "ok");

    let secret_path = secret.display().to_string();
    let record = daemon.wait_for_record(|r| {
        r["control"] == "file"
            && r["object"]["path"] == secret_path.as_str()
            && r["object"]["rights"][0] == "read"
    });
    assert_eq!(record["schema"], "baton.audit/v1");
    assert_eq!(record["agent"], "demo");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["hook"], "file_open");
    assert_eq!(record["object"]["denied_rights"][0], "read");
    assert_eq!(record["rule"]["policy"], "no-secrets");
    assert_eq!(record["rule"]["id"], "files.deny[0]");
    assert!(record["process"]["pid"].as_u64().unwrap() > 0);
    let file_records = daemon
        .decisions()
        .into_iter()
        .filter(|r| r["control"] == "file" && r["verdict"] == "denied")
        .count();
    assert_eq!(file_records, 2, "one record per denied open (read, write)");
}

/// A directory tree for the tricks below: `secret/` is denied (every right),
/// `public/` is not.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        for sub in ["secret/inner", "public"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("secret/key.txt"), "key").unwrap();
        std::fs::write(dir.path().join("public/ok.txt"), "ok").unwrap();
        Self { dir }
    }

    fn path(&self, relative: &str) -> String {
        self.dir.path().join(relative).display().to_string()
    }

    fn policy(&self) -> String {
        policy(
            "tree",
            "tree",
            &format!(
                "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n",
                self.path("secret")
            ),
        )
    }
}

fn agent_outcome(daemon: &Daemon, agent: &str, args: &[&str]) -> String {
    let mut command = vec![HELPER];
    command.extend_from_slice(args);
    helper_outcome(&daemon.exec(agent, &command))
}

fn outside_outcome(args: &[&str]) -> String {
    helper_outcome(
        &std::process::Command::new(HELPER)
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_path_tricks_do_not_reach_a_denied_file() {
    let tree = Tree::new("tricks");
    let daemon = Daemon::start("tricks", &[("p.yaml", tree.policy())]);
    let key = tree.path("secret/key.txt");

    // A symlink to the denied file, made before the policy mattered.
    let link = tree.path("public/link-to-key");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    assert_eq!(
        agent_outcome(&daemon, "tree", &["open", &link, "read"]),
        EPERM,
        "symlink"
    );

    // `..` and a relative path, resolved from a working directory.
    let relative = "../secret/key.txt";
    let output = daemon.exec(
        "tree",
        &[
            "sh",
            "-c",
            &format!(
                "cd {} && {HELPER} open {relative} read",
                tree.path("public")
            ),
        ],
    );
    assert_eq!(helper_outcome(&output), EPERM, "relative path with ..");

    // openat(2) with a directory descriptor.
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["openat", &tree.path("secret"), "key.txt"]
        ),
        EPERM,
        "openat"
    );
    // Re-opening /proc/self/fd/N of an O_PATH descriptor.
    assert_eq!(
        agent_outcome(&daemon, "tree", &["reopen", &key]),
        EPERM,
        "O_PATH reopen"
    );

    // Renaming the denied directory to an allowed name.
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["rename", &tree.path("secret"), &tree.path("public/moved")]
        ),
        EPERM,
        "rename of a denied directory"
    );
    // Moving an allowed file into the denied directory.
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &[
                "rename",
                &tree.path("public/ok.txt"),
                &tree.path("secret/ok.txt")
            ]
        ),
        EPERM,
        "rename into a denied directory"
    );
    // A hard link to the denied file from an allowed place.
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["link", &key, &tree.path("public/hard-link")]
        ),
        EPERM,
        "hard link to a denied file"
    );

    // Every right under the denied prefix.
    for (op, target) in [
        ("create", "secret/new.txt"),
        ("mkdir", "secret/newdir"),
        ("unlink", "secret/key.txt"),
        ("rmdir", "secret/inner"),
        ("truncate", "secret/key.txt"),
        ("chmod", "secret/key.txt"),
    ] {
        assert_eq!(
            agent_outcome(&daemon, "tree", &[op, &tree.path(target)]),
            EPERM,
            "{op}"
        );
    }
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["symlink", "/etc/hostname", &tree.path("secret/sym")]
        ),
        EPERM,
        "symlink creation"
    );

    // The same calls elsewhere are allowed to the agent...
    assert_eq!(
        agent_outcome(&daemon, "tree", &["create", &tree.path("public/new.txt")]),
        "ok"
    );
    assert_eq!(
        agent_outcome(&daemon, "tree", &["mkdir", &tree.path("public/newdir")]),
        "ok"
    );
    assert_eq!(
        agent_outcome(&daemon, "tree", &["chmod", &tree.path("public/new.txt")]),
        "ok"
    );
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &[
                "rename",
                &tree.path("public/new.txt"),
                &tree.path("public/renamed.txt")
            ]
        ),
        "ok"
    );
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["unlink", &tree.path("public/renamed.txt")]
        ),
        "ok"
    );
    // ...and everything is allowed to a process outside the agent.
    assert_eq!(outside_outcome(&["open", &link, "read"]), "ok");
    assert_eq!(
        outside_outcome(&["create", &tree.path("secret/outside.txt")]),
        "ok"
    );

    let record = daemon.wait_for_record(|r| r["hook"] == "path_rename");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["object"]["path"], tree.path("secret"));
    assert_eq!(record["object"]["denied_rights"][0], "rename");
    let record = daemon.wait_for_record(|r| r["hook"] == "path_mknod");
    assert_eq!(record["object"]["path"], tree.path("secret/new.txt"));
    assert_eq!(record["rule"]["id"], "files.deny[0]");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_rights_and_wildcards() {
    let dir = TempDir::new("rights");
    for user in ["alice", "bob"] {
        std::fs::create_dir_all(dir.path().join(format!("home/{user}/.ssh"))).unwrap();
        std::fs::write(dir.path().join(format!("home/{user}/.ssh/id_rsa")), "k").unwrap();
        std::fs::write(dir.path().join(format!("home/{user}/notes.txt")), "n").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/readme"), "r").unwrap();
    let base = dir.path().display().to_string();
    let daemon = Daemon::start(
        "rights",
        &[(
            "p.yaml",
            policy(
                "rights",
                "rights",
                &format!(
                    "  egress:\n    default: allow\n  files:\n    deny:\n      - {base}/home/*/.ssh\n      - path: {base}/docs\n        rights: [write, delete]\n"
                ),
            ),
        )],
    );
    for user in ["alice", "bob"] {
        let key = format!("{base}/home/{user}/.ssh/id_rsa");
        assert_eq!(
            agent_outcome(&daemon, "rights", &["open", &key, "read"]),
            EPERM,
            "{user}"
        );
        let notes = format!("{base}/home/{user}/notes.txt");
        assert_eq!(
            agent_outcome(&daemon, "rights", &["open", &notes, "read"]),
            "ok"
        );
    }
    let readme = format!("{base}/docs/readme");
    assert_eq!(
        agent_outcome(&daemon, "rights", &["open", &readme, "read"]),
        "ok",
        "read is not denied"
    );
    assert_eq!(
        agent_outcome(&daemon, "rights", &["open", &readme, "write"]),
        EPERM,
        "write is"
    );
    assert_eq!(
        agent_outcome(&daemon, "rights", &["unlink", &readme]),
        EPERM,
        "delete is"
    );
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_exec_allowlist_holds_against_copies_loaders_fds_and_memfd() {
    let dir = TempDir::new("exec");
    let copy = dir.path().join("echo-copy");
    std::fs::copy("/usr/bin/echo", &copy).unwrap();
    let copy = copy.display().to_string();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho script-ran\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let helper_dir = std::path::Path::new(HELPER)
        .parent()
        .unwrap()
        .display()
        .to_string();
    // An allowlist: the system's programs and libraries, and the test helper.
    let daemon = Daemon::start(
        "exec",
        &[(
            "p.yaml",
            policy(
                "exec",
                "exec",
                &format!(
                    "  egress:\n    default: allow\n  exec:\n    default: deny\n    allow:\n      - /usr\n      - /bin\n      - /lib\n      - /lib64\n      - {helper_dir}\n"
                ),
            ),
        )],
    );
    let run = |args: &[&str]| {
        let output = daemon.exec("exec", args);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(
        run(&[HELPER, "exec", "/usr/bin/echo", "ok"]),
        "ok",
        "an allowed program"
    );
    assert_eq!(
        run(&[HELPER, "exec", &copy, "ok"]),
        EPERM,
        "a copy outside the allowlist"
    );
    assert_eq!(
        run(&[HELPER, "exec-fd", &copy, "ok"]),
        EPERM,
        "exec through /proc/self/fd"
    );
    assert_eq!(run(&[HELPER, "fexecve", &copy, "ok"]), EPERM, "fexecve");
    assert_eq!(
        run(&[HELPER, "memfd-exec", "/usr/bin/echo", "ok"]),
        EPERM,
        "memfd, even of an allowed program"
    );
    // The dynamic loader is allowed, but mapping the copy executable is an
    // exec of the copy.
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let output = daemon.exec("exec", &[loader, &copy, "ran"]);
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("ran"),
        "ld.so must not run the copy: {output:?}"
    );
    // A script: exec'ing it directly is an exec of the script (denied); run
    // by an allowed interpreter, its open is a read and it runs.
    assert_eq!(
        run(&[HELPER, "exec", &script]),
        EPERM,
        "the script itself is not allowed"
    );
    assert_eq!(
        run(&["/bin/sh", &script]),
        "script-ran",
        "an allowed interpreter reads it"
    );

    // Outside the agent all of it runs.
    let outside = std::process::Command::new(HELPER)
        .args(["exec", &copy, "ok"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "ok");

    let record = daemon.wait_for_record(|r| {
        r["hook"] == "bprm_check_security" && r["object"]["path"] == copy.as_str()
    });
    assert_eq!(record["object"]["denied_rights"][0], "exec");
    assert_eq!(record["rule"]["id"], "exec.default");
    daemon.wait_for_record(|r| r["hook"] == "mmap_file" && r["object"]["path"] == copy.as_str());
    let memfd = daemon.wait_for_record(|r| r["object"]["anonymous"] == true);
    assert_eq!(memfd["verdict"], "denied");
}

/// Where BPF LSM cannot load (the development hosts), `baton exec` agents
/// get the file rules as a Landlock ruleset: a real denial (`EACCES`, the
/// errno Landlock uses). Where BPF LSM loads (the VMs), the same test sees
/// the LSM's `EPERM`.
#[test]
fn baton_exec_agents_are_held_to_file_rules_with_or_without_bpf_lsm() {
    let lsm = baton_tests::bpf_lsm_loads();
    let tree = Tree::new("fallback");
    let daemon = Daemon::start("fallback", &[("p.yaml", tree.policy())]);
    let key = tree.path("secret/key.txt");
    let expected = if lsm { EPERM } else { "errno=13" };
    let output = daemon.exec("tree", &[HELPER, "open", &key, "read"]);
    assert_eq!(helper_outcome(&output), expected, "the denied file");
    if !lsm {
        // One line for the agent (its stderr is what a model reads); the
        // list in `baton status`. The denial's own explanation
        // (`spec.explain`, from Landlock's report) may come too, if it
        // arrives before the process exits; it is not `baton exec`'s.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("baton:") && !line.contains("denied by policy"))
            .collect();
        assert_eq!(ours.len(), 1, "one line from baton exec: {stderr}");
        assert!(
            ours[0].contains("agent tree") && ours[0].contains("baton status"),
            "{stderr}"
        );
        let status = daemon.status();
        let gaps = status["agents"][0]["landlock_gaps"].to_string();
        assert!(gaps.contains("chmod"), "status lists the gaps: {gaps}");
    }
    assert_eq!(
        agent_outcome(
            &daemon,
            "tree",
            &["open", &tree.path("public/ok.txt"), "read"]
        ),
        "ok"
    );
    assert_eq!(
        agent_outcome(&daemon, "tree", &["create", &tree.path("public/made.txt")]),
        "ok"
    );
    assert_eq!(
        agent_outcome(&daemon, "tree", &["create", &tree.path("secret/made.txt")]),
        expected,
        "creating under the denied directory"
    );
    // Children inherit the restriction.
    let output = daemon.exec("tree", &["sh", "-c", &format!("{HELPER} open {key} read")]);
    assert_eq!(helper_outcome(&output), expected);
    assert_eq!(
        outside_outcome(&["open", &key, "read"]),
        "ok",
        "outside the agent"
    );
}

/// Whatever holds a `baton exec` agent to its file rules (BPF LSM in the
/// VMs; Landlock on hosts without it, whose denials Landlock reports to the
/// audit subsystem on Linux 6.15+), a denied read is a record naming the
/// process, the path, the right and the rule, it counts in `denied_files`,
/// and a canary's touch trips its breaker.
#[test]
fn a_baton_exec_agents_file_denials_are_recorded_and_counted() {
    let lsm = baton_tests::bpf_lsm_loads();
    let tree = Tree::new("llog");
    let canary = tree.path("public/canary.txt");
    std::fs::write(&canary, "bait").unwrap();
    let body = format!(
        "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n    canaries:\n      - {canary}\n  breakers:\n    - name: bait\n      when: {{canary: true}}\n      action: quarantine\n      cooldownSeconds: 300\n",
        tree.path("secret")
    );
    let daemon = Daemon::start("llog", &[("p.yaml", policy("tree", "tree", &body))]);
    let status = daemon.status();
    if !lsm {
        let how = status["landlock_denials"].as_str().unwrap();
        if baton_tests::landlock_abi() < 7 {
            assert!(how.starts_with("NOT recorded"), "{how}");
            eprintln!("Landlock before ABI 7 cannot report denials: {how}");
            return;
        }
        assert_eq!(how, "recorded", "{status}");
        let text = baton_tests::baton(&[
            "status",
            "--control-socket",
            daemon.socket.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("Landlock denials of baton exec agents: recorded"),
            "{text}"
        );
    }
    let key = tree.path("secret/key.txt");
    let expected = if lsm { EPERM } else { "errno=13" };
    let output = daemon.exec("tree", &[HELPER, "open", &key, "read"]);
    assert_eq!(helper_outcome(&output), expected, "the denied file");

    let record =
        daemon.wait_for_record(|r| r["control"] == "file" && r["object"]["path"] == key.as_str());
    assert_eq!(record["agent"], "tree");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["hook"], if lsm { "file_open" } else { "landlock" });
    assert_eq!(record["object"]["denied_rights"][0], "read", "{record}");
    assert_eq!(record["rule"]["id"], "files.deny[0]", "{record}");
    assert!(record["process"]["pid"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["process"]["comm"], "baton-test-help", "{record}");
    assert_eq!(outside_outcome(&["open", &key, "read"]), "ok");

    // What Landlock takes beyond the policy (a new file directly in the
    // directory above a denied one) is recorded as such, with no rule, and
    // counts for no breaker. Listing that directory is ordinary work, and
    // allowed.
    if !lsm {
        let denied_files =
            |daemon: &Daemon| daemon.status()["agents"][0]["counters"]["denied_files"].clone();
        let before = denied_files(&daemon);
        let root = tree.path("");
        let root = root.trim_end_matches('/');
        let output = daemon.exec("tree", &["ls", root]);
        assert!(
            output.status.success(),
            "the directory above a denied one lists: {output:?}"
        );
        let fresh = format!("{root}/fresh.txt");
        let output = daemon.exec("tree", &["touch", &fresh]);
        assert!(!output.status.success(), "Landlock refuses the new file");
        // Landlock names the directory the file was refused in.
        let record = daemon.wait_for_record(|r| {
            r["object"]["path"] == root && r["object"]["denied_rights"][0] == "create"
        });
        assert_eq!(record["object"]["beyond_policy"], true, "{record}");
        assert!(record["rule"].is_null(), "{record}");
        assert_eq!(denied_files(&daemon), before, "not counted");

        // A process in a chroot of its own: Landlock holds by object, and
        // its report names the path as that process sees it. The path
        // cannot pass for an allowed one: the denial counts.
        let script = format!(
            "import os\nos.chroot({root:?})\nos.chdir('/')\ntry:\n    open('/secret/key.txt')\nexcept OSError as e:\n    print('errno=%d' % e.errno)"
        );
        let output = daemon.exec("tree", &["python3", "-c", &script]);
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "errno=13");
        let record = daemon.wait_for_record(|r| r["object"]["path"] == "/secret/key.txt");
        assert!(record["object"]["beyond_policy"].is_null(), "{record}");
        let counted = denied_files(&daemon).as_u64().unwrap();
        assert!(counted > before.as_u64().unwrap(), "{record}");
    }

    // The agent can ask why (`baton why`, no root needed).
    let baton = baton_tests::baton_bin();
    let socket = daemon.socket.to_str().unwrap().to_string();
    let why = daemon.exec(
        "tree",
        &[baton.to_str().unwrap(), "why", "--control-socket", &socket],
    );
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(why.contains(key.as_str()), "{why}");
    assert!(why.contains("files.deny[0]"), "{why}");

    // From a child of a child: the record carries the ancestor chain up to
    // the agent's root.
    let script = tree.path("public/read-key.sh");
    // The reader stays a while after the denial, as agents' processes do,
    // so that the chain can still be read when the record is written.
    std::fs::write(
        &script,
        format!(
            "python3 -c 'import time\ntry:\n    open(\"{key}\")\nexcept OSError:\n    pass\ntime.sleep(3)'\ntrue\n"
        ),
    )
    .unwrap();
    let mut family = daemon
        .exec_command("tree", &["sh", "-c", &format!("sh {script}; true")])
        .spawn()
        .unwrap();
    let record = daemon.wait_for_record(|r| {
        r["control"] == "file"
            && r["object"]["path"] == key.as_str()
            && r["process"]["comm"] == "python3"
    });
    family.wait().unwrap();
    let process = &record["process"];
    let ancestors = process["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "{process}");
    assert_eq!(ancestors[0]["cmdline"][1], script.as_str(), "{process}");
    assert_eq!(ancestors[1]["pid"], process["agent_root_pid"], "{process}");
    assert_eq!(ancestors[1]["cmdline"][0], "sh", "{process}");

    // The canary: denied, recorded as a canary, and its breaker trips.
    let output = daemon.exec("tree", &[HELPER, "open", &canary, "read"]);
    assert_eq!(helper_outcome(&output), expected, "the canary");
    let touched = daemon
        .wait_for_record(|r| r["control"] == "file" && r["object"]["path"] == canary.as_str());
    assert_eq!(touched["rule"]["id"], "files.canaries[0]", "{touched}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon.records().iter().any(|r| r["control"] == "breaker") {
        assert!(
            std::time::Instant::now() < deadline,
            "the canary's breaker did not trip: {:#?}",
            daemon.records()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = daemon.status();
    let counters = &status["agents"][0]["counters"];
    assert!(counters["denied_files"].as_u64() >= Some(2), "{counters}");
    assert!(counters["canary_hits"].as_u64() >= Some(1), "{counters}");
}

/// What a `kill -9` of the daemon leaves of each file mechanism, as the
/// README's table says: BPF LSM (pinned) and Landlock (the kernel's) keep
/// denying; the fanotify listener dies with the daemon, so opens it would
/// have denied are allowed until the next start, which takes them back.
/// Landlock's denials made while no daemon ran are not recorded (the
/// kernel keeps no backlog for the audit reader); the next are.
#[test]
fn a_killed_daemon_leaves_each_file_mechanism_as_documented() {
    let lsm = baton_tests::bpf_lsm_loads();
    let tree = Tree::new("kill9files");
    let key = tree.path("secret/key.txt");
    let selected = tree.path("public/selected-helper");
    std::fs::copy(HELPER, &selected).unwrap();
    let deny = format!(
        "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n",
        tree.path("secret")
    );
    let by_executable = policy("sel", "sel", &deny).replace(
        "    agent: sel\n",
        &format!("    agent: sel\n    executables: [{selected}]\n"),
    );
    let mut daemon = Daemon::start_persistent(
        "kill9files",
        &[
            ("exec.yaml", policy("tree", "tree", &deny)),
            ("sel.yaml", by_executable),
        ],
    );
    let denied_here = if lsm { EPERM } else { "errno=13" };
    let selected_open = || {
        helper_outcome(
            &std::process::Command::new(&selected)
                .args(["open", &key, "read"])
                .output()
                .unwrap(),
        )
    };
    assert_eq!(
        selected_open(),
        EPERM,
        "fanotify or BPF LSM, daemon running"
    );

    // A baton exec agent admitted while the daemon ran, which opens the
    // key only once the daemon is dead.
    let (ready, go) = (tree.path("public/ready"), tree.path("public/go"));
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done; exec {HELPER} open {key} read"
    );
    let agent = daemon
        .exec_command("tree", &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::path::Path::new(&ready).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let recorded = |daemon: &Daemon| {
        daemon
            .decisions()
            .iter()
            .filter(|r| r["object"]["path"] == key.as_str() && r["agent"] == "tree")
            .count()
    };
    let before = recorded(&daemon);

    daemon.kill();
    std::fs::write(&go, "").unwrap();
    let output = agent.wait_with_output().unwrap();
    assert_eq!(
        helper_outcome(&output),
        denied_here,
        "BPF LSM or Landlock holds the baton exec agent with no daemon"
    );
    if lsm {
        assert_eq!(selected_open(), EPERM, "BPF LSM holds with no daemon");
    } else {
        assert_eq!(
            selected_open(),
            "ok",
            "the fanotify fallback dies with the daemon, as documented"
        );
    }

    daemon.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while selected_open() != EPERM {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted daemon does not deny again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = daemon.exec("tree", &[HELPER, "open", &key, "read"]);
    assert_eq!(helper_outcome(&output), denied_here);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while recorded(&daemon) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the denial after the restart is not recorded: {:#?}",
            daemon.decisions()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Without BPF LSM, Landlock enforces a `baton exec` agent's exec
/// allowlist but cannot see a memfd (an internal mount it leaves alone):
/// the agent's seccomp filter refuses executable memfds and `fexecve`.
/// On a kernel with BPF LSM the kernel programs decide instead (the VM
/// test above) and no such filter is installed.
#[test]
fn an_exec_allowlist_without_bpf_lsm_refuses_memfd_and_fexecve() {
    let helper_dir = std::path::Path::new(HELPER)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let exec = format!(
        "  exec:\n    default: deny\n    allow:\n      - /usr\n      - /bin\n      - /lib\n      - /lib64\n      - {helper_dir}\n"
    );
    let daemon = Daemon::start(
        "exec-memfd",
        &[
            ("p.yaml", policy("memfd", "memfd", &exec)),
            (
                "a.yaml",
                policy("anon", "anon", &format!("{exec}    allowAnonymous: true\n")),
            ),
        ],
    );
    if daemon.status()["file_enforcement"] == "BPF LSM" {
        // The VM suite covers this kernel's own programs.
        return;
    }
    let run = |args: &[&str]| agent_outcome(&daemon, "memfd", args);
    assert_eq!(run(&["exec", "/usr/bin/echo", "ok"]), "ok", "allowed");
    assert_eq!(
        run(&["memfd-exec", "/usr/bin/echo", "ok"]),
        EPERM,
        "an executable memfd, even of an allowed program"
    );
    assert_eq!(
        run(&["fexecve", "/usr/bin/echo", "ok"]),
        EPERM,
        "fexecve, even of an allowed program"
    );
    // A memfd sealed against execution is still there for what memfds are
    // for (shared memory, anonymous files).
    let sealed = daemon.exec(
        "memfd",
        &[
            "python3",
            "-c",
            "import os; fd = os.memfd_create('data', 0x8); os.write(fd, b'x'); print('ok')",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&sealed.stdout).trim(),
        "ok",
        "a sealed memfd: {}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    // A policy that lets files with no name on disk run gets no such rule.
    assert_eq!(
        agent_outcome(&daemon, "anon", &["memfd-exec", "/usr/bin/echo", "ok"]),
        "ok",
        "exec.allowAnonymous"
    );
    // Outside the agent nothing changes.
    assert_eq!(
        outside_outcome(&["memfd-exec", "/usr/bin/echo", "ok"]),
        "ok"
    );
    assert_eq!(outside_outcome(&["fexecve", "/usr/bin/echo", "ok"]), "ok");
    // Recorded where the daemon reads the kernel's audit log.
    if daemon.status()["landlock_denials"] == "recorded" {
        for call in ["memfd_create()", "execveat()"] {
            let record =
                daemon.wait_for_record(|r| r["object"]["path"] == call && r["hook"] == "seccomp");
            assert_eq!(record["agent"], "memfd", "{record}");
            assert_eq!(record["verdict"], "denied", "{record}");
        }
    }
}

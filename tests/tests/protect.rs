//! Self-protection: an agent, even one running as root, cannot switch Baton
//! off. With BPF LSM (the test VMs) the kernel programs deny it `bpf()`,
//! module loads, ptrace, signals and `prlimit` towards the daemon, and the
//! file rules every agent gets deny changes under bpffs, to cgroup files
//! and to Baton's own files. Without BPF LSM (the development hosts),
//! `baton exec` agents get a seccomp filter and Landlock signal scoping.
//!
//! Agents in the VM tests are selected by cgroup, not started by `baton
//! exec`, so only the BPF LSM programs stand in their way.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use baton_tests::{Daemon, EPERM, TempDir, TestCgroup, helper_outcome, policy, run_outcome};

const PROTECT: &str = env!("CARGO_BIN_EXE_baton-protect-helper");
const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// The self-protection LSM hooks.
const PROTECT_HOOKS: [&str; 8] = [
    "bpf",
    "ptrace_access_check",
    "task_kill",
    "file_send_sigiotask",
    "task_setrlimit",
    "kernel_read_file",
    "kernel_load_data",
    "perf_event_open",
];

/// A policy for `agent` that allows all egress and files: whatever is
/// denied below is denied by self-protection, not by the policy.
fn permissive(agent: &str, selector_extra: &str) -> String {
    policy(agent, agent, "  egress:\n    default: allow\n").replace(
        &format!("    agent: {agent}\n"),
        &format!("    agent: {agent}\n{selector_extra}"),
    )
}

/// A cgroup whose processes are the agent `guard`, and a daemon enforcing it.
fn cgroup_agent(label: &str) -> (TestCgroup, Daemon) {
    let cgroup = TestCgroup::new(&format!(
        "/baton-test-protect-{label}-{}",
        std::process::id()
    ));
    let selector = format!("    cgroups: [{}]\n", cgroup.relative);
    let daemon = Daemon::start(label, &[("p.yaml", permissive("guard", &selector))]);
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("file rules are NOT enforced"),
        "BPF LSM must load in the VM:\n{stderr}"
    );
    for hook in PROTECT_HOOKS {
        assert!(
            !stderr.contains(&format!("LSM hook {hook} is not attached")),
            "every self-protection hook loads:\n{stderr}"
        );
    }
    (cgroup, daemon)
}

/// Runs `args` as a member of `cgroup` (so, as the agent) and returns what
/// the helper printed.
fn in_agent(cgroup: &TestCgroup, args: &[&str]) -> String {
    run_outcome(&cgroup.enter_and_exec(&args.join(" ")))
}

/// Runs `args` outside every agent.
fn outside(args: &[&str]) -> String {
    helper_outcome(&Command::new(args[0]).args(&args[1..]).output().unwrap())
}

/// Whether process `pid` exists and has not exited.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// `bpftool -j ARGS`, parsed.
fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    assert!(output.status.success(), "bpftool {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_an_agent_cannot_use_bpf_even_as_root() {
    let (cgroup, daemon) = cgroup_agent("bpf");
    assert_eq!(
        in_agent(&cgroup, &[PROTECT, "bpf-map-create"]),
        EPERM,
        "bpf() from an agent"
    );
    assert_eq!(outside(&[PROTECT, "bpf-map-create"]), "ok", "outside");

    // The link this daemon pinned for its connect4 program (another
    // test's daemon may be running too: the newest connect4 may be its).
    let link = pinned_links(&daemon.pin_dir)
        .into_iter()
        .find(|(name, _, _)| name == "connect4")
        .map(|(_, link, _)| link.to_string())
        .expect("the link of the daemon's connect4");
    // The tool an attacker would reach for gets nothing either.
    let detach = Command::new("sh")
        .args(&cgroup.enter_and_exec(&format!("bpftool link detach id {link}"))[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!detach.success(), "bpftool link detach inside the agent");
    bpftool_json(&["link", "show", "id", &link]);

    let record = daemon.wait_for_record(|r| r["hook"] == "bpf");
    assert_eq!(record["agent"], "guard");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["object"]["path"], "bpf() command 0", "{record}");
    assert_eq!(record["process"]["uid"], 0, "root is held too");
}

/// Where every self-protection hook loads, `baton exec` applies no seccomp
/// filter: the kernel programs deny the same calls, and record them (a
/// seccomp denial would leave no record).
#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_baton_exec_agents_are_held_by_bpf_lsm_without_seccomp() {
    let daemon = Daemon::start("protect-exec-lsm", &[("p.yaml", permissive("guard", ""))]);
    let stderr = daemon.stderr();
    for hook in PROTECT_HOOKS {
        assert!(
            !stderr.contains(&format!("LSM hook {hook} is not attached")),
            "every self-protection hook loads:\n{stderr}"
        );
    }
    let agent = |args: &[&str]| helper_outcome(&daemon.exec("guard", args));

    let status = daemon.exec("guard", &["cat", "/proc/self/status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    let seccomp = status
        .lines()
        .find(|line| line.starts_with("Seccomp:"))
        .expect("a Seccomp line in /proc/self/status");
    assert_eq!(seccomp.split_whitespace().nth(1), Some("0"), "{seccomp}");

    assert_eq!(agent(&[PROTECT, "bpf-map-create"]), EPERM, "bpf()");
    let record = daemon.wait_for_record(|r| r["hook"] == "bpf");
    assert_eq!(record["agent"], "guard");
    assert_eq!(record["verdict"], "denied");

    assert_eq!(
        agent(&[PROTECT, "perf-event-open"]),
        EPERM,
        "perf_event_open"
    );
    assert_ne!(outside(&[PROTECT, "perf-event-open"]), EPERM, "outside");
    let record = daemon.wait_for_record(|r| r["hook"] == "perf_event_open");
    assert_eq!(record["agent"], "guard");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["object"]["path"], "perf_event_open()", "{record}");

    let pid = daemon.pid().to_string();
    assert_eq!(agent(&[PROTECT, "ptrace", &pid]), EPERM, "ptrace");
    assert_eq!(agent(&[PROTECT, "kill", &pid, "15"]), EPERM, "SIGTERM");
    assert!(alive(daemon.pid()), "the daemon survived");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_an_agent_cannot_trace_signal_or_limit_the_daemon() {
    let (cgroup, daemon) = cgroup_agent("daemon");
    let pid = daemon.pid().to_string();
    for signal in ["15", "9"] {
        assert_eq!(
            in_agent(&cgroup, &[PROTECT, "kill", &pid, signal]),
            EPERM,
            "signal {signal} to the daemon"
        );
    }
    assert_eq!(
        in_agent(&cgroup, &[PROTECT, "kill", &pid, "0"]),
        "ok",
        "signal 0 delivers nothing"
    );
    assert_eq!(in_agent(&cgroup, &[PROTECT, "ptrace", &pid]), EPERM);
    assert_eq!(in_agent(&cgroup, &[PROTECT, "vm-read", &pid]), EPERM);
    assert_eq!(in_agent(&cgroup, &[PROTECT, "prlimit", &pid]), EPERM);
    assert!(alive(daemon.pid()), "the daemon survived");

    // Any process outside the agent is out of ptrace's reach; the agent's
    // own processes are not.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let bystander_pid = bystander.id().to_string();
    assert_eq!(
        in_agent(&cgroup, &[PROTECT, "ptrace", &bystander_pid]),
        EPERM
    );
    assert_eq!(
        in_agent(&cgroup, &[PROTECT, "kill", &bystander_pid, "0"]),
        "ok"
    );
    assert_eq!(in_agent(&cgroup, &[PROTECT, "ptrace-child"]), "ok");

    // A signal the kernel sends on the agent's behalf (F_SETOWN): it kills
    // a bystander, so the way works, but not the daemon.
    assert_eq!(
        in_agent(&cgroup, &[PROTECT, "sigio", &bystander_pid, "9"]),
        "ok"
    );
    let status = bystander.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "F_SETOWN signals reach other processes"
    );
    assert_eq!(in_agent(&cgroup, &[PROTECT, "sigio", &pid, "9"]), "ok");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(alive(daemon.pid()), "no F_SETOWN signal reaches the daemon");

    // Outside the agent nothing changes.
    assert_eq!(outside(&[PROTECT, "prlimit", &pid]), "ok");
    assert_eq!(outside(&[PROTECT, "kill", &pid, "0"]), "ok");

    let killed = format!("signal 15 to pid {pid} (the Baton daemon)");
    let record = daemon.wait_for_record(|r| r["object"]["path"] == killed.as_str());
    assert_eq!(record["hook"], "task_kill");
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["agent"], "guard");
    let traced = format!("ptrace attach to pid {pid} (the Baton daemon)");
    let record = daemon.wait_for_record(|r| r["object"]["path"] == traced.as_str());
    assert_eq!(record["hook"], "ptrace_access_check");
    daemon.wait_for_record(|r| r["hook"] == "task_setrlimit");
    assert!(alive(daemon.pid()), "the daemon is still running");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_an_agent_cannot_load_kernel_modules() {
    let (cgroup, daemon) = cgroup_agent("module");
    let dir = TempDir::new("protect-module");
    // Not a module: the kernel refuses an empty file before the LSM is
    // asked, and this one after it has read it.
    let bogus = dir.path().join("bogus.ko");
    std::fs::write(&bogus, [0x5au8; 256]).unwrap();
    let bogus = bogus.to_str().unwrap();
    assert_eq!(in_agent(&cgroup, &[PROTECT, "finit-module", bogus]), EPERM);
    assert_ne!(
        outside(&[PROTECT, "finit-module", bogus]),
        EPERM,
        "outside, the kernel reads the file (and finds no module in it)"
    );
    let record = daemon.wait_for_record(|r| r["hook"] == "kernel_read_file");
    assert_eq!(record["object"]["path"], "kernel module load");
    // The same from memory.
    assert_eq!(in_agent(&cgroup, &[PROTECT, "init-module"]), EPERM);
    assert_ne!(outside(&[PROTECT, "init-module"]), EPERM);
    daemon.wait_for_record(|r| r["hook"] == "kernel_load_data");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_an_agent_cannot_touch_bpffs_cgroups_or_baton_files() {
    let (cgroup, daemon) = cgroup_agent("files");
    let pinned = format!("/sys/fs/bpf/baton-test-protect-{}", std::process::id());
    let _ = std::fs::remove_file(&pinned);
    let created = Command::new("bpftool")
        .args(["map", "create", &pinned, "type", "array", "key", "4"])
        .args(["value", "4", "entries", "1", "name", "bprotect"])
        .status()
        .unwrap();
    assert!(created.success(), "pin a map to delete");

    assert_eq!(in_agent(&cgroup, &[HELPER, "unlink", &pinned]), EPERM);
    assert!(Path::new(&pinned).exists(), "the pinned map is still there");
    let new_pin = format!("{pinned}-dir");
    assert_eq!(in_agent(&cgroup, &[HELPER, "mkdir", &new_pin]), EPERM);
    // The daemon's own pins: unlinking a link would detach its program,
    // unlinking a map would lose it for the next daemon.
    for pin in ["links/connect4", "links/file_open", "maps/AGENT_POLICIES"] {
        let path = daemon.pin_dir.join(pin);
        let path = path.to_str().unwrap();
        assert!(Path::new(path).exists(), "{path} is pinned");
        assert_eq!(
            in_agent(&cgroup, &[HELPER, "unlink", path]),
            EPERM,
            "{path}"
        );
        assert!(Path::new(path).exists(), "{path} is still pinned");
    }
    let links = daemon.pin_dir.join("links").display().to_string();
    let moved = format!("{}-moved", daemon.pin_dir.display());
    assert_eq!(
        in_agent(&cgroup, &[HELPER, "rename", &links, &moved]),
        EPERM
    );

    let procs = cgroup.dir.join("cgroup.procs").display().to_string();
    assert_eq!(in_agent(&cgroup, &[PROTECT, "write", &procs]), EPERM);
    let freeze = cgroup.dir.join("cgroup.freeze").display().to_string();
    assert_eq!(in_agent(&cgroup, &[PROTECT, "write", &freeze]), EPERM);
    let child = cgroup.dir.join("escape").display().to_string();
    assert_eq!(in_agent(&cgroup, &[HELPER, "mkdir", &child]), EPERM);

    let policy_file = daemon.dir.path().join("policies/p.yaml");
    let policy_file = policy_file.to_str().unwrap();
    assert_eq!(in_agent(&cgroup, &[PROTECT, "write", policy_file]), EPERM);
    assert_eq!(in_agent(&cgroup, &[HELPER, "unlink", policy_file]), EPERM);
    let new_policy = daemon.dir.path().join("policies/q.yaml");
    assert_eq!(
        in_agent(&cgroup, &[HELPER, "create", new_policy.to_str().unwrap()]),
        EPERM
    );
    let audit_log = daemon.audit_log.to_str().unwrap();
    assert_eq!(in_agent(&cgroup, &[PROTECT, "write", audit_log]), EPERM);
    let oom = format!("/proc/{}/oom_score_adj", daemon.pid());
    assert_eq!(in_agent(&cgroup, &[PROTECT, "write", &oom]), EPERM);

    // Reading is not a change; outside the agent everything stays possible.
    assert_eq!(
        in_agent(&cgroup, &[HELPER, "open", policy_file, "read"]),
        "ok"
    );
    assert_eq!(outside(&[PROTECT, "write", policy_file]), "ok");
    assert_eq!(outside(&[HELPER, "unlink", &pinned]), "ok");

    let record = daemon
        .wait_for_record(|r| r["hook"] == "path_unlink" && r["object"]["path"] == pinned.as_str());
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["object"]["denied_rights"][0], "delete");
}

/// Every pin under the daemon's `links/` and `maps/`, sorted.
fn pins_under(pin_dir: &Path) -> Vec<String> {
    let mut pins: Vec<String> = ["links", "maps"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(pin_dir.join(sub)).unwrap())
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    pins.sort();
    pins
}

/// (pin name, link id, program id) of every pinned link, asked of the
/// kernel through bpftool rather than of Baton.
fn pinned_links(pin_dir: &Path) -> Vec<(String, u64, u64)> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir(pin_dir.join("links")).unwrap() {
        let path = entry.unwrap().path();
        let output = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&path)
            .output()
            .expect("bpftool is installed by cargo xtask setup");
        let info: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("bpftool link show pinned {}", path.display()));
        links.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            info["id"].as_u64().unwrap(),
            info["prog_id"].as_u64().unwrap(),
        ));
    }
    links.sort();
    links
}

/// A root agent, whether its cgroup selects it or `baton exec` placed it,
/// cannot remove the daemon's pins: neither one pin nor `rm -rf` of the
/// whole directory. BPF LSM denies every unlink (and records it), so the
/// pins, links and programs stay as they were and nothing had to be put
/// back; outside the agent the directory stays readable.
#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_a_root_agent_cannot_remove_the_daemons_pins() {
    let cgroup = TestCgroup::new(&format!("/baton-test-protect-pins-{}", std::process::id()));
    // Egress denied, so that the connect below tells whether the egress
    // programs still run.
    let guarded = policy("guard", "guard", "  egress:\n    default: deny\n").replace(
        "    agent: guard\n",
        &format!("    agent: guard\n    cgroups: [{}]\n", cgroup.relative),
    );
    let daemon = Daemon::start("protect-pins", &[("p.yaml", guarded)]);
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("file rules are NOT enforced"),
        "BPF LSM must load in the VM:\n{stderr}"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // A first `baton exec` agent makes the daemon attach the packet
    // backstop to the test's cgroup (a new pin); the pins are counted
    // after it.
    assert!(daemon.exec("guard", &["true"]).status.success());
    let pins_before = pins_under(&daemon.pin_dir);
    let links_before = pinned_links(&daemon.pin_dir);
    assert!(
        links_before.iter().any(|(name, _, _)| name == "connect4")
            && links_before.iter().any(|(name, _, _)| name == "file_open"),
        "{links_before:?}"
    );
    let pin_dir = daemon.pin_dir.display().to_string();

    // One pin at a time, from the cgroup-selected agent.
    for pin in ["links/connect4", "links/file_open", "maps/AGENT_POLICIES"] {
        let path = daemon.pin_dir.join(pin).display().to_string();
        assert_eq!(
            in_agent(&cgroup, &[HELPER, "unlink", &path]),
            EPERM,
            "{path}"
        );
    }
    let record = daemon.wait_for_record(|r| {
        r["hook"] == "path_unlink"
            && r["object"]["path"] == format!("{pin_dir}/links/connect4").as_str()
    });
    assert_eq!(record["verdict"], "denied");
    assert_eq!(record["agent"], "guard");
    assert_eq!(record["object"]["denied_rights"][0], "delete");

    // The whole directory, from the cgroup-selected agent and from a
    // `baton exec` agent.
    let rm = cgroup.enter_and_exec(&format!("rm -rf {pin_dir}"));
    let by_cgroup = Command::new(&rm[0]).args(&rm[1..]).output().unwrap();
    let by_exec = daemon.exec("guard", &["rm", "-rf", &pin_dir]);
    for (who, removal) in [("cgroup", &by_cgroup), ("baton exec", &by_exec)] {
        let stderr = String::from_utf8_lossy(&removal.stderr);
        assert!(!removal.status.success(), "{who}: rm -rf succeeded");
        assert!(
            stderr.contains("Operation not permitted"),
            "{who}: {stderr}"
        );
        assert!(
            !stderr.contains("No such file"),
            "{who}: something was removed: {stderr}"
        );
    }
    let rm_records: Vec<serde_json::Value> = daemon
        .decisions()
        .into_iter()
        .filter(|r| {
            r["hook"] == "path_unlink"
                && r["object"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&pin_dir))
                && r["process"]["comm"] == "rm"
        })
        .collect();
    assert!(!rm_records.is_empty(), "rm's unlinks are recorded");
    for record in &rm_records {
        assert_eq!(record["verdict"], "denied", "{record}");
        assert_eq!(record["agent"], "guard", "{record}");
    }

    // Nothing moved: the same pins, naming the same links and programs,
    // and nothing had to be put back.
    assert_eq!(
        pins_under(&daemon.pin_dir),
        pins_before,
        "every pin is there"
    );
    assert_eq!(
        pinned_links(&daemon.pin_dir),
        links_before,
        "the same links"
    );
    assert!(
        !daemon.records().iter().any(|r| r["object"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(" was removed"))),
        "no pin had to be put back"
    );
    // The programs still run: the agent is still denied its connect, the
    // outsider is not, and the kernel says every link is attached.
    assert_eq!(in_agent(&cgroup, &[HELPER, "connect", &target]), EPERM);
    assert_eq!(outside(&[HELPER, "connect", &target]), "ok");
    let probe: serde_json::Value = serde_json::from_slice(
        &baton_tests::baton(&["probe", "--json", "--pin-dir", &pin_dir]).stdout,
    )
    .unwrap();
    let attached = probe["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Baton programs attached")
        .unwrap_or_else(|| panic!("{probe:#}"));
    assert_eq!(attached["status"], "yes", "{attached}");
    let status = daemon.status();
    let controls = &status["agents"][0]["controls"];
    assert!(
        controls["egress"].as_str().unwrap().starts_with("enforced"),
        "{status}"
    );
    assert_eq!(controls["files"], "enforced by BPF LSM", "{status}");

    // Outside the agent the pin directory is readable as ever.
    let listed = Command::new("ls").arg("-R").arg(&pin_dir).output().unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("connect4") && listed.contains("AGENT_POLICIES"),
        "{listed}"
    );
}

/// `baton exec` agents are held with or without BPF LSM: by the kernel
/// programs where it loads, by seccomp and Landlock where it does not (the
/// development hosts, whose Landlock has signal scoping).
#[test]
fn baton_exec_agents_cannot_reach_the_daemon_with_or_without_bpf_lsm() {
    let lsm = baton_tests::bpf_lsm_loads();
    let daemon = Daemon::start("protect-exec", &[("p.yaml", permissive("guard", ""))]);
    let pid = daemon.pid().to_string();
    let agent = |args: &[&str]| helper_outcome(&daemon.exec("guard", args));

    assert_eq!(agent(&[PROTECT, "bpf-map-create"]), EPERM, "bpf()");
    assert_eq!(agent(&[PROTECT, "ptrace", &pid]), EPERM, "ptrace");
    assert_eq!(
        agent(&[PROTECT, "vm-read", &pid]),
        EPERM,
        "process_vm_readv"
    );
    assert_eq!(
        agent(&[PROTECT, "perf-event-open"]),
        EPERM,
        "perf_event_open"
    );
    // Children inherit it.
    let output = daemon.exec("guard", &["sh", "-c", &format!("{PROTECT} bpf-map-create")]);
    assert_eq!(helper_outcome(&output), EPERM, "a child of the agent");

    if lsm || baton_tests::landlock_abi() >= 6 {
        assert_eq!(agent(&[PROTECT, "kill", &pid, "15"]), EPERM, "SIGTERM");
        assert_eq!(agent(&[PROTECT, "kill", &pid, "9"]), EPERM, "SIGKILL");
    } else {
        eprintln!(
            "Landlock ABI {} has no signal scoping: not tested",
            baton_tests::landlock_abi()
        );
    }
    assert!(alive(daemon.pid()), "the daemon survived");

    // The audit netlink socket, through which a root agent could switch
    // off or filter the reports of its Landlock denials; other netlink
    // sockets stay open.
    let netlink = |protocol: u32| {
        let output = daemon.exec(
            "guard",
            &[
                "python3",
                "-c",
                &format!(
                    "import socket\ntry:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, {protocol})\n    print('ok')\nexcept OSError as e:\n    print('errno=%d' % e.errno)"
                ),
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    if !lsm {
        assert_eq!(
            netlink(libc::NETLINK_AUDIT as u32),
            "errno=1",
            "NETLINK_AUDIT"
        );
    }
    assert_eq!(netlink(libc::NETLINK_ROUTE as u32), "ok", "NETLINK_ROUTE");

    // Without BPF LSM the filter's refusals are recorded where the daemon
    // reads the kernel's audit log (as it does for Landlock's reports).
    if !lsm && daemon.status()["landlock_denials"] == "recorded" {
        for call in [
            "bpf",
            "ptrace",
            "process_vm_readv",
            "perf_event_open",
            "socket",
        ] {
            let path = format!("{call}()");
            let record = daemon.wait_for_record(|r| {
                r["object"]["path"] == path.as_str() && r["hook"] == "seccomp"
            });
            assert_eq!(record["hook"], "seccomp", "{record}");
            assert_eq!(record["verdict"], "denied", "{record}");
            assert_eq!(record["agent"], "guard", "{record}");
            assert!(record["process"]["pid"].as_u64() > Some(1), "{record}");
            assert!(
                !record["process"]["comm"].as_str().unwrap_or("").is_empty(),
                "{record}"
            );
        }
        // Children that exit at once are recorded too, though their
        // reports reach the daemon after they are gone: the shell forks
        // each of the first two commands.
        let output = daemon.exec(
            "guard",
            &[
                "sh",
                "-c",
                &format!("{PROTECT} bpf-map-create; {PROTECT} bpf-map-create; true"),
            ],
        );
        assert!(output.status.success(), "{output:?}");
        // The root's, the first child's and these two: four at least.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let bpf_records = daemon
                .records()
                .iter()
                .filter(|r| r["object"]["path"] == "bpf()" && r["hook"] == "seccomp")
                .count();
            if bpf_records >= 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{bpf_records} bpf() records"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // The refused audit netlink socket counts as a denied socket.
        let counters = &daemon.status()["agents"][0]["counters"];
        assert!(counters["denied_sockets"].as_u64() >= Some(1), "{counters}");
        // The same calls outside any agent (below) leave no record.
    } else if !lsm {
        eprintln!(
            "the kernel's audit log is not read here ({}): seccomp refusals not recorded",
            daemon.status()["landlock_denials"]
        );
    }

    // Baton's files: denied by the BPF LSM file rules. Without BPF LSM they
    // are left to Unix permissions (Landlock would take mount(2) from every
    // agent), which `baton status` reports.
    let policy_file = daemon.dir.path().join("policies/p.yaml");
    let policy_file = policy_file.to_str().unwrap();
    if lsm {
        assert_eq!(agent(&[PROTECT, "write", policy_file]), EPERM, "a policy");
        assert_eq!(agent(&[HELPER, "unlink", policy_file]), EPERM);
    }
    assert_eq!(agent(&[HELPER, "open", policy_file, "read"]), "ok");

    // Outside the agent, none of it is denied.
    assert_eq!(outside(&[PROTECT, "bpf-map-create"]), "ok");
    assert_eq!(outside(&[PROTECT, "write", policy_file]), "ok");
    // The daemon still serves.
    assert_eq!(agent(&[HELPER, "open", policy_file, "read"]), "ok");
}

//! Who is an agent: `baton exec` (as root and as an unprivileged user),
//! cgroup and systemd unit selectors, executable selectors, interpreted
//! agents, and the escape attempts that must fail.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
};

use baton_tests::{
    Daemon, EPERM, TempDir, TestCgroup, baton, baton_bin, helper_outcome, policy, run_outcome,
};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// A listener whose port no policy below allows.
fn closed_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn deny_all(name: &str, selector_extra: &str) -> String {
    policy(name, name, "  egress:\n    default: deny\n").replace(
        &format!("    agent: {name}\n"),
        &format!("    agent: {name}\n{selector_extra}"),
    )
}

fn unique(label: &str) -> String {
    format!("baton-test-{label}-{}", std::process::id())
}

#[test]
fn unprivileged_user_can_join_an_agent() {
    let (_l, addr) = closed_port();
    let daemon = Daemon::start("unpriv", &[("p.yaml", deny_all("unpriv", ""))]);
    let output = Command::new(baton_bin())
        .args(["exec", "--agent", "unpriv", "--control-socket"])
        .arg(&daemon.socket)
        .args(["--", HELPER, "connect", &addr])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(helper_outcome(&output), EPERM);
    let record = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(record["process"]["uid"], 65534);
    assert_eq!(record["agent"], "unpriv");
}

#[test]
fn root_exec_can_drop_to_another_user() {
    let (_l, addr) = closed_port();
    let daemon = Daemon::start("as-user", &[("p.yaml", deny_all("asuser", ""))]);
    let output = Command::new(baton_bin())
        .args([
            "exec",
            "--agent",
            "asuser",
            "--user",
            "nobody",
            "--control-socket",
        ])
        .arg(&daemon.socket)
        .args(["--", "sh", "-c", &format!("id -u; {HELPER} connect {addr}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["65534", EPERM],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cgroup_selector_admits_members_present_before_and_after_start() {
    let (_l, addr) = closed_port();
    let cgroup = TestCgroup::new(&format!("/{}", unique("cg")));
    let child_cgroup = TestCgroup::new(&format!("{}/child", cgroup.relative));

    // Already in the cgroup before the daemon starts; it neither forks nor
    // execs afterwards, so only the daemon's scan can admit it.
    let script = format!(
        "import socket, sys\nsys.stdin.readline()\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {}))\n    print('ok')\nexcept OSError as e:\n    print(f'errno={{e.errno}}')\n",
        addr.rsplit(':').next().unwrap()
    );
    let mut early = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cgroup.add(early.id());

    let selector = format!("    cgroups: [{}]\n", cgroup.relative);
    let daemon = Daemon::start("cgroup", &[("p.yaml", deny_all("cgagent", &selector))]);

    early.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(early.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    early.wait().unwrap();
    assert_eq!(line.trim(), EPERM, "a process present at start is admitted");

    // Entering later: admitted at exec.
    let late = cgroup.enter_and_exec(&format!("{HELPER} connect {addr}"));
    assert_eq!(
        run_outcome(&late),
        EPERM,
        "a process that enters later is admitted"
    );
    let nested = child_cgroup.enter_and_exec(&format!("{HELPER} connect {addr}"));
    assert_eq!(run_outcome(&nested), EPERM, "a child cgroup is covered too");

    // Outside the cgroup nothing changes.
    assert_eq!(
        run_outcome(&[HELPER.into(), "connect".into(), addr.clone()]),
        "ok"
    );
    let record = daemon.wait_for_record(|r| r["control"] == "egress");
    assert_eq!(record["agent"], "cgagent");
}

#[test]
fn systemd_unit_selector_uses_the_unit_cgroup() {
    let (_l, addr) = closed_port();
    let unit = format!("{}.service", unique("unit"));
    let cgroup = TestCgroup::new(&format!("/system.slice/{unit}"));
    let selector = format!("    systemdUnits: [{unit}]\n");
    let _daemon = Daemon::start("unit", &[("p.yaml", deny_all("unitagent", &selector))]);
    let inside = cgroup.enter_and_exec(&format!("{HELPER} connect {addr}"));
    assert_eq!(run_outcome(&inside), EPERM);
}

#[test]
fn executable_selector_matches_the_file_identity() {
    let (_l, addr) = closed_port();
    let dir = TempDir::new("exe");
    let selected = dir.path().join("selected-helper");
    std::fs::copy(HELPER, &selected).unwrap();
    let copy = dir.path().join("copy-of-selected");
    std::fs::copy(&selected, &copy).unwrap();
    let link = dir.path().join("link-to-selected");
    std::os::unix::fs::symlink(&selected, &link).unwrap();

    let selector = format!("    executables: [{}]\n", selected.display());
    let _daemon = Daemon::start("exe", &[("p.yaml", deny_all("exeagent", &selector))]);

    let run = |program: &std::path::Path, args: &[&str]| {
        let mut command = vec![program.display().to_string()];
        command.extend(args.iter().map(|s| s.to_string()));
        run_outcome(&command)
    };
    assert_eq!(
        run(&selected, &["connect", &addr]),
        EPERM,
        "the selected file"
    );
    assert_eq!(
        run(&link, &["connect", &addr]),
        EPERM,
        "a symlink is the same file"
    );
    assert_eq!(
        run(&copy, &["connect", &addr]),
        "ok",
        "a copy is another file"
    );
    assert_eq!(
        run(std::path::Path::new(HELPER), &["connect", &addr]),
        "ok",
        "an unrelated binary is not selected"
    );
    assert_eq!(
        run(&selected, &["spawn", HELPER, "connect", &addr]),
        EPERM,
        "a child of the selected program inherits the agent"
    );
}

#[test]
fn interpreted_agent_is_selected_through_its_own_interpreter() {
    // How to select `python3 -m agent` without selecting every python3:
    // give the agent its own copy of the interpreter and select that file.
    let (_l, addr) = closed_port();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let dir = TempDir::new("interp");
    let agent_python = dir.path().join("agent-python3");
    std::fs::copy("/usr/bin/python3.11", &agent_python).unwrap();
    let selector = format!("    executables: [{}]\n", agent_python.display());
    let _daemon = Daemon::start("interp", &[("p.yaml", deny_all("pyagent", &selector))]);
    let code = format!(
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('ok')\nexcept OSError as e:\n    print(f'errno={{e.errno}}')\n"
    );
    let run =
        |python: &str| helper_outcome(&Command::new(python).args(["-c", &code]).output().unwrap());
    assert_eq!(
        run(agent_python.to_str().unwrap()),
        EPERM,
        "the agent's interpreter"
    );
    assert_eq!(
        run("/usr/bin/python3"),
        "ok",
        "every other python3 is unaffected"
    );
}

#[test]
fn moving_to_another_cgroup_does_not_leave_the_agent() {
    let (_l, addr) = closed_port();
    let elsewhere = TestCgroup::new(&format!("/{}", unique("escape")));
    let daemon = Daemon::start("escape", &[("p.yaml", deny_all("escaper", ""))]);
    // Writing cgroup.procs may itself be refused (agents may not change
    // cgroup files); either way the connect after it stays denied.
    let script = format!(
        "echo $$ > {}/cgroup.procs 2>/dev/null; {HELPER} connect {addr}",
        elsewhere.dir.display()
    );
    let output = daemon.exec("escaper", &["sh", "-c", &script]);
    assert_eq!(helper_outcome(&output), EPERM);
}

#[test]
fn policy_check_reports_merged_policies_and_conflicts() {
    let dir = TempDir::new("merge");
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &a,
        policy("first", "shared", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    std::fs::write(&b, policy("second", "shared", "  mode: audit\n")).unwrap();
    let output = baton(&["policy", "check", a.to_str().unwrap(), b.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("agent shared: policies first, second"),
        "{stdout}"
    );
    assert!(stdout.contains("merged"), "{stdout}");

    std::fs::write(&a, deny_all("one", "    cgroups: [/same]\n")).unwrap();
    std::fs::write(&b, deny_all("two", "    cgroups: [/same]\n")).unwrap();
    let output = baton(&["policy", "check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cgroup /same is selected by agent one"),
        "{stderr}"
    );
    // Both places are named the way editors read them: the first
    // policy's selector inside the message, the second's in front.
    let column = "    cgroups: [".len() + 1;
    let line = deny_all("two", "    cgroups: [/same]\n")
        .lines()
        .position(|l| l.contains("cgroups: [/same]"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("{}:{line}:{column}: ", b.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:{line}:{column})", a.display())),
        "{stderr}"
    );
}

/// The byte of `tgid` in the daemon's agent marks, from bpftool: the
/// filter every program consults before the identity map.
fn agent_mark(daemon: &Daemon, tgid: u32) -> u8 {
    let entry = (tgid / 64).to_le_bytes().map(|b| b.to_string());
    let output = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(daemon.pin_dir.join("maps/AGENT_MARKS"))
        .arg("key")
        .args(&entry)
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    assert!(output.status.success(), "bpftool map lookup: {output:?}");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let byte = value["value"][(tgid % 64) as usize]
        .as_str()
        .unwrap_or_else(|| panic!("no value bytes in {value}"));
    u8::from_str_radix(byte.trim_start_matches("0x"), 16).unwrap()
}

/// The daemon marks what it admits (through its mapping of the marks), the
/// fork program marks children, and the exit program clears the mark of a
/// process that is gone; a process in no agent is unmarked.
#[test]
fn agent_marks_follow_admission_fork_and_exit() {
    let daemon = Daemon::start("marks", &[("p.yaml", deny_all("marks", ""))]);
    let mut agent = Command::new(baton_bin())
        .args(["exec", "--agent", "marks", "--control-socket"])
        .arg(&daemon.socket)
        .args(["--", "sh", "-c", "sleep 60 & echo $!; read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(agent.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u32 = line.trim().parse().expect("the child's pid");
    assert_eq!(agent_mark(&daemon, agent.id()), 1, "admitted by the daemon");
    assert_eq!(agent_mark(&daemon, child), 1, "forked inside the agent");

    let mut outsider = Command::new("sleep").arg("60").spawn().unwrap();
    assert_eq!(agent_mark(&daemon, outsider.id()), 0, "in no agent");
    outsider.kill().unwrap();
    outsider.wait().unwrap();

    Command::new("kill")
        .arg(child.to_string())
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent_mark(&daemon, child) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mark of exited process {child} stays set"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writeln!(agent.stdin.as_mut().unwrap()).unwrap();
    agent.wait().unwrap();
}

//! Socket families and privilege escalation: which sockets an agent may
//! create (`egress.families`), and `no_new_privs` for `baton exec` agents.
//! Real `socket(2)` calls from processes inside and outside an agent, real
//! errnos, and the audit record where the layer in force writes one.

use std::{os::unix::fs::PermissionsExt, process::Command};

use baton_tests::{
    Daemon, EPERM, TempDir, TestCgroup, baton, baton_bin, helper_outcome, independent_lsm_load,
    policy, run_outcome,
};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// The errno text for `EAFNOSUPPORT` as the helper prints it.
const EAFNOSUPPORT: &str = "errno=97";

fn outside(kind: &str) -> String {
    helper_outcome(
        &Command::new(HELPER)
            .args(["socket", kind])
            .output()
            .unwrap(),
    )
}

fn unique(label: &str) -> String {
    format!("baton-test-{label}-{}", std::process::id())
}

#[test]
fn baton_exec_agents_cannot_create_vsock_or_packet_sockets() {
    let daemon = Daemon::start(
        "families",
        &[(
            "p.yaml",
            policy("fam", "fam", "  egress:\n    default: allow\n"),
        )],
    );
    let inside = |kind: &str| helper_outcome(&daemon.exec("fam", &[HELPER, "socket", kind]));
    assert_eq!(inside("vsock"), EPERM, "AF_VSOCK is not a default family");
    assert_eq!(inside("packet"), EPERM, "AF_PACKET is never allowed");
    // The control: the same calls from a process in no agent succeed, so
    // the errors above are Baton's.
    assert_eq!(outside("vsock"), "ok", "AF_VSOCK outside any agent");
    assert_eq!(
        outside("packet"),
        "ok",
        "AF_PACKET outside any agent (root)"
    );
    // Default families still work inside (the helper's connect uses inet;
    // the shell itself needs nothing else).
    let output = daemon.exec(
        "fam",
        &[
            "python3",
            "-c",
            "import socket\nfor f in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):\n    socket.socket(f, socket.SOCK_STREAM).close()\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()\nprint('ok')",
        ],
    );
    assert_eq!(helper_outcome(&output), "ok", "unix, inet, inet6, netlink");
    if independent_lsm_load().is_ok() {
        let record = daemon
            .wait_for_record(|r| r["hook"] == "socket_create" && r["object"]["family"] == "vsock");
        assert_eq!(record["verdict"], "denied");
        assert_eq!(record["agent"], "fam");
    }
}

#[test]
fn a_family_listed_in_egress_families_can_be_created() {
    let daemon = Daemon::start(
        "families-vsock",
        &[(
            "p.yaml",
            policy(
                "famv",
                "famv",
                "  egress:\n    default: deny\n    families: [vsock]\n",
            ),
        )],
    );
    let inside = |kind: &str| helper_outcome(&daemon.exec("famv", &[HELPER, "socket", kind]));
    assert_eq!(inside("vsock"), "ok", "listed in egress.families");
    assert_eq!(inside("packet"), EPERM, "still not packet");
    let alg = inside("alg");
    assert_eq!(alg, EPERM, "nor a family the policy does not list");
    let status = daemon.status();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "famv")
        .unwrap();
    assert_eq!(
        agent["families"],
        serde_json::json!(["unix", "inet", "inet6", "netlink", "vsock"])
    );
}

#[test]
fn a_policy_listing_packet_is_refused_with_its_position() {
    let dir = TempDir::new("families-packet");
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        policy(
            "famp",
            "famp",
            "  egress:\n    default: deny\n    families: [vsock, packet]\n",
        ),
    )
    .unwrap();
    let output = baton(&["policy", "check", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:10:23: spec.egress.families[1]: family \"packet\" cannot be allowed",
            file.display()
        )),
        "{stderr}"
    );
}

/// What the probe says about `family`: (baton exec state, selected state).
fn probe_family(report: &Value, family: &str) -> (String, String) {
    let row = report["families"]
        .as_array()
        .expect("families in the probe")
        .iter()
        .find(|f| f["family"] == family)
        .unwrap_or_else(|| panic!("{family} in the probe"));
    (
        row["baton_exec"]["state"].as_str().unwrap().to_string(),
        row["selected"]["state"].as_str().unwrap().to_string(),
    )
}

#[test]
fn probe_reports_each_family_truthfully() {
    let output = baton(&["probe", "--json"]);
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    for family in ["unix", "inet", "inet6", "netlink"] {
        assert_eq!(
            probe_family(&report, family),
            ("allowed".into(), "allowed".into()),
            "{family}"
        );
    }
    // Checked against the kernel independently of Baton's own probe code.
    let lsm = independent_lsm_load().is_ok();
    let io_uring_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() == "2");
    for family in ["vsock", "packet", "alg", "bluetooth"] {
        let (exec, selected) = probe_family(&report, family);
        if lsm {
            assert_eq!((exec.as_str(), selected.as_str()), ("enforced", "enforced"));
        } else {
            // seccomp covers socket(2) and socketpair(2); io_uring's
            // IORING_OP_SOCKET goes around it unless io_uring is off.
            let expected = if io_uring_off { "enforced" } else { "degraded" };
            assert_eq!(exec, expected, "{family} for baton exec agents");
            assert_eq!(selected, "not_covered", "{family} for selected agents");
        }
    }
    let control = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with("socket families"))
        .unwrap();
    assert_eq!(
        control["level"],
        if lsm { "enforced" } else { "degraded" },
        "{control}"
    );
}

/// Builds a setuid-root program that prints its effective uid and whether
/// it may open a packet socket.
fn setuid_root_helper(dir: &TempDir) -> std::path::PathBuf {
    let source = dir.path().join("whoami.c");
    std::fs::write(
        &source,
        "#include <errno.h>\n#include <stdio.h>\n#include <sys/socket.h>\n#include <unistd.h>\n\
         int main(void) {\n\
           printf(\"euid=%d\\n\", (int)geteuid());\n\
           int fd = socket(AF_PACKET, SOCK_RAW, 0);\n\
           if (fd < 0) printf(\"errno=%d\\n\", errno); else printf(\"ok\\n\");\n\
           return 0;\n\
         }\n",
    )
    .unwrap();
    let binary = dir.path().join("whoami");
    let status = Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc");
    assert!(status.success(), "cc failed");
    std::os::unix::fs::chown(&binary, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) into a zeroed struct the call fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a valid out pointer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    assert!(
        stat.f_flag & libc::ST_NOSUID == 0,
        "{} is on a nosuid mount: the setuid bit would do nothing",
        dir.path().display()
    );
    binary
}

fn run_as_nobody(daemon: &Daemon, agent: &str, program: &std::path::Path) -> Vec<String> {
    let output = Command::new(baton_bin())
        .args([
            "exec",
            "--agent",
            agent,
            "--user",
            "nobody",
            "--control-socket",
        ])
        .arg(&daemon.socket)
        .arg("--")
        .arg(program)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_nobody_agent_running_a_setuid_root_binary_stays_unprivileged() {
    let dir = TempDir::new("setuid");
    let helper = setuid_root_helper(&dir);
    let daemon = Daemon::start(
        "nnp",
        &[
            (
                "p.yaml",
                policy("nnp", "nnp", "  egress:\n    default: allow\n"),
            ),
            (
                "q.yaml",
                policy(
                    "escalates",
                    "escalates",
                    "  egress:\n    default: allow\n  process:\n    allowPrivilegeEscalation: true\n",
                ),
            ),
        ],
    );
    assert_eq!(
        run_as_nobody(&daemon, "nnp", &helper),
        ["euid=65534", EPERM],
        "no_new_privs: the setuid bit grants nothing and a packet socket is refused"
    );
    // The opt-out really lets the setuid bit work: the check above can fail.
    let escalated = run_as_nobody(&daemon, "escalates", &helper);
    assert_eq!(escalated[0], "euid=0", "{escalated:?}");
    assert_eq!(
        escalated[1], EPERM,
        "even as root, a packet socket is not a family the agent may create"
    );
}

#[test]
fn policy_check_warns_when_privilege_escalation_is_allowed() {
    let dir = TempDir::new("escalation-lint");
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        policy(
            "esc",
            "esc",
            "  process:\n    allowPrivilegeEscalation: true\n",
        ),
    )
    .unwrap();
    let output = baton(&["policy", "check", file.to_str().unwrap()]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(all.contains("allowPrivilegeEscalation is true"), "{all}");
}

/// A cgroup-selected agent starts without `baton exec`, so no seccomp
/// filter holds it: only BPF LSM `socket_create` can deny it a family.
#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_cgroup_agents_are_denied_other_families_by_socket_create() {
    let cgroup = TestCgroup::new(&format!("/{}", unique("families")));
    let selector = format!("    cgroups: [{}]\n", cgroup.relative);
    let daemon = Daemon::start(
        "families-cgroup",
        &[(
            "p.yaml",
            format!(
                "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: famcg\nspec:\n  selector:\n{selector}  egress:\n    default: allow\n"
            ),
        )],
    );
    let inside =
        |kind: &str| run_outcome(&cgroup.enter_and_exec(&format!("{HELPER} socket {kind}")));
    assert_eq!(inside("vsock"), EPERM, "AF_VSOCK");
    assert_eq!(inside("alg"), EPERM, "AF_ALG");
    assert_eq!(inside("packet"), EPERM, "AF_PACKET");
    // Outside any agent Baton denies none of them. The guest kernel may
    // lack a family's module, which answers EAFNOSUPPORT, never EPERM.
    for kind in ["vsock", "alg"] {
        let outcome = outside(kind);
        assert!(
            outcome == "ok" || outcome == EAFNOSUPPORT,
            "{kind} outside any agent: {outcome}"
        );
    }
    assert_eq!(outside("packet"), "ok");
    for family in ["vsock", "alg"] {
        let record = daemon
            .wait_for_record(|r| r["hook"] == "socket_create" && r["object"]["family"] == family);
        assert_eq!(record["verdict"], "denied");
        assert_eq!(record["agent"], "famcg");
        assert_eq!(record["control"], "egress");
    }
    let report: Value = serde_json::from_slice(&baton(&["probe", "--json"]).stdout).unwrap();
    assert_eq!(
        probe_family(&report, "vsock"),
        ("enforced".into(), "enforced".into())
    );
}

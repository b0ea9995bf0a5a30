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

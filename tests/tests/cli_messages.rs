//! What people read: the daemon's log, `baton status` text, and the
//! refusals of `baton run` and `baton exec`.

use std::{os::unix::process::CommandExt as _, process::Command};

use baton_tests::{Daemon, baton_bin, policy};

fn daemon(label: &str) -> Daemon {
    Daemon::start(
        label,
        &[(
            "p.yaml",
            policy("texts", "texts", "  egress:\n    default: deny\n"),
        )],
    )
}

#[test]
fn a_refused_second_daemon_leaves_no_audit_log_and_no_colour_codes() {
    let first = daemon("second-daemon");
    assert!(
        !first.stderr().contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{}",
        first.stderr()
    );
    let other_log = first.dir.path().join("other-log/audit.jsonl");
    let output = Command::new(baton_bin())
        .arg("run")
        .arg("--policy-dir")
        .arg(first.dir.path().join("policies"))
        .arg("--audit-log")
        .arg(&other_log)
        .arg("--control-socket")
        .arg(first.dir.path().join("other.sock"))
        .arg("--config")
        .arg(first.dir.path().join("config.yaml"))
        .arg("--pin-dir")
        .arg(&first.pin_dir)
        .arg("--state-dir")
        .arg(first.dir.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another running baton daemon"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    assert!(
        !other_log.exists(),
        "the refused daemon created {}",
        other_log.display()
    );
}

#[test]
fn exec_with_user_needs_root_and_says_so() {
    let daemon = daemon("exec-user");
    let output = {
        Command::new(baton_bin())
            .args([
                "exec",
                "--agent",
                "texts",
                "--user",
                "root",
                "--control-socket",
            ])
            .arg(&daemon.socket)
            .args(["--", "true"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--user needs root"), "{stderr}");
    assert!(!stderr.contains("Operation not permitted"), "{stderr}");
}

#[test]
fn status_text_is_clean() {
    let daemon = daemon("status-text");
    let output = Command::new(baton_bin())
        .args(["status", "--control-socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.ends_with('\n'), "{text:?}");
    assert!(!text.contains("(watching )"), "{text}");
    let exec_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("exec "))
        .count();
    assert_eq!(exec_lines, 1, "{text}");
    let counters = text
        .lines()
        .find(|l| l.trim_start().starts_with("counters"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!counters.contains('{'), "{counters}");
    assert!(
        counters.contains("0 connects (0 denied, 0 rate-limited)"),
        "{counters}"
    );
}

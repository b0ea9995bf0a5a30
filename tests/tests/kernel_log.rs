//! `baton run --kernel-log`: the kernel programs' own log lines reach the
//! daemon's log. Its own test binary, because the level is handed to the
//! daemon through the environment (`BATON_KERNEL_LOG`), which every test
//! of a binary shares.

use baton_tests::{Daemon, EPERM, helper_outcome, policy, wait_until};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

#[test]
fn kernel_log_lines_reach_the_daemons_log() {
    let (_listener, port) = baton_tests::listener();
    let rules = format!(
        "  egress:\n    default: allow\n    deny:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"
    );
    // Off by default: nothing from the kernel.
    let quiet = Daemon::start("klog-off", &[("p.yaml", policy("klog", "klog", &rules))]);
    let target = format!("127.0.0.1:{port}");
    assert_eq!(
        helper_outcome(&quiet.exec("klog", &[HELPER, "connect", &target])),
        EPERM
    );
    quiet.wait_for_record(|r| r["agent"] == "klog" && r["verdict"] == "denied");
    assert!(
        !quiet.stderr().contains(" kernel:"),
        "kernel lines with logging off:\n{}",
        quiet.stderr()
    );
    drop(quiet);

    // SAFETY: the only test of this binary, and no other thread reads the
    // environment while it is set.
    unsafe { std::env::set_var("BATON_KERNEL_LOG", "debug") };
    // Another family only: the address hooks stay quiet.
    // SAFETY: as above.
    unsafe { std::env::set_var("BATON_KERNEL_LOG_HOOKS", "backstop,files") };
    let other = Daemon::start("klog-other", &[("p.yaml", policy("klog", "klog", &rules))]);
    // SAFETY: as above.
    unsafe { std::env::remove_var("BATON_KERNEL_LOG_HOOKS") };
    assert_eq!(
        helper_outcome(&other.exec("klog", &[HELPER, "connect", &target])),
        EPERM
    );
    other.wait_for_record(|r| r["agent"] == "klog" && r["verdict"] == "denied");
    // Lines come a moment after their record, when they come.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !other.stderr().contains("egress hook"),
        "egress lines with only backstop and files logging:\n{}",
        other.stderr()
    );
    drop(other);

    let daemon = Daemon::start("klog-trace", &[("p.yaml", policy("klog", "klog", &rules))]);
    // SAFETY: as above.
    unsafe { std::env::remove_var("BATON_KERNEL_LOG") };
    assert_eq!(
        helper_outcome(&daemon.exec("klog", &[HELPER, "connect", &target])),
        EPERM
    );
    // The connect hook's decision: verdict 2 is a denial.
    let expected = "verdict 2";
    wait_until("the connect hook's log line", || {
        daemon
            .stderr()
            .lines()
            .any(|line| line.contains(" kernel:") && line.contains(expected))
    });
}

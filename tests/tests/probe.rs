//! `baton probe` tells the truth about BPF LSM: its verdict matches an
//! independent attempt to load and attach an LSM program with raw bpf(2).

use baton_tests::{baton, independent_lsm_load};
use serde_json::Value;

fn probe_json() -> Value {
    let output = baton(&["probe", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn control_level(report: &Value, name: &str) -> String {
    report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["level"].as_str().unwrap().to_string())
        .unwrap()
}

fn check_probe_matches_independent_load() -> bool {
    let report = probe_json();
    let independent = independent_lsm_load();
    let loadable = report["bpf_lsm_loadable"].as_bool().unwrap();
    assert_eq!(
        loadable,
        independent.is_ok(),
        "baton probe says loadable={loadable}, raw bpf(2) says {independent:?}"
    );
    let files = control_level(&report, "file and exec rules");
    // Without BPF LSM, Landlock (ABI 7 on the development hosts) covers
    // agents started by baton exec only: degraded, never "enforced".
    assert_eq!(files, if loadable { "enforced" } else { "degraded" });
    assert_eq!(control_level(&report, "egress (address, port)"), "enforced");
    loadable
}

/// On the host kernel, BPF LSM is listed but refused.
#[test]
fn probe_matches_independent_lsm_load_on_this_kernel() {
    let loadable = check_probe_matches_independent_lsm_load_on_host();
    let _ = loadable;
}

fn check_probe_matches_independent_lsm_load_on_host() -> bool {
    check_probe_matches_independent_load()
}

/// Inside the test VMs, booted with `lsm=...,bpf`, BPF LSM really loads.
#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_probe_reports_bpf_lsm_available() {
    assert!(
        check_probe_matches_independent_load(),
        "the VM kernels are booted with lsm=...,bpf: BPF LSM must load"
    );
}

/// Where BPF LSM is refused, the detection programs (BTF tracepoints) are
/// the last fallback for file rules: on the host kernel they load and
/// attach, and the probe says so.
#[test]
fn probe_loads_the_detection_programs_on_this_kernel() {
    let report = probe_json();
    let detection = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "detection programs")
        .expect("a detection check");
    assert_eq!(detection["status"], "yes", "{detection}");
    let detail = detection["detail"].as_str().unwrap();
    for program in [
        "detect_sys_enter on tp_btf/sys_enter",
        "detect_sys_exit on tp_btf/sys_exit",
        "detect_exec on tp_btf/sched_process_exec",
    ] {
        assert!(detail.contains(program), "{detail}");
    }
    if !report["bpf_lsm_loadable"].as_bool().unwrap() {
        let files = report["controls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "file and exec rules")
            .unwrap();
        let detail = files["detail"].as_str().unwrap();
        assert!(detail.contains("only detected"), "{detail}");
        assert_eq!(files["level"], "degraded");
    }
}

//! `baton status` reports what the daemon enforces, per agent and control.

use baton_tests::{Daemon, baton, policy};

#[test]
fn status_names_agents_controls_and_generation() {
    let daemon = Daemon::start(
        "status",
        &[(
            "p.yaml",
            policy("watched", "watched", "  egress:\n    default: deny\n"),
        )],
    );
    let output = baton(&[
        "status",
        "--json",
        "--control-socket",
        daemon.socket.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["policy"]["generation"], 1);
    let agent = &status["agents"][0];
    assert_eq!(agent["agent"], "watched");
    assert_eq!(agent["mode"], "enforce");
    assert!(
        agent["controls"]["egress"]
            .as_str()
            .unwrap()
            .starts_with("enforced")
    );
    let probe: serde_json::Value =
        serde_json::from_slice(&baton(&["probe", "--json"]).stdout).unwrap();
    let files = agent["controls"]["files"].as_str().unwrap();
    if probe["bpf_lsm_loadable"].as_bool().unwrap() {
        assert_eq!(files, "enforced by BPF LSM");
    } else {
        // Selected by name only: every process of the agent comes through
        // baton exec, so Landlock holds all of them.
        assert!(files.contains("Landlock"), "{files}");
        assert!(
            agent["rights"]["create"]
                .as_str()
                .unwrap()
                .contains("Landlock"),
            "{agent}"
        );
    }
    let text = baton(&[
        "status",
        "--control-socket",
        daemon.socket.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("agent watched"));
}

//! `baton why`: an agent asks why it was refused, and sees only its own
//! denials.

use std::process::Command;

use baton_tests::{Daemon, EPERM, baton_bin, free_port, helper_outcome, policy};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

fn text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_agent_sees_its_own_denials_and_no_one_elses() {
    let deny_all = "  egress:\n    default: deny\n";
    let daemon = Daemon::start(
        "why",
        &[
            ("a.yaml", policy("askpolicy", "asker", deny_all)),
            ("b.yaml", policy("otherpolicy", "other", deny_all)),
        ],
    );
    let socket = daemon.socket.to_str().unwrap().to_string();
    let port = free_port("127.0.0.1");
    let destination = format!("127.0.0.1:{port}");
    let denied = daemon.exec("asker", &[HELPER, "connect", &destination]);
    assert_eq!(helper_outcome(&denied), EPERM);
    daemon.wait_for_record(|r| {
        r["agent"] == "asker" && r["object"]["port"].as_u64() == Some(u64::from(port))
    });
    let baton = baton_bin();
    let baton = baton.to_str().unwrap();

    // Inside the agent, with no root needed: the denial, with its rule.
    let (out, err) = text(&daemon.exec("asker", &[baton, "why", "--control-socket", &socket]));
    assert!(
        out.contains(&format!("connect {destination}/tcp")),
        "{out}{err}"
    );
    assert!(out.contains("rule askpolicy/egress.default"), "{out}{err}");
    assert!(out.contains("denied"), "{out}");
    let (json, err) = text(&daemon.exec(
        "asker",
        &[
            baton,
            "why",
            "--json",
            "--recent",
            "5",
            "--control-socket",
            &socket,
        ],
    ));
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!records.is_empty(), "{json}{err}");
    assert!(records.iter().all(|r| r["agent"] == "asker"), "{json}");

    // Another agent sees nothing of it, and may not ask for it.
    let (out, err) = text(&daemon.exec("other", &[baton, "why", "--control-socket", &socket]));
    assert!(out.contains("agent other: no recent denials"), "{out}{err}");
    assert!(!out.contains(&destination), "{out}");
    let refused = daemon.exec(
        "other",
        &[
            baton,
            "why",
            "--agent",
            "asker",
            "--control-socket",
            &socket,
        ],
    );
    let (out, err) = text(&refused);
    assert!(!refused.status.success(), "{out}");
    assert!(err.contains("sees only its own"), "{err}");
    assert!(!out.contains(&destination), "{out}");

    // An operator outside every agent names the agent.
    let (out, err) = text(&baton_tests::baton(&[
        "why",
        "--agent",
        "asker",
        "--control-socket",
        &socket,
    ]));
    assert!(out.contains(&destination), "{out}{err}");

    // Anyone else outside every agent is told how to use it.
    let nobody = {
        use std::os::unix::process::CommandExt as _;
        Command::new(baton)
            .args(["why", "--agent", "asker", "--control-socket", &socket])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let (out, err) = text(&nobody);
    assert!(!nobody.status.success(), "{out}");
    assert!(err.contains("run baton why inside an agent"), "{err}");
}

//! A malformed policy stops `baton run` with `file:line:column: message`.

use baton_tests::{TempDir, baton, policy};

fn run_with(label: &str, text: &str) -> (String, String) {
    let dir = TempDir::new(label);
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let file = policies.join("bad.yaml");
    std::fs::write(&file, text).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "").unwrap();
    let output = baton(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--policy-dir",
        policies.to_str().unwrap(),
        "--audit-log",
        dir.path().join("audit.jsonl").to_str().unwrap(),
        "--control-socket",
        dir.path().join("sock").to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "baton run accepted:\n{text}");
    assert!(
        !dir.path().join("sock").exists(),
        "the daemon must not have started"
    );
    (
        file.display().to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

const GOOD_BODY: &str = "  egress:\n    allow:\n      - cidr: 10.0.0.0/8\n";

#[test]
fn bad_yaml() {
    let text = policy("p", "a", GOOD_BODY).replace("kind: AgentPolicy", "kind: [AgentPolicy");
    let (file, stderr) = run_with("bad-yaml", &text);
    // The parser reports where it found the problem: the end of line 2 runs
    // into line 3 without the closing bracket.
    assert!(
        stderr.contains(&format!("{file}:3:9: did not find expected ',' or ']'")),
        "{stderr}"
    );
}

#[test]
fn unknown_field() {
    let text = policy("p", "a", &GOOD_BODY.replace("egress:", "egres:"));
    let (file, stderr) = run_with("unknown-field", &text);
    assert!(
        stderr.contains(&format!("{file}:8:3: spec: unknown field `egres`")),
        "{stderr}"
    );
}

#[test]
fn bad_cidr() {
    let text = policy("p", "a", &GOOD_BODY.replace("10.0.0.0/8", "10.0.0.0/40"));
    let (file, stderr) = run_with("bad-cidr", &text);
    assert!(
        stderr.contains(&format!(
            "{file}:10:15: spec.egress.allow[0].cidr: invalid CIDR \"10.0.0.0/40\""
        )),
        "{stderr}"
    );
}

#[test]
fn policy_check_reports_the_same_position() {
    let dir = TempDir::new("check");
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        policy("p", "a", &GOOD_BODY.replace("10.0.0.0/8", "nonsense")),
    )
    .unwrap();
    let output = baton(&["policy", "check", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:10:15: spec.egress.allow[0].cidr: invalid CIDR",
            file.display()
        )),
        "{stderr}"
    );

    std::fs::write(&file, policy("p", "a", GOOD_BODY)).unwrap();
    let output = baton(&["policy", "check", file.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

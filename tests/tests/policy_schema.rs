//! The committed JSON Schema of the policy format is the one the Rust types
//! generate, and the policies Baton ships are valid against it.

use std::path::Path;

use baton_tests::baton;

fn committed_schema() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(baton::policy::schema::SCHEMA_PATH);
    std::fs::read_to_string(&path).unwrap_or_default()
}

#[test]
fn committed_schema_is_up_to_date() {
    let generated = baton::policy::schema::schema_text();
    assert!(
        committed_schema() == generated,
        "{} is not what the policy types generate: run \
         `target/debug/baton policy schema > policies/agentpolicy.schema.json`",
        baton::policy::schema::SCHEMA_PATH
    );
}

#[test]
fn baton_policy_schema_prints_it() {
    let output = baton(&["policy", "schema"]);
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, baton::policy::schema::schema_text());
    let schema: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["title"], "Baton AgentPolicy");
}

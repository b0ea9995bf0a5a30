//! The JSON Schema of a policy document, generated from the Rust types.
//!
//! `policies/agentpolicy.schema.json` is this schema as `baton policy schema`
//! prints it; a test fails when the two differ. Editors use it to complete
//! and check policies, and the Kubernetes CustomResourceDefinition is
//! generated from it, so it keeps to plain draft-07 keywords.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};

use super::domain::DomainPattern;
use super::spec::AgentPolicyDocument;

/// Where the generated schema is kept, relative to the workspace root.
pub const SCHEMA_PATH: &str = "policies/agentpolicy.schema.json";

/// The schema of one policy document (`kind: AgentPolicy`), draft-07, with
/// shared types under `definitions`.
pub fn schema() -> serde_json::Value {
    let generator = SchemaGenerator::new(SchemaSettings::draft07());
    let mut schema = generator.into_root_schema_for::<AgentPolicyDocument>();
    schema.insert("title".into(), "Baton AgentPolicy".into());
    sorted(schema.to_value())
}

/// `value` with the keys of every object in order, whatever the order
/// serde_json keeps (another crate in the build may turn on
/// `preserve_order`): the committed file must not depend on it.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// [`schema`] as the exact text of the committed file: pretty-printed JSON
/// and a final newline.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}

impl JsonSchema for DomainPattern {
    fn schema_name() -> Cow<'static, str> {
        "DomainPattern".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^(\*\.)?([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?$",
            "description": "A domain name (`api.example.com`: that name only) or a wildcard \
                            (`*.example.com`: any name at least one label below example.com, \
                            not example.com itself), resolved through Baton's DNS proxy. \
                            Case does not matter; not an IP address.",
            "examples": ["api.example.com", "*.example.com"],
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn definition<'a>(schema: &'a Value, name: &str) -> &'a Value {
        &schema["definitions"][name]
    }

    #[test]
    fn documents_the_policy_format() {
        let schema = schema();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(schema["additionalProperties"], false);
        let spec = definition(&schema, "PolicySpec");
        assert_eq!(spec["required"], serde_json::json!(["selector"]));
        assert!(
            spec["properties"]["mode"]["default"] == "enforce",
            "{spec:#}"
        );
        let selector = definition(&schema, "Selector");
        assert!(selector["properties"]["systemdUnits"].is_object());
        assert!(selector.get("required").is_none(), "{selector:#}");
        let rule = definition(&schema, "EgressRule");
        assert_eq!(rule["oneOf"][0]["required"][0], "cidr");
    }

    #[test]
    fn patterns_agree_with_the_parsers() {
        let schema = schema();
        let pattern = |name: &str| {
            let text = definition(&schema, name)["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no pattern"))
                .to_string();
            regex::Regex::new(&text).unwrap()
        };
        let name = pattern("Name");
        assert!(name.is_match("demo-1") && !name.is_match("Demo") && !name.is_match("-x"));
        let unit = pattern("UnitName");
        for good in ["coder.service", "agents.slice/coder.service", "a@b.scope"] {
            assert!(unit.is_match(good), "{good}");
            assert!(super::super::spec::UnitName::parse(good).is_ok(), "{good}");
        }
        for bad in ["coder", "/x.service", ".service"] {
            assert!(!unit.is_match(bad), "{bad}");
        }
        let domain = pattern("DomainPattern");
        for good in ["api.example.com", "*.example.com", "x."] {
            assert!(domain.is_match(good), "{good}");
            assert!(DomainPattern::parse(good).is_ok(), "{good}");
        }
        assert!(!domain.is_match("a..b") && !domain.is_match("*"));
        let cgroup = pattern("CgroupPath");
        assert!(cgroup.is_match("/agents/coder") && !cgroup.is_match("/") && !cgroup.is_match("x"));
        let cidr = pattern("Cidr");
        assert!(cidr.is_match("10.0.0.0/8") && cidr.is_match("::ffff:127.0.0.1"));
        assert!(!cidr.is_match("example.com"));
    }
}

//! Reading policy files, with errors that name file, line and column.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use super::spec::AgentPolicyDocument;

/// A position in a policy file, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// Everything that can be wrong with a policy set.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A file is not a valid policy.
    #[error("{}", format_invalid(path, position, message))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where, when known.
        position: Option<Position>,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no policy.
    #[error("{0}: no policy files (*.yaml, *.yml) found")]
    Empty(PathBuf),
}

fn format_invalid(path: &Path, position: &Option<Position>, message: &str) -> String {
    match position {
        Some(p) => format!("{}:{}:{}: {message}", path.display(), p.line, p.column),
        None => format!("{}: {message}", path.display()),
    }
}

impl PolicyError {
    fn invalid(path: &Path, position: Option<Position>, message: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            position,
            message: message.to_string(),
        }
    }
}

/// Where `value` is written under the key `key` in the policy file
/// `source`, for errors found after parsing (which keeps no positions).
/// `None` when the file cannot be read (a policy from a bundle or a URL)
/// or the text is not found as written.
pub fn locate(source: &Path, key: &str, value: &str) -> Option<Position> {
    let text = std::fs::read_to_string(source).ok()?;
    let key = format!("{key}:");
    let mut after_key = false;
    for (index, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line);
        let mut from = 0;
        if !after_key {
            let Some(at) = code.find(&key) else {
                continue;
            };
            after_key = true;
            from = at + key.len();
        }
        if let Some(at) = code[from..].find(value) {
            return Some(Position {
                line: index + 1,
                column: code[..from + at].chars().count() + 1,
            });
        }
    }
    None
}

/// `file:line:column` of `value` under `key` in `source`, or the file
/// alone when the position cannot be found.
pub fn place(source: &Path, key: &str, value: &str) -> String {
    match locate(source, key, value) {
        Some(p) => format!("{}:{}:{}", source.display(), p.line, p.column),
        None => source.display().to_string(),
    }
}

/// One policy document and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    /// File the document was read from.
    pub source: PathBuf,
    /// The document.
    pub document: AgentPolicyDocument,
}

/// Strips serde_norway's own " at line L column C" suffix: the position is
/// printed in front instead, in the `file:line:column:` form editors read.
fn message_without_position(error: &serde_norway::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) if error.location().is_some() => text[..at].to_string(),
        _ => text,
    }
}

fn position_of(error: &serde_norway::Error) -> Option<Position> {
    error.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    })
}

/// Parses every YAML document in `text`; `path` is only used in errors.
pub fn parse_str(path: &Path, text: &str) -> Result<Vec<LoadedPolicy>, PolicyError> {
    // A generic pass finds syntax errors and empty documents (a stray `---`);
    // the typed pass then reads from the text again, so its errors keep
    // their positions in the file.
    let mut empty = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_norway::Value::deserialize(document).map_err(|error| {
            PolicyError::invalid(path, position_of(&error), message_without_position(&error))
        })?;
        empty.push(value.is_null());
    }
    let mut policies = Vec::new();
    for (document, is_empty) in serde_norway::Deserializer::from_str(text).zip(empty) {
        if is_empty {
            continue;
        }
        let document = AgentPolicyDocument::deserialize(document).map_err(|error| {
            PolicyError::invalid(path, position_of(&error), message_without_position(&error))
        })?;
        policies.push(LoadedPolicy {
            source: path.to_path_buf(),
            document,
        });
    }
    Ok(policies)
}

/// Reads the given files.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<LoadedPolicy>, PolicyError> {
    let mut policies = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        policies.extend(parse_str(path, &text)?);
    }
    check_unique_names(&policies)?;
    Ok(policies)
}

/// Reads every `*.yaml` and `*.yml` file in `dir`, in name order. Hidden
/// files are skipped.
pub fn load_dir(dir: &Path) -> Result<Vec<LoadedPolicy>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_path_buf()));
    }
    load_files(&files)
}

fn check_unique_names(policies: &[LoadedPolicy]) -> Result<(), PolicyError> {
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for policy in policies {
        let name = policy.document.metadata.name.as_str();
        if let Some(first) = seen.insert(name, &policy.source) {
            return Err(PolicyError::invalid(
                &policy.source,
                None,
                format!(
                    "policy name {name:?} is already used in {}",
                    first.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: demo
spec:
  selector:
    agent: demo
  egress:
    allow:
      - cidr: 127.0.0.1
        ports: [80, \"1000-2000\"]
";

    fn error_of(text: &str) -> String {
        parse_str(Path::new("p.yaml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_good_policy() {
        let policies = parse_str(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(policies.len(), 1);
        let egress = policies[0].document.spec.egress.as_ref().unwrap();
        assert_eq!(egress.allow[0].ports.len(), 2);
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let text = format!(
            "---\n{GOOD}---\n{}",
            GOOD.replace("name: demo", "name: other")
        );
        assert_eq!(parse_str(Path::new("p.yaml"), &text).unwrap().len(), 2);
    }

    #[test]
    fn bad_yaml_has_a_position() {
        let error = error_of("apiVersion: [unclosed\n");
        assert!(error.starts_with("p.yaml:"), "{error}");
        assert!(error.matches(':').count() >= 3, "{error}");
    }

    #[test]
    fn unknown_field_has_a_position() {
        let error = error_of(&GOOD.replace("  egress:", "  egres:"));
        assert!(
            error.starts_with("p.yaml:8:3: spec: unknown field `egres`"),
            "{error}"
        );
    }

    #[test]
    fn bad_cidr_has_a_position() {
        let error = error_of(&GOOD.replace("127.0.0.1", "127.0.0.300"));
        assert!(
            error.starts_with("p.yaml:10:15: spec.egress.allow[0].cidr: invalid CIDR"),
            "{error}"
        );
    }

    #[test]
    fn bad_port_has_a_position() {
        let error = error_of(&GOOD.replace("[80,", "[80000,"));
        assert!(
            error.starts_with("p.yaml:11:17: spec.egress.allow[0].ports[0]: invalid port 80000"),
            "{error}"
        );
    }

    #[test]
    fn after_secret_is_quarantine_or_addresses_with_a_position() {
        let error = error_of(&format!("{GOOD}    afterSecret: lockdown\n"));
        assert!(
            error.starts_with(
                "p.yaml:12:18: spec.egress.afterSecret: unknown afterSecret `lockdown`"
            ),
            "{error}"
        );
        let error = error_of(&format!(
            "{GOOD}    afterSecret:\n      allow:\n        - domain: api.example.com\n"
        ));
        assert!(error.starts_with("p.yaml:13:"), "{error}");
        assert!(
            error.contains("afterSecret allows addresses only"),
            "{error}"
        );
        let parsed = parse_str(
            Path::new("p.yaml"),
            &format!("{GOOD}    afterSecret: quarantine\n"),
        )
        .unwrap();
        let egress = parsed[0].document.spec.egress.as_ref().unwrap();
        assert!(egress.after_secret.as_ref().unwrap().allow.is_empty());
    }

    #[test]
    fn bad_breaker_actions_are_errors() {
        let error = error_of(&format!(
            "{GOOD}  breakers:\n    - name: b\n      when: {{canary: true}}\n      action: explode\n"
        ));
        assert!(error.contains("unknown variant `explode`"), "{error}");
    }
}

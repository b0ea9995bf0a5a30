//! Daemon configuration: an optional YAML file, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Default configuration file; read when present.
pub const DEFAULT_CONFIG: &str = "/etc/baton/config.yaml";
/// Default audit log.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/baton/audit.jsonl";
/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/baton/baton.sock";

/// Errors reading the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// The configuration file's contents; every key is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Directory of policy files.
    pub policy_dir: Option<PathBuf>,
    /// Audit log file.
    pub audit_log: Option<PathBuf>,
    /// Control socket path.
    pub control_socket: Option<PathBuf>,
    /// Pin directory in bpffs [default: /sys/fs/bpf/baton].
    pub pin_dir: Option<PathBuf>,
    /// State directory [default: /run/baton].
    pub state_dir: Option<PathBuf>,
    /// The DNS proxy that enforces domain rules.
    #[serde(default)]
    pub dns: crate::egress::service::DnsConfig,
    /// The audit trail: rotation, checkpoints, signing key, redaction, live
    /// stream, forwarders.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// The metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where policies come from besides `policyDir`: an HTTP(S) bundle
    /// server, and whether bundles must be signed.
    #[serde(default)]
    pub policy_sources: crate::policy::source::PolicySourcesConfig,
    /// File and exec enforcement where BPF LSM is unavailable.
    #[serde(default)]
    pub files: FilesConfig,
    /// The control socket's connection limits.
    #[serde(default)]
    pub control: crate::control::budget::ControlConfig,
}

/// `files:` in the configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilesConfig {
    /// Whether to use the fanotify fallback where BPF LSM is unavailable
    /// [default: true]. With `false`, agents selected by cgroup, unit or
    /// executable have their opens and execs only detected (and killed,
    /// with `onDetect: kill`), not denied; for hosts where every open of a
    /// watched mount waiting for the daemon costs too much.
    pub fanotify: Option<bool>,
    /// Whether to record the denials Landlock makes for `baton exec` agents
    /// where BPF LSM is unavailable [default: true]. Landlock reports them
    /// through the kernel's audit subsystem (Linux 6.15+), which the daemon
    /// switches on if it is off (no audit rule is loaded; without `auditd`
    /// the kernel also prints the records to its log, rate-limited). With
    /// `false`, those denials are enforced but not recorded.
    pub landlock_audit: Option<bool>,
    /// Whether the fanotify fallback watches a denied folder through its
    /// whole mount [default: false]. By default each folder and file in it
    /// is marked (up to 4,096 in all; bigger trees are watched through
    /// their mount anyway), so opens elsewhere never wait for the daemon,
    /// and a folder made in it later is marked within about a millisecond,
    /// in which a file in it is not seen. With `true`, no such moment, and
    /// every open on that mount, by any process, waits for the daemon.
    pub fanotify_whole_mounts: Option<bool>,
}

/// `metrics:` in the configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:9464].
    pub address: Option<std::net::SocketAddr>,
}

/// The configuration file the daemon reads, for error locations.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map_or_else(|| DEFAULT_CONFIG.into(), Path::to_path_buf)
}

impl Config {
    /// Reads `path`; a missing default file is an empty configuration, a
    /// missing file named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(&text).map_err(|error| {
            let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
            let message = error.to_string();
            let message = match message.rfind(" at line ") {
                Some(at) => message[..at].to_string(),
                None => message,
            };
            let (line, column) = refine_location(&text, line, column, &message);
            ConfigError::Invalid {
                path,
                line,
                column,
                message,
            }
        })
    }
}

/// The parser places an error in a list at the list's start; for a bad
/// redaction pattern, whose message quotes it, the pattern's own line and
/// column are more use. Unchanged when the text cannot be found.
fn refine_location(text: &str, line: usize, column: usize, message: &str) -> (usize, usize) {
    const MARKER: &str = "invalid regular expression \"";
    let Some(start) = message.find(MARKER).map(|at| at + MARKER.len()) else {
        return (line, column);
    };
    let Some(quoted) = message[start..]
        .rfind("\": ")
        .map(|end| &message[start..start + end])
    else {
        return (line, column);
    };
    // The message quotes Rust-style (`\\` for `\`), as a YAML double-quoted
    // string does; plain and single-quoted YAML write a single `\`.
    let from: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>()
        + column.saturating_sub(1);
    let Some(rest) = text.get(from..) else {
        return (line, column);
    };
    let candidates = [quoted.to_string(), quoted.replace("\\\\", "\\")];
    let Some(at) = candidates
        .iter()
        .filter_map(|c| rest.find(c.as_str()))
        .min()
    else {
        return (line, column);
    };
    let before = &text[..from + at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_redaction_pattern_is_named_at_its_own_line_and_column() {
        let dir = std::env::temp_dir().join(format!("baton-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "audit:\n  redaction:\n    patterns:\n      - 'corp-\\d{8}'\n      - 'ok-(\\d+'\n",
        )
        .unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        let want = format!("{}:5:10: ", path.display());
        assert!(error.starts_with(&want), "{error}");
        assert!(error.contains("invalid regular expression"), "{error}");
        assert!(error.contains("unclosed group"), "{error}");
    }
}

//! `audit:` in the configuration file.
//!
//! ```yaml
//! audit:
//!   eventsPerSecond: 1000
//!   rotation: { maxBytes: 104857600, maxAgeSeconds: 86400, keepFiles: 0 }
//!   checkpoints: { everyRecords: 1000, everySeconds: 60 }
//!   keyFile: /var/lib/baton/audit.key
//!   stateDir: /var/lib/baton
//!   redaction: { defaults: true, patterns: ["corp-[0-9]{8}"] }
//!   spool: { memoryBytes: 16777216, directory: /var/spool/baton, directoryBytes: 268435456 }
//!   stream: { group: baton }
//!   forwarders:
//!     - name: siem
//!       http:
//!         url: http://127.0.0.1:8088/ingest
//!         headers: { Authorization: "Bearer ..." }
//!     - name: rsyslog
//!       syslog: { address: "127.0.0.1:514", protocol: tcp }
//! ```

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::{AuditError, redact::Redactor};

/// Default signing key file.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/baton/audit.key";
/// Default directory for forwarder cursors.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/baton";

/// The `audit:` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AuditConfig {
    /// Kernel events each agent may send per second (a token bucket that
    /// holds one second's worth); decisions beyond it are still enforced
    /// and counted, and the daemon records how many were left out. 0 is
    /// unlimited [default: 1000].
    #[serde(alias = "events_per_second")]
    pub events_per_second: u32,
    /// When the active file is rotated.
    pub rotation: RotationConfig,
    /// When signed checkpoints are written.
    pub checkpoints: CheckpointConfig,
    /// ed25519 signing key, PKCS#8 PEM; generated (mode 0600) when absent.
    pub key_file: PathBuf,
    /// Where forwarders keep their cursors (`forwarders/NAME.cursor`).
    pub state_dir: PathBuf,
    /// Secrets removed before anything is written.
    pub redaction: RedactionConfig,
    /// Where records wait while the log cannot be written.
    pub spool: SpoolConfig,
    /// Who may follow the live stream.
    pub stream: StreamConfig,
    /// Copies of the log sent elsewhere.
    pub forwarders: Vec<ForwarderConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            events_per_second: agent_common::identity::DEFAULT_EVENTS_PER_SECOND,
            rotation: RotationConfig::default(),
            checkpoints: CheckpointConfig::default(),
            key_file: DEFAULT_KEY_FILE.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            redaction: RedactionConfig::default(),
            spool: SpoolConfig::default(),
            stream: StreamConfig::default(),
            forwarders: Vec::new(),
        }
    }
}

/// `audit.rotation`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RotationConfig {
    /// Rotate before a record would take the active file past this size;
    /// 0 never rotates by size [default: 100 MiB].
    pub max_bytes: u64,
    /// Rotate at the first record written once the active file's first
    /// record is this old; 0 never rotates by age [default: 86400].
    pub max_age_seconds: u64,
    /// Rotated files kept; older ones are deleted. 0 keeps every file
    /// [default: 0].
    pub keep_files: usize,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            max_age_seconds: 86_400,
            keep_files: 0,
        }
    }
}

/// `audit.checkpoints`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CheckpointConfig {
    /// Write a checkpoint after this many records; 0 disables
    /// [default: 1000].
    pub every_records: u64,
    /// Write a checkpoint when records have waited this long for one; 0
    /// disables [default: 60].
    pub every_seconds: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_records: 1000,
            every_seconds: 60,
        }
    }
}

/// `audit.redaction`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RedactionConfig {
    /// Apply the built-in patterns (bearer tokens, `token=`, `password=`,
    /// URL credentials, AWS, GitHub, `sk-` keys, ...) [default: true].
    pub defaults: bool,
    /// More patterns (Rust `regex` syntax). A group named `secret`, when
    /// present, is what gets replaced; otherwise the whole match.
    pub patterns: Vec<RedactPattern>,
}

/// One operator pattern of `audit.redaction.patterns`, compiled when the
/// configuration is read so that a bad one is reported at its line and
/// column in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedactPattern(pub String);

impl RedactPattern {
    /// The pattern's source text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RedactPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        regex::Regex::new(&source).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid regular expression {source:?}: {}",
                regex_reason(&e)
            ))
        })?;
        Ok(Self(source))
    }
}

/// The regex compiler's reason on one line: its own message spreads the
/// pattern, a caret and the reason over several.
pub(crate) fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map_or(text.clone(), |line| {
            line.trim().trim_start_matches("error: ").to_string()
        })
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            defaults: true,
            patterns: Vec::new(),
        }
    }
}

/// `audit.spool`: where records wait while the log cannot be written (a
/// full disk, say), in order, until it can.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SpoolConfig {
    /// Bytes of records held in memory [default: 16 MiB]. One record is
    /// always held, whatever the size.
    pub memory_bytes: u64,
    /// A directory, on another file system than the log, for records
    /// beyond `memoryBytes` [default: none].
    pub directory: Option<PathBuf>,
    /// Bytes of records held in `directory` [default: 256 MiB].
    pub directory_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 16 * 1024 * 1024,
            directory: None,
            directory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `audit.stream`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StreamConfig {
    /// Members of this group may follow the live stream besides root.
    pub group: Option<String>,
}

/// One forwarder: a name (for its cursor) and exactly one destination.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwarderConfig {
    /// Unique name; names the cursor file.
    pub name: String,
    /// Batched NDJSON over HTTP POST.
    pub http: Option<HttpConfig>,
    /// RFC 5424 syslog.
    pub syslog: Option<SyslogConfig>,
    /// First wait after a failed delivery, in milliseconds [default: 200].
    pub min_backoff_ms: Option<u64>,
    /// Longest wait between retries, in milliseconds [default: 30000].
    pub max_backoff_ms: Option<u64>,
    /// Where to start when there is no cursor yet: `beginning` (of the
    /// oldest file kept) or `end` (records written from now on)
    /// [default: beginning].
    #[serde(default)]
    pub start_at: StartAt,
}

/// Where a forwarder without a cursor starts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StartAt {
    /// The oldest record kept.
    #[default]
    Beginning,
    /// The next record written.
    End,
}

/// `http:` of a forwarder.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// Extra request headers, such as a token.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Records per request at most [default: 500].
    pub batch_size: Option<usize>,
    /// Request timeout in milliseconds [default: 10000].
    pub timeout_ms: Option<u64>,
}

/// `syslog:` of a forwarder.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyslogConfig {
    /// Receiver `address:port`.
    pub address: SocketAddr,
    /// `tcp` (RFC 6587 octet-counted framing) or `udp` [default: tcp].
    #[serde(default)]
    pub protocol: SyslogProtocol,
    /// Facility name (`authpriv`, `auth`, `daemon`, `local0`..`local7`, ...)
    /// [default: authpriv].
    pub facility: Option<String>,
    /// APP-NAME [default: baton].
    pub app_name: Option<String>,
}

/// Transport of a syslog forwarder.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    /// TCP with octet-counted framing.
    #[default]
    Tcp,
    /// One datagram per record; no delivery guarantee.
    Udp,
}

impl RedactionConfig {
    /// The operator patterns' source texts.
    pub fn pattern_sources(&self) -> Vec<String> {
        self.patterns.iter().map(|p| p.0.clone()).collect()
    }
}

impl AuditConfig {
    /// Checks what serde cannot: patterns compile, forwarders are unique
    /// and name one destination each, facilities exist, URLs are HTTP.
    pub fn validate(&self) -> Result<(), AuditError> {
        let invalid = |field: String, message: String| AuditError::Config { field, message };
        Redactor::new(self.redaction.defaults, &self.redaction.pattern_sources()).map_err(|e| {
            invalid(
                format!("audit.redaction.patterns[{}]", e.index),
                format!("invalid regular expression: {}", e.message),
            )
        })?;
        let mut names = std::collections::BTreeSet::new();
        for (i, forwarder) in self.forwarders.iter().enumerate() {
            let field = |name: &str| format!("audit.forwarders[{i}].{name}");
            let valid_name = !forwarder.name.is_empty()
                && forwarder
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !forwarder.name.starts_with('.');
            if !valid_name {
                return Err(invalid(
                    field("name"),
                    format!(
                        "{:?} must be letters, digits, '-', '_' or '.' (it names a file)",
                        forwarder.name
                    ),
                ));
            }
            if !names.insert(forwarder.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is used by another forwarder", forwarder.name),
                ));
            }
            match (&forwarder.http, &forwarder.syslog) {
                (Some(http), None) => {
                    if !(http.url.starts_with("http://") || http.url.starts_with("https://")) {
                        return Err(invalid(
                            field("http.url"),
                            format!("{:?} is not an http:// or https:// URL", http.url),
                        ));
                    }
                    if http.batch_size == Some(0) {
                        return Err(invalid(
                            field("http.batchSize"),
                            "must be at least 1".into(),
                        ));
                    }
                }
                (None, Some(syslog)) => {
                    let facility = syslog.facility.as_deref().unwrap_or("authpriv");
                    if facility_code(facility).is_none() {
                        return Err(invalid(
                            field("syslog.facility"),
                            format!("unknown facility {facility:?}"),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("audit.forwarders[{i}]"),
                        "give exactly one of `http` and `syslog`".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The facility number of a facility name.
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        "ntp" => 12,
        "audit" => 13,
        "alert" => 14,
        "clock" => 15,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camel_case_and_rejects_unknown_keys() {
        let text = "rotation: { maxBytes: 10 }\ncheckpoints: { everyRecords: 5 }\nforwarders:\n  - name: a\n    http: { url: \"http://127.0.0.1:1/\", headers: { X-Token: t } }\n";
        let config: AuditConfig = serde_norway::from_str(text).unwrap();
        assert_eq!(config.rotation.max_bytes, 10);
        assert_eq!(config.rotation.max_age_seconds, 86_400);
        assert_eq!(config.checkpoints.every_records, 5);
        assert_eq!(
            config.forwarders[0].http.as_ref().unwrap().headers["X-Token"],
            "t"
        );
        config.validate().unwrap();
        assert!(serde_norway::from_str::<AuditConfig>("rotaton: {}").is_err());
        assert_eq!(config.events_per_second, 1000);
        let config: AuditConfig = serde_norway::from_str("eventsPerSecond: 20").unwrap();
        assert_eq!(config.events_per_second, 20);
    }

    #[test]
    fn event_rate_defaults_to_the_kernel_default_and_zero_lifts_it() {
        let config: AuditConfig = serde_norway::from_str("rotation: {}").unwrap();
        assert_eq!(config.events_per_second, 1000);
        let config: AuditConfig = serde_norway::from_str("eventsPerSecond: 250000").unwrap();
        assert_eq!(config.events_per_second, 250_000);
        let config: AuditConfig = serde_norway::from_str("eventsPerSecond: 0").unwrap();
        assert_eq!(config.events_per_second, 0);
        config.validate().unwrap();
        assert!(serde_norway::from_str::<AuditConfig>("eventsPerSecond: -1").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = AuditConfig::default();
        config.redaction.patterns = vec![RedactPattern("(".into())];
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("audit.redaction.patterns[0]: invalid regular expression"),
            "{error}"
        );
        let config: AuditConfig = serde_norway::from_str(
            "forwarders:\n  - name: a\n  - name: b\n    syslog: { address: \"127.0.0.1:514\", facility: nope }\n",
        )
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("exactly one of"), "{error}");
    }

    #[test]
    fn a_bad_redaction_pattern_is_refused_where_it_is_written() {
        let error = serde_norway::from_str::<AuditConfig>(
            "redaction:\n  patterns:\n    - \"corp-[0-9]{8}\"\n    - \"(unclosed\"\n",
        )
        .unwrap_err();
        // The parser places it at the list; `Config::load` finds the item.
        assert!(error.location().is_some(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("invalid regular expression \"(unclosed\": unclosed group"),
            "{message}"
        );
        let config: AuditConfig =
            serde_norway::from_str("redaction:\n  patterns: [\"corp-[0-9]{8}\"]\n").unwrap();
        assert_eq!(config.redaction.patterns[0].as_str(), "corp-[0-9]{8}");
    }
}

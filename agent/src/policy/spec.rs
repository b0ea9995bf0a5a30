//! The policy format: Kubernetes-style YAML, one `AgentPolicy` per document.
//!
//! ```yaml
//! apiVersion: baton.dev/v1alpha1
//! kind: AgentPolicy
//! metadata:
//!   name: demo
//! spec:
//!   selector:
//!     agent: demo
//!   mode: enforce
//!   egress:
//!     default: deny
//!     allow:
//!       - cidr: 127.0.0.1/32
//!         ports: [8080, "9000-9100"]
//!         protocol: tcp
//!   files:
//!     deny:
//!       - /etc/shadow
//! ```
//!
//! Every struct rejects unknown fields: a misspelt key is an error with its
//! line and column, never a silently ignored rule. Values are checked while
//! they are read (CIDRs, ports, paths), so their errors carry a position too.

use std::{borrow::Cow, fmt, net::IpAddr};

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::domain::DomainPattern;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, Visitor},
};

/// The only API version so far.
pub const API_VERSION: &str = "baton.dev/v1alpha1";

/// `apiVersion`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum ApiVersion {
    /// `baton.dev/v1alpha1`.
    #[serde(rename = "baton.dev/v1alpha1")]
    V1alpha1,
}

/// `kind`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
pub enum Kind {
    /// The only kind.
    AgentPolicy,
}

/// One policy document.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentPolicyDocument {
    /// Schema version.
    pub api_version: ApiVersion,
    /// Always `AgentPolicy`.
    pub kind: Kind,
    /// Name and labels.
    pub metadata: Metadata,
    /// What the policy selects and enforces.
    pub spec: PolicySpec,
}

/// `metadata`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique policy name; audit records cite it.
    pub name: Name,
    /// Free-form labels, kept for tooling.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `spec`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Which processes are the agent.
    pub selector: Selector,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// Where the agent may connect.
    #[serde(default)]
    pub egress: Option<EgressSpec>,
    /// Which files the agent may touch.
    #[serde(default)]
    pub files: Option<FilesSpec>,
    /// Which programs the agent may run (and map executable).
    #[serde(default)]
    pub exec: Option<ExecSpec>,
    /// Rate and size limits, enforced in the kernel.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// How the agent's processes are started and what they may do to their
    /// own environment.
    #[serde(default)]
    pub process: Option<ProcessSpec>,
    /// Circuit breakers: conditions over the agent's kernel counters that
    /// quarantine, freeze or kill it.
    #[serde(default)]
    pub breakers: Vec<BreakerSpec>,
    /// How a denied process learns why: `stderr` writes one line to its
    /// standard error (through its own open pipe, socket or terminal,
    /// never a file); `none` says nothing. Unset: `stderr` for processes
    /// `baton exec` started, `none` for the others.
    #[serde(default)]
    pub explain: Option<Explain>,
}

/// `spec.explain`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Explain {
    /// One line on the denied process's standard error, rate-limited.
    Stderr,
    /// Nothing.
    None,
}

/// `spec.selector`: which processes are the agent. Any combination of the
/// fields may be given; at least one must be.
///
/// A process belongs to at most one agent, and once admitted it never
/// changes agent. The first admission wins: `baton exec` admits before the
/// command runs; otherwise, at exec, a selected executable wins over a
/// selected cgroup; a process already in a selected cgroup when the daemon
/// starts is admitted then.
#[derive(Clone, Debug, Deserialize, Serialize, Default, JsonSchema)]
#[serde(try_from = "RawSelector", rename_all = "camelCase")]
// The schema describes the fields as written, which `RawSelector` reads.
#[schemars(!try_from, default, deny_unknown_fields, extend("minProperties" = 1))]
pub struct Selector {
    /// Agent name, as given to `baton exec --agent NAME`; when absent the
    /// agent is named after the policy.
    pub agent: Option<Name>,
    /// cgroup v2 paths, relative to the cgroup v2 mount (`/agents/coder`);
    /// every process in the cgroup or below it is the agent.
    pub cgroups: Vec<CgroupPath>,
    /// systemd units (`coder.service`, or `agents.slice/coder.service` for a
    /// unit outside `system.slice`); selected through their cgroup.
    pub systemd_units: Vec<UnitName>,
    /// Executables: a process that execs one of these files becomes the
    /// agent. Matched on the file's device and inode, not its name.
    pub executables: Vec<AbsolutePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    agent: Option<Name>,
    #[serde(default)]
    cgroups: Vec<CgroupPath>,
    #[serde(default)]
    systemd_units: Vec<UnitName>,
    #[serde(default)]
    executables: Vec<AbsolutePath>,
}

impl TryFrom<RawSelector> for Selector {
    type Error = String;

    fn try_from(raw: RawSelector) -> Result<Self, String> {
        if raw.agent.is_none()
            && raw.cgroups.is_empty()
            && raw.systemd_units.is_empty()
            && raw.executables.is_empty()
        {
            return Err(
                "a selector needs at least one of agent, cgroups, systemdUnits, executables".into(),
            );
        }
        Ok(Self {
            agent: raw.agent,
            cgroups: raw.cgroups,
            systemd_units: raw.systemd_units,
            executables: raw.executables,
        })
    }
}

/// A cgroup v2 path, relative to the cgroup v2 mount, written with a leading
/// `/` (`/agents/coder`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct CgroupPath(pub String);

impl CgroupPath {
    /// Validates a cgroup path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let path = AbsolutePath::parse(s)
            .map_err(|e| e.replacen("invalid path", "invalid cgroup path", 1))?;
        if path.0 == "/" {
            return Err("invalid cgroup path \"/\": selecting the root cgroup would make every process an agent".into());
        }
        Ok(Self(path.0))
    }
}

impl<'de> Deserialize<'de> for CgroupPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "a cgroup path such as /agents/coder",
            Self::parse,
        )
    }
}

/// A systemd unit name, optionally inside a slice.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct UnitName(pub String);

impl UnitName {
    /// Validates a unit name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let unit = s.rsplit('/').next().unwrap_or(s);
        let valid_suffix = [".service", ".scope", ".slice"]
            .iter()
            .any(|suffix| unit.ends_with(suffix) && unit.len() > suffix.len());
        let valid_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\/".contains(&b));
        if !valid_suffix || !valid_chars || s.starts_with('/') || s.contains("..") {
            return Err(format!(
                "invalid systemd unit {s:?}: expected a name such as coder.service or agents.slice/coder.service"
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The unit's cgroup path relative to the cgroup v2 mount: units are
    /// under `system.slice` unless a slice is given.
    pub fn cgroup_path(&self) -> String {
        if self.0.contains('/') {
            format!("/{}", self.0)
        } else {
            format!("/system.slice/{}", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "a systemd unit name such as coder.service",
            Self::parse,
        )
    }
}

/// `spec.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what the policy denies.
    #[default]
    Enforce,
    /// Decide and record, never deny.
    Audit,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// `spec.egress`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Decision when no rule matches; `deny` unless set.
    #[serde(default = "default_deny")]
    pub default: Action,
    /// Destinations the agent may reach.
    #[serde(default)]
    pub allow: Vec<EgressRule>,
    /// Destinations the agent may not reach.
    #[serde(default)]
    pub deny: Vec<EgressRule>,
    /// Whether the agent may open ICMP ("ping") sockets; `deny` unless set.
    /// Raw and packet sockets are always denied to agents.
    #[serde(default = "default_deny")]
    pub icmp: Action,
    /// Socket families the agent may create besides `unix`, `inet`, `inet6`
    /// and `netlink`, which it always may (`[vsock]`). `packet` is never
    /// allowed.
    #[serde(default)]
    pub families: Vec<SocketFamily>,
    /// What the agent may still reach once any of its processes has opened
    /// one of its `files.secrets`: `quarantine` (nothing), or `{allow:
    /// [...]}`, addresses and ports as in `allow`. It narrows: a
    /// destination must be allowed by the rules above too. `quarantine`
    /// unless set, when the policy lists secrets.
    #[serde(default, rename = "afterSecret")]
    pub after_secret: Option<AfterSecret>,
}

/// `spec.egress.afterSecret`: the egress left to an agent that opened a
/// secret.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AfterSecret {
    /// Destinations still allowed; none for `quarantine`.
    pub allow: Vec<EgressRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfterSecret {
    #[serde(default)]
    allow: Vec<EgressRule>,
}

impl<'de> Deserialize<'de> for AfterSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AfterSecretVisitor;
        impl<'de> Visitor<'de> for AfterSecretVisitor {
            type Value = AfterSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`quarantine`, or a map with an allow list")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AfterSecret, E> {
                if v == "quarantine" {
                    Ok(AfterSecret::default())
                } else {
                    Err(E::custom(format!(
                        "unknown afterSecret `{v}`: expected `quarantine` or {{allow: [...]}}"
                    )))
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AfterSecret, A::Error> {
                let raw = RawAfterSecret::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if let Some(rule) = raw
                    .allow
                    .iter()
                    .find(|rule| matches!(rule.target, EgressTarget::Domain(_)))
                {
                    let EgressTarget::Domain(name) = &rule.target else {
                        unreachable!("found by its target");
                    };
                    return Err(de::Error::custom(format!(
                        "afterSecret allows addresses only: `{name}` is a name; write the \
                         addresses it stands for as cidr rules"
                    )));
                }
                Ok(AfterSecret { allow: raw.allow })
            }
        }
        deserializer.deserialize_any(AfterSecretVisitor)
    }
}

impl JsonSchema for AfterSecret {
    fn schema_name() -> Cow<'static, str> {
        "AfterSecret".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let rule = generator.subschema_for::<EgressRule>();
        json_schema!({
            "description": "The egress left to an agent once it has opened one of its secrets: \
                            `quarantine` (nothing), or the addresses still allowed.",
            "anyOf": [
                { "type": "string", "const": "quarantine" },
                {
                    "type": "object",
                    "properties": {
                        "allow": {
                            "description": "Destinations still allowed (cidr rules); they \
                                            must be allowed by the egress rules too.",
                            "type": "array",
                            "items": rule,
                        },
                    },
                    "additionalProperties": false,
                },
            ],
        })
    }
}

/// A socket address family by name (`vsock`, `bluetooth`, `can`, ...).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(into = "String")]
pub struct SocketFamily(pub u32);

impl SocketFamily {
    /// Validates a family name.
    pub fn parse(s: &str) -> Result<Self, String> {
        match super::families::number(s) {
            Some(super::families::AF_PACKET) => Err(
                "family \"packet\" cannot be allowed: packet sockets send frames no egress rule sees".into(),
            ),
            Some(number) => Ok(Self(number)),
            None => Err(format!(
                "unknown socket family {s:?}: expected one of {}",
                super::families::FAMILIES
                    .iter()
                    .filter(|(_, f)| *f != super::families::AF_PACKET)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl From<SocketFamily> for String {
    fn from(family: SocketFamily) -> Self {
        super::families::name(family.0)
    }
}

impl<'de> Deserialize<'de> for SocketFamily {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a socket family such as vsock", Self::parse)
    }
}

impl JsonSchema for SocketFamily {
    fn schema_name() -> Cow<'static, str> {
        "SocketFamily".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = super::families::FAMILIES
            .iter()
            .filter(|(_, f)| *f != super::families::AF_PACKET)
            .map(|(n, _)| *n)
            .collect();
        json_schema!({
            "type": "string",
            "enum": names,
            "description": "A socket address family (`AF_*` without the prefix, lower case). \
                            `packet` is never allowed.",
        })
    }
}

/// `spec.process`: how the agent's processes are started and what they may
/// do to their own environment.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Whether the agent may create user namespaces, mount (bind, move,
    /// remount and new file systems), `chroot` and `pivot_root`. `deny`
    /// unless set: each of these gives a file another path, past path
    /// rules.
    #[serde(default = "default_deny")]
    pub namespaces: Action,
    /// Whether programs the agent runs may gain privileges on exec (setuid
    /// and setgid bits, file capabilities). `false` unless set: `baton exec`
    /// sets `no_new_privs` before it runs the agent's command, so an
    /// unprivileged agent cannot become root through a setuid binary.
    #[serde(default)]
    pub allow_privilege_escalation: bool,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        Self {
            namespaces: Action::Deny,
            allow_privilege_escalation: false,
        }
    }
}

fn default_deny() -> Action {
    Action::Deny
}

fn default_allow() -> Action {
    Action::Allow
}

/// One egress rule: a network (`cidr`) or a name (`domain`), with ports and
/// a protocol.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(try_from = "RawEgressRule")]
pub struct EgressRule {
    /// What the rule is about.
    pub target: EgressTarget,
    /// Ports and port ranges; every port when empty.
    pub ports: Vec<PortRange>,
    /// `tcp`, `udp` or `any` (default).
    pub protocol: Protocol,
}

/// The destination of an egress rule.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EgressTarget {
    /// IPv4 or IPv6 network; a bare address means a single host.
    Cidr(Cidr),
    /// A name (`api.example.com`) or a wildcard (`*.example.com`), resolved
    /// through Baton's DNS proxy.
    Domain(DomainPattern),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgressRule {
    #[serde(default)]
    cidr: Option<Cidr>,
    #[serde(default)]
    domain: Option<DomainPattern>,
    #[serde(default)]
    ports: Vec<PortRange>,
    #[serde(default)]
    protocol: Protocol,
}

impl TryFrom<RawEgressRule> for EgressRule {
    type Error = String;

    fn try_from(raw: RawEgressRule) -> Result<Self, String> {
        let target = match (raw.cidr, raw.domain) {
            (Some(cidr), None) => EgressTarget::Cidr(cidr),
            (None, Some(domain)) => EgressTarget::Domain(domain),
            (Some(_), Some(_)) => {
                return Err("an egress rule has either cidr or domain, not both".into());
            }
            (None, None) => return Err("an egress rule needs cidr or domain".into()),
        };
        Ok(Self {
            target,
            ports: raw.ports,
            protocol: raw.protocol,
        })
    }
}

/// `protocol` of an egress rule.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP and UDP.
    #[default]
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
}

/// `spec.files`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// Decision when no rule matches; `allow` unless set.
    #[serde(default = "default_allow")]
    pub default: Action,
    /// Path prefixes the agent may use, with the rights given.
    #[serde(default)]
    pub allow: Vec<FileRule>,
    /// Path prefixes the agent may not use, with the rights given.
    #[serde(default)]
    pub deny: Vec<FileRule>,
    /// Honey tokens: paths no legitimate work touches (a fake
    /// `~/.aws/credentials`). Any access is denied and trips the agent's
    /// `canary` breakers at once.
    #[serde(default)]
    pub canaries: Vec<RulePath>,
    /// Files the agent may read (as its other rules say) but that must not
    /// leave the host: once any of its processes opens one for reading,
    /// the whole agent is held to `egress.afterSecret` until an operator
    /// runs `baton taint clear`.
    #[serde(default)]
    pub secrets: Vec<RulePath>,
    /// What happens, besides a `detected` record, when Baton can only see
    /// (not prevent) an access that this policy's file or exec rules deny:
    /// `record` (the default) or `kill`, which kills the process with
    /// `SIGKILL` inside that very call. Detection is the last fallback,
    /// used only where BPF LSM is unavailable and only for what no other
    /// fallback enforces; where BPF LSM loads, accesses are denied and this
    /// setting has no effect. One policy asking for `kill` is enough.
    #[serde(default, rename = "onDetect")]
    pub on_detect: OnDetect,
}

/// `spec.files.onDetect`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDetect {
    /// Write a `detected` audit record.
    #[default]
    Record,
    /// Write the record and kill the process (`SIGKILL`) at the call.
    Kill,
}

/// `spec.limits`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Connects (and unconnected sends) per second; excess calls are denied
    /// (`EPERM`) and counted, not queued.
    #[serde(default)]
    pub connects_per_second: Option<u32>,
    /// Live processes of the agent (cgroup `pids.max`, for agents with a
    /// cgroup of their own).
    #[serde(default)]
    pub processes: Option<u32>,
}

/// One circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerSpec {
    /// Name, cited by audit records and `baton breaker list`.
    pub name: Name,
    /// What trips it: any condition that is set.
    pub when: Condition,
    /// What happens when it trips.
    pub action: BreakerAction,
    /// Seconds the breaker stays open before it lets a probe through.
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
    /// Seconds the half-open breaker watches before it closes again.
    #[serde(default = "default_probe_window")]
    pub probe_seconds: u64,
}

fn default_cooldown() -> u64 {
    300
}

fn default_probe_window() -> u64 {
    30
}

/// Trip conditions over the agent's kernel counters, in a sliding window.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// Denied connects and sends.
    #[serde(default)]
    pub denied_connects: Option<Threshold>,
    /// Distinct destinations (address and port) denied.
    #[serde(default)]
    pub distinct_denied_destinations: Option<Threshold>,
    /// Denied file and exec calls.
    #[serde(default)]
    pub denied_files: Option<Threshold>,
    /// Connects, allowed or not.
    #[serde(default)]
    pub connects: Option<Threshold>,
    /// Execs.
    #[serde(default)]
    pub execs: Option<Threshold>,
    /// Any access to a canary path.
    #[serde(default)]
    pub canary: bool,
    /// The agent opened one of its `files.secrets` (it is tainted).
    #[serde(default)]
    pub secret: bool,
}

/// "More than N within S seconds".
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Threshold {
    /// Count that must be exceeded.
    pub more_than: u64,
    /// Window length in seconds.
    pub within_seconds: u64,
}

/// What a tripped breaker does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BreakerAction {
    /// Deny every connect (and, with BPF LSM, every write and exec); reads
    /// stay allowed so the agent can fail gracefully.
    Quarantine,
    /// Freeze the agent's processes; resumable.
    Freeze,
    /// Kill every process of the agent.
    Kill,
}

/// A file right.
#[derive(
    Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FileRight {
    /// Open for reading.
    Read,
    /// Open for writing, truncate (by path or through any descriptor),
    /// chmod, chown, setting and removing extended attributes.
    Write,
    /// Create files, directories, links and device nodes.
    Create,
    /// Unlink files, remove directories.
    Delete,
    /// Rename from or to.
    Rename,
}

impl FileRight {
    /// Every file right.
    pub const ALL: [FileRight; 5] = [
        FileRight::Read,
        FileRight::Write,
        FileRight::Create,
        FileRight::Delete,
        FileRight::Rename,
    ];

    /// Index of the right in the kernel's per-right decisions.
    pub fn slot(self) -> usize {
        use agent_common::files::right;
        match self {
            FileRight::Read => right::READ,
            FileRight::Write => right::WRITE,
            FileRight::Create => right::CREATE,
            FileRight::Delete => right::DELETE,
            FileRight::Rename => right::RENAME,
        }
    }
}

/// A file rule: a path prefix (every right), or `{path, rights}`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileRule {
    /// Path prefix; a component may be a single `*`.
    pub path: RulePath,
    /// Rights the rule is about.
    pub rights: Vec<FileRight>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileRule {
    path: RulePath,
    #[serde(default)]
    rights: Option<Vec<FileRight>>,
}

impl<'de> Deserialize<'de> for FileRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = FileRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, or a map with path and rights")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileRule, E> {
                Ok(FileRule {
                    path: RulePath::parse(v).map_err(E::custom)?,
                    rights: FileRight::ALL.to_vec(),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<FileRule, A::Error> {
                let raw = RawFileRule::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let rights = raw.rights.unwrap_or_else(|| FileRight::ALL.to_vec());
                if rights.is_empty() {
                    return Err(de::Error::custom(
                        "rights is empty: the rule would do nothing",
                    ));
                }
                Ok(FileRule {
                    path: raw.path,
                    rights,
                })
            }
        }
        deserializer.deserialize_any(RuleVisitor)
    }
}

/// `spec.exec`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecSpec {
    /// Decision when no rule matches; `allow` unless set. An allowlist
    /// (`default: deny`) is the safe choice: a denylist is undone by
    /// `cp /usr/bin/nc /tmp/x`.
    #[serde(default = "default_allow")]
    pub default: Action,
    /// Path prefixes the agent may execute or map executable. With
    /// `default: deny` this must include the dynamic loader and the
    /// libraries its programs map (`/lib`, `/usr/lib`, ...).
    #[serde(default)]
    pub allow: Vec<RulePath>,
    /// Path prefixes the agent may not execute.
    #[serde(default)]
    pub deny: Vec<RulePath>,
    /// Whether the agent may execute files with no name on disk (`memfd`,
    /// deleted files). Denied unless set.
    #[serde(default)]
    pub allow_anonymous: bool,
}

/// A rule path: absolute and normalised like [`AbsolutePath`], where a
/// component may be a single `*` (one directory level, any name):
/// `/home/*/.ssh`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RulePath(pub String);

impl RulePath {
    /// Validates a rule path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let without_wildcards = s
            .split('/')
            .map(|c| if c == "*" { "x" } else { c })
            .collect::<Vec<_>>()
            .join("/");
        if s.split('/').any(|c| c.contains('*') && c != "*") {
            return Err(format!(
                "invalid path {s:?}: '*' must be a whole path component, as in /home/*/.ssh"
            ));
        }
        AbsolutePath::parse(&without_wildcards)?;
        let normalised = format!(
            "/{}",
            s.split('/')
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("/")
        );
        Ok(Self(normalised))
    }

    /// Whether a component is a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.0.split('/').any(|c| c == "*")
    }
}

impl<'de> Deserialize<'de> for RulePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "an absolute path such as /home/*/.ssh",
            Self::parse,
        )
    }
}

/// Deserializes a string through `parse` inside the deserializer, so that a
/// rejected value's error carries the value's own line and column.
fn deserialize_parsed<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct ParsedVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for ParsedVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(ParsedVisitor { expecting, parse })
}

/// A name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting with a
/// letter or digit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct Name(String);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Maps keyed by names are looked up by `&str`.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl Name {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name that was valid when it was written down: one the daemon
    /// stored itself (the state directory) or made up (a manual breaker).
    /// Everything that comes from a policy goes through [`Name::parse`].
    pub(crate) fn from_trusted(name: String) -> Self {
        Self(name)
    }

    /// Validates a name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if valid {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "invalid name {s:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a name", Self::parse)
    }
}

/// An IP network, normalised (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            if net.addr() != net.network() {
                return Err(format!(
                    "invalid CIDR {s:?}: host bits are set; did you mean {}?",
                    net.trunc()
                ));
            }
            return Ok(Self(net));
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self(IpNet::from(addr)));
        }
        Err(format!(
            "invalid CIDR {s:?}: expected an address with an optional prefix length, such as 10.0.0.0/8 or 2001:db8::/32"
        ))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "an IP network such as 10.0.0.0/8",
            Self::parse,
        )
    }
}

/// An inclusive port range; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: Self = Self {
        first: 0,
        last: u16::MAX,
    };

    /// Parses `443` or `8000-8100`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid port {p:?}: expected a number from 0 to 65535"))
        };
        match s.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (port(first)?, port(last)?);
                if first > last {
                    return Err(format!(
                        "invalid port range {s:?}: first port is above the last"
                    ));
                }
                Ok(Self { first, last })
            }
            None => {
                let p = port(s)?;
                Ok(Self { first: p, last: p })
            }
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range such as \"8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(|p| PortRange { first: p, last: p })
                    .map_err(|_| {
                        E::custom(format!(
                            "invalid port {v}: expected a number from 0 to 65535"
                        ))
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                u64::try_from(v)
                    .map_err(|_| {
                        E::custom(format!(
                            "invalid port {v}: expected a number from 0 to 65535"
                        ))
                    })
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

/// An absolute, normalised path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AbsolutePath(pub String);

/// Longest path a rule may name: the kernel key holds 248 bytes, one of them
/// the `/` that marks the component boundary.
pub const MAX_RULE_PATH_BYTES: usize = agent_common::files::PATH_KEY_BYTES - 1;

impl AbsolutePath {
    /// Validates and normalises a rule path: absolute, no `~`, `.` or `..`
    /// components, no repeated or trailing `/`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with('~') {
            return Err(format!(
                "invalid path {s:?}: '~' is not expanded; write the absolute path, or /home/*/... for every user's home"
            ));
        }
        if !s.starts_with('/') {
            return Err(format!("invalid path {s:?}: rule paths must be absolute"));
        }
        if s.contains('\0') {
            return Err(format!("invalid path {s:?}: contains a NUL byte"));
        }
        let mut components = Vec::new();
        for component in s.split('/').filter(|c| !c.is_empty()) {
            if component == "." || component == ".." {
                return Err(format!(
                    "invalid path {s:?}: '.' and '..' are not allowed; the kernel matches resolved paths"
                ));
            }
            if component.contains('*') {
                return Err(format!(
                    "invalid path {s:?}: a wildcard is not allowed here"
                ));
            }
            components.push(component);
        }
        let normalised = format!("/{}", components.join("/"));
        if normalised.len() > MAX_RULE_PATH_BYTES {
            return Err(format!(
                "invalid path {s:?}: {} bytes is longer than the {MAX_RULE_PATH_BYTES} bytes a kernel rule can hold",
                normalised.len()
            ));
        }
        Ok(Self(normalised))
    }

    /// Key bytes: the path with a trailing `/` (the root is just `/`).
    pub fn key_bytes(&self) -> Vec<u8> {
        if self.0 == "/" {
            b"/".to_vec()
        } else {
            format!("{}/", self.0).into_bytes()
        }
    }

    /// Whether `self` covers `other` on component boundaries.
    pub fn covers(&self, other: &AbsolutePath) -> bool {
        // The same as comparing key bytes, without building them: compiling
        // a large set asks this millions of times.
        self.0 == "/"
            || other
                .0
                .strip_prefix(self.0.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The path and each of its ancestors, up to `/`: every path that can
    /// cover it.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        std::iter::successors(Some(self.0.as_str()), |path| match path.rfind('/') {
            _ if *path == "/" => None,
            Some(0) => Some("/"),
            Some(at) => Some(&path[..at]),
            None => None,
        })
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "an absolute path", Self::parse)
    }
}

// JSON Schema of the types that deserialize by hand. The patterns accept what
// the parsers accept as far as a regular expression can say it; the parsers
// stay the authority and check the rest (normalisation, lengths, `..`).

/// A string schema with a pattern and a description.
fn string_schema(pattern: &str, description: &str) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": pattern,
        "description": description,
    })
}

impl JsonSchema for CgroupPath {
    fn schema_name() -> Cow<'static, str> {
        "CgroupPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "^/.*[^/]",
            "A cgroup v2 path relative to the cgroup v2 mount, written with a leading `/` \
             (`/agents/coder`); every process in the cgroup or below it is the agent. \
             Not `/` itself, no `.` or `..` components.",
        )
    }
}

impl JsonSchema for UnitName {
    fn schema_name() -> Cow<'static, str> {
        "UnitName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            r"^([A-Za-z0-9_.@:\\-]+/)*[A-Za-z0-9_.@:\\-]+\.(service|scope|slice)$",
            "A systemd unit (`coder.service`), or a unit inside a slice \
             (`agents.slice/coder.service`) for a unit outside `system.slice`.",
        )
    }
}

impl JsonSchema for RulePath {
    fn schema_name() -> Cow<'static, str> {
        "RulePath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "^/",
            "An absolute path prefix, matched on component boundaries (`/x/.ssh` covers \
             `/x/.ssh/id_rsa`, not `/x/.ssh_old`). A component may be a single `*`, one \
             directory level with any name (`/home/*/.ssh`). No `~`, `.` or `..`; at most \
             247 bytes once normalised.",
        )
    }
}

impl JsonSchema for Name {
    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "^[a-z0-9][a-z0-9._-]{0,62}$",
            "A name: 1-63 characters of a-z, 0-9, `-`, `_`, `.`, starting with a letter or digit.",
        )
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
            "description": "An IPv4 or IPv6 network with its host bits clear (`10.0.0.0/8`, \
                            `2001:db8::/32`), or a bare address for a single host. \
                            IPv4-mapped IPv6 addresses are IPv4 addresses.",
            "examples": ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"],
        })
    }
}

impl JsonSchema for PortRange {
    fn schema_name() -> Cow<'static, str> {
        "PortRange".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A port (`443`) or an inclusive range of ports (`\"8000-8100\"`).",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 65535},
                {"type": "string", "pattern": r"^\s*[0-9]+\s*(-\s*[0-9]+\s*)?$"},
            ],
        })
    }
}

impl JsonSchema for AbsolutePath {
    fn schema_name() -> Cow<'static, str> {
        "AbsolutePath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "^/",
            "An absolute path. No `~`, `.`, `..` or `*`; at most 247 bytes once normalised.",
        )
    }
}

impl JsonSchema for EgressRule {
    fn schema_name() -> Cow<'static, str> {
        "EgressRule".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let cidr = generator.subschema_for::<Cidr>();
        let domain = generator.subschema_for::<DomainPattern>();
        let port = generator.subschema_for::<PortRange>();
        let protocol = generator.subschema_for::<Protocol>();
        // `oneOf` over `required` alone, with every field declared once
        // beside it, says "exactly one of cidr and domain" in a form that
        // both JSON Schema validators and Kubernetes' structural schemas read.
        json_schema!({
            "description": "One egress rule: a network (`cidr`) or a name (`domain`), \
                            with ports and a protocol.",
            "type": "object",
            "properties": {
                "cidr": cidr,
                "domain": domain,
                "ports": {
                    "description": "Ports and port ranges; every port when empty or absent.",
                    "type": "array",
                    "items": port,
                    "default": [],
                },
                "protocol": {
                    "description": "`tcp`, `udp` or `any` (the default).",
                    "allOf": [protocol],
                    "default": "any",
                },
            },
            "oneOf": [
                {"required": ["cidr"]},
                {"required": ["domain"]},
            ],
            "additionalProperties": false,
        })
    }
}

impl JsonSchema for FileRule {
    fn schema_name() -> Cow<'static, str> {
        "FileRule".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let path = generator.subschema_for::<RulePath>();
        let right = generator.subschema_for::<FileRight>();
        json_schema!({
            "description": "A file rule: a path prefix (every right), or a path with the \
                            rights the rule is about.",
            "anyOf": [
                path.clone(),
                {
                    "type": "object",
                    "properties": {
                        "path": path,
                        "rights": {
                            "description": "Rights the rule is about; every right when absent.",
                            "type": "array",
                            "items": right,
                            "minItems": 1,
                        },
                    },
                    "required": ["path"],
                    "additionalProperties": false,
                },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_checked_where_they_are_written() {
        let text = |families: &str| {
            format!(
                "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n  selector:\n    agent: a\n  egress:\n    families: {families}\n"
            )
        };
        let parse = |families: &str| {
            crate::policy::load::parse_str(std::path::Path::new("p.yaml"), &text(families))
        };
        let loaded = parse("[vsock, can]").unwrap();
        let egress = loaded[0].document.spec.egress.as_ref().unwrap();
        assert_eq!(egress.families, [SocketFamily(40), SocketFamily(29)]);
        let error = parse("[vsock, vsok]").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "p.yaml:9:23: spec.egress.families[1]: unknown socket family \"vsok\""
            ),
            "{error}"
        );
        let error = parse("[packet]").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "p.yaml:9:16: spec.egress.families[0]: family \"packet\" cannot be allowed"
            ),
            "{error}"
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().0.prefix_len(), 8);
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().0.prefix_len(), 32);
        assert_eq!(Cidr::parse("::1").unwrap().0.prefix_len(), 128);
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(
            PortRange::parse("80").unwrap(),
            PortRange {
                first: 80,
                last: 80
            }
        );
        assert_eq!(
            PortRange::parse("1-2").unwrap(),
            PortRange { first: 1, last: 2 }
        );
        assert!(PortRange::parse("2-1").is_err());
        assert!(PortRange::parse("70000").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(AbsolutePath::parse("/a//b/").unwrap().0, "/a/b");
        assert_eq!(AbsolutePath::parse("/").unwrap().key_bytes(), b"/");
        assert!(AbsolutePath::parse("~/.ssh").unwrap_err().contains('~'));
        assert!(AbsolutePath::parse("a/b").is_err());
        assert!(AbsolutePath::parse("/a/../b").is_err());
        assert!(AbsolutePath::parse(&format!("/{}", "x".repeat(300))).is_err());
        let ssh = AbsolutePath::parse("/x/.ssh").unwrap();
        assert!(ssh.covers(&AbsolutePath::parse("/x/.ssh/id").unwrap()));
        assert!(ssh.covers(&ssh));
        assert!(!ssh.covers(&AbsolutePath::parse("/x/.ssh_old").unwrap()));
        assert!(!ssh.covers(&AbsolutePath::parse("/x").unwrap()));
        let root = AbsolutePath::parse("/").unwrap();
        assert!(root.covers(&ssh));
        assert!(root.covers(&root));
        assert!(!ssh.covers(&root));
        assert_eq!(ssh.ancestors().collect::<Vec<_>>(), ["/x/.ssh", "/x", "/"]);
        assert_eq!(root.ancestors().collect::<Vec<_>>(), ["/"]);
        assert!(AbsolutePath::parse("/").unwrap().covers(&ssh));
    }

    #[test]
    fn selectors_need_something() {
        assert!(
            Selector::try_from(RawSelector {
                agent: None,
                cgroups: vec![],
                systemd_units: vec![],
                executables: vec![],
            })
            .is_err()
        );
    }

    #[test]
    fn units_and_cgroups() {
        assert_eq!(
            UnitName::parse("coder.service").unwrap().cgroup_path(),
            "/system.slice/coder.service"
        );
        assert_eq!(
            UnitName::parse("agents.slice/coder.service")
                .unwrap()
                .cgroup_path(),
            "/agents.slice/coder.service"
        );
        assert!(UnitName::parse("coder").is_err());
        assert!(UnitName::parse("../x.service").is_err());
        assert!(CgroupPath::parse("/").is_err());
        assert_eq!(CgroupPath::parse("/a//b").unwrap().0, "/a/b");
    }

    #[test]
    fn rule_paths() {
        assert_eq!(RulePath::parse("/home/*/.ssh/").unwrap().0, "/home/*/.ssh");
        assert!(RulePath::parse("/home/a*/.ssh").is_err());
        assert!(RulePath::parse("~/.ssh").unwrap_err().contains('~'));
        assert!(RulePath::parse("/a/../b").is_err());
        assert!(RulePath::parse("/home/*/.ssh").unwrap().has_wildcard());
    }

    #[test]
    fn names() {
        assert!(Name::parse("demo-1").is_ok());
        assert!(Name::parse("").is_err());
        assert!(Name::parse("Demo").is_err());
        assert!(Name::parse("-x").is_err());
    }
}

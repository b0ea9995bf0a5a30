//! Compiling policies into the entries the kernel maps hold.
//!
//! Precedence is resolved here, once, so the kernel only does lookups: the
//! most specific rule wins, and deny wins a tie. For egress, every address
//! prefix gets a port table that already lists, in precedence order, the
//! rules of all less specific prefixes covering it; for files, every path
//! prefix gets one decision per right, already resolved against the prefixes
//! above it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
};

use agent_common::{
    egress::{LEARNED_ROWS, PORT_TABLE_ROWS, PortRule, ipv4_mapped, protocol},
    files::{FileValue, RIGHT_SLOTS, SECRET_SLOT, right},
    verdict::{decision, mode},
};
use thiserror::Error;

use super::domain::DomainPattern;
use super::{
    load::LoadedPolicy,
    spec::{
        AbsolutePath, Action, BreakerSpec, EgressTarget, Mode, Name, PortRange, Protocol, RulePath,
    },
};
use crate::ids::RuleId;

/// Errors that only show once policies are combined.
#[derive(Debug, Error)]
pub enum CompileError {
    /// A domain rule in a deny list.
    #[error(
        "policy {policy}: egress.deny[{index}]: deny lists take cidr rules only; a name is denied by not allowing it (and its addresses with cidr rules)"
    )]
    DomainDeny {
        /// Policy.
        policy: String,
        /// Index in the deny list.
        index: usize,
    },
    /// A domain rule with more port ranges than a learned address holds.
    #[error(
        "policy {policy}: egress.allow[{index}]: a domain rule may list at most {LEARNED_ROWS} port ranges"
    )]
    DomainPorts {
        /// Policy.
        policy: String,
        /// Index in the allow list.
        index: usize,
    },
    /// Two agents select the same cgroup, unit or executable.
    #[error("{0}; a process can belong to one agent only")]
    AmbiguousSelector(String),
    /// An address prefix needs more port-table rows than the kernel holds.
    #[error(
        "agent {agent}: destination {prefix} is covered by {rows} port rules, more than the {PORT_TABLE_ROWS} the kernel holds per destination; merge port ranges or split the network"
    )]
    TooManyPortRows {
        /// Agent.
        agent: String,
        /// Destination prefix.
        prefix: String,
        /// Rows needed.
        rows: usize,
    },
}

/// Where a kernel rule id came from, for audit records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleRef {
    /// Policy name.
    pub policy: String,
    /// Rule within the policy, e.g. `egress.deny[0]` or `egress.default`.
    pub rule: String,
    /// File the policy was read from.
    pub source: PathBuf,
}

/// One file rule as written in the policy (after wildcard expansion), as
/// the fallbacks that match by path prefix take it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRule {
    /// Absolute path prefix.
    pub path: String,
    /// Bits of [`agent_common::files::right`].
    pub rights: u32,
    /// One of [`agent_common::verdict::decision`].
    pub decision: u8,
}

/// A breaker rule and the policy it came from.
#[derive(Clone, Debug)]
pub struct BreakerRule {
    /// Policy name.
    pub policy: String,
    /// The rule.
    pub spec: BreakerSpec,
}

/// The settings of one agent after merging every policy that selects it.
#[derive(Clone, Debug)]
pub struct CompiledAgent {
    /// Policies selecting the agent.
    pub policies: Vec<String>,
    /// cgroup paths (relative to the cgroup v2 mount) whose processes are
    /// the agent, systemd units already turned into their cgroups.
    pub cgroups: Vec<String>,
    /// Executables whose exec makes a process the agent.
    pub executables: Vec<String>,
    /// Whether ICMP sockets are allowed.
    pub allow_icmp: bool,
    /// Socket families the agent may create, bit `n` for family `n`.
    pub families: u64,
    /// Whether programs the agent runs may gain privileges on exec; when
    /// not, `baton exec` sets `no_new_privs`.
    pub allow_privilege_escalation: bool,
    /// Whether denied processes get a line on their standard error;
    /// `None` (unset in every policy): for `baton exec` processes only.
    pub explain: Option<bool>,
    /// One of [`agent_common::verdict::mode`].
    pub mode: u8,
    /// Decision when no egress rule matches.
    pub egress_default: u8,
    /// Rule id for the egress default.
    pub egress_default_rule: RuleId,
    /// Decision when no file rule matches.
    pub file_default: u8,
    /// Rule id for the file default.
    pub file_default_rule: RuleId,
    /// Decision when no exec rule matches.
    pub exec_default: u8,
    /// Rule id for the exec default.
    pub exec_default_rule: RuleId,
    /// Whether files with no name on disk may be executed.
    pub allow_anonymous_exec: bool,
    /// Whether user namespaces, mounts, `chroot` and `pivot_root` are
    /// allowed: only when every policy that selects the agent says so.
    pub allow_namespaces: bool,
    /// Whether a detected (not prevented) violation kills the process.
    pub kill_on_detect: bool,
    /// Connects per second; 0 is unlimited.
    pub connects_per_second: u32,
    /// Live processes allowed, for agents Baton starts.
    pub max_processes: Option<u32>,
    /// Circuit breakers.
    pub breakers: Vec<BreakerRule>,
    /// Egress prefixes with their port tables.
    pub egress: Vec<EgressEntry>,
    /// Names the agent may resolve, with the ports their addresses open.
    pub domains: Vec<DomainEntry>,
    /// File prefixes with their per-right decisions.
    pub files: Vec<FileEntry>,
    /// The file and exec rules as written (wildcards expanded), for
    /// translations that need them unflattened (Landlock).
    pub file_rules: Vec<SourceRule>,
    /// The secrets (`files.secrets`, wildcards expanded) and their rules:
    /// an open of one for reading taints the agent.
    pub secrets: Vec<(String, RuleId)>,
    /// The egress a tainted agent is held to (`egress.afterSecret` and a
    /// catch-all deny), on top of [`Self::egress`]; empty when the agent
    /// has no secrets.
    pub after_secret: Vec<EgressEntry>,
    /// The rule a tainted agent's refusals cite (`egress.afterSecret`),
    /// [`RuleId::NONE`] when the agent has no secrets.
    pub after_secret_rule: RuleId,
}

impl CompiledAgent {
    /// Whether the agent has processes that `baton exec` did not start, so
    /// that Landlock cannot hold them and only BPF LSM, fanotify or
    /// detection can.
    pub fn selected_outside_exec(&self) -> bool {
        !self.cgroups.is_empty() || !self.executables.is_empty()
    }
}

/// One egress trie entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressEntry {
    /// IPv6 address, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Prefix length in the 128-bit address.
    pub prefix_len: u32,
    /// Rows in precedence order.
    pub rows: Vec<PortRule>,
}

/// One allowed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEntry {
    /// The name or wildcard.
    pub pattern: DomainPattern,
    /// Kernel rule id.
    pub rule_id: RuleId,
    /// Ports and protocols an address learned from the name opens.
    pub rows: Vec<PortRule>,
}

/// One file trie entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path bytes with the trailing `/`.
    pub key: Vec<u8>,
    /// Decisions per right.
    pub value: FileValue,
}

/// A whole policy set, ready to be written to the kernel.
#[derive(Clone, Debug, Default)]
pub struct CompiledPolicySet {
    /// Per agent name.
    pub agents: BTreeMap<Name, CompiledAgent>,
    /// Rule `first_rule_id + i` is `rules[i]`.
    pub rules: Vec<RuleRef>,
    /// Id of `rules[0]`.
    pub first_rule_id: RuleId,
}

impl CompiledPolicySet {
    /// Looks a kernel rule id up.
    pub fn rule(&self, id: RuleId) -> Option<&RuleRef> {
        id.index_from(self.first_rule_id)
            .and_then(|i| self.rules.get(i))
    }

    /// Total rule-table entries, for capacity reporting.
    pub fn entry_count(&self) -> usize {
        self.agents
            .values()
            .map(|a| a.egress.len() + a.files.len())
            .sum()
    }
}

/// One egress rule before flattening.
struct EgressSource {
    addr: [u8; 16],
    prefix_len: u32,
    ports: Vec<PortRange>,
    protocols: u8,
    decision: u8,
    rule_id: RuleId,
}

/// The kernel's protocol bits for a rule's `protocol`.
fn protocol_bits(rule: Protocol) -> u8 {
    match rule {
        Protocol::Any => protocol::ANY,
        Protocol::Tcp => protocol::TCP,
        Protocol::Udp => protocol::UDP,
    }
}

/// One file rule before flattening.
struct FileSource {
    path: AbsolutePath,
    rights: u32,
    decision: u8,
    rule_id: RuleId,
}

fn action_decision(action: Action) -> u8 {
    match action {
        Action::Allow => decision::ALLOW,
        Action::Deny => decision::DENY,
    }
}

/// Maps an address and prefix length into the 128-bit key space.
fn key_prefix(addr: IpAddr, prefix_len: u8) -> ([u8; 16], u32) {
    match addr {
        IpAddr::V4(v4) => (ipv4_mapped(v4.octets()), 96 + u32::from(prefix_len)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (ipv4_mapped(v4.octets()), u32::from(prefix_len)),
            None => (v6.octets(), u32::from(prefix_len)),
        },
    }
}

fn covers(outer: &([u8; 16], u32), inner: &([u8; 16], u32)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let outer_bits = u128::from_be_bytes(outer.0);
    let inner_bits = u128::from_be_bytes(inner.0);
    let mask = if outer.1 == 0 {
        0
    } else {
        u128::MAX << (128 - outer.1)
    };
    outer_bits & mask == inner_bits & mask
}

fn format_prefix(addr: [u8; 16], prefix_len: u32) -> String {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if prefix_len >= 96 => format!("{v4}/{}", prefix_len - 96),
        _ => format!("{v6}/{prefix_len}"),
    }
}

/// Compiles a policy set. Rule ids start at `first_rule_id`, which the caller
/// keeps increasing between reloads so that an event decided under an older
/// generation still names the right rule.
pub fn compile(
    policies: &[LoadedPolicy],
    first_rule_id: RuleId,
) -> Result<CompiledPolicySet, CompileError> {
    compile_with(policies, first_rule_id, &expand_literally)
}

/// Turns a rule path into the paths it stands for. A path with a `*`
/// component stands for every existing directory entry at that level.
pub type Expander = dyn Fn(&RulePath) -> Vec<AbsolutePath>;

/// Keeps `*` as it is written: for checking policies without looking at
/// the file system.
pub fn expand_literally(path: &RulePath) -> Vec<AbsolutePath> {
    vec![AbsolutePath(path.0.clone())]
}

/// Expands `*` components against the directories that exist now.
/// Directories created later are covered after the next policy load.
pub fn expand_on_disk(path: &RulePath) -> Vec<AbsolutePath> {
    let mut prefixes = vec![String::new()];
    for component in path.0.split('/').filter(|c| !c.is_empty()) {
        if component == "*" {
            let mut next = Vec::new();
            for prefix in &prefixes {
                let dir = if prefix.is_empty() {
                    "/"
                } else {
                    prefix.as_str()
                };
                if let Ok(entries) = std::fs::read_dir(dir) {
                    let mut names: Vec<String> = entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect();
                    names.sort();
                    next.extend(names.into_iter().map(|n| format!("{prefix}/{n}")));
                }
            }
            prefixes = next;
        } else {
            for prefix in &mut prefixes {
                prefix.push('/');
                prefix.push_str(component);
            }
        }
    }
    prefixes
        .into_iter()
        .filter_map(|p| AbsolutePath::parse(if p.is_empty() { "/" } else { &p }).ok())
        .collect()
}

/// Compiles a policy set, expanding wildcard paths with `expand`.
pub fn compile_with(
    policies: &[LoadedPolicy],
    first_rule_id: RuleId,
    expand: &Expander,
) -> Result<CompiledPolicySet, CompileError> {
    compile_protected(policies, first_rule_id, expand, &[])
}

/// Compiles a policy set and adds, to every agent, deny rules for
/// `protected` paths (path, rights): Baton's own state, which no policy may
/// open up. They win over any allow of the same specificity and are cited
/// as `baton/protected[i]` in records.
pub fn compile_protected(
    policies: &[LoadedPolicy],
    first_rule_id: RuleId,
    expand: &Expander,
    protected: &[(String, u32)],
) -> Result<CompiledPolicySet, CompileError> {
    let mut rules: Vec<RuleRef> = Vec::new();
    let protected_rules: Vec<(AbsolutePath, u32, RuleId)> = protected
        .iter()
        .enumerate()
        .filter_map(|(i, (path, rights))| {
            rules.push(RuleRef {
                policy: "baton".into(),
                rule: format!("protected[{i}]"),
                source: PathBuf::new(),
            });
            let rule_id = first_rule_id.after(rules.len() - 1);
            AbsolutePath::parse(path)
                .ok()
                .map(|p| (p, *rights, rule_id))
        })
        .collect();
    let mut add_rule = |policy: &LoadedPolicy, rule: String| -> RuleId {
        rules.push(RuleRef {
            policy: policy.document.metadata.name.to_string(),
            rule,
            source: policy.source.clone(),
        });
        first_rule_id.after(rules.len() - 1)
    };

    let mut by_agent: BTreeMap<Name, Vec<&LoadedPolicy>> = BTreeMap::new();
    for policy in policies {
        by_agent.entry(agent_name(policy)).or_default().push(policy);
    }
    check_selectors(&by_agent)?;

    let mut agents = BTreeMap::new();
    for (agent, selecting) in by_agent {
        let mut egress_sources = Vec::new();
        let mut after_secret_sources = Vec::new();
        // The catch-all deny of the narrowed rules, named after the first
        // policy that sets `afterSecret` or lists secrets.
        let mut after_secret_rule: Option<RuleId> = None;
        let mut secrets = Vec::new();
        let mut domains = Vec::new();
        let mut file_sources: Vec<FileSource> = protected_rules
            .iter()
            .map(|(path, rights, rule_id)| FileSource {
                path: path.clone(),
                rights: *rights,
                decision: decision::DENY,
                rule_id: *rule_id,
            })
            .collect();
        let mut any_enforce = false;
        let mut allow_icmp = true;
        let mut any_egress = false;
        // Extra families: those every policy with an egress section allows.
        let mut extra_families: Option<u64> = None;
        let mut escalation: Option<bool> = None;
        // Set by any policy that says; `none` in one of them wins.
        let mut explain: Option<bool> = None;
        let mut cgroups = BTreeSet::new();
        let mut executables = BTreeSet::new();
        let mut egress_default: Option<(u8, RuleId)> = None;
        let mut file_default: Option<(u8, RuleId)> = None;
        let mut exec_default: Option<(u8, RuleId)> = None;
        let mut connects_per_second: Option<u32> = None;
        let mut max_processes: Option<u32> = None;
        let mut breakers = Vec::new();
        let mut allow_anonymous_exec = true;
        let mut allow_namespaces = true;
        let mut kill_on_detect = false;
        for policy in &selecting {
            let spec = &policy.document.spec;
            any_enforce |= spec.mode == Mode::Enforce;
            allow_namespaces &= spec
                .process
                .as_ref()
                .is_some_and(|p| p.namespaces == Action::Allow);
            cgroups.extend(spec.selector.cgroups.iter().map(|c| c.0.clone()));
            cgroups.extend(spec.selector.systemd_units.iter().map(|u| u.cgroup_path()));
            executables.extend(spec.selector.executables.iter().map(|e| e.0.clone()));
            if let Some(egress) = &spec.egress {
                any_egress = true;
                allow_icmp &= egress.icmp == Action::Allow;
                let listed = egress
                    .families
                    .iter()
                    .fold(0u64, |set, family| set | (1 << family.0));
                extra_families = Some(extra_families.map_or(listed, |set| set & listed));
                let d = action_decision(egress.default);
                // The strictest default of the merged policies applies.
                if egress_default.is_none_or(|(current, _)| d == decision::DENY && current != d) {
                    egress_default = Some((d, add_rule(policy, "egress.default".into())));
                }
                for (list, action, rules_of) in [
                    ("allow", Action::Allow, &egress.allow),
                    ("deny", Action::Deny, &egress.deny),
                ] {
                    for (i, rule) in rules_of.iter().enumerate() {
                        let protocols = protocol_bits(rule.protocol);
                        let rule_id = add_rule(policy, format!("egress.{list}[{i}]"));
                        match &rule.target {
                            EgressTarget::Cidr(cidr) => {
                                let (addr, prefix_len) =
                                    key_prefix(cidr.0.network(), cidr.0.prefix_len());
                                egress_sources.push(EgressSource {
                                    addr,
                                    prefix_len,
                                    ports: rule.ports.clone(),
                                    protocols,
                                    decision: action_decision(action),
                                    rule_id,
                                });
                            }
                            EgressTarget::Domain(pattern) => {
                                let policy_name = policy.document.metadata.name.to_string();
                                if action == Action::Deny {
                                    return Err(CompileError::DomainDeny {
                                        policy: policy_name,
                                        index: i,
                                    });
                                }
                                let ranges = if rule.ports.is_empty() {
                                    vec![PortRange::ALL]
                                } else {
                                    rule.ports.clone()
                                };
                                if ranges.len() > LEARNED_ROWS {
                                    return Err(CompileError::DomainPorts {
                                        policy: policy_name,
                                        index: i,
                                    });
                                }
                                domains.push(DomainEntry {
                                    pattern: pattern.clone(),
                                    rule_id,
                                    rows: ranges
                                        .iter()
                                        .map(|r| PortRule {
                                            port_lo: r.first,
                                            port_hi: r.last,
                                            protocols,
                                            decision: decision::ALLOW,
                                            _pad: [0; 2],
                                            rule_id: rule_id.raw(),
                                        })
                                        .collect(),
                                });
                            }
                        }
                    }
                }
            }
            if let Some(files) = &spec.files {
                kill_on_detect |= files.on_detect == crate::policy::spec::OnDetect::Kill;
                let d = action_decision(files.default);
                if file_default.is_none_or(|(current, _)| d == decision::DENY && current != d) {
                    file_default = Some((d, add_rule(policy, "files.default".into())));
                }
                for (list, action, rules_of) in [
                    ("allow", Action::Allow, &files.allow),
                    ("deny", Action::Deny, &files.deny),
                ] {
                    for (i, rule) in rules_of.iter().enumerate() {
                        let rule_id = add_rule(policy, format!("files.{list}[{i}]"));
                        let rights = rule
                            .rights
                            .iter()
                            .fold(0, |acc, r| acc | right::bit(r.slot()));
                        for path in expand(&rule.path) {
                            file_sources.push(FileSource {
                                path,
                                rights,
                                decision: action_decision(action),
                                rule_id,
                            });
                        }
                    }
                }
            }
            if let Some(setting) = spec.explain {
                let wanted = setting == crate::policy::spec::Explain::Stderr;
                explain = Some(explain.unwrap_or(true) && wanted);
            }
            if let Some(process) = &spec.process {
                // Every policy that says anything must allow it.
                escalation = Some(escalation.unwrap_or(true) && process.allow_privilege_escalation);
            }
            if let Some(limits) = &spec.limits {
                // The tightest limit of the merged policies applies.
                if let Some(rate) = limits.connects_per_second {
                    connects_per_second = Some(connects_per_second.map_or(rate, |c| c.min(rate)));
                }
                if let Some(processes) = limits.processes {
                    max_processes = Some(max_processes.map_or(processes, |p| p.min(processes)));
                }
            }
            breakers.extend(spec.breakers.iter().map(|b| BreakerRule {
                policy: policy.document.metadata.name.to_string(),
                spec: b.clone(),
            }));
            let after_secret = spec.egress.as_ref().and_then(|e| e.after_secret.as_ref());
            let lists_secrets = spec.files.as_ref().is_some_and(|f| !f.secrets.is_empty());
            if after_secret_rule.is_none() && (after_secret.is_some() || lists_secrets) {
                after_secret_rule = Some(add_rule(policy, "egress.afterSecret".into()));
            }
            for (i, rule) in after_secret.iter().flat_map(|a| a.allow.iter()).enumerate() {
                // Names are refused when the policy is read.
                if let EgressTarget::Cidr(cidr) = &rule.target {
                    let (addr, prefix_len) = key_prefix(cidr.0.network(), cidr.0.prefix_len());
                    after_secret_sources.push(EgressSource {
                        addr,
                        prefix_len,
                        ports: rule.ports.clone(),
                        protocols: protocol_bits(rule.protocol),
                        decision: decision::ALLOW,
                        rule_id: add_rule(policy, format!("egress.afterSecret.allow[{i}]")),
                    });
                }
            }
            if let Some(files) = &spec.files {
                for (i, secret) in files.secrets.iter().enumerate() {
                    let rule_id = add_rule(policy, format!("files.secrets[{i}]"));
                    for path in expand(secret) {
                        secrets.push((path.0.clone(), rule_id));
                        file_sources.push(FileSource {
                            path,
                            rights: right::bit(SECRET_SLOT),
                            decision: decision::ALLOW,
                            rule_id,
                        });
                    }
                }
                for (i, canary) in files.canaries.iter().enumerate() {
                    let rule_id = add_rule(policy, format!("files.canaries[{i}]"));
                    for path in expand(canary) {
                        file_sources.push(FileSource {
                            path,
                            rights: (0..right::COUNT).fold(0, |acc, r| acc | right::bit(r)),
                            decision: decision::CANARY,
                            rule_id,
                        });
                    }
                }
            }
            if let Some(exec) = &spec.exec {
                let d = action_decision(exec.default);
                if exec_default.is_none_or(|(current, _)| d == decision::DENY && current != d) {
                    exec_default = Some((d, add_rule(policy, "exec.default".into())));
                }
                allow_anonymous_exec &= exec.allow_anonymous;
                for (list, action, paths) in [
                    ("allow", Action::Allow, &exec.allow),
                    ("deny", Action::Deny, &exec.deny),
                ] {
                    for (i, rule_path) in paths.iter().enumerate() {
                        let rule_id = add_rule(policy, format!("exec.{list}[{i}]"));
                        for path in expand(rule_path) {
                            file_sources.push(FileSource {
                                path,
                                rights: right::bit(right::EXEC),
                                decision: action_decision(action),
                                rule_id,
                            });
                        }
                    }
                }
            } else {
                allow_anonymous_exec = false;
            }
        }
        let (egress_default, egress_default_rule) =
            egress_default.unwrap_or((decision::DENY, RuleId::NONE));
        let (file_default, file_default_rule) =
            file_default.unwrap_or((decision::ALLOW, RuleId::NONE));
        let (exec_default, exec_default_rule) =
            exec_default.unwrap_or((decision::ALLOW, RuleId::NONE));
        let compiled = CompiledAgent {
            cgroups: cgroups.into_iter().collect(),
            executables: executables.into_iter().collect(),
            allow_icmp: any_egress && allow_icmp,
            families: agent_common::identity::DEFAULT_FAMILIES | extra_families.unwrap_or(0),
            allow_privilege_escalation: escalation.unwrap_or(false),
            explain,
            policies: selecting
                .iter()
                .map(|p| p.document.metadata.name.to_string())
                .collect(),
            mode: if any_enforce {
                mode::ENFORCE
            } else {
                mode::AUDIT
            },
            egress_default,
            egress_default_rule,
            file_default,
            file_default_rule,
            exec_default,
            exec_default_rule,
            allow_anonymous_exec,
            allow_namespaces,
            kill_on_detect,
            connects_per_second: connects_per_second.unwrap_or(0),
            max_processes,
            breakers,
            egress: flatten_egress(&agent, &egress_sources)?,
            domains,
            files: flatten_files(&file_sources),
            file_rules: file_sources
                .iter()
                // Secrets are no file rule: they decide nothing.
                .filter(|s| s.rights & right::ALL != 0)
                .map(|s| SourceRule {
                    path: s.path.0.clone(),
                    rights: s.rights,
                    decision: s.decision,
                })
                .collect(),
            after_secret: match after_secret_rule {
                Some(rule_id) if !secrets.is_empty() => {
                    after_secret_sources.push(EgressSource {
                        addr: [0; 16],
                        prefix_len: 0,
                        ports: Vec::new(),
                        protocols: protocol::ANY,
                        decision: decision::DENY,
                        rule_id,
                    });
                    flatten_egress(&agent, &after_secret_sources)?
                }
                _ => Vec::new(),
            },
            after_secret_rule: after_secret_rule
                .filter(|_| !secrets.is_empty())
                .unwrap_or(RuleId::NONE),
            secrets,
        };
        agents.insert(agent, compiled);
    }
    Ok(CompiledPolicySet {
        agents,
        rules,
        first_rule_id,
    })
}

/// The agent a policy selects: `selector.agent`, or the policy's own name.
pub fn agent_name(policy: &LoadedPolicy) -> Name {
    policy
        .document
        .spec
        .selector
        .agent
        .clone()
        .unwrap_or_else(|| policy.document.metadata.name.clone())
}

/// The policy key under which a selector of kind `what` is written.
fn selector_key(what: &str) -> &'static str {
    match what {
        "cgroup" => "cgroups",
        "systemd unit" => "systemdUnits",
        _ => "executables",
    }
}

/// Refuses a cgroup, unit or executable selected by two different agents:
/// a process can belong to one agent only, so the policies contradict.
fn check_selectors(by_agent: &BTreeMap<Name, Vec<&LoadedPolicy>>) -> Result<(), CompileError> {
    let mut owners: BTreeMap<(&'static str, String), (&Name, &LoadedPolicy)> = BTreeMap::new();
    for (agent, policies) in by_agent {
        for policy in policies {
            let selector = &policy.document.spec.selector;
            let items = selector
                .cgroups
                .iter()
                .map(|c| ("cgroup", c.0.clone()))
                .chain(
                    selector
                        .systemd_units
                        .iter()
                        .map(|u| ("systemd unit", u.0.clone())),
                )
                .chain(
                    selector
                        .executables
                        .iter()
                        .map(|e| ("executable", e.0.clone())),
                );
            for (what, item) in items {
                let policy_name = policy.document.metadata.name.as_str();
                match owners.get(&(what, item.clone())) {
                    Some((first, first_policy)) if *first != agent => {
                        let key = selector_key(what);
                        return Err(CompileError::AmbiguousSelector(format!(
                            "{}: {what} {item} is selected by agent {first} (policy {}, {}) and agent {agent} (policy {policy_name})",
                            super::load::place(&policy.source, key, &item),
                            first_policy.document.metadata.name.as_str(),
                            super::load::place(&first_policy.source, key, &item),
                        )));
                    }
                    Some(_) => {}
                    None => {
                        owners.insert((what, item), (agent, policy));
                    }
                }
            }
        }
    }
    Ok(())
}

fn flatten_egress(
    agent: &Name,
    sources: &[EgressSource],
) -> Result<Vec<EgressEntry>, CompileError> {
    let prefixes: BTreeSet<([u8; 16], u32)> =
        sources.iter().map(|s| (s.addr, s.prefix_len)).collect();
    let mut entries = Vec::new();
    for prefix in prefixes {
        let mut covering: Vec<&EgressSource> = sources
            .iter()
            .filter(|s| covers(&(s.addr, s.prefix_len), &prefix))
            .collect();
        // Most specific first; deny before allow at equal specificity; then
        // the order rules were written in.
        covering.sort_by_key(|s| {
            (
                std::cmp::Reverse(s.prefix_len),
                s.decision != decision::DENY,
            )
        });
        let mut rows = Vec::new();
        for source in covering {
            let ports = if source.ports.is_empty() {
                vec![PortRange::ALL]
            } else {
                source.ports.clone()
            };
            for range in ports {
                rows.push(PortRule {
                    port_lo: range.first,
                    port_hi: range.last,
                    protocols: source.protocols,
                    decision: source.decision,
                    _pad: [0; 2],
                    rule_id: source.rule_id.raw(),
                });
            }
        }
        if rows.len() > PORT_TABLE_ROWS {
            return Err(CompileError::TooManyPortRows {
                agent: agent.to_string(),
                prefix: format_prefix(prefix.0, prefix.1),
                rows: rows.len(),
            });
        }
        entries.push(EgressEntry {
            addr: prefix.0,
            prefix_len: prefix.1,
            rows,
        });
    }
    Ok(entries)
}

fn flatten_files(sources: &[FileSource]) -> Vec<FileEntry> {
    let paths: BTreeSet<&AbsolutePath> = sources.iter().map(|s| &s.path).collect();
    // The rules that cover a path are the rules on the path itself and on
    // each of its ancestors: looking those few up, rather than testing
    // every rule against every path, keeps a set of tens of thousands of
    // rules from taking seconds. Within a path the rules keep their order.
    let mut by_path: HashMap<&str, Vec<(usize, &FileSource)>> = HashMap::new();
    for (at, source) in sources.iter().enumerate() {
        by_path
            .entry(source.path.0.as_str())
            .or_default()
            .push((at, source));
    }
    let mut entries = Vec::new();
    for path in paths {
        let mut covering: Vec<(usize, &FileSource)> = path
            .ancestors()
            .filter_map(|ancestor| by_path.get(ancestor))
            .flatten()
            .copied()
            .collect();
        // In the order of `sources`, so that ties between equally specific
        // rules go where they always went (to the last one).
        covering.sort_unstable_by_key(|&(at, _)| at);
        let covering: Vec<&FileSource> = covering.into_iter().map(|(_, s)| s).collect();
        let mut value = FileValue::default();
        for (r, (slot_decision, slot_rule)) in value
            .decisions
            .iter_mut()
            .zip(value.rule_ids.iter_mut())
            .enumerate()
            .take(RIGHT_SLOTS)
        {
            let best = covering
                .iter()
                .filter(|s| s.rights & right::bit(r) != 0)
                // Most specific first; at equal specificity a canary beats a
                // deny, which beats an allow.
                .max_by_key(|s| {
                    (
                        s.path.0.len(),
                        s.decision != decision::ALLOW,
                        s.decision == decision::CANARY,
                    )
                });
            if let Some(best) = best {
                *slot_decision = best.decision;
                *slot_rule = best.rule_id.raw();
            }
        }
        entries.push(FileEntry {
            key: path.key_bytes(),
            value,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::load::parse_str;

    fn compile_text(text: &str) -> CompiledPolicySet {
        compile(
            &parse_str(Path::new("p.yaml"), text).unwrap(),
            RuleId::FIRST,
        )
        .unwrap()
    }

    const HEAD: &str = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: p
spec:
  selector:
    agent: a
";

    #[test]
    fn specific_rules_come_first_and_deny_wins_ties() {
        let set = compile_text(&format!(
            "{HEAD}  egress:
    allow:
      - cidr: 10.0.0.0/8
      - cidr: 10.1.0.0/16
        ports: [443]
    deny:
      - cidr: 10.1.0.0/16
"
        ));
        let agent = &set.agents["a"];
        assert_eq!(agent.egress.len(), 2);
        let inner = agent
            .egress
            .iter()
            .find(|e| e.prefix_len == 96 + 16)
            .unwrap();
        // deny /16, allow /16:443, allow /8
        assert_eq!(inner.rows.len(), 3);
        assert_eq!(inner.rows[0].decision, decision::DENY);
        assert_eq!(inner.rows[1].decision, decision::ALLOW);
        assert_eq!(inner.rows[1].port_lo, 443);
        assert_eq!(inner.rows[2].port_hi, u16::MAX);
        assert_eq!(
            set.rule(RuleId::from_raw(inner.rows[0].rule_id))
                .unwrap()
                .rule,
            "egress.deny[0]"
        );
        assert_eq!(agent.egress_default, decision::DENY);
    }

    #[test]
    fn secrets_mark_their_paths_and_narrow_egress_to_after_secret() {
        let set = compile_text(&format!(
            "{HEAD}  egress:
    allow:
      - cidr: 127.0.0.0/8
    afterSecret:
      allow:
        - cidr: 127.0.0.1
          ports: [8080]
  files:
    deny: [/srv/x/private]
    secrets: [/srv/x]
"
        ));
        let agent = &set.agents["a"];
        let secret = RuleId::from_raw(agent.secrets[0].1.raw());
        assert_eq!(agent.secrets[0].0, "/srv/x");
        assert_eq!(set.rule(secret).unwrap().rule, "files.secrets[0]");
        // The secret's slot is inherited below it, beside the rights.
        let below = agent
            .files
            .iter()
            .find(|e| e.key == b"/srv/x/private/")
            .unwrap();
        assert_eq!(below.value.decisions[SECRET_SLOT], decision::ALLOW);
        assert_eq!(below.value.rule_ids[SECRET_SLOT], secret.raw());
        assert_eq!(below.value.decisions[right::READ], decision::DENY);
        // No file rule of its own: Landlock and the linter never see it.
        assert!(agent.file_rules.iter().all(|r| r.path != "/srv/x"));
        // The narrowed rules: the one address and port, then nothing.
        let catch_all = agent
            .after_secret
            .iter()
            .find(|e| e.prefix_len == 0)
            .unwrap();
        assert_eq!(catch_all.rows.len(), 1);
        assert_eq!(catch_all.rows[0].decision, decision::DENY);
        assert_eq!(
            set.rule(RuleId::from_raw(catch_all.rows[0].rule_id))
                .unwrap()
                .rule,
            "egress.afterSecret"
        );
        let host = agent
            .after_secret
            .iter()
            .find(|e| e.prefix_len == 128)
            .unwrap();
        assert_eq!(host.rows[0].decision, decision::ALLOW);
        assert_eq!((host.rows[0].port_lo, host.rows[0].port_hi), (8080, 8080));
        assert_eq!(host.rows[1].decision, decision::DENY);
    }

    #[test]
    fn secrets_without_after_secret_mean_quarantine_and_no_secrets_no_narrowing() {
        let set = compile_text(&format!(
            "{HEAD}  egress:
    default: allow
  files:
    secrets: [/srv/token]
"
        ));
        let after = &set.agents["a"].after_secret;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].prefix_len, 0);
        assert_eq!(after[0].rows[0].decision, decision::DENY);
        let set = compile_text(&format!(
            "{HEAD}  egress:
    afterSecret: quarantine
"
        ));
        assert!(set.agents["a"].after_secret.is_empty());
    }

    #[test]
    fn ipv4_mapped_rules_are_ipv4_rules() {
        let set = compile_text(&format!(
            "{HEAD}  egress:
    allow:
      - cidr: ::ffff:127.0.0.1
      - cidr: 127.0.0.1
"
        ));
        assert_eq!(set.agents["a"].egress.len(), 1);
    }

    #[test]
    fn files_resolve_per_right_on_component_boundaries() {
        let set = compile_text(&format!(
            "{HEAD}  files:
    deny:
      - /x/.ssh
"
        ));
        let agent = &set.agents["a"];
        assert_eq!(agent.files[0].key, b"/x/.ssh/");
        assert_eq!(agent.files[0].value.decisions[right::READ], decision::DENY);
        assert_eq!(agent.file_default, decision::ALLOW);
    }

    #[test]
    fn too_many_port_rows_is_an_error() {
        let ports: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        let text = format!(
            "{HEAD}  egress:
    allow:
      - cidr: 10.0.0.0/8
        ports: [{}]
",
            ports.join(", ")
        );
        let error = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            RuleId::FIRST,
        )
        .unwrap_err();
        assert!(error.to_string().contains("10.0.0.0/8"), "{error}");
    }

    #[test]
    fn one_cgroup_cannot_select_two_agents() {
        let text = format!(
            "{}---\n{}",
            HEAD.replace("    agent: a\n", "    agent: a\n    cgroups: [/x]\n"),
            HEAD.replace("name: p", "name: q")
                .replace("    agent: a\n", "    agent: b\n    cgroups: [/x/]\n")
        );
        let error = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            RuleId::FIRST,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cgroup /x is selected by agent a"),
            "{error}"
        );
    }

    #[test]
    fn agent_defaults_to_the_policy_name_and_units_become_cgroups() {
        let text = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: coder
spec:
  selector:
    systemdUnits: [coder.service]
  egress:
    icmp: allow
";
        let set = compile_text(text);
        let agent = &set.agents["coder"];
        assert_eq!(agent.cgroups, vec!["/system.slice/coder.service"]);
        assert!(agent.allow_icmp);
    }

    #[test]
    fn merged_policies_take_the_strictest_settings() {
        let text = format!(
            "{HEAD}  mode: audit
  egress:
    default: allow
---
{}  egress:
    default: deny
",
            HEAD.replace("name: p", "name: q")
        );
        let set = compile_text(&text);
        let agent = &set.agents["a"];
        assert_eq!(agent.mode, mode::ENFORCE);
        assert_eq!(agent.egress_default, decision::DENY);
        assert_eq!(agent.policies, vec!["p", "q"]);
    }
}

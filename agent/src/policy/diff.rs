//! `baton policy diff`: what a new policy set allows or denies that the old
//! one did not, per agent.
//!
//! Rules are compared as they are merged for each agent (every policy that
//! selects the agent together), so moving a rule between files or policies
//! is no change, and a rule written twice counts once. Each change is
//! classed by its effect: it *allows* something the old set did not (an
//! allow rule added, a deny rule removed, a default or mode loosened), it
//! *denies* something the old set did not, or it is neither (selectors,
//! breakers).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use thiserror::Error;

use super::{
    compile::{CompileError, CompiledAgent, agent_name, compile_with, expand_literally},
    load::LoadedPolicy,
    spec::{EgressRule, EgressTarget, FileRight, PortRange, Protocol},
};
use agent_common::verdict::{decision, mode};

/// Errors of [`diff`].
#[derive(Debug, Error)]
pub enum DiffError {
    /// One side does not compile.
    #[error("the {side} policies do not compile: {source}")]
    Compile {
        /// `old` or `new`.
        side: &'static str,
        /// Why.
        source: CompileError,
    },
}

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The new set allows something the old one denied.
    Allows,
    /// The new set denies something the old one allowed.
    Denies,
    /// Neither: which processes are the agent, breakers.
    Other,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Its effect.
    pub effect: Effect,
    /// `egress`, `files`, `exec`, `mode`, `selector`, `limits`, `breakers`
    /// or `agent`.
    pub area: &'static str,
    /// What is concerned: `egress to 10.0.0.0/8, port 443, tcp`.
    pub subject: String,
    /// How it changed: `allow rule added`, `default deny -> allow`.
    pub change: String,
    /// The rules concerned, as `policy: rule` (`demo: egress.allow[2]`);
    /// from the new set for additions, the old set for removals.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

/// Whether an agent is new, gone or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Only the new set selects it.
    Added,
    /// Only the old set selects it.
    Removed,
    /// Both do, differently.
    Changed,
}

/// The changes for one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentDiff {
    /// The agent.
    pub agent: String,
    /// Added, removed or changed.
    pub status: AgentStatus,
    /// The changes, those that allow more first.
    pub changes: Vec<Change>,
}

/// The changes between two sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Agents with changes, by name.
    pub agents: Vec<AgentDiff>,
    /// Agents both sets select in the same way.
    pub unchanged: Vec<String>,
}

/// Whether a rule allows (`true`) or denies; part of a rule's key.
type Allow = bool;

/// Rules as they are merged for one agent, keyed by what they say; the
/// values name the rules that say it.
#[derive(Default)]
struct View {
    present: bool,
    policies: Vec<String>,
    mode: Option<u8>,
    egress_default: Option<u8>,
    icmp: Option<bool>,
    egress: BTreeMap<(Allow, String), Vec<String>>,
    file_default: Option<u8>,
    files: BTreeMap<(Allow, String), Vec<String>>,
    canaries: BTreeMap<String, Vec<String>>,
    secrets: BTreeMap<String, Vec<String>>,
    after_secret: BTreeMap<String, Vec<String>>,
    exec_default: Option<u8>,
    exec: BTreeMap<(Allow, String), Vec<String>>,
    anonymous_exec: Option<bool>,
    namespaces: Option<bool>,
    selectors: BTreeSet<String>,
    limits: BTreeMap<&'static str, Option<u32>>,
    breakers: BTreeMap<String, String>,
}

/// `10.0.0.0/8, port 443, tcp` or `names matching *.example.com, every port`.
pub fn describe_egress(rule: &EgressRule) -> String {
    let target = match &rule.target {
        EgressTarget::Cidr(cidr) => cidr.0.to_string(),
        EgressTarget::Domain(pattern) => format!("names matching {pattern} (their addresses)"),
    };
    let protocol = match rule.protocol {
        Protocol::Any => String::new(),
        Protocol::Tcp => ", tcp".into(),
        Protocol::Udp => ", udp".into(),
    };
    format!("{target}, {}{protocol}", describe_ports(&rule.ports))
}

fn describe_ports(ports: &[PortRange]) -> String {
    if ports.is_empty() || ports.contains(&PortRange::ALL) {
        return "every port".into();
    }
    let list: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.first == p.last {
                p.first.to_string()
            } else {
                format!("{}-{}", p.first, p.last)
            }
        })
        .collect();
    let noun = if list.len() == 1 && ports[0].first == ports[0].last {
        "port"
    } else {
        "ports"
    };
    format!("{noun} {}", list.join(", "))
}

fn describe_rights(rights: &[FileRight]) -> String {
    let mut names: Vec<&str> = rights
        .iter()
        .map(|r| match r {
            FileRight::Read => "read",
            FileRight::Write => "write",
            FileRight::Create => "create",
            FileRight::Delete => "delete",
            FileRight::Rename => "rename",
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() == FileRight::ALL.len() {
        "every right".into()
    } else {
        names.join(", ")
    }
}

fn view_of(agent: &str, policies: &[LoadedPolicy], compiled: Option<&CompiledAgent>) -> View {
    let mut view = View::default();
    let Some(compiled) = compiled else {
        return view;
    };
    view.present = true;
    view.policies = compiled.policies.clone();
    view.mode = Some(compiled.mode);
    view.egress_default = Some(compiled.egress_default);
    view.icmp = Some(compiled.allow_icmp);
    view.file_default = Some(compiled.file_default);
    view.exec_default = Some(compiled.exec_default);
    view.anonymous_exec = Some(compiled.allow_anonymous_exec);
    view.namespaces = Some(compiled.allow_namespaces);
    view.selectors.insert(format!("baton exec --agent {agent}"));
    view.selectors
        .extend(compiled.cgroups.iter().map(|c| format!("cgroup {c}")));
    view.selectors.extend(
        compiled
            .executables
            .iter()
            .map(|e| format!("executable {e}")),
    );
    let mut connects = None;
    let mut processes = None;
    for policy in policies.iter().filter(|p| agent_name(p).as_str() == agent) {
        let name = policy.document.metadata.name.as_str();
        let spec = &policy.document.spec;
        let cite = |rule: String| format!("{name}: {rule}");
        if let Some(egress) = &spec.egress {
            for (list, action, rules) in [
                ("allow", true, &egress.allow),
                ("deny", false, &egress.deny),
            ] {
                for (i, rule) in rules.iter().enumerate() {
                    view.egress
                        .entry((action, describe_egress(rule)))
                        .or_default()
                        .push(cite(format!("egress.{list}[{i}]")));
                }
            }
            for (i, rule) in egress
                .after_secret
                .iter()
                .flat_map(|a| a.allow.iter())
                .enumerate()
            {
                view.after_secret
                    .entry(describe_egress(rule))
                    .or_default()
                    .push(cite(format!("egress.afterSecret.allow[{i}]")));
            }
        }
        if let Some(files) = &spec.files {
            for (list, action, rules) in
                [("allow", true, &files.allow), ("deny", false, &files.deny)]
            {
                for (i, rule) in rules.iter().enumerate() {
                    let subject = format!(
                        "files under {} ({})",
                        rule.path.0,
                        describe_rights(&rule.rights)
                    );
                    view.files
                        .entry((action, subject))
                        .or_default()
                        .push(cite(format!("files.{list}[{i}]")));
                }
            }
            for (i, canary) in files.canaries.iter().enumerate() {
                view.canaries
                    .entry(canary.0.clone())
                    .or_default()
                    .push(cite(format!("files.canaries[{i}]")));
            }
            for (i, secret) in files.secrets.iter().enumerate() {
                view.secrets
                    .entry(secret.0.clone())
                    .or_default()
                    .push(cite(format!("files.secrets[{i}]")));
            }
        }
        if let Some(exec) = &spec.exec {
            for (list, action, paths) in [("allow", true, &exec.allow), ("deny", false, &exec.deny)]
            {
                for (i, path) in paths.iter().enumerate() {
                    view.exec
                        .entry((action, format!("executing {} and below", path.0)))
                        .or_default()
                        .push(cite(format!("exec.{list}[{i}]")));
                }
            }
        }
        if let Some(limits) = &spec.limits {
            // Merged policies: the strictest limit applies.
            let strictest = |current: Option<u32>, new: Option<u32>| match (current, new) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            connects = strictest(connects, limits.connects_per_second);
            processes = strictest(processes, limits.processes);
        }
        for breaker in &spec.breakers {
            let summary = serde_json::to_string(breaker).unwrap_or_default();
            view.breakers
                .insert(format!("{name}/{}", breaker.name.as_str()), summary);
        }
    }
    view.limits.insert("connectsPerSecond", connects);
    view.limits.insert("processes", processes);
    view
}

fn action_word(value: u8) -> &'static str {
    if value == decision::ALLOW {
        "allow"
    } else {
        "deny"
    }
}

/// Compares two sets of policies.
pub fn diff(old: &[LoadedPolicy], new: &[LoadedPolicy]) -> Result<PolicyDiff, DiffError> {
    let compile_side = |policies: &[LoadedPolicy], side: &'static str| {
        compile_with(policies, crate::ids::RuleId::FIRST, &expand_literally)
            .map_err(|source| DiffError::Compile { side, source })
    };
    let old_set = compile_side(old, "old")?;
    let new_set = compile_side(new, "new")?;
    let agents: BTreeSet<&str> = old_set
        .agents
        .keys()
        .chain(new_set.agents.keys())
        .map(|n| n.as_str())
        .collect();
    let mut result = PolicyDiff::default();
    for agent in agents {
        let find = |set: &super::CompiledPolicySet| {
            set.agents
                .iter()
                .find(|(name, _)| name.as_str() == agent)
                .map(|(_, a)| a.clone())
        };
        let before = view_of(agent, old, find(&old_set).as_ref());
        let after = view_of(agent, new, find(&new_set).as_ref());
        let status = match (before.present, after.present) {
            (false, _) => AgentStatus::Added,
            (_, false) => AgentStatus::Removed,
            _ => AgentStatus::Changed,
        };
        let mut changes = if status == AgentStatus::Removed {
            vec![Change {
                effect: Effect::Denies,
                area: "agent",
                subject: format!("agent {agent}"),
                change: "no policy selects it any more: `baton exec --agent` is refused, and \
                         processes already in the agent are held closed (every connect denied)"
                    .into(),
                rules: before
                    .policies
                    .iter()
                    .map(|p| format!("{p}: removed"))
                    .collect(),
            }]
        } else {
            compare(&before, &after)
        };
        changes.sort_by_key(|c| c.effect);
        if changes.is_empty() {
            result.unchanged.push(agent.to_string());
        } else {
            result.agents.push(AgentDiff {
                agent: agent.to_string(),
                status,
                changes,
            });
        }
    }
    Ok(result)
}

fn compare(before: &View, after: &View) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut push = |effect, area, subject: String, change: String, rules: Vec<String>| {
        changes.push(Change {
            effect,
            area,
            subject,
            change,
            rules,
        })
    };
    let new_agent = !before.present;
    if new_agent {
        push(
            Effect::Other,
            "agent",
            "new agent".into(),
            format!(
                "mode {}, egress default {}, files default {}, exec default {}",
                if after.mode == Some(mode::AUDIT) {
                    "audit"
                } else {
                    "enforce"
                },
                action_word(after.egress_default.unwrap_or(decision::DENY)),
                action_word(after.file_default.unwrap_or(decision::ALLOW)),
                action_word(after.exec_default.unwrap_or(decision::ALLOW)),
            ),
            after.policies.clone(),
        );
    } else {
        if before.mode != after.mode {
            let loosened = after.mode == Some(mode::AUDIT);
            push(
                if loosened {
                    Effect::Allows
                } else {
                    Effect::Denies
                },
                "mode",
                "everything the policy denies".into(),
                if loosened {
                    "mode enforce -> audit: only recorded now, never denied".into()
                } else {
                    "mode audit -> enforce: denied now, no longer only recorded".into()
                },
                Vec::new(),
            );
        }
        for (area, subject, old, new) in [
            (
                "egress",
                "egress to destinations no rule names",
                before.egress_default,
                after.egress_default,
            ),
            (
                "files",
                "files no rule names",
                before.file_default,
                after.file_default,
            ),
            (
                "exec",
                "executing programs no rule names",
                before.exec_default,
                after.exec_default,
            ),
        ] {
            if let (Some(old), Some(new)) = (old, new)
                && old != new
            {
                push(
                    if new == decision::ALLOW {
                        Effect::Allows
                    } else {
                        Effect::Denies
                    },
                    area,
                    subject.into(),
                    format!("default {} -> {}", action_word(old), action_word(new)),
                    Vec::new(),
                );
            }
        }
        for (area, subject, old, new) in [
            ("egress", "ICMP (ping) sockets", before.icmp, after.icmp),
            (
                "exec",
                "executing files with no name on disk (memfd, deleted files)",
                before.anonymous_exec,
                after.anonymous_exec,
            ),
            (
                "process",
                "user namespaces, mounts, chroot and pivot_root",
                before.namespaces,
                after.namespaces,
            ),
        ] {
            if let (Some(old), Some(new)) = (old, new)
                && old != new
            {
                push(
                    if new { Effect::Allows } else { Effect::Denies },
                    area,
                    subject.into(),
                    if new {
                        "deny -> allow"
                    } else {
                        "allow -> deny"
                    }
                    .into(),
                    Vec::new(),
                );
            }
        }
    }
    for (area, old, new) in [
        ("egress", &before.egress, &after.egress),
        ("files", &before.files, &after.files),
        ("exec", &before.exec, &after.exec),
    ] {
        for ((action, subject), rules) in new.iter().filter(|(k, _)| !old.contains_key(*k)) {
            let (effect, word) = if *action {
                (Effect::Allows, "allow")
            } else {
                (Effect::Denies, "deny")
            };
            let subject = if area == "egress" {
                format!("egress to {subject}")
            } else {
                subject.clone()
            };
            push(
                effect,
                area,
                subject,
                format!("{word} rule added"),
                rules.clone(),
            );
        }
        for ((action, subject), rules) in old.iter().filter(|(k, _)| !new.contains_key(*k)) {
            let (effect, word) = if *action {
                (Effect::Denies, "allow")
            } else {
                (Effect::Allows, "deny")
            };
            let subject = if area == "egress" {
                format!("egress to {subject}")
            } else {
                subject.clone()
            };
            push(
                effect,
                area,
                subject,
                format!("{word} rule removed"),
                rules.clone(),
            );
        }
    }
    for (path, rules) in after
        .canaries
        .iter()
        .filter(|(p, _)| !before.canaries.contains_key(*p))
    {
        push(
            Effect::Denies,
            "files",
            format!("canary {path}"),
            "added: any access is denied and trips canary breakers".into(),
            rules.clone(),
        );
    }
    for (path, rules) in before
        .canaries
        .iter()
        .filter(|(p, _)| !after.canaries.contains_key(*p))
    {
        push(
            Effect::Allows,
            "files",
            format!("canary {path}"),
            "removed".into(),
            rules.clone(),
        );
    }
    let changed = |old: &BTreeMap<String, Vec<String>>, new: &BTreeMap<String, Vec<String>>| {
        new.iter()
            .filter(|(key, _)| !old.contains_key(*key))
            .map(|(key, rules)| (key.clone(), rules.clone()))
            .collect::<Vec<_>>()
    };
    for (path, rules) in changed(&before.secrets, &after.secrets) {
        push(
            Effect::Denies,
            "files",
            format!("secret {path}"),
            "added: reading it narrows the agent's egress to afterSecret".into(),
            rules,
        );
    }
    for (path, rules) in changed(&after.secrets, &before.secrets) {
        push(
            Effect::Allows,
            "files",
            format!("secret {path}"),
            "removed".into(),
            rules,
        );
    }
    for (subject, rules) in changed(&before.after_secret, &after.after_secret) {
        push(
            Effect::Allows,
            "egress",
            format!("after a secret: {subject}"),
            "allow rule added".into(),
            rules,
        );
    }
    for (subject, rules) in changed(&after.after_secret, &before.after_secret) {
        push(
            Effect::Denies,
            "egress",
            format!("after a secret: {subject}"),
            "allow rule removed".into(),
            rules,
        );
    }
    if before.present {
        for (name, old) in &before.limits {
            let new = after.limits.get(name).copied().flatten();
            if *old == new {
                continue;
            }
            let loosened = match (old, new) {
                (Some(a), Some(b)) => b > *a,
                (Some(_), None) => true,
                _ => false,
            };
            let show = |v: Option<u32>| v.map_or("none".to_string(), |v| v.to_string());
            push(
                if loosened {
                    Effect::Allows
                } else {
                    Effect::Denies
                },
                "limits",
                format!("limits.{name}"),
                format!("{} -> {}", show(*old), show(new)),
                Vec::new(),
            );
        }
    }
    for selector in after.selectors.difference(&before.selectors) {
        if !new_agent {
            push(
                Effect::Other,
                "selector",
                format!("selected by {selector}"),
                "added".into(),
                Vec::new(),
            );
        }
    }
    for selector in before.selectors.difference(&after.selectors) {
        push(
            Effect::Other,
            "selector",
            format!("selected by {selector}"),
            "removed".into(),
            Vec::new(),
        );
    }
    for (name, summary) in &after.breakers {
        match before.breakers.get(name) {
            None => push(
                Effect::Other,
                "breakers",
                format!("breaker {name}"),
                "added".into(),
                Vec::new(),
            ),
            Some(old) if old != summary => push(
                Effect::Other,
                "breakers",
                format!("breaker {name}"),
                "changed".into(),
                Vec::new(),
            ),
            Some(_) => {}
        }
    }
    for name in before
        .breakers
        .keys()
        .filter(|n| !after.breakers.contains_key(*n))
    {
        push(
            Effect::Other,
            "breakers",
            format!("breaker {name}"),
            "removed".into(),
            Vec::new(),
        );
    }
    changes
}

impl PolicyDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The diff for a person to read.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for agent in &self.agents {
            let status = match agent.status {
                AgentStatus::Added => "new",
                AgentStatus::Removed => "removed",
                AgentStatus::Changed => "changed",
            };
            out.push_str(&format!("agent {} ({status})\n", agent.agent));
            for (effect, heading) in [
                (Effect::Allows, "now allowed"),
                (Effect::Denies, "now denied"),
                (Effect::Other, "other changes"),
            ] {
                let changes: Vec<&Change> = agent
                    .changes
                    .iter()
                    .filter(|c| c.effect == effect)
                    .collect();
                if changes.is_empty() {
                    continue;
                }
                out.push_str(&format!("  {heading}:\n"));
                for change in changes {
                    let sign = match effect {
                        Effect::Allows => '+',
                        Effect::Denies => '-',
                        Effect::Other => '~',
                    };
                    out.push_str(&format!("    {sign} {}: {}", change.subject, change.change));
                    if !change.rules.is_empty() {
                        out.push_str(&format!(" [{}]", change.rules.join(", ")));
                    }
                    out.push('\n');
                }
            }
        }
        let count = |effect| {
            self.agents
                .iter()
                .flat_map(|a| &a.changes)
                .filter(|c| c.effect == effect)
                .count()
        };
        if self.agents.is_empty() {
            out.push_str("no change");
        } else {
            out.push_str(&format!(
                "{} agent(s) changed: {} change(s) allow more, {} deny more, {} other",
                self.agents.len(),
                count(Effect::Allows),
                count(Effect::Denies),
                count(Effect::Other)
            ));
        }
        if !self.unchanged.is_empty() {
            out.push_str(&format!("; unchanged: {}", self.unchanged.join(", ")));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse_str;

    fn set(text: &str) -> Vec<LoadedPolicy> {
        parse_str(Path::new("p.yaml"), text).unwrap()
    }

    fn policy(name: &str, agent: &str, body: &str) -> String {
        format!(
            "---\napiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    agent: {agent}\n{body}"
        )
    }

    #[test]
    fn classifies_changes() {
        let old = set(&policy(
            "p",
            "a",
            "  egress:\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: [443]\n    deny:\n      - cidr: 10.9.0.0/16\n",
        ));
        let new = set(&format!(
            "{}{}",
            policy(
                "p",
                "a",
                "  mode: audit\n  egress:\n    default: allow\n    allow:\n      - cidr: 10.0.0.0/8\n        ports: [443, 8443]\n",
            ),
            policy(
                "q",
                "b",
                "  egress:\n    allow:\n      - domain: api.example.com\n"
            ),
        ));
        let diff = diff(&old, &new).unwrap();
        let a = &diff.agents[0];
        assert_eq!(a.status, AgentStatus::Changed);
        let subjects: Vec<(Effect, &str, &str)> = a
            .changes
            .iter()
            .map(|c| (c.effect, c.subject.as_str(), c.change.as_str()))
            .collect();
        assert!(subjects.contains(&(
            Effect::Allows,
            "egress to 10.0.0.0/8, ports 443, 8443",
            "allow rule added"
        )));
        assert!(subjects.contains(&(
            Effect::Denies,
            "egress to 10.0.0.0/8, port 443",
            "allow rule removed"
        )));
        assert!(subjects.contains(&(
            Effect::Allows,
            "egress to 10.9.0.0/16, every port",
            "deny rule removed"
        )));
        assert!(subjects.contains(&(
            Effect::Allows,
            "egress to destinations no rule names",
            "default deny -> allow"
        )));
        assert!(
            subjects
                .iter()
                .any(|s| s.0 == Effect::Allows && s.2.starts_with("mode enforce -> audit"))
        );
        assert_eq!(diff.agents[1].status, AgentStatus::Added);
        let text = diff.to_text();
        assert!(text.contains("agent b (new)"), "{text}");
        assert!(
            text.contains("+ egress to names matching api.example.com (their addresses), every port: allow rule added [q: egress.allow[0]]"),
            "{text}"
        );
    }

    #[test]
    fn moving_rules_between_policies_is_no_change() {
        let body = "  egress:\n    allow:\n      - cidr: 10.0.0.0/8\n";
        let old = set(&policy("p", "a", body));
        let new = set(&format!(
            "{}{}",
            policy("renamed", "a", body),
            policy("q", "a", body)
        ));
        let diff = diff(&old, &new).unwrap();
        assert!(diff.is_empty(), "{diff:?}");
        assert_eq!(diff.unchanged, vec!["a"]);
    }
}

//! Decisions of a compiled agent, computed the way the kernel programs and
//! the DNS proxy compute them, for tools (`baton policy diff`, `suggest`)
//! and tests that reason about a policy without a kernel.
//!
//! The decision is the policy's: an agent in audit mode is only recorded,
//! never denied, but this says what its policy decides.

use std::net::IpAddr;

use agent_common::{
    egress::{ipv4_mapped, protocol},
    files::right,
    verdict::decision,
};

use super::domain::{AgentNames, DomainRule};
use super::{
    compile::CompiledAgent,
    spec::{FileRight, Protocol},
};
use crate::ids::{AgentId, RuleId};

/// What a rule (or the default) decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// The kernel rule id that decided.
    pub rule_id: RuleId,
}

impl Decision {
    fn of(value: u8, rule_id: RuleId) -> Self {
        Self {
            allowed: value == decision::ALLOW,
            rule_id,
        }
    }
}

/// The 128-bit key of an address: IPv4 (and IPv4-mapped IPv6) as mapped.
fn key_of(addr: IpAddr) -> u128 {
    let bytes = match addr {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ipv4_mapped(v4.octets()),
            None => v6.octets(),
        },
    };
    u128::from_be_bytes(bytes)
}

/// The protocol bit of a connection: TCP or UDP (`Any` is treated as TCP).
fn protocol_bit(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp => protocol::UDP,
        Protocol::Tcp | Protocol::Any => protocol::TCP,
    }
}

/// Whether the agent's DNS proxy answers `name`, and with which rule.
pub fn resolves(agent: &CompiledAgent, name: &str) -> Option<RuleId> {
    names_of(agent).decide(name).map(|rule| rule.rule_id)
}

fn names_of(agent: &CompiledAgent) -> AgentNames {
    AgentNames {
        agent_id: AgentId::NONE,
        agent: String::new(),
        rules: domain_rules(agent),
        audit: false,
        grants: Vec::new(),
    }
}

/// The agent's domain allow rules, as its DNS proxy matches them.
pub fn domain_rules(agent: &CompiledAgent) -> Vec<DomainRule> {
    agent
        .domains
        .iter()
        .map(|d| DomainRule {
            pattern: d.pattern.clone(),
            rule_id: d.rule_id,
        })
        .collect()
}

/// A connect (or send) to `addr:port`. `learned_from` is the name the
/// agent resolved the address from through its DNS proxy, if it did.
///
/// As in the kernel: the most specific address rule whose ports and
/// protocol match decides; failing that, an address learned from an
/// allowed name opens the ports of that name's rule; failing that, the
/// default decides.
pub fn connect(
    agent: &CompiledAgent,
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
    learned_from: Option<&str>,
) -> Decision {
    let key = key_of(addr);
    let bit = protocol_bit(protocol);
    let most_specific = agent
        .egress
        .iter()
        .filter(|entry| {
            let mask = if entry.prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - entry.prefix_len.min(128))
            };
            u128::from_be_bytes(entry.addr) & mask == key & mask
        })
        .max_by_key(|entry| entry.prefix_len);
    let matching_row = |rows: &[agent_common::egress::PortRule]| {
        rows.iter()
            .find(|row| port >= row.port_lo && port <= row.port_hi && row.protocols & bit != 0)
            .map(|row| Decision::of(row.decision, RuleId::from_raw(row.rule_id)))
    };
    if let Some(decided) = most_specific.and_then(|entry| matching_row(&entry.rows)) {
        return decided;
    }
    if let Some(name) = learned_from
        && let Some(rule_id) = resolves(agent, name)
        && let Some(domain) = agent.domains.iter().find(|d| d.rule_id == rule_id)
        && let Some(decided) = matching_row(&domain.rows)
    {
        return decided;
    }
    Decision::of(agent.egress_default, agent.egress_default_rule)
}

/// Whether rule path `rule` (a component may be `*`) covers `path` on
/// component boundaries.
fn covers(rule: &str, path: &str) -> bool {
    let mut rule = rule.split('/').filter(|c| !c.is_empty());
    let mut path = path.split('/').filter(|c| !c.is_empty());
    loop {
        match (rule.next(), path.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(r), Some(p)) if r == "*" || r == p => {}
            _ => return false,
        }
    }
}

fn decide_path(agent: &CompiledAgent, path: &str, r: usize) -> Decision {
    let bit = right::bit(r);
    agent
        .file_rules
        .iter()
        .filter(|rule| rule.rights & bit != 0 && covers(&rule.path, path))
        // Most specific first, deny wins a tie: as the compiler flattens.
        .max_by_key(|rule| (rule.path.len(), rule.decision == decision::DENY))
        .map(|rule| Decision::of(rule.decision, RuleId::NONE))
        .unwrap_or_else(|| {
            if r == right::EXEC {
                Decision::of(agent.exec_default, agent.exec_default_rule)
            } else {
                Decision::of(agent.file_default, agent.file_default_rule)
            }
        })
}

/// Using `path` (as the kernel resolved it) with `right`. The rule id is 0
/// when a rule decided: file rules are evaluated as written, which also
/// covers `*` components without looking at the disk.
pub fn file(agent: &CompiledAgent, path: &str, right: FileRight) -> Decision {
    decide_path(agent, path, right.slot())
}

/// Executing (or mapping executable) `path`.
pub fn exec(agent: &CompiledAgent, path: &str) -> Decision {
    decide_path(agent, path, right::EXEC)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{compile, parse_str};

    fn agent(body: &str) -> CompiledAgent {
        let text = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n  selector:\n    agent: a\n{body}"
        );
        let set = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            RuleId::FIRST,
        )
        .unwrap();
        set.agents["a"].clone()
    }

    #[test]
    fn egress_as_the_kernel_decides() {
        let a = agent(
            "  egress:
    allow:
      - cidr: 10.0.0.0/8
      - domain: api.example.com
        ports: [443]
        protocol: tcp
    deny:
      - cidr: 10.1.0.0/16
        ports: [22]
",
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(connect(&a, ip("10.2.3.4"), 22, Protocol::Tcp, None).allowed);
        assert!(!connect(&a, ip("10.1.3.4"), 22, Protocol::Tcp, None).allowed);
        assert!(connect(&a, ip("10.1.3.4"), 80, Protocol::Udp, None).allowed);
        assert!(connect(&a, ip("::ffff:10.1.3.4"), 80, Protocol::Tcp, None).allowed);
        assert!(!connect(&a, ip("192.0.2.1"), 443, Protocol::Tcp, None).allowed);
        let learned = Some("api.example.com");
        assert!(connect(&a, ip("192.0.2.1"), 443, Protocol::Tcp, learned).allowed);
        assert!(!connect(&a, ip("192.0.2.1"), 443, Protocol::Udp, learned).allowed);
        assert!(resolves(&a, "API.example.com.").is_some());
        assert!(resolves(&a, "example.com").is_none());
    }

    #[test]
    fn files_and_exec_as_the_kernel_decides() {
        let a = agent(
            "  files:
    default: deny
    allow:
      - path: /home/*/projects
        rights: [read, write]
    deny:
      - /home/*/projects/.git
  exec:
    default: deny
    allow: [/usr/bin/git]
",
        );
        assert!(file(&a, "/home/bob/projects/x", FileRight::Write).allowed);
        assert!(!file(&a, "/home/bob/projects/x", FileRight::Delete).allowed);
        assert!(!file(&a, "/home/bob/projects/.git/config", FileRight::Read).allowed);
        assert!(!file(&a, "/home/bob/projects-old", FileRight::Read).allowed);
        assert!(exec(&a, "/usr/bin/git").allowed);
        assert!(!exec(&a, "/usr/bin/gitk").allowed);
    }
}

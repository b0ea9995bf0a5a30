//! `baton policy suggest`: learn mode.
//!
//! Reads the audit log of an agent that ran under a policy in audit mode
//! (which records, and does not deny, what the policy would deny) and
//! proposes the smallest policy that would have allowed all of it:
//!
//! * addresses the agent learned from names (the record's `domain`) become
//!   one `domain` rule per name, with the ports used; other addresses become
//!   `/32` or `/128` rules with their ports; TCP and UDP are kept apart
//!   where the kernel can keep them apart;
//! * files are grouped by directory: two or more paths observed in the same
//!   directory become one rule for that directory, unless it is too close
//!   to the root (`/`, `/etc`, `/home`), a home directory, or, for
//!   programs, a `bin` directory (granting `/usr/bin` would grant `nc`);
//! * `/proc/<pid>` becomes `/proc/*`, since pids differ between runs.
//!
//! The result is YAML with comments that say what was observed, how often,
//! and where a rule is wider than what was observed. It is parsed and
//! compiled before it is returned.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::BufRead,
    net::IpAddr,
    path::{Path, PathBuf},
};

use agent_common::egress::{LEARNED_ROWS, PORT_TABLE_ROWS};
use serde_json::Value;
use thiserror::Error;

use super::{
    compile::{compile_with, expand_literally},
    load::parse_str,
    spec::Name,
};

/// Errors of `suggest`.
#[derive(Debug, Error)]
pub enum SuggestError {
    /// An audit log could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The log holds no decision about the agent.
    #[error(
        "no decision record for agent {agent:?} in {records} records: was the agent run, \
         and under which name?"
    )]
    NoRecords {
        /// The agent.
        agent: String,
        /// Records read.
        records: usize,
    },
    /// The policy name is not valid.
    #[error("--name: {0}")]
    Name(String),
    /// The proposal does not parse or compile: a bug in `suggest`.
    #[error("the suggested policy is not valid, which is a bug: {message}\n{yaml}")]
    Invalid {
        /// Why.
        message: String,
        /// The proposal.
        yaml: String,
    },
}

/// Directories of programs: granting one grants every tool in it.
const BIN_DIRS: [&str; 6] = [
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// Rights a `files` rule can name.
const FILE_RIGHTS: [&str; 5] = ["read", "write", "create", "delete", "rename"];

/// What the agent did with one name.
#[derive(Default)]
struct NameUse {
    /// Resolutions, by query type.
    queries: BTreeMap<String, usize>,
    /// Connections, by (port, protocol).
    ports: BTreeMap<(u16, String), usize>,
    addresses: BTreeSet<IpAddr>,
}

/// Everything read about the agent.
#[derive(Default)]
struct Observed {
    decisions: usize,
    first: Option<String>,
    last: Option<String>,
    verdicts: BTreeMap<String, usize>,
    /// Per control: records decided by a default, and by a rule.
    by_default: BTreeMap<String, usize>,
    by_rule: BTreeMap<String, BTreeSet<String>>,
    names: BTreeMap<String, NameUse>,
    /// Connections to addresses not learned from a name, by (port, protocol).
    addresses: BTreeMap<IpAddr, BTreeMap<(u16, String), usize>>,
    icmp: usize,
    other_sockets: BTreeMap<String, usize>,
    /// File uses, by path and right.
    files: BTreeMap<String, BTreeMap<String, usize>>,
    /// Executions, by path.
    exec: BTreeMap<String, usize>,
    anonymous_exec: usize,
    unresolved: usize,
}

/// Proposes a policy for `agent` from audit log files (`-` is standard
/// input). The policy is named `name`, or after the agent.
pub fn suggest_from_files(
    paths: &[PathBuf],
    agent: &str,
    name: Option<&str>,
) -> Result<String, SuggestError> {
    let mut lines = Vec::new();
    for path in paths {
        let io = |source| SuggestError::Io {
            path: path.clone(),
            source,
        };
        if path == Path::new("-") {
            for line in std::io::stdin().lock().lines() {
                lines.push(line.map_err(io)?);
            }
        } else {
            let text = std::fs::read_to_string(path).map_err(io)?;
            lines.extend(text.lines().map(str::to_string));
        }
    }
    suggest(lines.iter().map(String::as_str), agent, name)
}

/// Proposes a policy for `agent` from audit log lines. Lines that are not
/// JSON objects (a torn last line, say) are skipped.
pub fn suggest<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    agent: &str,
    name: Option<&str>,
) -> Result<String, SuggestError> {
    let name = Name::parse(name.unwrap_or(agent)).map_err(SuggestError::Name)?;
    let mut observed = Observed::default();
    let mut records = 0;
    for line in lines {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        records += 1;
        if record["agent"].as_str() == Some(agent) {
            observed.add(&record);
        }
    }
    if observed.decisions == 0 {
        return Err(SuggestError::NoRecords {
            agent: agent.to_string(),
            records,
        });
    }
    let yaml = render(&observed, agent, &name);
    let policies =
        parse_str(Path::new("suggested.yaml"), &yaml).map_err(|e| SuggestError::Invalid {
            message: e.to_string(),
            yaml: yaml.clone(),
        })?;
    compile_with(&policies, crate::ids::RuleId::FIRST, &expand_literally).map_err(|e| {
        SuggestError::Invalid {
            message: e.to_string(),
            yaml: yaml.clone(),
        }
    })?;
    Ok(yaml)
}

impl Observed {
    fn add(&mut self, record: &Value) {
        let Some(verdict) = record["verdict"].as_str() else {
            return;
        };
        if verdict == "info" {
            return;
        }
        let control = record["control"].as_str().unwrap_or_default().to_string();
        let object = &record["object"];
        let counted = match control.as_str() {
            "dns" => self.add_dns(object),
            "egress" => self.add_egress(object),
            "file" | "exec" => self.add_file(object),
            _ => false,
        };
        if !counted {
            return;
        }
        self.decisions += 1;
        *self.verdicts.entry(verdict.to_string()).or_default() += 1;
        if let Some(time) = record["time"].as_str() {
            if self.first.as_deref().is_none_or(|f| time < f) {
                self.first = Some(time.to_string());
            }
            if self.last.as_deref().is_none_or(|l| time > l) {
                self.last = Some(time.to_string());
            }
        }
        if let Some(rule) = record["rule"]["id"].as_str() {
            // Which section decided: `egress.default`, `files.deny[0]`.
            let section = rule.split('.').next().unwrap_or_default().to_string();
            if rule.ends_with(".default") {
                *self.by_default.entry(section).or_default() += 1;
            } else {
                self.by_rule
                    .entry(section)
                    .or_default()
                    .insert(rule.to_string());
            }
        }
    }

    fn add_dns(&mut self, object: &Value) -> bool {
        let Some(domain) = object["domain"].as_str() else {
            return false;
        };
        let query = object["query_type"].as_str().unwrap_or("?").to_string();
        *self
            .names
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .queries
            .entry(query)
            .or_default() += 1;
        true
    }

    fn add_egress(&mut self, object: &Value) -> bool {
        if let Some(family) = object["family"].as_str() {
            let sock_type = object["type"].as_str().unwrap_or("?");
            let protocol = object["protocol"].as_u64().unwrap_or(0);
            if matches!(family, "inet" | "inet6")
                && sock_type == "dgram"
                && matches!(protocol, 1 | 58)
            {
                self.icmp += 1;
            } else {
                *self
                    .other_sockets
                    .entry(format!("{family} {sock_type} protocol {protocol}"))
                    .or_default() += 1;
            }
            return true;
        }
        let (Some(address), Some(port)) = (
            object["address"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok()),
            object["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) else {
            return false;
        };
        let protocol = object["protocol"].as_str().unwrap_or("any").to_string();
        match object["domain"].as_str() {
            Some(domain) => {
                let used = self.names.entry(domain.to_ascii_lowercase()).or_default();
                *used.ports.entry((port, protocol)).or_default() += 1;
                used.addresses.insert(address);
            }
            None => {
                *self
                    .addresses
                    .entry(address)
                    .or_default()
                    .entry((port, protocol))
                    .or_default() += 1;
            }
        }
        true
    }

    fn add_file(&mut self, object: &Value) -> bool {
        let rights: Vec<&str> = object["rights"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if object["anonymous"].as_bool() == Some(true) {
            self.anonymous_exec += 1;
            return true;
        }
        let Some(path) = object["path"].as_str() else {
            return false;
        };
        if !path.starts_with('/') {
            self.unresolved += 1;
            return true;
        }
        let mut path = generalise(path);
        if object["truncated"].as_bool() == Some(true) {
            // The last component was cut: its parent is what is known.
            path = parent(&path).unwrap_or("/").to_string();
        }
        for right in rights {
            if right == "exec" {
                *self.exec.entry(path.clone()).or_default() += 1;
            } else if FILE_RIGHTS.contains(&right) {
                *self
                    .files
                    .entry(path.clone())
                    .or_default()
                    .entry(right.to_string())
                    .or_default() += 1;
            }
        }
        true
    }
}

/// `/proc/1234/status` -> `/proc/*/status`: pids differ between runs.
fn generalise(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 2
        && parts[1] == "proc"
        && !parts[2].is_empty()
        && parts[2].bytes().all(|b| b.is_ascii_digit())
    {
        let mut parts = parts;
        parts[2] = "*";
        return parts.join("/");
    }
    let normalised: Vec<&str> = parts.into_iter().filter(|c| !c.is_empty()).collect();
    format!("/{}", normalised.join("/"))
}

fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind('/')?;
    if path.len() <= 1 {
        return None;
    }
    Some(if cut == 0 { "/" } else { &path[..cut] })
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

fn is_under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// One proposed path rule.
struct PathGroup {
    prefix: String,
    members: Vec<String>,
}

/// Groups paths into rules: see the module documentation.
fn group_paths<'a>(paths: impl IntoIterator<Item = &'a String>, programs: bool) -> Vec<PathGroup> {
    let paths: BTreeSet<&String> = paths.into_iter().collect();
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for path in &paths {
        if let Some(parent) = parent(path) {
            *children.entry(parent).or_default() += 1;
        }
    }
    let groupable = |dir: &str| {
        let too_wide = depth(dir) < 2
            || (dir.starts_with("/home/") && depth(dir) == 2)
            || (programs && BIN_DIRS.contains(&dir))
            // `/proc/*`: every process's entries.
            || dir.ends_with("/*");
        !too_wide
    };
    // Shortest first, so a directory chosen covers those below it.
    let mut chosen: Vec<String> = Vec::new();
    let mut candidates: Vec<&str> = children
        .iter()
        .filter(|(dir, count)| **count >= 2 && groupable(dir))
        .map(|(dir, _)| *dir)
        .collect();
    candidates.sort_by_key(|d| (depth(d), *d));
    for dir in candidates {
        if !chosen.iter().any(|c| is_under(dir, c)) {
            chosen.push(dir.to_string());
        }
    }
    let mut groups: Vec<PathGroup> = chosen
        .into_iter()
        .map(|prefix| PathGroup {
            members: paths
                .iter()
                .filter(|p| is_under(p, &prefix))
                .map(|p| p.to_string())
                .collect(),
            prefix,
        })
        .collect();
    for path in paths {
        if !groups.iter().any(|g| is_under(path, &g.prefix)) {
            groups.push(PathGroup {
                prefix: path.clone(),
                members: vec![path.clone()],
            });
        }
    }
    // A path observed itself (a directory that was listed) covers the
    // paths below it: fold those in.
    groups.sort_by(|a, b| (depth(&a.prefix), &a.prefix).cmp(&(depth(&b.prefix), &b.prefix)));
    let mut merged: Vec<PathGroup> = Vec::new();
    for group in groups {
        match merged
            .iter_mut()
            .find(|m| is_under(&group.prefix, &m.prefix))
        {
            Some(outer) => outer.members.extend(group.members),
            None => merged.push(group),
        }
    }
    merged.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    merged
}

/// Ports as inclusive ranges, adjacent ports joined; when there are more
/// ranges than `limit`, the closest ones are joined (which allows the
/// ports between them too). Returns whether that happened.
fn port_ranges(ports: &BTreeSet<u16>, limit: usize) -> (Vec<(u16, u16)>, bool) {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &port in ports {
        match ranges.last_mut() {
            Some(last) if u32::from(last.1) + 1 == u32::from(port) => last.1 = port,
            _ => ranges.push((port, port)),
        }
    }
    let mut widened = false;
    while ranges.len() > limit.max(1) {
        let closest = (1..ranges.len())
            .min_by_key(|&i| ranges[i].0 - ranges[i - 1].1)
            .expect("at least two ranges");
        ranges[closest - 1].1 = ranges[closest].1;
        ranges.remove(closest);
        widened = true;
    }
    (ranges, widened)
}

fn ports_yaml(ranges: &[(u16, u16)]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("\"{a}-{b}\"")
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A YAML scalar: plain when that is unambiguous, else a JSON string
/// (which YAML reads the same way).
fn scalar(s: &str) -> String {
    let plain = s.starts_with(|c: char| c == '/' || c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

/// `443/tcp ×12, 80/tcp ×1`.
fn tally(ports: &BTreeMap<(u16, String), usize>) -> String {
    ports
        .iter()
        .map(|((port, protocol), n)| format!("{port}/{protocol} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn protocol_of<'a>(protocols: impl IntoIterator<Item = &'a String>) -> &'static str {
    let set: BTreeSet<&str> = protocols.into_iter().map(String::as_str).collect();
    match set.iter().copied().collect::<Vec<_>>().as_slice() {
        ["tcp"] => "tcp",
        ["udp"] => "udp",
        _ => "any",
    }
}

fn examples(members: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut shown: Vec<&str> = members.iter().take(SHOWN).map(String::as_str).collect();
    if members.len() > SHOWN {
        shown.push("...");
    }
    shown.join(", ")
}

fn render(observed: &Observed, agent: &str, name: &Name) -> String {
    let mut y = String::new();
    let verdicts: Vec<String> = observed
        .verdicts
        .iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect();
    let _ = writeln!(
        y,
        "# Suggested by `baton policy suggest` for agent {agent:?} from {} decision records ({}),",
        observed.decisions,
        verdicts.join(", ")
    );
    let _ = writeln!(
        y,
        "# {} to {}.",
        observed.first.as_deref().unwrap_or("?"),
        observed.last.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        y,
        "# The smallest policy that allows everything recorded. Review every rule before\n\
         # enforcing it: what the agent did is not necessarily what it should do."
    );
    for (section, rules) in &observed.by_rule {
        if !observed.by_default.contains_key(section) {
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            let _ = writeln!(
                y,
                "# Warning: every {section} record was decided by a rule ({}), none by {section}.default:\n\
                 # the learning policy's {section} default probably allowed, so what it allowed was not\n\
                 # recorded and is missing here. Learn with `{section}: {{default: deny}}` in audit mode.",
                rules.join(", ")
            );
        }
    }
    let _ = writeln!(
        y,
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {}\nspec:\n  selector:\n    agent: {}\n  mode: enforce",
        scalar(name.as_str()),
        scalar(agent)
    );
    render_egress(&mut y, observed);
    render_files(&mut y, observed);
    render_exec(&mut y, observed);
    y
}

fn render_egress(y: &mut String, observed: &Observed) {
    let _ = writeln!(y, "  egress:\n    default: deny");
    if observed.icmp > 0 {
        let _ = writeln!(
            y,
            "    # {} ICMP (ping) socket(s) opened.\n    icmp: allow",
            observed.icmp
        );
    }
    for (socket, n) in &observed.other_sockets {
        let _ = writeln!(
            y,
            "    # {n} {socket} socket(s) refused: raw and packet sockets are always denied to agents."
        );
    }
    if observed.names.is_empty() && observed.addresses.is_empty() {
        let _ = writeln!(
            y,
            "    # No connection or name resolution was recorded.\n    allow: []"
        );
        return;
    }
    let _ = writeln!(y, "    allow:");
    for (domain, used) in &observed.names {
        let resolved: usize = used.queries.values().sum();
        let queries: Vec<&str> = used.queries.keys().map(String::as_str).collect();
        if used.ports.is_empty() {
            let _ = writeln!(
                y,
                "      # {domain}: resolved {resolved} time(s) ({}), no connection recorded.\n      \
                 # Port 0 lets the name resolve without opening a port to its addresses.\n      \
                 - domain: {}\n        ports: [0]",
                queries.join(", "),
                scalar(domain)
            );
            continue;
        }
        let ports: BTreeSet<u16> = used.ports.keys().map(|(p, _)| *p).collect();
        let (ranges, widened) = port_ranges(&ports, LEARNED_ROWS);
        let protocol = protocol_of(used.ports.keys().map(|(_, p)| p));
        let addresses: Vec<String> = used.addresses.iter().map(IpAddr::to_string).collect();
        let connections: usize = used.ports.values().sum();
        let _ = writeln!(
            y,
            "      # {domain}: {connections} connection(s) ({}) to {}{}.",
            tally(&used.ports),
            examples(&addresses),
            if resolved > 0 {
                format!("; resolved {resolved} time(s)")
            } else {
                String::new()
            }
        );
        if widened {
            let _ = writeln!(
                y,
                "      # A name's rule holds {LEARNED_ROWS} port ranges: close ports were joined into ranges."
            );
        }
        if protocol == "any" {
            let _ = writeln!(
                y,
                "      # Both TCP and UDP were used; one name has one rule, so both are allowed on these ports."
            );
        }
        let _ = writeln!(
            y,
            "      - domain: {}\n        ports: {}{}",
            scalar(domain),
            ports_yaml(&ranges),
            protocol_line(protocol)
        );
    }
    let has_domains = !observed.names.is_empty();
    for (address, ports) in &observed.addresses {
        let cidr = match address {
            IpAddr::V4(_) => format!("{address}/32"),
            IpAddr::V6(_) => format!("{address}/128"),
        };
        let connections: usize = ports.values().sum();
        let _ = writeln!(
            y,
            "      # {address}: {connections} connection(s) ({}); not learned from a name.",
            tally(ports)
        );
        if has_domains && ports.keys().any(|(p, _)| *p == 53) {
            let _ = writeln!(
                y,
                "      # Port 53: with the domain rules above, the agent's DNS goes to Baton's proxy and needs no rule."
            );
        }
        // TCP and UDP rows of one address can differ: one rule each.
        let mut by_protocol: BTreeMap<&'static str, BTreeSet<u16>> = BTreeMap::new();
        for (port, protocol) in ports.keys() {
            let protocol = match protocol.as_str() {
                "tcp" => "tcp",
                "udp" => "udp",
                _ => "any",
            };
            by_protocol.entry(protocol).or_default().insert(*port);
        }
        let limit = PORT_TABLE_ROWS / by_protocol.len().max(1);
        for (protocol, ports) in by_protocol {
            let (ranges, widened) = port_ranges(&ports, limit);
            if widened {
                let _ = writeln!(
                    y,
                    "      # The kernel holds {PORT_TABLE_ROWS} port ranges per address: close ports were joined into ranges."
                );
            }
            let _ = writeln!(
                y,
                "      - cidr: {}\n        ports: {}{}",
                scalar(&cidr),
                ports_yaml(&ranges),
                protocol_line(protocol)
            );
        }
    }
}

fn protocol_line(protocol: &str) -> String {
    if protocol == "any" {
        String::new()
    } else {
        format!("\n        protocol: {protocol}")
    }
}

fn render_files(y: &mut String, observed: &Observed) {
    if observed.files.is_empty() {
        let _ = writeln!(
            y,
            "  # No file access was recorded: the learning policy did not restrict files, or this\n  \
             # kernel does not enforce file rules (`baton probe`). Files stay allowed (the default)."
        );
        return;
    }
    let _ = writeln!(y, "  files:\n    default: deny\n    allow:");
    for group in group_paths(observed.files.keys(), false) {
        let mut rights: BTreeMap<&str, usize> = BTreeMap::new();
        for member in &group.members {
            for (right, n) in &observed.files[member] {
                *rights.entry(right.as_str()).or_default() += n;
            }
        }
        let tallies: Vec<String> = rights.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        if group.members.len() > 1 || group.members[0] != group.prefix {
            let _ = writeln!(
                y,
                "      # {} paths under {} ({}): {}",
                group.members.len(),
                group.prefix,
                tallies.join(", "),
                examples(&group.members)
            );
        } else {
            let _ = writeln!(y, "      # {}", tallies.join(", "));
        }
        let known: Vec<&str> = rights
            .keys()
            .copied()
            .filter(|r| FILE_RIGHTS.contains(r))
            .collect();
        let _ = writeln!(
            y,
            "      - path: {}\n        rights: [{}]",
            scalar(&group.prefix),
            known.join(", ")
        );
    }
}

fn render_exec(y: &mut String, observed: &Observed) {
    if observed.exec.is_empty() && observed.anonymous_exec == 0 {
        let _ = writeln!(
            y,
            "  # No program execution was recorded: exec stays allowed (the default)."
        );
        return;
    }
    let _ = writeln!(y, "  exec:\n    default: deny");
    if observed.anonymous_exec > 0 {
        let _ = writeln!(
            y,
            "    # {} execution(s) of files with no name on disk (memfd, deleted files).\n    allowAnonymous: true",
            observed.anonymous_exec
        );
    }
    if observed.exec.is_empty() {
        let _ = writeln!(y, "    allow: []");
        return;
    }
    let _ = writeln!(y, "    allow:");
    for group in group_paths(observed.exec.keys(), true) {
        let count: usize = group.members.iter().map(|m| observed.exec[m]).sum();
        if group.members.len() > 1 || group.members[0] != group.prefix {
            let _ = writeln!(
                y,
                "      # {} programs or libraries under {} (×{count}): {}",
                group.members.len(),
                group.prefix,
                examples(&group.members)
            );
        } else {
            let _ = writeln!(y, "      # executed or mapped ×{count}");
        }
        let _ = writeln!(y, "      - {}", scalar(&group.prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn groups_paths_by_directory_but_not_too_wide() {
        let paths = strings(&[
            "/etc/hosts",
            "/etc/passwd",
            "/home/bob/.bashrc",
            "/home/bob/.profile",
            "/srv/app/a.txt",
            "/srv/app/b.txt",
            "/srv/app/sub/c.txt",
            "/srv/other/d.txt",
        ]);
        let groups: Vec<String> = group_paths(&paths, false)
            .into_iter()
            .map(|g| g.prefix)
            .collect();
        assert_eq!(
            groups,
            strings(&[
                "/etc/hosts",
                "/etc/passwd",
                "/home/bob/.bashrc",
                "/home/bob/.profile",
                "/srv/app",
                "/srv/other/d.txt",
            ])
        );
        let programs = strings(&[
            "/usr/bin/git",
            "/usr/bin/python3",
            "/usr/lib/x/a.so",
            "/usr/lib/x/b.so",
        ]);
        let groups: Vec<String> = group_paths(&programs, true)
            .into_iter()
            .map(|g| g.prefix)
            .collect();
        assert_eq!(
            groups,
            strings(&["/usr/bin/git", "/usr/bin/python3", "/usr/lib/x"])
        );
    }

    #[test]
    fn ports_are_joined_only_as_needed() {
        let ports: BTreeSet<u16> = [80, 81, 82, 443, 8080].into();
        assert_eq!(
            port_ranges(&ports, 16),
            (vec![(80, 82), (443, 443), (8080, 8080)], false)
        );
        assert_eq!(
            port_ranges(&ports, 2),
            (vec![(80, 443), (8080, 8080)], true)
        );
    }

    #[test]
    fn pids_are_generalised() {
        assert_eq!(generalise("/proc/1234/status"), "/proc/*/status");
        assert_eq!(generalise("/proc/self/status"), "/proc/self/status");
        assert_eq!(generalise("/a//b"), "/a/b");
    }
}

//! `baton grant`: an operator opens one port of an address prefix, or of a
//! name, to one agent for a while, and optionally for a number of connects
//! only.
//!
//! The kernel enforces both limits itself (`EGRESS_GRANTS` holds the expiry
//! and the budget, `GRANT_CONNECTS` the count), so a grant ends on time even
//! when the daemon is dead. This service owns the list behind them: it
//! writes the kernel entries, keeps `grants.json` in the state directory so
//! a restarted daemon lists (and keeps) the grants still in force, and
//! sweeps out the grants that ended so each end is recorded.
//!
//! A grant opens what the agent's default denies; a rule the policy writes
//! (a `deny` included) keeps deciding. It is kept apart from the policy
//! generations, so reloads neither copy nor drop it.
//!
//! A grant of a name (`api.example.com:443`, `*.example.com:443`) puts the
//! name in the agent's DNS proxy for the grant's life, for queries no
//! policy rule answers, and each address an answer for it holds becomes a
//! kernel grant entry of its own, sharing the grant's expiry and connect
//! budget (its slot), before the answer reaches the agent. At most
//! [`MAX_GRANT_ADDRESSES`] addresses per name grant.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use agent_common::egress::{GRANT_RULE_BIT, GRANT_SLOTS, GrantValue, protocol};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    egress::dns::LearnedAddress,
    ids::{AgentId, RuleId},
    kernel::{
        KernelError,
        maps::{GrantMaps, GrantPlace},
    },
    policy::domain::{DomainPattern, DomainRule},
};

/// Grants in force at once, for all agents together: the kernel's slots.
pub const MAX_GRANTS: usize = GRANT_SLOTS as usize;

/// The longest a grant may last. A grant is a temporary exception; what an
/// agent needs for longer belongs in its policy, where it is reviewed.
pub const MAX_GRANT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Grant ids stay below the rule-id bit that marks them.
const MAX_GRANT_ID: u32 = GRANT_RULE_BIT - 1;

/// Addresses one name grant may open: each is a kernel grant entry, and
/// the kernel holds [`MAX_GRANTS`] entries for every grant together.
pub const MAX_GRANT_ADDRESSES: usize = 16;

use crate::handover::GRANTS_FILE;

/// Why a grant request failed.
#[derive(Debug, Error)]
pub enum GrantError {
    /// The destination is not an address, prefix or name with a port.
    #[error(
        "{0:?} is not a destination: write ADDRESS[/PREFIX]:PORT or NAME:PORT, e.g. 127.0.0.1:8080, 10.1.0.0/16:443, [::1]:8080 or api.example.com:443"
    )]
    BadTarget(String),
    /// A name was granted to an agent whose DNS does not go through Baton.
    #[error(
        "agent {0:?} resolves names without Baton's DNS proxy (its policy has no domain rules), so a grant of a name cannot be enforced: grant the addresses (ADDRESS[/PREFIX]:PORT), or give the policy a domain rule"
    )]
    NoDnsProxy(String),
    /// A name grant has opened as many addresses as it may.
    #[error(
        "grant {0} already opens {MAX_GRANT_ADDRESSES} addresses, the most a name grant may: {1} is not opened"
    )]
    TooManyAddresses(u32, IpAddr),
    /// No agent of that name is in force.
    #[error("no agent named {0:?} is in force")]
    UnknownAgent(String),
    /// The duration is zero or longer than the most allowed.
    #[error("a grant lasts from 1 s to {} (asked: {})", humantime::format_duration(MAX_GRANT_DURATION), humantime::format_duration(*.0))]
    Duration(Duration),
    /// The protocol is not `tcp`, `udp` or `any`.
    #[error("protocol {0:?} is not tcp, udp or any")]
    Protocol(String),
    /// Every slot holds a grant.
    #[error("{MAX_GRANTS} grants are in force, the most the kernel holds: revoke one first")]
    Full,
    /// The same agent, port and prefix already have a grant.
    #[error("grant {0} already covers this agent, port and prefix: revoke it first")]
    Duplicate(u32),
    /// No grant has that id.
    #[error("no grant {0} is in force")]
    NoSuchGrant(u32),
    /// The kernel map refused the change.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A grant as asked for.
#[derive(Clone, Debug)]
pub struct GrantRequest {
    /// Agent name.
    pub agent: String,
    /// `ADDRESS[/PREFIX]:PORT` or `NAME:PORT`.
    pub allow: String,
    /// How long the grant lasts.
    pub duration: Duration,
    /// Connects allowed; `None` for no limit but time.
    pub max_connects: Option<u32>,
    /// `tcp`, `udp` or `any`.
    pub protocol: String,
}

/// One grant in force.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    /// Grant id; records name it as rule `grant/ID` of policy `grant`.
    pub id: u32,
    /// Agent name.
    pub agent: String,
    /// Agent id the kernel knows the agent by.
    pub agent_id: AgentId,
    /// The prefix (network address and length), for a grant of addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<IpNet>,
    /// The name (or `*.` wildcard), for a grant of a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainPattern>,
    /// The addresses answers for the name held, each opened in the kernel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<IpAddr>,
    /// Destination port.
    pub port: u16,
    /// `tcp`, `udp` or `any`.
    pub protocol: String,
    /// Connects allowed; 0 for no limit but time.
    pub max_connects: u32,
    /// The kernel slot that counts its connects.
    pub slot: u32,
    /// When it was granted (RFC 3339).
    pub granted_at: String,
    /// When it ends (RFC 3339).
    pub expires_at: String,
    /// When it ends, in `CLOCK_BOOTTIME` nanoseconds (what the kernel
    /// compares; the state directory, like bpffs, does not outlive a boot).
    pub expires_boot_ns: u64,
}

impl Grant {
    /// `ADDRESS/PREFIX:PORT`, with brackets around IPv6, or `NAME:PORT`.
    pub fn destination(&self) -> String {
        match (&self.domain, self.network) {
            (Some(domain), _) => format!("{domain}:{}", self.port),
            (None, Some(IpNet::V4(net))) => format!("{net}:{}", self.port),
            (None, Some(IpNet::V6(net))) => format!("[{net}]:{}", self.port),
            (None, None) => format!("?:{}", self.port),
        }
    }

    /// The kernel entries the grant holds: its prefix, or one per address
    /// its name resolved to.
    fn places(&self) -> Vec<GrantPlace> {
        let place = |net: IpNet| GrantPlace {
            agent_id: self.agent_id,
            port: self.port,
            addr: net.addr(),
            prefix_len: net.prefix_len(),
        };
        match self.network {
            Some(network) => vec![place(network)],
            None => self
                .learned
                .iter()
                .map(|&addr| place(IpNet::from(addr)))
                .collect(),
        }
    }

    /// The rule id records cite for it.
    fn rule_id(&self) -> RuleId {
        RuleId::from_raw(GRANT_RULE_BIT | self.id)
    }

    fn value(&self) -> GrantValue {
        GrantValue {
            expires_boot_ns: self.expires_boot_ns,
            max_connects: self.max_connects,
            slot: self.slot,
            grant_id: self.id,
            protocols: protocol_bits(&self.protocol).unwrap_or(protocol::ANY),
            _pad: [0; 3],
        }
    }
}

/// A grant with what it has used, as `baton grant list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GrantStatus {
    /// The grant.
    #[serde(flatten)]
    pub grant: Grant,
    /// `ADDRESS/PREFIX:PORT`.
    pub destination: String,
    /// Connects allowed so far (attempts past the budget excluded).
    pub connects: u32,
    /// Whole seconds left.
    pub seconds_left: u64,
}

/// How a grant ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Its time ran out.
    Expired,
    /// It allowed its last connect.
    UsedUp,
    /// An operator revoked it.
    Revoked,
}

/// The grants in force and the kernel maps that hold them.
pub struct Grants {
    maps: GrantMaps,
    grants: BTreeMap<u32, Grant>,
    next_id: u32,
    file: PathBuf,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    next_id: u32,
    grants: Vec<Grant>,
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock the kernel compares.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn protocol_bits(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(protocol::TCP),
        "udp" => Some(protocol::UDP),
        "any" => Some(protocol::ANY),
        _ => None,
    }
}

/// What a grant opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantTarget {
    /// An address or prefix.
    Network(IpNet),
    /// A name or a `*.` wildcard, through the agent's DNS proxy.
    Domain(DomainPattern),
}

/// Parses `ADDRESS[/PREFIX]:PORT` (IPv6 in brackets) into the prefix, with
/// the address truncated to it, or `NAME:PORT` into the name; and the port.
pub fn parse_destination(text: &str) -> Result<(GrantTarget, u16), GrantError> {
    let bad = || GrantError::BadTarget(text.to_string());
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        text.rsplit_once(':').ok_or_else(bad)?
    };
    // Without brackets, `::1:80` could be an address or an address and a
    // port: IPv6 needs brackets.
    if !text.starts_with('[') && host.contains(':') {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let target = if let Ok(net) = host.parse::<IpNet>() {
        GrantTarget::Network(net.trunc())
    } else if let Ok(addr) = host.parse::<IpAddr>() {
        GrantTarget::Network(IpNet::from(addr))
    } else if !host.contains('/')
        && let Ok(pattern) = DomainPattern::parse(host)
    {
        GrantTarget::Domain(pattern)
    } else {
        return Err(bad());
    };
    Ok((target, port))
}

impl Grants {
    /// Takes over the grants a previous daemon saved in `state_dir`: those
    /// still in force are written to the kernel again (their connect counts
    /// kept), every other kernel entry is removed. Returns the service and
    /// what it could not take over, for the log.
    pub fn open(
        maps: GrantMaps,
        state_dir: &Path,
        known_agent: impl Fn(&str) -> Option<AgentId>,
    ) -> (Self, Vec<String>) {
        let file = state_dir.join(GRANTS_FILE);
        let mut warnings = Vec::new();
        let saved: Saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                warnings.push(format!(
                    "{}: {error}; its grants are dropped",
                    file.display()
                ));
                Saved::default()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(error) => {
                warnings.push(format!(
                    "{}: {error}; its grants are dropped",
                    file.display()
                ));
                Saved::default()
            }
        };
        let mut service = Self {
            maps,
            grants: BTreeMap::new(),
            next_id: saved.next_id.max(1),
            file,
        };
        let now = boot_ns();
        for grant in saved.grants {
            if grant.expires_boot_ns <= now {
                continue;
            }
            if known_agent(&grant.agent) != Some(grant.agent_id) {
                warnings.push(format!(
                    "grant {} of agent {} is dropped: the agent is not in force with the same id",
                    grant.id, grant.agent
                ));
                continue;
            }
            let restored = grant
                .places()
                .iter()
                .try_for_each(|place| service.maps.restore(place, grant.value()));
            match restored {
                Ok(()) => {
                    service.grants.insert(grant.id, grant);
                }
                Err(error) => warnings.push(format!("grant {} is dropped: {error}", grant.id)),
            }
        }
        let places: Vec<GrantPlace> = service.grants.values().flat_map(Grant::places).collect();
        let removed = service.maps.retain(&places);
        if removed > 0 {
            warnings.push(format!(
                "{removed} grant entries in the kernel were not on record and are removed"
            ));
        }
        if let Err(error) = service.save() {
            warnings.push(error);
        }
        (service, warnings)
    }

    /// Puts a grant in force for the agent `agent_id`; `dns_proxy` says
    /// whether the agent's DNS goes through Baton's proxy, which a grant of
    /// a name needs.
    pub fn add(
        &mut self,
        request: &GrantRequest,
        agent_id: AgentId,
        dns_proxy: bool,
    ) -> Result<Grant, GrantError> {
        let (target, port) = parse_destination(&request.allow)?;
        let (network, domain) = match target {
            GrantTarget::Network(network) => (Some(network), None),
            GrantTarget::Domain(_) if !dns_proxy => {
                return Err(GrantError::NoDnsProxy(request.agent.clone()));
            }
            GrantTarget::Domain(domain) => (None, Some(domain)),
        };
        if request.duration.is_zero() || request.duration > MAX_GRANT_DURATION {
            return Err(GrantError::Duration(request.duration));
        }
        if protocol_bits(&request.protocol).is_none() {
            return Err(GrantError::Protocol(request.protocol.clone()));
        }
        if let Some(existing) = self.grants.values().find(|g| {
            g.agent_id == agent_id && g.port == port && g.network == network && g.domain == domain
        }) {
            return Err(GrantError::Duplicate(existing.id));
        }
        if self.grants.len() >= MAX_GRANTS {
            return Err(GrantError::Full);
        }
        let used: std::collections::BTreeSet<u32> = self.grants.values().map(|g| g.slot).collect();
        let slot = (0..GRANT_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or(GrantError::Full)?;
        let id = self.next_id;
        self.next_id = if id >= MAX_GRANT_ID { 1 } else { id + 1 };
        let now = SystemTime::now();
        let grant = Grant {
            id,
            agent: request.agent.clone(),
            agent_id,
            network,
            domain,
            learned: Vec::new(),
            port,
            protocol: request.protocol.clone(),
            max_connects: request.max_connects.unwrap_or(0),
            slot,
            granted_at: crate::audit::record::format_time(now),
            expires_at: crate::audit::record::format_time(now + request.duration),
            expires_boot_ns: boot_ns().saturating_add(request.duration.as_nanos() as u64),
        };
        if grant.domain.is_some() {
            self.maps.reset_connects(slot)?;
        }
        for place in grant.places() {
            self.maps.insert(&place, grant.value())?;
        }
        self.grants.insert(id, grant.clone());
        if let Err(error) = self.save() {
            tracing::warn!("{error}");
        }
        Ok(grant)
    }

    /// Takes a grant out of force now.
    pub fn revoke(&mut self, id: u32) -> Result<(Grant, u32), GrantError> {
        let grant = self.grants.get(&id).ok_or(GrantError::NoSuchGrant(id))?;
        for place in grant.places() {
            self.maps.remove(&place)?;
        }
        let connects = self.connects(grant);
        let grant = self.grants.remove(&id).ok_or(GrantError::NoSuchGrant(id))?;
        if let Err(error) = self.save() {
            tracing::warn!("{error}");
        }
        Ok((grant, connects))
    }

    /// The grants in force, oldest first.
    pub fn list(&self) -> Vec<GrantStatus> {
        let now = boot_ns();
        self.grants
            .values()
            .map(|grant| GrantStatus {
                destination: grant.destination(),
                connects: self.connects(grant),
                seconds_left: grant.expires_boot_ns.saturating_sub(now) / 1_000_000_000,
                grant: grant.clone(),
            })
            .collect()
    }

    /// Removes the grants whose time ran out or whose budget is spent (the
    /// kernel already refuses them), and says how each ended.
    pub fn sweep(&mut self) -> Vec<(Grant, Ending, u32)> {
        let now = boot_ns();
        let ended: Vec<(u32, Ending)> = self
            .grants
            .values()
            .filter_map(|grant| {
                if grant.expires_boot_ns <= now {
                    Some((grant.id, Ending::Expired))
                } else if grant.max_connects != 0
                    && self.maps.connects(grant.slot) >= grant.max_connects
                {
                    Some((grant.id, Ending::UsedUp))
                } else {
                    None
                }
            })
            .collect();
        let mut out = Vec::new();
        for (id, ending) in ended {
            let Some(grant) = self.grants.get(&id) else {
                continue;
            };
            if let Err(error) = grant
                .places()
                .iter()
                .try_for_each(|place| self.maps.remove(place))
            {
                // The kernel refuses it anyway (time or budget); the entry
                // is tried again at the next sweep.
                tracing::warn!(grant = id, %error, "cannot remove an ended grant");
                continue;
            }
            let connects = self.connects(grant);
            if let Some(grant) = self.grants.remove(&id) {
                out.push((grant, ending, connects));
            }
        }
        if !out.is_empty()
            && let Err(error) = self.save()
        {
            tracing::warn!("{error}");
        }
        out
    }

    /// The names granted to `agent_id`, as its DNS proxy matches them.
    pub fn domain_rules(&self, agent_id: AgentId) -> Vec<DomainRule> {
        self.grants
            .values()
            .filter(|grant| grant.agent_id == agent_id)
            .filter_map(|grant| {
                Some(DomainRule {
                    pattern: grant.domain.clone()?,
                    rule_id: grant.rule_id(),
                })
            })
            .collect()
    }

    /// Opens, for every name grant of `agent_id` that `name` matches, the
    /// addresses of an answer the agent's DNS proxy is about to return.
    /// An address the kernel cannot take fails the answer (`SERVFAIL`)
    /// rather than hand the agent an address it cannot reach.
    pub fn learn_name(
        &mut self,
        agent_id: AgentId,
        name: &str,
        addrs: &[LearnedAddress],
    ) -> Result<(), GrantError> {
        let now = boot_ns();
        let matching: Vec<u32> = self
            .grants
            .values()
            .filter(|grant| {
                grant.agent_id == agent_id
                    && grant.expires_boot_ns > now
                    && grant.domain.as_ref().is_some_and(|d| d.matches(name))
            })
            .map(|grant| grant.id)
            .collect();
        let mut changed = false;
        for id in matching {
            let Some(grant) = self.grants.get_mut(&id) else {
                continue;
            };
            for learned in addrs {
                if grant.learned.contains(&learned.addr) {
                    continue;
                }
                if grant.learned.len() >= MAX_GRANT_ADDRESSES {
                    return Err(GrantError::TooManyAddresses(id, learned.addr));
                }
                let place = GrantPlace {
                    agent_id,
                    port: grant.port,
                    addr: learned.addr,
                    prefix_len: if learned.addr.is_ipv4() { 32 } else { 128 },
                };
                // Not `insert`: that would start the shared count again.
                self.maps.restore(&place, grant.value())?;
                grant.learned.push(learned.addr);
                changed = true;
            }
        }
        if changed && let Err(error) = self.save() {
            tracing::warn!("{error}");
        }
        Ok(())
    }

    fn connects(&self, grant: &Grant) -> u32 {
        let counted = self.maps.connects(grant.slot);
        if grant.max_connects == 0 {
            counted
        } else {
            counted.min(grant.max_connects)
        }
    }

    fn save(&self) -> Result<(), String> {
        let saved = Saved {
            next_id: self.next_id,
            grants: self.grants.values().cloned().collect(),
        };
        let tmp = self.file.with_extension("json.tmp");
        serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.file))
            .map_err(|error| format!("cannot save grants to {}: {error}", self.file.display()))
    }
}

/// The record line of a grant's end.
pub fn ending_message(grant: &Grant, ending: Ending, connects: u32) -> String {
    let how = match ending {
        Ending::Expired => "expired",
        Ending::UsedUp => "used up",
        Ending::Revoked => "revoked",
    };
    let budget = if grant.max_connects == 0 {
        String::new()
    } else {
        format!(" of {}", grant.max_connects)
    };
    format!(
        "grant {} of {} to {} {how} after {connects}{budget} connects",
        grant.id,
        grant.protocol,
        grant.destination()
    )
}

/// How often ended grants are swept out and recorded. The kernel refuses
/// them on its own the moment they end; this is only how late the record
/// and `grant list` may be.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(500);

impl super::Daemon {
    /// `baton grant AGENT --allow …`.
    pub(super) fn grant_add(&self, request: &GrantRequest) -> crate::control::Reply {
        use crate::control::Reply;
        // Lock order: the policy service, then grants, then the writer; it is let go
        // before the others are taken.
        let (agent_id, dns_proxy, proxies) = {
            let state = self.policy.lock().expect("policy lock poisoned");
            let dns_proxy =
                state.policies.agents.iter().any(|(name, agent)| {
                    name.as_str() == request.agent && !agent.domains.is_empty()
                });
            (
                state.registry.id_of(&request.agent),
                dns_proxy,
                state.proxies.clone(),
            )
        };
        let result = match agent_id {
            None => Err(GrantError::UnknownAgent(request.agent.clone())),
            Some(agent_id) => {
                let mut grants = self.grants.lock().expect("grants lock poisoned");
                grants
                    .add(request, agent_id, dns_proxy)
                    .map(|grant| (grant, grants.domain_rules(agent_id)))
            }
        };
        match result {
            Ok((grant, names)) => {
                if grant.domain.is_some() {
                    proxies
                        .lock()
                        .expect("proxies lock poisoned")
                        .set_grant_names(grant.agent_id, names);
                }
                let budget = if grant.max_connects == 0 {
                    String::new()
                } else {
                    format!(", at most {} connects", grant.max_connects)
                };
                let message = format!(
                    "grant {} opens {} {} to agent {} until {}{budget}",
                    grant.id,
                    grant.protocol,
                    grant.destination(),
                    grant.agent,
                    grant.expires_at
                );
                self.record_grant(&grant.agent, "allowed", message.clone());
                tracing::info!("{message}");
                Reply::Done { message }
            }
            Err(error) => Reply::Error {
                message: error.to_string(),
            },
        }
    }

    /// `baton grant list`.
    pub(super) fn grant_list(&self) -> crate::control::Reply {
        let grants = self.grants.lock().expect("grants lock poisoned").list();
        crate::control::Reply::Grants {
            grants: grants
                .into_iter()
                .filter_map(|g| serde_json::to_value(g).ok())
                .collect(),
        }
    }

    /// `baton grant revoke ID`.
    pub(super) fn grant_revoke(&self, id: u32) -> crate::control::Reply {
        use crate::control::Reply;
        let result = self.grants.lock().expect("grants lock poisoned").revoke(id);
        match result {
            Ok((grant, connects)) => {
                if grant.domain.is_some() {
                    self.refresh_grant_names(grant.agent_id);
                }
                let message = ending_message(&grant, Ending::Revoked, connects);
                self.record_grant(&grant.agent, "info", message.clone());
                Reply::Done { message }
            }
            Err(error) => Reply::Error {
                message: error.to_string(),
            },
        }
    }

    /// Puts the names now granted to `agent_id` in its DNS proxies. Takes
    /// `PolicyService`, the grants and the proxies one after the other, never two
    /// at once.
    pub(super) fn refresh_grant_names(&self, agent_id: AgentId) {
        let proxies = self
            .policy
            .lock()
            .expect("policy lock poisoned")
            .proxies
            .clone();
        let names = self
            .grants
            .lock()
            .expect("grants lock poisoned")
            .domain_rules(agent_id);
        proxies
            .lock()
            .expect("proxies lock poisoned")
            .set_grant_names(agent_id, names);
    }

    fn record_grant(&self, agent: &str, verdict: &'static str, message: String) {
        let mut writer = self.writer.lock().expect("audit writer lock poisoned");
        let mut record = crate::audit::AuditRecord::lifecycle(writer.host(), "grant", message);
        record.agent = Some(agent.to_string());
        record.verdict = verdict;
        writer.record(record);
    }
}

/// Records each grant's end, every [`SWEEP_EVERY`], while the daemon runs.
pub(super) async fn sweep_grants(daemon: std::sync::Weak<super::Daemon>) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let ended = daemon.grants.lock().expect("grants lock poisoned").sweep();
        let named: std::collections::BTreeSet<AgentId> = ended
            .iter()
            .filter(|(grant, _, _)| grant.domain.is_some())
            .map(|(grant, _, _)| grant.agent_id)
            .collect();
        for agent_id in named {
            daemon.refresh_grant_names(agent_id);
        }
        for (grant, ending, connects) in ended {
            let message = ending_message(&grant, ending, connects);
            tracing::info!("{message}");
            daemon.record_grant(&grant.agent, "info", message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_with_prefixes_ports_and_brackets() {
        let network = |text: &str| match parse_destination(text).unwrap() {
            (GrantTarget::Network(net), port) => (net.to_string(), port),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(network("127.0.0.1:8080"), ("127.0.0.1/32".into(), 8080));
        assert_eq!(network("10.1.2.3/16:443"), ("10.1.0.0/16".into(), 443));
        assert_eq!(network("[::1]:53"), ("::1/128".into(), 53));
        assert_eq!(network("[fd00::1/64]:9").0, "fd00::/64");
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:x",
            ":80",
            "::1:80",
            "1.2.3.4/40:1",
        ] {
            assert!(
                matches!(parse_destination(bad), Err(GrantError::BadTarget(_))),
                "{bad}"
            );
        }
        for (text, name) in [
            ("api.example.com:443", "api.example.com"),
            ("*.Example.com:443", "*.example.com"),
        ] {
            match parse_destination(text).unwrap() {
                (GrantTarget::Domain(pattern), 443) => assert_eq!(pattern.to_string(), name),
                other => panic!("{text}: {other:?}"),
            }
        }
        for bad in ["exa mple.com:443", "a..b:1", "*:443"] {
            assert!(
                matches!(parse_destination(bad), Err(GrantError::BadTarget(_))),
                "{bad}"
            );
        }
    }
}

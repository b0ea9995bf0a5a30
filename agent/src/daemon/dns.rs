//! The DNS proxies: starting them per agent and network namespace, and
//! what they learn, written into the kernel and the audit trail.

use agent_common::egress::{DnsProxyPorts, LEARNED_ADDR_ROWS};

use super::*;
use crate::kernel::maps::Learned;

/// Entries kept in `learned_names` before it is cleared.
const LEARNED_NAMES_LIMIT: usize = 65_536;

/// What a DNS answer needs to open its ports, owned apart from `PolicyService`: the
/// learner takes only this lock, so name resolution never waits for the
/// event drain writing an audit batch under the `PolicyService` lock.
///
/// Lock order: `PolicyService`, then `Learning`. The learner never takes `PolicyService`
/// while it holds this one.
pub(super) struct Learning {
    /// The kernel's DNS maps: learned addresses, proxies, query senders.
    pub(super) maps: DnsMaps,
    /// Port rows a domain rule opens, by rule id.
    pub(super) domain_rows: HashMap<RuleId, Vec<PortRule>>,
    /// The name each (agent, learned address, domain rule) came from, for
    /// audit records.
    pub(super) learned_names: HashMap<(AgentId, IpAddr, RuleId), String>,
}

impl Learning {
    pub(super) fn new(maps: DnsMaps) -> Self {
        Self {
            maps,
            domain_rows: HashMap::new(),
            learned_names: HashMap::new(),
        }
    }
}

/// The running DNS proxies and what starting more takes, owned apart from
/// `PolicyService`: a burst of namespace requests from an agent (each a thread
/// that enters a namespace and binds sockets) does its bookkeeping under
/// this lock only.
///
/// Lock order: `PolicyService`, then `Proxies`, then `Learning`. Code holding
/// `Proxies` never takes `PolicyService`: what needs both (a reload's refresh, a
/// record) takes `PolicyService` first or lets go of `Proxies` before.
pub(super) struct Proxies {
    /// Running proxies, per agent and network namespace cookie.
    pub(super) running: BTreeMap<(AgentId, u64), AgentProxy>,
    /// Each agent's allowed names and answer cache, shared by its proxies
    /// in every namespace.
    names: BTreeMap<AgentId, (Arc<RwLock<AgentNames>>, Arc<AnswerCache>)>,
    /// What new proxies need, once the first one is up.
    setup: Option<(Arc<ProxyConfig>, Arc<dyn Learner>)>,
    /// The DNS settings and the learner, kept so that a reload bringing the
    /// first domain rules can still set the proxies up.
    waiting_for_rules: Option<(DnsConfig, Arc<dyn Learner>)>,
    /// Namespaces a proxy is being opened in, so a burst of queries opens one.
    opening: std::collections::HashSet<(AgentId, u64)>,
    /// Namespace proxies one agent may hold (`dns.maxNamespaceProxiesPerAgent`).
    max_per_agent: usize,
    /// Agents at that cap whose record is written, so that it is written
    /// once per spell at the cap, not once per query.
    cap_reported: std::collections::HashSet<AgentId>,
    /// Names operators granted, per agent (see [`super::grants`]); a
    /// reload's refresh keeps them.
    grant_names: BTreeMap<AgentId, Vec<crate::policy::domain::DomainRule>>,
}

impl Proxies {
    pub(super) fn new() -> Self {
        Self {
            running: BTreeMap::new(),
            names: BTreeMap::new(),
            setup: None,
            waiting_for_rules: None,
            opening: std::collections::HashSet::new(),
            max_per_agent: DEFAULT_NETNS_PROXIES_PER_AGENT,
            cap_reported: std::collections::HashSet::new(),
            grant_names: BTreeMap::new(),
        }
    }

    /// Puts the names granted to `agent_id` in force in its proxies (and
    /// in those a reload starts later).
    pub(super) fn set_grant_names(
        &mut self,
        agent_id: AgentId,
        rules: Vec<crate::policy::domain::DomainRule>,
    ) {
        if let Some((names, _)) = self.names.get(&agent_id)
            && let Ok(mut names) = names.write()
        {
            names.grants.clone_from(&rules);
        }
        if rules.is_empty() {
            self.grant_names.remove(&agent_id);
        } else {
            self.grant_names.insert(agent_id, rules);
        }
    }

    /// Namespace proxies `agent_id` holds or is opening.
    fn held_in_namespaces(&self, agent_id: AgentId) -> usize {
        self.running
            .iter()
            .filter(|((id, _), proxy)| *id == agent_id && proxy.netns_id.is_some())
            .count()
            + self
                .opening
                .iter()
                .filter(|(id, _)| *id == agent_id)
                .count()
    }
}

/// Points the kernel's redirect for `agent_id` in namespace `netns_cookie`
/// at a proxy's `ports`.
fn register_proxy(
    learning: &Mutex<Learning>,
    agent_id: AgentId,
    netns_cookie: u64,
    ports: DnsProxyPorts,
) -> Result<(), String> {
    learning
        .lock()
        .map_err(|_| "DNS lock poisoned".to_string())?
        .maps
        .set_proxy(agent_id, netns_cookie, ports)
        .map_err(|e| e.to_string())
}

/// The DNS proxies' link to the kernel and the audit trail.
struct ProxyLearner {
    daemon: Weak<Daemon>,
    learning: Arc<Mutex<Learning>>,
}

impl Learner for ProxyLearner {
    fn learn(
        &self,
        agent_id: AgentId,
        rule_id: RuleId,
        name: &str,
        addrs: &[LearnedAddress],
    ) -> Result<(), String> {
        let mut learning = self.learning.lock().map_err(|_| "DNS lock poisoned")?;
        // Audit mode resolves names no rule allows (rule 0); nothing is
        // denied then, so there are no ports to open, only a name to note.
        let rows = learning
            .domain_rows
            .get(&rule_id)
            .cloned()
            .unwrap_or_default();
        for learned in addrs {
            if !rows.is_empty() {
                let outcome = learning
                    .maps
                    .learn(agent_id, learned.addr, learned.ttl, rule_id, &rows)
                    .map_err(|e| e.to_string())?;
                if outcome == Learned::Full {
                    // Never take `PolicyService` while holding `Learning`.
                    drop(learning);
                    return Err(self.record_full(agent_id, rule_id, name, learned.addr));
                }
            }
            if learning.learned_names.len() >= LEARNED_NAMES_LIMIT {
                learning.learned_names.clear();
            }
            learning
                .learned_names
                .insert((agent_id, learned.addr, rule_id), name.to_string());
        }
        // Never take the grants' lock while holding `Learning`.
        drop(learning);
        if let Some(daemon) = self.daemon.upgrade() {
            daemon
                .grants
                .lock()
                .map_err(|_| "grants lock poisoned")?
                .learn_name(agent_id, name, addrs)
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    fn held(&self, agent_id: AgentId) -> Option<Hold> {
        // The kernel's maps, not the breakers' last look: a taint is
        // written before the secret's open returns, so a query the agent
        // sends after it always finds it.
        let daemon = self.daemon.upgrade()?;
        daemon
            .breakers
            .lock()
            .ok()
            .and_then(|service| service.held(agent_id))
    }

    fn refused(
        &self,
        agent_id: AgentId,
        name: &str,
        query_type: &str,
        socket_cookie: Option<u64>,
        held: Option<Hold>,
    ) {
        let Some(daemon) = self.daemon.upgrade() else {
            return;
        };
        let Ok(mut state) = daemon.policy.lock() else {
            return;
        };
        let agent = state
            .registry
            .name_of(agent_id)
            .map_or_else(|| format!("#{agent_id}"), |n| n.to_string());
        let audit = state
            .policies
            .agents
            .values()
            .zip(state.policies.agents.keys())
            .any(|(a, n)| n.as_str() == agent && a.mode == mode::AUDIT);
        // No domain rule allows the name, so the agent's egress default
        // refused it: that is the rule the record cites. A tainted agent's
        // names are refused by its `egress.afterSecret`; a quarantine is
        // no rule's doing, and the record's mode says it.
        let rule = state
            .policies
            .agents
            .iter()
            .find(|(n, _)| n.as_str() == agent)
            .and_then(|(_, a)| match held {
                None => Some(a.egress_default_rule),
                Some(Hold::Secret) => Some(a.after_secret_rule),
                Some(Hold::Quarantine) => None,
            })
            .filter(|id| !id.is_none())
            .map(|id| {
                let (policy, rule) = state.policies.rule(id).map_or_else(
                    || ("<unknown>".to_string(), "<unknown>".to_string()),
                    |r| (r.policy.clone(), r.rule.clone()),
                );
                crate::audit::record::AuditRule {
                    policy,
                    id: rule,
                    kernel_id: id.raw(),
                }
            });
        let host = state.host.clone();
        let mut record = AuditRecord::dns_refusal(&host, &agent, audit, name, query_type);
        record.rule = rule;
        if held == Some(Hold::Quarantine) && !audit {
            record.mode = Some("quarantine");
        }
        // The sender, as the kernel's redirect remembered it for the
        // query's socket. It is still waiting for this answer, so procfs
        // still knows it.
        let sender = socket_cookie.and_then(|cookie| {
            let learning = self.learning.lock().ok()?;
            learning.maps.sender(cookie)
        });
        if let Some(tgid) = sender {
            let root = state.maps.agent_of(tgid).map_or(0, |r| r.root_tgid);
            record.process = Some(crate::audit::record::AuditProcess::live(tgid, root));
        }
        state.record(record);
    }
}

impl ProxyLearner {
    /// Records that `addr` has no room for another name's ports, and
    /// returns the message for the log.
    fn record_full(&self, agent_id: AgentId, rule_id: RuleId, name: &str, addr: IpAddr) -> String {
        let Some(daemon) = self.daemon.upgrade() else {
            return "the daemon is stopping".to_string();
        };
        let Ok(mut state) = daemon.policy.lock() else {
            return "state lock poisoned".to_string();
        };
        let agent = state
            .registry
            .name_of(agent_id)
            .map_or_else(|| format!("#{agent_id}"), |n| n.to_string());
        let rule = state.policies.rule(rule_id).map_or_else(
            || format!("#{rule_id}"),
            |r| format!("{}/{}", r.policy, r.rule),
        );
        let message = format!(
            "{name} ({rule}) resolves to {addr}, which already holds {LEARNED_ADDR_ROWS} port ranges of other names still in force; the answer is withheld (SERVFAIL) rather than close them early"
        );
        let host = state.host.clone();
        let mut record = AuditRecord::lifecycle(&host, "dns", message.clone());
        record.agent = Some(agent);
        state.record(record);
        message
    }
}

/// What one agent's DNS proxy needs.
struct ProxyPlan {
    agent_id: AgentId,
    agent: String,
    names: AgentNames,
    /// Port rows per domain rule id.
    rows: Vec<(RuleId, Vec<PortRule>)>,
}

/// Starts a DNS proxy for every agent with domain rules and points the
/// kernel's redirect at it.
pub(super) async fn start_dns_proxies(daemon: &Arc<Daemon>, dns: &DnsConfig) -> anyhow::Result<()> {
    let (needed, proxies, learning) = {
        let state = daemon.policy.lock().expect("policy lock poisoned");
        let needed = state
            .policies
            .agents
            .values()
            .any(|a| !a.domains.is_empty());
        (needed, state.proxies.clone(), state.learning.clone())
    };
    if let Some(max) = dns.max_namespace_proxies_per_agent {
        proxies.lock().expect("proxies lock poisoned").max_per_agent = max as usize;
    }
    let learner: Arc<dyn Learner> = Arc::new(ProxyLearner {
        daemon: Arc::downgrade(daemon),
        learning,
    });
    // Without domain rules an unusable resolver configuration is no reason
    // to stop; a reload that adds domain rules reports it then.
    let config = match proxy_config(dns) {
        Ok(config) => Arc::new(config),
        Err(error) if needed => {
            return Err(error)
                .context("agents have domain rules, so Baton needs an upstream resolver");
        }
        Err(error) => {
            tracing::debug!(%error, "no DNS proxy yet: no upstream resolver");
            proxies
                .lock()
                .expect("proxies lock poisoned")
                .waiting_for_rules = Some((dns.clone(), learner));
            return Ok(());
        }
    };
    proxies.lock().expect("proxies lock poisoned").setup = Some((config, learner));
    daemon
        .policy
        .lock()
        .expect("policy lock poisoned")
        .refresh_dns();
    Ok(())
}

/// Namespace proxies one agent may hold when the configuration says nothing.
pub(super) const DEFAULT_NETNS_PROXIES_PER_AGENT: usize = 64;

/// `pidfd_open(2)` (5.3): a descriptor that becomes readable when the
/// process exits, and that names that process even if its PID is reused.
fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system call; on success the kernel returns a new
    // descriptor that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above: a fresh descriptor, owned from here on.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Registers a pidfd with the runtime.
pub(super) fn watch_pidfd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the descriptor, so it stays open as long
    // as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Opens a proxy for `agent_id` in the network namespace of process `pid`,
/// after the kernel saw that agent send DNS from a namespace without one.
///
/// The proxy lives as long as some process of the agent is in that
/// namespace: one of them is watched through a pidfd, and when it exits the
/// next one found in the namespace is watched instead; when none is left,
/// the sockets close and the kernel's entry goes (see
/// [`release_when_empty`]). An agent holds at most
/// `dns.maxNamespaceProxiesPerAgent` of them at once.
pub(super) fn open_netns_proxy(
    daemon: &Arc<Daemon>,
    agent_id: AgentId,
    netns_cookie: u64,
    pid: u32,
) {
    let (proxies, learning) = {
        let state = daemon.policy.lock().expect("policy lock poisoned");
        (state.proxies.clone(), state.learning.clone())
    };
    let (names, setup) = {
        let mut held = proxies.lock().expect("proxies lock poisoned");
        if held.running.contains_key(&(agent_id, netns_cookie))
            || held.opening.contains(&(agent_id, netns_cookie))
        {
            return;
        }
        let count = held.held_in_namespaces(agent_id);
        if count >= held.max_per_agent {
            // Once per spell at the cap: the kernel asks again on every
            // query from such a namespace.
            if held.cap_reported.insert(agent_id) {
                drop(held);
                report_namespace_cap(daemon, agent_id, count);
            }
            return;
        }
        held.opening.insert((agent_id, netns_cookie));
        (held.names.get(&agent_id).cloned(), held.setup.clone())
    };
    let unpend = || {
        proxies
            .lock()
            .expect("proxies lock poisoned")
            .opening
            .remove(&(agent_id, netns_cookie));
    };
    let (Some(names), Some((config, learner))) = (names, setup) else {
        unpend();
        return;
    };
    // Taken before the namespace is entered, so the watched process is
    // the one whose namespace the sockets are bound in, not a newcomer
    // that reused its PID (the cookie check below would catch that too).
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            tracing::debug!(agent_id = agent_id.raw(), pid, %error, "process gone before its namespace got a DNS proxy");
            unpend();
            return;
        }
    };
    let (names, cache) = names;
    let result = start_netns_proxy(pid, names, cache, config, learner);
    let mut held = proxies.lock().expect("proxies lock poisoned");
    held.opening.remove(&(agent_id, netns_cookie));
    match result {
        Ok(proxy) if proxy.netns_cookie == netns_cookie => {
            let Some(netns_id) = proxy.netns_id else {
                return;
            };
            let pidfd = match watch_pidfd(pidfd) {
                Ok(pidfd) => pidfd,
                Err(error) => {
                    tracing::warn!(agent_id = agent_id.raw(), pid, %error, "cannot watch the process of a namespace proxy");
                    return;
                }
            };
            let registered = register_proxy(&learning, agent_id, netns_cookie, proxy.ports);
            if let Err(error) = registered {
                tracing::error!(agent_id = agent_id.raw(), %error, "cannot register the namespace's DNS proxy");
                return;
            }
            tracing::info!(agent_id = agent_id.raw(), pid, netns_cookie, ports = ?proxy.ports, "DNS proxy opened in the agent's network namespace");
            held.running.insert((agent_id, netns_cookie), proxy);
            tokio::spawn(release_when_empty(
                Arc::downgrade(daemon),
                NetnsProxy {
                    agent_id,
                    netns_cookie,
                    netns_id,
                },
                pid,
                pidfd,
            ));
        }
        Ok(proxy) => tracing::warn!(
            agent_id = agent_id.raw(),
            pid,
            wanted = netns_cookie,
            got = proxy.netns_cookie,
            "process changed network namespace before its proxy was ready"
        ),
        Err(error) => {
            tracing::warn!(agent_id = agent_id.raw(), pid, %error, "cannot open a DNS proxy in the agent's network namespace")
        }
    }
}

/// Records that `agent_id` reached its cap of namespace proxies.
fn report_namespace_cap(daemon: &Daemon, agent_id: AgentId, held: usize) {
    let mut state = daemon.policy.lock().expect("policy lock poisoned");
    let agent = state
        .registry
        .name_of(agent_id)
        .map_or_else(|| format!("#{agent_id}"), |n| n.to_string());
    let message = format!(
        "agent {agent} holds DNS proxies in {held} network namespaces, the most dns.maxNamespaceProxiesPerAgent allows: DNS from its further namespaces fails until one of them has no agent process left"
    );
    tracing::warn!("{message}");
    let host = state.host.clone();
    let mut record = AuditRecord::lifecycle(&host, "dns", message);
    record.agent = Some(agent);
    state.record(record);
}

/// Which namespace proxy a watcher looks after.
#[derive(Clone, Copy, Debug)]
struct NetnsProxy {
    agent_id: AgentId,
    netns_cookie: u64,
    netns_id: NetnsId,
}

/// Waits for the watched process to exit, then looks for another process
/// of the agent in the namespace to watch; when there is none, closes the
/// proxy's sockets and removes its kernel entry.
///
/// Nothing is polled: the daemon wakes only when a watched process exits,
/// and then looks through the agent's own processes (from the kernel's
/// identity map). A process of the agent that enters the namespace later
/// (`setns`) finds no proxy, and its first query asks for a new one, as in
/// any new namespace.
async fn release_when_empty(
    daemon: Weak<Daemon>,
    proxy: NetnsProxy,
    mut watched: u32,
    mut pidfd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
) {
    loop {
        // Readable means exited; an error (never seen) counts the same.
        if let Ok(mut ready) = pidfd.readable().await {
            ready.retain_ready();
        }
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let (members, proxies, learning) = match daemon.policy.lock() {
            Ok(state) => (
                state.maps.members(proxy.agent_id),
                state.proxies.clone(),
                state.learning.clone(),
            ),
            Err(_) => return,
        };
        let successor = members
            .into_iter()
            .filter(|&tgid| tgid != watched)
            .find_map(|tgid| {
                if NetnsId::of_process(tgid).ok()? != proxy.netns_id {
                    return None;
                }
                let fd = pidfd_open(tgid).ok()?;
                // Checked again with the pidfd held: the PID cannot be
                // reused by another process from here on.
                (NetnsId::of_process(tgid).ok()? == proxy.netns_id).then_some((tgid, fd))
            });
        if let Some((tgid, fd)) = successor
            && let Ok(fd) = watch_pidfd(fd)
        {
            watched = tgid;
            pidfd = fd;
            continue;
        }
        let Ok(mut held) = proxies.lock() else {
            return;
        };
        if let Ok(mut learning) = learning.lock() {
            learning
                .maps
                .remove_proxy(proxy.agent_id, proxy.netns_cookie);
        }
        held.running.remove(&(proxy.agent_id, proxy.netns_cookie));
        held.cap_reported.remove(&proxy.agent_id);
        tracing::info!(
            agent_id = proxy.agent_id.raw(),
            netns_cookie = proxy.netns_cookie,
            "DNS proxy released: no process of the agent is left in its network namespace"
        );
        return;
    }
}

/// Frees the space of expired learned addresses now and then; the kernel
/// already ignores them.
pub(super) async fn sweep_learned_addresses(daemon: Weak<Daemon>) {
    let mut interval = tokio::time::interval(Duration::from_secs(30));
    loop {
        interval.tick().await;
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let Ok(learning) = daemon.policy.lock().map(|state| state.learning.clone()) else {
            return;
        };
        let removed = learning
            .lock()
            .map(|mut learning| learning.maps.sweep_expired())
            .unwrap_or(0);
        if removed > 0 {
            tracing::debug!(removed, "expired learned addresses removed");
        }
    }
}

impl PolicyService {
    /// Brings the DNS proxies in line with the agents' domain rules.
    pub(super) fn refresh_dns(&mut self) {
        let needed = self.policies.agents.values().any(|a| !a.domains.is_empty());
        let proxies = self.proxies.clone();
        let Ok(mut proxies) = proxies.lock() else {
            return;
        };
        if proxies.setup.is_none()
            && needed
            && let Some((dns, learner)) = proxies.waiting_for_rules.clone()
        {
            // The resolver configuration is read again: it may have been
            // fixed since the start, when no agent needed it.
            match proxy_config(&dns) {
                Ok(config) => {
                    proxies.setup = Some((Arc::new(config), learner));
                    proxies.waiting_for_rules = None;
                }
                Err(error) => {
                    let message = format!(
                        "control degraded: domain rules cannot be enforced, no upstream resolver: {error:#}; the agents' DNS queries fail"
                    );
                    tracing::error!("{message}");
                    let host = self.host.clone();
                    self.record(AuditRecord::lifecycle(&host, "dns", message));
                }
            }
        }
        let Some((config, learner)) = proxies.setup.clone() else {
            return;
        };
        let plans: Vec<ProxyPlan> = self
            .policies
            .agents
            .iter()
            .filter(|(_, a)| !a.domains.is_empty())
            .filter_map(|(name, a)| {
                let id = self.registry.id_of(name.as_str())?;
                Some(ProxyPlan {
                    agent_id: id,
                    agent: name.to_string(),
                    names: AgentNames {
                        agent_id: id,
                        agent: name.to_string(),
                        rules: crate::policy::eval::domain_rules(a),
                        audit: a.mode == mode::AUDIT,
                        grants: proxies.grant_names.get(&id).cloned().unwrap_or_default(),
                    },
                    rows: a
                        .domains
                        .iter()
                        .map(|d| (d.rule_id, d.rows.clone()))
                        .collect(),
                })
            })
            .collect();
        // Rows of rules older than the rule table keeps (this generation's
        // and the one before, for queries decided before the swap) can no
        // longer be asked for: without this the rows of every reload
        // would pile up.
        let oldest_kept = self.policies.first_rule_id;
        if let Ok(mut learning) = self.learning.lock() {
            learning
                .domain_rows
                .retain(|&rule_id, _| rule_id >= oldest_kept);
        }
        for ProxyPlan {
            agent_id,
            agent,
            names,
            rows,
        } in plans
        {
            if let Ok(mut learning) = self.learning.lock() {
                learning.domain_rows.extend(rows);
            }
            match proxies.names.get(&agent_id) {
                Some((shared, _)) => {
                    if let Ok(mut current) = shared.write() {
                        *current = names;
                    }
                }
                None => {
                    let shared = Arc::new(RwLock::new(names));
                    let cache = Arc::new(AnswerCache::default());
                    match start_agent_proxy(
                        shared.clone(),
                        cache.clone(),
                        config.clone(),
                        learner.clone(),
                    ) {
                        Ok(proxy) => {
                            let registered = register_proxy(
                                &self.learning,
                                agent_id,
                                proxy.netns_cookie,
                                proxy.ports,
                            );
                            if let Err(error) = registered {
                                tracing::error!(%error, agent, "cannot register a DNS proxy");
                                continue;
                            }
                            tracing::info!(agent, ports = ?proxy.ports, upstreams = ?config.upstreams, "DNS proxy started");
                            proxies.names.insert(agent_id, (shared, cache));
                            proxies
                                .running
                                .insert((agent_id, proxy.netns_cookie), proxy);
                        }
                        Err(error) => tracing::error!(%error, agent, "cannot start a DNS proxy"),
                    }
                }
            }
        }
    }
}

//! `baton run`: the daemon. The CLI verbs are its clients, through the
//! control socket; this module uses nothing of `cli`.

mod backstop;
mod breakers;
mod dns;
mod events;
mod files;
mod grants;
mod guard;
mod reload;
mod takeover;
mod trail;

use breakers::watch_breakers;
use dns::{open_netns_proxy, start_dns_proxies, sweep_learned_addresses};
use events::{drain_events, serve_netns_requests, tick_audit};
use files::{record_fanotify_events, start_fanotify};
use reload::{fix_allocator_thresholds, follow_sources};
use takeover::Takeover;
use trail::{AuditWriter, Naming};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use agent_common::{
    egress::PortRule,
    identity::{AgentRecord, admission},
    map_names,
    verdict::mode,
};
use anyhow::Context as _;
use aya::maps::MapData;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    audit::{
        AuditConfig, AuditRecord, AuditTrail, ProcessCache,
        forward::Forwarders,
        record::{Clock, Context},
        stream::AuditService,
    },
    breaker::{Action, Engine, State as BreakerState, Transition, limits::limit_processes},
    config::{Config, DEFAULT_AUDIT_LOG, DEFAULT_CONTROL_SOCKET},
    control::{
        Reply, Request, budget,
        server::{self, Caller, Handler},
    },
    egress::{
        dns::{AnswerCache, Hold, LearnedAddress, Learner, ProxyConfig},
        service::{
            AgentProxy, DnsConfig, NetnsId, proxy_config, start_agent_proxy, start_netns_proxy,
        },
    },
    handover::{OpenBreaker, Progress, Registry, StateDir},
    identity::AgentRegistry,
    ids::{AgentId, Generation, RuleId},
    kernel::{
        ControlState, Enforcer,
        maps::{DnsMaps, GrantMaps, PolicyMaps, RuntimeMaps},
        pins::PinDir,
    },
    policy::{
        CompiledPolicySet, compile::compile_protected, domain::AgentNames, expand_on_disk,
        load_dir, source::DEFAULT_POLICY_DIR,
    },
};

/// `baton run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/baton/config.yaml, when present].
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of policy files (*.yaml, *.yml) [default: /etc/baton/policies].
    #[arg(long, env = "BATON_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Audit log, JSON lines [default: /var/log/baton/audit.jsonl].
    #[arg(long, env = "BATON_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Control socket that `baton exec` talks to [default: /run/baton/baton.sock].
    #[arg(long, env = "BATON_SOCKET")]
    pub control_socket: Option<PathBuf>,
    /// Where programs' links and maps are pinned in bpffs
    /// [default: /sys/fs/bpf/baton]. Pins keep enforcement running when the
    /// daemon dies; the next start adopts them with no gap.
    #[arg(long, env = "BATON_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Where the daemon keeps what a restart takes over: agent ids, rule
    /// names, counters already reported [default: /run/baton].
    #[arg(long, env = "BATON_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// On a clean stop (SIGTERM, SIGINT), detach every program and remove
    /// the pins and state, as `baton uninstall` does. Without it, a stopped
    /// daemon leaves its last policies enforced (fail-closed).
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// Log lines from the kernel programs themselves (aya-log), at this
    /// level and above, into this log with target `kernel`: what a file
    /// hook could not resolve (`warn`), each connect or send decision and
    /// each packet the backstop drops (`debug`). For diagnosing a decision or a
    /// verifier problem without a rebuild. `off` costs nothing: the
    /// verifier drops the log code. Any other level makes the programs
    /// larger and slower, and a change of level reloads them.
    #[arg(long, value_enum, env = "BATON_KERNEL_LOG", default_value = "off")]
    pub kernel_log: crate::kernel::klog::KernelLog,
    /// With `--kernel-log`: only these hook families log (comma-separated;
    /// all when not given). A family that does not log costs nothing, as
    /// with logging off: the verifier drops its log code.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        env = "BATON_KERNEL_LOG_HOOKS"
    )]
    pub kernel_log_hooks: Vec<crate::kernel::klog::HookFamily>,
}

/// Settings after merging the configuration file and flags.
struct Settings {
    policy_dir: PathBuf,
    audit_log: PathBuf,
    control_socket: PathBuf,
    dns: DnsConfig,
    audit: AuditConfig,
    metrics_address: std::net::SocketAddr,
    sources: crate::policy::source::PolicySourcesConfig,
    /// Paths no agent may change: Baton's kernel state and its own files.
    protected: Vec<(String, u32)>,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    cleanup_on_exit: bool,
    /// What the kernel programs log (`--kernel-log`).
    kernel_log: crate::kernel::klog::KernelLogSettings,
    /// Whether the fanotify fallback may run (`files.fanotify`).
    fanotify: bool,
    /// Whether Landlock's denials are read from the audit subsystem
    /// (`files.landlockAudit`).
    landlock_audit: bool,
    /// Whether fanotify watches denied folders through their whole mount
    /// (`files.fanotifyWholeMounts`).
    fanotify_whole_mounts: bool,
    /// How the daemon's descriptors are shared, and the control socket's
    /// limits within its share.
    descriptors: budget::Budget,
}

impl Settings {
    fn resolve(args: &RunArgs) -> anyhow::Result<Self> {
        let config = Config::load(args.config.as_deref())?;
        let policy_dir = args
            .policy_dir
            .clone()
            .or(config.policy_dir.clone())
            .unwrap_or_else(|| DEFAULT_POLICY_DIR.into());
        let audit_log = args
            .audit_log
            .clone()
            .or(config.audit_log.clone())
            .unwrap_or_else(|| DEFAULT_AUDIT_LOG.into());
        let state_dir = args
            .state_dir
            .clone()
            .or(config.state_dir.clone())
            .unwrap_or_else(|| crate::handover::DEFAULT_STATE_DIR.into());
        let mut own = vec![
            policy_dir.clone(),
            audit_log.parent().unwrap_or(&audit_log).to_path_buf(),
            state_dir.clone(),
        ];
        own.push(
            args.config
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_CONFIG.into()),
        );
        if let Ok(exe) = std::env::current_exe() {
            own.push(exe);
        }
        let mut protected = crate::fallback::protected::protected_paths(&own);
        // The daemon's own /proc entries (oom_score_adj and the like), for
        // the kernel's file rules.
        protected.push(crate::fallback::protected::daemon_proc_path(
            std::process::id(),
        ));
        let config_file = crate::config::config_path(args.config.as_deref());
        let descriptors = budget::Budget::plan(
            budget::raise_descriptor_limit(),
            &config.control,
            &config_file,
            std::fs::read_to_string(&config_file).ok().as_deref(),
        )?;
        Ok(Self {
            descriptors,
            fanotify: config.files.fanotify.unwrap_or(true),
            landlock_audit: config.files.landlock_audit.unwrap_or(true),
            fanotify_whole_mounts: config.files.fanotify_whole_mounts.unwrap_or(false),
            protected,
            pin_dir: args
                .pin_dir
                .clone()
                .or(config.pin_dir)
                .unwrap_or_else(|| crate::kernel::pins::DEFAULT_PIN_DIR.into()),
            state_dir,
            cleanup_on_exit: args.cleanup_on_exit,
            kernel_log: crate::kernel::klog::KernelLogSettings::new(
                args.kernel_log,
                &args.kernel_log_hooks,
            ),
            policy_dir: args
                .policy_dir
                .clone()
                .or(config.policy_dir)
                .unwrap_or_else(|| DEFAULT_POLICY_DIR.into()),
            audit_log: args
                .audit_log
                .clone()
                .or(config.audit_log)
                .unwrap_or_else(|| DEFAULT_AUDIT_LOG.into()),
            control_socket: args
                .control_socket
                .clone()
                .or(config.control_socket)
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            dns: config.dns,
            audit: config.audit,
            sources: config.policy_sources,
            metrics_address: config
                .metrics
                .address
                .unwrap_or(crate::metrics::DEFAULT_ADDRESS),
        })
    }
}

/// The policy service: the compiled set in force, the registry of agent
/// ids, the policy maps it writes, its reloads, and admission. It holds
/// handles on the services it drives (the DNS learner and proxies, the
/// breakers, the backstop, the audit writer), which each keep their own
/// lock; see each module for the lock order, which always starts here.
struct PolicyService {
    maps: PolicyMaps,
    /// The DNS maps and what learning needs, behind a lock of their own.
    learning: Arc<Mutex<dns::Learning>>,
    /// The circuit breakers and the run-time maps, behind a lock of their
    /// own; see [`breakers`] for the lock order.
    breakers: breakers::SharedBreakers,
    /// Prometheus metrics.
    metrics: Arc<crate::metrics::Metrics>,
    /// Where the set in force came from, and how its reloads went.
    reloads: reload::ReloadLog,
    /// Paths no agent may change.
    protected: Vec<(String, u32)>,
    cgroup_root: PathBuf,
    registry: AgentRegistry,
    policies: CompiledPolicySet,
    /// Id of the first rule of the generation in force; the rules before it
    /// belong to the previous generation, kept for events still queued.
    live_first_rule_id: RuleId,
    /// What a restarted daemon takes over.
    handover: StateDir,
    /// What was adopted from a previous daemon at start.
    adopted: Vec<String>,
    pin_dir: PathBuf,
    /// The pins, with the daemon's own descriptors of every map and link.
    pins: Arc<PinDir>,
    /// Where the packet backstop is attached; see [`backstop`].
    backstop: backstop::SharedBackstop,
    /// Writes the audit trail; shared with the event drain, which takes
    /// only this lock.
    writer: Arc<Mutex<AuditWriter>>,
    host: String,
    /// Whether BPF LSM enforces file rules; if not, `baton exec` agents get
    /// a Landlock ruleset instead.
    files_enforced: bool,
    /// Agents (and policy generations) whose Landlock gaps were logged.
    landlock_gaps_logged: BTreeSet<(String, Generation)>,
    /// Every self-protection LSM hook is attached (see
    /// [`crate::fallback::protected::held_by_bpf_lsm`]).
    held_by_bpf_lsm: bool,
    /// What keeps socket families from agents; `socket_create` is whether
    /// the BPF LSM program is attached.
    family_layers: crate::fallback::families::Layers,
    /// Where BPF LSM is missing: the fanotify listener for agents that
    /// `baton exec` did not start.
    fanotify: Option<crate::fallback::fanotify::Watcher>,
    /// Where BPF LSM is missing: whether the detection programs are attached.
    detection: bool,
    /// The running DNS proxies, behind a lock of their own; see
    /// [`dns::Proxies`] for the lock order.
    proxies: Arc<Mutex<dns::Proxies>>,
}

impl PolicyService {
    /// Gives the audit writer the names of the agents and rules in force.
    fn publish_naming(&self) {
        let naming = Naming::new(
            &self.registry,
            &self.policies,
            std::iter::empty(),
            self.policies.first_rule_id,
        );
        self.writer
            .lock()
            .expect("audit writer lock poisoned")
            .set_naming(naming);
    }

    /// The Landlock ruleset a `baton exec` process of `agent` applies to
    /// itself, where BPF LSM is missing; `None` where BPF LSM enforces the
    /// file rules or the agent has none.
    fn landlock_plan(&self, agent: &str) -> Option<crate::fallback::landlock::LandlockPlan> {
        if self.files_enforced {
            return None;
        }
        let (_, compiled) = self
            .policies
            .agents
            .iter()
            .find(|(name, _)| name.as_str() == agent)?;
        // Baton's own paths stay out of the Landlock plan: a Landlock
        // domain may not mount, and agents need mount namespaces
        // (containers, private resolv.conf). Where BPF LSM is missing, a
        // root agent can therefore still change Baton's files; `baton
        // status` says so.
        let rules: Vec<_> = compiled
            .file_rules
            .iter()
            .filter(|rule| !self.protected.iter().any(|(path, _)| *path == rule.path))
            .cloned()
            .collect();
        let mut plan =
            crate::fallback::landlock::plan(&rules, compiled.file_default, compiled.exec_default);
        plan.allow_anonymous_exec = compiled.allow_anonymous_exec;
        Some(plan).filter(|plan| plan.handled != 0)
    }

    /// Logs, once per agent and policy generation, what of the agent's
    /// file rules Landlock cannot express. The agent itself gets one line
    /// at most (`baton exec`): its standard error is what a model reads.
    fn log_landlock_gaps(&mut self, agent: &str, plan: &crate::fallback::landlock::LandlockPlan) {
        if plan.unexpressible.is_empty() {
            return;
        }
        let generation = self.maps.active_generation();
        if !self
            .landlock_gaps_logged
            .insert((agent.to_string(), generation))
        {
            return;
        }
        for gap in &plan.unexpressible {
            tracing::warn!(
                agent,
                generation = generation.raw(),
                "Landlock cannot express: {gap}"
            );
        }
    }

    /// An agent's counters: the kernel's, plus what the fanotify listener
    /// decided, so that every mechanism's denials feed the same breakers.
    fn counters(&self, agent_id: AgentId) -> agent_common::identity::AgentCounters {
        self.breakers
            .lock()
            .expect("breakers lock poisoned")
            .counters(agent_id)
    }

    /// What `baton status` shows.
    fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let now = std::time::Instant::now();
        let (breakers, taints) = {
            let mut held = self.breakers.lock().expect("breakers lock poisoned");
            let breakers: BTreeMap<String, serde_json::Value> = held
                .engine()
                .list(now)
                .into_iter()
                .map(|b| (b.agent.clone(), json!(b.state)))
                .collect();
            (breakers, held.taints())
        };
        // Asked of the kernel, not remembered: a program detached by other
        // means shows here at once.
        let detached = self.detached_programs();
        let egress_off: Vec<String> = detached
            .iter()
            .filter(|(program, _)| crate::kernel::loader::is_egress_program(program))
            .map(|(program, why)| format!("{program}: {why}"))
            .collect();
        let egress = if egress_off.is_empty() {
            "enforced (cgroup socket hooks)".to_string()
        } else {
            format!("NOT enforced: {}", egress_off.join("; "))
        };
        let files_off = detached
            .get("file_open")
            .map(|why| format!("NOT enforced: file_open: {why}"));
        let exec_off = detached
            .get("bprm_check_security")
            .map(|why| format!("NOT enforced: bprm_check_security: {why}"));
        let agents: Vec<serde_json::Value> = self
            .policies
            .agents
            .iter()
            .filter_map(|(name, agent)| {
                let id = self.registry.id_of(name.as_str())?;
                let rights = self.file_coverage(agent);
                let files = if self.files_enforced {
                    "enforced by BPF LSM".to_string()
                } else {
                    format!("read: {}; write: {}; create, delete, rename: {}", rights["read"], rights["write"], rights["create"])
                };
                let exec = if self.files_enforced {
                    "enforced by BPF LSM".to_string()
                } else {
                    rights["exec"].clone()
                };
                let files = files_off.clone().unwrap_or(files);
                let exec = exec_off.clone().unwrap_or(exec);
                Some(json!({
                    "agent": name.as_str(),
                    "id": id,
                    "policies": agent.policies,
                    "mode": match agent.mode { agent_common::verdict::mode::AUDIT => "audit", _ => "enforce" },
                    "processes": self.maps.members(id).len(),
                    "controls": {
                        "egress": egress,
                        "dns": if agent.domains.is_empty() { "no domain rules" } else { "enforced (DNS proxy)" },
                        "files": files,
                        "exec": exec,
                        "breakers": if agent.breakers.is_empty() { "none" } else { "enforced" },
                        "secrets": if agent.secrets.is_empty() {
                            "none"
                        } else if self.files_enforced {
                            "watched by BPF LSM: a read taints the agent before it returns"
                        } else if self.fanotify.is_some() {
                            "watched by fanotify: any open taints the agent before it returns"
                        } else if self.detection && agent.selected_outside_exec() {
                            "watched by the detection programs: a read taints the agent as the open returns"
                        } else {
                            "not watched: nothing on this host sees an allowed read"
                        },
                        "families": self.family_layers.describe(!agent.cgroups.is_empty() || !agent.executables.is_empty()),
                    },
                    "families": crate::policy::families::names(agent.families),
                    "rights": rights,
                    "landlock_gaps": self.landlock_plan(name.as_str()).map(|plan| plan.unexpressible).unwrap_or_default(),
                    "breaker": breakers.get(name.as_str()).cloned().unwrap_or(json!({"state": "closed"})),
                    "secret_taint": taints.iter().find(|t| t["agent"] == name.as_str()).cloned(),
                    "counters": crate::breaker::CounterSnapshot::from(self.counters(id)),
                }))
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "policy": self.reloads.to_json(self.maps.active_generation()),
            "file_enforcement": match (self.files_enforced, &self.fanotify) {
                (true, _) => "BPF LSM".to_string(),
                (false, Some(watcher)) => {
                    let watched = watcher.watched();
                    let watching = if watched.is_empty() {
                        "no deny-listed path to watch yet".to_string()
                    } else {
                        format!("watching {}", watched.join(", "))
                    };
                    format!("Landlock for baton exec agents; fanotify on deny-listed paths for the others ({watching}){}", if self.detection { "; the rest detected only" } else { "" })
                }
                (false, None) if self.detection => "Landlock for baton exec agents; detected only for the others (no fanotify)".to_string(),
                (false, None) => "Landlock for baton exec agents; NOT enforced for the others (no fanotify)".to_string(),
            },
            // Whether Landlock's denials of baton exec agents become
            // records: "recorded", or why not.
            "landlock_denials": match (self.files_enforced, &self.fanotify) {
                (true, _) => "not used (BPF LSM decides)".to_string(),
                (false, Some(watcher)) => watcher
                    .landlock_log()
                    .map_or_else(|| "recorded".to_string(), |why| format!("NOT recorded: {why}")),
                (false, None) => "NOT recorded: the fanotify listener that records them is not running".to_string(),
            },
            // How often Landlock's reports were lost, and how often the
            // audit subsystem was found switched off (and switched back on).
            "landlock_reports": self.fanotify.as_ref().map(|watcher| serde_json::json!({
                "overflows": watcher.counter().landlock_lost(),
                "audit_switched_off": watcher.audit_switched_off(),
            })),
            "audit": {
                "head_seq": self.writer.lock().ok().and_then(|w| w.sink.head()).map(|head| head.seq),
            },
            "pins": {
                "dir": self.pin_dir,
                "adopted_at_start": self.adopted,
            },
            "packet_backstop": self.backstop.lock().map(|b| json!({
                "attached_to": b.attached(),
                "unavailable": b.unavailable(),
            })).unwrap_or_default(),
            "programs": {
                "attached": self.pins.held().iter().filter(|p| p.starts_with("links/")).count() - detached.len(),
                "detached": detached,
            },
            "agents": agents,
        })
    }

    /// The agent's socket families and whether it may gain privileges on
    /// exec, for `baton exec`.
    fn process_settings(&self, agent: &str) -> (u64, bool) {
        self.policies
            .agents
            .iter()
            .find(|(name, _)| name.as_str() == agent)
            .map_or(
                (agent_common::identity::DEFAULT_FAMILIES, false),
                |(_, compiled)| (compiled.families, compiled.allow_privilege_escalation),
            )
    }

    /// Admits every process already inside a selected cgroup (or below it).
    /// The kernel admits processes that enter later, at their next fork or
    /// exec; this catches the ones that were there before the selector.
    fn admit_cgroup_members(&mut self, cgroup_root: &Path) -> usize {
        let mut admitted = 0;
        let agents: Vec<(String, Vec<String>)> = self
            .policies
            .agents
            .iter()
            .map(|(name, agent)| (name.to_string(), agent.cgroups.clone()))
            .collect();
        for (name, cgroups) in agents {
            let Some(agent_id) = self.registry.id_of(&name) else {
                continue;
            };
            for cgroup in cgroups {
                let dir = cgroup_root.join(cgroup.trim_start_matches('/'));
                for tgid in cgroup_members(&dir) {
                    if self.maps.agent_of(tgid).is_some() {
                        continue;
                    }
                    let record = AgentRecord {
                        agent_id: agent_id.raw(),
                        root_tgid: tgid,
                        admission: admission::CGROUP,
                        _pad: [0; 7],
                    };
                    let selected = |pid: u32| in_cgroup(pid, &cgroup);
                    match self.maps.admit_live(tgid, record, Some(&selected)) {
                        Ok(true) => admitted += 1,
                        Ok(false) => {}
                        Err(error) => tracing::error!(tgid, agent = name, %error, "cannot admit"),
                    }
                }
            }
        }
        admitted
    }
}

struct Daemon {
    policy: Mutex<PolicyService>,
    /// The audit writer; see [`trail`] for the lock order.
    writer: Arc<Mutex<AuditWriter>>,
    /// Wakes the breaker service when the drain wrote a decision.
    breakers_due: tokio::sync::Notify,
    audit: AuditService,
    /// A handle on the kernel's `tgid → agent` map of its own, so that
    /// telling who calls on the control socket never waits for `state`.
    identity: aya::maps::HashMap<MapData, u32, AgentRecord>,
    /// Per agent: when its last refused operator request was recorded, and
    /// how many were refused since without a record of their own.
    refusals: Mutex<HashMap<AgentId, (std::time::Instant, u64)>>,
    /// Operators' grants; see [`grants`] for the lock order.
    grants: Mutex<grants::Grants>,
    /// The circuit breakers; see [`breakers`] for the lock order.
    breakers: breakers::SharedBreakers,
    /// Where the packet backstop runs; see [`backstop`] for the lock order.
    backstop: backstop::SharedBackstop,
    /// The daemon itself, for tasks a request starts.
    weak: std::sync::OnceLock<Weak<Daemon>>,
    /// How far the event drain trails the kernel: a read-only view of the
    /// ring's positions, which needs no lock.
    event_backlog: crate::kernel::ring::RingBacklog,
}

impl Daemon {
    /// A weak handle on the daemon, for tasks that must not keep it alive.
    fn weak_self(&self) -> Weak<Daemon> {
        self.weak.get().cloned().unwrap_or_default()
    }
}

/// One record per agent per this interval for refused operator requests:
/// an agent looping on them must not flood the audit trail.
const REFUSAL_RECORD_INTERVAL: Duration = Duration::from_secs(1);

impl Handler for Daemon {
    fn audit(&self) -> Option<&AuditService> {
        Some(&self.audit)
    }

    fn agent_of(&self, tgid: u32) -> Option<AgentId> {
        self.identity
            .get(&tgid, 0)
            .ok()
            .map(|r| AgentId::from_raw(r.agent_id))
    }

    fn handle(&self, caller: Caller, request: Request) -> Reply {
        if !matches!(
            request,
            Request::Admit { .. } | Request::Status | Request::Why { .. }
        ) && !caller.is_operator()
        {
            return self.refuse(caller, &request);
        }
        match request {
            Request::Admit { agent } => self.admit(caller, &agent),
            Request::Status => {
                let mut report = self.policy.lock().expect("policy lock poisoned").status();
                report["audit"]["events_pending_bytes"] = self.event_backlog.bytes().into();
                report["audit"]["event_ring"] =
                    serde_json::to_value(self.event_backlog.state()).unwrap_or_default();
                let grants = self.grants.lock().expect("grants lock poisoned").list();
                if let Some(agents) = report["agents"].as_array_mut() {
                    for agent in agents {
                        let name = agent["agent"].as_str().unwrap_or_default().to_string();
                        agent["grants"] = grants
                            .iter()
                            .filter(|g| g.grant.agent == name)
                            .filter_map(|g| serde_json::to_value(g).ok())
                            .collect();
                    }
                }
                Reply::Status { report }
            }
            Request::BreakerList => self.breaker_list(),
            Request::BreakerReset { agent } => self.breaker_command(&agent, None),
            Request::BreakerTrip { agent, action } => self.breaker_command(&agent, Some(action)),
            Request::Why { agent, recent } => self.why(caller, agent, recent),
            Request::GrantAdd {
                agent,
                allow,
                seconds,
                max_connects,
                protocol,
            } => self.grant_add(&grants::GrantRequest {
                agent,
                allow,
                duration: Duration::from_secs(seconds),
                max_connects,
                protocol,
            }),
            Request::GrantList => self.grant_list(),
            Request::GrantRevoke { id } => self.grant_revoke(id),
            Request::TaintList => self.taint_list(),
            Request::TaintClear { agent } => self.taint_clear(&agent),
        }
    }
}

impl Daemon {
    /// `baton why`: the caller's own agent's recent denials (or, for an
    /// operator outside every agent, the named agent's), from the records
    /// the audit hub still holds.
    fn why(&self, caller: Caller, asked: Option<String>, recent: usize) -> Reply {
        let own = caller.agent.map(|id| {
            let state = self.policy.lock().expect("policy lock poisoned");
            state
                .registry
                .name_of(id)
                .map_or_else(|| format!("#{id}"), |name| name.to_string())
        });
        let agent = match (own, asked) {
            (Some(own), Some(asked)) if asked != own => {
                return Reply::Error {
                    message: format!(
                        "this process belongs to agent {own:?}: an agent sees only its own denials, not {asked:?}'s"
                    ),
                };
            }
            (Some(own), _) => own,
            (None, _) if !caller.is_operator() => {
                return Reply::Error {
                    message: "run baton why inside an agent (it shows that agent's denials), or as root with --agent NAME".into(),
                };
            }
            (None, Some(asked)) => asked,
            (None, None) => {
                return Reply::Error {
                    message: "this process belongs to no agent; name one with --agent NAME".into(),
                };
            }
        };
        let wanted = match recent {
            0 => 20,
            n => n.min(crate::control::WHY_MAX),
        };
        let (past, _) = self.audit.hub().subscribe(usize::MAX);
        let denials: Vec<serde_json::Value> = past
            .iter()
            .filter(|record| {
                record.agent.as_deref() == Some(agent.as_str())
                    && matches!(record.verdict, "denied" | "would-deny" | "detected")
            })
            .filter_map(|record| serde_json::from_str(&record.line).ok())
            .collect();
        let skip = denials.len().saturating_sub(wanted);
        Reply::Denials {
            agent,
            records: denials.into_iter().skip(skip).collect(),
        }
    }

    /// Refuses an operator request to a caller that is not root, or that
    /// belongs to an agent (whatever its uid); the refusal of an agent is
    /// recorded, as it is an agent trying to change its own enforcement.
    fn refuse(&self, caller: Caller, request: &Request) -> Reply {
        let what = match request {
            Request::BreakerList => "breaker list",
            Request::BreakerReset { .. } => "breaker reset",
            Request::BreakerTrip { .. } => "breaker trip",
            Request::GrantAdd { .. } => "grant",
            Request::GrantList => "grant list",
            Request::GrantRevoke { .. } => "grant revoke",
            Request::TaintList => "taint list",
            Request::TaintClear { .. } => "taint clear",
            Request::Admit { .. } | Request::Status | Request::Why { .. } => "request",
        };
        let control = match request {
            Request::GrantAdd { .. } | Request::GrantList | Request::GrantRevoke { .. } => "grant",
            Request::TaintList | Request::TaintClear { .. } => "secret",
            _ => "breaker",
        };
        let Some(agent_id) = caller.agent else {
            return Reply::Error {
                message: format!("{what} needs root"),
            };
        };
        let mut state = self.policy.lock().expect("policy lock poisoned");
        let agent = state
            .registry
            .name_of(agent_id)
            .map_or_else(|| format!("#{agent_id}"), |n| n.to_string());
        let target = match request {
            Request::BreakerReset { agent }
            | Request::BreakerTrip { agent, .. }
            | Request::GrantAdd { agent, .. }
            | Request::TaintClear { agent } => {
                format!(" of agent {agent}")
            }
            _ => String::new(),
        };
        let message = format!(
            "{what}{target} refused: the caller (pid {}, uid {}) belongs to agent {agent}, and no process in an agent may operate the daemon, whatever its uid",
            caller.pid, caller.uid
        );
        let now = std::time::Instant::now();
        let unrecorded = {
            let mut refusals = self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match refusals.get_mut(&agent_id) {
                Some((last, skipped)) if now.duration_since(*last) < REFUSAL_RECORD_INTERVAL => {
                    *skipped += 1;
                    None
                }
                Some((last, skipped)) => {
                    *last = now;
                    Some(std::mem::take(skipped))
                }
                None => {
                    refusals.insert(agent_id, (now, 0));
                    Some(0)
                }
            }
        };
        let Some(unrecorded) = unrecorded else {
            return Reply::Error { message };
        };
        let mut text = message.clone();
        if unrecorded > 0 {
            text.push_str(&format!(
                " ({unrecorded} more operator requests of this agent refused since the last record)"
            ));
        }
        tracing::warn!("{text}");
        let host = state.host.clone();
        let mut record = AuditRecord::lifecycle(&host, control, text);
        record.agent = Some(agent);
        record.verdict = "denied";
        record.hook = Some("control_socket");
        state.record(record);
        Reply::Error { message }
    }

    fn admit(&self, caller: Caller, agent: &str) -> Reply {
        let mut state = self.policy.lock().expect("policy lock poisoned");
        let Some(agent_id) = state.registry.id_of(agent) else {
            return Reply::Error {
                message: format!("no loaded policy selects agent {agent:?}"),
            };
        };
        // A process never changes agent: otherwise an agent could leave its
        // policy by asking to join a more permissive one.
        if let Some(current) = state.maps.agent_of(caller.pid) {
            if current.agent_id == agent_id.raw() {
                let (families, allow_privilege_escalation) = state.process_settings(agent);
                return Reply::Admitted {
                    agent_id,
                    landlock: None,
                    held_by_bpf_lsm: state.held_by_bpf_lsm,
                    families,
                    families_by_lsm: state.family_layers.socket_create,
                    allow_privilege_escalation,
                };
            }
            let current_name = state
                .registry
                .name_of(AgentId::from_raw(current.agent_id))
                .map_or_else(|| format!("#{}", current.agent_id), |n| n.to_string());
            return Reply::Error {
                message: format!(
                    "process {} already belongs to agent {current_name:?}",
                    caller.pid
                ),
            };
        }
        let record = AgentRecord {
            agent_id: agent_id.raw(),
            root_tgid: caller.pid,
            admission: admission::EXEC,
            _pad: [0; 7],
        };
        // Where BPF LSM is missing, the caller enforces the file rules on
        // itself with Landlock before it execs the agent.
        let landlock = state.landlock_plan(agent);
        let max_processes = state
            .policies
            .agents
            .iter()
            .find(|(name, _)| name.as_str() == agent)
            .and_then(|(_, compiled)| compiled.max_processes);
        if let Some(max) = max_processes
            && let Err(error) = limit_processes(&state.cgroup_root, agent, caller.pid, max)
        {
            return Reply::Error {
                message: format!("cannot apply the process limit: {error}"),
            };
        }
        // Its sockets are refused wherever the backstop does not run.
        match backstop::cover_process(&state.backstop, caller.pid, &state.cgroup_root) {
            Ok(Some(message)) => {
                tracing::info!("{message}");
                let host = state.host.clone();
                state.record(AuditRecord::lifecycle(&host, "egress", message));
            }
            Ok(None) => {}
            Err(error) => {
                return Reply::Error {
                    message: format!(
                        "cannot cover the agent's cgroup with the packet backstop: {error}"
                    ),
                };
            }
        }
        match state.maps.admit_live(caller.pid, record, None) {
            Ok(false) => Reply::Error {
                message: format!(
                    "process {} exited before it was admitted (or its main thread did)",
                    caller.pid
                ),
            },
            Ok(true) => {
                tracing::info!(
                    pid = caller.pid,
                    uid = caller.uid,
                    agent,
                    landlock = landlock.is_some(),
                    "admitted"
                );
                if let Some(plan) = &landlock {
                    state.log_landlock_gaps(agent, plan);
                    if let Some(watcher) = &state.fanotify {
                        watcher.admitted_exec(record);
                    }
                }
                trail::keep_stderr(self, &state, agent, caller.pid);
                let (families, allow_privilege_escalation) = state.process_settings(agent);
                Reply::Admitted {
                    agent_id,
                    landlock,
                    held_by_bpf_lsm: state.held_by_bpf_lsm,
                    families,
                    families_by_lsm: state.family_layers.socket_create,
                    allow_privilege_escalation,
                }
            }
            Err(error) => Reply::Error {
                message: format!("kernel refused the admission: {error}"),
            },
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    // Before anything is read or made: a daemon started by another user
    // would only leave a pin directory of theirs behind.
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "baton run needs root (it loads and pins eBPF programs); it runs as uid {}",
            nix::unistd::geteuid()
        );
    }
    let settings = Settings::resolve(args)?;
    fix_allocator_thresholds();
    // Policies are read and compiled before anything touches the kernel, so
    // a bad file stops the daemon before it enforces a partial set.
    // An HTTP-only host may start with no local policy: the source (or its
    // cached bundle) fills the set in shortly.
    let policies = if settings.sources.http.is_some() && !settings.policy_dir.exists() {
        Vec::new()
    } else if settings.sources.require_signatures {
        // Signed policies only, from the first read on.
        let trust = settings.sources.trust()?;
        crate::policy::source::directory::DirectorySource::new(&settings.policy_dir, trust)
            .read()
            .policies?
    } else {
        load_dir(&settings.policy_dir)?
    };
    let mut compiled = compile_protected(
        &policies,
        RuleId::FIRST,
        &expand_on_disk,
        &settings.protected,
    )?;
    // The pins are locked before the kernel is touched, so a second daemon
    // on the same directory stops here instead of fighting over the links,
    // and before the audit log is opened, so it leaves no file behind.
    let pins = PinDir::open(&settings.pin_dir)?;
    let sink = AuditTrail::open(&settings.audit_log, &settings.audit)?;
    let handover = StateDir::open(&settings.state_dir)?;
    let registry = if pins.adopting() {
        handover.registry().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the previous daemon's registry; agent ids are reassigned in name order");
            None
        })
    } else {
        None
    };
    // Rule ids continue where the previous daemon's stopped: events it left
    // queued name their rules by the old ids.
    if let Some(first_rule_id) = registry.as_ref().map(Registry::next_rule_id) {
        compiled = compile_protected(
            &policies,
            first_rule_id,
            &expand_on_disk,
            &settings.protected,
        )?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let takeover = Takeover {
        pins,
        handover,
        registry,
    };
    runtime.block_on(serve(settings, &policies, compiled, sink, takeover))
}

/// Takes the ring buffer map `name` out of the object, for a reader that
/// gives events back only once they are handled.
fn take_ring(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> anyhow::Result<crate::kernel::ring::EventRing> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} is missing from the eBPF object"))?;
    let aya::maps::Map::RingBuf(map) = map else {
        anyhow::bail!("map {name} in the eBPF object is not a ring buffer");
    };
    Ok(crate::kernel::ring::EventRing::new(map)?)
}

async fn serve(
    settings: Settings,
    policies: &[crate::policy::LoadedPolicy],
    compiled: CompiledPolicySet,
    sink: AuditTrail,
    takeover: Takeover,
) -> anyhow::Result<()> {
    let Takeover {
        pins,
        handover,
        registry: previous_registry,
    } = takeover;
    let adopting = pins.adopting();
    let pins = Arc::new(pins);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Bound first, so /healthz answers and /readyz says "not yet" while the
    // programs load. A taken port costs the endpoint, not enforcement.
    let metrics_task = match crate::metrics::MetricsServer::bind(settings.metrics_address).await {
        Ok(server) => {
            tracing::info!(address = %server.local_addr(), "metrics endpoint");
            Some(tokio::spawn(server.run(metrics.clone(), ready.clone())))
        }
        Err(error) => {
            tracing::warn!(%error, "no metrics endpoint");
            None
        }
    };
    // Detection (where BPF LSM is refused) is for agents selected by
    // cgroup, unit or executable: with none, its system-call hooks would
    // cost every process on the host for nothing.
    let wants_detection = compiled
        .agents
        .values()
        .any(|a| !a.cgroups.is_empty() || !a.executables.is_empty());
    let mut enforcer = Enforcer::load(
        &pins,
        settings.audit.events_per_second,
        wants_detection,
        settings.kernel_log,
    )?;
    if settings.kernel_log.on() {
        crate::kernel::klog::spawn_reader(&mut enforcer.ebpf)?;
        tracing::info!(
            level = settings.kernel_log.level,
            families = settings.kernel_log.families,
            "kernel programs log to target `kernel`"
        );
    }
    let mut maps = PolicyMaps::new(&mut enforcer.ebpf)?;
    let runtime = RuntimeMaps::new(&mut enforcer.ebpf)?;
    // Before the first policy is written: which rights detection covers
    // depends on whether fanotify runs.
    let (mut fanotify, fanotify_events) = start_fanotify(
        &enforcer,
        &maps,
        &runtime,
        settings.fanotify,
        settings.landlock_audit,
    );
    if let Some(watcher) = fanotify.as_mut() {
        watcher.watch_whole_mounts(settings.fanotify_whole_mounts);
    }
    let fanotify_events = fanotify_events.zip(
        fanotify
            .as_ref()
            .map(crate::fallback::fanotify::Watcher::counter),
    );
    // Denied processes of agents whose policy asks for it get a line on
    // their standard error; without it, nothing else changes.
    let explainer = match maps
        .identity_handle()
        .map_err(|e| e.to_string())
        .and_then(|identity| crate::explain::Explainer::start(identity).map_err(|e| e.to_string()))
    {
        Ok(explainer) => Some(explainer),
        Err(error) => {
            tracing::warn!(%error, "denied processes will not be told why (spec.explain)");
            None
        }
    };
    let detection = !enforcer.detection.is_empty()
        && enforcer
            .detection
            .iter()
            .all(|(_, state)| *state == ControlState::Enforced);
    maps.detect_scope = crate::kernel::detect::DetectScope {
        attached: detection,
        fanotify: fanotify.is_some(),
    };
    let mut registry = match &previous_registry {
        Some(previous) => AgentRegistry::restore(
            previous
                .agents
                .iter()
                .map(|(name, id)| (crate::policy::spec::Name::from_trusted(name.clone()), *id))
                .collect(),
        ),
        None => AgentRegistry::new(),
    };
    registry.sync(&compiled);
    let shared_backstop: backstop::SharedBackstop =
        Arc::new(Mutex::new(crate::kernel::backstop::Backstop::new(
            &mut enforcer.ebpf,
            pins.clone(),
            &enforcer.cgroup_root,
        )?));
    // Before any agent is selected: its sockets are refused where the
    // backstop does not run.
    let backstop_changes =
        backstop::cover_policies(&shared_backstop, &compiled, &enforcer.cgroup_root);
    let generation = maps.apply(&compiled, registry.ids())?;
    let unresolved = maps.apply_selectors(&compiled, registry.ids(), &enforcer.cgroup_root)?;
    let mut dns = DnsMaps::new(&mut enforcer.ebpf)?;
    let grant_maps = GrantMaps::new(&mut enforcer.ebpf)?;
    // A previous daemon's proxies died with it; queries find no proxy (and
    // fail) until this daemon's are up, never an unfiltered resolver.
    dns.clear_proxies();
    let events = take_ring(&mut enforcer.ebpf, map_names::EVENTS)?;
    let event_backlog = events.backlog()?;
    let netns_requests = take_ring(&mut enforcer.ebpf, map_names::NETNS_REQUESTS)?;

    let live_first_rule_id = compiled.first_rule_id;
    let mut compiled = compiled;
    if let Some(previous) = previous_registry {
        let mut rules = previous.rules;
        rules.append(&mut compiled.rules);
        compiled.rules = rules;
        compiled.first_rule_id = previous.first_rule_id;
    }
    let previous_progress = if adopting {
        handover.progress().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the previous daemon's progress");
            None
        })
    } else {
        None
    };
    let learning = Arc::new(Mutex::new(dns::Learning::new(dns)));
    let writer = Arc::new(Mutex::new(AuditWriter::new(
        sink,
        explainer,
        metrics.clone(),
        learning.clone(),
        host.clone(),
    )));
    let identity_for_breakers = maps
        .identity_handle()
        .context("cannot open a second handle on the identity map")?;
    let mut breakers = breakers::Breakers::new(
        runtime,
        fanotify
            .as_ref()
            .map(crate::fallback::fanotify::Watcher::counter),
        identity_for_breakers,
        handover.clone(),
        metrics.clone(),
        writer.clone(),
        host.clone(),
    )?;
    breakers.follow(&compiled, &registry);
    let breakers = Arc::new(Mutex::new(breakers));
    let mut state = PolicyService {
        live_first_rule_id,
        handover,
        adopted: pins.adopted().to_vec(),
        pin_dir: pins.path().to_path_buf(),
        pins: pins.clone(),
        backstop: shared_backstop.clone(),
        maps,
        learning,
        breakers: breakers.clone(),
        metrics: metrics.clone(),
        reloads: reload::ReloadLog::new(&settings.policy_dir.display().to_string(), policies),
        protected: settings.protected.clone(),
        cgroup_root: enforcer.cgroup_root.clone(),
        registry,
        policies: compiled,
        writer: writer.clone(),
        host: host.clone(),
        files_enforced: enforcer.files == ControlState::Enforced,
        landlock_gaps_logged: BTreeSet::new(),
        held_by_bpf_lsm: crate::fallback::protected::held_by_bpf_lsm(&enforcer.lsm_hooks),
        family_layers: crate::fallback::families::Layers::of_this_kernel(
            enforcer.socket_families == ControlState::Enforced,
        ),
        fanotify,
        detection,
        proxies: Arc::new(Mutex::new(dns::Proxies::new())),
    };
    state.publish_naming();
    state.record(AuditRecord::lifecycle(
        &host,
        "daemon",
        format!("baton {} started", env!("CARGO_PKG_VERSION")),
    ));
    for undone in pins.reclaimed() {
        tracing::warn!("pin directory: {undone}");
        state.record(AuditRecord::lifecycle(
            &host,
            "daemon",
            format!("pin directory: {undone}"),
        ));
    }
    if adopting {
        state.take_over(previous_progress);
    }
    state.save_registry();
    breakers
        .lock()
        .expect("breakers lock poisoned")
        .save_progress();
    let agents: Vec<String> = state
        .policies
        .agents
        .keys()
        .map(|n| n.to_string())
        .collect();
    state.record(AuditRecord::lifecycle(
        &host,
        "policy",
        format!(
            "generation {generation} loaded from {}: agents {}",
            settings.policy_dir.display(),
            agents.join(", ")
        ),
    ));
    tracing::info!(generation = generation.raw(), policy_dir = %settings.policy_dir.display(), agents = ?agents, "policies loaded");
    for selector in &unresolved {
        let message = format!(
            "agent {}: {} {} is not selected yet: {}",
            selector.agent, selector.what, selector.path, selector.reason
        );
        tracing::warn!("{message}");
        state.record(AuditRecord::lifecycle(&host, "policy", message));
    }
    for message in backstop_changes {
        tracing::info!("{message}");
        state.record(AuditRecord::lifecycle(&host, "egress", message));
    }
    let admitted = state.admit_cgroup_members(&enforcer.cgroup_root);
    if admitted > 0 {
        tracing::info!(admitted, "processes already in selected cgroups admitted");
    }
    tracing::info!(control = "egress", state = ?enforcer.egress, cgroup_root = %enforcer.cgroup_root.display());
    for (what, control_state) in [
        (
            "packet-level backstop (cgroup_skb/egress)",
            &enforcer.packet_backstop,
        ),
        (
            "routing socket options (cgroup/setsockopt)",
            &enforcer.routing_options,
        ),
    ] {
        if let ControlState::Unavailable(reason) = control_state {
            let message = format!("control degraded: {what} is not attached: {reason}");
            tracing::warn!(control = "egress", "{message}");
            state.record(AuditRecord::lifecycle(&host, "egress", message));
        }
    }
    if let ControlState::Unavailable(reason) = &enforcer.socket_families {
        tracing::warn!(control = "egress", %reason, "socket families are NOT held by BPF LSM");
        state.record(AuditRecord::lifecycle(
            &host,
            "egress",
            format!(
                "control degraded: socket families (vsock, packet, ...) are held only for baton exec agents, by seccomp; agents selected by cgroup, systemd unit or executable are NOT covered: {reason}"
            ),
        ));
    }
    for (hook, hook_state) in &enforcer.lsm_hooks {
        if let ControlState::Unavailable(reason) = hook_state {
            let message = format!("control degraded: LSM hook {hook} is not attached: {reason}");
            tracing::warn!("{message}");
            state.record(AuditRecord::lifecycle(&host, "file", message));
        }
    }
    for (program, program_state) in &enforcer.detection {
        if let ControlState::Unavailable(reason) = program_state {
            let message = format!(
                "control degraded: detection program {program} is not attached, so nothing is detected: {reason}"
            );
            tracing::warn!("{message}");
            state.record(AuditRecord::lifecycle(&host, "file", message));
        }
    }
    if let ControlState::Unavailable(reason) = &enforcer.files {
        tracing::warn!(control = "file", %reason, "file rules are NOT enforced by BPF LSM");
        state.record(AuditRecord::lifecycle(
            &host,
            "file",
            format!("control degraded: BPF LSM does not enforce file rules: {reason}"),
        ));
        state.refresh_fanotify();
        state.record_file_coverage();
    } else {
        tracing::info!(control = "file", state = "enforced");
    }

    let hub = writer
        .lock()
        .expect("audit writer lock poisoned")
        .sink
        .hub();
    let audit = AuditService::new(hub.clone(), &settings.audit.stream)?;
    let forwarders = Forwarders::start(&settings.audit_log, &settings.audit, Some(hub))?;
    let identity = state
        .maps
        .identity_handle()
        .context("cannot open a second handle on the identity map")?;
    let identity = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(identity))
        .context("the identity map is not a hash map")?;
    let (grants, grant_warnings) = grants::Grants::open(grant_maps, &settings.state_dir, |name| {
        state.registry.id_of(name)
    });
    for warning in grant_warnings {
        tracing::warn!("{warning}");
        state.record(AuditRecord::lifecycle(&host, "grant", warning));
    }
    {
        // Names granted before a restart, for the proxies started below.
        let mut proxies = state.proxies.lock().expect("proxies lock poisoned");
        for &agent_id in state.registry.ids().values() {
            proxies.set_grant_names(agent_id, grants.domain_rules(agent_id));
        }
    }
    let daemon = Arc::new(Daemon {
        policy: Mutex::new(state),
        writer,
        breakers_due: tokio::sync::Notify::new(),
        audit,
        identity,
        refusals: Mutex::default(),
        grants: Mutex::new(grants),
        breakers,
        backstop: shared_backstop.clone(),
        weak: std::sync::OnceLock::new(),
        event_backlog,
    });
    let _ = daemon.weak.set(Arc::downgrade(&daemon));
    let grant_sweeper = tokio::spawn(grants::sweep_grants(Arc::downgrade(&daemon)));
    let audit_ticker = tokio::spawn(tick_audit(Arc::downgrade(&daemon)));
    if let Some((events, listener)) = fanotify_events {
        tokio::spawn(record_fanotify_events(
            Arc::downgrade(&daemon),
            listener,
            host.clone(),
            events,
        ));
    }
    start_dns_proxies(&daemon, &settings.dns).await?;
    let sweeper = tokio::spawn(sweep_learned_addresses(Arc::downgrade(&daemon)));
    let netns_server = tokio::spawn(serve_netns_requests(
        netns_requests,
        Arc::downgrade(&daemon),
    ));
    let breaker_task = tokio::spawn(watch_breakers(Arc::downgrade(&daemon)));
    // The socket appears last: once it exists, the daemon is enforcing.
    // Everything the daemon opens at start is open now: what is left must
    // hold the control socket's share and the reserve.
    let in_use = budget::open_descriptors().context("cannot count open descriptors")?;
    settings.descriptors.check_in_use(in_use)?;
    tracing::info!(
        limit = settings.descriptors.limit,
        in_use,
        reserved_fanotify = budget::FANOTIFY_RESERVE,
        reserved_audit = budget::AUDIT_RESERVE,
        reserved_explain = budget::EXPLAIN_RESERVE,
        control = settings.descriptors.control,
        connections = settings.descriptors.limits.connections,
        per_user = settings.descriptors.limits.per_user,
        operator = settings.descriptors.limits.operator,
        "descriptor budget"
    );
    // Whoever sees the socket may stop the daemon at once: from here on a
    // SIGTERM is a clean shutdown (a signed head), never the default death.
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let listener = server::bind(&settings.control_socket)?;
    let control = tokio::spawn(server::serve_with(
        listener,
        daemon.clone(),
        settings.descriptors.limits,
    ));
    {
        let state = daemon.policy.lock().expect("policy lock poisoned");
        state
            .metrics
            .set_policy_generation(u64::from(state.maps.active_generation().raw()));
        state
            .metrics
            .record_policy_reload(crate::metrics::ReloadResult::Success);
    }
    ready.store(true, std::sync::atomic::Ordering::Release);
    let guard = tokio::spawn(guard::guard_pins(
        Arc::downgrade(&daemon),
        pins.clone(),
        enforcer.cgroup_root.clone(),
        ready.clone(),
    ));
    // An HTTP-only host watches no directory that does not exist.
    let local = (settings.policy_dir.exists() || settings.sources.http.is_none())
        .then_some(settings.policy_dir.as_path());
    let sources = crate::policy::source::start(&settings.sources, local)?;
    let reloader = tokio::spawn(follow_sources(Arc::downgrade(&daemon), sources));
    tracing::info!(socket = %settings.control_socket.display(), audit_log = %settings.audit_log.display(), "ready");

    let result = tokio::select! {
        result = drain_events(events, daemon.clone()) => result,
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    // First: the guard would put back the pins a cleanup removes.
    guard.abort();
    control.abort();
    sweeper.abort();
    grant_sweeper.abort();
    netns_server.abort();
    breaker_task.abort();
    reloader.abort();
    let _ = std::fs::remove_file(&settings.control_socket);
    {
        let mut state = daemon.policy.lock().expect("policy lock poisoned");
        let host = state.host.clone();
        state.record(AuditRecord::lifecycle(
            &host,
            "daemon",
            "baton stopped".into(),
        ));
        drop(state);
        // A closing checkpoint, so verification can trust the whole log.
        let mut writer = daemon.writer.lock().expect("audit writer lock poisoned");
        if let Err(error) = writer.sink.checkpoint() {
            tracing::error!(%error, "closing checkpoint failed");
        }
    }
    audit_ticker.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    forwarders.stop();
    drop(enforcer);
    if settings.cleanup_on_exit {
        let handover = daemon
            .policy
            .lock()
            .expect("policy lock poisoned")
            .handover
            .clone();
        handover.remove();
        match pins.remove() {
            Ok(removed) => {
                tracing::info!(pins = removed.len(), "programs detached, pins removed")
            }
            Err(error) => tracing::error!(%error, "cannot remove every pin"),
        }
    } else {
        daemon
            .breakers
            .lock()
            .expect("breakers lock poisoned")
            .save_progress();
        tracing::info!(pin_dir = %pins.path().display(), "programs stay attached with the last policies; `baton uninstall` removes them");
    }
    result
}

/// Whether process `pid` is in `cgroup` (relative to the cgroup v2 root)
/// or below it, from its own `/proc/PID/cgroup`.
fn in_cgroup(pid: u32, cgroup: &str) -> bool {
    let wanted = format!("/{}", cgroup.trim_matches('/'));
    crate::kernel::process::cgroup(pid)
        .is_some_and(|path| path == wanted || path.starts_with(&format!("{wanted}/")))
}

/// Process ids in a cgroup and all its descendants.
fn cgroup_members(dir: &Path) -> Vec<u32> {
    crate::kernel::cgroup::subtree(dir)
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

//! The local control socket: newline-delimited JSON requests and replies.
//!
//! `baton exec` asks here to be admitted to an agent before it execs the
//! agent's command. The daemon identifies the caller by `SO_PEERCRED`, never
//! by anything the caller says about itself.

use serde::{Deserialize, Serialize};

pub mod budget;
pub mod client;
pub mod server;

pub use crate::audit::stream::{AuditReply, AuditRequest};

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Make the calling process a member of `agent`.
    Admit {
        /// Agent name.
        agent: String,
    },
    /// What the daemon enforces, per agent and control, and its policy
    /// generation.
    Status,
    /// Every agent's breaker state (root only).
    BreakerList,
    /// Close an agent's breaker now and lift its action (root only).
    BreakerReset {
        /// Agent name.
        agent: String,
    },
    /// Open an agent's breaker by hand (root only).
    BreakerTrip {
        /// Agent name.
        agent: String,
        /// `quarantine`, `freeze` or `kill`.
        action: crate::breaker::Action,
    },
    /// Open one port of an address prefix to an agent for a while (root
    /// only).
    GrantAdd {
        /// Agent name.
        agent: String,
        /// `ADDRESS[/PREFIX]:PORT`.
        allow: String,
        /// How long, in seconds.
        seconds: u64,
        /// Connects allowed; absent: no limit but time.
        #[serde(default)]
        max_connects: Option<u32>,
        /// `tcp`, `udp` or `any`.
        protocol: String,
    },
    /// The grants in force (root only).
    GrantList,
    /// End a grant now (root only).
    GrantRevoke {
        /// Grant id.
        id: u32,
    },
    /// Agents that opened a secret (root only).
    TaintList,
    /// Lift an agent's taint (root only).
    TaintClear {
        /// Agent name.
        agent: String,
    },
    /// An agent's recent denials. From inside an agent, that agent's own
    /// only; from outside, root only, naming the agent.
    Why {
        /// The agent; inside an agent, absent or its own name.
        #[serde(default)]
        agent: Option<String>,
        /// How many of the most recent denials (at most [`WHY_MAX`]).
        #[serde(default)]
        recent: usize,
    },
}

/// The most denials one `why` request returns.
pub const WHY_MAX: usize = 200;

/// A reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Admitted {
        /// The agent's numeric id.
        agent_id: crate::ids::AgentId,
        /// Where BPF LSM is missing: the Landlock ruleset the caller must
        /// apply to itself before it execs the agent's command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        landlock: Option<crate::fallback::landlock::LandlockPlan>,
        /// Every self-protection LSM hook is attached, so the caller needs
        /// no seccomp filter of its own (absent from older daemons: then
        /// it applies one).
        #[serde(default)]
        held_by_bpf_lsm: bool,
        /// Socket families the agent may create, bit `n` for family `n`.
        #[serde(default = "default_families")]
        families: u64,
        /// BPF LSM `socket_create` holds the families, so the caller needs
        /// no seccomp family check (absent from older daemons: then it
        /// applies one).
        #[serde(default)]
        families_by_lsm: bool,
        /// The policy lets the agent gain privileges on exec; otherwise the
        /// caller sets `no_new_privs` before it execs the command.
        #[serde(default)]
        allow_privilege_escalation: bool,
    },
    /// The daemon's status.
    Status {
        /// The status document.
        report: serde_json::Value,
    },
    /// An agent's recent denials, oldest first, as written to the audit
    /// trail.
    Denials {
        /// The agent.
        agent: String,
        /// The records.
        records: Vec<serde_json::Value>,
    },
    /// Breaker states, one JSON object per agent.
    Breakers {
        /// The states.
        agents: Vec<serde_json::Value>,
    },
    /// The tainted agents, one JSON object each.
    Taints {
        /// The taints.
        taints: Vec<serde_json::Value>,
    },
    /// The grants in force, one JSON object each.
    Grants {
        /// The grants.
        grants: Vec<serde_json::Value>,
    },
    /// Done; what happened.
    Done {
        /// Description.
        message: String,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

fn default_families() -> u64 {
    agent_common::identity::DEFAULT_FAMILIES
}

//! The local control socket: newline-delimited JSON requests and replies.
//!
//! `baton exec` asks here to be admitted to an agent before it execs the
//! agent's command. The daemon identifies the caller by `SO_PEERCRED`, never
//! by anything the caller says about itself.

use serde::{Deserialize, Serialize};

pub mod client;
pub mod server;

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Make the calling process a member of `agent`.
    Admit {
        /// Agent name.
        agent: String,
    },
}

/// A reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Admitted {
        /// The agent's numeric id.
        agent_id: u32,
        /// Where BPF LSM is missing: the Landlock ruleset the caller must
        /// apply to itself before it execs the agent's command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        landlock: Option<crate::fallback::landlock::LandlockPlan>,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

//! Decisions and verdicts, and how each program type spells them.

/// What a matching rule says. Stored as `u8` in maps and events.
pub mod decision {
    /// No rule matched: the agent's default applies.
    pub const NONE: u8 = 0;
    /// A rule allows the access.
    pub const ALLOW: u8 = 1;
    /// A rule denies the access.
    pub const DENY: u8 = 2;
    /// A canary: denied, and any access trips the agent's canary breakers.
    pub const CANARY: u8 = 3;
}

/// Per-agent mode. Stored as `u8`.
pub mod mode {
    /// Denials are enforced.
    pub const ENFORCE: u8 = 0;
    /// Decide and record, never deny.
    pub const AUDIT: u8 = 1;
    /// Set by a circuit breaker: deny all egress, writes and exec.
    pub const QUARANTINE: u8 = 2;
}

/// The outcome of one decision, as recorded in an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The access was allowed (recorded only when a policy asks for it).
    Allowed = 1,
    /// The access was denied.
    Denied = 2,
    /// The access would have been denied, but the agent is in audit mode.
    WouldDeny = 3,
    /// The access was seen and could not be prevented (detection-only control).
    Detected = 4,
}

impl Verdict {
    /// Decodes a verdict byte from an event.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Allowed),
            2 => Some(Self::Denied),
            3 => Some(Self::WouldDeny),
            4 => Some(Self::Detected),
            _ => None,
        }
    }

    /// Return value of a BPF LSM program: `0` allows, `-EPERM` denies.
    ///
    /// A denial from an earlier LSM program (`previous != 0`) is passed
    /// through unchanged: Baton never turns another module's "no" into "yes".
    pub const fn to_lsm(self, previous: i32) -> i32 {
        if previous != 0 {
            return previous;
        }
        match self {
            Self::Denied => -EPERM,
            Self::Allowed | Self::WouldDeny | Self::Detected => 0,
        }
    }

    /// Return value of a `cgroup/sock_addr` or `cgroup/sock_create` program:
    /// `1` allows, `0` denies (the caller sees `EPERM`).
    pub const fn to_cgroup_sock(self) -> i32 {
        match self {
            Self::Denied => 0,
            Self::Allowed | Self::WouldDeny | Self::Detected => 1,
        }
    }
}

/// `EPERM`, the errno every denial produces.
pub const EPERM: i32 = 1;

/// Turns a rule decision into a verdict under an agent mode.
pub const fn verdict_for(decision: u8, agent_mode: u8) -> Verdict {
    if decision == decision::DENY || decision == decision::CANARY {
        if agent_mode == mode::AUDIT {
            Verdict::WouldDeny
        } else {
            Verdict::Denied
        }
    } else {
        Verdict::Allowed
    }
}

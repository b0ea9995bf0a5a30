//! The daemon's descriptor budget: how its `RLIMIT_NOFILE` is shared
//! between the control socket, which every local user may open, and the
//! work that must never wait for a descriptor.
//!
//! The fanotify fallback is the reason this is a hard budget and not a
//! hope. The kernel hands the daemon a new descriptor for every permission
//! event it reads; when the daemon's table is full the kernel answers the
//! event itself, with a denial, so every open on a watched mount fails for
//! every process on the host. The audit trail needs descriptors too (a
//! rotated log, a spool file, a checkpoint, a forwarder's socket), and a
//! record it cannot write is a record an attacker wanted gone.
//!
//! So at start the daemon raises its soft limit to the hard one and splits
//! it: a named [`reserve`] for those two, at most half of what is left for
//! the control socket's connections, the rest for the daemon's own kernel
//! objects, DNS proxies and endpoints. The control server never accepts a
//! connection it has no place for (see
//! [`server::serve_with`](super::server::serve_with)), so no client
//! behaviour can take the control socket past its share.

use std::{path::Path, time::Duration};

use serde::Deserialize;
use thiserror::Error;

/// Bounds on what clients of the control socket can make the daemon hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections from all callers except root outside every agent.
    pub connections: usize,
    /// Open connections from one uid (root agents count under uid 0).
    pub per_user: usize,
    /// Open connections from root processes in no agent: the operator's
    /// share, which other users cannot use up.
    pub operator: usize,
    /// Bytes in one request line, newline excluded.
    pub request_bytes: usize,
    /// How long a connection may wait before its next request starts.
    pub idle: Duration,
    /// How long one request may take from its first byte to its newline.
    pub request: Duration,
    /// How long one reply (or streamed record) may wait for the client to
    /// read it.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 256,
            per_user: 16,
            operator: 32,
            request_bytes: 64 * 1024,
            idle: Duration::from_secs(30),
            request: Duration::from_secs(10),
            write: Duration::from_secs(10),
        }
    }
}

/// Descriptors held back for the fanotify listener: one read of its event
/// buffer (4096 bytes of 24-byte event headers, so at most 170 events, each
/// with its descriptor open until it is answered) and the `/proc` files it
/// reads while deciding one, with room to spare.
pub const FANOTIFY_RESERVE: u64 = 192;

/// Descriptors held back for the audit trail: a rotated log, the spool
/// directory's file, checkpoints and signatures, and the forwarders'
/// connections.
pub const AUDIT_RESERVE: u64 = 64;

/// Descriptors held back for the explanations of `baton exec` agents: the
/// standard error of each agent's first process and a pidfd to see it
/// exit, for [`crate::explain::MAX_KEPT`] processes at once.
pub const EXPLAIN_RESERVE: u64 = 2 * crate::explain::MAX_KEPT as u64;

/// Descriptors one control connection holds: its socket and a pidfd for
/// the peer process.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Connections the control server may hold while it refuses them (accepted
/// over a limit, answered with the reason, closed). Refusing never waits,
/// so few are enough; their number bounds what a flood of connects holds.
pub const REFUSALS: usize = 16;

/// Errors planning the descriptor budget.
#[derive(Debug, Error)]
pub enum BudgetError {
    /// Connection limits set in the configuration file do not fit.
    #[error(
        "{origin}: control.{key}: {wanted} control connections need {needed} descriptors ({per} each, with {REFUSALS} more being refused and the listener), but the control socket may take at most {share} of the daemon's descriptor limit {limit} (half of what is left after {reserve} reserved: {FANOTIFY_RESERVE} for the fanotify fallback, {AUDIT_RESERVE} for the audit trail and {EXPLAIN_RESERVE} for explanations); lower control.{key} to at most {fits}, or raise the limit (LimitNOFILE in the unit)",
        per = DESCRIPTORS_PER_CONNECTION,
        reserve = reserve()
    )]
    Configured {
        /// `FILE:LINE:COLUMN` of the key, or the file alone.
        origin: String,
        /// The key that is too large (`maxConnections` or
        /// `operatorConnections`).
        key: &'static str,
        /// Connections asked for in all (users' and operator's).
        wanted: usize,
        /// Descriptors they would take.
        needed: u64,
        /// The control socket's share.
        share: u64,
        /// The daemon's descriptor limit.
        limit: u64,
        /// The largest value of the key that fits.
        fits: usize,
    },
    /// The limit leaves no room for even one connection beside the reserve.
    #[error(
        "the daemon's descriptor limit {limit} is too small: {reserve} are reserved ({FANOTIFY_RESERVE} for the fanotify fallback, {AUDIT_RESERVE} for the audit trail, {EXPLAIN_RESERVE} for explanations) and the control socket needs at least {minimum}; raise the limit to at least {at_least} (LimitNOFILE in the unit)",
        reserve = reserve()
    )]
    TooSmall {
        /// The daemon's descriptor limit.
        limit: u64,
        /// Descriptors of the smallest control socket.
        minimum: u64,
        /// The smallest limit that works.
        at_least: u64,
    },
    /// More descriptors were open when the control socket started than the
    /// budget leaves the daemon.
    #[error(
        "{in_use} descriptors are open as the control socket starts; with the {control} the control socket may take and the {reserve} reserved ({FANOTIFY_RESERVE} for the fanotify fallback, {AUDIT_RESERVE} for the audit trail, {EXPLAIN_RESERVE} for explanations) that is more than the descriptor limit {limit}; raise it (LimitNOFILE in the unit) or lower control.maxConnections",
        reserve = reserve()
    )]
    InUse {
        /// Descriptors open.
        in_use: u64,
        /// The control socket's share.
        control: u64,
        /// The daemon's descriptor limit.
        limit: u64,
    },
}

/// `control:` in the configuration file: the control socket's connection
/// limits, each within the descriptor budget.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlConfig {
    /// Connections from all users but root outside every agent
    /// [default: 256, lowered to fit a small descriptor limit].
    pub max_connections: Option<usize>,
    /// Connections from one uid [default: 16].
    pub max_connections_per_user: Option<usize>,
    /// Connections from root processes in no agent, a share other users
    /// cannot use [default: 32, lowered to fit a small descriptor limit].
    pub operator_connections: Option<usize>,
}

/// How the daemon's descriptors are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The daemon's soft `RLIMIT_NOFILE`, raised to the hard one.
    pub limit: u64,
    /// The control socket's connection limits.
    pub limits: Limits,
    /// The most descriptors the control socket can hold at once.
    pub control: u64,
}

/// Descriptors a control server with these limits can hold at once.
pub fn control_descriptors(limits: &Limits) -> u64 {
    (limits.connections + limits.operator + REFUSALS) as u64 * DESCRIPTORS_PER_CONNECTION + 1
}

/// What the fanotify fallback and the audit trail have to themselves.
pub const fn reserve() -> u64 {
    FANOTIFY_RESERVE + AUDIT_RESERVE + EXPLAIN_RESERVE
}

/// Connections (users' and operator's together) that fit in `share`
/// descriptors.
fn connections_within(share: u64) -> usize {
    usize::try_from(share.saturating_sub(1) / DESCRIPTORS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .saturating_sub(REFUSALS)
}

impl Budget {
    /// Plans the budget for a daemon whose descriptor limit is `limit`.
    /// Limits the configuration sets must fit, or this says which to lower
    /// and to what; defaults are lowered to fit. `config_file` (with its
    /// text, when it could be read) locates a key in errors.
    pub fn plan(
        limit: u64,
        config: &ControlConfig,
        config_file: &Path,
        config_text: Option<&str>,
    ) -> Result<Self, BudgetError> {
        let defaults = Limits::default();
        let share = limit.saturating_sub(reserve()) / 2;
        let room = connections_within(share);
        let minimum = control_descriptors(&Limits {
            connections: 1,
            operator: 1,
            ..defaults
        });
        if room < 2 {
            return Err(BudgetError::TooSmall {
                limit,
                minimum,
                at_least: reserve() + 2 * minimum,
            });
        }
        let operator = match config.operator_connections {
            Some(n) => n.max(1),
            None => defaults.operator.min((room / 8).max(1)),
        };
        let connections = match config.max_connections {
            Some(n) => n.max(1),
            None => defaults
                .connections
                .min(room.saturating_sub(operator).max(1)),
        };
        let limits = Limits {
            connections,
            operator,
            per_user: config
                .max_connections_per_user
                .unwrap_or(defaults.per_user)
                .clamp(1, connections),
            ..defaults
        };
        let control = control_descriptors(&limits);
        if control > share {
            let (key, fits) = if config.max_connections.is_some() {
                ("maxConnections", room.saturating_sub(operator))
            } else {
                ("operatorConnections", room.saturating_sub(connections))
            };
            return Err(BudgetError::Configured {
                origin: locate(config_file, config_text, key),
                key,
                wanted: connections + operator,
                needed: control,
                share,
                limit,
                fits,
            });
        }
        Ok(Self {
            limit,
            limits,
            control,
        })
    }

    /// Checks that `in_use` descriptors, the control socket's share and
    /// the reserve fit in the limit; run as the control socket starts,
    /// once the kernel objects and the listeners are open.
    pub fn check_in_use(&self, in_use: u64) -> Result<(), BudgetError> {
        if in_use + self.control + reserve() > self.limit {
            return Err(BudgetError::InUse {
                in_use,
                control: self.control,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// `FILE:LINE:COLUMN` of `key` in the configuration text, or the file's
/// name when the key cannot be found.
fn locate(file: &Path, text: Option<&str>, key: &str) -> String {
    let found = text.and_then(|text| {
        text.lines().enumerate().find_map(|(n, line)| {
            let column = line.find(&format!("{key}:"))?;
            let before = &line[..column];
            (before.trim().is_empty() || before.trim_end().ends_with(['{', ',']))
                .then_some((n + 1, column + 1))
        })
    });
    match found {
        Some((line, column)) => format!("{}:{line}:{column}", file.display()),
        None => file.display().to_string(),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (which needs no
/// privilege) and returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            soft = limit.rlim_cur,
            hard = limit.rlim_max,
            "cannot raise RLIMIT_NOFILE"
        );
    }
    limit.rlim_cur
}

/// Descriptors this process has open now.
pub fn open_descriptors() -> std::io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(limit: u64, config: &ControlConfig) -> Result<Budget, BudgetError> {
        Budget::plan(limit, config, Path::new("/etc/baton/config.yaml"), None)
    }

    #[test]
    fn defaults_fit_any_limit_with_room_and_keep_the_reserve() {
        let roomy = plan(65536, &ControlConfig::default()).unwrap();
        assert_eq!(roomy.limits, Limits::default(), "room enough: unchanged");
        for limit in [400, 512, 1024, 4096] {
            let budget = plan(limit, &ControlConfig::default()).unwrap();
            assert_eq!(budget.control, control_descriptors(&budget.limits));
            assert!(
                budget.control <= (limit - reserve()) / 2,
                "{limit}: {budget:?}"
            );
            let l = budget.limits;
            assert!(l.per_user <= l.connections && l.operator >= 1, "{l:?}");
        }
        let err = plan(300, &ControlConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("too small") && err.contains("at least"),
            "{err}"
        );
    }

    #[test]
    fn a_configured_limit_that_does_not_fit_is_refused_by_name_and_place() {
        let config = ControlConfig {
            max_connections: Some(1000),
            ..ControlConfig::default()
        };
        let text = "dns:\n  timeoutMs: 100\ncontrol:\n  maxConnections: 1000\n";
        let err = Budget::plan(1024, &config, Path::new("/c.yaml"), Some(text))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/c.yaml:4:3: control.maxConnections: "),
            "{err}"
        );
        // (1024 - 288) / 2 = 368 descriptors: (368 - 1) / 2 - 16 = 167
        // connections, 20 of them (an eighth) the operator's.
        assert!(err.contains("at most 147"), "{err}");
        assert!(err.contains("192 for the fanotify fallback"), "{err}");
        let fits = ControlConfig {
            max_connections: Some(147),
            ..ControlConfig::default()
        };
        let budget = plan(1024, &fits).unwrap();
        assert_eq!(budget.limits.connections, 147);
        assert!(budget.control <= (1024 - reserve()) / 2);
    }

    #[test]
    fn descriptors_in_use_must_leave_the_reserve() {
        let budget = plan(1024, &ControlConfig::default()).unwrap();
        let free = 1024 - reserve() - budget.control;
        assert!(budget.check_in_use(free).is_ok());
        let err = budget.check_in_use(free + 1).unwrap_err().to_string();
        assert!(err.contains("more than the descriptor limit 1024"), "{err}");
    }
}

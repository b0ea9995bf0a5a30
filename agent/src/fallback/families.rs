//! Which layer holds each socket family away from agents, on this kernel.
//!
//! BPF LSM `socket_create` sees every socket any agent creates, io_uring's
//! included, and records each denial. Without it, `baton exec` agents get a
//! seccomp check on `socket` and `socketpair` (see [`super::seccomp`]),
//! which io_uring's `IORING_OP_SOCKET` (Linux 5.19) goes around unless
//! io_uring is switched off; agents selected by cgroup, systemd unit or
//! executable start without Baton in the loop and are not covered at all.

use agent_common::identity::DEFAULT_FAMILIES;
use serde::Serialize;

use crate::policy::families::{AF_PACKET, FAMILIES};

/// How far a family is kept from agents.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Every agent may create it.
    Allowed,
    /// Denied unless the policy allows it, by a layer the agent cannot go
    /// around.
    Enforced,
    /// Denied on the usual path; the detail says how it can be gone around.
    Degraded,
    /// Nothing Baton runs denies it.
    NotCovered,
}

/// One kind of agent's coverage for one family.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Coverage {
    /// The state.
    pub state: State,
    /// Which layer, or why none.
    pub detail: String,
}

/// One family's row in `baton probe`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FamilyCoverage {
    /// Policy name of the family (`vsock`).
    pub family: &'static str,
    /// `AF_*` number.
    pub number: u32,
    /// Agents started by `baton exec`.
    pub baton_exec: Coverage,
    /// Agents selected by cgroup, systemd unit or executable.
    pub selected: Coverage,
}

/// What this kernel offers besides BPF LSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layers {
    /// BPF LSM `socket_create` loads (or is attached).
    pub socket_create: bool,
    /// seccomp filters can be installed.
    pub seccomp: bool,
    /// How io_uring gets around the seccomp check, when it can.
    pub io_uring_gap: Option<String>,
}

impl Layers {
    /// The layers of the running kernel, given whether `socket_create`
    /// loads.
    pub fn of_this_kernel(socket_create: bool) -> Self {
        Self {
            socket_create,
            seccomp: seccomp_available(),
            io_uring_gap: io_uring_gap(),
        }
    }

    /// Coverage of a family outside the default set for `baton exec`
    /// agents and for the others.
    pub fn denial(&self, family: u32) -> (Coverage, Coverage) {
        if self.socket_create {
            let by_lsm = || Coverage {
                state: State::Enforced,
                detail: "BPF LSM socket_create, recorded".into(),
            };
            return (by_lsm(), by_lsm());
        }
        let exec = match (&self.seccomp, &self.io_uring_gap) {
            (false, _) => Coverage {
                state: State::NotCovered,
                detail: "no BPF LSM and no seccomp".into(),
            },
            (true, None) => Coverage {
                state: State::Enforced,
                detail: "seccomp on socket and socketpair (EPERM; recorded where the daemon reads the kernel's audit log, Linux 6.15+)".into(),
            },
            (true, Some(gap)) => Coverage {
                state: State::Degraded,
                detail: format!("seccomp on socket and socketpair (EPERM; recorded where the daemon reads the kernel's audit log, Linux 6.15+); {gap}"),
            },
        };
        let selected = Coverage {
            state: State::NotCovered,
            detail: if family == AF_PACKET {
                "needs BPF LSM; AF_PACKET still needs CAP_NET_RAW, so only agents with it (root) can open one".into()
            } else {
                "needs BPF LSM".into()
            },
        };
        (exec, selected)
    }

    /// Every family's row.
    pub fn table(&self) -> Vec<FamilyCoverage> {
        FAMILIES
            .iter()
            .map(|&(family, number)| {
                let (baton_exec, selected) = if DEFAULT_FAMILIES & (1 << number) != 0 {
                    let allowed = || Coverage {
                        state: State::Allowed,
                        detail: "allowed to every agent".into(),
                    };
                    (allowed(), allowed())
                } else {
                    self.denial(number)
                };
                FamilyCoverage {
                    family,
                    number,
                    baton_exec,
                    selected,
                }
            })
            .collect()
    }

    /// One line for a status report: how the families an agent may not
    /// create are kept from it. `selected_otherwise` is whether the agent
    /// also has processes not started by `baton exec`.
    pub fn describe(&self, selected_otherwise: bool) -> String {
        let (exec, selected) = self.denial(0);
        if self.socket_create {
            return format!("others denied by {}", exec.detail);
        }
        let exec = format!(
            "others denied to baton exec agents by {}",
            match exec.state {
                State::NotCovered => "nothing (no seccomp)".to_string(),
                _ => exec.detail,
            }
        );
        if selected_otherwise {
            format!(
                "{exec}; NOT covered for processes selected by cgroup, systemd unit or executable ({})",
                selected.detail
            )
        } else {
            exec
        }
    }
}

/// Whether this kernel has seccomp filters (`PR_GET_SECCOMP` answers).
pub fn seccomp_available() -> bool {
    // SAFETY: plain prctl query.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// How io_uring lets a process create a socket without `socket(2)`, or
/// `None` where it cannot: kernels before 5.19 have no `IORING_OP_SOCKET`,
/// and `kernel.io_uring_disabled = 2` switches io_uring off.
pub fn io_uring_gap() -> Option<String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < (5, 19) {
        return None;
    }
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        Some(2) => None,
        Some(1) => Some(
            "io_uring's IORING_OP_SOCKET goes around it for agents with CAP_SYS_ADMIN or in kernel.io_uring_group".into(),
        ),
        _ => Some("io_uring's IORING_OP_SOCKET goes around it (kernel.io_uring_disabled is 0)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_is_described_truthfully() {
        let lsm = Layers {
            socket_create: true,
            seccomp: true,
            io_uring_gap: Some("gap".into()),
        };
        let vsock = lsm
            .table()
            .into_iter()
            .find(|f| f.family == "vsock")
            .unwrap();
        assert_eq!(vsock.baton_exec.state, State::Enforced);
        assert_eq!(vsock.selected.state, State::Enforced);
        let inet = lsm
            .table()
            .into_iter()
            .find(|f| f.family == "inet")
            .unwrap();
        assert_eq!(inet.selected.state, State::Allowed);

        let seccomp = Layers {
            socket_create: false,
            ..lsm.clone()
        };
        let vsock = seccomp
            .table()
            .into_iter()
            .find(|f| f.family == "vsock")
            .unwrap();
        assert_eq!(vsock.baton_exec.state, State::Degraded);
        assert!(vsock.baton_exec.detail.ends_with("gap"));
        assert_eq!(vsock.selected.state, State::NotCovered);
        assert!(seccomp.describe(true).contains("NOT covered"));
        assert!(!seccomp.describe(false).contains("NOT covered"));
        let closed = Layers {
            io_uring_gap: None,
            ..seccomp
        };
        assert_eq!(closed.denial(40).0.state, State::Enforced);
    }
}

//! File enforcement where BPF LSM cannot load.
//!
//! For agents started by `baton exec`, the policy's file and exec rules are
//! turned into a Landlock ruleset that `baton exec` applies to itself right
//! before it execs the agent's command: a real denial in the kernel,
//! inherited by every descendant and impossible to lift. Landlock only
//! grants, so a policy is translated into "everything except": the rights a
//! deny rule takes away are granted on every sibling along the way to the
//! denied path. Whatever that cannot say is reported, never dropped.
//!
//! Agents selected by cgroup, systemd unit or executable start without
//! Baton in the loop, so no ruleset can be applied to them: for those, the
//! daemon answers fanotify permission events on the paths their rules deny
//! (see [`fanotify`]). Landlock's own reports of its denials (Linux 6.15+)
//! become records too (see [`landlock_log`]). What neither can enforce,
//! the kernel detects and records, and may kill the process for (see
//! [`crate::kernel::detect`]).

pub mod families;
pub mod fanotify;
pub mod landlock;
pub mod landlock_log;
pub mod protected;
pub mod seccomp;

//! File enforcement where BPF LSM cannot load.
//!
//! For agents started by `baton exec`, the policy's file and exec rules are
//! turned into a Landlock ruleset that `baton exec` applies to itself right
//! before it execs the agent's command: a real denial in the kernel,
//! inherited by every descendant and impossible to lift. Landlock only
//! grants, so a policy is translated into "everything except": the rights a
//! deny rule takes away are granted on every sibling along the way to the
//! denied path. Whatever that cannot say is reported, never dropped.

pub mod landlock;
pub mod protected;
pub mod seccomp;

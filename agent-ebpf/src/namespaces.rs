//! Namespace and mount operations as rights (BPF LSM).
//!
//! Path rules are matched on the path the kernel prints for the mount an
//! access came through. Every way of giving a file another path (a bind
//! mount, a moved mount, a new mount of the same file system, a `chroot`,
//! `pivot_root`, or a user namespace in which an unprivileged agent may do
//! all of that) would reach a denied file under an allowed name. Agents get
//! none of these unless their policy says `process.namespaces: allow`.
//!
//! Hook choice (each runs in the calling task, before the change):
//! - `userns_create` (6.1) runs for `unshare(CLONE_NEWUSER)`, `clone` and
//!   `clone3` with it, whatever else is asked. Without a user namespace an
//!   unprivileged agent has no `CAP_SYS_ADMIN` to mount or `chroot` with.
//! - `sb_mount` is the first check of `mount(2)`: new mounts, bind, move,
//!   remount and propagation changes.
//! - `sb_kern_mount` runs when a new file system instance is made, by
//!   `mount(2)` and by `fsconfig(FSCONFIG_CMD_CREATE)` of the new mount
//!   API, so a detached tmpfs or a second mount of a disk is refused before
//!   it exists.
//! - `move_mount` (5.2) runs when the new mount API attaches or moves a
//!   mount.
//! - `path_chroot` and `sb_pivotroot` run for `chroot(2)` and
//!   `pivot_root(2)`.
//!
//! No hook sees `open_tree(OPEN_TREE_CLONE)` on its own (a detached copy of
//! a mount, usable through its descriptor without attaching it) nor
//! `mount_setattr(2)`; both need `CAP_SYS_ADMIN`, which an unprivileged
//! agent only gets from a user namespace.
//!
//! A decision follows the agent's mode: audit mode records a "would deny";
//! quarantine denies even what the policy allows.

use agent_common::{
    event::hook,
    identity::{AgentRecord, policy_flags},
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

use crate::{
    events::Decision,
    maps::{active_generation, agent_policy, current_agent, quarantined},
    protect::{Text, record},
};

const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// The calling process's agent, or `None` outside every agent.
#[inline(always)]
fn caller() -> Option<AgentRecord> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    current_agent(tgid)
}

/// The verdict on a namespace or mount operation for `agent`, recorded
/// unless allowed. `what` names the operation in the record. The record
/// carries no path: naming one takes a dentry walk, whose verification
/// costs every daemon start more than the path is worth here.
#[inline(always)]
fn decide(agent: &AgentRecord, hook: u16, what: impl FnOnce(&mut Text<'_>)) -> Verdict {
    let generation = active_generation();
    // An agent whose policy is gone is held closed.
    let (allowed, agent_mode) = match agent_policy(generation, agent.agent_id) {
        Some(policy) => (
            policy.flags & policy_flags::ALLOW_NAMESPACES != 0,
            policy.mode,
        ),
        None => (false, mode::ENFORCE),
    };
    let held = agent_mode == mode::QUARANTINE || quarantined(agent.agent_id);
    let verdict = if held {
        Verdict::Denied
    } else if allowed {
        return Verdict::Allowed;
    } else {
        verdict_for(decision::DENY, agent_mode)
    };
    record(
        agent,
        &Decision {
            hook,
            verdict,
            mode: agent_mode,
            rule_id: 0,
            generation,
        },
        what,
    );
    verdict
}

// ---------------------------------------------------------------- hooks

/// `userns_create(const struct cred *cred)`.
#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    decide(&agent, hook::USERNS_CREATE, |text| {
        text.push(*b"create a user namespace")
    })
    .to_lsm(previous)
}

/// `sb_mount(const char *dev_name, const struct path *path, const char
/// *type, unsigned long flags, void *data)`.
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    let flags: u64 = ctx.arg(3);
    let what = |text: &mut Text<'_>| {
        if flags & MS_REMOUNT != 0 {
            text.push(*b"remount");
        } else if flags & MS_BIND != 0 {
            text.push(*b"bind mount");
        } else if flags & MS_MOVE != 0 {
            text.push(*b"move mount");
        } else if flags & MS_PROPAGATION != 0 {
            text.push(*b"change mount propagation");
        } else {
            text.push(*b"mount");
        }
    };
    decide(&agent, hook::SB_MOUNT, what).to_lsm(previous)
}

/// `sb_kern_mount(const struct super_block *sb)`.
#[lsm(hook = "sb_kern_mount")]
pub fn sb_kern_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    decide(&agent, hook::SB_KERN_MOUNT, |text| {
        text.push(*b"create a file system mount")
    })
    .to_lsm(previous)
}

/// `move_mount(const struct path *from_path, const struct path *to_path)`.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    decide(&agent, hook::MOVE_MOUNT, |text| text.push(*b"move_mount")).to_lsm(previous)
}

/// `path_chroot(const struct path *path)`.
#[lsm(hook = "path_chroot")]
pub fn path_chroot(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    decide(&agent, hook::PATH_CHROOT, |text| text.push(*b"chroot")).to_lsm(previous)
}

/// `sb_pivotroot(const struct path *old_path, const struct path *new_path)`.
#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(agent) = caller() else {
        return 0;
    };
    decide(&agent, hook::SB_PIVOTROOT, |text| text.push(*b"pivot_root")).to_lsm(previous)
}

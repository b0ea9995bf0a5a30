//! `baton exec`: join an agent, then become the command.

use std::os::unix::process::CommandExt;

use anyhow::bail;

use super::ExecArgs;
use crate::control::{Reply, Request, client::call};

/// Admits this process to the agent and execs the command. Returns only on
/// failure.
pub fn run(args: &ExecArgs) -> anyhow::Result<()> {
    // Checked before joining: switching user needs root, and a caller that
    // cannot switch would otherwise learn it only from the command's own
    // failure, after it had become an agent process for nothing.
    let user = args.user.as_deref().map(find_user).transpose()?;
    if let Some(user) = &user
        && !nix::unistd::geteuid().is_root()
    {
        bail!(
            "--user needs root (baton exec runs as uid {}; it cannot become {}, uid {})",
            nix::unistd::geteuid(),
            user.name,
            user.uid
        );
    }
    let reply = call(
        &args.control_socket,
        &Request::Admit {
            agent: args.agent.clone(),
        },
    )?;
    let (landlock, held_by_bpf_lsm, families, families_by_lsm, allow_privilege_escalation) =
        match reply {
            Reply::Admitted {
                landlock,
                held_by_bpf_lsm,
                families,
                families_by_lsm,
                allow_privilege_escalation,
                ..
            } => (
                landlock,
                held_by_bpf_lsm,
                families,
                families_by_lsm,
                allow_privilege_escalation,
            ),
            Reply::Error { message } => bail!("cannot join agent {}: {message}", args.agent),
            #[allow(unreachable_patterns)]
            _ => bail!("unexpected reply from the daemon"),
        };
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if let Some(user) = user {
        let name = std::ffi::CString::new(user.name.clone())?;
        let (uid, gid) = (user.uid, user.gid);
        // SAFETY: runs in this single-threaded process right before exec;
        // the calls only drop privileges.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::initgroups(&name, gid)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
        command.env("USER", &user.name).env("HOME", &user.dir);
    }
    if let Some(plan) = &landlock {
        // BPF LSM is missing on this host: the file rules are enforced by a
        // Landlock ruleset on this process, which the command inherits.
        // One line at most: the agent's standard error is what a model
        // reads, in every tool output. The details are in `baton status`
        // and the daemon's log.
        if let Some(line) = gaps_line(&args.agent, plan) {
            eprintln!("{line}");
        }
        crate::fallback::landlock::apply(plan)?;
    }
    // Self-protection where BPF LSM does not hold the agent: seccomp denies
    // bpf(), ptrace and kernel loads, and Landlock keeps the agent's signals
    // inside it. Where it does, the kernel programs deny all of that and
    // record it, and a filter would only slow down every system call.
    // The socket families go into the same filter where BPF LSM's
    // socket_create is missing.
    // Where Landlock enforces the exec rules, the filter also refuses the
    // execs it cannot see (executable memfds, fexecve), unless the policy
    // allows files with no name on disk to run.
    let families = (!families_by_lsm).then_some(families);
    let exec_by_landlock = landlock.as_ref().is_some_and(|plan| {
        plan.handled & agent_common::files::right::bit(agent_common::files::right::EXEC) != 0
            && !plan.allow_anonymous_exec
    });
    if !held_by_bpf_lsm {
        crate::fallback::seccomp::apply(families, exec_by_landlock)?;
    } else if families.is_some() || exec_by_landlock {
        crate::fallback::seccomp::apply_families(families, exec_by_landlock)?;
    }
    // Set on this process, so the command and everything it starts inherit
    // it: exec never again grants setuid, setgid or file capabilities, and
    // an unprivileged agent cannot become root through a setuid binary.
    if !allow_privilege_escalation {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            bail!(
                "cannot set no_new_privs: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let error = command.exec();
    bail!("cannot run {program}: {error}")
}

/// The one line `baton exec` prints when Landlock leaves some of what the
/// agent's policy denies allowed; `None` when nothing is left open. Rights
/// Landlock takes away beyond the policy are not announced here: they show
/// as the agent's own errors, and `baton status` lists them with the rest.
fn gaps_line(agent: &str, plan: &crate::fallback::landlock::LandlockPlan) -> Option<String> {
    let open = plan.not_enforced.len();
    (open > 0).then(|| {
        format!(
            "baton: agent {agent}: file rules only partly enforced here: no BPF LSM, and Landlock cannot express {open} thing{} the policy denies; `baton status` lists {}",
            if open == 1 { "" } else { "s" },
            if open == 1 { "it" } else { "them" }
        )
    })
}

fn find_user(spec: &str) -> anyhow::Result<nix::unistd::User> {
    use nix::unistd::{Uid, User};
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
        Err(_) => User::from_name(spec)?,
    };
    found.ok_or_else(|| anyhow::anyhow!("no such user {spec:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fallback::landlock::plan, policy::compile::SourceRule};
    use agent_common::{files::right, verdict::decision};

    fn rule(path: &str, rights: u32, decision: u8) -> SourceRule {
        SourceRule {
            path: path.into(),
            rights,
            decision,
        }
    }

    #[test]
    fn rights_landlock_only_narrows_print_nothing() {
        // A create deny under a default allow: Landlock takes rights from
        // the ancestors beyond the policy, but leaves nothing denied open.
        let plan = plan(
            &[rule(
                "/root/.ssh",
                right::bit(right::CREATE),
                decision::DENY,
            )],
            decision::ALLOW,
            decision::ALLOW,
        );
        assert!(!plan.unexpressible.is_empty(), "{plan:?}");
        assert_eq!(gaps_line("coder", &plan), None);
    }

    #[test]
    fn a_read_deny_says_its_directory_can_be_listed() {
        // The directories above stay listable, so the denied one is too:
        // something the policy denies stays open, and the line says so.
        let plan = plan(
            &[rule("/root/.ssh", right::bit(right::READ), decision::DENY)],
            decision::ALLOW,
            decision::ALLOW,
        );
        assert!(plan.list_dirs.contains("/root"), "{plan:?}");
        let line = gaps_line("coder", &plan).unwrap();
        assert!(line.contains("cannot express 1 thing"), "{line}");
    }

    #[test]
    fn what_stays_open_is_one_line() {
        let plan = plan(
            &[
                rule("/usr", right::bit(right::EXEC), decision::ALLOW),
                rule("/usr/bin/nc", right::bit(right::EXEC), decision::DENY),
                rule("/etc", right::bit(right::WRITE), decision::DENY),
            ],
            decision::ALLOW,
            decision::DENY,
        );
        let line = gaps_line("coder", &plan).expect("the nc deny and chmod stay open");
        assert!(!line.contains('\n'), "{line}");
        // The nc deny, chmod, and what execve alone cannot judge.
        assert!(line.contains("express 3 things"), "{line}");
        assert!(line.contains("baton status"), "{line}");
    }
}

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
        for item in &plan.unexpressible {
            eprintln!("baton: Landlock cannot express: {item}");
        }
        crate::fallback::landlock::apply(plan)?;
    }
    // Self-protection where BPF LSM does not hold the agent: seccomp denies
    // bpf(), ptrace and kernel loads, and Landlock keeps the agent's signals
    // inside it. Where it does, the kernel programs deny all of that and
    // record it, and a filter would only slow down every system call.
    // The socket families go into the same filter where BPF LSM's
    // socket_create is missing.
    let families = (!families_by_lsm).then_some(families);
    if !held_by_bpf_lsm {
        crate::fallback::seccomp::apply(families)?;
    } else if let Some(families) = families {
        crate::fallback::seccomp::apply_families(families)?;
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

fn find_user(spec: &str) -> anyhow::Result<nix::unistd::User> {
    use nix::unistd::{Uid, User};
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
        Err(_) => User::from_name(spec)?,
    };
    found.ok_or_else(|| anyhow::anyhow!("no such user {spec:?}"))
}

//! `baton exec`: join an agent, then become the command.

use std::os::unix::process::CommandExt;

use anyhow::bail;

use super::ExecArgs;
use crate::control::{Reply, Request, client::call};

/// Admits this process to the agent and execs the command. Returns only on
/// failure.
pub fn run(args: &ExecArgs) -> anyhow::Result<()> {
    let reply = call(
        &args.control_socket,
        &Request::Admit {
            agent: args.agent.clone(),
        },
    )?;
    match reply {
        Reply::Admitted { .. } => {}
        Reply::Error { message } => bail!("cannot join agent {}: {message}", args.agent),
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let error = std::process::Command::new(program).args(rest).exec();
    bail!("cannot run {program}: {error}")
}

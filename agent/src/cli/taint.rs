//! `baton taint …`.

use super::TaintCommand;
use crate::control::{Reply, Request, client::call};

/// Runs a taint subcommand against the daemon.
pub fn run(command: &TaintCommand) -> anyhow::Result<()> {
    let (socket, request, json) = match command {
        TaintCommand::List {
            json,
            control_socket,
        } => (control_socket, Request::TaintList, *json),
        TaintCommand::Clear {
            agent,
            control_socket,
        } => (
            control_socket,
            Request::TaintClear {
                agent: agent.clone(),
            },
            false,
        ),
    };
    match call(socket, &request)? {
        Reply::Taints { taints } if json => {
            println!("{}", serde_json::to_string_pretty(&taints)?);
            Ok(())
        }
        Reply::Taints { taints } => {
            if taints.is_empty() {
                println!("no agent is tainted");
            }
            for taint in taints {
                let text = |key: &str| taint[key].as_str().unwrap_or("?").to_string();
                println!(
                    "{:20} opened {} ({} of policy {}) at {}: pid {} ({}), uid {}",
                    text("agent"),
                    text("secret"),
                    text("rule"),
                    text("policy"),
                    text("time"),
                    taint["pid"],
                    text("comm"),
                    taint["uid"],
                );
            }
            Ok(())
        }
        other => super::print_done(other),
    }
}

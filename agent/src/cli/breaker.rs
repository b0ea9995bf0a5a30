//! `baton breaker …`.

use super::BreakerCommand;
use crate::control::{Reply, Request, client::call};

/// Runs a breaker subcommand against the daemon.
pub fn run(command: &BreakerCommand) -> anyhow::Result<()> {
    let (socket, request) = match command {
        BreakerCommand::List { control_socket } => (control_socket, Request::BreakerList),
        BreakerCommand::Reset {
            agent,
            control_socket,
        } => (
            control_socket,
            Request::BreakerReset {
                agent: agent.clone(),
            },
        ),
        BreakerCommand::Trip {
            agent,
            action,
            control_socket,
        } => (
            control_socket,
            Request::BreakerTrip {
                agent: agent.clone(),
                action: *action,
            },
        ),
    };
    match call(socket, &request)? {
        Reply::Breakers { agents } => {
            if agents.is_empty() {
                println!("no agent has breakers");
            }
            for agent in agents {
                let state = &agent["state"];
                let detail = match state["state"].as_str() {
                    Some("open") => format!(
                        "open ({}) by {}: {}",
                        state["action"].as_str().unwrap_or("?"),
                        state["breaker"].as_str().unwrap_or("?"),
                        state["reason"].as_str().unwrap_or("")
                    ),
                    Some(other) => other.to_string(),
                    None => "?".into(),
                };
                println!(
                    "{:20} {detail} (for {}s); breakers: {}; counters: {}",
                    agent["agent"].as_str().unwrap_or("?"),
                    agent["for_seconds"],
                    agent["breakers"]
                        .as_array()
                        .map(|b| b
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default(),
                    agent["counters"]
                );
            }
            Ok(())
        }
        other => super::print_done(other),
    }
}

//! `baton grant …`.

use anyhow::Context as _;

use super::{GrantArgs, GrantCommand};
use crate::control::{Reply, Request, client::call};

/// Runs `baton grant` against the daemon.
pub fn run(args: &GrantArgs) -> anyhow::Result<()> {
    let mut json = false;
    let (socket, request) = match &args.command {
        Some(GrantCommand::List {
            json: as_json,
            control_socket,
        }) => {
            json = *as_json;
            (control_socket, Request::GrantList)
        }
        Some(GrantCommand::Revoke { id, control_socket }) => {
            (control_socket, Request::GrantRevoke { id: *id })
        }
        None => {
            // clap makes these three required when no subcommand is given.
            let agent = args.agent.clone().context("the agent is missing")?;
            let allow = args.allow.clone().context("--allow is missing")?;
            let duration = args.duration.context("--for is missing")?;
            (
                &args.control_socket,
                Request::GrantAdd {
                    agent,
                    allow,
                    // Whole seconds; a fraction of one rounds up to one.
                    seconds: duration.as_secs() + u64::from(duration.subsec_nanos() > 0),
                    max_connects: args.max_connects,
                    protocol: args.protocol.clone(),
                },
            )
        }
    };
    match call(socket, &request)? {
        Reply::Grants { grants } => {
            if json {
                for grant in grants {
                    println!("{grant}");
                }
                return Ok(());
            }
            if grants.is_empty() {
                println!("no grant is in force");
            }
            for grant in grants {
                let budget = match grant["max_connects"].as_u64() {
                    Some(0) | None => format!("{} connects", grant["connects"]),
                    Some(max) => format!("{}/{max} connects", grant["connects"]),
                };
                let learned = grant["learned"]
                    .as_array()
                    .map(|addrs| {
                        addrs
                            .iter()
                            .filter_map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|addrs| !addrs.is_empty())
                    .map_or_else(String::new, |addrs| format!("; resolved to {addrs}"));
                println!(
                    "{:>5}  {:20} {} {:28} {budget}, {}s left (until {}){learned}",
                    grant["id"],
                    grant["agent"].as_str().unwrap_or("?"),
                    grant["protocol"].as_str().unwrap_or("?"),
                    grant["destination"].as_str().unwrap_or("?"),
                    grant["seconds_left"],
                    grant["expires_at"].as_str().unwrap_or("?"),
                );
            }
            Ok(())
        }
        other => super::print_done(other),
    }
}

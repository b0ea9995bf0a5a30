//! `baton why`: an agent's recent denials, for the agent itself.

use anyhow::bail;

use super::WhyArgs;
use crate::{
    audit::stream::human_line,
    control::{Reply, Request, client::call},
};

/// Prints the calling agent's (or, for root outside every agent, the
/// named agent's) recent denials, oldest first.
pub fn run(args: &WhyArgs) -> anyhow::Result<()> {
    let request = Request::Why {
        agent: args.agent.clone(),
        recent: usize::from(args.recent),
    };
    let (agent, records) = match call(&args.control_socket, &request)? {
        Reply::Denials { agent, records } => (agent, records),
        Reply::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    if args.json {
        for record in &records {
            println!("{record}");
        }
        return Ok(());
    }
    if records.is_empty() {
        println!("agent {agent}: no recent denials");
        return Ok(());
    }
    println!(
        "agent {agent}: the last {} denial{} (ask an operator to change the rule named)",
        records.len(),
        if records.len() == 1 { "" } else { "s" }
    );
    for record in &records {
        println!("{}", human_line(record));
    }
    Ok(())
}

//! `baton events`: audit records from the running daemon, one line each.

use std::io::Write as _;

use super::EventsArgs;
use crate::audit::stream::{Filter, StreamItem, follow, human_line};

/// Prints recent records and, with `--follow`, every new one.
pub fn run(args: &EventsArgs) -> anyhow::Result<()> {
    let filter = Filter {
        agent: args.agent.clone(),
        verdict: args.verdict.clone(),
        control: args.control.clone(),
    };
    let mut stdout = std::io::stdout().lock();
    follow(
        &args.control_socket,
        &filter,
        args.lines,
        args.follow,
        |item| {
            let line = match item {
                StreamItem::Record(line) if args.json => line,
                StreamItem::Record(line) => match serde_json::from_str(&line) {
                    Ok(record) => human_line(&record),
                    Err(_) => line,
                },
                StreamItem::Lagged(skipped) => {
                    eprintln!(
                        "baton: {skipped} records were not shown (this terminal read too \
                         slowly); the audit log has them all"
                    );
                    return true;
                }
            };
            // A closed pipe (`baton events | head`) ends the stream quietly.
            writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_ok()
        },
    )?;
    Ok(())
}

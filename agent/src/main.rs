//! The `baton` command.

use baton::cli::{audit, events, grant, taint, uninstall, why};
use baton::{
    cli::{Cli, Command, breaker, exec, policy, probe, status},
    daemon,
};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    // Colour codes only for a person at a terminal: a journal, a file or a
    // pipe gets plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => daemon::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Policy(command) => policy::run(command),
        Command::Breaker(command) => breaker::run(command),
        Command::Status(args) => status::run(args),
        Command::Audit(command) => audit::run(command),
        Command::Events(args) => events::run(args),
        Command::Uninstall(args) => uninstall::run(args),
        Command::Why(args) => why::run(args),
        Command::Grant(args) => grant::run(args),
        Command::Taint(command) => taint::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Print each cause once: many messages already quote their source.
            let mut message = error.to_string();
            for cause in error.chain().skip(1) {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
            }
            eprintln!("baton: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

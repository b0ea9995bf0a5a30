//! `baton status`.

use anyhow::bail;

use super::StatusArgs;
use crate::control::{Reply, Request, client::call};

/// Prints what the running daemon enforces.
pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let status = match call(&args.control_socket, &Request::Status)? {
        Reply::Status { report } => report,
        Reply::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let policy = &status["policy"];
    println!(
        "baton {} (pid {}): policy generation {} from {}, loaded {}",
        status["version"].as_str().unwrap_or("?"),
        status["pid"],
        policy["generation"],
        policy["source"].as_str().unwrap_or("?"),
        policy["loaded_at"].as_str().unwrap_or("?"),
    );
    if let Some(error) = policy["last_error"].as_str() {
        println!("last policy error: {error}");
    }
    println!(
        "file and exec rules: {}",
        status["file_enforcement"].as_str().unwrap_or("?")
    );
    let adopted = status["pins"]["adopted_at_start"]
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "pins: {} ({})",
        status["pins"]["dir"].as_str().unwrap_or("?"),
        if adopted == 0 {
            "made at start".to_string()
        } else {
            format!("{adopted} adopted from a previous daemon at start")
        }
    );
    for agent in status["agents"].as_array().into_iter().flatten() {
        println!(
            "\nagent {} ({} mode, {} processes, breaker {})",
            agent["agent"].as_str().unwrap_or("?"),
            agent["mode"].as_str().unwrap_or("?"),
            agent["processes"],
            agent["breaker"]["state"].as_str().unwrap_or("?"),
        );
        if let Some(controls) = agent["controls"].as_object() {
            for (control, state) in controls {
                println!("  {control:9} {}", state.as_str().unwrap_or("?"));
            }
        }
        if let Some(rights) = agent["rights"].as_object() {
            for (right, how) in rights {
                println!("  {right:9} {}", how.as_str().unwrap_or("?"));
            }
        }
        println!("  counters  {}", agent["counters"]);
    }
    Ok(())
}

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
    if let Some(landlock) = status["landlock_denials"].as_str()
        && !landlock.starts_with("not used")
    {
        println!("Landlock denials of baton exec agents: {landlock}");
    }
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
    let backstop: Vec<&str> = status["packet_backstop"]["attached_to"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|dir| dir.as_str())
        .collect();
    println!(
        "packet backstop: {}",
        if let Some(why) = status["packet_backstop"]["unavailable"].as_str() {
            format!("NOT available: {why}")
        } else if backstop.is_empty() {
            "not attached yet (no agent needs it)".to_string()
        } else {
            format!("attached to {}", backstop.join(", "))
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
        // The controls already say, per right, what enforces it; the
        // "rights" object is the same, for scripts.
        if let Some(controls) = agent["controls"].as_object() {
            for (control, state) in controls {
                println!("  {control:9} {}", state.as_str().unwrap_or("?"));
            }
        }
        println!("  counters  {}", describe_counters(&agent["counters"]));
        let taint = &agent["secret_taint"];
        if taint.is_object() {
            println!(
                "  TAINTED   {} ({}) read by {}[{}] at {}: egress held to egress.afterSecret until `baton taint clear`",
                taint["secret"].as_str().unwrap_or("?"),
                taint["rule"].as_str().unwrap_or("?"),
                taint["comm"].as_str().unwrap_or("?"),
                taint["pid"],
                taint["time"].as_str().unwrap_or("?"),
            );
        }
        for grant in agent["grants"].as_array().into_iter().flatten() {
            println!(
                "  grant {}  {} {} until {} ({} connects)",
                grant["id"],
                grant["protocol"].as_str().unwrap_or("?"),
                grant["destination"].as_str().unwrap_or("?"),
                grant["expires_at"].as_str().unwrap_or("?"),
                grant["connects"]
            );
        }
    }
    Ok(())
}

/// `12 connects (3 denied, 0 rate-limited), 1 file denial, ...`: the
/// counters a person reads first, in words.
fn describe_counters(counters: &serde_json::Value) -> String {
    let n = |key: &str| counters[key].as_u64().unwrap_or(0);
    let plural = |count: u64, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    [
        format!(
            "{} ({} denied, {} rate-limited)",
            plural(n("connects"), "connect", "connects"),
            n("denied_connects"),
            n("rate_limited")
        ),
        plural(n("denied_files"), "file denial", "file denials"),
        plural(n("file_writes"), "file change", "file changes"),
        plural(n("execs"), "exec", "execs"),
        plural(n("denied_sockets"), "denied socket", "denied sockets"),
        plural(n("canary_hits"), "canary hit", "canary hits"),
        format!(
            "{} (ring buffer full: {}, over the event rate: {})",
            plural(
                n("events_dropped") + n("events_suppressed"),
                "event not recorded",
                "events not recorded"
            ),
            n("events_dropped"),
            n("events_suppressed")
        ),
    ]
    .join(", ")
}

//! Measures how long a circuit breaker takes to act, for `cargo xtask bench
//! breakers`: from the denied connect that trips it to the first connect it
//! denies.
//!
//! Usage (inside an agent whose breaker trips after DENIALS denied connects):
//!   bench-breaker DENIED_ADDR:PORT ALLOWED_ADDR:PORT DENIALS
//!
//! For every line read from standard input it runs one trial and prints one
//! JSON line; it exits at the end of its input. A trial:
//!
//! 1. connects to DENIED_ADDR DENIALS times; each must fail with `EPERM`
//!    (Baton's egress rule, not the listener, refused it). The time just
//!    before the last of them, the one that trips the breaker, is `t0`
//!    (`CLOCK_MONOTONIC`);
//! 2. connects to ALLOWED_ADDR, closing each connection at once, as fast as
//!    it can until a connect fails with `EPERM`, the breaker's quarantine;
//!    the time that connect returned is `t1`.
//!
//! The line holds `latency_ns` (`t1 - t0`), `allowed` (connects that still
//! got through after `t0`), `round_median_ns` (the median duration of one
//! allowed connect and close in this trial: the resolution of the
//! measurement) and `denied_median_ns` (the median denied connect). A trial
//! whose breaker has not acted after 5 s prints `timeout: true`. Bad usage
//! exits 2; a denied connect that is not `EPERM`, or an allowed one that
//! fails otherwise, exits 1.

use std::{
    io::{BufRead as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

/// A breaker that has not acted by then is broken, not slow.
const TRIAL_LIMIT: Duration = Duration::from_secs(5);

fn usage() -> ExitCode {
    eprintln!("usage: bench-breaker DENIED_ADDR:PORT ALLOWED_ADDR:PORT DENIALS");
    ExitCode::from(2)
}

/// Closes `stream` with an RST, so that thousands of connects leave no
/// TIME_WAIT sockets behind to slow the next ones.
fn close_with_reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn median(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

fn is_eperm(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::EPERM)
}

/// One trial; `Err` is a message for a broken set-up.
fn trial(denied: SocketAddr, allowed: SocketAddr, denials: usize) -> Result<String, String> {
    let mut denied_ns = Vec::with_capacity(denials);
    let mut t0 = Instant::now();
    for i in 0..denials {
        let start = Instant::now();
        match TcpStream::connect(denied) {
            Ok(_) => return Err(format!("connect {} to {denied} was allowed", i + 1)),
            Err(error) if is_eperm(&error) => {}
            Err(error) => return Err(format!("connect {} to {denied}: {error}", i + 1)),
        }
        denied_ns.push(start.elapsed().as_nanos() as u64);
        t0 = start;
    }
    let mut rounds = Vec::with_capacity(1024);
    let mut allowed_count = 0u64;
    loop {
        let start = Instant::now();
        match TcpStream::connect(allowed) {
            Ok(stream) => {
                close_with_reset(stream);
                allowed_count += 1;
                let now = Instant::now();
                rounds.push((now - start).as_nanos() as u64);
                if now - t0 > TRIAL_LIMIT {
                    return Ok(serde_json::json!({
                        "timeout": true,
                        "allowed": allowed_count,
                        "round_median_ns": median(&mut rounds),
                    })
                    .to_string());
                }
            }
            Err(error) if is_eperm(&error) => {
                let t1 = Instant::now();
                return Ok(serde_json::json!({
                    "latency_ns": (t1 - t0).as_nanos() as u64,
                    "allowed": allowed_count,
                    "round_median_ns": median(&mut rounds),
                    "denied_median_ns": median(&mut denied_ns),
                })
                .to_string());
            }
            Err(error) => return Err(format!("connect to {allowed}: {error}")),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [denied, allowed, denials] = args.as_slice() else {
        return usage();
    };
    let (Ok(denied), Ok(allowed), Ok(denials)) = (
        denied.parse::<SocketAddr>(),
        allowed.parse::<SocketAddr>(),
        denials.parse::<usize>(),
    ) else {
        return usage();
    };
    if denials == 0 {
        return usage();
    }
    let mut stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        match trial(denied, allowed, denials) {
            Ok(report) => {
                // The parent waits for each line before it resets the
                // breaker for the next trial.
                if writeln!(stdout, "{report}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
            Err(message) => {
                eprintln!("bench-breaker: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

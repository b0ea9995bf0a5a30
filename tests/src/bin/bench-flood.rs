//! Produces denied connects, each of which the kernel turns into an audit
//! event, at a steady rate, for `cargo xtask bench audit`.
//!
//! Usage (inside an agent whose policy denies ADDR):
//!   bench-flood ADDR:PORT PROCESSES RATE SECONDS
//!
//! Starts PROCESSES copies of itself (they belong to the agent too, since
//! agent membership is inherited at fork), each making RATE / PROCESSES
//! denied connects a second for SECONDS seconds; RATE 0 means as fast as
//! possible. Each copy calls `connect()` again and again on one TCP socket:
//! the egress hook refuses it before the socket changes state, so the
//! socket stays reusable, and each attempt costs one system call.
//!
//! Prints one JSON line: `denied` (connects that failed with `EPERM`, the
//! events the kernel had to record), `other` (anything else, which means
//! the set-up is wrong), `elapsed_ns` (from the first copy's start to the
//! last one's end). Bad usage exits 2.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

fn usage() -> ExitCode {
    eprintln!("usage: bench-flood ADDR:PORT PROCESSES RATE SECONDS");
    ExitCode::from(2)
}

/// `sockaddr_in` for `addr`.
fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One copy: denied connects at `rate` a second (0: unpaced) for
/// `duration`. Returns (EPERM, other outcomes).
fn worker(addr: SocketAddrV4, rate: u64, duration: Duration) -> (u64, u64) {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return (0, 1);
    }
    let target = sockaddr(addr);
    let (mut denied, mut other) = (0u64, 0u64);
    let start = Instant::now();
    // Paced in batches: checking the clock every connect would cost as
    // much as the connect, and sleeping between batches gives the CPU to
    // the daemon instead of spinning.
    const BATCH: u64 = 64;
    loop {
        for _ in 0..BATCH {
            // SAFETY: connect(2) on our socket with a valid sockaddr_in.
            let rc = unsafe {
                libc::connect(
                    fd,
                    (&raw const target).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
                denied += 1;
            } else {
                other += 1;
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= duration || other > 0 {
            break;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(denied as f64 / rate as f64);
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    (denied, other)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--worker", addr, rate, millis] => {
            let (Ok(addr), Ok(rate), Ok(millis)) = (
                addr.parse::<SocketAddrV4>(),
                rate.parse::<u64>(),
                millis.parse::<u64>(),
            ) else {
                return usage();
            };
            let (denied, other) = worker(addr, rate, Duration::from_millis(millis));
            println!("{denied} {other}");
            ExitCode::SUCCESS
        }
        [addr, processes, rate, seconds] => {
            let (Ok(addr), Ok(processes), Ok(rate), Ok(seconds)) = (
                addr.parse::<SocketAddrV4>(),
                processes.parse::<u64>(),
                rate.parse::<u64>(),
                seconds.parse::<f64>(),
            ) else {
                return usage();
            };
            if processes == 0
                || seconds.is_nan()
                || seconds <= 0.0
                || *addr.ip() == Ipv4Addr::UNSPECIFIED
            {
                return usage();
            }
            let Ok(exe) = std::env::current_exe() else {
                eprintln!("bench-flood: cannot find its own executable");
                return ExitCode::FAILURE;
            };
            let per_process = rate.div_ceil(processes);
            let millis = ((seconds * 1000.0) as u64).to_string();
            let start = Instant::now();
            let children: Vec<_> = (0..processes)
                .filter_map(|_| {
                    Command::new(&exe)
                        .args(["--worker", &addr.to_string(), &per_process.to_string()])
                        .arg(&millis)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .spawn()
                        .ok()
                })
                .collect();
            if children.len() as u64 != processes {
                eprintln!("bench-flood: cannot start {processes} workers");
                return ExitCode::FAILURE;
            }
            let (mut denied, mut other) = (0u64, 0u64);
            for child in children {
                let Ok(output) = child.wait_with_output() else {
                    other += 1;
                    continue;
                };
                let text = String::from_utf8_lossy(&output.stdout);
                let mut fields = text.split_whitespace().map(str::parse::<u64>);
                match (fields.next(), fields.next()) {
                    (Some(Ok(d)), Some(Ok(o))) => {
                        denied += d;
                        other += o;
                    }
                    _ => other += 1,
                }
            }
            println!(
                "{}",
                serde_json::json!({
                    "denied": denied,
                    "other": other,
                    "elapsed_ns": start.elapsed().as_nanos() as u64,
                })
            );
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

//! The load generators of `cargo xtask soak`: each runs until killed.
//!
//! Usage:
//!   soak-load probe ALLOWED DENIED INTERVAL_MS [ALLOWED_FILE DENIED_FILE]
//!                                               connect to both (and open both files for
//!                                               reading) in a loop; one JSON line per round:
//!                                               {"t_ms", "allowed", "denied"[, "open_allowed",
//!                                               "open_denied"]}
//!   soak-load flood ADDR                        denied connects as fast as they come
//!   soak-load hold-control SOCKET N             hold N idle connections to SOCKET,
//!                                               reopening those the server closes
//!   soak-load big-line SOCKET BYTES             send BYTES without a newline, again and again
//!   soak-load dns ADDR TRIES                    send one DNS query over UDP until a reply
//!                                               comes (300 ms per try); exit 0 on a reply
//!
//! Results are `ok`, `errno=N` or `timeout`. Bad usage exits 2.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixStream,
    process::ExitCode,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

fn usage() -> ExitCode {
    eprintln!(
        "usage: soak-load probe ALLOWED DENIED INTERVAL_MS [ALLOWED_FILE DENIED_FILE] | flood ADDR | hold-control SOCKET N | big-line SOCKET BYTES | dns ADDR TRIES"
    );
    ExitCode::from(2)
}

/// One connect with a 1 s timeout, as `ok`, `errno=N` or `timeout`.
fn connect_once(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => "ok".to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => "timeout".to_string(),
        Err(error) => format!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
}

/// One open for reading, as `ok` or `errno=N`.
fn open_once(path: &str) -> String {
    match std::fs::File::open(path) {
        Ok(_) => "ok".to_string(),
        Err(error) => format!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn probe(
    allowed: SocketAddr,
    denied: SocketAddr,
    interval: Duration,
    files: Option<(&str, &str)>,
) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    loop {
        let t_ms = now_ms();
        let mut line = serde_json::json!({
            "t_ms": t_ms as u64,
            "allowed": connect_once(allowed),
            "denied": connect_once(denied),
        });
        if let Some((allowed_file, denied_file)) = files {
            line["open_allowed"] = open_once(allowed_file).into();
            line["open_denied"] = open_once(denied_file).into();
        }
        // The reader went away: the soak is over.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
        thread::sleep(interval);
    }
}

fn flood(addr: SocketAddr) -> ExitCode {
    loop {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
}

fn hold_control(socket: &str, wanted: usize) -> ExitCode {
    let mut held: Vec<UnixStream> = Vec::new();
    loop {
        // Drop the connections the server closed: a non-blocking read of 0
        // bytes is an end of file.
        held.retain(|stream| {
            let mut byte = [0u8; 1];
            let _ = stream.set_nonblocking(true);
            !matches!((&*stream).read(&mut byte), Ok(0))
        });
        while held.len() < wanted {
            match UnixStream::connect(socket) {
                Ok(stream) => held.push(stream),
                Err(_) => break,
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn big_line(socket: &str, bytes: usize) -> ExitCode {
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let mut sent = 0;
            while sent < bytes {
                match stream.write(&chunk[..chunk.len().min(bytes - sent)]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n,
                }
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// A query for `soak.test. A`, id 0x5053, recursion desired.
const QUERY: &[u8] = &[
    0x50, 0x53, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, b's', b'o', b'a',
    b'k', 0x04, b't', b'e', b's', b't', 0x00, 0x00, 0x01, 0x00, 0x01,
];

fn dns(addr: SocketAddr, tries: u32) -> ExitCode {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let Ok(socket) = UdpSocket::bind(bind) else {
        return ExitCode::FAILURE;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    let mut reply = [0u8; 512];
    for _ in 0..tries {
        if socket.send_to(QUERY, addr).is_err() {
            thread::sleep(Duration::from_millis(300));
            continue;
        }
        if socket.recv_from(&mut reply).is_ok() {
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let addr = |s: &str| s.parse::<SocketAddr>().ok();
    let number = |s: &str| s.parse::<usize>().ok();
    match args.as_slice() {
        ["probe", allowed, denied, interval, files @ ..] => {
            let files = match files {
                [] => None,
                [allowed_file, denied_file] => Some((*allowed_file, *denied_file)),
                _ => return usage(),
            };
            match (addr(allowed), addr(denied), number(interval)) {
                (Some(a), Some(d), Some(ms)) => {
                    probe(a, d, Duration::from_millis(ms as u64), files)
                }
                _ => usage(),
            }
        }
        ["flood", target] => addr(target).map_or_else(usage, flood),
        ["hold-control", socket, n] => number(n).map_or_else(usage, |n| hold_control(socket, n)),
        ["big-line", socket, n] => number(n).map_or_else(usage, |n| big_line(socket, n)),
        ["dns", target, tries] => match (addr(target), number(tries)) {
            (Some(a), Some(t)) => dns(a, t as u32),
            _ => usage(),
        },
        _ => usage(),
    }
}

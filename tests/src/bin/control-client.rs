//! A hostile (or merely raw) client of Baton's control socket, for the
//! tests that check what the daemon holds on a client's behalf.
//!
//! - `hold SOCKET N`: opens N connections and holds them, sending nothing,
//!   until its standard input closes. Prints `connected=K failed=F` once
//!   every attempt is made.
//! - `flood SOCKET BYTES`: sends up to BYTES bytes without a newline, as
//!   fast as the daemon takes them, then prints `sent=N` and the daemon's
//!   reply line as `reply=LINE` (empty if none).
//! - `requests SOCKET`: connects once, then for each line on standard
//!   input sends it and prints the reply line.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::ExitCode,
    time::Duration,
};

/// Raises this process's soft descriptor limit to its hard one.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

fn reply_line(stream: &UnixStream) -> String {
    // Generous: the daemon answers at once, but the machine may be busy.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.trim_end().to_string()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["hold", socket, count] => {
            raise_descriptor_limit();
            let count: usize = count.parse().expect("a count");
            let mut held = Vec::with_capacity(count);
            let mut failed = 0;
            for _ in 0..count {
                match UnixStream::connect(socket) {
                    Ok(stream) => held.push(stream),
                    Err(_) => failed += 1,
                }
            }
            println!("connected={} failed={failed}", held.len());
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            ExitCode::SUCCESS
        }
        ["flood", socket, bytes] => {
            let total: usize = bytes.parse().expect("a byte count");
            let mut stream = UnixStream::connect(socket).expect("connect");
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                match stream.write(&chunk[..n]) {
                    Ok(0) | Err(_) => break,
                    Ok(written) => sent += written,
                }
            }
            let reply = reply_line(&stream);
            println!("sent={sent}\nreply={reply}");
            ExitCode::SUCCESS
        }
        ["requests", socket] => {
            // One connection for every request: the daemon must judge each
            // request by what the caller is when it asks.
            let mut stream = UnixStream::connect(socket).expect("connect");
            let mut replies = BufReader::new(stream.try_clone().expect("clone"));
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
                    println!("write failed");
                    break;
                }
                let mut reply = String::new();
                let _ = replies.read_line(&mut reply);
                println!("{}", reply.trim_end());
                let _ = std::io::stdout().flush();
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: baton-control-client hold SOCKET N | flood SOCKET BYTES | requests SOCKET"
            );
            ExitCode::from(2)
        }
    }
}

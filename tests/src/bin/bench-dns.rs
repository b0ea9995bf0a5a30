//! Measures the round trip of one DNS query over UDP, for
//! `cargo xtask bench dns`.
//!
//! Usage:
//!   bench-dns ADDR:PORT ITERATIONS NAME   send ITERATIONS `A` queries for NAME, one
//!                                         at a time, after a warm-up; print one JSON
//!                                         line of latencies. `{n}` in NAME becomes
//!                                         the query's number, so that every query
//!                                         asks for a name not asked before
//!   bench-dns --probe ADDR:PORT NAME      one query; print `rcode=N` and, when the
//!                                         answer has one, ` a=ADDRESS`; or `timeout`
//!                                         or `errno=N`
//!
//! Queries go out on one connected UDP socket, so inside an agent the
//! kernel's port-53 redirect applies to all of them. Every reply is checked:
//! the same id, a response, `NOERROR`, and at least one `A` record.
//!
//! The JSON line holds the median, p90 and p99 of the round trip (send,
//! then receive the reply) in nanoseconds, and the address of the first
//! answer. Bad usage exits 2; a failed or wrong reply while measuring exits 1.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

/// How long one query may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

fn warm_up(iterations: usize) -> usize {
    (iterations / 10).clamp(50, 500)
}

fn usage() -> ExitCode {
    eprintln!("usage: bench-dns ADDR:PORT ITERATIONS NAME | --probe ADDR:PORT NAME");
    ExitCode::from(2)
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A standard query (recursion desired) for the `A` records of `name`.
fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut message = Vec::with_capacity(32 + name.len());
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    message.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    message.extend_from_slice(&[0; 6]); // AN, NS, AR
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid name {name:?}"));
        }
        message.push(label.len() as u8);
        message.extend_from_slice(label.as_bytes());
    }
    message.push(0);
    message.extend_from_slice(&TYPE_A.to_be_bytes());
    message.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(message)
}

/// What a reply says.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    id: u16,
    rcode: u8,
    /// The first `A` record of the answer section.
    address: Option<Ipv4Addr>,
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len {
            0 => return Some(at + 1),
            // A compression pointer ends the name.
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

fn decode_reply(bytes: &[u8]) -> Option<Reply> {
    let id = read_u16(bytes, 0)?;
    let flags = read_u16(bytes, 2)?;
    if flags & 0x8000 == 0 {
        return None;
    }
    let questions = read_u16(bytes, 4)?;
    let answers = read_u16(bytes, 6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(bytes, at)? + 4;
    }
    let mut address = None;
    for _ in 0..answers {
        at = skip_name(bytes, at)?;
        let kind = read_u16(bytes, at)?;
        let class = read_u16(bytes, at + 2)?;
        let length = usize::from(read_u16(bytes, at + 8)?);
        let data = bytes.get(at + 10..at + 10 + length)?;
        if kind == TYPE_A && class == CLASS_IN && length == 4 && address.is_none() {
            address = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + length;
    }
    Some(Reply {
        id,
        rcode: (flags & 0x000F) as u8,
        address,
    })
}

/// Sends one query on `socket` and waits for its reply.
fn ask(socket: &UdpSocket, id: u16, name: &str, buf: &mut [u8]) -> std::io::Result<Reply> {
    let query = encode_query(id, name).map_err(std::io::Error::other)?;
    socket.send(&query)?;
    loop {
        let n = socket.recv(buf)?;
        match decode_reply(&buf[..n]) {
            // A late reply to an earlier query that had timed out.
            Some(reply) if reply.id != id => continue,
            Some(reply) => return Ok(reply),
            None => return Err(std::io::Error::other("malformed reply")),
        }
    }
}

fn connect(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(socket)
}

fn measure(server: SocketAddr, iterations: usize, name: &str) -> ExitCode {
    let socket = match connect(server) {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("bench-dns: cannot open a socket to {server}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut buf = [0u8; 4096];
    let mut rtt = Vec::with_capacity(iterations);
    let mut first = None;
    for i in 0..warm_up(iterations) + iterations {
        let id = (i % 65_536) as u16;
        let asked = name.replace("{n}", &i.to_string());
        let start = Instant::now();
        let reply = match ask(&socket, id, &asked, &mut buf) {
            Ok(reply) => reply,
            Err(error) => {
                eprintln!("bench-dns: query {i} for {asked} to {server}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let done = Instant::now();
        if reply.rcode != 0 || reply.address.is_none() {
            eprintln!(
                "bench-dns: query {i} for {asked} to {server}: rcode {} with {:?}",
                reply.rcode, reply.address
            );
            return ExitCode::FAILURE;
        }
        first = first.or(reply.address);
        if i >= warm_up(iterations) {
            rtt.push((done - start).as_nanos() as u64);
        }
    }
    rtt.sort_unstable();
    let report = serde_json::json!({
        "iterations": iterations,
        "median_ns": percentile(&rtt, 50),
        "p90_ns": percentile(&rtt, 90),
        "p99_ns": percentile(&rtt, 99),
        "answer": first.map(|a| a.to_string()),
    });
    println!("{report}");
    ExitCode::SUCCESS
}

fn probe(server: SocketAddr, name: &str) -> ExitCode {
    let mut buf = [0u8; 4096];
    let outcome = connect(server).and_then(|socket| ask(&socket, 0x4242, name, &mut buf));
    match outcome {
        Ok(Reply {
            rcode,
            address: Some(address),
            ..
        }) => println!("rcode={rcode} a={address}"),
        Ok(Reply { rcode, .. }) => println!("rcode={rcode}"),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            println!("timeout")
        }
        Err(error) => match error.raw_os_error() {
            Some(errno) => println!("errno={errno}"),
            None => {
                eprintln!("bench-dns: {error}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let parse = |addr: &str| addr.parse::<SocketAddr>().ok();
    match args.as_slice() {
        ["--probe", addr, name] => parse(addr).map_or_else(usage, |a| probe(a, name)),
        [addr, iterations, name] => match (parse(addr), iterations.parse::<usize>()) {
            (Some(addr), Ok(n)) if n > 0 => measure(addr, n, name),
            _ => usage(),
        },
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_layout() {
        let q = encode_query(0x1234, "allowed.test").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x07allowed\x04test\x00\x00\x01\x00\x01");
        assert!(encode_query(1, "a..b").is_err());
    }

    #[test]
    fn reply_with_a_compressed_answer() {
        let mut reply = encode_query(7, "allowed.test").unwrap();
        reply[2] = 0x81; // QR, RD
        reply[3] = 0x80; // RA, NOERROR
        reply[7] = 1; // ANCOUNT
        reply.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        assert_eq!(
            decode_reply(&reply),
            Some(Reply {
                id: 7,
                rcode: 0,
                address: Some(Ipv4Addr::new(127, 0, 0, 2)),
            })
        );
        // A query is not a reply; a cut-off answer is malformed.
        assert_eq!(
            decode_reply(&encode_query(7, "allowed.test").unwrap()),
            None
        );
        assert_eq!(decode_reply(&reply[..reply.len() - 2]), None);
    }
}

//! Performs one real syscall and reports its outcome, so tests can assert
//! the errno a process inside an agent actually gets.
//!
//! Usage:
//!   baton-test-helper connect ADDR:PORT           TCP connect(2)
//!   baton-test-helper connect-uring ADDR:PORT     TCP connect through io_uring
//!   baton-test-helper sendto ADDR:PORT            unconnected UDP sendto(2)
//!   baton-test-helper socket raw|packet|icmp      socket(2) of that kind
//!   baton-test-helper open PATH read|write        open(2)
//!   baton-test-helper spawn PROGRAM ARGS...       run PROGRAM as a child, pass its output on
//!
//! Prints `ok` or `errno=N` and exits 0; bad usage exits 2.

use std::{
    fs::OpenOptions,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
};

fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => println!("ok"),
        Err(error) => println!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: baton-test-helper connect|connect-uring|sendto ADDR:PORT | socket raw|packet|icmp | open PATH read|write | spawn PROGRAM ARGS..."
    );
    ExitCode::from(2)
}

/// A raw `socket(2)` call.
fn socket(domain: i32, kind: i32, protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned on success.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `connect` submitted through io_uring instead of the syscall.
fn connect_uring(addr: SocketAddr) -> std::io::Result<()> {
    let (domain, storage, len) = sockaddr(addr);
    let fd = socket(domain, libc::SOCK_STREAM, 0)?;
    let mut ring = io_uring::IoUring::new(2)?;
    let entry = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        (&storage as *const libc::sockaddr_storage).cast(),
        len,
    )
    .build();
    // SAFETY: the address outlives the submission: we wait for completion
    // before returning.
    unsafe { ring.submission().push(&entry) }.map_err(std::io::Error::other)?;
    ring.submit_and_wait(1)?;
    let completion = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    match completion.result() {
        0 => Ok(()),
        error => Err(std::io::Error::from_raw_os_error(-error)),
    }
}

fn sockaddr(addr: SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                size_of::<libc::sockaddr_in>() as u32,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                size_of::<libc::sockaddr_in6>() as u32,
            )
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let parse = |addr: &str| addr.parse::<SocketAddr>().ok();
    match words.as_slice() {
        ["connect", addr] => match parse(addr) {
            Some(addr) => report(TcpStream::connect(addr).map(drop)),
            None => usage(),
        },
        ["connect-uring", addr] => match parse(addr) {
            Some(addr) => report(connect_uring(addr)),
            None => usage(),
        },
        ["sendto", addr] => match parse(addr) {
            Some(addr) => {
                let local = if addr.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                report(
                    UdpSocket::bind(local)
                        .and_then(|s| s.send_to(b"x", addr))
                        .map(drop),
                )
            }
            None => usage(),
        },
        ["socket", "raw"] => {
            report(socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).map(drop))
        }
        ["socket", "packet"] => report(socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map(drop)),
        ["socket", "icmp"] => {
            report(socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP).map(drop))
        }
        ["open", path, mode] => {
            let mut options = OpenOptions::new();
            match *mode {
                "read" => options.read(true),
                "write" => options.write(true),
                _ => return usage(),
            };
            report(options.open(path).map(drop))
        }
        ["spawn", program, rest @ ..] => {
            match std::process::Command::new(program).args(rest).status() {
                Ok(status) if status.success() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("cannot run {program}: {error}");
                    ExitCode::from(2)
                }
            }
        }
        _ => usage(),
    }
}

//! Measures what one TCP `connect()` + `close()` to a local listener costs,
//! for `cargo xtask bench egress`.
//!
//! Usage:
//!   bench-connect ADDR:PORT ITERATIONS   connect and close ITERATIONS times after a
//!                                        warm-up; print one JSON line of latencies
//!   bench-connect --listen ADDR:PORT     accept and drop connections until killed;
//!                                        print the bound address once listening
//!   bench-connect --probe ADDR:PORT      one connect (1 s timeout); print `ok`,
//!                                        `errno=N` or `timeout`
//!   bench-connect --sink ADDR:PORT       accept connections and read each to its end,
//!                                        discarding the bytes, until killed
//!   bench-connect --bulk ADDR:PORT MS    one TCP stream: write for MS milliseconds,
//!                                        print one JSON line of bytes and segments per second
//!
//! With `BATON_BENCH_CPU=N` in the environment, the process runs on CPU N
//! only.
//!
//! The JSON line holds the median, p90 and p99 of the whole iteration
//! (`connect()`, then `close()`) and the median of `connect()` alone, in
//! nanoseconds. Bad usage exits 2; a failed connect while measuring exits 1.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

/// Warm-up iterations: enough to fault in the code paths and settle the
/// CPU frequency, small next to a measured run.
fn warm_up(iterations: usize) -> usize {
    (iterations / 10).clamp(100, 2_000)
}

fn usage() -> ExitCode {
    eprintln!("usage: bench-connect ADDR:PORT ITERATIONS | --listen ADDR:PORT | --probe ADDR:PORT");
    ExitCode::from(2)
}

/// Closes `stream` with an RST instead of a FIN.
///
/// A FIN close leaves the client port in TIME_WAIT for a minute; hundreds
/// of thousands of connects would fill the ephemeral range, and the
/// growing TIME_WAIT population would slow later rounds' port search, a
/// drift that has nothing to do with the hooks being measured.
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

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn measure(addr: SocketAddr, iterations: usize) -> ExitCode {
    // A listener that is missing or filtered would make a blocking connect
    // hang for minutes; find out in one second instead.
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(stream) => close_with_reset(stream),
        Err(error) => {
            eprintln!("bench-connect: cannot connect to {addr}: {error}");
            return ExitCode::FAILURE;
        }
    }
    let mut total = Vec::with_capacity(iterations);
    let mut connect_only = Vec::with_capacity(iterations);
    for i in 0..warm_up(iterations) + iterations {
        let start = Instant::now();
        let stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(error) => {
                eprintln!("bench-connect: connect to {addr} failed: {error}");
                return ExitCode::FAILURE;
            }
        };
        let connected = Instant::now();
        close_with_reset(stream);
        let done = Instant::now();
        if i >= warm_up(iterations) {
            total.push((done - start).as_nanos() as u64);
            connect_only.push((connected - start).as_nanos() as u64);
        }
    }
    total.sort_unstable();
    connect_only.sort_unstable();
    let report = serde_json::json!({
        "iterations": iterations,
        "median_ns": percentile(&total, 50),
        "p90_ns": percentile(&total, 90),
        "p99_ns": percentile(&total, 99),
        "connect_median_ns": percentile(&connect_only, 50),
    });
    println!("{report}");
    ExitCode::SUCCESS
}

fn listen(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("bench-connect: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    // std listens with a backlog of 128: a listener descheduled for a few
    // milliseconds overflows it, and each dropped SYN costs the client a
    // one-second retransmit. Listening again only raises the backlog; the
    // kernel caps it at net.core.somaxconn.
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), i32::MAX) } != 0 {
        eprintln!(
            "bench-connect: cannot raise the backlog: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    match listener.local_addr() {
        Ok(bound) => println!("{bound}"),
        Err(error) => {
            eprintln!("bench-connect: {error}");
            return ExitCode::FAILURE;
        }
    }
    // The parent reads the address and then waits for nothing more.
    let _ = std::io::stdout().flush();
    // Accepting as fast as connections arrive keeps the backlog short.
    loop {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(error) => eprintln!("bench-connect: accept: {error}"),
        }
    }
}

/// Accepts connections and drains each in its own thread.
fn sink(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("bench-connect: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(bound) => println!("{bound}"),
        Err(error) => {
            eprintln!("bench-connect: {error}");
            return ExitCode::FAILURE;
        }
    }
    let _ = std::io::stdout().flush();
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
            Err(error) => eprintln!("bench-connect: accept: {error}"),
        }
    }
}

/// Segments the socket has sent, from `TCP_INFO`.
fn segments_out(stream: &TcpStream) -> u64 {
    // SAFETY: all-zero is a valid tcp_info; getsockopt writes at most
    // `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(info.tcpi_segs_out)
    } else {
        0
    }
}

/// Writes on one connection for `millis` ms (after a warm-up of a tenth of
/// that) and reports the throughput.
fn bulk(addr: SocketAddr, millis: u64) -> ExitCode {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("bench-connect: cannot connect to {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let buf = vec![0x5au8; 1 << 20];
    let write_for = |stream: &mut TcpStream, duration: Duration| -> std::io::Result<u64> {
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < duration {
            bytes += stream.write(&buf)? as u64;
        }
        Ok(bytes)
    };
    if let Err(error) = write_for(&mut stream, Duration::from_millis(millis / 10)) {
        eprintln!("bench-connect: write to {addr}: {error}");
        return ExitCode::FAILURE;
    }
    let segments_before = segments_out(&stream);
    let start = Instant::now();
    let bytes = match write_for(&mut stream, Duration::from_millis(millis)) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("bench-connect: write to {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let segments = segments_out(&stream).saturating_sub(segments_before);
    let report = serde_json::json!({
        "bytes": bytes,
        "seconds": seconds,
        "bytes_per_second": bytes as f64 / seconds,
        "segments_per_second": segments as f64 / seconds,
    });
    println!("{report}");
    ExitCode::SUCCESS
}

fn probe(addr: SocketAddr) -> ExitCode {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(stream) => {
            close_with_reset(stream);
            println!("ok");
        }
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => println!("timeout"),
        Err(error) => println!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    baton_tests::pin_to_bench_cpu("bench-connect");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let parse = |addr: &str| addr.parse::<SocketAddr>().ok();
    match args.as_slice() {
        ["--listen", addr] => parse(addr).map_or_else(usage, listen),
        ["--probe", addr] => parse(addr).map_or_else(usage, probe),
        ["--sink", addr] => parse(addr).map_or_else(usage, sink),
        ["--bulk", addr, millis] => match (parse(addr), millis.parse::<u64>()) {
            (Some(addr), Ok(millis)) if millis > 0 => bulk(addr, millis),
            _ => usage(),
        },
        [addr, iterations] => match (parse(addr), iterations.parse::<usize>()) {
            (Some(addr), Ok(iterations)) if iterations > 0 => measure(addr, iterations),
            _ => usage(),
        },
        _ => usage(),
    }
}

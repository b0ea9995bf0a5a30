//! Performs one real syscall and reports its outcome, so tests can assert
//! the errno a process inside an agent actually gets.
//!
//! Usage:
//!   baton-test-helper connect ADDR:PORT
//!   baton-test-helper open PATH read|write
//!
//! Prints `ok` or `errno=N` and exits 0; bad usage exits 2.

use std::{
    fs::OpenOptions,
    net::{SocketAddr, TcpStream},
    process::ExitCode,
};

fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => println!("ok"),
        Err(error) => println!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["connect", addr] => {
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                eprintln!("bad address {addr}");
                return ExitCode::from(2);
            };
            report(TcpStream::connect(addr).map(drop))
        }
        ["open", path, mode] => {
            let mut options = OpenOptions::new();
            match *mode {
                "read" => options.read(true),
                "write" => options.write(true),
                _ => {
                    eprintln!("mode must be read or write");
                    return ExitCode::from(2);
                }
            };
            report(options.open(path).map(drop))
        }
        _ => {
            eprintln!("usage: baton-test-helper connect ADDR:PORT | open PATH read|write");
            ExitCode::from(2)
        }
    }
}

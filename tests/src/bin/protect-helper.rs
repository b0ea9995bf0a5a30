//! Makes one of the calls an agent could use against Baton and reports its
//! outcome, so the self-protection tests can assert the errno an agent
//! really gets.
//!
//! Usage:
//!   baton-protect-helper bpf-map-create             bpf(BPF_MAP_CREATE), a 1-entry array
//!   baton-protect-helper ptrace PID                 ptrace(PTRACE_SEIZE); the kernel detaches on exit
//!   baton-protect-helper ptrace-child               ptrace(PTRACE_SEIZE) of a child of this process
//!   baton-protect-helper vm-read PID                process_vm_readv of one byte (EFAULT when allowed)
//!   baton-protect-helper kill PID SIGNAL            kill(2)
//!   baton-protect-helper prlimit PID                prlimit(2) setting RLIMIT_CORE to what it is
//!   baton-protect-helper write PATH                 open(2) for writing, appending
//!   baton-protect-helper perf-event-open            a software clock event on this process
//!   baton-protect-helper finit-module PATH          finit_module(2) of a file
//!   baton-protect-helper init-module                init_module(2) of 256 bytes that are no module
//!   baton-protect-helper sigio PID SIGNAL           ask for SIGNAL to PID when a pipe is readable (F_SETOWN,
//!                                                   F_SETSIG, O_ASYNC), then write to it; `ok` says nothing
//!                                                   about delivery
//!
//! Prints `ok` or `errno=N` and exits 0; bad usage exits 2.

#![allow(
    clippy::undocumented_unsafe_blocks,
    reason = "a test helper: each command makes the raw system call its usage line names, on arguments it just built"
)]

use std::{fs::OpenOptions, os::fd::AsRawFd, process::ExitCode};

fn outcome(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => println!("ok"),
        Err(error) => println!("errno={}", error.raw_os_error().unwrap_or(-1)),
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: baton-protect-helper bpf-map-create | ptrace PID | ptrace-child | vm-read PID | kill PID SIGNAL | prlimit PID | write PATH | perf-event-open | finit-module PATH | init-module | sigio PID SIGNAL"
    );
    ExitCode::from(2)
}

fn bpf_map_create() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = [0u8; 72];
    for (at, value) in [(0, BPF_MAP_TYPE_ARRAY), (4, 4), (8, 4), (12, 1)] {
        attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }
    // SAFETY: `attr` is a zero-padded bpf_attr for BPF_MAP_CREATE.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()) };
    outcome(fd)?;
    // SAFETY: closing the descriptor just created.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn ptrace_seize(pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: PTRACE_SEIZE does not stop the tracee; this process exits
    // right after, which detaches it.
    outcome(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) })
}

fn ptrace_child() -> std::io::Result<()> {
    // SAFETY: the child only sleeps until it is killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: plain pause(2) in the child.
            unsafe { libc::pause() };
        }
    }
    outcome(child.into())?;
    let result = ptrace_seize(child);
    // SAFETY: ending and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    result
}

fn vm_read(pid: libc::pid_t) -> std::io::Result<()> {
    let mut byte = 0u8;
    let local = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: 0x1000 as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: one local byte; the remote address is checked by the kernel.
    outcome(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)
}

fn kill(pid: libc::pid_t, signal: i32) -> std::io::Result<()> {
    // SAFETY: plain kill(2).
    outcome(unsafe { libc::kill(pid, signal) }.into())
}

fn prlimit(pid: libc::pid_t) -> std::io::Result<()> {
    let mut current = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading the limit into `current`.
    outcome(
        unsafe { libc::prlimit64(pid, libc::RLIMIT_CORE, std::ptr::null(), &mut current) }.into(),
    )?;
    // SAFETY: setting the limit to what it already is.
    outcome(
        unsafe { libc::prlimit64(pid, libc::RLIMIT_CORE, &current, std::ptr::null_mut()) }.into(),
    )
}

fn perf_event_open() -> std::io::Result<()> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
    // struct perf_event_attr: type, size, config; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&PERF_TYPE_SOFTWARE.to_ne_bytes());
    let size = attr.len() as u32;
    attr[4..8].copy_from_slice(&size.to_ne_bytes());
    attr[8..16].copy_from_slice(&PERF_COUNT_SW_TASK_CLOCK.to_ne_bytes());
    // SAFETY: a zero-padded perf_event_attr for this process on any CPU.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) };
    outcome(fd)?;
    // SAFETY: closing the descriptor just created.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn finit_module(path: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = c"";
    // SAFETY: a readable descriptor and an empty parameter string.
    outcome(unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) })
}

fn init_module() -> std::io::Result<()> {
    let image = [0x5au8; 256];
    let params = c"";
    // SAFETY: a readable buffer of the given length and an empty parameter
    // string.
    outcome(unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            params.as_ptr(),
        )
    })
}

fn sigio(pid: libc::pid_t, signal: i32) -> std::io::Result<()> {
    /// `F_SETSIG` (Linux; not in the libc crate).
    const F_SETSIG: libc::c_int = 10;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array.
    outcome(unsafe { libc::pipe(fds.as_mut_ptr()) }.into())?;
    let [read_end, write_end] = fds;
    // SAFETY: fcntl(2) and write(2) on the descriptors just created.
    let result = unsafe {
        outcome(libc::fcntl(read_end, libc::F_SETOWN, pid).into())
            .and_then(|()| outcome(libc::fcntl(read_end, F_SETSIG, signal).into()))
            .and_then(|()| {
                let flags = libc::fcntl(read_end, libc::F_GETFL);
                outcome(libc::fcntl(read_end, libc::F_SETFL, flags | libc::O_ASYNC).into())
            })
            .and_then(|()| outcome(libc::write(write_end, b"x".as_ptr().cast(), 1) as libc::c_long))
    };
    // SAFETY: closing the descriptors just created.
    unsafe {
        libc::close(read_end);
        libc::close(write_end);
    }
    result
}

fn pid_arg(arg: Option<&String>) -> Option<libc::pid_t> {
    arg.and_then(|a| a.parse().ok())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(op) = args.first() else {
        return usage();
    };
    let pid = pid_arg(args.get(1));
    match (op.as_str(), pid) {
        ("bpf-map-create", _) => report(bpf_map_create()),
        ("ptrace", Some(pid)) => report(ptrace_seize(pid)),
        ("ptrace-child", _) => report(ptrace_child()),
        ("vm-read", Some(pid)) => report(vm_read(pid)),
        ("kill", Some(pid)) => match args.get(2).and_then(|s| s.parse().ok()) {
            Some(signal) => report(kill(pid, signal)),
            None => usage(),
        },
        ("prlimit", Some(pid)) => report(prlimit(pid)),
        ("write", _) => match args.get(1) {
            Some(path) => report(OpenOptions::new().append(true).open(path).map(|_| ())),
            None => usage(),
        },
        ("perf-event-open", _) => report(perf_event_open()),
        ("init-module", _) => report(init_module()),
        ("sigio", Some(pid)) => match args.get(2).and_then(|s| s.parse().ok()) {
            Some(signal) => report(sigio(pid, signal)),
            None => usage(),
        },
        ("finit-module", _) => match args.get(1) {
            Some(path) => report(finit_module(path)),
            None => usage(),
        },
        _ => usage(),
    }
}

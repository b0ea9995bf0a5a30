//! Performs one real syscall and reports its outcome, so tests can assert
//! the errno a process inside an agent actually gets.
//!
//! Usage:
//!   baton-test-helper connect ADDR:PORT           TCP connect(2)
//!   baton-test-helper connect-uring ADDR:PORT     TCP connect through io_uring
//!   baton-test-helper sendto ADDR:PORT            unconnected UDP sendto(2)
//!   baton-test-helper socket raw|packet|icmp|vsock|alg      socket(2) of that kind
//!   baton-test-helper srh HOP [FINAL]:PORT TEXT cmsg|sockopt
//!                                                 UDP send of TEXT to FINAL through HOP
//!                                                 (IPv6 segment routing header)
//!   baton-test-helper srh-hold HOP [FINAL]:PORT TEXT
//!                                                 set the header as an option, print `ready`,
//!                                                 then send once per line on stdin
//!   baton-test-helper lsrr HOP FINAL:PORT TEXT cmsg|sockopt
//!                                                 UDP send of TEXT to FINAL through HOP
//!                                                 (IPv4 loose source route)
//!   baton-test-helper sockopt ip-options|ipv6-rthdr HEX
//!                                                 setsockopt(2) of that option with these
//!                                                 bytes on a UDP socket
//!   baton-test-helper ping ADDR TEXT              unconnected ICMP echo with TEXT
//!   baton-test-helper open PATH read|write        open(2)
//!   baton-test-helper open-in-thread PATH NAMEHEX
//!                                                 read-open PATH from a second thread whose
//!                                                 name (prctl PR_SET_NAME) is the bytes NAMEHEX
//!   baton-test-helper read-parallel THREADS ROUNDS PATH...
//!                                                 THREADS threads each open PATHs for
//!                                                 reading ROUNDS times; prints `ok` or the
//!                                                 number of failed opens and the first errno
//!   baton-test-helper spawn PROGRAM ARGS...       run PROGRAM as a child, pass its output on
//!   baton-test-helper openat DIR NAME             openat(2) relative to a directory fd
//!   baton-test-helper reopen PATH                 open O_PATH, then read-open /proc/self/fd/N
//!   baton-test-helper create|mkdir|unlink|rmdir|truncate|chmod PATH
//!   baton-test-helper rename|link|symlink FROM TO
//!   baton-test-helper exec PROGRAM ARGS...        execve(2) directly
//!   baton-test-helper exec-fd PROGRAM ARGS...     open, then execve /proc/self/fd/N
//!   baton-test-helper fexecve PROGRAM ARGS...     open, then fexecve(3)
//!   baton-test-helper memfd-exec PROGRAM ARGS...  copy into a memfd, then fexecve it
//!   baton-test-helper userns                      unshare(CLONE_NEWUSER)
//!   baton-test-helper bind-read SRC DST FILE      in new namespaces (a user namespace
//!                                                 unless root), bind SRC onto DST, read DST/FILE
//!   baton-test-helper chroot-read DIR FILE        chroot(DIR) (in a user namespace unless
//!                                                 root), read FILE
//!   baton-test-helper chroot-exec DIR PROGRAM ARGS...  chroot(DIR), then execve(PROGRAM)
//!   baton-test-helper tmpfs-exec DIR PROGRAM ARGS...   mount a tmpfs on DIR in a new mount
//!                                                 namespace, copy PROGRAM there, run it
//!   baton-test-helper fsmount-tmpfs               fsopen + fsconfig(CREATE) of a tmpfs
//!   baton-test-helper move-mount SRC DST          open_tree(SRC, CLONE) + move_mount onto DST
//!   baton-test-helper pivot-root DIR              pivot_root(DIR, DIR) in a new mount namespace
//!   baton-test-helper open-trunc PATH             open(O_RDONLY | O_TRUNC)
//!   baton-test-helper chown PATH UID              chown(PATH, UID, -1)
//!   baton-test-helper mprotect-exec PATH          mmap(PROT_READ), then mprotect(PROT_EXEC)
//!   baton-test-helper recv-fd SOCKET              connect to a Unix socket, receive one
//!                                                 descriptor (SCM_RIGHTS) and read from it;
//!                                                 prints `no-fd` when none arrived
//!
//! Prints `ok` or `errno=N` and exits 0; bad usage exits 2.

#![allow(
    clippy::undocumented_unsafe_blocks,
    reason = "a test helper: each command makes the raw system call its usage line names, on arguments it just built"
)]

use std::{
    fs::OpenOptions,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
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
        "usage: baton-test-helper connect|connect-uring|sendto ADDR:PORT | socket raw|packet|icmp|vsock|alg | open PATH read|write | spawn PROGRAM ARGS..."
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

/// Sends `text` on `fd` to `to`, with one control message of `level`,
/// `kind` and `data` when given.
fn send_with_cmsg(
    fd: &OwnedFd,
    to: SocketAddr,
    text: &str,
    cmsg: Option<(i32, i32, &[u8])>,
) -> std::io::Result<()> {
    let (_, mut storage, len) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: text.as_ptr() as *mut libc::c_void,
        iov_len: text.len(),
    };
    let mut control = [0u64; 64];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some((level, kind, data)) = cmsg {
        // SAFETY: the control buffer has room for one header and `data`
        // (at most a few dozen bytes); CMSG_* compute inside it.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data.len() as u32) as usize;
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = level;
            (*header).cmsg_type = kind;
            (*header).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(header), data.len());
        }
    }
    // SAFETY: every pointer in `msg` is live for the call.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets a socket option from raw bytes.
fn set_option(fd: &OwnedFd, level: i32, name: i32, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: the value is a live buffer of the given length.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as u32,
        )
    })
}

/// A segment routing header (RFC 8754) whose packets go to `hop` first and
/// then to `last`: segments are listed last first, and the kernel sends to
/// the segment that `segments_left` points at.
fn segment_routing_header(hop: std::net::Ipv6Addr, last: std::net::Ipv6Addr) -> Vec<u8> {
    let mut header = vec![
        0, // next header: the kernel fills it in
        4, // length in 8-byte units after the first 8 bytes: two segments
        4, // routing type 4: segment routing
        1, // segments left
        1, // last entry
        0, // flags
        0, 0, // tag
    ];
    header.extend_from_slice(&last.octets());
    header.extend_from_slice(&hop.octets());
    header
}

/// An IPv4 loose source route through `hop`, padded to a 4-byte multiple;
/// the kernel sends to `hop` and carries the final destination in the
/// option.
fn loose_source_route(hop: std::net::Ipv4Addr) -> Vec<u8> {
    let mut option = vec![1, 0x83, 7, 4];
    option.extend_from_slice(&hop.octets());
    option
}

/// Sends `text` to `to` through `hop`, with the route set as a socket
/// option or as ancillary data.
fn routed_send(
    domain: i32,
    level: i32,
    name: i32,
    route: &[u8],
    to: SocketAddr,
    text: &str,
    how: &str,
) -> std::io::Result<()> {
    let fd = socket(domain, libc::SOCK_DGRAM, 0)?;
    if how == "sockopt" {
        set_option(&fd, level, name, route)?;
        send_with_cmsg(&fd, to, text, None)
    } else {
        send_with_cmsg(&fd, to, text, Some((level, name, route)))
    }
}

/// Bytes from pairs of hex digits; `None` for anything else.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An unconnected ICMP echo request carrying `text`, from a ping socket.
fn ping(to: std::net::Ipv4Addr, text: &str) -> std::io::Result<()> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    // Type 8 (echo request), code 0; the kernel sets the checksum and id.
    let mut packet = vec![8, 0, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(text.as_bytes());
    let (_, mut storage, len) = sockaddr(SocketAddr::new(to.into(), 0));
    // SAFETY: every pointer is live for the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstring(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).expect("no NUL in arguments")
}

/// Runs `f` and maps a -1 return to the errno.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Replaces this process with `argv[0]` run from `fd` (or from `path`);
/// returns only on failure.
fn exec_from(fd: Option<libc::c_int>, path: &str, argv: &[&str]) -> std::io::Result<()> {
    let args: Vec<std::ffi::CString> = argv.iter().map(|a| cstring(a)).collect();
    let mut pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let env = [std::ptr::null::<libc::c_char>()];
    // SAFETY: NUL-terminated argument and environment arrays that outlive
    // the call.
    let rc = unsafe {
        match fd {
            Some(fd) => libc::fexecve(fd, pointers.as_ptr(), env.as_ptr()),
            None => libc::execve(cstring(path).as_ptr(), pointers.as_ptr(), env.as_ptr()),
        }
    };
    check(rc)
}

fn open_fd(path: &str, flags: libc::c_int) -> std::io::Result<libc::c_int> {
    // SAFETY: plain open(2).
    let fd = unsafe { libc::open(cstring(path).as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// Leaves the host's namespaces: a new user namespace first unless this
/// process is root (`CLONE_NEWUSER` is what gives `nobody` the right to
/// mount and `chroot`), plus the namespaces in `flags`. Mounts made after
/// it stay private to the new mount namespace, where one was asked for.
fn leave_namespaces(flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain syscalls with integer and NUL-terminated arguments.
    unsafe {
        let user = if libc::geteuid() == 0 {
            0
        } else {
            libc::CLONE_NEWUSER
        };
        check(libc::unshare(user | flags))?;
        if flags & libc::CLONE_NEWNS != 0 {
            // Denied to an agent as well: the call that follows is the one
            // whose errno is reported.
            let _ = libc::mount(
                std::ptr::null(),
                cstring("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
        }
    }
    Ok(())
}

/// Opens `dir/name` by file handle after the kernel has dropped its
/// dentries and inodes, so the file comes back with no known parent.
fn handle_read(dir: &str, name: &str) -> std::io::Result<()> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let path = cstring(&format!("{dir}/{name}"));
    // SAFETY: a handle buffer of the size it says, and a NUL-terminated path.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut handle as *mut Handle,
            &mut mount_id as *mut libc::c_int,
            0,
        ) as libc::c_int
    })?;
    let mount_fd = open_fd(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    // SAFETY: the handle the kernel filled in above.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut handle as *mut Handle,
            libc::O_RDONLY,
        ) as libc::c_int
    };
    check(fd)
}

/// Goes `levels` directories of `name_len`-byte names down from `dir` one
/// relative step at a time (so no path is ever longer than one name), making
/// them when `create`, and then creates or reads `f` there.
fn deep(dir: &str, levels: usize, name_len: usize, create: bool) -> std::io::Result<()> {
    std::env::set_current_dir(dir)?;
    let name = "d".repeat(name_len);
    for _ in 0..levels {
        if create {
            check(unsafe { libc::mkdir(cstring(&name).as_ptr(), 0o755) })?;
        }
        std::env::set_current_dir(&name)?;
    }
    if create {
        // SAFETY: plain open(2) with a mode, so the file can be read back.
        let fd = unsafe {
            libc::open(
                cstring("f").as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL | libc::O_CLOEXEC,
                0o644,
            )
        };
        check(fd)
    } else {
        read_file("f")
    }
}

fn read_file(path: &str) -> std::io::Result<()> {
    std::fs::read(path).map(drop)
}

fn extra_ops(words: &[&str]) -> Option<std::io::Result<()>> {
    // SAFETY (all calls below): plain syscalls with integer and
    // NUL-terminated arguments.
    let result = match words {
        ["userns"] => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }),
        ["bind-read", src, dst, file] => leave_namespaces(libc::CLONE_NEWNS).and_then(|()| {
            check(unsafe {
                libc::mount(
                    cstring(src).as_ptr(),
                    cstring(dst).as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })?;
            read_file(&format!("{dst}/{file}"))
        }),
        ["rename-read", from, to, file] => {
            check(unsafe { libc::rename(cstring(from).as_ptr(), cstring(to).as_ptr()) })
                .and_then(|()| read_file(&format!("{to}/{file}")))
        }
        ["hold-reopen", path, go] => open_fd(path, libc::O_PATH).and_then(|fd| {
            std::fs::write(format!("{go}.ready"), "")?;
            // Bounded: the test replaces the file and creates `go` at once.
            for _ in 0..600 {
                if Path::new(go).exists() {
                    return open_fd(&format!("/proc/self/fd/{fd}"), libc::O_RDONLY).map(drop);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT))
        }),
        ["handle-read", dir, name] => handle_read(dir, name),
        ["setxattr", path, name] => check(unsafe {
            libc::setxattr(
                cstring(path).as_ptr(),
                cstring(name).as_ptr(),
                b"x".as_ptr().cast(),
                1,
                0,
            )
        }),
        ["removexattr", path, name] => {
            check(unsafe { libc::removexattr(cstring(path).as_ptr(), cstring(name).as_ptr()) })
        }
        ["deep", dir, levels, name_len, action @ ("create" | "read")] => {
            match (levels.parse::<usize>(), name_len.parse::<usize>()) {
                (Ok(levels), Ok(name_len)) => deep(dir, levels, name_len, action == &"create"),
                _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        ["chroot-read", dir, file] => leave_namespaces(0).and_then(|()| {
            check(unsafe { libc::chroot(cstring(dir).as_ptr()) })?;
            std::env::set_current_dir("/")?;
            read_file(file)
        }),
        ["chroot-exec", dir, program, rest @ ..] => leave_namespaces(0).and_then(|()| {
            check(unsafe { libc::chroot(cstring(dir).as_ptr()) })?;
            std::env::set_current_dir("/")?;
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(None, program, &argv)
        }),
        ["tmpfs-exec", dir, program, rest @ ..] => std::fs::read(program).and_then(|content| {
            leave_namespaces(libc::CLONE_NEWNS)?;
            check(unsafe {
                libc::mount(
                    cstring("tmpfs").as_ptr(),
                    cstring(dir).as_ptr(),
                    cstring("tmpfs").as_ptr(),
                    0,
                    std::ptr::null(),
                )
            })?;
            let copy = format!("{dir}/payload");
            std::fs::write(&copy, content)?;
            check(unsafe { libc::chmod(cstring(&copy).as_ptr(), 0o755) })?;
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(None, &copy, &argv)
        }),
        ["fsmount-tmpfs"] => {
            const FSCONFIG_CMD_CREATE: libc::c_long = 6;
            let fd = unsafe { libc::syscall(libc::SYS_fsopen, cstring("tmpfs").as_ptr(), 0) };
            check(fd as libc::c_int).and_then(|()| {
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        fd,
                        FSCONFIG_CMD_CREATE,
                        std::ptr::null::<libc::c_char>(),
                        std::ptr::null::<libc::c_void>(),
                        0,
                    )
                };
                check(rc as libc::c_int)?;
                let mount = unsafe { libc::syscall(libc::SYS_fsmount, fd, 0, 0) };
                check(mount as libc::c_int)
            })
        }
        ["move-mount", src, dst] => leave_namespaces(libc::CLONE_NEWNS).and_then(|()| {
            const OPEN_TREE_CLONE: libc::c_long = 1;
            const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
            let tree = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    cstring(src).as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
                )
            };
            check(tree as libc::c_int)?;
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    cstring("").as_ptr(),
                    libc::AT_FDCWD,
                    cstring(dst).as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            check(rc as libc::c_int)
        }),
        ["pivot-root", dir] => leave_namespaces(libc::CLONE_NEWNS).and_then(|()| {
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pivot_root,
                    cstring(dir).as_ptr(),
                    cstring(dir).as_ptr(),
                )
            };
            check(rc as libc::c_int)
        }),
        ["open-trunc", path] => open_fd(path, libc::O_RDONLY | libc::O_TRUNC).map(drop),
        ["chown", path, uid] => match uid.parse::<libc::uid_t>() {
            Ok(uid) => check(unsafe { libc::chown(cstring(path).as_ptr(), uid, u32::MAX) }),
            Err(_) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        },
        ["mprotect-exec", path] => open_fd(path, libc::O_RDONLY).and_then(|fd| {
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd,
                    0,
                )
            };
            if map == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            check(unsafe { libc::mprotect(map, 4096, libc::PROT_READ | libc::PROT_EXEC) })
        }),
        _ => return None,
    };
    Some(result)
}

/// Receives one descriptor over the Unix socket at `path` and reads from
/// it. `Ok(false)` when the message arrived without it.
fn receive_fd(path: &str) -> std::io::Result<bool> {
    use std::io::Read;
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives
    // the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg into the buffers above.
    let received = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut message, 0) };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control buffer the kernel filled, with its macros.
    let fd = unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null()
            || (*header).cmsg_level != libc::SOL_SOCKET
            || (*header).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(false);
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>())
    };
    // SAFETY: the descriptor the kernel just installed for us.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(true)
}

fn file_ops(words: &[&str]) -> Option<std::io::Result<()>> {
    // SAFETY (all calls below): plain syscalls on NUL-terminated paths.
    let result = match words {
        ["openat", dir, name] => {
            open_fd(dir, libc::O_RDONLY | libc::O_DIRECTORY).and_then(|dirfd| {
                let fd = unsafe { libc::openat(dirfd, cstring(name).as_ptr(), libc::O_RDONLY) };
                check(fd)
            })
        }
        ["reopen", path] => open_fd(path, libc::O_PATH)
            .and_then(|fd| open_fd(&format!("/proc/self/fd/{fd}"), libc::O_RDONLY).map(drop)),
        ["create", path] => open_fd(path, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL).map(drop),
        ["mkdir", path] => check(unsafe { libc::mkdir(cstring(path).as_ptr(), 0o755) }),
        ["unlink", path] => check(unsafe { libc::unlink(cstring(path).as_ptr()) }),
        ["rmdir", path] => check(unsafe { libc::rmdir(cstring(path).as_ptr()) }),
        ["truncate", path] => check(unsafe { libc::truncate(cstring(path).as_ptr(), 0) }),
        ["chmod", path] => check(unsafe { libc::chmod(cstring(path).as_ptr(), 0o600) }),
        ["rename", from, to] => {
            check(unsafe { libc::rename(cstring(from).as_ptr(), cstring(to).as_ptr()) })
        }
        ["link", from, to] => {
            check(unsafe { libc::link(cstring(from).as_ptr(), cstring(to).as_ptr()) })
        }
        ["symlink", from, to] => {
            check(unsafe { libc::symlink(cstring(from).as_ptr(), cstring(to).as_ptr()) })
        }
        ["exec", program, rest @ ..] => {
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(None, program, &argv)
        }
        ["exec-fd", program, rest @ ..] => open_fd(program, libc::O_RDONLY).and_then(|fd| {
            // Without O_CLOEXEC so /proc/self/fd/N still names it at exec.
            let fd = unsafe { libc::dup(fd) };
            let path = format!("/proc/self/fd/{fd}");
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(None, &path, &argv)
        }),
        ["fexecve", program, rest @ ..] => open_fd(program, libc::O_RDONLY).and_then(|fd| {
            let fd = unsafe { libc::dup(fd) };
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(Some(fd), program, &argv)
        }),
        ["memfd-exec", program, rest @ ..] => std::fs::read(program).and_then(|content| {
            let fd = unsafe { libc::memfd_create(cstring("payload").as_ptr(), 0) };
            check(fd)?;
            // SAFETY: writing our own buffer to our own descriptor.
            let written = unsafe { libc::write(fd, content.as_ptr().cast(), content.len()) };
            if written != content.len() as isize {
                return Err(std::io::Error::other("short write to memfd"));
            }
            let argv: Vec<&str> = std::iter::once(*program)
                .chain(rest.iter().copied())
                .collect();
            exec_from(Some(fd), program, &argv)
        }),
        _ => return None,
    };
    Some(result)
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
        ["srh", hop, to, text, how @ ("cmsg" | "sockopt")] => {
            match (hop.parse::<std::net::Ipv6Addr>(), parse(to)) {
                (Ok(hop), Some(SocketAddr::V6(final_addr))) => report(routed_send(
                    libc::AF_INET6,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RTHDR,
                    &segment_routing_header(hop, *final_addr.ip()),
                    SocketAddr::V6(final_addr),
                    text,
                    how,
                )),
                _ => usage(),
            }
        }
        ["srh-hold", hop, to, text] => match (hop.parse::<std::net::Ipv6Addr>(), parse(to)) {
            (Ok(hop), Some(SocketAddr::V6(final_addr))) => {
                let held = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).and_then(|fd| {
                    let header = segment_routing_header(hop, *final_addr.ip());
                    set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &header)?;
                    Ok(fd)
                });
                match held {
                    Ok(fd) => {
                        println!("ready");
                        // One send per line, until standard input closes.
                        let mut line = String::new();
                        let mut last = ExitCode::SUCCESS;
                        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                            line.clear();
                            last =
                                report(send_with_cmsg(&fd, SocketAddr::V6(final_addr), text, None));
                        }
                        last
                    }
                    Err(error) => report(Err(error)),
                }
            }
            _ => usage(),
        },
        ["lsrr", hop, to, text, how @ ("cmsg" | "sockopt")] => {
            match (hop.parse::<std::net::Ipv4Addr>(), parse(to)) {
                (Ok(hop), Some(to @ SocketAddr::V4(_))) => {
                    // As ancillary data the option is IP_RETOPTS.
                    let name = if *how == "sockopt" {
                        libc::IP_OPTIONS
                    } else {
                        libc::IP_RETOPTS
                    };
                    report(routed_send(
                        libc::AF_INET,
                        libc::IPPROTO_IP,
                        name,
                        &loose_source_route(hop),
                        to,
                        text,
                        how,
                    ))
                }
                _ => usage(),
            }
        }
        ["sockopt", option, hex] => {
            let (domain, level, name) = match *option {
                "ip-options" => (libc::AF_INET, libc::IPPROTO_IP, libc::IP_OPTIONS),
                "ipv6-rthdr" => (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_RTHDR),
                _ => return usage(),
            };
            match decode_hex(hex) {
                Some(value) => report(
                    socket(domain, libc::SOCK_DGRAM, 0)
                        .and_then(|fd| set_option(&fd, level, name, &value)),
                ),
                None => usage(),
            }
        }
        ["ping", to, text] => match to.parse::<std::net::Ipv4Addr>() {
            Ok(to) => report(ping(to, text)),
            Err(_) => usage(),
        },
        ["socket", "raw"] => {
            report(socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).map(drop))
        }
        ["socket", "packet"] => report(socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map(drop)),
        ["socket", "vsock"] => report(socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0).map(drop)),
        ["socket", "alg"] => report(socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0).map(drop)),
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
        ["open-in-thread", path, name] => {
            let Some(mut name) = (0..name.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
            else {
                return usage();
            };
            name.push(0);
            let path = path.to_string();
            let opened = std::thread::spawn(move || {
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at
                // most 16 bytes from a live buffer.
                if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                OpenOptions::new().read(true).open(&path).map(drop)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked")));
            report(opened)
        }
        ["read-parallel", threads, rounds, paths @ ..] if !paths.is_empty() => {
            let (Ok(threads), Ok(rounds)) = (threads.parse::<usize>(), rounds.parse::<usize>())
            else {
                return usage();
            };
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            let failures: Vec<std::io::Error> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut failed = Vec::new();
                            for _ in 0..rounds {
                                for path in &paths {
                                    if let Err(error) = std::fs::File::open(path) {
                                        failed.push(error);
                                    }
                                }
                            }
                            failed
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|worker| worker.join().unwrap_or_default())
                    .collect()
            });
            match failures.first() {
                None => report(Ok(())),
                Some(first) => {
                    println!(
                        "failed={} errno={}",
                        failures.len(),
                        first.raw_os_error().unwrap_or(0)
                    );
                    ExitCode::SUCCESS
                }
            }
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
        ["recv-fd", path] => match receive_fd(path) {
            Ok(false) => {
                println!("no-fd");
                ExitCode::SUCCESS
            }
            other => report(other.map(drop)),
        },
        other => match file_ops(other).or_else(|| extra_ops(other)) {
            Some(result) => report(result),
            None => usage(),
        },
    }
}

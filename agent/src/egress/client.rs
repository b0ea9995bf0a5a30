//! Which socket sent a query: the proxy sees only the client's address and
//! port, and asks the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, in
//! the proxy's own network namespace) for the socket that has them. Its
//! cookie is the key under which the redirect remembered the process.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Mutex,
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `INET_DIAG_NOCOOKIE`: any socket with these addresses.
const NO_COOKIE: u32 = !0;

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}
const _: () = assert!(size_of::<Request>() == 16 + 8 + 48);

/// The start of `struct inet_diag_msg` after the `nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Reply {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

/// A socket-diagnostics socket in one network namespace.
pub struct SockDiag {
    /// The socket, and the sequence number of the last request.
    fd: Mutex<(OwnedFd, u32)>,
}

impl SockDiag {
    /// Opens one in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that does not answer must not hold a proxy task up.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: the option value is a valid `timeval` of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Self {
            fd: Mutex::new((fd, 0)),
        })
    }

    /// The cookie of the socket at `client` that sent to the proxy socket
    /// at `proxy` (UDP when `udp`, else TCP), if the kernel still has it.
    pub fn cookie(&self, client: SocketAddr, proxy: SocketAddr, udp: bool) -> Option<u64> {
        // UDP's lookup takes the peer first ("swapped for historical
        // reasons" in the kernel's udp_diag); TCP's takes the socket's
        // own address first. Both orders are tried, so the answer does not
        // hang on that detail.
        let (first, second) = if udp {
            ((proxy, client), (client, proxy))
        } else {
            ((client, proxy), (proxy, client))
        };
        self.query(first.0, first.1, udp)
            .or_else(|| self.query(second.0, second.1, udp))
    }

    fn query(&self, src: SocketAddr, dst: SocketAddr, udp: bool) -> Option<u64> {
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
            _ => return None,
        };
        let octets = |ip: IpAddr| {
            let mut out = [0u8; 16];
            match ip {
                IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
            }
            out
        };
        let mut guard = self.fd.lock().ok()?;
        guard.1 = guard.1.wrapping_add(1);
        let seq = guard.1;
        let fd = &guard.0;
        let request = Request {
            len: size_of::<Request>() as u32,
            seq,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            family: family as u8,
            protocol: if udp {
                libc::IPPROTO_UDP as u8
            } else {
                libc::IPPROTO_TCP as u8
            },
            states: !0,
            id: SockId {
                sport: src.port().to_be_bytes(),
                dport: dst.port().to_be_bytes(),
                src: octets(src.ip()),
                dst: octets(dst.ip()),
                interface: 0,
                cookie: [NO_COOKIE, NO_COOKIE],
            },
            ..Request::default()
        };
        // SAFETY: the buffer is the request, valid for its length.
        let sent = unsafe {
            libc::send(
                fd.as_raw_fd(),
                (&request as *const Request).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if sent < 0 {
            return None;
        }
        let mut buf = [0u8; 512];
        // A reply to an earlier request that timed out may come first:
        // skip it (bounded: each receive waits at most the timeout).
        for _ in 0..4 {
            // SAFETY: receives into a local buffer of the given length.
            let received =
                unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let received = usize::try_from(received).ok()?;
            if received < 16 {
                return None;
            }
            if u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]) != seq {
                continue;
            }
            let kind = u16::from_ne_bytes([buf[4], buf[5]]);
            if kind == NLMSG_ERROR
                || kind != SOCK_DIAG_BY_FAMILY
                || received < 16 + size_of::<Reply>()
            {
                return None;
            }
            // SAFETY: length checked; `Reply` is plain data.
            let reply: Reply = unsafe { std::ptr::read_unaligned(buf[16..].as_ptr().cast()) };
            let cookie = u64::from(reply.id.cookie[0]) | (u64::from(reply.id.cookie[1]) << 32);
            return (cookie != 0).then_some(cookie);
        }
        None
    }
}

//! Running one DNS proxy per agent: sockets on the loopback addresses, the
//! tasks that serve them, and the ports the kernel redirects to.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use agent_common::egress::DnsProxyPorts;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use super::client::SockDiag;
use super::dns::{
    AnswerCache, DnsError, Learner, ProxyConfig, serve_tcp, serve_udp, upstreams_from_resolv_conf,
};
use crate::policy::domain::AgentNames;

/// `dns:` in the configuration file.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// Upstream resolvers (`address:port`); read from `resolvConf` when absent.
    pub upstreams: Option<Vec<std::net::SocketAddr>>,
    /// Where to read upstream resolvers from [default: /etc/resolv.conf].
    pub resolv_conf: Option<PathBuf>,
    /// Shortest time a learned address stays allowed, in seconds [default: 5].
    pub min_ttl_seconds: Option<u64>,
    /// Longest time a learned address stays allowed, in seconds; answer TTLs
    /// are capped to it [default: 3600].
    pub max_ttl_seconds: Option<u64>,
    /// Time to wait for an upstream, in milliseconds [default: 2000].
    pub timeout_ms: Option<u64>,
    /// Network namespaces (containers, `unshare -n`) one agent may hold a
    /// DNS proxy in at once; its namespaces beyond that get no DNS until one
    /// of the others has no agent process left [default: 64].
    pub max_namespace_proxies_per_agent: Option<u32>,
}

/// Errors starting a proxy.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A loopback socket could not be opened.
    #[error("cannot open a DNS proxy socket on {addr}: {source}")]
    Bind {
        /// Address tried.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The network namespace of a process could not be entered.
    #[error("cannot open a DNS proxy socket in the network namespace of process {pid}: {source}")]
    Namespace {
        /// The process.
        pid: u32,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Upstream resolvers could not be determined.
    #[error(transparent)]
    Upstreams(#[from] DnsError),
}

/// One agent's running proxy in one network namespace; stopped when dropped.
pub struct AgentProxy {
    /// Where the kernel sends the agent's DNS traffic.
    pub ports: DnsProxyPorts,
    /// The network namespace the sockets live in.
    pub netns_cookie: u64,
    /// The agent's names, swapped in place on reload.
    pub names: Arc<RwLock<AgentNames>>,
    /// The namespace's identity in `/proc/PID/ns/net` terms, for proxies
    /// opened in another process's namespace; `None` for the daemon's own.
    pub netns_id: Option<NetnsId>,
    tasks: Vec<JoinHandle<()>>,
}

/// A network namespace as `stat(2)` of `/proc/PID/ns/net` names it: the
/// nsfs device and inode. Unlike a PID it cannot be reused while the
/// namespace lives, and the daemon's proxy sockets keep it alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    /// Device of the nsfs mount.
    pub dev: u64,
    /// Inode of the namespace.
    pub ino: u64,
}

impl NetnsId {
    fn of_file(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The network namespace process `pid` is in now.
    pub fn of_process(pid: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The proxy settings from the configuration file.
pub fn proxy_config(config: &DnsConfig) -> Result<ProxyConfig, ServiceError> {
    let upstreams = match &config.upstreams {
        Some(upstreams) => upstreams.clone(),
        None => upstreams_from_resolv_conf(
            config
                .resolv_conf
                .as_deref()
                .unwrap_or(Path::new("/etc/resolv.conf")),
        )?,
    };
    if upstreams.is_empty() {
        return Err(ServiceError::Upstreams(DnsError::NoUpstreams));
    }
    Ok(ProxyConfig {
        upstreams,
        min_ttl: Duration::from_secs(config.min_ttl_seconds.unwrap_or(5)),
        max_ttl: Duration::from_secs(config.max_ttl_seconds.unwrap_or(3600)),
        timeout: Duration::from_millis(config.timeout_ms.unwrap_or(2000)),
    })
}

/// Sockets bound in one namespace, not yet served.
struct BoundSockets {
    sockets: Vec<(std::net::UdpSocket, std::net::TcpListener, bool)>,
    netns_cookie: u64,
    /// Finds the socket a query came from; `None` if the namespace
    /// refused one (queries are still served, their records name no
    /// process).
    diag: Option<Arc<SockDiag>>,
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie the kernel programs see for
/// the socket's network namespace.
fn netns_cookie(fd: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Brings the loopback interface up: a freshly made namespace has it down,
/// and the proxy's loopback address does not exist until it is up.
fn loopback_up() -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| {
        // Binding needs no interface; this fallback only guards odd setups.
        std::net::UdpSocket::bind("[::]:0")
    })?;
    // SAFETY: `ifreq` is plain data; the ioctls read and write only it.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        use std::os::fd::AsRawFd;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = request.ifr_ifru.ifru_flags;
        if flags & libc::IFF_UP as libc::c_short == 0 {
            request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Binds UDP and TCP sockets on 127.0.0.1 (required) and ::1 (when the
/// namespace has IPv6 loopback) in the calling thread's namespace.
fn bind_sockets() -> Result<BoundSockets, ServiceError> {
    let mut sockets = Vec::new();
    let mut cookie = 0;
    for (ip, required) in [
        (std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        (std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), false),
    ] {
        let addr = SocketAddr::new(ip, 0);
        let bound = std::net::UdpSocket::bind(addr).and_then(|udp| {
            let tcp = std::net::TcpListener::bind(addr)?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        });
        match bound {
            Ok((udp, tcp)) => {
                cookie = netns_cookie(&udp).unwrap_or(0);
                sockets.push((udp, tcp, ip.is_ipv4()));
            }
            Err(source) if required => return Err(ServiceError::Bind { addr, source }),
            Err(error) => {
                tracing::info!(%addr, %error, "no IPv6 loopback: IPv6 DNS of agents is denied");
            }
        }
    }
    let diag = match SockDiag::open() {
        Ok(diag) => Some(Arc::new(diag)),
        Err(error) => {
            tracing::warn!(%error, "no socket diagnostics: refused names' records will name no process");
            None
        }
    };
    Ok(BoundSockets {
        sockets,
        netns_cookie: cookie,
        diag,
    })
}

/// Serves bound sockets.
fn serve(
    bound: BoundSockets,
    names: Arc<RwLock<AgentNames>>,
    cache: Arc<AnswerCache>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
) -> Result<AgentProxy, ServiceError> {
    let mut ports = DnsProxyPorts::default();
    let mut tasks = Vec::new();
    for (udp, tcp, ipv4) in bound.sockets {
        let addr = udp.local_addr().map_err(|source| ServiceError::Bind {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            source,
        })?;
        let bind_error = |source| ServiceError::Bind { addr, source };
        let udp_port = addr.port();
        let tcp_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        if ipv4 {
            (ports.udp4, ports.tcp4) = (udp_port, tcp_port);
        } else {
            (ports.udp6, ports.tcp6) = (udp_port, tcp_port);
        }
        let udp = UdpSocket::from_std(udp).map_err(bind_error)?;
        let tcp = TcpListener::from_std(tcp).map_err(bind_error)?;
        tasks.push(tokio::spawn(serve_udp(
            udp,
            names.clone(),
            cache.clone(),
            config.clone(),
            learner.clone(),
            bound.diag.clone(),
        )));
        tasks.push(tokio::spawn(serve_tcp(
            tcp,
            names.clone(),
            cache.clone(),
            config.clone(),
            learner.clone(),
            bound.diag.clone(),
        )));
    }
    Ok(AgentProxy {
        ports,
        netns_cookie: bound.netns_cookie,
        names,
        netns_id: None,
        tasks,
    })
}

/// Opens the agent's sockets in the daemon's own network namespace and
/// starts serving them.
pub fn start_agent_proxy(
    names: Arc<RwLock<AgentNames>>,
    cache: Arc<AnswerCache>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
) -> Result<AgentProxy, ServiceError> {
    serve(bind_sockets()?, names, cache, config, learner)
}

/// Opens the agent's sockets inside the network namespace of process `pid`
/// (a container, say) and starts serving them. The sockets stay in that
/// namespace; the daemon's own threads never leave theirs.
pub fn start_netns_proxy(
    pid: u32,
    names: Arc<RwLock<AgentNames>>,
    cache: Arc<AnswerCache>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
) -> Result<AgentProxy, ServiceError> {
    let namespace_error = |source| ServiceError::Namespace { pid, source };
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(namespace_error)?;
    let netns_id = NetnsId::of_file(&netns).map_err(namespace_error)?;
    // setns(2) changes only the calling thread, so a short-lived thread of
    // its own does the binding.
    let bound = std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            ServiceError::Namespace {
                pid,
                source: e.into(),
            }
        })?;
        loopback_up().map_err(|source| ServiceError::Namespace { pid, source })?;
        bind_sockets()
    })
    .join()
    .map_err(|_| namespace_error(std::io::Error::other("the namespace thread panicked")))??;
    let mut proxy = serve(bound, names, cache, config, learner)?;
    proxy.netns_id = Some(netns_id);
    Ok(proxy)
}

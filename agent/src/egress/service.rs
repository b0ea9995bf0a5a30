//! Running one DNS proxy per agent: sockets on the loopback addresses, the
//! tasks that serve them, and the ports the kernel redirects to.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use agent_common::egress::DnsProxyPorts;
use thiserror::Error;
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use super::dns::{
    AgentNames, DnsError, Learner, ProxyConfig, serve_tcp, serve_udp, upstreams_from_resolv_conf,
};
use crate::config::DnsConfig;

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
    /// Upstream resolvers could not be determined.
    #[error(transparent)]
    Upstreams(#[from] DnsError),
}

/// One agent's running proxy; stopped when dropped.
pub struct AgentProxy {
    /// Where the kernel sends the agent's DNS traffic.
    pub ports: DnsProxyPorts,
    /// The agent's names, swapped in place on reload.
    pub names: Arc<RwLock<AgentNames>>,
    tasks: Vec<JoinHandle<()>>,
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

/// Opens the agent's sockets on 127.0.0.1 and ::1 (when the host has IPv6
/// loopback) and starts serving them.
pub async fn start_agent_proxy(
    names: AgentNames,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
) -> Result<AgentProxy, ServiceError> {
    let names = Arc::new(RwLock::new(names));
    let mut ports = DnsProxyPorts::default();
    let mut tasks = Vec::new();
    for (ip, required) in [
        (std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        (std::net::IpAddr::V6(Ipv6Addr::LOCALHOST), false),
    ] {
        let addr = SocketAddr::new(ip, 0);
        let bound = async {
            let udp = UdpSocket::bind(addr).await?;
            let tcp = TcpListener::bind(addr).await?;
            Ok::<_, std::io::Error>((udp, tcp))
        }
        .await;
        let (udp, tcp) = match bound {
            Ok(pair) => pair,
            Err(source) if required => return Err(ServiceError::Bind { addr, source }),
            Err(error) => {
                tracing::info!(%addr, %error, "no IPv6 loopback: IPv6 DNS of agents is denied");
                continue;
            }
        };
        let udp_port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
        let tcp_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        if ip.is_ipv4() {
            (ports.udp4, ports.tcp4) = (udp_port, tcp_port);
        } else {
            (ports.udp6, ports.tcp6) = (udp_port, tcp_port);
        }
        tasks.push(tokio::spawn(serve_udp(
            udp,
            names.clone(),
            config.clone(),
            learner.clone(),
        )));
        tasks.push(tokio::spawn(serve_tcp(
            tcp,
            names.clone(),
            config.clone(),
            learner.clone(),
        )));
    }
    Ok(AgentProxy {
        ports,
        names,
        tasks,
    })
}

//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::{net::TcpListener, sync::Semaphore};

use super::Metrics;

/// Where the endpoint listens unless configured otherwise: loopback only,
/// since the metrics name agents and their activity. 9464 is the port
/// Prometheus' registry of exporter ports gives the OpenTelemetry exporter,
/// the usual choice for an agent that has none of its own.
pub const DEFAULT_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// Content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; more wait in the kernel's accept queue. A
/// scraper and the kubelet's probes need a handful.
const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send a request's headers, so that idle or slow
/// clients cannot hold the connection slots.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest life of one connection, keep-alive included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the metrics endpoint.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, ...).
    #[error("cannot listen for metrics and health checks on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A bound, not yet serving, metrics endpoint. Binding first lets the caller
/// report a taken port before it starts anything else, and learn the port
/// when it asked for port 0.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves requests until the task running it is dropped or aborted.
    ///
    /// `/readyz` answers 200 once `ready` holds `true` (the daemon sets it
    /// when its policies are loaded and its programs attached) and 503
    /// before; `/healthz` answers 200 while the process runs.
    pub async fn run(self, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait instead of
                    // spinning, then try again.
                    tracing::warn!(%error, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = respond(&request, &metrics, &ready);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                // A connection past its time is simply dropped.
                if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    tracing::debug!(%peer, %error, "metrics connection ended with an error");
                }
                drop(slot);
            });
        }
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` on it until
/// the task is aborted; see [`MetricsServer::run`]. Only binding can fail.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<(), MetricsError> {
    MetricsServer::bind(addr).await?.run(metrics, ready).await;
    Ok(())
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                );
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            ),
        },
        "/readyz" if ready.load(Ordering::Acquire) => match metrics.audit_failure() {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => {
                let mut response = Response::new(Full::new(Bytes::from(format!(
                    "not ready: the audit log cannot be written ({reason}); records wait in \
                     the spool or are lost\n"
                ))));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        },
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: policies not loaded or programs not attached yet\n",
        ),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 exchange over a real loopback connection: the status
    /// code, the headers (lower-case names) and the body.
    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    ) {
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let server = MetricsServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = server.local_addr();
        let task = tokio::spawn(server.run(metrics.clone(), ready.clone()));
        (addr, metrics, ready, task)
    }

    #[tokio::test]
    async fn readyz_fails_until_ready_and_healthz_always_answers() {
        let (addr, _, ready, task) = start().await;
        let (status, _, body) = request(addr, "GET", "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        ready.store(true, Ordering::Release);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 200);
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        ready.store(false, Ordering::Release);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 503);
        task.abort();
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let (addr, metrics, _, task) = start().await;
        metrics.record_decision("demo", "egress", "denied");
        let (status, headers, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-type"),
            Some(OPENMETRICS_CONTENT_TYPE)
        );
        assert!(
            body.contains(
                "baton_decisions_total{agent=\"demo\",control=\"egress\",verdict=\"denied\"} 1\n"
            ),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        // HEAD: the same headers, no body.
        let (status, _, body) = request(addr, "HEAD", "/metrics").await;
        assert_eq!((status, body.as_str()), (200, ""));
        task.abort();
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let (addr, _, _, task) = start().await;
        assert_eq!(request(addr, "GET", "/").await.0, 404);
        assert_eq!(request(addr, "GET", "/metrics/x").await.0, 404);
        let (status, headers, _) = request(addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = serve(
            addr,
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot listen for metrics and health checks on {addr}: "
            )),
            "{message}"
        );
        assert!(
            matches!(error, MetricsError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
        );
    }

    #[tokio::test]
    async fn idle_connections_do_not_hold_up_requests() {
        let (addr, _, _, task) = start().await;
        // Every slot but one held by a client that never sends a request;
        // they are served concurrently, so the last slot still answers.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS - 1 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        drop(idle);
        task.abort();
    }
}

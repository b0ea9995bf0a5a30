//! Server side of the control socket.
//!
//! The socket is open to every local user (`baton exec` needs no
//! privilege), so everything a connection can make the daemon hold is
//! bounded: connections per user and in total (with a separate share for
//! root outside every agent, so an operator always gets through), the size
//! of one request, how long a request may take to arrive, how long a
//! connection may sit idle and how long a reply may wait for a client that
//! does not read.
//!
//! Callers are identified by the kernel, never by what they say: the
//! peer's credentials from `SO_PEERCRED`, a pidfd for the peer process
//! (`SO_PEERPIDFD` from Linux 6.5, `pidfd_open` before), and, for every
//! request, the kernel's identity record for that process (which agent it
//! belongs to). The pidfd makes sure the record read is that process's: a
//! pid checked while its pidfd says the process is alive cannot have been
//! handed to another process.

use std::{
    collections::HashMap,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Semaphore,
    time::Instant,
};

use super::{
    AuditReply, AuditRequest, Reply, Request,
    budget::{Limits, REFUSALS},
};
use crate::audit::stream::{AuditService, Filter};

/// Errors starting the control socket.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket could not be created.
    #[error("cannot create control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Why a connection was closed before its next request.
#[derive(Debug, Error)]
enum RequestError {
    /// A line longer than [`Limits::request_bytes`].
    #[error("request too large: the limit is {0} bytes per line")]
    TooLarge(usize),
    /// A request started but its newline did not come in time.
    #[error("request not completed within {0:?}")]
    Slow(Duration),
    /// No request within the idle timeout.
    #[error("connection idle for {0:?}")]
    Idle(Duration),
    /// Not UTF-8.
    #[error("request is not UTF-8")]
    Encoding,
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Who is calling: credentials from the kernel at connect time, and the
/// agent the calling process belongs to when it made this request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Process id (tgid) of the caller.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The agent id the kernel records for the calling process, `None` for
    /// a process in no agent. Read for each request: a process admitted
    /// while connected is an agent from then on.
    pub agent: Option<crate::ids::AgentId>,
}

impl Caller {
    /// Whether the caller may operate the daemon (breakers, anything that
    /// changes enforcement): root, and in no agent. An agent running as
    /// root is still an agent.
    pub fn is_operator(&self) -> bool {
        self.uid == 0 && self.agent.is_none()
    }
}

/// Handles requests; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, caller: Caller, request: Request) -> Reply;

    /// The agent id the kernel's identity record gives process `tgid`.
    /// Called without the daemon's locks, for every connection and request.
    fn agent_of(&self, _tgid: u32) -> Option<crate::ids::AgentId> {
        None
    }

    /// The audit trail's live head and stream, when this handler serves
    /// them ([`AuditRequest`]s are refused otherwise).
    fn audit(&self) -> Option<&AuditService> {
        None
    }
}

/// Binds the socket. Any user may connect: admission only ever restricts
/// the caller, so it needs no privilege.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bind_error)?;
    Ok(listener)
}

// ---------------------------------------------------------------- peers

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd for the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// The process at the other end of a connection.
struct Peer {
    pid: u32,
    uid: u32,
    gid: u32,
    /// The connecting process itself; `None` only where the kernel has no
    /// pidfds (before 5.3) or the process was already gone.
    pidfd: Option<OwnedFd>,
}

impl Peer {
    fn of(stream: &UnixStream) -> std::io::Result<Option<Self>> {
        let credentials = stream.peer_cred()?;
        let Some(pid) = credentials.pid().and_then(|p| u32::try_from(p).ok()) else {
            return Ok(None);
        };
        let pidfd = peer_pidfd(stream.as_raw_fd()).or_else(|| {
            // Before 6.5: the pid as SO_PEERCRED recorded it at connect.
            // A peer that exited before this point may have had its pid
            // reused; the window is between its connect and this accept.
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            // SAFETY: a non-negative return is a descriptor we now own.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        });
        Ok(Some(Self {
            pid,
            uid: credentials.uid(),
            gid: credentials.gid(),
            pidfd,
        }))
    }

    /// Whether the connecting process still exists (zombies included, as
    /// their pid is not free yet).
    fn alive(&self) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return false;
        };
        // SAFETY: signal 0 on a pidfd we own checks existence only.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }

    /// The caller for one request: the agent record is read, then the
    /// pidfd is checked, so the record is the connecting process's own.
    /// `None` when that process is gone.
    fn identify(&self, handler: &dyn Handler) -> Option<Caller> {
        let agent = handler.agent_of(self.pid);
        self.alive().then_some(Caller {
            pid: self.pid,
            uid: self.uid,
            gid: self.gid,
            agent,
        })
    }
}

fn peer_pidfd(socket: RawFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let result = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel installed a new descriptor for us.
    (result == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------- limits

/// Which share of the connection limits a connection counts against.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Share {
    /// Root in no agent.
    Operator,
    /// Everyone else, by uid.
    User(u32),
}

#[derive(Default)]
struct Counts {
    users_total: usize,
    operator: usize,
    by_uid: HashMap<u32, usize>,
}

/// Open connections per share; a [`Slot`] gives its place back on drop.
#[derive(Clone)]
struct Tally {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

struct Slot {
    tally: Tally,
    share: Share,
}

impl Tally {
    fn take(&self, share: Share) -> Result<Slot, String> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match share {
            Share::Operator => {
                if counts.operator >= self.limits.operator {
                    return Err(format!(
                        "too many connections from root: the limit is {}",
                        self.limits.operator
                    ));
                }
                counts.operator += 1;
            }
            Share::User(uid) => {
                let mine = counts.by_uid.get(&uid).copied().unwrap_or(0);
                if mine >= self.limits.per_user {
                    return Err(format!(
                        "too many connections from uid {uid}: the limit is {} per user",
                        self.limits.per_user
                    ));
                }
                if counts.users_total >= self.limits.connections {
                    return Err(format!(
                        "too many connections: the limit is {}",
                        self.limits.connections
                    ));
                }
                counts.users_total += 1;
                *counts.by_uid.entry(uid).or_default() += 1;
            }
        }
        Ok(Slot {
            tally: self.clone(),
            share,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.tally.counts.lock().unwrap_or_else(|e| e.into_inner());
        match self.share {
            Share::Operator => counts.operator -= 1,
            Share::User(uid) => {
                counts.users_total -= 1;
                if let Some(mine) = counts.by_uid.get_mut(&uid) {
                    *mine -= 1;
                    if *mine == 0 {
                        counts.by_uid.remove(&uid);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- serving

/// Serves connections with the default [`Limits`] until the task is
/// dropped.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    serve_with(listener, handler, Limits::default()).await;
}

/// Serves connections within `limits` until the task is dropped.
///
/// A connection is accepted only with a place for it: at most the users'
/// and the operator's connections plus [`REFUSALS`] being refused are open
/// at once, so the server never holds more descriptors than
/// [`control_descriptors`](super::budget::control_descriptors) says,
/// whatever clients do. Past that, new
/// connections wait in the listen backlog until a refusal is done (it never
/// waits) or a connection closes.
pub async fn serve_with(listener: UnixListener, handler: Arc<dyn Handler>, limits: Limits) {
    let tally = Tally {
        limits,
        counts: Arc::default(),
    };
    let places = Arc::new(Semaphore::new(
        limits.connections + limits.operator + REFUSALS,
    ));
    let mut failures = AcceptFailures::default();
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                // Accepted even over the limit, so the backlog never fills
                // and the refusal can say why.
                let handler = handler.clone();
                let tally = tally.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, handler, &tally).await {
                        tracing::debug!(%error, "control connection ended");
                    }
                    drop(place);
                });
            }
            Err(error) => {
                drop(place);
                // Out of descriptors (the process's or the system's), or
                // out of memory: the connection stays in the backlog. Wait
                // instead of spinning; the rest of the daemon runs on.
                let pause = failures.note(&error);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Failed `accept` calls, logged at most every ten seconds.
#[derive(Default)]
struct AcceptFailures {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl AcceptFailures {
    /// Records one failure; returns how long to wait before accepting
    /// again.
    fn note(&mut self, error: &std::io::Error) -> Duration {
        self.since_logged += 1;
        let due = self
            .logged_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                %error,
                failures = self.since_logged,
                "control socket accept failed"
            );
            self.since_logged = 0;
            self.logged_at = Some(Instant::now());
        }
        match error.raw_os_error() {
            // A peer gone before it was accepted: nothing to wait for.
            Some(libc::ECONNABORTED | libc::EINTR) => Duration::ZERO,
            _ => Duration::from_millis(100),
        }
    }
}

async fn connection(
    stream: UnixStream,
    handler: Arc<dyn Handler>,
    tally: &Tally,
) -> std::io::Result<()> {
    let limits = tally.limits;
    let Some(peer) = Peer::of(&stream)? else {
        return Ok(());
    };
    let share = if peer.uid == 0 && handler.agent_of(peer.pid).is_none() && peer.alive() {
        Share::Operator
    } else {
        Share::User(peer.uid)
    };
    let _slot = match tally.take(share) {
        Ok(slot) => slot,
        Err(message) => {
            tracing::debug!(
                pid = peer.pid,
                uid = peer.uid,
                message,
                "control connection refused"
            );
            // Best effort and never waiting: the refused client gets the
            // reason if its receive buffer has room.
            let _ = stream.try_write(to_line(&Reply::Error { message }).as_bytes());
            return Ok(());
        }
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_request(&mut reader, &limits).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(()),
            Err(error) => {
                let refusal = matches!(error, RequestError::TooLarge(_) | RequestError::Encoding);
                if refusal {
                    tracing::info!(pid = peer.pid, uid = peer.uid, %error, "control request refused");
                    let reply = to_line(&Reply::Error {
                        message: error.to_string(),
                    });
                    let _ = send(&mut write, reply.as_bytes(), &limits).await;
                }
                return Err(std::io::Error::other(error));
            }
        };
        let Some(caller) = peer.identify(handler.as_ref()) else {
            return Ok(());
        };
        let out = match serde_json::from_str::<Request>(&line) {
            Ok(request) => to_line(&handler.handle(caller, request)),
            Err(error) => match serde_json::from_str::<AuditRequest>(&line) {
                Ok(request) => match audit_request(handler.as_ref(), caller, request) {
                    Audit::Reply(reply) => to_line(&reply),
                    Audit::Stream(audit, filter, recent, follow) => {
                        return stream_events(
                            &audit,
                            &filter,
                            recent,
                            follow,
                            &mut reader,
                            &mut write,
                            &limits,
                        )
                        .await;
                    }
                },
                // Report the error against the primary protocol: a bad
                // `admit` is likelier than a bad audit request.
                Err(_) => to_line(&Reply::Error {
                    message: format!("bad request: {error}"),
                }),
            },
        };
        send(&mut write, out.as_bytes(), &limits).await?;
    }
}

/// Writes `bytes`, giving up after [`Limits::write`]: a client that does
/// not read cannot hold the connection (and its memory) forever.
async fn send(write: &mut OwnedWriteHalf, bytes: &[u8], limits: &Limits) -> std::io::Result<()> {
    tokio::time::timeout(limits.write, write.write_all(bytes))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("client did not read a reply within {:?}", limits.write),
            )
        })?
}

/// Reads one request line, within the size and time limits. `None` when
/// the client hung up between requests.
async fn read_request(
    reader: &mut (impl AsyncBufRead + Unpin),
    limits: &Limits,
) -> Result<Option<String>, RequestError> {
    let mut line = Vec::new();
    let mut deadline = Instant::now() + limits.idle;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, reader.fill_buf()).await {
            Ok(chunk) => chunk?,
            Err(_) if line.is_empty() => return Err(RequestError::Idle(limits.idle)),
            Err(_) => return Err(RequestError::Slow(limits.request)),
        };
        if chunk.is_empty() {
            // A last line without its newline is still a request.
            return if line.is_empty() {
                Ok(None)
            } else {
                String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| RequestError::Encoding)
            };
        }
        if line.is_empty() {
            deadline = deadline.min(Instant::now() + limits.request);
        }
        let (used, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let content = if complete { used - 1 } else { used };
        if line.len() + content > limits.request_bytes {
            return Err(RequestError::TooLarge(limits.request_bytes));
        }
        line.extend_from_slice(&chunk[..content]);
        reader.consume(used);
        if complete {
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| RequestError::Encoding);
        }
    }
}

fn to_line(reply: &impl serde::Serialize) -> String {
    let mut out = serde_json::to_string(reply).expect("replies always serialize");
    out.push('\n');
    out
}

/// What an [`AuditRequest`] gets: one reply, or a stream.
enum Audit {
    Reply(AuditReply),
    Stream(AuditService, Filter, usize, bool),
}

/// Answers an audit request. The stream is served to root and the
/// configured group only: the socket is open to every user for `baton
/// exec`, and records name other users' processes and command lines.
fn audit_request(handler: &dyn Handler, caller: Caller, request: AuditRequest) -> Audit {
    let Some(audit) = handler.audit() else {
        return Audit::Reply(AuditReply::Error {
            message: "this daemon does not serve the audit trail".into(),
        });
    };
    match request {
        AuditRequest::AuditHead => {
            let head = audit.hub().head();
            Audit::Reply(AuditReply::Head {
                seq: head.as_ref().map_or(0, |h| h.seq),
                hash: head.map(|h| h.hash).unwrap_or_default(),
            })
        }
        AuditRequest::Events { .. } if !audit.permits(caller.uid, caller.gid) => {
            tracing::info!(pid = caller.pid, uid = caller.uid, "audit stream refused");
            Audit::Reply(AuditReply::Error {
                message: audit.refusal(),
            })
        }
        AuditRequest::Events {
            agent,
            verdict,
            control,
            recent,
            follow,
        } => Audit::Stream(
            audit.clone(),
            Filter {
                agent,
                verdict,
                control,
            },
            recent,
            follow,
        ),
    }
}

/// Sends the recent records that pass `filter`, then (when `follow`) every
/// new one until the client hangs up. Records go out exactly as written.
async fn stream_events(
    audit: &AuditService,
    filter: &Filter,
    recent: usize,
    follow: bool,
    reader: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    limits: &Limits,
) -> std::io::Result<()> {
    // The backlog holds every kind of record; take enough to find `recent`
    // matching ones.
    let (past, mut live) = audit.hub().subscribe(usize::MAX);
    send(write, to_line(&AuditReply::Streaming).as_bytes(), limits).await?;
    let matching: Vec<_> = past.iter().filter(|p| filter.matches(p)).collect();
    for published in &matching[matching.len().saturating_sub(recent)..] {
        send(write, line_of(&published.line).as_bytes(), limits).await?;
    }
    if !follow {
        send(write, to_line(&AuditReply::End).as_bytes(), limits).await?;
        return Ok(());
    }
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(published) => {
                    if filter.matches(&published) {
                        send(write, line_of(&published.line).as_bytes(), limits).await?;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    send(write, to_line(&AuditReply::Lagged { skipped }).as_bytes(), limits).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Anything the client sends is read and dropped, never kept;
            // its hanging up ends the stream.
            read = reader.fill_buf() => match read {
                Ok(chunk) if !chunk.is_empty() => {
                    let used = chunk.len();
                    reader.consume(used);
                }
                Ok(_) | Err(_) => return Ok(()),
            },
        }
    }
}

fn line_of(record: &str) -> String {
    let mut out = String::with_capacity(record.len() + 1);
    out.push_str(record);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn accept_failures_wait_and_are_logged_sparingly() {
        let mut failures = AcceptFailures::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(failures.note(&emfile), Duration::from_millis(100));
        let logged = failures.logged_at;
        assert!(logged.is_some());
        let enfile = std::io::Error::from_raw_os_error(libc::ENFILE);
        assert_eq!(failures.note(&enfile), Duration::from_millis(100));
        assert_eq!(failures.logged_at, logged, "not logged again within 10 s");
        assert_eq!(failures.since_logged, 1, "but counted for the next line");
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(failures.note(&aborted), Duration::ZERO);
    }

    #[test]
    fn each_user_gets_a_share_and_root_has_its_own() {
        let limits = Limits {
            connections: 3,
            per_user: 2,
            operator: 1,
            ..Limits::default()
        };
        let tally = Tally {
            limits,
            counts: Arc::default(),
        };
        let nobody: Vec<Slot> = (0..2)
            .map(|_| tally.take(Share::User(65534)).unwrap())
            .collect();
        let refused = tally.take(Share::User(65534)).err().unwrap();
        assert!(refused.contains("uid 65534"), "{refused}");
        let other = tally.take(Share::User(1000)).unwrap();
        assert!(
            tally.take(Share::User(1001)).is_err(),
            "the total is reached"
        );
        let operator = tally.take(Share::Operator).expect("root's own share");
        assert!(tally.take(Share::Operator).is_err());
        drop((nobody, other, operator));
        let counts = tally.counts.lock().unwrap();
        assert_eq!((counts.users_total, counts.operator), (0, 0));
        assert!(counts.by_uid.is_empty(), "every slot given back");
    }

    #[test]
    fn requests_are_read_within_the_size_limit() {
        let limits = Limits {
            request_bytes: 8,
            ..Limits::default()
        };
        runtime().block_on(async {
            let mut input: &[u8] = b"{\"a\":1}\nnext";
            assert_eq!(
                read_request(&mut input, &limits).await.unwrap().as_deref(),
                Some("{\"a\":1}")
            );
            assert_eq!(
                read_request(&mut input, &limits).await.unwrap().as_deref(),
                Some("next"),
                "a last line without its newline"
            );
            assert!(read_request(&mut input, &limits).await.unwrap().is_none());
            let mut long: &[u8] = b"123456789\n";
            let error = read_request(&mut long, &limits).await.unwrap_err();
            assert!(matches!(error, RequestError::TooLarge(8)), "{error}");
            let mut exact: &[u8] = b"12345678\n";
            assert!(read_request(&mut exact, &limits).await.is_ok());
        });
    }

    #[test]
    fn silent_and_slow_clients_are_closed() {
        let limits = Limits {
            idle: Duration::from_millis(50),
            request: Duration::from_millis(50),
            ..Limits::default()
        };
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(64);
            let mut reader = BufReader::new(server);
            let error = read_request(&mut reader, &limits).await.unwrap_err();
            assert!(matches!(error, RequestError::Idle(_)), "{error}");
            let (mut client, server) = (client, reader.into_inner());
            client.write_all(b"{\"op\":").await.unwrap();
            let mut reader = BufReader::new(server);
            let error = read_request(&mut reader, &limits).await.unwrap_err();
            assert!(matches!(error, RequestError::Slow(_)), "{error}");
        });
    }
}

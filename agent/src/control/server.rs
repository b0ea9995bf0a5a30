//! Server side of the control socket.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{AuditReply, AuditRequest, Reply, Request};
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

/// Who is calling, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Process id (tgid) of the caller.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

/// Handles requests; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, caller: Caller, request: Request) -> Reply;

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

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, handler).await {
                        tracing::debug!(%error, "control connection ended");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let credentials = stream.peer_cred()?;
    let Some(pid) = credentials.pid() else {
        return Ok(());
    };
    let caller = Caller {
        pid: pid as u32,
        uid: credentials.uid(),
        gid: credentials.gid(),
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let out = match serde_json::from_str::<Request>(&line) {
            Ok(request) => to_line(&handler.handle(caller, request)),
            Err(error) => match serde_json::from_str::<AuditRequest>(&line) {
                Ok(request) => match audit_request(handler.as_ref(), caller, request) {
                    Audit::Reply(reply) => to_line(&reply),
                    Audit::Stream(audit, filter, recent, follow) => {
                        return stream_events(
                            &audit, &filter, recent, follow, &mut lines, &mut write,
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
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
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
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    // The backlog holds every kind of record; take enough to find `recent`
    // matching ones.
    let (past, mut live) = audit.hub().subscribe(usize::MAX);
    write
        .write_all(to_line(&AuditReply::Streaming).as_bytes())
        .await?;
    let matching: Vec<_> = past.iter().filter(|p| filter.matches(p)).collect();
    for published in &matching[matching.len().saturating_sub(recent)..] {
        write.write_all(published.line.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
    if !follow {
        write
            .write_all(to_line(&AuditReply::End).as_bytes())
            .await?;
        return Ok(());
    }
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(published) => {
                    if filter.matches(&published) {
                        let mut out = Vec::with_capacity(published.line.len() + 1);
                        out.extend_from_slice(published.line.as_bytes());
                        out.push(b'\n');
                        write.write_all(&out).await?;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    write.write_all(to_line(&AuditReply::Lagged { skipped }).as_bytes()).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Anything the client sends is ignored; its hanging up ends
            // the stream.
            line = lines.next_line() => match line {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Ok(()),
            },
        }
    }
}

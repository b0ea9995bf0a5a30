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

use super::{Reply, Request};

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
}

/// Handles requests; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, caller: Caller, request: Request) -> Reply;
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
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handler.handle(caller, request),
            Err(error) => Reply::Error {
                message: format!("bad request: {error}"),
            },
        };
        let mut out = serde_json::to_string(&reply).expect("replies always serialize");
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

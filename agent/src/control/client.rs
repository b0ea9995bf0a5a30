//! Client side of the control socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use super::{Reply, Request};

/// Errors talking to the daemon.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon is not listening.
    #[error("cannot reach the Baton daemon at {path}: {source} (is `baton run` running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The daemon sent something unreadable.
    #[error("control socket {path}: unreadable reply {reply:?}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// The reply.
        reply: String,
    },
}

/// How long a client waits for the daemon's reply. A daemon that is still
/// loading (the verifier can take most of a minute on an old kernel)
/// answers once it has; one that never answers must not hang `baton exec`
/// or `status` for good.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends one request and waits for its reply, at most [`REPLY_TIMEOUT`].
pub fn call(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |source: std::io::Error| {
        let source = if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the daemon did not answer within {} s (still loading, or stuck: see its log)",
                    REPLY_TIMEOUT.as_secs()
                ),
            )
        } else {
            source
        };
        ClientError::Io {
            path: path.to_path_buf(),
            source,
        }
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests always serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|_| ClientError::Protocol {
        path: path.to_path_buf(),
        reply,
    })
}

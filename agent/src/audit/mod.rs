//! The audit trail: kernel events decoded, enriched from procfs, redacted
//! and written as one hash-chained JSON line each, with signed checkpoints,
//! rotation, a live stream and forwarders.
//!
//! - [`record`]: the record (`baton.audit/v1`) and its constructors.
//! - [`enrich`]: procfs enrichment (exe, command line, cgroup, ancestors).
//! - [`redact`]: secret removal before anything is written.
//! - [`trail`]: [`AuditTrail`], the writer: chain, rotation, checkpoints.
//! - [`keys`]: the ed25519 checkpoint key (a module of its own, shared with
//!   policy bundles).
//! - [`verify`]: offline verification.
//! - [`stream`]: the live [`Hub`](stream::Hub) and the control-socket side.
//! - [`forward`]: syslog and HTTP forwarders reading the durable log.
//! - [`config`]: the `audit:` configuration section.

pub mod chain;
pub mod config;
pub mod enrich;
pub mod files;
pub mod forward;
pub mod record;
pub mod redact;
pub mod sink;
pub mod stream;
pub mod trail;
pub mod verify;

use std::path::PathBuf;

pub use chain::Head;
pub use config::AuditConfig;
pub use enrich::ProcessCache;
pub use record::{AuditRecord, DecodeError, SCHEMA};
pub use sink::FileSink;
use thiserror::Error;
pub use trail::AuditTrail;

use crate::keys;

/// Errors opening or writing the audit trail.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The log's directory or file could not be created or opened.
    #[error("cannot open audit log {path}: {source}")]
    Open {
        /// The log file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A record could not be written.
    #[error("cannot write audit log {path}: {source}")]
    Write {
        /// The log file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The active file could not be rotated.
    #[error("cannot rotate audit log {path} to {target}: {source}")]
    Rotate {
        /// The log file.
        path: PathBuf,
        /// The name it was to get.
        target: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The signing key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A setting of the `audit:` section is invalid.
    #[error("{field}: {message}")]
    Config {
        /// The setting, such as `audit.redaction.patterns[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests;

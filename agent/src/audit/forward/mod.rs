//! Forwarders: copies of the log sent to a SIEM, read from the durable log
//! (never from memory), in sequence order, at least once.
//!
//! Each forwarder keeps a cursor file (`STATE_DIR/forwarders/NAME.cursor`)
//! with the sequence number of the last record the receiver accepted. It
//! moves only after a delivery succeeded, so a receiver that is down, slow
//! or failing delays delivery and loses nothing; after a crash or restart
//! the forwarder resends from the cursor, and receivers de-duplicate by
//! `seq`. Checkpoint records are forwarded like every other record, so a
//! signed head lives off the host too.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    config::{AuditConfig, ForwarderConfig, StartAt},
    files::{self, FollowedRecord, LogFollower},
    stream::Hub,
};

pub mod http;
pub mod syslog;

/// Errors starting a forwarder.
#[derive(Debug, Error)]
pub enum ForwardError {
    /// The cursor could not be read, written or locked.
    #[error("forwarder {name}: cursor {path}: {source}")]
    Cursor {
        /// Forwarder name.
        name: String,
        /// Cursor file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another process runs the same forwarder.
    #[error("forwarder {name} is already running (its cursor {path} is locked)")]
    Busy {
        /// Forwarder name.
        name: String,
        /// Lock file.
        path: PathBuf,
    },
    /// The destination could not be set up.
    #[error("forwarder {name}: {message}")]
    Destination {
        /// Forwarder name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The log could not be read.
    #[error("forwarder {name}: cannot read the audit log {path}: {source}")]
    Log {
        /// Forwarder name.
        name: String,
        /// Log file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Where records go.
pub trait Destination: Send {
    /// Records per delivery at most.
    fn batch_size(&self) -> usize;
    /// Delivers `batch` (in sequence order), or says why not; a failed
    /// batch is retried whole.
    fn deliver(&mut self, batch: &[FollowedRecord]) -> Result<(), String>;
}

/// The cursor file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct CursorState {
    /// Last record delivered.
    seq: u64,
}

/// A forwarder's position, locked against a second process.
struct Cursor {
    name: String,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Cursor {
    fn open(state_dir: &Path, name: &str) -> Result<(Self, Option<u64>), ForwardError> {
        let dir = state_dir.join("forwarders");
        let path = dir.join(format!("{name}.cursor"));
        let lock_path = dir.join(format!("{name}.lock"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ForwardError::Cursor {
                name: name.to_string(),
                path,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            ForwardError::Busy {
                name: name.to_string(),
                path: lock_path.clone(),
            }
        })?;
        let seq = match std::fs::read_to_string(&path) {
            Ok(text) => Some(
                serde_json::from_str::<CursorState>(&text)
                    .map_err(|e| {
                        io(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                    })?
                    .seq,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        Ok((
            Self {
                name: name.to_string(),
                path,
                _lock: lock,
            },
            seq,
        ))
    }

    /// Replaces the cursor atomically: a crash leaves the old or the new
    /// one, never half of either.
    fn save(&self, seq: u64) -> Result<(), ForwardError> {
        let io = |source| ForwardError::Cursor {
            name: self.name.clone(),
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("cursor.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let text = serde_json::to_string(&CursorState { seq }).expect("cursors serialize");
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// Sequence number of the last record in `log` now.
fn current_last_seq(log: &Path) -> std::io::Result<u64> {
    for path in files::log_files(log)?.iter().rev() {
        if let Some(next) = files::tail(path)?.next_seq {
            return Ok(next - 1);
        }
    }
    Ok(0)
}

/// Builds the destination a forwarder names.
pub fn destination(config: &ForwarderConfig) -> Result<Box<dyn Destination>, ForwardError> {
    let error = |message: String| ForwardError::Destination {
        name: config.name.clone(),
        message,
    };
    match (&config.http, &config.syslog) {
        (Some(http), None) => Ok(Box::new(http::HttpDestination::new(http).map_err(error)?)),
        (None, Some(syslog)) => Ok(Box::new(
            syslog::SyslogDestination::new(syslog).map_err(error)?,
        )),
        _ => Err(error("give exactly one of `http` and `syslog`".into())),
    }
}

/// One forwarder's loop state.
struct Runner {
    name: String,
    log: PathBuf,
    cursor: Cursor,
    follower: LogFollower,
    destination: Box<dyn Destination>,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Runner {
    fn new(
        log: &Path,
        state_dir: &Path,
        config: &ForwarderConfig,
        destination: Box<dyn Destination>,
    ) -> Result<Self, ForwardError> {
        let (cursor, seq) = Cursor::open(state_dir, &config.name)?;
        let log_error = |source| ForwardError::Log {
            name: config.name.clone(),
            path: log.to_path_buf(),
            source,
        };
        let last = current_last_seq(log).map_err(log_error)?;
        let start = match (seq, config.start_at) {
            // A log that restarted from seq 1 (replaced by hand) would
            // otherwise be skipped until it grew past the old cursor.
            (Some(seq), _) if seq > last => {
                tracing::warn!(
                    forwarder = config.name,
                    cursor = seq,
                    last,
                    "the cursor is past the end of the log (was the log replaced?); \
                     forwarding it from the beginning"
                );
                0
            }
            (Some(seq), _) => seq,
            (None, StartAt::Beginning) => 0,
            (None, StartAt::End) => last,
        };
        if seq != Some(start) {
            // Pin the starting point, so that a restart before the first
            // delivery does not skip what was written meanwhile.
            cursor.save(start)?;
        }
        Ok(Self {
            name: config.name.clone(),
            log: log.to_path_buf(),
            cursor,
            follower: LogFollower::new(log, start),
            destination,
            min_backoff: Duration::from_millis(config.min_backoff_ms.unwrap_or(200)),
            max_backoff: Duration::from_millis(config.max_backoff_ms.unwrap_or(30_000)),
        })
    }

    /// The next batch from the log; empty when there is nothing new.
    fn batch(&mut self) -> Vec<FollowedRecord> {
        let mut batch = Vec::new();
        while batch.len() < self.destination.batch_size() {
            match self.follower.next_record() {
                Ok(Some(record)) => batch.push(record),
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(forwarder = self.name, log = %self.log.display(), %error, "cannot read the audit log");
                    break;
                }
            }
        }
        batch
    }

    /// Delivers `batch`, retrying with backoff until it succeeds or
    /// `give_up` says so; moves the cursor after success. Returns whether
    /// delivered.
    fn deliver(&mut self, batch: &[FollowedRecord], give_up: &dyn Fn() -> bool) -> bool {
        let mut backoff = self.min_backoff;
        let mut failures = 0u64;
        loop {
            match self.destination.deliver(batch) {
                Ok(()) => {
                    let last = batch.last().map_or(0, |r| r.seq);
                    if failures > 0 {
                        tracing::info!(forwarder = self.name, failures, "delivering again");
                    }
                    if let Err(error) = self.cursor.save(last) {
                        // The receiver has the records; without the cursor
                        // they are sent again after a restart, which
                        // at-least-once allows.
                        tracing::error!(%error, "cannot save the forwarder cursor");
                    }
                    return true;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(
                        forwarder = self.name,
                        first = batch.first().map_or(0, |r| r.seq),
                        records = batch.len(),
                        retry_in = ?backoff,
                        %error,
                        "delivery failed; will retry"
                    );
                    if !sleep_unless(give_up, backoff) {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

/// Sleeps `duration` in short steps; false when `give_up` said so meanwhile.
fn sleep_unless(give_up: &dyn Fn() -> bool, duration: Duration) -> bool {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if give_up() {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !give_up()
}

/// Running forwarders; stopped (and joined) on [`Forwarders::stop`] or drop.
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwarders {
    /// Starts every forwarder of `config` on `log`, each on its own thread.
    /// With `hub`, they wake as soon as a record is written; without, they
    /// poll the log.
    pub fn start(log: &Path, config: &AuditConfig, hub: Option<Hub>) -> Result<Self, ForwardError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut runners = Vec::new();
        for forwarder in &config.forwarders {
            let destination = destination(forwarder)?;
            runners.push(Runner::new(log, &config.state_dir, forwarder, destination)?);
        }
        let threads = runners
            .into_iter()
            .map(|mut runner| {
                let stop = stop.clone();
                let hub = hub.clone();
                std::thread::Builder::new()
                    .name(format!("forward-{}", runner.name))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let batch = runner.batch();
                            if batch.is_empty() {
                                let waited = match &hub {
                                    Some(hub) => hub.wait_past(
                                        runner.follower.last_seq(),
                                        Duration::from_millis(500),
                                    ),
                                    None => false,
                                };
                                // The head may be ahead of what the file
                                // shows for an instant (a line mid-write).
                                std::thread::sleep(if waited {
                                    Duration::from_millis(5)
                                } else if hub.is_some() {
                                    Duration::ZERO
                                } else {
                                    Duration::from_millis(200)
                                });
                                continue;
                            }
                            if !runner.deliver(&batch, &|| stop.load(Ordering::Relaxed)) {
                                return;
                            }
                        }
                    })
                    .expect("spawn a forwarder thread")
            })
            .collect();
        Ok(Self { stop, threads })
    }

    /// How many forwarders run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Stops every forwarder after its current attempt and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Delivers every record of `log` after `forwarder`'s cursor that exists
/// now, then returns how many were sent. Retries failed deliveries until
/// `deadline`, after which it gives up with what is left undelivered.
pub fn deliver_pending(
    log: &Path,
    state_dir: &Path,
    forwarder: &ForwarderConfig,
    deadline: Instant,
) -> Result<u64, ForwardError> {
    let destination = destination(forwarder)?;
    let mut runner = Runner::new(log, state_dir, forwarder, destination)?;
    let mut sent = 0;
    loop {
        let batch = runner.batch();
        if batch.is_empty() {
            return Ok(sent);
        }
        if !runner.deliver(&batch, &|| Instant::now() >= deadline) {
            return Err(ForwardError::Destination {
                name: forwarder.name.clone(),
                message: format!(
                    "gave up at the deadline with records from seq {} on undelivered",
                    batch[0].seq
                ),
            });
        }
        sent += batch.len() as u64;
    }
}

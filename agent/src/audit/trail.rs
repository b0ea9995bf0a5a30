//! The audit trail: a hash-chained, rotated, signed JSON-lines log.
//!
//! Every record is redacted, numbered, linked to the previous line by its
//! SHA-256, appended to the file and published to the live [`Hub`]. Every
//! so many records or seconds a checkpoint record signs the chain head with
//! the host's ed25519 key. The chain continues across rotated files and
//! across restarts.
//!
//! Records are appended one `write(2)` each, except inside a batch (the
//! daemon drains the kernel's queue in batches), where whole lines are
//! gathered and written together at the end of the batch or every
//! [`BATCH_BYTES`]: a daemon killed mid-batch loses at most that batch's
//! unwritten lines, never part of the chain already written. Checkpoints
//! reach the disk through `fdatasync` on a thread of their own, so the
//! writer never waits for the disk.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ed25519_dalek::SigningKey;

use super::{
    AuditError,
    chain::{GENESIS, Head, line_hash},
    config::{AuditConfig, CheckpointConfig, RotationConfig},
    files::{self, rotated_files, rotated_name},
    keys,
    record::{AuditCheckpoint, AuditRecord},
    redact::Redactor,
    stream::{Hub, Published},
};

/// Bytes gathered in a batch before they are written.
pub const BATCH_BYTES: usize = 256 * 1024;

/// A line gathered in a batch, published once it is in the file.
struct Gathered {
    published: Published,
    /// Where its line (newline included) ends in the batch buffer.
    end: usize,
    hash: String,
}

/// What the chain looked like after the last line that reached the file.
#[derive(Clone)]
struct Written {
    next_seq: u64,
    head: String,
    size: u64,
}

/// Syncs the log to disk off the writer's path: requests made while a sync
/// runs are served by the next one.
struct Syncer {
    shared: Arc<(Mutex<SyncRequest>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SyncRequest {
    file: Option<Arc<File>>,
    stop: bool,
}

impl Syncer {
    fn start(log: PathBuf) -> Self {
        let shared = Arc::new((Mutex::new(SyncRequest::default()), Condvar::new()));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || {
                let (lock, ready) = &*worker;
                loop {
                    let file = {
                        let mut request = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while request.file.is_none() && !request.stop {
                            request = ready.wait(request).unwrap_or_else(|e| e.into_inner());
                        }
                        match request.file.take() {
                            Some(file) => file,
                            None => return,
                        }
                    };
                    if let Err(error) = file.sync_data() {
                        tracing::error!(log = %log.display(), %error, "cannot sync the audit log");
                    }
                }
            })
            .ok();
        Self { shared, thread }
    }

    /// Asks for `file` to be synced; false if no thread could be started.
    fn request(&self, file: &Arc<File>) -> bool {
        if self.thread.is_none() {
            return false;
        }
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).file = Some(file.clone());
        ready.notify_one();
        true
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends records to a hash-chained log.
pub struct AuditTrail {
    log: PathBuf,
    file: Arc<File>,
    /// Bytes in the active file.
    size: u64,
    /// Sequence number the active file started at; names it on rotation.
    file_first_seq: u64,
    /// When the active file's first record was written.
    file_started: Option<SystemTime>,
    next_seq: u64,
    /// Hash of the last line written (or [`GENESIS`]).
    head: String,
    /// A write failed after part of a line reached the file: the next
    /// write starts a new file, so the fragment stays a final line.
    damaged: bool,
    rotation: RotationConfig,
    checkpoints: CheckpointConfig,
    /// Records (checkpoints aside) since the last checkpoint.
    unsigned: u64,
    /// When the oldest of those was written.
    unsigned_since: Option<Instant>,
    key: SigningKey,
    public_key: String,
    redactor: Redactor,
    hub: Hub,
    host: String,
    line: Vec<u8>,
    /// Whether lines are gathered instead of written one by one.
    batching: bool,
    /// Lines gathered and not yet written.
    batch: Vec<u8>,
    gathered: Vec<Gathered>,
    /// The chain as it is in the file (behind `head` by the batch).
    written: Written,
    syncer: Syncer,
}

impl AuditTrail {
    /// Opens (creating if needed: directory 0750, files 0600) the log whose
    /// active file is `log`, loads or generates the signing key, and
    /// resumes the chain from the last complete record of the newest file.
    ///
    /// A final line left incomplete by a crash is kept as it is: the
    /// active file is rotated so that the fragment stays the last line of
    /// its file, and a record saying so starts the new file.
    pub fn open(log: &Path, config: &AuditConfig) -> Result<Self, AuditError> {
        config.validate()?;
        let open_error = |source| AuditError::Open {
            path: log.to_path_buf(),
            source,
        };
        if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| {
                    // "File exists" would puzzle: say what is in the way.
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        open_error(std::io::Error::other(format!(
                            "{} is not a directory",
                            dir.display()
                        )))
                    } else {
                        open_error(e)
                    }
                })?;
        }
        let file = open_append(log).map_err(open_error)?;
        let tail = files::tail(log).map_err(open_error)?;
        let (mut next_seq, mut head) = (1, GENESIS.to_string());
        match (&tail.next_seq, &tail.hash) {
            (Some(seq), Some(hash)) => (next_seq, head) = (*seq, hash.clone()),
            _ => {
                for (_, path) in rotated_files(log).map_err(open_error)?.iter().rev() {
                    let older = files::tail(path).map_err(open_error)?;
                    if let (Some(seq), Some(hash)) = (older.next_seq, older.hash) {
                        (next_seq, head) = (seq, hash);
                        break;
                    }
                }
                // Complete lines that are not records still chain on.
                if let Some(hash) = &tail.hash {
                    head = hash.clone();
                }
            }
        }
        let key = keys::load_or_generate(&config.key_file)?;
        let public_key = hex::encode(key.verifying_key().as_bytes());
        let redactor = Redactor::new(
            config.redaction.defaults,
            &config.redaction.pattern_sources(),
        )
        .map_err(|e| AuditError::Config {
            field: format!("audit.redaction.patterns[{}]", e.index),
            message: e.message,
        })?;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hub = Hub::new();
        if tail.hash.is_some() || next_seq > 1 {
            hub.set_head(Head {
                seq: next_seq - 1,
                hash: head.clone(),
            });
        }
        let mut trail = Self {
            log: log.to_path_buf(),
            file: Arc::new(file),
            written: Written {
                next_seq,
                head: head.clone(),
                size: tail.size,
            },
            syncer: Syncer::start(log.to_path_buf()),
            batching: false,
            batch: Vec::new(),
            gathered: Vec::new(),
            size: tail.size,
            file_first_seq: tail.first_seq.unwrap_or(next_seq),
            file_started: if tail.size > 0 {
                first_record_time(log).or(Some(SystemTime::now()))
            } else {
                None
            },
            next_seq,
            head,
            damaged: tail.torn,
            rotation: config.rotation.clone(),
            checkpoints: config.checkpoints.clone(),
            unsigned: 0,
            unsigned_since: None,
            key,
            public_key,
            redactor,
            hub,
            host,
            line: Vec::with_capacity(4096),
        };
        if tail.torn {
            let last = trail.next_seq - 1;
            let mut record = AuditRecord::lifecycle(
                &trail.host,
                "audit",
                format!(
                    "{} ended with an incomplete record (the writer stopped mid-write); \
                     the chain resumes after seq {last}",
                    log.display()
                ),
            );
            trail.write(&mut record)?;
        }
        Ok(trail)
    }

    /// Redacts `record`, gives it its sequence number and the previous
    /// record's hash, appends it as one line and publishes it; writes a
    /// checkpoint after it when one is due.
    pub fn write(&mut self, record: &mut AuditRecord) -> Result<(), AuditError> {
        self.redactor.redact_record(record);
        self.append(record)?;
        self.unsigned += 1;
        let now = Instant::now();
        let since = *self.unsigned_since.get_or_insert(now);
        let by_count =
            self.checkpoints.every_records > 0 && self.unsigned >= self.checkpoints.every_records;
        let by_time = self.checkpoints.every_seconds > 0
            && now.duration_since(since) >= Duration::from_secs(self.checkpoints.every_seconds);
        if by_count || by_time {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Gathers the records written from now on, until [`end_batch`]
    /// writes them (or [`BATCH_BYTES`] of them are waiting).
    ///
    /// [`end_batch`]: AuditTrail::end_batch
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Writes what the batch gathered and goes back to one write a record.
    pub fn end_batch(&mut self) -> Result<(), AuditError> {
        self.batching = false;
        self.flush()
    }

    /// Writes a checkpoint when records have waited `everySeconds` for one.
    /// Call it about once a second: without it, a quiet log's last records
    /// wait for the next write to be signed.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        let due = self.checkpoints.every_seconds > 0
            && self.unsigned_since.is_some_and(|since| {
                since.elapsed() >= Duration::from_secs(self.checkpoints.every_seconds)
            });
        if due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Signs the current head in a checkpoint record, unless nothing was
    /// written since the last one, and syncs the file to disk.
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        if self.unsigned == 0 {
            return Ok(());
        }
        let seq = self.next_seq - 1;
        let signature = keys::sign_checkpoint(&self.key, seq, &self.head);
        let mut record = AuditRecord::signed_checkpoint(
            &self.host,
            AuditCheckpoint {
                seq,
                hash: self.head.clone(),
                key: self.public_key.clone(),
                signature,
            },
        );
        self.append(&mut record)?;
        self.flush()?;
        self.unsigned = 0;
        self.unsigned_since = None;
        if self.syncer.request(&self.file) {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| AuditError::Write {
            path: self.log.clone(),
            source,
        })
    }

    /// The chain head: the last record written.
    pub fn head(&self) -> Option<Head> {
        (self.next_seq > 1).then(|| Head {
            seq: self.next_seq - 1,
            hash: self.head.clone(),
        })
    }

    /// The live stream every written record is published to.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.log
    }

    /// The public half of the signing key, hex.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    fn append(&mut self, record: &mut AuditRecord) -> Result<(), AuditError> {
        record.seq = self.next_seq;
        record.prev_hash.clone_from(&self.head);
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).expect("audit records always serialize");
        let hash = line_hash(&self.line);
        self.line.push(b'\n');
        if self.rotation_due(self.line.len() as u64) {
            self.flush()?;
            self.rotate()?;
        }
        if self.size == 0 {
            self.file_first_seq = self.next_seq;
            self.file_started = Some(SystemTime::now());
        }
        self.batch.extend_from_slice(&self.line);
        let line = std::str::from_utf8(&self.line[..self.line.len() - 1])
            .expect("serde_json writes UTF-8");
        self.gathered.push(Gathered {
            published: Published {
                seq: record.seq,
                agent: record.agent.clone(),
                verdict: record.verdict,
                control: record.control,
                line: line.to_string(),
            },
            end: self.batch.len(),
            hash: hash.clone(),
        });
        self.size += self.line.len() as u64;
        self.head = hash;
        self.next_seq += 1;
        if !self.batching || self.batch.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the gathered lines with one `write(2)` and publishes them.
    /// On an error, the lines that did reach the file stay in the chain and
    /// the others are lost (and the error says so); a line cut short stays
    /// the final line of this file, and the next write starts a new one.
    fn flush(&mut self) -> Result<(), AuditError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = (&*self.file).write_all(&self.batch);
        let reached = match &result {
            Ok(()) => self.batch.len(),
            Err(_) => {
                let actual = self.file.metadata().map_or(u64::MAX, |m| m.len());
                usize::try_from(actual.saturating_sub(self.written.size))
                    .unwrap_or(usize::MAX)
                    .min(self.batch.len())
            }
        };
        let mut start = 0;
        for gathered in self.gathered.drain(..) {
            if gathered.end > reached {
                break;
            }
            self.written.next_seq = gathered.published.seq + 1;
            self.written.head.clone_from(&gathered.hash);
            self.written.size += (gathered.end - start) as u64;
            start = gathered.end;
            self.hub.publish_written(gathered.published, &gathered.hash);
        }
        self.batch.clear();
        match result {
            Ok(()) => Ok(()),
            Err(source) => {
                // The chain continues from the last line in the file.
                if reached > start {
                    self.damaged = true;
                }
                self.next_seq = self.written.next_seq;
                self.head.clone_from(&self.written.head);
                self.size = self.written.size + (reached - start) as u64;
                self.written.size = self.size;
                Err(AuditError::Write {
                    path: self.log.clone(),
                    source,
                })
            }
        }
    }

    fn rotation_due(&self, adding: u64) -> bool {
        if self.size == 0 {
            return false;
        }
        if self.damaged {
            return true;
        }
        let by_size = self.rotation.max_bytes > 0 && self.size + adding > self.rotation.max_bytes;
        let by_age = self.rotation.max_age_seconds > 0
            && self.file_started.is_some_and(|started| {
                started.elapsed().unwrap_or_default()
                    >= Duration::from_secs(self.rotation.max_age_seconds)
            });
        by_size || by_age
    }

    /// Renames the active file to `NAME.FIRST_SEQ` and starts a new one;
    /// deletes the oldest rotated files beyond `keepFiles`.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let target = rotated_name(&self.log, self.file_first_seq);
        std::fs::rename(&self.log, &target).map_err(|source| AuditError::Rotate {
            path: self.log.clone(),
            target: target.clone(),
            source,
        })?;
        self.file = Arc::new(open_append(&self.log).map_err(|source| AuditError::Open {
            path: self.log.clone(),
            source,
        })?);
        // The rename and the new file are directory entries: sync them so a
        // power cut cannot lose a rotated file.
        if let Some(dir) = self.log.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.size = 0;
        self.written.size = 0;
        self.damaged = false;
        self.file_started = None;
        self.file_first_seq = self.next_seq;
        if self.rotation.keep_files > 0
            && let Ok(rotated) = rotated_files(&self.log)
            && rotated.len() > self.rotation.keep_files
        {
            for (_, old) in &rotated[..rotated.len() - self.rotation.keep_files] {
                if let Err(error) = std::fs::remove_file(old) {
                    tracing::warn!(file = %old.display(), %error, "cannot delete an old audit log");
                }
            }
        }
        Ok(())
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        // A clean stop signs everything written, so nothing is left for an
        // offline verifier to take on trust.
        if let Err(error) = self.checkpoint() {
            tracing::error!(%error, "cannot write the closing audit checkpoint");
        }
        if let Err(error) = self.file.sync_data() {
            tracing::error!(%error, "cannot sync the audit log");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Time of the first record of `path`, for rotation by age after a restart.
fn first_record_time(path: &Path) -> Option<SystemTime> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut line)
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Time {
        time: String,
    }
    let time: Time = serde_json::from_str(&line).ok()?;
    humantime::parse_rfc3339(&time.time).ok()
}

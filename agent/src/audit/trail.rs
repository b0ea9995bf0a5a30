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
//! [`BATCH_BYTES`], and a checkpoint that falls due waits for the batch's
//! end. A daemon killed mid-batch loses that batch's unwritten lines,
//! never part of the chain already written; the event drain gives events
//! back to the kernel only after their batch is written, so the next
//! daemon writes them again (see [`crate::kernel::ring`]). Checkpoints
//! reach the disk through `fdatasync` on a thread of their own, so the
//! writer never waits for the disk.
//!
//! A line the file does not take (a full disk) is never given up and its
//! number never handed out again: it waits in a bounded spool (memory,
//! then `audit.spool.directory`) and is written in order once the file
//! takes lines again. What the spool cannot hold is lost, counted, and
//! named in the chain by a gap record in its place.

use std::{
    collections::VecDeque,
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

/// A line chained and waiting to reach the file.
struct Pending {
    published: Published,
    /// The line, newline included.
    line: Vec<u8>,
    hash: String,
}

/// Records left out of the chain because the spool was full: their
/// sequence numbers stay taken, and a gap record names them.
#[derive(Clone, Debug)]
struct Lost {
    first: u64,
    last: u64,
    reason: String,
}

/// The overflow file of the spool, in `audit.spool.directory`.
struct DiskSpool {
    path: PathBuf,
    limit: u64,
    /// Open for appending while it holds lines.
    file: Option<File>,
    /// Bytes appended since it was last emptied.
    written: u64,
    /// Bytes of it already moved to the log.
    read_at: u64,
    records: u64,
}

impl DiskSpool {
    fn waiting(&self) -> u64 {
        self.written - self.read_at
    }

    fn is_empty(&self) -> bool {
        self.waiting() == 0
    }

    /// Appends one line; false (and nothing appended) when it does not fit
    /// or cannot be written.
    fn append(&mut self, line: &[u8], forced: bool) -> bool {
        if !forced && self.written + line.len() as u64 > self.limit {
            return false;
        }
        if self.file.is_none() {
            match OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(file) => self.file = Some(file),
                Err(error) => {
                    tracing::error!(spool = %self.path.display(), %error, "cannot open the audit spool file");
                    return false;
                }
            }
        }
        let file = self.file.as_ref().expect("opened above");
        match (&*file).write_all(line) {
            Ok(()) => {
                self.written += line.len() as u64;
                self.records += 1;
                true
            }
            Err(error) => {
                // Cut what part of the line went in, so the file holds
                // whole lines only.
                let _ = file.set_len(self.written);
                tracing::error!(spool = %self.path.display(), %error, "cannot write the audit spool file");
                false
            }
        }
    }

    /// Up to `max` bytes of whole lines from where the log left off.
    fn read_lines(&self, max: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return Ok(Vec::new());
        };
        let want = usize::try_from(self.waiting())
            .unwrap_or(usize::MAX)
            .min(max.max(1));
        let mut buffer = vec![0; want];
        file.read_exact_at(&mut buffer, self.read_at)?;
        match buffer.iter().rposition(|&b| b == b'\n') {
            Some(end) => buffer.truncate(end + 1),
            None => {
                // One line longer than `max`: read it whole.
                let mut rest = Vec::new();
                let mut at = self.read_at + want as u64;
                let mut byte = [0u8; 4096];
                loop {
                    let n = file.read_at(&mut byte, at)?;
                    if n == 0 {
                        break;
                    }
                    if let Some(end) = byte[..n].iter().position(|&b| b == b'\n') {
                        rest.extend_from_slice(&byte[..=end]);
                        break;
                    }
                    rest.extend_from_slice(&byte[..n]);
                    at += n as u64;
                }
                buffer.extend_from_slice(&rest);
            }
        }
        Ok(buffer)
    }

    /// Marks `bytes` (`records` lines) as moved to the log; empties the
    /// file once everything is.
    fn consumed(&mut self, bytes: u64, records: u64) {
        self.read_at += bytes;
        self.records = self.records.saturating_sub(records);
        if self.is_empty() {
            self.file = None;
            self.written = 0;
            self.read_at = 0;
            self.records = 0;
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(spool = %self.path.display(), %error, "cannot remove the emptied audit spool file");
            }
        }
    }
}

/// The state of the audit path, for `/readyz` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditHealth {
    /// Why the log cannot be written, while it cannot.
    pub failing: Option<String>,
    /// Records chained and waiting in the spool (memory and directory).
    pub spooled_records: u64,
    /// Their bytes.
    pub spooled_bytes: u64,
    /// Records lost since the start because the spool was full.
    pub lost_total: u64,
}

/// The sequence numbers a record's (or a gap's) line is known by.
fn published_of(record: &AuditRecord, line: &[u8]) -> Published {
    Published {
        seq: record.seq,
        agent: record.agent.clone(),
        verdict: record.verdict,
        control: record.control,
        line: line_text(line.strip_suffix(b"\n").unwrap_or(line)),
    }
}

/// A line as text. Lines are serialized JSON, so always UTF-8: the strict
/// check (word at a time) is the one that runs, several times faster per
/// record than the lossy one's chunk walk (7% of the writer's time at
/// 250,000 records a second).
fn line_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The fields of a spooled line that the live stream filters on, read back.
fn published_of_line(line: &[u8]) -> Option<Published> {
    #[derive(serde::Deserialize)]
    struct Fields {
        seq: u64,
        #[serde(default)]
        agent: Option<String>,
        #[serde(default)]
        verdict: String,
        #[serde(default)]
        control: String,
    }
    // Streams filter on these; a value outside the known sets reads as
    // "unknown" there, the line itself is unchanged.
    const CONTROLS: &[&str] = &[
        "egress", "file", "exec", "dns", "audit", "daemon", "policy", "breaker", "grant", "socket",
    ];
    const VERDICTS: &[&str] = &["allowed", "denied", "would-deny", "detected", "info"];
    let intern = |value: &str, known: &[&'static str]| -> &'static str {
        known
            .iter()
            .find(|k| **k == value)
            .copied()
            .unwrap_or("unknown")
    };
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let fields: Fields = serde_json::from_slice(text).ok()?;
    Some(Published {
        seq: fields.seq,
        agent: fields.agent,
        verdict: intern(&fields.verdict, VERDICTS),
        control: intern(&fields.control, CONTROLS),
        line: line_text(text),
    })
}

/// `No space left on device (os error 28)` as `no space left on device`.
fn reason_of(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
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
    /// The next sequence number; never handed out twice, even to a record
    /// that is lost.
    next_seq: u64,
    /// Hash of the last line chained (or [`GENESIS`]).
    head: String,
    /// Sequence number of that line; 0 before the first.
    head_seq: u64,
    /// A line cut short is in the file and could not be cut off: the next
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
    /// The lines of one `write(2)`, kept between writes: a batch is about
    /// [`BATCH_BYTES`], which a fresh buffer would map and unmap each time.
    write_buffer: Vec<u8>,
    /// Whether lines are gathered instead of written one by one.
    batching: bool,
    /// Bytes of lines gathered since the batch began.
    batch_bytes: usize,
    /// A checkpoint fell due inside the batch.
    checkpoint_due: bool,
    /// Lines chained and not yet in the file, oldest first: the batch,
    /// and while the log cannot be written, the spool's memory part.
    memory: VecDeque<Pending>,
    memory_bytes: usize,
    memory_limit: usize,
    /// The spool's overflow file, newer than every line in `memory`.
    disk: Option<DiskSpool>,
    /// Why the last write failed, until one succeeds.
    failing: Option<String>,
    /// Records lost since the last gap record.
    lost: Option<Lost>,
    lost_total: u64,
    syncer: Syncer,
}

/// Room a gap record needs beyond the record that ends the loss.
const GAP_SLACK: usize = 1024;

impl AuditTrail {
    /// Opens (creating if needed: directory 0750, files 0600) the log whose
    /// active file is `log`, loads or generates the signing key, and
    /// resumes the chain from the last complete record of the newest file.
    ///
    /// A final line left incomplete by a crash is kept as it is: the
    /// active file is rotated so that the fragment stays the last line of
    /// its file, and a record saying so starts the new file. A spool file
    /// left by a daemon that stopped while the log could not be written is
    /// kept aside, and a gap record names the records that never reached
    /// the log.
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
        let disk = match &config.spool.directory {
            Some(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| AuditError::Open {
                        path: dir.clone(),
                        source,
                    })?;
                Some(DiskSpool {
                    path: dir.join(SPOOL_FILE),
                    limit: config.spool.directory_bytes,
                    file: None,
                    written: 0,
                    read_at: 0,
                    records: 0,
                })
            }
            None => None,
        };
        let leftover = match &disk {
            Some(disk) => set_aside(&disk.path).map_err(|source| AuditError::Open {
                path: disk.path.clone(),
                source,
            })?,
            None => None,
        };
        let mut trail = Self {
            log: log.to_path_buf(),
            file: Arc::new(file),
            syncer: Syncer::start(log.to_path_buf()),
            batching: false,
            batch_bytes: 0,
            checkpoint_due: false,
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_limit: usize::try_from(config.spool.memory_bytes).unwrap_or(usize::MAX),
            disk,
            failing: None,
            lost: None,
            lost_total: 0,
            size: tail.size,
            file_first_seq: tail.first_seq.unwrap_or(next_seq),
            file_started: if tail.size > 0 {
                first_record_time(log).or(Some(SystemTime::now()))
            } else {
                None
            },
            head_seq: next_seq - 1,
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
            write_buffer: Vec::new(),
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
        if let Some((aside, last_seq)) = leftover
            && last_seq >= trail.next_seq
        {
            let first = trail.next_seq;
            trail.next_seq = last_seq + 1;
            trail.lost = Some(Lost {
                first,
                last: last_seq,
                reason: format!(
                    "the daemon stopped while they waited in the spool; those that had \
                     reached the spool directory are kept, unchained, in {}",
                    aside.display()
                ),
            });
            trail.lost_total += last_seq - first + 1;
            trail.end_loss(0);
            trail.flush();
        }
        Ok(trail)
    }

    /// The redaction this trail applies to every record it writes.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Redacts `record`, gives it its sequence number and the previous
    /// record's hash, appends it as one line and publishes it; writes a
    /// checkpoint after it when one is due.
    ///
    /// A line the log cannot take (a full disk, say) waits in the spool
    /// and is written, in order, once the log takes lines again; one the
    /// spool cannot take either is lost, its sequence number stays taken,
    /// and a gap record in the chain says how many were lost and why.
    /// Neither is an error: [`AuditTrail::health`] tells.
    pub fn write(&mut self, record: &mut AuditRecord) -> Result<(), AuditError> {
        record.redact(&self.redactor);
        if !self.append(record, false) {
            return Ok(());
        }
        self.unsigned += 1;
        let now = Instant::now();
        let since = *self.unsigned_since.get_or_insert(now);
        let by_count =
            self.checkpoints.every_records > 0 && self.unsigned >= self.checkpoints.every_records;
        let by_time = self.checkpoints.every_seconds > 0
            && now.duration_since(since) >= Duration::from_secs(self.checkpoints.every_seconds);
        if by_count || by_time {
            if self.batching {
                // Signing writes what waits: a batch is written whole, at
                // its end (see `batch_is_full`), and signed then.
                self.checkpoint_due = true;
            } else {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// Gathers the records written from now on, until [`end_batch`]
    /// writes them (or [`BATCH_BYTES`] of them are waiting).
    ///
    /// [`end_batch`]: AuditTrail::end_batch
    pub fn begin_batch(&mut self) {
        self.batching = true;
        self.batch_bytes = 0;
    }

    /// Whether the batch has gathered half of what would make it write
    /// early. A caller that ends each batch by then has every batch written
    /// at once by [`end_batch`], never in parts: the daemon's event drain
    /// relies on that to give events back to the kernel only once all of
    /// their records are in the file.
    ///
    /// [`end_batch`]: AuditTrail::end_batch
    pub fn batch_is_full(&self) -> bool {
        self.batch_bytes >= BATCH_BYTES.min(self.memory_limit) / 2
    }

    /// Writes what the batch gathered (and what the spool holds) and goes
    /// back to one write a record.
    ///
    /// A checkpoint that fell due inside the batch is left to
    /// [`settle`](AuditTrail::settle), so that the caller can act on the
    /// batch being written (the event drain hands its events back to the
    /// kernel) before the signature is computed.
    pub fn end_batch(&mut self) -> Result<(), AuditError> {
        self.batching = false;
        self.flush();
        Ok(())
    }

    /// Writes the checkpoint that fell due inside the last batch, if one
    /// did.
    pub fn settle(&mut self) -> Result<(), AuditError> {
        if std::mem::take(&mut self.checkpoint_due) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Retries the spool, and writes a checkpoint when records have waited
    /// `everySeconds` for one. Call it about once a second: without it, a
    /// quiet log's last records wait for the next write to be signed, and
    /// spooled records for the next write to be retried.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        self.flush();
        self.settle()?;
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
    /// written since the last one, and syncs the file to disk. While
    /// records are being lost there is no head to sign: the checkpoint
    /// waits for the gap record.
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        if self.unsigned == 0 || (self.lost.is_some() && !self.end_loss(0)) {
            return Ok(());
        }
        let seq = self.head_seq;
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
        if !self.append(&mut record, false) {
            return Ok(());
        }
        self.flush();
        self.unsigned = 0;
        self.unsigned_since = None;
        if self.failing.is_some() || self.syncer.request(&self.file) {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| AuditError::Write {
            path: self.log.clone(),
            source,
        })
    }

    /// The chain head: the last record chained (it may still wait in the
    /// spool; the live stream's head is the last one in the file).
    pub fn head(&self) -> Option<Head> {
        (self.head_seq > 0).then(|| Head {
            seq: self.head_seq,
            hash: self.head.clone(),
        })
    }

    /// Whether the log is being written, what waits and what was lost.
    pub fn health(&self) -> AuditHealth {
        let disk = self.disk.as_ref();
        AuditHealth {
            failing: self.failing.clone(),
            spooled_records: self.memory.len() as u64 + disk.map_or(0, |d| d.records),
            spooled_bytes: self.memory_bytes as u64 + disk.map_or(0, DiskSpool::waiting),
            lost_total: self.lost_total,
        }
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

    /// Gives `record` the next sequence number and the head's hash and
    /// serializes it into `self.line`, newline included.
    fn serialize(&mut self, record: &mut AuditRecord) -> String {
        record.seq = self.next_seq;
        record.prev_hash.clone_from(&self.head);
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).expect("audit records always serialize");
        let hash = line_hash(&self.line);
        self.line.push(b'\n');
        hash
    }

    /// Whether the spool has room for `bytes` more, in memory or on disk.
    fn has_room(&self, bytes: usize) -> bool {
        let disk_empty = self.disk.as_ref().is_none_or(DiskSpool::is_empty);
        if disk_empty && (self.memory.is_empty() || self.memory_bytes + bytes <= self.memory_limit)
        {
            return true;
        }
        self.disk
            .as_ref()
            .is_some_and(|d| d.written + bytes as u64 <= d.limit)
    }

    /// Chains `record` and queues its line; false when it was lost instead
    /// (its sequence number is taken all the same).
    fn append(&mut self, record: &mut AuditRecord, forced: bool) -> bool {
        let hash = self.serialize(record);
        if self.batching {
            self.batch_bytes += self.line.len();
        }
        if self.failing.is_none()
            && !self.memory.is_empty()
            && self.memory_bytes + self.line.len() > self.memory_limit.min(BATCH_BYTES)
        {
            self.flush();
        }
        if self.lost.is_some() && !forced {
            if !self.end_loss(self.line.len()) {
                self.lose(record.seq);
                return false;
            }
            // The gap record took this number and moved the head.
            let hash = self.serialize(record);
            return self.queue(record, hash, false);
        }
        self.queue(record, hash, forced)
    }

    /// Writes the gap record for the records lost so far, if the spool has
    /// room for it and `then` more bytes; whether the loss is over.
    fn end_loss(&mut self, then: usize) -> bool {
        let Some(lost) = self.lost.clone() else {
            return true;
        };
        if !self.has_room(then + GAP_SLACK) {
            return false;
        }
        self.lost = None;
        let mut gap = AuditRecord::gap(&self.host, lost.first, lost.last, &lost.reason);
        let hash = self.serialize(&mut gap);
        if self.queue(&gap, hash, true) {
            tracing::warn!(
                first = lost.first,
                last = lost.last,
                reason = %lost.reason,
                "audit records lost; a gap record names them"
            );
            true
        } else {
            self.lost = Some(lost);
            self.lose(gap.seq);
            false
        }
    }

    /// Counts record `seq` as lost.
    fn lose(&mut self, seq: u64) {
        self.next_seq = seq + 1;
        self.lost_total += 1;
        let reason = self
            .failing
            .clone()
            .unwrap_or_else(|| "the audit log could not be written".into());
        match &mut self.lost {
            Some(lost) => lost.last = seq,
            None => {
                tracing::error!(seq, %reason, "the audit spool is full: records are being lost");
                self.lost = Some(Lost {
                    first: seq,
                    last: seq,
                    reason,
                });
            }
        }
    }

    /// Queues the line in `self.line` (chained as `hash`): in memory while
    /// the disk spool is empty and memory has room, else on disk. `forced`
    /// lets it past the limits (a gap record, bounded to one at a time).
    fn queue(&mut self, record: &AuditRecord, hash: String, forced: bool) -> bool {
        let len = self.line.len();
        let disk_empty = self.disk.as_ref().is_none_or(DiskSpool::is_empty);
        let memory_room = self.memory.is_empty() || self.memory_bytes + len <= self.memory_limit;
        if disk_empty && (forced || memory_room) {
            let line = self.line.clone();
            self.memory.push_back(Pending {
                published: published_of(record, &line),
                line,
                hash: hash.clone(),
            });
            self.memory_bytes += len;
        } else {
            let line = std::mem::take(&mut self.line);
            let queued = self
                .disk
                .as_mut()
                .is_some_and(|disk| disk.append(&line, forced));
            self.line = line;
            if !queued {
                if !forced {
                    self.lose(record.seq);
                }
                return false;
            }
        }
        self.head = hash;
        self.head_seq = record.seq;
        self.next_seq = record.seq + 1;
        if (!self.batching || self.memory_bytes >= BATCH_BYTES.min(self.memory_limit))
            && self.failing.is_none()
        {
            self.flush();
        }
        true
    }

    /// Writes what waits (memory first, then the disk spool) in chunks of
    /// up to [`BATCH_BYTES`], one `write(2)` each, rotating between lines
    /// where due, and publishes what reached the file. On an error the
    /// lines that reached the file stay, a line cut short is cut off, the
    /// rest waits for the next try, and the trail reports itself failing.
    fn flush(&mut self) {
        loop {
            let result = if !self.memory.is_empty() {
                self.flush_memory()
            } else if self.disk.as_ref().is_some_and(|d| !d.is_empty()) {
                self.flush_disk()
            } else {
                break;
            };
            if let Err(error) = result {
                let reason = reason_of(&error);
                if self.failing.is_none() {
                    tracing::error!(
                        log = %self.log.display(),
                        %reason,
                        "cannot write the audit log; records wait in the spool"
                    );
                }
                self.failing = Some(reason);
                return;
            }
        }
        if self.failing.take().is_some() {
            tracing::info!(log = %self.log.display(), "the audit log is written again");
        }
        if self.lost.is_some() {
            self.end_loss(0);
            if !self.memory.is_empty() {
                self.flush();
            }
        }
    }

    /// How many of `lines` (line lengths) go into the next write: up to
    /// [`BATCH_BYTES`], stopping before a line that rotation must precede.
    /// Rotates first when the very first line needs it.
    fn chunk(&mut self, lengths: impl Iterator<Item = usize>) -> std::io::Result<usize> {
        let mut count = 0;
        let mut bytes = 0u64;
        for len in lengths {
            let len = len as u64;
            if self.rotation_due_at(self.size + bytes, len) {
                if count > 0 {
                    break;
                }
                self.rotate()?;
            }
            count += 1;
            bytes += len;
            if bytes >= BATCH_BYTES as u64 {
                break;
            }
        }
        Ok(count)
    }

    fn flush_memory(&mut self) -> std::io::Result<()> {
        let lengths: Vec<usize> = self.memory.iter().map(|p| p.line.len()).collect();
        let count = self.chunk(lengths.into_iter())?;
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        for pending in self.memory.iter().take(count) {
            buffer.extend_from_slice(&pending.line);
        }
        let (written, result) = self.write_lines(&buffer, count);
        self.write_buffer = buffer;
        for _ in 0..written {
            let pending = self.memory.pop_front().expect("counted above");
            self.memory_bytes -= pending.line.len();
            self.published(pending.published, &pending.hash);
        }
        result
    }

    fn flush_disk(&mut self) -> std::io::Result<()> {
        let buffer = self
            .disk
            .as_ref()
            .expect("checked by the caller")
            .read_lines(BATCH_BYTES)?;
        let lines: Vec<&[u8]> = buffer.split_inclusive(|&b| b == b'\n').collect();
        let count = self.chunk(lines.iter().map(|l| l.len()))?;
        let bytes: usize = lines[..count].iter().map(|l| l.len()).sum();
        let (written, result) = self.write_lines(&buffer[..bytes], count);
        let mut moved = 0u64;
        for line in &lines[..written] {
            moved += line.len() as u64;
            if let Some(published) = published_of_line(line) {
                let hash = line_hash(line);
                self.published(published, &hash);
            }
        }
        if let Some(disk) = &mut self.disk {
            disk.consumed(moved, written as u64);
        }
        result
    }

    /// Appends `buffer` (`count` whole lines) with one `write(2)`; how many
    /// lines reached the file in full, and the error if not all did.
    fn write_lines(&mut self, buffer: &[u8], count: usize) -> (usize, std::io::Result<()>) {
        if buffer.is_empty() {
            return (0, Ok(()));
        }
        if self.size == 0 {
            self.file_started = Some(SystemTime::now());
        }
        match (&*self.file).write_all(buffer) {
            Ok(()) => {
                self.size += buffer.len() as u64;
                (count, Ok(()))
            }
            Err(error) => {
                let actual = self.file.metadata().map_or(self.size, |m| m.len());
                let reached = usize::try_from(actual.saturating_sub(self.size))
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                let mut whole = 0;
                let mut end = 0;
                for line in buffer.split_inclusive(|&b| b == b'\n') {
                    if end + line.len() > reached {
                        break;
                    }
                    end += line.len();
                    whole += 1;
                }
                self.size += end as u64;
                if reached > end && self.file.set_len(self.size).is_err() {
                    // The fragment stays: it must stay the file's last line.
                    self.damaged = true;
                    self.size += (reached - end) as u64;
                }
                (whole, Err(error))
            }
        }
    }

    /// A line is in the file: the live stream may have it.
    fn published(&mut self, published: Published, hash: &str) {
        if self.size > 0 && self.file_first_seq > published.seq {
            self.file_first_seq = published.seq;
        }
        self.hub.publish_written(published, hash);
    }

    fn rotation_due_at(&self, size: u64, adding: u64) -> bool {
        if size == 0 {
            return false;
        }
        if self.damaged {
            return true;
        }
        let by_size = self.rotation.max_bytes > 0 && size + adding > self.rotation.max_bytes;
        let by_age = self.rotation.max_age_seconds > 0
            && self.file_started.is_some_and(|started| {
                started.elapsed().unwrap_or_default()
                    >= Duration::from_secs(self.rotation.max_age_seconds)
            });
        by_size || by_age
    }

    /// Renames the active file to `NAME.FIRST_SEQ` and starts a new one;
    /// deletes the oldest rotated files beyond `keepFiles`.
    fn rotate(&mut self) -> std::io::Result<()> {
        // A file holding only a fragment has no first record of its own.
        let first = if self.file_first_seq == u64::MAX {
            self.head_seq
        } else {
            self.file_first_seq
        };
        let target = rotated_name(&self.log, first);
        std::fs::rename(&self.log, &target)?;
        self.file = Arc::new(open_append(&self.log)?);
        // The rename and the new file are directory entries: sync them so a
        // power cut cannot lose a rotated file.
        if let Some(dir) = self.log.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.size = 0;
        self.damaged = false;
        self.file_started = None;
        self.file_first_seq = u64::MAX;
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

/// Name of the spool's overflow file in `audit.spool.directory`.
pub const SPOOL_FILE: &str = "audit-spool.jsonl";

/// Moves a spool file left by an earlier run aside (`NAME.TIME.unwritten`)
/// and returns its new name with the last sequence number in it.
fn set_aside(path: &Path) -> std::io::Result<Option<(PathBuf, u64)>> {
    let tail = match files::tail(path) {
        Ok(tail) => tail,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(next) = tail.next_seq else {
        let _ = std::fs::remove_file(path);
        return Ok(None);
    };
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("jsonl.{stamp}.unwritten"));
    std::fs::rename(path, &aside)?;
    Ok(Some((aside, next - 1)))
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

//! The files of one log: the active file (`audit.jsonl`) and the rotated
//! ones (`audit.jsonl.N`, where N is the sequence number of the file's
//! first record), and readers that follow the chain across them.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::chain::{line_hash, parse_line};

/// The rotation number in a rotated file's name: `audit.jsonl.120` is 120,
/// `audit.jsonl.120-1` (a second file that started at 120) is 120 too.
fn rotation_number(log: &Path, candidate: &Path) -> Option<(u64, u64)> {
    let base = log.file_name()?.to_str()?;
    let name = candidate.file_name()?.to_str()?;
    let rest = name.strip_prefix(base)?.strip_prefix('.')?;
    let (number, extra) = match rest.split_once('-') {
        Some((n, k)) => (n, k.parse().ok()?),
        None => (rest, 0),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((number.parse().ok()?, extra))
}

/// The rotated files of `log`, oldest first, each with the sequence number
/// its name gives.
pub fn rotated_files(log: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found: Vec<((u64, u64), PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some(key) = rotation_number(log, &path) {
            found.push((key, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|((n, _), p)| (n, p)).collect())
}

/// Every file of `log`, oldest first: the rotated files, then the active
/// file when it exists.
pub fn log_files(log: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(log)?.into_iter().map(|(_, p)| p).collect();
    if log.exists() {
        files.push(log.to_path_buf());
    }
    Ok(files)
}

/// A free name for `log` rotated when its first record was `first_seq`.
pub(crate) fn rotated_name(log: &Path, first_seq: u64) -> PathBuf {
    let base = log.file_name().map(|n| n.to_string_lossy().into_owned());
    let base = base.unwrap_or_else(|| "audit.jsonl".into());
    let mut k = 0u64;
    loop {
        let name = if k == 0 {
            format!("{base}.{first_seq}")
        } else {
            format!("{base}.{first_seq}-{k}")
        };
        let path = log.with_file_name(name);
        if !path.exists() {
            return path;
        }
        k += 1;
    }
}

/// The end of a log file, as a writer resuming after it needs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Sequence number the next record takes, from the last readable
    /// record and the unreadable complete lines after it.
    pub(crate) next_seq: Option<u64>,
    /// Hash of the last complete line.
    pub(crate) hash: Option<String>,
    /// Sequence number of the file's first record.
    pub(crate) first_seq: Option<u64>,
    /// Whether the file ends in a line without its newline.
    pub(crate) torn: bool,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// Reads how `path` ends. Reads backwards from the end, so a large file
/// costs only its last records.
pub(crate) fn tail(path: &Path) -> io::Result<Tail> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut result = Tail {
        size,
        first_seq: first_seq(path)?,
        ..Tail::default()
    };
    if size == 0 {
        return Ok(result);
    }
    let mut window = 64 * 1024u64;
    loop {
        let start = size.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((size - start) as usize);
        file.by_ref().take(size - start).read_to_end(&mut bytes)?;
        result.torn = !bytes.ends_with(b"\n");
        // Complete lines in the window; the first is partial unless the
        // window starts the file.
        let body = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) => &bytes[..end],
            None if start == 0 => return Ok(result),
            None => {
                window *= 4;
                continue;
            }
        };
        let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        if start > 0 {
            lines.remove(0);
        }
        if let Some(last) = lines.last() {
            result.hash = Some(line_hash(last));
        }
        for (unreadable, line) in lines.iter().rev().enumerate() {
            if let Some(fields) = parse_line(line) {
                result.next_seq = Some(fields.seq + 1 + unreadable as u64);
                return Ok(result);
            }
        }
        if start == 0 {
            // Complete lines, none readable: number them from the file's
            // position in the chain, which nothing here knows; the caller
            // falls back to the previous file.
            return Ok(result);
        }
        window *= 4;
    }
}

/// Sequence number of the first record of `path`: the first readable
/// line's number less the lines before it.
pub(crate) fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    for index in 0..1000u64 {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        if let Some(fields) = parse_line(&line) {
            return Ok(Some(fields.seq.saturating_sub(index)));
        }
    }
    Ok(None)
}

/// One line read back: its bytes (without the newline) and whether it was
/// complete.
#[derive(Debug, Clone)]
pub(crate) struct RawLine {
    pub(crate) bytes: Vec<u8>,
    pub(crate) complete: bool,
}

/// Reads the lines of one file, the last possibly incomplete.
pub(crate) struct LineReader {
    reader: BufReader<File>,
}

impl LineReader {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, File::open(path)?),
        })
    }

    pub(crate) fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        let mut bytes = Vec::new();
        if self.reader.read_until(b'\n', &mut bytes)? == 0 {
            return Ok(None);
        }
        let complete = bytes.ends_with(b"\n");
        if complete {
            bytes.pop();
        }
        Ok(Some(RawLine { bytes, complete }))
    }
}

/// A record read by [`LogFollower`].
#[derive(Debug, Clone)]
pub struct FollowedRecord {
    /// Sequence number.
    pub seq: u64,
    /// The line, without its newline.
    pub line: String,
}

/// Follows a log in sequence order across rotations, from a given sequence
/// number on; used by forwarders, which must read the durable log rather
/// than memory.
pub struct LogFollower {
    log: PathBuf,
    last_seq: u64,
    open: Option<OpenFile>,
}

struct OpenFile {
    reader: BufReader<File>,
    identity: (u64, u64),
    pending: Vec<u8>,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl LogFollower {
    /// A follower of `log` that returns records after `last_seq`.
    pub fn new(log: &Path, last_seq: u64) -> Self {
        Self {
            log: log.to_path_buf(),
            last_seq,
            open: None,
        }
    }

    /// Sequence number of the last record returned (or skipped past).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The file that holds sequence number `seq`, or would: the newest
    /// file starting at or before it; the oldest when every file starts
    /// after it (the records before were removed). With it, the identity
    /// the file had when it was chosen: a rotation may replace the active
    /// file before it is opened.
    fn locate(&self, seq: u64) -> io::Result<Option<(PathBuf, (u64, u64))>> {
        // The listing and the active file's first record are read again
        // until no rotation happened in between: a rotation in the middle
        // would hide the file that was just rotated.
        let (rotated, active) = loop {
            let before = rotated_files(&self.log)?;
            let active = match std::fs::metadata(&self.log) {
                Ok(meta) => Some((first_seq(&self.log)?, identity(&meta))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let after = rotated_files(&self.log)?;
            let still = std::fs::metadata(&self.log).ok().map(|m| identity(&m));
            if before == after && still == active.map(|(_, id)| id) {
                break (after, active);
            }
        };
        // (first record, path, identity when known)
        type Candidate = (Option<u64>, PathBuf, Option<(u64, u64)>);
        let mut candidates: Vec<Candidate> = rotated
            .into_iter()
            .map(|(n, p)| (Some(n), p, None))
            .collect();
        if let Some((start, id)) = active {
            candidates.push((start, self.log.clone(), Some(id)));
        }
        // An active file with no complete record yet (just created by a
        // rotation) starts after every rotated file, at a number not known
        // yet: it is chosen only when it is the only file. Otherwise the
        // reader waits in the newest rotated file for its first record.
        let mut chosen = candidates.first().cloned();
        for candidate in &candidates {
            if candidate.0.is_some_and(|s| s <= seq) {
                chosen = Some(candidate.clone());
            }
        }
        let Some((_, path, id)) = chosen else {
            return Ok(None);
        };
        let id = match id {
            Some(id) => id,
            None => identity(&std::fs::metadata(&path)?),
        };
        Ok(Some((path, id)))
    }

    /// The next record after the last one returned, or `None` when there
    /// is none yet. Lines that are not records are skipped with a warning.
    pub fn next_record(&mut self) -> io::Result<Option<FollowedRecord>> {
        loop {
            if self.open.is_none() {
                let Some((path, expected)) = self.locate(self.last_seq + 1)? else {
                    return Ok(None);
                };
                let file = match File::open(&path) {
                    Ok(f) => f,
                    // Rotated away between listing and opening: list again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let opened = identity(&file.metadata()?);
                if opened != expected {
                    // The active file was rotated and replaced after it was
                    // chosen; the chosen records are in the rotated file now.
                    continue;
                }
                self.open = Some(OpenFile {
                    identity: opened,
                    reader: BufReader::with_capacity(256 * 1024, file),
                    pending: Vec::new(),
                });
            }
            let open = self.open.as_mut().expect("opened above");
            open.reader.read_until(b'\n', &mut open.pending)?;
            if open.pending.ends_with(b"\n") {
                let mut bytes = std::mem::take(&mut open.pending);
                bytes.pop();
                let Some(fields) = parse_line(&bytes) else {
                    tracing::warn!(log = %self.log.display(), "skipping a line that is not an audit record");
                    continue;
                };
                if fields.seq <= self.last_seq {
                    continue;
                }
                if fields.seq > self.last_seq + 1 && self.last_seq > 0 {
                    tracing::warn!(
                        log = %self.log.display(),
                        first = self.last_seq + 1,
                        last = fields.seq - 1,
                        "records are missing from the log"
                    );
                }
                self.last_seq = fields.seq;
                return Ok(Some(FollowedRecord {
                    seq: fields.seq,
                    line: String::from_utf8_lossy(&bytes).into_owned(),
                }));
            }
            // End of the file for now. If the record after the last one
            // lives in another file, this one is finished (rotated), and a
            // fragment left in it is a torn final line that will never be
            // completed.
            let current = open.identity;
            match self.locate(self.last_seq + 1)? {
                Some((_, id)) if id != current => {
                    self.open = None;
                }
                _ => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_by_number() {
        let log = Path::new("/x/audit.jsonl");
        assert_eq!(
            rotation_number(log, Path::new("/x/audit.jsonl.12")),
            Some((12, 0))
        );
        assert_eq!(
            rotation_number(log, Path::new("/x/audit.jsonl.12-1")),
            Some((12, 1))
        );
        assert_eq!(rotation_number(log, Path::new("/x/audit.jsonl")), None);
        assert_eq!(rotation_number(log, Path::new("/x/audit.jsonl.bak")), None);
        assert_eq!(rotation_number(log, Path::new("/x/other.jsonl.3")), None);
    }

    /// A rotation leaves the new active file empty for an instant: a reader
    /// starting then must still begin in the rotated file, not skip it.
    #[test]
    fn a_just_rotated_empty_active_file_does_not_hide_the_rotated_one() {
        let dir = std::env::temp_dir().join(format!("baton-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("audit.jsonl");
        let line = |seq: u64| format!("{{\"seq\":{seq},\"prev_hash\":\"00\"}}\n");
        std::fs::write(dir.join("audit.jsonl.1"), line(1) + &line(2)).unwrap();
        std::fs::write(&log, "").unwrap();
        let mut follower = LogFollower::new(&log, 0);
        let seqs = |follower: &mut LogFollower| {
            let mut seqs = Vec::new();
            while let Some(record) = follower.next_record().unwrap() {
                seqs.push(record.seq);
            }
            seqs
        };
        assert_eq!(seqs(&mut follower), [1, 2]);
        // It waits in the rotated file until the active one has a record,
        // then moves on.
        std::fs::write(&log, line(3)).unwrap();
        assert_eq!(seqs(&mut follower), [3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

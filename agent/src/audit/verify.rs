//! Offline verification of a log: the chain, the checkpoint signatures and,
//! given a trusted head, the tail.
//!
//! What the chain proves: every record names the hash of the line before
//! it, so editing, deleting, inserting or reordering a record breaks the
//! chain at that record, unless every later record is rewritten too. A
//! checkpoint signs the head with a key the writer of the log does not
//! have, so a rewritten chain cannot pass the next checkpoint. What it
//! cannot prove alone: records after the last checkpoint can be removed
//! (or rewritten consistently) without a trace; only a head obtained
//! elsewhere (`--head`, or the daemon's live head) shows that.

use std::{
    collections::VecDeque,
    fmt,
    path::{Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use super::{
    chain::{ChainFields, GENESIS, Head, line_hash, parse_line},
    files::{self, LineReader},
    keys,
};

/// Errors that stop verification before it can judge the log.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Nothing to verify.
    #[error("no audit log files given")]
    NoFiles,
}

/// A line of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Line number, from 1.
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// What kind of tampering was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A record's content changed.
    Edited,
    /// Records are gone from the middle.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record appears twice.
    Duplicated,
    /// A line that is not a record.
    NotARecord,
    /// A record or checkpoint that the key holder did not write.
    Forged,
    /// Records are gone from the end (known from a trusted head).
    Truncated,
}

/// The first tampering found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where.
    pub location: Location,
    /// The record's sequence number, when known.
    pub seq: Option<u64>,
    /// What kind.
    pub kind: ProblemKind,
    /// What a person needs to know.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "{}: seq {seq}: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// The last point up to which the log is proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    /// Every record up to this sequence number is proven.
    pub seq: u64,
    /// The checkpoint that proves it, or the head's record.
    pub location: Location,
    /// Whether a head (rather than a checkpoint) proved it.
    pub by_head: bool,
}

/// Records lost by the writer (the spool was full while the log could not
/// be written), declared by a gap record in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The gap record.
    pub location: Location,
    /// Its sequence number.
    pub seq: u64,
    /// The first lost sequence number.
    pub first: u64,
    /// The last.
    pub last: u64,
    /// Why they were lost.
    pub reason: String,
}

impl Gap {
    /// How many records were lost.
    pub fn lost(&self) -> u64 {
        self.last - self.first + 1
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: seq {}: {} records lost between seq {} and {}: {}",
            self.location,
            self.seq,
            self.lost(),
            self.first,
            self.last,
            self.reason
        )
    }
}

/// The outcome of a verification.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The files, in chain order.
    pub files: Vec<PathBuf>,
    /// Complete records read.
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// First and last sequence numbers read.
    pub first_seq: Option<u64>,
    /// Last record read.
    pub last: Option<(u64, Location)>,
    /// The last proven point.
    pub trusted: Option<Trusted>,
    /// Records (checkpoints aside) after the last proven point.
    pub unproven: u64,
    /// Final lines left incomplete by a writer that stopped mid-write.
    pub incomplete: Vec<(Location, u64)>,
    /// Records the writer could not write and said so, in a gap record.
    pub gaps: Vec<Gap>,
    /// The first tampering found; verification stops there.
    pub problem: Option<Problem>,
    /// Set when a head was given but lies before the files given.
    pub head_unchecked: Option<Head>,
}

impl Report {
    /// Neither tampering nor incomplete records.
    pub fn intact(&self) -> bool {
        self.problem.is_none() && self.incomplete.is_empty()
    }

    /// The report for a person, one finding per line; the problem, when
    /// there is one, is the last line.
    pub fn lines(&self, head_given: bool) -> Vec<String> {
        let mut out = Vec::new();
        match (&self.first_seq, &self.last) {
            (Some(first), Some((last, _))) => out.push(format!(
                "read {} file(s): records seq {first} to {last} ({} records, {} signed checkpoints)",
                self.files.len(),
                self.records,
                self.checkpoints
            )),
            _ => out.push(format!(
                "read {} file(s): no complete record",
                self.files.len()
            )),
        }
        if let Some(first) = self.first_seq
            && first > 1
        {
            out.push(format!(
                "note: records before seq {first} are not in the files given; whether they \
                 were deleted cannot be told"
            ));
        }
        for gap in &self.gaps {
            out.push(format!(
                "{gap}. Not tampering: the writer could not write them and recorded the \
                 loss in the chain"
            ));
        }
        for (location, resumed) in &self.incomplete {
            out.push(format!(
                "{location}: incomplete final record: the writer stopped mid-write (killed, \
                 crashed or out of disk space). This is not tampering: the record was never \
                 completed, and the chain continues after seq {resumed}"
            ));
        }
        if self.problem.is_none() {
            match &self.trusted {
                Some(trusted) if trusted.by_head => out.push(format!(
                    "trusted head: records up to seq {} are proven ({})",
                    trusted.seq, trusted.location
                )),
                Some(trusted) => out.push(format!(
                    "last trusted checkpoint: records up to seq {} are signed ({})",
                    trusted.seq, trusted.location
                )),
                None => out.push("no trusted checkpoint: nothing in these files is signed".into()),
            }
            if self.unproven > 0 {
                out.push(if head_given {
                    format!(
                        "{} record(s) after it are covered by neither a signature nor the head: \
                         their deletion or rewriting cannot be detected",
                        self.unproven
                    )
                } else {
                    format!(
                        "{} record(s) after it are not covered by a signature: without --head or \
                         --live, their deletion or rewriting cannot be detected",
                        self.unproven
                    )
                });
            }
            if let Some(head) = &self.head_unchecked {
                out.push(format!(
                    "note: the head (seq {}) lies before the files given and was not checked",
                    head.seq
                ));
            }
        }
        if let Some(problem) = &self.problem {
            out.push(format!("TAMPERED: {problem}"));
        } else if self.incomplete.is_empty() && self.gaps.is_empty() {
            out.push("OK: the chain and every checkpoint verify".into());
        } else if self.incomplete.is_empty() {
            out.push(format!(
                "GAPS: the chain and every checkpoint verify, but {} record(s) were lost \
                 (see above)",
                self.gaps.iter().map(Gap::lost).sum::<u64>()
            ));
        }
        out
    }
}

/// One line read back, with what the chain needs from it.
struct Entry {
    location: Location,
    complete: bool,
    fields: Option<ChainFields>,
    hash: String,
}

/// The lines of every file in order, with look-ahead.
struct Entries {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<(PathBuf, LineReader, u64)>,
    ahead: VecDeque<Entry>,
}

impl Entries {
    fn read(&mut self) -> Result<Option<Entry>, VerifyError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next_file).cloned() else {
                    return Ok(None);
                };
                self.next_file += 1;
                let reader = LineReader::open(&path).map_err(|source| VerifyError::Read {
                    path: path.clone(),
                    source,
                })?;
                self.current = Some((path, reader, 0));
            }
            let (path, reader, line_no) = self.current.as_mut().expect("opened above");
            let line = reader.next_line().map_err(|source| VerifyError::Read {
                path: path.clone(),
                source,
            })?;
            let Some(line) = line else {
                self.current = None;
                continue;
            };
            *line_no += 1;
            return Ok(Some(Entry {
                location: Location {
                    file: path.clone(),
                    line: *line_no,
                },
                complete: line.complete,
                fields: if line.complete {
                    parse_line(&line.bytes)
                } else {
                    None
                },
                hash: line_hash(&line.bytes),
            }));
        }
    }

    fn next(&mut self) -> Result<Option<Entry>, VerifyError> {
        match self.ahead.pop_front() {
            Some(entry) => Ok(Some(entry)),
            None => self.read(),
        }
    }

    /// The `n`th record ahead (complete and readable), reading as needed.
    fn peek_record(&mut self, n: usize) -> Result<Option<&Entry>, VerifyError> {
        loop {
            let found = self
                .ahead
                .iter()
                .filter(|e| e.fields.is_some())
                .nth(n)
                .is_some();
            if found {
                return Ok(self.ahead.iter().filter(|e| e.fields.is_some()).nth(n));
            }
            match self.read()? {
                Some(entry) => self.ahead.push_back(entry),
                None => return Ok(None),
            }
        }
    }
}

/// What the verifier is told to trust.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The key checkpoints must be signed with.
    pub key: VerifyingKey,
    /// A head known from elsewhere (`--head`, the live daemon).
    pub head: Option<Head>,
}

/// Sort key of a file: its first record's number, else the number in its
/// name, so an incomplete-only file sits where it was rotated.
fn order_key(path: &Path, first: Option<u64>) -> (u64, u64) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = name.rsplit('.').next().unwrap_or("");
    let (number, extra) = match suffix.split_once('-') {
        Some((n, k)) => (n.parse().ok(), k.parse().unwrap_or(0)),
        None => (suffix.parse().ok(), 0),
    };
    (first.or(number).unwrap_or(u64::MAX), extra)
}

struct Previous {
    seq: u64,
    hash: String,
    location: Location,
}

/// Verifies the log in `paths` (any order: they are put in chain order).
pub fn verify(paths: &[PathBuf], options: &VerifyOptions) -> Result<Report, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let mut keyed = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let first = files::first_seq(path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        if !path.is_file() {
            return Err(VerifyError::Read {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        keyed.push((order_key(path, first), index, path.clone()));
    }
    keyed.sort();
    let ordered: Vec<PathBuf> = keyed.into_iter().map(|(_, _, p)| p).collect();
    let mut report = Report {
        files: ordered.clone(),
        ..Report::default()
    };
    let mut entries = Entries {
        files: ordered,
        next_file: 0,
        current: None,
        ahead: VecDeque::new(),
    };
    let key_hex = hex::encode(options.key.as_bytes());
    let mut previous: Option<Previous> = None;
    while let Some(entry) = entries.next()? {
        if !entry.complete {
            let resumed = previous.as_ref().map_or(0, |p| p.seq);
            report.incomplete.push((entry.location, resumed));
            continue;
        }
        let Some(fields) = entry.fields.clone() else {
            report.problem = Some(Problem {
                seq: previous.as_ref().map(|p| p.seq + 1),
                location: entry.location,
                kind: ProblemKind::NotARecord,
                message: "not an audit record: the line was edited or inserted".into(),
            });
            break;
        };
        report.records += 1;
        report.first_seq.get_or_insert(fields.seq);
        let problem = match &previous {
            None if fields.seq == 1 && fields.prev_hash != GENESIS => Some(Problem {
                location: entry.location.clone(),
                seq: Some(1),
                kind: ProblemKind::Forged,
                message: "the first record of a log must have a prev_hash of 64 zeros".into(),
            }),
            None => None,
            Some(previous) => match fields.gap() {
                // A gap record links to the last record written and skips
                // exactly the numbers it names.
                Some((first, last, reason))
                    if fields.prev_hash == previous.hash
                        && first == previous.seq + 1
                        && last + 1 == fields.seq =>
                {
                    report.gaps.push(Gap {
                        location: entry.location.clone(),
                        seq: fields.seq,
                        first,
                        last,
                        reason: reason.to_string(),
                    });
                    None
                }
                _ => diagnose(previous, &entry, &fields, &mut entries)?,
            },
        };
        if let Some(problem) = problem {
            report.problem = Some(problem);
            break;
        }
        let checkpoint = fields
            .checkpoint
            .as_ref()
            .filter(|_| fields.control == "audit");
        if let Some(checkpoint) = checkpoint {
            let forged = |message: String| Problem {
                location: entry.location.clone(),
                seq: Some(fields.seq),
                kind: ProblemKind::Forged,
                message,
            };
            let problem = if checkpoint.key != key_hex {
                Some(forged(format!(
                    "checkpoint signed with another key ({}), not the one given: forged",
                    checkpoint.key
                )))
            } else if !keys::verify_checkpoint(
                &options.key,
                checkpoint.seq,
                &checkpoint.hash,
                &checkpoint.signature,
            ) {
                Some(forged(
                    "checkpoint signature does not verify: the checkpoint was forged or altered"
                        .into(),
                ))
            } else if checkpoint.seq + 1 != fields.seq || checkpoint.hash != fields.prev_hash {
                Some(forged(format!(
                    "checkpoint signs seq {} with hash {}, but the chain before it has hash {}: \
                     records after {} were rewritten",
                    checkpoint.seq,
                    checkpoint.hash,
                    fields.prev_hash,
                    report
                        .trusted
                        .as_ref()
                        .map_or_else(|| "the start".to_string(), |t| format!("seq {}", t.seq))
                )))
            } else {
                None
            };
            if let Some(problem) = problem {
                report.problem = Some(problem);
                break;
            }
            report.checkpoints += 1;
            report.trusted = Some(Trusted {
                seq: checkpoint.seq,
                location: entry.location.clone(),
                by_head: false,
            });
            report.unproven = 0;
        } else {
            report.unproven += 1;
        }
        if let Some(head) = &options.head
            && head.seq == fields.seq
        {
            if head.hash != entry.hash {
                report.problem = Some(Problem {
                    location: entry.location.clone(),
                    seq: Some(fields.seq),
                    kind: ProblemKind::Edited,
                    message: format!(
                        "record does not match the trusted head (hash {}): edited or replaced",
                        head.hash
                    ),
                });
                break;
            }
            report.trusted = Some(Trusted {
                seq: head.seq,
                location: entry.location.clone(),
                by_head: true,
            });
            report.unproven = 0;
        }
        report.last = Some((fields.seq, entry.location.clone()));
        previous = Some(Previous {
            seq: fields.seq,
            hash: entry.hash,
            location: entry.location,
        });
    }
    if report.problem.is_none()
        && let Some(head) = &options.head
    {
        match (&report.first_seq, &report.last) {
            (Some(first), _) if head.seq < *first => report.head_unchecked = Some(head.clone()),
            (_, Some((last, location))) if head.seq > *last => {
                let trusted = report.trusted.as_ref().map_or_else(
                    || "none".to_string(),
                    |t| format!("seq {} ({})", t.seq, t.location),
                );
                report.problem = Some(Problem {
                    location: location.clone(),
                    seq: Some(*last),
                    kind: ProblemKind::Truncated,
                    message: format!(
                        "{} missing after this record: the log was truncated (the trusted head \
                         is seq {}); last trusted checkpoint: {trusted}",
                        span(last + 1, head.seq),
                        head.seq
                    ),
                });
            }
            (None, None) => {
                report.problem = Some(Problem {
                    location: Location {
                        file: report.files[0].clone(),
                        line: 1,
                    },
                    seq: None,
                    kind: ProblemKind::Truncated,
                    message: format!(
                        "no records, but the trusted head is seq {}: the log was truncated",
                        head.seq
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(report)
}

/// `seq 5` or `seq 5 to 9`, for messages.
fn span(first: u64, last: u64) -> String {
    if first == last {
        format!("record seq {first} is")
    } else {
        format!(
            "records seq {first} to {last} ({} records) are",
            last - first + 1
        )
    }
}

/// How far ahead a record that should have come earlier is looked for.
const LOOK_AHEAD: usize = 64;

/// Names the first tampering between `previous` and `entry`, if any.
fn diagnose(
    previous: &Previous,
    entry: &Entry,
    fields: &ChainFields,
    entries: &mut Entries,
) -> Result<Option<Problem>, VerifyError> {
    let expected = previous.seq + 1;
    let linked = fields.prev_hash == previous.hash;
    let at = |location: &Location, seq: u64, kind: ProblemKind, message: String| Problem {
        location: location.clone(),
        seq: Some(seq),
        kind,
        message,
    };
    if fields.seq == expected {
        if linked {
            return Ok(None);
        }
        // One of the two changed. If the record after this one still links
        // to it, this one is as written and the previous one was edited.
        let next = entries.peek_record(0)?.map(|n| {
            (
                n.fields.as_ref().map(|f| (f.seq, f.prev_hash.clone())),
                n.location.clone(),
            )
        });
        return Ok(Some(match next {
            Some((Some((seq, prev_hash)), _))
                if seq == fields.seq + 1 && prev_hash == entry.hash =>
            {
                at(
                    &previous.location,
                    previous.seq,
                    ProblemKind::Edited,
                    format!(
                        "record was edited: it no longer hashes to the prev_hash that seq {} \
                         recorded ({})",
                        fields.seq, entry.location
                    ),
                )
            }
            Some((Some((seq, _)), location)) if seq == fields.seq + 1 => at(
                &entry.location,
                fields.seq,
                ProblemKind::Edited,
                format!(
                    "record was edited: its prev_hash does not match seq {} ({}) and it no \
                     longer hashes to the prev_hash that seq {seq} recorded ({location})",
                    previous.seq, previous.location
                ),
            ),
            _ => at(
                &previous.location,
                previous.seq,
                ProblemKind::Edited,
                format!(
                    "this record or the next (seq {} at {}) was edited: the chain breaks \
                     between them",
                    fields.seq, entry.location
                ),
            ),
        }));
    }
    if fields.seq > expected {
        if linked {
            return Ok(Some(at(
                &entry.location,
                fields.seq,
                ProblemKind::Edited,
                format!(
                    "record was edited: its seq says {}, but its prev_hash shows it directly \
                     follows seq {} ({})",
                    fields.seq, previous.seq, previous.location
                ),
            )));
        }
        for n in 0..LOOK_AHEAD {
            let Some(ahead) = entries.peek_record(n)? else {
                break;
            };
            if ahead.fields.as_ref().is_some_and(|f| f.seq == expected) {
                return Ok(Some(at(
                    &entry.location,
                    fields.seq,
                    ProblemKind::Reordered,
                    format!(
                        "records out of order: seq {} comes before seq {expected} ({})",
                        fields.seq, ahead.location
                    ),
                )));
            }
        }
        return Ok(Some(at(
            &entry.location,
            fields.seq,
            ProblemKind::Deleted,
            format!(
                "{} missing before this record: deleted (the record before is seq {} at {})",
                span(expected, fields.seq - 1),
                previous.seq,
                previous.location
            ),
        )));
    }
    if fields.seq == previous.seq && entry.hash == previous.hash {
        return Ok(Some(at(
            &entry.location,
            fields.seq,
            ProblemKind::Duplicated,
            format!("record appears twice (also at {})", previous.location),
        )));
    }
    Ok(Some(at(
        &entry.location,
        fields.seq,
        ProblemKind::Reordered,
        format!(
            "records out of order: seq {} comes after seq {} ({})",
            fields.seq, previous.seq, previous.location
        ),
    )))
}

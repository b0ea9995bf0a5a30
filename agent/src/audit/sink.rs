//! The file sink: JSON lines, one record per line, appended and flushed
//! record by record so a crash loses at most the record being written.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::record::AuditRecord;

/// Errors writing the audit log.
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
}

/// Appends records to a JSON-lines file.
pub struct FileSink {
    path: PathBuf,
    file: File,
    next_seq: u64,
}

impl FileSink {
    /// Opens (creating if needed, mode 0600, directory 0750) the log.
    /// Sequence numbers continue from the records already in the file.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let open_error = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(open_error)?;
        }
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let last_seq = existing
            .lines()
            .rev()
            .find_map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
            })
            .unwrap_or(0);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(open_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            next_seq: last_seq + 1,
        })
    }

    /// Writes one record, assigning its sequence number.
    pub fn write(&mut self, record: &mut AuditRecord) -> Result<(), AuditError> {
        record.seq = self.next_seq;
        let mut line = serde_json::to_vec(record).expect("audit records always serialize");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|source| AuditError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.next_seq += 1;
        Ok(())
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_continue_across_reopen() {
        let dir = std::env::temp_dir().join(format!("baton-sink-{}", std::process::id()));
        let path = dir.join("sub/audit.jsonl");
        let mut sink = FileSink::open(&path).unwrap();
        let mut record = AuditRecord::lifecycle("h", "daemon", "start".into());
        sink.write(&mut record).unwrap();
        sink.write(&mut record).unwrap();
        drop(sink);
        let mut sink = FileSink::open(&path).unwrap();
        sink.write(&mut record).unwrap();
        assert_eq!(record.seq, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let error = FileSink::open(Path::new("/proc/baton/audit.jsonl"))
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("cannot open audit log /proc/baton/audit.jsonl")
        );
    }
}

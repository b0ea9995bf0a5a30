//! [`FileSink`]: the trail with default settings, opened from a path alone.

use std::path::Path;

use super::{AuditError, AuditTrail, config::AuditConfig, record::AuditRecord};

/// An [`AuditTrail`] opened with the default `audit:` settings (key in
/// `/var/lib/baton/audit.key`, default rotation and checkpoints). Callers
/// that have a configuration use [`AuditTrail::open`] instead.
pub struct FileSink {
    trail: AuditTrail,
}

impl FileSink {
    /// Opens (creating if needed) the log at `path`; the chain continues
    /// from the records already there.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            trail: AuditTrail::open(path, &AuditConfig::default())?,
        })
    }

    /// Writes one record; see [`AuditTrail::write`].
    pub fn write(&mut self, record: &mut AuditRecord) -> Result<(), AuditError> {
        self.trail.write(record)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        self.trail.path()
    }

    /// The trail inside.
    pub fn trail(&mut self) -> &mut AuditTrail {
        &mut self.trail
    }
}

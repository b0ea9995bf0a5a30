//! The audit trail: kernel events decoded, enriched from procfs and written
//! as one JSON line each.

pub mod record;
pub mod sink;

pub use record::{AuditRecord, DecodeError, ProcessCache, SCHEMA};
pub use sink::{AuditError, FileSink};

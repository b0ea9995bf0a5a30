//! The hash chain: every record names the SHA-256 of the line before it.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of one record's line, without its newline, in lower-case hex.
pub fn line_hash(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    // Into a buffer at once: `hex::encode` builds the string a char at a
    // time, a few percent of the writer's time at 200,000 records a second.
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(line), &mut hex).expect("64 hex digits for 32 bytes");
    String::from_utf8_lossy(&hex).into_owned()
}

/// The chain head: the last record written, by sequence number and hash.
/// Spelled `SEQ:HASH` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Its line hash.
    pub hash: String,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for Head {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not SEQ:HASH (a sequence number, a colon, 64 hex digits)");
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.trim().parse().map_err(|_| bad())?;
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self { seq, hash })
    }
}

/// The fields of a written line that the chain and its readers need; the
/// rest of the record is covered by the hash and need not be understood.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ChainFields {
    pub(crate) seq: u64,
    #[serde(default)]
    pub(crate) prev_hash: String,
    #[serde(default)]
    pub(crate) control: String,
    #[serde(default)]
    pub(crate) checkpoint: Option<CheckpointFields>,
    #[serde(default)]
    pub(crate) object: Option<GapFields>,
}

/// A gap record's object as read back; every field is absent in other
/// records' objects.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct GapFields {
    #[serde(default)]
    pub(crate) lost: Option<u64>,
    #[serde(default)]
    pub(crate) first_seq: Option<u64>,
    #[serde(default)]
    pub(crate) last_seq: Option<u64>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

impl ChainFields {
    /// The sequence numbers a gap record says were lost, with the reason.
    pub(crate) fn gap(&self) -> Option<(u64, u64, &str)> {
        if self.control != "audit" {
            return None;
        }
        let object = self.object.as_ref()?;
        let (first, last, lost) = (object.first_seq?, object.last_seq?, object.lost?);
        (first <= last && last - first + 1 == lost)
            .then(|| (first, last, object.reason.as_deref().unwrap_or("")))
    }
}

/// A checkpoint as read back.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CheckpointFields {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) key: String,
    pub(crate) signature: String,
}

/// Parses the chain fields of a line; `None` when it is not a record.
pub(crate) fn parse_line(line: &[u8]) -> Option<ChainFields> {
    serde_json::from_slice(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let head: Head = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(head.seq, 12);
        assert_eq!(head.to_string(), format!("12:{}", "ab".repeat(32)));
        assert!("12".parse::<Head>().is_err());
        assert!("x:00".parse::<Head>().is_err());
    }

    #[test]
    fn the_newline_is_not_hashed() {
        assert_eq!(line_hash(b"{}\n"), line_hash(b"{}"));
        assert_eq!(GENESIS.len(), 64);
    }
}

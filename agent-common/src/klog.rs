//! Which hook families write kernel log lines (aya-log) when the daemon
//! runs with `--kernel-log`: bits of the programs' read-only global
//! [`FAMILIES_GLOBAL`]. A family whose bit is clear has its log code
//! dropped by the verifier, as with logging off, while another family
//! logs.

/// Name of the global holding the bit set.
pub const FAMILIES_GLOBAL: &str = "KERNEL_LOG_FAMILIES";

/// The address hooks (`connect*`, `sendmsg*`): each decision.
pub const EGRESS: u8 = 1 << 0;
/// The packet backstop: each packet it drops.
pub const BACKSTOP: u8 = 1 << 1;
/// The file and exec hooks: paths they could not resolve or place.
pub const FILES: u8 = 1 << 2;
/// Every family.
pub const ALL: u8 = EGRESS | BACKSTOP | FILES;

//! Egress rule maps: an LPM trie of addresses pointing at port tables.
//!
//! Addresses are stored as IPv6; IPv4 addresses are stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so an IPv4-mapped IPv6 connect matches the IPv4 rules.
//! The trie gives the most specific address prefix; that prefix's port table
//! is compiled to already contain, in precedence order, the rules of every
//! less specific prefix that covers it, so the first matching row decides.

use core::mem::size_of;

/// Bits of the key in front of the address (generation and agent id).
pub const EGRESS_KEY_HEADER_BITS: u32 = 64;

/// Data part of an egress LPM trie key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressKey {
    /// Policy generation; compared first by the trie.
    pub generation: [u8; 4],
    /// Agent id, big-endian so the trie compares it bytewise.
    pub agent_id: [u8; 4],
    /// IPv6 address (IPv4-mapped for IPv4), network order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EgressKey>() == 24);

/// Value of an egress LPM trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressValue {
    /// Index into the port-table array.
    pub port_table: u32,
}
const _: () = assert!(size_of::<EgressValue>() == 4);

/// Protocol bits of [`PortRule::protocols`].
pub mod protocol {
    /// TCP (stream sockets).
    pub const TCP: u8 = 1 << 0;
    /// UDP (datagram sockets).
    pub const UDP: u8 = 1 << 1;
    /// Every protocol.
    pub const ANY: u8 = TCP | UDP;
}

/// One row of a port table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// First port of the range, host order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host order.
    pub port_hi: u16,
    /// Bit set of [`protocol`].
    pub protocols: u8,
    /// One of [`crate::verdict::decision`].
    pub decision: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Rule id reported in events.
    pub rule_id: u32,
}
const _: () = assert!(size_of::<PortRule>() == 12);

/// Rows per port table. A prefix whose flattened rules need more is rejected
/// at policy check.
pub const PORT_TABLE_ROWS: usize = 16;

/// Ordered rows for one address prefix; the first row that matches decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTable {
    /// Number of rows in use.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The rows; only the first `len` are meaningful.
    pub rows: [PortRule; PORT_TABLE_ROWS],
}
const _: () = assert!(size_of::<PortTable>() == 8 + 12 * PORT_TABLE_ROWS);

/// Port tables per generation half: generation `g` uses indices
/// `[(g % 2) * PORT_TABLES_PER_GENERATION, …)` so the next generation can be
/// written while the current one is live.
pub const PORT_TABLES_PER_GENERATION: u32 = 8192;

/// Maps an IPv4 address to the IPv4-mapped IPv6 form used in keys.
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

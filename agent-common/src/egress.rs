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

/// Grants the kernel holds at once, for every agent together.
pub const GRANT_SLOTS: u32 = 1024;

/// Rule ids of grants: this bit set, the grant's id in the bits below, so
/// records name the grant and no policy rule id (counted up from 1 at each
/// reload) can be mistaken for one.
pub const GRANT_RULE_BIT: u32 = 1 << 31;

/// Bits of a grant key in front of the address (agent id and port).
pub const GRANT_KEY_HEADER_BITS: u32 = 48;

/// Data part of a grant's LPM trie key: an operator's time-limited allow of
/// one port on an address prefix for one agent (`baton grant`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// Agent id, big-endian so the trie compares it bytewise.
    pub agent_id: [u8; 4],
    /// Port, big-endian; part of the prefix, so every grant names one.
    pub port: [u8; 2],
    /// IPv6 address (IPv4-mapped for IPv4), network order.
    pub addr: [u8; 16],
    /// Explicit padding, beyond every prefix.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<GrantKey>() == 24);

/// Value of a grant's LPM trie entry. The kernel honours the grant until
/// `expires_boot_ns` and for at most `max_connects` connects, whichever
/// ends first, so a daemon that dies leaves nothing open for longer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// `CLOCK_BOOTTIME` nanoseconds from which the grant opens nothing.
    pub expires_boot_ns: u64,
    /// Connects (and unconnected datagram sends) the grant allows; 0: no
    /// limit but time.
    pub max_connects: u32,
    /// The grant's counter in the connect-count array.
    pub slot: u32,
    /// Grant id, reported as rule id `GRANT_RULE_BIT | grant_id`.
    pub grant_id: u32,
    /// Bit set of [`protocol`].
    pub protocols: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<GrantValue>() == 24);

/// Key of the learned-address map: an address one agent may reach because
/// its DNS proxy resolved an allowed name to it. Per agent: names learned by
/// one agent open nothing for another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// Agent id.
    pub agent_id: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// IPv6 address, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LearnedKey>() == 24);

/// Port ranges one domain rule may list: the rows one (address, rule) pair
/// takes in a learned address.
pub const LEARNED_ROWS: usize = 4;

/// Rows one learned address holds for all the rules it was learned through
/// (several allowed names often share an address behind a CDN): 16
/// single-range rules, or four rules of four ranges. The kernel scans them
/// all, unrolled. When a new (address, rule) pair does not fit beside the
/// unexpired ones, the daemon refuses the new answer and records why; it
/// never evicts a pair still in force.
pub const LEARNED_ADDR_ROWS: usize = 16;

/// One allowed port range of a learned address, with the expiry of the
/// (address, rule) pair it belongs to: pairs expire on their own, so a
/// short-TTL name's ports close at its TTL even when a long-TTL name
/// shares the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedRow {
    /// `CLOCK_BOOTTIME` nanoseconds after which the kernel ignores the row,
    /// so a dead daemon leaves nothing open.
    pub expires_boot_ns: u64,
    /// First port of the range, host order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host order.
    pub port_hi: u16,
    /// Bit set of [`protocol`].
    pub protocols: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The domain rule the address was learned through.
    pub rule_id: u32,
    /// Explicit padding.
    pub _pad2: u32,
}
const _: () = assert!(size_of::<LearnedRow>() == 24);

/// Value of the learned-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedValue {
    /// Number of rows in use.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Allowed ports and protocols, each with its own expiry.
    pub rows: [LearnedRow; LEARNED_ADDR_ROWS],
}
const _: () = assert!(size_of::<LearnedValue>() == 8 + 24 * LEARNED_ADDR_ROWS);

/// Where an agent's DNS traffic is redirected: the daemon's proxy sockets
/// for that agent, on the loopback addresses. Ports are host order; 0 means
/// no socket of that kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsProxyPorts {
    /// UDP on 127.0.0.1.
    pub udp4: u16,
    /// TCP on 127.0.0.1.
    pub tcp4: u16,
    /// UDP on ::1.
    pub udp6: u16,
    /// TCP on ::1.
    pub tcp6: u16,
}
const _: () = assert!(size_of::<DnsProxyPorts>() == 8);

/// Capacity of the DNS proxy map: proxies of every agent in every network
/// namespace together.
pub const DNS_PROXY_ENTRIES: u32 = 4096;

/// Key of the DNS proxy map: an agent's proxy sockets exist per network
/// namespace, since a loopback address only reaches sockets in its own
/// namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsProxyKey {
    /// Agent id.
    pub agent_id: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Network namespace cookie (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<DnsProxyKey>() == 16);

/// The destination a socket's DNS traffic was redirected from, so replies
/// and `getpeername` can show it instead of the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    /// Address as the caller gave it (IPv6 or IPv4-mapped), network order.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// Proxy port the socket was sent to, host order.
    pub proxy_port: u16,
    /// The process that sent (or connected) to the proxy last, so the
    /// proxy can name who asked for a name it refuses.
    pub tgid: u32,
}
const _: () = assert!(size_of::<OriginalDestination>() == 24);

/// The DNS port.
pub const DNS_PORT: u16 = 53;

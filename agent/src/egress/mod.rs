//! Egress by name: the DNS proxy and the addresses it learns.
//!
//! The kernel decides connections by address, so a domain rule is turned
//! into addresses at the moment an agent resolves the name. The kernel
//! programs redirect the agent's port-53 traffic to a proxy in the daemon
//! ([`dns`]), one UDP socket and one TCP listener per agent. The proxy
//! refuses names the agent's rules ([`crate::policy::domain`]) do not allow, and for allowed
//! names forwards the query upstream and writes the answer's addresses into
//! that agent's allow map **before** it returns the answer.
//!
//! Two properties follow:
//!
//! * **No race.** By the time the client has an address, the kernel already
//!   allows it; the first `connect` never fails because the map write lost a
//!   race with it. If the write fails, the client gets `SERVFAIL`, never an
//!   address it cannot use.
//! * **Nothing stays open.** Each learned address carries an expiry time that
//!   the kernel checks itself on every `connect`. If the daemon dies, learned
//!   addresses lapse on their own; no cleanup by user space is needed for the
//!   allowlist to close again.
//!
//! Connecting to a literal address is decided by the CIDR rules alone, and an
//! explicit CIDR deny beats a learned name.

pub mod client;
pub mod dns;
pub mod service;

//! Baton: a host enforcement agent for AI agents.
//!
//! Kernel programs (in `agent-ebpf`) decide; this crate loads them, keeps
//! their maps in step with the policies, turns their events into audit
//! records and serves the local control socket.
//!
//! Data flows one way: [`policy`] parses and compiles policies, [`kernel`]
//! writes the compiled maps and attaches the programs, the kernel sends
//! events, and [`audit`] records them. [`identity`] admits processes to
//! agents; [`control`] is the local API that `baton exec` talks to;
//! [`daemon`] is `baton run`, which runs all of it. The modules form layers
//! (ARCHITECTURE.md), which `tests/module_layers.rs` checks.
#![deny(missing_docs)]

pub mod audit;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod egress;
pub mod explain;
pub mod fallback;
pub mod handover;
pub mod identity;
pub mod ids;
pub mod kernel;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod probe;

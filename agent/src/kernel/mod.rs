//! Everything that talks to the kernel: BTF offsets, loading and attaching
//! the programs, and writing the policy maps. What this kernel offers is
//! [`crate::probe`]'s, which also weighs the fallbacks.

pub mod backstop;
pub mod bpfsys;
pub mod btf;
pub mod cgroup;
pub mod detect;
pub mod klog;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod process;
pub mod ring;

use std::path::PathBuf;

use aya::{
    EbpfError,
    programs::{ProgramError, links::LinkError},
};
use thiserror::Error;

use self::{btf::BtfError, cgroup::CgroupError, pins::PinError};
pub use loader::Enforcer;

/// Errors while loading or attaching.
#[derive(Debug, Error)]
pub enum KernelError {
    /// BTF could not be read or lacks what the programs need.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// cgroup v2 is missing.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// aya could not read the kernel's BTF for attaching.
    #[error("cannot read kernel BTF for attaching programs: {0}")]
    AyaBtf(#[from] aya::BtfError),
    /// The object could not be loaded.
    #[error("cannot load Baton's eBPF object: {0}")]
    Object(#[from] EbpfError),
    /// A program could not be loaded or attached.
    #[error("cannot {action} program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// `load` or `attach`.
        action: &'static str,
        /// Underlying error.
        source: ProgramError,
    },
    /// A program is missing from the object (a build problem).
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The cgroup v2 root could not be opened.
    #[error("cannot open cgroup v2 root {path}: {source}")]
    CgroupRoot {
        /// The mount point.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Underlying error.
        source: aya::maps::MapError,
    },
    /// A map is missing from the object (a build problem).
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// Pinning or adopting failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A link could not be turned into a pinnable one.
    #[error("cannot pin the link of program {program}: {source}")]
    Link {
        /// Program name.
        program: &'static str,
        /// Underlying error.
        source: LinkError,
    },
}

/// Whether a control is in force, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlState {
    /// The kernel enforces it.
    Enforced,
    /// Not available; the reason says why.
    Unavailable(String),
}

/// The compiled eBPF object, built by `agent/build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

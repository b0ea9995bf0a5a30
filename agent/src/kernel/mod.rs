//! Everything that talks to the kernel: BTF offsets, loading and attaching
//! the programs, writing the policy maps, and probing what this kernel
//! offers.

pub mod bpfsys;
pub mod btf;
pub mod cgroup;
pub mod detect;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod probe;
pub mod ring;

pub use loader::{Enforcer, KernelError};

/// The compiled eBPF object, built by `agent/build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

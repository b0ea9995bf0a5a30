//! Policies: reading, validating and compiling them to kernel map entries.
//!
//! Nothing here touches the kernel: a policy set is parsed, validated and
//! compiled completely first, so a bad file can never leave a half-applied
//! set behind.

pub mod bundle;
pub mod compile;
pub mod diff;
pub mod domain;
pub mod eval;
pub mod families;
pub mod lint;
pub mod load;
pub mod schema;
pub mod source;
pub mod spec;
pub mod suggest;

pub use compile::{CompiledPolicySet, RuleRef, compile, compile_with, expand_on_disk};
pub use load::{LoadedPolicy, PolicyError, load_dir, load_files, parse_str};

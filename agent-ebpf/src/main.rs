//! Baton's kernel programs.
//!
//! Every hook starts with one lookup of the calling process in the identity
//! map and returns at once for processes that belong to no agent, so the rest
//! of the host pays one hash lookup per hooked call and nothing more.
#![no_std]
#![no_main]
// Atomic adds on map values (grant budgets): the BPF target has no atomic
// types, only the intrinsic.
#![feature(core_intrinsics)]
#![allow(internal_features)]

#[macro_use]
mod unroll;

/// A kernel-side log line through aya-log, for hook family `$family` (a
/// constant of `agent_common::klog`) at `$level` (`error`, `warn`, `info`,
/// `debug`, `trace`). Compiled into every program, and gone from what the
/// kernel runs unless the daemon starts with `--kernel-log` for that
/// family: the level and the families are read-only globals the loader
/// sets, so the verifier drops the branch (and never counts its
/// instructions) when logging is off. Lines go to the daemon's log with
/// target `kernel`.
macro_rules! klog {
    ($family:ident, $level:ident, $($arg:tt)+) => {
        if crate::klog_family_on(agent_common::klog::$family) {
            // aya-log takes a program context for a future use and ignores
            // it; the decision code this is for runs deep below the entry.
            aya_log_ebpf::$level!(&(), $($arg)+)
        }
    };
}

/// The hook families that log, set by the daemon ([`agent_common::klog`]).
#[unsafe(no_mangle)]
static KERNEL_LOG_FAMILIES: u8 = 0;

/// Whether hook family `family` writes kernel log lines.
#[inline(always)]
fn klog_family_on(family: u8) -> bool {
    // SAFETY: reading a plain static through a volatile load so the
    // daemon's value is used.
    unsafe { core::ptr::read_volatile(&KERNEL_LOG_FAMILIES) & family != 0 }
}

mod detect;
mod egress;
mod events;
mod files;
mod identity;
mod maps;
mod namespaces;
mod probe;
mod protect;
mod sockets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; the loop only
    // satisfies the type system.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

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

//! Baton's kernel programs live in the `agent` binary target of this crate;
//! this empty library only lets the daemon's build script depend on the
//! crate so that cargo rebuilds the programs when they change.
#![no_std]

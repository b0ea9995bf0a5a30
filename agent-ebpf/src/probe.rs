//! The smallest possible BPF LSM program. `baton probe` and the daemon load
//! it to learn whether this kernel really accepts BPF LSM programs: a kernel
//! may list `bpf` in its active LSMs and still refuse them.

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "file_open")]
pub fn probe_lsm(ctx: LsmContext) -> i32 {
    // Pass through whatever an earlier program decided.
    ctx.arg(1)
}

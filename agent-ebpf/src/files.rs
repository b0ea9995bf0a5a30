//! File access decisions with BPF LSM.
//!
//! Hook choice: `file_open` (5.7 for BPF LSM) runs for every open after the
//! path walk, on the `struct file` actually being opened, so symlinks, `..`,
//! relative and `openat` paths and `/proc/self/fd` re-opens all arrive
//! resolved. `bpf_d_path` is allowed on this hook on every kernel with BPF
//! LSM, so the path is the real one and not a string the caller chose.

use agent_common::{
    event::{EVENT_PATH_BYTES, FileEvent, file_flags, hook, kind},
    files::{FILE_KEY_HEADER_BITS, PATH_KEY_BYTES, right},
    identity::AgentRecord,
    verdict::{Verdict, decision, mode, verdict_for},
};
use aya_ebpf::{
    bindings::path,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_d_path, generated::bpf_probe_read_kernel},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    events::{Decision, count_drop, fill_header},
    maps::{
        EVENTS, FILE_RULES, PATH_BUF_BYTES, PATH_SCRATCH, PathScratch, active_generation,
        agent_policy, current_agent, kernel_offsets,
    },
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return 0;
    };
    try_file_open(&ctx, &agent).to_lsm(previous)
}

/// A resolved path in the per-CPU scratch buffer.
struct ResolvedPath {
    /// Length without the NUL; 0 when the path could not be resolved.
    len: usize,
    flags: u32,
}

#[inline(always)]
fn try_file_open(ctx: &LsmContext, agent: &AgentRecord) -> Verdict {
    let generation = active_generation();
    let offsets = kernel_offsets();
    let Some(policy) = agent_policy(generation, agent.agent_id) else {
        return Verdict::Denied;
    };
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return Verdict::Denied;
    };
    // SAFETY: per-CPU scratch from a successful lookup; nothing else uses it
    // while this program runs on this CPU.
    let scratch = unsafe { &mut *scratch };
    let file: *const u8 = ctx.arg(0);

    let mut f_mode: u32 = 0;
    // SAFETY: `file` is the hook's argument; the offset comes from BTF; the
    // helper faults safely.
    let read = unsafe {
        bpf_probe_read_kernel(
            (&mut f_mode as *mut u32).cast(),
            4,
            file.add(offsets.file_f_mode as usize).cast(),
        )
    };
    let mut rights = 0u32;
    if read == 0 {
        if f_mode & FMODE_READ != 0 {
            rights |= right::bit(right::READ);
        }
        if f_mode & FMODE_WRITE != 0 {
            rights |= right::bit(right::WRITE);
        }
    } else {
        rights = right::bit(right::READ) | right::bit(right::WRITE);
    }

    // SAFETY: `file + f_path` is the `struct path` inside the file the hook
    // hands us; the verifier checks the type from BTF.
    let resolved = unsafe {
        let path_ptr = file.add(offsets.file_f_path as usize) as *mut path;
        let written = bpf_d_path(
            path_ptr,
            scratch.buf.as_mut_ptr().cast(),
            PATH_BUF_BYTES as u32,
        );
        if written > 1 && offsets.resolved != 0 {
            ResolvedPath {
                // `bpf_d_path` never writes more than the buffer; the mask
                // says so to the verifier, which cannot know it, so every
                // later index derived from the length is provably in bounds.
                len: ((written - 1) as usize) & (PATH_BUF_BYTES - 1),
                flags: 0,
            }
        } else {
            ResolvedPath {
                len: 0,
                flags: file_flags::PATH_UNRESOLVED,
            }
        }
    };

    let (agent_mode, rule_decision, rule_id, denied_rights) = if resolved.len == 0 {
        // A path we cannot name is a path we cannot allow.
        (policy.mode, decision::DENY, 0, rights)
    } else {
        let (found, rule_id, denied) = match_rules(
            scratch,
            generation,
            agent.agent_id,
            resolved.len,
            rights,
            policy.file_default,
            policy.file_default_rule,
        );
        (policy.mode, found, rule_id, denied)
    };
    let verdict = if agent_mode == mode::QUARANTINE && rights & right::bit(right::WRITE) != 0 {
        Verdict::Denied
    } else {
        verdict_for(rule_decision, agent_mode)
    };
    if verdict != Verdict::Allowed {
        emit(
            scratch,
            agent,
            &resolved,
            rights,
            denied_rights,
            &Decision {
                hook: hook::FILE_OPEN,
                verdict,
                mode: agent_mode,
                rule_id,
                generation,
            },
        );
    }
    verdict
}

/// Looks the path up on component boundaries and combines the decisions of
/// every requested right: any denied right denies the open.
#[inline(always)]
fn match_rules(
    scratch: &mut PathScratch,
    generation: u32,
    agent_id: u32,
    path_len: usize,
    rights: u32,
    default_decision: u8,
    default_rule: u32,
) -> (u8, u32, u32) {
    scratch.key.data.generation = generation.to_be_bytes();
    scratch.key.data.agent_id = agent_id.to_be_bytes();
    let key_bytes = if path_len < PATH_KEY_BYTES {
        // The trailing `/` puts the path on a component boundary.
        scratch.buf[path_len & (PATH_BUF_BYTES - 1)] = b'/';
        path_len + 1
    } else {
        PATH_KEY_BYTES
    };
    // SAFETY: both buffers are larger than `PATH_KEY_BYTES`.
    unsafe {
        bpf_probe_read_kernel(
            scratch.key.data.path.as_mut_ptr().cast(),
            PATH_KEY_BYTES as u32,
            scratch.buf.as_ptr().cast(),
        );
    }
    scratch.key.prefix_len = FILE_KEY_HEADER_BITS + (key_bytes as u32) * 8;

    let value = FILE_RULES.get(&scratch.key);
    let mut denied = 0u32;
    let mut deny_rule = 0u32;
    let mut allow_rule = 0u32;
    const _: () = assert!(right::COUNT == 6, "the unrolled scan lists every right");
    unroll!(r in [0, 1, 2, 3, 4, 5] {
        if rights & right::bit(r) != 0 {
            let (mut found, mut rule_id) = match value {
                Some(value) => (value.decisions[r], value.rule_ids[r]),
                None => (decision::NONE, 0),
            };
            if found == decision::NONE {
                found = default_decision;
                rule_id = default_rule;
            }
            if found == decision::DENY {
                denied |= right::bit(r);
                if deny_rule == 0 {
                    deny_rule = rule_id;
                }
            } else if allow_rule == 0 {
                allow_rule = rule_id;
            }
        }
    });
    if denied != 0 {
        (decision::DENY, deny_rule, denied)
    } else {
        (decision::ALLOW, allow_rule, 0)
    }
}

#[inline(always)]
fn emit(
    scratch: &PathScratch,
    agent: &AgentRecord,
    resolved: &ResolvedPath,
    rights: u32,
    denied_rights: u32,
    decision: &Decision,
) {
    let Some(mut entry) = EVENTS.reserve::<FileEvent>(0) else {
        count_drop(agent.agent_id);
        return;
    };
    // SAFETY: the reservation is exactly one `FileEvent`; every field is
    // written below before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut event.header,
        kind::FILE,
        core::mem::size_of::<FileEvent>(),
        agent,
        decision,
    );
    event.rights = rights;
    event.denied_rights = denied_rights;
    let mut flags = resolved.flags;
    let mut len = resolved.len;
    if len > EVENT_PATH_BYTES {
        flags |= file_flags::PATH_TRUNCATED;
        len = EVENT_PATH_BYTES;
    }
    event.flags = flags;
    event.path_len = len as u32;
    // SAFETY: both buffers are at least `EVENT_PATH_BYTES` long.
    unsafe {
        bpf_probe_read_kernel(
            event.path.as_mut_ptr().cast(),
            EVENT_PATH_BYTES as u32,
            scratch.buf.as_ptr().cast(),
        );
    }
    entry.submit(0);
}

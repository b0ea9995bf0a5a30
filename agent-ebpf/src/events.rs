//! Filling the common event header and counting events the ring buffer
//! could not take (never silent).

use agent_common::{
    event::{EVENT_VERSION, EventHeader},
    identity::AgentRecord,
    verdict::Verdict,
};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
};

use crate::maps::{EVENT_DROPS, count, kernel_offsets};

/// tgid of the current process's parent, or 0 when it cannot be read.
///
/// The daemon walks the ancestor chain in procfs; a process that exits
/// right after its denied call is gone from procfs by then, and this is
/// the only way back to its parent. Only runs when an event is written.
#[inline(always)]
fn parent_tgid() -> u32 {
    let offsets = kernel_offsets();
    if offsets.resolved == 0 {
        return 0;
    }
    // SAFETY: the current task is valid for the whole program run; offsets
    // come from this kernel's BTF; the helper faults safely.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(parent) =
            bpf_probe_read_kernel(task.add(offsets.task_real_parent as usize) as *const *const u8)
        else {
            return 0;
        };
        bpf_probe_read_kernel(parent.add(offsets.task_tgid as usize) as *const u32).unwrap_or(0)
    }
}

/// What the hook decided, for the header.
pub struct Decision {
    pub hook: u16,
    pub verdict: Verdict,
    pub mode: u8,
    pub rule_id: u32,
    pub generation: u32,
}

/// Writes the common header of an event of `kind` and `size` bytes.
#[inline(always)]
pub fn fill_header(
    header: &mut EventHeader,
    kind: u16,
    size: usize,
    agent: &AgentRecord,
    decision: &Decision,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.version = EVENT_VERSION;
    header.kind = kind;
    header.size = size as u32;
    // SAFETY: helpers without memory arguments.
    header.time_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: as above.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.agent_id = agent.agent_id;
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.root_tgid = agent.root_tgid;
    header.hook = decision.hook;
    header.verdict = decision.verdict as u8;
    header.mode = decision.mode;
    header.rule_id = decision.rule_id;
    header.generation = decision.generation;
    header.ppid = parent_tgid();
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Counts one event for `agent_id` that the ring buffer had no room for.
#[inline(always)]
pub fn count_drop(agent_id: u32) {
    count(agent_id, |c| c.events_dropped += 1);
    match EVENT_DROPS.get_ptr_mut(agent_id) {
        Some(count) => {
            // SAFETY: per-CPU value from a successful lookup; no other writer
            // runs on this CPU while the program does.
            unsafe { *count += 1 };
        }
        None => {
            let _ = EVENT_DROPS.insert(agent_id, 1, 0);
        }
    }
}

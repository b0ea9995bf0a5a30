//! Agent identity across fork and exit.
//!
//! Hook choice: `tp_btf/sched_process_fork` fires in the parent after the
//! child is fully set up and before it first runs, so a child can never run
//! a single instruction outside its parent's agent (tp_btf needs 5.5).
//! `tp_btf/sched_process_exit` fires in the exiting thread after
//! `signal->live` is decremented, so `live == 0` means the whole process is
//! gone and its record can go; a thread group leader exiting early does not
//! free the remaining threads from their agent.

use agent_common::identity::{AgentRecord, admission};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::maps::{AGENT_OF_TGID, current_agent, kernel_offsets};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    try_sched_process_fork(&ctx).unwrap_or(0)
}

fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<i32, i64> {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(parent) = current_agent(parent_tgid) else {
        return Ok(0);
    };
    let offsets = kernel_offsets();
    if offsets.resolved == 0 {
        return Err(-1);
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: `child` is the task the tracepoint hands us; offsets come from
    // this kernel's BTF; the helper faults safely.
    let (child_pid, child_tgid) = unsafe {
        (
            bpf_probe_read_kernel(child.add(offsets.task_pid as usize) as *const i32)?,
            bpf_probe_read_kernel(child.add(offsets.task_tgid as usize) as *const i32)?,
        )
    };
    if child_pid != child_tgid {
        // A new thread shares its process's record.
        return Ok(0);
    }
    let record = AgentRecord {
        agent_id: parent.agent_id,
        root_tgid: parent.root_tgid,
        admission: admission::FORK,
        _pad: [0; 7],
    };
    AGENT_OF_TGID.insert(child_tgid as u32, record, 0)?;
    Ok(0)
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    try_sched_process_exit().unwrap_or(0)
}

fn try_sched_process_exit() -> Result<i32, i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if current_agent(tgid).is_none() {
        return Ok(0);
    }
    let offsets = kernel_offsets();
    if offsets.resolved == 0 {
        return Err(-1);
    }
    // SAFETY: the current task is valid for the whole program run; offsets
    // come from this kernel's BTF; the helper faults safely.
    let live = unsafe {
        let task = bpf_get_current_task() as *const u8;
        let signal: *const u8 =
            bpf_probe_read_kernel(task.add(offsets.task_signal as usize) as *const *const u8)?;
        bpf_probe_read_kernel(signal.add(offsets.signal_live as usize) as *const i32)?
    };
    if live == 0 {
        let _ = AGENT_OF_TGID.remove(tgid);
    }
    Ok(0)
}

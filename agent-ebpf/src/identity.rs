//! Agent identity across fork and exit.
//!
//! Hook choice: `tp_btf/sched_process_fork` fires in the parent after the
//! child is fully set up and before it first runs, so a child can never run
//! a single instruction outside its parent's agent (tp_btf needs 5.5).
//! `tp_btf/sched_process_exit` fires in the exiting thread after
//! `signal->live` is decremented, so `live == 0` means the whole process is
//! gone and its record can go; a thread group leader exiting early does not
//! free the remaining threads from their agent.
//!
//! Every tgid is born at `sched_process_fork`, so that is also where a
//! stale record for a reused pid is cleared: a new process belongs to its
//! parent's agent or to none, never to whatever its pid was before.

use agent_common::identity::{AgentRecord, ExecutableKey, MAX_CGROUP_LEVELS, admission};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
        generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::maps::{
    EXITED_AGENTS, SELECTED_CGROUPS, SELECTED_EXECUTABLES, admit, count, current_agent, forget,
    kernel_offsets,
};

/// The agent whose selected cgroup contains the current task, if any: the
/// task's own cgroup or one of its ancestors (a selected cgroup covers its
/// whole subtree).
#[inline(always)]
fn selected_cgroup_agent() -> Option<u32> {
    const _: () = assert!(
        MAX_CGROUP_LEVELS == 8,
        "the unrolled walk lists every level"
    );
    unroll!(level in [1, 2, 3, 4, 5, 6, 7, 8] {
        // SAFETY: helper without memory arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return None;
        }
        if let Some(agent_id) = SELECTED_CGROUPS.get_ptr(id) {
            // SAFETY: the pointer comes from a successful lookup.
            return Some(unsafe { *agent_id });
        }
    });
    None
}

fn record(agent_id: u32, root_tgid: u32, how: u8) -> AgentRecord {
    AgentRecord {
        agent_id,
        root_tgid,
        admission: how,
        _pad: [0; 7],
    }
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    try_sched_process_fork(&ctx).unwrap_or(0)
}

/// The new task's pid and tgid.
#[inline(always)]
fn child_ids(ctx: &BtfTracePointContext) -> Result<(i32, i32), i64> {
    let offsets = kernel_offsets();
    if offsets.resolved == 0 {
        return Err(-1);
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: `child` is the task the tracepoint hands us; offsets come from
    // this kernel's BTF; the helper faults safely.
    unsafe {
        Ok((
            bpf_probe_read_kernel(child.add(offsets.task_pid as usize) as *const i32)?,
            bpf_probe_read_kernel(child.add(offsets.task_tgid as usize) as *const i32)?,
        ))
    }
}

fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<i32, i64> {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let parent = match current_agent(parent_tgid) {
        Some(parent) => parent,
        None => {
            // A process found in a selected cgroup (moved there after the
            // daemon scanned it) joins the agent at its next fork, with
            // the child.
            let Some(agent_id) = selected_cgroup_agent() else {
                // Every new process starts here, so a record left behind
                // for its tgid (a process admitted by the daemon just as it
                // exited, whose exit found no record yet) must not make a
                // stranger that reuses the pid an agent process. A mark
                // lookup only, for the usual child that has none.
                let (child_pid, child_tgid) = child_ids(ctx)?;
                if child_pid == child_tgid && current_agent(child_tgid as u32).is_some() {
                    forget(child_tgid as u32);
                }
                return Ok(0);
            };
            let admitted = record(agent_id, parent_tgid, admission::CGROUP);
            admit(parent_tgid, admitted)?;
            admitted
        }
    };
    let (child_pid, child_tgid) = child_ids(ctx)?;
    if child_pid != child_tgid {
        // A new thread shares its process's record.
        return Ok(0);
    }
    let child = record(parent.agent_id, parent.root_tgid, admission::FORK);
    admit(child_tgid as u32, child)?;
    Ok(0)
}

/// Admission by executable identity and by cgroup at exec.
///
/// Hook choice: `tp_btf/sched_process_exec` (5.5) fires after the new
/// program is loaded and before it runs its first instruction, with the
/// `linux_binprm` whose `file` is the executable actually mapped (the
/// interpreter, for a `#!` script). The file's device and inode identify it;
/// the path the caller used does not matter.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    try_sched_process_exec(&ctx).unwrap_or(0)
}

fn try_sched_process_exec(ctx: &BtfTracePointContext) -> Result<i32, i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(agent) = current_agent(tgid) {
        // A process never changes agent, whatever it execs; the exec is
        // counted for the breakers (BPF LSM counts its own, where it loads,
        // so this only counts where it does not).
        count(agent.agent_id, |c| c.execs += 1);
        return Ok(0);
    }
    let offsets = kernel_offsets();
    if offsets.resolved == 0 {
        return Err(-1);
    }
    let bprm: *const u8 = ctx.arg(2);
    // SAFETY: `bprm` is the tracepoint's argument; offsets come from this
    // kernel's BTF; the helper faults safely.
    let key = unsafe {
        let file: *const u8 =
            bpf_probe_read_kernel(bprm.add(offsets.binprm_file as usize) as *const *const u8)?;
        let inode: *const u8 =
            bpf_probe_read_kernel(file.add(offsets.file_f_inode as usize) as *const *const u8)?;
        let ino: u64 =
            bpf_probe_read_kernel(inode.add(offsets.inode_i_ino as usize) as *const u64)?;
        let sb: *const u8 =
            bpf_probe_read_kernel(inode.add(offsets.inode_i_sb as usize) as *const *const u8)?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(offsets.sb_s_dev as usize) as *const u32)?;
        ExecutableKey { ino, dev, _pad: 0 }
    };
    if let Some(agent_id) = SELECTED_EXECUTABLES.get_ptr(key) {
        // SAFETY: the pointer comes from a successful lookup.
        let agent_id = unsafe { *agent_id };
        admit(tgid, record(agent_id, tgid, admission::EXECUTABLE))?;
        return Ok(0);
    }
    if let Some(agent_id) = selected_cgroup_agent() {
        admit(tgid, record(agent_id, tgid, admission::CGROUP))?;
    }
    Ok(0)
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    try_sched_process_exit().unwrap_or(0)
}

fn try_sched_process_exit() -> Result<i32, i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(agent) = current_agent(tgid) else {
        return Ok(0);
    };
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
        // Full, the map evicts its oldest entry; a failure loses only the
        // attribution of a report that comes after the exit.
        let _ = EXITED_AGENTS.insert(tgid, agent, 0);
        forget(tgid);
    }
    Ok(0)
}

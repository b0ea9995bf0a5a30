//! The detection programs (`agent-ebpf/src/detect.rs`): their offsets, and
//! loading and attaching them where BPF LSM is refused.
//!
//! They are BTF tracepoints, which load on kernels that refuse BPF LSM and
//! trampolines alike. Each one is attached and reported on its own.
//!
//! They are the last resort for file and exec rules. Where BPF LSM is
//! refused, `baton exec` agents get Landlock and the others get fanotify,
//! which denies opens and execs of deny-listed paths and nothing else. What
//! is left (create, delete, rename, link, chmod, truncate, executable
//! mappings; and everything where fanotify has no permission events or is
//! switched off) these programs see: they record it as `detected`, never as
//! denied, and kill the process when its policy says `onDetect: kill`.
//! [`DetectScope`] decides, per agent, which of those they watch; the flags
//! go into the agent's policy value, so a policy swap changes them
//! atomically with the rules.

use agent_common::detect::{DETECT_OFFSETS_GLOBAL, DetectOffsets};
use aya::{
    Ebpf,
    programs::{BtfTracePoint, links::FdLink},
};

use agent_common::identity::policy_flags;

use super::{
    ControlState, KernelError,
    btf::{Btf, BtfError},
    pins::PinDir,
};
use crate::policy::compile::CompiledAgent;

/// Each detection program and the tracepoint it attaches to.
pub fn programs() -> impl Iterator<Item = (&'static str, &'static str)> {
    agent_common::programs::with_role(agent_common::programs::Role::Detection)
        .map(|p| (p.name, p.target))
}

/// The offsets the detection programs need, from this kernel's BTF.
///
/// Syscall arguments are read from `struct pt_regs` as x86_64 lays it out
/// (and the programs know x86_64's syscall numbers), so elsewhere this says
/// why detection is unavailable.
pub fn offsets(btf: &Btf) -> Result<DetectOffsets, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err(format!(
            "detection knows the syscall numbers of x86_64 only, not {}",
            std::env::consts::ARCH
        ));
    }
    let member = |strukt: &str, name: &str| -> Result<u32, String> {
        btf.member_offset(strukt, name)
            .map_err(|e: BtfError| e.to_string())
    };
    Ok(DetectOffsets {
        regs_arg0: member("pt_regs", "di")?,
        regs_arg1: member("pt_regs", "si")?,
        regs_arg2: member("pt_regs", "dx")?,
        regs_arg3: member("pt_regs", "r10")?,
        regs_arg4: member("pt_regs", "r8")?,
        regs_nr: member("pt_regs", "orig_ax")?,
        task_fs: member("task_struct", "fs")?,
        fs_pwd: member("fs_struct", "pwd")?,
        task_files: member("task_struct", "files")?,
        files_fdt: member("files_struct", "fdt")?,
        fdtable_fd: member("fdtable", "fd")?,
        fdtable_max_fds: member("fdtable", "max_fds")?,
        resolved: 1,
    })
}

/// The global's name, for `EbpfLoader::override_global`.
pub const GLOBAL: &str = DETECT_OFFSETS_GLOBAL;

/// Loads and attaches every detection program, pinning the links in `pins`
/// when given (a probe's test load is not pinned). Returns the state of
/// each: a program that does not load leaves the rights it covers
/// undetected, and says so.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    pins: Option<&PinDir>,
) -> Vec<(&'static str, ControlState)> {
    programs()
        .map(|(program, tracepoint)| {
            let state = match attach_one(ebpf, program, tracepoint, btf, pins) {
                Ok(()) => ControlState::Enforced,
                Err(error) => ControlState::Unavailable(innermost(&error)),
            };
            (program, state)
        })
        .collect()
}

fn attach_one(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    tracepoint: &str,
    btf: &aya::Btf,
    pins: Option<&PinDir>,
) -> Result<(), KernelError> {
    let error = |action: &'static str| {
        move |source| KernelError::Program {
            program: program_name,
            action,
            source,
        }
    };
    let program: &mut BtfTracePoint = ebpf
        .program_mut(program_name)
        .ok_or(KernelError::MissingProgram(program_name))?
        .try_into()
        .map_err(error("load"))?;
    if let Some(pins) = pins
        && pins.keep_link(program_name)?
    {
        return Ok(());
    }
    program.load(tracepoint, btf).map_err(error("load"))?;
    let link = program.attach().map_err(error("attach"))?;
    if let Some(pins) = pins {
        let link = program.take_link(link).map_err(error("attach"))?;
        pins.pin_link(program_name, FdLink::from(link))?;
    }
    Ok(())
}

/// The error with its causes, for a one-line report.
fn innermost(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

/// What enforces file rules on this host, as far as detection cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectScope {
    /// The detection programs are attached (BPF LSM is refused).
    pub attached: bool,
    /// The fanotify listener runs and denies deny-listed opens and execs.
    pub fanotify: bool,
}

impl DetectScope {
    /// The `DETECT_*` and `KILL_ON_DETECT` bits of `agent`'s policy value.
    ///
    /// Agents whose processes all come through `baton exec` are held by
    /// Landlock and get none. For the others, what fanotify denies is left
    /// to fanotify (a call it denies fails, and only calls that succeed are
    /// detected, so nothing is recorded twice).
    pub fn flags(&self, agent: &CompiledAgent) -> u32 {
        if !self.attached || !agent.selected_outside_exec() {
            return 0;
        }
        let mut flags = policy_flags::DETECT_CHANGES | policy_flags::DETECT_MMAP_EXEC;
        if !self.fanotify {
            flags |= policy_flags::DETECT_OPEN | policy_flags::DETECT_EXEC;
        }
        if agent.kill_on_detect {
            flags |= policy_flags::KILL_ON_DETECT;
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{compile, parse_str};

    fn agent(selector: &str, files: &str) -> CompiledAgent {
        let text = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n  selector:\n    agent: a\n{selector}  files:\n    deny: [/srv]\n{files}"
        );
        let set = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        set.agents["a"].clone()
    }

    #[test]
    fn detection_covers_what_nothing_else_enforces() {
        let selected = agent("    executables: [/opt/a]\n", "");
        let killing = agent("    executables: [/opt/a]\n", "    onDetect: kill\n");
        let exec_only = agent("", "    onDetect: kill\n");
        let with_fanotify = DetectScope {
            attached: true,
            fanotify: true,
        };
        let alone = DetectScope {
            attached: true,
            fanotify: false,
        };
        let changes = policy_flags::DETECT_CHANGES | policy_flags::DETECT_MMAP_EXEC;
        assert_eq!(with_fanotify.flags(&selected), changes);
        assert_eq!(alone.flags(&selected), policy_flags::DETECT_ANY);
        assert_eq!(
            alone.flags(&killing),
            policy_flags::DETECT_ANY | policy_flags::KILL_ON_DETECT
        );
        assert_eq!(
            alone.flags(&exec_only),
            0,
            "Landlock holds baton exec agents"
        );
        assert_eq!(DetectScope::default().flags(&killing), 0, "BPF LSM denies");
    }
}

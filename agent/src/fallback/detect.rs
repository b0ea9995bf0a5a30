//! The last resort for file and exec rules: detection in the kernel.
//!
//! Where BPF LSM is refused, `baton exec` agents get Landlock and the others
//! get fanotify, which denies opens and execs of deny-listed paths and
//! nothing else. What is left (create, delete, rename, link, chmod,
//! truncate, executable mappings; and everything where fanotify has no
//! permission events or is switched off) the kernel's detection programs
//! see: they record it as `detected`, never as denied, and kill the process
//! when its policy says `onDetect: kill`.
//!
//! This decides, per agent, which of those the programs watch; the flags go
//! into the agent's policy value, so a policy swap changes them atomically
//! with the rules.

use agent_common::identity::policy_flags;

use super::fanotify::selected_outside_exec;
use crate::policy::compile::CompiledAgent;

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
        if !self.attached || !selected_outside_exec(agent) {
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
    use crate::policy::{compile, parse_str, spec::Name};

    fn agent(selector: &str, files: &str) -> CompiledAgent {
        let text = format!(
            "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: p\nspec:\n  selector:\n    agent: a\n{selector}  files:\n    deny: [/srv]\n{files}"
        );
        let set = compile(&parse_str(Path::new("p.yaml"), &text).unwrap(), 1).unwrap();
        set.agents[&Name("a".into())].clone()
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

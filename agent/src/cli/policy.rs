//! `baton policy …`.

use std::path::PathBuf;

use anyhow::Context;

use super::PolicyCommand;
use crate::policy::{compile_with, expand_on_disk, load_dir, load_files};

/// Runs a policy subcommand.
pub fn run(command: &PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { paths } => check(paths),
    }
}

fn check(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut policies = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            policies.extend(load_dir(path)?);
        } else {
            files.push(path.clone());
        }
    }
    policies.extend(load_files(&files)?);
    let set = compile_with(&policies, 1, &expand_on_disk).context("policies do not compile")?;
    for (agent, compiled) in &set.agents {
        let mut selectors = vec![format!("baton exec --agent {agent}")];
        selectors.extend(compiled.cgroups.iter().map(|c| format!("cgroup {c}")));
        selectors.extend(
            compiled
                .executables
                .iter()
                .map(|e| format!("executable {e}")),
        );
        println!(
            "agent {agent}: policies {}; selected by {}; {} egress entries, {} file entries",
            compiled.policies.join(", "),
            selectors.join(", "),
            compiled.egress.len(),
            compiled.files.len()
        );
        if compiled.policies.len() > 1 {
            println!(
                "  note: {} policies select agent {agent}; their rules are merged: enforce wins over audit, a deny default over an allow default, and the most specific rule decides (deny wins a tie)",
                compiled.policies.len()
            );
        }
    }
    println!(
        "ok: {} policies, {} agents",
        policies.len(),
        set.agents.len()
    );
    Ok(())
}

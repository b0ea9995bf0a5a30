//! `baton policy …`.

use std::path::PathBuf;

use anyhow::Context;

use super::PolicyCommand;
use crate::policy::{compile, load_dir, load_files};

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
    let set = compile(&policies, 1).context("policies do not compile")?;
    for (agent, compiled) in &set.agents {
        println!(
            "agent {agent}: policies {}; {} egress entries, {} file entries",
            compiled.policies.join(", "),
            compiled.egress.len(),
            compiled.files.len()
        );
    }
    println!(
        "ok: {} policies, {} agents",
        policies.len(),
        set.agents.len()
    );
    Ok(())
}

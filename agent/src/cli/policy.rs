//! `baton policy …`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::PolicyCommand;
use crate::{
    keys::{KeyFormat, format_public, parse_public},
    policy::{
        LoadedPolicy, bundle, compile_with, diff, expand_on_disk, load_dir, load_files, schema,
        suggest,
    },
};

/// Runs a policy subcommand.
pub fn run(command: &PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { paths } => check(paths),
        PolicyCommand::Schema => {
            print!("{}", schema::schema_text());
            Ok(())
        }
        PolicyCommand::Diff { old, new, json } => diff_command(old, new, *json),
        PolicyCommand::Suggest { from, agent, name } => {
            let yaml = suggest::suggest_from_files(from, agent, name.as_deref())?;
            print!("{yaml}");
            Ok(())
        }
        PolicyCommand::Keygen { out } => keygen(out),
        PolicyCommand::Sign { key, out, bundle } => sign(key, bundle, out.as_deref()),
        PolicyCommand::Verify { pubkey, bundle } => verify(pubkey, bundle),
    }
}

/// Reads files and directories as `check` does.
fn load_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<LoadedPolicy>> {
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
    Ok(policies)
}

fn check(paths: &[PathBuf]) -> anyhow::Result<()> {
    let policies = load_paths(paths)?;
    let set = compile_with(&policies, crate::ids::RuleId::FIRST, &expand_on_disk)
        .context("policies do not compile")?;
    let warnings = crate::policy::lint::lint(&set);
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
        for warning in warnings.iter().filter(|w| w.agent == agent.as_str()) {
            println!("  warning: {}", warning.message);
        }
    }
    println!(
        "ok: {} policies, {} agents",
        policies.len(),
        set.agents.len()
    );
    Ok(())
}

fn diff_command(old: &Path, new: &Path, json: bool) -> anyhow::Result<()> {
    let old_set = load_paths(&[old.to_path_buf()]).context("the old policies")?;
    let new_set = load_paths(&[new.to_path_buf()]).context("the new policies")?;
    let changes = diff::diff(&old_set, &new_set)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else {
        print!("{}", changes.to_text());
    }
    Ok(())
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let public = bundle::generate_key_pair(out)?;
    eprintln!(
        "wrote {} (private, keep it secret) and {}; the public key, for trustedKeys:",
        out.display(),
        bundle::public_key_path(out).display()
    );
    println!("{}", format_public(&public, KeyFormat::Hex));
    Ok(())
}

fn sign(key: &Path, path: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let key = bundle::load_signing_key(key)?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Signing vouches for the content: never sign what would be rejected.
    let policies = bundle::parse_bundle(path, &bytes, &bundle::TrustPolicy::none())?;
    if policies.is_empty() {
        bail!("{}: holds no policy; nothing to sign", path.display());
    }
    compile_with(
        &policies,
        crate::ids::RuleId::FIRST,
        &crate::policy::compile::expand_literally,
    )
    .with_context(|| format!("{}: the policies do not compile", path.display()))?;
    let signed = bundle::sign(&key, &bytes);
    let target = out.unwrap_or(path);
    write_replacing(target, &signed)?;
    eprintln!(
        "signed {} ({} policies) with key {}",
        target.display(),
        policies.len(),
        format_public(&key.verifying_key(), KeyFormat::Hex)
    );
    Ok(())
}

/// Writes through a temporary file and a rename, so that a reader (a
/// watching daemon) sees the old bundle or the new one, never half of one.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".baton-tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&temporary, meta.permissions());
    }
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn verify(pubkeys: &[String], path: &Path) -> anyhow::Result<()> {
    let keys = pubkeys
        .iter()
        .map(|k| parse_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = bundle::verify(&path.display().to_string(), &bytes, &keys)?;
    println!(
        "ok: {} is signed by {}",
        path.display(),
        format_public(&key, KeyFormat::Hex)
    );
    Ok(())
}

//! `baton uninstall`.

use anyhow::Context;

use super::UninstallArgs;
use crate::{
    config::Config,
    handover::{DEFAULT_STATE_DIR, StateDir},
    kernel::pins::{DEFAULT_PIN_DIR, lock_for_removal, remove_all},
};

/// Detaches every program and removes the pins and the state directory.
pub fn run(args: &UninstallArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let pin_dir = args
        .pin_dir
        .clone()
        .or(config.pin_dir)
        .unwrap_or_else(|| DEFAULT_PIN_DIR.into());
    let state_dir = args
        .state_dir
        .clone()
        .or(config.state_dir)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    // Held while removing, so a daemon starting meanwhile waits for a clean
    // directory instead of adopting half of one.
    let _lock = lock_for_removal(&pin_dir)?;
    let removed = remove_all(&pin_dir)
        .with_context(|| format!("cannot remove the pins under {}", pin_dir.display()))?;
    if removed.is_empty() {
        println!("nothing pinned under {}", pin_dir.display());
    }
    for path in &removed {
        println!("removed {}", path.display());
    }
    if state_dir.exists() {
        for path in StateDir::open(&state_dir)?.remove() {
            println!("removed {}", path.display());
        }
    }
    println!("Baton's programs are detached; nothing is enforced until the daemon starts again.");
    Ok(())
}

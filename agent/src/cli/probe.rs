//! `baton probe`.

use super::ProbeArgs;
use crate::probe::{probe, probe_pins};

/// Prints the probe report.
pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let mut report = probe();
    probe_pins(&mut report, &args.pin_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

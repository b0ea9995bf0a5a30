//! `baton probe`.

use super::ProbeArgs;
use crate::kernel::probe::probe;

/// Prints the probe report.
pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let report = probe();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

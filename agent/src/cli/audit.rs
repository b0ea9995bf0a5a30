//! `baton audit`: print the signing key, fetch the live head, verify logs.

use anyhow::{Context as _, anyhow, bail};

use super::{AuditCommand, VerifyArgs};
use crate::{
    audit::{
        Head,
        stream::fetch_head,
        verify::{VerifyOptions, verify},
    },
    keys,
};

/// Exit status of `verify` when the log is intact but a final record was
/// left incomplete: distinct from tampering (1).
pub const EXIT_INCOMPLETE: i32 = 3;

/// Exit status of `verify` when the log is intact but declares records the
/// writer lost (gap records): distinct from tampering (1) and incomplete
/// records (3).
pub const EXIT_GAPS: i32 = 4;

/// Runs one `baton audit` subcommand.
pub fn run(command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Pubkey { key, format } => {
            let key = keys::load(key)?;
            println!("{}", keys::format_public(&key.verifying_key(), *format));
            Ok(())
        }
        AuditCommand::Head { control_socket } => {
            match fetch_head(control_socket)? {
                Some(head) => println!("{head}"),
                None => bail!("the daemon has not written any record yet"),
            }
            Ok(())
        }
        AuditCommand::Verify(args) => run_verify(args),
    }
}

fn run_verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let key = keys::parse_public(&args.pubkey)?;
    let head = match (&args.head, args.live) {
        (Some(text), _) => Some(text.parse::<Head>().map_err(|e| anyhow!("--head: {e}"))?),
        (None, true) => Some(
            fetch_head(&args.control_socket)
                .context("--live: cannot fetch the daemon's head")?
                .ok_or_else(|| anyhow!("--live: the daemon has not written any record yet"))?,
        ),
        (None, false) => None,
    };
    let given_head = head.is_some();
    let report = verify(&args.files, &VerifyOptions { key, head })?;
    for line in report.lines(given_head) {
        println!("{line}");
    }
    if let Some(problem) = &report.problem {
        bail!("the audit log failed verification: {problem}");
    }
    if !report.incomplete.is_empty() {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        eprintln!(
            "baton: the audit log verifies, but {} final record(s) were left incomplete by a \
             writer that stopped mid-write (not tampering)",
            report.incomplete.len()
        );
        std::process::exit(EXIT_INCOMPLETE);
    }
    if !report.gaps.is_empty() {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        for gap in &report.gaps {
            eprintln!("baton: {gap}");
        }
        eprintln!(
            "baton: the audit log verifies, but the writer lost {} record(s) and recorded \
             the loss (not tampering)",
            report.gaps.iter().map(|g| g.lost()).sum::<u64>()
        );
        std::process::exit(EXIT_GAPS);
    }
    Ok(())
}

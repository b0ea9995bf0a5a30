//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod daemon;
pub mod exec;
pub mod policy;
pub mod probe;

/// Baton: kernel-enforced egress, file and exec policy for AI agents.
///
/// Start the daemon with `baton run`, then start agents with
/// `baton exec --agent NAME -- COMMAND`. Every denial is written to the audit
/// log as one JSON line.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load policies, attach the kernel programs, record
    /// decisions. Needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON).
    Run(RunArgs),
    /// Run COMMAND as a member of an agent: it and every process it starts
    /// are held to that agent's policy, for good.
    Exec(ExecArgs),
    /// Show what this kernel offers Baton and which controls it can enforce.
    Probe(ProbeArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `baton run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/baton/config.yaml, when present].
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of policy files (*.yaml, *.yml) [default: /etc/baton/policies].
    #[arg(long, env = "BATON_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Audit log, JSON lines [default: /var/log/baton/audit.jsonl].
    #[arg(long, env = "BATON_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Control socket that `baton exec` talks to [default: /run/baton/baton.sock].
    #[arg(long, env = "BATON_SOCKET")]
    pub control_socket: Option<PathBuf>,
}

/// `baton exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Agent to join; a loaded policy must select it.
    #[arg(long)]
    pub agent: String,
    /// Control socket of the daemon.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Run the command as this user (name or uid), with its primary group
    /// and supplementary groups. Root only. The process is admitted to the
    /// agent before it drops privileges.
    #[arg(long)]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// `baton probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `baton policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate and compile policy files; exit non-zero on the first error,
    /// printed as `file:line:column: message`.
    Check {
        /// Policy files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

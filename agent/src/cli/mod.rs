//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use crate::daemon::RunArgs;

pub mod audit;
pub mod breaker;
pub mod events;
pub mod exec;
pub mod grant;
pub mod policy;
pub mod probe;
pub mod status;
pub mod taint;
pub mod uninstall;
pub mod why;

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
    /// What the running daemon enforces, per agent and control.
    Status(StatusArgs),
    /// Inspect and operate the circuit breakers of a running daemon.
    #[command(subcommand)]
    Breaker(BreakerCommand),
    /// Open one port of an address prefix or a name to an agent for a
    /// while: the kernel stops honouring the grant when its time runs out
    /// or after its last allowed connect, daemon or not. Root only, and refused to
    /// every process in an agent. `baton grant list` and `baton grant
    /// revoke ID` show and end grants.
    Grant(GrantArgs),
    /// Agents that opened one of their secrets (`files.secrets`) and are
    /// held to their `egress.afterSecret` rules: list them, or lift one
    /// agent's taint. Root only, and refused to every process in an agent.
    #[command(subcommand)]
    Taint(TaintCommand),
    /// Why was that refused? Run inside an agent (no root needed), print
    /// that agent's recent denials with the rule that decided each; an
    /// agent sees only its own. Outside every agent, root may name one.
    Why(WhyArgs),
    /// Work with the audit trail: verify it, print the signing key or the
    /// live chain head.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show audit records from the running daemon, one line each; with
    /// --follow, keep showing them as they are written.
    Events(EventsArgs),
    /// Detach every Baton program and remove its pinned maps and state:
    /// enforcement stops. Refuses while a daemon is running; stop it first.
    Uninstall(UninstallArgs),
}

/// Prints a daemon's `Done` reply; an `Error` (or anything else) is the
/// command's error.
pub(crate) fn print_done(reply: crate::control::Reply) -> anyhow::Result<()> {
    use crate::control::Reply;
    match reply {
        Reply::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Reply::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// `baton grant`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GrantArgs {
    /// Agent to grant to.
    #[arg(required = true)]
    pub agent: Option<String>,
    /// Destination: ADDRESS[/PREFIX]:PORT, IPv6 in brackets (e.g.
    /// 127.0.0.1:8080, 10.1.0.0/16:443, [2001:db8::/64]:443), or NAME:PORT
    /// (api.example.com:443, *.example.com:443) for an agent whose DNS goes
    /// through Baton's proxy (its policy has a domain rule): the name
    /// resolves for the grant's life and the addresses it resolves to open.
    /// A grant opens what the agent's `egress.default` denies; the policy's
    /// own rules, its denies included, keep deciding.
    #[arg(long, required = true)]
    pub allow: Option<String>,
    /// How long, e.g. 90s, 15m, 2h (at most 7 days).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration, required = true)]
    pub duration: Option<std::time::Duration>,
    /// End the grant after this many connects (each unconnected datagram
    /// send counts as one); without it, only time ends it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connects: Option<u32>,
    /// tcp, udp or any.
    #[arg(long, default_value = "any", value_parser = ["tcp", "udp", "any"])]
    pub protocol: String,
    /// Control socket of the daemon.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// `list` or `revoke`.
    #[command(subcommand)]
    pub command: Option<GrantCommand>,
}

/// `baton grant list|revoke`.
#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// The grants in force, with the connects each has allowed and the
    /// time it has left.
    List {
        /// Print JSON, one grant per line.
        #[arg(long)]
        json: bool,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// End a grant now.
    Revoke {
        /// Grant id, as `baton grant list` shows it.
        id: u32,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
}

/// `baton uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Configuration file, for `pinDir` and `stateDir` [default: /etc/baton/config.yaml, when present].
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Pin directory to remove [default: /sys/fs/bpf/baton].
    #[arg(long, env = "BATON_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// State directory to clear [default: /run/baton].
    #[arg(long, env = "BATON_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
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
    /// Where a daemon pins its programs: each one pinned there is checked
    /// against the kernel, and a detached one is reported.
    #[arg(long, default_value = crate::kernel::pins::DEFAULT_PIN_DIR)]
    pub pin_dir: std::path::PathBuf,
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
    /// Print the JSON Schema of a policy document, the one kept in
    /// policies/agentpolicy.schema.json for editors.
    Schema,
    /// Show what NEW allows or denies that OLD did not, per agent: egress
    /// destinations, file and exec rules, defaults and modes.
    Diff {
        /// The policies in force: a file, a bundle or a directory.
        old: PathBuf,
        /// The policies proposed.
        new: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Learn mode: propose the smallest policy that would have allowed
    /// everything an agent did, from the audit log of a run in audit mode.
    /// Prints a commented policy to review.
    Suggest {
        /// Audit log files (JSON lines); `-` reads standard input.
        #[arg(long = "from", required = true)]
        from: Vec<PathBuf>,
        /// The agent whose records to learn from.
        #[arg(long)]
        agent: String,
        /// Name of the proposed policy [default: the agent's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Make an ed25519 key pair for signing policy bundles: the private key
    /// at PATH (mode 0600) and the public key at PATH.pub. Prints the
    /// public key in hex, for `trustedKeys`.
    Keygen {
        /// Where to write the private key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle (a policy file): writes a `# baton-signature:` first
    /// line over the content, replacing an old one. Refuses a bundle that
    /// does not compile.
    Sign {
        /// The private key (`baton policy keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Write the signed bundle here instead of over BUNDLE.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Check a bundle's signature: exit 0 if one of the keys signed it and
    /// nothing changed since, 1 otherwise.
    Verify {
        /// A trusted public key: hex, base64, or a file holding either or a
        /// PEM public key. May be repeated.
        #[arg(long, required = true)]
        pubkey: Vec<String>,
        /// The bundle.
        bundle: PathBuf,
    },
}

/// `baton audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the public half of the checkpoint signing key, to give to
    /// `baton audit verify --pubkey`.
    Pubkey {
        /// The signing key file.
        #[arg(long, default_value = crate::audit::config::DEFAULT_KEY_FILE)]
        key: PathBuf,
        /// How to spell the key.
        #[arg(long, value_enum, default_value = "hex")]
        format: crate::keys::KeyFormat,
    },
    /// Check the hash chain and the checkpoint signatures of audit log
    /// files (in any order; they may span rotations). Names the first
    /// record that was edited, deleted, reordered or forged. Exit status:
    /// 0 intact, 1 tampered or records missing, 3 intact but a final record
    /// was left incomplete by a writer that stopped mid-write.
    Verify(VerifyArgs),
    /// Print the daemon's live chain head as SEQ:HASH, to keep somewhere
    /// safe and give to `baton audit verify --head` later.
    Head {
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
}

/// `baton audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The public key checkpoints must be signed with: hex, base64, or a
    /// file holding either or a PEM public key (`baton audit pubkey`).
    #[arg(long)]
    pub pubkey: String,
    /// A head known to be genuine, as SEQ:HASH (from `baton audit head` or
    /// a forwarded checkpoint): records missing after it are reported.
    #[arg(long, conflicts_with = "live")]
    pub head: Option<String>,
    /// Ask the running daemon for its live head and check the files
    /// against it.
    #[arg(long)]
    pub live: bool,
    /// Control socket of the daemon, for --live.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Audit log files (the active file and rotated ones).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `baton events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep showing records as they are written, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only this agent's records.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only records with this verdict (denied, would-deny, allowed,
    /// detected, info).
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only records of this control (egress, dns, file, exec, policy,
    /// daemon, audit).
    #[arg(long)]
    pub control: Option<String>,
    /// Print each record as its JSON line, exactly as written.
    #[arg(long)]
    pub json: bool,
    /// Recent records to show first (from those written since the daemon
    /// started, at most 1024).
    #[arg(long, short = 'n', default_value_t = 10)]
    pub lines: usize,
    /// Control socket of the daemon.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// `baton breaker …`.
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Every agent's breaker state and counters.
    List {
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Close an agent's breaker now and lift its quarantine or freeze.
    Reset {
        /// Agent name.
        agent: String,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Open an agent's breaker by hand; it stays open until reset.
    Trip {
        /// Agent name.
        agent: String,
        /// What to do to the agent.
        #[arg(long, value_enum)]
        action: crate::breaker::Action,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
}

/// `baton taint …`.
#[derive(Debug, Subcommand)]
pub enum TaintCommand {
    /// Every tainted agent: the secret, the process that opened it, when.
    List {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
    /// Lift an agent's taint: its full egress policy applies again, until
    /// it opens a secret again. Connections cut while it was tainted stay
    /// cut.
    Clear {
        /// Agent name.
        agent: String,
        /// Control socket of the daemon.
        #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
    },
}

/// `baton why`.
#[derive(Debug, clap::Args)]
pub struct WhyArgs {
    /// The agent, for root outside every agent; inside an agent, its own
    /// (the default).
    #[arg(long)]
    pub agent: Option<String>,
    /// How many of the most recent denials (1 to 200), from the records
    /// the daemon still holds in memory (its last 1,024 on the host).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub recent: u16,
    /// Print each record as JSON, one per line, exactly as in the audit
    /// trail.
    #[arg(long)]
    pub json: bool,
    /// Control socket of the daemon.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// `baton status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Control socket of the daemon.
    #[arg(long, env = "BATON_SOCKET", default_value = crate::config::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

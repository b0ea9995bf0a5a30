//! Developer tasks for Baton: `cargo xtask setup | build | run | test | vm | lint`,
//! and the measuring ones: `bench`, `soak`, `verifier-stats`.
//!
//! Every task installs what it is missing first (idempotently, saying what it
//! does), so a newcomer needs nothing but this repository and rustup.

mod bench;
mod deploy;
mod setup;
mod soak;
mod test;
mod util;
mod verifier;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Baton's developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, bpf-linker,
    /// bpffs and securityfs mounts, Debian packages, and the VM test kit
    /// (QEMU, virtme-ng, Debian 6.1 and 6.12 kernels). Safe to repeat.
    Setup {
        /// Skip the VM test kit.
        #[arg(long)]
        no_vm: bool,
    },
    /// Build the daemon (with its eBPF programs) and the test helpers.
    Build,
    /// Build, then start the daemon as root with the policies in `policies/`.
    Run {
        /// Extra arguments for `baton run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, host-kernel integration, then the VM suite on
    /// each test kernel. Exits non-zero on any failure.
    Test {
        /// Leave out the VM suite (the summary says so). The VM suite is the
        /// only place BPF LSM file enforcement is tested.
        #[arg(long)]
        no_vm: bool,
        /// Run only the tests whose names contain this, on the host and in
        /// each VM (libtest's name filter), e.g. `--filter audit` while
        /// working on one area. The full run is what counts.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Run a command inside a test kernel with BPF LSM enabled.
    Vm {
        /// Kernel to boot.
        #[arg(long, value_parser = ["6.1", "6.12"])]
        kernel: String,
        /// Command to run (as root) inside the VM.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// rustfmt and clippy (-D warnings) on the whole workspace.
    Lint,
    /// Benchmarks, reported as ratios against a baseline measured in the
    /// same run.
    Bench(bench::BenchArgs),
    /// A mixed hostile load against a real daemon for a while (control
    /// socket abuse, namespace bursts, denied-connect floods, reloads, a
    /// SIGKILL and restart every minute) while a prober agent checks that
    /// allowed connects work and denied ones never do. Reports leaks,
    /// misses, the daemon's memory and descriptors, and audit records
    /// against the kernel's counters.
    Soak(soak::SoakArgs),
    /// Boot each test kernel (6.1 and 6.12 unless --kernel picks one),
    /// start the daemon there with BPF LSM on, and print every program's
    /// verified instruction count against the kernel's limit (1,000,000),
    /// and how long the daemon took to load everything. Exits non-zero
    /// when a program fails to load where its hook exists, or uses more
    /// than 50% of the limit.
    VerifierStats(verifier::VerifierArgs),
    /// Regenerate the AgentPolicy CustomResourceDefinition
    /// (deploy/kubernetes/agentpolicy-crd.yaml) from the policy's JSON
    /// Schema (policies/agentpolicy.schema.json).
    Crd,
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the daemon and the test helper binary.
pub fn build() -> Result<()> {
    // The default members leave out agent-ebpf, which only builds for the
    // BPF target (agent/build.rs does that).
    println!("build: cargo build");
    util::run(cargo().args(["build", "--bins"]))
}

/// Builds `(package, binary)` pairs with the release profile.
pub fn build_release(binaries: &[(&str, &str)]) -> Result<()> {
    let mut cargo = cargo();
    cargo.args(["build", "--release"]);
    for (package, binary) in binaries {
        cargo.args(["--package", package, "--bin", binary]);
    }
    let names: Vec<&str> = binaries.iter().map(|(_, binary)| *binary).collect();
    println!("build: cargo build --release ({})", names.join(", "));
    util::run(&mut cargo)
}

fn run_daemon(args: &[String]) -> Result<()> {
    setup::setup(&setup::SetupOptions { vm: false })?;
    build()?;
    let root = workspace_root();
    let baton = root.join("target/debug/baton");
    if !nix_is_root() {
        bail!(
            "baton run needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN): run cargo xtask run as root"
        );
    }
    println!(
        "run: {} run --policy-dir {} --cleanup-on-exit {}",
        baton.display(),
        root.join("policies").display(),
        args.join(" ")
    );
    // A development run detaches everything when it stops; an installed
    // daemon keeps enforcing (see README, "Fail-closed").
    let status = Command::new(&baton)
        .arg("run")
        .arg("--policy-dir")
        .arg(root.join("policies"))
        .arg("--cleanup-on-exit")
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", baton.display()))?;
    if !status.success() {
        bail!("baton run exited with {status}");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn run_vm(kernel: &str, command: &[String]) -> Result<()> {
    let kit = setup::setup(&setup::SetupOptions { vm: true })?;
    let image = kit
        .kernels
        .iter()
        .find(|k| k.name == kernel)
        .with_context(|| format!("no {kernel} kernel in the kit"))?;
    let command = command
        .iter()
        .map(util::shell_quote)
        .collect::<Vec<_>>()
        .join(" ");
    let outcome = vm::run_in_vm(&kit, image, &command, &[])?;
    println!("vm: console log in {}", outcome.log.display());
    if outcome.exit_code != 0 {
        bail!(
            "command exited with {} inside the {kernel} VM",
            outcome.exit_code
        );
    }
    Ok(())
}

fn lint() -> Result<()> {
    setup::setup(&setup::SetupOptions { vm: false })?;
    util::run(cargo().args(["fmt", "--all", "--check"]))?;
    util::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Licences, banned crates and sources, from `deny.toml`. Advisories are
    // left to where the RustSec database (on GitHub) can be fetched.
    let mut deny = Command::new(setup::cargo_deny()?);
    deny.current_dir(workspace_root());
    util::run(deny.args(["deny", "check", "licenses", "bans", "sources"]))?;
    // The kernel programs only build for the BPF target, with nightly.
    let mut nightly = Command::new("rustup");
    nightly.current_dir(workspace_root());
    util::clean_cargo_env(&mut nightly);
    util::run(nightly.args([
        "run",
        setup::NIGHTLY_TOOLCHAIN,
        "cargo",
        "clippy",
        "--package",
        "agent-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup { no_vm } => {
            let kit = setup::setup(&setup::SetupOptions { vm: !no_vm })?;
            for kernel in &kit.kernels {
                println!("setup: kernel {} ready: {}", kernel.name, kernel.release);
            }
            println!("setup: done");
            Ok(())
        }
        Task::Build => {
            setup::setup(&setup::SetupOptions { vm: false })?;
            build()
        }
        Task::Run { args } => run_daemon(&args),
        Task::Test { no_vm, filter } => test::run(!no_vm, filter.as_deref()),
        Task::Vm { kernel, command } => run_vm(&kernel, &command),
        Task::Lint => lint(),
        Task::Bench(args) => bench::run(&args),
        Task::Soak(args) => soak::run(&args),
        Task::VerifierStats(args) => verifier::run(&args),
        Task::Crd => {
            let root = workspace_root();
            deploy::generate_crd(
                &root.join(deploy::SCHEMA_PATH),
                &root.join(deploy::CRD_PATH),
            )
        }
    }
}

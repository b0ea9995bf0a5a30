//! `cargo xtask verifier-stats`: how much of the kernel verifier's budget
//! each of Baton's programs uses, on each test kernel.
//!
//! The programs are loaded the way production loads them: a real
//! `baton run` starts inside the VM (BPF LSM on) with a policy of no rules
//! and throwaway pins and state, and once it is ready the kernel is asked
//! what it verified for each program whose link the daemon pinned. Every program the daemon
//! reports as not attached ("control degraded", "control off") is a
//! failure unless the kernel is known to lack its hook
//! ([`HOOKS_ADDED_AFTER`]).
//!
//! `cargo xtask verifier-stats` boots each kernel and runs itself inside
//! it with the hidden `--in-vm DIR`, which writes `DIR/results.json`; the
//! host prints the tables and gives the verdict.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{setup, util, vm, workspace_root};

/// Instructions the verifier may process for one program loaded with
/// CAP_BPF or CAP_SYS_ADMIN (`BPF_COMPLEXITY_LIMIT_INSNS`, since 5.2; the
/// daemon always loads that way). Past it the load fails with E2BIG.
pub const VERIFIER_INSN_LIMIT: u64 = 1_000_000;

/// The most a program may use of [`VERIFIER_INSN_LIMIT`], in percent.
/// Verified-instruction counts grow with each kernel's verifier and with
/// each compiler release, and jump when a branch stops being pruned, so a
/// program that uses more has too little margin: split it, or make its
/// states prune (fewer live registers across branches, bounded loops
/// unrolled less).
pub const MAX_PERCENT_OF_LIMIT: u64 = 50;

/// LSM hooks the kernel gained after 6.1, with the first release that has
/// them: a program for one of these that does not attach on an older kernel
/// is expected, not a failure.
pub const HOOKS_ADDED_AFTER: [(&str, (u32, u32)); 1] = [("file_truncate", (6, 2))];

/// How long the daemon may take to load everything inside the VM: a guard
/// against a hung start, not a target (6.1 under QEMU without KVM takes
/// minutes on a busy machine).
const READY_WITHIN: Duration = Duration::from_secs(15 * 60);

/// How long the daemon may take to detach everything after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(120);

/// The policy the daemon starts with: one agent with no rules, entered
/// through `baton exec` or by running `/bin/true`. The executable selector
/// makes the daemon attach the packet backstop to the whole host at start,
/// so its program is counted too.
const POLICY: &str = "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\n\
                      metadata:\n  name: verifier-stats\n\
                      spec:\n  selector:\n    agent: verifier-stats\n    executables: [/bin/true]\n";

/// How much of a daemon message the table shows.
const MESSAGE_CHARS: usize = 400;

/// How many of the last lines of a message holding a verifier log the
/// table shows.
const LOG_TAIL_LINES: usize = 4;

/// The results file the VM writes.
const RESULTS_FILE: &str = "results.json";

/// Arguments of `cargo xtask verifier-stats`.
#[derive(Debug, clap::Args)]
pub struct VerifierArgs {
    /// Test kernel to boot [default: both, 6.1 then 6.12].
    #[arg(long, value_parser = ["6.1", "6.12"])]
    pub kernel: Option<String>,
    /// Load the programs in this machine and write the results to DIR;
    /// `cargo xtask verifier-stats` passes it to itself inside the VM.
    #[arg(long, hide = true, value_name = "DIR")]
    pub in_vm: Option<PathBuf>,
}

/// Runs `cargo xtask verifier-stats`.
pub fn run(args: &VerifierArgs) -> Result<()> {
    match &args.in_vm {
        Some(dir) => measure(dir),
        None => run_on_kernels(args.kernel.as_deref()),
    }
}

/// Boots each selected kernel, measures inside it and prints the tables.
fn run_on_kernels(only: Option<&str>) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "verifier-stats boots a VM and loads eBPF programs in it: run it as root"
    );
    let kit = setup::setup(&setup::SetupOptions { vm: true })?;
    crate::build()?;
    let root = workspace_root();
    // Not the running binary: the build above may have replaced it.
    let xtask = root.join("target/debug/xtask");
    ensure!(xtask.exists(), "{} was not built", xtask.display());
    let kernels: Vec<&setup::KernelImage> = kit
        .kernels
        .iter()
        .filter(|k| only.is_none_or(|name| k.name == name))
        .collect();
    ensure!(
        !kernels.is_empty(),
        "no {} kernel in the VM kit",
        only.unwrap_or("test")
    );

    let mut failed = Vec::new();
    let mut tables = Vec::new();
    for kernel in kernels {
        let results = root.join("target/verifier-stats").join(&kernel.name);
        let _ = std::fs::remove_dir_all(&results);
        util::create_dir_all(&results)?;
        let command = format!(
            "mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security\n\
             exec {} verifier-stats --in-vm {}\n",
            util::shell_quote(&xtask),
            util::shell_quote(&results),
        );
        let outcome = vm::run_in_vm(&kit, kernel, &command, std::slice::from_ref(&results));
        let report = outcome.and_then(|outcome| {
            let path = results.join(RESULTS_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "the VM wrote no {} (exit {}); console log: {}",
                    path.display(),
                    outcome.exit_code,
                    outcome.log.display()
                )
            })?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))
        });
        match report {
            Ok(report) => {
                let (mut table, problems) = evaluate(&report);
                let _ = writeln!(table, "results: {}", results.join(RESULTS_FILE).display());
                tables.push(table);
                failed.extend(
                    problems
                        .into_iter()
                        .map(|p| format!("{}: {p}", kernel.name)),
                );
            }
            Err(error) => failed.push(format!("{}: {error:#}", kernel.name)),
        }
    }

    // After the VMs' consoles, where they are easy to find.
    for table in &tables {
        print!("\n{table}");
    }
    println!();
    if failed.is_empty() {
        println!(
            "verifier-stats: PASS: every program loaded, none above {MAX_PERCENT_OF_LIMIT}% of the limit"
        );
        Ok(())
    } else {
        for problem in &failed {
            println!("verifier-stats: FAIL: {problem}");
        }
        bail!("verifier-stats found {} problem(s)", failed.len())
    }
}

/// Renders one kernel's table and lists what fails the check.
fn evaluate(report: &Value) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = String::new();
    let release = report["release"].as_str().unwrap_or("?");
    let _ = writeln!(out, "== kernel {release} ==");
    if let Some(seconds) = report["ready_seconds"].as_f64() {
        let _ = writeln!(
            out,
            "daemon start to ready (loading and verifying everything): {seconds:.1} s \
             ({} build, QEMU without KVM)",
            report["profile"].as_str().unwrap_or("debug")
        );
    }
    if let Some(error) = report["error"].as_str() {
        let _ = writeln!(out, "ERROR: {error}");
        problems.push(error.to_string());
    }
    let version = kernel_version(release);

    let programs = report["programs"].as_array().cloned().unwrap_or_default();
    if !programs.is_empty() {
        let _ = writeln!(
            out,
            "{:<22} {:<32} {:>14} {:>10} {:>7}",
            "program", "attach type / hook", "verified insns", "limit", "% limit"
        );
    }
    let mut total = 0;
    for program in &programs {
        let name = program["name"].as_str().unwrap_or("?");
        let hook = program["hook"].as_str().unwrap_or("?");
        let Some(insns) = program["verified_insns"].as_u64() else {
            let _ = writeln!(
                out,
                "{name:<22} {hook:<32} {:>14} {VERIFIER_INSN_LIMIT:>10} {:>7}",
                "?", "?"
            );
            problems.push(format!(
                "{name}: the kernel reports no verified instruction count"
            ));
            continue;
        };
        total += insns;
        let percent = insns as f64 * 100.0 / VERIFIER_INSN_LIMIT as f64;
        let over = insns * 100 > VERIFIER_INSN_LIMIT * MAX_PERCENT_OF_LIMIT;
        let _ = writeln!(
            out,
            "{name:<22} {hook:<32} {insns:>14} {VERIFIER_INSN_LIMIT:>10} {percent:>6.2}%{}",
            if over { "  OVER" } else { "" }
        );
        if over {
            problems.push(format!(
                "{name} ({hook}) uses {insns} verified instructions, {percent:.1}% of the \
                 {VERIFIER_INSN_LIMIT} limit (at most {MAX_PERCENT_OF_LIMIT}%)"
            ));
        }
    }
    if !programs.is_empty() {
        let _ = writeln!(
            out,
            "{} programs, {total} verified instructions in all",
            programs.len()
        );
    }
    if programs.is_empty() && report["error"].is_null() {
        problems.push("the daemon loaded no program".into());
    }

    for message in report["degraded"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
    {
        let shown = shorten(message);
        match expected_missing(message, version) {
            _ if !is_program_failure(message) => {
                let _ = writeln!(out, "note: {shown}");
            }
            Some(hook) => {
                let _ = writeln!(out, "expected: {hook} is newer than this kernel: {shown}");
            }
            None => {
                let _ = writeln!(out, "FAILED: {shown}");
                problems.push(shown);
            }
        }
    }
    if report["stopped_cleanly"] == false {
        let _ = writeln!(
            out,
            "WARNING: the daemon did not stop cleanly; its pins were uninstalled"
        );
    }
    (out, problems)
}

/// `message` on one line of at most about [`MESSAGE_CHARS`] characters.
/// A verifier's refusal carries its whole log, whose last lines say why
/// (the offending instruction, then the statistics): the first line and
/// the last [`LOG_TAIL_LINES`] are kept; the rest stays in the results
/// file.
fn shorten(message: &str) -> String {
    let cut = |line: &str, chars: usize| match line.char_indices().nth(chars) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    };
    let lines: Vec<&str> = message.lines().collect();
    let long = lines.len() > 1 || message.chars().count() > MESSAGE_CHARS;
    if !long {
        return message.to_string();
    }
    let first = cut(
        lines.first().copied().unwrap_or_default(),
        MESSAGE_CHARS / 2,
    );
    let tail_start = lines.len().saturating_sub(LOG_TAIL_LINES).max(1);
    let tail: Vec<String> = lines[tail_start..]
        .iter()
        .map(|line| cut(line.trim(), MESSAGE_CHARS / (2 * LOG_TAIL_LINES)))
        .collect();
    if tail.is_empty() {
        format!("{first} (in full in {RESULTS_FILE})")
    } else {
        format!(
            "{first} [...] {} (in full in {RESULTS_FILE})",
            tail.join(" | ")
        )
    }
}

/// Whether a degraded-control message says that a program did not load or
/// attach (rather than, say, that a policy's rules fall back to Landlock).
fn is_program_failure(message: &str) -> bool {
    message.contains("not attached") || message.contains("BPF LSM")
}

/// `(major, minor)` of a release such as `6.1.0-50-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The hook of a "control degraded: LSM hook X is not attached" line when
/// X is in [`HOOKS_ADDED_AFTER`] and the kernel is older than it.
fn expected_missing(message: &str, version: Option<(u32, u32)>) -> Option<&'static str> {
    let version = version?;
    let hook = message
        .split_once("LSM hook ")?
        .1
        .split_whitespace()
        .next()?;
    HOOKS_ADDED_AFTER
        .iter()
        .find(|(name, since)| *name == hook && version < *since)
        .map(|(name, _)| *name)
}

/// Inside the VM: starts the daemon, reads what the kernel verified, stops
/// the daemon and writes `dir/results.json`. The verdict is the host's.
fn measure(dir: &Path) -> Result<()> {
    let root = workspace_root();
    let baton = root.join("target/debug/baton");
    ensure!(baton.exists(), "{} was not built", baton.display());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let mut results = json!({ "release": release, "profile": "debug" });
    match load_and_list(&baton, &mut results) {
        Ok(()) => {}
        Err(error) => results["error"] = json!(format!("{error:#}")),
    }
    let path = dir.join(RESULTS_FILE);
    util::write_atomic(&path, serde_json::to_string_pretty(&results)?)?;
    println!("verifier-stats: results in {}", path.display());
    Ok(())
}

/// Starts the daemon, lists its programs into `results` and stops it.
fn load_and_list(baton: &Path, results: &mut Value) -> Result<()> {
    let mut daemon = Daemon::start(baton)?;
    let ready = daemon.wait_ready();
    let listed = ready.and_then(|elapsed| {
        results["ready_seconds"] = json!(elapsed.as_secs_f64());
        println!(
            "verifier-stats: the daemon was ready after {:.1} s",
            elapsed.as_secs_f64()
        );
        list_programs(&daemon.pin_dir)
    });
    let stopped = daemon.stop();
    // The audit log is complete once the daemon has stopped.
    results["degraded"] = json!(daemon.degraded());
    results["stopped_cleanly"] = json!(stopped.is_ok());
    if let Err(error) = &stopped {
        eprintln!("verifier-stats: {error:#}");
    }
    let programs = listed.map_err(|error| {
        anyhow::anyhow!(
            "{error:#}\ndaemon stderr:\n{}",
            std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
        )
    })?;
    results["programs"] = json!(programs);
    Ok(())
}

/// `bpftool --json ARGS`, parsed.
fn bpftool(args: &[&str]) -> Result<Value> {
    let text = util::output(Command::new("bpftool").arg("--json").args(args))?;
    serde_json::from_str(&text)
        .with_context(|| format!("bpftool {} printed no JSON", args.join(" ")))
}

/// Every program whose link the daemon pinned under `pin_dir` (one per
/// program, named after it: the full name, where the kernel keeps 15
/// characters), with its hook and what the kernel verified. Programs of
/// other daemons and tools on the same machine are left out.
fn list_programs(pin_dir: &Path) -> Result<Vec<Value>> {
    // bpftool (7.1, Debian 12) does not show `verified_insns`; the kernel's
    // program info, which aya reads, has it (5.16+).
    // A program unloaded during the walk is not the daemon's.
    let programs: BTreeMap<u64, _> = aya::programs::loaded_programs()
        .flatten()
        .map(|info| (u64::from(info.id()), info))
        .collect();
    // `-f` adds each link's pinned paths.
    let links = bpftool(&["-f", "link", "show"])?;
    let mut listed = Vec::new();
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = link["pinned"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .map(Path::new)
            .find(|path| path.starts_with(pin_dir))
            .and_then(|path| path.file_name()?.to_str())
        else {
            continue;
        };
        let id = link["prog_id"].as_u64().unwrap_or_default();
        let program = programs
            .get(&id)
            .with_context(|| format!("the kernel has no program {id} for link {name}"))?;
        let hook = hook_label(link);
        listed.push(json!({
            "id": id,
            "name": name,
            "type": format!("{:?}", program.program_type()),
            "hook": hook,
            "verified_insns": program.verified_instruction_count(),
            "xlated_bytes": program.size_translated(),
        }));
    }
    listed.sort_by_key(|p| (p["hook"].as_str().map(str::to_string), p["id"].as_u64()));
    Ok(listed)
}

/// What a link says of where its program runs: the tracepoint of a
/// `tp_btf` program, else the kernel's attach type (`cgroup_inet4_connect`,
/// `lsm_mac`). bpftool 7.1 does not name an LSM link's hook; Baton pins
/// each LSM program's link under the program's name, which is its hook's.
fn hook_label(link: &Value) -> String {
    match (link["tp_name"].as_str(), link["attach_type"].as_str()) {
        (Some(tracepoint), _) => format!("tp_btf/{tracepoint}"),
        (None, Some(attach_type)) => attach_type.to_string(),
        (None, None) => link["type"].as_str().unwrap_or("?").to_string(),
    }
}

/// A `baton run` with a policy of no rules, and pins and state of its own.
struct Daemon {
    child: Child,
    baton: PathBuf,
    work: PathBuf,
    socket: PathBuf,
    stderr: PathBuf,
    audit_log: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    started: Instant,
}

impl Daemon {
    fn start(baton: &Path) -> Result<Self> {
        // The guest's own tmpfs, not the host's /tmp it shows.
        let work = PathBuf::from(format!("/run/baton-verifier-stats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        // The daemon needs one policy; which programs it loads does not
        // depend on the policies' rules.
        let policies = work.join("policies");
        util::create_dir_all(&policies)?;
        let policy = policies.join("verifier-stats.yaml");
        std::fs::write(&policy, POLICY)
            .with_context(|| format!("cannot write {}", policy.display()))?;
        // An explicit file, even an empty one, keeps the host's /etc/baton
        // out of it.
        let config = work.join("config.yaml");
        std::fs::write(&config, "")
            .with_context(|| format!("cannot write {}", config.display()))?;
        let socket = work.join("baton.sock");
        let stderr = work.join("daemon.stderr");
        let audit_log = work.join("audit.jsonl");
        let state_dir = work.join("state");
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/baton-verifier-stats-{}",
            std::process::id()
        ));
        let stderr_file = std::fs::File::create(&stderr)
            .with_context(|| format!("cannot create {}", stderr.display()))?;
        let started = Instant::now();
        let child = Command::new(baton)
            .arg("run")
            .arg("--policy-dir")
            .arg(&policies)
            .arg("--audit-log")
            .arg(&audit_log)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--cleanup-on-exit")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .spawn()
            .with_context(|| format!("cannot start {} run", baton.display()))?;
        Ok(Self {
            child,
            baton: baton.to_path_buf(),
            work,
            socket,
            stderr,
            audit_log,
            config,
            pin_dir,
            state_dir,
            started,
        })
    }

    /// Waits for the control socket, which the daemon opens once every
    /// program is loaded and attached; returns the time since the start.
    fn wait_ready(&mut self) -> Result<Duration> {
        while !self.socket.exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("baton run exited ({status}) before it was ready");
            }
            ensure!(
                self.started.elapsed() < READY_WITHIN,
                "baton run was not ready within {} s",
                READY_WITHIN.as_secs()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(self.started.elapsed())
    }

    /// SIGTERM, as a service manager would; with `--cleanup-on-exit` the
    /// daemon then removes its pins. Fails if it had to be killed.
    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // No libc in xtask: kill(1) sends the signal.
        util::output(
            Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string()),
        )?;
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!(
            "baton run did not stop within {} s of SIGTERM; killed it",
            STOP_WITHIN.as_secs()
        )
    }

    /// Every "control degraded" and "control off" message in the audit log.
    fn degraded(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        let mut found = Vec::new();
        for line in log.lines() {
            if let Ok(record) = serde_json::from_str::<Value>(line) {
                collect_degraded(&record, &mut found);
            }
        }
        found
    }
}

/// Strings in `value` (at any depth) that report a control as degraded or
/// off.
fn collect_degraded(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(text)
            if text.starts_with("control degraded") || text.starts_with("control off") =>
        {
            found.push(text.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_degraded(v, found)),
        Value::Object(fields) => fields.values().for_each(|v| collect_degraded(v, found)),
        _ => {}
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
        // A daemon that had to be killed left its programs attached.
        if self.pin_dir.exists() {
            let _ = Command::new(&self.baton)
                .arg("uninstall")
                .arg("--config")
                .arg(&self.config)
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .arg("--state-dir")
                .arg(&self.state_dir)
                .stdout(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_from_releases() {
        assert_eq!(kernel_version("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn only_hooks_newer_than_the_kernel_may_be_missing() {
        let line = "control degraded: LSM hook file_truncate is not attached: no such hook";
        assert_eq!(expected_missing(line, Some((6, 1))), Some("file_truncate"));
        assert_eq!(expected_missing(line, Some((6, 12))), None);
        let line = "control degraded: LSM hook path_chmod is not attached: E2BIG";
        assert_eq!(expected_missing(line, Some((6, 1))), None);
    }

    #[test]
    fn programs_over_the_threshold_and_missing_ones_fail() {
        let report = json!({
            "release": "6.1.0-50-amd64",
            "ready_seconds": 42.0,
            "programs": [
                {"name": "file_open", "hook": "lsm/file_open", "verified_insns": 500_000},
                {"name": "connect4", "hook": "cgroup_inet4_connect", "verified_insns": 500_001},
            ],
            "degraded": [
                "control degraded: file and exec rules of agent a: read: baton exec: Landlock",
                "control degraded: LSM hook file_truncate is not attached: missing",
                "control degraded: LSM hook path_chmod is not attached: E2BIG",
            ],
        });
        let (table, problems) = evaluate(&report);
        assert!(table.contains("50.00%"), "{table}");
        assert!(table.contains("expected: file_truncate"), "{table}");
        assert!(
            table.contains("note: control degraded: file and exec"),
            "{table}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("connect4"), "{problems:?}");
        assert!(problems[1].contains("path_chmod"), "{problems:?}");
    }

    #[test]
    fn long_messages_are_cut() {
        let log = "x".repeat(5000);
        let line = format!("control degraded: LSM hook path_link is not attached: {log}");
        let (table, problems) = evaluate(&json!({"release": "6.1.0-1", "degraded": [line]}));
        assert!(table.len() < 1000, "{table}");
        assert!(
            problems[1].ends_with(&format!("(in full in {RESULTS_FILE})")),
            "{problems:?}"
        );
        let mut log = String::from("control degraded: x is not attached: Verifier output: 0: r1\n");
        for i in 0..1000 {
            let _ = writeln!(log, "{i}: r1 = r2");
        }
        log.push_str("R2 invalid mem access 'scalar'\nverification time 1 usec\nstack depth 8\nprocessed 9 insns");
        let short = shorten(&log);
        assert!(!short.contains('\n'), "{short}");
        assert!(
            short.starts_with("control degraded: x is not attached: Verifier output: 0: r1 [...] R2 invalid mem access 'scalar' | verification time 1 usec"),
            "{short}"
        );
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn a_daemon_that_did_not_start_fails() {
        let (_, problems) = evaluate(&json!({"release": "6.12.1", "error": "exited"}));
        assert_eq!(problems, ["exited"]);
        let (_, problems) = evaluate(&json!({"release": "6.12.1", "programs": []}));
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn hooks_from_links() {
        let tracepoint = json!({"type": "raw_tracepoint", "tp_name": "sched_process_exec"});
        assert_eq!(hook_label(&tracepoint), "tp_btf/sched_process_exec");
        let lsm = json!({"type": "tracing", "attach_type": "lsm_mac"});
        assert_eq!(hook_label(&lsm), "lsm_mac");
        assert_eq!(hook_label(&json!({"type": "netns"})), "netns");
    }

    #[test]
    fn degraded_messages_at_any_depth() {
        let record = json!({"verdict": "info", "object": {"message": "control degraded: x is not attached"}});
        let mut found = Vec::new();
        collect_degraded(&record, &mut found);
        assert_eq!(found, ["control degraded: x is not attached"]);
    }
}

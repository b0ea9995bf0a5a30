//! `cargo xtask test`: unit tests, host-kernel integration tests, then the VM
//! suite on each test kernel, with one summary at the end.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cargo, setup, util, vm, workspace_root};

/// Pass/fail counts of one suite.
#[derive(Debug, Default, Clone)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Set when the suite could not run at all (build failure, VM did not boot).
    error: Option<String>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    fn ok(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }
}

/// Parses libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (number, label) = match words.as_slice() {
            [_, n, label, ..] if n.parse::<u64>().is_ok() => (n, label),
            [n, label, ..] => (n, label),
            _ => continue,
        };
        let Ok(n) = number.parse::<u64>() else {
            continue;
        };
        match *label {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

/// One test binary, as cargo built it.
#[derive(Debug, Clone)]
struct TestBinary {
    package: String,
    /// `lib`, `bin` or `test`.
    kind: String,
    name: String,
    path: PathBuf,
}

impl TestBinary {
    fn label(&self) -> String {
        format!("{}-{}-{}", self.package, self.kind, self.name)
    }
}

fn test_binaries() -> Result<Vec<TestBinary>> {
    let output = util::output(cargo().args(["test", "--no-run", "--message-format=json"]))?;
    let mut binaries = Vec::new();
    for line in output.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(path) = message["executable"].as_str() else {
            continue;
        };
        let package_id = message["package_id"].as_str().unwrap_or_default();
        let package = if package_id.contains("baton-tests") || package_id.contains("/tests#") {
            "baton-tests"
        } else if package_id.contains("/agent#") || package_id.contains("agent@") {
            "agent"
        } else {
            "other"
        };
        binaries.push(TestBinary {
            package: package.to_string(),
            kind: message["target"]["kind"][0]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            name: message["target"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            path: PathBuf::from(path),
        });
    }
    Ok(binaries)
}

fn host_suite(filter: Option<&str>) -> Result<Counts> {
    println!("\ntest: unit and host-kernel integration tests (cargo test)");
    let mut command = cargo();
    command.args(["test", "--no-fail-fast"]);
    if let Some(filter) = filter {
        command.args(["--", filter]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let mut counts = Counts::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = parse_result_line(&line) {
            counts.add(&result);
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        counts.error = Some(format!("cargo test exited with {status}"));
    }
    Ok(counts)
}

/// Test binaries run at once inside a VM. Each VM test starts a daemon of
/// its own, and loading its programs keeps one guest CPU busy in the
/// verifier for most of a minute; two lanes keep both guest CPUs (and so
/// both host cores) busy. Within a binary, tests still run one at a time.
const VM_LANES: usize = 2;

/// How much VM work a test binary holds, to start the heaviest first: the
/// number of `vm_` tests in its source (each starts a daemon), or 1.
fn vm_weight(root: &Path, binary: &TestBinary) -> usize {
    std::fs::read_to_string(root.join("tests/tests").join(format!("{}.rs", binary.name)))
        .map_or(1, |source| source.matches("fn vm_").count().max(1))
}

fn vm_script(root: &Path, results: &Path, binaries: &[TestBinary], filter: Option<&str>) -> String {
    let mut script = String::from("set -u\n");
    let _ = writeln!(script, "cd {}", util::shell_quote(root));
    let _ = writeln!(
        script,
        "export BATON_BIN={}",
        util::shell_quote(root.join("target/debug/baton"))
    );
    script.push_str(
        "mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security\n",
    );
    // The guest's /tmp is an overlay of the host's: file identities there
    // (st_ino) are not the kernel's inode numbers, and other runs' files
    // come and go. Tests get a tmpfs of their own.
    script.push_str("mkdir -p /run/baton-tests && export BATON_TEST_TMP=/run/baton-tests\n");
    // A queue the lanes take binaries from: `mkdir` of a claim succeeds for
    // one lane only. The heaviest binaries go first so that no lane is
    // left with a long one at the end.
    script.push_str(
        "claims=/run/baton-tests/vm-suite-claims\nrm -rf \"$claims\" && mkdir -p \"$claims\"\n",
    );
    let mut ordered: Vec<&TestBinary> = binaries.iter().collect();
    ordered.sort_by_key(|b| std::cmp::Reverse(vm_weight(root, b)));
    for (index, binary) in ordered.iter().enumerate() {
        // Unit tests that read the running kernel run here too; of the
        // integration binaries, the tests that need BPF LSM (marked ignored
        // on the host). Everything else already ran on the host kernel, and
        // under emulation it would only add time and timing noise.
        // A filter given narrows both to the tests it names.
        let filter = filter.map_or_else(String::new, |f| format!(" {}", util::shell_quote(f)));
        let args = match (binary.package == "agent", filter.is_empty()) {
            (true, true) => "kernel:: --test-threads=1".to_string(),
            (true, false) => format!("--test-threads=1{filter}"),
            (false, _) => format!("--ignored --test-threads=1{filter}"),
        };
        let label = binary.label();
        let log = util::shell_quote(results.join(format!("{label}.log")));
        let _ = writeln!(
            script,
            "job_{index}() {{ echo \"vm-suite: running {label}\"; {} {args} > {log} 2>&1; echo $? > {}; }}",
            util::shell_quote(&binary.path),
            util::shell_quote(results.join(format!("{label}.rc")))
        );
    }
    let indices: Vec<String> = (0..ordered.len()).map(|i| i.to_string()).collect();
    let _ = writeln!(
        script,
        "lane() {{ for i in {}; do mkdir \"$claims/$i\" 2>/dev/null || continue; job_$i; done; }}",
        indices.join(" ")
    );
    for _ in 0..VM_LANES {
        script.push_str("lane &\n");
    }
    script.push_str("wait\n");
    script
}

fn vm_suite(
    kit: &setup::Kit,
    kernel: &setup::KernelImage,
    binaries: &[TestBinary],
    filter: Option<&str>,
) -> Counts {
    println!("\ntest: VM suite on {} ({})", kernel.name, kernel.release);
    let root = workspace_root();
    let results = root.join("target/vm-results").join(&kernel.name);
    let _ = std::fs::remove_dir_all(&results);
    if let Err(error) = std::fs::create_dir_all(&results) {
        return Counts {
            error: Some(format!("cannot create {}: {error}", results.display())),
            ..Counts::default()
        };
    }
    let selected: Vec<TestBinary> = binaries
        .iter()
        // The deployment checks read no kernel state and need the host's
        // validator, which the VM does not see.
        .filter(|b| {
            (b.package == "agent" && b.kind == "lib")
                || (b.package == "baton-tests" && b.name != "deploy")
        })
        .cloned()
        .collect();
    let script_path = results.join("suite.sh");
    if let Err(error) = std::fs::write(&script_path, vm_script(&root, &results, &selected, filter))
    {
        return Counts {
            error: Some(format!("cannot write {}: {error}", script_path.display())),
            ..Counts::default()
        };
    }
    let command = format!("/bin/sh {}", util::shell_quote(&script_path));
    let outcome = match vm::run_in_vm(kit, kernel, &command, std::slice::from_ref(&results)) {
        Ok(outcome) => outcome,
        Err(error) => {
            return Counts {
                error: Some(format!(
                    "VM {} did not run the suite: {error:#}",
                    kernel.name
                )),
                ..Counts::default()
            };
        }
    };
    let mut counts = Counts::default();
    for binary in &selected {
        let label = binary.label();
        let log = std::fs::read_to_string(results.join(format!("{label}.log"))).unwrap_or_default();
        let rc = std::fs::read_to_string(results.join(format!("{label}.rc"))).unwrap_or_default();
        let mut found = false;
        for line in log.lines() {
            if let Some(result) = parse_result_line(line) {
                counts.add(&result);
                found = true;
            }
        }
        let rc_ok = rc.trim() == "0";
        if !rc_ok || log.contains("FAILED") {
            println!(
                "---- {label} in VM {} (exit {}) ----\n{log}",
                kernel.name,
                rc.trim()
            );
        } else {
            for line in log.lines().filter(|l| {
                (l.starts_with("test ") && l.contains("... ok")) || l.starts_with("test result:")
            }) {
                println!("[vm {}] {label}: {line}", kernel.name);
            }
        }
        if !found || (!rc_ok && counts.failed == 0) {
            counts.failed += 1;
            println!(
                "vm-suite: {label} did not complete on {} (exit {:?})",
                kernel.name,
                rc.trim()
            );
        }
    }
    if outcome.exit_code != 0 && counts.ok() {
        counts.error = Some(format!(
            "the suite script exited with {} (console: {})",
            outcome.exit_code,
            outcome.log.display()
        ));
    }
    counts
}

/// Runs everything; `vm` is false only when a person passed `--no-vm`;
/// `filter` narrows every suite to the tests whose names contain it.
pub fn run(vm: bool, filter: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let kit = setup::setup(&setup::SetupOptions { vm })?;
    crate::build()?;
    let prepared = started.elapsed();
    let mut suites: Vec<(String, Counts, Duration)> = Vec::new();
    let host_started = Instant::now();
    let host = host_suite(filter)?;
    suites.push(("unit + host kernel".into(), host, host_started.elapsed()));
    if vm {
        let binaries = test_binaries()?;
        if kit.kernels.is_empty() {
            bail!("the VM kit has no kernels; setup should have fetched them");
        }
        for kernel in &kit.kernels {
            let vm_started = Instant::now();
            let counts = vm_suite(&kit, kernel, &binaries, filter);
            suites.push((
                format!("VM {} ({})", kernel.name, kernel.release),
                counts,
                vm_started.elapsed(),
            ));
        }
    }

    println!("\n==================== summary ====================");
    let mut total = Counts::default();
    // Wall times say where a slow run went; CI has a time budget.
    println!("{:32} {:>5} s", "setup and build", prepared.as_secs());
    for (name, counts, took) in &suites {
        total.add(counts);
        let state = match (&counts.error, counts.failed) {
            (Some(error), _) => format!("ERROR: {error}"),
            (None, 0) => "ok".to_string(),
            (None, _) => "FAILED".to_string(),
        };
        println!(
            "{name:32} {:>5} s {:4} passed {:4} failed {:4} ignored  {state}",
            took.as_secs(),
            counts.passed,
            counts.failed,
            counts.ignored
        );
    }
    if !vm {
        println!(
            "{:32} SKIPPED: --no-vm was given; BPF LSM enforcement was NOT tested",
            "VM suite"
        );
    }
    if let Some(filter) = filter {
        println!("only tests whose names contain {filter:?} ran (--filter)");
    }
    let errors = suites.iter().filter(|(_, c, _)| c.error.is_some()).count() as u64;
    println!(
        "total: {} passed, {} failed",
        total.passed,
        total.failed + errors
    );
    if suites.iter().any(|(_, c, _)| !c.ok()) {
        bail!("tests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let c = parse_result_line(
            "test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        )
        .unwrap();
        assert_eq!((c.passed, c.failed, c.ignored), (3, 1, 2));
        let c = parse_result_line("test result: FAILED. 0 passed; 4 failed; 0 ignored").unwrap();
        assert_eq!(c.failed, 4);
        assert!(parse_result_line("running 3 tests").is_none());
    }

    #[test]
    fn a_filter_narrows_what_the_vm_runs() {
        let binary = |package: &str, kind: &str, path: &str| TestBinary {
            package: package.into(),
            kind: kind.into(),
            name: "x".into(),
            path: path.into(),
        };
        let binaries = [
            binary("agent", "lib", "/t/baton-1"),
            binary("baton-tests", "test", "/t/audit_trail-2"),
        ];
        let (root, results) = (Path::new("/w"), Path::new("/r"));
        let script = vm_script(root, results, &binaries, None);
        assert!(
            script.contains("/t/baton-1 kernel:: --test-threads=1 >"),
            "{script}"
        );
        assert!(
            script.contains("/t/audit_trail-2 --ignored --test-threads=1 >"),
            "{script}"
        );
        let script = vm_script(root, results, &binaries, Some("vm_a denied"));
        assert!(
            script.contains("/t/baton-1 --test-threads=1 'vm_a denied' >"),
            "{script}"
        );
        assert!(
            script.contains("/t/audit_trail-2 --ignored --test-threads=1 'vm_a denied' >"),
            "{script}"
        );
    }
}

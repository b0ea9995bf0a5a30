//! Measures what one `open()` + `close()` of a file costs, for
//! `cargo xtask bench files`.
//!
//! Usage:
//!   bench-open [OPTIONS] FILE ITERATIONS   open (read only) and close FILE ITERATIONS
//!                                          times after a warm-up; print one JSON line
//!                                          of latencies
//!   bench-open [OPTIONS] --probe FILE      one open; print `ok` or `errno=N`
//!
//! With `BATON_BENCH_CPU=N` in the environment, the process runs on CPU N
//! only.
//!
//! Options:
//!   --landlock GRANTS   restrict this process with Landlock first (below)
//!   --delay-ms N        sleep N ms before the warm-up, so that what others do
//!                       in reaction to this program's start (a daemon handling
//!                       the exec) is over before it measures
//!
//! With `--landlock GRANTS` the process first restricts itself with a
//! Landlock ruleset and then measures (or probes) under it. GRANTS holds one
//! absolute path per line: the ruleset handles every file-system right
//! except execute (Landlock ABI 3: read, write, truncate, create, remove,
//! refer) and grants all of them beneath each listed path; everything else
//! is denied. A listed path that no longer exists is skipped and counted;
//! any other path that cannot be opened is an error.
//!
//! The JSON line holds the median, p90 and p99 of the whole iteration
//! (`open()`, then `close()`) in nanoseconds, and with `--landlock` the
//! number of rules and how the kernel enforced them. Bad usage exits 2; a
//! failed open while measuring exits 1.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use landlock::{
    ABI, Access as _, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr as _,
    RulesetCreatedAttr as _, RulesetStatus,
};

/// The Landlock ABI the ruleset asks for: the one Baton's own Landlock
/// translation targets (Linux 6.2).
const LANDLOCK_ABI: ABI = ABI::V3;

/// Warm-up iterations: enough to fault in the code paths and the dentry
/// cache, small next to a measured run.
fn warm_up(iterations: usize) -> usize {
    (iterations / 10).clamp(100, 2_000)
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: bench-open [--landlock GRANTS] [--delay-ms N] FILE ITERATIONS \
         | [--landlock GRANTS] --probe FILE"
    );
    ExitCode::from(2)
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// What restricting the process with Landlock gave.
struct Restricted {
    rules: usize,
    /// Listed paths that no longer existed.
    skipped: usize,
    status: RulesetStatus,
}

/// Restricts this process with the grants listed in `grants`.
fn restrict(grants: &Path) -> Result<Restricted, String> {
    let text = std::fs::read_to_string(grants)
        .map_err(|e| format!("cannot read {}: {e}", grants.display()))?;
    let mut handled = AccessFs::from_all(LANDLOCK_ABI);
    handled.remove(AccessFs::Execute);
    let on_files: BitFlags<AccessFs> = handled & AccessFs::from_file(LANDLOCK_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(handled)
        .and_then(|r| r.create())
        .map_err(|e| format!("cannot create a Landlock ruleset: {e}"))?;
    let mut rules = 0;
    let mut skipped = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        let fd = match PathFd::new(&path) {
            Ok(fd) => fd,
            // Listed, then removed by someone else: nothing left to grant.
            Err(_) if !path.exists() => {
                skipped += 1;
                continue;
            }
            Err(e) => return Err(format!("cannot open {line}: {e}")),
        };
        let access = if path.is_dir() { handled } else { on_files };
        match (&mut ruleset).add_rule(PathBeneath::new(fd, access)) {
            Ok(_) => {}
            Err(_) if !path.exists() => {
                skipped += 1;
                continue;
            }
            Err(e) => return Err(format!("cannot add the Landlock rule for {line}: {e}")),
        }
        rules += 1;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| format!("cannot apply the Landlock ruleset: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("this kernel does not enforce Landlock".to_string());
    }
    Ok(Restricted {
        rules,
        skipped,
        status: status.ruleset,
    })
}

/// One `open(O_RDONLY)`; the descriptor is closed at once.
fn open_close(path: &CString) -> Result<(), i32> {
    // SAFETY: open(2) with a NUL-terminated path; the descriptor is ours.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn measure(
    path: &CString,
    iterations: usize,
    delay: Duration,
    restricted: Option<&Restricted>,
) -> ExitCode {
    std::thread::sleep(delay);
    if let Err(errno) = open_close(path) {
        eprintln!(
            "bench-open: cannot open {}: errno {errno}",
            path.to_string_lossy()
        );
        return ExitCode::FAILURE;
    }
    let mut total = Vec::with_capacity(iterations);
    for i in 0..warm_up(iterations) + iterations {
        let start = Instant::now();
        if let Err(errno) = open_close(path) {
            eprintln!(
                "bench-open: open of {} failed: errno {errno}",
                path.to_string_lossy()
            );
            return ExitCode::FAILURE;
        }
        let done = Instant::now();
        if i >= warm_up(iterations) {
            total.push((done - start).as_nanos() as u64);
        }
    }
    total.sort_unstable();
    let mut report = serde_json::json!({
        "iterations": iterations,
        "median_ns": percentile(&total, 50),
        "p90_ns": percentile(&total, 90),
        "p99_ns": percentile(&total, 99),
    });
    if let Some(restricted) = restricted {
        report["landlock_rules"] = restricted.rules.into();
        report["landlock_skipped"] = restricted.skipped.into();
        report["landlock_status"] = format!("{:?}", restricted.status).into();
    }
    println!("{report}");
    ExitCode::SUCCESS
}

fn probe(path: &CString) -> ExitCode {
    match open_close(path) {
        Ok(()) => println!("ok"),
        Err(errno) => println!("errno={errno}"),
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    baton_tests::pin_to_bench_cpu("bench-open");
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut grants = None;
    let mut delay = Duration::ZERO;
    while args.len() >= 2 {
        if args[0] == "--landlock" {
            grants = Some(PathBuf::from(args.remove(1)));
        } else if args[0] == "--delay-ms" {
            match args.remove(1).to_str().and_then(|n| n.parse().ok()) {
                Some(ms) => delay = Duration::from_millis(ms),
                None => return usage(),
            }
        } else {
            break;
        }
        args.remove(0);
    }
    let c_path = |arg: &std::ffi::OsString| CString::new(arg.as_bytes()).ok();
    enum Mode {
        Probe(CString),
        Measure(CString, usize),
    }
    let mode = match args.as_slice() {
        [flag, file] if flag == "--probe" => c_path(file).map(Mode::Probe),
        [file, iterations] => {
            let iterations = iterations.to_str().and_then(|s| s.parse::<usize>().ok());
            match (c_path(file), iterations) {
                (Some(file), Some(n)) if n > 0 => Some(Mode::Measure(file, n)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some(mode) = mode else {
        return usage();
    };
    let restricted = match grants.as_deref().map(restrict).transpose() {
        Ok(restricted) => restricted,
        Err(error) => {
            eprintln!("bench-open: {error}");
            return ExitCode::FAILURE;
        }
    };
    match mode {
        Mode::Probe(path) => probe(&path),
        Mode::Measure(path, iterations) => measure(&path, iterations, delay, restricted.as_ref()),
    }
}

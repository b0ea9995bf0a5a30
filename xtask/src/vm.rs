//! Runs one command as root inside a kit kernel booted under QEMU.
//!
//! virtme-ng boots the kernel with the host's root file system shared read
//! only, so the guest sees the same programs and files as the host; the
//! folders given as `rw_dirs` are shared writable. QEMU runs without KVM
//! (TCG), which is slower but boots everywhere.

use std::env;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::iter;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::setup::{KernelImage, Kit};
use crate::util::{create_dir_all, display, shell_quote, write_atomic};

/// How long one VM run may take before it is stopped: a guard against a
/// hung guest, not a speed target. The 6.1 suite takes some 20 to 30
/// minutes under QEMU without KVM on a busy 2-core machine.
pub const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Kernel command line added to virtme-ng's: BPF LSM must be in the LSM list.
pub const VM_KERNEL_ARGS: &str = "lsm=lockdown,capability,landlock,bpf";

/// Guest memory, in QEMU's notation.
pub const VM_MEMORY: &str = "2G";

/// Guest CPUs.
pub const VM_CPUS: u32 = 2;

/// How many past runs' folders `<kit>/runs` keeps.
const KEEP_RUNS: usize = 20;

/// How a command run in the VM ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The command's exit status inside the VM (128 + N when signal N
    /// killed it, as the shell reports it).
    pub exit_code: i32,
    /// Everything the VM printed: kernel console and the command's output.
    pub log: PathBuf,
}

/// Boots `kernel` and runs `command` (a `/bin/sh` script) in it as root,
/// streaming the console to the terminal and to a log file.
///
/// The host's root file system is visible read-only; `rw_dirs` (created if
/// missing) are writable at the same paths. `/tmp`, `/etc`, `/var` and `/usr`
/// are writable overlays whose changes stay in the guest. cgroup v2 is
/// mounted at `/sys/fs/cgroup`, securityfs at `/sys/kernel/security`, and
/// bpffs is mounted at `/sys/fs/bpf` before the command starts.
///
/// Returns the command's exit status; fails if the VM does not boot, stops
/// before the command finishes, or runs longer than [`VM_TIMEOUT`].
pub fn run_in_vm(
    kit: &Kit,
    kernel: &KernelImage,
    command: &str,
    rw_dirs: &[PathBuf],
) -> Result<VmOutcome> {
    let run_dir = new_run_dir(kit, kernel)?;
    let script = run_dir.join("command.sh");
    let wrapper = run_dir.join("run.sh");
    let status_file = run_dir.join("exit-status");
    let log = run_dir.join("console.log");
    write_atomic(&script, command)?;
    // The status file is the only reliable account of how the command
    // ended: virtme-ng's own exit status also reflects how QEMU stopped.
    write_atomic(
        &wrapper,
        format!(
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
             /bin/sh {script}\n\
             echo $? > {status}\n\
             sync\n",
            script = shell_quote(&script),
            status = shell_quote(&status_file),
        ),
    )?;

    let mut cmd = Command::new(&kit.vng);
    // vng starts `virtme-run` and its other tools through PATH.
    if let Some(bin) = kit.vng.parent() {
        let path = env::var_os("PATH").unwrap_or_default();
        let path = env::join_paths(iter::once(bin.to_owned()).chain(env::split_paths(&path)))
            .context("PATH cannot hold the kit's folder")?;
        cmd.env("PATH", path);
    }
    cmd.arg("--run")
        .arg(&kernel.vmlinuz)
        .arg("--disable-kvm")
        // virtiofsd cannot start here and vng waits for it before falling
        // back to 9p; asking for 9p at once saves the wait.
        .arg("--force-9p")
        .args(["--memory", VM_MEMORY])
        .args(["--cpus", &VM_CPUS.to_string()])
        .args(["--append", VM_KERNEL_ARGS])
        .arg("--verbose");
    // The guest mounts a tmpfs over /var/cache, where the kit usually is:
    // share its kernels again so `/lib/modules/<release>` resolves.
    let kernels = shared_dir(&kit.dir.join("kernels"))?;
    cmd.arg(format!("--rodir={}", kernels.display()));
    for dir in rw_dirs.iter().chain([&run_dir]) {
        let dir = shared_dir(dir)?;
        cmd.arg(format!("--rwdir={}", dir.display()));
    }
    cmd.arg("--exec")
        .arg(format!("/bin/sh {}", shell_quote(&wrapper)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    println!(
        "vm: booting {} under QEMU (no KVM); console log: {}",
        kernel.release,
        log.display()
    );
    eprintln!("  $ {}", display(&cmd));
    let started = Instant::now();
    let status = run_with_log(&mut cmd, &log)?;
    let elapsed = started.elapsed().as_secs();
    let Some(status) = status else {
        bail!(
            "the {} VM did not finish within {} s and was stopped; console log: {}",
            kernel.release,
            VM_TIMEOUT.as_secs(),
            log.display()
        );
    };
    let exit_code = match fs::read_to_string(&status_file) {
        Ok(text) => text.trim().parse::<i32>().with_context(|| {
            format!(
                "unexpected exit status {text:?} in {}",
                status_file.display()
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "the {} VM stopped ({status}) before the command finished: it did not boot, \
             panicked or was cut off; console log: {}",
            kernel.release,
            log.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", status_file.display()));
        }
    };
    println!(
        "vm: {}: the command exited with status {exit_code} after {elapsed} s",
        kernel.release
    );
    Ok(VmOutcome { exit_code, log })
}

/// Creates `dir` if needed and returns it in the form `--rwdir` takes.
fn shared_dir(dir: &Path) -> Result<PathBuf> {
    create_dir_all(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    // virtme-ng reads `GUEST=HOST` from a `=`; a plain path must not have one.
    if dir.to_string_lossy().contains(['=', ',']) {
        bail!(
            "{} cannot be shared with the VM: its path contains `=` or `,`",
            dir.display()
        );
    }
    Ok(dir)
}

/// Makes a fresh folder for one run under `<kit>/runs`, dropping the oldest
/// beyond [`KEEP_RUNS`].
fn new_run_dir(kit: &Kit, kernel: &KernelImage) -> Result<PathBuf> {
    let runs = kit.dir.join("runs");
    create_dir_all(&runs)?;
    let mut old: Vec<(SystemTime, PathBuf)> = fs::read_dir(&runs)
        .with_context(|| format!("cannot list {}", runs.display()))?
        .flatten()
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    old.sort();
    let excess = (old.len() + 1).saturating_sub(KEEP_RUNS);
    for (_, path) in old.into_iter().take(excess) {
        // A folder another run still uses may vanish under it; that run then
        // reports a missing exit status, so leave errors to it.
        let _ = fs::remove_dir_all(path);
    }

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let dir = runs.join(format!("{}-{stamp}-{}", kernel.name, std::process::id()));
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Runs `cmd`, copying its standard output and error to ours and to `log`.
/// Returns `None` when it ran longer than [`VM_TIMEOUT`] and was killed,
/// together with every process it started.
fn run_with_log(cmd: &mut Command, log: &Path) -> Result<Option<ExitStatus>> {
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    let stdout = child.stdout.take().context("no pipe for the VM's output")?;
    let stderr = child.stderr.take().context("no pipe for the VM's errors")?;
    let prefix = format!("[{}] ", log_label(log));
    let pumps = [
        spawn_pump(stdout, prefix.clone(), false, Arc::clone(&file)),
        spawn_pump(stderr, prefix, true, Arc::clone(&file)),
    ];

    let deadline = Instant::now() + VM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for the VM")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_tree(child.id());
            child.wait().context("cannot wait for the VM")?;
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    for pump in pumps {
        match pump.join() {
            Ok(result) => result.with_context(|| format!("cannot write {}", log.display()))?,
            Err(_) => bail!("copying the VM's output failed"),
        }
    }
    Ok(status)
}

/// The run folder's name (kernel, time, pid), which tells the lines of VMs
/// that run at the same time apart on the terminal.
fn log_label(log: &Path) -> String {
    log.parent().and_then(Path::file_name).map_or_else(
        || "vm".to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Copies `from` to `log` as it comes and to the terminal (best effort) a
/// whole line at a time, each line after `prefix`, until end of file.
fn spawn_pump(
    mut from: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
    log: Arc<Mutex<File>>,
) -> thread::JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut pending: Vec<u8> = Vec::new();
        let show = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            let text = text.trim_end_matches(['\r', '\n']);
            // One call per line: lines of VMs that run at once do not mix.
            if to_stderr {
                eprintln!("{prefix}{text}");
            } else {
                println!("{prefix}{text}");
            }
        };
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => {
                    if !pending.is_empty() {
                        show(&pending);
                    }
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                show(&line);
            }
            let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            log.write_all(&buf[..n])?;
        }
    })
}

/// Kills process `pid` and all its descendants (virtme-ng runs QEMU as a
/// grandchild, so killing the child alone would leave the VM running).
fn kill_tree(pid: u32) {
    let mut tree = vec![pid];
    let mut i = 0;
    let parents = process_parents();
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(child, _)| child),
        );
        i += 1;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(tree.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// `(pid, parent pid)` of every process, from `/proc/<pid>/stat`.
fn process_parents() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name may hold spaces and parentheses: the fields
            // after it start at the last `)`.
            let (_, fields) = stat.rsplit_once(')')?;
            let ppid = fields.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

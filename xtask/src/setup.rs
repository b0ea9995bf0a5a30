//! `cargo xtask setup`: installs what building and testing Baton needs.
//!
//! Every step checks first and does nothing when its work is already done, so
//! a second run takes seconds. The VM kit (virtme-ng and the Debian kernels
//! that BPF LSM tests boot) lives in one folder, [`kit_dir`].

use std::env;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{
    cargo_home, clean_cargo_env, create_dir_all, is_executable, mount_points, natural_cmp, output,
    probe, run, which, write_atomic,
};

/// The rustup toolchain that builds the eBPF programs: a dated nightly, so
/// that every machine compiles the kernel programs with the same rustc and
/// LLVM (code generation reaches the verifier). `agent/build.rs` names it
/// too; CONTRIBUTING.md says how to move it.
pub const NIGHTLY_TOOLCHAIN: &str = "nightly-2026-05-20";

/// The bpf-linker release that is built and expected.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-deny release `cargo xtask lint` runs (licences, bans, sources).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// The virtme-ng release installed into the kit's Python environment.
pub const VIRTME_NG_VERSION: &str = "1.42";

/// Environment variable that overrides [`DEFAULT_KIT_DIR`].
pub const KIT_DIR_ENV: &str = "BATON_KIT_DIR";

/// Where the VM kit lives unless [`KIT_DIR_ENV`] says otherwise.
pub const DEFAULT_KIT_DIR: &str = "/var/cache/baton-kit";

/// Debian packages that builds and tests use on the host.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "dnsmasq-base",
    "iproute2",
    "curl",
    "git",
    "python3",
    "nftables",
    "procps",
    "bpftool",
    "rsyslog",
    "systemd",
    "python3-venv",
];

/// Debian packages that only the VM kit needs.
const VM_PACKAGES: &[&str] = &["python3-venv"];

/// The Debian release whose apt entries name the mirror, and the release
/// whose newer kernel is fetched from the same mirror.
const HOST_CODENAME: &str = "bookworm";
const EXTRA_CODENAME: &str = "trixie";

/// A kernel flavour the VM tests boot.
struct KernelSpec {
    /// Short name, also the folder under `<kit>/kernels`.
    name: &'static str,
    /// Extended regular expression matching the package names of every ABI of
    /// this kernel, for `apt-cache search --names-only`.
    packages: &'static str,
}

/// The kernels of the VM kit: Debian 12's 6.1 and Debian 13's 6.12 (the
/// generic `amd64` flavour; the `cloud` one lacks 9p).
const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        packages: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    KernelSpec {
        name: "6.12",
        packages: r"^linux-image-6\.12\.[0-9]+\+deb13(\.[0-9]+)?-amd64-unsigned$",
    },
];

/// What `cargo xtask setup` should prepare.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Also prepare the VM kit: virtme-ng and the Debian kernels.
    pub vm: bool,
}

/// The VM kit: virtme-ng and the kernels that VM tests boot.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The kit folder ([`kit_dir`]).
    pub dir: PathBuf,
    /// The `vng` program of the kit's virtme-ng.
    pub vng: PathBuf,
    /// The unpacked kernels, oldest first. Empty when setup ran without
    /// [`SetupOptions::vm`].
    pub kernels: Vec<KernelImage>,
}

/// One unpacked Debian kernel of the kit.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// Short name: `6.1` or `6.12`.
    pub name: String,
    /// The kernel release (`uname -r` inside the VM), e.g. `6.1.0-50-amd64`.
    pub release: String,
    /// The bootable kernel image.
    pub vmlinuz: PathBuf,
}

/// The kit folder: `$BATON_KIT_DIR`, or [`DEFAULT_KIT_DIR`].
pub fn kit_dir() -> PathBuf {
    match env::var_os(KIT_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_KIT_DIR),
    }
}

/// Installs and mounts what is missing: the nightly `rust-src`, bpf-linker,
/// cargo-deny, bpffs and securityfs, the Debian packages the tests use and, with
/// `opts.vm`, the VM kit.
///
/// Fails if anything cannot be had, a VM kernel included: the VM suite never
/// runs on a partial kit.
pub fn setup(opts: &SetupOptions) -> Result<Kit> {
    let dir = kit_dir();
    create_dir_all(&dir)?;

    ensure_nightly()?;
    let sysroot = ensure_rust_src()?;
    ensure_bpf_linker(&dir, &sysroot)?;
    ensure_cargo_deny()?;
    ensure_mounts()?;
    let mut packages = HOST_PACKAGES.to_vec();
    if opts.vm {
        packages.extend_from_slice(VM_PACKAGES);
    }
    ensure_packages(&packages)?;

    ensure_kubernetes_validate(&dir)?;
    let vng = dir.join("venv/bin/vng");
    if !opts.vm {
        return Ok(Kit {
            dir,
            vng,
            kernels: Vec::new(),
        });
    }
    ensure_virtme_ng(&dir, &vng)?;
    let mut apt = KitApt::new(&dir);
    let kernels = KERNELS
        .iter()
        .map(|spec| ensure_kernel(&dir, spec, &mut apt))
        .collect::<Result<Vec<_>>>()?;
    Ok(Kit { dir, vng, kernels })
}

/// Installs [`NIGHTLY_TOOLCHAIN`] when rustup does not have it (the minimal
/// profile with `rust-src` and clippy, some 200 MB), and clippy when the
/// toolchain lacks it (`cargo xtask lint` runs it on the kernel programs).
fn ensure_nightly() -> Result<()> {
    let mut cmd = Command::new(rustup()?);
    clean_cargo_env(&mut cmd).args(["run", NIGHTLY_TOOLCHAIN, "rustc", "--version"]);
    if let Some(version) = probe(&mut cmd) {
        println!(
            "setup: the {NIGHTLY_TOOLCHAIN} toolchain is installed ({})",
            version.trim()
        );
    } else {
        println!(
            "setup: installing the {NIGHTLY_TOOLCHAIN} toolchain (minimal profile, rust-src, clippy)"
        );
        run(clean_cargo_env(&mut Command::new(rustup()?)).args([
            "toolchain",
            "install",
            NIGHTLY_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
    }
    let mut clippy = Command::new(rustup()?);
    clean_cargo_env(&mut clippy).args(["run", NIGHTLY_TOOLCHAIN, "cargo-clippy", "--version"]);
    if probe(&mut clippy).is_none() {
        println!("setup: adding clippy to the {NIGHTLY_TOOLCHAIN} toolchain");
        run(clean_cargo_env(&mut Command::new(rustup()?)).args([
            "component",
            "add",
            "clippy",
            "--toolchain",
            NIGHTLY_TOOLCHAIN,
        ]))?;
    }
    Ok(())
}

/// Makes sure the nightly toolchain has `rust-src` (for `-Z build-std`) and
/// returns its sysroot.
fn ensure_rust_src() -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        println!("setup: rust-src is already installed for the {NIGHTLY_TOOLCHAIN} toolchain");
        return Ok(sysroot);
    }
    println!("setup: adding rust-src to the {NIGHTLY_TOOLCHAIN} toolchain");
    run(clean_cargo_env(&mut Command::new(rustup()?)).args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY_TOOLCHAIN,
    ]))?;
    Ok(sysroot)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let mut cmd = Command::new(rustup()?);
    clean_cargo_env(&mut cmd).args(["run", NIGHTLY_TOOLCHAIN, "rustc", "--print", "sysroot"]);
    let sysroot = output(&mut cmd).with_context(|| {
        format!(
            "the {NIGHTLY_TOOLCHAIN} toolchain is not usable; install it with \
             `rustup toolchain install {NIGHTLY_TOOLCHAIN}`"
        )
    })?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn rustup() -> Result<PathBuf> {
    if let Some(path) = which("rustup") {
        return Ok(path);
    }
    let path = cargo_home()?.join("bin/rustup");
    if is_executable(&path) {
        Ok(path)
    } else {
        bail!(
            "rustup is not installed (not in PATH nor in {})",
            path.display()
        )
    }
}

/// Makes sure `bpf-linker` [`BPF_LINKER_VERSION`] is installed, building it
/// against the nightly toolchain's own libLLVM when it is not, or when the
/// one setup built last was built against another toolchain's (the file
/// [`BPF_LINKER_LLVM`] in the kit remembers which).
fn ensure_bpf_linker(kit: &Path, sysroot: &Path) -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let version_of =
        |path: &Path| probe(Command::new(path).arg("--version")).map(|v| v.trim().to_owned());
    let in_path = which("bpf-linker");
    let installed = cargo_home()?.join("bin/bpf-linker");

    // One the user put in PATH themselves is theirs to keep in step.
    if let Some(path) = &in_path
        && *path != installed
        && version_of(path).as_deref() == Some(&wanted)
    {
        println!("setup: {wanted} is already installed ({})", path.display());
        return Ok(());
    }
    let libllvm = nightly_libllvm(sysroot)?;
    let marker = kit.join(BPF_LINKER_LLVM);
    let built_against = fs::read_to_string(&marker).ok();
    let current = built_against.as_deref().map(str::trim) == libllvm.to_str();
    if version_of(&installed).as_deref() != Some(&wanted) || !current {
        if version_of(&installed).as_deref() == Some(&wanted) {
            println!(
                "setup: {} was not built against the {NIGHTLY_TOOLCHAIN} toolchain's LLVM; rebuilding it",
                installed.display()
            );
        }
        build_bpf_linker(kit, sysroot)?;
        if version_of(&installed).as_deref() != Some(&wanted) {
            bail!(
                "{} does not report `{wanted}` after it was built",
                installed.display()
            );
        }
        write_atomic(&marker, format!("{}\n", libllvm.display()))?;
    } else {
        println!(
            "setup: {wanted} is already installed ({})",
            installed.display()
        );
    }
    if let Some(path) = in_path.filter(|path| *path != installed) {
        println!(
            "setup: warning: `bpf-linker` in PATH is {}, not {wanted}; put {} first in PATH",
            path.display(),
            installed.parent().unwrap_or(&installed).display()
        );
    }
    Ok(())
}

/// Where setup installs `cargo-deny`.
pub fn cargo_deny() -> Result<PathBuf> {
    Ok(cargo_home()?.join("bin/cargo-deny"))
}

/// Makes sure `cargo-deny` [`CARGO_DENY_VERSION`] is installed in cargo's
/// `bin` directory, building it from crates.io (about three minutes on two
/// cores) when it is missing or another version.
fn ensure_cargo_deny() -> Result<()> {
    let wanted = format!("cargo-deny {CARGO_DENY_VERSION}");
    let installed = cargo_deny()?;
    let reports_wanted =
        || probe(Command::new(&installed).arg("--version")).is_some_and(|v| v.trim() == wanted);
    if reports_wanted() {
        println!(
            "setup: {wanted} is already installed ({})",
            installed.display()
        );
        return Ok(());
    }
    println!("setup: building {wanted} (for `cargo xtask lint`)");
    let mut cmd = crate::cargo();
    clean_cargo_env(&mut cmd)
        .args(["install", "--locked", "--force"])
        .arg(format!("cargo-deny@{CARGO_DENY_VERSION}"));
    run(&mut cmd)?;
    if !reports_wanted() {
        bail!(
            "{} does not report `{wanted}` after it was built",
            installed.display()
        );
    }
    Ok(())
}

/// The file in the kit naming the libLLVM the installed bpf-linker was
/// built against.
const BPF_LINKER_LLVM: &str = "bpf-linker.llvm";

/// The nightly toolchain's own libLLVM.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib_dir = sysroot.join("lib");
    let name = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| {
            name.starts_with("libLLVM.so.") && name.contains("-rust-") && name.ends_with("-nightly")
        })
        .with_context(|| format!("no libLLVM.so.*-rust-*-nightly in {}", lib_dir.display()))?;
    Ok(lib_dir.join(name))
}

fn build_bpf_linker(kit: &Path, sysroot: &Path) -> Result<()> {
    let lib_dir = sysroot.join("lib");
    let libllvm_path = nightly_libllvm(sysroot)?;
    let libllvm = libllvm_path
        .file_name()
        .and_then(|name| name.to_str())
        .context("libLLVM's name is not UTF-8")?
        .to_owned();
    let major: u32 = libllvm["libLLVM.so.".len()..]
        .split(['.', '-'])
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {libllvm}"))?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the {NIGHTLY_TOOLCHAIN} \
         toolchain's LLVM {major} (about a minute)"
    );

    // llvm-sys looks for `LLVM_PREFIX/bin/llvm-config` and links
    // `LLVM_PREFIX/lib/libLLVM.so`; the toolchain's libLLVM is all it needs.
    let prefix = kit.join("llvm-prefix");
    create_dir_all(&prefix.join("bin"))?;
    create_dir_all(&prefix.join("lib"))?;
    let llvm_config = prefix.join("bin/llvm-config");
    write_atomic(
        &llvm_config,
        "#!/bin/sh\n# Stands in for LLVM's llvm-config; only its presence is checked.\nexit 0\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", llvm_config.display()))?;
    }
    let link = prefix.join("lib/libLLVM.so");
    replace_symlink(&lib_dir.join(&libllvm), &link)?;

    let lib_dir_str = lib_dir
        .to_str()
        .context("the nightly sysroot is not UTF-8")?;
    if lib_dir_str.contains(char::is_whitespace) {
        bail!("the nightly sysroot {lib_dir_str} contains whitespace, which RUSTFLAGS cannot hold");
    }
    let mut cmd = Command::new(rustup()?);
    clean_cargo_env(&mut cmd)
        .args(["run", NIGHTLY_TOOLCHAIN, "cargo", "install"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{lib_dir_str}"));
    run(&mut cmd)
}

/// Replaces whatever is at `link` with a symbolic link to `target`.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(link),
        Ok(_) => fs::remove_file(link),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("cannot remove {}", link.display()))?;
    symlink(target, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
}

/// Mounts bpffs and securityfs where they are missing.
fn ensure_mounts() -> Result<()> {
    for (fstype, target) in [
        ("bpf", "/sys/fs/bpf"),
        ("securityfs", "/sys/kernel/security"),
    ] {
        let mounted = mount_points(fstype)?;
        if mounted.iter().any(|point| point == Path::new(target)) {
            println!("setup: {fstype} is already mounted at {target}");
            continue;
        }
        println!("setup: mounting {fstype} at {target}");
        run(Command::new("mount").args(["-t", fstype, fstype, target]))?;
    }
    Ok(())
}

/// Installs the Debian packages of `wanted` that are not installed.
fn ensure_packages(wanted: &[&str]) -> Result<()> {
    // dpkg-query exits non-zero when it knows some name not at all, and
    // still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(wanted)
        .output()
        .context("cannot run dpkg-query")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter(|line| line.ends_with(" installed"))
        .filter_map(|line| line.split(' ').next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages are already installed ({})",
            wanted.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs virtme-ng [`VIRTME_NG_VERSION`] into `<kit>/venv`.
fn ensure_virtme_ng(kit: &Path, vng: &Path) -> Result<()> {
    let wanted = format!("virtme-ng {VIRTME_NG_VERSION}");
    let version = probe(Command::new(vng).arg("--version")).map(|v| v.trim().to_owned());
    if version.as_deref() == Some(&wanted) {
        println!("setup: {wanted} is already installed ({})", vng.display());
        return Ok(());
    }
    let venv = kit.join("venv");
    println!("setup: installing {wanted} into {}", venv.display());
    if !is_executable(&venv.join("bin/python3")) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")))?;
    let version = probe(Command::new(vng).arg("--version")).map(|v| v.trim().to_owned());
    if version.as_deref() != Some(&wanted) {
        bail!(
            "{} does not report `{wanted}` after installing it",
            vng.display()
        );
    }
    Ok(())
}

/// Version of the Kubernetes manifest validator the deployment tests use.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Installs `kubernetes-validate` (which carries the Kubernetes schemas, so
/// validation needs no network) into `<kit>/validate-venv`.
fn ensure_kubernetes_validate(kit: &Path) -> Result<()> {
    let venv = kit.join("validate-venv");
    let tool = venv.join("bin/kubernetes-validate");
    let version = probe(Command::new(&tool).arg("--version")).map(|v| v.trim().to_owned());
    if version
        .as_deref()
        .is_some_and(|v| v.contains(KUBERNETES_VALIDATE_VERSION))
    {
        println!(
            "setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} is already installed ({})",
            tool.display()
        );
        return Ok(());
    }
    println!(
        "setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    if !is_executable(&venv.join("bin/python3")) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg(format!(
            "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
        )))?;
    Ok(())
}

/// Makes sure the kernel `spec` is unpacked in `<kit>/kernels/<name>` with
/// its modules reachable at `/lib/modules/<release>`, fetching the newest
/// Debian package of it when it is not.
fn ensure_kernel(kit: &Path, spec: &KernelSpec, apt: &mut KitApt) -> Result<KernelImage> {
    let dir = kit.join("kernels").join(spec.name);
    if let Some((image, modules)) = unpacked_kernel(&dir, spec.name) {
        println!(
            "setup: kernel {} ({}) is already unpacked in {}",
            spec.name,
            image.release,
            dir.display()
        );
        link_modules(&image.release, &modules)?;
        return Ok(image);
    }

    apt.update()?;
    let package = apt.newest(spec.packages)?;
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_suffix("-unsigned"))
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_owned();
    println!("setup: fetching kernel {} ({package})", spec.name);
    let deb = apt.download(&package)?;

    remove_kernel_dir(&dir)?;
    create_dir_all(&dir)?;
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(&dir))?;
    fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))?;
    write_atomic(&dir.join("RELEASE"), format!("{release}\n"))?;
    let Some((image, modules)) = unpacked_kernel(&dir, spec.name) else {
        // Leave no RELEASE behind, so the next run starts over.
        let _ = fs::remove_file(dir.join("RELEASE"));
        bail!(
            "{package} did not unpack to boot/vmlinuz-{release} and lib/modules/{release} in {}",
            dir.display()
        );
    };
    link_modules(&release, &modules)?;
    Ok(image)
}

/// The kernel unpacked in `dir`, with its modules folder, if it is complete.
/// `dir/RELEASE` is written last and so marks a finished unpack.
fn unpacked_kernel(dir: &Path, name: &str) -> Option<(KernelImage, PathBuf)> {
    let release = fs::read_to_string(dir.join("RELEASE")).ok()?;
    let release = release.trim();
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|parent| dir.join(parent).join(release))
        .find(|candidate| candidate.is_dir())?;
    vmlinuz.is_file().then(|| {
        let image = KernelImage {
            name: name.to_owned(),
            release: release.to_owned(),
            vmlinuz,
        };
        (image, modules)
    })
}

/// Removes a kernel folder and any `/lib/modules` link into it.
fn remove_kernel_dir(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir("/lib/modules") {
        for entry in entries.flatten() {
            let path = entry.path();
            if fs::read_link(&path).is_ok_and(|target| target.starts_with(dir)) {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Points `/lib/modules/<release>` at `modules`, which the VM (sharing the
/// host's root file system) loads its modules from, and indexes them.
fn link_modules(release: &str, modules: &Path) -> Result<()> {
    let link = Path::new("/lib/modules").join(release);
    match fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(&link).ok().as_deref() != Some(modules) {
                println!(
                    "setup: pointing {} at {}",
                    link.display(),
                    modules.display()
                );
                replace_symlink(modules, &link)?;
            }
        }
        // A real folder: this kernel is installed on the host itself.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("setup: linking {} to {}", link.display(), modules.display());
            create_dir_all(Path::new("/lib/modules"))?;
            symlink(modules, &link).with_context(|| format!("cannot create {}", link.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
    }
    if !link.join("modules.dep").is_file() {
        println!("setup: indexing the modules of {release}");
        run(Command::new("depmod").args(["-a", release]))?;
    }
    Ok(())
}

/// An apt configuration of the kit's own (sources, lists and cache inside
/// `<kit>/apt`), so fetching kernels leaves the machine's apt state alone.
struct KitApt {
    dir: PathBuf,
    updated: bool,
}

impl KitApt {
    fn new(kit: &Path) -> Self {
        Self {
            dir: kit.join("apt"),
            updated: false,
        }
    }

    /// An apt command that uses only the kit's sources, lists and cache.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let options = [
            ("Dir::Etc::SourceList", self.dir.join("sources.list")),
            ("Dir::Etc::SourceParts", self.dir.join("sources.list.d")),
            ("Dir::State::Lists", self.dir.join("lists")),
            ("Dir::Cache", self.dir.join("cache")),
            ("APT::Sandbox::User", PathBuf::from("root")),
        ];
        for (key, value) in options {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Writes the kit's sources (the machine's Debian mirror, for the host
    /// release and the extra one) and updates the lists once.
    fn update(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        let sources = kit_sources(&host_sources()?)?;
        for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            create_dir_all(&self.dir.join(sub))?;
        }
        write_atomic(&self.dir.join("sources.list"), &sources)?;
        println!(
            "setup: reading the {HOST_CODENAME} and {EXTRA_CODENAME} kernel lists into {}",
            self.dir.display()
        );
        run(self.command("apt-get").arg("update")).with_context(|| {
            format!(
                "cannot read the package lists of {}; if the {EXTRA_CODENAME} signatures are \
                 not trusted, upgrade debian-archive-keyring",
                self.dir.join("sources.list").display()
            )
        })?;
        self.updated = true;
        Ok(())
    }

    /// The newest package whose name matches `pattern`.
    fn newest(&self, pattern: &str) -> Result<String> {
        let found = output(
            self.command("apt-cache")
                .args(["search", "--names-only"])
                .arg(pattern),
        )?;
        found
            .lines()
            .filter_map(|line| line.split(' ').next())
            .filter(|name| !name.is_empty())
            .max_by(|a, b| natural_cmp(a, b))
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "no package matches {pattern} in the lists of {}",
                    self.dir.join("sources.list").display()
                )
            })
    }

    /// Downloads `package` into `<kit>/apt/debs` and returns the file.
    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        if debs.exists() {
            fs::remove_dir_all(&debs)
                .with_context(|| format!("cannot clear {}", debs.display()))?;
        }
        create_dir_all(&debs)?;
        run(self
            .command("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(&debs))?;
        let prefix = format!("{package}_");
        fs::read_dir(&debs)
            .with_context(|| format!("cannot list {}", debs.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {prefix}*.deb in {}",
                    debs.display()
                )
            })
    }
}

/// One `deb` line of an apt source: a mirror and a suite.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AptSource {
    uri: String,
    suite: String,
    signed_by: Option<String>,
}

/// The `deb` sources the machine's apt uses: `/etc/apt/sources.list` and the
/// `.list` and `.sources` files of `/etc/apt/sources.list.d`.
fn host_sources() -> Result<Vec<AptSource>> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(parse_one_line_sources(&text));
    }
    let mut parts: Vec<PathBuf> = match fs::read_dir("/etc/apt/sources.list.d") {
        Ok(entries) => entries.flatten().map(|entry| entry.path()).collect(),
        Err(_) => Vec::new(),
    };
    parts.sort();
    for path in parts {
        let parse = match path.extension().and_then(|ext| ext.to_str()) {
            Some("list") => parse_one_line_sources,
            Some("sources") => parse_deb822_sources,
            _ => continue,
        };
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        sources.extend(parse(&text));
    }
    Ok(sources)
}

/// The kit's `sources.list`: each of the machine's entries for the host
/// release (and its `-updates` and `-security` suites), and the same entry
/// for the extra release, main component only.
fn kit_sources(host: &[AptSource]) -> Result<String> {
    let suites = [
        HOST_CODENAME.to_owned(),
        format!("{HOST_CODENAME}-updates"),
        format!("{HOST_CODENAME}-security"),
    ];
    let mut lines: Vec<String> = Vec::new();
    for source in host.iter().filter(|s| suites.contains(&s.suite)) {
        let extra = source.suite.replacen(HOST_CODENAME, EXTRA_CODENAME, 1);
        for suite in [source.suite.as_str(), extra.as_str()] {
            let options = source
                .signed_by
                .as_ref()
                .map(|keyring| format!("[signed-by={keyring}] "))
                .unwrap_or_default();
            let line = format!("deb {options}{} {suite} main", source.uri);
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
    }
    if !lines
        .iter()
        .any(|line| line.ends_with(&format!(" {HOST_CODENAME} main")))
    {
        bail!(
            "the machine's apt sources have no Debian {HOST_CODENAME} entry, whose mirror \
             the VM kernels are fetched from"
        );
    }
    lines.push(String::new());
    Ok(lines.join("\n"))
}

/// Parses the one-line format: `deb [options] uri suite component...`.
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(AptSource {
                uri: uri.to_owned(),
                suite: suite.to_owned(),
                signed_by,
            });
        }
    }
    sources
}

/// Parses the deb822 format of `.sources` files.
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut flush = |stanza: &mut Vec<(String, String)>| {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.trim())
        };
        let enabled = field("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let is_deb = field("Types").is_some_and(|v| v.split_whitespace().any(|t| t == "deb"));
        if enabled && is_deb {
            // Signed-By is either a keyring path or an inline key block; only
            // a path can be passed on.
            let signed_by = field("Signed-By")
                .filter(|v| v.starts_with('/') && !v.contains(char::is_whitespace))
                .map(str::to_owned);
            for uri in field("URIs").unwrap_or("").split_whitespace() {
                for suite in field("Suites").unwrap_or("").split_whitespace() {
                    sources.push(AptSource {
                        uri: uri.to_owned(),
                        suite: suite.to_owned(),
                        signed_by: signed_by.clone(),
                    });
                }
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut stanza);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = stanza.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            stanza.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    flush(&mut stanza);
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    fn source(uri: &str, suite: &str, signed_by: Option<&str>) -> AptSource {
        AptSource {
            uri: uri.to_owned(),
            suite: suite.to_owned(),
            signed_by: signed_by.map(str::to_owned),
        }
    }

    #[test]
    fn deb822_sources() {
        let text = "\
Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm

Types: deb
URIs: http://example.org/x
Suites: stable
Enabled: no

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
";
        assert_eq!(
            parse_deb822_sources(text),
            [
                source("http://deb.debian.org/debian", "bookworm", Some(KEYRING)),
                source(
                    "http://deb.debian.org/debian",
                    "bookworm-updates",
                    Some(KEYRING)
                ),
                source(
                    "http://deb.debian.org/debian-security",
                    "bookworm-security",
                    None
                ),
            ]
        );
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://old/ bullseye main
deb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main contrib
deb-src http://mirror/debian bookworm main
deb http://mirror/debian-security bookworm-security main # trailing
";
        assert_eq!(
            parse_one_line_sources(text),
            [
                source("http://mirror/debian", "bookworm", Some("/k.gpg")),
                source("http://mirror/debian-security", "bookworm-security", None),
            ]
        );
    }

    #[test]
    fn kit_sources_add_the_extra_release_on_the_same_mirror() {
        let host = [
            source("http://m/debian", "bookworm", Some(KEYRING)),
            source("http://m/debian-security", "bookworm-security", None),
            source("http://m/debian", "bookworm-backports", None),
            source("https://other/apt", "stable", None),
        ];
        let text = kit_sources(&host).unwrap();
        assert_eq!(
            text,
            format!(
                "deb [signed-by={KEYRING}] http://m/debian bookworm main\n\
                 deb [signed-by={KEYRING}] http://m/debian trixie main\n\
                 deb http://m/debian-security bookworm-security main\n\
                 deb http://m/debian-security trixie-security main\n"
            )
        );
        assert!(kit_sources(&host[2..]).is_err());
    }

    /// `agent/build.rs` builds the kernel programs with the toolchain that
    /// setup installs and the eBPF lint uses; a bump must change both.
    #[test]
    fn the_ebpf_build_uses_the_pinned_nightly() {
        let build_rs = include_str!("../../agent/build.rs");
        assert!(
            build_rs.contains(&format!("Toolchain::Custom(\"{NIGHTLY_TOOLCHAIN}\")")),
            "agent/build.rs must pass Toolchain::Custom(\"{NIGHTLY_TOOLCHAIN}\") to build_ebpf"
        );
    }
}

//! Namespace and mount operations are rights. A path rule is matched on the
//! path the kernel prints for the mount an access came through, so a bind
//! mount, a new mount, a `chroot` or `pivot_root` (and the user namespace
//! that lets `nobody` do all of these) would reach a denied file under an
//! allowed name. With BPF LSM (the test VMs) agents are denied each of them
//! unless their policy says `process.namespaces: allow`.
//!
//! Each trick runs as `nobody` and as root inside the agent, and as a
//! control outside every agent, where it works.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use baton_tests::{Daemon, EPERM, TempDir, helper_outcome, policy};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// The namespace and mount hooks.
const NAMESPACE_HOOKS: [&str; 6] = [
    "userns_create",
    "sb_mount",
    "sb_kern_mount",
    "move_mount",
    "path_chroot",
    "sb_pivotroot",
];

/// Prefix that runs a command as `nobody`.
const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// A directory holding `secret/key.txt` (denied to the agent), an empty
/// `mnt/` and `jail/` holding a static binary, every part readable by
/// `nobody`.
struct World {
    dir: TempDir,
}

impl World {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        for sub in ["secret", "mnt", "jail"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("secret/key.txt"), "key").unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("jail/busybox"))
            .expect("busybox-static is installed by cargo xtask setup");
        let mut path = dir.path().to_path_buf();
        // Every ancestor up to the test root must let `nobody` through.
        while path.parent().is_some() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o005))
                    .unwrap();
            }
            if !path.pop() || path == Path::new("/") {
                break;
            }
        }
        Self { dir }
    }

    fn path(&self, sub: &str) -> String {
        self.dir.path().join(sub).display().to_string()
    }
}

/// A daemon with agent `ns` (files under `secret/` denied, namespaces as
/// `namespaces` says) and `ns-audit`, the same in audit mode.
fn daemon(label: &str, world: &World, namespaces: &str) -> Daemon {
    let spec = format!(
        "  egress:\n    default: allow\n  files:\n    deny:\n      - {}\n  process:\n    namespaces: {namespaces}\n",
        world.path("secret")
    );
    let daemon = Daemon::start(
        label,
        &[
            ("ns.yaml", policy("ns", "ns", &spec)),
            (
                "ns-audit.yaml",
                policy("ns-audit", "ns-audit", &format!("  mode: audit\n{spec}")),
            ),
        ],
    );
    let stderr = daemon.stderr();
    assert!(
        !stderr.contains("file rules are NOT enforced"),
        "BPF LSM must load in the VM:\n{stderr}"
    );
    for hook in NAMESPACE_HOOKS {
        assert!(
            !stderr.contains(&format!("LSM hook {hook} is not attached")),
            "every namespace hook loads on this kernel:\n{stderr}"
        );
    }
    daemon
}

/// Runs the helper with `args` in agent `agent`, as root or as `nobody`.
fn in_agent(daemon: &Daemon, agent: &str, nobody: bool, args: &[&str]) -> String {
    let mut command: Vec<&str> = Vec::new();
    if nobody {
        command.extend(AS_NOBODY);
    }
    command.push(HELPER);
    command.extend(args);
    helper_outcome(&daemon.exec(agent, &command))
}

/// Runs the helper with `args` outside every agent.
fn outside(nobody: bool, args: &[&str]) -> String {
    let mut command = if nobody {
        let mut command = Command::new(AS_NOBODY[0]);
        command.args(&AS_NOBODY[1..]).arg(HELPER);
        command
    } else {
        Command::new(HELPER)
    };
    helper_outcome(&command.args(args).output().unwrap())
}

/// The first record of agent `agent` from `hook` naming the operation
/// `what`, for a process of `uid`.
fn record(daemon: &Daemon, agent: &str, hook: &str, what: &str, uid: u32) -> Value {
    daemon.wait_for_record(|r| {
        r["agent"] == agent
            && r["hook"] == hook
            && r["process"]["uid"] == uid
            && r["object"]["path"] == what
    })
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_ns_bind_mount_of_a_denied_directory_is_denied_as_nobody_and_root() {
    let world = World::new("ns-bind");
    let daemon = daemon("ns-bind", &world, "deny");
    let (secret, mnt) = (world.path("secret"), world.path("mnt"));
    let args = ["bind-read", &secret, &mnt, "key.txt"];

    // nobody: the user namespace that would give it CAP_SYS_ADMIN.
    assert_eq!(in_agent(&daemon, "ns", true, &args), EPERM, "nobody");
    let r = record(
        &daemon,
        "ns",
        "userns_create",
        "create a user namespace",
        65534,
    );
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["control"], "file", "{r}");
    assert_eq!(outside(true, &args), "ok", "nobody outside every agent");
    assert_eq!(
        in_agent(&daemon, "ns", true, &["userns"]),
        EPERM,
        "a bare user namespace"
    );

    // root: no user namespace needed, the mount itself is refused.
    assert_eq!(in_agent(&daemon, "ns", false, &args), EPERM, "root");
    let r = record(&daemon, "ns", "sb_mount", "bind mount", 0);
    assert_eq!(r["verdict"], "denied", "{r}");
    record(&daemon, "ns", "sb_mount", "change mount propagation", 0);
    assert_eq!(outside(false, &args), "ok", "root outside every agent");

    // Audit mode decides the same and only records it.
    assert_eq!(in_agent(&daemon, "ns-audit", false, &args), "ok");
    let r = record(&daemon, "ns-audit", "sb_mount", "bind mount", 0);
    assert_eq!(r["verdict"], "would-deny", "{r}");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_ns_chroot_into_a_denied_directory_or_to_run_a_copy_is_denied() {
    let world = World::new("ns-chroot");
    let daemon = daemon("ns-chroot", &world, "deny");
    let (secret, jail) = (world.path("secret"), world.path("jail"));
    let read = ["chroot-read", &secret, "/key.txt"];
    let run = ["chroot-exec", &jail, "/busybox", "echo", "ok"];

    for args in [&read[..], &run[..]] {
        assert_eq!(
            in_agent(&daemon, "ns", true, args),
            EPERM,
            "nobody {args:?}"
        );
        assert_eq!(outside(true, args), "ok", "nobody outside {args:?}");
        assert_eq!(in_agent(&daemon, "ns", false, args), EPERM, "root {args:?}");
        assert_eq!(outside(false, args), "ok", "root outside {args:?}");
    }
    record(
        &daemon,
        "ns",
        "userns_create",
        "create a user namespace",
        65534,
    );
    let r = record(&daemon, "ns", "path_chroot", "chroot", 0);
    assert_eq!(r["verdict"], "denied", "{r}");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_ns_root_cannot_mount_move_or_pivot_inside_an_agent() {
    let world = World::new("ns-root");
    let daemon = daemon("ns-root", &world, "deny");
    let (secret, mnt) = (world.path("secret"), world.path("mnt"));

    // A tmpfs over an allowed directory, to run a binary from it.
    let tmpfs = ["tmpfs-exec", &mnt, "/bin/busybox", "echo", "ok"];
    assert_eq!(in_agent(&daemon, "ns", false, &tmpfs), EPERM, "tmpfs");
    let r = record(&daemon, "ns", "sb_mount", "mount", 0);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(outside(false, &tmpfs), "ok", "tmpfs outside");

    // The new mount API: a file system instance made without mount(2).
    assert_eq!(
        in_agent(&daemon, "ns", false, &["fsmount-tmpfs"]),
        EPERM,
        "fsconfig(FSCONFIG_CMD_CREATE)"
    );
    record(
        &daemon,
        "ns",
        "sb_kern_mount",
        "create a file system mount",
        0,
    );
    assert_eq!(outside(false, &["fsmount-tmpfs"]), "ok");

    // A detached copy of the denied directory, attached elsewhere.
    let moved = ["move-mount", &secret, &mnt];
    assert_eq!(in_agent(&daemon, "ns", false, &moved), EPERM, "move_mount");
    record(&daemon, "ns", "move_mount", "move_mount", 0);
    assert_eq!(outside(false, &moved), "ok", "move_mount outside");

    // pivot_root: the hook runs before the kernel looks at the mounts, so
    // outside the agent the same call fails for what it asks (EINVAL: the
    // directory is no mount point) and changes nothing.
    let pivot = ["pivot-root", &mnt];
    assert_eq!(in_agent(&daemon, "ns", false, &pivot), EPERM, "pivot_root");
    record(&daemon, "ns", "sb_pivotroot", "pivot_root", 0);
    assert_eq!(outside(false, &pivot), "errno=22", "pivot_root outside");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_ns_a_policy_may_allow_namespaces() {
    let world = World::new("ns-allow");
    let daemon = daemon("ns-allow", &world, "allow");
    let (jail, mnt) = (world.path("jail"), world.path("mnt"));
    assert_eq!(in_agent(&daemon, "ns", true, &["userns"]), "ok", "nobody");
    assert_eq!(
        in_agent(&daemon, "ns", false, &["fsmount-tmpfs"]),
        "ok",
        "root"
    );
    assert_eq!(
        in_agent(&daemon, "ns", false, &["bind-read", &jail, &mnt, "busybox"]),
        "ok"
    );
    assert_eq!(
        in_agent(&daemon, "ns", true, &["chroot-read", &jail, "/busybox"]),
        "ok"
    );
    assert!(
        !daemon
            .decisions()
            .iter()
            .any(|r| r["agent"] == "ns" && NAMESPACE_HOOKS.iter().any(|h| r["hook"] == *h)),
        "an allowed operation leaves no record"
    );
}

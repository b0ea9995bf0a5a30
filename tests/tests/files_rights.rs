//! The rights behind calls that change or run a file without opening it for
//! that: truncation through a descriptor opened for reading (6.2+ truncates
//! through `file_truncate`), `chown`, `mprotect(PROT_EXEC)` of a mapping
//! made readable, and descriptors received over `SCM_RIGHTS` from a process
//! outside the agent. With BPF LSM (the test VMs) each is decided like the
//! open or exec it amounts to.

use std::{
    io::Write,
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixListener},
    },
    process::Command,
};

use baton_tests::{Daemon, EPERM, TempDir, helper_outcome, policy};
use serde_json::Value;

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// Prefix that runs a command as `nobody`.
const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

/// `ro/` (write denied), `secret/` (read and write denied) and `lib/`
/// (exec denied), each with a file `nobody` owns, and a daemon with agent
/// `rights` holding those rules.
struct World {
    dir: TempDir,
    daemon: Daemon,
}

impl World {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        for sub in ["ro", "secret", "lib"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("ro/data.txt"), "keep me").unwrap();
        std::fs::write(dir.path().join("secret/key.txt"), "key").unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("lib/code.so")).unwrap();
        for file in ["ro/data.txt", "secret/key.txt", "lib/code.so"] {
            let path = dir.path().join(file);
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        let mut path = dir.path().to_path_buf();
        while path.parent().is_some() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o005))
                    .unwrap();
            }
            if !path.pop() || path == std::path::Path::new("/") {
                break;
            }
        }
        let path = |sub: &str| dir.path().join(sub).display().to_string();
        let spec = format!(
            "  egress:\n    default: allow\n  files:\n    deny:\n      - path: {}\n        rights: [write]\n      - {}\n  exec:\n    deny: [{}]\n",
            path("ro"),
            path("secret"),
            path("lib")
        );
        let daemon = Daemon::start(label, &[("rights.yaml", policy("rights", "rights", &spec))]);
        let stderr = daemon.stderr();
        assert!(
            !stderr.contains("file rules are NOT enforced"),
            "BPF LSM must load in the VM:\n{stderr}"
        );
        for hook in ["path_chown", "file_mprotect", "file_receive"] {
            assert!(
                !stderr.contains(&format!("LSM hook {hook} is not attached")),
                "{hook} loads on this kernel:\n{stderr}"
            );
        }
        Self { dir, daemon }
    }

    fn path(&self, sub: &str) -> String {
        self.dir.path().join(sub).display().to_string()
    }

    fn in_agent(&self, nobody: bool, args: &[&str]) -> String {
        let mut command: Vec<&str> = Vec::new();
        if nobody {
            command.extend(AS_NOBODY);
        }
        command.push(HELPER);
        command.extend(args);
        helper_outcome(&self.daemon.exec("rights", &command))
    }

    fn record(&self, hooks: &[&str], path: &str, uid: u32) -> Value {
        self.daemon.wait_for_record(|r| {
            r["agent"] == "rights"
                && hooks.iter().any(|h| r["hook"] == *h)
                && r["object"]["path"] == path
                && r["process"]["uid"] == uid
        })
    }
}

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

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_rights_truncate_and_chown_need_the_write_right() {
    let world = World::new("rights-write");
    let data = world.path("ro/data.txt");
    for (nobody, uid) in [(true, 65534), (false, 0)] {
        // 6.2+ decides this at file_truncate, 6.1 at path_truncate.
        assert_eq!(
            world.in_agent(nobody, &["open-trunc", &data]),
            EPERM,
            "O_RDONLY|O_TRUNC as uid {uid}"
        );
        let r = world.record(&["file_truncate", "path_truncate"], &data, uid);
        assert_eq!(r["verdict"], "denied", "{r}");
        assert_eq!(r["object"]["denied_rights"][0], "write", "{r}");
        assert_eq!(std::fs::read_to_string(&data).unwrap(), "keep me");

        assert_eq!(
            world.in_agent(nobody, &["chown", &data, "65534"]),
            EPERM,
            "chown as uid {uid}"
        );
        let r = world.record(&["path_chown"], &data, uid);
        assert_eq!(r["verdict"], "denied", "{r}");
        assert_eq!(world.in_agent(nobody, &["open", &data, "read"]), "ok");
    }
    assert_eq!(outside(false, &["chown", &data, "65534"]), "ok");
    assert_eq!(outside(true, &["open-trunc", &data]), "ok");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "");
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_rights_mprotect_exec_needs_the_exec_right() {
    let world = World::new("rights-exec");
    let code = world.path("lib/code.so");
    for (nobody, uid) in [(true, 65534), (false, 0)] {
        assert_eq!(
            world.in_agent(nobody, &["mprotect-exec", &code]),
            EPERM,
            "mprotect(PROT_EXEC) as uid {uid}"
        );
        let r = world.record(&["file_mprotect"], &code, uid);
        assert_eq!(r["verdict"], "denied", "{r}");
        assert_eq!(r["object"]["denied_rights"][0], "exec", "{r}");
        assert_eq!(world.in_agent(nobody, &["open", &code, "read"]), "ok");
    }
    assert_eq!(outside(true, &["mprotect-exec", &code]), "ok");
    assert_eq!(outside(false, &["mprotect-exec", &code]), "ok");
}

/// Serves one connection on `socket`: sends a descriptor of `file` opened
/// for reading, as a process outside every agent.
fn send_once(listener: UnixListener, file: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let sent = std::fs::File::open(&file).unwrap();
        let fd = sent.as_raw_fd();
        let mut byte = [b'x'];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        // SAFETY: a message with one SCM_RIGHTS descriptor, built with the
        // kernel's macros in buffers that outlive the call.
        unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>(), fd);
            assert!(libc::sendmsg(stream.as_raw_fd(), &message, 0) == 1);
        }
        let _ = stream.flush();
    })
}

#[test]
#[ignore = "needs a kernel booted with BPF LSM: runs inside the test VMs (cargo xtask test)"]
fn vm_fh_rights_a_received_descriptor_needs_the_rights_of_an_open() {
    let world = World::new("rights-recv");
    let key = world.path("secret/key.txt");
    let data = world.path("ro/data.txt");
    for (nobody, uid) in [(true, 65534u32), (false, 0)] {
        let socket = world.path(&format!("sock-{uid}"));
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sender = send_once(listener, key.clone());
        assert_eq!(
            world.in_agent(nobody, &["recv-fd", &socket]),
            "no-fd",
            "a denied file's descriptor is not installed (uid {uid})"
        );
        sender.join().unwrap();
        let r = world.record(&["file_receive"], &key, uid);
        assert_eq!(r["verdict"], "denied", "{r}");
        assert_eq!(r["object"]["denied_rights"][0], "read", "{r}");

        // A file the agent may read arrives.
        let socket = world.path(&format!("sock-ok-{uid}"));
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sender = send_once(listener, data.clone());
        assert_eq!(world.in_agent(nobody, &["recv-fd", &socket]), "ok");
        sender.join().unwrap();
    }
    // Outside every agent the denied file's descriptor arrives.
    let socket = world.path("sock-outside");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sender = send_once(listener, key);
    assert_eq!(outside(true, &["recv-fd", &socket]), "ok");
    sender.join().unwrap();
}

//! What procfs says about a process or thread, read through the `procfs`
//! crate so that the process cannot make the read fail.

use procfs::{FromBufRead as _, ProcessCGroups, process::Status};

/// `/proc/TID/status` of a thread or process (`/proc/TID` names threads
/// too). Read as bytes and parsed from lossy UTF-8: the `Name:` line holds
/// the thread's name unescaped, any thread may give itself a name that is
/// not UTF-8, and a strict read would then fail as a whole, which the
/// callers would take for a process that is gone.
pub fn status(tid: u32) -> Option<Status> {
    let bytes = std::fs::read(format!("/proc/{tid}/status")).ok()?;
    Status::from_buf_read(String::from_utf8_lossy(&bytes).as_bytes()).ok()
}

/// The cgroup v2 path of process `pid` (from the hierarchy's root, `/` for
/// the root itself), from `/proc/PID/cgroup`. Lossy for the same reason as
/// [`status`]: cgroup names are bytes, and whoever may create a cgroup
/// chooses them.
pub fn cgroup(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cgroup")).ok()?;
    ProcessCGroups::from_buf_read(String::from_utf8_lossy(&bytes).as_bytes())
        .ok()?
        .0
        .into_iter()
        .find(|group| group.hierarchy == 0)
        .map(|group| group.pathname)
}

/// The thread or process `tid`, for the rest of what procfs says about it.
pub fn task(tid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(tid).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_named_with_invalid_utf8_still_has_a_status() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let name = b"\xff\xfe\x0aA\0";
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most
            // 16 bytes from a live buffer.
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
            // SAFETY: gettid takes no arguments.
            sender.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = stopped.recv();
        });
        let tid = receiver.recv().unwrap();
        assert!(
            std::fs::read_to_string(format!("/proc/{tid}/status")).is_err(),
            "the kernel writes the name unescaped, so a strict read fails"
        );
        let status = status(tid).expect("a status");
        assert_eq!(status.tgid as u32, std::process::id());
        assert_eq!(status.ruid, nix::unistd::getuid().as_raw());
        stop.send(()).unwrap();
        thread.join().unwrap();
    }
}

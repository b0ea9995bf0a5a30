//! Telling a denied process why, on its own standard error (`spec.explain`).
//!
//! A model driving an agent sees `Permission denied` and cannot tell a
//! policy from a fault; one line naming the policy and the rule lets it
//! stop retrying and tell its user what to change.
//!
//! The daemon runs as root, so it never opens anything for the agent: a
//! fresh open of `/proc/PID/fd/2` would reopen whatever file the agent put
//! there with root's rights (an agent could aim it at `/etc/shadow`).
//! Instead it takes a duplicate of the process's own descriptor 2 with
//! `pidfd_getfd` (Linux 5.6), the very open file description the process
//! writes to, and writes there only when that is a pipe, a socket or a
//! terminal opened for writing, and only when the write cannot block.
//! Regular files, devices other than terminals, read-only descriptors and
//! full pipes get nothing. The pidfd pins the process, so a pid reused
//! after an exit is never written to; a process that has exited gets
//! nothing, and the line goes to its agent's first process (the command
//! `baton exec` started, whose standard error the rest usually share)
//! instead, under the same checks.
//!
//! A short command (`curl`, `cat`) has usually exited, and often its agent's
//! first process with it, by the time its denial is decoded. So when
//! `baton exec` admits a process, the daemon keeps a duplicate of that
//! process's standard error (same checks) until the process has exited and
//! every denial made before its exit has been offered here; a line whose
//! process and first process are both gone goes there. The caller reading
//! that pipe sees its end a moment later than the command's exit: once the
//! event drain has caught up. At most [`MAX_KEPT`] are kept at once.
//!
//! The work happens on a thread of its own behind a bounded queue, at
//! most [`PER_SECOND`] lines per agent per second: enforcement never
//! waits for it, and a flood of denials costs the agent nothing but the
//! lines it is not sent.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use agent_common::identity::{AgentRecord, admission};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use thiserror::Error;

use crate::ids::AgentId;

/// Lines per agent per second, at most.
pub const PER_SECOND: u32 = 5;
/// Explanations waiting for the writer; more are dropped.
const QUEUE: usize = 64;
/// Explanations per agent per second that are built and queued at all: a
/// few times [`PER_SECOND`], so that lines the writer skips (a process
/// gone, a standard error that is a file) leave others to try, while a
/// flood of denials costs the audit writer one table lookup each instead
/// of a line built and a thread woken.
const OFFERS_PER_SECOND: u32 = 4 * PER_SECOND;
/// Agents whose offer budget is kept; past this the table starts over.
const BUDGETS_KEPT: usize = 4096;

/// Standard errors of `baton exec` agents' first processes kept at once,
/// each with a pidfd to see the process exit: two descriptors each,
/// within [`crate::control::budget::EXPLAIN_RESERVE`].
pub const MAX_KEPT: usize = 16;

/// Errors starting the explainer.
#[derive(Debug, Error)]
pub enum ExplainError {
    /// The identity map could not be opened.
    #[error("cannot read the agent identity map: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The writer thread could not start.
    #[error("cannot start the explanation writer: {0}")]
    Thread(std::io::Error),
}

/// One line for one denied process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The agent the process belongs to.
    pub agent_id: AgentId,
    /// The denied process (tgid).
    pub pid: u32,
    /// Its agent's first process, tried when `pid` has exited.
    pub root_pid: u32,
    /// Only for processes `baton exec` started, and their children (the
    /// policy left `explain` unset and the agent is also selected by
    /// cgroup, unit or executable).
    pub exec_only: bool,
    /// The line, without its newline.
    pub line: String,
}

/// What the writer thread is asked to do, in order.
#[derive(Debug)]
enum Message {
    /// Write a line.
    Explain(Explanation),
    /// Close the standard error kept for this first process: every line
    /// queued before this one has been handled.
    Release(u32),
}

/// Kept standard errors by first process.
type Kept = Arc<Mutex<HashMap<u32, OwnedFd>>>;

/// Handle on the writer thread.
#[derive(Debug)]
pub struct Explainer {
    queue: SyncSender<Message>,
    budget: OfferBudget,
    kept: Kept,
}

/// Keeps and releases the standard errors of `baton exec` agents' first
/// processes; cloned for the admission and the task that waits for the
/// process to exit.
#[derive(Clone, Debug)]
pub struct Keeper {
    queue: SyncSender<Message>,
    kept: Kept,
}

impl Keeper {
    /// Keeps a duplicate of process `pid`'s standard error, if it is a
    /// pipe, socket or terminal open for writing and fewer than
    /// [`MAX_KEPT`] are kept. Returns a pidfd of the process, readable
    /// once it has exited; [`Self::release`] must follow.
    pub fn keep(&self, pid: u32) -> Option<OwnedFd> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= MAX_KEPT || kept.contains_key(&pid) {
            return None;
        }
        let pidfd = pidfd_open(pid)?;
        let stderr = pidfd_getfd(&pidfd, 2)?;
        writable(&stderr)?;
        kept.insert(pid, stderr);
        Some(pidfd)
    }

    /// Closes the standard error kept for `pid` once every line queued
    /// before has been handled. Blocks while the queue is full.
    pub fn release(&self, pid: u32) {
        if self.queue.send(Message::Release(pid)).is_err() {
            // No writer: nothing will be written there any more.
            self.kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pid);
        }
    }
}

/// `pidfd_open(2)`: a descriptor of process `pid` that holds its pid.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain system call; a new descriptor on success.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// `pidfd_getfd(2)`: a duplicate of descriptor `fd` of the process.
fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain system call on a descriptor we own; a new descriptor
    // on success.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    // SAFETY: as above.
    (got >= 0).then(|| unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// Per agent id: the start of its current second and the offers made in
/// it; at most [`BUDGETS_KEPT`] agents.
#[derive(Debug, Default)]
struct OfferBudget {
    offered: HashMap<AgentId, (Instant, u32)>,
}

impl OfferBudget {
    /// Counts one offer for `agent_id` at `now`; `false` past
    /// [`OFFERS_PER_SECOND`] in the agent's current second.
    fn take(&mut self, agent_id: AgentId, now: Instant) -> bool {
        if self.offered.len() >= BUDGETS_KEPT && !self.offered.contains_key(&agent_id) {
            self.offered.clear();
        }
        let (since, used) = self.offered.entry(agent_id).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *used = 0;
        }
        if *used >= OFFERS_PER_SECOND {
            return false;
        }
        *used += 1;
        true
    }
}

impl Explainer {
    /// Starts the writer. `identity` is the kernel's `tgid → agent` map,
    /// read to check that a process still belongs to the agent.
    pub fn start(identity: MapData) -> Result<Self, ExplainError> {
        let identity: BpfHashMap<MapData, u32, AgentRecord> =
            BpfHashMap::try_from(Map::HashMap(identity))?;
        let (queue, received) = sync_channel(QUEUE);
        let kept = Kept::default();
        let writer_kept = kept.clone();
        std::thread::Builder::new()
            .name("baton-explain".into())
            .spawn(move || write_all(&received, &identity, &writer_kept))
            .map_err(ExplainError::Thread)?;
        Ok(Self {
            queue,
            budget: OfferBudget::default(),
            kept,
        })
    }

    /// A handle that keeps first processes' standard errors.
    pub fn keeper(&self) -> Keeper {
        Keeper {
            queue: self.queue.clone(),
            kept: self.kept.clone(),
        }
    }

    /// Whether an explanation for `agent_id` is worth building now; counts
    /// it if so. Call before the line is made: past
    /// [`OFFERS_PER_SECOND`] the writer would drop it anyway.
    pub fn wants(&mut self, agent_id: AgentId) -> bool {
        self.budget.take(agent_id, Instant::now())
    }

    /// Queues `explanation`; `false` when the queue was full (the line is
    /// dropped, nothing waits).
    pub fn offer(&self, explanation: Explanation) -> bool {
        match self.queue.try_send(Message::Explain(explanation)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// What happened to one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Written.
    Written,
    /// The process is gone or no longer the agent's: try another.
    Gone,
    /// Not written, on purpose (not a pipe, socket or terminal; read-only;
    /// full; the policy says no).
    Skipped,
}

fn write_all(
    received: &Receiver<Message>,
    identity: &BpfHashMap<MapData, u32, AgentRecord>,
    kept: &Kept,
) {
    let mut budgets: HashMap<AgentId, (Instant, u32)> = HashMap::new();
    for message in received {
        let explanation = match message {
            Message::Explain(explanation) => explanation,
            Message::Release(pid) => {
                kept.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&pid);
                continue;
            }
        };
        let now = Instant::now();
        let (since, used) = budgets.entry(explanation.agent_id).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *used = 0;
        }
        if *used >= PER_SECOND {
            continue;
        }
        let mut targets = vec![explanation.pid];
        if explanation.root_pid != explanation.pid && explanation.root_pid != 0 {
            targets.push(explanation.root_pid);
        }
        let mut delivery = Delivery::Gone;
        for &pid in &targets {
            delivery = deliver(pid, &explanation, identity);
            tracing::debug!(
                pid,
                agent_id = explanation.agent_id.raw(),
                ?delivery,
                "explanation"
            );
            if delivery != Delivery::Gone {
                break;
            }
        }
        if delivery == Delivery::Gone {
            // Both gone: the first process's standard error, if kept. It
            // was checked when kept, and is written under the same checks.
            let root = *targets.last().unwrap_or(&explanation.pid);
            if let Some(stderr) = kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&root)
            {
                delivery = write_line(stderr, &explanation.line);
                tracing::debug!(
                    pid = root,
                    ?delivery,
                    "explanation to a kept standard error"
                );
            }
        }
        if delivery == Delivery::Written {
            *used += 1;
        }
    }
}

fn deliver(
    pid: u32,
    explanation: &Explanation,
    identity: &BpfHashMap<MapData, u32, AgentRecord>,
) -> Delivery {
    let Some(pidfd) = pidfd_open(pid) else {
        return Delivery::Gone;
    };
    // The pidfd holds the pid: the process found now is the one written to.
    match identity.get(&pid, 0) {
        Ok(record) if record.agent_id == explanation.agent_id.raw() => {
            // A child inherits its admission as `FORK`: its agent's first
            // process says how the tree began.
            let started_by_exec = record.admission == admission::EXEC
                || identity
                    .get(&record.root_tgid, 0)
                    .is_ok_and(|root| root.admission == admission::EXEC);
            if explanation.exec_only && !started_by_exec {
                return Delivery::Skipped;
            }
        }
        _ => return Delivery::Gone,
    }
    let Some(stderr) = pidfd_getfd(&pidfd, 2) else {
        return Delivery::Gone;
    };
    write_line(&stderr, &explanation.line)
}

/// What a descriptor a line may be written to is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A pipe or a terminal.
    Stream,
    /// A socket: written with `send`, never raising `SIGPIPE`.
    Socket,
}

/// What `fd` is, if it is a pipe, socket or terminal open for writing.
fn writable(fd: &OwnedFd) -> Option<Target> {
    let raw = fd.as_raw_fd();
    let stat = nix::sys::stat::fstat(fd).ok()?;
    let kind = stat.st_mode & libc::S_IFMT;
    // SAFETY: plain call on a descriptor we own.
    let terminal = kind == libc::S_IFCHR && unsafe { libc::isatty(raw) } == 1;
    let target = match kind {
        libc::S_IFSOCK => Target::Socket,
        libc::S_IFIFO => Target::Stream,
        _ if terminal => Target::Stream,
        _ => return None,
    };
    // SAFETY: plain call on a descriptor we own; reads the flags only.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    (flags >= 0 && flags & libc::O_ACCMODE != libc::O_RDONLY).then_some(target)
}

/// Writes `line` to `fd` if it is a pipe, socket or terminal open for
/// writing with room for it now.
fn write_line(fd: &OwnedFd, line: &str) -> Delivery {
    let raw = fd.as_raw_fd();
    let Some(target) = writable(fd) else {
        return Delivery::Skipped;
    };
    let socket = target == Target::Socket;
    let mut poll = libc::pollfd {
        fd: raw,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&raw mut poll, 1, 0) };
    if ready != 1 || poll.revents & libc::POLLOUT == 0 {
        return Delivery::Skipped;
    }
    let text = format!("{line}\n");
    let written = if socket {
        // SAFETY: the buffer is valid for its length.
        unsafe {
            libc::send(
                raw,
                text.as_ptr().cast(),
                text.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    } else {
        // A pipe with room takes a line this short (under PIPE_BUF) at
        // once; the open file's flags are the agent's and stay untouched.
        // SAFETY: the buffer is valid for its length.
        unsafe { libc::write(raw, text.as_ptr().cast(), text.len()) }
    };
    if written > 0 {
        Delivery::Written
    } else {
        Delivery::Skipped
    }
}

/// The line for a denial record (as written to the audit trail), or
/// `None` for records that are not a denial of an agent's process.
pub fn line_for(record: &serde_json::Value) -> Option<String> {
    if record["verdict"] != "denied" {
        return None;
    }
    let object = &record["object"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let what = if let Some(path) = object["path"].as_str() {
        let rights: Vec<&str> = object["denied_rights"]
            .as_array()
            .or_else(|| object["rights"].as_array())
            .map(|rights| rights.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        // Self-protection denials name the call, not a file: no rights.
        if rights.is_empty() {
            path.to_string()
        } else {
            format!("{} of {path}", rights.join("+"))
        }
    } else if object["address"].is_string() {
        let (address, name) = crate::audit::stream::destination(object);
        format!("connect to {address}:{}{name}", object["port"])
    } else if let Some(domain) = object["domain"].as_str() {
        format!("resolving {domain}")
    } else if object["family"].is_string() {
        format!(
            "a {} {} socket",
            text(&object["family"]),
            text(&object["type"])
        )
    } else {
        format!("{} ({})", text(&record["control"]), text(&record["hook"]))
    };
    if object["beyond_policy"] == true {
        // Not the policy's decision: asking for it to be allowed would not
        // help, and the agent should know that.
        return Some(format!(
            "baton: {what} denied: without BPF LSM, Landlock cannot hold agent {} to its policy without also denying this; `baton status` lists what else",
            text(&record["agent"])
        ));
    }
    let rule = &record["rule"];
    let by = if rule.is_object() {
        format!("policy {} ({})", text(&rule["policy"]), text(&rule["id"]))
    } else {
        format!("the policy of agent {}", text(&record["agent"]))
    };
    Some(format!(
        "baton: {what} denied by {by}; ask an operator to allow it"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn offers_are_counted_per_agent_per_second_and_the_table_is_bounded() {
        use super::{AgentId, BUDGETS_KEPT, OFFERS_PER_SECOND, OfferBudget};
        use std::time::{Duration, Instant};
        let mut budget = OfferBudget::default();
        let start = Instant::now();
        for _ in 0..OFFERS_PER_SECOND {
            assert!(budget.take(AgentId::from_raw(1), start));
        }
        assert!(!budget.take(AgentId::from_raw(1), start + Duration::from_millis(999)));
        // Another agent has a budget of its own.
        assert!(budget.take(AgentId::from_raw(2), start));
        // A new second, a new budget.
        assert!(budget.take(AgentId::from_raw(1), start + Duration::from_secs(1)));
        for agent in 3..=BUDGETS_KEPT as u32 {
            assert!(budget.take(AgentId::from_raw(agent), start));
        }
        assert_eq!(budget.offered.len(), BUDGETS_KEPT);
        // One agent more: the table starts over rather than grow.
        assert!(budget.take(AgentId::from_raw(u32::MAX), start));
        assert_eq!(budget.offered.len(), 1);
    }

    use super::*;

    #[test]
    fn lines_name_what_and_which_rule() {
        let connect = serde_json::json!({
            "verdict": "denied", "control": "egress", "agent": "coder",
            "object": {"address": "203.0.113.7", "port": 443, "protocol": "tcp"},
            "rule": {"policy": "coder", "id": "egress.default", "kernel_id": 1},
        });
        assert_eq!(
            line_for(&connect).unwrap(),
            "baton: connect to 203.0.113.7:443 denied by policy coder (egress.default); ask an operator to allow it"
        );
        let read = serde_json::json!({
            "verdict": "denied", "control": "file", "agent": "coder",
            "object": {"path": "/root/.ssh/id_rsa", "rights": ["read"], "denied_rights": ["read"]},
            "rule": {"policy": "coder", "id": "files.deny[0]", "kernel_id": 2},
        });
        assert_eq!(
            line_for(&read).unwrap(),
            "baton: read of /root/.ssh/id_rsa denied by policy coder (files.deny[0]); ask an operator to allow it"
        );
        let beyond = serde_json::json!({
            "verdict": "denied", "control": "file", "agent": "coder",
            "object": {"path": "/home/u", "rights": ["read"], "denied_rights": ["read"], "beyond_policy": true},
        });
        assert_eq!(
            line_for(&beyond).unwrap(),
            "baton: read of /home/u denied: without BPF LSM, Landlock cannot hold agent coder to its policy without also denying this; `baton status` lists what else"
        );
        // Self-protection (BPF LSM or seccomp) names a call, not a file.
        let call = serde_json::json!({
            "verdict": "denied", "control": "file", "hook": "seccomp", "agent": "coder",
            "object": {"path": "bpf()", "rights": [], "denied_rights": []},
        });
        assert_eq!(
            line_for(&call).unwrap(),
            "baton: bpf() denied by the policy of agent coder; ask an operator to allow it"
        );
        let audit = serde_json::json!({"verdict": "would-deny", "object": {}});
        assert_eq!(line_for(&audit), None);
    }

    #[test]
    fn only_pipes_sockets_and_terminals_open_for_writing_get_a_line() {
        let dir = std::env::temp_dir().join(format!("baton-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("stderr")).unwrap();
        assert_eq!(write_line(&file.into(), "x"), Delivery::Skipped);
        let read_only = std::fs::File::open(dir.join("stderr")).unwrap();
        assert_eq!(write_line(&read_only.into(), "x"), Delivery::Skipped);
        let (reader, writer) = nix::unistd::pipe().unwrap();
        assert_eq!(write_line(&reader, "x"), Delivery::Skipped, "a read end");
        assert_eq!(write_line(&writer, "hello"), Delivery::Written);
        let mut buffer = [0u8; 16];
        let n = nix::unistd::read(&reader, &mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"hello\n");
        // A full pipe: skipped, never waited on.
        nix::fcntl::fcntl(
            &writer,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        while nix::unistd::write(&writer, &[0u8; 4096]).is_ok() {}
        nix::fcntl::fcntl(
            &writer,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
        assert_eq!(write_line(&writer, "x"), Delivery::Skipped);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

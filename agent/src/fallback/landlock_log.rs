//! Landlock's own reports of what it denied, turned into Baton records.
//!
//! Where BPF LSM does not load, `baton exec` agents are held to their file
//! rules by a Landlock ruleset, and Landlock answers `EACCES` without
//! telling Baton. Since Linux 6.15 (Landlock ABI 7) it reports each denial
//! through the kernel's audit subsystem: a `LANDLOCK_ACCESS` record (the
//! domain, the rights that blocked, the path), followed by the `SYSCALL`
//! record of the same event (pid, uid, comm) and, at a domain's first
//! denial, a `LANDLOCK_DOMAIN` record naming the process that created it.
//!
//! The daemon reads them from the audit log multicast group, which any
//! holder of `CAP_AUDIT_READ` may join beside (not instead of) an audit
//! daemon: the kernel never waits for this reader, and whatever it misses
//! is counted from `ENOBUFS`. Landlock only reports while the audit
//! subsystem is on, so the reader switches it on when it is off (it loads
//! no audit rule and does not take `auditd`'s place), unless
//! `files.landlockAudit: false` says not to. With no `auditd`, the kernel
//! also prints audit records to its log, rate-limited.
//!
//! Each denial becomes a file record of the agent whose process was denied,
//! with the rule the path falls under, and counts for breakers and canaries
//! like the fanotify listener's decisions ([`super::fanotify`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use agent_common::files::right;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

/// `AUDIT_GET`: the audit subsystem's status.
const AUDIT_GET: u16 = 1000;
/// `AUDIT_SET`: change the audit subsystem's status.
const AUDIT_SET: u16 = 1001;
/// `AUDIT_LIST_RULES`: the loaded rules, one `audit_rule_data` each.
const AUDIT_LIST_RULES: u16 = 1013;
/// `AUDIT_FILTER_EXCLUDE`: the list that drops records by type.
const AUDIT_FILTER_EXCLUDE: u32 = 5;
/// `AUDIT_FILTER_PREPEND`: a flag on the list number.
const AUDIT_FILTER_PREPEND: u32 = 0x10;
const NLMSG_DONE: u16 = 3;
/// Datagrams of one rule listing read at most.
const MAX_RULE_DATAGRAMS: usize = 1024;
/// `AUDIT_SYSCALL`: the syscall an event happened in.
const AUDIT_SYSCALL: u16 = 1300;
/// `AUDIT_EOE`: the end of a multi-record event.
const AUDIT_EOE: u16 = 1320;
/// `AUDIT_LANDLOCK_ACCESS`: one denied access.
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// `AUDIT_LANDLOCK_DOMAIN`: a domain's creation (at its first denial) and
/// end.
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// `AUDIT_SECCOMP`: a system call a seccomp filter refused or killed, when
/// the filter asked for it to be logged (`SECCOMP_FILTER_FLAG_LOG`) or the
/// action was a kill.
const AUDIT_SECCOMP: u16 = 1326;
/// `SECCOMP_RET_ACTION_FULL`: the action part of a logged `code=`.
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
/// `SECCOMP_RET_ERRNO`.
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `SECCOMP_RET_KILL_PROCESS`.
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_KILL_THREAD`.
const SECCOMP_RET_KILL_THREAD: u32 = 0;
/// `AUDIT_NLGRP_READLOG`: the read-only multicast group of audit records.
const AUDIT_NLGRP_READLOG: u32 = 1;
/// `AUDIT_STATUS_ENABLED` in `audit_status.mask`.
const AUDIT_STATUS_ENABLED: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
/// How many domains' creators are remembered; a full table starts over
/// (a forgotten domain's denials are still recorded, see
/// [`Denial::is_agents_own_sandbox`]).
const DOMAINS_REMEMBERED: usize = 4096;
/// The receive buffer the reader asks for: a burst of denials waits here
/// rather than being lost.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Why Landlock's denials cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LandlockLogError {
    /// The kernel's Landlock predates denial reports.
    #[error(
        "Landlock ABI {found} does not report denials (ABI 7, Linux 6.15, does): Landlock denials of baton exec agents are enforced but not recorded"
    )]
    TooOld {
        /// The ABI the kernel has (0: no Landlock).
        found: i64,
    },
    /// Switched off in the configuration.
    #[error(
        "files.landlockAudit is false: Landlock denials of baton exec agents are enforced but not recorded"
    )]
    SwitchedOff,
    /// A netlink call failed.
    #[error("cannot {what} on the kernel's audit netlink socket: {source}")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },
    /// The audit subsystem is off and cannot be switched on.
    #[error("the kernel's audit subsystem is off and could not be switched on: {0}")]
    AuditOff(String),
    /// The reader thread could not start.
    #[error("cannot start the Landlock log reader: {0}")]
    Thread(#[source] std::io::Error),
}

/// One denial Landlock reported, with what the audit records say of the
/// process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Denial {
    /// Baton rights that were blocked (bits of [`right`]).
    pub rights: u32,
    /// The denied path, when the record has one.
    pub path: Option<String>,
    /// The denied file's inode number. The path is as the denied process
    /// sees it (its root, its mounts), so only a path that leads the
    /// daemon to this inode names the same file.
    pub ino: Option<u64>,
    /// The Landlock domain that denied.
    pub domain: u64,
    /// The process (tgid) that was denied, from the `SYSCALL` record.
    pub tgid: Option<u32>,
    /// Its real uid and gid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Its `comm`.
    pub comm: String,
    /// Its parent process, for the record's ancestor chain (0: unknown).
    pub ppid: u32,
    /// The process that created the domain, when its creation was seen.
    pub domain_creator: Option<u32>,
    /// The executable that process ran when it created the domain.
    pub domain_creator_exe: Option<String>,
}

impl Denial {
    /// Whether the denying domain is one the agent made for itself (a
    /// sandbox of its own inside Baton's), not Baton's: such denials are
    /// the agent's business, not a policy decision. `root_tgid` is the
    /// agent's root process, which `baton exec` restricts before it execs
    /// the agent's program. A domain whose creation was not seen (created
    /// before the daemon started) counts as Baton's.
    pub fn is_agents_own_sandbox(&self, root_tgid: u32) -> bool {
        self.domain_creator
            .is_some_and(|creator| creator != root_tgid)
    }
}

/// Baton's rights for Landlock's `blockers=` list (`fs.read_file,fs.execute`).
pub fn rights_of(blockers: &str) -> u32 {
    blockers.split(',').fold(0, |rights, blocker| {
        rights
            | match blocker {
                "fs.read_file" | "fs.read_dir" => right::bit(right::READ),
                "fs.write_file" | "fs.truncate" | "fs.ioctl_dev" => right::bit(right::WRITE),
                "fs.execute" => right::bit(right::EXEC),
                "fs.remove_file" | "fs.remove_dir" => right::bit(right::DELETE),
                "fs.refer" => right::bit(right::RENAME),
                b if b.starts_with("fs.make_") => right::bit(right::CREATE),
                _ => 0,
            }
    })
}

/// The value of `key=` in an audit record's text: quoted strings
/// unquoted, hex-encoded ones (audit's form for strings with spaces or
/// control bytes) decoded.
fn field(text: &str, key: &str) -> Option<String> {
    let value = text
        .split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    if let Some(quoted) = value.strip_prefix('"') {
        return Some(quoted.strip_suffix('"').unwrap_or(quoted).to_string());
    }
    if matches!(key, "path" | "comm" | "exe") {
        if value == "(null)" || value == "?" {
            return None;
        }
        let bytes = hex::decode(value).ok()?;
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    Some(value.to_string())
}

/// The event serial of a record (`audit(1700000000.123:456): …`) and the
/// text after it.
fn serial_of(text: &str) -> Option<(u64, &str)> {
    let rest = text.strip_prefix("audit(")?;
    let (stamp, body) = rest.split_once("): ")?;
    let serial = stamp.rsplit_once(':')?.1.parse().ok()?;
    Some((serial, body))
}

/// The records of one audit event with a denial in it, gathered until it
/// is complete.
struct Event {
    serial: u64,
    /// When its first record arrived: an event whose `EOE` never comes
    /// (a task without an audit context) is handed over after
    /// [`EVENT_PATIENCE`].
    since: Instant,
    denials: Vec<Denial>,
    process: Option<Process>,
}

/// Events waiting for their `SYSCALL` and `EOE` records. Other tasks'
/// records interleave with them, so several may be open at once.
const EVENTS_PENDING: usize = 64;
/// How long an event waits for its last records.
const EVENT_PATIENCE: Duration = Duration::from_millis(100);

/// What a `SYSCALL` record says of the process.
#[derive(Clone, Default)]
struct Process {
    tgid: u32,
    ppid: u32,
    uid: u32,
    gid: u32,
    comm: String,
}

/// A system call a seccomp filter refused (or killed the caller for), as
/// the audit subsystem reported it. Whose filter it was the record does
/// not say: the listener keeps only agents' processes and the calls
/// `baton exec`'s filter refuses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeccompDenial {
    /// The process (tgid).
    pub tgid: u32,
    /// Its real uid.
    pub uid: u32,
    /// Its real gid.
    pub gid: u32,
    /// Its `comm`.
    pub comm: String,
    /// The system call's number, in the caller's ABI.
    pub syscall: i64,
    /// The caller's ABI (`AUDIT_ARCH_*`).
    pub arch: u32,
    /// Whether the filter killed the caller rather than failing the call.
    pub killed: bool,
}

impl SeccompDenial {
    /// Reads an `AUDIT_SECCOMP` record's text; `None` for an action that
    /// neither failed the call nor killed the caller (`log`, `trap`, a
    /// tracer's or a supervisor's).
    fn parse(body: &str) -> Option<Self> {
        let number = |key| field(body, key).and_then(|v| v.parse().ok());
        let code = field(body, "code")
            .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok())?;
        let killed = match code & SECCOMP_RET_ACTION_FULL {
            SECCOMP_RET_ERRNO => false,
            SECCOMP_RET_KILL_PROCESS | SECCOMP_RET_KILL_THREAD => true,
            _ => return None,
        };
        Some(Self {
            tgid: number("pid")?,
            uid: number("uid").unwrap_or(0),
            gid: number("gid").unwrap_or(0),
            comm: field(body, "comm").unwrap_or_default(),
            syscall: field(body, "syscall")?.parse().ok()?,
            arch: field(body, "arch").and_then(|a| u32::from_str_radix(&a, 16).ok())?,
            killed,
        })
    }
}

/// What the reader hands over.
#[derive(Debug)]
pub enum Report {
    /// One denial.
    Denial(Denial),
    /// One system call a seccomp filter refused.
    Seccomp(SeccompDenial),
    /// Reports were lost since the last `Lost`: the socket overflowed
    /// (the denials themselves stood).
    Lost,
    /// Someone switched the audit subsystem off (a root agent, or an
    /// operator's `auditctl -e 0`); the reader switched it back on, or
    /// could not.
    AuditSwitchedOff {
        /// Whether it is on again.
        back_on: bool,
    },
    /// The reader stopped on an error it cannot get past; no report is
    /// read from now on.
    Stopped(String),
    /// This many audit exclude rules appeared (from none): one may filter
    /// Landlock's records out.
    ExcludeRules(usize),
    /// The kernel's audit subsystem counted this many more lost records
    /// (its rate limit or backlog) since the last check.
    KernelLost(u64),
}

/// How often the reader checks that the audit subsystem is still on.
const AUDIT_CHECK: Duration = Duration::from_secs(2);

/// Reads the audit records and hands each finished denial to `deliver`.
struct Reader<F> {
    socket: OwnedFd,
    deliver: F,
    /// Domain id → the process that created it, and its executable.
    domains: HashMap<u64, (u32, Option<String>)>,
    pending: VecDeque<Event>,
    /// The request socket, to check every [`AUDIT_CHECK`] that the audit
    /// subsystem is still on.
    control: Option<OwnedFd>,
    checked: Instant,
    /// The kernel's count of lost audit records at the last check.
    kernel_lost: Option<u32>,
    /// Exclude rules loaded at the last check.
    exclude_rules: usize,
}

impl<F: FnMut(Report)> Reader<F> {
    fn check_audit(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        if self.checked.elapsed() < AUDIT_CHECK {
            return;
        }
        self.checked = Instant::now();
        let Ok(status) = audit_status(control) else {
            return;
        };
        if status.enabled == 0 {
            let back_on = switch_audit_on(control).is_ok();
            (self.deliver)(Report::AuditSwitchedOff { back_on });
        }
        if let Some(before) = self.kernel_lost
            && status.lost > before
        {
            (self.deliver)(Report::KernelLost(u64::from(status.lost - before)));
        }
        self.kernel_lost = Some(status.lost);
        if let Ok(rules) = exclude_rules(control) {
            if rules > 0 && self.exclude_rules == 0 {
                (self.deliver)(Report::ExcludeRules(rules));
            }
            self.exclude_rules = rules;
        }
    }

    fn run(mut self) {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut waiting = Duration::ZERO;
        loop {
            self.check_audit();
            // Idle, the reader wakes only to check the audit subsystem; with
            // an event waiting for its last records, often enough to hand
            // it over in time.
            let patience = if self.pending.is_empty() {
                AUDIT_CHECK
            } else {
                EVENT_PATIENCE / 2
            };
            if patience != waiting {
                let timeout = nix::sys::time::TimeVal::new(
                    patience.as_secs() as _,
                    patience.subsec_micros() as _,
                );
                if setsockopt(&self.socket, sockopt::ReceiveTimeout, &timeout).is_ok() {
                    waiting = patience;
                }
            }
            match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                Ok(read) => {
                    for (kind, body) in messages(&buffer[..read]) {
                        // On a host whose auditd logs every syscall, most
                        // records are of no interest: only Landlock's and
                        // those completing an event with a denial in it
                        // are read.
                        let wanted = matches!(
                            kind,
                            AUDIT_LANDLOCK_ACCESS | AUDIT_LANDLOCK_DOMAIN | AUDIT_SECCOMP
                        ) || (!self.pending.is_empty()
                            && matches!(kind, AUDIT_SYSCALL | AUDIT_EOE));
                        if wanted {
                            self.message(kind, &String::from_utf8_lossy(body));
                        }
                    }
                }
                Err(nix::errno::Errno::ENOBUFS) => {
                    // The socket overflowed: records are gone, not late.
                    // The denials themselves all stood.
                    (self.deliver)(Report::Lost);
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => self.finish_overdue(),
                Err(error) => {
                    tracing::error!(%error, "the Landlock log reader stopped");
                    (self.deliver)(Report::Stopped(error.to_string()));
                    return;
                }
            }
        }
    }

    fn message(&mut self, kind: u16, text: &str) {
        let Some((serial, body)) = serial_of(text.trim_end_matches('\0')) else {
            return;
        };
        match kind {
            AUDIT_LANDLOCK_ACCESS => {
                let rights = field(body, "blockers").map_or(0, |b| rights_of(&b));
                let domain = field(body, "domain")
                    .and_then(|d| u64::from_str_radix(&d, 16).ok())
                    .unwrap_or(0);
                if rights != 0 {
                    let denial = Denial {
                        rights,
                        path: field(body, "path"),
                        ino: field(body, "ino").and_then(|ino| ino.parse().ok()),
                        domain,
                        ..Denial::default()
                    };
                    match self.pending.iter_mut().find(|e| e.serial == serial) {
                        Some(event) => event.denials.push(denial),
                        None => {
                            if self.pending.len() >= EVENTS_PENDING {
                                self.finish_oldest();
                            }
                            self.pending.push_back(Event {
                                serial,
                                since: Instant::now(),
                                denials: vec![denial],
                                process: None,
                            });
                        }
                    }
                }
            }
            AUDIT_LANDLOCK_DOMAIN => {
                let domain = field(body, "domain").and_then(|d| u64::from_str_radix(&d, 16).ok());
                let status = field(body, "status");
                let creator = field(body, "pid").and_then(|p| p.parse().ok());
                if let (Some(domain), Some("allocated"), Some(creator)) =
                    (domain, status.as_deref(), creator)
                {
                    if self.domains.len() >= DOMAINS_REMEMBERED {
                        self.domains.clear();
                    }
                    self.domains.insert(domain, (creator, field(body, "exe")));
                } else if let (Some(domain), Some("deallocated")) = (domain, status.as_deref()) {
                    self.domains.remove(&domain);
                }
            }
            AUDIT_SYSCALL => {
                let number = |key| field(body, key).and_then(|v| v.parse().ok());
                if let Some(tgid) = number("pid")
                    && let Some(event) = self.pending.iter_mut().find(|e| e.serial == serial)
                {
                    event.process = Some(Process {
                        tgid,
                        ppid: number("ppid").unwrap_or(0),
                        uid: number("uid").unwrap_or(0),
                        gid: number("gid").unwrap_or(0),
                        comm: field(body, "comm").unwrap_or_default(),
                    });
                }
            }
            AUDIT_SECCOMP => {
                // Complete in itself: it names the process and the call.
                if let Some(denial) = SeccompDenial::parse(body) {
                    (self.deliver)(Report::Seccomp(denial));
                }
            }
            AUDIT_EOE => {
                if let Some(at) = self.pending.iter().position(|e| e.serial == serial)
                    && let Some(event) = self.pending.remove(at)
                {
                    self.finish(event);
                }
            }
            _ => {}
        }
        self.finish_overdue();
    }

    /// Hands over the events that waited longer than [`EVENT_PATIENCE`].
    fn finish_overdue(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|e| e.since.elapsed() > EVENT_PATIENCE)
        {
            self.finish_oldest();
        }
    }

    fn finish_oldest(&mut self) {
        if let Some(event) = self.pending.pop_front() {
            self.finish(event);
        }
    }

    /// Hands over the denials of one event.
    fn finish(&mut self, event: Event) {
        for mut denial in event.denials {
            if let Some(process) = &event.process {
                denial.tgid = Some(process.tgid);
                denial.ppid = process.ppid;
                denial.uid = process.uid;
                denial.gid = process.gid;
                denial.comm.clone_from(&process.comm);
            }
            if let Some((creator, exe)) = self.domains.get(&denial.domain) {
                denial.domain_creator = Some(*creator);
                denial.domain_creator_exe.clone_from(exe);
            }
            (self.deliver)(Report::Denial(denial));
        }
    }
}

/// The netlink messages in one datagram: `(type, payload)`.
fn messages(mut datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let length =
            u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if length < NLMSG_HDRLEN || length > datagram.len() {
            break;
        }
        found.push((kind, &datagram[NLMSG_HDRLEN..length]));
        let aligned = (length + 3) & !3;
        datagram = &datagram[aligned.min(datagram.len())..];
    }
    found
}

fn netlink_socket() -> Result<OwnedFd, LandlockLogError> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkAudit,
    )
    .map_err(|source| LandlockLogError::Netlink {
        what: "open a socket",
        source,
    })
}

/// What the reader needs of `struct audit_status`.
struct AuditStatus {
    /// 0 off, 1 on, 2 locked on.
    enabled: u32,
    /// Records the kernel dropped (rate limit, backlog), ever.
    lost: u32,
}

/// The audit subsystem's status.
fn audit_status(socket: &OwnedFd) -> Result<AuditStatus, LandlockLogError> {
    let failed = |what, source| LandlockLogError::Netlink { what, source };
    request(socket, AUDIT_GET, &[]).map_err(|e| failed("ask for the audit status", e))?;
    let mut buffer = vec![0u8; 8192];
    for _ in 0..4 {
        let read = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())
            .map_err(|e| failed("read the audit status", e))?;
        for (kind, body) in messages(&buffer[..read]) {
            if kind == AUDIT_GET && body.len() >= 28 {
                let word = |at: usize| {
                    u32::from_ne_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
                };
                return Ok(AuditStatus {
                    enabled: word(4),
                    lost: word(24),
                });
            }
        }
    }
    Err(failed("read the audit status", nix::errno::Errno::ENODATA))
}

/// How many rules of the exclude list (`auditctl -a never,exclude …`) are
/// loaded: the list that can keep record types from being emitted at all.
fn exclude_rules(socket: &OwnedFd) -> Result<usize, LandlockLogError> {
    let failed = |source| LandlockLogError::Netlink {
        what: "list the audit rules",
        source,
    };
    request(socket, AUDIT_LIST_RULES, &[]).map_err(failed)?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut excluding = 0;
    // Bounded: a host with more rules than this is counted up to here.
    for _ in 0..MAX_RULE_DATAGRAMS {
        let read = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty()).map_err(failed)?;
        for (kind, body) in messages(&buffer[..read]) {
            match kind {
                AUDIT_LIST_RULES if body.len() >= 4 => {
                    let list = u32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if list & !AUDIT_FILTER_PREPEND == AUDIT_FILTER_EXCLUDE {
                        excluding += 1;
                    }
                }
                NLMSG_DONE => return Ok(excluding),
                NLMSG_ERROR if body.len() >= 4 => {
                    let error = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                    if error != 0 {
                        return Err(failed(nix::errno::Errno::from_raw(-error)));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(excluding)
}

/// Switches the audit subsystem on.
fn switch_audit_on(socket: &OwnedFd) -> Result<(), LandlockLogError> {
    // struct audit_status: mask, enabled, then fields the mask leaves alone.
    let mut status = [0u8; 40];
    status[..4].copy_from_slice(&AUDIT_STATUS_ENABLED.to_ne_bytes());
    status[4..8].copy_from_slice(&1u32.to_ne_bytes());
    request(socket, AUDIT_SET, &status).map_err(|e| LandlockLogError::AuditOff(e.to_string()))?;
    let mut buffer = vec![0u8; 8192];
    let read = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())
        .map_err(|e| LandlockLogError::AuditOff(e.to_string()))?;
    for (kind, body) in messages(&buffer[..read]) {
        if kind == NLMSG_ERROR && body.len() >= 4 {
            let error = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            if error != 0 {
                return Err(LandlockLogError::AuditOff(
                    nix::errno::Errno::from_raw(-error).to_string(),
                ));
            }
        }
    }
    Ok(())
}

fn request(socket: &OwnedFd, kind: u16, body: &[u8]) -> nix::Result<()> {
    let length = NLMSG_HDRLEN + body.len();
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&(length as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(body);
    send(socket.as_raw_fd(), &message, MsgFlags::empty()).map(drop)
}

/// Starts reading Landlock's denial reports on a thread of its own;
/// `deliver` gets each denial, and word of lost reports.
/// `wanted`: `files.landlockAudit`.
pub fn start(
    wanted: bool,
    deliver: impl FnMut(Report) + Send + 'static,
) -> Result<(), LandlockLogError> {
    if !wanted {
        return Err(LandlockLogError::SwitchedOff);
    }
    let abi = crate::fallback::landlock::landlock_abi().unwrap_or(0);
    if abi < 7 {
        return Err(LandlockLogError::TooOld { found: abi });
    }
    let control = netlink_socket()?;
    bind(control.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|source| {
        LandlockLogError::Netlink {
            what: "bind",
            source,
        }
    })?;
    // The kernel answers at once; a second is a fault, not a wait.
    let _ = setsockopt(
        &control,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    );
    if audit_status(&control)?.enabled == 0 {
        switch_audit_on(&control)?;
        tracing::info!(
            "switched the kernel's audit subsystem on, so that Landlock reports the denials of baton exec agents (files.landlockAudit: false turns this off)"
        );
    }
    let socket = netlink_socket()?;
    // A bigger buffer than the default rides out bursts; the daemon is
    // root, so it may exceed rmem_max.
    if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
    bind(
        socket.as_raw_fd(),
        &NetlinkAddr::new(0, 1 << (AUDIT_NLGRP_READLOG - 1)),
    )
    .map_err(|source| LandlockLogError::Netlink {
        what: "join the audit log multicast group (CAP_AUDIT_READ)",
        source,
    })?;
    let reader = Reader {
        socket,
        deliver,
        domains: HashMap::new(),
        pending: VecDeque::new(),
        control: Some(control),
        // The first check, at once, learns the starting counts.
        checked: Instant::now() - AUDIT_CHECK,
        kernel_lost: None,
        exclude_rules: 0,
    };
    std::thread::Builder::new()
        .name("baton-landlock".into())
        .spawn(move || reader.run())
        .map_err(LandlockLogError::Thread)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_records(records: &[(u16, &str)]) -> Vec<Denial> {
        let mut found = Vec::new();
        let mut reader = Reader {
            socket: netlink_socket().unwrap(),
            deliver: |report| {
                if let Report::Denial(denial) = report {
                    found.push(denial);
                }
            },
            domains: HashMap::new(),
            pending: VecDeque::new(),
            control: None,
            checked: Instant::now(),
            kernel_lost: None,
            exclude_rules: 0,
        };
        for (kind, text) in records {
            reader.message(*kind, text);
        }
        while !reader.pending.is_empty() {
            reader.finish_oldest();
        }
        drop(reader);
        found
    }

    #[test]
    fn seccomp_records_of_refused_and_killed_calls_are_read_and_others_are_not() {
        // As this host's kernel wrote one for a filter with
        // SECCOMP_FILTER_FLAG_LOG refusing getppid with EPERM.
        let refused = SeccompDenial::parse(
            r#"auid=4294967295 uid=1000 gid=1001 ses=4294967295 pid=25793 comm="python3" exe="/usr/bin/python3.11" sig=0 arch=c000003e syscall=110 compat=0 ip=0x7feaeef1f829 code=0x50000"#,
        )
        .unwrap();
        assert_eq!(
            refused,
            SeccompDenial {
                tgid: 25793,
                uid: 1000,
                gid: 1001,
                comm: "python3".into(),
                syscall: 110,
                arch: 0xc000_003e,
                killed: false,
            }
        );
        let killed = SeccompDenial::parse(
            "uid=0 gid=0 pid=7 comm=\"a\" sig=31 arch=40000003 syscall=1 code=0x80000000",
        )
        .unwrap();
        assert!(killed.killed);
        assert_eq!(killed.arch, 0x4000_0003);
        // RET_LOG and RET_TRAP are not refusals a record should count.
        for code in ["0x7ffc0000", "0x30000"] {
            let text = format!("uid=0 gid=0 pid=7 comm=\"a\" arch=c000003e syscall=1 code={code}");
            assert_eq!(SeccompDenial::parse(&text), None, "{code}");
        }
    }

    #[test]
    fn a_denial_takes_its_process_from_the_syscall_record_of_its_own_event() {
        let denials = read_records(&[
            (
                AUDIT_LANDLOCK_ACCESS,
                r#"audit(1796580383.421:12): domain=1a0f67e9c blockers=fs.read_file path="/usr/bin/cat" dev="vda" ino=247030"#,
            ),
            // Another task's event, interleaved.
            (
                AUDIT_SYSCALL,
                r#"audit(1796580383.421:11): arch=c000003e syscall=49 ppid=1 pid=2 uid=0 gid=0 comm="other""#,
            ),
            (
                AUDIT_LANDLOCK_DOMAIN,
                r#"audit(1796580383.421:12): domain=1a0f67e9c status=allocated mode=enforcing pid=7529 uid=0 exe="/usr/bin/baton" comm="baton""#,
            ),
            (
                AUDIT_SYSCALL,
                r#"audit(1796580383.421:12): arch=c000003e syscall=59 success=no exit=-13 ppid=7486 pid=7530 auid=4294967295 uid=1000 gid=1001 comm="cat" exe="/usr/bin/cat""#,
            ),
            (AUDIT_EOE, "audit(1796580383.421:12): "),
            (
                AUDIT_LANDLOCK_ACCESS,
                "audit(1796580383.425:13): domain=1a0f67e9c blockers=fs.write_file,fs.make_reg path=2F746D702F6120622E747874 dev=\"vda\" ino=1",
            ),
        ]);
        assert_eq!(denials.len(), 2);
        assert_eq!(denials[0].rights, right::bit(right::READ));
        assert_eq!(denials[0].path.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(denials[0].ino, Some(247030));
        assert_eq!(denials[0].tgid, Some(7530));
        assert_eq!((denials[0].uid, denials[0].gid), (1000, 1001));
        assert_eq!(denials[0].comm, "cat");
        assert_eq!(denials[0].ppid, 7486);
        assert_eq!(denials[0].domain_creator, Some(7529));
        assert_eq!(
            denials[0].domain_creator_exe.as_deref(),
            Some("/usr/bin/baton")
        );
        assert!(!denials[0].is_agents_own_sandbox(7529));
        assert!(denials[0].is_agents_own_sandbox(1));
        // No SYSCALL record (a task without an audit context): no process.
        assert_eq!(denials[1].tgid, None);
        assert_eq!(denials[1].path.as_deref(), Some("/tmp/a b.txt"));
        assert_eq!(
            denials[1].rights,
            right::bit(right::WRITE) | right::bit(right::CREATE)
        );
    }

    #[test]
    fn network_and_scope_denials_are_not_file_denials() {
        assert_eq!(rights_of("net.connect_tcp"), 0);
        assert_eq!(rights_of("scope.signal"), 0);
        assert_eq!(rights_of("fs.execute"), right::bit(right::EXEC));
        assert_eq!(rights_of("fs.refer"), right::bit(right::RENAME));
    }
}

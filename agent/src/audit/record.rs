//! The audit record: one versioned JSON object per decision or lifecycle
//! change. The field list is the contract with SIEMs and `baton events`;
//! add fields, never rename or repurpose them without bumping [`SCHEMA`].

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use agent_common::{
    event::{self, ConnectEvent, EventHeader, FileEvent, file_flags, hook, kind},
    files::right,
    verdict::{Verdict, mode},
};
use serde::Serialize;
use thiserror::Error;

pub use super::enrich::AuditAncestor;
use super::{enrich::ProcessCache, redact::Redactor};
use crate::ids::{AgentId, RuleId};

/// Schema identifier written in every record.
pub const SCHEMA: &str = "baton.audit/v1";

/// Errors decoding a kernel event.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header says.
    #[error("event of {got} bytes is shorter than {need}")]
    Short {
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Written by a different build of the kernel programs.
    #[error("event layout version {0} is not {version}", version = event::EVENT_VERSION)]
    Version(u16),
    /// Unknown kind.
    #[error("unknown event kind {0}")]
    Kind(u16),
}

/// The decided object.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AuditObject {
    /// A network destination.
    Network {
        /// Destination address.
        address: IpAddr,
        /// Destination port.
        port: u16,
        /// `tcp`, `udp` or the protocol number.
        protocol: String,
        /// The name the address was learned from, when the agent's DNS
        /// proxy resolved one to it.
        #[serde(skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// A name the agent asked its DNS proxy to resolve.
    Domain {
        /// The name, lower-case, without the trailing dot.
        domain: String,
        /// The record type asked for (`A`, `AAAA`, ...).
        query_type: String,
    },
    /// A socket the agent tried to create.
    Socket {
        /// `inet`, `inet6`, `packet` or the family number.
        family: String,
        /// `raw`, `dgram`, `stream` or the type number.
        #[serde(rename = "type")]
        sock_type: String,
        /// Protocol number.
        protocol: u8,
    },
    /// A socket option an agent tried to set.
    SocketOption {
        /// `ip` or `ipv6`.
        level: String,
        /// The option's name, such as `IPV6_RTHDR`.
        option: String,
    },
    /// A file.
    File {
        /// Resolved path.
        path: String,
        /// Rights requested.
        rights: Vec<&'static str>,
        /// Rights denied.
        denied_rights: Vec<&'static str>,
        /// Whether the path was cut to fit the event.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
        /// Whether the file has no name on disk (memfd, deleted file).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        anonymous: bool,
        /// Whether the process was killed (`SIGKILL`) at this call: a
        /// `detected` access under `onDetect: kill`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        killed: bool,
        /// Whether the rule was found by the object it names (the inode of
        /// the rule's path, or of a directory above the file), whatever
        /// name, mount or root the access went through. `path` is then the
        /// name the access used, which may not be under the rule's path.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        by_object: bool,
        /// Whether the file was reached through a file handle whose parent
        /// directories the kernel does not know (`open_by_handle_at`), so
        /// no rule above it could be checked: denied.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disconnected: bool,
        /// Whether Landlock denied an access the policy allows (its
        /// translation takes more than the policy; no rule decided).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        beyond_policy: bool,
    },
    /// Events the kernel or the daemon counted but did not record one by
    /// one (rate limit, full ring buffer).
    Suppressed {
        /// `N events suppressed: reason`.
        message: String,
        /// How many events were not recorded.
        suppressed: u64,
        /// Why, such as `rate limit` or `ring buffer full`.
        reason: String,
    },
    /// Records that never reached the log: the spool was full while the
    /// log could not be written. Their sequence numbers are skipped.
    Gap {
        /// `N records lost between seq A and B: reason`.
        message: String,
        /// How many records were lost.
        lost: u64,
        /// The first lost sequence number.
        first_seq: u64,
        /// The last lost sequence number.
        last_seq: u64,
        /// Why, such as `no space left on device`.
        reason: String,
    },
    /// A lifecycle change.
    Message {
        /// What happened.
        message: String,
    },
}

/// The rule that decided.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditRule {
    /// Policy name.
    pub policy: String,
    /// Rule within the policy, such as `egress.deny[0]`.
    pub id: String,
    /// Kernel rule number.
    pub kernel_id: u32,
}

/// The acting process.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditProcess {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Thread name from the kernel.
    pub comm: String,
    /// Executable, when the process was still there to ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Command line, when the process was still there to ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Vec<String>>,
    /// Whether arguments were left off `cmdline` to bound the record's size.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// cgroup v2 path, when the process was still there to ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// pid of the agent's root process.
    pub agent_root_pid: u32,
    /// The process's ancestors from its parent up to the agent's root
    /// process, as far as procfs (or the cache) still knew them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<AuditAncestor>,
    /// Whether `exe` and `cmdline`, the ancestors' too, were redacted
    /// where they were read (the event drain's process cache), so the
    /// audit trail need not run the patterns over them again. Not part of
    /// the record.
    #[serde(skip)]
    pub redacted: bool,
}

impl AuditProcess {
    /// What a record says about a live process the kernel did not describe in
    /// an event (the sender of a DNS query the proxy refused): procfs only.
    /// `root` is the agent's root process, 0 when unknown. The cgroup id is
    /// that of the process's cgroup v2 directory, 0 when it cannot be read.
    pub fn live(tgid: u32, root: u32) -> Self {
        let mut processes = ProcessCache::default();
        let info = processes.lookup(tgid);
        // The real ids, as the kernel's events carry them.
        let (uid, gid) = crate::kernel::process::status(tgid)
            .map_or((u32::MAX, u32::MAX), |status| (status.ruid, status.rgid));
        // From `stat`, as `comm` has it (`status` escapes some bytes).
        let comm = crate::kernel::process::task(tgid)
            .and_then(|p| p.stat().ok())
            .map(|stat| stat.comm)
            .unwrap_or_default();
        let cgroup_id = info
            .cgroup
            .as_deref()
            .and_then(|path| {
                let root = crate::kernel::cgroup::cgroup2_mount().ok()?;
                let dir = root.join(path.trim_start_matches('/'));
                crate::kernel::maps::cgroup_id(&dir).ok()
            })
            .unwrap_or(0);
        let ancestors = processes.ancestors_from(tgid, info.ppid, root);
        AuditProcess {
            pid: tgid,
            tid: tgid,
            uid,
            gid,
            comm,
            exe: info.exe,
            cmdline: info.cmdline,
            cmdline_truncated: info.cmdline_truncated,
            cgroup_id,
            cgroup: info.cgroup,
            agent_root_pid: root,
            ancestors,
            redacted: false,
        }
    }
}

impl AuditRecord {
    /// Redacts every free-text field that may carry a secret: command
    /// lines, executables and paths of the process and its ancestors, the
    /// object's path and message. A process whose fields were redacted
    /// where they were read ([`AuditProcess::redacted`]) is left as it is.
    pub fn redact(&mut self, redactor: &Redactor) {
        let fix = |text: &mut String| {
            if let Some(clean) = redactor.redact_str(text) {
                *text = clean;
            }
        };
        match &mut self.object {
            AuditObject::File { path, .. } => fix(path),
            AuditObject::Message { message } => fix(message),
            _ => {}
        }
        if let Some(process) = &mut self.process
            && !process.redacted
        {
            if let Some(exe) = &mut process.exe {
                fix(exe);
            }
            if let Some(cmdline) = &mut process.cmdline {
                redactor.redact_args(cmdline);
            }
            for ancestor in &mut process.ancestors {
                if let Some(exe) = &mut ancestor.exe {
                    fix(exe);
                }
                if let Some(cmdline) = &mut ancestor.cmdline {
                    redactor.redact_args(cmdline);
                }
            }
        }
    }
}

/// What a checkpoint signs: the chain head just before it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// Sequence number of the record signed (the one before the checkpoint).
    pub seq: u64,
    /// SHA-256 of that record's line, hex.
    pub hash: String,
    /// ed25519 public key that signed, hex.
    pub key: String,
    /// ed25519 signature of [`crate::keys::checkpoint_message`], hex.
    pub signature: String,
}

/// One audit record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Position in the log, from 1; assigned by the trail.
    pub seq: u64,
    /// SHA-256 of the previous record's line (without its newline), hex; 64
    /// zeros for the first record of a log. Assigned by the trail.
    pub prev_hash: String,
    /// RFC 3339 time of the decision.
    pub time: String,
    /// Host name.
    pub host: String,
    /// Agent name, absent for daemon records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `enforce`, `audit` or `quarantine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// `allowed`, `denied`, `would-deny`, `detected`, or `info` for lifecycle records.
    pub verdict: &'static str,
    /// `egress`, `file`, `policy`, `daemon`.
    pub control: &'static str,
    /// Hook that decided (`connect4`, `file_open`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    /// What was accessed.
    pub object: AuditObject,
    /// The deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<AuditRule>,
    /// Who accessed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<AuditProcess>,
    /// The signed chain head, on checkpoint records only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<AuditCheckpoint>,
}

/// Converts `CLOCK_BOOTTIME` nanoseconds into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_epoch: SystemTime,
}

impl Clock {
    /// Reads the offset between boot time and wall-clock time now.
    pub fn new() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Self {
            boot_epoch: SystemTime::now() - boot,
        }
    }

    /// Wall-clock time of a boot-time timestamp.
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot_epoch + Duration::from_nanos(boot_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 with nanoseconds, UTC.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

fn read_header(bytes: &[u8]) -> Result<EventHeader, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; `EventHeader` is plain old data.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if header.version != event::EVENT_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    Ok(header)
}

fn read_body<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; callers only use `#[repr(C)]` POD event types.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// The name records give hook id `id`: the program's, for hooks a
/// program writes under its own name ([`agent_common::programs`]), else
/// the daemon's fallbacks'.
fn hook_name(id: u16) -> &'static str {
    if let Some(name) = agent_common::programs::hook_name(id) {
        return name;
    }
    match id {
        hook::FANOTIFY_OPEN => "fanotify_open_perm",
        hook::FANOTIFY_OPEN_EXEC => "fanotify_open_exec_perm",
        hook::LANDLOCK => "landlock",
        hook::SECCOMP => "seccomp",
        hook::DETECT_OPEN => "detect_open",
        hook::DETECT_EXEC => "detect_exec",
        hook::DETECT_MMAP => "detect_mmap",
        hook::DETECT_UNLINK => "detect_unlink",
        hook::DETECT_RMDIR => "detect_rmdir",
        hook::DETECT_RENAME => "detect_rename",
        hook::DETECT_MKDIR => "detect_mkdir",
        hook::DETECT_MKNOD => "detect_mknod",
        hook::DETECT_LINK => "detect_link",
        hook::DETECT_SYMLINK => "detect_symlink",
        hook::DETECT_CHMOD => "detect_chmod",
        hook::DETECT_TRUNCATE => "detect_truncate",
        _ => "unknown",
    }
}

/// Spelling of a verdict in records.
pub fn verdict_name(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::Allowed) => "allowed",
        Some(Verdict::Denied) => "denied",
        Some(Verdict::WouldDeny) => "would-deny",
        Some(Verdict::Detected) => "detected",
        None => "unknown",
    }
}

fn mode_name(agent_mode: u8) -> &'static str {
    match agent_mode {
        mode::ENFORCE => "enforce",
        mode::AUDIT => "audit",
        mode::QUARANTINE => "quarantine",
        _ => "unknown",
    }
}

fn rights_names(bits: u32) -> Vec<&'static str> {
    const NAMES: [(usize, &str); right::COUNT] = [
        (right::READ, "read"),
        (right::WRITE, "write"),
        (right::CREATE, "create"),
        (right::DELETE, "delete"),
        (right::RENAME, "rename"),
        (right::EXEC, "exec"),
    ];
    NAMES
        .iter()
        .filter(|(r, _)| bits & right::bit(*r) != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// What the daemon knows that the kernel event does not carry.
pub struct Context<'a> {
    /// Host name.
    pub host: &'a str,
    /// Boot-to-wall clock.
    pub clock: &'a Clock,
    /// Agent name for an id.
    pub agent_name: &'a dyn Fn(AgentId) -> Option<String>,
    /// Policy name and rule for a kernel rule id.
    pub rule: &'a dyn Fn(RuleId) -> Option<(String, String)>,
    /// The name an agent's DNS proxy learned an address from: agent id,
    /// address, the domain rule of the learned row the kernel matched (0:
    /// none), and whether the event is from an agent in audit mode.
    pub domain_of: &'a dyn Fn(AgentId, IpAddr, RuleId, bool) -> Option<String>,
}

impl AuditRecord {
    /// A daemon lifecycle record (start, stop, policy loaded or rejected,
    /// control degraded).
    pub fn lifecycle(host: &str, control: &'static str, message: String) -> Self {
        Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(SystemTime::now()),
            host: host.to_string(),
            agent: None,
            mode: None,
            verdict: "info",
            control,
            hook: None,
            object: AuditObject::Message { message },
            rule: None,
            process: None,
            checkpoint: None,
        }
    }

    /// A record of a name the DNS proxy refused (or, in audit mode, would
    /// have refused).
    pub fn dns_refusal(
        host: &str,
        agent: &str,
        audit_mode: bool,
        domain: &str,
        query_type: &str,
    ) -> Self {
        Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(SystemTime::now()),
            host: host.to_string(),
            agent: Some(agent.to_string()),
            mode: Some(if audit_mode { "audit" } else { "enforce" }),
            verdict: if audit_mode { "would-deny" } else { "denied" },
            control: "dns",
            hook: Some("dns_proxy"),
            object: AuditObject::Domain {
                domain: domain.to_string(),
                query_type: query_type.to_string(),
            },
            rule: None,
            process: None,
            checkpoint: None,
        }
    }

    /// A record of events that were counted but not recorded one by one:
    /// `count` events of `agent` (`None` for events no agent is named for)
    /// suppressed because of `reason` (`rate limit`, `ring buffer full`).
    pub fn suppressed(host: &str, agent: Option<&str>, count: u64, reason: &str) -> Self {
        Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(SystemTime::now()),
            host: host.to_string(),
            agent: agent.map(str::to_string),
            mode: None,
            verdict: "info",
            control: "audit",
            hook: None,
            object: AuditObject::Suppressed {
                message: format!("{count} events suppressed: {reason}"),
                suppressed: count,
                reason: reason.to_string(),
            },
            rule: None,
            process: None,
            checkpoint: None,
        }
    }

    /// A record of records lost between `first` and `last` (inclusive);
    /// written by the trail in their place.
    pub fn gap(host: &str, first: u64, last: u64, reason: &str) -> Self {
        let lost = last - first + 1;
        Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(SystemTime::now()),
            host: host.to_string(),
            agent: None,
            mode: None,
            verdict: "info",
            control: "audit",
            hook: None,
            object: AuditObject::Gap {
                message: format!("{lost} records lost between seq {first} and {last}: {reason}"),
                lost,
                first_seq: first,
                last_seq: last,
                reason: reason.to_string(),
            },
            rule: None,
            process: None,
            checkpoint: None,
        }
    }

    /// A signed checkpoint of the chain head; written by the trail.
    pub fn signed_checkpoint(host: &str, checkpoint: AuditCheckpoint) -> Self {
        Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(SystemTime::now()),
            host: host.to_string(),
            agent: None,
            mode: None,
            verdict: "info",
            control: "audit",
            hook: None,
            object: AuditObject::Message {
                message: format!("checkpoint: records up to seq {} signed", checkpoint.seq),
            },
            rule: None,
            process: None,
            checkpoint: Some(checkpoint),
        }
    }

    /// Decodes one ring-buffer event and enriches it.
    pub fn from_event(
        bytes: &[u8],
        context: &Context<'_>,
        processes: &mut ProcessCache,
    ) -> Result<Self, DecodeError> {
        let header = read_header(bytes)?;
        let (control, object) = match header.kind {
            kind::CONNECT if matches!(header.hook, hook::SOCK_CREATE | hook::SOCKET_CREATE) => {
                let e: ConnectEvent = read_body(bytes)?;
                let family = crate::policy::families::name(u32::from(e.family));
                let sock_type = match e.sock_type {
                    1 => "stream".to_string(),
                    2 => "dgram".to_string(),
                    3 => "raw".to_string(),
                    other => other.to_string(),
                };
                (
                    "egress",
                    AuditObject::Socket {
                        family,
                        sock_type,
                        protocol: e.protocol,
                    },
                )
            }
            kind::CONNECT if header.hook == hook::SETSOCKOPT => {
                let e: ConnectEvent = read_body(bytes)?;
                // The kernel program puts the level in `protocol` and the
                // option name in `port`.
                let (level, option) = match (e.protocol, e.port) {
                    (0, 4) => ("ip", "IP_OPTIONS".to_string()),
                    (41, 57) => ("ipv6", "IPV6_RTHDR".to_string()),
                    (41, 24) => ("ipv6", "IPV6_2292RTHDR".to_string()),
                    (0, other) => ("ip", other.to_string()),
                    (_, other) => ("ipv6", other.to_string()),
                };
                (
                    "egress",
                    AuditObject::SocketOption {
                        level: level.to_string(),
                        option,
                    },
                )
            }
            kind::CONNECT => {
                let e: ConnectEvent = read_body(bytes)?;
                let v6 = Ipv6Addr::from(e.addr);
                let address = match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                };
                let protocol = match e.protocol {
                    1 => "icmp".to_string(),
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    58 => "icmpv6".to_string(),
                    other => other.to_string(),
                };
                (
                    "egress",
                    AuditObject::Network {
                        address,
                        port: e.port,
                        protocol,
                        domain: (context.domain_of)(
                            AgentId::from_raw(header.agent_id),
                            address,
                            RuleId::from_raw(e.learned_rule),
                            header.mode == mode::AUDIT,
                        ),
                    },
                )
            }
            kind::FILE => {
                let e: FileEvent = read_body(bytes)?;
                let len = (e.path_len as usize).min(e.path.len());
                let path = if e.flags & file_flags::PATH_UNRESOLVED != 0 {
                    "<unresolved>".to_string()
                } else {
                    String::from_utf8_lossy(&e.path[..len]).into_owned()
                };
                (
                    "file",
                    AuditObject::File {
                        path,
                        rights: rights_names(e.rights),
                        denied_rights: rights_names(e.denied_rights),
                        truncated: e.flags & file_flags::PATH_TRUNCATED != 0,
                        anonymous: e.flags & file_flags::ANONYMOUS != 0,
                        killed: e.flags & file_flags::KILLED != 0,
                        by_object: e.flags & file_flags::BY_OBJECT != 0,
                        disconnected: e.flags & file_flags::DISCONNECTED != 0,
                        beyond_policy: e.flags & file_flags::BEYOND_POLICY != 0,
                    },
                )
            }
            other => return Err(DecodeError::Kind(other)),
        };
        let info = processes.lookup(header.tgid);
        // The kernel's parent pid keeps the chain when the process itself
        // has already exited (procfs then no longer names its parent).
        let parent = (header.ppid != 0).then_some(header.ppid);
        let ancestors = processes.ancestors_from(header.tgid, parent, header.root_tgid);
        let rule = (header.rule_id != 0).then(|| {
            let (policy, id) = (context.rule)(RuleId::from_raw(header.rule_id))
                .unwrap_or_else(|| ("<unknown>".to_string(), "<unknown>".to_string()));
            AuditRule {
                policy,
                id,
                kernel_id: header.rule_id,
            }
        });
        Ok(Self {
            schema: SCHEMA,
            seq: 0,
            prev_hash: String::new(),
            time: format_time(context.clock.wall(header.time_boot_ns)),
            host: context.host.to_string(),
            agent: Some(
                (context.agent_name)(AgentId::from_raw(header.agent_id))
                    .unwrap_or_else(|| format!("#{}", header.agent_id)),
            ),
            mode: Some(mode_name(header.mode)),
            verdict: verdict_name(Verdict::from_u8(header.verdict)),
            control,
            hook: Some(hook_name(header.hook)),
            object,
            rule,
            process: Some(AuditProcess {
                pid: header.tgid,
                tid: header.pid,
                uid: header.uid,
                gid: header.gid,
                comm: comm_string(&header.comm),
                exe: info.exe,
                cmdline: info.cmdline,
                cmdline_truncated: info.cmdline_truncated,
                cgroup_id: header.cgroup_id,
                // A process that has exited still names its cgroup by id.
                cgroup: processes.cgroup_path(header.cgroup_id, info.cgroup.as_deref()),
                agent_root_pid: header.root_tgid,
                ancestors,
                redacted: processes.redacts(),
            }),
            checkpoint: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use agent_common::egress::ipv4_mapped;

    use super::*;

    fn context_test(f: impl FnOnce(&Context<'_>)) {
        let clock = Clock::new();
        let agent_name = |id: AgentId| (id.raw() == 7).then(|| "demo".to_string());
        let rule =
            |id: RuleId| (id.raw() == 3).then(|| ("p".to_string(), "egress.deny[0]".to_string()));
        let domain_of = |_: AgentId, _: IpAddr, _: RuleId, _: bool| None;
        f(&Context {
            host: "h",
            clock: &clock,
            agent_name: &agent_name,
            rule: &rule,
            domain_of: &domain_of,
        });
    }

    fn as_bytes<T>(value: &T) -> &[u8] {
        // SAFETY: test-only view of a POD value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
    }

    #[test]
    fn decodes_a_connect_event() {
        let mut e = ConnectEvent::default();
        e.header.version = event::EVENT_VERSION;
        e.header.kind = kind::CONNECT;
        e.header.agent_id = 7;
        e.header.tgid = u32::MAX; // no such process: enrichment must not fail
        e.header.verdict = Verdict::Denied as u8;
        e.header.rule_id = 3;
        e.header.hook = hook::CONNECT4;
        e.header.comm[..4].copy_from_slice(b"curl");
        e.port = 9;
        e.protocol = 6;
        e.addr = ipv4_mapped([127, 0, 0, 1]);
        context_test(|context| {
            let record =
                AuditRecord::from_event(as_bytes(&e), context, &mut ProcessCache::default())
                    .unwrap();
            let json = serde_json::to_value(&record).unwrap();
            assert_eq!(json["agent"], "demo");
            assert_eq!(json["verdict"], "denied");
            assert_eq!(json["object"]["address"], "127.0.0.1");
            assert_eq!(json["object"]["port"], 9);
            assert_eq!(json["rule"]["id"], "egress.deny[0]");
            assert_eq!(json["process"]["comm"], "curl");
            assert!(json["process"].get("exe").is_none());
            assert!(json["process"].get("ancestors").is_none());
        });
        // The process is gone, but the kernel named its parent (this test
        // process): the chain is walked from there up to the root.
        let me = std::process::id();
        let parent = ProcessCache::default()
            .lookup(me)
            .ppid
            .expect("this process has a parent");
        e.header.ppid = me;
        e.header.root_tgid = parent;
        context_test(|context| {
            let record =
                AuditRecord::from_event(as_bytes(&e), context, &mut ProcessCache::default())
                    .unwrap();
            let json = serde_json::to_value(&record).unwrap();
            let pids: Vec<u64> = json["process"]["ancestors"]
                .as_array()
                .expect("ancestors")
                .iter()
                .map(|a| a["pid"].as_u64().unwrap())
                .collect();
            assert_eq!(pids, [u64::from(me), u64::from(parent)]);
            assert!(json["process"]["ancestors"][0]["exe"].is_string());
        });
    }

    #[test]
    fn rejects_short_and_foreign_events() {
        context_test(|context| {
            let mut cache = ProcessCache::default();
            assert!(matches!(
                AuditRecord::from_event(&[0; 8], context, &mut cache),
                Err(DecodeError::Short { .. })
            ));
            let mut e = ConnectEvent::default();
            e.header.version = 99;
            assert_eq!(
                AuditRecord::from_event(as_bytes(&e), context, &mut cache),
                Err(DecodeError::Version(99))
            );
        });
    }
}

//! The live stream: every record the trail writes is published to a
//! [`Hub`]; the control socket serves matching records to `baton events`.
//!
//! The stream is a convenience, not a delivery channel: a client that reads
//! too slowly is told how many records it missed and goes on from the
//! newest. Forwarders read the durable log instead.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::broadcast;

use super::{AuditError, chain::Head, config::StreamConfig};

/// A request about the audit trail, served on the control socket beside
/// [`Request`](crate::control::Request). Kept apart from it so that
/// handlers of `Request` need not know about the audit side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditRequest {
    /// The live chain head: sequence number and hash of the last record.
    AuditHead,
    /// Stream records: the last `recent`, then every new one while
    /// `follow`. Served to root and the configured group only.
    Events {
        /// Only this agent's records.
        #[serde(default)]
        agent: Option<String>,
        /// Only records with this verdict.
        #[serde(default)]
        verdict: Option<String>,
        /// Only records of this control.
        #[serde(default)]
        control: Option<String>,
        /// Recent records to send first.
        #[serde(default)]
        recent: usize,
        /// Keep sending new records until the client hangs up.
        #[serde(default)]
        follow: bool,
    },
}

/// A reply to an [`AuditRequest`]. While streaming, records are sent as
/// they were written (objects without a `status` key) between these.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AuditReply {
    /// The chain head; `seq` 0 when nothing was written yet.
    Head {
        /// Sequence number of the last record.
        seq: u64,
        /// Its line hash, hex.
        hash: String,
    },
    /// Records follow, one per line.
    Streaming,
    /// The client read too slowly and this many records were not sent.
    Lagged {
        /// Records skipped.
        skipped: u64,
    },
    /// The stream is over (recent records sent, not following).
    End,
    /// The daemon's status.
    Status {
        /// The status document.
        report: serde_json::Value,
    },
    /// Breaker states, one JSON object per agent.
    Breakers {
        /// The states.
        agents: Vec<serde_json::Value>,
    },
    /// Done; what happened.
    Done {
        /// Description.
        message: String,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Records kept for clients that ask for recent ones (`baton events -n`).
const BACKLOG: usize = 1024;
/// Records queued per client before it counts as lagging.
const CHANNEL: usize = 4096;

/// One published record.
#[derive(Debug)]
pub struct Published {
    /// Sequence number.
    pub seq: u64,
    /// Agent name.
    pub agent: Option<String>,
    /// Verdict.
    pub verdict: &'static str,
    /// Control.
    pub control: &'static str,
    /// The line exactly as written.
    pub line: String,
}

#[derive(Debug)]
struct HubInner {
    sender: broadcast::Sender<Arc<Published>>,
    backlog: Mutex<VecDeque<Arc<Published>>>,
    head: Mutex<Option<Head>>,
    moved: Condvar,
}

/// Fan-out of written records to live subscribers, and the chain head.
/// Cheap to clone; every clone is the same hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HubInner {
                sender: broadcast::channel(CHANNEL).0,
                backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
                head: Mutex::new(None),
                moved: Condvar::new(),
            }),
        }
    }

    /// Publishes a record just written as `line` with hash `hash`. Never
    /// blocks on subscribers.
    #[cfg(test)]
    pub(crate) fn publish(&self, record: &super::record::AuditRecord, line: &str, hash: &str) {
        self.publish_written(
            Published {
                seq: record.seq,
                agent: record.agent.clone(),
                verdict: record.verdict,
                control: record.control,
                line: line.to_string(),
            },
            hash,
        );
    }

    /// Publishes a record once its line is in the file.
    pub(crate) fn publish_written(&self, published: Published, hash: &str) {
        let seq = published.seq;
        let published = Arc::new(published);
        {
            // Holding the backlog lock while sending means a subscriber
            // that copies the backlog and subscribes under the same lock
            // sees every record exactly once.
            let mut backlog = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
            if backlog.len() == BACKLOG {
                backlog.pop_front();
            }
            backlog.push_back(published.clone());
            let _ = self.inner.sender.send(published);
        }
        self.set_head(Head {
            seq,
            hash: hash.to_string(),
        });
    }

    pub(crate) fn set_head(&self, head: Head) {
        *self.inner.head.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
        self.inner.moved.notify_all();
    }

    /// The chain head: the last record written.
    pub fn head(&self) -> Option<Head> {
        self.inner
            .head
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for the head to pass `seq`; returns whether it
    /// has. For threads that read the durable log.
    pub fn wait_past(&self, seq: u64, timeout: Duration) -> bool {
        let head = self.inner.head.lock().unwrap_or_else(|e| e.into_inner());
        let (head, _) = self
            .inner
            .moved
            .wait_timeout_while(head, timeout, |h| h.as_ref().is_none_or(|h| h.seq <= seq))
            .unwrap_or_else(|e| e.into_inner());
        head.as_ref().is_some_and(|h| h.seq > seq)
    }

    /// The last `recent` records and a receiver for every later one.
    pub fn subscribe(
        &self,
        recent: usize,
    ) -> (Vec<Arc<Published>>, broadcast::Receiver<Arc<Published>>) {
        let backlog = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let skip = backlog.len().saturating_sub(recent);
        let past = backlog.iter().skip(skip).cloned().collect();
        (past, self.inner.sender.subscribe())
    }
}

/// Which records a client wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this agent's records.
    pub agent: Option<String>,
    /// Only records with this verdict.
    pub verdict: Option<String>,
    /// Only records of this control.
    pub control: Option<String>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &Published) -> bool {
        self.agent
            .as_deref()
            .is_none_or(|a| record.agent.as_deref() == Some(a))
            && self.verdict.as_deref().is_none_or(|v| record.verdict == v)
            && self.control.as_deref().is_none_or(|c| record.control == c)
    }
}

/// The daemon's audit side of the control socket: the hub, and who may
/// read it.
#[derive(Clone, Debug)]
pub struct AuditService {
    hub: Hub,
    group: Option<nix::unistd::Gid>,
    group_name: Option<String>,
}

impl AuditService {
    /// Serves `hub` to root and, when `config.group` names one, that group.
    pub fn new(hub: Hub, config: &StreamConfig) -> Result<Self, AuditError> {
        let group = match &config.group {
            None => None,
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| AuditError::Config {
                        field: "audit.stream.group".into(),
                        message: format!("no group named {name:?}"),
                    })?
                    .gid,
            ),
        };
        Ok(Self {
            hub,
            group,
            group_name: config.group.clone(),
        })
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Whether a peer with these credentials may read the stream: root, a
    /// process whose group is the configured one, or a user the group
    /// database lists in it. Membership is taken from the uid, not from the
    /// peer's pid, which another process could have taken by the time it
    /// is looked up.
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        if gid == group.as_raw() {
            return true;
        }
        let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, user.gid)
            .map(|groups| groups.contains(&group))
            .unwrap_or(false)
    }

    /// Why a peer is refused.
    pub fn refusal(&self) -> String {
        match &self.group_name {
            Some(group) => format!("the audit stream is served to root and group {group} only"),
            None => {
                "the audit stream is served to root only (set audit.stream.group to add a group)"
                    .to_string()
            }
        }
    }
}

/// Errors of the client side.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The daemon is not listening.
    #[error("cannot reach the Baton daemon at {path}: {source} (is `baton run` running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The daemon refused or sent nonsense.
    #[error("control socket {path}: {message}")]
    Refused {
        /// Socket path.
        path: PathBuf,
        /// What the daemon said.
        message: String,
    },
}

fn request(path: &Path, request: &AuditRequest) -> Result<BufReader<UnixStream>, StreamError> {
    let stream = UnixStream::connect(path).map_err(|source| StreamError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let mut line = serde_json::to_string(request).expect("requests always serialize");
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|source| StreamError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(BufReader::new(stream))
}

fn read_reply(path: &Path, reader: &mut BufReader<UnixStream>) -> Result<AuditReply, StreamError> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|source| StreamError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if line.is_empty() {
        return Err(StreamError::Refused {
            path: path.to_path_buf(),
            message: "the daemon closed the connection".into(),
        });
    }
    match serde_json::from_str::<AuditReply>(&line) {
        Ok(AuditReply::Error { message }) => Err(StreamError::Refused {
            path: path.to_path_buf(),
            message,
        }),
        Ok(reply) => Ok(reply),
        Err(_) => Err(StreamError::Refused {
            path: path.to_path_buf(),
            message: format!("unreadable reply {line:?} (does the daemon predate `baton events`?)"),
        }),
    }
}

/// Asks the daemon at `path` for its live chain head.
pub fn fetch_head(path: &Path) -> Result<Option<Head>, StreamError> {
    let mut reader = request(path, &AuditRequest::AuditHead)?;
    match read_reply(path, &mut reader)? {
        AuditReply::Head { seq, hash } => Ok((seq > 0).then_some(Head { seq, hash })),
        other => Err(StreamError::Refused {
            path: path.to_path_buf(),
            message: format!("unexpected reply {other:?}"),
        }),
    }
}

/// What a follower receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A record, exactly as written.
    Record(String),
    /// The client fell behind and this many records were skipped.
    Lagged(u64),
}

/// Follows the stream of the daemon at `path`: the last `recent` records,
/// then (with `follow`) every new one, calling `each` until it returns
/// false or the daemon closes the stream.
pub fn follow(
    path: &Path,
    filter: &Filter,
    recent: usize,
    follow: bool,
    mut each: impl FnMut(StreamItem) -> bool,
) -> Result<(), StreamError> {
    let mut reader = request(
        path,
        &AuditRequest::Events {
            agent: filter.agent.clone(),
            verdict: filter.verdict.clone(),
            control: filter.control.clone(),
            recent,
            follow,
        },
    )?;
    match read_reply(path, &mut reader)? {
        AuditReply::Streaming => {}
        other => {
            return Err(StreamError::Refused {
                path: path.to_path_buf(),
                message: format!("unexpected reply {other:?}"),
            });
        }
    }
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|source| StreamError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            return Ok(());
        }
        let text = line.trim_end_matches('\n');
        // Records are sent as written; control lines carry a `status`.
        let item = if text.starts_with("{\"status\"") {
            match serde_json::from_str::<AuditReply>(text) {
                Ok(AuditReply::Lagged { skipped }) => StreamItem::Lagged(skipped),
                Ok(AuditReply::End) => return Ok(()),
                Ok(AuditReply::Error { message }) => {
                    return Err(StreamError::Refused {
                        path: path.to_path_buf(),
                        message,
                    });
                }
                _ => continue,
            }
        } else {
            StreamItem::Record(text.to_string())
        };
        if !each(item) {
            return Ok(());
        }
    }
}

/// A network record's address (IPv6 in brackets, ready for `:port`) and
/// the learned name after it (` (name)`, or empty).
pub fn destination(object: &Value) -> (String, String) {
    let address = object["address"].as_str().unwrap_or("").to_string();
    let address = if address.contains(':') {
        format!("[{address}]")
    } else {
        address
    };
    let domain = object["domain"]
        .as_str()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    (address, domain)
}

/// One line for a person: time, verdict, control, agent, process, what
/// was done and the rule.
pub fn human_line(record: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let time = s(&record["time"]);
    // Milliseconds are enough on a terminal.
    let time = match (time.find('.'), time.ends_with('Z')) {
        (Some(dot), true) if time.len() > dot + 4 => format!("{}Z", &time[..dot + 4]),
        _ => time,
    };
    let verdict = s(&record["verdict"]);
    let control = s(&record["control"]);
    let object = &record["object"];
    let what = if let Some(message) = object["message"].as_str() {
        message.to_string()
    } else if let Some(path) = object["path"].as_str() {
        let rights = |v: &Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let denied = rights(&object["denied_rights"]);
        if denied.is_empty() {
            format!("{} {path}", rights(&object["rights"]))
        } else {
            format!("{} {path} (denied: {denied})", rights(&object["rights"]))
        }
    } else if object["address"].is_string() {
        let (address, domain) = destination(object);
        format!(
            "connect {address}:{}/{}{domain}",
            object["port"],
            s(&object["protocol"])
        )
    } else if let Some(domain) = object["domain"].as_str() {
        format!("resolve {domain} {}", s(&object["query_type"]))
    } else if object["family"].is_string() {
        format!("socket {}/{}", s(&object["family"]), s(&object["type"]))
    } else {
        object.to_string()
    };
    let mut line = format!("{time} {verdict:<10} {control:<7}");
    if let Some(agent) = record["agent"].as_str() {
        line.push_str(&format!(" {agent}"));
    }
    let process = &record["process"];
    if process.is_object() {
        line.push_str(&format!(" {}[{}]", s(&process["comm"]), process["pid"]));
    }
    line.push_str(&format!(" {what}"));
    let rule = &record["rule"];
    if rule.is_object() {
        line.push_str(&format!(" rule {}/{}", s(&rule["policy"]), s(&rule["id"])));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::AuditRecord;

    #[test]
    fn filters_and_backlog() {
        let hub = Hub::new();
        let mut record = AuditRecord::dns_refusal("h", "demo", false, "x.test", "A");
        for seq in 1..=3 {
            record.seq = seq;
            hub.publish(&record, &format!("line {seq}"), "00");
        }
        let (past, mut live) = hub.subscribe(2);
        assert_eq!(past.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3]);
        record.seq = 4;
        hub.publish(&record, "line 4", "ab");
        assert_eq!(live.try_recv().unwrap().seq, 4);
        assert_eq!(hub.head().unwrap().seq, 4);
        assert!(hub.wait_past(3, Duration::ZERO));
        assert!(!hub.wait_past(4, Duration::from_millis(10)));
        let published = &past[0];
        let pass = |f: Filter| f.matches(published);
        assert!(pass(Filter::default()));
        assert!(pass(Filter {
            agent: Some("demo".into()),
            verdict: Some("denied".into()),
            control: Some("dns".into())
        }));
        assert!(!pass(Filter {
            agent: Some("other".into()),
            ..Filter::default()
        }));
        assert!(!pass(Filter {
            verdict: Some("would-deny".into()),
            ..Filter::default()
        }));
    }

    #[test]
    fn access_is_root_or_the_group() {
        let service = AuditService::new(Hub::new(), &StreamConfig::default()).unwrap();
        assert!(service.permits(0, 0));
        assert!(!service.permits(65534, 65534));
        let root_group = StreamConfig {
            group: Some("root".into()),
        };
        let service = AuditService::new(Hub::new(), &root_group).unwrap();
        assert!(service.permits(65534, 0));
        assert!(!service.permits(65534, 65534));
        let missing = StreamConfig {
            group: Some("no-such-group-here".into()),
        };
        assert!(AuditService::new(Hub::new(), &missing).is_err());
    }

    /// The control server streams what the trail writes, filtered, exactly
    /// as written, and serves the head.
    #[test]
    fn the_control_socket_streams_records_and_the_head() {
        use crate::control::{
            Reply, Request,
            server::{self, Caller, Handler},
        };

        struct Daemon(AuditService);
        impl Handler for Daemon {
            fn handle(&self, _: Caller, _: Request) -> Reply {
                Reply::Error {
                    message: "no".into(),
                }
            }
            fn audit(&self) -> Option<&AuditService> {
                Some(&self.0)
            }
        }

        let dir = std::env::temp_dir().join(format!("baton-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("baton.sock");
        let config = crate::audit::AuditConfig {
            key_file: dir.join("audit.key"),
            ..crate::audit::AuditConfig::default()
        };
        let mut trail = crate::audit::AuditTrail::open(&dir.join("audit.jsonl"), &config).unwrap();
        let service = AuditService::new(trail.hub(), &StreamConfig::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = server::bind(&socket).unwrap();
            drop(tokio::spawn(server::serve(
                listener,
                Arc::new(Daemon(service)),
            )));
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });

        for agent in ["a", "b", "a"] {
            let mut record = AuditRecord::dns_refusal("h", agent, false, "x.test", "A");
            trail.write(&mut record).unwrap();
        }
        let head = fetch_head(&socket).unwrap().unwrap();
        assert_eq!(head, trail.head().unwrap());

        // Recent records only, filtered.
        let filter = Filter {
            agent: Some("a".into()),
            ..Filter::default()
        };
        let mut got = Vec::new();
        follow(&socket, &filter, 10, false, |item| {
            got.push(item);
            true
        })
        .unwrap();
        let written: Vec<String> = std::fs::read_to_string(dir.join("audit.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            got,
            [
                StreamItem::Record(written[0].clone()),
                StreamItem::Record(written[2].clone())
            ]
        );

        // Following: new records arrive as they are written.
        let (sender, received) = std::sync::mpsc::channel();
        let follower = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                follow(&socket, &filter, 0, true, |item| {
                    sender.send(item).unwrap();
                    false
                })
                .unwrap();
            })
        };
        // Give the follower time to subscribe; records written before it
        // did are not part of a `-n 0` stream.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let item = loop {
            let mut record = AuditRecord::dns_refusal("h", "a", false, "y.test", "A");
            trail.write(&mut record).unwrap();
            if let Ok(item) = received.recv_timeout(Duration::from_millis(100)) {
                break item;
            }
            assert!(std::time::Instant::now() < deadline, "nothing streamed");
        };
        let StreamItem::Record(line) = item else {
            panic!("{item:?}")
        };
        assert!(line.contains("y.test"), "{line}");
        follower.join().unwrap();
        drop(trail);
        let _ = stop.send(());
        serving.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn human_lines() {
        let record: Value = serde_json::from_str(
            r#"{"time":"2026-11-26T23:29:33.265005903Z","agent":"demo","verdict":"denied","control":"egress",
                "object":{"address":"127.0.0.1","port":8082,"protocol":"tcp"},
                "rule":{"policy":"demo","id":"egress.default"},"process":{"pid":5,"comm":"curl"}}"#,
        )
        .unwrap();
        assert_eq!(
            human_line(&record),
            "2026-11-26T23:29:33.265Z denied     egress  demo curl[5] connect 127.0.0.1:8082/tcp rule demo/egress.default"
        );
    }
}

//! Syslog forwarder: one RFC 5424 message per record, over TCP with RFC
//! 6587 octet-counted framing, or over UDP.
//!
//! The message is `<PRI>1 TIME HOST APP - CONTROL - RECORD`: the record's
//! own time (to the microsecond, the most RFC 5424 allows) and host, the
//! control as MSGID, and the record, exactly as written, as MSG. The
//! severity follows the verdict: `warning` for denied and detected,
//! `notice` for would-deny, `info` for the rest.
//!
//! Syslog has no acknowledgements. Over TCP a batch counts as delivered
//! once the kernel accepted it; records still in flight when the receiver
//! crashes can be lost, which is why the connection is checked before each
//! batch. Over UDP nothing is confirmed at all. Where delivery must be
//! proven, use the HTTP forwarder.

use std::{
    io::{ErrorKind, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use serde_json::Value;

use super::{Destination, FollowedRecord};
use crate::audit::config::{SyslogConfig, SyslogProtocol, facility_code};

/// Records per write unless configured.
const BATCH: usize = 200;

/// Printable US-ASCII without spaces, at most `max` characters, or `-`.
fn header_field(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

/// RFC 5424 allows at most six fractional digits.
fn timestamp(time: &str) -> String {
    let Some(dot) = time.find('.') else {
        return header_field(time, 64);
    };
    let digits = time[dot + 1..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let zone = &time[dot + 1 + digits..];
    let kept = digits.min(6);
    header_field(&format!("{}{}", &time[..dot + 1 + kept], zone), 64)
}

/// Formats one record line as an RFC 5424 message.
pub fn format_message(line: &str, facility: u8, app_name: &str) -> String {
    let record: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let severity = match record["verdict"].as_str() {
        Some("denied" | "detected") => 4,
        Some("would-deny") => 5,
        _ => 6,
    };
    let pri = u16::from(facility) * 8 + severity;
    format!(
        "<{pri}>1 {} {} {} - {} - {line}",
        record["time"]
            .as_str()
            .map_or_else(|| "-".into(), timestamp),
        header_field(record["host"].as_str().unwrap_or(""), 255),
        header_field(app_name, 48),
        header_field(record["control"].as_str().unwrap_or(""), 32),
    )
}

/// Sends records to one syslog receiver.
pub struct SyslogDestination {
    address: SocketAddr,
    protocol: SyslogProtocol,
    facility: u8,
    app_name: String,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

impl SyslogDestination {
    /// A destination for `config`; connects on first delivery.
    pub fn new(config: &SyslogConfig) -> Result<Self, String> {
        let facility_name = config.facility.as_deref().unwrap_or("authpriv");
        let facility = facility_code(facility_name)
            .ok_or_else(|| format!("unknown syslog facility {facility_name:?}"))?;
        Ok(Self {
            address: config.address,
            protocol: config.protocol,
            facility,
            app_name: config.app_name.clone().unwrap_or_else(|| "baton".into()),
            tcp: None,
            udp: None,
        })
    }

    /// Whether the TCP connection is still open: syslog receivers never
    /// send, so readable means closed (or broken).
    fn tcp_alive(stream: &TcpStream) -> bool {
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
        alive && stream.set_nonblocking(false).is_ok()
    }

    fn send_tcp(&mut self, batch: &[FollowedRecord]) -> Result<(), String> {
        if self.tcp.as_ref().is_some_and(|s| !Self::tcp_alive(s)) {
            self.tcp = None;
        }
        if self.tcp.is_none() {
            let stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(5))
                .map_err(|e| format!("connect {}: {e}", self.address))?;
            stream
                .set_write_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            self.tcp = Some(stream);
        }
        let mut out = Vec::new();
        for record in batch {
            let message = format_message(&record.line, self.facility, &self.app_name);
            out.extend_from_slice(format!("{} ", message.len()).as_bytes());
            out.extend_from_slice(message.as_bytes());
        }
        let stream = self.tcp.as_mut().expect("connected above");
        if let Err(e) = stream.write_all(&out).and_then(|()| stream.flush()) {
            self.tcp = None;
            return Err(format!("send to {}: {e}", self.address));
        }
        Ok(())
    }

    fn send_udp(&mut self, batch: &[FollowedRecord]) -> Result<(), String> {
        if self.udp.is_none() {
            let bind: SocketAddr = if self.address.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            self.udp = Some(UdpSocket::bind(bind).map_err(|e| e.to_string())?);
        }
        let socket = self.udp.as_ref().expect("bound above");
        for record in batch {
            let message = format_message(&record.line, self.facility, &self.app_name);
            socket
                .send_to(message.as_bytes(), self.address)
                .map_err(|e| format!("send to {}: {e}", self.address))?;
        }
        Ok(())
    }
}

impl Destination for SyslogDestination {
    fn batch_size(&self) -> usize {
        BATCH
    }

    fn deliver(&mut self, batch: &[FollowedRecord]) -> Result<(), String> {
        match self.protocol {
            SyslogProtocol::Tcp => self.send_tcp(batch),
            SyslogProtocol::Udp => self.send_udp(batch),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        process::{Child, Command, Stdio},
        time::Instant,
    };

    use super::*;
    use crate::audit::{
        AuditRecord, AuditTrail,
        config::{AuditConfig, ForwarderConfig},
        forward::deliver_pending,
    };

    #[test]
    fn messages_follow_rfc_5424() {
        let line = r#"{"schema":"baton.audit/v1","seq":3,"time":"2026-11-26T23:29:33.265005903Z","host":"web 1","verdict":"denied","control":"egress"}"#;
        assert_eq!(
            format_message(line, 10, "baton"),
            format!("<84>1 2026-11-26T23:29:33.265005Z web1 baton - egress - {line}")
        );
        assert_eq!(timestamp("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00Z");
        assert_eq!(
            timestamp("2026-01-01T00:00:00.5+01:00"),
            "2026-01-01T00:00:00.5+01:00"
        );
    }

    struct Rsyslog(Child);

    impl Drop for Rsyslog {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Debian's rsyslogd on a loopback TCP port, writing every message's
    /// MSG part to `out`.
    fn rsyslog(dir: &Path, port: u16, out: &Path) -> Rsyslog {
        let config = dir.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\")\n\
                 module(load=\"imtcp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 template(name=\"msgonly\" type=\"string\" string=\"%syslogfacility-text% %syslogseverity-text% %app-name% %msgid% %msg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{out}\" template=\"msgonly\")\n",
                dir = dir.display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd is installed by cargo xtask setup (Debian package rsyslog)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Rsyslog(child)
    }

    #[test]
    fn rsyslog_receives_every_record_in_order() {
        let dir = std::env::temp_dir().join(format!("baton-syslog-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("log/audit.jsonl");
        let out = dir.join("received.log");
        let mut config = AuditConfig {
            key_file: dir.join("audit.key"),
            state_dir: dir.join("state"),
            ..AuditConfig::default()
        };
        config.checkpoints.every_records = 10;
        let forwarder: ForwarderConfig = serde_norway::from_str(&format!(
            "name: rsyslog\nsyslog: {{ address: \"127.0.0.1:{port}\", protocol: tcp, facility: local3 }}\nminBackoffMs: 20\n"
        ))
        .unwrap();
        let mut trail = AuditTrail::open(&log, &config).unwrap();
        for i in 0..25 {
            let mut record =
                AuditRecord::dns_refusal("host1", "demo", i % 2 == 0, &format!("n{i}.test"), "A");
            trail.write(&mut record).unwrap();
        }
        let last = trail.head().unwrap().seq;

        // The receiver is down: nothing is delivered and the cursor stays.
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(deliver_pending(&log, &config.state_dir, &forwarder, soon).is_err());
        let cursor = dir.join("state/forwarders/rsyslog.cursor");
        assert_eq!(std::fs::read_to_string(&cursor).unwrap(), r#"{"seq":0}"#);

        let _server = rsyslog(&dir, port, &out);
        let sent = deliver_pending(
            &log,
            &config.state_dir,
            &forwarder,
            Instant::now() + Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(sent, last);
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() as u64 >= last || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let seqs: Vec<u64> = lines
            .iter()
            .map(|l| {
                let json = &l[l.find('{').expect("a record")..];
                serde_json::from_str::<Value>(json).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
        assert!(
            lines[0].starts_with("local3 notice baton dns "),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("local3 warning baton dns "),
            "{}",
            lines[1]
        );
        assert!(
            lines.iter().any(|l| l.contains("\"checkpoint\"")),
            "checkpoints are forwarded too"
        );
        // Nothing new: a second run sends nothing.
        let again = deliver_pending(
            &log,
            &config.state_dir,
            &forwarder,
            Instant::now() + Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(again, 0);
        drop(trail);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

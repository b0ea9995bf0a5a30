//! HTTP forwarder: batches of records POSTed as NDJSON (one record per
//! line, exactly as written). Any answer but 2xx, and any connection error,
//! is a failed delivery that is retried; nothing is ever dropped, so a
//! receiver that rejects a batch for good stalls this forwarder (and says
//! so in the daemon's log) rather than losing records.

use std::{io::Read, time::Duration};

use super::{Destination, FollowedRecord};
use crate::audit::config::HttpConfig;

/// Records per request unless configured.
const DEFAULT_BATCH: usize = 500;

/// POSTs batches to one URL.
pub struct HttpDestination {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    batch_size: usize,
}

impl HttpDestination {
    /// A destination for `config`.
    pub fn new(config: &HttpConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(10_000));
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // Proxy variables in the daemon's environment must not divert
            // the audit trail.
            .proxy(None)
            .build()
            .new_agent();
        for name in config.headers.keys() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("header name {name:?} is not valid"));
            }
        }
        Ok(Self {
            agent,
            url: config.url.clone(),
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            batch_size: config.batch_size.unwrap_or(DEFAULT_BATCH),
        })
    }
}

impl Destination for HttpDestination {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn deliver(&mut self, batch: &[FollowedRecord]) -> Result<(), String> {
        let mut body = String::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
        for record in batch {
            body.push_str(&record.line);
            body.push('\n');
        }
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/x-ndjson");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send(body)
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = response.status();
        // Read the answer so the connection can be reused; keep a little
        // of it for the log.
        let mut text = String::new();
        let _ = response
            .body_mut()
            .as_reader()
            .take(512)
            .read_to_string(&mut text);
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "POST {} answered {status}: {}",
                self.url,
                text.trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    //! A loopback receiver that is down, then answers 500, then accepts:
    //! every record must arrive, in order, none missing.

    use std::{
        io::{BufRead, BufReader, Read as _, Write},
        net::{TcpListener, TcpStream},
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };

    use super::*;
    use crate::audit::{
        AuditRecord, AuditTrail,
        config::{AuditConfig, ForwarderConfig},
        forward::Forwarders,
    };

    /// Reads one HTTP/1.1 request; returns its headers (lower-case) and
    /// body.
    fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut length = 0;
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            headers.push_str(&line.to_lowercase());
            headers.push('\n');
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some((headers, String::from_utf8(body).ok()?))
    }

    fn answer(stream: &mut TcpStream, status: &str) {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_receiver_down_then_failing_then_back_gets_every_record_in_order() {
        let dir = std::env::temp_dir().join(format!("baton-http-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = dir.join("log/audit.jsonl");
        // A socket bound but not listening: connects are refused (the
        // receiver is down) and no other test can take the port meanwhile.
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen,
            socket,
        };
        let reserved = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&reserved),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        let port = getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&reserved))
            .unwrap()
            .port();
        let mut config = AuditConfig {
            key_file: dir.join("audit.key"),
            state_dir: dir.join("state"),
            ..AuditConfig::default()
        };
        config.rotation.max_bytes = 4096;
        config.checkpoints.every_records = 7;
        let forwarder: ForwarderConfig = serde_norway::from_str(&format!(
            "name: siem\nhttp: {{ url: \"http://127.0.0.1:{port}/ingest\", batchSize: 10, headers: {{ X-Token: abc }} }}\nminBackoffMs: 20\nmaxBackoffMs: 100\n"
        ))
        .unwrap();
        config.forwarders.push(forwarder);

        let mut trail = AuditTrail::open(&log, &config).unwrap();
        let forwarders = Forwarders::start(&log, &config, Some(trail.hub())).unwrap();
        for i in 0..40 {
            let mut record = AuditRecord::lifecycle("h", "daemon", format!("before {i}"));
            trail.write(&mut record).unwrap();
        }
        std::thread::sleep(Duration::from_millis(400));

        // Up, but failing: 500 for the first few requests.
        listen(&reserved, Backlog::new(128).unwrap()).unwrap();
        let listener = TcpListener::from(reserved);
        let received = Arc::new(Mutex::new(Vec::<u64>::new()));
        let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let received = received.clone();
            let tokens = tokens.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut failures = 0;
                listener.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let mut stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    stream.set_nonblocking(false).unwrap();
                    let Some((headers, body)) = read_request(&mut stream) else {
                        continue;
                    };
                    if let Some(token) = headers.lines().find(|l| l.starts_with("x-token:")) {
                        tokens.lock().unwrap().push(token.to_string());
                    }
                    if failures < 4 {
                        failures += 1;
                        answer(&mut stream, "500 Internal Server Error");
                        continue;
                    }
                    let mut got = received.lock().unwrap();
                    for line in body.lines() {
                        let value: serde_json::Value = serde_json::from_str(line).unwrap();
                        got.push(value["seq"].as_u64().unwrap());
                    }
                    drop(got);
                    answer(&mut stream, "200 OK");
                }
            })
        };
        for i in 0..5 {
            let mut record = AuditRecord::lifecycle("h", "daemon", format!("after {i}"));
            trail.write(&mut record).unwrap();
        }
        let last = trail.head().unwrap().seq;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().unwrap().len() < last as usize && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        forwarders.stop();
        stop.store(true, Ordering::Relaxed);
        let got = received.lock().unwrap().clone();
        // In order, none missing, nothing twice: the cursor moved only on
        // a 200, and batches were sent one at a time.
        assert_eq!(got, (1..=last).collect::<Vec<_>>());
        assert!(
            tokens.lock().unwrap().iter().all(|t| t == "x-token: abc"),
            "configured headers are sent"
        );
        let cursor = std::fs::read_to_string(dir.join("state/forwarders/siem.cursor")).unwrap();
        assert!(cursor.contains(&format!("\"seq\":{last}")), "{cursor}");
        // The log rotated meanwhile: the forwarder followed the chain
        // across files.
        assert!(crate::audit::files::rotated_files(&log).unwrap().len() >= 2);
        drop(trail);
        let _ = server.join();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Policy sources: a watched directory laid out the way the kubelet lays out
//! a ConfigMap volume, and an HTTP server on loopback that serves, changes,
//! fails and disappears; signed bundles through both.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use baton::policy::{
    bundle::{self, SigningKey, TrustPolicy},
    source::{DirectorySource, HttpOptions, HttpSource, SourceError, SourceUpdate},
};
use baton_tests::{TempDir, policy};
use tokio::sync::mpsc::Receiver;

/// Time any single update may take to arrive.
const PATIENCE: Duration = Duration::from_secs(15);

async fn next(updates: &mut Receiver<SourceUpdate>) -> SourceUpdate {
    tokio::time::timeout(PATIENCE, updates.recv())
        .await
        .expect("no update in time")
        .expect("the source stopped")
}

/// Asserts that no update arrives for `quiet`.
async fn none_for(updates: &mut Receiver<SourceUpdate>, quiet: Duration) {
    if let Ok(update) = tokio::time::timeout(quiet, updates.recv()).await {
        panic!("unexpected update: {update:?}");
    }
}

/// Policy names of a good update; panics on an error update.
fn names(update: &SourceUpdate) -> BTreeSet<String> {
    match &update.policies {
        Ok(policies) => policies
            .iter()
            .map(|p| p.document.metadata.name.to_string())
            .collect(),
        Err(error) => panic!("expected a good set, got: {error}"),
    }
}

fn error_of(update: &SourceUpdate) -> &SourceError {
    match &update.policies {
        Ok(policies) => panic!("expected an error, got {} policies", policies.len()),
        Err(error) => error,
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A policy named `name` whose one rule mentions `port`, so that versions
/// of it differ.
fn versioned(name: &str, port: u16) -> String {
    policy(
        name,
        name,
        &format!("  egress:\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"),
    )
}

/// The first port of the first allow rule of policy `name`.
fn port_of(update: &SourceUpdate, name: &str) -> u16 {
    let policies = update.policies.as_ref().expect("a good set");
    let policy = policies
        .iter()
        .find(|p| p.document.metadata.name.as_str() == name)
        .unwrap_or_else(|| panic!("no policy {name}"));
    policy.document.spec.egress.as_ref().unwrap().allow[0].ports[0].first
}

// ---------------------------------------------------------------------------
// A ConfigMap volume, as the kubelet's atomic writer makes it
// ---------------------------------------------------------------------------

/// Writes one version of the data into a new timestamped directory.
fn configmap_version(dir: &Path, stamp: u32, files: &[(&str, String)]) -> String {
    let version = format!("..2026_01_01_00_00_{stamp:02}.{stamp:09}");
    std::fs::create_dir(dir.join(&version)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&version).join(name), text).unwrap();
    }
    version
}

fn configmap_create(dir: &Path, files: &[(&str, String)]) -> String {
    let version = configmap_version(dir, 1, files);
    std::os::unix::fs::symlink(&version, dir.join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    version
}

/// The kubelet's update: new version, `..data_tmp` renamed over `..data`,
/// visible links for new keys added and for removed keys deleted, the old
/// version removed.
fn configmap_swap(
    dir: &Path,
    old_version: &str,
    old_names: &[&str],
    stamp: u32,
    files: &[(&str, String)],
) -> String {
    let version = configmap_version(dir, stamp, files);
    std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        if !old_names.contains(name) {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
    for name in old_names {
        if !files.iter().any(|(n, _)| n == name) {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }
    std::fs::remove_dir_all(dir.join(old_version)).unwrap();
    version
}

#[tokio::test(flavor = "multi_thread")]
async fn configmap_swap_is_exactly_one_reload_to_the_new_set() {
    let tmp = TempDir::new("configmap");
    let dir = tmp.path();
    let v1 = configmap_create(
        dir,
        &[
            ("a.yaml", versioned("a", 1000)),
            ("b.yaml", versioned("b", 1000)),
            ("c.yaml", versioned("c", 1000)),
        ],
    );
    let mut updates = DirectorySource::new(dir, TrustPolicy::none())
        .watch()
        .unwrap();
    let first = next(&mut updates).await;
    assert_eq!(names(&first), set(&["a", "b", "c"]));
    assert!(
        first.origin.contains("..data -> ..2026"),
        "{}",
        first.origin
    );
    assert_eq!(first.source, format!("directory {}", dir.display()));

    // a changes, b goes, c stays, d comes: all in one swap.
    let v2 = configmap_swap(
        dir,
        &v1,
        &["a.yaml", "b.yaml", "c.yaml"],
        2,
        &[
            ("a.yaml", versioned("a", 2000)),
            ("c.yaml", versioned("c", 1000)),
            ("d.yaml", versioned("d", 2000)),
        ],
    );
    let second = next(&mut updates).await;
    assert_eq!(names(&second), set(&["a", "c", "d"]));
    assert_eq!(port_of(&second, "a"), 2000);
    assert_ne!(second.digest, first.digest);
    none_for(&mut updates, Duration::from_secs(2)).await;

    // A swap to a broken set is one error update naming file and line;
    // the next good swap is one good update.
    let broken = versioned("a", 3000).replace("ports: [3000]", "ports: [70000]");
    let v3 = configmap_swap(
        dir,
        &v2,
        &["a.yaml", "c.yaml", "d.yaml"],
        3,
        &[("a.yaml", broken)],
    );
    let third = next(&mut updates).await;
    let error = error_of(&third).to_string();
    assert!(
        error.starts_with(&format!("{}:", dir.join("a.yaml").display()))
            && error.contains("invalid port 70000"),
        "{error}"
    );
    none_for(&mut updates, Duration::from_secs(1)).await;
    configmap_swap(
        dir,
        &v3,
        &["a.yaml"],
        4,
        &[("a.yaml", versioned("a", 4000))],
    );
    let fourth = next(&mut updates).await;
    assert_eq!(names(&fourth), set(&["a"]));
    assert_eq!(port_of(&fourth, "a"), 4000);
    none_for(&mut updates, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_directory_changes_are_debounced_and_noise_is_ignored() {
    let tmp = TempDir::new("plain-dir");
    let dir = tmp.path();
    std::fs::write(dir.join("a.yaml"), versioned("a", 1000)).unwrap();
    // A long quiet period, so that a slow machine cannot split the burst
    // below into two reloads.
    let mut updates = DirectorySource::new(dir, TrustPolicy::none())
        .with_debounce(Duration::from_secs(1))
        .watch()
        .unwrap();
    assert_eq!(names(&next(&mut updates).await), set(&["a"]));

    // Files that are not policies, and hidden editor files, change nothing.
    std::fs::write(dir.join("README.txt"), "notes").unwrap();
    std::fs::write(dir.join(".a.yaml.swp"), "swap").unwrap();
    none_for(&mut updates, Duration::from_secs(2)).await;

    // Three files written in a burst are one reload.
    for name in ["b", "c", "d"] {
        std::fs::write(dir.join(format!("{name}.yaml")), versioned(name, 1000)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(names(&next(&mut updates).await), set(&["a", "b", "c", "d"]));
    none_for(&mut updates, Duration::from_secs(2)).await;

    // Rewriting a file with the same bytes is no reload.
    std::fs::write(dir.join("b.yaml"), versioned("b", 1000)).unwrap();
    none_for(&mut updates, Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn required(key: &SigningKey) -> TrustPolicy {
    TrustPolicy {
        require_signatures: true,
        trusted_keys: vec![key.verifying_key()],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_with_required_signatures() {
    let tmp = TempDir::new("signed-dir");
    let dir = tmp.path();
    let key = signing_key(7);
    let signed = bundle::sign(&key, versioned("a", 1000).as_bytes());
    std::fs::write(dir.join("a.yaml"), &signed).unwrap();
    let mut updates = DirectorySource::new(dir, required(&key)).watch().unwrap();
    assert_eq!(names(&next(&mut updates).await), set(&["a"]));

    // Tampered: the rule changed after signing.
    let tampered = String::from_utf8(signed.clone())
        .unwrap()
        .replace("[1000]", "[1001]");
    std::fs::write(dir.join("a.yaml"), tampered).unwrap();
    let error = error_of(&next(&mut updates).await).to_string();
    assert!(error.contains("bad signature"), "{error}");

    // Unsigned.
    std::fs::write(dir.join("a.yaml"), versioned("a", 1001)).unwrap();
    let error = error_of(&next(&mut updates).await).to_string();
    assert!(error.contains("not signed"), "{error}");

    // Signed by a key that is not trusted.
    let other = bundle::sign(&signing_key(8), versioned("a", 1001).as_bytes());
    std::fs::write(dir.join("a.yaml"), other).unwrap();
    let error = error_of(&next(&mut updates).await).to_string();
    assert!(error.contains("not one of the trusted keys"), "{error}");

    // Re-signed properly.
    let resigned = bundle::sign(&key, versioned("a", 1001).as_bytes());
    std::fs::write(dir.join("a.yaml"), resigned).unwrap();
    let update = next(&mut updates).await;
    assert_eq!(port_of(&update, "a"), 1001);
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// What the test server answers.
#[derive(Clone)]
enum Reply {
    /// 200 with this body and ETag, or 304 when the ETag matches.
    Bundle { body: Vec<u8>, etag: String },
    /// A bare status.
    Status(u16),
}

/// (If-None-Match sent, status answered) per request.
type RequestLog = Mutex<Vec<(Option<String>, u16)>>;

/// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1.
struct Server {
    port: u16,
    reply: Arc<Mutex<Reply>>,
    log: Arc<RequestLog>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(reply));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, log, stop) = (reply.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &reply, &log);
                    }
                }
            })
        };
        Self {
            port,
            reply,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bundle.yaml", self.port)
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn requests(&self) -> Vec<(Option<String>, u16)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, reply: &Mutex<Reply>, log: &RequestLog) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("if-none-match")
        {
            if_none_match = Some(value.trim().to_string());
        }
    }
    let reply = reply.lock().unwrap().clone();
    let (status, headers, body) = match reply {
        Reply::Bundle { etag, .. } if if_none_match.as_deref() == Some(etag.as_str()) => {
            (304, format!("ETag: {etag}\r\n"), Vec::new())
        }
        Reply::Bundle { body, etag } => (200, format!("ETag: {etag}\r\n"), body),
        Reply::Status(status) => (status, String::new(), b"server error".to_vec()),
    };
    log.lock().unwrap().push((if_none_match, status));
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn bundle_of(policies: &[String]) -> Vec<u8> {
    policies.join("---\n").into_bytes()
}

fn options(url: String, cache: &Path) -> HttpOptions {
    HttpOptions {
        interval: Duration::from_millis(200),
        cache_path: Some(cache.to_path_buf()),
        timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(800),
        ..HttpOptions::new(url)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_pull_with_etags_failures_and_the_cache() {
    let tmp = TempDir::new("http");
    let cache = tmp.path().join("cache/bundle.json");
    let v1 = bundle_of(&[versioned("a", 1000), versioned("b", 1000)]);
    let server = Server::start(Reply::Bundle {
        body: v1,
        etag: "\"v1\"".into(),
    });
    let mut updates = HttpSource::new(options(server.url(), &cache), TrustPolicy::none())
        .watch()
        .unwrap();
    let first = next(&mut updates).await;
    assert_eq!(names(&first), set(&["a", "b"]));
    assert_eq!(first.source, format!("http {}", server.url()));
    assert!(cache.exists(), "the good bundle is cached");

    // Unchanged: the server answers 304 and nothing is sent.
    none_for(&mut updates, Duration::from_secs(1)).await;
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|(tag, status)| tag.as_deref() == Some("\"v1\"") && *status == 304),
        "{requests:?}"
    );

    // A change is picked up within the interval.
    server.set(Reply::Bundle {
        body: bundle_of(&[versioned("a", 2000)]),
        etag: "\"v2\"".into(),
    });
    let changed = next(&mut updates).await;
    assert_eq!(names(&changed), set(&["a"]));
    assert_eq!(port_of(&changed, "a"), 2000);
    assert!(changed.origin.contains("\"v2\""), "{}", changed.origin);

    // 500s are error updates; the set in force is the caller's to keep.
    server.set(Reply::Status(500));
    let failed = next(&mut updates).await;
    assert!(matches!(
        error_of(&failed),
        SourceError::Status { status: 500, .. }
    ));

    // Garbage is an error update too, with the position of the error.
    server.set(Reply::Bundle {
        body: b"apiVersion: [unclosed\n".to_vec(),
        etag: "\"garbage\"".into(),
    });
    let garbage = loop {
        let update = next(&mut updates).await;
        if !matches!(error_of(&update), SourceError::Status { .. }) {
            break update;
        }
    };
    let error = error_of(&garbage).to_string();
    assert!(error.starts_with(&format!("{}:", server.url())), "{error}");

    // The server recovers with the bundle we already have: a 304, and one
    // good update that says so.
    server.set(Reply::Bundle {
        body: bundle_of(&[versioned("a", 2000)]),
        etag: "\"v2\"".into(),
    });
    let recovered = loop {
        let update = next(&mut updates).await;
        if update.policies.is_ok() {
            break update;
        }
    };
    assert_eq!(port_of(&recovered, "a"), 2000);
    none_for(&mut updates, Duration::from_secs(1)).await;

    // A restart while the server is down: the cached bundle comes first,
    // then the failure to reach the server.
    drop(updates);
    let dead_url = server.url();
    drop(server);
    let mut updates = HttpSource::new(options(dead_url, &cache), TrustPolicy::none())
        .watch()
        .unwrap();
    let cached = next(&mut updates).await;
    assert_eq!(port_of(&cached, "a"), 2000);
    assert!(cached.origin.contains("cached copy"), "{}", cached.origin);
    let down = next(&mut updates).await;
    assert!(
        matches!(error_of(&down), SourceError::Http { .. }),
        "{down:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_bundles_with_required_signatures() {
    let tmp = TempDir::new("http-signed");
    let key = signing_key(9);
    let body = bundle_of(&[versioned("a", 1000), versioned("b", 1000)]);
    let signed = bundle::sign(&key, &body);
    let server = Server::start(Reply::Bundle {
        body: signed.clone(),
        etag: "\"s1\"".into(),
    });
    let mut updates = HttpSource::new(
        options(server.url(), &tmp.path().join("cache.json")),
        required(&key),
    )
    .watch()
    .unwrap();
    assert_eq!(names(&next(&mut updates).await), set(&["a", "b"]));

    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("[1000]", "[22]")
        .into_bytes();
    server.set(Reply::Bundle {
        body: tampered,
        etag: "\"s2\"".into(),
    });
    let error = error_of(&next(&mut updates).await).to_string();
    assert!(error.contains("bad signature"), "{error}");

    server.set(Reply::Bundle {
        body: body.clone(),
        etag: "\"s3\"".into(),
    });
    let error = loop {
        let update = next(&mut updates).await;
        let text = error_of(&update).to_string();
        if !text.contains("bad signature") {
            break text;
        }
    };
    assert!(error.contains("not signed"), "{error}");

    let resigned = bundle::sign(&key, &bundle_of(&[versioned("a", 3000)]));
    server.set(Reply::Bundle {
        body: resigned,
        etag: "\"s4\"".into(),
    });
    let good = loop {
        let update = next(&mut updates).await;
        if update.policies.is_ok() {
            break update;
        }
    };
    assert_eq!(port_of(&good, "a"), 3000);
}

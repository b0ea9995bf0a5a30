//! HTTP policy pull, end to end: the daemon fetches a bundle from a local
//! server, enforces it in the kernel, follows a change within the poll
//! interval, keeps the last good set through server errors, and enforces
//! the cached bundle after a restart while the server is down.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use baton_tests::{Daemon, EPERM, TempDir, helper_outcome, listener, policy};

const HELPER: &str = env!("CARGO_BIN_EXE_baton-test-helper");

/// What the test server answers: a status and a body.
type Answer = Arc<Mutex<(u16, String)>>;

fn serve(answer: Answer) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.lock().unwrap().clone();
            respond(stream, answer);
        }
    });
    port
}

fn respond(mut stream: TcpStream, (status, body): (u16, String)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    // Read the request head; the body of a GET is empty.
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let etag = format!("\"{:x}\"", body.len() * 31 + status as usize);
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

fn bundle(allowed: u16) -> String {
    policy(
        "pulled",
        "pulled",
        &format!(
            "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1\n        ports: [{allowed}]\n"
        ),
    )
}

fn outcome(daemon: &Daemon, port: u16) -> String {
    let output = daemon.exec("pulled", &[HELPER, "connect", &format!("127.0.0.1:{port}")]);
    if !output.status.success() {
        return format!("exec failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    helper_outcome(&output)
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_enforces_pulled_bundles_and_their_cache() {
    let (_first, first) = listener();
    let (_second, second) = listener();
    let answer: Answer = Arc::new(Mutex::new((200, bundle(first))));
    let server = serve(answer.clone());
    let state = TempDir::new("http-cache");
    let cache = state.path().join("bundle.json");
    let config = format!(
        "policySources:\n  http:\n    url: http://127.0.0.1:{server}/bundle.yaml\n    intervalSeconds: 1\n    cachePath: {}\n",
        cache.display()
    );
    let missing_dir = state.path().join("no-local-policies");
    let daemon = Daemon::start_in_with_config(&missing_dir, "http-pull", &config);
    eventually("the pulled policy is enforced", || {
        outcome(&daemon, first) == "ok"
    });
    assert_eq!(outcome(&daemon, second), EPERM);

    // A change on the server is enforced within the poll interval.
    *answer.lock().unwrap() = (200, bundle(second));
    eventually("the change is enforced", || {
        outcome(&daemon, second) == "ok"
    });
    assert_eq!(outcome(&daemon, first), EPERM);

    // Errors and garbage keep the last good set.
    *answer.lock().unwrap() = (500, "broken".into());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(outcome(&daemon, second), "ok");
    *answer.lock().unwrap() = (200, "kind: [not a policy".into());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(outcome(&daemon, second), "ok");
    assert!(
        std::fs::read_to_string(&daemon.audit_log)
            .unwrap()
            .contains("the last good set stays in force"),
        "refusals are recorded"
    );
    drop(daemon);

    // Restarted while the server is down: the cached bundle is enforced.
    *answer.lock().unwrap() = (503, String::new());
    let daemon = Daemon::start_in_with_config(&missing_dir, "http-cached", &config);
    eventually("the cached bundle is enforced", || {
        outcome(&daemon, second) == "ok"
    });
    assert_eq!(outcome(&daemon, first), EPERM);
}

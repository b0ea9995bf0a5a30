//! The metrics and health endpoints, over real loopback HTTP: the
//! exposition is checked line by line against the OpenMetrics text format
//! that Prometheus scrapes, and, with a real daemon, its counters are
//! compared with the audit records of a scripted run.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use baton::metrics::{
    BreakerState, DnsResult, Metrics, MetricsServer, OPENMETRICS_CONTENT_TYPE, ReloadResult,
};
use baton_tests::{Daemon, TempDir, baton_bin, free_port, policy};

/// A shell command that connects to 127.0.0.1:`port` over TCP (bash's
/// `/dev/tcp`), for `baton exec` to run inside an agent.
fn connect_command(port: u16) -> [String; 3] {
    [
        "bash".into(),
        "-c".into(),
        format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    ]
}

/// `ok` when the connect succeeded, `EPERM` when the kernel refused it.
fn connect_outcome(output: &std::process::Output) -> &'static str {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() && stdout.trim() == "connected" {
        "ok"
    } else if stderr.contains("Operation not permitted") {
        "EPERM"
    } else {
        panic!("connect neither succeeded nor got EPERM: {output:?}")
    }
}

/// The daemon's configuration for a metrics endpoint on `port`.
fn metrics_config(port: u16) -> String {
    format!("metrics:\n  address: 127.0.0.1:{port}\n")
}

// ---------------------------------------------------------------------------
// A strict reader of the OpenMetrics text format (the subset a client
// library writes: no exemplars, no timestamps).
// ---------------------------------------------------------------------------

/// One metric family.
#[derive(Debug, Default)]
struct MetricFamily {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `text`, checking the grammar and the rules a scraper relies on:
/// descriptors before samples, each family in one block, sample names that
/// fit their family's type, unique series, cumulative histogram buckets that
/// end in `+Inf` and agree with `_count`, and a final `# EOF`.
fn parse_openmetrics(text: &str) -> Result<BTreeMap<String, MetricFamily>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with \"# EOF\\n\"")?;
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut series = std::collections::HashSet::new();
    for (number, line) in body.lines().enumerate() {
        let at = |message: String| format!("line {}: {message}: {line:?}", number + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let value = words.next();
            check_metric_name(name).map_err(at)?;
            if current.as_deref() != Some(name) {
                if families.contains_key(name) {
                    return Err(at(format!("family {name} appears in two blocks")));
                }
                families.insert(name.to_owned(), MetricFamily::default());
                current = Some(name.to_owned());
            }
            let family = families.get_mut(name).expect("inserted above");
            if !family.samples.is_empty() {
                return Err(at("descriptor after samples".into()));
            }
            match (keyword, value) {
                ("TYPE", Some(kind)) => {
                    const TYPES: &[&str] = &[
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "stateset",
                        "info",
                        "summary",
                        "unknown",
                    ];
                    if !TYPES.contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if !family.kind.is_empty() {
                        return Err(at("second TYPE".into()));
                    }
                    family.kind = kind.to_owned();
                }
                ("HELP", help) => {
                    let help = help.unwrap_or("");
                    check_escapes(help, false).map_err(at)?;
                    family.help = Some(help.to_owned());
                }
                ("UNIT", Some(unit)) => {
                    if !name.ends_with(&format!("_{unit}")) {
                        return Err(at(format!("unit {unit} is not the name's suffix")));
                    }
                }
                _ => return Err(at("not a HELP, TYPE or UNIT line".into())),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family_name = current
            .clone()
            .ok_or_else(|| at("sample before any descriptor".into()))?;
        let family = families.get_mut(&family_name).expect("current family");
        let suffix = sample
            .name
            .strip_prefix(family_name.as_str())
            .ok_or_else(|| at(format!("sample outside its family {family_name}")))?;
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" | "" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            other => return Err(at(format!("type {other} not expected from Baton"))),
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!(
                "{} does not fit a {}",
                sample.name, family.kind
            )));
        }
        if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if suffix == "_bucket" && !sample.labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if !series.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        family.samples.push(sample);
    }
    for (name, family) in &families {
        if family.kind == "histogram" {
            check_histogram(name, family)?;
        }
    }
    Ok(families)
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// Only `\\`, `\n` (and in label values `\"`) may follow a backslash.
fn check_escapes(text: &str, quote_allowed: bool) -> Result<(), String> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if quote_allowed => {}
                other => return Err(format!("bad escape \\{other:?}")),
            }
        }
    }
    Ok(())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut cursor = after;
        loop {
            if let Some(after) = cursor.strip_prefix('}') {
                cursor = after;
                break;
            }
            let eq = cursor.find("=\"").ok_or("label without =\"")?;
            let label = &cursor[..eq];
            let mut label_chars = label.chars();
            let label_ok = label_chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && label_chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !label_ok {
                return Err(format!("bad label name {label:?}"));
            }
            let value_start = eq + 2;
            let mut value = String::new();
            let mut end = None;
            let mut chars = cursor[value_start..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape in label value: {other:?}")),
                    },
                    '"' => {
                        end = Some(value_start + i + 1);
                        break;
                    }
                    '\n' => return Err("raw newline in label value".into()),
                    c => value.push(c),
                }
            }
            let end = end.ok_or("unterminated label value")?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            cursor = &cursor[end..];
            if let Some(after) = cursor.strip_prefix(',') {
                cursor = after;
                if cursor.starts_with('}') {
                    return Err("trailing comma in labels".into());
                }
            } else if !cursor.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
        rest = cursor;
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err("timestamps and exemplars are not expected".into());
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse::<f64>()
            .map_err(|_| format!("bad value {number:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn check_histogram(name: &str, family: &MetricFamily) -> Result<(), String> {
    // Group by the labels other than `le`.
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<&Sample>> = BTreeMap::new();
    for sample in &family.samples {
        let mut key = sample.labels.clone();
        key.remove("le");
        groups.entry(key).or_default().push(sample);
    }
    for (labels, samples) in groups {
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| {
                let le = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().unwrap_or(f64::NAN),
                };
                (le, s.value)
            })
            .collect();
        let last = buckets
            .last()
            .ok_or(format!("{name}{labels:?}: no buckets"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{labels:?}: the last bucket is not +Inf"));
        }
        for pair in buckets.windows(2) {
            let increasing = pair[1].0.partial_cmp(&pair[0].0) == Some(std::cmp::Ordering::Greater);
            if !increasing || pair[0].1 > pair[1].1 {
                return Err(format!(
                    "{name}{labels:?}: buckets not cumulative: {pair:?}"
                ));
            }
        }
        let count = samples
            .iter()
            .find(|s| s.name.ends_with("_count"))
            .ok_or(format!("{name}{labels:?}: no _count"))?;
        if count.value != last.1 {
            return Err(format!("{name}{labels:?}: _count is not the +Inf bucket"));
        }
        if !samples.iter().any(|s| s.name.ends_with("_sum")) {
            return Err(format!("{name}{labels:?}: no _sum"));
        }
    }
    Ok(())
}

/// The value of the sample `name` with exactly `labels`.
fn value(
    families: &BTreeMap<String, MetricFamily>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels == wanted)
        .map(|s| s.value)
}

// ---------------------------------------------------------------------------
// HTTP over loopback.
// ---------------------------------------------------------------------------

/// `GET path` on `addr`: the status (None when nothing listens), the
/// content type and the body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, MetricFamily> {
    let (status, content_type, body) =
        get(addr, "/metrics").unwrap_or_else(|| panic!("nothing answers on {addr}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    parse_openmetrics(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

// ---------------------------------------------------------------------------
// The endpoint alone (no kernel).
// ---------------------------------------------------------------------------

#[test]
fn the_reader_rejects_what_a_scraper_would() {
    let good = "# HELP a x\n# TYPE a counter\na_total{x=\"1\"} 1\n# EOF\n";
    assert!(
        parse_openmetrics(good).is_ok(),
        "{:?}",
        parse_openmetrics(good)
    );
    for bad in [
        "# TYPE a counter\na_total 1\n",                 // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                // counter without _total
        "# TYPE a counter\na_total -1\n# EOF\n",         // negative counter
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n", // label twice
        "# TYPE a gauge\na{x=\"\\t\"} 1\n# EOF\n",       // bad escape
        "# TYPE a gauge\na 1\na 2\n# EOF\n",             // series twice
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n", // split family
        "# TYPE a histogram\na_bucket{le=\"1\"} 2\na_bucket{le=\"+Inf\"} 1\na_count 1\na_sum 1\n# EOF\n",
        "# TYPE a histogram\na_bucket{le=\"1\"} 1\na_count 1\na_sum 1\n# EOF\n", // no +Inf
        "# TYPE a gauge\na 1 123\n# EOF\n",                                      // timestamp
        "a 1\n# EOF\n",                                                          // no descriptor
        "# comment\n# EOF\n",                                                    // free comment
    ] {
        assert!(parse_openmetrics(bad).is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn the_exposition_is_strict_openmetrics_with_every_family() {
    // Worker threads serve the endpoint while this thread plays the scraper.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let server = runtime
        .block_on(MetricsServer::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .unwrap();
    let addr = server.local_addr();
    runtime.spawn(server.run(metrics.clone(), ready.clone()));

    metrics.record_decision("demo", "egress", "denied");
    metrics.record_decision("demo", "egress", "denied");
    metrics.record_decision("demo", "file", "would-deny");
    metrics.record_decision("other", "egress", "allowed");
    metrics.observe_events_dropped_total("demo", 4);
    metrics.observe_events_suppressed_total("demo", 9);
    metrics.set_breaker_state("demo", BreakerState::Open);
    metrics.set_breaker_state("other", BreakerState::Closed);
    metrics.set_policy_generation(3);
    metrics.record_policy_reload(ReloadResult::Success);
    metrics.record_policy_reload(ReloadResult::Failure);
    metrics.set_map_usage("EGRESS_V4", 12, 4096);
    for (result, millis) in [
        (DnsResult::Allowed, 1),
        (DnsResult::Refused, 0),
        (DnsResult::Failed, 2000),
    ] {
        metrics.record_dns_query("demo", result, Duration::from_millis(millis));
    }

    let families = scrape(addr);
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&families, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}"))
    };
    let demo_egress = [
        ("agent", "demo"),
        ("control", "egress"),
        ("verdict", "denied"),
    ];
    assert_eq!(v("baton_decisions_total", &demo_egress), 2.0);
    assert_eq!(
        v(
            "baton_decisions_total",
            &[
                ("agent", "demo"),
                ("control", "file"),
                ("verdict", "would-deny")
            ]
        ),
        1.0
    );
    assert_eq!(v("baton_events_dropped_total", &[("agent", "demo")]), 4.0);
    assert_eq!(
        v("baton_events_suppressed_total", &[("agent", "demo")]),
        9.0
    );
    assert_eq!(v("baton_breaker_state", &[("agent", "demo")]), 1.0);
    assert_eq!(v("baton_breaker_state", &[("agent", "other")]), 0.0);
    assert_eq!(v("baton_policy_generation", &[]), 3.0);
    assert_eq!(
        v("baton_policy_reload_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        v("baton_policy_reload_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(v("baton_policy_last_reload_success", &[]), 0.0);
    assert_eq!(v("baton_map_entries", &[("map", "EGRESS_V4")]), 12.0);
    assert_eq!(v("baton_map_capacity", &[("map", "EGRESS_V4")]), 4096.0);
    assert_eq!(
        v(
            "baton_dns_queries_total",
            &[("agent", "demo"), ("result", "refused")]
        ),
        1.0
    );
    assert_eq!(v("baton_dns_query_duration_seconds_count", &[]), 3.0);
    assert!((v("baton_dns_query_duration_seconds_sum", &[]) - 2.001).abs() < 1e-9);
    assert_eq!(
        v("baton_dns_query_duration_seconds_bucket", &[("le", "+Inf")]),
        3.0
    );
    assert_eq!(
        v(
            "baton_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for family in families.values() {
        assert!(family.help.is_some(), "{family:?} has no HELP");
    }

    // Health and readiness on the same endpoint.
    assert_eq!(get(addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(addr, "/readyz").map(|r| r.0), Some(503));
    ready.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(get(addr, "/readyz").map(|r| r.0), Some(200));
    runtime.shutdown_background();
}

// ---------------------------------------------------------------------------
// With the real daemon.
// ---------------------------------------------------------------------------

/// The decision counters of `/metrics` equal the decision records of the
/// audit log after a scripted run of allowed and denied connects.
#[test]
fn daemon_metrics_match_the_audit_records() {
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let denied_port = denied.local_addr().unwrap().port();
    let metrics_port = free_port("127.0.0.1");
    let daemon = Daemon::start_with_config(
        "metrics",
        &[(
            "demo.yaml",
            policy(
                "demo",
                "demo",
                &format!(
                    "  egress:\n    default: deny\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{allowed_port}]\n        protocol: tcp\n"
                ),
            ),
        )],
        &metrics_config(metrics_port),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));

    let connect = |port: u16| {
        let command = connect_command(port);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        connect_outcome(&daemon.exec("demo", &command))
    };
    for _ in 0..3 {
        assert_eq!(connect(denied_port), "EPERM");
    }
    for _ in 0..2 {
        assert_eq!(connect(allowed_port), "ok");
    }
    daemon.wait_for_record(|r| r["control"] == "egress" && r["verdict"] == "denied");
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected_denied = loop {
        let denials = daemon
            .decisions()
            .iter()
            .filter(|r| r["control"] == "egress" && r["verdict"] == "denied")
            .count();
        if denials == 3 || Instant::now() > deadline {
            break denials;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(expected_denied, 3, "audit log:\n{:#?}", daemon.records());

    // Every (agent, control, verdict) of the audit log, counted.
    let mut from_audit: HashMap<(String, String, String), f64> = HashMap::new();
    for record in daemon.decisions() {
        let key = (
            record["agent"].as_str().unwrap_or_default().to_owned(),
            record["control"].as_str().unwrap_or_default().to_owned(),
            record["verdict"].as_str().unwrap_or_default().to_owned(),
        );
        *from_audit.entry(key).or_default() += 1.0;
    }
    // The daemon counts a decision as it writes the record; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let families = loop {
        let families = scrape(addr);
        let from_metrics: HashMap<(String, String, String), f64> = families
            .get("baton_decisions")
            .map(|f| {
                f.samples
                    .iter()
                    .filter(|s| s.name == "baton_decisions_total")
                    .map(|s| {
                        (
                            (
                                s.labels["agent"].clone(),
                                s.labels["control"].clone(),
                                s.labels["verdict"].clone(),
                            ),
                            s.value,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if from_metrics == from_audit {
            break families;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {from_metrics:?} != audit {from_audit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    assert!(
        value(&families, "baton_policy_generation", &[]).unwrap_or(0.0) >= 1.0,
        "no policy generation"
    );
    assert_eq!(
        value(
            &families,
            "baton_policy_reload_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "baton_policy_last_reload_success", &[]),
        Some(1.0)
    );
    // Every map reported has its capacity next to it, and fits.
    let entries = families
        .get("baton_map_entries")
        .expect("baton_map_entries");
    assert!(!entries.samples.is_empty(), "no map is reported");
    for sample in &entries.samples {
        let map = sample.labels["map"].as_str();
        let capacity = value(&families, "baton_map_capacity", &[("map", map)])
            .unwrap_or_else(|| panic!("no capacity for map {map}"));
        assert!(
            sample.value <= capacity,
            "{map}: {} > {capacity}",
            sample.value
        );
    }
    drop(allowed);
    drop(denied);
}

/// `/readyz` answers 200 only once the daemon enforces: the first time it
/// does, the control socket admits agents and a denied connect is denied.
#[test]
fn daemon_is_ready_only_once_it_enforces() {
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied_port = denied.local_addr().unwrap().port();
    let metrics_port = free_port("127.0.0.1");
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let dir = TempDir::new("readyz");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("demo.yaml"),
        policy("demo", "demo", "  egress:\n    default: deny\n"),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, metrics_config(metrics_port)).unwrap();
    let socket = dir.path().join("baton.sock");
    let stderr = dir.path().join("daemon.stderr");
    let mut child = Command::new(baton_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--policy-dir")
        .arg(&policies)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--control-socket")
        .arg(&socket)
        .arg("--pin-dir")
        .arg(format!(
            "/sys/fs/bpf/baton-test-readyz-{}",
            std::process::id()
        ))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cleanup-on-exit")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "baton run exited with {status}:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            ));
        }
        let status = get(addr, "/readyz").map(|r| r.0);
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == Some(200) {
            // Checked at once, without waiting: ready means enforcing.
            let exec = Command::new(baton_bin())
                .args(["exec", "--agent", "demo", "--control-socket"])
                .arg(&socket)
                .arg("--")
                .args(connect_command(denied_port))
                .output()
                .unwrap();
            break Ok(connect_outcome(&exec));
        }
        if Instant::now() > deadline {
            break Err(format!("never ready; /readyz gave {seen:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert_eq!(outcome, Ok("EPERM"), "/readyz gave {seen:?}");
    assert!(
        seen.iter()
            .all(|s| matches!(s, None | Some(503) | Some(200))),
        "/readyz gave {seen:?}"
    );
    drop(denied);
}

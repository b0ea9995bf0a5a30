//! `cargo xtask bench dns`: what the DNS proxy adds to a query, against
//! asking the DNS server directly, idle and while the daemon audits a flood
//! of denials from the same agent (the answer's learning step must not
//! wait for the audit writer).

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    AGENT, Daemon, Paired, Params, Timing, WorkDir, build, pair, parse_timing, probe, run_client,
};
use crate::{setup, util, workspace_root};

/// The name every measured query asks for, and what dnsmasq answers (for
/// its subdomains too).
const DNS_NAME: &str = "allowed.test";
/// Case (d)'s names: a subdomain of [`DNS_NAME`] not asked before, so the
/// proxy's answer cache never holds it (see `bench-dns`).
const DNS_FRESH_NAME: &str = "q{n}.allowed.test";
const DNS_ANSWER: &str = "127.0.0.2";
/// A name dnsmasq answers but the agent's policy does not allow: the proxy
/// must refuse it, which proves the queries go through the proxy.
const DNS_REFUSED_NAME: &str = "blocked.test";
/// Where the agent sends its queries: the kernel sends an agent's port-53
/// traffic to its proxy whatever the address.
const DNS_AGENT_SERVER: &str = "127.0.0.1:53";
/// `NXDOMAIN`: how the proxy answers a name the policy refuses (with an
/// Extended DNS Error saying so), where dnsmasq would give an address.
const RCODE_NXDOMAIN: u8 = 3;
/// Where the flood of case (c) connects: the agent's egress default denies
/// it, so each connect is a denial the daemon records.
const FLOOD_TARGET: &str = "127.0.0.1:9";
/// The denial rate case (c) asks for, and the processes making it.
const FLOOD_RATE: u64 = 100_000;
const FLOOD_PROCESSES: u32 = 2;
/// How long the flood runs before the queries start, so they meet a
/// daemon already busy with it.
const FLOOD_LEAD: Duration = Duration::from_millis(500);
/// After a flood, the audit log must stop growing for this long before the
/// next case runs, so that (b) meets an idle daemon, not the flood's
/// backlog.
const QUIET: Duration = Duration::from_millis(1000);
/// Target: (c)'s p99 at most this many times (b)'s.
const UNDER_AUDIT_P99_TARGET: f64 = 2.0;
/// Targets: what the proxy adds to a query, (b) - (a), at p50 and p99, us.
const ADDED_P50_TARGET_US: f64 = 15.0;
const ADDED_P99_TARGET_US: f64 = 50.0;

/// One measured configuration of the dns benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsCase {
    /// (a) straight to dnsmasq, from a process in no agent.
    Direct,
    /// (b) from inside an agent, through the kernel redirect and the proxy.
    Proxied,
    /// (c) as (b), while other processes of the agent make
    /// [`FLOOD_RATE`] denied connects a second, each recorded.
    UnderAudit,
    /// (d) as (b), a name not asked before every time: what a query costs
    /// when the proxy must ask the upstream.
    Fresh,
}

impl DnsCase {
    const ALL: [DnsCase; 4] = [
        DnsCase::Direct,
        DnsCase::Proxied,
        DnsCase::UnderAudit,
        DnsCase::Fresh,
    ];

    fn tag(self) -> &'static str {
        match self {
            DnsCase::Direct => "(a)",
            DnsCase::Proxied => "(b)",
            DnsCase::UnderAudit => "(c)",
            DnsCase::Fresh => "(d)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            DnsCase::Direct => "direct to dnsmasq, in no agent",
            DnsCase::Proxied => "in an agent, through Baton's DNS proxy",
            DnsCase::UnderAudit => "(b) while denials flood the audit trail",
            DnsCase::Fresh => "(b), a new name each time (no cache)",
        }
    }
}

pub(super) fn run(params: &Params) -> Result<()> {
    ensure!(
        crate::nix_is_root(),
        "the dns benchmark loads eBPF programs: run it as root"
    );
    let started = Instant::now();
    setup::setup(&setup::SetupOptions { vm: false })?;
    build(params)?;
    let root = workspace_root();
    let client = root.join("target/debug/bench-dns");
    let flood = root.join("target/debug/bench-flood");
    let baton = params.baton();

    let work = WorkDir::create()?;
    let dnsmasq = Dnsmasq::start(&[(DNS_NAME, DNS_ANSWER), (DNS_REFUSED_NAME, "127.0.0.3")])?;
    let direct = format!("127.0.0.1:{}", dnsmasq.port);
    let policy = work.path().join("policies/bench.yaml");
    util::create_dir_all(policy.parent().context("policy directory")?)?;
    std::fs::write(&policy, dns_policy_yaml())
        .with_context(|| format!("cannot write {}", policy.display()))?;
    util::output(Command::new(&baton).arg("policy").arg("check").arg(&policy))
        .context("the generated benchmark policy does not compile")?;
    // The proxy answers from this dnsmasq only, never the host's resolver.
    let daemon = Daemon::start(&baton, work.path(), &dns_config_yaml(dnsmasq.port))?;

    let expected = format!("rcode=0 a={DNS_ANSWER}");
    let outside = probe(Command::new(&client).args(["--probe", &direct, DNS_NAME]))?;
    ensure!(
        outside == expected,
        "dnsmasq on {direct} answered {DNS_NAME} with {outside:?}, not {expected:?}"
    );
    let through = daemon.exec(
        &baton,
        &client,
        &["--probe".into(), DNS_AGENT_SERVER.into(), DNS_NAME.into()],
    )?;
    ensure!(
        through == expected,
        "inside the agent, {DNS_NAME} via {DNS_AGENT_SERVER} gave {through:?}, not {expected:?}"
    );
    let refused = daemon.exec(
        &baton,
        &client,
        &[
            "--probe".into(),
            DNS_AGENT_SERVER.into(),
            DNS_REFUSED_NAME.into(),
        ],
    )?;
    ensure!(
        refused == format!("rcode={RCODE_NXDOMAIN}"),
        "inside the agent, {DNS_REFUSED_NAME} gave {refused:?}, not NXDOMAIN: the queries do not \
         go through the proxy"
    );
    println!(
        "bench: sanity: inside the agent, {DNS_AGENT_SERVER} answers {DNS_NAME} with {DNS_ANSWER} \
         and refuses {DNS_REFUSED_NAME}, which dnsmasq itself would answer: the proxy is in the path"
    );
    println!(
        "bench: dns: {} rounds x {} cases x {} sequential UDP A queries for {DNS_NAME}",
        params.rounds,
        DnsCase::ALL.len(),
        params.iterations
    );

    let iterations = params.iterations.to_string();
    // Every query waits at most 2 s; a healthy one takes well under 1 ms.
    let timeout = Duration::from_secs(30) + Duration::from_millis(2) * params.iterations as u32;
    // The flood outlasts the queries: the lead, then at most 1 ms a query.
    let flood_seconds =
        (FLOOD_LEAD + Duration::from_millis(params.iterations as u64)).as_secs() + 2;
    let mut flood_rates = Vec::new();
    let mut rounds: Vec<Vec<(DnsCase, Timing)>> = Vec::new();
    for round in 0..params.rounds {
        let mut cases = DnsCase::ALL.to_vec();
        if round % 2 == 1 {
            cases.reverse();
        }
        let mut measured = Vec::new();
        for case in cases {
            let mut cmd = match case {
                DnsCase::Direct => {
                    let mut cmd = Command::new(&client);
                    cmd.args([direct.as_str(), &iterations, DNS_NAME]);
                    cmd
                }
                DnsCase::Proxied | DnsCase::UnderAudit => daemon.exec_command(
                    &baton,
                    &client,
                    &[DNS_AGENT_SERVER.into(), iterations.clone(), DNS_NAME.into()],
                ),
                // Each round asks for its own names: q0, q1... of round 2
                // were asked in round 1.
                DnsCase::Fresh => daemon.exec_command(
                    &baton,
                    &client,
                    &[
                        DNS_AGENT_SERVER.into(),
                        iterations.clone(),
                        DNS_FRESH_NAME.replace("{n}", &format!("r{round}-{{n}}")),
                    ],
                ),
            };
            let flooding = if case == DnsCase::UnderAudit {
                let flood = Flood::start(daemon.exec_command(
                    &baton,
                    &flood,
                    &[
                        FLOOD_TARGET.into(),
                        FLOOD_PROCESSES.to_string(),
                        FLOOD_RATE.to_string(),
                        flood_seconds.to_string(),
                    ],
                ))?;
                thread::sleep(FLOOD_LEAD);
                Some(flood)
            } else {
                None
            };
            let (timing, _) = parse_timing("bench-dns", &run_client(&mut cmd, timeout)?)?;
            if let Some(flood) = flooding {
                let rate = flood.finish(Duration::from_secs(flood_seconds + 60))?;
                println!(
                    "bench: round {:>width$}/{} (c) the flood made {rate:.0} denied connects/s",
                    round + 1,
                    params.rounds,
                    width = params.rounds.to_string().len(),
                );
                flood_rates.push(rate);
                wait_quiet(&work.path().join("audit.jsonl"))?;
            }
            println!(
                "bench: round {:>width$}/{} {} {:<40} p50 {:>7.1} us  p99 {:>7.1} us",
                round + 1,
                params.rounds,
                case.tag(),
                case.label(),
                timing.median as f64 / 1e3,
                timing.p99 as f64 / 1e3,
                width = params.rounds.to_string().len(),
            );
            measured.push((case, timing));
        }
        rounds.push(measured);
    }
    daemon.stop()?;
    drop(dnsmasq);

    print!("{}", dns_report(&rounds, params, &flood_rates));
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dns_report(rounds: &[Vec<(DnsCase, Timing)>], params: &Params, flood_rates: &[f64]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ndns: one UDP A query for {DNS_NAME} at a time, send to reply; {} rounds of {} queries \
         per case\n\
         p50, p99: median over the rounds of each round's figure, us\n\
         vs (a): median over the rounds of (case p50 / that round's (a) p50)\n",
        rounds.len(),
        params.iterations
    );
    let _ = writeln!(
        out,
        "{:<4} {:<40} {:>9} {:>9} {:>8}",
        "case", "", "p50 us", "p99 us", "vs (a)"
    );
    let summaries: Vec<(DnsCase, Paired)> = DnsCase::ALL
        .iter()
        .filter_map(|&c| Some((c, pair(rounds, c, DnsCase::Direct)?)))
        .collect();
    for (case, s) in &summaries {
        let _ = writeln!(
            out,
            "{:<4} {:<40} {:>9.1} {:>9.1} {:>8.2}",
            case.tag(),
            case.label(),
            s.median / 1e3,
            s.p99 / 1e3,
            s.ratio
        );
    }
    if let Some((_, b)) = summaries.iter().find(|(c, _)| *c == DnsCase::Proxied) {
        let _ = writeln!(
            out,
            "\nadded by the proxy per query, (b) - (a), median over the rounds: \
             p50 {:+.1} us, p99 {:+.1} us",
            b.cost / 1e3,
            b.p99_cost / 1e3
        );
        let _ = writeln!(
            out,
            "target (b) - (a) p50 <= +{ADDED_P50_TARGET_US} us: {:+.1} us  {}\n\
             target (b) - (a) p99 <= +{ADDED_P99_TARGET_US} us: {:+.1} us  {}",
            b.cost / 1e3,
            super::verdict(b.cost / 1e3 <= ADDED_P50_TARGET_US),
            b.p99_cost / 1e3,
            super::verdict(b.p99_cost / 1e3 <= ADDED_P99_TARGET_US)
        );
        if let Some((_, d)) = summaries.iter().find(|(c, _)| *c == DnsCase::Fresh) {
            let _ = writeln!(
                out,
                "added when the proxy asks the upstream, (d) - (a): p50 {:+.1} us, p99 {:+.1} us \
                 (reported)",
                d.cost / 1e3,
                d.p99_cost / 1e3
            );
        }
        if let Some((_, c)) = summaries.iter().find(|(c, _)| *c == DnsCase::UnderAudit) {
            let ratio = c.p99 / b.p99;
            let _ = writeln!(
                out,
                "(c) ran against a flood of {:.0} denied connects/s, each an audit event (median over the rounds; \
                 {FLOOD_RATE} asked for, audit.eventsPerSecond: 0)\n\
                 target (c) p99 <= {UNDER_AUDIT_P99_TARGET} x (b) p99: {:.1} us vs {:.1} us = \
                 {ratio:.2}x  {}",
                super::median(flood_rates.iter().copied()),
                c.p99 / 1e3,
                b.p99 / 1e3,
                super::verdict(ratio <= UNDER_AUDIT_P99_TARGET)
            );
        }
    }
    let _ = writeln!(out, "baton: {}", params.baton().display());
    out
}

fn dns_policy_yaml() -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
         spec:\n  selector:\n    agent: {AGENT}\n  egress:\n    default: deny\n    allow:\n\
         \x20     - domain: {DNS_NAME}\n        ports: [443]\n        protocol: tcp\n\
         \x20     - domain: \"*.{DNS_NAME}\"\n        ports: [443]\n        protocol: tcp\n"
    )
}

/// Every denial of the flood is recorded: no per-agent event limit.
fn dns_config_yaml(upstream_port: u16) -> String {
    format!(
        "dns:\n  upstreams: [\"127.0.0.1:{upstream_port}\"]\n  minTtlSeconds: 1\n  \
         maxTtlSeconds: 60\n  timeoutMs: 2000\naudit:\n  eventsPerSecond: 0\n"
    )
}

/// Waits until `log` has not grown for [`QUIET`] (at most a minute).
fn wait_quiet(log: &std::path::Path) -> Result<()> {
    let size = || std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = size();
    let mut grown = Instant::now();
    while grown.elapsed() < QUIET {
        ensure!(
            Instant::now() < deadline,
            "the audit log {} still grows a minute after the flood",
            log.display()
        );
        thread::sleep(Duration::from_millis(20));
        let now = size();
        if now != last {
            last = now;
            grown = Instant::now();
        }
    }
    Ok(())
}

/// bench-flood running inside the agent for case (c).
struct Flood {
    child: Child,
}

impl Flood {
    fn start(mut cmd: Command) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start bench-flood")?;
        Ok(Self { child })
    }

    /// Waits for the flood to end; the denied connects it made a second.
    fn finish(mut self, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "bench-flood did not finish within {} s",
                timeout.as_secs()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let output = self.child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "bench-flood failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("bench-flood printed {:?}", output.stdout))?;
        let field = |name: &str| {
            report[name]
                .as_u64()
                .with_context(|| format!("bench-flood's report lacks {name}: {report}"))
        };
        ensure!(
            field("other")? == 0,
            "connects to {FLOOD_TARGET} were not all denied with EPERM: {report}"
        );
        Ok(field("denied")? as f64 / (field("elapsed_ns")?.max(1) as f64 / 1e9))
    }
}

/// dnsmasq on 127.0.0.1, answering only from its `--address` entries and
/// never forwarding anywhere; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(addresses: &[(&str, &str)]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port on 127.0.0.1")?
            .port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file",
            "--local-ttl=60",
        ])
        .arg(format!("--port={port}"));
        for (name, addr) in addresses {
            cmd.arg(format!("--address=/{name}/{addr}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq (Debian dnsmasq-base; cargo xtask setup installs it)")?;
        let mut dnsmasq = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = dnsmasq.child.try_wait()? {
                bail!("dnsmasq exited ({status}) before it listened on port {port}");
            }
            ensure!(
                Instant::now() < deadline,
                "dnsmasq did not listen on 127.0.0.1:{port} within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(dnsmasq)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_each_case_with_its_own_rounds_baseline() {
        let t = |median, p99| Timing { median, p99 };
        let rounds = vec![
            vec![
                (DnsCase::Direct, t(100, 200)),
                (DnsCase::Proxied, t(150, 400)),
            ],
            vec![
                (DnsCase::Proxied, t(300, 800)),
                (DnsCase::Direct, t(200, 400)),
            ],
            vec![(DnsCase::Direct, t(100, 200))],
        ];
        let proxied = pair(&rounds, DnsCase::Proxied, DnsCase::Direct).unwrap();
        assert_eq!(proxied.ratio, 1.5);
        assert_eq!(proxied.cost, 75.0);
        assert_eq!(proxied.p99_cost, 300.0);
        assert_eq!(proxied.median, 225.0);
        let direct = pair(&rounds, DnsCase::Direct, DnsCase::Direct).unwrap();
        assert_eq!(direct.ratio, 1.0);
        assert_eq!(direct.median, 100.0);
    }

    #[test]
    fn dns_policy_and_config_compile_to_what_the_daemon_reads() {
        let policy = dns_policy_yaml();
        assert!(
            policy.contains("    allow:\n      - domain: allowed.test\n        ports: [443]\n")
        );
        assert_eq!(
            dns_config_yaml(5353),
            "dns:\n  upstreams: [\"127.0.0.1:5353\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: 60\n  timeoutMs: 2000\naudit:\n  eventsPerSecond: 0\n"
        );
    }
}

//! `cargo xtask bench dns`: what the DNS proxy adds to a query, against
//! asking the DNS server directly.

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

/// The name every measured query asks for, and what dnsmasq answers.
const DNS_NAME: &str = "allowed.test";
const DNS_ANSWER: &str = "127.0.0.2";
/// A name dnsmasq answers but the agent's policy does not allow: the proxy
/// must refuse it, which proves the queries go through the proxy.
const DNS_REFUSED_NAME: &str = "blocked.test";
/// Where the agent sends its queries: the kernel sends an agent's port-53
/// traffic to its proxy whatever the address.
const DNS_AGENT_SERVER: &str = "127.0.0.1:53";
/// `REFUSED`.
const RCODE_REFUSED: u8 = 5;

/// One measured configuration of the dns benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsCase {
    /// (a) straight to dnsmasq, from a process in no agent.
    Direct,
    /// (b) from inside an agent, through the kernel redirect and the proxy.
    Proxied,
}

impl DnsCase {
    const ALL: [DnsCase; 2] = [DnsCase::Direct, DnsCase::Proxied];

    fn tag(self) -> &'static str {
        match self {
            DnsCase::Direct => "(a)",
            DnsCase::Proxied => "(b)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            DnsCase::Direct => "direct to dnsmasq, in no agent",
            DnsCase::Proxied => "in an agent, through Baton's DNS proxy",
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
        refused == format!("rcode={RCODE_REFUSED}"),
        "inside the agent, {DNS_REFUSED_NAME} gave {refused:?}, not REFUSED: the queries do not \
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
                DnsCase::Proxied => daemon.exec_command(
                    &baton,
                    &client,
                    &[DNS_AGENT_SERVER.into(), iterations.clone(), DNS_NAME.into()],
                ),
            };
            let (timing, _) = parse_timing("bench-dns", &run_client(&mut cmd, timeout)?)?;
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

    print!("{}", dns_report(&rounds, params));
    println!(
        "bench: done in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dns_report(rounds: &[Vec<(DnsCase, Timing)>], params: &Params) -> String {
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
    }
    let _ = writeln!(out, "baton: {}", params.baton().display());
    out
}

fn dns_policy_yaml() -> String {
    format!(
        "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {AGENT}\n\
         spec:\n  selector:\n    agent: {AGENT}\n  egress:\n    default: deny\n    allow:\n\
         \x20     - domain: {DNS_NAME}\n        ports: [443]\n        protocol: tcp\n"
    )
}

fn dns_config_yaml(upstream_port: u16) -> String {
    format!(
        "dns:\n  upstreams: [\"127.0.0.1:{upstream_port}\"]\n  minTtlSeconds: 1\n  \
         maxTtlSeconds: 60\n  timeoutMs: 2000\n"
    )
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
            "dns:\n  upstreams: [\"127.0.0.1:5353\"]\n  minTtlSeconds: 1\n  maxTtlSeconds: 60\n  timeoutMs: 2000\n"
        );
    }
}

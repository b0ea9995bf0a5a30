//! The DNS proxy that enforces an agent's domain allowlist.
//!
//! The kernel redirects an agent's port-53 traffic, UDP and TCP, to a socket
//! pair owned by the daemon: one UDP socket and one TCP listener per agent, so
//! the socket a query arrives on says which agent asked. For each query the
//! proxy:
//!
//! 1. refuses a name that no rule of the agent allows — `NXDOMAIN`, with an
//!    Extended DNS Error saying why when the client uses EDNS — and reports
//!    it through [`Learner::refused`];
//! 2. forwards an allowed query to the first upstream resolver that answers
//!    (UDP, then TCP if the UDP answer is truncated; TCP clients are forwarded
//!    over TCP);
//! 3. collects every A/AAAA address of the answer that belongs to the queried
//!    name, directly or through its CNAME chain, and hands them to
//!    [`Learner::learn`], which allows them in the kernel, **before** the
//!    answer is sent. If that fails the client gets `SERVFAIL`: an answer the
//!    agent could not use would only turn into a confusing `EPERM` later.
//!
//! Record TTLs in the answer are capped at [`ProxyConfig::max_ttl`], the
//! longest time the kernel keeps a learned address, so that a client never
//! caches an address longer than it may connect to it.

use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    ProtoError,
    op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType, rdata::opt::EdnsOption},
    serialize::binary::{BinDecodable, BinDecoder, DecodeError},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Mutex, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, warn};

use super::client::SockDiag;
use crate::{
    ids::{AgentId, RuleId},
    policy::domain::AgentNames,
};

/// Queries one UDP socket handles at once; beyond that, queries are dropped
/// and the client retries. Bounds the sockets and tasks one agent can cost.
const MAX_UDP_IN_FLIGHT: usize = 256;
/// TCP connections one listener serves at once; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Queries in flight on one TCP connection (RFC 7766 pipelining).
const MAX_TCP_PIPELINE: usize = 16;
/// A TCP connection with no new query for this long is closed (RFC 7766
/// section 6.2.3 suggests seconds, not minutes).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The size limit of a UDP answer to a client that does not use EDNS
/// (RFC 1035 section 4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// The UDP payload size the proxy advertises in its own replies (the 2020 DNS
/// flag day value, which avoids IP fragmentation).
const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// Back-off after a socket error, so a persistent error cannot spin a core.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Answers one agent's cache keeps, and their bytes (on the wire). When either bound would be passed, the expired answers go, and if
/// that is not enough, all of them: a flood of distinct names or of large
/// answers (from a zone the agent controls) costs the agent its cache,
/// never the daemon memory.
pub const MAX_CACHED_ANSWERS: usize = 1024;
/// See [`MAX_CACHED_ANSWERS`].
pub const MAX_CACHED_BYTES: usize = 1024 * 1024;

/// Errors of the DNS proxy and its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver configuration could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A `nameserver` line does not hold an IP address.
    #[error("{}:{line}: invalid nameserver address {value:?}", path.display())]
    BadNameserver {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The text after `nameserver`.
        value: String,
    },
    /// The resolver configuration names no upstream resolver.
    #[error("{}: no nameserver line; the DNS proxy needs an upstream resolver", path.display())]
    NoNameservers {
        /// The file.
        path: PathBuf,
    },
    /// [`ProxyConfig::upstreams`] is empty.
    #[error("no upstream DNS resolver is configured")]
    NoUpstreams,
    /// Talking to an upstream resolver failed.
    #[error("upstream DNS resolver {upstream}: {source}")]
    UpstreamIo {
        /// The resolver.
        upstream: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// An upstream resolver did not answer in time.
    #[error("upstream DNS resolver {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// The resolver.
        upstream: SocketAddr,
        /// The time it had.
        timeout: Duration,
    },
    /// An upstream resolver's reply could not be decoded.
    #[error("upstream DNS resolver {upstream} sent a malformed reply: {source}")]
    UpstreamMalformed {
        /// The resolver.
        upstream: SocketAddr,
        /// Why it could not be decoded.
        source: DecodeError,
    },
    /// An upstream resolver's reply is not the answer to the query sent.
    #[error(
        "upstream DNS resolver {upstream} sent a reply that does not match the query: {reason}"
    )]
    UpstreamMismatch {
        /// The resolver.
        upstream: SocketAddr,
        /// What differs.
        reason: &'static str,
    },
    /// A message could not be encoded.
    #[error("cannot encode a DNS message: {0}")]
    Encode(#[from] ProtoError),
}

/// An address from an allowed answer, to be allowed in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedAddress {
    /// The address.
    pub addr: IpAddr,
    /// How long to allow it: the record's TTL clamped to
    /// [`ProxyConfig::min_ttl`]..=[`ProxyConfig::max_ttl`].
    pub ttl: Duration,
}

/// Why the proxy refuses a name its rules allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// A process of the agent opened one of its secrets. Its egress is
    /// narrowed to `egress.afterSecret`, which names no domain, and a query
    /// forwarded upstream is itself data leaving the host (in its name).
    Secret,
    /// A breaker (or an operator) quarantined the agent.
    Quarantine,
}

/// What the proxy tells the rest of the daemon.
pub trait Learner: Send + Sync + 'static {
    /// Called with the addresses of an allowed answer before the answer is
    /// returned; not called when the answer holds no address. `name` is the
    /// queried name, lower-case without the trailing dot. An `Err` (a message
    /// for the log) makes the client get `SERVFAIL` instead of the answer.
    ///
    /// Runs on the async runtime: it must not block for long.
    fn learn(
        &self,
        agent_id: AgentId,
        rule_id: RuleId,
        name: &str,
        addrs: &[LearnedAddress],
    ) -> Result<(), String>;

    /// Whether the agent is held right now, asked for every query its
    /// rules allow, before the cache or an upstream sees it: a held agent's
    /// names are refused like names no rule allows.
    fn held(&self, agent_id: AgentId) -> Option<Hold>;

    /// Called when a query is refused, because no rule allows `name`
    /// (lower-case, without the trailing dot) or because the agent is
    /// `held`. `query_type` is the record type as DNS spells it, e.g. `A`,
    /// `AAAA`, `MX`. `socket_cookie` is the cookie of the socket that sent
    /// the query, when the kernel could say.
    fn refused(
        &self,
        agent_id: AgentId,
        name: &str,
        query_type: &str,
        socket_cookie: Option<u64>,
        held: Option<Hold>,
    );
}

/// How the proxy forwards queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Upstream resolvers, tried in order until one answers.
    pub upstreams: Vec<SocketAddr>,
    /// The shortest time a learned address is allowed, whatever its TTL:
    /// long enough for the client to connect after resolving.
    pub min_ttl: Duration,
    /// The longest time a learned address is allowed; answer TTLs are capped
    /// to it. If it is below `min_ttl`, it wins.
    pub max_ttl: Duration,
    /// How long each upstream has to answer one query (per transport
    /// attempt).
    pub timeout: Duration,
}

/// Reads the upstream resolvers from a `resolv.conf` file: every
/// `nameserver` line, port 53.
///
/// IPv6 link-local addresses may carry a zone (`fe80::1%eth0` or `%2`).
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
        path: path.to_owned(),
        source,
    })?;
    let mut upstreams = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let value = words.next().unwrap_or("");
        let addr = parse_nameserver(value).ok_or_else(|| DnsError::BadNameserver {
            path: path.to_owned(),
            line: index + 1,
            value: value.to_owned(),
        })?;
        upstreams.push(addr);
    }
    if upstreams.is_empty() {
        return Err(DnsError::NoNameservers {
            path: path.to_owned(),
        });
    }
    Ok(upstreams)
}

fn parse_nameserver(value: &str) -> Option<SocketAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, zone) = value.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    let scope = match zone.parse::<u32>() {
        Ok(index) => index,
        Err(_) => interface_index(zone)?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
}

fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name (lower-case, without the trailing dot) and record type (`A`,
/// `AAAA`, ...) of the single question of a DNS message, or `None` if the
/// message cannot be decoded or does not hold exactly one question.
pub fn query_name_and_type(bytes: &[u8]) -> Option<(String, String)> {
    let message = Message::from_vec(bytes).ok()?;
    match message.queries.as_slice() {
        [query] => Some((presentation_name(&query.name), query.query_type.to_string())),
        _ => None,
    }
}

/// Lower-case ASCII presentation form without the trailing dot. Bytes that are
/// not plain host name characters are escaped (`\.`, `\032`), so such a name
/// matches no [`DomainPattern`].
fn presentation_name(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// Serves one agent's UDP socket until the returned future is dropped.
///
/// Each query is answered by its own task, so a slow upstream never holds up
/// the socket; dropping the future also cancels the queries in flight.
pub async fn serve_udp(
    socket: UdpSocket,
    names: Arc<RwLock<AgentNames>>,
    cache: Arc<AnswerCache>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
    diag: Option<Arc<SockDiag>>,
) {
    let local = socket.local_addr().ok();
    let socket = Arc::new(socket);
    let proxy = Arc::new(Proxy {
        names,
        config,
        learner,
        diag,
        cache,
    });
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    // Large enough for any datagram, so a query is never silently cut short.
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        warn!(%error, "DNS proxy: receiving on the UDP socket failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    debug!(%peer, "DNS proxy: too many queries in flight, dropping one");
                    continue;
                };
                let client = local.map(|local| Client { peer, local });
                let step = proxy.answer_here(&buf[..len], Transport::Udp, client);
                let socket = socket.clone();
                let proxy = proxy.clone();
                match step {
                    Step::Reply(None) => {}
                    Step::Reply(Some(reply)) => match socket.try_send_to(&reply, peer) {
                        Ok(_) => {}
                        // A full send buffer: the reply waits in a task
                        // instead of holding up every other query.
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            tasks.spawn(async move {
                                let _permit = permit;
                                if let Err(error) = socket.send_to(&reply, peer).await {
                                    debug!(%peer, %error, "DNS proxy: cannot send the reply");
                                }
                            });
                        }
                        Err(error) => debug!(%peer, %error, "DNS proxy: cannot send the reply"),
                    },
                    Step::Forward(pending) => {
                        tasks.spawn(async move {
                            let _permit = permit;
                            if let Some(reply) = proxy.forward(pending).await
                                && let Err(error) = socket.send_to(&reply, peer).await
                            {
                                debug!(%peer, %error, "DNS proxy: cannot send the reply");
                            }
                        });
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
        }
    }
}

/// Serves one agent's TCP listener until the returned future is dropped.
///
/// DNS over TCP: each message has a 2-byte length prefix, and a connection
/// may carry several queries, answered as they complete (RFC 7766).
pub async fn serve_tcp(
    listener: TcpListener,
    names: Arc<RwLock<AgentNames>>,
    cache: Arc<AnswerCache>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
    diag: Option<Arc<SockDiag>>,
) {
    let proxy = Arc::new(Proxy {
        names,
        config,
        learner,
        diag,
        cache,
    });
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "DNS proxy: accepting a TCP connection failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    debug!(%peer, "DNS proxy: too many TCP connections, closing one");
                    continue;
                };
                let proxy = proxy.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    proxy.serve_connection(stream).await;
                });
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
        }
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        warn!(%error, "DNS proxy: a query task panicked");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

struct Proxy {
    names: Arc<RwLock<AgentNames>>,
    config: Arc<ProxyConfig>,
    learner: Arc<dyn Learner>,
    diag: Option<Arc<SockDiag>>,
    cache: Arc<AnswerCache>,
}

/// What makes two questions the same answer: the name (lower-case), type
/// and class, and the flags that change what a resolver returns. Whether
/// the question carried EDNS is one of them: an answer to a question
/// without it must carry no OPT record (RFC 6891 section 7).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    query_type: RecordType,
    query_class: DNSClass,
    recursion_desired: bool,
    checking_disabled: bool,
    edns: bool,
    dnssec_ok: bool,
}

impl CacheKey {
    fn of(query: &Message, question: &hickory_proto::op::Query, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            query_type: question.query_type,
            query_class: question.query_class,
            recursion_desired: query.metadata.recursion_desired,
            checking_disabled: query.metadata.checking_disabled,
            edns: query.edns.is_some(),
            dnssec_ok: query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        }
    }
}

struct CachedAnswer {
    response: Message,
    stored: Instant,
    /// The shortest TTL of its records.
    lifetime: Duration,
    /// Its size on the wire, as the proxy sends it.
    bytes: usize,
}

/// Positive answers an agent's proxies got from upstream, until their
/// shortest TTL runs out. Agents resolve the same few names over and over
/// (their model's API, a package index); a hit saves the round trip to the
/// upstream, not the policy decision or the learning step, which run for
/// every query as for a fresh answer. Each agent has a cache of its own,
/// shared by its proxies (UDP and TCP, every network namespace), so an
/// agent cannot tell from the timing what another resolved.
#[derive(Default)]
pub struct AnswerCache {
    entries: StdMutex<CachedAnswers>,
}

#[derive(Default)]
struct CachedAnswers {
    by_question: HashMap<CacheKey, CachedAnswer>,
    bytes: usize,
}

impl CachedAnswers {
    fn drop_expired(&mut self, now: Instant) {
        self.by_question
            .retain(|_, cached| now.saturating_duration_since(cached.stored) < cached.lifetime);
        self.bytes = self.by_question.values().map(|cached| cached.bytes).sum();
    }

    fn full_for(&self, bytes: usize) -> bool {
        self.by_question.len() >= MAX_CACHED_ANSWERS || self.bytes + bytes > MAX_CACHED_BYTES
    }
}

impl AnswerCache {
    /// The cached answer to `key`, its TTLs lowered by its age.
    fn get(&self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.by_question.get(key)?;
        let age = now.saturating_duration_since(cached.stored);
        if age >= cached.lifetime {
            return None;
        }
        let mut response = cached.response.clone();
        drop(entries);
        let elapsed = secs_u32(age);
        for record in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(elapsed);
        }
        Some(response)
    }

    /// Keeps `response` (`bytes` long on the wire) if it is a positive
    /// answer that may be kept.
    fn insert(&self, key: CacheKey, response: &Message, bytes: usize, now: Instant) {
        if response.metadata.response_code != ResponseCode::NoError
            || response.metadata.truncation
            || response.answers.is_empty()
            || bytes > MAX_CACHED_BYTES
        {
            return;
        }
        let Some(shortest) = response.answers.iter().map(|record| record.ttl).min() else {
            return;
        };
        if shortest == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(replaced) = entries.by_question.remove(&key) {
            entries.bytes -= replaced.bytes;
        }
        if entries.full_for(bytes) {
            entries.drop_expired(now);
            if entries.full_for(bytes) {
                *entries = CachedAnswers::default();
            }
        }
        entries.bytes += bytes;
        entries.by_question.insert(
            key,
            CachedAnswer {
                response: response.clone(),
                stored: now,
                lifetime: Duration::from_secs(u64::from(shortest)),
                bytes,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        (entries.by_question.len(), entries.bytes)
    }
}

/// Both ends of a query's path to the proxy.
#[derive(Clone, Copy, Debug)]
struct Client {
    /// The client socket's address.
    peer: SocketAddr,
    /// The proxy socket's address.
    local: SocketAddr,
}

impl Proxy {
    async fn serve_connection(self: Arc<Self>, stream: TcpStream) {
        let client = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(peer), Ok(local)) => Some(Client { peer, local }),
            _ => None,
        };
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(Mutex::new(writer));
        let mut queries = JoinSet::new();
        loop {
            let len = match timeout(TCP_IDLE_TIMEOUT, reader.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                // Closed, broken or idle: stop reading, finish what was asked.
                _ => break,
            };
            let mut query = vec![0u8; len];
            match timeout(self.config.timeout, reader.read_exact(&mut query)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            if queries.len() >= MAX_TCP_PIPELINE
                && let Some(joined) = queries.join_next().await
            {
                log_join(joined);
            }
            let proxy = self.clone();
            let writer = writer.clone();
            queries.spawn(async move {
                let Some(reply) = proxy.handle(&query, Transport::Tcp, client).await else {
                    return;
                };
                // `handle` keeps TCP replies within u16::MAX.
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                let mut framed = Vec::with_capacity(reply.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&reply);
                if let Err(error) = writer.lock().await.write_all(&framed).await {
                    debug!(%error, "DNS proxy: cannot send the reply over TCP");
                }
            });
        }
        while let Some(joined) = queries.join_next().await {
            log_join(joined);
        }
    }

    /// The reply to one query, or `None` when nothing should be sent.
    async fn handle(
        &self,
        bytes: &[u8],
        transport: Transport,
        client: Option<Client>,
    ) -> Option<Vec<u8>> {
        match self.answer_here(bytes, transport, client) {
            Step::Reply(reply) => reply,
            Step::Forward(pending) => self.forward(pending).await,
        }
    }

    /// Everything that needs no upstream: the policy decision, refusals
    /// and answers from the cache. Synchronous, so the UDP loop answers
    /// these itself, without a task and the thread wake-up one costs.
    fn answer_here(&self, bytes: &[u8], transport: Transport, client: Option<Client>) -> Step {
        let reply = |message: &Message| Step::Reply(encode(message));
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(error) => return Step::Reply(malformed_reply(bytes, &error)),
        };
        // Never answer an answer: that could make two servers loop.
        if query.metadata.message_type != MessageType::Query {
            return Step::Reply(None);
        }
        if query.metadata.op_code != OpCode::Query {
            return reply(&error_reply(&query, ResponseCode::NotImp));
        }
        let [question] = query.queries.as_slice() else {
            return reply(&error_reply(&query, ResponseCode::FormErr));
        };
        let name = presentation_name(&question.name);
        let query_type = question.query_type;

        let (agent_id, agent, rule_id, audit) = {
            let names = self.names.read();
            // A writer panicked half-way through a policy swap: the rules may
            // be anything, so allow nothing until the next good swap.
            let poisoned = names.is_err();
            let names = names.unwrap_or_else(PoisonError::into_inner);
            let rule_id = if poisoned {
                warn!(agent = %names.agent, "DNS proxy: name rules are poisoned, refusing");
                None
            } else {
                names.decide(&name).map(|rule| rule.rule_id)
            };
            (
                names.agent_id,
                names.agent.clone(),
                rule_id,
                names.audit && !poisoned,
            )
        };
        // A held agent's allowed names go no further than its unlisted
        // ones: neither the cache nor an upstream sees them.
        let held = rule_id.and_then(|_| self.learner.held(agent_id));
        let rule_id = match (rule_id, held) {
            (Some(rule_id), None) => rule_id,
            (rule_id, held) => {
                let cookie = match (&self.diag, client) {
                    (Some(diag), Some(client)) => {
                        diag.cookie(client.peer, client.local, transport == Transport::Udp)
                    }
                    _ => None,
                };
                self.learner
                    .refused(agent_id, &name, &query_type.to_string(), cookie, held);
                if !audit {
                    debug!(%agent, %name, %query_type, ?held, "DNS proxy: refused");
                    return reply(&refusal_reply(&query, &agent, &name, held));
                }
                rule_id.unwrap_or(RuleId::NONE)
            }
        };
        // A zone transfer is a stream of messages, not one answer; agents
        // have no business asking for one.
        if matches!(query_type, RecordType::AXFR | RecordType::IXFR) {
            return reply(&error_reply(&query, ResponseCode::NotImp));
        }

        let key = CacheKey::of(&query, question, &name);
        let pending = Pending {
            query,
            transport,
            key,
            agent_id,
            agent,
            rule_id,
            name,
        };
        match self.cache.get(&pending.key, Instant::now()) {
            Some(mut response) => {
                // The asker's own spelling of the name (resolvers vary
                // its case against forgery, and check it comes back).
                response.queries = pending.query.queries.clone();
                Step::Reply(self.finish(&pending, response, true))
            }
            None => Step::Forward(Box::new(pending)),
        }
    }

    /// Asks the upstream the question [`Proxy::answer_here`] could not
    /// answer, and answers it.
    async fn forward(&self, pending: Box<Pending>) -> Option<Vec<u8>> {
        match forward(&pending.query, pending.transport, &self.config).await {
            Ok(response) => self.finish(&pending, response, false),
            Err(error) => {
                let Pending {
                    agent, name, query, ..
                } = &*pending;
                let query_type = query
                    .queries
                    .first()
                    .map_or_else(String::new, |q| q.query_type.to_string());
                warn!(%agent, %name, %query_type, %error, "DNS proxy: forwarding failed");
                encode(&error_reply(query, ResponseCode::ServFail))
            }
        }
    }

    /// Learns an allowed answer's addresses (before the client can use
    /// them), keeps a fresh answer in the cache, and encodes the reply.
    fn finish(
        &self,
        pending: &Pending,
        mut response: Message,
        from_cache: bool,
    ) -> Option<Vec<u8>> {
        let Pending {
            query,
            transport,
            key,
            agent_id,
            agent,
            rule_id,
            name,
        } = pending;
        let received = Instant::now();
        let question = query.queries.first()?;
        let addrs = answer_addresses(&response, &question.name, &self.config);
        let max_ttl = secs_u32(self.config.max_ttl);
        for record in &mut response.answers {
            record.ttl = record.ttl.min(max_ttl);
        }
        response.metadata.id = query.metadata.id;
        let Some(reply) = encode(&response) else {
            return encode(&error_reply(query, ResponseCode::ServFail));
        };

        let limit = match transport {
            Transport::Udp => udp_limit(query),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if reply.len() > limit {
            // The client asks again over TCP; learn then, when it gets the
            // addresses.
            return encode(&response.truncate());
        }
        if !addrs.is_empty()
            && let Err(error) = self.learner.learn(*agent_id, *rule_id, name, &addrs)
        {
            warn!(%agent, %name, %error, "DNS proxy: cannot allow the answer's addresses");
            return encode(&error_reply(query, ResponseCode::ServFail));
        }
        if !from_cache {
            self.cache
                .insert(key.clone(), &response, reply.len(), received);
        }
        Some(reply)
    }
}

/// What [`Proxy::answer_here`] found.
enum Step {
    /// The reply (`None`: nothing is sent).
    Reply(Option<Vec<u8>>),
    /// The question goes to the upstream.
    Forward(Box<Pending>),
}

/// A question the policy allows, on its way to the upstream.
struct Pending {
    query: Message,
    transport: Transport,
    key: CacheKey,
    agent_id: AgentId,
    agent: String,
    rule_id: RuleId,
    name: String,
}

/// FORMERR when at least the header can be read, otherwise silence.
fn malformed_reply(bytes: &[u8], error: &DecodeError) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    debug!(%error, "DNS proxy: malformed query");
    let mut reply = Message::response(header.metadata.id, header.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&header.metadata);
    reply.metadata.response_code = ResponseCode::FormErr;
    encode(&reply)
}

/// An answer-less reply with the query's id and question.
fn error_reply(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&query.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.add_queries(query.queries.iter().cloned());
    // RFC 6891 section 6.1.1: a query with OPT gets a reply with OPT.
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(ADVERTISED_UDP_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

/// The Extended DNS Error option code (RFC 8914).
const EDNS_EXTENDED_ERROR: u16 = 15;
/// EDE INFO-CODE 15, "Blocked": the operator's policy blocked the name.
const EDE_BLOCKED: u16 = 15;

/// The answer to a name the agent's policy does not allow: NXDOMAIN, so
/// that stub resolvers report it as a permanent "not found" (glibc's
/// `getaddrinfo` gives `EAI_NONAME`, `getent` exits 2) instead of the
/// "temporary failure" that REFUSED or SERVFAIL turn into, and callers
/// do not retry it. A client that sent EDNS also gets an Extended DNS
/// Error (RFC 8914, "Blocked") whose text says that Baton's policy refused
/// the name. No SOA is attached, so nothing caches the refusal (RFC 2308
/// section 5): a policy that allows the name later is obeyed at once.
fn refusal_reply(query: &Message, agent: &str, name: &str, held: Option<Hold>) -> Message {
    let mut reply = error_reply(query, ResponseCode::NXDomain);
    if let Some(edns) = reply.edns.as_mut() {
        // Worded like the `spec.explain` line (`crate::explain`).
        let text = match held {
            None => format!(
                "baton: resolving {name} denied by the policy of agent {agent}; ask an operator to allow it"
            ),
            Some(Hold::Secret) => format!(
                "baton: resolving {name} denied: agent {agent} opened a secret, and resolves no name until an operator runs `baton taint clear {agent}`"
            ),
            Some(Hold::Quarantine) => format!(
                "baton: resolving {name} denied: agent {agent} is quarantined; an operator can run `baton breaker reset {agent}`"
            ),
        };
        let mut data = EDE_BLOCKED.to_be_bytes().to_vec();
        data.extend_from_slice(text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDNS_EXTENDED_ERROR, data));
    }
    reply
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            warn!(%error, "DNS proxy: cannot encode a reply");
            None
        }
    }
}

/// The largest UDP reply the client accepts.
fn udp_limit(query: &Message) -> usize {
    query.edns.as_ref().map_or(CLASSIC_UDP_LIMIT, |edns| {
        usize::from(edns.max_payload()).max(CLASSIC_UDP_LIMIT)
    })
}

fn secs_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// Sends `query` to the upstreams in order and returns the first matching
/// answer.
async fn forward(
    query: &Message,
    transport: Transport,
    config: &ProxyConfig,
) -> Result<Message, DnsError> {
    // A fresh id, so an off-path attacker cannot reuse the client's choice
    // to forge the upstream's answer.
    let mut upstream_query = query.clone();
    upstream_query.metadata.id = rand::random();
    let wire = upstream_query.to_vec()?;

    let mut last_error = DnsError::NoUpstreams;
    for &upstream in &config.upstreams {
        let attempt = match transport {
            Transport::Udp => match exchange_udp(upstream, &wire, &upstream_query, config).await {
                Ok(response) if response.metadata.truncation => {
                    exchange_tcp(upstream, &wire, &upstream_query, config).await
                }
                other => other,
            },
            Transport::Tcp => exchange_tcp(upstream, &wire, &upstream_query, config).await,
        };
        match attempt {
            Ok(response) => return Ok(response),
            Err(error) => {
                debug!(%error, "DNS proxy: upstream failed, trying the next one");
                last_error = error;
            }
        }
    }
    Err(last_error)
}

async fn exchange_udp(
    upstream: SocketAddr,
    wire: &[u8],
    query: &Message,
    config: &ProxyConfig,
) -> Result<Message, DnsError> {
    let io_error = |source| DnsError::UpstreamIo { upstream, source };
    let exchange = async {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io_error)?;
        // Connected, so the kernel drops datagrams from anyone but the
        // upstream and reports an unreachable port at once.
        socket.connect(upstream).await.map_err(io_error)?;
        socket.send(wire).await.map_err(io_error)?;
        // As large as the reply the query allows (its EDNS payload size):
        // a larger datagram would be a misbehaving server's, and is cut
        // short, fails to parse and is waited past like any forgery. Not
        // the 64 KiB any datagram could take, zeroed for every query.
        let mut buf = vec![0u8; udp_limit(query) + 1];
        loop {
            let len = socket.recv(&mut buf).await.map_err(io_error)?;
            // Anything that is not the answer to this query may be a forgery
            // or a late answer to an earlier one: keep waiting for the real
            // one until the timeout.
            let Ok(response) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            if response.metadata.id != query.metadata.id {
                continue;
            }
            check_response(query, &response)
                .map_err(|reason| DnsError::UpstreamMismatch { upstream, reason })?;
            return Ok(response);
        }
    };
    timeout(config.timeout, exchange)
        .await
        .map_err(|_| DnsError::UpstreamTimeout {
            upstream,
            timeout: config.timeout,
        })?
}

async fn exchange_tcp(
    upstream: SocketAddr,
    wire: &[u8],
    query: &Message,
    config: &ProxyConfig,
) -> Result<Message, DnsError> {
    let io_error = |source| DnsError::UpstreamIo { upstream, source };
    let exchange = async {
        let len = u16::try_from(wire.len()).map_err(|_| {
            io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "query too long for DNS over TCP",
            ))
        })?;
        let mut stream = TcpStream::connect(upstream).await.map_err(io_error)?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await.map_err(io_error)?;
        let len = stream.read_u16().await.map_err(io_error)?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.map_err(io_error)?;
        let response = Message::from_vec(&buf)
            .map_err(|source| DnsError::UpstreamMalformed { upstream, source })?;
        if response.metadata.id != query.metadata.id {
            return Err(DnsError::UpstreamMismatch {
                upstream,
                reason: "different id",
            });
        }
        check_response(query, &response)
            .map_err(|reason| DnsError::UpstreamMismatch { upstream, reason })?;
        Ok(response)
    };
    timeout(config.timeout, exchange)
        .await
        .map_err(|_| DnsError::UpstreamTimeout {
            upstream,
            timeout: config.timeout,
        })?
}

/// Whether `response` answers `query` (ids already compared).
fn check_response(query: &Message, response: &Message) -> Result<(), &'static str> {
    if response.metadata.message_type != MessageType::Response {
        return Err("not a response");
    }
    match response.queries.as_slice() {
        // Some servers leave the question out of an error reply.
        [] if response.metadata.response_code != ResponseCode::NoError => Ok(()),
        // Name comparison ignores case: resolvers may randomise it (0x20).
        [question] if *question == query.queries[0] => Ok(()),
        _ => Err("different question"),
    }
}

/// The A/AAAA addresses of the answer section owned by `name` or by a name
/// its CNAME chain leads to, TTLs clamped. Each address once, with its
/// longest TTL.
fn answer_addresses(response: &Message, name: &Name, config: &ProxyConfig) -> Vec<LearnedAddress> {
    let answers: Vec<_> = response
        .answers
        .iter()
        .filter(|record| record.dns_class == DNSClass::IN)
        .collect();

    // `Name` compares case-insensitively. CNAMEs may come in any order, so
    // repeat until the chain stops growing; each round adds a name or ends.
    let mut chain = vec![name.clone()];
    loop {
        let before = chain.len();
        for record in &answers {
            if let RData::CNAME(target) = &record.data
                && chain.contains(&record.name)
                && !chain.contains(&target.0)
            {
                chain.push(target.0.clone());
            }
        }
        if chain.len() == before {
            break;
        }
    }

    let mut addrs: HashMap<IpAddr, Duration> = HashMap::new();
    for record in &answers {
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if !chain.contains(&record.name) {
            continue;
        }
        // Not `Duration::clamp`: it panics when min > max.
        let ttl = Duration::from_secs(u64::from(record.ttl))
            .max(config.min_ttl)
            .min(config.max_ttl);
        let longest = addrs.entry(addr).or_insert(ttl);
        *longest = (*longest).max(ttl);
    }
    let mut addrs: Vec<_> = addrs
        .into_iter()
        .map(|(addr, ttl)| LearnedAddress { addr, ttl })
        .collect();
    // Stable order for the map writes and the logs.
    addrs.sort_by_key(|learned| learned.addr);
    addrs
}

#[cfg(test)]
mod tests {
    use crate::policy::domain::{DomainPattern, DomainRule};
    use std::{
        process::{Child, Command, Stdio},
        sync::{
            Mutex as StdMutex,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        time::Instant,
    };

    use hickory_proto::op::Query;
    use tokio::task::JoinHandle;

    use super::*;

    const DNSMASQ: &str = "/usr/sbin/dnsmasq";
    const AGENT_ID: AgentId = AgentId::from_raw(7);
    const RULE_EXACT: RuleId = RuleId::from_raw(1);
    const RULE_WILDCARD: RuleId = RuleId::from_raw(2);
    const RULE_RECORDS: RuleId = RuleId::from_raw(3);

    /// A dnsmasq on a free loopback port, killed on drop.
    struct Dnsmasq {
        child: Child,
        addr: SocketAddr,
    }

    impl Dnsmasq {
        async fn start(local_ttl: u32, extra: &[&str]) -> Self {
            let long_txt = "x".repeat(250);
            // Another test may take the port between our probe and dnsmasq's
            // bind; then dnsmasq exits and we try another port.
            for _ in 0..10 {
                let port = std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|socket| socket.local_addr())
                    .expect("probe for a free port")
                    .port();
                let mut command = Command::new(DNSMASQ);
                command
                    .args([
                        "--no-daemon",
                        "--conf-file=/dev/null",
                        "--log-facility=-",
                        "--pid-file",
                        "--user=root",
                        "--no-resolv",
                        "--no-hosts",
                        "--listen-address=127.0.0.1",
                        "--bind-interfaces",
                        "--address=/allowed.test/127.0.0.2",
                        "--address=/blocked.test/127.0.0.3",
                        "--host-record=target.cdn.test,127.0.0.4,::4",
                        "--host-record=second.cdn.test,127.0.0.5",
                        "--cname=www.allowed.test,target.cdn.test",
                        "--cname=deep.allowed.test,hop.cdn.test",
                        "--cname=hop.cdn.test,second.cdn.test",
                        "--txt-record=txt.records.test,hello",
                    ])
                    .arg(format!("--port={port}"))
                    .arg(format!("--local-ttl={local_ttl}"))
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                for _ in 0..6 {
                    command.arg(format!("--txt-record=big.records.test,{long_txt}"));
                }
                let mut child = command.spawn().expect("start dnsmasq");
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if wait_until_serving(addr, &mut child).await {
                    return Self { child, addr };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("dnsmasq did not start");
        }
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn wait_until_serving(addr: SocketAddr, child: &mut Child) -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let probe = question("allowed.test", RecordType::A).to_vec().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            let _ = socket.send_to(&probe, addr).await;
            if let Ok(Ok(_)) = timeout(Duration::from_millis(20), socket.recv_from(&mut buf)).await
            {
                return true;
            }
        }
        false
    }

    /// One `learn` call: agent id, rule id, name, addresses.
    type Learned = (AgentId, RuleId, String, Vec<LearnedAddress>);

    #[derive(Default)]
    struct Recorder {
        learned: StdMutex<Vec<Learned>>,
        refused: StdMutex<Vec<(AgentId, String, String)>>,
        /// The client socket cookie of each refusal.
        cookies: StdMutex<Vec<Option<u64>>>,
        fail: AtomicBool,
        /// The client's socket: no reply may be waiting on it when `learn`
        /// runs.
        watch: StdMutex<Option<std::net::UdpSocket>>,
        reply_before_learn: AtomicBool,
        /// What `held` answers.
        held: StdMutex<Option<Hold>>,
        /// The hold each refusal was made under.
        holds: StdMutex<Vec<Option<Hold>>>,
    }

    impl Learner for Recorder {
        fn learn(
            &self,
            agent_id: AgentId,
            rule_id: RuleId,
            name: &str,
            addrs: &[LearnedAddress],
        ) -> Result<(), String> {
            if let Some(client) = &*self.watch.lock().unwrap() {
                // Loopback delivery is synchronous: a reply sent before this
                // call would already be queued on the client's socket.
                if client.peek_from(&mut [0u8; 16]).is_ok() {
                    self.reply_before_learn.store(true, Ordering::SeqCst);
                }
            }
            self.learned
                .lock()
                .unwrap()
                .push((agent_id, rule_id, name.to_owned(), addrs.to_vec()));
            if self.fail.load(Ordering::SeqCst) {
                return Err("map full".to_owned());
            }
            Ok(())
        }

        fn held(&self, _agent_id: AgentId) -> Option<Hold> {
            *self.held.lock().unwrap()
        }

        fn refused(
            &self,
            agent_id: AgentId,
            name: &str,
            query_type: &str,
            cookie: Option<u64>,
            held: Option<Hold>,
        ) {
            self.cookies.lock().unwrap().push(cookie);
            self.holds.lock().unwrap().push(held);
            self.refused
                .lock()
                .unwrap()
                .push((agent_id, name.to_owned(), query_type.to_owned()));
        }
    }

    impl Recorder {
        fn learned(&self) -> Vec<Learned> {
            self.learned.lock().unwrap().clone()
        }
        fn refused(&self) -> Vec<(AgentId, String, String)> {
            self.refused.lock().unwrap().clone()
        }
    }

    fn rule(pattern: &str, rule_id: RuleId) -> DomainRule {
        DomainRule {
            pattern: DomainPattern::parse(pattern).unwrap(),
            rule_id,
        }
    }

    fn test_names() -> AgentNames {
        AgentNames {
            agent_id: AGENT_ID,
            agent: "demo".to_owned(),
            rules: vec![
                rule("allowed.test", RULE_EXACT),
                rule("*.allowed.test", RULE_WILDCARD),
                rule("*.records.test", RULE_RECORDS),
            ],
            audit: false,
            grants: Vec::new(),
        }
    }

    /// A running proxy: UDP and TCP on loopback, stopped on drop.
    struct Proxy {
        udp: SocketAddr,
        tcp: SocketAddr,
        names: Arc<RwLock<AgentNames>>,
        recorder: Arc<Recorder>,
        tasks: Vec<JoinHandle<()>>,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    fn config(upstreams: Vec<SocketAddr>) -> ProxyConfig {
        ProxyConfig {
            upstreams,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            timeout: Duration::from_millis(500),
        }
    }

    async fn start_proxy(config: ProxyConfig) -> Proxy {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let names = Arc::new(RwLock::new(test_names()));
        let recorder = Arc::new(Recorder::default());
        let config = Arc::new(config);
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let learner: Arc<dyn Learner> = recorder.clone();
        let diag = Arc::new(SockDiag::open().unwrap());
        let cache = Arc::new(AnswerCache::default());
        let tasks = vec![
            tokio::spawn(serve_udp(
                udp,
                names.clone(),
                cache.clone(),
                config.clone(),
                learner.clone(),
                Some(diag.clone()),
            )),
            tokio::spawn(serve_tcp(
                tcp,
                names.clone(),
                cache,
                config,
                learner,
                Some(diag),
            )),
        ];
        Proxy {
            udp: udp_addr,
            tcp: tcp_addr,
            names,
            recorder,
            tasks,
        }
    }

    fn question(name: &str, query_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), query_type));
        message
    }

    fn with_edns(mut message: Message, payload: u16) -> Message {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
        message
    }

    async fn ask_udp_on(socket: &UdpSocket, server: SocketAddr, query: &Message) -> Message {
        socket
            .send_to(&query.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65535];
        let (len, from) = timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert_eq!(from, server);
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        reply
    }

    async fn ask_udp(server: SocketAddr, query: &Message) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        ask_udp_on(&socket, server, query).await
    }

    /// Sends all queries on one connection before reading any reply.
    async fn ask_tcp(server: SocketAddr, queries: &[Message]) -> Vec<Message> {
        let mut stream = TcpStream::connect(server).await.unwrap();
        for query in queries {
            let wire = query.to_vec().unwrap();
            stream
                .write_all(&u16::try_from(wire.len()).unwrap().to_be_bytes())
                .await
                .unwrap();
            stream.write_all(&wire).await.unwrap();
        }
        let mut replies = Vec::new();
        for _ in queries {
            let read = async {
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                Message::from_vec(&buf).unwrap()
            };
            replies.push(
                timeout(Duration::from_secs(3), read)
                    .await
                    .expect("no reply"),
            );
        }
        replies
    }

    fn addresses(reply: &Message) -> Vec<IpAddr> {
        reply
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect()
    }

    fn learned(addr: &str, secs: u64) -> LearnedAddress {
        LearnedAddress {
            addr: addr.parse().unwrap(),
            ttl: Duration::from_secs(secs),
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let names = AgentNames {
            agent_id: AgentId::from_raw(1),
            agent: "a".to_owned(),
            rules: vec![
                rule("*.example.com", RuleId::from_raw(10)),
                rule("*.api.example.com", RuleId::from_raw(11)),
                rule("api.example.com", RuleId::from_raw(12)),
                rule("v1.api.example.com", RuleId::from_raw(13)),
                rule("*.example.com", RuleId::from_raw(14)),
            ],
            audit: false,
            grants: Vec::new(),
        };
        let decide = |name| names.decide(name).map(|rule| rule.rule_id);
        assert_eq!(
            decide("www.example.com"),
            Some(RuleId::from_raw(10)),
            "first of equals wins"
        );
        assert_eq!(
            decide("api.example.com"),
            Some(RuleId::from_raw(12)),
            "exact beats wildcard"
        );
        assert_eq!(
            decide("v2.api.example.com"),
            Some(RuleId::from_raw(11)),
            "longer suffix wins"
        );
        assert_eq!(decide("V1.API.example.com."), Some(RuleId::from_raw(13)));
        assert_eq!(decide("x.v1.api.example.com"), Some(RuleId::from_raw(11)));
        assert_eq!(decide("example.com"), None);
        assert_eq!(decide("example.org"), None);
    }

    #[test]
    fn resolv_conf_nameservers() {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "baton-resolv-{}-{}.conf",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let read = |text: &str| {
            fs::write(&path, text).unwrap();
            let result = upstreams_from_resolv_conf(&path);
            fs::remove_file(&path).unwrap();
            result
        };
        let upstreams = read(
            "# comment\nsearch example.com\nnameserver 127.0.0.53\n\
             nameserver ::1 # trailing\n;nameserver 10.0.0.1\nnameserver fe80::1%1\n",
        )
        .unwrap();
        assert_eq!(
            upstreams,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 1)),
            ]
        );
        let error = read("nameserver 127.0.0.1\nnameserver dns.example\n").unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(":2: invalid nameserver address \"dns.example\""),
            "{error}"
        );
        assert!(matches!(
            read("search example.com\n"),
            Err(DnsError::NoNameservers { .. })
        ));
        assert!(matches!(
            upstreams_from_resolv_conf(Path::new("/nonexistent/resolv.conf")),
            Err(DnsError::ReadResolvConf { .. })
        ));
    }

    #[test]
    fn query_name_and_type_reads_the_question() {
        let wire = question("WWW.Example.com.", RecordType::AAAA)
            .to_vec()
            .unwrap();
        assert_eq!(
            query_name_and_type(&wire),
            Some(("www.example.com".to_owned(), "AAAA".to_owned()))
        );
        assert_eq!(query_name_and_type(&wire[..5]), None);
    }

    #[tokio::test]
    async fn allowed_answer_is_learned_before_the_client_sees_it() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;

        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_nonblocking(true).unwrap();
        *proxy.recorder.watch.lock().unwrap() = Some(client.try_clone().unwrap());
        let client = UdpSocket::from_std(client).unwrap();

        let reply = ask_udp_on(
            &client,
            proxy.udp,
            &question("Allowed.Test.", RecordType::A),
        )
        .await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), ["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(
            proxy.recorder.learned(),
            [(
                AGENT_ID,
                RULE_EXACT,
                "allowed.test".to_owned(),
                vec![learned("127.0.0.2", 600)]
            )]
        );
        assert!(!proxy.recorder.reply_before_learn.load(Ordering::SeqCst));
        assert!(proxy.recorder.refused().is_empty());
    }

    #[tokio::test]
    async fn cname_chain_is_learned() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;

        let reply = ask_udp(proxy.udp, &question("www.allowed.test.", RecordType::A)).await;
        assert_eq!(addresses(&reply), ["127.0.0.4".parse::<IpAddr>().unwrap()]);
        let reply = ask_udp(proxy.udp, &question("www.allowed.test.", RecordType::AAAA)).await;
        assert_eq!(addresses(&reply), ["::4".parse::<IpAddr>().unwrap()]);
        let reply = ask_udp(proxy.udp, &question("deep.allowed.test.", RecordType::A)).await;
        assert_eq!(addresses(&reply), ["127.0.0.5".parse::<IpAddr>().unwrap()]);

        assert_eq!(
            proxy.recorder.learned(),
            [
                (
                    AGENT_ID,
                    RULE_WILDCARD,
                    "www.allowed.test".to_owned(),
                    vec![learned("127.0.0.4", 600)]
                ),
                (
                    AGENT_ID,
                    RULE_WILDCARD,
                    "www.allowed.test".to_owned(),
                    vec![learned("::4", 600)]
                ),
                (
                    AGENT_ID,
                    RULE_WILDCARD,
                    "deep.allowed.test".to_owned(),
                    vec![learned("127.0.0.5", 600)]
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_held_agent_resolves_no_name_and_nothing_goes_upstream() {
        // An upstream that never answers and keeps what it is sent.
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream.set_nonblocking(true).unwrap();
        let proxy = start_proxy(config(vec![upstream.local_addr().unwrap()])).await;
        for (hold, wording) in [
            (Hold::Secret, "agent demo opened a secret"),
            (Hold::Quarantine, "agent demo is quarantined"),
        ] {
            *proxy.recorder.held.lock().unwrap() = Some(hold);
            let query = with_edns(question("www.allowed.test.", RecordType::A), 1232);
            let started = Instant::now();
            let reply = ask_udp(proxy.udp, &query).await;
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
            assert!(
                started.elapsed() < Duration::from_millis(400),
                "answered without waiting for an upstream"
            );
            let edns = reply.edns.as_ref().expect("EDNS in, EDNS out");
            let text = edns
                .options()
                .as_ref()
                .iter()
                .find_map(|(code, option)| match option {
                    EdnsOption::Unknown(_, data) if u16::from(*code) == EDNS_EXTENDED_ERROR => {
                        Some(String::from_utf8_lossy(&data[2..]).into_owned())
                    }
                    _ => None,
                })
                .expect("an Extended DNS Error");
            assert!(text.contains(wording), "{text}");
            let replies = ask_tcp(proxy.tcp, &[question("allowed.test.", RecordType::A)]).await;
            assert_eq!(replies[0].metadata.response_code, ResponseCode::NXDomain);
        }
        assert!(
            upstream.recv(&mut [0u8; 512]).is_err(),
            "a held agent's query reached the upstream"
        );
        assert!(proxy.recorder.learned().is_empty());
        assert_eq!(proxy.recorder.refused().len(), 4);
        assert_eq!(
            *proxy.recorder.holds.lock().unwrap(),
            [
                Some(Hold::Secret),
                Some(Hold::Secret),
                Some(Hold::Quarantine),
                Some(Hold::Quarantine)
            ]
        );
        // Unheld again, names resolve as before (the upstream is silent,
        // so the proxy tries it and fails).
        *proxy.recorder.held.lock().unwrap() = None;
        let reply = ask_udp(proxy.udp, &question("allowed.test.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(upstream.recv(&mut [0u8; 512]).is_ok(), "asked upstream");
    }

    #[tokio::test]
    async fn unlisted_name_is_refused() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;

        let query = with_edns(question("blocked.test.", RecordType::AAAA), 1232);
        let reply = ask_udp(proxy.udp, &query).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert!(reply.authorities.is_empty(), "no SOA: nothing may cache it");
        assert_eq!(reply.queries, query.queries);
        let edns = reply.edns.as_ref().expect("EDNS in, EDNS out");
        let ede = edns
            .options()
            .as_ref()
            .iter()
            .find_map(|(code, option)| {
                (u16::from(*code) == EDNS_EXTENDED_ERROR).then(|| match option {
                    EdnsOption::Unknown(_, data) => data.clone(),
                    other => panic!("{other:?}"),
                })
            })
            .expect("an Extended DNS Error");
        assert_eq!(u16::from_be_bytes([ede[0], ede[1]]), EDE_BLOCKED);
        assert_eq!(
            std::str::from_utf8(&ede[2..]).unwrap(),
            "baton: resolving blocked.test denied by the policy of agent demo; ask an operator to allow it"
        );
        // Without EDNS in the query, no OPT in the reply (RFC 6891).
        let plain = ask_udp(proxy.udp, &question("blocked.test.", RecordType::A)).await;
        assert_eq!(plain.metadata.response_code, ResponseCode::NXDomain);
        assert!(plain.edns.is_none());
        // The CNAME target is allowed as part of an allowed chain, not by
        // itself.
        let reply = ask_udp(proxy.udp, &question("target.cdn.test.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

        assert_eq!(
            proxy.recorder.refused(),
            [
                (AGENT_ID, "blocked.test".to_owned(), "AAAA".to_owned()),
                (AGENT_ID, "blocked.test".to_owned(), "A".to_owned()),
                (AGENT_ID, "target.cdn.test".to_owned(), "A".to_owned()),
            ]
        );
        assert!(proxy.recorder.learned().is_empty());
    }

    /// `SO_COOKIE`: the socket's cookie, as the kernel programs see it.
    fn socket_cookie(fd: &impl std::os::fd::AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        cookie
    }

    #[tokio::test]
    async fn a_refusal_names_the_socket_that_asked() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        ask_udp_on(&udp, proxy.udp, &question("blocked.test.", RecordType::A)).await;
        let mut tcp = TcpStream::connect(proxy.tcp).await.unwrap();
        let tcp_cookie = socket_cookie(&tcp);
        let wire = question("blocked.test.", RecordType::A).to_vec().unwrap();
        tcp.write_u16(wire.len() as u16).await.unwrap();
        tcp.write_all(&wire).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut reply = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            *proxy.recorder.cookies.lock().unwrap(),
            [Some(socket_cookie(&udp)), Some(tcp_cookie)]
        );
    }

    #[tokio::test]
    async fn policy_swap_takes_effect_on_the_next_query() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        let query = question("allowed.test.", RecordType::A);
        assert_eq!(
            ask_udp(proxy.udp, &query).await.metadata.response_code,
            ResponseCode::NoError
        );
        proxy.names.write().unwrap().rules.clear();
        assert_eq!(
            ask_udp(proxy.udp, &query).await.metadata.response_code,
            ResponseCode::NXDomain
        );
    }

    #[tokio::test]
    async fn a_repeated_question_is_answered_from_the_cache_and_learned_again() {
        let mut dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        let first = ask_udp(proxy.udp, &question("allowed.test.", RecordType::A)).await;
        assert_eq!(addresses(&first), [IpAddr::from([127, 0, 0, 2])]);
        // With the upstream gone, only the cache can answer.
        let _ = dnsmasq.child.kill();
        let _ = dnsmasq.child.wait();
        let second = ask_udp(proxy.udp, &question("ALLOWED.test.", RecordType::A)).await;
        assert_eq!(second.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&second), [IpAddr::from([127, 0, 0, 2])]);
        assert_eq!(
            second.queries[0].name().to_ascii(),
            "ALLOWED.test.",
            "the asker's spelling comes back"
        );
        assert!(second.answers[0].ttl <= first.answers[0].ttl);
        // A hit opens the ports again, as a fresh answer does.
        let learned: Vec<_> = proxy
            .recorder
            .learned()
            .into_iter()
            .map(|(agent, rule, name, _)| (agent, rule, name))
            .collect();
        assert_eq!(
            learned,
            [
                (AGENT_ID, RULE_EXACT, "allowed.test".to_owned()),
                (AGENT_ID, RULE_EXACT, "allowed.test".to_owned())
            ]
        );
        // Another type of the same name is another question, and so is
        // the same one with EDNS.
        let other = ask_udp(proxy.udp, &question("allowed.test.", RecordType::AAAA)).await;
        assert_eq!(other.metadata.response_code, ResponseCode::ServFail);
        let with_edns = with_edns(question("allowed.test.", RecordType::A), 1232);
        let other = ask_udp(proxy.udp, &with_edns).await;
        assert_eq!(other.metadata.response_code, ResponseCode::ServFail);
        // The policy decides before the cache answers.
        proxy.names.write().unwrap().rules.clear();
        let refused = ask_udp(proxy.udp, &question("allowed.test.", RecordType::A)).await;
        assert_eq!(refused.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn the_cache_keeps_positive_answers_within_their_ttl_and_its_bound() {
        let cache = AnswerCache::default();
        let now = Instant::now();
        let key = |i: usize| CacheKey {
            name: format!("n{i}.allowed.test"),
            query_type: RecordType::A,
            query_class: DNSClass::IN,
            recursion_desired: true,
            checking_disabled: false,
            edns: false,
            dnssec_ok: false,
        };
        let answer = |ttl: u32, code: ResponseCode| {
            let mut message = Message::response(1, OpCode::Query);
            message.metadata.response_code = code;
            message.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("n.allowed.test.").unwrap(),
                ttl,
                RData::A(hickory_proto::rr::rdata::A::new(127, 0, 0, 2)),
            ));
            message
        };
        const SIZE: usize = 100;
        // Not kept: a zero TTL, an error, an empty answer, one larger than
        // the whole cache.
        cache.insert(key(0), &answer(0, ResponseCode::NoError), SIZE, now);
        cache.insert(key(0), &answer(60, ResponseCode::ServFail), SIZE, now);
        cache.insert(key(0), &Message::response(1, OpCode::Query), SIZE, now);
        cache.insert(
            key(0),
            &answer(60, ResponseCode::NoError),
            MAX_CACHED_BYTES + 1,
            now,
        );
        assert_eq!(cache.len(), (0, 0));
        // Kept for its TTL, with the TTL counting down.
        cache.insert(key(0), &answer(60, ResponseCode::NoError), SIZE, now);
        let later = cache.get(&key(0), now + Duration::from_secs(20)).unwrap();
        assert_eq!(later.answers[0].ttl, 40);
        assert!(cache.get(&key(0), now + Duration::from_secs(60)).is_none());
        // At the bound, expired answers make room first.
        for i in 1..MAX_CACHED_ANSWERS {
            cache.insert(key(i), &answer(600, ResponseCode::NoError), SIZE, now);
        }
        assert_eq!(cache.len(), (MAX_CACHED_ANSWERS, MAX_CACHED_ANSWERS * SIZE));
        let after_first_expired = now + Duration::from_secs(61);
        cache.insert(
            key(MAX_CACHED_ANSWERS),
            &answer(600, ResponseCode::NoError),
            SIZE,
            after_first_expired,
        );
        assert_eq!(cache.len(), (MAX_CACHED_ANSWERS, MAX_CACHED_ANSWERS * SIZE));
        assert!(cache.get(&key(1), after_first_expired).is_some());
        // Full of live answers: it starts over rather than grow.
        cache.insert(
            key(MAX_CACHED_ANSWERS + 1),
            &answer(600, ResponseCode::NoError),
            SIZE,
            after_first_expired,
        );
        assert_eq!(cache.len(), (1, SIZE));
        // The same for bytes: answers that fit the count but not the bytes.
        let large = MAX_CACHED_BYTES / 4;
        for i in 0..3 {
            cache.insert(
                key(10_000 + i),
                &answer(600, ResponseCode::NoError),
                large,
                now,
            );
        }
        assert_eq!(cache.len(), (4, 3 * large + SIZE));
        cache.insert(key(10_003), &answer(600, ResponseCode::NoError), large, now);
        assert_eq!(cache.len(), (1, large));
        // An answer asked again replaces the old one, bytes too.
        cache.insert(key(10_003), &answer(600, ResponseCode::NoError), SIZE, now);
        assert_eq!(cache.len(), (1, SIZE));
    }

    #[tokio::test]
    async fn learner_failure_gives_servfail() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        proxy.recorder.fail.store(true, Ordering::SeqCst);

        let query = question("allowed.test.", RecordType::A);
        let reply = ask_udp(proxy.udp, &query).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries, query.queries);
        assert_eq!(proxy.recorder.learned().len(), 1);

        let reply = ask_tcp(proxy.tcp, &[query]).await;
        assert_eq!(reply[0].metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn tcp_carries_several_queries_per_connection() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;

        let queries = [
            question("allowed.test.", RecordType::A),
            question("blocked.test.", RecordType::A),
            question("www.allowed.test.", RecordType::A),
        ];
        let replies = ask_tcp(proxy.tcp, &queries).await;
        let by_id = |id| {
            replies
                .iter()
                .find(|reply| reply.metadata.id == id)
                .unwrap()
        };
        let allowed = by_id(queries[0].metadata.id);
        assert_eq!(addresses(allowed), ["127.0.0.2".parse::<IpAddr>().unwrap()]);
        let blocked = by_id(queries[1].metadata.id);
        assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
        let chained = by_id(queries[2].metadata.id);
        assert_eq!(addresses(chained), ["127.0.0.4".parse::<IpAddr>().unwrap()]);

        let mut learned_names: Vec<_> = proxy
            .recorder
            .learned()
            .into_iter()
            .map(|(_, _, name, _)| name)
            .collect();
        learned_names.sort();
        assert_eq!(learned_names, ["allowed.test", "www.allowed.test"]);
        assert_eq!(proxy.recorder.refused().len(), 1);
    }

    #[tokio::test]
    async fn ttls_are_clamped() {
        let long = Dnsmasq::start(86_400, &[]).await;
        let short = Dnsmasq::start(1, &[]).await;
        let clamped = |upstream| ProxyConfig {
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(300),
            ..config(vec![upstream])
        };
        let query = question("www.allowed.test.", RecordType::A);

        let proxy = start_proxy(clamped(long.addr)).await;
        let reply = ask_udp(proxy.udp, &query).await;
        // The client must not cache an address longer than the kernel
        // allows it: every answer TTL, CNAMEs included, is capped.
        assert_eq!(reply.answers.len(), 2);
        assert!(
            reply.answers.iter().all(|record| record.ttl == 300),
            "{reply}"
        );
        assert_eq!(proxy.recorder.learned()[0].3, [learned("127.0.0.4", 300)]);

        let proxy = start_proxy(clamped(short.addr)).await;
        let reply = ask_udp(proxy.udp, &query).await;
        assert!(
            reply.answers.iter().all(|record| record.ttl == 1),
            "{reply}"
        );
        assert_eq!(proxy.recorder.learned()[0].3, [learned("127.0.0.4", 30)]);
    }

    #[tokio::test]
    async fn other_types_are_forwarded_as_is() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;

        let reply = ask_udp(proxy.udp, &question("txt.records.test.", RecordType::TXT)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let [record] = reply.answers.as_slice() else {
            panic!("{reply}");
        };
        assert!(
            matches!(&record.data, RData::TXT(txt) if txt.to_string() == "hello"),
            "{reply}"
        );
        // Nothing to allow, so nothing learned.
        assert!(proxy.recorder.learned().is_empty());
    }

    #[tokio::test]
    async fn truncated_upstream_answer_is_retried_over_tcp() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        let query = with_edns(question("big.records.test.", RecordType::TXT), 4096);

        // Upstream, over UDP, the answer does not fit dnsmasq's UDP limit.
        let direct = ask_udp(dnsmasq.addr, &query).await;
        assert!(direct.metadata.truncation, "{direct}");

        // Through the proxy it arrives whole over UDP: fetched over TCP.
        let reply = ask_udp(proxy.udp, &query).await;
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 6);

        // A client without EDNS cannot take it over UDP: truncated, so it
        // asks again over TCP.
        let small = question("big.records.test.", RecordType::TXT);
        let reply = ask_udp(proxy.udp, &small).await;
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        let reply = ask_tcp(proxy.tcp, &[small]).await;
        assert_eq!(reply[0].answers.len(), 6);
    }

    #[tokio::test]
    async fn dead_upstreams_give_servfail_within_the_timeout() {
        // Nothing listens on `closed`; `silent` receives and never answers.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_millis(300);
        let proxy = start_proxy(ProxyConfig {
            timeout,
            ..config(vec![closed, silent.local_addr().unwrap()])
        })
        .await;

        let started = Instant::now();
        let reply = ask_udp(proxy.udp, &question("allowed.test.", RecordType::A)).await;
        let elapsed = started.elapsed();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(elapsed >= timeout, "{elapsed:?}");
        assert!(elapsed < timeout * 3, "{elapsed:?}");
        assert!(proxy.recorder.learned().is_empty());
    }

    #[tokio::test]
    async fn next_upstream_answers_when_the_first_is_down() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = start_proxy(config(vec![closed, dnsmasq.addr])).await;
        let reply = ask_udp(proxy.udp, &question("allowed.test.", RecordType::A)).await;
        assert_eq!(addresses(&reply), ["127.0.0.2".parse::<IpAddr>().unwrap()]);
        let reply = ask_tcp(proxy.tcp, &[question("allowed.test.", RecordType::A)]).await;
        assert_eq!(
            addresses(&reply[0]),
            ["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn malformed_queries() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        let proxy = start_proxy(config(vec![dnsmasq.addr])).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];

        // Two questions.
        let mut two = question("allowed.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("www.allowed.test.").unwrap(),
            RecordType::A,
        ));
        let reply = ask_udp_on(&socket, proxy.udp, &two).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

        // A readable header announcing a question that is not there.
        let mut wire = question("allowed.test.", RecordType::A).to_vec().unwrap();
        wire.truncate(14);
        socket.send_to(&wire, proxy.udp).await.unwrap();
        let (len, _) = timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.id, u16::from_be_bytes([wire[0], wire[1]]));
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

        // Not even a header: no reply. The next query's reply comes first.
        socket.send_to(&[1, 2, 3], proxy.udp).await.unwrap();
        let query = question("allowed.test.", RecordType::A);
        let reply = ask_udp_on(&socket, proxy.udp, &query).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(proxy.recorder.refused().is_empty());
    }

    #[tokio::test]
    async fn concurrent_queries_are_all_answered() {
        let dnsmasq = Dnsmasq::start(600, &[]).await;
        // The silent upstream comes first, so every query waits out its
        // timeout there: they only finish in time if handled concurrently.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = start_proxy(ProxyConfig {
            timeout: Duration::from_millis(300),
            ..config(vec![silent.local_addr().unwrap(), dnsmasq.addr])
        })
        .await;

        let started = Instant::now();
        let mut clients = JoinSet::new();
        for i in 0..32 {
            let server = proxy.udp;
            clients.spawn(async move {
                let name = if i % 2 == 0 {
                    "allowed.test."
                } else {
                    "www.allowed.test."
                };
                addresses(&ask_udp(server, &question(name, RecordType::A)).await)
            });
        }
        let mut answered = 0;
        while let Some(addrs) = clients.join_next().await {
            assert_eq!(addrs.unwrap().len(), 1);
            answered += 1;
        }
        assert_eq!(answered, 32);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(proxy.recorder.learned().len(), 32);
    }
}

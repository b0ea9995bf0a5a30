//! A bundle polled from an HTTP(S) server.
//!
//! Every poll sends `If-None-Match` with the `ETag` of the last good bundle,
//! so an unchanged bundle costs a `304` and changes nothing. A bundle that
//! fails to parse or to verify, a status other than 200 and 304, and a
//! server that cannot be reached are error updates: the daemon keeps the
//! last good set, and the source retries with exponential backoff and
//! jitter, so a fleet does not hammer a server that is recovering. The last
//! good bundle is cached on disk, exactly as served, and is the source's
//! first update after a restart, so a host that restarts while the server
//! is down still enforces it.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    DEFAULT_HTTP_CACHE, HttpSourceConfig, SourceError, SourceUpdate, UPDATE_QUEUE, digest,
};
use crate::policy::{
    bundle::{TrustPolicy, parse_bundle},
    load::LoadedPolicy,
};

/// The largest bundle accepted.
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;

/// How the source polls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// URL of the bundle.
    pub url: String,
    /// Time between polls while the server answers.
    pub interval: Duration,
    /// Where the last good bundle is kept; `None` keeps none.
    pub cache_path: Option<PathBuf>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Time one request may take.
    pub timeout: Duration,
    /// Longest wait between retries while the server fails.
    pub max_backoff: Duration,
}

impl HttpOptions {
    /// Polls `url` every 30 s, without a cache.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            interval: Duration::from_secs(30),
            cache_path: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }

    /// The options `policySources.http` asks for.
    pub fn from_config(config: &HttpSourceConfig) -> Result<Self, SourceError> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(SourceError::Config(format!(
                "http.url {:?} must start with http:// or https://",
                config.url
            )));
        }
        if config.interval_seconds == 0 || config.timeout_seconds == 0 {
            return Err(SourceError::Config(
                "http.intervalSeconds and http.timeoutSeconds must be at least 1".into(),
            ));
        }
        Ok(Self {
            url: config.url.clone(),
            interval: Duration::from_secs(config.interval_seconds),
            cache_path: Some(
                config
                    .cache_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_HTTP_CACHE)),
            ),
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: Duration::from_secs(config.timeout_seconds),
            max_backoff: Duration::from_secs(config.max_backoff_seconds),
        })
    }

    /// The wait before the next poll, after `failures` failed polls in a
    /// row: the interval (±10 %) while all is well; after failures, the
    /// interval doubled per failure up to `max_backoff`, with full jitter
    /// over its upper half.
    pub fn next_delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.interval.mul_f64(rand::random_range(0.9..=1.1));
        }
        let cap = self.max_backoff.max(self.interval);
        let doubled = self
            .interval
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(cap);
        doubled.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// A polled bundle.
#[derive(Clone, Debug)]
pub struct HttpSource {
    options: HttpOptions,
    trust: TrustPolicy,
}

/// The cache file: the bundle as served, with what is needed to poll on.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    /// The URL it was fetched from; a cache of another URL is not used.
    url: String,
    /// Its `ETag`.
    #[serde(default)]
    etag: Option<String>,
    /// When it was fetched, RFC 3339.
    fetched_at: String,
    /// The bundle, byte for byte (signature line included).
    bundle: String,
}

/// What one poll got.
enum Fetched {
    NotModified,
    Bundle {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// The last good set, to resend after errors once the server is back.
struct Good {
    policies: Vec<LoadedPolicy>,
    origin: String,
    digest: String,
}

impl HttpSource {
    /// A source polling as `options` says, accepting bundles that pass
    /// `trust`.
    pub fn new(options: HttpOptions, trust: TrustPolicy) -> Self {
        Self { options, trust }
    }

    /// The source's name in updates: `http <url>`.
    pub fn name(&self) -> String {
        format!("http {}", self.options.url)
    }

    /// Starts polling. The first update is the cached bundle, when there is
    /// one; then the first poll follows at once. Afterwards one update per
    /// new bundle and one per failed poll; a `304`, or a `200` with the
    /// bundle already in force, sends nothing. Stops when the receiver is
    /// dropped. Needs a tokio runtime.
    pub fn watch(self) -> Result<mpsc::Receiver<SourceUpdate>, SourceError> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(self.options.timeout))
                .http_status_as_error(false)
                .user_agent(format!("baton/{}", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        let source = Arc::new(self);
        tokio::spawn(async move { source.run(agent, tx).await });
        Ok(rx)
    }

    async fn run(self: Arc<Self>, agent: ureq::Agent, tx: mpsc::Sender<SourceUpdate>) {
        let mut etag = None;
        let mut good: Option<Good> = None;
        // Whether the last update sent was good, so that recovering from
        // errors is reported even when the bundle did not change.
        let mut last_sent_ok = false;
        if let Some(path) = &self.options.cache_path
            && let Some(entry) = self.read_cache(path)
        {
            let bytes = entry.bundle.as_bytes();
            let origin = format!(
                "{} (cached copy of {}, fetched {})",
                path.display(),
                self.options.url,
                entry.fetched_at
            );
            let result = parse_bundle(path, bytes, &self.trust).map_err(SourceError::from);
            if let Ok(policies) = &result {
                etag = entry.etag.clone();
                good = Some(Good {
                    policies: policies.clone(),
                    origin: origin.clone(),
                    digest: digest(bytes),
                });
                last_sent_ok = true;
            }
            if !self.send(&tx, origin, Some(digest(bytes)), result).await {
                return;
            }
        }
        let mut failures = 0u32;
        loop {
            let fetcher = self.clone();
            let (agent, sent_etag) = (agent.clone(), etag.clone());
            let fetched =
                tokio::task::spawn_blocking(move || fetcher.fetch(&agent, sent_etag.as_deref()))
                    .await
                    .unwrap_or_else(|e| {
                        Err(SourceError::Http {
                            url: self.options.url.clone(),
                            message: format!("poll task failed: {e}"),
                        })
                    });
            let url_origin = |etag: &Option<String>| match etag {
                Some(etag) => format!("{} (ETag {etag})", self.options.url),
                None => self.options.url.clone(),
            };
            let keep_going = match fetched {
                Ok(Fetched::NotModified) => {
                    failures = 0;
                    match &good {
                        Some(good) if !last_sent_ok => {
                            last_sent_ok = true;
                            let result = Ok(good.policies.clone());
                            self.send(&tx, good.origin.clone(), Some(good.digest.clone()), result)
                                .await
                        }
                        _ => true,
                    }
                }
                Ok(Fetched::Bundle {
                    bytes,
                    etag: new_etag,
                }) => {
                    let bundle_digest = digest(&bytes);
                    let origin = url_origin(&new_etag);
                    match parse_bundle(Path::new(&self.options.url), &bytes, &self.trust) {
                        Ok(policies) => {
                            failures = 0;
                            self.write_cache(&bytes, new_etag.as_deref());
                            etag = new_etag;
                            let unchanged = last_sent_ok
                                && good.as_ref().is_some_and(|g| g.digest == bundle_digest);
                            good = Some(Good {
                                policies: policies.clone(),
                                origin: origin.clone(),
                                digest: bundle_digest.clone(),
                            });
                            last_sent_ok = true;
                            unchanged
                                || self
                                    .send(&tx, origin, Some(bundle_digest), Ok(policies))
                                    .await
                        }
                        Err(error) => {
                            failures += 1;
                            last_sent_ok = false;
                            self.send(&tx, origin, Some(bundle_digest), Err(error.into()))
                                .await
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    last_sent_ok = false;
                    self.send(&tx, self.options.url.clone(), None, Err(error))
                        .await
                }
            };
            if !keep_going {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.next_delay(failures)) => {}
                () = tx.closed() => return,
            }
        }
    }

    /// Sends an update; false when nobody listens any more.
    async fn send(
        &self,
        tx: &mpsc::Sender<SourceUpdate>,
        origin: String,
        digest: Option<String>,
        policies: Result<Vec<LoadedPolicy>, SourceError>,
    ) -> bool {
        if let Err(error) = &policies {
            tracing::warn!(
                source = %self.name(),
                %error,
                "policy source failed; the last good set stays"
            );
        }
        tx.send(SourceUpdate {
            source: self.name(),
            origin,
            digest,
            policies,
            loaded_at: SystemTime::now(),
            read_time: None,
        })
        .await
        .is_ok()
    }

    fn fetch(&self, agent: &ureq::Agent, etag: Option<&str>) -> Result<Fetched, SourceError> {
        let url = &self.options.url;
        let failed = |message: String| SourceError::Http {
            url: url.clone(),
            message,
        };
        let mut request = agent.get(url);
        for (name, value) in &self.options.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let mut response = request.call().map_err(|e| failed(e.to_string()))?;
        match response.status().as_u16() {
            304 => Ok(Fetched::NotModified),
            200 => {
                let etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let bytes = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_BUNDLE_BYTES)
                    .read_to_vec()
                    .map_err(|e| failed(format!("reading the bundle: {e}")))?;
                Ok(Fetched::Bundle { bytes, etag })
            }
            status => Err(SourceError::Status {
                url: url.clone(),
                status,
            }),
        }
    }

    /// The cache entry for this URL, if there is a readable one.
    fn read_cache(&self, path: &Path) -> Option<CacheEntry> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(cache = %path.display(), %error, "cannot read the policy bundle cache");
                return None;
            }
        };
        match serde_json::from_str::<CacheEntry>(&text) {
            Ok(entry) if entry.url == self.options.url => Some(entry),
            Ok(entry) => {
                tracing::info!(
                    cache = %path.display(),
                    cached = entry.url,
                    url = self.options.url,
                    "the policy bundle cache is of another URL; not used"
                );
                None
            }
            Err(error) => {
                tracing::warn!(cache = %path.display(), %error, "the policy bundle cache is unreadable; not used");
                None
            }
        }
    }

    /// Replaces the cache with `bundle`, atomically: a crash leaves the old
    /// cache or the new one, never a torn file. A failure is logged, not
    /// fatal: the bundle is still enforced.
    fn write_cache(&self, bundle: &[u8], etag: Option<&str>) {
        let Some(path) = &self.options.cache_path else {
            return;
        };
        let Ok(text) = std::str::from_utf8(bundle) else {
            return;
        };
        let entry = CacheEntry {
            url: self.options.url.clone(),
            etag: etag.map(str::to_string),
            fetched_at: crate::policy::source::format_time(SystemTime::now()),
            bundle: text.to_string(),
        };
        if let Err(error) = write_atomically(path, &entry) {
            tracing::warn!(cache = %path.display(), %error, "cannot write the policy bundle cache");
        }
    }
}

fn write_atomically(path: &Path, entry: &CacheEntry) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let options = HttpOptions {
            interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            ..HttpOptions::new("http://127.0.0.1/")
        };
        for _ in 0..50 {
            let normal = options.next_delay(0);
            assert!(normal >= Duration::from_secs(9) && normal <= Duration::from_secs(11));
            let second = options.next_delay(2);
            assert!(second >= Duration::from_secs(10) && second <= Duration::from_secs(20));
            let many = options.next_delay(30);
            assert!(many >= Duration::from_secs(30) && many <= Duration::from_secs(60));
        }
    }

    #[test]
    fn configuration_is_checked() {
        let config = |url: &str| HttpSourceConfig {
            url: url.into(),
            interval_seconds: 5,
            cache_path: None,
            headers: Default::default(),
            timeout_seconds: 1,
            max_backoff_seconds: 60,
        };
        assert!(HttpOptions::from_config(&config("ftp://x/")).is_err());
        let options = HttpOptions::from_config(&config("http://x/b.yaml")).unwrap();
        assert_eq!(options.cache_path.unwrap(), Path::new(DEFAULT_HTTP_CACHE));
    }
}

//! Redaction of secrets in command lines, paths and messages, applied by the
//! trail before a record is written, streamed or forwarded.
//!
//! A pattern's match is replaced by [`MARK`]; when the pattern has a group
//! named `secret`, only that group is replaced, so the record still says
//! what kind of secret was there (`Authorization: Bearer [REDACTED]`).
//! A command line is matched as its arguments joined by single spaces, so a
//! secret in the argument after `-H Authorization: Bearer` or `--password`
//! is found too; the replacement is then mapped back onto the arguments.

use regex::{Regex, RegexSet};

/// What a secret is replaced with.
pub const MARK: &str = "[REDACTED]";

/// Suffixes of variable names whose value is a secret in `NAME=value`
/// assignments (`AWS_SECRET_ACCESS_KEY=...`, `GITHUB_TOKEN=...`), matched
/// without regard to case.
pub const SECRET_NAME_SUFFIXES: &[&str] = &[
    "_KEY",
    "_SECRET",
    "_TOKEN",
    "_PASSWORD",
    "_PASSWD",
    "_PASS",
    "_CREDENTIALS",
];

/// Patterns applied unless `redaction.defaults` is false.
///
/// A path that merely names a key file (`/etc/ssh/ssh_host_ed25519_key`)
/// is left alone: it is no secret, and which key a process touched is what
/// an investigator needs. Only values are removed.
pub const DEFAULT_PATTERNS: &[&str] = &[
    // HTTP credentials in headers: Authorization: Bearer/Basic/Token ...
    r"(?i)\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|token|digest|negotiate)\s+)?(?P<secret>[^\s'\x22]+)",
    // Environment-style assignments: a name ending in _KEY, _SECRET,
    // _TOKEN, _PASSWORD, _PASS or _CREDENTIALS, then `=` (a shell script
    // in `sh -c`, `env NAME=value`, `docker run -e NAME=value`).
    r"(?i)\b[a-z0-9_]*_(?:key|secret|token|password|passwd|pass|credentials)\s*=(?:\s*['\x22])?(?P<secret>[^\s'\x22;&|]+)",
    // key=value and key: value forms of the usual names, JSON's
    // "key": "value" included.
    r"(?i)(?:\b|_)(?:access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|api[_-]?key|apikey|x-api-key|client[_-]?secret|secret[_-]?key|private[_-]?key|account[_-]?key|shared[_-]?access[_-]?key|token|secret|password|passwd|pwd)['\x22]?\s*[=:]\s*['\x22]?(?P<secret>[^\s&'\x22,;]+)",
    // --password VALUE, --token VALUE and the like as separate arguments.
    r"(?i)(?:^|\s)--?(?:password|passwd|pass|token|api-key|apikey|secret|client-secret|access-token)\s+(?P<secret>\S+)",
    // `aws configure set aws_secret_access_key VALUE`.
    r"(?i)\b(?:aws_secret_access_key|aws_session_token)\s+(?P<secret>\S+)",
    // curl -u user:password / --user user:password; a numeric uid:gid
    // (`docker run -u 1000:1000`) is no password.
    r"(?:^|\s)(?:-u|--user|--proxy-user)\s*[^\s:]+:(?P<secret>\S*[^\s0-9]\S*)",
    // mysql -pPASSWORD (the password glued to -p).
    r"(?:^|[\s/])(?:mysql|mysqldump|mysqladmin|mysqlimport|mariadb|mariadb-dump)\s(?:\S+\s)*?-p(?P<secret>\S+)",
    // user:password@ in URLs.
    r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]*:(?P<secret>[^/\s@]+)@",
    // Azure shared access signatures: the `sig=` of a SAS URL or token.
    r"(?i)[?&]sig=(?P<secret>[^&\s'\x22]+)",
    // Slack incoming webhooks: the URL path is the credential.
    r"(?i)hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9/_-]+)",
    // AWS access key ids.
    r"\b(?P<secret>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16})\b",
    // GitHub tokens.
    r"\b(?P<secret>(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
    // GitLab personal access tokens.
    r"\b(?P<secret>glpat-[A-Za-z0-9_-]{20,})",
    // OpenAI, Anthropic and similar `sk-...` API keys.
    r"\b(?P<secret>sk-[A-Za-z0-9_-]{16,})",
    // Stripe secret and restricted keys.
    r"\b(?P<secret>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,})",
    // Slack tokens.
    r"\b(?P<secret>xox[abposre]-[A-Za-z0-9-]{10,})",
    // Google API keys and OAuth client secrets.
    r"\b(?P<secret>AIza[0-9A-Za-z_-]{35}|GOCSPX-[0-9A-Za-z_-]{20,})",
    // npm, PyPI, Hugging Face, DigitalOcean tokens.
    r"\b(?P<secret>npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}|hf_[A-Za-z0-9]{30,}|do[por]_v1_[0-9a-f]{64})",
    // Twilio API key SIDs and SendGrid keys.
    r"\b(?P<secret>SK[0-9a-f]{32}|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})",
    // JSON Web Tokens.
    r"\b(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    // PEM private keys pasted into an argument.
    r"(?s)(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))",
];

/// Whether `arg` as a whole is an environment-style assignment of a secret
/// (`NAME_TOKEN=value`); returns where its value starts. The whole rest of
/// the argument is the value, spaces included, which the patterns on the
/// joined command line cannot tell.
fn secret_assignment(arg: &str) -> Option<usize> {
    let (name, _) = arg.split_once('=')?;
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let upper = name.to_ascii_uppercase();
    (valid && SECRET_NAME_SUFFIXES.iter().any(|s| upper.ends_with(s))).then_some(name.len() + 1)
}

/// A pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    /// The pattern's position in `redaction.patterns`.
    pub index: usize,
    /// What the regex compiler said.
    pub message: String,
}

/// Compiled redaction patterns.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Prefilter: one pass over the text tells whether any pattern matches,
    /// which is almost never, so the common case costs one scan.
    set: RegexSet,
    patterns: Vec<Regex>,
}

impl Redactor {
    /// Compiles the default patterns (when `defaults`) followed by `extra`.
    pub fn new(defaults: bool, extra: &[String]) -> Result<Self, BadPattern> {
        let mut sources: Vec<String> = Vec::new();
        if defaults {
            sources.extend(DEFAULT_PATTERNS.iter().map(|p| p.to_string()));
        }
        let base = sources.len();
        sources.extend(extra.iter().cloned());
        let mut patterns = Vec::with_capacity(sources.len());
        for (i, source) in sources.iter().enumerate() {
            patterns.push(Regex::new(source).map_err(|e| BadPattern {
                index: i.saturating_sub(base),
                message: e.to_string(),
            })?);
        }
        let set = RegexSet::new(&sources).map_err(|e| BadPattern {
            index: 0,
            message: e.to_string(),
        })?;
        Ok(Self { set, patterns })
    }

    /// Byte ranges of `text` to replace, sorted and merged.
    fn ranges(&self, text: &str) -> Vec<(usize, usize)> {
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return Vec::new();
        }
        let mut ranges = Vec::new();
        for index in matched.iter() {
            for captures in self.patterns[index].captures_iter(text) {
                let m = captures
                    .name("secret")
                    .or_else(|| captures.get(0))
                    .expect("group 0 always matches");
                if m.start() < m.end() {
                    ranges.push((m.start(), m.end()));
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// `text` with every secret replaced.
    pub fn redact_str(&self, text: &str) -> Option<String> {
        let ranges = self.ranges(text);
        if ranges.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in ranges {
            out.push_str(&text[at..start]);
            out.push_str(MARK);
            at = end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    /// Redacts a command line in place; see the module notes.
    pub fn redact_args(&self, args: &mut [String]) {
        for arg in args.iter_mut() {
            if let Some(value) = secret_assignment(arg)
                && value < arg.len()
            {
                arg.truncate(value);
                arg.push_str(MARK);
            }
        }
        let joined = args.join(" ");
        let ranges = self.ranges(&joined);
        if ranges.is_empty() {
            return;
        }
        let mut start = 0;
        for arg in args.iter_mut() {
            let end = start + arg.len();
            let mut out = String::new();
            let mut at = start;
            let mut changed = false;
            for &(s, e) in &ranges {
                let (s, e) = (s.max(start), e.min(end));
                if s >= e || s < at {
                    continue;
                }
                out.push_str(&joined[at..s]);
                out.push_str(MARK);
                at = e;
                changed = true;
            }
            if changed {
                out.push_str(&joined[at..end]);
                *arg = out;
            }
            start = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(true, &[]).unwrap()
    }

    fn args(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        redactor().redact_args(&mut v);
        v
    }

    #[test]
    fn bearer_tokens_in_one_or_several_arguments() {
        assert_eq!(
            args(&[
                "curl",
                "-H",
                "Authorization: Bearer abc.def-123",
                "http://x/"
            ]),
            [
                "curl",
                "-H",
                "Authorization: Bearer [REDACTED]",
                "http://x/"
            ]
        );
        // Unquoted: the shell split the header into three arguments.
        assert_eq!(
            args(&[
                "curl",
                "-H",
                "Authorization:",
                "Bearer",
                "abc123",
                "http://x/"
            ]),
            [
                "curl",
                "-H",
                "Authorization:",
                "Bearer",
                "[REDACTED]",
                "http://x/"
            ]
        );
    }

    #[test]
    fn the_default_patterns() {
        let r = redactor();
        let cases = [
            (
                "https://x/?token=s3cr3t&a=1",
                "https://x/?token=[REDACTED]&a=1",
            ),
            ("password=hunter2", "password=[REDACTED]"),
            (
                "https://bob:hunter2@example.com/r",
                "https://bob:[REDACTED]@example.com/r",
            ),
            ("AKIAIOSFODNN7EXAMPLE", "[REDACTED]"),
            ("ghp_0123456789abcdefghijABCDEFGHIJ", "[REDACTED]"),
            ("key sk-proj-0123456789abcdefXYZ", "key [REDACTED]"),
            ("/home/u/token=abc/file", "/home/u/token=[REDACTED]"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact_str(input).as_deref(), Some(want), "{input}");
        }
        assert_eq!(r.redact_str("/usr/bin/curl -sS http://127.0.0.1/"), None);
        assert_eq!(
            args(&["mysql", "--password", "hunter2", "-u", "root:pw"]),
            ["mysql", "--password", "[REDACTED]", "-u", "root:[REDACTED]"]
        );
    }

    #[test]
    fn custom_patterns_and_bad_ones() {
        let r = Redactor::new(false, &["corp-[0-9]{4}".into()]).unwrap();
        assert_eq!(
            r.redact_str("id corp-1234").as_deref(),
            Some("id [REDACTED]")
        );
        assert_eq!(r.redact_str("token=abc"), None, "defaults are off");
        let error = Redactor::new(true, &["ok".into(), "(".into()]).unwrap_err();
        assert_eq!(error.index, 1);
    }

    /// `n` characters cycling through `alphabet`: synthetic secrets of the
    /// right shape, none of them real.
    fn filler(alphabet: &str, n: usize) -> String {
        alphabet.chars().cycle().take(n).collect()
    }

    const B62: &str = "Q7mZk2Xw9PbT4nVc8RyL3sHd6GfJ1aUe5KoN0ti";
    const HEX: &str = "3f9a0c7e1b54d826";

    /// Secret formats seen in command lines, one argument list each, with
    /// the secret's value: the value must be gone from the redacted
    /// arguments (prefixes are split so that no scanner takes the source
    /// for a leak).
    fn secret_corpus() -> Vec<(&'static str, Vec<String>, String)> {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut corpus = Vec::new();
        let mut add = |name: &'static str, args: Vec<String>, secret: String| {
            corpus.push((name, args, secret));
        };
        let aws_id = format!("{}{}", "AKIA", filler("Z7Q2X4N6P8R0T3V5", 16));
        add(
            "AWS access key id",
            v(&["aws", "configure", "set", "aws_access_key_id", &aws_id]),
            aws_id.clone(),
        );
        let aws_secret = filler("wJalrXUtnFEMI/K7MDENG+bPxRfiCY", 40);
        add(
            "AWS secret in the environment",
            v(&[
                "env",
                &format!("AWS_SECRET_ACCESS_KEY={aws_secret}"),
                "aws",
                "s3",
                "ls",
            ]),
            aws_secret.clone(),
        );
        add(
            "AWS secret in a shell script",
            v(&[
                "sh",
                "-c",
                &format!("export AWS_SECRET_ACCESS_KEY={aws_secret}; aws s3 ls"),
            ]),
            aws_secret.clone(),
        );
        add(
            "AWS secret to aws configure",
            v(&[
                "aws",
                "configure",
                "set",
                "aws_secret_access_key",
                &aws_secret,
            ]),
            aws_secret,
        );
        let pem_body = filler(B62, 64);
        add(
            "GCP service-account JSON",
            v(&[
                "python3",
                "-c",
                &format!(
                    "{{\"type\": \"service_account\", \"private_key\": \"-----BEGIN PRIVATE KEY-----\\n{pem_body}\\n-----END PRIVATE KEY-----\\n\"}}"
                ),
            ]),
            pem_body,
        );
        let google = format!("{}{}", "AIza", filler(B62, 35));
        add(
            "Google API key",
            v(&[
                "curl",
                &format!("https://maps.example.com/api?key={google}"),
            ]),
            google,
        );
        let oauth = format!("{}{}", "GOCSPX-", filler(B62, 28));
        add(
            "Google OAuth client secret",
            v(&["gcloud", "auth", "--client-secret", &oauth]),
            oauth,
        );
        let account_key = format!("{}==", filler(B62, 86));
        add(
            "Azure storage connection string",
            v(&[
                "az",
                "storage",
                "blob",
                "list",
                "--connection-string",
                &format!(
                    "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey={account_key};EndpointSuffix=core.windows.net"
                ),
            ]),
            account_key,
        );
        let sig = format!("{}%3D", filler(B62, 43));
        add(
            "Azure SAS URL",
            v(&[
                "curl",
                &format!(
                    "https://acct1.blob.core.windows.net/c/b.txt?sv=2022-11-02&ss=b&sp=r&se=2030-01-01T00:00:00Z&sig={sig}"
                ),
            ]),
            sig,
        );
        let ghp = format!("{}{}", "ghp_", filler(B62, 36));
        add(
            "GitHub classic token",
            v(&[
                "git",
                "clone",
                &format!("https://{ghp}@github.com/org/repo.git"),
            ]),
            ghp,
        );
        let fine = format!("{}{}_{}", "github_", filler(B62, 22), filler(B62, 59));
        let fine = fine.replacen("github_", "github_pat_", 1);
        add(
            "GitHub fine-grained token",
            v(&["gh", "auth", "login", "--with-token", &fine]),
            fine,
        );
        let glpat = format!("{}{}", "glpat-", filler(B62, 20));
        add(
            "GitLab token",
            v(&[
                "curl",
                "--header",
                &format!("PRIVATE-TOKEN: {glpat}"),
                "https://gitlab.example.com/api/v4/projects",
            ]),
            glpat,
        );
        let xoxb = format!(
            "{}-{}-{}-{}",
            "xoxb",
            "2048604817",
            "1234567890123",
            filler(B62, 24)
        );
        add("Slack bot token", v(&["slack-cli", "send", &xoxb]), xoxb);
        let hook = format!(
            "T{}/B{}/{}",
            filler("0A1B2C3D", 8),
            filler("9Z8Y7X6W", 8),
            filler(B62, 24)
        );
        add(
            "Slack webhook URL",
            v(&[
                "curl",
                "-d",
                "{}",
                &format!("https://hooks.slack.com/services/{hook}"),
            ]),
            hook,
        );
        let stripe = format!("{}{}", "sk_live_", filler(B62, 24));
        add(
            "Stripe live secret key",
            v(&["stripe", "--api-key", &stripe, "charges", "list"]),
            stripe,
        );
        let openai = format!("{}{}", "sk-", filler(B62, 48));
        add(
            "OpenAI API key",
            v(&["python3", "chat.py", &openai]),
            openai,
        );
        let project = format!("{}{}", "sk-proj-", filler(B62, 64));
        add(
            "OpenAI project key",
            v(&["llm", "keys", "set", "openai", "--value", &project]),
            project,
        );
        let anthropic = format!("{}{}AA", "sk-ant-api03-", filler(B62, 93));
        add(
            "Anthropic API key",
            v(&["sh", "-c", &format!("ANTHROPIC_API_KEY={anthropic} claude")]),
            anthropic,
        );
        let jwt = format!(
            "{}.{}.{}",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6InRlc3QifQ",
            filler(B62, 43)
        );
        add(
            "JWT",
            v(&["grpcurl", "-rpc-header", &format!("x-jwt {jwt}")]),
            jwt,
        );
        let key_body = filler(B62, 70);
        for kind in ["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", ""] {
            add(
                "PEM private key",
                v(&[
                    "ssh-add",
                    "-",
                    &format!(
                        "-----BEGIN {kind}PRIVATE KEY-----\n{key_body}\n-----END {kind}PRIVATE KEY-----"
                    ),
                ]),
                key_body.clone(),
            );
        }
        add(
            "URL with a password",
            v(&["psql", "postgres://app:Sup3r-S3cret!@db.internal:5432/app"]),
            "Sup3r-S3cret!".into(),
        );
        add(
            "https URL with a password",
            v(&["curl", "https://user:pa55w0rd@example.com/x"]),
            "pa55w0rd".into(),
        );
        add(
            "--password=",
            v(&["mysqldump", "--password=Hunter2-hunter2", "app"]),
            "Hunter2-hunter2".into(),
        );
        add(
            "mysql -pPASSWORD",
            v(&["/usr/bin/mysql", "-u", "root", "-pHunter2x9", "app"]),
            "Hunter2x9".into(),
        );
        let bearer = filler(B62, 40);
        add(
            "curl -H Authorization: Bearer",
            v(&[
                "curl",
                "-H",
                &format!("Authorization: Bearer {bearer}"),
                "https://api.example.com/v1/me",
            ]),
            bearer,
        );
        add(
            "curl -u user:password",
            v(&["curl", "-u", "deploy:Tr0ub4dor-3", "https://example.com/"]),
            "Tr0ub4dor-3".into(),
        );
        let npm = format!("{}{}", "npm_", filler(B62, 36));
        add(
            "npm token",
            v(&[
                "npm",
                "config",
                "set",
                &format!("//registry.npmjs.org/:_authToken={npm}"),
            ]),
            npm,
        );
        let pypi = format!("{}{}", "pypi-AgEIcHlwaS5vcmc", filler(B62, 70));
        add(
            "PyPI token",
            v(&["twine", "upload", "-u", "__token__", "-p", &pypi, "dist/*"]),
            pypi,
        );
        let twilio_key = format!("{}{}", "SK", filler(HEX, 32));
        add(
            "Twilio API key SID",
            v(&["twilio", "api:core:messages:list", "--api-key", &twilio_key]),
            twilio_key,
        );
        let twilio_token = filler(HEX, 32);
        add(
            "Twilio auth token",
            v(&[
                "env",
                &format!("TWILIO_AUTH_TOKEN={twilio_token}"),
                "node",
                "send.js",
            ]),
            twilio_token,
        );
        let sendgrid = format!("{}{}.{}", "SG.", filler(B62, 22), filler(B62, 43));
        add("SendGrid key", v(&["node", "mail.js", &sendgrid]), sendgrid);
        let hf = format!("{}{}", "hf_", filler(B62, 34));
        add(
            "Hugging Face token",
            v(&["huggingface-cli", "login", "--token", &hf]),
            hf,
        );
        let digitalocean = format!("{}{}", "dop_v1_", filler(HEX, 64));
        add(
            "DigitalOcean token",
            v(&["doctl", "auth", "init", "-t", &digitalocean]),
            digitalocean,
        );
        add(
            "a value with spaces in one argument",
            v(&["env", "DB_PASSWORD=correct horse battery staple", "app"]),
            "correct horse battery staple".into(),
        );
        add(
            "lower-case names",
            v(&["docker", "run", "-e", "db_pass=s3cr3t-v4lue", "img"]),
            "s3cr3t-v4lue".into(),
        );
        add(
            "_CREDENTIALS",
            v(&[
                "sh",
                "-c",
                "REGISTRY_CREDENTIALS='robot:Zx81-secret' ./push",
            ]),
            "Zx81-secret".into(),
        );
        add(
            "_SECRET",
            v(&["env", "JWT_SECRET=d41d8cd98f00b204e98", "server"]),
            "d41d8cd98f00b204e98".into(),
        );
        corpus
    }

    #[test]
    fn every_secret_of_the_corpus_is_redacted() {
        let r = redactor();
        let corpus = secret_corpus();
        assert!(corpus.len() >= 30, "{}", corpus.len());
        for (name, args, secret) in corpus {
            let mut redacted = args.clone();
            r.redact_args(&mut redacted);
            let joined = redacted.join(" ");
            // No piece of the secret longer than a few characters is left.
            let piece = secret.len().min(8);
            let leaked = (0..=secret.len() - piece)
                .filter(|i| secret.is_char_boundary(*i) && secret.is_char_boundary(i + piece))
                .any(|i| joined.contains(&secret[i..i + piece]));
            assert!(!leaked, "{name}: {args:?} became {redacted:?}");
            assert!(joined.contains(MARK), "{name}: {redacted:?}");
            // The same text as a message or path is redacted too.
            let text = args.join(" ");
            let clean = r.redact_str(&text).unwrap_or(text.clone());
            assert!(!clean.contains(&secret), "{name} as text: {clean}");
        }
    }

    #[test]
    fn ordinary_command_lines_are_unchanged() {
        let r = redactor();
        let corpus: &[&[&str]] = &[
            &["git", "commit", "-m", "Rotate the signing key on restart"],
            &["git", "push", "origin", "main"],
            &["git", "log", "--format=%H %s", "--author=alice"],
            &["git", "clone", "https://github.com/org/repo.git"],
            &["git", "clone", "git@github.com:org/repo.git"],
            &["cargo", "test", "-p", "agent", "--lib", "redact"],
            &["cargo", "build", "--release", "--features", "tokio/full"],
            &["ls", "-la", "/etc/ssh/ssh_host_ed25519_key.pub"],
            &["cat", "/etc/ssh/ssh_host_ed25519_key"],
            &[
                "ssh-keygen",
                "-t",
                "ed25519",
                "-f",
                "/home/dev/.ssh/id_ed25519",
            ],
            &["ssh", "-i", "/home/dev/.ssh/deploy_key", "deploy@10.0.0.5"],
            &[
                "python3",
                "-m",
                "pytest",
                "tests/test_tokens.py",
                "-k",
                "token_refresh",
            ],
            &["python3", "-m", "http.server", "8000"],
            &["python3", "-c", "import os; print(os.getcwd())"],
            &[
                "curl",
                "-sS",
                "https://example.com/api/v1/items?page=2&sort=name",
            ],
            &[
                "curl",
                "-H",
                "Accept: application/json",
                "http://127.0.0.1:8080/health",
            ],
            &["docker", "run", "-u", "1000:1000", "-p", "8080:80", "nginx"],
            &["kubectl", "get", "secret", "-n", "kube-system"],
            &["grep", "-rn", "password_hash", "src/"],
            &["make", "-j4", "CC=clang", "PREFIX=/usr/local"],
            &[
                "env",
                "PATH=/usr/bin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "sh",
            ],
            &["npm", "install", "--save-dev", "typescript"],
            &["pip", "install", "-r", "requirements.txt"],
            &["openssl", "x509", "-in", "cert.pem", "-noout", "-text"],
            &["gpg", "--list-keys"],
            &["aws", "s3", "ls", "s3://bucket/prefix/"],
            &["tar", "-czf", "keys-backup.tar.gz", "./keys"],
            &["sort", "-k", "2", "-t", ",", "data.csv"],
            &["journalctl", "-u", "baton", "--since", "today"],
            &[
                "ansible-playbook",
                "site.yml",
                "--vault-password-file",
                "/root/.vault_pass",
            ],
            &["rsync", "-av", "./build/", "host:/srv/www/"],
            &["mysql", "-u", "root", "-h", "127.0.0.1", "app"],
            &["sh", "-c", "cd /srv/app && ./run --port 8080"],
            &["cmake", "-DCMAKE_BUILD_TYPE=Release", ".."],
        ];
        for args in corpus {
            let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            r.redact_args(&mut v);
            assert_eq!(v, *args, "changed");
            assert_eq!(r.redact_str(&args.join(" ")), None, "{args:?}");
        }
    }

    #[test]
    fn environment_style_assignments() {
        assert_eq!(secret_assignment("AWS_SECRET_ACCESS_KEY=x"), Some(22));
        assert_eq!(secret_assignment("github_token=x"), Some(13));
        assert_eq!(secret_assignment("Db_Credentials="), Some(15));
        assert_eq!(secret_assignment("PATH=/bin"), None);
        assert_eq!(secret_assignment("KEY=x"), None, "no suffix, only a name");
        assert_eq!(secret_assignment("--sort-key=x"), None, "not a name");
        assert_eq!(secret_assignment("/etc/ssh/ssh_host_ed25519_key"), None);
        assert_eq!(
            args(&["env", "MY_PASS=", "x"]),
            ["env", "MY_PASS=", "x"],
            "nothing to hide"
        );
    }
}

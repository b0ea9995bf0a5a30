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

use super::record::{AuditObject, AuditRecord};

/// What a secret is replaced with.
pub const MARK: &str = "[REDACTED]";

/// Patterns applied unless `redaction.defaults` is false.
pub const DEFAULT_PATTERNS: &[&str] = &[
    // HTTP credentials in headers: Authorization: Bearer/Basic/Token ...
    r"(?i)\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|token|digest|negotiate)\s+)?(?P<secret>[^\s'\x22]+)",
    // key=value and key: value forms of the usual names.
    r"(?i)\b(?:access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|api[_-]?key|apikey|x-api-key|client[_-]?secret|secret[_-]?key|private[_-]?key|token|secret|password|passwd|pwd)\s*[=:]\s*(?P<secret>[^\s&'\x22,;]+)",
    // --password VALUE, --token VALUE and the like as separate arguments.
    r"(?i)(?:^|\s)--?(?:password|passwd|pass|token|api-key|apikey|secret|client-secret|access-token)\s+(?P<secret>\S+)",
    // curl -u user:password / --user user:password.
    r"(?:^|\s)(?:-u|--user|--proxy-user)\s*[^\s:]+:(?P<secret>\S+)",
    // user:password@ in URLs.
    r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]*:(?P<secret>[^/\s@]+)@",
    // AWS access key ids.
    r"\b(?P<secret>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16})\b",
    // GitHub tokens.
    r"\b(?P<secret>(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
    // GitLab personal access tokens.
    r"\b(?P<secret>glpat-[A-Za-z0-9_-]{20,})",
    // OpenAI, Anthropic and similar `sk-...` API keys.
    r"\b(?P<secret>sk-[A-Za-z0-9_-]{16,})",
    // Slack tokens.
    r"\b(?P<secret>xox[abposr]-[A-Za-z0-9-]{10,})",
    // Google API keys.
    r"\b(?P<secret>AIza[0-9A-Za-z_-]{35})",
    // JSON Web Tokens.
    r"\b(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    // PEM private keys pasted into an argument.
    r"(?s)(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))",
];

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

    /// Redacts every free-text field of `record` that may carry a secret:
    /// command lines, executables and paths of the process and its
    /// ancestors, the object's path and message.
    pub fn redact_record(&self, record: &mut AuditRecord) {
        let fix = |text: &mut String| {
            if let Some(clean) = self.redact_str(text) {
                *text = clean;
            }
        };
        match &mut record.object {
            AuditObject::File { path, .. } => fix(path),
            AuditObject::Message { message } => fix(message),
            _ => {}
        }
        if let Some(process) = &mut record.process {
            if let Some(exe) = &mut process.exe {
                fix(exe);
            }
            if let Some(cmdline) = &mut process.cmdline {
                self.redact_args(cmdline);
            }
            for ancestor in &mut process.ancestors {
                if let Some(exe) = &mut ancestor.exe {
                    fix(exe);
                }
                if let Some(cmdline) = &mut ancestor.cmdline {
                    self.redact_args(cmdline);
                }
            }
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
}

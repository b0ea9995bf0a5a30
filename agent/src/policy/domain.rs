//! Domain name patterns (`api.example.com`, `*.example.com`) and the
//! domain rules an agent's policy compiles to.
//!
//! A pattern is validated when it is parsed, so a policy that names an IP
//! address, an empty label or a misplaced `*` is rejected with the offending
//! value rather than silently never matching.

use std::{fmt, net::IpAddr};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, Visitor},
};

use crate::ids::{AgentId, RuleId};

/// The longest name DNS can carry, in presentation form without the final dot
/// (RFC 1035 section 2.3.4: 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;
/// RFC 1035 section 2.3.4.
const MAX_LABEL_LEN: usize = 63;

/// A domain name pattern from a policy.
///
/// * `api.example.com` matches that name only.
/// * `*.example.com` matches any name with at least one more label below
///   `example.com` (`a.example.com`, `a.b.example.com`), not `example.com`
///   itself.
///
/// Matching ignores ASCII case and one trailing dot. The pattern is stored
/// lower-case without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// For a wildcard, the part after `*.`; otherwise the whole name.
    name: String,
    wildcard: bool,
}

impl DomainPattern {
    /// Parses and validates a pattern.
    ///
    /// The error is a sentence to show a user, naming the value, e.g.
    /// `invalid domain "a..b": empty label`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid domain {text:?}: {why}");

        let trimmed = text.strip_suffix('.').unwrap_or(text);
        if trimmed.is_empty() {
            return Err(invalid("empty name"));
        }
        // Checked before the labels so that `10.0.0.1` and `::1` get an
        // error that says what is wrong instead of "invalid character".
        if trimmed.parse::<IpAddr>().is_ok() {
            return Err(invalid(
                "this is an IP address, not a name; use a cidr rule for addresses",
            ));
        }
        if trimmed.len() > MAX_NAME_LEN {
            return Err(invalid(&format!("longer than {MAX_NAME_LEN} characters")));
        }

        let (wildcard, name) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None if trimmed == "*" => {
                return Err(invalid("`*` needs a domain after it, e.g. *.example.com"));
            }
            None => (false, trimmed),
        };

        let mut last = "";
        for label in name.split('.') {
            if label.is_empty() {
                return Err(invalid("empty label"));
            }
            if label.contains('*') {
                return Err(invalid("`*` is only allowed as the whole leftmost label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(invalid(&format!(
                    "label {label:?} is longer than {MAX_LABEL_LEN} characters"
                )));
            }
            if let Some(c) = label.chars().find(|&c| !is_label_char(c)) {
                return Err(invalid(&format!(
                    "invalid character {c:?} (allowed: letters, digits, '-', '_')"
                )));
            }
            last = label;
        }
        // No top-level domain is all digits (RFC 3696 section 2), so such a
        // name is a mistyped or partial address, e.g. `10.0.0`.
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "the last label is all digits, which looks like an IP address; use a cidr rule for addresses",
            ));
        }

        Ok(Self {
            name: name.to_ascii_lowercase(),
            wildcard,
        })
    }

    /// Whether `name` (any case, with or without the trailing dot) is covered
    /// by this pattern.
    ///
    /// A name that is not a plain host name (an empty label, or a character
    /// outside letters, digits, `-` and `_`, including escaped dots such as
    /// `a\.example.com`) matches nothing: otherwise a label containing a dot
    /// could pass for two labels and escape from under a wildcard.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !is_plain_name(name) {
            return false;
        }
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        // At least one label, a dot, then the suffix.
        let Some(split) = name.len().checked_sub(self.name.len() + 1) else {
            return false;
        };
        split > 0
            && name.as_bytes()[split] == b'.'
            && name[split + 1..].eq_ignore_ascii_case(&self.name)
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The name, or for a wildcard the domain below which it matches,
    /// lower-case without the trailing dot.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Non-empty labels of label characters, separated by single dots.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(is_label_char))
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for DomainPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsing inside the visitor, not after, lets the deserializer attach
        // the value's line and column to the error.
        struct PatternVisitor;
        impl Visitor<'_> for PatternVisitor {
            type Value = DomainPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a domain name such as api.example.com or *.example.com")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DomainPattern, E> {
                DomainPattern::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(PatternVisitor)
    }
}

/// One domain rule of an agent's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    /// The names the rule allows.
    pub pattern: DomainPattern,
    /// The rule's id, cited by audit records and the kernel's allow map.
    pub rule_id: RuleId,
}

/// The names one agent may resolve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentNames {
    /// The agent's id in the kernel maps.
    pub agent_id: AgentId,
    /// The agent's name, for logs.
    pub agent: String,
    /// The domain allow rules.
    pub rules: Vec<DomainRule>,
    /// Names operators granted for a while (`baton grant AGENT --allow
    /// NAME:PORT`), rule ids with the grant bit; consulted only for names
    /// no rule allows, as grants open only what the policy leaves closed.
    pub grants: Vec<DomainRule>,
    /// Audit mode: a name no rule allows is reported through
    /// [`Learner::refused`](crate::egress::dns::Learner::refused) but still resolved (with rule id 0), because an
    /// agent in audit mode is never denied anything.
    pub audit: bool,
}

impl AgentNames {
    /// The rule that allows `name`, if any.
    ///
    /// The most specific match wins: an exact name beats any wildcard, and a
    /// wildcard with a longer suffix beats a shorter one (`*.a.example.com`
    /// beats `*.example.com`). Between equally specific rules the first wins.
    pub fn decide(&self, name: &str) -> Option<&DomainRule> {
        most_specific(&self.rules, name).or_else(|| most_specific(&self.grants, name))
    }
}

/// The most specific of `rules` that matches `name` (see
/// [`AgentNames::decide`]).
fn most_specific<'a>(rules: &'a [DomainRule], name: &str) -> Option<&'a DomainRule> {
    let specificity = |rule: &DomainRule| {
        (
            !rule.pattern.is_wildcard(),
            rule.pattern.name().split('.').count(),
        )
    };
    rules.iter().filter(|rule| rule.pattern.matches(name)).fold(
        None,
        |best: Option<&DomainRule>, rule| match best {
            Some(best) if specificity(best) >= specificity(rule) => Some(best),
            _ => Some(rule),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_matches_only_itself() {
        let pat = p("api.example.com");
        assert!(!pat.is_wildcard());
        assert!(pat.matches("api.example.com"));
        assert!(pat.matches("API.Example.COM."));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches("x.api.example.com"));
        assert!(!pat.matches("api.example.com.evil"));
        assert!(!pat.matches("api.example.co"));
    }

    #[test]
    fn wildcard_needs_one_more_label() {
        let pat = p("*.Example.com.");
        assert!(pat.is_wildcard());
        assert_eq!(pat.name(), "example.com");
        assert_eq!(pat.to_string(), "*.example.com");
        assert!(pat.matches("a.example.com"));
        assert!(pat.matches("a.b.EXAMPLE.com."));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches("example.com."));
        assert!(!pat.matches(".example.com"));
        assert!(!pat.matches("aexample.com"));
        assert!(!pat.matches("a.example.com.evil"));
    }

    #[test]
    fn odd_names_match_nothing() {
        let pat = p("*.example.com");
        // A single label "a.example" under "com" is not below example.com.
        assert!(!p("*.com").matches(r"a\.example.com"));
        assert!(!pat.matches(r"x\.y.example.com"));
        assert!(!pat.matches("a..example.com"));
        assert!(!pat.matches("*.example.com"));
        assert!(!pat.matches(""));
        assert!(!p("example.com").matches("example.com.."));
    }

    #[test]
    fn rejects_bad_patterns_with_a_reason() {
        let err = |s: &str| DomainPattern::parse(s).unwrap_err();
        assert_eq!(err("a..b"), r#"invalid domain "a..b": empty label"#);
        assert!(err("").contains("empty name"));
        assert!(err(".").contains("empty name"));
        assert!(err("*").contains("needs a domain"));
        assert!(err("*.").contains("needs a domain"));
        assert!(err("a.*.com").contains("leftmost"));
        assert!(err("*a.com").contains("leftmost"));
        assert!(err("**.com").contains("leftmost"));
        assert!(err("*.*.com").contains("leftmost"));
        assert!(err("10.0.0.1").contains("IP address"));
        assert!(err("::1").contains("IP address"));
        assert!(err("10.0.0").contains("all digits"));
        assert!(err("exa mple.com").contains("invalid character ' '"));
        assert!(err("ex!.com").contains("invalid character '!'"));
        assert!(err(&format!("{}.com", "a".repeat(64))).contains("longer than 63"));
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(err(&long).contains("longer than 253"));
    }

    #[test]
    fn accepts_limits_and_underscores() {
        p(&format!("{}.com", "a".repeat(63)));
        let name = format!("{}.com", vec!["a".repeat(61); 4].join("."));
        assert_eq!(name.len(), 251);
        p(&name);
        p("_dmarc.example.com");
        p("xn--bcher-kva.example");
        p("localhost");
        p("*.com");
    }

    #[test]
    fn serde_round_trip_and_positioned_errors() {
        let pats: Vec<DomainPattern> =
            serde_norway::from_str("- API.example.com\n- '*.example.org.'\n").unwrap();
        assert_eq!(pats, vec![p("api.example.com"), p("*.example.org")]);
        assert_eq!(
            serde_norway::to_string(&pats).unwrap(),
            "- api.example.com\n- '*.example.org'\n"
        );

        let err = serde_norway::from_str::<Vec<DomainPattern>>("- ok.example\n- a..b\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"invalid domain "a..b": empty label"#),
            "{err}"
        );
        assert!(err.contains("line 2 column 3"), "{err}");
    }
}

//! The numbers the daemon and the kernel programs name things by.
//!
//! The kernel's maps and events carry them as plain `u32` (the layouts in
//! `agent-common` are the wire format), and so do the JSON files a
//! restarted daemon reads. Inside the daemon each kind has its own type, so
//! a rule id cannot be passed where an agent id is expected, and a
//! generation cannot be compared with either. The raw number comes out only
//! where a map key, an event field or a metric label needs it.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(u32);

        impl $name {
            /// The id the kernel's maps and events carry as this number.
            pub const fn from_raw(raw: u32) -> Self {
                Self(raw)
            }

            /// The number the kernel's maps and events carry.
            pub const fn raw(self) -> u32 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type! {
    /// An agent, as the kernel programs key it: given by the daemon's
    /// registry when a policy first names the agent, kept across reloads
    /// and restarts, never reused for another name. 0 is no agent.
    AgentId
}

id_type! {
    /// A rule of a compiled policy set, as records name it: unique across
    /// the two generations the maps hold. 0 is no rule (a default, or a
    /// decision no rule made).
    RuleId
}

id_type! {
    /// A policy set swapped into the maps: one more on every swap. The
    /// maps hold two, the one in force and the one before it, in the slot
    /// `generation % 2`. 0 is no set yet.
    Generation
}

impl AgentId {
    /// No agent: what the kernel writes for a process in none.
    pub const NONE: Self = Self(0);
}

impl RuleId {
    /// No rule: a default decided, or nothing did.
    pub const NONE: Self = Self(0);

    /// Where a set compiled on its own (a check, a diff, a daemon's first
    /// load) starts numbering its rules.
    pub const FIRST: Self = Self(1);

    /// Whether this names no rule.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The id of the rule `n` places after this one in a rule table.
    pub const fn after(self, n: usize) -> Self {
        Self(self.0 + n as u32)
    }

    /// Where this rule sits in a rule table that starts at `first`; `None`
    /// when it comes before it.
    pub const fn index_from(self, first: Self) -> Option<usize> {
        match self.0.checked_sub(first.0) {
            Some(index) => Some(index as usize),
            None => None,
        }
    }
}

impl Generation {
    /// No policy set swapped in yet.
    pub const NONE: Self = Self(0);

    /// The generation swapped in after this one; it wraps past 0, which
    /// means none.
    pub const fn next(self) -> Self {
        match self.0.wrapping_add(1) {
            0 => Self(1),
            next => Self(next),
        }
    }

    /// Which of the maps' two slots this generation's rules live in.
    pub const fn slot(self) -> u32 {
        self.0 % 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_the_bare_number_previous_daemons_wrote() {
        let ids = std::collections::BTreeMap::from([("coder".to_owned(), AgentId::from_raw(7))]);
        let json = serde_json::to_string(&ids).unwrap();
        assert_eq!(json, r#"{"coder":7}"#);
        let back: std::collections::BTreeMap<String, AgentId> =
            serde_json::from_str(&json).unwrap();
        assert_eq!(back, ids);
        assert_eq!(RuleId::from_raw(12).to_string(), "12");
        assert_eq!(
            Generation::from_raw(u32::MAX).next(),
            Generation::from_raw(1)
        );
        assert_eq!(Generation::NONE.next().slot(), 1);
    }
}

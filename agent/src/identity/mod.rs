//! Which agent names exist and the numeric ids the kernel knows them by.
//!
//! Ids are allocated once per name and never reused while the daemon runs,
//! so a reload that drops and re-adds an agent cannot hand its processes to
//! another agent's rules.

use std::collections::BTreeMap;

use crate::{
    ids::AgentId,
    policy::{CompiledPolicySet, spec::Name},
};

/// Agent names and ids.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    ids: BTreeMap<Name, AgentId>,
    names: BTreeMap<AgentId, Name>,
    next_id: u32,
}

impl AgentRegistry {
    /// An empty registry; ids start at 1.
    pub fn new() -> Self {
        Self {
            next_id: 1,
            ..Self::default()
        }
    }

    /// A registry taken over from a previous daemon, whose processes the
    /// kernel still knows by these ids.
    pub fn restore(ids: BTreeMap<Name, AgentId>) -> Self {
        let next_id = ids.values().max().map_or(1, |max| max.raw() + 1);
        let names = ids.iter().map(|(name, id)| (*id, name.clone())).collect();
        Self {
            ids,
            names,
            next_id,
        }
    }

    /// Allocates ids for agents first seen in `set`.
    pub fn sync(&mut self, set: &CompiledPolicySet) {
        for name in set.agents.keys() {
            if !self.ids.contains_key(name) {
                let id = AgentId::from_raw(self.next_id);
                self.ids.insert(name.clone(), id);
                self.names.insert(id, name.clone());
                self.next_id += 1;
            }
        }
    }

    /// Every known agent and its id.
    pub fn ids(&self) -> &BTreeMap<Name, AgentId> {
        &self.ids
    }

    /// Id of a named agent.
    pub fn id_of(&self, name: &str) -> Option<AgentId> {
        self.ids.get(name).copied()
    }

    /// Name of an agent id.
    pub fn name_of(&self, id: AgentId) -> Option<&Name> {
        self.names.get(&id)
    }
}

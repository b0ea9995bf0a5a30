//! Secrets' taints: recording the open that tainted an agent, and
//! `baton taint list|clear`.
//!
//! The kernel (BPF LSM `file_open`) or the fanotify listener writes the
//! taint before the open returns; the egress programs hold the agent to its
//! narrowed rules from then on. This module only notices taints after the
//! fact, to record, count and report them, and lifts them when an operator
//! asks.

use super::*;
use crate::{
    audit::record::{AuditObject, AuditProcess, AuditRule},
    policy::compile::CompiledAgent,
};

/// What the daemon says about one taint, in records, replies and status.
fn describe_taint(
    policies: &CompiledPolicySet,
    agent: Option<&CompiledAgent>,
    agent_name: &str,
    taint: &agent_common::identity::SecretTaint,
) -> serde_json::Value {
    let rule_id = RuleId::from_raw(taint.rule_id);
    let rule = policies.rule(rule_id);
    let secret = agent
        .and_then(|a| a.secrets.iter().find(|(_, id)| *id == rule_id))
        .map_or_else(
            || "a secret of an earlier policy".to_string(),
            |(path, _)| path.clone(),
        );
    let comm_len = taint
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(taint.comm.len());
    serde_json::json!({
        "agent": agent_name,
        "secret": secret,
        "rule": rule.map_or_else(|| format!("rule {}", taint.rule_id), |r| r.rule.clone()),
        "policy": rule.map_or("", |r| r.policy.as_str()),
        "time": crate::audit::record::format_time(Clock::new().wall(taint.at_boot_ns)),
        "pid": taint.tgid,
        "tid": taint.pid,
        "uid": taint.uid,
        "comm": String::from_utf8_lossy(&taint.comm[..comm_len]),
    })
}

impl State {
    /// Agent `agent_id`'s name and its taint, described.
    fn describe(
        &self,
        agent_id: AgentId,
        taint: &agent_common::identity::SecretTaint,
    ) -> (String, serde_json::Value) {
        let name = self
            .registry
            .name_of(agent_id)
            .map_or_else(|| format!("#{agent_id}"), |n| n.to_string());
        let agent = self
            .registry
            .name_of(agent_id)
            .and_then(|n| self.policies.agents.get(n));
        let described = describe_taint(&self.policies, agent, &name, taint);
        (name, described)
    }

    /// Every taint in force, described.
    pub(super) fn taints(&self) -> Vec<serde_json::Value> {
        self.runtime
            .taints()
            .iter()
            .map(|(agent_id, taint)| self.describe(*agent_id, taint).1)
            .collect()
    }

    /// Records each taint the kernel or the fanotify listener set since the
    /// last look, and forgets the ones an operator lifted.
    pub(super) fn notice_taints(&mut self) {
        let taints = self.runtime.taints();
        self.taints_seen.retain(|agent_id, at| {
            taints
                .get(agent_id)
                .is_some_and(|taint| taint.at_boot_ns == *at)
        });
        for (agent_id, taint) in &taints {
            if self.taints_seen.contains_key(agent_id) {
                continue;
            }
            self.taints_seen.insert(*agent_id, taint.at_boot_ns);
            let (name, described) = self.describe(*agent_id, taint);
            self.metrics.set_secret_tainted(&name, true);
            let text = |key: &str| described[key].as_str().unwrap_or_default().to_string();
            let message = format!(
                "agent {name} opened secret {} ({}): its egress is held to egress.afterSecret until `baton taint clear {name}`",
                text("secret"),
                text("rule"),
            );
            tracing::warn!("{message}");
            let mut process = AuditProcess::live(taint.tgid, 0);
            process.pid = taint.tgid;
            process.tid = taint.pid;
            process.uid = taint.uid;
            process.comm = text("comm");
            let record = AuditRecord {
                time: text("time"),
                agent: Some(name.clone()),
                mode: Some("enforce"),
                verdict: "allowed",
                control: "secret",
                hook: Some("secret_taint"),
                object: AuditObject::Message { message },
                rule: Some(AuditRule {
                    policy: text("policy"),
                    id: text("rule"),
                    kernel_id: taint.rule_id,
                }),
                process: Some(process),
                ..AuditRecord::lifecycle(&self.host, "secret", String::new())
            };
            self.record(record);
        }
    }
}

impl Daemon {
    /// `baton taint list`.
    pub(super) fn taint_list(&self) -> Reply {
        let state = self.state.lock().expect("state lock poisoned");
        Reply::Taints {
            taints: state.taints(),
        }
    }

    /// `baton taint clear AGENT`.
    pub(super) fn taint_clear(&self, agent: &str) -> Reply {
        let mut state = self.state.lock().expect("state lock poisoned");
        let Some(agent_id) = state.registry.id_of(agent) else {
            return Reply::Error {
                message: format!("no loaded policy selects agent {agent:?}"),
            };
        };
        // A taint not noticed yet is recorded before it goes.
        state.notice_taints();
        match state.runtime.clear_taint(agent_id) {
            Ok(false) => Reply::Done {
                message: format!("agent {agent} is not tainted"),
            },
            Ok(true) => {
                state.taints_seen.remove(&agent_id);
                state.metrics.set_secret_tainted(agent, false);
                let message = format!(
                    "agent {agent}: taint cleared by an operator; its full egress policy applies again"
                );
                tracing::info!("{message}");
                let mut record = AuditRecord::lifecycle(&state.host, "secret", message.clone());
                record.agent = Some(agent.to_string());
                state.record(record);
                Reply::Done { message }
            }
            Err(error) => Reply::Error {
                message: format!("cannot clear agent {agent}'s taint: {error}"),
            },
        }
    }
}

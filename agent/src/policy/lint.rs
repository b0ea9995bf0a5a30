//! Warnings about policies that are valid but probably not what was meant.

use std::path::Path;

use agent_common::{files::right, verdict::decision};

use super::{CompiledPolicySet, compile::CompiledAgent};

/// One warning about an agent's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The agent.
    pub agent: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// Files every dynamically linked program needs: the loader, its cache and
/// the C library. Resolved on this host, since the kernel matches resolved
/// paths.
const RUNTIME_FILES: [&str; 3] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/etc/ld.so.cache",
    "/lib/x86_64-linux-gnu/libc.so.6",
];

/// The decision for `r` on `path` under the agent's rules: the most specific
/// rule wins, deny wins a tie, the default decides when nothing matches.
fn decide(agent: &CompiledAgent, path: &str, r: usize) -> u8 {
    let bit = right::bit(r);
    let covers =
        |prefix: &str| prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"));
    agent
        .file_rules
        .iter()
        .filter(|rule| rule.rights & bit != 0 && covers(&rule.path))
        .max_by_key(|rule| (rule.path.len(), rule.decision == decision::DENY))
        .map(|rule| rule.decision)
        .unwrap_or(if r == right::EXEC {
            agent.exec_default
        } else {
            agent.file_default
        })
}

fn resolve(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// Warnings for a compiled set.
pub fn lint(set: &CompiledPolicySet) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (name, agent) in &set.agents {
        let mut warn = |message: String| {
            warnings.push(Warning {
                agent: name.to_string(),
                message,
            })
        };
        for file in RUNTIME_FILES.iter().filter(|f| Path::new(f).exists()) {
            let resolved = resolve(file);
            if decide(agent, &resolved, right::READ) == decision::DENY {
                warn(format!(
                    "reading {resolved} is denied: every dynamically linked program the agent runs needs it"
                ));
            }
            if file.contains(".so") && decide(agent, &resolved, right::EXEC) == decision::DENY {
                warn(format!(
                    "mapping {resolved} executable is denied (exec right): the agent cannot start dynamically linked programs; allow its directory in exec.allow"
                ));
            }
        }
        for executable in &agent.executables {
            let resolved = resolve(executable);
            if decide(agent, &resolved, right::EXEC) == decision::DENY {
                warn(format!(
                    "the agent is selected by executable {executable}, which its own exec rules deny: it can never start"
                ));
            }
        }
        if agent.allow_namespaces {
            warn(
                "process.namespaces: allow lets the agent create user namespaces, mount, bind-mount, chroot and pivot_root: rules on paths that exist are matched by object and still hold, but rules on paths that did not exist at load, and files with no rule object above them (a copy of a binary an exec allowlist would refuse), are matched on the path, which a mount or chroot lets the agent choose; allow it only for agents that need containers".into(),
            );
        }
        if agent.exec_default == decision::ALLOW
            && agent
                .file_rules
                .iter()
                .any(|r| r.rights == right::bit(right::EXEC) && r.decision == decision::DENY)
        {
            warn(
                "exec denies some programs but allows the rest: a copy (cp /usr/bin/nc /tmp/x) escapes a denylist; prefer exec.default: deny with an allowlist".into(),
            );
        }
        let exec_bit = right::bit(right::EXEC);
        let exec_rules = |wanted: u8| {
            agent
                .file_rules
                .iter()
                .filter(move |r| r.rights & exec_bit != 0 && r.decision == wanted)
        };
        for deny in exec_rules(decision::DENY) {
            let inside = exec_rules(decision::ALLOW).find(|allow| {
                allow.path != deny.path
                    && (allow.path == "/" || deny.path.starts_with(&format!("{}/", allow.path)))
            });
            if let Some(allow) = inside {
                warn(format!(
                    "exec denies {} inside the allowed {}: a per-tool deny inside an allowed tree is weak, since another program in the tree can do the same work (busybox's applets, an interpreter, ld.so running a copy); leave the tree out of exec.allow and allow the tools the agent needs",
                    deny.path, allow.path
                ));
            }
        }
        for (secret, _) in &agent.secrets {
            if decide(agent, secret, right::READ) == decision::DENY {
                warn(format!(
                    "secret {secret} cannot be read (a file rule denies it), so it never narrows the agent's egress; list it in files.deny or files.secrets, not both"
                ));
            }
        }
        if agent.allow_privilege_escalation {
            warn(
                "process.allowPrivilegeEscalation is true: baton exec leaves no_new_privs off, so an agent running as an ordinary user can become root through any setuid binary on the host".into(),
            );
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{compile, load::parse_str};

    #[test]
    fn warns_about_a_tool_denied_inside_an_allowed_tree() {
        let text = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: p
spec:
  selector:
    agent: a
  exec:
    default: deny
    allow: [/usr]
    deny: [/usr/bin/id]
";
        let set = compile(
            &parse_str(Path::new("p.yaml"), text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        let warnings = lint(&set);
        assert!(
            warnings.iter().any(|w| w
                .message
                .contains("exec denies /usr/bin/id inside the allowed /usr")),
            "{warnings:?}"
        );
        // A deny beside the allowed tree is what allowlists are for.
        let text = text.replace("deny: [/usr/bin/id]", "deny: [/opt/tool]");
        let set = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        assert!(
            !lint(&set)
                .iter()
                .any(|w| w.message.contains("per-tool deny")),
            "{:?}",
            lint(&set)
        );
    }

    #[test]
    fn warns_about_a_locked_out_loader_and_denylists() {
        let text = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: p
spec:
  selector:
    agent: a
  exec:
    default: deny
    allow: [/opt/agent]
";
        let set = compile(
            &parse_str(Path::new("p.yaml"), text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        let warnings = lint(&set);
        if Path::new("/lib64/ld-linux-x86-64.so.2").exists() {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.message.contains("executable is denied")),
                "{warnings:?}"
            );
        }
        let text = text.replace(
            "default: deny\n    allow: [/opt/agent]",
            "deny: [/usr/bin/nc]",
        );
        let set = compile(
            &parse_str(Path::new("p.yaml"), &text).unwrap(),
            crate::ids::RuleId::FIRST,
        )
        .unwrap();
        assert!(
            lint(&set)
                .iter()
                .any(|w| w.message.contains("escapes a denylist"))
        );
    }

    #[test]
    fn warns_when_privilege_escalation_is_allowed() {
        let text = "apiVersion: baton.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: p
spec:
  selector:
    agent: a
  process:
    allowPrivilegeEscalation: true
";
        let escalates = |text: &str| {
            let set = compile(
                &parse_str(Path::new("p.yaml"), text).unwrap(),
                crate::ids::RuleId::FIRST,
            )
            .unwrap();
            lint(&set)
                .iter()
                .any(|w| w.message.contains("allowPrivilegeEscalation"))
        };
        assert!(escalates(text));
        assert!(!escalates(&text.replace("true", "false")));
        assert!(!escalates(&text.replace(
            "  process:\n    allowPrivilegeEscalation: true\n",
            ""
        )));
    }

    #[test]
    fn namespaces_are_denied_unless_every_policy_allows_them_and_allowing_warns() {
        let doc = |name: &str, process: &str| {
            format!(
                "apiVersion: baton.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    agent: a\n{process}"
            )
        };
        let compiled = |text: &str| {
            compile(
                &parse_str(Path::new("p.yaml"), text).unwrap(),
                crate::ids::RuleId::FIRST,
            )
            .unwrap()
        };
        let warns = |set: &CompiledPolicySet| {
            lint(set)
                .iter()
                .any(|w| w.message.contains("process.namespaces: allow"))
        };
        let set = compiled(&doc("p", ""));
        assert!(!set.agents.values().next().unwrap().allow_namespaces);
        assert!(!warns(&set));
        let allow = doc("p", "  process:\n    namespaces: allow\n");
        let set = compiled(&allow);
        assert!(set.agents.values().next().unwrap().allow_namespaces);
        assert!(warns(&set));
        let both = format!("{allow}---\n{}", doc("q", "  process: {}\n"));
        let set = compiled(&both);
        assert!(!set.agents.values().next().unwrap().allow_namespaces);
        let error = parse_str(
            Path::new("p.yaml"),
            &doc("p", "  process:\n    namespaces: maybe\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("p.yaml:9:17:"), "{error}");
    }
}

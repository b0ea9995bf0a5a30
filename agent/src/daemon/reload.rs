//! The policy service's reloads: a new set from the sources is compiled,
//! swapped in with no enforcement gap, and its bookkeeping kept for `baton
//! status` and the metrics. A set that fails any step leaves the last good
//! one in force.

use super::*;

/// Where the set in force came from and how its reloads went, for `baton
/// status`.
pub(super) struct ReloadLog {
    /// Where the policies in force came from.
    source: String,
    /// When they were loaded (RFC 3339).
    loaded_at: String,
    /// The last policy load that was refused, if any.
    error: Option<String>,
    /// How long the phases of the last successful reload took.
    last: Option<ReloadTiming>,
    /// Per policy source: the set in force and the last error.
    sources: Vec<crate::policy::source::SourceStatus>,
    /// What the set in force looks like, to skip reloads that change nothing.
    fingerprint: String,
}

impl ReloadLog {
    /// The log of a daemon that started with `policies` from `source`.
    pub(super) fn new(source: &str, policies: &[crate::policy::LoadedPolicy]) -> Self {
        Self {
            source: source.to_string(),
            loaded_at: crate::audit::record::format_time(std::time::SystemTime::now()),
            error: None,
            last: None,
            sources: Vec::new(),
            fingerprint: policy_fingerprint(policies),
        }
    }

    /// The `policy` section of `baton status`.
    pub(super) fn to_json(&self, generation: Generation) -> serde_json::Value {
        serde_json::json!({
            "generation": generation,
            "source": self.source,
            "loaded_at": self.loaded_at,
            "last_error": self.error,
            "last_reload": self.last.map(ReloadTiming::to_json),
            "sources": self.sources,
        })
    }
}

/// How long each phase of a reload took.
#[derive(Clone, Copy, Debug)]
struct ReloadTiming {
    /// Reading and parsing, when the source measured it.
    parse: Option<Duration>,
    compile: Duration,
    swap: Duration,
    /// Rules in the new set (egress, file and domain rules, flattened).
    rules: usize,
}

impl ReloadTiming {
    fn ms(duration: Duration) -> f64 {
        // Microsecond resolution is plenty and keeps the JSON short.
        (duration.as_micros() as f64) / 1e3
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "parse_ms": self.parse.map(Self::ms),
            "compile_ms": Self::ms(self.compile),
            "swap_ms": Self::ms(self.swap),
            "rules": self.rules,
        })
    }

    /// `parse 3.1 ms, compile 40.2 ms, swap 55.0 ms, 10000 rules`.
    fn describe(self) -> String {
        let parse = self.parse.map_or_else(
            || "not measured".to_string(),
            |d| format!("{:.1} ms", Self::ms(d)),
        );
        format!(
            "parse {parse}, compile {:.1} ms, swap {:.1} ms, {} rules",
            Self::ms(self.compile),
            Self::ms(self.swap),
            self.rules
        )
    }
}

/// The policy documents, serialized: equal strings mean equal sets.
fn policy_fingerprint(policies: &[crate::policy::LoadedPolicy]) -> String {
    let mut documents: Vec<String> = policies
        .iter()
        .map(|p| serde_json::to_string(&p.document).unwrap_or_default())
        .collect();
    documents.sort();
    documents.join("\n")
}

impl PolicyService {
    /// Compiles and swaps in a new policy set with no enforcement gap: the
    /// kernel sees the old generation until one write makes the new one
    /// live. Run-time state (learned addresses, breakers, counters) stays.
    /// `read_time` is how long the source took to read and parse the set,
    /// when it measured that.
    fn reload(
        &mut self,
        policies: &[crate::policy::LoadedPolicy],
        origin: &str,
        read_time: Option<Duration>,
    ) -> Result<(), String> {
        // A source re-reading what is already in force (its first read at
        // start, a touch of a file) is not a reload.
        let fingerprint = policy_fingerprint(policies);
        if fingerprint == self.reloads.fingerprint {
            self.reloads.source = origin.to_string();
            return Ok(());
        }
        let first_rule_id = self.policies.first_rule_id.after(self.policies.rules.len());
        let compile_started = std::time::Instant::now();
        let compiled = compile_protected(policies, first_rule_id, &expand_on_disk, &self.protected)
            .map_err(|e| e.to_string())?;
        let compile_time = compile_started.elapsed();
        let rule_count = compiled.rules.len();
        let swap_started = std::time::Instant::now();
        self.registry.sync(&compiled);
        // Events decided under the old generation may still be in the ring
        // buffer: rule ids only grow, and the old generation's names stay
        // resolvable. Older ones are dropped, so the table stays bounded.
        let keep_from = self
            .live_first_rule_id
            .index_from(self.policies.first_rule_id)
            .unwrap_or(0);
        // The drain names events without the state lock, so it must know
        // the new agents and rules before the kernel decides by them.
        let naming = Naming::new(
            &self.registry,
            &compiled,
            self.policies.rules.iter().skip(keep_from),
            self.policies.first_rule_id.after(keep_from),
        );
        self.writer
            .lock()
            .expect("audit writer lock poisoned")
            .set_naming(naming);
        // Before the new selectors take effect, as at start.
        for message in backstop::cover_policies(&self.backstop, &compiled, &self.cgroup_root) {
            tracing::info!("{message}");
            let host = self.host.clone();
            self.record(AuditRecord::lifecycle(&host, "egress", message));
        }
        let swapped = self
            .maps
            .apply(&compiled, self.registry.ids())
            .and_then(|generation| {
                self.maps
                    .apply_selectors(&compiled, self.registry.ids(), &self.cgroup_root)
                    .map(|unresolved| (generation, unresolved))
            });
        let (generation, unresolved) = match swapped {
            Ok(swapped) => swapped,
            Err(error) => {
                self.publish_naming();
                return Err(error.to_string());
            }
        };
        let live_first = compiled.first_rule_id;
        let old = std::mem::replace(&mut self.policies, compiled);
        let mut rules: Vec<_> = old.rules.into_iter().skip(keep_from).collect();
        rules.append(&mut self.policies.rules);
        self.policies.rules = rules;
        self.policies.first_rule_id = old.first_rule_id.after(keep_from);
        self.live_first_rule_id = live_first;
        self.publish_naming();
        self.save_registry();
        let cgroup_root = self.cgroup_root.clone();
        self.admit_cgroup_members(&cgroup_root);
        self.refresh_fanotify();
        if !self.files_enforced && !self.detection {
            let undetected: Vec<String> = self
                .policies
                .agents
                .iter()
                .filter(|(_, a)| !a.cgroups.is_empty() || !a.executables.is_empty())
                .map(|(name, _)| name.to_string())
                .collect();
            if !undetected.is_empty() {
                let message = format!(
                    "control degraded: the detection programs are attached at start, and only when an agent is selected by cgroup, unit or executable; agents {} get no detection until the daemon restarts",
                    undetected.join(", ")
                );
                tracing::warn!("{message}");
                let host = self.host.clone();
                self.record(AuditRecord::lifecycle(&host, "file", message));
            }
        }
        self.breakers
            .lock()
            .expect("breakers lock poisoned")
            .follow(&self.policies, &self.registry);
        self.refresh_dns();
        let timing = ReloadTiming {
            parse: read_time,
            compile: compile_time,
            swap: swap_started.elapsed(),
            rules: rule_count,
        };
        let host = self.host.clone();
        for selector in unresolved {
            self.record(AuditRecord::lifecycle(
                &host,
                "policy",
                format!(
                    "agent {}: {} {} is not selected yet: {}",
                    selector.agent, selector.what, selector.path, selector.reason
                ),
            ));
        }
        let agents: Vec<String> = self.policies.agents.keys().map(|n| n.to_string()).collect();
        self.record(AuditRecord::lifecycle(
            &host,
            "policy",
            format!(
                "generation {generation} loaded from {origin}: agents {}; {}",
                agents.join(", "),
                timing.describe()
            ),
        ));
        tracing::info!(generation = generation.raw(), origin, timing = %timing.describe(), "policies reloaded");
        if let Some(parse) = timing.parse {
            self.metrics
                .observe_reload_phase(crate::metrics::ReloadPhase::Parse, parse);
        }
        self.metrics
            .observe_reload_phase(crate::metrics::ReloadPhase::Compile, timing.compile);
        self.metrics
            .observe_reload_phase(crate::metrics::ReloadPhase::Swap, timing.swap);
        self.reloads.last = Some(timing);
        self.metrics
            .set_policy_generation(u64::from(generation.raw()));
        self.metrics
            .record_policy_reload(crate::metrics::ReloadResult::Success);
        self.reloads.source = origin.to_string();
        self.reloads.loaded_at = crate::audit::record::format_time(std::time::SystemTime::now());
        self.reloads.error = None;
        self.reloads.fingerprint = fingerprint;
        Ok(())
    }

    /// Records a policy set that was refused; the last good set stays.
    fn policy_rejected(&mut self, source: &str, error: &str) {
        let message =
            format!("policy set from {source} rejected, the last good set stays in force: {error}");
        tracing::error!("{message}");
        let host = self.host.clone();
        self.record(AuditRecord::lifecycle(&host, "policy", message));
        self.metrics
            .record_policy_reload(crate::metrics::ReloadResult::Failure);
        self.reloads.error = Some(format!("{source}: {error}"));
    }
}

/// Applies every new desired set the policy sources produce. A set that
/// does not parse, verify, compile or fit leaves the last good one in force.
pub(super) async fn follow_sources(
    daemon: Weak<Daemon>,
    mut sources: crate::policy::source::Sources,
) {
    let mut desired = crate::policy::source::DesiredSet::new(sources.names.clone());
    while let Some(update) = sources.updates.recv().await {
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        let source = update.source.clone();
        let origin = update.origin.clone();
        let read_time = update.read_time;
        let Ok(mut state) = daemon.policy.lock() else {
            return;
        };
        // Nothing is applied until every source has reported once, so one
        // source's set never stands in for all of them.
        match desired.apply(update) {
            crate::policy::source::Step::Apply(policies) => {
                if let Err(error) = state.reload(&policies, &origin, read_time) {
                    desired.reject(&source, &error);
                    state.policy_rejected(&source, &error);
                }
            }
            crate::policy::source::Step::Rejected(error) => state.policy_rejected(&source, &error),
            crate::policy::source::Step::Wait => {}
        }
        state.reloads.sources = desired.status();
        drop(state);
        release_freed_memory();
    }
}

/// Gives the memory a reload freed back to the system. A reload of 10,000
/// rules allocates and frees tens of MiB on whichever runtime thread runs
/// it, and glibc keeps what each thread's arena freed: without this, RSS
/// grew by some 30 MiB over ten such reloads (`cargo xtask bench reload`).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps glibc from holding on to what a reload frees. By default glibc
/// raises its mmap threshold to the size of each large block freed (up to
/// 32 MiB), so once the first 10,000-rule set is dropped, the next sets'
/// large buffers (policy text, rule tables) come from the heap instead of
/// their own mappings, and free space between long-lived allocations is
/// kept: RSS drifted by up to 20% over 100 reloads (`cargo xtask bench
/// reload`). A fixed threshold returns every large block to the system
/// when it is freed. 1 MiB, not glibc's initial 128 KiB: the audit writer's
/// batches (about 256 KiB) then stay on the heap, where mapping and
/// unmapping each one cost a tenth of the writer's time.
pub(super) fn fix_allocator_thresholds() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before the runtime's threads start allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

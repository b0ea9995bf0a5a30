//! Kernel-side debug logging: the eBPF programs' aya-log lines, read from
//! their ring and written to the daemon's log with target `kernel`.
//!
//! The log statements are compiled into every program. Whether they run is
//! the read-only global [`LEVEL_GLOBAL`], which the loader sets before the
//! programs are verified: at [`KernelLog::Off`] (the default) the verifier
//! knows the branch is never taken and drops it: nothing of it runs. (The
//! compiler lays out the code around such a branch differently, so the
//! verified instruction counts are not those of a build without logging;
//! `verifier-stats` shows them.) `baton run --kernel-log debug` turns it
//! on for a decision or verifier problem that would otherwise need a
//! rebuild.

use aya::{Ebpf, EbpfLoader};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

/// The programs' global holding the highest level that is logged (0: none).
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// The programs' global holding the hook families that log.
pub const FAMILIES_GLOBAL: &str = agent_common::klog::FAMILIES_GLOBAL;

/// A family of hooks that can log on its own (`--kernel-log-hooks`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookFamily {
    /// `connect*` and `sendmsg*`: each decision.
    Egress,
    /// The packet backstop: each packet it drops.
    Backstop,
    /// The file and exec hooks: paths they could not resolve or place.
    Files,
}

/// What the kernel programs log: the globals the loader sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLogSettings {
    /// Value of [`LEVEL_GLOBAL`].
    pub level: u8,
    /// Value of [`FAMILIES_GLOBAL`].
    pub families: u8,
}

impl KernelLogSettings {
    /// Nothing logs.
    pub const OFF: Self = Self {
        level: 0,
        families: 0,
    };

    /// `level` for `families` (every family when empty).
    pub fn new(level: KernelLog, families: &[HookFamily]) -> Self {
        if level == KernelLog::Off {
            return Self::OFF;
        }
        let families = if families.is_empty() {
            agent_common::klog::ALL
        } else {
            families.iter().fold(0, |bits, family| {
                bits | match family {
                    HookFamily::Egress => agent_common::klog::EGRESS,
                    HookFamily::Backstop => agent_common::klog::BACKSTOP,
                    HookFamily::Files => agent_common::klog::FILES,
                }
            })
        };
        Self {
            level: level.global(),
            families,
        }
    }

    /// Whether anything logs.
    pub fn on(self) -> bool {
        self.level != 0 && self.families != 0
    }
}

/// Sets both of the programs' log globals on `loader`. Every load of the
/// object goes through it: aya-log's own default is to log everything.
pub fn set_globals<'a, 'l>(
    loader: &'l mut EbpfLoader<'a>,
    settings: &'a KernelLogSettings,
) -> &'l mut EbpfLoader<'a> {
    loader
        .override_global(LEVEL_GLOBAL, &settings.level, true)
        .override_global(FAMILIES_GLOBAL, &settings.families, true)
}

/// How much the kernel programs log.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelLog {
    /// Nothing: the log code is not even verified.
    #[default]
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors (e.g. a path a file hook could not resolve).
    Warn,
    /// Informational lines and above.
    Info,
    /// Debug lines and above (each connect or send decision, each packet
    /// the backstop drops).
    Debug,
    /// Everything.
    Trace,
}

impl KernelLog {
    /// The value of [`LEVEL_GLOBAL`] for this level.
    pub fn global(self) -> u8 {
        use aya_log::Level;
        match self {
            Self::Off => 0,
            Self::Error => Level::Error as u8,
            Self::Warn => Level::Warn as u8,
            Self::Info => Level::Info as u8,
            Self::Debug => Level::Debug as u8,
            Self::Trace => Level::Trace as u8,
        }
    }
}

/// Errors while starting the reader.
#[derive(Debug, Error)]
pub enum KernelLogError {
    /// The log ring could not be taken from the object.
    #[error("kernel log ring: {0}")]
    Ring(#[from] aya_log::Error),
    /// The ring's descriptor could not be watched.
    #[error("kernel log ring: {0}")]
    Watch(#[from] std::io::Error),
}

/// Writes the programs' lines to `tracing`. The operator asked for them
/// with `--kernel-log`, so debug and trace lines are written at `info`:
/// the daemon's own log filter would hide them otherwise. The kernel's
/// level is in the `level` field.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = record.level();
        let line = record.args();
        match level {
            log::Level::Error => tracing::error!(target: "kernel", %level, "{line}"),
            log::Level::Warn => tracing::warn!(target: "kernel", %level, "{line}"),
            _ => tracing::info!(target: "kernel", %level, "{line}"),
        }
    }

    fn flush(&self) {}
}

/// Takes the log ring out of `ebpf` and starts the task that reads it for
/// as long as the daemon runs.
pub fn spawn_reader(ebpf: &mut Ebpf) -> Result<(), KernelLogError> {
    let logger = aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing)?;
    // SAFETY: the logger owns the ring's descriptor and `AsyncFd` owns the
    // logger, so the descriptor outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = ring.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_default_to_all_and_off_is_off() {
        assert_eq!(
            KernelLogSettings::new(KernelLog::Debug, &[]).families,
            agent_common::klog::ALL
        );
        assert_eq!(
            KernelLogSettings::new(KernelLog::Debug, &[HookFamily::Egress, HookFamily::Files]),
            KernelLogSettings {
                level: KernelLog::Debug.global(),
                families: agent_common::klog::EGRESS | agent_common::klog::FILES,
            }
        );
        assert_eq!(
            KernelLogSettings::new(KernelLog::Off, &[HookFamily::Egress]),
            KernelLogSettings::OFF
        );
        assert!(!KernelLogSettings::OFF.on());
    }

    #[test]
    fn off_is_zero_and_levels_rise() {
        assert_eq!(KernelLog::Off.global(), 0);
        let levels = [
            KernelLog::Error,
            KernelLog::Warn,
            KernelLog::Info,
            KernelLog::Debug,
            KernelLog::Trace,
        ];
        for pair in levels.windows(2) {
            assert!(pair[0].global() < pair[1].global(), "{pair:?}");
        }
        assert!(KernelLog::Error.global() > 0);
    }
}

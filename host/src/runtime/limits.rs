//! Per-plugin limits and capabilities. Everything is denied unless granted.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Resource limits of one plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest a single call may run before it is interrupted (ms).
    pub deadline_ms: u64,
    /// Most linear memory the plugin may hold (MiB).
    pub memory_mib: u64,
    /// Failures within `breaker_window_secs` that disable the plugin.
    pub breaker_failures: u32,
    pub breaker_window_secs: u64,
    /// Events a stateful plugin may process between recovery snapshots; after a
    /// failure they are replayed from the last snapshot, so nothing is lost.
    pub replay_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 200,
            memory_mib: 64,
            breaker_failures: 5,
            breaker_window_secs: 60,
            replay_limit: 100_000,
        }
    }
}

impl Limits {
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize).saturating_mul(1 << 20)
    }
}

/// A host directory made visible to a plugin, read-only unless `writable`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it (e.g. `/geo`).
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

/// What a plugin may reach beyond its own memory. Denied by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    pub dirs: Vec<DirGrant>,
    /// Environment variables passed through by name.
    pub env: Vec<String>,
    /// Real wall and monotonic clocks; otherwise they read as the Unix epoch.
    pub clock: bool,
    /// TCP/UDP sockets and name lookup.
    pub network: bool,
}

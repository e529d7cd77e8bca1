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
    /// Most bytes the host copies out of the plugin in one call (its result,
    /// one log line). The memory cap bounds the guest only: a list whose
    /// entries all point at the same guest bytes would cost the host many
    /// times the guest's memory without this.
    #[serde(deserialize_with = "super::de_size")]
    pub max_output_bytes: usize,
    /// An enricher returns at most this many events per event it was given.
    pub max_events_factor: usize,
    /// Metric points an aggregator may return per call.
    pub max_points: usize,
    /// Alerts an alerter may return per call.
    pub max_alerts: usize,
    /// Longest string value in an output (property values, tag values,
    /// string fields, summaries, labels).
    #[serde(deserialize_with = "super::de_size")]
    pub max_string_bytes: usize,
    /// Longest key or name in an output (property keys, measurements, tag and
    /// field keys, event types, rule ids).
    #[serde(deserialize_with = "super::de_size")]
    pub max_key_bytes: usize,
    /// Most properties an enricher may set on one event in one call (summed
    /// over all its patches to that event), and an emitted event may carry.
    pub max_properties: usize,
    /// Log lines a plugin may write per call; more are dropped and counted.
    pub max_log_lines: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 200,
            // The bundled aggregator and alerter hold what waits for the
            // watermark (rate x out_of_orderness) and a snapshot of it: at
            // 80 000 events/s, alerts needed more than 64 MiB.
            memory_mib: 256,
            breaker_failures: 5,
            breaker_window_secs: 60,
            replay_limit: 100_000,
            max_output_bytes: 64 << 20,
            max_events_factor: 10,
            max_points: 100_000,
            max_alerts: 10_000,
            max_string_bytes: 64 << 10,
            max_key_bytes: 256,
            max_properties: 256,
            max_log_lines: 100,
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

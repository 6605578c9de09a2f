//! `[executor.warm]`: how many containers the warm pools may keep, and when
//! a generic image's pool warms up and cools down. Catalog entries set their
//! own pool size (`warm`) and reuse; see docs/WARM.md.

use serde::Deserialize;

const MIB: u64 = 1024 * 1024;

/// The warm pools' budget and on-demand rules. Every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmConfig {
    /// Use warm containers at all. Default true.
    pub enabled: bool,
    /// Warm containers (idle or starting) across all pools. Default 16.
    pub max_containers: u32,
    /// The sum of the memory limits of those containers. Default 4 GiB.
    pub max_memory_bytes: u64,
    /// A generic image's pool warms up after this many requests for the
    /// same key within `demand_window_ms`. 0: never on demand. Default 3.
    pub demand_threshold: u32,
    /// Default 10 s.
    pub demand_window_ms: u64,
    /// Containers an on-demand pool keeps warm. Default 2.
    pub on_demand: u32,
    /// An on-demand pool with no request for this long is emptied.
    /// Default 60 s.
    pub idle_ms: u64,
    /// How long a new warm container may take to report ready before it is
    /// given up (and removed). Default 30 s.
    pub ready_timeout_ms: u64,
}

impl Default for WarmConfig {
    fn default() -> WarmConfig {
        WarmConfig {
            enabled: true,
            max_containers: 16,
            max_memory_bytes: 4096 * MIB,
            demand_threshold: 3,
            demand_window_ms: 10_000,
            on_demand: 2,
            idle_ms: 60_000,
            ready_timeout_ms: 30_000,
        }
    }
}

//! What an executor reports about itself, for the server's status answer.

/// Counts and health, as of the moment they were asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Tasks whose process is running.
    pub running: u64,
    /// Tasks waiting for a free slot.
    pub queued: u64,
    pub engine: EngineHealth,
    pub pools: Vec<PoolStats>,
    /// How warm containers' agents talk to the server: `socket`, `attach`
    /// (with why, when `auto` chose it). Empty on the Swarm backend.
    pub warm_data_plane: String,
    /// The swarm's nodes, on the Swarm backend.
    pub nodes: Vec<NodeStats>,
}

/// One Swarm node: its name, state and resources, and this server's tasks
/// on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub name: String,
    pub state: String,
    pub availability: String,
    pub manager: bool,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub tasks: u64,
}

/// Whether the container engine answers, and what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineHealth {
    pub reachable: bool,
    pub version: Option<String>,
    /// The negotiated Engine API version.
    pub api_version: Option<String>,
    /// Why it is not reachable.
    pub error: Option<String>,
}

/// One warm-container pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub key: String,
    pub warm: u64,
    pub in_use: u64,
    pub hits: u64,
    pub misses: u64,
}

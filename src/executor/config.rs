//! The Docker executor's configuration: the bounds on output and logs, the
//! concurrency limit, registry credentials and the warm pools. What clients
//! may ask for is not here: that is admission's policy.
//!
//! Every field has a default, so an empty TOML table is a valid
//! configuration; the server's config file embeds this as `[executor]`
//! (beside `[executor.policy]`, which admission reads).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

const MIB: u64 = 1024 * 1024;

/// How the Docker executor runs tasks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Bytes of stdout plus stderr relayed per task; past it the task is
    /// killed and its outcome says `OutputLimit`. Default 64 MiB.
    pub output_limit_bytes: u64,
    /// The container log's `max-size` (Docker syntax; the `local` log
    /// driver, uncompressed). Default `64m`. The log is where `attach`,
    /// `logs` and a resumed client replay a task's output from, so it
    /// should hold `output_limit_bytes`: output the log has rotated away
    /// cannot be replayed.
    pub log_max_size: String,
    /// The container log's `max-file`. Default 2 (a rotated file is kept,
    /// so the log always holds at least `log_max_size` bytes).
    pub log_max_file: u32,
    /// Containers that may run at once; further tasks wait in a FIFO queue.
    /// Default 8.
    pub max_concurrent: usize,
    /// Tasks that may wait for a slot; past it a task is refused as `Busy`.
    /// Default 256.
    pub max_queue: usize,
    /// Credentials for pulling from private registries, by registry host as
    /// it appears in image names (e.g. `registry.example.com:5000`). A
    /// request's own credentials take precedence.
    pub registry_auth: BTreeMap<String, RegistryCredentials>,
    /// This server instance's id, written into every container's
    /// `tcp-task.instance` label. Default: generated from the host name, the
    /// process id and the start time, unique per process.
    pub instance_id: Option<String>,
    /// Extra labels written on every container this server creates.
    pub labels: BTreeMap<String, String>,
    /// Which server's tasks this one takes over when it starts: those
    /// whose server is gone and had the same scope (the `tcp-task.scope`
    /// label). `tcp-task serve` defaults it to its listening address, so a
    /// server that comes back where its clients reconnect adopts its
    /// tasks, and other servers sharing the engine leave them alone.
    pub scope: Option<String>,
    /// Warm-container pools (`[executor.warm]`).
    pub warm: WarmConfig,
    /// Where tasks run: `local` (containers on this server's engine, the
    /// default) or `swarm` (one service per task on the Docker Swarm whose
    /// manager this server's engine is). `tcp-task serve --backend`
    /// overrides it.
    pub backend: Backend,
    /// The Swarm backend's settings (`[executor.swarm]`).
    pub swarm: SwarmConfig,
    /// Where the tools binary is written for task containers to mount
    /// read-only, when the engine is on this host; nobody but the server's
    /// user may write to it (made 0700 when missing). Unset: `$RUNTIME_DIRECTORY/tools`, else
    /// `$XDG_RUNTIME_DIR/tcp-task/tools`, else `/tmp/tcp-task-UID/tools`.
    /// An engine that cannot mount it gets the tools uploaded into each
    /// container instead.
    pub tools_dir: Option<PathBuf>,
    /// What a task that is about to start does when the engine does not
    /// answer: `fail` at once with the `engine` error (the default), or
    /// `hold` its place and wait for the engine to come back (up to 5
    /// minutes; the tasks behind it wait in line).
    pub engine_outage: EngineOutage,
}

impl ExecutorConfig {
    /// [`ExecutorConfig::tools_dir`], or its default.
    pub fn tools_dir(&self) -> PathBuf {
        self.tools_dir
            .clone()
            .unwrap_or_else(|| runtime_dir().join("tools"))
    }
}

/// The server's runtime directory, where the tools and the warm agents'
/// sockets go unless configured elsewhere: systemd's `RuntimeDirectory=`
/// (the first, when it names several), else the user's runtime
/// directory, else `/tmp/tcp-task-UID`.
pub(crate) fn runtime_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = var("RUNTIME_DIRECTORY") {
        // systemd separates several directories with colons.
        if let Some(first) = dirs.to_string_lossy().split(':').next() {
            return PathBuf::from(first);
        }
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("tcp-task");
    }
    let uid = current_uid().unwrap_or_default();
    std::env::temp_dir().join(format!("tcp-task-{uid}"))
}

/// What a starting task does while the engine does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineOutage {
    /// End at once with the `engine` error.
    #[default]
    Fail,
    /// Wait for the engine (up to `ENGINE_RETURN_WAIT`), then start.
    Hold,
}

/// Where tasks run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Containers on the server's own engine (cold or warm).
    #[default]
    Local,
    /// Services on a Docker Swarm; the server's engine is a manager.
    Swarm,
}

/// The Swarm backend's settings. Every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// How long a task may wait for a node (no node has the resources it
    /// asks for, or none is available) before it fails as
    /// `Unschedulable`. Default 30 s.
    pub schedule_timeout_ms: u64,
    /// How often the task's state is read from the manager while it is
    /// scheduled and while it runs. Default 100 ms.
    pub poll_interval_ms: u64,
}

impl Default for SwarmConfig {
    fn default() -> SwarmConfig {
        SwarmConfig {
            schedule_timeout_ms: 30_000,
            poll_interval_ms: 100,
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> ExecutorConfig {
        ExecutorConfig {
            output_limit_bytes: 64 * MIB,
            log_max_size: "64m".to_owned(),
            log_max_file: 2,
            max_concurrent: 8,
            max_queue: 256,
            registry_auth: BTreeMap::new(),
            instance_id: None,
            labels: BTreeMap::new(),
            scope: None,
            warm: WarmConfig::default(),
            backend: Backend::Local,
            swarm: SwarmConfig::default(),
            tools_dir: None,
            engine_outage: EngineOutage::Fail,
        }
    }
}

/// This process's effective user: the owner of its `/proc/self`.
pub(crate) fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// A registry login from the server's configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

// Never print a password, not even in debug logs.
impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

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
    /// How the server and a warm container's agent exchange frames.
    /// Default `auto`.
    pub data_plane: DataPlane,
    /// Where the agents' Unix sockets are made, one directory per
    /// container (data plane `socket`). Default: `$RUNTIME_DIRECTORY`,
    /// else `$XDG_RUNTIME_DIR/tcp-task`, else `/tmp/tcp-task-UID`. Made
    /// mode 0700; at most `MAX_SOCKET_DIR_LEN` bytes (70), since a Unix
    /// socket's path is limited.
    pub socket_dir: Option<PathBuf>,
}

/// How the server and a warm container's agent exchange frames
/// (docs/WARM.md, "The data plane").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPlane {
    /// The socket when the engine is local (a Unix-socket `DOCKER_HOST`)
    /// and the socket directory is usable; attach otherwise, and from the
    /// first launch on which the socket did not work (the engine cannot
    /// mount it, the agent cannot connect).
    #[default]
    Auto,
    /// A Unix socket per container, bind-mounted read-only into it: frames
    /// bypass dockerd. A launch that cannot use it fails.
    Socket,
    /// The container's attach stream, through dockerd. Works with any
    /// engine, remote ones included.
    Attach,
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
            data_plane: DataPlane::Auto,
            socket_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let config: ExecutorConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(config, ExecutorConfig::default());
    }

    #[test]
    fn toml_overrides_fields() {
        let text = r#"
            max_concurrent = 2
            [warm]
            max_containers = 4
            [registry_auth."127.0.0.1:5000"]
            username = "u"
            password = "p"
        "#;
        let config: ExecutorConfig = toml::from_str(text).expect("config parses");
        assert_eq!(config.max_concurrent, 2);
        assert_eq!(config.registry_auth["127.0.0.1:5000"].username, "u");
        assert_eq!(config.warm.max_containers, 4);
        assert_eq!(config.warm.on_demand, WarmConfig::default().on_demand);
    }

    #[test]
    fn the_swarm_backend_is_chosen_by_name() {
        let config: ExecutorConfig =
            toml::from_str("backend = \"swarm\"\n[swarm]\nschedule_timeout_ms = 5000")
                .expect("config parses");
        assert_eq!(config.backend, Backend::Swarm);
        assert_eq!(config.swarm.schedule_timeout_ms, 5000);
        assert!(toml::from_str::<ExecutorConfig>("backend = \"nomad\"").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<ExecutorConfig>("max_concurency = 2").is_err());
    }
}

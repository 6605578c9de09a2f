//! The Docker executor's configuration: the server policy (what a client may
//! ask for), the bounds on output and logs, the concurrency limit, and
//! registry credentials.
//!
//! Every field has a default, so an empty TOML table is a valid
//! configuration; the server's config file embeds this as `[executor]`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

pub use super::warm::WarmConfig;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const ONE_CPU: u64 = 1_000_000_000;

/// How the Docker executor runs tasks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// What clients may ask for, and what they get when they ask for nothing.
    pub policy: Policy,
    /// Bytes of stdout plus stderr relayed per task; past it the task is
    /// killed and its outcome says `OutputLimit`. Default 64 MiB.
    pub output_limit_bytes: u64,
    /// The json-file log driver's `max-size` (Docker syntax). Default `1m`.
    /// Output is relayed over the attach stream, so the log only matters to
    /// whoever runs `docker logs` while the container exists.
    pub log_max_size: String,
    /// The json-file log driver's `max-file`. Default 1.
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
    /// Warm-container pools (`[executor.warm]`).
    pub warm: WarmConfig,
}

impl Default for ExecutorConfig {
    fn default() -> ExecutorConfig {
        ExecutorConfig {
            policy: Policy::default(),
            output_limit_bytes: 64 * MIB,
            log_max_size: "1m".to_owned(),
            log_max_file: 1,
            max_concurrent: 8,
            max_queue: 256,
            registry_auth: BTreeMap::new(),
            instance_id: None,
            labels: BTreeMap::new(),
            warm: WarmConfig::default(),
        }
    }
}

/// The server's policy: maxima a request may not exceed, the defaults a
/// request gets when it names no limit, and what a client may loosen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Default 256 MiB.
    pub default_memory_bytes: u64,
    /// Default 2 GiB.
    pub max_memory_bytes: u64,
    /// Default one CPU.
    pub default_nano_cpus: u64,
    /// Default two CPUs.
    pub max_nano_cpus: u64,
    /// Default 256 processes.
    pub default_pids_limit: i64,
    /// Default 1024 processes.
    pub max_pids_limit: i64,
    /// Applied when a request names no timeout. Default 10 minutes.
    pub default_timeout_ms: u64,
    /// Default one hour.
    pub max_timeout_ms: u64,
    /// Whether a request may name a network mode other than `none`.
    /// Default false.
    pub allow_network: bool,
    /// The network modes a request may name when `allow_network` is set.
    /// Default `["bridge"]`.
    pub allowed_network_modes: Vec<String>,
    /// Mount every task's root filesystem read-only, whatever the request
    /// says. Default false: the request decides (`TaskSpec::read_only_root`).
    pub force_read_only_root: bool,
    /// Size of the tmpfs mounted on /tmp when the root is read-only, in
    /// bytes. Default 64 MiB.
    pub tmpfs_bytes: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            default_memory_bytes: 256 * MIB,
            max_memory_bytes: 2 * GIB,
            default_nano_cpus: ONE_CPU,
            max_nano_cpus: 2 * ONE_CPU,
            default_pids_limit: 256,
            max_pids_limit: 1024,
            default_timeout_ms: 10 * 60 * 1000,
            max_timeout_ms: 60 * 60 * 1000,
            allow_network: false,
            allowed_network_modes: vec!["bridge".to_owned()],
            force_read_only_root: false,
            tmpfs_bytes: 64 * MIB,
        }
    }
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
            [policy]
            allow_network = true
            max_memory_bytes = 1073741824
            [registry_auth."127.0.0.1:5000"]
            username = "u"
            password = "p"
        "#;
        let config: ExecutorConfig = toml::from_str(text).expect("config parses");
        assert_eq!(config.max_concurrent, 2);
        assert!(config.policy.allow_network);
        assert_eq!(config.policy.max_memory_bytes, GIB);
        assert_eq!(config.registry_auth["127.0.0.1:5000"].username, "u");
        assert_eq!(config.policy.default_pids_limit, 256);
        assert_eq!(config.warm.max_containers, 4);
        assert_eq!(config.warm.on_demand, WarmConfig::default().on_demand);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<ExecutorConfig>("max_concurency = 2").is_err());
    }
}

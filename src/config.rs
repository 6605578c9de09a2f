//! The server's configuration file, in TOML.
//!
//! ```toml
//! listen = "0.0.0.0:7070"
//!
//! [server]            # connections and bounds (tcp_task::ServerConfig)
//! max_connections = 256
//! idle_timeout = 120  # seconds
//!
//! [executor]          # how containers run (tcp_task::executor::ExecutorConfig)
//! max_concurrent = 4
//! [executor.policy]
//! max_memory_bytes = 1073741824
//!
//! [http]              # metrics, health, the JSON API (tcp_task::server::HttpConfig)
//! listen = "127.0.0.1:9090"
//!
//! [catalog.pi]        # pre-compiled tasks (tcp_task::catalog::Catalog)
//! image = "tcp-task-examples:0.1.0"
//! command = ["pi"]
//! description = "π to N decimal places"
//! ```
//!
//! Every key is optional; `docs/CONFIG.md` lists them all. Without a
//! `[catalog]` table the server offers the built-in example tasks.

use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::access::ClientConfig;
use crate::admission::Policy;
use crate::catalog::{Catalog, CatalogEntry};
use crate::executor::ExecutorConfig;
use crate::server::{HttpConfig, ServerConfig};

/// Where `tcp-task serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Everything `tcp-task serve` reads from its config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; `--listen` overrides it.
    pub listen: Option<String>,
    pub server: ServerConfig,
    /// `[executor]`: how tasks run, and in `[executor.policy]`, what
    /// clients may ask for.
    pub executor: ExecutorSection,
    /// The pre-compiled tasks; `None` means the built-in examples.
    pub catalog: Option<Catalog>,
    /// Named clients, each with a token and a policy of its own.
    pub clients: BTreeMap<String, ClientConfig>,
    /// `[http]`: the HTTP listener (metrics, health, the JSON API); off
    /// unless `listen` or `serve --http` names an address.
    pub http: HttpConfig,
}

impl Config {
    /// Reads and checks a config file. Errors name the file and, for bad
    /// TOML, the line and the key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Config::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        crate::executor::check_config(&config.executor.runtime).map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// The `[server]` settings with the named clients' credentials loaded
    /// (token files read now, so a missing one is an error at start-up).
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let mut server = self.server.clone();
        for (name, client) in &self.clients {
            let credential = client
                .credential(name)
                .with_context(|| format!("in [clients.{name}]"))?;
            server.clients.push(Arc::new(credential));
        }
        Ok(server)
    }

    /// The catalog to serve: the configured one, or the examples.
    pub fn catalog(&self) -> Catalog {
        self.catalog.clone().unwrap_or_else(examples_catalog)
    }
}

/// The `[executor]` table. It holds two things that live apart in the
/// server: the policy, which admission applies before anything runs, and
/// the settings of the executor, which never sees the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorSection {
    pub policy: Policy,
    pub runtime: ExecutorConfig,
}

impl<'de> Deserialize<'de> for ExecutorSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ExecutorSection, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let policy = match table.remove("policy") {
            Some(policy) => Policy::deserialize(policy)
                .map_err(|e| D::Error::custom(format!("in [executor.policy]: {e}")))?,
            None => Policy::default(),
        };
        let runtime = ExecutorConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("in [executor]: {e}")))?;
        Ok(ExecutorSection { policy, runtime })
    }
}

/// The image that holds the example tasks (built locally by
/// `tcp-task image build-examples`).
pub fn examples_image() -> String {
    format!("tcp-task-examples:{}", env!("CARGO_PKG_VERSION"))
}

/// Tasks one warm container of an example entry serves, reset between
/// them (docs/WARM.md).
pub const EXAMPLES_REUSE: u32 = 100;

/// The classic example tasks, all in the examples image. Each is
/// `reset = true`: a warm container serves up to [`EXAMPLES_REUSE`] of one
/// client's tasks of the same entry, reset between them.
pub fn examples_catalog() -> Catalog {
    const MIB: u64 = 1024 * 1024;
    let entry = |command: &str, description: &str, timeout_ms: u64| CatalogEntry {
        image: examples_image(),
        command: vec![command.to_string()],
        description: description.to_string(),
        env: Default::default(),
        memory_bytes: Some(64 * MIB),
        nano_cpus: Some(1_000_000_000),
        pids_limit: Some(16),
        timeout_ms: Some(timeout_ms),
        warm: 0,
        reuse: EXAMPLES_REUSE,
        reset: true,
        port: None,
        task: None,
    };
    let entries = [
        ("sum", entry("sum", "Sum of the numbers given", 10_000)),
        (
            "multiply",
            entry("multiply", "Product of the numbers given", 10_000),
        ),
        (
            "random",
            entry("random", "A random integer in [LO, HI]", 10_000),
        ),
        ("isprime", entry("isprime", "Whether N is prime", 10_000)),
        (
            "primes",
            entry("primes", "The primes up to N (--count: how many)", 30_000),
        ),
        (
            "pi",
            entry("pi", "π to N decimal places (at most 10000)", 30_000),
        ),
        (
            "grayscale",
            entry(
                "grayscale",
                "A PNG on stdin, in grayscale on stdout",
                30_000,
            ),
        ),
    ];
    Catalog {
        entries: entries
            .into_iter()
            .map(|(name, e)| (name.to_string(), e))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_with_the_examples() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, None);
        assert_eq!(config.catalog().len(), 7);
    }

    #[test]
    fn sections_override_defaults() {
        let config = Config::from_toml(
            r#"
            listen = "0.0.0.0:9000"
            [server]
            max_connections = 3
            idle_timeout = 1.5
            [executor]
            max_concurrent = 2
            [catalog.hello]
            image = "alpine"
            command = ["echo", "hello"]
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(config.server.max_connections, 3);
        assert_eq!(config.server.idle_timeout.as_millis(), 1500);
        assert_eq!(config.executor.runtime.max_concurrent, 2);
        assert_eq!(config.catalog().len(), 1);
    }

    #[test]
    fn named_clients_get_credentials_and_policies() {
        let config = Config::from_toml(
            r#"
            [clients.ci]
            token = "ci-secret"
            images = ["tcp-task-examples:*"]
            max_concurrent_tasks = 2
            "#,
        )
        .unwrap();
        let server = config.server_config().unwrap();
        assert_eq!(server.clients.len(), 1);
        assert_eq!(server.clients[0].name(), "ci");
        assert_eq!(server.clients[0].rules.policy.max_concurrent_tasks, Some(2));
        assert!(!format!("{server:?}").contains("ci-secret"));
        let missing = Config::from_toml("[clients.x]\nimages = []").unwrap();
        let err = missing.server_config().unwrap_err();
        assert!(format!("{err:#}").contains("[clients.x]"), "{err:#}");
    }

    #[test]
    fn a_misspelt_key_is_an_error_that_names_it() {
        let err = Config::from_toml("[server]\nmax_conections = 3").unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
        for text in [
            "[executor]\nmax_concurency = 2",
            "[executor.policy]\nmax_memory = 2",
            "[executor.warm]\nmax_container = 2",
        ] {
            let err = Config::from_toml(text).unwrap_err();
            let shown = format!("{err:#}");
            assert!(shown.contains("unknown field"), "{text}: {shown}");
        }
    }

    #[test]
    fn the_executor_table_holds_the_policy_and_the_runtime() {
        let config = Config::from_toml(
            "[executor]\nmax_concurrent = 3\n[executor.policy]\nallow_network = true\n",
        )
        .unwrap();
        assert!(config.executor.policy.allow_network);
        assert_eq!(config.executor.policy.default_pids_limit, 256);
        assert_eq!(config.executor.runtime.max_concurrent, 3);
    }
}

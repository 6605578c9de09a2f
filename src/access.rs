//! Named clients: the holder of one token, and the rules (in
//! [`crate::admission`]) that go with it.
//!
//! The config file names clients, each with its token and its policy:
//!
//! ```toml
//! [clients.ci]
//! token_file = "/etc/tcp-task/ci.token"   # or: token = "…"
//! images = ["tcp-task-examples:*", "registry.local:5000/ci/*"]
//! allow_network = false
//! max_memory_bytes = 536870912
//! max_nano_cpus = 1000000000
//! max_timeout_ms = 60000
//! max_concurrent_tasks = 4
//! ```
//!
//! A client's policy only narrows the server's: the server policy's maxima
//! still hold, and a key left out means "as the server allows". Tokens from
//! `--token-file` have no policy of their own.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::admission::{ClientPolicy, ClientRules};
use crate::admission::{Quota, Scope};

/// A client entry of the config file.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub token: Option<String>,
    /// A file whose first non-comment line is the token (kept out of the
    /// config file, which is often more widely readable).
    pub token_file: Option<PathBuf>,
    pub images: Vec<String>,
    pub allow_network: Option<bool>,
    pub max_memory_bytes: Option<u64>,
    pub max_nano_cpus: Option<u64>,
    pub max_pids_limit: Option<i64>,
    pub max_timeout_ms: Option<u64>,
    pub max_concurrent_tasks: Option<usize>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// The client's credential: its token (read from `token_file` if need
    /// be) and its policy.
    pub fn credential(&self, name: &str) -> anyhow::Result<Credential> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), None) => token.clone(),
            (None, Some(path)) => crate::auth::load_token_file(path)?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("{} holds no token", path.display()))?,
            _ => anyhow::bail!("the client `{name}` needs exactly one of `token` and `token_file`"),
        };
        if token.trim().is_empty() {
            anyhow::bail!("the client `{name}` has an empty token");
        }
        let policy = ClientPolicy {
            images: self.images.clone(),
            allow_network: self.allow_network,
            max_memory_bytes: self.max_memory_bytes,
            max_nano_cpus: self.max_nano_cpus,
            max_pids_limit: self.max_pids_limit,
            max_timeout_ms: self.max_timeout_ms,
            max_concurrent_tasks: self.max_concurrent_tasks,
        };
        Ok(Credential::new(name, token, policy))
    }
}

/// A named client: its token, its rules and its running-task quota.
pub struct Credential {
    pub(crate) token: String,
    pub rules: Arc<ClientRules>,
    /// Shared by every connection of this client.
    quota: Option<Quota>,
}

impl Credential {
    pub fn new(
        name: impl Into<String>,
        token: impl Into<String>,
        policy: ClientPolicy,
    ) -> Credential {
        let name = name.into();
        let quota = policy
            .max_concurrent_tasks
            .map(|n| Quota::new(n, Scope::Client(name.clone())));
        Credential {
            token: token.into(),
            rules: Arc::new(ClientRules { name, policy }),
            quota,
        }
    }

    pub fn name(&self) -> &str {
        &self.rules.name
    }

    /// This client's bound on running tasks, across its connections.
    pub fn quota(&self) -> Option<&Quota> {
        self.quota.as_ref()
    }
}

// Never print the token.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::ErrorKind;

    #[test]
    fn the_quota_counts_slots() {
        let credential = Credential::new(
            "ci",
            "t",
            ClientPolicy {
                max_concurrent_tasks: Some(1),
                ..ClientPolicy::default()
            },
        );
        let quota = credential.quota().expect("a quota was set");
        let slot = quota.take().unwrap();
        assert_eq!(quota.take().unwrap_err().kind, ErrorKind::Busy);
        drop(slot);
        assert!(quota.take().is_ok());
        let unbounded = Credential::new("x", "t", ClientPolicy::default());
        assert!(unbounded.quota().is_none());
    }

    #[test]
    fn a_client_needs_exactly_one_token_source() {
        assert!(ClientConfig::default().credential("x").is_err());
        let both = ClientConfig {
            token: Some("a".into()),
            token_file: Some("/nonexistent".into()),
            ..ClientConfig::default()
        };
        assert!(both.credential("x").is_err());
        let debug = format!(
            "{:?}",
            ClientConfig {
                token: Some("s3cret".into()),
                ..Default::default()
            }
        );
        assert!(!debug.contains("s3cret"));
    }
}

//! A named client's own rules (`[clients.NAME]` in the config file): the
//! images it may run and the maxima that narrow the server's policy for
//! its tasks. Who the client is (its token) is [`crate::access`]'s business;
//! admission sees only these rules.

use serde::Deserialize;

use crate::task::{ErrorKind, TaskError};

/// What one client may do, beyond the server's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientPolicy {
    /// Image patterns this client may run; `*` matches any run of
    /// characters. Empty: any image. Catalog tasks are checked by the image
    /// they resolve to.
    pub images: Vec<String>,
    /// Whether this client may ask for a network (if the server allows it).
    pub allow_network: Option<bool>,
    pub max_memory_bytes: Option<u64>,
    pub max_nano_cpus: Option<u64>,
    pub max_pids_limit: Option<i64>,
    pub max_timeout_ms: Option<u64>,
    /// Tasks this client may run at once, over all its connections.
    pub max_concurrent_tasks: Option<usize>,
}

impl ClientPolicy {
    /// Whether `image` matches one of the allowed patterns.
    pub fn check_image(&self, client: &str, image: &str) -> Result<(), TaskError> {
        if self.images.is_empty() || self.images.iter().any(|p| glob_matches(p, image)) {
            return Ok(());
        }
        Err(TaskError::new(
            ErrorKind::PolicyDenied,
            format!(
                "the image `{image}` is not allowed for the client `{client}`: its `images` rule allows only {}",
                self.images.join(", ")
            ),
        ))
    }
}

/// `*` matches any run of characters (including `/` and `:`); everything
/// else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: an exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What admission learns of a named client: its name (for messages) and
/// its policy. Never its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRules {
    pub name: String,
    pub policy: ClientPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches(
            "tcp-task-examples:*",
            "tcp-task-examples:0.1.0"
        ));
        assert!(glob_matches("*", "anything/at:all"));
        assert!(glob_matches(
            "registry:5000/ci/*",
            "registry:5000/ci/build:1"
        ));
        assert!(glob_matches("a*b*c", "a-x-b-y-c"));
        assert!(glob_matches("exact:1", "exact:1"));
        assert!(!glob_matches("exact:1", "exact:12"));
        assert!(!glob_matches(
            "tcp-task-examples:*",
            "evil/tcp-task-examples:1"
        ));
        assert!(!glob_matches("a*b", "ab-c"));
        assert!(!glob_matches("ab*ba", "aba"));
    }

    #[test]
    fn an_image_outside_the_patterns_is_denied_by_rule() {
        let policy = ClientPolicy {
            images: vec!["ok:*".into()],
            ..ClientPolicy::default()
        };
        assert!(policy.check_image("ci", "ok:1").is_ok());
        let err = policy.check_image("ci", "other:1").unwrap_err();
        assert_eq!(err.kind, ErrorKind::PolicyDenied);
        assert!(err.message.contains("`images` rule"), "{}", err.message);
    }
}

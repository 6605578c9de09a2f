//! What a warm container is fixed to when it is created, and so what a task
//! must match to use it: the pool key.

use std::fmt;
use std::time::Duration;

use crate::executor::plan::Plan;

/// Everything the engine fixes at container creation that a task can ask
/// for: image, limits, network, user, read-only root. A task's command,
/// environment, working directory and stdin are not in the key: the agent
/// applies them per task.
///
/// A catalog entry with `reuse > 1` gets pools of its own (`entry`), one
/// per named client (`client`), so a container that served one entry's task
/// never serves another entry's, nor another client's. With `reset` (the
/// entry's, on a read-only root) the agent resets the container between
/// two tasks.
///
/// An HTTP task's container runs the image's server from its start, so
/// what that server is given is in the key too ([`Serve`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub image: String,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    pub pids_limit: i64,
    pub network: String,
    pub user: Option<String>,
    pub read_only_root: bool,
    pub tmpfs_bytes: u64,
    pub entry: Option<String>,
    /// The named client whose tasks a reused container serves (`None`: an
    /// anonymous client's, or a single-use container).
    pub client: Option<String>,
    pub reuse: u32,
    /// Reset between tasks (tools/src/reset.rs).
    pub reset: bool,
    /// For HTTP tasks: the server the container runs.
    pub serve: Option<Serve>,
}

/// The image's own server in an HTTP task's container: its port, its
/// command (empty: the image's default) and its environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Serve {
    pub port: u16,
    pub command: Vec<String>,
    pub env: Vec<String>,
}

/// Whether a task can run on a warm container at all. Not when it runs the
/// image's default command (the agent is the entrypoint, so it would have
/// to read the image's config), nor when it asks for container labels of
/// its own (labels are fixed at creation): those go the cold path. HTTP
/// tasks always can: their container's server is started by the agent,
/// with the image's default command read at creation.
pub(crate) fn eligible(plan: &Plan) -> bool {
    plan.labels.is_empty() && (plan.http.is_some() || !plan.command.is_empty())
}

impl PoolKey {
    /// The key of `plan`. A catalog entry with `reuse > 1` has pools of
    /// its own.
    pub fn of(plan: &Plan) -> PoolKey {
        let reused = match &plan.entry {
            // An HTTP task's container serves one task: the agent ends
            // what the task leaves running, the image's server included.
            _ if plan.http.is_some() => None,
            Some(e) if e.reuse > 1 => Some(e),
            _ => None,
        };
        let entry = reused.map(|e| e.name.clone());
        let client = reused.and_then(|e| e.client.clone());
        let reuse = reused.map_or(1, |e| e.reuse);
        // Only a read-only root can be reset.
        let reset = reused.is_some_and(|e| e.reset) && plan.read_only_root;
        let serve = plan.http.as_ref().map(|call| Serve {
            port: call.port,
            command: plan.command.clone(),
            env: plan.env.clone(),
        });
        PoolKey {
            image: plan.image.clone(),
            memory_bytes: plan.memory_bytes,
            nano_cpus: plan.nano_cpus,
            pids_limit: plan.pids_limit,
            network: plan.network.clone(),
            user: plan.user.clone(),
            read_only_root: plan.read_only_root,
            tmpfs_bytes: plan.tmpfs_bytes,
            entry,
            client,
            reuse,
            reset,
            serve,
        }
    }

    /// The same key for no named client: its pool's containers that never
    /// served a task are as fresh for a named client as for anyone.
    pub fn anonymous(&self) -> Option<PoolKey> {
        self.client.as_ref().map(|_| PoolKey {
            client: None,
            ..self.clone()
        })
    }

    /// The settings a container for this key is created with: the key's,
    /// and stdin open for the agent's frames. No command: the agent is it.
    pub fn profile(&self) -> Plan {
        Plan {
            image: self.image.clone(),
            command: Vec::new(),
            // An HTTP task's environment is its server's: the container's.
            env: self
                .serve
                .as_ref()
                .map(|s| s.env.clone())
                .unwrap_or_default(),
            workdir: None,
            user: self.user.clone(),
            stdin: true,
            memory_bytes: self.memory_bytes,
            nano_cpus: self.nano_cpus,
            pids_limit: self.pids_limit,
            network: self.network.clone(),
            read_only_root: self.read_only_root,
            tmpfs_bytes: self.tmpfs_bytes,
            timeout: Duration::ZERO,
            labels: Vec::new(),
            pull_auth: None,
            entry: None,
            http: None,
            task: None,
        }
    }
}

/// How `tcp-task status` shows a pool, one line.
impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mem={}MiB cpus={:.2} pids={} net={} user={}{}",
            self.image,
            self.memory_bytes / (1024 * 1024),
            self.nano_cpus as f64 / 1e9,
            self.pids_limit,
            self.network,
            self.user.as_deref().unwrap_or("-"),
            if self.read_only_root { " ro" } else { "" },
        )?;
        if let Some(entry) = &self.entry {
            write!(f, " entry={entry} reuse={}", self.reuse)?;
            if self.reset {
                write!(f, " reset")?;
            }
            if let Some(client) = &self.client {
                write!(f, " client={client}")?;
            }
        }
        if let Some(serve) = &self.serve {
            write!(f, " http={}", serve.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::executor::plan::EntryRef;

    fn from_entry(plan: &Plan, name: &str, reuse: u32) -> PoolKey {
        let mut plan = plan.clone();
        plan.entry = Some(EntryRef {
            name: name.into(),
            reuse,
            reset: false,
            client: None,
        });
        PoolKey::of(&plan)
    }

    #[test]
    fn reset_pools_are_per_client_and_need_a_read_only_root() {
        let mut plan = test_key().profile();
        plan.read_only_root = true;
        let entry = |client: Option<&str>| EntryRef {
            name: "sum".into(),
            reuse: 5,
            reset: true,
            client: client.map(str::to_owned),
        };
        plan.entry = Some(entry(Some("alice")));
        let alice = PoolKey::of(&plan);
        assert!(alice.reset);
        assert!(alice
            .to_string()
            .ends_with("entry=sum reuse=5 reset client=alice"));
        plan.entry = Some(entry(Some("bob")));
        assert_ne!(PoolKey::of(&plan), alice, "two clients never share a pool");
        plan.entry = Some(entry(None));
        assert_ne!(PoolKey::of(&plan), alice);
        plan.read_only_root = false;
        assert!(!PoolKey::of(&plan).reset, "a writable root is not reset");
    }

    #[test]
    fn keys_ignore_per_task_settings_and_separate_reusing_entries() {
        let a = test_key().profile();
        let mut b = a.clone();
        b.command = vec!["echo".into()];
        b.env = vec!["A=1".into()];
        b.workdir = Some("/tmp".into());
        assert_eq!(PoolKey::of(&a), PoolKey::of(&b));
        assert_eq!(from_entry(&a, "sum", 1), PoolKey::of(&a));
        let reusing = from_entry(&a, "sum", 3);
        assert_ne!(reusing, PoolKey::of(&a));
        assert_ne!(reusing, from_entry(&a, "pi", 3));
        assert!(reusing.to_string().ends_with("entry=sum reuse=3"));
        b.memory_bytes *= 2;
        assert_ne!(PoolKey::of(&a), PoolKey::of(&b));
        assert!(eligible(&b));
        assert!(!eligible(&a), "the image's default command goes cold");
    }

    fn test_key() -> PoolKey {
        PoolKey {
            image: "img".into(),
            memory_bytes: 64 << 20,
            nano_cpus: 1_000_000_000,
            pids_limit: 16,
            network: "none".into(),
            user: None,
            read_only_root: false,
            tmpfs_bytes: 64 << 20,
            entry: None,
            client: None,
            reuse: 1,
            reset: false,
            serve: None,
        }
    }
}

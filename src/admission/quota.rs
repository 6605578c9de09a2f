//! Bounds on tasks running at once: per connection, per named client and
//! for the whole server. Each is a [`Quota`]; a running task holds a permit
//! of each that applies, and gives them back when it ends.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::task::{ErrorKind, TaskError};

/// What a quota bounds, for the message that refuses a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One connection (`max_tasks_per_connection`).
    Connection,
    /// The Attach and Wait requests of one connection
    /// (`max_tasks_per_connection` too).
    Following,
    /// Every connection of one named client (`max_concurrent_tasks`).
    Client(String),
    /// The whole server (`max_tasks`).
    Server,
}

/// At most `limit` tasks at once within one scope. Clones share the count.
#[derive(Debug, Clone)]
pub struct Quota {
    slots: Arc<Semaphore>,
    limit: usize,
    scope: Scope,
}

impl Quota {
    pub fn new(limit: usize, scope: Scope) -> Quota {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        Quota {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            scope,
        }
    }

    /// A place in the quota, held while the task runs; a `Busy` refusal
    /// that names the bound when it is full. Never waits.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, TaskError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| TaskError::new(ErrorKind::Busy, self.full()))
    }

    fn full(&self) -> String {
        let limit = self.limit;
        match &self.scope {
            Scope::Connection => format!(
                "this connection already runs {limit} tasks, its maximum; wait for one to end or \
                 open another connection"
            ),
            Scope::Following => format!(
                "this connection already follows {limit} tasks (attach or wait), its maximum; \
                 stop following one or open another connection"
            ),
            Scope::Client(name) => format!(
                "the client `{name}` already runs {limit} tasks, its `max_concurrent_tasks` \
                 quota; wait for one to end"
            ),
            Scope::Server => {
                format!("the server already runs {limit} tasks, its maximum; retry later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_quota_refuses_by_name_until_a_task_ends() {
        let quota = Quota::new(1, Scope::Client("ci".into()));
        let held = quota.take().expect("room for one");
        let refused = quota.take().expect_err("full");
        assert_eq!(refused.kind, ErrorKind::Busy);
        assert!(refused.message.contains("`ci`"), "{}", refused.message);
        drop(held);
        assert!(quota.take().is_ok());
    }
}

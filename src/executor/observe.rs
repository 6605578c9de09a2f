//! The executor's metrics port: what it tells an observer about each task
//! — how long it waited for a slot, which runtime ran it and how soon it
//! started, how it ended. The server's metrics implement [`Observer`]; the
//! executor knows nothing of Prometheus, and nothing here knows of
//! connections or frames.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::task::{Outcome, TaskError};

/// Which runtime started a task's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunPath {
    /// A container created for the task.
    Cold,
    /// A container started ahead of time (docs/WARM.md).
    Warm,
    /// A service on a Docker Swarm (the Swarm backend).
    Swarm,
}

impl RunPath {
    /// The lower-case name, as metrics and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunPath::Cold => "cold",
            RunPath::Warm => "warm",
            RunPath::Swarm => "swarm",
        }
    }
}

/// Told about every task the executor runs. Every method has an empty
/// default, so an observer implements what it cares about. Called on the
/// task's path: implementations must be quick and must not block.
pub trait Observer: Send + Sync + fmt::Debug {
    /// The task got a slot after waiting this long (zero when one was free).
    fn queue_wait(&self, _waited: Duration) {}

    /// The task's process started on `path`, this long after the executor
    /// received it (the wait for a slot and any pull included).
    fn task_started(&self, _path: RunPath, _latency: Duration) {}

    /// The task ended: `path` is `None` when no process ever started.
    fn task_ended(&self, _path: Option<RunPath>, _result: &Result<Outcome, TaskError>) {}
}

/// The observer of an executor nobody watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl Observer for Unobserved {}

/// An executor's observer, shared by the parts that report.
pub type SharedObserver = Arc<dyn Observer>;

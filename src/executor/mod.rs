//! How a task becomes a running process: the [`Executor`] trait the server
//! calls, and its implementations.
//!
//! An executor knows nothing of sockets: it gets a [`TaskSpec`] and a
//! [`TaskIo`] (where to report, where stdin comes from, when to stop) and
//! returns how the task ended.

mod cleanup;
mod config;
mod container;
mod docker;
mod engine;
mod outcome;
mod policy;
mod pull;
mod queue;
mod stream;
mod warm;

pub use cleanup::{
    label_filter, Liveness, Owner, LABEL_HOST, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PID,
    LABEL_PID_START, LABEL_TASK,
};
pub use config::{ExecutorConfig, Policy, RegistryCredentials};
pub use docker::DockerExecutor;
pub use warm::{WarmConfig, AGENT_PATH, LABEL_WARM};

use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::ClientRules;
use crate::events::EventSink;
use crate::protocol::{CatalogEntryInfo, Outcome, ServerStatus, TaskError, TaskSpec};

/// One task's channels to and from its client.
#[derive(Debug)]
pub struct TaskIo {
    /// Progress and output go here.
    pub events: EventSink,
    /// Stdin chunks; the channel closing is end-of-file. Closed from the start
    /// when the spec did not ask for stdin.
    pub stdin: mpsc::Receiver<Bytes>,
    /// Fired when the client cancels, disconnects, or the server gives up on
    /// the task during shutdown. The executor then kills the task and returns
    /// an outcome with [`crate::protocol::Ending::Cancelled`].
    pub cancel: CancellationToken,
    /// The rules of the named client that submitted the task, if any: they
    /// narrow the server's policy for this task.
    pub client: Option<Arc<ClientRules>>,
}

/// Runs tasks. The server holds one and calls it concurrently.
pub trait Executor: Send + Sync + 'static {
    /// Runs one task to its end. `Ok` when the task ran (whatever its exit
    /// code); `Err` when it could not run. Must return promptly after
    /// `io.cancel` fires, having cleaned up.
    fn run(
        &self,
        spec: TaskSpec,
        io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send;

    /// Counts and engine health; the server fills in its own fields.
    fn status(&self) -> impl Future<Output = ServerStatus> + Send;

    /// The pre-compiled tasks this executor knows.
    fn catalog(&self) -> Vec<CatalogEntryInfo>;

    /// Called once when the server stops, after every task has ended.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A shared executor serves as well as an owned one: an embedding program
/// (or a test) can keep a handle to the executor it gives the server.
impl<E: Executor> Executor for Arc<E> {
    fn run(
        &self,
        spec: TaskSpec,
        io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send {
        (**self).run(spec, io)
    }

    fn status(&self) -> impl Future<Output = ServerStatus> + Send {
        (**self).status()
    }

    fn catalog(&self) -> Vec<CatalogEntryInfo> {
        (**self).catalog()
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        (**self).shutdown()
    }
}

//! How an allowed task runs: the [`Executor`] trait the server calls, and
//! the Docker implementation behind it.
//!
//! An executor knows neither sockets, frames nor access rules. It gets a
//! [`Plan`] that admission already allowed and a [`TaskIo`] (where to
//! report, where stdin comes from, when to stop), and returns how the task
//! ended. Inside, every way of running a task is a [`process::Process`]
//! (a cold container, a warm one, a Swarm service's task) under the same
//! supervision.

mod adopt;
mod cleanup;
mod cold;
mod config;
mod container;
mod docker;
mod engine;
mod engine_loss;
mod events;
mod exit;
mod health;
mod http;
mod kept;
mod observe;
mod plan;
mod process;
mod pull;
mod queue;
mod stats;
mod supervise;
mod swarm;
mod tools;
mod usage;
mod warm;

pub use adopt::Adopted;
pub use cleanup::{
    label_filter, Liveness, Owner, LABEL_HOST, LABEL_ID, LABEL_INSTANCE, LABEL_MANAGED, LABEL_PID,
    LABEL_PID_START, LABEL_SCOPE, LABEL_TASK,
};
pub use config::{
    Backend, DataPlane, EngineOutage, ExecutorConfig, RegistryCredentials, SwarmConfig, WarmConfig,
};
pub use docker::DockerExecutor;

/// What the executor would refuse, said before it starts: a warm
/// `socket_dir` too long for a Unix socket's path.
pub fn check_config(config: &ExecutorConfig) -> Result<(), String> {
    warm::check_socket_dir(&config.warm)
}
pub use events::{Delivery, Disconnected, EventSink, Events};
pub use health::ENGINE_CHECK_TTL;
pub use kept::{container_name, LABEL_CLIENT, LABEL_DETACH, LABEL_TIMEOUT_MS};
pub use observe::{Observer, RunPath, SharedObserver, Unobserved};
pub use plan::{EntryRef, HttpCall, Plan, TaskTag};
pub use stats::{EngineHealth, ExecutorStats, NodeStats, PoolStats};
pub use swarm::LABEL_SERVICE;
pub use warm::{AGENT_PATH, LABEL_WARM, MAX_SOCKET_DIR_LEN, SOCKET_IN_CONTAINER, SUN_PATH_MAX};

use bytes::Bytes;
use futures::stream::BoxStream;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::task::{ErrorKind, Offsets, Outcome, OutputStream, TaskError, TaskId};

/// A kept task's output, replayed from the engine's log: chunks in the
/// order they were written, live while the task runs.
pub type Replay = BoxStream<'static, Result<(OutputStream, Bytes), TaskError>>;

/// What every executor answers about a task it does not keep.
pub fn no_such_task(task: &TaskId) -> TaskError {
    TaskError::new(
        ErrorKind::NoSuchTask,
        format!(
            "no task {task} here: it never existed, its result was removed, or it belongs to \
             another client; `tcp-task ps -a` lists the tasks you may see"
        ),
    )
}

/// One task's channels to and from whoever submitted it.
pub struct TaskIo {
    /// Progress and output go here.
    pub events: EventSink,
    /// Stdin chunks; the channel closing is end-of-file. Closed from the start
    /// when the plan did not ask for stdin.
    pub stdin: mpsc::Receiver<Bytes>,
    /// Fired when the task must stop: the client cancelled or left, or the
    /// server gives up on it during shutdown. The executor then ends the
    /// task and returns an outcome with [`crate::task::Ending::Cancelled`].
    pub cancel: CancellationToken,
}

/// Runs allowed tasks. The server holds one and calls it concurrently.
pub trait Executor: Send + Sync + 'static {
    /// Runs one task to its end. `Ok` when the task ran (whatever its exit
    /// code); `Err` when it could not run. Must return promptly after
    /// `io.cancel` fires, having cleaned up.
    fn run(
        &self,
        plan: Plan,
        io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send;

    /// Counts and engine health.
    fn stats(&self) -> impl Future<Output = ExecutorStats> + Send;

    /// Keeps `containers` ready ahead of time for tasks like `plan` (a
    /// catalog entry's `warm`), where the executor can. Called at start-up.
    fn keep_warm(&self, _plan: &Plan, _containers: u32) {}

    /// Called once when the server stops, after every task has ended.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Kept task `task`'s output (stdout and stderr) from the engine's
    /// log: what comes after `from` in each stream, then (with `follow`)
    /// live output until the task ends, never past the output limit.
    fn replay(
        &self,
        task: &TaskId,
        _from: Offsets,
        _follow: bool,
    ) -> impl Future<Output = Result<Replay, TaskError>> + Send {
        let error = no_such_task(task);
        async move { Err(error) }
    }

    /// Sends `signal` (a Linux signal number) to kept task `task`'s
    /// process.
    fn signal(
        &self,
        task: &TaskId,
        _signal: i32,
    ) -> impl Future<Output = Result<(), TaskError>> + Send {
        let error = no_such_task(task);
        async move { Err(error) }
    }

    /// Removes what is kept of an ended task (its container), in the
    /// background; [`Executor::shutdown`] waits for it.
    fn discard(&self, _task: &TaskId) {}

    /// The kept tasks a server that is gone left running or ended, which
    /// this one takes over. Called once at start-up.
    fn adopt(&self) -> impl Future<Output = Result<Vec<Adopted>, TaskError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Supervises an adopted task that still runs, as [`Executor::run`]
    /// does a new one (its deadline counted from its real start).
    fn resume(
        &self,
        adopted: Adopted,
        _io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send {
        let error = no_such_task(&adopted.tag.id);
        async move { Err(error) }
    }
}

/// A shared executor serves as well as an owned one: an embedding program
/// (or a test) can keep a handle to the executor it gives the server.
impl<E: Executor> Executor for Arc<E> {
    fn run(
        &self,
        plan: Plan,
        io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send {
        (**self).run(plan, io)
    }

    fn stats(&self) -> impl Future<Output = ExecutorStats> + Send {
        (**self).stats()
    }

    fn keep_warm(&self, plan: &Plan, containers: u32) {
        (**self).keep_warm(plan, containers)
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        (**self).shutdown()
    }

    fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        follow: bool,
    ) -> impl Future<Output = Result<Replay, TaskError>> + Send {
        (**self).replay(task, from, follow)
    }

    fn signal(
        &self,
        task: &TaskId,
        signal: i32,
    ) -> impl Future<Output = Result<(), TaskError>> + Send {
        (**self).signal(task, signal)
    }

    fn discard(&self, task: &TaskId) {
        (**self).discard(task)
    }

    fn adopt(&self) -> impl Future<Output = Result<Vec<Adopted>, TaskError>> + Send {
        (**self).adopt()
    }

    fn resume(
        &self,
        adopted: Adopted,
        io: TaskIo,
    ) -> impl Future<Output = Result<Outcome, TaskError>> + Send {
        (**self).resume(adopted, io)
    }
}

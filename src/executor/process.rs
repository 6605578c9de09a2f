//! The one abstraction every runtime implements: a started process with
//! its output attached. Cold containers and warm containers are two
//! implementations; supervision ([`super::supervise`]) is written once
//! against this trait, so a timeout, a cancel or the output limit end every
//! kind of process the same way.

use bytes::Bytes;
use std::future::Future;
use std::io;

use crate::task::{OutputStream, TaskError, Usage};

/// How a process came to its end, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEnd {
    /// It ran and ended: its exit code as the engine reports it (128+N
    /// after signal N), and whether the kernel killed it for memory.
    Exited { code: i64, oom_killed: bool },
    /// Its command could not be started.
    NotStarted(CommandFailure),
}

/// Why a task's command did not start: what `docker run` reports as exit
/// status 127 (not found) or 126 (cannot be invoked). `detail` is the
/// runtime's own words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFailure {
    NotFound { detail: String },
    NotInvokable { detail: String },
}

/// Why a runtime could not start a task.
#[derive(Debug)]
pub enum StartError {
    /// The command itself cannot run.
    Command(CommandFailure),
    /// The task was cancelled before its process started.
    Cancelled,
    /// Anything else: the engine, the image, the settings.
    Failed(TaskError),
}

impl From<TaskError> for StartError {
    fn from(error: TaskError) -> StartError {
        StartError::Failed(error)
    }
}

/// The process's standard input.
pub trait Stdin: Send + 'static {
    /// Writes one chunk. An error means the process no longer reads its
    /// stdin (it closed it, or ended).
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// End of file.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A started process with its output attached.
pub trait Process: Send {
    type Stdin: Stdin;

    /// Its stdin, taken once; `None` when the task did not ask for stdin.
    fn take_stdin(&mut self) -> Option<Self::Stdin>;

    /// The next chunk of output, in the order the process wrote it; `None`
    /// once the process has closed its output (it ended, or is ending).
    fn output(&mut self) -> impl Future<Output = Option<(OutputStream, Bytes)>> + Send;

    /// How it ended. Called after `output` gave `None`; waits for the end.
    fn end(&mut self) -> impl Future<Output = Result<ProcessEnd, TaskError>> + Send;

    /// What it used, once it has ended, when the runtime measured it.
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// Ends it if it still runs and frees what it holds: a cold container
    /// is removed, a warm one goes back to its pool if it is fit for
    /// another task (else it is removed). How a task is stopped on cancel,
    /// timeout and the output limit.
    fn finish(self) -> impl Future<Output = ()> + Send;
}

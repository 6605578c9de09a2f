//! What a runtime is given: a task that admission allowed, with every
//! setting decided. A runtime applies a plan as it is; it never sees the
//! rules that shaped it, so it cannot skip or weaken one.

use std::time::Duration;

use crate::task::{RegistryAuth, TaskId};

/// An allowed task, defaults filled in and limits decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image: String,
    /// The argv; empty means the image's default command.
    pub command: Vec<String>,
    /// `KEY=VALUE`, as the engine takes them.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: bool,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    pub pids_limit: i64,
    pub network: String,
    pub read_only_root: bool,
    /// Size of the tmpfs on /tmp when the root is read-only, in bytes.
    pub tmpfs_bytes: u64,
    pub timeout: Duration,
    /// The task's own container labels (the server adds its own).
    pub labels: Vec<(String, String)>,
    /// Credentials the request brought for pulling its image.
    pub pull_auth: Option<RegistryAuth>,
    /// The catalog entry the task came from, when it is a named task.
    pub entry: Option<EntryRef>,
    /// For an HTTP task: the call to make to the image's own server, whose
    /// command is `command` (empty: the image's default).
    pub http: Option<HttpCall>,
    /// Set for a task that outlives its connection and its server: its
    /// container is named and labelled by it, kept after the task ends
    /// (until [`crate::executor::Executor::discard`]), and found again by a
    /// server that restarts. `None`: the container goes when the task ends.
    pub task: Option<TaskTag>,
}

/// An HTTP task's call: `POST /task/{task}` with `{"params": PARAMS}` to
/// `port` on the container's loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub port: u16,
    /// The task's name: the path after `/task/` (checked by admission to
    /// hold only URL path characters).
    pub task: String,
    /// The parameters, JSON text (checked by admission).
    pub params: String,
}

/// Who a kept task is, written on its container so that a server that
/// restarts knows it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTag {
    pub id: TaskId,
    /// The named client that submitted it, if any.
    pub client: Option<String>,
    /// It runs on without its client, and its result is kept.
    pub detach: bool,
}

/// A pre-compiled task's name, how many of its tasks one warm container
/// may serve in turn (1: a fresh container per task), whether the container
/// is reset between them, and the named client that asks (a container that
/// serves several tasks serves one client's only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub name: String,
    pub reuse: u32,
    pub reset: bool,
    pub client: Option<String>,
}

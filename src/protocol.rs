//! Every message that crosses the wire, and the types they carry.
//!
//! The byte layout is documented in `docs/PROTOCOL.md`; the framing lives in
//! [`crate::codec`]. This module is plain data: no I/O, no Docker.
//!
//! A connection opens with the client's [`Hello`] (the first frame) and the
//! server's [`ServerMessage::Welcome`] (or an [`ServerMessage::Error`] and a
//! close). After that the client sends [`ClientMessage`]s and the server sends
//! [`ServerMessage`]s. Task-scoped messages carry the client-chosen
//! [`RequestId`]; for each `Submit` the server sends either a single `Failed`
//! (refused), or `Accepted` (with the task's server-wide [`TaskId`]), any
//! number of `Progress`/`Output`, and exactly one terminal frame: `Exited` or
//! `Failed`. An `Attach` is answered the same way, with the task's output
//! replayed from the offsets it names.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

pub use crate::task::{
    Ending, ErrorKind, Offsets, Outcome, OutputStream, ProgressEvent, RegistryAuth, TaskError,
    TaskId, TaskInfo, TaskState, Usage, MAX_TASK_ID_LEN,
};

/// The first four bytes of every handshake body.
pub const MAGIC: [u8; 4] = *b"TCPT";

/// The protocol version this build speaks. A peer with another version gets
/// an [`ErrorKind::VersionMismatch`] error during the handshake.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest frame body either side accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1024 * 1024;

/// The largest output or stdin chunk carried in one frame. Larger writes are
/// split, so one busy task cannot hold the connection for long.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// Stdin bytes of one task a client may have sent and not yet had credited
/// back by `StdinCredit` frames. A chunk past it cancels the task. Waiting
/// for credit, rather than for the connection, is what keeps a task that
/// does not read its stdin from stalling the others on its connection.
pub const STDIN_WINDOW: u32 = 256 * 1024;

/// Chosen by the client, unique among its requests that are still running on
/// one connection.
pub type RequestId = u64;

/// The handshake: the client's first frame.
///
/// `magic` and `version` come first so that any future version can still read
/// them and answer with a clear error. Its `Debug` output hides the token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u16,
    /// Free text naming the client program, for the server's logs.
    pub client: String,
    /// An authentication token, when the server requires one.
    pub token: Option<String>,
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("magic", &self.magic)
            .field("version", &self.version)
            .field("client", &self.client)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Hello {
    pub fn new(client: impl Into<String>, token: Option<String>) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            client: client.into(),
            token,
        }
    }
}

/// The server's answer to a good [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u16,
    /// Server program and version, e.g. `tcp-task 0.1.0`.
    pub server: String,
    pub limits: Limits,
}

/// The limits a server enforces, announced in the handshake so that a client
/// can stay inside them instead of discovering them by failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body the server accepts, in bytes.
    pub max_frame_len: u32,
    /// Largest stdin chunk per `Stdin` frame, in bytes.
    pub max_chunk_len: u32,
    /// Tasks that may run at once on this connection.
    pub max_tasks_per_connection: u32,
    /// A connection with no task and no frame for this long is closed.
    pub idle_timeout_ms: u64,
}

/// Messages from client to server, after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Run a task. With `detach` it runs on after this connection closes,
    /// and its result is kept for the server's retention period; without,
    /// a connection that breaks leaves it running for the reattach grace.
    Submit {
        id: RequestId,
        spec: Box<TaskSpec>,
        detach: bool,
    },
    /// Bytes for the task's stdin (only when `spec.stdin` was set).
    Stdin {
        id: RequestId,
        #[serde(deserialize_with = "bytes_copied")]
        chunk: Bytes,
    },
    /// End of the task's stdin.
    StdinClose { id: RequestId },
    /// Stop the task: the container is killed and removed, and the terminal
    /// frame says `Cancelled`.
    Cancel { id: RequestId },
    /// Liveness and round-trip measurement; answered by `Pong` with the same
    /// id and payload.
    Ping {
        id: RequestId,
        #[serde(deserialize_with = "bytes_copied")]
        payload: Bytes,
    },
    /// Ask for the server's [`ServerStatus`].
    Status { id: RequestId },
    /// Ask for the pre-compiled tasks the server knows.
    ListCatalog { id: RequestId },
    /// Follow a task by its id, from any connection: `Accepted`, its output
    /// from the byte offsets `from` (all of it with the default offsets),
    /// live output while it runs (with `follow`), then its terminal frame.
    /// Without `follow`, a task still running ends the request with a
    /// `Failed` of kind `Detached` once the output so far is sent. `Cancel`
    /// on this request id stops following (a `Failed` with `Detached`);
    /// the task runs on.
    Attach {
        id: RequestId,
        task: TaskId,
        from: Offsets,
        follow: bool,
    },
    /// Wait for a task's end: its terminal frame, under this request id.
    Wait { id: RequestId, task: TaskId },
    /// Send `signal` (a Linux signal number, 1 to 64) to the task's
    /// process. Answered by `Done`.
    Kill {
        id: RequestId,
        task: TaskId,
        signal: i32,
    },
    /// Forget an ended task and remove its kept output; with `force`, a
    /// running task is killed first. Answered by `Done`.
    Remove {
        id: RequestId,
        task: TaskId,
        force: bool,
    },
    /// The tasks this client may see: the running ones, and with `all` the
    /// ended ones whose results are kept. Answered by `TaskList`.
    List { id: RequestId, all: bool },
}

/// Messages from server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Welcome(Welcome),
    /// The task was admitted (or found, for an `Attach`); its frames
    /// follow.
    Accepted {
        id: RequestId,
        task: TaskId,
    },
    Progress {
        id: RequestId,
        event: ProgressEvent,
    },
    Output {
        id: RequestId,
        stream: OutputStream,
        #[serde(deserialize_with = "bytes_copied")]
        chunk: Bytes,
    },
    /// Terminal: the task ran and ended; the outcome says how.
    Exited {
        id: RequestId,
        outcome: Outcome,
    },
    /// Terminal: the task could not run, or was refused.
    Failed {
        id: RequestId,
        error: TaskError,
    },
    Pong {
        id: RequestId,
        #[serde(deserialize_with = "bytes_copied")]
        payload: Bytes,
    },
    StatusReply {
        id: RequestId,
        /// Boxed: inline it would make every queued frame its size (the
        /// encoding is the same).
        status: Box<ServerStatus>,
    },
    CatalogReply {
        id: RequestId,
        entries: Vec<CatalogEntryInfo>,
    },
    /// A `Kill` or `Remove` was carried out.
    Done {
        id: RequestId,
    },
    TaskList {
        id: RequestId,
        tasks: Vec<TaskInfo>,
    },
    /// A problem that is not one task's ending: a bad frame, a failed
    /// handshake, stdin for a request that is not running. When it is fatal
    /// the server closes the connection right after it.
    Error {
        id: Option<RequestId>,
        error: TaskError,
    },
    /// `bytes` more of request `id`'s stdin may be sent: that much of what
    /// the client sent has gone to the task (see [`STDIN_WINDOW`]).
    StdinCredit {
        id: RequestId,
        bytes: u32,
    },
}

/// What to run. `Submit` carries one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task: Task,
    /// `KEY=VALUE` pairs added to the environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// `user`, `uid` or `uid:gid`, as with `docker run -u`.
    pub user: Option<String>,
    /// When set, stdin stays open until `StdinClose`; otherwise the task's
    /// stdin is empty.
    pub stdin: bool,
    /// Memory limit in bytes (swap is set equal: no extra swap).
    pub memory_bytes: Option<u64>,
    /// CPU quota in billionths of a CPU (1_000_000_000 = one CPU).
    pub nano_cpus: Option<u64>,
    pub pids_limit: Option<i64>,
    /// Docker network mode. `None` means no network at all.
    pub network: Option<String>,
    /// Mount the root filesystem read-only (with a writable tmpfs on /tmp).
    pub read_only_root: bool,
    /// Kill the task after this long; the outcome then says `TimedOut`.
    pub timeout_ms: Option<u64>,
    /// Extra container labels (the server adds its own).
    pub labels: Vec<(String, String)>,
    /// Credentials for pulling the image from a private registry.
    pub registry_auth: Option<RegistryAuth>,
}

/// The program of a task: any image and command, or a pre-compiled task the
/// server knows by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// `image` with `command` as its argv (empty: the image's default).
    Image { image: String, command: Vec<String> },
    /// A pre-compiled task from the server's catalog, with extra arguments and
    /// optional JSON parameters.
    Named {
        name: String,
        args: Vec<String>,
        params: Option<String>,
    },
    /// An HTTP task, the original task service's contract: `image`'s own
    /// server (its default command, or `command` when not empty) listens on
    /// `port` inside the container; the server POSTs `{"params": PARAMS}`
    /// to `/task/{task}` there, through the container's loopback, and the
    /// answer's body is the task's stdout. `params` is JSON text (`None`:
    /// `null`).
    Http {
        image: String,
        port: u16,
        task: String,
        params: Option<String>,
        command: Vec<String>,
    },
}

impl Default for Task {
    fn default() -> Task {
        Task::Image {
            image: String::new(),
            command: Vec::new(),
        }
    }
}

impl TaskSpec {
    /// A generic task: run `command` in `image`.
    pub fn image<I, S>(image: impl Into<String>, command: I) -> TaskSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TaskSpec {
            task: Task::Image {
                image: image.into(),
                command: command.into_iter().map(Into::into).collect(),
            },
            ..TaskSpec::default()
        }
    }

    /// A pre-compiled task from the server's catalog.
    pub fn named<I, S>(name: impl Into<String>, args: I) -> TaskSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TaskSpec {
            task: Task::Named {
                name: name.into(),
                args: args.into_iter().map(Into::into).collect(),
                params: None,
            },
            ..TaskSpec::default()
        }
    }

    /// An HTTP task: POST `{"params": params}` (JSON text) to
    /// `/task/{task}` on `port` of `image`'s own server.
    pub fn http(
        image: impl Into<String>,
        port: u16,
        task: impl Into<String>,
        params: Option<String>,
    ) -> TaskSpec {
        TaskSpec {
            task: Task::Http {
                image: image.into(),
                port,
                task: task.into(),
                params,
                command: Vec::new(),
            },
            ..TaskSpec::default()
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// What `tcp-task status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Server program and version.
    pub server: String,
    pub protocol_version: u16,
    pub uptime_ms: u64,
    pub connections: u64,
    /// Tasks whose container is running.
    pub running: u64,
    /// Tasks waiting for a free slot.
    pub queued: u64,
    /// Tasks that ended since the server started (any ending).
    pub finished: u64,
    /// Tasks that failed to run since the server started.
    pub failed: u64,
    pub engine: EngineStatus,
    pub catalog_size: u64,
    pub pools: Vec<PoolStatus>,
    /// Ended tasks whose results are kept.
    pub retained: u64,
    /// Output bytes the kept results hold.
    pub retained_bytes: u64,
    /// On the Swarm backend, the swarm's nodes; empty on the local one.
    pub nodes: Vec<NodeStatus>,
}

/// A Docker Swarm node, as the Swarm backend sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its host name.
    pub name: String,
    /// Swarm's word: `ready`, `down`, `unknown`, `disconnected`.
    pub state: String,
    /// `active`, `pause` or `drain`: whether it takes new tasks.
    pub availability: String,
    pub manager: bool,
    /// What it has, in billionths of a CPU and in bytes.
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    /// This server's tasks running on it.
    pub tasks: u64,
}

/// Whether the container engine answers, and what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub reachable: bool,
    /// e.g. `20.10.24+dfsg1`.
    pub version: Option<String>,
    /// The negotiated Engine API version, e.g. `1.41`.
    pub api_version: Option<String>,
    /// Why it is not reachable.
    pub error: Option<String>,
}

/// One warm-container pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub key: String,
    pub warm: u64,
    pub in_use: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A pre-compiled task, as `tcp-task tasks` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntryInfo {
    pub name: String,
    pub description: String,
    pub image: String,
    pub command: Vec<String>,
    pub memory_bytes: Option<u64>,
    pub nano_cpus: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Reads a byte string as `Bytes` by copying it out of the frame. `Bytes`'
/// own deserializer asks for an owned buffer, which bincode makes by
/// allocating it zeroed and then filling it: twice the work for the
/// payload of every ping, stdin chunk and output chunk. The wire format is
/// the same.
fn bytes_copied<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    struct Copied;

    impl serde::de::Visitor<'_> for Copied {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(bytes))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(bytes))
        }
    }

    deserializer.deserialize_bytes(Copied)
}

//! The words every part of a task's life shares: the credentials to pull
//! its image with, its progress, which output stream a chunk belongs to,
//! how a task that ran ended, and why one could not run.
//!
//! Plain data. The runtimes report in these terms, the connection sends them
//! to clients as they are (the wire carries them verbatim, see
//! [`crate::protocol`]), and the client library hands them to programs.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Registry credentials, as `docker login` takes them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// e.g. `registry.example.com:5000`; defaults to the image's registry.
    pub server: Option<String>,
}

// Never print a password, not even in debug logs.
impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

/// The longest task id a peer may send; ids the server makes are
/// [`TaskId::LEN`] characters.
pub const MAX_TASK_ID_LEN: usize = 64;

/// A task's server-wide name: 20 characters of base32 (`a`–`z`, `2`–`7`)
/// for 100 random bits, so that one client cannot guess another's task.
/// Unlike a request id it does not depend on the connection: any
/// connection may attach to the task, wait for it or kill it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Characters in a task id the server makes.
    pub const LEN: usize = 20;
    const ALPHABET: &'static [u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

    /// The id for 20 base32 digits of `random`: 5 bits each from the low
    /// 100 bits.
    pub fn from_random(random: u128) -> TaskId {
        let id = (0..Self::LEN)
            .map(|i| Self::ALPHABET[((random >> (5 * i)) & 31) as usize] as char)
            .collect();
        TaskId(id)
    }

    /// Checks that `text` looks like a task id (what a user typed, say):
    /// lower-case base32 digits, at most [`MAX_TASK_ID_LEN`] of them.
    pub fn parse(text: &str) -> Result<TaskId, TaskError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_TASK_ID_LEN
            && text.bytes().all(|b| Self::ALPHABET.contains(&b));
        if valid {
            Ok(TaskId(text.to_owned()))
        } else {
            Err(TaskError::new(
                ErrorKind::BadRequest,
                format!(
                    "`{}` is not a task id: ids are {} characters of a-z and 2-7, as `tcp-task ps` shows them",
                    text.escape_debug(),
                    Self::LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// How many bytes of each output stream a client already has: where a
/// replay starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
}

impl Offsets {
    pub fn of(&self, stream: OutputStream) -> u64 {
        match stream {
            OutputStream::Stdout => self.stdout,
            OutputStream::Stderr => self.stderr,
        }
    }

    pub fn advance(&mut self, stream: OutputStream, bytes: u64) {
        match stream {
            OutputStream::Stdout => self.stdout += bytes,
            OutputStream::Stderr => self.stderr += bytes,
        }
    }
}

/// Where a task is in its life, as `tcp-task ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a slot, starting, or running.
    Running,
    /// It ran and ended; its result is kept.
    Ended(Outcome),
    /// It could not run.
    Failed(TaskError),
}

/// One task the server knows: running, or ended with its result kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: TaskId,
    /// The image, or `catalog:NAME` for a pre-compiled task.
    pub image: String,
    pub command: Vec<String>,
    /// Submitted with `detach`: it runs on without its client.
    pub detached: bool,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub state: TaskState,
    /// Output bytes it wrote (stdout and stderr): what its kept log holds.
    pub output_bytes: u64,
}

/// Lifecycle news about a task before it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProgressEvent {
    /// Waiting for a free slot; `position` 1 is next.
    Queued { position: u32 },
    /// The engine is pulling the image; one event per layer update, as the
    /// engine reports it.
    Pulling {
        layer: String,
        status: String,
        current: Option<u64>,
        total: Option<u64>,
    },
    /// The container exists (short id).
    Created { container: String },
    /// The container's process is running.
    Started,
    /// The connection to the server broke and the client library
    /// reconnected and re-attached: the stream goes on where it stopped, no
    /// byte lost or repeated. Only the client library makes this event; a
    /// server never sends it.
    Resumed { attempts: u32 },
    /// On a Docker Swarm: where the scheduler is with the task. `state` is
    /// Swarm's word for it (`pending`: waiting for a node with room;
    /// `assigned`, `preparing`, `starting`: placed on `node`, the node's
    /// host name, once known). Only the Swarm backend sends it.
    Scheduling { state: String, node: Option<String> },
}

/// Which of the task's output streams a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a task that ran came to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// The process exited by itself; see `exit_code`.
    Exited,
    /// The process was killed by a signal; see `signal`.
    Signaled,
    /// The task ran past its timeout and was killed.
    TimedOut,
    /// The kernel killed the task for exceeding its memory limit.
    OomKilled,
    /// The client cancelled the task, disconnected, or the server shut down.
    Cancelled,
    /// The task wrote more output than the server relays and was killed.
    OutputLimit,
}

/// The result of a task that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ending: Ending,
    /// The exit code, when the process exited (or the engine reported one).
    pub exit_code: Option<i32>,
    /// The signal that killed the process, when one did.
    pub signal: Option<i32>,
    /// Wall time from container start to end, in milliseconds.
    pub duration_ms: u64,
    /// Some output was not relayed (the output limit was reached).
    pub output_truncated: bool,
    /// What the task used, when the runtime could measure it (not for a
    /// task that was killed, nor for an HTTP task).
    pub usage: Option<Usage>,
}

/// What a task used, as online judges report it per submission: CPU time
/// in user and in kernel mode, and the most memory it held at once. A cold
/// task's figures are its container's cgroup's, read inside the container
/// after the task's end; a warm task's are the kernel's accounting of its
/// process (`wait4`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time in user mode, in microseconds.
    pub cpu_user_us: u64,
    /// CPU time in the kernel on the task's behalf, in microseconds.
    pub cpu_system_us: u64,
    /// Peak memory, in bytes.
    pub peak_memory_bytes: u64,
}

impl Usage {
    pub fn cpu_user(&self) -> Duration {
        Duration::from_micros(self.cpu_user_us)
    }

    pub fn cpu_system(&self) -> Duration {
        Duration::from_micros(self.cpu_system_us)
    }
}

impl Ending {
    /// The snake_case name, as `--json`, metrics and the HTTP API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Exited => "exited",
            Ending::Signaled => "signaled",
            Ending::TimedOut => "timed_out",
            Ending::OomKilled => "oom_killed",
            Ending::Cancelled => "cancelled",
            Ending::OutputLimit => "output_limit",
        }
    }
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited && self.exit_code == Some(0)
    }

    pub fn timed_out(&self) -> bool {
        self.ending == Ending::TimedOut
    }

    pub fn oom_killed(&self) -> bool {
        self.ending == Ending::OomKilled
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }

    /// The exit status `docker run` would give for this outcome: the task's
    /// own code, 128+N for signal N, 124 on timeout, 137 for OOM, 130 when
    /// cancelled, 125 when the output limit ended it.
    pub fn exit_status(&self) -> i32 {
        match self.ending {
            Ending::Exited => self.exit_code.unwrap_or(125),
            Ending::Signaled => 128 + self.signal.unwrap_or(9),
            Ending::TimedOut => 124,
            Ending::OomKilled => 137,
            Ending::Cancelled => 130,
            Ending::OutputLimit => 125,
        }
    }
}

/// Why something failed, for a program to match on. Each kind has a message
/// for people in [`TaskError::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or inconsistent (e.g. an empty image name).
    BadRequest,
    /// The server's policy does not allow what was asked.
    PolicyDenied,
    /// Too many tasks: a per-connection or global bound, or the queue is full.
    Busy,
    /// A request id that is already running on this connection.
    DuplicateId,
    /// A message named a request that is not running.
    UnknownRequest,
    /// No pre-compiled task by that name.
    UnknownTask,
    /// The image does not exist locally or in its registry.
    ImageNotFound,
    /// The registry refused the credentials.
    RegistryAuth,
    /// The command does not exist in the image (`docker run` exits 127).
    CommandNotFound,
    /// The command exists but cannot be run (`docker run` exits 126).
    CommandNotInvokable,
    /// The Docker engine failed or cannot be reached.
    Engine,
    /// The server is shutting down and takes no new tasks.
    ShuttingDown,
    /// Missing or wrong credentials in the handshake.
    Unauthorized,
    /// The peer broke the protocol (bad frame, bad handshake, wrong magic).
    Protocol,
    /// A frame was larger than the maximum.
    FrameTooLarge,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The connection sat idle past the idle timeout, or the handshake took
    /// too long.
    Timeout,
    /// A bug in the server; the message says more.
    Internal,
    /// No task with that id (it never existed, its result was removed, or
    /// it belongs to another client).
    NoSuchTask,
    /// An attach was stopped by its client; the task runs on.
    Detached,
    /// An HTTP task's server did not answer on its port within the task's
    /// timeout; the message holds its last output lines.
    NotListening,
    /// An HTTP task's container (its server) ended before it answered;
    /// the message holds its last output lines.
    TaskExited,
    /// An HTTP task answered with a status other than 2xx, or with no
    /// valid HTTP; the message holds the status and the start of the body.
    TaskFailed,
    /// The backend cannot do what the task asks (stdin on the Swarm
    /// backend); the message says what to change.
    Unsupported,
    /// On a Docker Swarm, no node could take the task in time (none has
    /// the memory or CPU it asks for, or none is available); the message
    /// holds the scheduler's reason.
    Unschedulable,
}

impl ErrorKind {
    /// The snake_case name, as `--json`, metrics and the HTTP API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::Busy => "busy",
            ErrorKind::DuplicateId => "duplicate_id",
            ErrorKind::UnknownRequest => "unknown_request",
            ErrorKind::UnknownTask => "unknown_task",
            ErrorKind::ImageNotFound => "image_not_found",
            ErrorKind::RegistryAuth => "registry_auth",
            ErrorKind::CommandNotFound => "command_not_found",
            ErrorKind::CommandNotInvokable => "command_not_invokable",
            ErrorKind::Engine => "engine",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Protocol => "protocol",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
            ErrorKind::NoSuchTask => "no_such_task",
            ErrorKind::Detached => "detached",
            ErrorKind::NotListening => "not_listening",
            ErrorKind::TaskExited => "task_exited",
            ErrorKind::TaskFailed => "task_failed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unschedulable => "unschedulable",
        }
    }

    /// The exit status `docker run` gives for a task that could not run this
    /// way: 127 for a missing command, 126 for one that cannot be invoked,
    /// 125 for everything else (the daemon or the request failed).
    pub fn exit_status(self) -> i32 {
        match self {
            ErrorKind::CommandNotFound => 127,
            ErrorKind::CommandNotInvokable => 126,
            _ => 125,
        }
    }
}

/// An error with a kind to match on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TaskError {
        TaskError {
            kind,
            message: message.into(),
        }
    }
}

//! How the server treats its connections: every bound, with its default.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::access::Credential;
use crate::auth::{self, TokenFileError};
use crate::protocol::{Limits, DEFAULT_MAX_FRAME_LEN, MAX_CHUNK_LEN};

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_TASKS_PER_CONNECTION: usize = 1024;
pub const DEFAULT_MAX_TASKS: usize = 4096;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BUFFERED_OUTPUT: usize = 4 * 1024 * 1024;
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_REATTACH_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_RETAINED: usize = 1000;
pub const DEFAULT_MAX_RETAINED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// How the server treats its connections. Every bound has a default here and
/// a key in the `[server]` table of the config file.
///
/// Its `Debug` output shows how many tokens there are, never the tokens.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest frame body accepted from a client, in bytes.
    pub max_frame_len: u32,
    /// Connections served at once; more are answered with a `Busy` error and
    /// closed.
    pub max_connections: usize,
    /// Tasks running at once on one connection.
    pub max_tasks_per_connection: usize,
    /// Tasks running (or queued in the executor) at once, all connections.
    pub max_tasks: usize,
    /// Time a new connection has to send its hello.
    #[serde(with = "duration_secs")]
    pub handshake_timeout: Duration,
    /// A connection with no frame and no task for this long is closed.
    #[serde(with = "duration_secs")]
    pub idle_timeout: Duration,
    /// On shutdown, running tasks get this long to finish before they are
    /// cancelled.
    #[serde(with = "duration_secs")]
    pub shutdown_grace: Duration,
    /// Output bytes that may wait for a slow client, per connection. Past it
    /// the tasks' output is read only as fast as the client takes it.
    pub max_buffered_output: usize,
    /// A connection whose client reads nothing for this long while the
    /// server has frames for it is closed; its tasks run on as after any
    /// broken connection, instead of holding their slots for a client that
    /// never reads.
    #[serde(with = "duration_secs")]
    pub write_timeout: Duration,
    /// Named clients, each with a token and a policy that narrows the
    /// server's (see [`crate::access`]).
    #[serde(skip)]
    pub clients: Vec<Arc<Credential>>,
    /// Accepted authentication tokens with no policy of their own. When this
    /// and `clients` are both empty, no token is required.
    /// Several may be valid at once, for rotation. Filled from a token file
    /// by [`ServerConfig::with_token_file`], never from the config file.
    #[serde(skip)]
    pub tokens: Vec<String>,
    /// Failed authentications from one address within
    /// `auth_failure_window` after which that address is blocked.
    pub max_auth_failures: u32,
    /// How far back failed authentications count, and how long a block
    /// lasts. A blocked address's connections are refused without their
    /// token being checked.
    #[serde(with = "duration_secs")]
    pub auth_failure_window: Duration,
    /// A task whose connection breaks (not a cancel) runs on this long for
    /// its client to re-attach; then it is cancelled. Zero: at once.
    #[serde(with = "duration_secs")]
    pub reattach_grace: Duration,
    /// How long the result of a detached task (and its output, in the
    /// engine) is kept after it ends, unless removed earlier.
    #[serde(with = "duration_secs")]
    pub retention: Duration,
    /// Kept results at most; past it the oldest go first.
    pub max_retained: usize,
    /// Output bytes the kept results may hold together; past it the oldest
    /// go first.
    pub max_retained_bytes: u64,
    /// Where `tcp-task serve` writes down the tasks it accepted until they
    /// end, so that a server started after this one is killed runs the
    /// ones still queued. Unset: `$STATE_DIRECTORY`, `$XDG_STATE_HOME/tcp-task`
    /// or `~/.local/state/tcp-task`. A library server takes it through
    /// [`crate::server::Server::with_state_dir`].
    pub state_dir: Option<PathBuf>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand so that the tokens cannot reach a log line.
        f.debug_struct("ServerConfig")
            .field("max_frame_len", &self.max_frame_len)
            .field("max_connections", &self.max_connections)
            .field("max_tasks_per_connection", &self.max_tasks_per_connection)
            .field("max_tasks", &self.max_tasks)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_buffered_output", &self.max_buffered_output)
            .field("write_timeout", &self.write_timeout)
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("clients", &self.clients)
            .field("max_auth_failures", &self.max_auth_failures)
            .field("auth_failure_window", &self.auth_failure_window)
            .field("reattach_grace", &self.reattach_grace)
            .field("retention", &self.retention)
            .field("max_retained", &self.max_retained)
            .field("max_retained_bytes", &self.max_retained_bytes)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_tasks_per_connection: DEFAULT_MAX_TASKS_PER_CONNECTION,
            max_tasks: DEFAULT_MAX_TASKS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_buffered_output: DEFAULT_MAX_BUFFERED_OUTPUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tokens: Vec::new(),
            clients: Vec::new(),
            max_auth_failures: auth::DEFAULT_MAX_AUTH_FAILURES,
            auth_failure_window: auth::DEFAULT_AUTH_FAILURE_WINDOW,
            reattach_grace: DEFAULT_REATTACH_GRACE,
            retention: DEFAULT_RETENTION,
            max_retained: DEFAULT_MAX_RETAINED,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            state_dir: None,
        }
    }
}

impl ServerConfig {
    /// Adds the tokens of a token file (see [`auth::load_token_file`]) to
    /// the accepted ones. What `serve --token-file FILE` calls.
    pub fn with_token_file(mut self, path: impl AsRef<Path>) -> Result<Self, TokenFileError> {
        self.tokens.extend(auth::load_token_file(path)?);
        Ok(self)
    }

    /// `state_dir`, or where a service keeps its state by convention:
    /// systemd's `$STATE_DIRECTORY`, then `$XDG_STATE_HOME/tcp-task`, then
    /// `~/.local/state/tcp-task`. `None` when none of them is set.
    pub fn state_dir_or_default(&self) -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        self.state_dir
            .clone()
            .or_else(|| var("STATE_DIRECTORY"))
            .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("tcp-task")))
            .or_else(|| var("HOME").map(|d| d.join(".local/state/tcp-task")))
    }

    /// What the handshake announces to clients.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_len: self.max_frame_len,
            max_chunk_len: MAX_CHUNK_LEN as u32,
            max_tasks_per_connection: self.max_tasks_per_connection as u32,
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
        }
    }

    /// The output budget, never below one chunk: a smaller one could never
    /// let a full chunk through.
    pub(crate) fn output_budget(&self) -> usize {
        self.max_buffered_output
            .clamp(MAX_CHUNK_LEN, Semaphore::MAX_PERMITS)
    }
}

mod duration_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

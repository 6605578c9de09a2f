//! The server: settings, the accept loop, connection limits and graceful
//! shutdown. Each connection is served by [`crate::connection`]; tasks run
//! in the [`Executor`] the server was built with.

use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::codec::FrameCodec;
use crate::connection;
use crate::executor::Executor;
use crate::protocol::{
    ErrorKind, Hello, Limits, ServerMessage, ServerStatus, TaskError, DEFAULT_MAX_FRAME_LEN,
    MAX_CHUNK_LEN, PROTOCOL_VERSION,
};

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_TASKS_PER_CONNECTION: usize = 1024;
pub const DEFAULT_MAX_TASKS: usize = 4096;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BUFFERED_OUTPUT: usize = 4 * 1024 * 1024;

/// How the server treats its connections. Every bound has a default here and
/// a key in the `[server]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
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
    /// Accepted authentication tokens; empty means no token is required.
    #[serde(skip)]
    pub tokens: Vec<String>,
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
            tokens: Vec::new(),
        }
    }
}

impl ServerConfig {
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

/// `tcp-task 0.1.0`: how the server names itself to clients.
pub fn server_name() -> String {
    format!("tcp-task {}", env!("CARGO_PKG_VERSION"))
}

/// What every connection of a server shares.
pub(crate) struct Shared<E> {
    pub config: ServerConfig,
    pub executor: Arc<E>,
    /// Bounds tasks across all connections.
    pub task_slots: Arc<Semaphore>,
    /// Fired when shutdown starts: connections stop taking new tasks.
    pub shutdown: CancellationToken,
    /// Fired when the shutdown grace runs out: every task is cancelled.
    pub abort: CancellationToken,
    pub started: Instant,
    pub connections: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
}

impl<E: Executor> Shared<E> {
    /// Checks the hello's token against the configured ones, in constant
    /// time, so that timing does not reveal how much of a guess was right.
    pub fn check_credentials(&self, hello: &Hello, peer: SocketAddr) -> Result<Hello, TaskError> {
        if self.config.tokens.is_empty() {
            return Ok(hello.clone());
        }
        let offered = hello.token.as_deref().unwrap_or("").as_bytes();
        let mut valid = subtle::Choice::from(0);
        for token in &self.config.tokens {
            valid |= token.as_bytes().ct_eq(offered);
        }
        if bool::from(valid) {
            Ok(hello.clone())
        } else {
            warn!(%peer, "authentication failed");
            Err(TaskError::new(
                ErrorKind::Unauthorized,
                "authentication failed: the server requires a valid token (pass --token or set TCP_TASK_TOKEN)",
            ))
        }
    }

    pub fn record_end(&self, terminal: &ServerMessage) {
        match terminal {
            ServerMessage::Exited { .. } => self.finished.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub async fn status(&self) -> ServerStatus {
        let mut status = self.executor.status().await;
        status.server = server_name();
        status.protocol_version = PROTOCOL_VERSION;
        status.uptime_ms = self.started.elapsed().as_millis() as u64;
        status.connections = self.connections.load(Ordering::Relaxed);
        status.finished = self.finished.load(Ordering::Relaxed);
        status.failed = self.failed.load(Ordering::Relaxed);
        status
    }
}

/// A tcp-task server: an executor behind a listening socket.
pub struct Server<E> {
    shared: Arc<Shared<E>>,
}

impl<E: Executor> Server<E> {
    pub fn new(config: ServerConfig, executor: E) -> Server<E> {
        let task_slots = Arc::new(Semaphore::new(config.max_tasks.min(Semaphore::MAX_PERMITS)));
        Server {
            shared: Arc::new(Shared {
                config,
                executor: Arc::new(executor),
                task_slots,
                shutdown: CancellationToken::new(),
                abort: CancellationToken::new(),
                started: Instant::now(),
                connections: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// Serves `listener` until `shutdown` completes, then shuts down
    /// gracefully: no new connections or tasks, running tasks get the grace
    /// period to finish, then they are cancelled. Returns when every
    /// connection has closed.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let connections = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        tokio::select! {
            _ = self.accept_loop(&listener, &connections, &limit) => {}
            _ = shutdown => {}
        }
        drop(listener);
        info!("shutting down: no new connections or tasks");
        self.shared.shutdown.cancel();
        connections.close();
        if tokio::time::timeout(self.shared.config.shutdown_grace, connections.wait())
            .await
            .is_err()
        {
            warn!(grace = ?self.shared.config.shutdown_grace, "cancelling the tasks still running after the shutdown grace");
            self.shared.abort.cancel();
            connections.wait().await;
        }
        self.shared.executor.shutdown().await;
        info!("shut down");
    }

    /// Binds `addr` and runs the server in the background. For tests and
    /// programs that embed a server.
    pub async fn spawn(
        self,
        addr: impl tokio::net::ToSocketAddrs,
    ) -> std::io::Result<RunningServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(self.run(listener, async move { stopped.cancelled().await }));
        Ok(RunningServer { addr, stop, task })
    }

    async fn accept_loop(
        &self,
        listener: &TcpListener,
        connections: &TaskTracker,
        limit: &Arc<Semaphore>,
    ) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait for some to close
                    // rather than spin.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = self.shared.clone();
                    connections.spawn(async move {
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        connection::serve(socket, peer, shared.clone()).await;
                        shared.connections.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(_) => {
                    let max = self.shared.config.max_connections;
                    connections.spawn(refuse(socket, max, self.shared.config.max_frame_len));
                }
            }
        }
    }
}

/// Tells a connection over the maximum why it is closed, without reading
/// from it.
async fn refuse(socket: TcpStream, max: usize, max_frame_len: u32) {
    use futures::SinkExt;
    let error = TaskError::new(
        ErrorKind::Busy,
        format!("the server serves {max} connections, its maximum; retry later"),
    );
    let mut writer = FramedWrite::new(socket, FrameCodec::<()>::new(max_frame_len));
    let send = writer.send(ServerMessage::Error { id: None, error });
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}

/// A server running in the background, from [`Server::spawn`].
pub struct RunningServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

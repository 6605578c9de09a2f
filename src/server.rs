//! The server: settings, the accept loop, connection limits and graceful
//! shutdown. Each connection is served by [`crate::connection`]; tasks run
//! in the [`Executor`] the server was built with.

use serde::Deserialize;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::access::Credential;
use crate::auth::{self, FailedLogins, TokenFileError};
use crate::codec::FrameCodec;
use crate::connection;
use crate::executor::Executor;
use crate::protocol::{
    ErrorKind, Hello, Limits, ServerMessage, ServerStatus, TaskError, DEFAULT_MAX_FRAME_LEN,
    MAX_CHUNK_LEN, PROTOCOL_VERSION,
};
use crate::tls::{TlsConfig, TlsError};

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_TASKS_PER_CONNECTION: usize = 1024;
pub const DEFAULT_MAX_TASKS: usize = 4096;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BUFFERED_OUTPUT: usize = 4 * 1024 * 1024;

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
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("clients", &self.clients)
            .field("max_auth_failures", &self.max_auth_failures)
            .field("auth_failure_window", &self.auth_failure_window)
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
            tokens: Vec::new(),
            clients: Vec::new(),
            max_auth_failures: auth::DEFAULT_MAX_AUTH_FAILURES,
            auth_failure_window: auth::DEFAULT_AUTH_FAILURE_WINDOW,
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

/// Who a connection's client is, once its hello is accepted.
pub(crate) struct Login {
    pub hello: Hello,
    /// The named client whose token it gave, if any.
    pub client: Option<Arc<Credential>>,
}

fn all_tokens(config: &ServerConfig) -> Vec<String> {
    let named = config.clients.iter().map(|c| c.token.clone());
    config.tokens.iter().cloned().chain(named).collect()
}

/// What every connection of a server shares.
pub(crate) struct Shared<E> {
    pub config: ServerConfig,
    /// Every accepted token: the plain ones, then the named clients'.
    pub tokens: Vec<String>,
    pub executor: Arc<E>,
    /// Set when the server speaks TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub failed_logins: FailedLogins,
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
    /// An address that failed too often recently is refused without its
    /// token being looked at. Nothing here logs or returns the token.
    pub fn check_credentials(&self, hello: &Hello, peer: SocketAddr) -> Result<Login, TaskError> {
        if self.tokens.is_empty() {
            return Ok(Login {
                hello: hello.clone(),
                client: None,
            });
        }
        let now = Instant::now();
        if let Some(left) = self.failed_logins.blocked_for(peer.ip(), now) {
            debug!(%peer, "refused: the address is blocked after failed authentications");
            return Err(TaskError::new(
                ErrorKind::Unauthorized,
                format!(
                    "too many failed authentications from {}: this address is temporarily blocked for {} more seconds; check the token (--token or TCP_TASK_TOKEN), then retry",
                    peer.ip(),
                    left.as_secs().max(1)
                ),
            ));
        }
        let offered = hello.token.as_deref().unwrap_or("");
        if let Some(index) = auth::matching_token(&self.tokens, offered) {
            // Plain tokens come first in `tokens`, the named clients' after.
            let client = index
                .checked_sub(self.config.tokens.len())
                .and_then(|i| self.config.clients.get(i).cloned());
            return Ok(Login {
                hello: hello.clone(),
                client,
            });
        }
        let (failures, blocks) = self.failed_logins.record(peer.ip(), now);
        warn!(%peer, failures, "authentication failed");
        if blocks {
            warn!(
                address = %peer.ip(),
                window = ?self.config.auth_failure_window,
                "blocking the address after {failures} failed authentications"
            );
        }
        Err(TaskError::new(
            ErrorKind::Unauthorized,
            "authentication failed: the server requires a valid token (pass --token or set TCP_TASK_TOKEN)",
        ))
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
        let failed_logins = FailedLogins::new(config.max_auth_failures, config.auth_failure_window);
        Server {
            shared: Arc::new(Shared {
                tokens: all_tokens(&config),
                config,
                executor: Arc::new(executor),
                tls: None,
                failed_logins,
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

    /// Makes the server speak TLS only, with the certificate and key of
    /// `tls` (and, when it names a client CA, only to clients with a
    /// certificate it signed). Fails if the files cannot be read or used.
    pub fn with_tls(mut self, tls: &TlsConfig) -> Result<Server<E>, TlsError> {
        let acceptor = tls.acceptor()?;
        Arc::get_mut(&mut self.shared)
            .expect("a server that is not running yet is not shared")
            .tls = Some(acceptor);
        Ok(self)
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
                        connection::serve_socket(socket, peer, shared.clone()).await;
                        shared.connections.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(_) => {
                    connections.spawn(refuse(socket, self.shared.clone()));
                }
            }
        }
    }
}

/// Tells a connection over the maximum why it is closed, in TLS when the
/// server speaks it, within one second whatever the client does.
async fn refuse<E>(socket: TcpStream, shared: Arc<Shared<E>>) {
    let max = shared.config.max_connections;
    let error = TaskError::new(
        ErrorKind::Busy,
        format!("the server serves {max} connections, its maximum; retry later"),
    );
    let max_frame_len = shared.config.max_frame_len;
    let send = async {
        match &shared.tls {
            None => send_and_close(socket, error, max_frame_len).await,
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(socket).await {
                    send_and_close(stream, error, max_frame_len).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
}

/// Sends one error frame and closes politely: reading what the client sends
/// until it closes, since closing with unread bytes resets the connection
/// and a reset can destroy the frame before the client reads it.
async fn send_and_close<S>(stream: S, error: TaskError, max_frame_len: u32)
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    use futures::SinkExt;
    let mut writer = FramedWrite::new(stream, FrameCodec::<()>::new(max_frame_len));
    if writer
        .send(ServerMessage::Error { id: None, error })
        .await
        .is_err()
    {
        return;
    }
    let mut stream = writer.into_inner();
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
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

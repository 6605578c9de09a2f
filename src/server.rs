//! The server: the accept loop, the connection limit and graceful
//! shutdown. Each connection is served by [`connection`]; a Submit passes
//! admission there, and the allowed plan runs in the [`Executor`] the
//! server was built with.

mod config;
mod connection;
mod counted;
mod handshake;
pub mod http;
mod outgoing;
mod shared;
mod stdin;
mod tls;
mod write_timeout;

pub use config::{
    ServerConfig, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BUFFERED_OUTPUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_TASKS, DEFAULT_MAX_TASKS_PER_CONNECTION,
    DEFAULT_SHUTDOWN_GRACE,
};
pub use shared::server_name;
pub use tls::TlsConfig;

use std::future::Future;
use std::io;
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
use tracing::{error, info, warn, Instrument};

use crate::admission::{Admission, Policy, Quota, Scope};
use crate::auth::FailedLogins;
use crate::catalog::Catalog;
use crate::codec::FrameCodec;
use crate::executor::{Executor, Owner};
use crate::metrics::{Listener, Metrics};
use crate::protocol::{ErrorKind, ServerMessage, TaskError};
use crate::tasks::{Journal, Keeping, Tasks};
use crate::tls::TlsError;
pub use http::HttpConfig;
use shared::{all_tokens, Shared};

#[cfg(feature = "fuzzing")]
pub(crate) use handshake::{check_hello, read_hello};

/// What a server takes over from the servers before it, at start-up or
/// later: see [`Server::take_over_later`].
pub struct TakeOver<E> {
    shared: Arc<Shared<E>>,
}

impl<E: Executor> TakeOver<E> {
    /// See [`Server::adopt`].
    pub async fn adopt(&self) -> Result<usize, TaskError> {
        let tasks = &self.shared.tasks;
        let mut count = tasks.adopt().await?;
        for ticket in tasks.left_behind() {
            let admitted = self.shared.readmit(&ticket);
            count += usize::from(tasks.requeue(ticket, admitted));
        }
        tasks.release_left_behind();
        tasks.set_taking_over(false);
        Ok(count)
    }

    /// See [`Server::warm_up`].
    pub fn warm_up(&self) {
        for (plan, containers) in self.shared.admission.warm_plans() {
            self.shared.executor.keep_warm(&plan, containers);
        }
    }
}

/// A tcp-task server: an executor behind a listening socket.
pub struct Server<E> {
    shared: Arc<Shared<E>>,
    /// The HTTP listener (`--http`), when there is one, and its settings.
    http: Option<(TcpListener, HttpConfig)>,
}

impl<E: Executor> Server<E> {
    /// A server that runs tasks on `executor`, with the default policy and
    /// no catalog until [`Server::with_policy`] and [`Server::with_catalog`]
    /// say otherwise.
    pub fn new(config: ServerConfig, executor: E) -> Server<E> {
        let task_quota = Quota::new(config.max_tasks, Scope::Server);
        let failed_logins = FailedLogins::new(config.max_auth_failures, config.auth_failure_window);
        let executor = Arc::new(executor);
        let abort = CancellationToken::new();
        let keeping = Keeping::new(
            config.reattach_grace,
            config.retention,
            config.max_retained,
            config.max_retained_bytes,
        );
        let tasks = Tasks::new(executor.clone(), keeping, abort.clone());
        Server {
            shared: Arc::new(Shared {
                tokens: all_tokens(&config),
                config,
                executor,
                admission: Admission::default(),
                task_quota,
                tasks,
                tls: None,
                failed_logins,
                shutdown: CancellationToken::new(),
                abort,
                started: Instant::now(),
                metrics: Arc::new(Metrics::new()),
                connections: AtomicU64::new(0),
            }),
            http: None,
        }
    }

    /// Records into `metrics` instead of the server's own: the registry
    /// the executor also reports to (`DockerExecutor::with_observer`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Server<E> {
        self.unshared().metrics = metrics;
        self
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Also serves HTTP on `listener`: `/metrics`, `/healthz`, `/readyz`
    /// and the original task service's `/api/…` (see [`http`]),
    /// with the same tokens, TLS and policy as the binary protocol.
    pub fn with_http(mut self, listener: TcpListener, config: HttpConfig) -> Server<E> {
        self.http = Some((listener, config));
        self
    }

    /// What clients may ask for (`[executor.policy]` in the config file).
    pub fn with_policy(mut self, policy: Policy) -> Server<E> {
        let admission = &mut self.unshared().admission;
        *admission = Admission::new(policy, admission.catalog().clone());
        self
    }

    /// The pre-compiled tasks that `Task::Named` requests can run.
    pub fn with_catalog(mut self, catalog: Catalog) -> Server<E> {
        let admission = &mut self.unshared().admission;
        *admission = Admission::new(admission.policy().clone(), catalog);
        self
    }

    /// Writes every accepted task down under `state_dir` until it ends, so
    /// that a server started after this one is killed, with the same
    /// `state_dir` and `scope`, runs the tasks that were still queued (see
    /// [`Server::adopt`]). Without it, a task that has no container yet
    /// when the server is killed is lost.
    pub fn with_state_dir(self, state_dir: &Path, scope: Option<&str>) -> io::Result<Server<E>> {
        let journal = Journal::open(state_dir, scope, Owner::this_process(None))?;
        self.shared.tasks.keep_journal(journal);
        Ok(self)
    }

    /// Takes over the tasks that a server which is gone left behind: the
    /// ones in containers, found by their labels (running ones are
    /// supervised again, ended ones kept as results), then, with a state
    /// directory, the ones it had accepted but not started, which run now.
    /// Call once at start-up, inside the runtime, before serving. Returns
    /// how many.
    pub async fn adopt(&self) -> Result<usize, TaskError> {
        self.take_over().adopt().await
    }

    /// Asks the executor to keep containers ready for the catalog entries
    /// with `warm > 0`. Call once, inside the runtime.
    pub fn warm_up(&self) {
        self.take_over().warm_up()
    }

    /// [`Server::adopt`] and [`Server::warm_up`] for a server that serves
    /// before it can take over (its engine does not answer yet): call them
    /// on the returned handle, from a task of their own, once the engine
    /// answers. Until its `adopt` succeeds, a task id the server does not
    /// know is answered with an engine error, not as unknown: it may be
    /// one of the tasks still to take over. Call after the last `with_…`.
    pub fn take_over_later(&self) -> TakeOver<E> {
        self.shared.tasks.set_taking_over(true);
        self.take_over()
    }

    /// [`Server::adopt`] and [`Server::warm_up`] on a handle that
    /// outlives [`Server::run`]'s start. Call after the last `with_…`.
    pub fn take_over(&self) -> TakeOver<E> {
        TakeOver {
            shared: self.shared.clone(),
        }
    }

    fn unshared(&mut self) -> &mut Shared<E> {
        Arc::get_mut(&mut self.shared).expect("a server that is not running yet is not shared")
    }

    /// Makes the server speak TLS only, with the certificate and key of
    /// `tls` (and, when it names a client CA, only to clients with a
    /// certificate it signed). Fails if the files cannot be read or used.
    pub fn with_tls(mut self, tls: &TlsConfig) -> Result<Server<E>, TlsError> {
        self.unshared().tls = Some(tls.acceptor()?);
        Ok(self)
    }

    /// Serves `listener` until `shutdown` completes, then shuts down
    /// gracefully: no new connections or tasks, running tasks get the grace
    /// period to finish, then they are cancelled. Returns when every
    /// connection has closed.
    pub async fn run(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let connections = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let sweeper = CancellationToken::new();
        self.shared.tasks.spawn_sweeper(sweeper.clone());
        if let Some((http, config)) = self.http.take() {
            let shared = self.shared.clone();
            connections.spawn(http::serve(http, config, shared, connections.clone()));
        }
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
        // Attached tasks whose connections broke were waiting for their
        // clients; they end with the server. Detached ones run on, for the
        // next server to adopt.
        self.shared.abort.cancel();
        self.shared.tasks.end_attached().await;
        self.shared.tasks.close_journal();
        sweeper.cancel();
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
        let http_addr = match &self.http {
            Some((http, _)) => Some(http.local_addr()?),
            None => None,
        };
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(self.run(listener, async move { stopped.cancelled().await }));
        Ok(RunningServer {
            addr,
            http_addr,
            stop,
            task,
        })
    }

    async fn accept_loop(
        &self,
        listener: &TcpListener,
        connections: &TaskTracker,
        limit: &Arc<Semaphore>,
    ) {
        let mut serial: u64 = 0;
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
            serial += 1;
            match limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = self.shared.clone();
                    // Every log line of the connection carries its peer and
                    // a serial that tells apart connections from one peer.
                    let span = tracing::info_span!("connection", %peer, connection = serial);
                    let serve = async move {
                        let _open = shared.metrics.connection(Listener::Tcp);
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        connection::serve_socket(socket, peer, shared.clone()).await;
                        shared.connections.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    };
                    connections.spawn(serve.instrument(span));
                }
                Err(_) => {
                    self.shared
                        .metrics
                        .connection_refused(Listener::Tcp, "max_connections");
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
    http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP listener's address, when the server has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

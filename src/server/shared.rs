//! What every connection of a server shares: its settings, its rules, its
//! executor, the tokens it accepts, and its counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config::ServerConfig;
use crate::access::Credential;
use crate::admission::{Admission, Admitted, Quota};
use crate::auth::{self, FailedLogins};
use crate::executor::{Executor, NodeStats, PoolStats};
use crate::metrics::{Listener, Metrics};
use crate::protocol::{
    EngineStatus, ErrorKind, Hello, NodeStatus, PoolStatus, ServerStatus, TaskError,
    PROTOCOL_VERSION,
};
use crate::tasks::{Tasks, Ticket};

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

pub(crate) fn all_tokens(config: &ServerConfig) -> Vec<String> {
    let named = config.clients.iter().map(|c| c.token.clone());
    config.tokens.iter().cloned().chain(named).collect()
}

/// What every connection of a server shares.
pub(crate) struct Shared<E> {
    pub config: ServerConfig,
    /// Every accepted token: the plain ones, then the named clients'.
    pub tokens: Vec<String>,
    pub executor: Arc<E>,
    /// What may run: the catalog and the policy.
    pub admission: Admission,
    /// Bounds tasks across all connections (`max_tasks`).
    pub task_quota: Quota,
    /// Every task, by its id: they outlive their connections.
    pub tasks: Arc<Tasks<E>>,
    /// Set when the server speaks TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub failed_logins: FailedLogins,
    /// Fired when shutdown starts: connections stop taking new tasks.
    pub shutdown: CancellationToken,
    /// Fired when the shutdown grace runs out: every task is cancelled.
    pub abort: CancellationToken,
    pub started: Instant,
    /// The Prometheus metrics (`--http` serves them).
    pub metrics: Arc<Metrics>,
    pub connections: AtomicU64,
}

impl<E: Executor> Shared<E> {
    /// Admits again a task that a server which is gone had accepted and
    /// not started, under this server's rules: they may have changed, and
    /// they are what the task runs under now.
    pub fn readmit(&self, ticket: &Ticket) -> Result<Admitted, TaskError> {
        if ticket.spec.stdin {
            return Err(TaskError::new(
                ErrorKind::ShuttingDown,
                format!(
                    "the server restarted before task {} started, and the stdin its client sent went with it; submit the task again",
                    ticket.id
                ),
            ));
        }
        let client = match &ticket.client {
            Some(name) => match self.config.clients.iter().find(|c| c.name() == name) {
                Some(client) => Some(client),
                None => {
                    return Err(TaskError::new(
                        ErrorKind::Unauthorized,
                        format!(
                            "task {} was submitted by the client `{name}`, which this server no longer has ([clients.{name}]); it was not run",
                            ticket.id
                        ),
                    ))
                }
            },
            None => None,
        };
        let mut quotas = vec![&self.task_quota];
        quotas.extend(client.and_then(|c| c.quota()));
        let rules = client.map(|c| c.rules.as_ref());
        self.admission.admit(ticket.spec.clone(), rules, &quotas)
    }

    /// Checks the hello's token (see [`Shared::check_token`]).
    pub fn check_credentials(&self, hello: &Hello, peer: SocketAddr) -> Result<Login, TaskError> {
        let client = self.check_token(hello.token.as_deref(), peer, Listener::Tcp)?;
        Ok(Login {
            hello: hello.clone(),
            client,
        })
    }

    /// Checks a token against the configured ones, in constant time, so
    /// that timing does not reveal how much of a guess was right; `Ok`
    /// names the client whose token it is (`None`: a plain token, or no
    /// token is required). An address that failed too often recently is
    /// refused without its token being looked at. Nothing here logs or
    /// returns the token.
    pub fn check_token(
        &self,
        token: Option<&str>,
        peer: SocketAddr,
        listener: Listener,
    ) -> Result<Option<Arc<Credential>>, TaskError> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let now = Instant::now();
        if let Some(left) = self.failed_logins.blocked_for(peer.ip(), now) {
            debug!(%peer, "refused: the address is blocked after failed authentications");
            self.metrics.auth_failed(listener);
            return Err(TaskError::new(
                ErrorKind::Unauthorized,
                format!(
                    "too many failed authentications from {}: this address is temporarily blocked for {} more seconds; check the token (--token or TCP_TASK_TOKEN), then retry",
                    peer.ip(),
                    left.as_secs().max(1)
                ),
            ));
        }
        let offered = token.unwrap_or("");
        if let Some(index) = auth::matching_token(&self.tokens, offered) {
            // Plain tokens come first in `tokens`, the named clients' after.
            let client = index
                .checked_sub(self.config.tokens.len())
                .and_then(|i| self.config.clients.get(i).cloned());
            return Ok(client);
        }
        self.metrics.auth_failed(listener);
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

    /// Counts the end of a task that ran outside the task table (an
    /// `/api/execute` call) for the status: it ran (any ending), or it
    /// could not run.
    pub fn record_ran(&self, ran: bool) {
        match ran {
            true => self.tasks.finished.fetch_add(1, Ordering::Relaxed),
            false => self.tasks.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub async fn status(&self) -> ServerStatus {
        let stats = self.executor.stats().await;
        let (retained, retained_bytes) = self.tasks.retained();
        // The status's shape is fixed within a protocol version; the
        // server's name is free text, so the warm data plane goes there.
        let server = match stats.warm_data_plane.as_str() {
            "" => server_name(),
            plane => format!("{}; warm data plane: {plane}", server_name()),
        };
        ServerStatus {
            server,
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            connections: self.connections.load(Ordering::Relaxed),
            running: stats.running,
            queued: stats.queued,
            finished: self.tasks.finished.load(Ordering::Relaxed),
            failed: self.tasks.failed.load(Ordering::Relaxed),
            engine: EngineStatus {
                reachable: stats.engine.reachable,
                version: stats.engine.version,
                api_version: stats.engine.api_version,
                error: stats.engine.error,
            },
            catalog_size: self.admission.catalog().len() as u64,
            pools: stats.pools.into_iter().map(pool_status).collect(),
            retained,
            retained_bytes,
            nodes: stats.nodes.into_iter().map(node_status).collect(),
        }
    }
}

fn node_status(node: NodeStats) -> NodeStatus {
    NodeStatus {
        name: node.name,
        state: node.state,
        availability: node.availability,
        manager: node.manager,
        nano_cpus: node.nano_cpus,
        memory_bytes: node.memory_bytes,
        tasks: node.tasks,
    }
}

fn pool_status(pool: PoolStats) -> PoolStatus {
    PoolStatus {
        key: pool.key,
        warm: pool.warm,
        in_use: pool.in_use,
        hits: pool.hits,
        misses: pool.misses,
    }
}

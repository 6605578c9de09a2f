//! The HTTP listener beside the binary protocol's (`serve --http ADDR`):
//!
//! | endpoint            | what                                       | auth  |
//! |---------------------|--------------------------------------------|-------|
//! | `GET /metrics`      | Prometheus metrics ([`metrics`])           | none  |
//! | `GET /healthz`      | the process is alive ([`health`])          | none  |
//! | `GET /readyz`       | the engine answers and tasks are accepted  | none  |
//! | `GET /api/status`   | the original task service's status ([`api`]) | token |
//!
//! The tokens, TLS and policy of the binary protocol apply here too: a
//! token comes as `Authorization: Bearer TOKEN`. Every read is bounded by
//! a setting of [`HttpConfig`]: connections, header time and size.

mod api;
mod config;
mod health;
mod metrics;
mod reply;

pub use config::{
    HttpConfig, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, Instrument};

use super::shared::Shared;
use crate::executor::Executor;
use crate::metrics::Listener;
use reply::Reply;

/// What every HTTP request's handler may use.
pub(crate) struct Context<E> {
    pub shared: Arc<Shared<E>>,
    pub config: HttpConfig,
}

/// Serves HTTP on `listener` until the server starts shutting down. Each
/// connection runs in `connections`, which the server waits for.
pub(crate) async fn serve<E: Executor>(
    listener: TcpListener,
    config: HttpConfig,
    shared: Arc<Shared<E>>,
    connections: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let context = Arc::new(Context {
        shared: shared.clone(),
        config,
    });
    let shutdown = shared.shutdown.clone();
    let mut serial: u64 = 0;
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: let some close.
                    error!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        serial += 1;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Closing at once is the answer: an HTTP client retries, and
            // reading a request to refuse it would cost what the limit saves.
            shared
                .metrics
                .connection_refused(Listener::Http, "max_connections");
            continue;
        };
        let context = context.clone();
        let span = tracing::info_span!("http", %peer, connection = serial);
        let connection = async move {
            let _open = context.shared.metrics.connection(Listener::Http);
            serve_socket(socket, peer, &context).await;
            drop(permit);
        };
        connections.spawn(connection.instrument(span));
    }
}

/// TLS first when the server speaks it (bounded by the header timeout),
/// then HTTP/1.1.
async fn serve_socket<E: Executor>(socket: TcpStream, peer: SocketAddr, context: &Arc<Context<E>>) {
    let _ = socket.set_nodelay(true);
    let Some(acceptor) = context.shared.tls.clone() else {
        return serve_connection(socket, peer, context).await;
    };
    let timeout = context.config.header_read_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => serve_connection(stream, peer, context).await,
        Ok(Err(e)) => {
            context
                .shared
                .metrics
                .connection_refused(Listener::Http, "tls");
            debug!(error = %e, "HTTP: TLS handshake failed");
        }
        Err(_) => {
            context
                .shared
                .metrics
                .connection_refused(Listener::Http, "handshake_timeout");
            debug!("HTTP: no TLS handshake within the header timeout; closed");
        }
    }
}

/// One connection: requests one after the other (HTTP/1.1 keep-alive),
/// until the client closes, a timeout closes it, or the server shuts down
/// (then the request in progress is answered first).
async fn serve_connection<S, E>(stream: S, peer: SocketAddr, context: &Arc<Context<E>>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: Executor,
{
    let handler = context.clone();
    let service = service_fn(move |request| {
        let context = handler.clone();
        async move { Ok::<_, Infallible>(route(request, peer, &context).await.into_response()) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(context.config.header_read_timeout)
        .max_buf_size(context.config.max_header_bytes.max(8192))
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let shutdown = context.shared.shutdown.clone();
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        // A header timeout, a malformed request, a client gone mid-answer.
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Picks the handler by method and path. The metrics count the endpoint
/// matched (or `other`), never the path asked for.
async fn route<E: Executor>(
    request: Request<Incoming>,
    peer: SocketAddr,
    context: &Arc<Context<E>>,
) -> Reply {
    let (endpoint, reply) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => ("/metrics", metrics::metrics(context).await),
        (&Method::GET, "/healthz") => ("/healthz", health::healthz()),
        (&Method::GET, "/readyz") => ("/readyz", health::readyz(context).await),
        (&Method::GET, "/api/status") => ("/api/status", api::status(request, peer, context).await),
        (_, path @ ("/metrics" | "/healthz" | "/readyz" | "/api/status")) => {
            ("other", Reply::method_not_allowed(path))
        }
        (_, path) => ("other", Reply::not_found(path)),
    };
    context
        .shared
        .metrics
        .http_request(endpoint, reply.status().as_u16());
    reply
}

//! `/healthz` and `/readyz`, for load balancers and orchestrators. Both
//! unauthenticated: they say nothing a client could misuse.

use hyper::StatusCode;
use serde_json::json;
use std::sync::Arc;

use super::reply::Reply;
use super::Context;
use crate::executor::Executor;

/// The process is alive and its HTTP listener answers: always 200.
pub(crate) fn healthz() -> Reply {
    Reply::json(StatusCode::OK, &json!({"status": "alive"}))
}

/// 200 when the server takes tasks: it is not shutting down and the
/// container engine answers. Otherwise 503 with the reason, so that a
/// load balancer sends clients elsewhere and an operator sees why.
pub(crate) async fn readyz<E: Executor>(context: &Arc<Context<E>>) -> Reply {
    let shared = &context.shared;
    if shared.shutdown.is_cancelled() {
        return not_ready("the server is shutting down and takes no new tasks");
    }
    let stats = shared.executor.stats().await;
    if !stats.engine.reachable {
        let why = stats.engine.error.unwrap_or_default();
        return not_ready(&format!(
            "the container engine does not answer ({why}); check that dockerd runs and that the \
             server may use its socket"
        ));
    }
    Reply::json(
        StatusCode::OK,
        &json!({"status": "ready", "running": stats.running, "queued": stats.queued}),
    )
}

fn not_ready(reason: &str) -> Reply {
    Reply::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "not ready", "reason": reason}),
    )
}

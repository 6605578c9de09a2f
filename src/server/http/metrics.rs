//! `GET /metrics`: the server's metrics in the Prometheus text format
//! (OpenMetrics), with the executor's gauges read at the scrape.

use hyper::StatusCode;
use std::sync::Arc;

use super::reply::Reply;
use super::Context;
use crate::executor::Executor;

/// What Prometheus asks for first; it reads the `# EOF` ending.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn metrics<E: Executor>(context: &Arc<Context<E>>) -> Reply {
    let stats = context.shared.executor.stats().await;
    let text = context.shared.metrics.encode(stats);
    Reply::text(StatusCode::OK, OPENMETRICS, text)
}

//! The original task service's JSON API, answered as it answered it, so
//! that its clients work unchanged:
//!
//! - `GET /api/status` → 200 `{"time", "service", "status": "OK", "message"}`
//!   (tcp-task adds its counts and the engine's version).
//!
//! It requires the server's token (`Authorization: Bearer TOKEN`) when it
//! has tokens, as the binary protocol does.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::reply::Reply;
use super::Context;
use crate::access::Credential;
use crate::executor::Executor;
use crate::metrics::Listener;
use crate::server::server_name;

/// What the original service called itself in `service`.
const SERVICE: &str = "tcp-task";

/// `GET /api/status`.
pub(crate) async fn status<E: Executor>(
    request: Request<Incoming>,
    peer: SocketAddr,
    context: &Arc<Context<E>>,
) -> Reply {
    if let Err(refused) = authorize(&request, peer, context) {
        return refused;
    }
    let status = context.shared.status().await;
    let engine = &status.engine;
    let (code, word, message) = if engine.reachable {
        let message = format!(
            "{}: {} running, {} queued; engine {} (API {})",
            status.server,
            status.running,
            status.queued,
            engine.version.as_deref().unwrap_or("?"),
            engine.api_version.as_deref().unwrap_or("?"),
        );
        (StatusCode::OK, "OK", message)
    } else {
        let message = format!(
            "{}: the container engine does not answer ({}); tasks cannot run",
            status.server,
            engine.error.as_deref().unwrap_or("no reason given"),
        );
        (StatusCode::SERVICE_UNAVAILABLE, "ERROR", message)
    };
    let body = json!({
        "time": rfc3339(SystemTime::now()),
        "service": SERVICE,
        "status": word,
        "message": message,
        "version": server_name(),
        "uptime_seconds": status.uptime_ms / 1000,
        "running": status.running,
        "queued": status.queued,
        "finished": status.finished,
        "failed": status.failed,
        "engine": {
            "reachable": engine.reachable,
            "version": engine.version,
            "api_version": engine.api_version,
        },
    });
    Reply::json(code, &body)
}

/// The named client whose token the request carries (`None`: a plain
/// token, or the server needs none), or the 401 that refuses it. The
/// token is compared and dropped: never logged, never echoed.
pub(crate) fn authorize<E: Executor>(
    request: &Request<Incoming>,
    peer: SocketAddr,
    context: &Context<E>,
) -> Result<Option<Arc<Credential>>, Reply> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    context
        .shared
        .check_token(token, peer, Listener::Http)
        .map_err(|mut error| {
            error.message = error.message.replace(
                "(pass --token or set TCP_TASK_TOKEN)",
                "(send `Authorization: Bearer TOKEN`)",
            );
            Reply::error(&error)
        })
}

/// `Bearer TOKEN` → `TOKEN` (the scheme is case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `2026-12-02T10:04:05Z`: the time in UTC, to the second.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01. Counts in 400-year eras
/// (146,097 days each) of years that start on March 1st, so that the leap
/// day is the last day of a year and needs no special case.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_gregorian() {
        let at = |secs| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}

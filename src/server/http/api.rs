//! The original task service's JSON API, answered as it answered it, so
//! that its clients work unchanged:
//!
//! - `GET /api/status` → 200 `{"time", "service", "status": "OK", "message"}`
//!   (tcp-task adds its counts and the engine's version);
//! - `POST /api/execute` with `{"image", "tag", "port", "task", "params"}`
//!   → 200 `{"message", "result"}`, `result` being the `result` of the
//!   task's JSON answer; or `{"message"}` (tcp-task adds `kind`) with 400
//!   when the task could not be run or failed, 401/403 when the token or
//!   the policy refuses it, 5xx when the server itself failed.
//!
//! Both require the server's token (`Authorization: Bearer TOKEN`) when it
//! has tokens, as the binary protocol does; the server's policy and the
//! named client's rules apply to the task as to any other.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::body::read_json;
use super::collect::Collect;
use super::reply::Reply;
use super::Context;
use crate::access::Credential;
use crate::admission::Admitted;
use crate::executor::{Executor, TaskIo};
use crate::metrics::Listener;
use crate::protocol::TaskSpec;
use crate::server::server_name;
use crate::task::{Ending, ErrorKind, Outcome, TaskError};
use crate::tasks::log_end;

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

/// `POST /api/execute`: runs the HTTP task the body names and answers
/// with its result.
pub(crate) async fn execute<E: Executor>(
    request: Request<Incoming>,
    peer: SocketAddr,
    context: &Arc<Context<E>>,
) -> Reply {
    let client = match authorize(&request, peer, context) {
        Ok(client) => client,
        Err(refused) => return refused,
    };
    let body = match read_json(request, &context.config).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let (spec, task) = match spec_of(&body) {
        Ok(found) => found,
        Err(error) => return refuse(context, &error),
    };
    let admitted = match admit(context, spec, client.as_deref()) {
        Ok(admitted) => admitted,
        Err(error) => return refuse(context, &error),
    };
    let collect = Collect::new(context.config.max_answer_bytes);
    let result = run(context, admitted, collect.clone()).await;
    context.shared.record_ran(result.is_ok());
    answer(&task, result, collect)
}

/// The request in the original contract, as a task. `image` and `tag`
/// make the image's name (`tag` may be left out when `image` has one, or
/// is then `latest`); `params` may be any JSON. tcp-task also reads an
/// optional `timeout_ms`.
fn spec_of(body: &Value) -> Result<(TaskSpec, String), TaskError> {
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let text = |name: &str| -> Result<String, TaskError> {
        match field(name) {
            Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
            Some(_) => Err(bad(format!("`{name}` must be a non-empty string"))),
            None => Err(bad(format!("the request has no `{name}`; {SHAPE}"))),
        }
    };
    if !body.is_object() {
        return Err(bad(format!("the body must be a JSON object; {SHAPE}")));
    }
    let mut image = text("image")?;
    match field("tag") {
        Some(Value::String(tag)) if !tag.is_empty() => image = format!("{image}:{tag}"),
        Some(_) => return Err(bad("`tag` must be a non-empty string".into())),
        None if !has_tag(&image) => image.push_str(":latest"),
        None => {}
    }
    let port = match field("port") {
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|p| *p > 0)
    .ok_or_else(|| bad(format!("`port` must be a port number, 1 to 65535; {SHAPE}")))?;
    let task = text("task")?;
    let params = field("params").map(Value::to_string);
    let mut spec = TaskSpec::http(image, port, task.clone(), params);
    spec.timeout_ms = match field("timeout_ms") {
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("`timeout_ms` must be a whole number".into()))?,
        ),
        None => None,
    };
    Ok((spec, task))
}

const SHAPE: &str =
    r#"send {"image": "NAME", "tag": "TAG", "port": 8080, "task": "NAME", "params": …}"#;

/// Whether an image reference names a tag (a `:` after its last `/`) or a
/// digest.
fn has_tag(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name.contains(':') || image.contains('@')
}

fn bad(message: String) -> TaskError {
    TaskError::new(ErrorKind::BadRequest, message)
}

/// Counts a request refused before anything ran, and answers it.
fn refuse<E>(context: &Context<E>, error: &TaskError) -> Reply {
    context.shared.metrics.request_refused(error.kind);
    Reply::error(error)
}

/// Admission, as for the binary protocol: the server's quota and the named
/// client's, then the policy narrowed by the client's rules.
fn admit<E>(
    context: &Context<E>,
    spec: TaskSpec,
    client: Option<&Credential>,
) -> Result<Admitted, TaskError> {
    let shared = &context.shared;
    if shared.shutdown.is_cancelled() {
        return Err(TaskError::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down and takes no new tasks; retry against another server",
        ));
    }
    let mut quotas = vec![&shared.task_quota];
    quotas.extend(client.and_then(Credential::quota));
    let rules = client.map(|c| c.rules.as_ref());
    shared.admission.admit(spec, rules, &quotas)
}

/// Runs the task in a task of its own, tracked, so that a caller who hangs
/// up cancels it (its drop guard fires) but never cuts its clean-up short,
/// and the server's shutdown waits for it.
async fn run<E: Executor>(
    context: &Arc<Context<E>>,
    admitted: Admitted,
    collect: Collect,
) -> Result<Outcome, TaskError> {
    let Admitted { plan, permits } = admitted;
    let cancel = context.shared.abort.child_token();
    let _hung_up = cancel.clone().drop_guard();
    let (_, stdin) = mpsc::channel(1);
    let io = TaskIo {
        events: Arc::new(collect),
        stdin,
        cancel,
    };
    let span = tracing::info_span!(
        "task",
        api = "execute",
        image = %plan.image,
        path = tracing::field::Empty
    );
    let shared = context.shared.clone();
    let task = async move {
        let result = shared.executor.run(plan, io).await;
        log_end(&result);
        drop(permits);
        result
    };
    match context.tasks.spawn(task.instrument(span)).await {
        Ok(result) => result,
        Err(e) => Err(TaskError::new(
            ErrorKind::Internal,
            format!("the task's runner failed: {e}"),
        )),
    }
}

/// The original contract's answer: 200 `{"message", "result"}` for a task
/// that answered 2xx with JSON; an error otherwise.
fn answer(task: &str, result: Result<Outcome, TaskError>, collect: Collect) -> Reply {
    let (body, overflowed) = collect.take();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => return Reply::error(&error),
    };
    if overflowed {
        let message =
            "the task's answer is larger than this server's max_answer_bytes; it was stopped";
        return failure(StatusCode::BAD_GATEWAY, "answer_too_large", message);
    }
    if !outcome.success() {
        return ended(task, &outcome);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(answer) => {
            let result = answer.get("result").cloned().unwrap_or(Value::Null);
            let message = format!("task {task} done in {} ms", outcome.duration_ms);
            let body =
                json!({"message": message, "result": result, "duration_ms": outcome.duration_ms});
            Reply::json(StatusCode::OK, &body)
        }
        Err(e) => {
            let start = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
            let message = format!("task {task} answered something that is not JSON ({e}): {start}");
            failure(
                StatusCode::BAD_REQUEST,
                ErrorKind::TaskFailed.as_str(),
                &message,
            )
        }
    }
}

/// A task that ran but gave no answer: timed out, cancelled, out of memory.
fn ended(task: &str, outcome: &Outcome) -> Reply {
    let seconds = outcome.duration().as_secs_f64();
    let (status, message) = match outcome.ending {
        Ending::TimedOut => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "task {task} did not answer within its timeout ({seconds:.1} s); it was stopped"
            ),
        ),
        Ending::Cancelled => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("task {task} was cancelled (the server is shutting down); retry"),
        ),
        Ending::OomKilled => (
            StatusCode::BAD_REQUEST,
            format!("task {task} ran out of memory and was killed"),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            format!(
                "task {task} ended without an answer ({})",
                outcome.ending.as_str()
            ),
        ),
    };
    failure(status, outcome.ending.as_str(), &message)
}

fn failure(status: StatusCode, kind: &str, message: &str) -> Reply {
    Reply::json(status, &json!({"message": message, "kind": kind}))
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
    use crate::protocol::Task;
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
    fn requests_in_the_original_shape_become_http_tasks() {
        let body =
            json!({"image": "img", "tag": "1.0", "port": 8080, "task": "sum", "params": [1, 2]});
        let (spec, task) = spec_of(&body).expect("a good request");
        assert_eq!(task, "sum");
        assert_eq!(
            spec.task,
            Task::Http {
                image: "img:1.0".into(),
                port: 8080,
                task: "sum".into(),
                params: Some("[1,2]".into()),
                command: Vec::new(),
            }
        );
        let untagged =
            spec_of(&json!({"image": "reg:5000/img", "port": "80", "task": "t"})).unwrap();
        assert!(
            matches!(untagged.0.task, Task::Http { ref image, params: None, .. } if image == "reg:5000/img:latest")
        );
        for bad in [
            json!([1]),
            json!({"port": 80, "task": "t"}),
            json!({"image": "i", "port": 0, "task": "t"}),
            json!({"image": "i", "port": 70000, "task": "t"}),
            json!({"image": "i", "port": 80}),
            json!({"image": "i", "port": 80, "task": 3}),
            json!({"image": "i", "port": 80, "task": "t", "timeout_ms": "x"}),
        ] {
            assert_eq!(
                spec_of(&bad).unwrap_err().kind,
                ErrorKind::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}

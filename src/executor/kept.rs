//! Kept tasks: containers that outlive their connection and their server.
//!
//! A task with a [`TaskTag`] runs in a container named `tcp-task-<id>` and
//! labelled with its id, its client, whether it was detached, and its
//! timeout. The engine keeps its output (the container's bounded log) and
//! its exit state; this module reads them back: the output replayed from
//! byte offsets, the container found by its id, signalled, and removed.
//!
//! When the server itself ends a kept task (cancel, timeout, output limit)
//! the container's exit code alone would read as a plain SIGKILL after a
//! restart, so the verdict is written into the container's name.

use bollard::container::LogOutput;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, LogsOptions, RenameContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;

use super::cleanup::{LABEL_ID, LABEL_MANAGED};
use super::engine::{engine_error, status_code};
use super::plan::TaskTag;
use super::usage::strip_report;
use super::Replay;
use crate::task::{Ending, ErrorKind, Offsets, OutputStream, TaskError, TaskId};

pub const LABEL_CLIENT: &str = "tcp-task.client";
pub const LABEL_DETACH: &str = "tcp-task.detach";
pub const LABEL_TIMEOUT_MS: &str = "tcp-task.timeout-ms";

pub(crate) const SIGKILL: i32 = 9;

/// The name of a kept task's container, for `docker logs` and the like.
pub fn container_name(id: &TaskId) -> String {
    format!("tcp-task-{id}")
}

/// The labels that let a restarted server know a kept task again.
pub(crate) fn tag_labels(tag: &TaskTag, timeout_ms: u128) -> Vec<(String, String)> {
    let mut labels = vec![
        (LABEL_ID.to_owned(), tag.id.to_string()),
        (LABEL_DETACH.to_owned(), tag.detach.to_string()),
        (LABEL_TIMEOUT_MS.to_owned(), timeout_ms.to_string()),
    ];
    if let Some(client) = &tag.client {
        labels.push((LABEL_CLIENT.to_owned(), client.clone()));
    }
    labels
}

/// Reads a tag back from a container's labels.
pub(crate) fn tag_of(labels: &HashMap<String, String>) -> Option<TaskTag> {
    let id = TaskId::parse(labels.get(LABEL_ID)?).ok()?;
    Some(TaskTag {
        id,
        client: labels.get(LABEL_CLIENT).cloned(),
        detach: labels.get(LABEL_DETACH).is_some_and(|d| d == "true"),
    })
}

/// A kept task's tag on a warm container, which carries no labels of its
/// own: handed to the agent with the task, and written by it, in the `A`
/// frame, to the container's log. JSON, so any client name fits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WarmTag {
    pub id: TaskId,
    pub client: Option<String>,
    pub detach: bool,
    pub timeout_ms: u64,
    /// The task's command, for listings.
    pub command: Vec<String>,
    /// When the task started, in milliseconds since the Unix epoch: its
    /// deadline counts from there, not from the container's start.
    pub started_ms: u64,
}

impl WarmTag {
    pub fn new(tag: &TaskTag, timeout: std::time::Duration, command: &[String]) -> WarmTag {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WarmTag {
            id: tag.id.clone(),
            client: tag.client.clone(),
            detach: tag.detach,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            command: command.to_vec(),
            started_ms,
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `None` for an empty tag (a task that is not kept) or a foreign one.
    pub fn decode(bytes: &[u8]) -> Option<WarmTag> {
        let tag: WarmTag = serde_json::from_slice(bytes).ok()?;
        TaskId::parse(tag.id.as_str()).ok()?;
        Some(tag)
    }

    pub fn task_tag(&self) -> TaskTag {
        TaskTag {
            id: self.id.clone(),
            client: self.client.clone(),
            detach: self.detach,
        }
    }
}

/// How the server ended a kept task, as written after its container's
/// name. `None` for endings the container's own state tells.
pub(crate) fn verdict_suffix(ending: Ending) -> Option<&'static str> {
    match ending {
        Ending::Cancelled => Some("cancelled"),
        Ending::TimedOut => Some("timed-out"),
        Ending::OutputLimit => Some("output-limit"),
        Ending::Exited | Ending::Signaled | Ending::OomKilled => None,
    }
}

/// The verdict a container's name carries, if any.
pub(crate) fn verdict_of(name: &str) -> Option<Ending> {
    let (_, suffix) = name.rsplit_once("--")?;
    [Ending::Cancelled, Ending::TimedOut, Ending::OutputLimit]
        .into_iter()
        .find(|ending| verdict_suffix(*ending) == Some(suffix))
}

/// Kills a kept task the server ended (it may still run) and writes the
/// server's verdict into its container's name. A failure is logged, not
/// returned: the task's result is already known, and only a later restart
/// would read the verdict.
pub(crate) async fn stop_with_verdict(
    docker: &Docker,
    container: &str,
    id: &TaskId,
    ending: Ending,
) {
    let Some(suffix) = verdict_suffix(ending) else {
        return;
    };
    if let Err(e) = signal(docker, container, SIGKILL).await {
        if e.kind != ErrorKind::BadRequest {
            tracing::warn!(task = %id, error = %e, "could not stop a kept task's container");
        }
    }
    let options = RenameContainerOptions {
        name: format!("{}--{suffix}", container_name(id)),
    };
    if let Err(e) = docker.rename_container(container, options).await {
        tracing::warn!(task = %id, error = %e, "could not record how the task ended on its container");
    }
}

/// A kept task's container, as the engine lists it.
#[derive(Debug, Clone)]
pub(crate) struct KeptContainer {
    pub id: String,
    pub running: bool,
}

/// The container of kept task `id`, if the engine has it.
pub(crate) async fn find(docker: &Docker, id: &TaskId) -> Result<Option<KeptContainer>, TaskError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_ID}={id}")],
    )]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| engine_error("looking up the task's container", &e))?;
    Ok(found.into_iter().find_map(kept_container))
}

fn kept_container(summary: ContainerSummary) -> Option<KeptContainer> {
    let running = summary
        .state
        .as_ref()
        .is_some_and(|s| s.to_string() == "running");
    Some(KeptContainer {
        id: summary.id?,
        running,
    })
}

/// Sends `signal` to the task's process (through the container's init,
/// which passes it on).
pub(crate) async fn signal(docker: &Docker, container: &str, signal: i32) -> Result<(), TaskError> {
    let options = KillContainerOptions {
        signal: signal.to_string(),
    };
    match docker.kill_container(container, Some(options)).await {
        Ok(()) => Ok(()),
        // 409: it stopped in the meantime.
        Err(e) if status_code(&e) == Some(409) => Err(ended_already()),
        Err(e) => Err(engine_error("signalling the task's container", &e)),
    }
}

pub(crate) fn ended_already() -> TaskError {
    TaskError::new(
        ErrorKind::BadRequest,
        "the task has already ended; `tcp-task wait ID` gives its result",
    )
}

/// The task's output from the container's log: whatever comes after
/// `from` in each stream, live while the container runs (with `follow`),
/// and never past
/// `limit` bytes of both streams together (where the server stopped
/// relaying and killed the task).
pub(crate) fn replay(
    docker: &Docker,
    container: &str,
    from: Offsets,
    limit: u64,
    follow: bool,
) -> Replay {
    if !follow {
        return read_log(docker, container, from, limit, false);
    }
    let (docker, container) = (docker.clone(), container.to_owned());
    let first = read_log(&docker, &container, from, limit, true);
    then_drain(first, from, move |rest| {
        read_log(&docker, &container, rest, limit, false)
    })
}

/// A followed log can end (its container stopped) before the engine has
/// written the last record of it, a line without its newline: seen here.
/// So a follow is followed by a plain reading from where it stopped,
/// which gives that record if it was missed, and nothing otherwise.
pub(crate) fn then_drain(
    first: Replay,
    from: Offsets,
    again: impl FnOnce(Offsets) -> Replay + Send + 'static,
) -> Replay {
    let delivered = std::sync::Arc::new(std::sync::Mutex::new(from));
    let counter = delivered.clone();
    let first = first.inspect(move |item| {
        if let Ok((stream, chunk)) = item {
            counter.lock().unwrap().advance(*stream, chunk.len() as u64);
        }
    });
    let rest = futures::stream::once(async move {
        let from = *delivered.lock().unwrap();
        again(from)
    })
    .flatten();
    first.chain(rest).boxed()
}

fn read_log(docker: &Docker, container: &str, from: Offsets, limit: u64, follow: bool) -> Replay {
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        tail: "all".to_owned(),
        ..LogsOptions::default()
    };
    let mut seen = Offsets::default();
    let output = docker
        .logs(container, Some(options))
        .filter_map(|frame| async move {
            match frame {
                Ok(LogOutput::StdOut { message }) => Some(Ok((OutputStream::Stdout, message))),
                Ok(LogOutput::StdErr { message }) => Some(Ok((OutputStream::Stderr, message))),
                Ok(LogOutput::Console { message }) => Some(Ok((OutputStream::Stdout, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(log_error(&e))),
            }
        });
    strip_report(output)
        .filter_map(move |item| {
            let item = item.map(|(stream, chunk)| cut(&mut seen, from, limit, stream, chunk));
            async move {
                match item {
                    Ok(Some(chunk)) => Some(Ok(chunk)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        })
        .boxed()
}

/// A log that cannot be read. A 404 says the container is not there: gone,
/// or (the engine lists a container a moment before its log can be read)
/// not quite there yet; a reader that follows a running task reads again.
fn log_error(e: &bollard::errors::Error) -> TaskError {
    if status_code(e) == Some(404) {
        return TaskError::new(
            ErrorKind::NoSuchTask,
            format!("the task's container is not in the engine (yet, or any more): {e}"),
        );
    }
    engine_error("reading the task's output log", e)
}

/// The part of `chunk` that lies past `from` and within `limit`, counting
/// it in `seen`.
pub(crate) fn cut(
    seen: &mut Offsets,
    from: Offsets,
    limit: u64,
    stream: OutputStream,
    mut chunk: Bytes,
) -> Option<(OutputStream, Bytes)> {
    let room = limit.saturating_sub(seen.stdout + seen.stderr);
    if (chunk.len() as u64) > room {
        // room < chunk.len(), a usize.
        chunk.truncate(room as usize);
    }
    let before = seen.of(stream);
    seen.advance(stream, chunk.len() as u64);
    let skip = from
        .of(stream)
        .saturating_sub(before)
        .min(chunk.len() as u64);
    let rest = chunk.split_off(skip as usize);
    (!rest.is_empty()).then_some((stream, rest))
}

/// The times the engine recorded for a container, as it reports them.
pub(crate) struct Times {
    pub started: Option<std::time::SystemTime>,
    pub finished: Option<std::time::SystemTime>,
}

pub(crate) fn times_of(inspected: &ContainerInspectResponse) -> Times {
    let state = inspected.state.as_ref();
    let parse = |t: Option<&String>| t.and_then(|t| parse_rfc3339(t));
    Times {
        started: parse(state.and_then(|s| s.started_at.as_ref())),
        finished: parse(state.and_then(|s| s.finished_at.as_ref())),
    }
}

/// Parses the engine's timestamps, e.g. `2026-12-02T06:10:11.123456789Z`.
/// The engine always writes UTC; its zero time (`0001-01-01T00:00:00Z`, a
/// container that never started or ended) gives `None`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let since_epoch = std::time::Duration::new(u64::try_from(seconds).ok()?, nanos);
    Some(std::time::UNIX_EPOCH + since_epoch)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The real engine's 404 for a log becomes `NoSuchTask`, which a
    /// reader following a running task takes as "read again".
    #[tokio::test]
    async fn the_log_of_a_container_the_engine_does_not_have_is_no_such_task() {
        let docker = crate::docker::connect_docker()
            .await
            .expect("a Docker engine (scripts/start-docker.sh starts one)");
        let missing = "tcp-task-no-such-container-0123456789";
        let mut replay = replay(&docker, missing, Offsets::default(), 1024, true);
        let first = replay.next().await.expect("an error, not an empty log");
        let error = first.expect_err("no log to read");
        assert_eq!(error.kind, ErrorKind::NoSuchTask, "{error}");
    }

    #[test]
    fn engine_timestamps_parse() {
        let t = parse_rfc3339("2026-12-02T06:10:11.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_796_191_811, 500_000_000)
        );
        let epoch = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(epoch, UNIX_EPOCH);
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn verdicts_round_trip_through_names() {
        let id = TaskId::from_random(42);
        for ending in [Ending::Cancelled, Ending::TimedOut, Ending::OutputLimit] {
            let name = format!(
                "/{}--{}",
                container_name(&id),
                verdict_suffix(ending).unwrap()
            );
            assert_eq!(verdict_of(&name), Some(ending));
        }
        assert_eq!(verdict_of(&format!("/{}", container_name(&id))), None);
    }

    #[test]
    fn a_replay_skips_what_the_client_has_and_stops_at_the_limit() {
        let from = Offsets {
            stdout: 3,
            stderr: 0,
        };
        let mut seen = Offsets::default();
        let out = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut got = Vec::new();
        for (stream, chunk) in [
            (OutputStream::Stdout, out("ab")),
            (OutputStream::Stderr, out("E1")),
            (OutputStream::Stdout, out("cdef")),
            (OutputStream::Stdout, out("ghij")),
        ] {
            got.push(cut(&mut seen, from, 8, stream, chunk));
        }
        assert_eq!(
            got,
            vec![
                None,
                Some((OutputStream::Stderr, out("E1"))),
                Some((OutputStream::Stdout, out("def"))),
                None,
            ]
        );
    }
}

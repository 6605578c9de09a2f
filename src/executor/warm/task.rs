//! One task on a warm container: hand the agent the task, relay output and
//! stdin, and turn the agent's exit report into the same [`Outcome`] the
//! cold path gives for the same ending.

use bollard::Docker;
use bytes::Bytes;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::container::{diagnostics_of, short, Record, WarmContainer};
use super::proto::{self, ExitReport, TaskHeader};
use crate::events::EventSink;
use crate::executor::engine::engine_error;
use crate::executor::outcome::{ended_outcome, killed_outcome, wait_exit};
use crate::executor::policy::Plan;
use crate::executor::stream::{send, OutputEnd, StdinWriter};
use crate::executor::TaskIo;
use crate::protocol::{Ending, ErrorKind, Outcome, OutputStream, ProgressEvent, TaskError};

/// How a warm attempt ended.
#[derive(Debug)]
pub(crate) enum WarmEnd {
    /// The task ran, or could not run, on this container.
    Done(Result<Outcome, TaskError>),
    /// The container was gone before the task started: nothing of the task
    /// was consumed, so it can run elsewhere.
    NotStarted(TaskIo),
}

/// What the relay saw last.
enum Stop {
    Exit(ExitReport),
    Killed(Ending),
    /// The attach stream ended mid-task: the container died under it.
    Broken,
}

/// Runs `plan`'s task on `container`. Also says whether the container is
/// fit for another task: only when the agent reported the end and no
/// frame to it was left half-written.
pub(crate) async fn run(
    docker: &Docker,
    container: &mut WarmContainer,
    plan: &Plan,
    io: TaskIo,
    limit: u64,
) -> (WarmEnd, bool) {
    let deadline = Deadline::now() + plan.timeout;
    let header = TaskHeader {
        argv: plan.command.clone(),
        env: plan.env.clone(),
        workdir: plan.workdir.clone(),
        stdin: plan.stdin,
    };
    let clean = AtomicBool::new(true);
    let sent = write_frame(&mut container.input, proto::TASK, &header.encode(), &clean).await;
    if sent.is_err() {
        return (WarmEnd::NotStarted(io), false);
    }
    match first_record(&mut container.records, &io.cancel, deadline).await {
        First::Killed(ending) => {
            return (
                WarmEnd::Done(Ok(killed_outcome(ending, Duration::ZERO))),
                false,
            )
        }
        First::Record(Some(Record::Started)) => {}
        First::Record(None) => return (WarmEnd::NotStarted(io), false),
        First::Record(Some(Record::Exit(report))) => {
            return (WarmEnd::Done(start_failure(report, plan, container)), true)
        }
        First::Record(Some(_)) => {
            let error = TaskError::new(
                ErrorKind::Engine,
                format!(
                    "the agent in warm container {} broke the protocol",
                    short(&container.id)
                ),
            );
            return (WarmEnd::Done(Err(error)), false);
        }
    }
    let cancel = io.cancel.clone();
    let events = io.events.clone();
    let _ = events
        .progress(ProgressEvent::Created {
            container: short(&container.id),
        })
        .await;
    let _ = events.progress(ProgressEvent::Started).await;
    let started = Instant::now();
    let stop = relay(container, plan, io, deadline, limit, &clean).await;
    let elapsed = started.elapsed();
    match stop {
        Stop::Exit(report) => {
            let outcome = exit_outcome(report, elapsed, plan, container);
            (WarmEnd::Done(outcome), clean.load(Ordering::Acquire))
        }
        Stop::Killed(ending) => (WarmEnd::Done(Ok(killed_outcome(ending, elapsed))), false),
        Stop::Broken => {
            let ended = collect_dead(docker, &container.id, started, &cancel, deadline).await;
            (WarmEnd::Done(ended), false)
        }
    }
}

/// What came first after the task header.
enum First {
    /// The agent's answer: `Started`, or an `Exit` when the process could
    /// not start; `None` when the container was already gone.
    Record(Option<Record>),
    /// Cancelled or timed out before the agent answered.
    Killed(Ending),
}

async fn first_record(
    records: &mut mpsc::Receiver<Record>,
    cancel: &CancellationToken,
    deadline: Deadline,
) -> First {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => First::Killed(Ending::Cancelled),
        _ = tokio::time::sleep_until(deadline) => First::Killed(Ending::TimedOut),
        record = records.recv() => First::Record(record),
    }
}

/// Writes one frame to the agent; `clean` is false while a frame is
/// half-written, which makes the container unfit for reuse.
async fn write_frame(
    input: &mut StdinWriter,
    kind: u8,
    payload: &[u8],
    clean: &AtomicBool,
) -> io::Result<()> {
    clean.store(false, Ordering::Release);
    input.write_all(&proto::header(kind, payload.len())).await?;
    input.write_all(payload).await?;
    input.flush().await?;
    clean.store(true, Ordering::Release);
    Ok(())
}

/// Relays output and stdin until the agent reports the end, the task is
/// cancelled, times out, or the container dies.
async fn relay(
    container: &mut WarmContainer,
    plan: &Plan,
    io: TaskIo,
    deadline: Deadline,
    limit: u64,
    clean: &AtomicBool,
) -> Stop {
    let WarmContainer { records, input, .. } = container;
    let TaskIo {
        events,
        stdin,
        cancel,
        ..
    } = io;
    let output = relay_records(records, &events, limit);
    let stdin_relay = relay_stdin(stdin, input, clean);
    tokio::pin!(output, stdin_relay);
    // A task without stdin has /dev/null; nothing to relay.
    let mut stdin_done = !plan.stdin;
    loop {
        tokio::select! {
            // Cancel first, as on the cold path.
            biased;
            _ = cancel.cancelled() => return Stop::Killed(Ending::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Stop::Killed(Ending::TimedOut),
            stop = &mut output => return stop,
            () = &mut stdin_relay, if !stdin_done => stdin_done = true,
        }
    }
}

async fn relay_records(
    records: &mut mpsc::Receiver<Record>,
    events: &EventSink,
    limit: u64,
) -> Stop {
    let mut relayed = 0;
    while let Some(record) = records.recv().await {
        let (stream, chunk) = match record {
            Record::Stdout(chunk) => (OutputStream::Stdout, chunk),
            Record::Stderr(chunk) => (OutputStream::Stderr, chunk),
            Record::Exit(report) => return Stop::Exit(report),
            Record::Ready | Record::Started => continue,
        };
        match send(events, stream, chunk, limit, &mut relayed).await {
            None => {}
            Some(OutputEnd::LimitReached) => return Stop::Killed(Ending::OutputLimit),
            Some(_) => return Stop::Killed(Ending::Cancelled),
        }
    }
    Stop::Broken
}

async fn relay_stdin(
    mut chunks: mpsc::Receiver<Bytes>,
    input: &mut StdinWriter,
    clean: &AtomicBool,
) {
    while let Some(chunk) = chunks.recv().await {
        // The container is gone; its end is reported by the output side.
        if write_frame(input, proto::STDIN, &chunk, clean)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = write_frame(input, proto::CLOSE, &[], clean).await;
}

/// The outcome of an agent's exit report: the cold path's rule on the exit
/// code the container would have had (128+N for signal N).
fn exit_outcome(
    report: ExitReport,
    elapsed: Duration,
    plan: &Plan,
    container: &WarmContainer,
) -> Result<Outcome, TaskError> {
    match report {
        ExitReport::Exited { code, oom } => Ok(ended_outcome(i64::from(code), oom, elapsed)),
        ExitReport::Signaled { signal, oom } => {
            Ok(ended_outcome(128 + i64::from(signal), oom, elapsed))
        }
        _ => start_failure(report, plan, container),
    }
}

/// Why the process did not start, in the cold path's terms (`docker run`
/// gives 127 for a missing command, 126 for one that cannot be run).
fn start_failure(
    report: ExitReport,
    plan: &Plan,
    container: &WarmContainer,
) -> Result<Outcome, TaskError> {
    let shown = plan.command.first().map_or("", String::as_str);
    match report {
        ExitReport::SpawnFailed { errno } => Err(spawn_error(shown, errno)),
        ExitReport::WorkdirFailed { errno } => Err(TaskError::new(
            ErrorKind::BadRequest,
            format!(
                "the working directory `{}` cannot be used in the container ({}); choose one \
                 that exists or that the task's user may create",
                plan.workdir.as_deref().unwrap_or(""),
                io::Error::from_raw_os_error(errno)
            ),
        )),
        ExitReport::Exited { .. } | ExitReport::Signaled { .. } => Err(TaskError::new(
            ErrorKind::Engine,
            format!(
                "the agent in warm container {} reported an end before a start: {}",
                short(&container.id),
                diagnostics_of(container)
            ),
        )),
    }
}

fn spawn_error(shown: &str, errno: i32) -> TaskError {
    const ENOENT: i32 = 2;
    const ENOEXEC: i32 = 8;
    const EACCES: i32 = 13;
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    let text = io::Error::from_raw_os_error(errno);
    match errno {
        ENOENT => TaskError::new(
            ErrorKind::CommandNotFound,
            format!(
                "command `{shown}` was not found in the image (exec: {text}); check the command \
                 name and the image's PATH"
            ),
        ),
        ENOEXEC | EACCES | ENOTDIR | EISDIR => TaskError::new(
            ErrorKind::CommandNotInvokable,
            format!(
                "command `{shown}` exists but cannot be run (exec: {text}); check that it is an \
                 executable file and that the task's user may run it"
            ),
        ),
        _ => TaskError::new(
            ErrorKind::Engine,
            format!("command `{shown}` could not be started: {text}"),
        ),
    }
}

/// The container died under a running task: its exit status and OOM flag
/// from the engine, as on the cold path.
async fn collect_dead(
    docker: &Docker,
    id: &str,
    started: Instant,
    cancel: &CancellationToken,
    deadline: Deadline,
) -> Result<Outcome, TaskError> {
    let code = tokio::select! {
        code = wait_exit(docker, id) => code?,
        _ = cancel.cancelled() => return Ok(killed_outcome(Ending::Cancelled, started.elapsed())),
        _ = tokio::time::sleep_until(deadline) => {
            return Ok(killed_outcome(Ending::TimedOut, started.elapsed()))
        }
    };
    let inspected = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| engine_error("inspecting a warm container that died", &e))?;
    let oom = inspected
        .state
        .and_then(|state| state.oom_killed)
        .unwrap_or(false);
    Ok(ended_outcome(code, oom, started.elapsed()))
}

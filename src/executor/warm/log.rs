//! A kept task on a warm container, read back from the container's log.
//!
//! The agent's frames are the container's stdout, so its log holds every
//! task it ran: each starts with an `A` frame carrying the task's tag,
//! then its output frames, then its `X` report. A task's output is what
//! lies between its own `A` frame and its end.

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::channel::{Decoder, Record};
use super::proto::ExitReport;
use crate::executor::engine::engine_error;
use crate::executor::exit::container_end;
use crate::executor::kept::{cut, then_drain, WarmTag};
use crate::executor::process::{Process, ProcessEnd};
use crate::executor::Replay;
use crate::task::{ErrorKind, Offsets, OutputStream, TaskError, TaskId};

/// What the log says of one task.
pub(crate) enum Logged {
    Output(OutputStream, Bytes),
    Exit(ExitReport),
}

type Frames = BoxStream<'static, Result<LogOutput, bollard::errors::Error>>;

fn log_of(docker: &Docker, container: &str, follow: bool) -> Frames {
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: false,
        tail: "all".to_owned(),
        ..LogsOptions::default()
    };
    docker.logs(container, Some(options)).boxed()
}

/// Where a reading of the log is.
struct Reading {
    frames: Frames,
    decoder: Decoder,
    task: TaskId,
    /// Past the task's own `A` frame.
    found: bool,
    done: bool,
}

impl Reading {
    /// The next thing the log says of the task.
    async fn next(&mut self) -> Option<Result<Logged, TaskError>> {
        while !self.done {
            match self.decoder.next() {
                Ok(Some(record)) => {
                    if let Some(logged) = self.take(record) {
                        return Some(Ok(logged));
                    }
                }
                Ok(None) => match self.frames.next().await? {
                    Ok(LogOutput::StdOut { message }) => self.decoder.push(&message),
                    Ok(_) => {}
                    Err(e) => return Some(Err(engine_error("reading a warm task's log", &e))),
                },
                Err(e) => {
                    self.done = true;
                    let message = format!("a warm container's log is not the agent's ({e})");
                    return Some(Err(TaskError::new(ErrorKind::Engine, message)));
                }
            }
        }
        None
    }

    fn take(&mut self, record: Record) -> Option<Logged> {
        match record {
            Record::Started(tag) => {
                let ours = WarmTag::decode(&tag).is_some_and(|t| t.id == self.task);
                // The next task's start ends ours.
                self.done = self.found && !ours;
                self.found |= ours;
                None
            }
            Record::Stdout(chunk) if self.found => {
                Some(Logged::Output(OutputStream::Stdout, chunk))
            }
            Record::Stderr(chunk) if self.found => {
                Some(Logged::Output(OutputStream::Stderr, chunk))
            }
            Record::Exit(report) if self.found => {
                self.done = true;
                Some(Logged::Exit(report))
            }
            _ => None,
        }
    }
}

/// Task `task`'s output and end in `container`'s log, live with `follow`.
pub(crate) fn task_log(
    docker: &Docker,
    container: &str,
    task: &TaskId,
    follow: bool,
) -> BoxStream<'static, Result<Logged, TaskError>> {
    let reading = Reading {
        frames: log_of(docker, container, follow),
        decoder: Decoder::default(),
        task: task.clone(),
        found: false,
        done: false,
    };
    stream::unfold(reading, |mut reading| async move {
        let item = reading.next().await?;
        Some((item, reading))
    })
    .boxed()
}

/// Task `task`'s output from `container`'s log, after `from` and within
/// `limit`, as [`crate::executor::Executor::replay`] gives it.
pub(crate) fn replay(
    docker: &Docker,
    container: &str,
    task: &TaskId,
    (from, limit): (Offsets, u64),
    follow: bool,
) -> Replay {
    if !follow {
        return read_task(docker, container, task, (from, limit), false);
    }
    let (docker, container, task) = (docker.clone(), container.to_owned(), task.clone());
    let first = read_task(&docker, &container, &task, (from, limit), true);
    then_drain(first, from, move |rest| {
        read_task(&docker, &container, &task, (rest, limit), false)
    })
}

fn read_task(
    docker: &Docker,
    container: &str,
    task: &TaskId,
    (from, limit): (Offsets, u64),
    follow: bool,
) -> Replay {
    let mut seen = Offsets::default();
    task_log(docker, container, task, follow)
        .filter_map(move |item| {
            let item = match item {
                Ok(Logged::Output(stream, chunk)) => {
                    cut(&mut seen, from, limit, stream, chunk).map(Ok)
                }
                Ok(Logged::Exit(_)) => None,
                Err(e) => Some(Err(e)),
            };
            async move { item }
        })
        .boxed()
}

/// The last task a warm container's log names: its tag, and its end if
/// the log has it.
pub(crate) async fn last_task(
    docker: &Docker,
    container: &str,
) -> Result<Option<(WarmTag, Option<ExitReport>)>, TaskError> {
    let mut frames = log_of(docker, container, false);
    let mut decoder = Decoder::default();
    let mut last: Option<(WarmTag, Option<ExitReport>)> = None;
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(LogOutput::StdOut { message }) => decoder.push(&message),
            Ok(_) => continue,
            Err(e) => return Err(engine_error("reading a warm container's log", &e)),
        }
        while let Ok(Some(record)) = decoder.next() {
            match record {
                Record::Started(tag) => last = WarmTag::decode(&tag).map(|t| (t, None)),
                Record::Exit(report) => {
                    if let Some((_, end)) = last.as_mut() {
                        *end = Some(report);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(last)
}

/// How an agent's exit report reads as a process end, when the process
/// ran; `None` when it never started.
pub(crate) fn end_of(report: &ExitReport) -> Option<ProcessEnd> {
    match *report {
        ExitReport::Exited { code, oom } => Some(ProcessEnd::Exited {
            code: i64::from(code),
            oom_killed: oom,
        }),
        // The code the container would have had: 128+N for signal N.
        ExitReport::Signaled { signal, oom } => Some(ProcessEnd::Exited {
            code: 128 + i64::from(signal),
            oom_killed: oom,
        }),
        ExitReport::SpawnFailed { .. } | ExitReport::WorkdirFailed { .. } => None,
    }
}

/// An adopted task still running on a warm container, seen through the
/// container's log: its output from the first byte, its end from the
/// agent's report (or, if the agent died, the container's).
pub(crate) struct LoggedWarmProcess {
    docker: Docker,
    container: String,
    task: TaskId,
    log: BoxStream<'static, Result<Logged, TaskError>>,
    report: Option<ExitReport>,
    /// Where the output starts (what went out already), what the log has
    /// given of it so far, and what was handed out from `from` on.
    from: Offsets,
    seen: Offsets,
    relayed: Offsets,
}

impl LoggedWarmProcess {
    pub fn new(docker: Docker, container: String, task: &TaskId) -> LoggedWarmProcess {
        LoggedWarmProcess::from(docker, container, task, Offsets::default())
    }

    /// The same, for a task whose output up to `from` went out already.
    pub fn from(
        docker: Docker,
        container: String,
        task: &TaskId,
        from: Offsets,
    ) -> LoggedWarmProcess {
        let log = task_log(&docker, &container, task, true);
        LoggedWarmProcess {
            docker,
            container,
            task: task.clone(),
            log,
            report: None,
            from,
            seen: Offsets::default(),
            relayed: from,
        }
    }

    /// The output handed out so far, per stream.
    pub fn relayed(&self) -> Offsets {
        self.relayed
    }
}

impl Process for LoggedWarmProcess {
    type Stdin = super::process::WarmStdin;

    fn take_stdin(&mut self) -> Option<Self::Stdin> {
        None
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        loop {
            match self.log.next().await? {
                Ok(Logged::Output(stream, chunk)) => {
                    // Past what went out already: the limit is the relay's.
                    let Some((stream, rest)) =
                        cut(&mut self.seen, self.from, u64::MAX, stream, chunk)
                    else {
                        continue;
                    };
                    self.relayed.advance(stream, rest.len() as u64);
                    return Some((stream, rest));
                }
                Ok(Logged::Exit(report)) => {
                    self.report = Some(report);
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the log of an adopted warm task broke; waiting for its end");
                    return None;
                }
            }
        }
    }

    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        if self.report.is_none() {
            // The followed log may have ended before its last record (see
            // `then_drain`): once the container has stopped, read it again.
            let _ = container_end(&self.docker, &self.container, None).await;
            if let Ok(Some((tag, report))) = last_task(&self.docker, &self.container).await {
                if tag.id == self.task {
                    self.report = report;
                }
            }
        }
        match self.report.as_ref().and_then(end_of) {
            Some(end) => Ok(end),
            None => {
                let end = container_end(&self.docker, &self.container, None).await?;
                // The agent exits 0 after it has written the task's report,
                // whatever the task's code: a clean exit with no report in
                // the log is a report the engine lost (the task ended while
                // dockerd was down, and what the agent wrote meanwhile went
                // with it), not the task's exit 0. A killed agent (137) is
                // the container's end, and the task's.
                if matches!(
                    end,
                    ProcessEnd::Exited {
                        code: 0,
                        oom_killed: false
                    }
                ) {
                    return Err(TaskError::new(
                        ErrorKind::Engine,
                        format!(
                            "task {} ended, but the Docker engine did not keep how: its warm \
                             container's log lacks the task's end (the engine was down when it \
                             ended, and lost what the container wrote meanwhile); \
                             `tcp-task logs {}` shows the output the engine kept",
                            self.task, self.task
                        ),
                    ));
                }
                Ok(end)
            }
        }
    }

    // The container is kept; whoever supervised it decides what follows.
    async fn finish(self) {}
}

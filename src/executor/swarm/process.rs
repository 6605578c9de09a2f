//! A task running on a swarm node, as a [`Process`]: its output from the
//! task's log (followed through the manager, whichever node runs it), its
//! end from the task's state, and the service and its network removed when
//! it is finished.
//!
//! A followed log does not end when the task does, so the task's state is
//! read meanwhile; once the task has ended, its whole log is read again,
//! without following, and what had not been relayed yet is: the byte
//! offsets of each stream say where that is, so no byte is lost or
//! repeated.

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::Task;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use super::super::cold::InitReport;
use super::super::engine::{engine_error, init_exec_failure};
use super::super::process::{CommandFailure, Process, ProcessEnd, Stdin};
use super::schedule::{exit_code, is_terminal, reason, state, task_of};
use super::TaskObjects;
use crate::task::{ErrorKind, Offsets, OutputStream, TaskError};

type LogFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// A task on a swarm node.
pub(crate) struct SwarmProcess {
    docker: Docker,
    objects: TaskObjects,
    task_id: String,
    poll: Duration,
    /// The followed log, until the task has ended.
    follow: Option<LogFrames>,
    /// The whole log, read once the task has ended, and how much of each
    /// stream it has given so far.
    tail: Option<(LogFrames, Offsets)>,
    relayed: Offsets,
    /// The task as the manager reported it at its end.
    ended: Option<Task>,
    report: InitReport,
    ready: VecDeque<(OutputStream, Bytes)>,
    /// docker-init's report that the command could not run, judged by the
    /// exit code: the command never started.
    not_started: Option<CommandFailure>,
    closed: bool,
}

impl SwarmProcess {
    pub fn new(docker: Docker, objects: TaskObjects, task: Task, poll: Duration) -> SwarmProcess {
        let task_id = task.id.clone().unwrap_or_default();
        let ended = is_terminal(state(&task)).then_some(task);
        let follow = ended.is_none().then(|| logs(&docker, &task_id, true));
        SwarmProcess {
            docker,
            objects,
            task_id,
            poll,
            follow,
            tail: None,
            relayed: Offsets::default(),
            ended,
            report: InitReport::default(),
            ready: VecDeque::new(),
            not_started: None,
            closed: false,
        }
    }

    /// The next chunk of the log, from the followed one while the task
    /// runs, then from the rest of the whole one. `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<(OutputStream, Bytes)>, TaskError> {
        loop {
            if let Some((frames, seen)) = self.tail.as_mut() {
                let Some(frame) = frames.next().await else {
                    return Ok(None);
                };
                let Some((stream, chunk)) =
                    chunk_of(frame.map_err(|e| engine_error("reading the task's log", &e))?)
                else {
                    continue;
                };
                // Skip what the followed log gave already.
                let start = seen.of(stream);
                seen.advance(stream, chunk.len() as u64);
                let have = self.relayed.of(stream);
                if start + chunk.len() as u64 <= have {
                    continue;
                }
                let from = have.saturating_sub(start) as usize;
                return Ok(Some((stream, chunk.slice(from..))));
            }
            if self.ended.is_some() {
                self.follow = None;
                self.tail = Some((logs(&self.docker, &self.task_id, false), Offsets::default()));
                continue;
            }
            let Some(follow) = self.follow.as_mut() else {
                self.wait_for_end().await?;
                continue;
            };
            tokio::select! {
                frame = follow.next() => match frame {
                    Some(frame) => {
                        if let Some(chunk) = chunk_of(frame.map_err(|e| engine_error("reading the task's log", &e))?) {
                            return Ok(Some(chunk));
                        }
                    }
                    // The follow ended by itself: the rest comes from the tail.
                    None => self.follow = None,
                },
                _ = tokio::time::sleep(self.poll) => self.look().await?,
            }
        }
    }

    /// Reads the task's state; keeps it if the task has ended.
    async fn look(&mut self) -> Result<(), TaskError> {
        if let Some(task) = task_of(&self.docker, &self.objects.service).await? {
            if is_terminal(state(&task)) {
                self.ended = Some(task);
            }
        }
        Ok(())
    }

    /// The output closed. If docker-init's report was held, the exit code
    /// tells whether the command never ran or it was the task's own stderr.
    async fn judge_held(&mut self) {
        let Some(report) = self.report.take_held() else {
            return;
        };
        if self.wait_for_end().await.is_ok() {
            let code = self.ended.as_ref().and_then(exit_code);
            if let Some(failure) = code.and_then(|code| init_exec_failure(code, &report)) {
                self.not_started = Some(failure);
                return;
            }
        }
        self.ready.push_back((OutputStream::Stderr, report));
    }

    async fn wait_for_end(&mut self) -> Result<(), TaskError> {
        while self.ended.is_none() {
            self.look().await?;
            if self.ended.is_none() {
                tokio::time::sleep(self.poll).await;
            }
        }
        Ok(())
    }
}

/// The task's log through the manager.
fn logs(docker: &Docker, task: &str, follow: bool) -> LogFrames {
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        ..LogsOptions::default()
    };
    Box::pin(docker.task_logs(task, Some(options)))
}

fn chunk_of(frame: LogOutput) -> Option<(OutputStream, Bytes)> {
    match frame {
        LogOutput::StdOut { message } => Some((OutputStream::Stdout, message)),
        LogOutput::StdErr { message } => Some((OutputStream::Stderr, message)),
        LogOutput::Console { message } => Some((OutputStream::Stdout, message)),
        LogOutput::StdIn { .. } => None,
    }
}

impl Process for SwarmProcess {
    type Stdin = NoStdin;

    fn take_stdin(&mut self) -> Option<NoStdin> {
        None
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(chunk);
            }
            if self.closed {
                return None;
            }
            match self.next_chunk().await {
                Ok(Some((stream, chunk))) => {
                    self.relayed.advance(stream, chunk.len() as u64);
                    self.report.offer(stream, chunk, &mut self.ready);
                }
                Ok(None) => {
                    self.closed = true;
                    self.judge_held().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a swarm task's log broke; waiting for its end");
                    self.closed = true;
                }
            }
        }
    }

    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        self.wait_for_end().await?;
        let task = self.ended.clone().unwrap_or_default();
        let Some(code) = exit_code(&task) else {
            return Err(TaskError::new(
                ErrorKind::Engine,
                format!(
                    "the swarm ended the task without an exit code: {}",
                    reason(&task)
                ),
            ));
        };
        if let Some(failure) = self.not_started.take() {
            return Ok(ProcessEnd::NotStarted(failure));
        }
        // Swarm does not report an OOM kill of a task's container; a node's
        // kernel killing it shows as SIGKILL (docs/SECURITY.md).
        let oom_killed = reason(&task).to_lowercase().contains("oom");
        Ok(ProcessEnd::Exited { code, oom_killed })
    }

    async fn finish(self) {
        self.objects.remove(&self.docker).await;
    }
}

/// A Swarm task has no stdin: the runtime refuses a task that asks for it.
pub(crate) struct NoStdin;

impl Stdin for NoStdin {
    async fn write(&mut self, _chunk: Bytes) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    async fn close(&mut self) {}
}

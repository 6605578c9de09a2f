//! A Swarm task's log, read through the manager (whichever node runs the
//! task): followed while the task runs, then read whole once it has ended.
//!
//! A followed log does not end when the task does, so the task's state is
//! read meanwhile; once the task has ended, its whole log is read again,
//! without following, and what had not been given yet is: the byte
//! offsets of each stream say where that is, so no byte is lost or
//! repeated. The running task ([`super::SwarmProcess`]) and a replay to a
//! client who attaches ([`super::kept`]) read it the same way.

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::Task;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;

use super::super::engine::engine_error;
use super::schedule::{is_terminal, state, task_of};
use crate::task::{Offsets, OutputStream, TaskError};

type LogFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// One Swarm task's output, from its first byte.
pub(crate) struct TaskLog {
    docker: Docker,
    service: String,
    task_id: String,
    poll: Duration,
    /// The followed log, until the task has ended.
    follow: Option<LogFrames>,
    /// The whole log, read once the task has ended, and how much of each
    /// stream it has given so far.
    tail: Option<(LogFrames, Offsets)>,
    given: Offsets,
    /// The task as the manager reported it at its end.
    pub ended: Option<Task>,
}

impl TaskLog {
    /// The log of `task`, service `service`'s task, as the manager last
    /// reported it (running, or ended).
    pub fn new(docker: Docker, service: String, task: Task, poll: Duration) -> TaskLog {
        let task_id = task.id.clone().unwrap_or_default();
        let ended = is_terminal(state(&task)).then_some(task);
        let follow = ended.is_none().then(|| logs(&docker, &task_id, true));
        TaskLog {
            docker,
            service,
            task_id,
            poll,
            follow,
            tail: None,
            given: Offsets::default(),
            ended,
        }
    }

    /// The next chunk of the log, from the followed one while the task
    /// runs, then from the rest of the whole one. `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<(OutputStream, Bytes)>, TaskError> {
        let chunk = self.next_unseen().await?;
        if let Some((stream, chunk)) = &chunk {
            self.given.advance(*stream, chunk.len() as u64);
        }
        Ok(chunk)
    }

    async fn next_unseen(&mut self) -> Result<Option<(OutputStream, Bytes)>, TaskError> {
        loop {
            if let Some((frames, seen)) = self.tail.as_mut() {
                let Some(frame) = frames.next().await else {
                    return Ok(None);
                };
                let Some((stream, chunk)) = chunk_of(frame.map_err(log_error)?) else {
                    continue;
                };
                // Skip what the followed log gave already.
                let start = seen.of(stream);
                seen.advance(stream, chunk.len() as u64);
                let have = self.given.of(stream);
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
                        if let Some(chunk) = chunk_of(frame.map_err(log_error)?) {
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
        if let Some(task) = task_of(&self.docker, &self.service).await? {
            if is_terminal(state(&task)) {
                self.ended = Some(task);
            }
        }
        Ok(())
    }

    /// Waits until the task has ended; [`TaskLog::ended`] then holds it.
    pub async fn wait_for_end(&mut self) -> Result<(), TaskError> {
        while self.ended.is_none() {
            self.look().await?;
            if self.ended.is_none() {
                tokio::time::sleep(self.poll).await;
            }
        }
        Ok(())
    }
}

fn log_error(e: BollardError) -> TaskError {
    engine_error("reading the task's log", &e)
}

/// Task `task`'s log through the manager.
pub(crate) fn logs(docker: &Docker, task: &str, follow: bool) -> LogFrames {
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        ..LogsOptions::default()
    };
    Box::pin(docker.task_logs(task, Some(options)))
}

/// A log frame's stream and bytes.
pub(crate) fn chunk_of(frame: LogOutput) -> Option<(OutputStream, Bytes)> {
    match frame {
        LogOutput::StdOut { message } => Some((OutputStream::Stdout, message)),
        LogOutput::StdErr { message } => Some((OutputStream::Stderr, message)),
        LogOutput::Console { message } => Some((OutputStream::Stdout, message)),
        LogOutput::StdIn { .. } => None,
    }
}

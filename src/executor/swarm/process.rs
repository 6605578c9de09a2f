//! A task running on a swarm node, as a [`Process`]: its output from the
//! task's log (followed through the manager, whichever node runs it: see
//! [`super::log`]), its end from the task's state, and the service and its
//! network removed when it is finished (or kept, for a kept task, by
//! `super::kept`).

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

use super::super::cold::InitReport;
use super::super::engine::init_exec_failure;
use super::super::process::{CommandFailure, Process, ProcessEnd, Stdin};
use super::log::TaskLog;
use super::schedule::{exit_code, reason};
use super::TaskObjects;
use crate::task::{ErrorKind, OutputStream, TaskError};
use bollard::models::Task;
use bollard::Docker;

/// A task on a swarm node.
pub(crate) struct SwarmProcess {
    docker: Docker,
    objects: TaskObjects,
    log: TaskLog,
    report: InitReport,
    ready: VecDeque<(OutputStream, Bytes)>,
    /// docker-init's report that the command could not run, judged by the
    /// exit code: the command never started.
    not_started: Option<CommandFailure>,
    closed: bool,
}

impl SwarmProcess {
    pub fn new(docker: Docker, objects: TaskObjects, task: Task, poll: Duration) -> SwarmProcess {
        let log = TaskLog::new(docker.clone(), objects.service.clone(), task, poll);
        SwarmProcess {
            docker,
            objects,
            log,
            report: InitReport::default(),
            ready: VecDeque::new(),
            not_started: None,
            closed: false,
        }
    }

    /// The task's service and network.
    pub fn objects(&self) -> &TaskObjects {
        &self.objects
    }

    /// The output closed. If docker-init's report was held, the exit code
    /// tells whether the command never ran or it was the task's own stderr.
    async fn judge_held(&mut self) {
        let Some(report) = self.report.take_held() else {
            return;
        };
        if self.log.wait_for_end().await.is_ok() {
            let code = self.log.ended.as_ref().and_then(exit_code);
            if let Some(failure) = code.and_then(|code| init_exec_failure(code, &report)) {
                self.not_started = Some(failure);
                return;
            }
        }
        self.ready.push_back((OutputStream::Stderr, report));
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
            match self.log.next_chunk().await {
                Ok(Some((stream, chunk))) => {
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
        self.log.wait_for_end().await?;
        let task = self.log.ended.clone().unwrap_or_default();
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

//! From a created service to a running task: reads the task's state from
//! the manager until it runs (or has run already), reporting where the
//! scheduler is, and turns a task that cannot be placed or started into a
//! clear error instead of a wait without end.

use bollard::models::{Task, TaskState};
use bollard::query_parameters::ListTasksOptions;
use bollard::Docker;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::engine::engine_error;
use super::super::events::EventSink;
use super::super::kept::parse_rfc3339;
use super::super::process::{CommandFailure, StartError};
use super::nodes::NodeNames;
use crate::task::{ErrorKind, ProgressEvent, TaskError};

/// The service's task as the manager last reported it. A service of one
/// replica that is never restarted has one task; a kept task that was
/// stopped has a replacement too, which never runs (`super::kept`): the
/// first one made is the task.
pub(crate) async fn task_of(docker: &Docker, service: &str) -> Result<Option<Task>, TaskError> {
    let options = ListTasksOptions {
        filters: Some(HashMap::from([(
            "service".to_owned(),
            vec![service.to_owned()],
        )])),
    };
    let tasks = docker
        .list_tasks(Some(options))
        .await
        .map_err(|e| engine_error("reading the task's state from the swarm", &e))?;
    Ok(tasks.into_iter().min_by_key(|t| {
        // The swarm's times drop trailing zeros: compared as times.
        let created = t.created_at.as_deref().and_then(parse_rfc3339);
        (created.is_none(), created)
    }))
}

pub(crate) fn state(task: &Task) -> Option<TaskState> {
    task.status.as_ref()?.state
}

/// Whether the task has come to an end of any kind.
pub(crate) fn is_terminal(state: Option<TaskState>) -> bool {
    matches!(
        state,
        Some(
            TaskState::COMPLETE
                | TaskState::FAILED
                | TaskState::SHUTDOWN
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        )
    )
}

/// The container's exit code, once the task has one: it completed, or
/// its container ran and failed or was stopped (a task the node rejected
/// has none).
pub(crate) fn exit_code(task: &Task) -> Option<i64> {
    let status = task.status.as_ref()?;
    let container = status.container_status.as_ref();
    let ran = || {
        let container = container?;
        let ran = container
            .container_id
            .as_ref()
            .is_some_and(|id| !id.is_empty());
        // -1: the node has not reported the container's end yet.
        container.exit_code.filter(|code| ran && *code >= 0)
    };
    match status.state? {
        TaskState::COMPLETE => Some(container.and_then(|c| c.exit_code).unwrap_or(0)),
        TaskState::FAILED | TaskState::SHUTDOWN => ran(),
        _ => None,
    }
}

/// The scheduler's or the node's words about the task.
pub(crate) fn reason(task: &Task) -> String {
    let status = task.status.clone().unwrap_or_default();
    match (status.err, status.message) {
        (Some(err), _) if !err.is_empty() => err,
        (_, Some(message)) => message,
        _ => "no reason given".to_owned(),
    }
}

/// Where the waiting is: what has been reported, since when pending.
pub(crate) struct Scheduling<'a> {
    pub docker: &'a Docker,
    pub service: &'a str,
    pub image: &'a str,
    pub events: &'a EventSink,
    pub poll: Duration,
    pub patience: Duration,
}

impl Scheduling<'_> {
    /// Waits until the task runs or has run (its container exists and has
    /// an exit code): gives it, and the host name of its node.
    pub async fn until_running(
        &self,
        cancel: &CancellationToken,
        nodes: &NodeNames,
    ) -> Result<(Task, Option<String>), StartError> {
        let began = Instant::now();
        let mut reported: Option<(String, Option<String>)> = None;
        loop {
            let task = task_of(self.docker, self.service).await?;
            let state = task.as_ref().and_then(state);
            let node = match task.as_ref().and_then(|t| t.node_id.clone()) {
                Some(id) if !id.is_empty() => nodes.name(self.docker, &id).await,
                _ => None,
            };
            match (state, task) {
                (Some(TaskState::RUNNING), Some(task)) => return Ok((task, node)),
                (Some(_), Some(task)) if exit_code(&task).is_some() => return Ok((task, node)),
                (s, Some(task)) if is_terminal(s) => return Err(self.not_started(&task)),
                (s, task) => {
                    let word = s.map_or("pending".to_owned(), |s| s.to_string());
                    let pending = matches!(
                        s,
                        None | Some(TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING)
                    );
                    if pending && began.elapsed() >= self.patience {
                        let why = task.as_ref().map_or("no task yet".to_owned(), reason);
                        return Err(StartError::Failed(unschedulable(self.patience, &why)));
                    }
                    let now = (if pending { "pending".to_owned() } else { word }, node);
                    if reported.as_ref() != Some(&now) {
                        let (state, node) = now.clone();
                        let _ = self
                            .events
                            .progress(ProgressEvent::Scheduling { state, node })
                            .await;
                        reported = Some(now);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(StartError::Cancelled),
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// A task that ended with no container run: the image, the command,
    /// or anything else the node refused.
    fn not_started(&self, task: &Task) -> StartError {
        let why = reason(task);
        let lower = why.to_lowercase();
        if lower.contains("no such image")
            || lower.contains("pull access denied")
            || lower.contains("manifest unknown")
            || lower.contains("not found: manifest")
        {
            return StartError::Failed(TaskError::new(
                ErrorKind::ImageNotFound,
                format!(
                    "image `{}` is on no node the task was placed on, nor in a registry it \
                     could be pulled from ({why}); load or push it where the swarm's nodes find it",
                    self.image
                ),
            ));
        }
        if lower.contains("executable file not found") {
            return StartError::Command(CommandFailure::NotFound { detail: why });
        }
        if lower.contains("permission denied") {
            return StartError::Command(CommandFailure::NotInvokable { detail: why });
        }
        StartError::Failed(TaskError::new(
            ErrorKind::Engine,
            format!("the swarm could not start the task: {why}"),
        ))
    }
}

fn unschedulable(patience: Duration, why: &str) -> TaskError {
    TaskError::new(
        ErrorKind::Unschedulable,
        format!(
            "no swarm node took the task within {:.0?} ({why}); ask for less memory or CPU, or \
             add nodes (or make them available: `docker node ls`)",
            patience
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStatus, TaskStatus};

    fn task(state: TaskState, container: Option<&str>, code: Option<i64>) -> Task {
        Task {
            status: Some(TaskStatus {
                state: Some(state),
                container_status: Some(ContainerStatus {
                    container_id: container.map(str::to_owned),
                    exit_code: code,
                    ..ContainerStatus::default()
                }),
                ..TaskStatus::default()
            }),
            ..Task::default()
        }
    }

    #[test]
    fn a_stopped_task_has_its_containers_exit_code_once_the_node_reports_it() {
        // A kept task the server stopped: SIGKILL.
        let stopped = task(TaskState::SHUTDOWN, Some("c0ffee"), Some(137));
        assert_eq!(exit_code(&stopped), Some(137));
        // -1 while its node has not reported the container's end.
        let stopping = task(TaskState::SHUTDOWN, Some("c0ffee"), Some(-1));
        assert_eq!(exit_code(&stopping), None);
        // Shut down before it had a container: no exit code.
        assert_eq!(exit_code(&task(TaskState::SHUTDOWN, None, Some(0))), None);
        assert_eq!(
            exit_code(&task(TaskState::COMPLETE, Some("c"), Some(0))),
            Some(0)
        );
        assert_eq!(
            exit_code(&task(TaskState::FAILED, Some("c"), Some(42))),
            Some(42)
        );
        assert_eq!(
            exit_code(&task(TaskState::RUNNING, Some("c"), Some(0))),
            None
        );
    }
}

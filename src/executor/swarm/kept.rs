//! Kept Swarm tasks: services that outlive their connection and their
//! server, as `super::super::kept` does it for local containers.
//!
//! A task with a tag runs as a service labelled with its id, its client,
//! whether it was detached, and its timeout (the same labels as a local
//! container). When it ends its service is not removed but kept, its task
//! stopped: the swarm then keeps the task's log and its exit state, which
//! this module reads back (the output replayed from byte offsets, through
//! the manager), until the task is discarded (its result forgotten) and
//! the service goes with its network.
//!
//! A service's task is ended by an update that places the service on no
//! node: the swarm stops the task (its container killed with SIGKILL, the
//! service's stop signal) and keeps it, with its log and exit status, in
//! the service's history; the replacement it makes stays pending, and
//! never runs. (Scaling the service to no replica would not do: the swarm
//! then removes the task, and its log with it.) When the server ends a
//! task (cancel, timeout, output limit) the verdict goes in the same
//! update, as a label, since the container's exit status alone would read
//! as a plain SIGKILL after a restart.

use bollard::models::{Service, TaskState};
use bollard::query_parameters::{ListServicesOptions, UpdateServiceOptions};
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

use super::super::cleanup::LABEL_ID;
use super::super::cleanup::LABEL_MANAGED;
use super::super::engine::{engine_error, status_code};
use super::super::kept::{cut, verdict_suffix};
use super::super::{no_such_task, Replay};
use super::log::{chunk_of, logs, TaskLog};
use super::schedule::{is_terminal, state, task_of};
use super::TaskObjects;
use crate::task::{Ending, Offsets, TaskError, TaskId};

/// On a kept task's service: how the server ended it, when it did.
pub const LABEL_VERDICT: &str = "tcp-task.verdict";

/// The placement that no node satisfies (no node has this id).
const NOWHERE: &str = "node.id==tcp-task-ended";

/// How many times a stop is tried again when the service changed in
/// between (its version moved on: the swarm updated its status).
const UPDATE_TRIES: u32 = 5;

/// The service of kept task `id`, if the swarm has it.
pub(crate) async fn find(docker: &Docker, id: &TaskId) -> Result<Option<Service>, TaskError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_ID}={id}")],
    )]);
    let options = ListServicesOptions {
        filters: Some(filters),
        ..ListServicesOptions::default()
    };
    let found = docker
        .list_services(Some(options))
        .await
        .map_err(|e| engine_error("looking up the task's service", &e))?;
    Ok(found.into_iter().find(|s| s.id.is_some()))
}

/// A service's id and the network its task is on.
pub(crate) fn objects_of(service: &Service) -> TaskObjects {
    let network = service
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.networks.as_ref())
        .and_then(|n| n.first())
        .and_then(|n| n.target.clone())
        .unwrap_or_default();
    TaskObjects {
        service: service.id.clone().unwrap_or_default(),
        network,
    }
}

/// The verdict a kept task's service carries, if the server ended it.
pub(crate) fn verdict_of(labels: &HashMap<String, String>) -> Option<Ending> {
    let written = labels.get(LABEL_VERDICT)?;
    [Ending::Cancelled, Ending::TimedOut, Ending::OutputLimit]
        .into_iter()
        .find(|ending| verdict_suffix(*ending) == Some(written.as_str()))
}

/// Stops service `service`'s task if it still runs (its container is
/// killed and kept, with its log), and writes `verdict` on the service
/// when the server ended the task. Returns once the swarm took the
/// update; the container stops a moment later (seconds, on Engine 20.10). A failure is logged, not returned: the
/// task's result is known already.
pub(crate) async fn stop(docker: &Docker, service: &str, verdict: Option<Ending>) {
    let mut tries = 0;
    loop {
        tries += 1;
        match try_stop(docker, service, verdict).await {
            Ok(()) => return,
            // 404: it is gone already; nothing to stop or mark.
            Err(e) if status_code(&e) == Some(404) => return,
            Err(e) if tries < UPDATE_TRIES && is_out_of_sequence(&e) => continue,
            Err(e) => {
                let e = engine_error("stopping the task's service", &e);
                tracing::warn!(%service, error = %e, "could not stop a kept task's service");
                return;
            }
        }
    }
}

async fn try_stop(
    docker: &Docker,
    service: &str,
    verdict: Option<Ending>,
) -> Result<(), bollard::errors::Error> {
    let current = docker.inspect_service(service, None).await?;
    let version = current.version.and_then(|v| v.index).unwrap_or_default();
    let mut spec = current.spec.unwrap_or_default();
    let task = spec.task_template.get_or_insert_with(Default::default);
    let placement = task.placement.get_or_insert_with(Default::default);
    let constraints = placement.constraints.get_or_insert_with(Vec::new);
    if !constraints.iter().any(|c| c == NOWHERE) {
        constraints.push(NOWHERE.to_owned());
    }
    if let Some(suffix) = verdict.and_then(verdict_suffix) {
        let labels = spec.labels.get_or_insert_with(HashMap::new);
        labels.insert(LABEL_VERDICT.to_owned(), suffix.to_owned());
    }
    let options = UpdateServiceOptions {
        version: i32::try_from(version).unwrap_or(i32::MAX),
        registry_auth_from: "spec".to_owned(),
        ..UpdateServiceOptions::default()
    };
    docker.update_service(service, spec, options, None).await?;
    Ok(())
}

/// The manager refuses an update made against an older version of the
/// service: it changed in between, so the update is made again.
fn is_out_of_sequence(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { message, .. }
        if message.contains("out of sequence"))
}

/// Whether the service's task still runs (or has not started yet).
pub(crate) async fn is_running(docker: &Docker, service: &str) -> Result<bool, TaskError> {
    let task = task_of(docker, service).await?;
    Ok(!task.as_ref().is_some_and(|t| is_terminal(state(t))))
}

/// The task's output from its log: whatever comes after `from` in each
/// stream, live while the task runs (with `follow`), never past `limit`
/// bytes of both streams together. A task whose container has not started
/// yet has no log: that is [`no_such_task`], which the caller waits out.
pub(crate) async fn replay(
    docker: &Docker,
    (id, service): (&TaskId, &str),
    (from, limit): (Offsets, u64),
    follow: bool,
    poll: Duration,
) -> Result<Replay, TaskError> {
    let Some(task) = task_of(docker, service).await? else {
        return Err(no_such_task(id));
    };
    let started = matches!(state(&task), Some(TaskState::RUNNING)) || is_terminal(state(&task));
    if !started {
        return Err(no_such_task(id));
    }
    let mut seen = Offsets::default();
    if !follow || is_terminal(state(&task)) {
        let task_id = task.id.clone().unwrap_or_default();
        let replay = logs(docker, &task_id, false).filter_map(move |frame| {
            let item = match frame {
                Ok(frame) => Ok(chunk_of(frame)
                    .and_then(|(stream, chunk)| cut(&mut seen, from, limit, stream, chunk))),
                Err(e) => Err(engine_error("reading the task's log", &e)),
            };
            async move { item.transpose() }
        });
        return Ok(replay.boxed());
    }
    let log = TaskLog::new(docker.clone(), service.to_owned(), task, poll);
    let replay = futures::stream::unfold(Some(log), move |log| async move {
        let mut log = log?;
        match log.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Some(chunk)), Some(log))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .filter_map(move |item| {
        let item = item.map(|chunk| {
            chunk.and_then(|(stream, chunk)| cut(&mut seen, from, limit, stream, chunk))
        });
        async move { item.transpose() }
    });
    Ok(replay.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_through_labels() {
        for ending in [Ending::Cancelled, Ending::TimedOut, Ending::OutputLimit] {
            let written = verdict_suffix(ending).unwrap().to_owned();
            let labels = HashMap::from([(LABEL_VERDICT.to_owned(), written)]);
            assert_eq!(verdict_of(&labels), Some(ending));
        }
        assert_eq!(verdict_of(&HashMap::new()), None);
        let forged = HashMap::from([(LABEL_VERDICT.to_owned(), "exited".to_owned())]);
        assert_eq!(verdict_of(&forged), None);
    }
}

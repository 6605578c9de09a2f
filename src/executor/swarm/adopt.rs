//! A restarted server takes back the kept Swarm tasks of the server it
//! replaces, by the same rule as local containers (`super::super::adopt`):
//! a service whose owner process is gone is adopted. A task that still
//! runs (or has not started yet) is supervised again from its log, its
//! deadline counted from when it started running; one that ended while no
//! server watched becomes a result, with its true exit code and signal.

use bollard::models::{Service, Task, TaskState};
use bollard::query_parameters::ListServicesOptions;
use bollard::Docker;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::super::adopt::Adopted;
use super::super::cleanup::{label_filter, Liveness, Owner};
use super::super::cleanup::{LABEL_ID, LABEL_SCOPE};
use super::super::engine::engine_error;
use super::super::kept::{parse_rfc3339, tag_of, LABEL_TIMEOUT_MS};
use super::super::supervise::{ended, killed};
use super::kept::verdict_of;
use super::schedule::{exit_code, is_terminal, reason, state, task_of};
use crate::task::{Ending, Outcome, TaskError};

/// The kept tasks in `scope` whose server is gone, by their services.
pub(crate) async fn adoptable(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
) -> Result<Vec<Adopted>, TaskError> {
    let mut adopted = Vec::new();
    for service in orphans(docker, me, scope).await? {
        let service_id = service.id.clone().unwrap_or_default();
        // One service going away meanwhile must not cost the others.
        let task = match task_of(docker, &service_id).await {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(service = %service_id, error = %e, "could not read a kept task's state; not adopting it");
                continue;
            }
        };
        if let Some(found) = adopt(&service, task.as_ref()) {
            adopted.push(found);
        }
    }
    Ok(adopted)
}

/// This scope's kept tasks' services whose server is gone.
async fn orphans(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
) -> Result<Vec<Service>, TaskError> {
    let mut filters = label_filter(None);
    filters
        .entry("label".to_owned())
        .or_default()
        .push(LABEL_ID.to_owned());
    let options = ListServicesOptions {
        filters: Some(filters),
        ..ListServicesOptions::default()
    };
    let services = docker
        .list_services(Some(options))
        .await
        .map_err(|e| engine_error("listing kept tasks' services", &e))?;
    Ok(services
        .into_iter()
        .filter(|s| {
            let labels = labels_of(s);
            me.judge(&labels) == Liveness::Gone
                && labels.get(LABEL_SCOPE).map(String::as_str) == scope
        })
        .collect())
}

fn labels_of(service: &Service) -> HashMap<String, String> {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.labels.clone()).unwrap_or_default()
}

/// The task of `service` (its last `task`, if the swarm made one), running
/// or ended.
fn adopt(service: &Service, task: Option<&Task>) -> Option<Adopted> {
    let labels = labels_of(service);
    let tag = tag_of(&labels)?;
    let timeout = labels
        .get(LABEL_TIMEOUT_MS)
        .and_then(|t| t.parse().ok())
        .map_or(Duration::MAX, Duration::from_millis);
    let container = service
        .spec
        .as_ref()
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.container_spec.clone())
        .unwrap_or_default();
    let created = service
        .created_at
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or_else(SystemTime::now);
    let times = task.map(times_of).unwrap_or_default();
    let now = SystemTime::now();
    let running_for = times.running_since.map_or(Duration::ZERO, |t| {
        now.duration_since(t).unwrap_or_default()
    });
    let ended = task.and_then(|task| outcome_of(task, &labels, timeout, &times));
    Some(Adopted {
        tag,
        image: container.image.unwrap_or_default(),
        command: container.args.unwrap_or_default(),
        created,
        ended,
        container: service.id.clone().unwrap_or_default(),
        timeout,
        running_for,
        warm: false,
    })
}

/// What the swarm tells of a task's times.
#[derive(Debug, Default)]
struct Times {
    /// When it was made (before it was placed and its container started).
    created: Option<SystemTime>,
    /// When it went running, while it still runs.
    running_since: Option<SystemTime>,
    /// When it ended.
    ended: Option<SystemTime>,
}

fn times_of(task: &Task) -> Times {
    let changed = task
        .status
        .as_ref()
        .and_then(|s| s.timestamp.as_deref())
        .and_then(parse_rfc3339);
    let created = task.created_at.as_deref().and_then(parse_rfc3339);
    match state(task) {
        Some(TaskState::RUNNING) => Times {
            created,
            running_since: changed,
            ended: None,
        },
        s if is_terminal(s) => Times {
            created,
            running_since: None,
            ended: changed,
        },
        _ => Times {
            created,
            ..Times::default()
        },
    }
}

/// The result of a task that ended while no server watched, or `None`
/// while it runs (or when it ended without running: a server supervising
/// it again finds out why). Swarm keeps no start time of an ended task: its
/// duration counts from the task's creation, which is up to its scheduling
/// and start time (about a second) earlier.
fn outcome_of(
    task: &Task,
    labels: &HashMap<String, String>,
    timeout: Duration,
    times: &Times,
) -> Option<Outcome> {
    if !is_terminal(state(task)) {
        return None;
    }
    let ran = match (times.created, times.ended) {
        (Some(created), Some(ended)) => ended.duration_since(created).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    if let Some(verdict) = verdict_of(labels) {
        return Some(killed(verdict, ran));
    }
    let code = exit_code(task)?;
    // It ran past its deadline while no server watched: the server would
    // have ended it then.
    if ran > timeout {
        return Some(killed(Ending::TimedOut, timeout));
    }
    // As for a task a server watched: Swarm says OOM only in its words.
    let oom_killed = reason(task).to_lowercase().contains("oom");
    Some(ended(code, oom_killed, ran))
}

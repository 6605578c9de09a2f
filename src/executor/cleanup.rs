//! Labels that name who owns a container, removal in every ending, and the
//! start-up sweep of containers that a dead server left behind.
//!
//! # Who owns a container, and when is the owner gone?
//!
//! Every container gets `tcp-task.managed=true`, `tcp-task.instance=<id>`,
//! `tcp-task.task=<n>`, and the owner process's identity:
//! `tcp-task.host` (the host name), `tcp-task.pid` and `tcp-task.pid-start`
//! (the process start time in clock ticks since boot, from
//! `/proc/<pid>/stat`, which tells a live owner from a recycled pid).
//!
//! A managed container is an orphan, and [`reap_orphans`] removes it, when
//! its owner is not this executor and, on the same host, no process with
//! that pid and start time is alive. A container whose owner is on another
//! host (an engine shared through `DOCKER_HOST`) is never touched: from here
//! nobody can tell whether that server is alive. A server that runs in a
//! container should therefore keep a stable host name.

use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::{engine_error, status_code};
use crate::task::TaskError;

pub const LABEL_MANAGED: &str = "tcp-task.managed";
/// The task id of a kept task's container.
pub const LABEL_ID: &str = "tcp-task.id";
/// Which servers may take a container over (`[executor] scope`).
pub const LABEL_SCOPE: &str = "tcp-task.scope";
pub const LABEL_INSTANCE: &str = "tcp-task.instance";
pub const LABEL_TASK: &str = "tcp-task.task";
pub const LABEL_HOST: &str = "tcp-task.host";
pub const LABEL_PID: &str = "tcp-task.pid";
pub const LABEL_PID_START: &str = "tcp-task.pid-start";

/// The server process (and executor) that owns a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub pid_start: Option<u64>,
}

/// Whether a container's owner still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// This executor.
    Ours,
    /// Another live process on this host.
    Alive,
    /// The owner process is gone: the container is an orphan.
    Gone,
    /// Another host, or labels that name no owner: left alone.
    Unknown,
}

impl Owner {
    /// This process, under `instance` or a generated id that is unique per
    /// executor (several executors may share a process, as tests do).
    pub fn this_process(instance: Option<String>) -> Owner {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let host = host_name();
        let pid = std::process::id();
        let pid_start = process_start(pid);
        let instance = instance.unwrap_or_else(|| {
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            format!("{host}-{pid}-{}-{n}", pid_start.unwrap_or(0))
        });
        Owner {
            instance,
            host,
            pid,
            pid_start,
        }
    }

    pub fn labels(&self) -> Vec<(String, String)> {
        let mut labels = vec![
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_INSTANCE.to_owned(), self.instance.clone()),
            (LABEL_HOST.to_owned(), self.host.clone()),
            (LABEL_PID.to_owned(), self.pid.to_string()),
        ];
        if let Some(start) = self.pid_start {
            labels.push((LABEL_PID_START.to_owned(), start.to_string()));
        }
        labels
    }

    fn from_labels(labels: &HashMap<String, String>) -> Option<Owner> {
        Some(Owner {
            instance: labels.get(LABEL_INSTANCE)?.clone(),
            host: labels.get(LABEL_HOST)?.clone(),
            pid: labels.get(LABEL_PID)?.parse().ok()?,
            pid_start: labels.get(LABEL_PID_START).and_then(|s| s.parse().ok()),
        })
    }

    /// Whether the owner named by a container's `labels` is alive, seen
    /// from `self`.
    pub fn judge(&self, labels: &HashMap<String, String>) -> Liveness {
        let Some(owner) = Owner::from_labels(labels) else {
            return Liveness::Unknown;
        };
        if owner == *self {
            return Liveness::Ours;
        }
        if owner.host != self.host {
            return Liveness::Unknown;
        }
        match (process_start(owner.pid), owner.pid_start) {
            (None, _) => Liveness::Gone,
            (Some(now), Some(then)) if now != then => Liveness::Gone,
            // A live process with that pid; without a recorded start time we
            // cannot tell it from a recycled pid, so assume it is the owner.
            _ => Liveness::Alive,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Field 3, the state: a zombie (killed, not yet reaped) is not alive.
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Filters for the containers this server manages, optionally one instance.
pub fn label_filter(instance: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{LABEL_MANAGED}=true")];
    if let Some(instance) = instance {
        labels.push(format!("{LABEL_INSTANCE}={instance}"));
    }
    HashMap::from([("label".to_owned(), labels)])
}

async fn managed_containers(
    docker: &Docker,
    instance: Option<&str>,
) -> Result<Vec<ContainerSummary>, TaskError> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(label_filter(instance)),
        ..ListContainersOptions::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .map_err(|e| engine_error("listing containers", &e))
}

/// Force-removes a container (killing it if it runs). A container that is
/// already gone, or being removed, counts as removed.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<(), TaskError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(engine_error("removing the container", &e)),
    }
}

/// Removes the containers whose owner is gone (see the module docs).
/// Returns how many were removed.
/// Only containers of `scope` are touched: another scope's belong to a
/// server that may come back for them. Kept tasks' containers (labelled,
/// or the warm ones in `adopted`) are adopted, not reaped (see
/// `super::adopt`).
pub async fn reap_orphans(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
    adopted: &[String],
) -> Result<usize, TaskError> {
    let mut removed = 0;
    for container in managed_containers(docker, None).await? {
        let labels = container.labels.unwrap_or_default();
        let Some(id) = container.id else { continue };
        let other_scope = labels.get(LABEL_SCOPE).map(String::as_str) != scope;
        if other_scope || labels.contains_key(LABEL_ID) || adopted.contains(&id) {
            continue;
        }
        if me.judge(&labels) == Liveness::Gone {
            tracing::info!(container = %id, "removing a container left by a server that is gone");
            remove_container(docker, &id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes every container of `instance` but its kept tasks (left for
/// the next server): the safety net at shutdown.
pub async fn remove_instance(docker: &Docker, instance: &str) -> Result<usize, TaskError> {
    let containers = managed_containers(docker, Some(instance)).await?;
    let mut removed = 0;
    let not_kept = containers
        .into_iter()
        .filter(|c| !c.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_ID)));
    for id in not_kept.filter_map(|c| c.id) {
        remove_container(docker, &id).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Owns a created container until it is removed. If the task's future is
/// dropped mid-way (the server aborted it), `Drop` still removes the
/// container, from a spawned task.
#[derive(Debug)]
pub(crate) struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl ContainerGuard {
    pub(crate) fn new(docker: Docker, id: String) -> ContainerGuard {
        ContainerGuard {
            docker,
            id: Some(id),
        }
    }

    pub(crate) fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Disarms the guard: the container stays. Returns its id.
    pub(crate) fn keep(mut self) -> String {
        self.id.take().unwrap_or_default()
    }

    pub(crate) async fn remove(mut self) -> Result<(), TaskError> {
        match self.id.take() {
            Some(id) => remove_container(&self.docker, &id).await,
            None => Ok(()),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let docker = self.docker.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = remove_container(&docker, &id).await {
                        tracing::warn!(container = %id, error = %e, "could not remove container");
                    }
                });
            }
            Err(_) => tracing::warn!(
                container = %id,
                "no runtime to remove the container; the next start-up sweep will"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_of(owner: &Owner) -> HashMap<String, String> {
        owner.labels().into_iter().collect()
    }

    #[test]
    fn this_process_is_ours_and_distinct_executors_differ() {
        let me = Owner::this_process(None);
        let sibling = Owner::this_process(None);
        assert_ne!(me.instance, sibling.instance);
        assert_eq!(me.judge(&labels_of(&me)), Liveness::Ours);
        // A sibling executor in this live process is alive, not an orphan.
        assert_eq!(me.judge(&labels_of(&sibling)), Liveness::Alive);
    }

    #[test]
    fn dead_pids_and_recycled_pids_are_gone_other_hosts_unknown() {
        let me = Owner::this_process(None);
        let dead = Owner {
            pid: u32::MAX - 1,
            ..Owner::this_process(None)
        };
        assert_eq!(me.judge(&labels_of(&dead)), Liveness::Gone);
        let recycled = Owner {
            pid_start: me.pid_start.map(|s| s + 1),
            ..Owner::this_process(None)
        };
        assert_eq!(me.judge(&labels_of(&recycled)), Liveness::Gone);
        let elsewhere = Owner {
            host: "another-host".into(),
            pid: u32::MAX - 1,
            ..Owner::this_process(None)
        };
        assert_eq!(me.judge(&labels_of(&elsewhere)), Liveness::Unknown);
        assert_eq!(me.judge(&HashMap::new()), Liveness::Unknown);
    }
}

//! This server's services and networks, found by their labels: removed at
//! shutdown, and those of a server that is gone (same scope, same rule as
//! for containers in `super::super::cleanup`) removed at start-up.
//!
//! Kept tasks' services (labelled with a task id) and their networks are
//! left alone by both: a restarted server adopts them (`super::adopt`),
//! as it adopts local kept containers.

use bollard::query_parameters::ListServicesOptions;
use bollard::Docker;
use std::collections::{HashMap, HashSet};

use super::super::cleanup::LABEL_SCOPE;
use super::super::cleanup::{label_filter, Liveness, Owner};
use super::super::engine::{engine_error, status_code};
use super::super::kept::tag_of;
use super::network;
use crate::task::TaskError;

/// Removes service `id`. One that is gone already counts as removed.
pub(crate) async fn remove_service(docker: &Docker, id: &str) -> Result<(), TaskError> {
    match docker.delete_service(id).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(engine_error("removing the task's service", &e)),
    }
}

/// The managed services (of `instance`, or all): ids, labels and the
/// network each is on.
pub(crate) async fn services(
    docker: &Docker,
    instance: Option<&str>,
) -> Result<Vec<(String, HashMap<String, String>, Option<String>)>, TaskError> {
    let options = ListServicesOptions {
        filters: Some(label_filter(instance)),
        ..ListServicesOptions::default()
    };
    let services = docker
        .list_services(Some(options))
        .await
        .map_err(|e| engine_error("listing the swarm's services", &e))?;
    Ok(services
        .into_iter()
        .filter_map(|s| {
            let network = Some(super::kept::objects_of(&s).network).filter(|n| !n.is_empty());
            let labels = s.spec.and_then(|spec| spec.labels).unwrap_or_default();
            Some((s.id?, labels, network))
        })
        .collect())
}

/// Whether `labels` are a kept task's (a service or its network).
fn is_kept(labels: &HashMap<String, String>) -> bool {
    tag_of(labels).is_some()
}

/// Removes the services, then the networks, whose owner is gone and whose
/// scope is `scope`, but kept tasks' services (adopted before this runs)
/// and the networks such services are on.
pub(crate) async fn reap(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
) -> Result<usize, TaskError> {
    let orphan = |labels: &HashMap<String, String>| {
        labels.get(LABEL_SCOPE).map(String::as_str) == scope && me.judge(labels) == Liveness::Gone
    };
    let mut removed = 0;
    let mut kept_networks = HashSet::new();
    for (id, labels, network) in services(docker, None).await? {
        if is_kept(&labels) {
            kept_networks.extend(network);
        } else if orphan(&labels) {
            tracing::info!(service = %id, "removing a service left by a server that is gone");
            remove_service(docker, &id).await?;
            removed += 1;
        }
    }
    for (id, labels) in network::list(docker, label_filter(None)).await? {
        if orphan(&labels) && !kept_networks.contains(&id) {
            network::remove(docker, &id).await?;
        }
    }
    Ok(removed)
}

/// Removes every service and network of `instance` but its kept tasks'
/// (left for the next server, as local kept containers are).
pub(crate) async fn remove_instance(docker: &Docker, instance: &str) -> Result<usize, TaskError> {
    let services = services(docker, Some(instance)).await?;
    let mut removed = 0;
    for (id, labels, _) in &services {
        if !is_kept(labels) {
            remove_service(docker, id).await?;
            removed += 1;
        }
    }
    for (id, labels) in network::list(docker, label_filter(Some(instance))).await? {
        if !is_kept(&labels) {
            network::remove(docker, &id).await?;
        }
    }
    Ok(removed)
}

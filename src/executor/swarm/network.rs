//! A task's own network: an `--internal` overlay that nothing else joins.
//!
//! Swarm cannot give a service `network none` (it is refused), and a
//! service with no network at all lands on the node's default bridge, with
//! a route out. On an internal overlay of its own a task has an address on
//! a subnet where no other container is and no default route: it can reach
//! neither the outside nor another task. It costs a network create and
//! remove per task (docs/SECURITY.md weighs it).

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};
use bollard::Docker;
use std::collections::HashMap;
use std::time::Duration;

use super::super::engine::{engine_error, status_code};
use crate::task::TaskError;

/// How long a network's removal is retried while the task's container
/// still leaves it (its service was just removed).
const REMOVE_PATIENCE: Duration = Duration::from_secs(30);
const REMOVE_RETRY: Duration = Duration::from_millis(200);

/// Creates the internal overlay `name`, labelled `labels`; gives its id.
pub(crate) async fn create(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<String, TaskError> {
    let request = NetworkCreateRequest {
        name: name.to_owned(),
        driver: Some("overlay".to_owned()),
        internal: Some(true),
        attachable: Some(false),
        labels: Some(labels),
        ..NetworkCreateRequest::default()
    };
    let created = docker
        .create_network(request)
        .await
        .map_err(|e| engine_error("creating the task's network", &e))?;
    Ok(created.id)
}

/// Removes network `id`, waiting while a container still leaves it, and
/// until it is gone: the manager only marks a network whose tasks it has
/// not yet let go of, and deletes it a moment later. A network that is
/// gone already counts as removed.
pub(crate) async fn remove(docker: &Docker, id: &str) -> Result<(), TaskError> {
    let deadline = tokio::time::Instant::now() + REMOVE_PATIENCE;
    loop {
        let removed = match docker.remove_network(id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        };
        let gone = || async {
            let options = InspectNetworkOptions::default();
            matches!(docker.inspect_network(id, Some(options)).await, Err(e) if status_code(&e) == Some(404))
        };
        match removed {
            Ok(()) if gone().await => return Ok(()),
            Ok(()) if tokio::time::Instant::now() >= deadline => {
                return Err(TaskError::new(
                    crate::task::ErrorKind::Engine,
                    format!(
                    "the task's network {id} was still there {REMOVE_PATIENCE:?} after its removal"
                ),
                ))
            }
            Ok(()) => tokio::time::sleep(REMOVE_RETRY).await,
            Err(e) if status_code(&e) == Some(404) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(engine_error("removing the task's network", &e))
            }
            Err(_) => tokio::time::sleep(REMOVE_RETRY).await,
        }
    }
}

/// The ids and labels of the networks whose labels match `filter`.
pub(crate) async fn list(
    docker: &Docker,
    filter: HashMap<String, Vec<String>>,
) -> Result<Vec<(String, HashMap<String, String>)>, TaskError> {
    let options = ListNetworksOptions {
        filters: Some(filter),
    };
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| engine_error("listing networks", &e))?;
    Ok(networks
        .into_iter()
        .filter_map(|n| Some((n.id?, n.labels.unwrap_or_default())))
        .collect())
}

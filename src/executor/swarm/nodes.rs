//! The swarm's nodes: their host names (for progress events, cached) and
//! what `tcp-task status` shows of them.

use bollard::models::{Node, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions};
use bollard::Docker;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::super::engine::engine_error;
use super::super::stats::NodeStats;
use crate::task::TaskError;

/// Node ids to host names, asked of the manager once per node.
#[derive(Debug, Default)]
pub(crate) struct NodeNames(Mutex<HashMap<String, String>>);

impl NodeNames {
    pub async fn name(&self, docker: &Docker, id: &str) -> Option<String> {
        if let Some(name) = self.0.lock().unwrap().get(id) {
            return Some(name.clone());
        }
        let node = docker.inspect_node(id).await.ok()?;
        let name = host_name(&node)?;
        self.0.lock().unwrap().insert(id.to_owned(), name.clone());
        Some(name)
    }
}

fn host_name(node: &Node) -> Option<String> {
    node.description.as_ref()?.hostname.clone()
}

/// Every node, with the running tasks of `services` (this server's)
/// counted on it.
pub(crate) async fn list(
    docker: &Docker,
    services: &HashSet<String>,
) -> Result<Vec<NodeStats>, TaskError> {
    let nodes = docker
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| engine_error("listing the swarm's nodes", &e))?;
    let filters = HashMap::from([("desired-state".to_owned(), vec!["running".to_owned()])]);
    let tasks = docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| engine_error("listing the swarm's tasks", &e))?;
    let mut stats: Vec<NodeStats> = nodes
        .iter()
        .map(|node| {
            let id = node.id.clone().unwrap_or_default();
            let resources = node.description.as_ref().and_then(|d| d.resources.clone());
            let spec = node.spec.clone().unwrap_or_default();
            let running = tasks.iter().filter(|t| {
                t.node_id.as_deref() == Some(id.as_str())
                    && t.service_id.as_ref().is_some_and(|s| services.contains(s))
                    && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
            });
            NodeStats {
                name: host_name(node).unwrap_or(id.clone()),
                state: node
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .map_or("unknown".to_owned(), |s| s.to_string()),
                availability: spec.availability.map_or(String::new(), |a| a.to_string()),
                manager: node.manager_status.is_some(),
                nano_cpus: resources
                    .as_ref()
                    .and_then(|r| r.nano_cpus)
                    .map_or(0, |n| n.max(0) as u64),
                memory_bytes: resources
                    .and_then(|r| r.memory_bytes)
                    .map_or(0, |n| n.max(0) as u64),
                tasks: running.count() as u64,
            }
        })
        .collect();
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stats)
}

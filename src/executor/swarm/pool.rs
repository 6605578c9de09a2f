//! Internal networks made ahead of time, each lent to one task at a time.
//!
//! A task's own `--internal` overlay network is its isolation on a swarm
//! (`super::network`), and making one is part of what a task waits for.
//! The pool holds `network_pool` of them, free or lent: a task takes a
//! free one, and gets a new one of its own (removed after it) when none
//! is free. A network comes back only when the task
//! that had it has ended and its service is removed, so no two tasks are
//! ever on one network at once; one whose task still ran when its service
//! was removed (a cancel) is removed instead. Pooled networks carry the server's labels (not a
//! task's): the server removes them when it stops, and a restarted one
//! reaps them with the rest of what a gone server left.

use bollard::Docker;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

use super::network;
use super::schedule::{exit_code, is_terminal, state, task_of};
use crate::task::TaskError;

/// On a pooled network: it belongs to the server's pool, not to a task.
pub const LABEL_NETWORK_POOL: &str = "tcp-task.network-pool";

#[derive(Debug)]
pub(crate) struct NetworkPool {
    docker: Docker,
    /// The server's labels, and the pool's.
    labels: HashMap<String, String>,
    size: usize,
    state: Mutex<PoolState>,
    making: TaskTracker,
}

#[derive(Debug, Default)]
struct PoolState {
    free: Vec<String>,
    /// Every network the pool made and has not removed, lent or free.
    ours: HashSet<String>,
    being_made: usize,
    closed: bool,
}

impl NetworkPool {
    pub fn new(docker: Docker, mut labels: HashMap<String, String>, size: usize) -> NetworkPool {
        labels.insert(LABEL_NETWORK_POOL.to_owned(), "true".to_owned());
        NetworkPool {
            docker,
            labels,
            size,
            state: Mutex::default(),
            making: TaskTracker::new(),
        }
    }

    /// A free network, if one is ready.
    pub fn take(self: &Arc<Self>) -> Option<String> {
        let taken = self.state.lock().unwrap().free.pop();
        // The pool may not be full yet (the first tasks, a failed make).
        self.fill();
        taken
    }

    /// Whether `network` is one of the pool's.
    pub fn owns(&self, network: &str) -> bool {
        self.state.lock().unwrap().ours.contains(network)
    }

    /// Makes networks in the background until the pool holds `size`,
    /// free, lent or being made.
    pub fn fill(self: &Arc<Self>) {
        let wanted = {
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return;
            }
            let wanted = self
                .size
                .saturating_sub(state.free.len() + state.being_made);
            state.being_made += wanted;
            wanted
        };
        for _ in 0..wanted {
            let pool = self.clone();
            self.making.spawn(async move {
                let made = pool.make().await;
                let mut state = pool.state.lock().unwrap();
                state.being_made -= 1;
                match made {
                    Ok(id) => {
                        state.ours.insert(id.clone());
                        state.free.push(id);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not make a network for the pool"),
                }
            });
        }
    }

    async fn make(&self) -> Result<String, TaskError> {
        let name = format!("tcp-task-pool-{}", random_suffix());
        network::create(&self.docker, &name, self.labels.clone()).await
    }

    /// `network`'s task is over and its service removed: the network is
    /// free again if the task had `ended` (its container stopped), else
    /// it is removed (and another made), as it is when the pool is closed.
    pub async fn give_back(self: &Arc<Self>, network: &str, ended: bool) {
        {
            let mut state = self.state.lock().unwrap();
            if ended && !state.closed {
                state.free.push(network.to_owned());
                return;
            }
            state.ours.remove(network);
        }
        if let Err(e) = network::remove(&self.docker, network).await {
            tracing::error!(error = %e, %network, "a pooled network could not be removed");
        }
        self.fill();
    }

    /// Stops filling and waits for the networks being made; the server's
    /// clean-up then removes them with the rest.
    pub async fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.making.close();
        self.making.wait().await;
    }
}

/// Whether service `service`'s task has ended (its container stopped), or
/// has none. Asked before the service is removed: a network whose task
/// still runs (a task being cancelled) is removed rather than lent again.
pub(crate) async fn task_ended(docker: &Docker, service: &str) -> bool {
    match task_of(docker, service).await {
        Ok(None) => true,
        Ok(Some(task)) => {
            is_terminal(state(&task)) && (exit_code(&task).is_some() || !has_container(&task))
        }
        Err(_) => false,
    }
}

fn has_container(task: &bollard::models::Task) -> bool {
    let status = task.status.as_ref();
    let container = status.and_then(|s| s.container_status.as_ref());
    container
        .and_then(|c| c.container_id.as_ref())
        .is_some_and(|id| !id.is_empty())
}

/// A name's random part (not a secret).
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = (now.as_nanos() as u64).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

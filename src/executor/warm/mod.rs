//! The warm runtime: tasks on containers started ahead of time, so a task
//! starts in milliseconds instead of paying for a container start.
//!
//! - [`pool`]: the pools per key, their budget, refills and cool-down;
//! - [`container`]: creating a warm container (agent uploaded, attached,
//!   started) and reading the agent's frames;
//! - [`process`]: one task on a warm container, as a
//!   [`crate::executor::process::Process`];
//! - [`key`]: what a task must match to use a pool;
//! - [`log`]: a kept task read back from its warm container's log;
//! - `proto`: the agent's wire format, shared with the agent's source.
//!
//! docs/WARM.md describes the design for operators.

mod container;
mod key;
mod log;
mod pool;
mod process;
#[path = "../../../tools/src/agent_proto.rs"]
#[allow(dead_code)]
mod proto;

pub(crate) use container::AgentInput;
pub(crate) use container::Launcher;
pub use container::{AGENT_PATH, LABEL_WARM};
pub(crate) use log::{end_of, last_task, replay as replay_task, LoggedWarmProcess};
pub(crate) use process::{signal_task, WarmProcess};

use bollard::Docker;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::events::EventSink;
use super::plan::Plan;
use super::process::StartError;
use super::stats::PoolStats;
use key::{eligible, PoolKey};
use pool::Pool;
use process::Handed;

/// The executor's warm pools.
#[derive(Debug)]
pub(crate) struct Warm {
    pool: Arc<Pool>,
    docker: Docker,
    enabled: bool,
}

impl Warm {
    pub fn new(launcher: Launcher) -> Warm {
        Warm {
            docker: launcher.docker.clone(),
            enabled: launcher.config.warm.enabled,
            pool: Arc::new(Pool::new(launcher)),
        }
    }

    /// Keeps `count` containers warm for tasks like `plan`.
    pub fn keep(&self, plan: &Plan, count: u32) {
        if self.enabled && count > 0 && eligible(plan) {
            // `eligible` guarantees a command.
            self.pool.keep(PoolKey::of(plan), count, &plan.command[0]);
        }
    }

    /// Starts the task on a warm container of its key. `Ok(None)` when no
    /// live container is ready: run it cold.
    pub async fn start(
        &self,
        plan: &Plan,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Option<WarmProcess>, StartError> {
        if !self.enabled || !eligible(plan) {
            return Ok(None);
        }
        let key = PoolKey::of(plan);
        // A container that turns out dead before the task starts is
        // dropped and the next one tried.
        loop {
            let Some(lease) = self.pool.take(&key, &plan.command[0]) else {
                return Ok(None);
            };
            match process::hand(lease, &self.docker, plan, events, cancel).await {
                Handed::Started(process) => return Ok(Some(*process)),
                Handed::Gone => continue,
                Handed::Failed(error) => return Err(error),
            }
        }
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        self.pool.stats()
    }

    /// Waits for background refills and removals to finish.
    pub async fn settle(&self) {
        self.pool.settle().await
    }

    /// Empties every pool; nothing is refilled afterwards.
    pub async fn drain(&self) {
        self.pool.drain().await
    }
}

//! The warm path: tasks on containers started ahead of time, so a task
//! starts in milliseconds instead of paying for a container start.
//!
//! - [`pool`]: the pools per key, their budget, refills and cool-down;
//! - [`container`]: creating a warm container (agent uploaded, attached,
//!   started) and reading the agent's frames;
//! - [`task`]: one task on a warm container;
//! - [`key`]: what a task must match to use a pool;
//! - `proto`: the agent's wire format, shared with the agent's source.
//!
//! docs/WARM.md describes the design for operators.

mod config;
mod container;
mod key;
mod pool;
#[path = "../../../tools/src/agent_proto.rs"]
#[allow(dead_code)]
mod proto;
mod task;

pub use config::WarmConfig;
pub use container::{AGENT_PATH, LABEL_WARM};

use bollard::Docker;
use std::sync::Arc;

use crate::executor::policy::Plan;
use crate::executor::TaskIo;
use crate::protocol::{Outcome, PoolStatus, TaskError};
pub(crate) use container::Launcher;
use key::{eligible, PoolKey};
use pool::Pool;
use task::WarmEnd;

/// What a warm attempt gives back.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The task ran on a warm container (or could not run at all).
    Ran(Result<Outcome, TaskError>),
    /// No warm container: run it cold, with its channels untouched.
    Cold(TaskIo),
}

/// The executor's warm pools.
#[derive(Debug)]
pub(crate) struct Warm {
    pool: Arc<Pool>,
    docker: Docker,
    output_limit: u64,
    enabled: bool,
}

impl Warm {
    pub fn new(launcher: Launcher) -> Warm {
        Warm {
            docker: launcher.docker.clone(),
            output_limit: launcher.config.output_limit_bytes,
            enabled: launcher.config.warm.enabled,
            pool: Arc::new(Pool::new(launcher)),
        }
    }

    /// Keeps `count` containers warm for a catalog entry's `plan`.
    pub fn keep(&self, plan: &Plan, entry: &str, count: u32, reuse: u32) {
        if self.enabled && count > 0 && eligible(plan) {
            let key = PoolKey::of(plan, Some((entry, reuse)));
            // `eligible` guarantees a command.
            self.pool.keep(key, count, &plan.command[0]);
        }
    }

    /// Runs the task on a warm container of its key, if one is ready.
    /// `entry` is the catalog entry's name and `reuse`, for named tasks.
    pub async fn try_run(&self, plan: &Plan, entry: Option<(&str, u32)>, io: TaskIo) -> Attempt {
        if !self.enabled || !eligible(plan) {
            return Attempt::Cold(io);
        }
        let key = PoolKey::of(plan, entry);
        let mut io = io;
        // A container that turns out dead before the task starts is
        // dropped and the next one tried; none left means cold.
        loop {
            let Some(mut lease) = self.pool.take(&key, &plan.command[0]) else {
                return Attempt::Cold(io);
            };
            let Some(container) = lease.container() else {
                return Attempt::Cold(io);
            };
            let limit = self.output_limit;
            let (end, reusable) = task::run(&self.docker, container, plan, io, limit).await;
            lease.finish(reusable);
            match end {
                WarmEnd::Done(result) => return Attempt::Ran(result),
                WarmEnd::NotStarted(back) => io = back,
            }
        }
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        self.pool.status()
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

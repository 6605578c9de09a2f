//! The warm runtime: tasks on containers started ahead of time, so a task
//! starts in milliseconds instead of paying for a container start.
//!
//! - [`pool`]: the pools per key, their budget, refills and cool-down;
//! - [`container`]: creating a warm container (agent uploaded, started,
//!   its channel opened);
//! - [`channel`]: the agent's channel, its own socket or the attach
//!   stream, which data plane is in use, and the reader of its frames;
//! - [`socket`]: the agent's socket on the host, its directory and the
//!   listener that takes the agent's connection;
//! - [`process`]: one task on a warm container, as a
//!   [`crate::executor::process::Process`];
//! - [`key`]: what a task must match to use a pool;
//! - [`log`]: a kept task read back from its warm container's log;
//! - `proto`: the agent's wire format, shared with the agent's source.
//!
//! docs/WARM.md describes the design for operators.

mod channel;
mod container;
mod key;
mod log;
mod pool;
mod process;
#[path = "../../../tools/src/agent_proto.rs"]
#[allow(dead_code)]
mod proto;
mod socket;

pub(crate) use channel::AgentInput;
pub(crate) use channel::Channels;
pub(crate) use container::Launcher;
pub use container::{AGENT_PATH, LABEL_WARM, RELAY_PATH};
pub(crate) use log::{end_of, last_task, replay as replay_task, LoggedWarmProcess};
pub(crate) use process::{signal_task, WarmProcess, WarmStdin};
pub(crate) use proto::FORWARDED_SIGNALS;
pub use socket::{check_socket_dir, MAX_SOCKET_DIR_LEN, SOCKET_IN_CONTAINER, SUN_PATH_MAX};

use bollard::Docker;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::events::EventSink;
use super::plan::Plan;
use super::process::StartError;
use super::stats::PoolStats;
use key::{eligible, PoolKey};
use pool::{Pool, Take, WAIT_FOR_WARM};
use process::Handed;

/// The executor's warm pools.
#[derive(Debug)]
pub(crate) struct Warm {
    pool: Arc<Pool>,
    docker: Docker,
    enabled: bool,
    channels: Arc<Channels>,
}

impl Warm {
    pub fn new(launcher: Launcher) -> Warm {
        Warm {
            docker: launcher.docker.clone(),
            enabled: launcher.config.warm.enabled,
            channels: launcher.channels.clone(),
            pool: Arc::new(Pool::new(launcher)),
        }
    }

    /// Keeps `count` containers warm for tasks like `plan`.
    pub fn keep(&self, plan: &Plan, count: u32) {
        if self.enabled && count > 0 && eligible(plan) {
            self.pool.keep(PoolKey::of(plan), count, program(plan));
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
            let lease = match self.pool.take(&key, program(plan)) {
                Take::Hit(lease) => lease,
                Take::Miss => return Ok(None),
                Take::Wait(waiter) => tokio::select! {
                    lease = waiter.wait(WAIT_FOR_WARM) => match lease {
                        Some(lease) => lease,
                        None => return Ok(None),
                    },
                    _ = cancel.cancelled() => return Err(StartError::Cancelled),
                },
            };
            match process::hand(lease, &self.docker, plan, events, cancel).await {
                Handed::Started(process) => return Ok(Some(*process)),
                Handed::Gone => continue,
                Handed::Failed(error) => return Err(error),
            }
        }
    }

    /// Starts an HTTP task (`plan.http`) on a container launched for it
    /// now, waiting up to `ready` for its server to listen: the HTTP
    /// task's cold path, when [`Warm::start`] found none ready.
    pub async fn launch_for(
        &self,
        plan: &Plan,
        events: &EventSink,
        cancel: &CancellationToken,
        ready: Duration,
    ) -> Result<WarmProcess, StartError> {
        let key = PoolKey::of(plan);
        let lease = tokio::select! {
            launched = self.pool.launch_now(&key, ready) => launched?,
            _ = cancel.cancelled() => return Err(StartError::Cancelled),
        };
        match process::hand(lease, &self.docker, plan, events, cancel).await {
            Handed::Started(process) => Ok(*process),
            Handed::Failed(error) => Err(error),
            Handed::Gone => Err(StartError::Failed(crate::task::TaskError::new(
                crate::task::ErrorKind::TaskExited,
                "the task's container ended as the task was handed to it; retry",
            ))),
        }
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        self.pool.stats()
    }

    /// The data plane warm containers use now (`socket`, `attach`, and
    /// why).
    pub fn data_plane(&self) -> String {
        match self.enabled {
            true => self.channels.describe(),
            false => "none (warm containers are disabled)".to_owned(),
        }
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

/// The program a pool's new containers read ahead (the agent's
/// `--prefetch`): the task's command, or for an HTTP task the relay.
fn program(plan: &Plan) -> &str {
    match plan.command.first() {
        Some(program) if plan.http.is_none() => program,
        _ => RELAY_PATH,
    }
}

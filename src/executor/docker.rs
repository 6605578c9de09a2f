//! The Docker executor: tasks wait in line for a slot, then run on a warm
//! container when one is ready and on a fresh one otherwise, under the
//! same supervision either way.

use bollard::Docker;
use std::time::Duration;
use tokio_util::task::TaskTracker;

use super::adopt::{self, Adopted, LoggedProcess};
use super::cleanup::{self, Owner};
use super::cold::{Cold, ColdProcess};
use super::config::ExecutorConfig;
use super::kept;
use super::plan::Plan;
use super::process::{Process, StartError};
use super::queue::{Acquired, Slot, Slots, Turn};
use super::stats::{EngineHealth, ExecutorStats};
use super::supervise::{command_error, killed, supervise};
use super::warm::{Launcher, Warm};
use super::{no_such_task, Executor, Replay, TaskIo};
use crate::task::{Ending, ErrorKind, Offsets, Outcome, ProgressEvent, TaskError, TaskId};

/// Runs tasks as containers on a Docker engine.
#[derive(Debug)]
pub struct DockerExecutor {
    cold: Cold,
    warm: Warm,
    slots: Slots,
    /// Processes being finished (containers removed) after their outcome
    /// went out.
    finishing: TaskTracker,
}

impl DockerExecutor {
    /// An executor on `docker` (whose API version should be negotiated
    /// already). Call [`DockerExecutor::reap_orphans`] once at start-up.
    pub fn new(docker: Docker, config: ExecutorConfig) -> DockerExecutor {
        let owner = Owner::this_process(config.instance_id.clone());
        let slots = Slots::new(config.max_concurrent, config.max_queue);
        let warm = Warm::new(Launcher {
            docker: docker.clone(),
            config: config.clone(),
            owner: owner.clone(),
        });
        DockerExecutor {
            cold: Cold::new(docker, config, owner),
            warm,
            slots,
            finishing: TaskTracker::new(),
        }
    }

    /// The id in the `tcp-task.instance` label of this executor's containers.
    pub fn instance_id(&self) -> &str {
        &self.cold.owner.instance
    }

    pub fn owner(&self) -> &Owner {
        &self.cold.owner
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.cold.config
    }

    pub fn docker(&self) -> &Docker {
        &self.cold.docker
    }

    /// Removes containers left behind by server processes that are gone
    /// (the rule is in [`super::cleanup`]). Returns how many.
    pub async fn reap_orphans(&self) -> Result<usize, TaskError> {
        cleanup::reap_orphans(self.docker(), self.owner()).await
    }

    /// Waits until the background work is done: removal of the containers
    /// of tasks that ended, the warm pools' refills and removals. Tests call
    /// it before counting containers.
    pub async fn settle(&self) {
        self.finishing.close();
        self.finishing.wait().await;
        self.finishing.reopen();
        self.warm.settle().await
    }

    /// Empties the warm pools and stops refilling them (the first step of
    /// [`Executor::shutdown`]): when it returns, no warm container is left.
    pub async fn drain_warm(&self) {
        self.warm.drain().await
    }

    async fn run_task(&self, plan: Plan, io: TaskIo) -> Result<Outcome, TaskError> {
        let Some(slot) = self.wait_for_slot(&io).await? else {
            return Ok(killed(Ending::Cancelled, Duration::ZERO));
        };
        let limit = self.config().output_limit_bytes;
        let clock = (plan.timeout, Duration::ZERO);
        let started = match self.warm.start(&plan, &io.events, &io.cancel).await {
            Ok(Some(mut warm)) => {
                let result = supervise(&mut warm, &plan.command, clock, io, limit).await;
                // Back to its pool at once (that is cheap), ready for the
                // next task of its key.
                warm.finish().await;
                return result;
            }
            Ok(None) => self.cold.start(&plan, &io.events, &io.cancel).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(mut cold) => {
                let result = supervise(&mut cold, &plan.command, clock, io, limit).await;
                match &plan.task {
                    // Quick unless the server ended the task: then its
                    // container is stopped and marked before the outcome
                    // goes out, so a discard cannot overtake it.
                    Some(tag) => cold.keep(&tag.id, verdict(&result)).await,
                    None => self.remove_later(cold, slot),
                }
                result
            }
            Err(StartError::Command(failure)) => Err(command_error(&plan.command, failure)),
            Err(StartError::Cancelled) => Ok(killed(Ending::Cancelled, Duration::ZERO)),
            Err(StartError::Failed(error)) => Err(error),
        }
    }

    /// Removes a task's container in the background, so that its outcome
    /// goes out first; the task's slot is held until the removal is done,
    /// so the engine never holds more task containers than
    /// `max_concurrent`.
    fn remove_later(&self, cold: ColdProcess, slot: Slot) {
        self.finishing.spawn(async move {
            cold.finish().await;
            drop(slot);
        });
    }

    /// The container of kept task `task`.
    async fn kept(&self, task: &TaskId) -> Result<kept::KeptContainer, TaskError> {
        kept::find(self.docker(), task)
            .await?
            .ok_or_else(|| no_such_task(task))
    }

    /// Takes a slot, waiting in line (and saying where) while none is free.
    /// `None` when the task was cancelled while waiting.
    async fn wait_for_slot(&self, io: &TaskIo) -> Result<Option<Slot>, TaskError> {
        let mut place = match self.slots.try_acquire() {
            Ok(Acquired::Now(slot)) => return Ok(Some(slot)),
            Ok(Acquired::Queued(place)) => place,
            Err(full) => {
                return Err(TaskError::new(
                    ErrorKind::Busy,
                    format!(
                        "the server is at capacity: {} tasks running and {} waiting, the most it \
                         queues (max_queue); try again later",
                        full.running, full.queued
                    ),
                ))
            }
        };
        let mut position = place.position();
        loop {
            let _ = io.events.progress(ProgressEvent::Queued { position }).await;
            tokio::select! {
                turn = place.next_turn() => match turn {
                    Some(Turn::Granted(slot)) => return Ok(Some(slot)),
                    Some(Turn::Moved(p)) => position = p,
                    None => return Err(TaskError::new(
                        ErrorKind::Internal,
                        "the task queue dropped a waiting task; try again",
                    )),
                },
                _ = io.cancel.cancelled() => return Ok(None),
            }
        }
    }
}

/// The ending the server chose for a task, which its container's own state
/// would not tell.
fn verdict(result: &Result<Outcome, TaskError>) -> Option<Ending> {
    match result {
        Ok(outcome) => match outcome.ending {
            Ending::Cancelled | Ending::TimedOut | Ending::OutputLimit => Some(outcome.ending),
            _ => None,
        },
        Err(_) => None,
    }
}

impl Executor for DockerExecutor {
    async fn run(&self, plan: Plan, io: TaskIo) -> Result<Outcome, TaskError> {
        self.run_task(plan, io).await
    }

    async fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        follow: bool,
    ) -> Result<Replay, TaskError> {
        let container = self.kept(task).await?;
        let limit = self.config().output_limit_bytes;
        Ok(kept::replay(
            self.docker(),
            &container.id,
            from,
            limit,
            follow,
        ))
    }

    async fn signal(&self, task: &TaskId, signal: i32) -> Result<(), TaskError> {
        let container = self.kept(task).await?;
        if !container.running {
            return Err(kept::ended_already());
        }
        kept::signal(self.docker(), &container.id, signal).await
    }

    fn discard(&self, task: &TaskId) {
        let docker = self.docker().clone();
        let task = task.clone();
        self.finishing.spawn(async move {
            let removed = match kept::find(&docker, &task).await {
                Ok(Some(container)) => cleanup::remove_container(&docker, &container.id).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::error!(%task, error = %e, "a kept task's container could not be removed");
            }
        });
    }

    async fn adopt(&self) -> Result<Vec<Adopted>, TaskError> {
        let scope = self.config().scope.as_deref();
        adopt::adoptable(self.docker(), self.owner(), scope).await
    }

    async fn resume(&self, adopted: Adopted, io: TaskIo) -> Result<Outcome, TaskError> {
        let Adopted {
            tag,
            command,
            container,
            timeout,
            running_for,
            ..
        } = adopted;
        let mut process = LoggedProcess::new(self.docker().clone(), container.clone());
        let limit = self.config().output_limit_bytes;
        let result = supervise(&mut process, &command, (timeout, running_for), io, limit).await;
        if let Some(ending) = verdict(&result) {
            kept::stop_with_verdict(self.docker(), &container, &tag.id, ending).await;
        }
        result
    }

    async fn stats(&self) -> ExecutorStats {
        let (running, queued) = self.slots.counts();
        ExecutorStats {
            running: running as u64,
            queued: queued as u64,
            engine: engine_health(self.docker()).await,
            pools: self.warm.stats(),
        }
    }

    fn keep_warm(&self, plan: &Plan, containers: u32) {
        self.warm.keep(plan, containers)
    }

    async fn shutdown(&self) {
        self.finishing.close();
        self.finishing.wait().await;
        self.drain_warm().await;
        match cleanup::remove_instance(self.docker(), self.instance_id()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(removed = n, "containers were still there at shutdown"),
            Err(e) => tracing::error!(error = %e, "could not clean up at shutdown"),
        }
    }
}

async fn engine_health(docker: &Docker) -> EngineHealth {
    match docker.version().await {
        Ok(version) => EngineHealth {
            reachable: true,
            version: version.version,
            api_version: Some(docker.client_version().to_string()),
            error: None,
        },
        Err(e) => EngineHealth {
            reachable: false,
            error: Some(e.to_string()),
            ..EngineHealth::default()
        },
    }
}

//! The Docker executor: tasks wait in line for a slot, then run on a warm
//! container when one is ready and on a fresh one otherwise, under the
//! same supervision either way.

use bollard::Docker;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::adopt::{self, Adopted, LoggedProcess};
use super::cleanup::{self, Owner};
use super::cold::{Cold, ColdProcess};
use super::config::{Backend, EngineOutage, ExecutorConfig};
use super::engine_loss::{engine_back, engine_lost, ENGINE_RETURN_WAIT};
use super::health::EngineCheck;
use super::http::HttpProcess;
use super::kept;
use super::observe::{RunPath, SharedObserver, Unobserved};
use super::plan::Plan;
use super::plan::TaskTag;
use super::process::{Process, StartError};
use super::queue::{Acquired, Slot, Slots, Turn};
use super::stats::ExecutorStats;
use super::supervise::{command_error, killed, supervise};
use super::swarm::Swarm;
use super::tools::Tools;
use super::warm::{
    replay_task, signal_task, AgentInput, Channels, Launcher, LoggedWarmProcess, Warm, WarmProcess,
    FORWARDED_SIGNALS,
};
use super::{no_such_task, EventSink, Executor, Replay, TaskIo};
use crate::task::{Ending, ErrorKind, Offsets, Outcome, ProgressEvent, TaskError, TaskId};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Runs tasks as containers on a Docker engine.
#[derive(Debug)]
pub struct DockerExecutor {
    cold: Cold,
    warm: Warm,
    /// Set on the Swarm backend: every task runs there, none cold or warm.
    swarm: Option<Arc<Swarm>>,
    slots: Slots,
    /// Processes being finished (containers removed) after their outcome
    /// went out.
    finishing: TaskTracker,
    /// Kept tasks on warm containers, which carry no task labels: the
    /// container, and while the task runs here, its agent's input.
    warm_tasks: Mutex<HashMap<TaskId, WarmTask>>,
    /// Tasks that ran on a warm container and left nothing behind (the
    /// container went back to its pool): discarding one asks the engine
    /// nothing. Without this, every such task's discard listed the
    /// engine's containers to look for a kept one, which made dockerd the
    /// busiest process of a warm-reuse run.
    released: Mutex<HashSet<TaskId>>,
    /// Told how each task waited, started and ended (the server's metrics).
    observer: SharedObserver,
    engine_check: EngineCheck,
}

struct WarmTask {
    container: String,
    agent: Option<AgentInput>,
}

impl std::fmt::Debug for WarmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmTask")
            .field("container", &self.container)
            .field("agent", &self.agent.is_some())
            .finish()
    }
}

impl DockerExecutor {
    /// An executor on `docker` (whose API version should be negotiated
    /// already). Call [`DockerExecutor::reap_orphans`] once at start-up.
    pub fn new(docker: Docker, config: ExecutorConfig) -> DockerExecutor {
        let owner = Owner::this_process(config.instance_id.clone());
        let slots = Slots::new(config.max_concurrent, config.max_queue);
        let tools = Tools::new(&config);
        let warm = Warm::new(Launcher {
            docker: docker.clone(),
            config: config.clone(),
            owner: owner.clone(),
            tools: tools.clone(),
            channels: Arc::new(Channels::new(&config.warm)),
        });
        let swarm = (config.backend == Backend::Swarm)
            .then(|| Arc::new(Swarm::new(docker.clone(), config.clone(), owner.clone())));
        DockerExecutor {
            swarm,
            cold: Cold::new(docker, config, owner, tools),
            warm,
            slots,
            finishing: TaskTracker::new(),
            warm_tasks: Mutex::default(),
            released: Mutex::default(),
            observer: Arc::new(Unobserved),
            engine_check: EngineCheck::default(),
        }
    }

    /// Reports every task's queue wait, start and end to `observer` (the
    /// server's metrics, say).
    pub fn with_observer(mut self, observer: SharedObserver) -> DockerExecutor {
        self.observer = observer;
        self
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
    /// Call it after [`Executor::adopt`]: the warm containers of adopted
    /// tasks are not orphans.
    pub async fn reap_orphans(&self) -> Result<usize, TaskError> {
        if let Some(swarm) = &self.swarm {
            return swarm.reap_orphans().await;
        }
        let adopted: Vec<String> = {
            let tasks = self.warm_tasks.lock().unwrap();
            tasks.values().map(|t| t.container.clone()).collect()
        };
        let scope = self.config().scope.as_deref();
        cleanup::reap_orphans(self.docker(), self.owner(), scope, &adopted).await
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

    /// Runs the task and tells the observer how it went. The path that
    /// started it is also recorded in the current span (the server's
    /// per-task span has a `path` field).
    async fn observed(&self, plan: Plan, io: TaskIo) -> Result<Outcome, TaskError> {
        let received = Instant::now();
        let mut path = None;
        let result = self.run_task(plan, io, received, &mut path).await;
        self.observer.task_ended(path, &result);
        result
    }

    fn started(&self, path: RunPath, received: Instant, seen: &mut Option<RunPath>) {
        *seen = Some(path);
        tracing::Span::current().record("path", path.as_str());
        self.observer.task_started(path, received.elapsed());
    }

    async fn run_task(
        &self,
        plan: Plan,
        io: TaskIo,
        received: Instant,
        path: &mut Option<RunPath>,
    ) -> Result<Outcome, TaskError> {
        let Some(slot) = self.wait_for_slot(&io).await? else {
            return Ok(killed(Ending::Cancelled, Duration::ZERO));
        };
        self.observer.queue_wait(received.elapsed());
        if let Some(swarm) = &self.swarm {
            return self
                .run_swarm(swarm, plan, io, slot, (received, path))
                .await;
        }
        if plan.http.is_some() {
            return self.run_http(plan, io, slot, received, path).await;
        }
        let limit = self.config().output_limit_bytes;
        let clock = (plan.timeout, Duration::ZERO);
        let started = match self.warm.start(&plan, &io.events, &io.cancel).await {
            Ok(Some(mut warm)) => {
                self.started(RunPath::Warm, received, path);
                let began = Instant::now();
                let (events, cancel) = (io.events.clone(), io.cancel.clone());
                if let (Some(tag), Some((container, agent))) = (&plan.task, warm.agent()) {
                    let task = WarmTask {
                        container,
                        agent: Some(agent),
                    };
                    self.warm_tasks.lock().unwrap().insert(tag.id.clone(), task);
                }
                let mut result = supervise(&mut warm, &plan.command, clock, io, limit).await;
                if let Some(tag) = &plan.task {
                    // Its channel went with the engine (the attach stream
                    // does; the socket does not): as for a cold task
                    // below, the engine tells the rest once it is back.
                    if engine_lost(self.docker(), &result).await {
                        drop(slot);
                        let io = (events.clone(), cancel);
                        let task = (tag, plan.command.as_slice(), plan.timeout);
                        let after = self.follow_warm_after_engine_loss(&mut warm, task, io, began);
                        if let Some(after) = after.await {
                            result = after;
                        }
                    }
                }
                self.end_warm(warm, plan.task.as_ref(), &result, events.attended())
                    .await;
                return result;
            }
            Ok(None) => self.start_cold(&plan, &io).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(mut cold) => {
                self.started(RunPath::Cold, received, path);
                let began = Instant::now();
                let (events, cancel) = (io.events.clone(), io.cancel.clone());
                let mut result = supervise(&mut cold, &plan.command, clock, io, limit).await;
                match &plan.task {
                    Some(tag) => {
                        if engine_lost(self.docker(), &result).await {
                            // Nothing starts while the engine is away: the
                            // slot goes to new tasks, which then fail at
                            // once with the engine error instead of
                            // queueing behind this wait.
                            drop(slot);
                            let io = (events, cancel);
                            let from = (cold.container_id().to_owned(), cold.relayed());
                            let task = (plan.command.as_slice(), plan.timeout, None);
                            let after = self.follow_after_engine_loss(from, task, io, began);
                            if let Some(after) = after.await {
                                result = after;
                            }
                        }
                        // Quick unless the server ended the task: then its
                        // container is stopped and marked before the
                        // outcome goes out, so a discard cannot overtake it.
                        cold.keep(&tag.id, verdict(&result)).await
                    }
                    None => self.remove_later(cold, slot),
                }
                result
            }
            Err(StartError::Command(failure)) => Err(command_error(&plan.command, failure)),
            Err(StartError::Cancelled) => Ok(killed(Ending::Cancelled, Duration::ZERO)),
            Err(StartError::Failed(error)) => Err(error),
        }
    }

    /// Starts a cold container; with `engine_outage = "hold"`, a start
    /// that fails because the engine does not answer waits for the engine
    /// (holding the task's slot, so the line behind it waits too) and
    /// tries again.
    async fn start_cold(&self, plan: &Plan, io: &TaskIo) -> Result<ColdProcess, StartError> {
        loop {
            let started = self.cold.start(plan, &io.events, &io.cancel).await;
            let error = match &started {
                Err(StartError::Failed(error)) if self.holds_for(error).await => error,
                _ => return started,
            };
            tracing::info!(%error, wait_s = ENGINE_RETURN_WAIT.as_secs(), "the engine does not answer; the task waits for it");
            if !engine_back(self.docker(), &io.cancel, ENGINE_RETURN_WAIT).await {
                return started;
            }
        }
    }

    /// Whether a start that failed with `error` waits for the engine.
    async fn holds_for(&self, error: &TaskError) -> bool {
        self.config().engine_outage == EngineOutage::Hold
            && error.kind == ErrorKind::Engine
            && self.docker().ping().await.is_err()
    }

    /// A task on the swarm: a service of its own, supervised like a local
    /// container. A kept task's service stays for its result (stopped
    /// and marked first when the server ended it, before the outcome goes
    /// out, so that a discard cannot overtake it); any other is removed,
    /// with its network, after the outcome went out, the slot held until
    /// then.
    async fn run_swarm(
        &self,
        swarm: &Swarm,
        plan: Plan,
        io: TaskIo,
        slot: Slot,
        (received, path): (Instant, &mut Option<RunPath>),
    ) -> Result<Outcome, TaskError> {
        let mut process = match swarm.start(&plan, &io.events, &io.cancel).await {
            Ok(process) => process,
            Err(StartError::Command(failure)) => return Err(command_error(&plan.command, failure)),
            Err(StartError::Cancelled) => return Ok(killed(Ending::Cancelled, Duration::ZERO)),
            Err(StartError::Failed(error)) => return Err(error),
        };
        self.started(RunPath::Swarm, received, path);
        let limit = self.config().output_limit_bytes;
        let clock = (plan.timeout, Duration::ZERO);
        let result = supervise(&mut process, &plan.command, clock, io, limit).await;
        if plan.task.is_some() {
            swarm.keep(process, verdict(&result), result.is_err()).await;
            return result;
        }
        self.finishing.spawn(async move {
            process.finish().await;
            drop(slot);
        });
        result
    }

    /// An adopted Swarm task that has not ended: supervised again once it
    /// runs, its deadline counted from when it started running.
    async fn resume_swarm(
        &self,
        swarm: &Swarm,
        adopted: Adopted,
        io: TaskIo,
    ) -> Result<Outcome, TaskError> {
        let mut process = match swarm.resume(&adopted, &io.events, &io.cancel).await {
            Ok(process) => process,
            Err(StartError::Command(failure)) => {
                return Err(command_error(&adopted.command, failure))
            }
            Err(StartError::Cancelled) => return Ok(killed(Ending::Cancelled, Duration::ZERO)),
            Err(StartError::Failed(error)) => return Err(error),
        };
        let limit = self.config().output_limit_bytes;
        let clock = (adopted.timeout, adopted.running_for);
        let result = supervise(&mut process, &adopted.command, clock, io, limit).await;
        swarm.keep(process, verdict(&result), result.is_err()).await;
        result
    }

    /// A warm task started here whose engine went away while it ran, and
    /// its agent's channel with it: followed from its container's log as
    /// [`DockerExecutor::follow_after_engine_loss`] says. Its signals go
    /// through the engine from now on (the agent, the container's PID 1,
    /// passes them on), as an adopted warm task's do.
    async fn follow_warm_after_engine_loss(
        &self,
        warm: &mut WarmProcess,
        (tag, command, timeout): (&TaskTag, &[String], Duration),
        io: (EventSink, CancellationToken),
        began: Instant,
    ) -> Option<Result<Outcome, TaskError>> {
        let container = warm.container_id()?;
        if let Some(task) = self.warm_tasks.lock().unwrap().get_mut(&tag.id) {
            task.agent = None;
        }
        let from = (container, warm.relayed());
        let task = (command, timeout, Some(&tag.id));
        self.follow_after_engine_loss(from, task, io, began).await
    }

    /// A kept task whose engine went away while it ran (engine_loss.rs):
    /// one on a cold or a warm container, started here or adopted
    /// (`warm`: the task's id, to find its part of the agent's frames).
    /// Once the engine is back, the container is followed from its log,
    /// from the output already relayed (`relayed`), under the rest of its
    /// timeout (the task began at `began`) and output limit. `None` when the engine did not come
    /// back in time, or the task was cancelled meanwhile.
    async fn follow_after_engine_loss(
        &self,
        (container, relayed): (String, Offsets),
        (command, timeout, warm): (&[String], Duration, Option<&TaskId>),
        (events, cancel): (EventSink, CancellationToken),
        began: Instant,
    ) -> Option<Result<Outcome, TaskError>> {
        tracing::warn!(
            %container,
            wait_s = ENGINE_RETURN_WAIT.as_secs(),
            "the engine stopped answering under a running task; waiting for it to come back"
        );
        if !engine_back(self.docker(), &cancel, ENGINE_RETURN_WAIT).await {
            return None;
        }
        // No stdin from here: it went with the stream the engine dropped.
        let io = TaskIo {
            events,
            stdin: mpsc::channel(1).1,
            cancel,
        };
        tracing::info!(%container, "the engine is back; following the task from its log");
        let limit = self
            .config()
            .output_limit_bytes
            .saturating_sub(relayed.stdout + relayed.stderr);
        let docker = self.docker().clone();
        let clock = (timeout, began.elapsed());
        let result = match warm {
            // On a warm container, its part of the agent's frames.
            Some(task) => {
                let mut process = LoggedWarmProcess::from(docker, container, task, relayed);
                supervise(&mut process, command, clock, io, limit).await
            }
            None => {
                let mut process = LoggedProcess::from(docker, container, relayed);
                supervise(&mut process, command, clock, io, limit).await
            }
        };
        Some(result)
    }

    /// An HTTP task: on a warm container whose server already listens, or
    /// on one launched now (its cold path: pull, create, start, wait for
    /// the port). The task's timeout bounds the wait and the call together.
    async fn run_http(
        &self,
        plan: Plan,
        io: TaskIo,
        slot: Slot,
        received: Instant,
        path: &mut Option<RunPath>,
    ) -> Result<Outcome, TaskError> {
        let Some(call) = plan.http.clone() else {
            return Err(TaskError::new(
                ErrorKind::Internal,
                "run_http without a call",
            ));
        };
        let began = Instant::now();
        let relay = match self.warm.start(&plan, &io.events, &io.cancel).await {
            Ok(Some(warm)) => {
                self.started(RunPath::Warm, received, path);
                Ok(warm)
            }
            Ok(None) => match self.cold.pull(&plan, &io.events, &io.cancel).await {
                Ok(_) => {
                    let ready = plan.timeout.saturating_sub(began.elapsed());
                    let launched = self
                        .warm
                        .launch_for(&plan, &io.events, &io.cancel, ready)
                        .await;
                    if launched.is_ok() {
                        self.started(RunPath::Cold, received, path);
                    }
                    launched
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let mut process = match relay {
            Ok(relay) => HttpProcess::new(relay, &call),
            Err(StartError::Cancelled) => return Ok(killed(Ending::Cancelled, Duration::ZERO)),
            Err(StartError::Command(failure)) => return Err(command_error(&plan.command, failure)),
            Err(StartError::Failed(error)) => return Err(error),
        };
        let limit = self.config().output_limit_bytes;
        let left = plan.timeout.saturating_sub(began.elapsed());
        let result = supervise(&mut process, &[], (left, Duration::ZERO), io, limit).await;
        process.finish().await;
        drop(slot);
        result
    }

    /// A warm task ended. Its container goes back to its pool at once (that
    /// is cheap), ready for the next task of its key, unless its log must
    /// be kept: for a detached task, or one whose client is away when it
    /// ends. Then it leaves the pool and waits for
    /// [`Executor::discard`], stopped and marked when the server ended it.
    async fn end_warm(
        &self,
        warm: WarmProcess,
        tag: Option<&TaskTag>,
        result: &Result<Outcome, TaskError>,
        attended: bool,
    ) {
        let Some(tag) = tag else {
            return warm.finish().await;
        };
        if !tag.detach && attended {
            self.warm_tasks.lock().unwrap().remove(&tag.id);
            self.released.lock().unwrap().insert(tag.id.clone());
            return warm.finish().await;
        }
        let Some(container) = warm.keep() else { return };
        let task = WarmTask {
            container: container.clone(),
            agent: None,
        };
        self.warm_tasks.lock().unwrap().insert(tag.id.clone(), task);
        if let Some(ending) = verdict(result) {
            kept::stop_with_verdict(self.docker(), &container, &tag.id, ending).await;
        }
    }

    /// The warm container of kept task `task`, if it ran on one.
    fn warm_task(&self, task: &TaskId) -> Option<(String, Option<AgentInput>)> {
        let tasks = self.warm_tasks.lock().unwrap();
        tasks
            .get(task)
            .map(|t| (t.container.clone(), t.agent.clone()))
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
        self.observed(plan, io).await
    }

    async fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        follow: bool,
    ) -> Result<Replay, TaskError> {
        if let Some(swarm) = &self.swarm {
            return swarm.replay(task, from, follow).await;
        }
        let limit = self.config().output_limit_bytes;
        if let Some((container, _)) = self.warm_task(task) {
            let replay = replay_task(self.docker(), &container, task, (from, limit), follow);
            return Ok(replay);
        }
        let container = self.kept(task).await?;
        let replay = kept::replay(self.docker(), &container.id, from, limit, follow);
        Ok(replay)
    }

    async fn signal(&self, task: &TaskId, signal: i32) -> Result<(), TaskError> {
        if let Some(swarm) = &self.swarm {
            return swarm.signal(task, signal).await;
        }
        match self.warm_task(task) {
            Some((_, Some(agent))) => {
                let signal = u8::try_from(signal).unwrap_or(kept::SIGKILL as u8);
                signal_task(&agent, signal).await.map_err(|e| {
                    let message = format!(
                        "could not signal the task through its warm container's agent: {e}"
                    );
                    TaskError::new(ErrorKind::Engine, message)
                })
            }
            // Adopted: its agent no longer listens to a server, but as the
            // container's PID 1 it passes the signals it forwards on to
            // the task; the others only SIGKILL of the container delivers.
            Some((container, None)) => {
                if signal != kept::SIGKILL && !FORWARDED_SIGNALS.contains(&signal) {
                    return Err(TaskError::new(
                        ErrorKind::BadRequest,
                        format!("task {task} was taken over from a server that restarted, and its warm container passes on only signals {:?} and SIGKILL (9); not {signal}", FORWARDED_SIGNALS),
                    ));
                }
                kept::signal(self.docker(), &container, signal).await
            }
            None => {
                let container = self.kept(task).await?;
                if !container.running {
                    return Err(kept::ended_already());
                }
                kept::signal(self.docker(), &container.id, signal).await
            }
        }
    }

    fn discard(&self, task: &TaskId) {
        if self.released.lock().unwrap().remove(task) {
            return;
        }
        let docker = self.docker().clone();
        let warm = self.warm_tasks.lock().unwrap().remove(task);
        let task = task.clone();
        if let Some(swarm) = &self.swarm {
            let swarm = swarm.clone();
            self.finishing.spawn(async move {
                if let Err(e) = swarm.discard(&task).await {
                    tracing::error!(%task, error = %e, "a kept task's service could not be removed");
                }
            });
            return;
        }
        self.finishing.spawn(async move {
            let found = match warm {
                Some(warm) => Ok(Some(warm.container)),
                None => kept::find(&docker, &task).await.map(|c| c.map(|c| c.id)),
            };
            let removed = match found {
                Ok(Some(container)) => cleanup::remove_container(&docker, &container).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::error!(%task, error = %e, "a kept task's container could not be removed");
            }
        });
    }

    async fn adopt(&self) -> Result<Vec<Adopted>, TaskError> {
        if let Some(swarm) = &self.swarm {
            return swarm.adopt().await;
        }
        let scope = self.config().scope.as_deref();
        let adopted = adopt::adoptable(self.docker(), self.owner(), scope).await?;
        let mut tasks = self.warm_tasks.lock().unwrap();
        for task in adopted.iter().filter(|a| a.warm) {
            let warm = WarmTask {
                container: task.container.clone(),
                agent: None,
            };
            tasks.insert(task.tag.id.clone(), warm);
        }
        Ok(adopted)
    }

    async fn resume(&self, adopted: Adopted, io: TaskIo) -> Result<Outcome, TaskError> {
        if let Some(swarm) = &self.swarm {
            return self.resume_swarm(swarm, adopted, io).await;
        }
        let Adopted {
            tag,
            command,
            container,
            timeout,
            running_for,
            warm,
            ..
        } = adopted;
        let limit = self.config().output_limit_bytes;
        let clock = (timeout, running_for);
        let docker = self.docker().clone();
        let began = Instant::now().checked_sub(running_for);
        let began = began.unwrap_or_else(Instant::now);
        let (events, cancel) = (io.events.clone(), io.cancel.clone());
        let (mut result, relayed) = if warm {
            let mut process = LoggedWarmProcess::new(docker, container.clone(), &tag.id);
            let result = supervise(&mut process, &command, clock, io, limit).await;
            (result, process.relayed())
        } else {
            let mut process = LoggedProcess::new(docker, container.clone());
            let result = supervise(&mut process, &command, clock, io, limit).await;
            (result, process.relayed())
        };
        // Its engine went away under it: as for a task started here, its
        // result is the engine's to tell once it is back.
        if engine_lost(self.docker(), &result).await {
            let io = (events, cancel);
            let from = (container.clone(), relayed);
            let task = (command.as_slice(), timeout, warm.then_some(&tag.id));
            if let Some(after) = self.follow_after_engine_loss(from, task, io, began).await {
                result = after;
            }
        }
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
            engine: self.engine_check.health(self.docker()).await,
            pools: self.warm.stats(),
            warm_data_plane: match &self.swarm {
                Some(_) => String::new(),
                None => self.warm.data_plane(),
            },
            nodes: match &self.swarm {
                Some(swarm) => swarm.nodes().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not list the swarm's nodes");
                    Vec::new()
                }),
                None => Vec::new(),
            },
        }
    }

    fn keep_warm(&self, plan: &Plan, containers: u32) {
        // No warm containers on a swarm: every task is a service.
        if self.swarm.is_none() {
            self.warm.keep(plan, containers)
        }
    }

    async fn shutdown(&self) {
        self.finishing.close();
        self.finishing.wait().await;
        self.drain_warm().await;
        if let Some(swarm) = &self.swarm {
            match swarm.remove_instance().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(removed = n, "services were still there at shutdown"),
                Err(e) => tracing::error!(error = %e, "could not clean up the swarm at shutdown"),
            }
        }
        match cleanup::remove_instance(self.docker(), self.instance_id()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(removed = n, "containers were still there at shutdown"),
            Err(e) => tracing::error!(error = %e, "could not clean up at shutdown"),
        }
    }
}

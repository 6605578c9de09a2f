//! The cold path: every task is a fresh container.
//!
//! create → attach → start → stream → wait → inspect → remove, with the
//! policy checked before anything touches the engine and the container
//! removed in every ending (see [`super::cleanup`]).

use bollard::query_parameters::AttachContainerOptions;
use bollard::Docker;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::cleanup::{self, ContainerGuard, Owner};
use super::config::ExecutorConfig;
use super::container::container_body;
use super::engine::{create_error, engine_error, init_exec_error, start_error};
use super::outcome::{ended_outcome, killed_outcome, wait_exit};
use super::policy::{self, Plan};
use super::pull::{credentials_for, ensure_image, ImageRef};
use super::queue::{Admission, Slot, Slots, Turn};
use super::stream::{relay_output, relay_stdin, OutputEnd};
use super::warm::{Attempt, Launcher, Warm};
use super::{Executor, TaskIo};
use crate::catalog::Catalog;
use crate::events::EventSink;
use crate::protocol::{
    CatalogEntryInfo, Ending, EngineStatus, ErrorKind, Outcome, OutputStream, ProgressEvent,
    ServerStatus, TaskError, TaskSpec,
};

/// Runs each task as a new container on a Docker engine.
#[derive(Debug)]
pub struct DockerExecutor {
    docker: Docker,
    config: ExecutorConfig,
    catalog: Catalog,
    owner: Owner,
    slots: Slots,
    next_task: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    warm: Warm,
}

/// How the streaming phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The container closed its output: collect its exit status. Holds
    /// docker-init's exec-failure report, if that was the only output.
    Ended(Option<Bytes>),
    /// We end it: the container is killed and the outcome says why.
    Killed(Ending),
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
            docker,
            config,
            catalog: Catalog::default(),
            owner,
            slots,
            next_task: AtomicU64::new(1),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            warm,
        }
    }

    /// Adds the pre-compiled tasks that `Task::Named` requests can run.
    pub fn with_catalog(mut self, catalog: Catalog) -> DockerExecutor {
        self.catalog = catalog;
        self
    }

    /// The id in the `tcp-task.instance` label of this executor's containers.
    pub fn instance_id(&self) -> &str {
        &self.owner.instance
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Removes containers left behind by server processes that are gone
    /// (the rule is in [`super::cleanup`]). Returns how many.
    pub async fn reap_orphans(&self) -> Result<usize, TaskError> {
        cleanup::reap_orphans(&self.docker, &self.owner).await
    }

    /// Starts the warm pools of the catalog entries with `warm > 0`. Call
    /// once, inside the runtime, after [`DockerExecutor::reap_orphans`].
    pub fn warm_up(&self) {
        for (name, entry) in &self.catalog.entries {
            if entry.warm == 0 {
                continue;
            }
            let spec = TaskSpec::named(name.clone(), Vec::<String>::new());
            match self
                .catalog
                .resolve(spec)
                .and_then(|spec| policy::plan(spec, &self.config.policy))
            {
                Ok(plan) => self.warm.keep(&plan, name, entry.warm, entry.reuse),
                Err(e) => tracing::warn!(task = %name, error = %e, "catalog entry not kept warm"),
            }
        }
    }

    /// Waits until the warm pools' background work (refills, removal of
    /// used containers) is done: tests call it before counting containers.
    pub async fn settle(&self) {
        self.warm.settle().await
    }

    /// Empties the warm pools and stops refilling them (the first step of
    /// [`Executor::shutdown`]): when it returns, no warm container is left.
    pub async fn drain_warm(&self) {
        self.warm.drain().await
    }

    async fn run_task(&self, spec: TaskSpec, io: TaskIo) -> Result<Outcome, TaskError> {
        let entry = self
            .catalog
            .entry_of(&spec)
            .map(|(name, entry)| (name.to_owned(), entry.reuse));
        let spec = self.catalog.resolve(spec)?;
        let plan = policy::plan_for(spec, &self.config.policy, io.client.as_deref())?;
        let Some(slot) = self.admit(&io).await? else {
            return Ok(killed_outcome(Ending::Cancelled, Duration::ZERO));
        };
        let entry = entry.as_ref().map(|(name, reuse)| (name.as_str(), *reuse));
        let io = match self.warm.try_run(&plan, entry, io).await {
            Attempt::Ran(result) => return result,
            Attempt::Cold(io) => io,
        };
        let credentials = credentials_for(
            &ImageRef::parse(&plan.image),
            plan.registry_auth.as_ref(),
            &self.config.registry_auth,
        );
        tokio::select! {
            pulled = ensure_image(&self.docker, &plan.image, credentials, &io.events) => pulled?,
            // Dropping the pull's connection makes the engine abandon it.
            _ = io.cancel.cancelled() => {
                return Ok(killed_outcome(Ending::Cancelled, Duration::ZERO));
            }
        }
        let container = self.create(&plan).await?;
        let result = self.run_container(&container, &plan, io).await;
        if let Err(e) = container.remove().await {
            tracing::error!(error = %e, "a task's container could not be removed");
        }
        drop(slot);
        result
    }

    /// Takes a slot, waiting in line (and saying where) while none is free.
    /// `None` when the task was cancelled while waiting.
    async fn admit(&self, io: &TaskIo) -> Result<Option<Slot>, TaskError> {
        let mut place = match self.slots.try_acquire() {
            Ok(Admission::Now(slot)) => return Ok(Some(slot)),
            Ok(Admission::Queued(place)) => place,
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

    async fn create(&self, plan: &Plan) -> Result<ContainerGuard, TaskError> {
        let task = self.next_task.fetch_add(1, Ordering::Relaxed);
        let body = container_body(&self.config, &self.owner, plan, &task.to_string());
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(|e| create_error(&plan.image, &e))?;
        for warning in &created.warnings {
            tracing::warn!(container = %created.id, %warning, "engine warning on create");
        }
        Ok(ContainerGuard::new(self.docker.clone(), created.id))
    }

    /// attach → start → stream → wait → inspect. The caller removes.
    async fn run_container(
        &self,
        container: &ContainerGuard,
        plan: &Plan,
        io: TaskIo,
    ) -> Result<Outcome, TaskError> {
        let id = container.id();
        let TaskIo {
            events,
            stdin,
            cancel,
            ..
        } = io;
        let short = id.chars().take(12).collect();
        let _ = events
            .progress(ProgressEvent::Created { container: short })
            .await;
        // Attach before start, so not a byte of output is missed.
        let options = AttachContainerOptions {
            stream: true,
            stdin: plan.stdin,
            stdout: true,
            stderr: true,
            ..AttachContainerOptions::default()
        };
        let attach = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(|e| engine_error("attaching to the container", &e))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| start_error(&plan.command, &e))?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + plan.timeout;
        let _ = events.progress(ProgressEvent::Started).await;

        let stdin_relay = async {
            if plan.stdin {
                relay_stdin(stdin, attach.input).await;
            }
        };
        let output = relay_output(attach.output, &events, self.config.output_limit_bytes);
        let stop = supervise(output, stdin_relay, &cancel, deadline).await;
        match stop {
            Stop::Killed(ending) => Ok(killed_outcome(ending, started.elapsed())),
            Stop::Ended(init_failure) => {
                let ended = Ended {
                    cancel: &cancel,
                    deadline,
                    started,
                    init_failure,
                };
                self.collect(id, plan, &events, ended).await
            }
        }
    }

    /// The container closed its output; wait for its exit status (still
    /// honouring cancel and timeout, in case the stream broke early) and read
    /// whether the kernel OOM-killed it.
    async fn collect(
        &self,
        id: &str,
        plan: &Plan,
        events: &EventSink,
        ended: Ended<'_>,
    ) -> Result<Outcome, TaskError> {
        let code = tokio::select! {
            code = wait_exit(&self.docker, id) => code?,
            _ = ended.cancel.cancelled() => {
                return Ok(killed_outcome(Ending::Cancelled, ended.started.elapsed()))
            }
            _ = tokio::time::sleep_until(ended.deadline) => {
                return Ok(killed_outcome(Ending::TimedOut, ended.started.elapsed()))
            }
        };
        let duration = ended.started.elapsed();
        if let Some(report) = ended.init_failure {
            if let Some(error) = init_exec_error(code, &report, &plan.command) {
                return Err(error);
            }
            // Not an exec failure: the bytes were the task's own stderr.
            let _ = events.output(OutputStream::Stderr, report).await;
        }
        let oom_killed = self.oom_killed(id, code).await?;
        Ok(ended_outcome(code, oom_killed, duration))
    }
}

impl DockerExecutor {
    /// Whether the kernel OOM-killed the container's process. The engine
    /// learns of an OOM kill and of the exit by separate events that can
    /// arrive in either order, so a SIGKILL exit (137) without the flag is
    /// asked about again for a short while before it is believed.
    async fn oom_killed(&self, id: &str, code: i64) -> Result<bool, TaskError> {
        const SIGKILL_EXIT: i64 = 128 + 9;
        const RECHECKS: u32 = 10;
        for attempt in 0..=RECHECKS {
            let inspected = self
                .docker
                .inspect_container(id, None)
                .await
                .map_err(|e| engine_error("inspecting the ended container", &e))?;
            let oom = inspected.state.and_then(|s| s.oom_killed).unwrap_or(false);
            if oom || code != SIGKILL_EXIT || attempt == RECHECKS {
                return Ok(oom);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }
}

/// What `collect` needs to know about a container whose output ended.
struct Ended<'a> {
    cancel: &'a CancellationToken,
    deadline: tokio::time::Instant,
    started: Instant,
    init_failure: Option<Bytes>,
}

/// Runs the output relay and the stdin relay until the output ends, the
/// task is cancelled or its deadline passes.
async fn supervise(
    output: impl std::future::Future<Output = OutputEnd>,
    stdin: impl std::future::Future<Output = ()>,
    cancel: &CancellationToken,
    deadline: tokio::time::Instant,
) -> Stop {
    tokio::pin!(output, stdin);
    let mut stdin_done = false;
    loop {
        tokio::select! {
            // Cancel first: a task that is cancelled and ends at once is
            // reported cancelled, as the client asked.
            biased;
            _ = cancel.cancelled() => return Stop::Killed(Ending::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Stop::Killed(Ending::TimedOut),
            end = &mut output => return match end {
                OutputEnd::Eof { init_failure } => Stop::Ended(init_failure),
                OutputEnd::LimitReached => Stop::Killed(Ending::OutputLimit),
                OutputEnd::ClientGone => Stop::Killed(Ending::Cancelled),
                OutputEnd::Broken(e) => {
                    tracing::warn!(error = %e, "attach stream broke; waiting for the exit status");
                    Stop::Ended(None)
                }
            },
            () = &mut stdin, if !stdin_done => stdin_done = true,
        }
    }
}

impl Executor for DockerExecutor {
    async fn run(&self, spec: TaskSpec, io: TaskIo) -> Result<Outcome, TaskError> {
        let result = self.run_task(spec, io).await;
        let counter = if result.is_ok() {
            &self.finished
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn status(&self) -> ServerStatus {
        let (running, queued) = self.slots.counts();
        ServerStatus {
            running: running as u64,
            queued: queued as u64,
            finished: self.finished.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            engine: engine_status(&self.docker).await,
            catalog_size: self.catalog.len() as u64,
            pools: self.warm.status(),
            ..ServerStatus::default()
        }
    }

    fn catalog(&self) -> Vec<CatalogEntryInfo> {
        self.catalog.infos()
    }

    async fn shutdown(&self) {
        self.drain_warm().await;
        match cleanup::remove_instance(&self.docker, &self.owner.instance).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(removed = n, "containers were still there at shutdown"),
            Err(e) => tracing::error!(error = %e, "could not clean up at shutdown"),
        }
    }
}

async fn engine_status(docker: &Docker) -> EngineStatus {
    match docker.version().await {
        Ok(version) => EngineStatus {
            reachable: true,
            version: version.version,
            api_version: Some(docker.client_version().to_string()),
            error: None,
        },
        Err(e) => EngineStatus {
            reachable: false,
            error: Some(e.to_string()),
            ..EngineStatus::default()
        },
    }
}

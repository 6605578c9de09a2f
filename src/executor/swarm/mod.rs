//! The Swarm runtime: every task is a service of one replica on a Docker
//! Swarm, on an internal network of its own; the swarm's scheduler places
//! it on a node. tcp-task schedules nothing itself.
//!
//! network → service → wait for a node (reporting `Scheduling`) → a
//! [`SwarmProcess`] under the same supervision as a local container; its
//! `finish` removes the service and the network. A kept task's (one with a
//! task id) are kept instead until its result is discarded, and a
//! restarted server adopts them (`kept.rs`, `adopt.rs`). Stdin cannot
//! reach a Swarm task, and an HTTP task's port is on its node's loopback:
//! both are refused before anything is created.

mod adopt;
mod cleanup;
mod kept;
mod log;
mod network;
mod nodes;
mod process;
mod schedule;
mod spec;

pub use spec::LABEL_SERVICE;

pub(crate) use process::SwarmProcess;

use bollard::Docker;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::adopt::Adopted;
use super::cleanup::Owner;
use super::config::ExecutorConfig;
use super::engine::engine_error;
use super::events::EventSink;
use super::kept::{ended_already, SIGKILL};
use super::plan::Plan;
use super::process::StartError;
use super::stats::NodeStats;
use super::{no_such_task, Replay};
use crate::task::{Ending, ErrorKind, Offsets, ProgressEvent, TaskError, TaskId};
use nodes::NodeNames;
use schedule::Scheduling;

/// Runs tasks as services on the swarm whose manager `docker` is.
#[derive(Debug)]
pub(crate) struct Swarm {
    docker: Docker,
    config: ExecutorConfig,
    owner: Owner,
    nodes: NodeNames,
}

/// What one task holds on the swarm: its service and its network.
#[derive(Debug)]
pub(crate) struct TaskObjects {
    pub service: String,
    pub network: String,
}

impl TaskObjects {
    /// Removes the service (its task's container goes with it, on its
    /// node), then the network once the container has left it.
    pub async fn remove(&self, docker: &Docker) {
        if let Err(e) = cleanup::remove_service(docker, &self.service).await {
            tracing::error!(error = %e, service = %self.service, "a task's service could not be removed");
        }
        if let Err(e) = network::remove(docker, &self.network).await {
            tracing::error!(error = %e, network = %self.network, "a task's network could not be removed");
        }
    }
}

impl Swarm {
    pub fn new(docker: Docker, config: ExecutorConfig, owner: Owner) -> Swarm {
        Swarm {
            docker,
            config,
            owner,
            nodes: NodeNames::default(),
        }
    }

    /// Creates the task's network and service and waits for the task to
    /// run. A task the swarm cannot take is refused before anything is
    /// created; whatever was created is removed when it does not start.
    pub async fn start(
        &self,
        plan: &Plan,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<SwarmProcess, StartError> {
        refuse_unsupported(plan)?;
        let name = object_name(plan);
        let labels = spec::labels(&self.config, &self.owner, plan);
        let network = network::create(&self.docker, &format!("{name}-net"), labels).await?;
        let spec = spec::service_spec(&self.config, &self.owner, plan, (&name, &network));
        let service = match self.docker.create_service(spec, None).await {
            Ok(created) => created.id.unwrap_or(name),
            Err(e) => {
                let _ = network::remove(&self.docker, &network).await;
                return Err(create_error(&e).into());
            }
        };
        let objects = TaskObjects { service, network };
        match self
            .until_running(objects, &plan.image, events, cancel)
            .await
        {
            Ok(process) => Ok(process),
            Err((objects, e)) => {
                objects.remove(&self.docker).await;
                Err(e)
            }
        }
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.config.swarm.poll_interval_ms.max(10))
    }

    /// Waits for the service's task to run (reporting where it is), and
    /// gives it as a process; gives the objects back when it does not run.
    async fn until_running(
        &self,
        objects: TaskObjects,
        image: &str,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<SwarmProcess, (TaskObjects, StartError)> {
        let scheduling = Scheduling {
            docker: &self.docker,
            service: &objects.service,
            image,
            events,
            poll: self.poll(),
            patience: Duration::from_millis(self.config.swarm.schedule_timeout_ms),
        };
        match scheduling.until_running(cancel, &self.nodes).await {
            Ok((task, node)) => {
                let container = task
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.clone())
                    .unwrap_or_default();
                let short = container.chars().take(12).collect();
                tracing::debug!(node = ?node, container = %short, "swarm task running");
                let _ = events
                    .progress(ProgressEvent::Created { container: short })
                    .await;
                let _ = events.progress(ProgressEvent::Started).await;
                let poll = self.poll();
                Ok(SwarmProcess::new(self.docker.clone(), objects, task, poll))
            }
            Err(e) => Err((objects, e)),
        }
    }

    /// A kept task ended: its service and network stay, for its result,
    /// until [`Swarm::discard`]. Its task is stopped if the server ended
    /// it (or its end is unknown), with the server's verdict written on
    /// its service.
    pub async fn keep(&self, process: SwarmProcess, verdict: Option<Ending>, failed: bool) {
        if verdict.is_some() || failed {
            kept::stop(&self.docker, &process.objects().service, verdict).await;
        }
    }

    /// The service of kept task `task`.
    async fn kept(&self, task: &TaskId) -> Result<TaskObjects, TaskError> {
        let service = kept::find(&self.docker, task).await?;
        service
            .as_ref()
            .map(kept::objects_of)
            .ok_or_else(|| no_such_task(task))
    }

    /// Kept task `task`'s output from its log.
    pub async fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        follow: bool,
    ) -> Result<Replay, TaskError> {
        let objects = self.kept(task).await?;
        let limit = self.config.output_limit_bytes;
        let at = (task, objects.service.as_str());
        kept::replay(&self.docker, at, (from, limit), follow, self.poll()).await
    }

    /// Ends kept task `task`. Swarm has no way to send a task's process a
    /// signal: its service is scaled to no replica, which kills the task
    /// (SIGKILL, the service's stop signal), so only SIGKILL is taken.
    pub async fn signal(&self, task: &TaskId, signal: i32) -> Result<(), TaskError> {
        let objects = self.kept(task).await?;
        if !kept::is_running(&self.docker, &objects.service).await? {
            return Err(ended_already());
        }
        if signal != SIGKILL {
            return Err(TaskError::new(
                ErrorKind::Unsupported,
                format!(
                    "this server runs tasks on a Docker Swarm, which cannot send signal {signal} \
                     to a task, only end it; `tcp-task kill ID` (SIGKILL) does"
                ),
            ));
        }
        kept::stop(&self.docker, &objects.service, None).await;
        Ok(())
    }

    /// Removes what is kept of task `task`: its service, then its network.
    pub async fn discard(&self, task: &TaskId) -> Result<(), TaskError> {
        if let Some(service) = kept::find(&self.docker, task).await? {
            kept::objects_of(&service).remove(&self.docker).await;
        }
        Ok(())
    }

    /// The kept tasks of servers of this scope that are gone.
    pub async fn adopt(&self) -> Result<Vec<Adopted>, TaskError> {
        adopt::adoptable(&self.docker, &self.owner, self.config.scope.as_deref()).await
    }

    /// An adopted task that has not ended, as a process: once it runs
    /// (it may not have started when its server went).
    pub async fn resume(
        &self,
        adopted: &Adopted,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<SwarmProcess, StartError> {
        let service = kept::find(&self.docker, &adopted.tag.id)
            .await?
            .ok_or_else(|| no_such_task(&adopted.tag.id))?;
        let objects = kept::objects_of(&service);
        self.until_running(objects, &adopted.image, events, cancel)
            .await
            .map_err(|(_, e)| e)
    }

    /// The swarm's nodes and this server's running tasks on each.
    pub async fn nodes(&self) -> Result<Vec<NodeStats>, TaskError> {
        let ours: HashSet<String> = cleanup::services(&self.docker, Some(&self.owner.instance))
            .await?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        nodes::list(&self.docker, &ours).await
    }

    /// Removes the services and networks of servers of this scope that are
    /// gone (the same rule as for local containers). Returns how many
    /// services.
    pub async fn reap_orphans(&self) -> Result<usize, TaskError> {
        cleanup::reap(&self.docker, &self.owner, self.config.scope.as_deref()).await
    }

    /// Removes every service and network of this server: the safety net at
    /// shutdown.
    pub async fn remove_instance(&self) -> Result<usize, TaskError> {
        cleanup::remove_instance(&self.docker, &self.owner.instance).await
    }
}

/// What a Swarm task cannot have, refused before anything is created.
fn refuse_unsupported(plan: &Plan) -> Result<(), TaskError> {
    if plan.stdin {
        return Err(TaskError::new(
            ErrorKind::Unsupported,
            "this server runs tasks on a Docker Swarm, where a task has no stdin; send the \
             input as an argument or environment variable, or use a server with the local \
             backend",
        ));
    }
    if plan.http.is_some() {
        return Err(TaskError::new(
            ErrorKind::Unsupported,
            "this server runs tasks on a Docker Swarm, which does not run HTTP tasks (their \
             port is on their node's loopback); use a server with the local backend",
        ));
    }
    Ok(())
}

/// The task's service name (its network's is this with `-net`): the task
/// id when it has one, else a random one. Swarm names are at most 63
/// characters of letters, digits and dashes.
fn object_name(plan: &Plan) -> String {
    let id = match &plan.task {
        Some(tag) => tag.id.clone(),
        None => {
            let mut bytes = [0u8; 16];
            // Only a name, not a secret: without randomness, fall back on
            // the clock.
            if getrandom::fill(&mut bytes).is_err() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                bytes = now.as_nanos().to_le_bytes();
            }
            TaskId::from_random(u128::from_le_bytes(bytes))
        }
    };
    format!("tcp-task-{id}")
}

fn create_error(e: &bollard::errors::Error) -> TaskError {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 503,
            message,
        } => TaskError::new(
            ErrorKind::Engine,
            format!(
                "the engine is not a swarm manager ({message}); run `docker swarm init` or point \
                 DOCKER_HOST at a manager, or use `--backend local`"
            ),
        ),
        bollard::errors::Error::DockerResponseServerError {
            status_code: 400,
            message,
        } => TaskError::new(
            ErrorKind::BadRequest,
            format!("the swarm refused the task's settings: {message}"),
        ),
        other => engine_error("creating the task's service", other),
    }
}

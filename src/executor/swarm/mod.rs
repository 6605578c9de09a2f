//! The Swarm runtime: every task is a service of one replica on a Docker
//! Swarm, on an internal network of its own; the swarm's scheduler places
//! it on a node. tcp-task schedules nothing itself.
//!
//! network → service → wait for a node (reporting `Scheduling`) → a
//! [`SwarmProcess`] under the same supervision as a local container; its
//! `finish` removes the service and the network. Stdin cannot reach a
//! Swarm task, and an HTTP task's port is on its node's loopback: both
//! are refused before anything is created.

mod cleanup;
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

use super::cleanup::Owner;
use super::config::ExecutorConfig;
use super::engine::engine_error;
use super::events::EventSink;
use super::plan::Plan;
use super::process::StartError;
use super::stats::NodeStats;
use crate::task::{ErrorKind, ProgressEvent, TaskError, TaskId};
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
        let poll = Duration::from_millis(self.config.swarm.poll_interval_ms.max(10));
        let scheduling = Scheduling {
            docker: &self.docker,
            service: &objects.service,
            image: &plan.image,
            events,
            poll,
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
                Ok(SwarmProcess::new(self.docker.clone(), objects, task, poll))
            }
            Err(e) => {
                objects.remove(&self.docker).await;
                Err(e)
            }
        }
    }

    /// The swarm's nodes and this server's running tasks on each.
    pub async fn nodes(&self) -> Result<Vec<NodeStats>, TaskError> {
        let ours: HashSet<String> = cleanup::services(&self.docker, Some(&self.owner.instance))
            .await?
            .into_iter()
            .map(|(id, _)| id)
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

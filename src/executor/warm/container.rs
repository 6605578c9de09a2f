//! One warm container: created with the cold path's settings but the agent
//! as its entrypoint, the agent uploaded into it, started, and its agent's
//! channel opened (`warm/channel.rs`: its own socket, or the attach
//! stream).
//!
//! The agent is the tools binary, mounted or uploaded as
//! [`crate::executor::tools`] says.

use bollard::models::ContainerCreateBody;
use bollard::Docker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::channel::{self, short, AgentInput, Channels, Diagnostics, Failed, Plane, Record};
use super::key::PoolKey;
use super::socket::{AgentSocket, SOCKET_IN_CONTAINER};
use crate::executor::cleanup::{ContainerGuard, Owner};
use crate::executor::config::ExecutorConfig;
use crate::executor::container::container_body;
use crate::executor::engine::{create_error, engine_error, names_path};
use crate::task::{ErrorKind, TaskError};

use crate::executor::tools::{Tools, ToolsMount};
pub use crate::executor::tools::{AGENT_PATH, RELAY_PATH};
/// Label carrying the pool key of a warm container.
pub const LABEL_WARM: &str = "tcp-task.warm";

/// A started container whose agent is ready (or busy with a task).
pub(crate) struct WarmContainer {
    pub id: String,
    /// Frames to the agent.
    pub input: AgentInput,
    /// The agent's records; closed when its channel ends.
    pub records: mpsc::Receiver<Record>,
    /// Fired when the agent's channel ends: the container is dead or
    /// dying.
    pub closed: CancellationToken,
    /// Tasks this container has been handed.
    pub uses: u32,
    /// What the agent said on its stderr (why it gave up).
    pub diagnostics: Diagnostics,
    pub guard: ContainerGuard,
}

impl std::fmt::Debug for WarmContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmContainer")
            .field("id", &self.id)
            .field("uses", &self.uses)
            .field("closed", &self.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// What creating a warm container needs from the executor.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    pub docker: Docker,
    pub config: ExecutorConfig,
    pub owner: Owner,
    pub tools: Tools,
    /// The agents' data plane.
    pub channels: Arc<Channels>,
}

impl Launcher {
    /// Creates, fills and starts a container for `key`, opens its agent's
    /// channel, and waits up to `ready` for the agent to say it is ready
    /// (for an HTTP key: for the image's server to answer on its port).
    /// `serial` names it in its labels; the agent reads `prefetch` (a
    /// program) ahead of the first task.
    ///
    /// A launch on the socket that fails because of the socket is tried
    /// again on attach when the data plane is `auto`, which keeps to
    /// attach from then on.
    pub async fn launch(
        &self,
        key: &PoolKey,
        serial: u64,
        prefetch: Option<&str>,
        ready: Duration,
    ) -> Result<WarmContainer, TaskError> {
        let server = match &key.serve {
            Some(serve) => Some(self.server_argv(&key.image, &serve.command).await?),
            None => None,
        };
        let first = self.channels.plane()?;
        let launch = |plane| self.launch_on(plane, key, serial, prefetch, server.clone(), ready);
        match launch(first).await {
            Ok(container) => Ok(container),
            Err(Failed::Launch(error)) => Err(error),
            Err(Failed::Socket(why)) if self.channels.may_fall_back() => {
                self.channels.fall_back(&why);
                match launch(Plane::Attach).await {
                    Ok(container) => Ok(container),
                    Err(Failed::Launch(error)) => Err(error),
                    Err(Failed::Socket(why)) => Err(socket_failed(&why)),
                }
            }
            Err(Failed::Socket(why)) => Err(socket_failed(&why)),
        }
    }

    async fn launch_on(
        &self,
        plane: Plane,
        key: &PoolKey,
        serial: u64,
        prefetch: Option<&str>,
        server: Option<Vec<String>>,
        ready: Duration,
    ) -> Result<WarmContainer, Failed> {
        let socket =
            match &plane {
                Plane::Socket(dir) => Some(AgentSocket::bind(dir).map_err(|e| {
                    Failed::Socket(format!("cannot listen in {}: {e}", dir.display()))
                })?),
                Plane::Attach => None,
            };
        let body = || self.body(key, serial, prefetch, server.clone(), socket.as_ref());
        let (created, tools) = self
            .tools
            .create(&self.docker, None, body)
            .await
            .map_err(|e| match &socket {
                Some(socket) if names_path(&e, socket.host_path()) => Failed::Socket(format!(
                    "the engine cannot mount {} ({e}); is it on another host, or in another \
                     container, than this server?",
                    socket.host_path().display()
                )),
                _ => Failed::Launch(create_error(&key.image, &e)),
            })?;
        let guard = ContainerGuard::new(self.docker.clone(), created.id);
        self.tools.provide(&self.docker, guard.id(), tools).await?;
        let link = match socket {
            Some(socket) => channel::connect(&self.docker, guard.id(), socket, ready).await?,
            None => channel::attach(&self.docker, guard.id()).await?,
        };
        let mut container = WarmContainer {
            id: guard.id().to_owned(),
            input: link.input,
            records: link.records,
            closed: link.closed,
            uses: 0,
            diagnostics: link.diagnostics,
            guard,
        };
        let answer = tokio::time::timeout(ready, container.records.recv()).await;
        let failed = match (answer, &key.serve) {
            (Ok(Some(Record::Ready)), _) => return Ok(container),
            (Ok(_), None) => agent_failed(&container, "the agent did not start").await,
            (Err(_), None) => {
                agent_failed(&container, "the agent did not report ready in time").await
            }
            (Ok(_), Some(serve)) => server_exited(&container, serve.port).await,
            (Err(_), Some(serve)) => not_listening(&container, serve.port, ready).await,
        };
        Err(failed.into())
    }

    /// The command of an HTTP key's server: the key's, or the image's
    /// entrypoint and CMD, as `docker run IMAGE` would run them.
    async fn server_argv(&self, image: &str, command: &[String]) -> Result<Vec<String>, TaskError> {
        if !command.is_empty() {
            return Ok(command.to_vec());
        }
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| engine_error("reading the image's default command", &e))?;
        let config = inspected.config.unwrap_or_default();
        let mut argv = config.entrypoint.unwrap_or_default();
        argv.extend(config.cmd.unwrap_or_default());
        if argv.is_empty() {
            return Err(TaskError::new(
                ErrorKind::BadRequest,
                format!(
                    "image `{image}` has no default command (ENTRYPOINT or CMD) to run its HTTP server; give the task a command"
                ),
            ));
        }
        Ok(argv)
    }

    fn body(
        &self,
        key: &PoolKey,
        serial: u64,
        prefetch: Option<&str>,
        server: Option<Vec<String>>,
        socket: Option<&AgentSocket>,
    ) -> (ContainerCreateBody, ToolsMount) {
        let plan = key.profile();
        let mut body = container_body(&self.config, &self.owner, &plan, &format!("warm-{serial}"));
        body.entrypoint = Some(vec![AGENT_PATH.to_owned()]);
        let mut args = vec!["--tasks".to_owned(), key.reuse.to_string()];
        if socket.is_some() {
            args.extend(["--socket".to_owned(), SOCKET_IN_CONTAINER.to_owned()]);
        }
        if key.reset {
            args.push("--reset".to_owned());
        }
        if let Some(program) = prefetch {
            args.extend(["--prefetch".to_owned(), program.to_owned()]);
        }
        if let (Some(serve), Some(server)) = (&key.serve, server) {
            args.extend([
                "--serve-port".to_owned(),
                serve.port.to_string(),
                "--".to_owned(),
            ]);
            args.extend(server);
        }
        body.cmd = Some(args);
        let tools = self.tools.mount(&mut body);
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(LABEL_WARM.to_owned(), key.to_string());
        }
        if let Some(host) = body.host_config.as_mut() {
            // The agent is PID 1 and does init's work (reaping, and killing
            // what a task leaves behind); docker-init would add a process.
            host.init = Some(false);
            if let Some(socket) = socket {
                // The one thing the container gains: its socket, read-only.
                host.mounts
                    .get_or_insert_with(Vec::new)
                    .push(socket.mount());
            }
        }
        if socket.is_some() {
            // Nobody attaches: the agent's stdin is /dev/null (tasks get
            // theirs through the socket).
            body.open_stdin = Some(false);
            body.attach_stdin = Some(false);
            body.stdin_once = Some(false);
        }
        (body, tools)
    }
}

/// An HTTP task's server ended (or could not start) before it listened.
async fn server_exited(container: &WarmContainer, port: u16) -> TaskError {
    TaskError::new(
        ErrorKind::TaskExited,
        format!(
            "the task's server ended before it listened on port {port} in container {}; its \
             last output:\n{}",
            short(&container.id),
            container.diagnostics.text().await
        ),
    )
}

/// An HTTP task's server did not answer on its port in time.
async fn not_listening(container: &WarmContainer, port: u16, waited: Duration) -> TaskError {
    TaskError::new(
        ErrorKind::NotListening,
        format!(
            "nothing answered on port {port} in container {} within {waited:?} (the task's \
             timeout); check the port the image's server listens on. Its last output:\n{}",
            short(&container.id),
            container.diagnostics.text().await
        ),
    )
}

async fn agent_failed(container: &WarmContainer, what: &str) -> TaskError {
    let said = container.diagnostics.text().await;
    TaskError::new(
        ErrorKind::Engine,
        format!("{what} in warm container {}: {said}", short(&container.id)),
    )
}

/// A socket that `data_plane = "socket"` asked for did not work.
fn socket_failed(why: &str) -> TaskError {
    TaskError::new(
        ErrorKind::Engine,
        format!(
            "a warm container could not use its socket: {why}. Set [executor.warm] data_plane = \
             \"attach\" (or \"auto\") if the engine cannot reach this server's socket_dir"
        ),
    )
}

//! One warm container: created with the cold path's settings but the agent
//! as its entrypoint, the agent uploaded into it, attached and started, and
//! a reader that turns the agent's frames into [`Record`]s.
//!
//! The agent is the tools binary, uploaded as [`crate::executor::tools`]
//! says.

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::AttachContainerOptions;
use bollard::Docker;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::key::PoolKey;
use super::proto::{self, ExitReport, ProtoError, UsageReport};
use crate::executor::cleanup::{ContainerGuard, Owner};
use crate::executor::config::ExecutorConfig;
use crate::executor::container::container_body;
use crate::executor::engine::{create_error, engine_error};
use crate::task::{ErrorKind, TaskError};

use crate::executor::tools::{Tools, ToolsMount};
pub use crate::executor::tools::{AGENT_PATH, RELAY_PATH};
/// Label carrying the pool key of a warm container.
pub const LABEL_WARM: &str = "tcp-task.warm";

/// The attach connection's write half: frames to the agent. Shared by the
/// task's stdin and its signals, one frame at a time.
pub(crate) type AgentInput = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

/// The attach connection's demultiplexed output.
type OutputFrames = Pin<
    Box<
        dyn futures::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>
            + Send,
    >,
>;

/// What the agent reported, decoded.
#[derive(Debug)]
pub(crate) enum Record {
    Ready,
    /// The task's process started; the server's tag for the task.
    Started(Bytes),
    Stdout(Bytes),
    Stderr(Bytes),
    Usage(UsageReport),
    Exit(ExitReport),
}

/// A started container whose agent is ready (or busy with a task).
pub(crate) struct WarmContainer {
    pub id: String,
    /// Frames to the agent.
    pub input: AgentInput,
    /// The agent's records; closed when the attach stream ends.
    pub records: mpsc::Receiver<Record>,
    /// Fired when the attach stream ends: the container is dead or dying.
    pub closed: CancellationToken,
    /// Tasks this container has been handed.
    pub uses: u32,
    /// What the agent said on its stderr (why it gave up), bounded.
    pub diagnostics: Arc<Mutex<String>>,
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
}

impl Launcher {
    /// Creates, fills, attaches and starts a container for `key`, and waits
    /// up to `ready` for its agent to say it is ready (for an HTTP key: for
    /// the image's server to answer on its port). `serial` names it in its
    /// labels; the agent reads `prefetch` (a program) ahead of the first
    /// task.
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
        let (created, tools) = loop {
            let (body, tools) = self.body(key, serial, prefetch, server.clone());
            match self.docker.create_container(None, body).await {
                Ok(created) => break (created, tools),
                Err(e) if self.tools.cannot_mount(tools, &e) => continue,
                Err(e) => return Err(create_error(&key.image, &e)),
            }
        };
        let guard = ContainerGuard::new(self.docker.clone(), created.id);
        self.tools.provide(&self.docker, guard.id(), tools).await?;
        let mut container = self.attach_and_start(guard).await?;
        let answer = tokio::time::timeout(ready, container.records.recv()).await;
        match (answer, &key.serve) {
            (Ok(Some(Record::Ready)), _) => Ok(container),
            (Ok(_), None) => Err(agent_failed(&container, "the agent did not start")),
            (Err(_), None) => Err(agent_failed(
                &container,
                "the agent did not report ready in time",
            )),
            (Ok(_), Some(serve)) => Err(server_exited(&container, serve.port)),
            (Err(_), Some(serve)) => Err(not_listening(&container, serve.port, ready)),
        }
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
                    "image `{image}` has no default command (ENTRYPOINT or CMD) to run its HTTP                      server; give the task a command"
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
    ) -> (ContainerCreateBody, ToolsMount) {
        let plan = key.profile();
        let mut body = container_body(&self.config, &self.owner, &plan, &format!("warm-{serial}"));
        body.entrypoint = Some(vec![AGENT_PATH.to_owned()]);
        let mut args = vec!["--tasks".to_owned(), key.reuse.to_string()];
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
        }
        (body, tools)
    }

    async fn attach_and_start(&self, guard: ContainerGuard) -> Result<WarmContainer, TaskError> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..AttachContainerOptions::default()
        };
        let attach = self
            .docker
            .attach_container(guard.id(), Some(options))
            .await
            .map_err(|e| engine_error("attaching to a warm container", &e))?;
        self.docker
            .start_container(guard.id(), None)
            .await
            .map_err(|e| engine_error("starting a warm container", &e))?;
        let (tx, records) = mpsc::channel(16);
        let closed = CancellationToken::new();
        let diagnostics = Arc::new(Mutex::new(String::new()));
        tokio::spawn(read_records(
            attach.output,
            tx,
            closed.clone(),
            diagnostics.clone(),
        ));
        Ok(WarmContainer {
            id: guard.id().to_owned(),
            input: Arc::new(tokio::sync::Mutex::new(attach.input)),
            records,
            closed,
            uses: 0,
            diagnostics,
            guard,
        })
    }
}

/// An HTTP task's server ended (or could not start) before it listened.
fn server_exited(container: &WarmContainer, port: u16) -> TaskError {
    TaskError::new(
        ErrorKind::TaskExited,
        format!(
            "the task's server ended before it listened on port {port} in container {}; its \
             last output:\n{}",
            short(&container.id),
            diagnostics_of(container)
        ),
    )
}

/// An HTTP task's server did not answer on its port in time.
fn not_listening(container: &WarmContainer, port: u16, waited: Duration) -> TaskError {
    TaskError::new(
        ErrorKind::NotListening,
        format!(
            "nothing answered on port {port} in container {} within {waited:?} (the task's \
             timeout); check the port the image's server listens on. Its last output:\n{}",
            short(&container.id),
            diagnostics_of(container)
        ),
    )
}

fn agent_failed(container: &WarmContainer, what: &str) -> TaskError {
    let said = diagnostics_of(container);
    TaskError::new(
        ErrorKind::Engine,
        format!("{what} in warm container {}: {said}", short(&container.id)),
    )
}

/// The agent's stderr so far, or a note that it said nothing.
pub(crate) fn diagnostics_of(container: &WarmContainer) -> String {
    let text = container
        .diagnostics
        .lock()
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    if text.is_empty() {
        "it said nothing".to_owned()
    } else {
        text
    }
}

pub(crate) fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Decodes the agent's frames from the attach stream until it ends, then
/// fires `closed`. The agent's own stderr is kept for error messages.
async fn read_records(
    mut output: OutputFrames,
    tx: mpsc::Sender<Record>,
    closed: CancellationToken,
    diagnostics: Arc<Mutex<String>>,
) {
    use bollard::container::LogOutput;
    let mut decoder = Decoder::default();
    while let Some(item) = output.next().await {
        let chunk = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => message,
            Ok(LogOutput::StdErr { message }) => {
                note(&diagnostics, &message);
                continue;
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "a warm container's attach stream broke");
                break;
            }
        };
        decoder.push(&chunk);
        if !forward(&mut decoder, &tx, &diagnostics).await {
            break;
        }
    }
    closed.cancel();
}

/// Sends every whole record in `decoder`; false when reading must stop
/// (a malformed frame, or nobody listens any more).
async fn forward(
    decoder: &mut Decoder,
    tx: &mpsc::Sender<Record>,
    diagnostics: &Mutex<String>,
) -> bool {
    loop {
        match decoder.next() {
            Ok(Some(record)) => {
                if tx.send(record).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                note(
                    diagnostics,
                    format!("(server) malformed frame from the agent: {e}").as_bytes(),
                );
                return false;
            }
        }
    }
}

/// Keeps the last few KiB the agent wrote on stderr (an HTTP task's
/// server writes there too): the lines before a failure are the ones that
/// explain it.
fn note(diagnostics: &Mutex<String>, message: &[u8]) {
    const KEEP: usize = 4096;
    if let Ok(mut text) = diagnostics.lock() {
        text.push_str(&String::from_utf8_lossy(message));
        if text.len() > KEEP {
            let mut cut = text.len() - KEEP;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
    }
}

/// Reassembles the agent's frames from attach chunks of any size.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole record, `None` until one is complete.
    pub fn next(&mut self) -> Result<Option<Record>, ProtoError> {
        let Some(head) = self.buf.get(..proto::HEADER_LEN) else {
            return Ok(None);
        };
        let mut header = [0u8; proto::HEADER_LEN];
        header.copy_from_slice(head);
        let (kind, len) = proto::parse_header(header, proto::FROM_AGENT)?;
        if self.buf.len() < proto::HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(proto::HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        record(kind, payload).map(Some)
    }
}

fn record(kind: u8, payload: Bytes) -> Result<Record, ProtoError> {
    match kind {
        proto::READY if payload.as_ref() == [proto::VERSION] => Ok(Record::Ready),
        proto::READY => Err(ProtoError::BadPayload("unsupported agent version")),
        // The pid (4 bytes), then the tag the server gave the task.
        proto::STARTED if payload.len() >= 4 => Ok(Record::Started(payload.slice(4..))),
        proto::STARTED => Err(ProtoError::BadPayload("start report shorter than a pid")),
        proto::STDOUT => Ok(Record::Stdout(payload)),
        proto::STDERR => Ok(Record::Stderr(payload)),
        proto::USAGE => UsageReport::decode(&payload).map(Record::Usage),
        proto::EXIT => ExitReport::decode(&payload).map(Record::Exit),
        other => Err(ProtoError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_reassembled_from_any_split() {
        let mut bytes = proto::frame(proto::READY, &[proto::VERSION]);
        bytes.extend(proto::frame(proto::STDOUT, b"\x00\xffbinary"));
        bytes.extend(proto::frame(
            proto::EXIT,
            &ExitReport::Exited {
                code: 3,
                oom: false,
            }
            .encode(),
        ));
        for split in 0..bytes.len() {
            let mut decoder = Decoder::default();
            let mut seen = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                decoder.push(part);
                while let Some(record) = decoder.next().expect("valid frames") {
                    seen.push(format!("{record:?}"));
                }
            }
            assert_eq!(seen.len(), 3, "split at {split}: {seen:?}");
        }
    }

    #[test]
    fn malformed_agent_frames_are_errors() {
        let mut decoder = Decoder::default();
        decoder.push(&proto::frame(proto::TASK, b""));
        assert!(decoder.next().is_err());
        let mut decoder = Decoder::default();
        decoder.push(&proto::frame(proto::READY, &[99]));
        assert!(decoder.next().is_err());
        let mut decoder = Decoder::default();
        decoder.push(&[proto::STDOUT, 0x7f, 0xff, 0xff, 0xff]);
        assert!(decoder.next().is_err(), "too long, refused from the header");
    }
}

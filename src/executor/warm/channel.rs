//! The agent's channel: how the server and a warm container's agent
//! exchange frames, and the reader that turns the agent's frames into
//! [`Record`]s.
//!
//! Two data planes (docs/WARM.md, "The data plane"):
//!
//! - **attach**: the container's attach stream. Every frame passes through
//!   dockerd (and containerd-shim) on its way, which costs them CPU and a
//!   hop per frame, but it works with any engine.
//! - **socket**: the server listens on a Unix socket of its own, in a
//!   directory of its own per container (`warm/socket.rs`), bind-mounted
//!   read-only into the container; the agent connects to it first thing.
//!   The server takes that one connection and closes the listener at once,
//!   so a task that connects again is refused. The agent still writes its
//!   frames to its stdout too: the container's log is what a restarted
//!   server reads them back from (`warm/log.rs`).
//!
//! [`Channels`] picks the plane for each launch and, choosing by itself
//! (`auto`), falls back to attach for good the first time the socket does
//! not work.

use bollard::container::LogOutput;
use bollard::query_parameters::{AttachContainerOptions, LogsOptions};
use bollard::Docker;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::proto::{self, ExitReport, ProtoError, UsageReport};
use super::socket::{self, AgentSocket, NotConnected};
use crate::executor::config::{runtime_dir, DataPlane, WarmConfig};
use crate::executor::engine::{engine_error, names_path};
use crate::task::{ErrorKind, TaskError};

/// How much of the agent's stderr is kept (attach) or read back from the
/// log (socket) for an error message: the lines before a failure are the
/// ones that explain it.
const DIAGNOSTICS_BYTES: usize = 4096;
/// How long reading the agent's stderr back from the log may take.
const DIAGNOSTICS_WAIT: Duration = Duration::from_secs(5);

/// The data plane of a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plane {
    /// A socket in this directory.
    Socket(PathBuf),
    Attach,
}

/// Which data plane warm containers use, and whether it may still change.
#[derive(Debug)]
pub(crate) struct Channels {
    /// What the configuration asked for.
    mode: DataPlane,
    /// The socket directory, ready; or why there is none.
    dir: Result<PathBuf, String>,
    /// Set once `auto` gave the socket up: why. Every launch attaches
    /// from then on.
    fallen_back: OnceLock<String>,
}

impl Channels {
    /// Decides from the configuration and the engine's address
    /// (`DOCKER_HOST`): a remote engine cannot mount a directory of ours.
    pub fn new(config: &WarmConfig) -> Channels {
        let host = crate::docker::docker_host();
        let local = host.starts_with("unix://");
        let dir = match config.data_plane {
            DataPlane::Attach => Err("configured".to_owned()),
            DataPlane::Auto if !local => Err(format!("the engine {host} is not local")),
            DataPlane::Auto | DataPlane::Socket => {
                let dir = config.socket_dir.clone().unwrap_or_else(runtime_dir);
                socket::prepare(&dir).map(|()| {
                    socket::sweep_leftovers(&dir);
                    dir
                })
            }
        };
        if let (DataPlane::Auto, Err(why)) = (config.data_plane, &dir) {
            tracing::info!(reason = %why, "warm containers use the attach stream");
        }
        Channels {
            mode: config.data_plane,
            dir,
            fallen_back: OnceLock::new(),
        }
    }

    /// The plane for the next launch; `Err` when the configuration asks
    /// for a socket that cannot be made.
    pub fn plane(&self) -> Result<Plane, TaskError> {
        if self.fallen_back.get().is_some() {
            return Ok(Plane::Attach);
        }
        match (&self.dir, self.mode) {
            (Ok(dir), _) => Ok(Plane::Socket(dir.clone())),
            (Err(why), DataPlane::Socket) => Err(TaskError::new(
                ErrorKind::Engine,
                format!(
                    "warm containers are configured to use a socket (data_plane = \"socket\") \
                     and cannot: {why}. Fix [executor.warm] socket_dir, or set data_plane = \
                     \"auto\" or \"attach\""
                ),
            )),
            (Err(_), _) => Ok(Plane::Attach),
        }
    }

    /// Whether a launch whose socket failed may be retried on attach.
    pub fn may_fall_back(&self) -> bool {
        self.mode == DataPlane::Auto
    }

    /// Gives the socket up for the rest of the server's life; says why
    /// once.
    pub fn fall_back(&self, why: &str) {
        if self.fallen_back.set(why.to_owned()).is_ok() {
            tracing::warn!(
                reason = %why,
                "the warm containers' socket does not work here; they use the attach stream from \
                 now on (set [executor.warm] data_plane = \"attach\" to say so, or fix the cause)"
            );
        }
    }

    /// The plane in use, for the status: `socket`, `attach`, or `attach`
    /// with why auto chose it.
    pub fn describe(&self) -> String {
        if let Some(why) = self.fallen_back.get() {
            return format!("attach (the socket failed: {why})");
        }
        match (&self.dir, self.mode) {
            (Ok(_), _) => "socket".to_owned(),
            (Err(_), DataPlane::Attach) => "attach".to_owned(),
            (Err(why), DataPlane::Auto) => format!("attach ({why})"),
            (Err(why), DataPlane::Socket) => format!("none: the socket cannot be used ({why})"),
        }
    }
}

/// Why a launch failed.
pub(crate) enum Failed {
    /// The socket did not work (the engine cannot mount it, the agent
    /// cannot connect): the same launch on attach may.
    Socket(String),
    Launch(TaskError),
}

impl From<TaskError> for Failed {
    fn from(error: TaskError) -> Failed {
        Failed::Launch(error)
    }
}

/// Starts created container `id` and takes its agent's connection to
/// `socket`, waiting up to `ready`.
pub(crate) async fn connect(
    docker: &Docker,
    id: &str,
    socket: AgentSocket,
    ready: Duration,
) -> Result<Link, Failed> {
    let path = socket.host_path().to_owned();
    if let Err(e) = docker.start_container(id, None).await {
        return Err(match names_path(&e, &path) {
            true => Failed::Socket(format!("the engine cannot mount {}: {e}", path.display())),
            false => Failed::Launch(engine_error("starting a warm container", &e)),
        });
    }
    match socket.accept(docker, id, ready).await {
        Ok(stream) => Ok(connected(docker, id, stream)),
        Err(NotConnected::Ended(Some(code))) if code == i64::from(proto::SOCKET_UNREACHABLE) => {
            let said = Diagnostics::of_log(docker, id).text().await;
            Err(Failed::Socket(format!(
                "the agent in warm container {} could not connect to {}: {said}",
                short(id),
                path.display()
            )))
        }
        Err(NotConnected::Ended(code)) => {
            let said = Diagnostics::of_log(docker, id).text().await;
            let code = code
                .map(|c| format!(" with status {c}"))
                .unwrap_or_default();
            Err(Failed::Launch(TaskError::new(
                ErrorKind::Engine,
                format!(
                    "warm container {} ended{code} before its agent started: {said}",
                    short(id)
                ),
            )))
        }
        Err(NotConnected::Failed(why)) => Err(Failed::Launch(TaskError::new(
            ErrorKind::Engine,
            format!("warm container {}: {why}", short(id)),
        ))),
    }
}

/// Frames to the agent: the attach connection's or the socket's write
/// half. Shared by the task's stdin and its signals, one frame at a time.
pub(crate) type AgentInput = Arc<tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

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

/// An open channel to an agent.
pub(crate) struct Link {
    pub input: AgentInput,
    /// The agent's records; closed when the channel ends.
    pub records: mpsc::Receiver<Record>,
    /// Fired when the channel ends: the agent, so the container, is dead
    /// or dying.
    pub closed: CancellationToken,
    pub diagnostics: Diagnostics,
}

/// Attaches to created container `id`, starts it, and reads the agent's
/// frames from the attach stream.
pub(crate) async fn attach(docker: &Docker, id: &str) -> Result<Link, TaskError> {
    let options = AttachContainerOptions {
        stream: true,
        stdin: true,
        stdout: true,
        stderr: true,
        ..AttachContainerOptions::default()
    };
    let attach = docker
        .attach_container(id, Some(options))
        .await
        .map_err(|e| engine_error("attaching to a warm container", &e))?;
    start(docker, id).await?;
    let diagnostics = Diagnostics::default();
    let (tx, records) = mpsc::channel(16);
    let closed = CancellationToken::new();
    tokio::spawn(read_attached(
        attach.output,
        tx,
        closed.clone(),
        diagnostics.said.clone(),
    ));
    Ok(Link {
        input: Arc::new(tokio::sync::Mutex::new(attach.input)),
        records,
        closed,
        diagnostics,
    })
}

pub(crate) async fn start(docker: &Docker, id: &str) -> Result<(), TaskError> {
    docker
        .start_container(id, None)
        .await
        .map_err(|e| engine_error("starting a warm container", &e))
}

/// Reads the agent's frames from `stream`, its connection to its socket.
/// The agent's stderr is in container `id`'s log.
pub(crate) fn connected(docker: &Docker, id: &str, stream: UnixStream) -> Link {
    let (read, write) = stream.into_split();
    let diagnostics = Diagnostics::of_log(docker, id);
    let (tx, records) = mpsc::channel(16);
    let closed = CancellationToken::new();
    tokio::spawn(read_stream(
        read,
        tx,
        closed.clone(),
        diagnostics.said.clone(),
    ));
    Link {
        input: Arc::new(tokio::sync::Mutex::new(Box::pin(write))),
        records,
        closed,
        diagnostics,
    }
}

/// What the agent said on its stderr (why it gave up; an HTTP task's
/// server writes there too), and what the server noticed of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Diagnostics {
    /// With attach, the agent's stderr as it comes; with either, the
    /// server's own notes (a malformed frame). The last few KiB.
    said: Arc<Mutex<String>>,
    /// With the socket, the container whose log holds the agent's stderr
    /// (boxed: a container carries this, and a client is large).
    log: Option<Arc<(Docker, String)>>,
}

impl Diagnostics {
    /// What container `id`'s log says the agent wrote on stderr.
    pub fn of_log(docker: &Docker, id: &str) -> Diagnostics {
        Diagnostics {
            log: Some(Arc::new((docker.clone(), id.to_owned()))),
            ..Diagnostics::default()
        }
    }

    /// The last of it, or a note that the agent said nothing.
    pub async fn text(&self) -> String {
        let mut text = match self.log.as_deref() {
            Some((docker, id)) => stderr_tail(docker, id).await,
            None => String::new(),
        };
        if let Ok(said) = self.said.lock() {
            text.push_str(&said);
        }
        let text = text.trim();
        if text.is_empty() {
            "it said nothing".to_owned()
        } else {
            text.to_owned()
        }
    }
}

/// The end of container `id`'s stderr, from its log.
async fn stderr_tail(docker: &Docker, id: &str) -> String {
    let options = LogsOptions {
        stdout: false,
        stderr: true,
        tail: "50".to_owned(),
        ..LogsOptions::default()
    };
    let mut text = String::new();
    let read = async {
        let mut log = docker.logs(id, Some(options));
        while let Some(Ok(item)) = log.next().await {
            if let LogOutput::StdErr { message } = item {
                note(&mut text, &message);
            }
        }
    };
    if tokio::time::timeout(DIAGNOSTICS_WAIT, read).await.is_err() {
        note(
            &mut text,
            b"\n(server) reading the rest of the log took too long",
        );
    }
    text
}

/// Decodes the agent's frames from the attach stream until it ends, then
/// fires `closed`. The agent's own stderr is kept for error messages.
async fn read_attached(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    tx: mpsc::Sender<Record>,
    closed: CancellationToken,
    said: Arc<Mutex<String>>,
) {
    let mut decoder = Decoder::default();
    while let Some(item) = output.next().await {
        let chunk = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => message,
            Ok(LogOutput::StdErr { message }) => {
                if let Ok(mut said) = said.lock() {
                    note(&mut said, &message);
                }
                continue;
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "a warm container's attach stream broke");
                break;
            }
        };
        decoder.push(&chunk);
        if !forward(&mut decoder, &tx, &said).await {
            break;
        }
    }
    closed.cancel();
}

/// Decodes the agent's frames from its socket until it closes (the agent
/// ended), then fires `closed`. Reads straight into the decoder's buffer.
async fn read_stream(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    tx: mpsc::Sender<Record>,
    closed: CancellationToken,
    said: Arc<Mutex<String>>,
) {
    const READ_AHEAD: usize = 64 * 1024;
    let mut decoder = Decoder::default();
    loop {
        decoder.buf.reserve(READ_AHEAD);
        match stream.read_buf(&mut decoder.buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "a warm container's socket broke");
                break;
            }
        }
        if !forward(&mut decoder, &tx, &said).await {
            break;
        }
    }
    closed.cancel();
}

/// Sends every whole record in `decoder`; false when reading must stop
/// (a malformed frame, or nobody listens any more).
async fn forward(decoder: &mut Decoder, tx: &mpsc::Sender<Record>, said: &Mutex<String>) -> bool {
    loop {
        match decoder.next() {
            Ok(Some(record)) => {
                if tx.send(record).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                if let Ok(mut said) = said.lock() {
                    let text = format!("(server) malformed frame from the agent: {e}");
                    note(&mut said, text.as_bytes());
                }
                return false;
            }
        }
    }
}

/// Appends `message` to `text`, keeping the last [`DIAGNOSTICS_BYTES`].
fn note(text: &mut String, message: &[u8]) {
    text.push_str(&String::from_utf8_lossy(message));
    if text.len() > DIAGNOSTICS_BYTES {
        let mut cut = text.len() - DIAGNOSTICS_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

/// Reassembles the agent's frames from chunks of any size.
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

/// A container id as `docker ps` shows it.
pub(crate) fn short(id: &str) -> String {
    id.chars().take(12).collect()
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

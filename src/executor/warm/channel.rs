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
//!   directory of its own per container ([`AgentSocket`]), bind-mounted
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
use bollard::models::{Mount, MountType};
use bollard::query_parameters::{AttachContainerOptions, LogsOptions};
use bollard::Docker;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::proto::{self, ExitReport, ProtoError, UsageReport};
use crate::executor::config::{current_uid, runtime_dir, DataPlane, WarmConfig};
use crate::executor::engine::engine_error;
use crate::executor::exit::wait_exit;
use crate::task::{ErrorKind, TaskError};

/// Bytes in `sockaddr_un.sun_path` on Linux, the terminating NUL
/// included: a Unix socket's path must be shorter than this.
pub const SUN_PATH_MAX: usize = 108;
/// The socket's name in its container's directory.
const SOCKET_FILE: &str = "agent.sock";
/// The longest name of a container's directory: `{pid:x}-{n:x}`, n
/// counting this process's sockets.
const CONTAINER_DIR_MAX: usize = 8 + 1 + 16;
/// The longest `socket_dir`: a container's socket,
/// `SOCKET_DIR/PID-SERIAL/agent.sock`, must fit in `sun_path`.
pub const MAX_SOCKET_DIR_LEN: usize =
    SUN_PATH_MAX - 1 - (1 + CONTAINER_DIR_MAX + 1 + SOCKET_FILE.len());
/// Where the agent finds the socket in its container: beside the agent
/// (over the empty `tools::SOCKET_NAME` file of the read-only tools
/// directory, or in the tools volume), so that nothing is added to the
/// image's own file system.
pub const SOCKET_IN_CONTAINER: &str = "/.tcp-task/agent.sock";
/// How much of the agent's stderr is kept (attach) or read back from the
/// log (socket) for an error message: the lines before a failure are the
/// ones that explain it.
const DIAGNOSTICS_BYTES: usize = 4096;
/// How long reading the agent's stderr back from the log may take.
const DIAGNOSTICS_WAIT: Duration = Duration::from_secs(5);

/// Refuses a `socket_dir` whose sockets' paths would not fit in
/// [`SUN_PATH_MAX`], unless the socket is never used (`attach`).
pub fn check_socket_dir(config: &WarmConfig) -> Result<(), String> {
    match (&config.socket_dir, config.data_plane) {
        (Some(dir), DataPlane::Auto | DataPlane::Socket) => fits(dir),
        _ => Ok(()),
    }
}

fn fits(dir: &Path) -> Result<(), String> {
    let len = dir.as_os_str().len();
    if len <= MAX_SOCKET_DIR_LEN {
        return Ok(());
    }
    Err(format!(
        "[executor.warm] socket_dir {} is {len} bytes long, and at most {MAX_SOCKET_DIR_LEN} \
         fit: the warm agents' sockets are made in it, and a Unix socket's path is limited to \
         {} bytes. Choose a shorter directory, or set data_plane = \"attach\"",
        dir.display(),
        SUN_PATH_MAX - 1
    ))
}

/// Makes `dir` (mode 0700) if missing, and checks that it is a directory
/// of ours that no other user may enter: sockets in it are 0666, so the
/// directory is what keeps other host users away from them.
fn prepare(dir: &Path) -> Result<(), String> {
    fits(dir)?;
    let failed = |e: io::Error| format!("cannot use {} for sockets: {e}", dir.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let meta = fs::symlink_metadata(dir).map_err(failed)?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if Some(meta.uid()) != current_uid() {
        return Err(format!(
            "{} belongs to another user (uid {})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

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
                prepare(&dir).map(|()| {
                    sweep_leftovers(&dir);
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

/// Removes the directories a server of this host left behind when it died
/// before its agents connected (a running server removes each as soon as
/// its agent connects, or its launch fails): those whose process is gone.
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, _)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let Ok(pid) = u32::from_str_radix(pid, 16) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// One container's socket, listening from before the container is created
/// until its agent connects. Dropped, it removes its directory.
#[derive(Debug)]
pub(crate) struct AgentSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl AgentSocket {
    /// Listens at `base/PID-N/agent.sock`, N counting this process's
    /// sockets (several executors may share a process and a directory).
    /// The socket is mode 0666 so that the container's user, whoever it
    /// is, may connect; its directories (0700) keep everyone else on the
    /// host out.
    pub fn bind(base: &Path) -> io::Result<AgentSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{:x}-{n:x}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join(SOCKET_FILE);
        let socket = UnixListener::bind(&path)
            .and_then(|listener| {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
                Ok(listener)
            })
            .map(|listener| AgentSocket {
                dir: dir.clone(),
                path: path.clone(),
                listener,
            });
        if socket.is_err() {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_dir(&dir);
        }
        socket
    }

    /// Its path on the host: the bind mount's source.
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// The container's read-only bind of the socket at
    /// [`SOCKET_IN_CONTAINER`]. Connecting needs no write access to the
    /// mount (`EROFS` concerns regular files, directories and links).
    pub fn mount(&self) -> Mount {
        Mount {
            target: Some(SOCKET_IN_CONTAINER.to_owned()),
            source: Some(self.path.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Mount::default()
        }
    }

    /// Takes the agent's connection, the only one: the listener is closed
    /// and the socket's file and directory removed as this returns (the
    /// container keeps the socket through its mount, but nothing listens
    /// on it any more, so a task that connects is refused). Waits up to
    /// `within`, and no longer than container `id` runs.
    pub async fn accept(
        self,
        docker: &Docker,
        id: &str,
        within: Duration,
    ) -> Result<UnixStream, NotConnected> {
        tokio::select! {
            accepted = self.listener.accept() => accepted
                .map(|(stream, _)| stream)
                .map_err(|e| NotConnected::Failed(format!("accepting the agent's connection failed: {e}"))),
            status = wait_exit(docker, id) => Err(NotConnected::Ended(status.ok())),
            _ = tokio::time::sleep(within) => Err(NotConnected::Failed(format!(
                "the agent did not connect to its socket within {within:?}"
            ))),
        }
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Why no agent connected.
#[derive(Debug)]
pub(crate) enum NotConnected {
    /// The container ended first, with this exit status if the engine
    /// said.
    Ended(Option<i64>),
    Failed(String),
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
        return Err(match names(&e, &path) {
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

/// Whether the engine's error is about `path` (a mount it cannot make).
pub(crate) fn names(error: &bollard::errors::Error, path: &Path) -> bool {
    error.to_string().contains(&*path.to_string_lossy())
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

    fn with_dir(dir: &str) -> WarmConfig {
        WarmConfig {
            socket_dir: Some(PathBuf::from(dir)),
            ..WarmConfig::default()
        }
    }

    #[test]
    fn a_socket_dir_too_long_for_sun_path_is_refused() {
        let longest = format!("/{}", "d".repeat(MAX_SOCKET_DIR_LEN - 1));
        assert_eq!(check_socket_dir(&with_dir(&longest)), Ok(()));
        let over = format!("{longest}x");
        let refused = check_socket_dir(&with_dir(&over)).expect_err("one byte too long");
        assert!(refused.contains("socket_dir"), "{refused}");
        assert!(
            refused.contains(&MAX_SOCKET_DIR_LEN.to_string()),
            "{refused}"
        );
        let attach = WarmConfig {
            data_plane: DataPlane::Attach,
            ..with_dir(&over)
        };
        assert_eq!(check_socket_dir(&attach), Ok(()), "never used with attach");
    }

    /// The longest socket dir, with the longest container directory, is a
    /// path the kernel binds a socket at; one byte more is not.
    #[test]
    fn the_longest_socket_path_binds_and_one_more_byte_does_not() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let prefix = root.path().as_os_str().len();
        let longest = root
            .path()
            .join("d".repeat(MAX_SOCKET_DIR_LEN - prefix - 1));
        assert_eq!(longest.as_os_str().len(), MAX_SOCKET_DIR_LEN);
        prepare(&longest).expect("the longest socket dir is usable");
        let container_dir = longest.join("f".repeat(CONTAINER_DIR_MAX));
        fs::create_dir(&container_dir).expect("the longest container directory");
        let path = container_dir.join(SOCKET_FILE);
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX - 1);
        std::os::unix::net::UnixListener::bind(&path).expect("binds at the longest path");
        let over = container_dir.join(format!("{SOCKET_FILE}x"));
        assert!(
            std::os::unix::net::UnixListener::bind(&over).is_err(),
            "the kernel refuses a socket path past sun_path"
        );
        let too_long = PathBuf::from(format!("{}x", longest.display()));
        assert!(prepare(&too_long).is_err());
    }

    #[tokio::test]
    async fn one_connection_is_taken_and_the_socket_is_gone_after() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let socket = AgentSocket::bind(root.path()).expect("binds");
        let other = AgentSocket::bind(root.path()).expect("a second one");
        assert_ne!(socket.host_path(), other.host_path());
        let path = socket.host_path().to_owned();
        let mode = fs::metadata(&path).expect("the socket file").mode();
        assert_eq!(mode & 0o777, 0o666);
        let dir_mode = fs::metadata(path.parent().expect("its dir"))
            .expect("dir")
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let first = std::os::unix::net::UnixStream::connect(&path).expect("connects");
        let (stream, _) = socket.listener.accept().await.expect("accepts");
        drop(socket);
        assert!(!path.exists(), "the socket file is removed");
        assert!(!path.parent().expect("dir").exists(), "so is its directory");
        drop((stream, first));
    }
}

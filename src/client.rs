//! The client library: one persistent connection, many concurrent tasks.
//!
//! ```no_run
//! use tcp_task::{Client, TaskSpec};
//!
//! # async fn demo() -> Result<(), tcp_task::Error> {
//! let client = Client::connect("127.0.0.1:7070").await?;
//! let output = client
//!     .run(TaskSpec::image("tcp-task-examples:0.1.0", ["sum", "1", "2", "3"]))
//!     .await?
//!     .output()
//!     .await?;
//! assert_eq!(output.stdout, b"6\n");
//! # Ok(())
//! # }
//! ```
//!
//! A [`Client`] is cheap to clone and usable from many tokio tasks at once:
//! every clone shares the connection. Frames for all tasks travel over it,
//! told apart by request id. Events of one task arrive in order; tasks do not
//! wait for each other, except that a [`TaskHandle`] nobody reads from will,
//! once its small buffer is full, pause the reading of the whole connection
//! (that pause is what slows the server down when the client is slow).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::{self, FrameCodec};
use crate::protocol::{
    CatalogEntryInfo, ClientMessage, ErrorKind, Hello, Limits, Offsets, Outcome, OutputStream,
    ProgressEvent, RequestId, ServerMessage, ServerStatus, TaskError, TaskId, TaskInfo, TaskSpec,
    DEFAULT_MAX_FRAME_LEN, MAX_CHUNK_LEN, STDIN_WINDOW,
};
use crate::tls::{self, ClientTlsConfig, TlsError};

/// Frames waiting to be written to the server.
const OUTGOING_QUEUE: usize = 1024;

/// Events buffered for one task handle before the connection's reader waits.
const EVENT_QUEUE: usize = 64;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a task handle whose connection broke keeps trying to
/// re-attach: the server's default reattach grace.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(30);

/// The first pause between reconnection attempts; it doubles up to
/// [`MAX_RESUME_BACKOFF`].
const FIRST_RESUME_BACKOFF: Duration = Duration::from_millis(50);
const MAX_RESUME_BACKOFF: Duration = Duration::from_secs(2);

/// Everything that can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to the tcp-task server at {addr}: {source}. Is `tcp-task serve` running there? Pass its address with --server or TCP_TASK_SERVER")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The server answered, but refused the task, request or connection.
    #[error("{0}")]
    Remote(TaskError),
    /// The connection broke; the string says how.
    #[error("the connection to the server was lost: {0}")]
    Disconnected(String),
    /// The connection could be made but the handshake failed.
    #[error("handshake with the server failed: {0}")]
    Handshake(String),
    /// TLS could not be set up (unreadable or unusable files) or its
    /// handshake failed; the message says which and what to do.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Error {
    /// The server's error kind, when the server sent one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Remote(e) => Some(e.kind),
            _ => None,
        }
    }
}

/// Options for [`Client::connect_with`].
#[derive(Clone)]
pub struct ConnectOptions {
    /// Sent in the handshake, for servers that require a token.
    pub token: Option<String>,
    /// Names this program in the server's logs.
    pub client_name: String,
    /// Largest frame accepted from the server.
    pub max_frame_len: u32,
    /// Time allowed for the TCP connection and the handshake together.
    pub connect_timeout: Duration,
    /// Connect through TLS; `None` for plaintext.
    pub tls: Option<ClientTlsConfig>,
    /// When a task handle's connection breaks, reconnect and re-attach for
    /// up to this long, so that its events go on with no byte lost or
    /// repeated (a [`ProgressEvent::Resumed`] marks the seam). `None`: the
    /// handle ends with [`Error::Disconnected`] instead.
    pub resume: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            token: None,
            client_name: format!("tcp-task-client {}", env!("CARGO_PKG_VERSION")),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            resume: Some(DEFAULT_RESUME_WINDOW),
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_name", &self.client_name)
            .field("max_frame_len", &self.max_frame_len)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("resume", &self.resume)
            .finish()
    }
}

/// What one task reports before it ends.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// The server admitted the task (or found it, for an attach) and named
    /// it.
    Accepted(TaskId),
    Progress(ProgressEvent),
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Everything a task produced, from [`TaskHandle::output`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub outcome: Outcome,
}

/// What the reader hands to one task's handle.
enum Delivery {
    Event(TaskEvent),
    End(Result<Outcome, Error>),
}

/// Who waits for the answer to a request.
enum Pending {
    Task(mpsc::Sender<Delivery>),
    Reply(oneshot::Sender<Result<ServerMessage, Error>>),
}

/// Who waits for which request, and why the connection closed once it
/// has: under one lock, so that a request registered as the reader closes
/// either is drained with the rest or sees the reason.
#[derive(Default)]
struct Waiters {
    pending: HashMap<RequestId, Pending, BuildHasherDefault<RequestIdHasher>>,
    closed: Option<String>,
}

/// Hashes request ids, which the client numbers itself (so no peer can
/// choose them to collide): one multiplication spreads consecutive ids over
/// the table, where the default hasher costs more than the rest of a
/// lookup.
#[derive(Default)]
struct RequestIdHasher(u64);

impl Hasher for RequestIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8 | u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How to open the connection again, for task handles that resume.
struct Dialer {
    addr: String,
    options: ConnectOptions,
}

struct Inner {
    outgoing: mpsc::Sender<ClientMessage>,
    waiters: Mutex<Waiters>,
    /// The stdin window of each running task that has stdin: permits are
    /// bytes the server will take; `StdinCredit` frames add them back.
    stdin_credit: Mutex<HashMap<RequestId, Arc<Semaphore>>>,
    next_id: AtomicU64,
    limits: Limits,
    server: String,
    /// `None` for a connection made from a given stream.
    dialer: Option<Arc<Dialer>>,
}

/// Closes the connection when the last client clone and task handle using
/// it are gone: the reader and writer tasks would otherwise keep it open.
struct Alive(CancellationToken);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A connection to a tcp-task server. Clones share the connection; it
/// closes when every clone and every [`TaskHandle`] is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    alive: Arc<Alive>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish()
    }
}

impl Client {
    /// Connects with default options.
    pub async fn connect(addr: impl ToSocketAddrs + fmt::Display) -> Result<Client, Error> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects over TCP (and TLS, when `options.tls` is set) and performs
    /// the handshake, all within `options.connect_timeout`.
    pub async fn connect_with(
        addr: impl ToSocketAddrs + fmt::Display,
        options: ConnectOptions,
    ) -> Result<Client, Error> {
        let name = addr.to_string();
        let deadline = Instant::now() + options.connect_timeout;
        let stream = tokio::time::timeout_at(deadline.into(), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                ))
            })
            .map_err(|source| Error::Connect {
                addr: name.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let dialer = Arc::new(Dialer {
            addr: name.clone(),
            options: options.clone(),
        });
        let Some(tls) = options.tls.clone() else {
            return Client::start(stream, options, deadline, Some(dialer)).await;
        };
        let stream = tokio::time::timeout_at(deadline.into(), tls.connect(stream, &name))
            .await
            .map_err(|_| {
                TlsError::Handshake(format!(
                    "no TLS answer from {name} within {:?}; is it a tcp-task server with TLS on?",
                    options.connect_timeout
                ))
            })??;
        Client::start(stream, options, deadline, Some(dialer)).await
    }

    /// Performs the handshake over an already connected stream (a TLS stream,
    /// for example) and starts the connection's reader and writer.
    /// Its task handles cannot resume: the client does not know how to
    /// open such a stream again.
    pub async fn handshake<S>(
        stream: S,
        options: ConnectOptions,
        deadline: Instant,
    ) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Client::start(stream, options, deadline, None).await
    }

    async fn start<S>(
        stream: S,
        options: ConnectOptions,
        deadline: Instant,
        dialer: Option<Arc<Dialer>>,
    ) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let mut writer = FramedWrite::new(writer, FrameCodec::<()>::new(options.max_frame_len));
        let mut reader = FramedRead::new(
            reader,
            FrameCodec::<ServerMessage>::new(options.max_frame_len),
        );
        let hello = Hello::new(options.client_name, options.token);
        let exchange = async {
            writer
                .send(hello)
                .await
                .map_err(|e| Error::Handshake(e.to_string()))?;
            match reader.next().await {
                Some(Ok(ServerMessage::Welcome(welcome))) => Ok(welcome),
                Some(Ok(ServerMessage::Error { error, .. })) => Err(Error::Remote(error)),
                Some(Ok(other)) => Err(Error::Handshake(format!("unexpected first frame {other:?}"))),
                Some(Err(codec::CodecError::Io(e))) if tls::is_tls_error(&e) => {
                    Err(Error::Tls(TlsError::Handshake(tls::explain(&e))))
                }
                Some(Err(_)) if tls::looks_like_tls(reader.read_buffer()) => Err(Error::Handshake(
                    "the server speaks TLS; connect with TLS, trusting the CA that signed its certificate (--tls-ca FILE)".into(),
                )),
                Some(Err(e)) => Err(Error::Handshake(format!(
                    "{e} (is this a tcp-task server, and does it use TLS where the client does not, or the reverse?)"
                ))),
                None => Err(Error::Handshake("the server closed the connection".into())),
            }
        };
        let welcome = tokio::time::timeout_at(deadline.into(), exchange)
            .await
            .map_err(|_| Error::Handshake("no answer from the server in time (is it a tcp-task server, with the same TLS setting?)".into()))??;

        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let inner = Arc::new(Inner {
            outgoing,
            waiters: Mutex::default(),
            stdin_credit: Mutex::default(),
            next_id: AtomicU64::new(1),
            limits: welcome.limits,
            server: welcome.server,
            dialer,
        });
        let alive = CancellationToken::new();
        tokio::spawn(write_frames(writer, queue, alive.clone()));
        tokio::spawn(read_frames(reader, inner.clone(), alive.clone()));
        Ok(Client {
            inner,
            alive: Arc::new(Alive(alive)),
        })
    }

    /// The limits the server announced.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The server's name and version.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// Submits a task. Returns once the request is queued for sending; the
    /// handle then reports `Accepted` (or the task's refusal) and the rest.
    pub async fn run(&self, spec: TaskSpec) -> Result<TaskHandle, Error> {
        self.submit(spec, false).await
    }

    /// Submits a task that runs on without this client: its result and
    /// output are kept by the server for its retention period, for
    /// [`Client::attach`], [`Client::wait`] and [`Client::list`]. Returns
    /// its id once the server has accepted it.
    pub async fn run_detached(&self, spec: TaskSpec) -> Result<TaskId, Error> {
        let mut handle = self.submit(spec, true).await?;
        let accepted = handle.next().await;
        let task = match accepted {
            Some(TaskEvent::Accepted(task)) => task,
            Some(other) => {
                return Err(Error::Disconnected(format!(
                    "the server answered a submit with {other:?} before accepting it"
                )))
            }
            // Refused: the handle's end says why.
            None => {
                return handle
                    .wait()
                    .await
                    .and_then(|outcome| Err(refused_with(outcome)))
            }
        };
        // The task runs on: dropping the handle must not cancel it.
        handle.end = Some(Err(Error::Disconnected("detached".into())));
        handle.inner.forget(handle.id);
        Ok(task)
    }

    async fn submit(&self, spec: TaskSpec, detach: bool) -> Result<TaskHandle, Error> {
        let wants_stdin = spec.stdin;
        let spec = Box::new(spec);
        self.follow(wants_stdin, |id| ClientMessage::Submit { id, spec, detach })
            .await
    }

    /// Follows task `task` (from any connection): its output from the
    /// start, live output while it runs, then its end. Dropping the handle
    /// stops following; the task runs on.
    pub async fn attach(&self, task: &TaskId) -> Result<TaskHandle, Error> {
        self.attach_from(task, Offsets::default()).await
    }

    /// As [`Client::attach`], skipping the bytes of each stream the caller
    /// already has.
    pub async fn attach_from(&self, task: &TaskId, from: Offsets) -> Result<TaskHandle, Error> {
        self.replay(task, from, true).await
    }

    /// The task's output so far, from the start; the handle then ends with
    /// the task's outcome if it has ended, or else with an error of kind
    /// [`ErrorKind::Detached`] (the task runs on).
    pub async fn logs(&self, task: &TaskId) -> Result<TaskHandle, Error> {
        self.replay(task, Offsets::default(), false).await
    }

    async fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        follow: bool,
    ) -> Result<TaskHandle, Error> {
        let task = task.clone();
        let message = |id| ClientMessage::Attach {
            id,
            task,
            from,
            follow,
        };
        let mut handle = self.follow(false, message).await?;
        handle.delivered = from;
        Ok(handle)
    }

    /// Waits for task `task` to end and gives its outcome.
    pub async fn wait(&self, task: &TaskId) -> Result<Outcome, Error> {
        let task = task.clone();
        self.follow(false, |id| ClientMessage::Wait { id, task })
            .await?
            .wait()
            .await
    }

    /// Sends `signal` (a Linux signal number: 9 is SIGKILL, 15 SIGTERM) to
    /// the task's process.
    pub async fn kill(&self, task: &TaskId, signal: i32) -> Result<(), Error> {
        let task = task.clone();
        match self
            .request(|id| ClientMessage::Kill { id, task, signal })
            .await?
        {
            ServerMessage::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets an ended task's result and removes its kept output; with
    /// `force`, a running task is stopped first.
    pub async fn remove(&self, task: &TaskId, force: bool) -> Result<(), Error> {
        let task = task.clone();
        match self
            .request(|id| ClientMessage::Remove { id, task, force })
            .await?
        {
            ServerMessage::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The tasks this client may see that are running, and with `all` the
    /// ended ones whose results are kept.
    pub async fn list(&self, all: bool) -> Result<Vec<TaskInfo>, Error> {
        match self.request(|id| ClientMessage::List { id, all }).await? {
            ServerMessage::TaskList { tasks, .. } => Ok(tasks),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a request that follows a task and gives its handle.
    async fn follow(
        &self,
        stdin: bool,
        message: impl FnOnce(RequestId) -> ClientMessage,
    ) -> Result<TaskHandle, Error> {
        let id = self.inner.next_id();
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        self.inner.register(id, Pending::Task(events))?;
        let credit = stdin.then(|| self.inner.open_stdin(id));
        self.inner.send(message(id)).await?;
        Ok(TaskHandle {
            id,
            task: None,
            delivered: Offsets::default(),
            resumed: 0,
            alive: self.alive.clone(),
            events: rx,
            stdin: StdinWriter {
                id,
                inner: self.inner.clone(),
                credit,
            },
            inner: self.inner.clone(),
            end: None,
        })
    }

    /// Round trip with an empty payload.
    pub async fn ping(&self) -> Result<Duration, Error> {
        self.ping_with(Bytes::new()).await.map(|(rtt, _)| rtt)
    }

    /// Round trip carrying `payload` both ways.
    pub async fn ping_with(&self, payload: Bytes) -> Result<(Duration, Bytes), Error> {
        let started = Instant::now();
        match self
            .request(|id| ClientMessage::Ping { id, payload })
            .await?
        {
            ServerMessage::Pong { payload, .. } => Ok((started.elapsed(), payload)),
            other => Err(unexpected(other)),
        }
    }

    /// The server's status: version, uptime, engine, task counts.
    pub async fn status(&self) -> Result<ServerStatus, Error> {
        match self.request(|id| ClientMessage::Status { id }).await? {
            ServerMessage::StatusReply { status, .. } => Ok(*status),
            other => Err(unexpected(other)),
        }
    }

    /// The pre-compiled tasks the server knows.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntryInfo>, Error> {
        match self.request(|id| ClientMessage::ListCatalog { id }).await? {
            ServerMessage::CatalogReply { entries, .. } => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    async fn request(
        &self,
        message: impl FnOnce(RequestId) -> ClientMessage,
    ) -> Result<ServerMessage, Error> {
        let id = self.inner.next_id();
        let (reply, answer) = oneshot::channel();
        self.inner.register(id, Pending::Reply(reply))?;
        self.inner.send(message(id)).await?;
        answer
            .await
            .unwrap_or_else(|_| Err(self.inner.disconnected()))
    }
}

/// A detached submit that ended before it was accepted cannot have: the
/// server refuses with `Failed`, which is an error already.
fn refused_with(outcome: Outcome) -> Error {
    Error::Disconnected(format!(
        "the server ended the task before accepting it: {outcome:?}"
    ))
}

fn unexpected(message: ServerMessage) -> Error {
    Error::Disconnected(format!(
        "the server answered with an unexpected frame: {message:?}"
    ))
}

impl Inner {
    fn next_id(&self) -> RequestId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A task's stdin window starts full.
    fn open_stdin(&self, id: RequestId) -> Arc<Semaphore> {
        let credit = Arc::new(Semaphore::new(STDIN_WINDOW as usize));
        self.stdin_credit.lock().unwrap().insert(id, credit.clone());
        credit
    }

    /// The task ended (or the connection did): writers waiting for credit
    /// stop waiting.
    fn close_stdin(&self, id: RequestId) {
        if let Some(credit) = self.stdin_credit.lock().unwrap().remove(&id) {
            credit.close();
        }
    }

    fn credit_stdin(&self, id: RequestId, bytes: u32) {
        if let Some(credit) = self.stdin_credit.lock().unwrap().get(&id) {
            credit.add_permits(bytes as usize);
        }
    }

    /// Registers before sending, so the answer always finds its waiter.
    fn register(&self, id: RequestId, pending: Pending) -> Result<(), Error> {
        let mut waiters = self.waiters.lock().unwrap();
        if let Some(reason) = waiters.closed.as_ref() {
            return Err(Error::Disconnected(reason.clone()));
        }
        waiters.pending.insert(id, pending);
        Ok(())
    }

    async fn send(&self, message: ClientMessage) -> Result<(), Error> {
        self.outgoing
            .send(message)
            .await
            .map_err(|_| self.disconnected())
    }

    /// Takes request `id`'s waiter off the table.
    fn forget(&self, id: RequestId) -> Option<Pending> {
        self.waiters.lock().unwrap().pending.remove(&id)
    }

    fn disconnected(&self) -> Error {
        let reason = self.waiters.lock().unwrap().closed.clone();
        Error::Disconnected(reason.unwrap_or_else(|| "the connection closed".into()))
    }

    /// Ends every pending request with `reason`; later requests fail at once.
    fn close(&self, reason: String) {
        let mut waiters = self.waiters.lock().unwrap();
        waiters.closed.get_or_insert(reason.clone());
        let pending: Vec<Pending> = waiters.pending.drain().map(|(_, p)| p).collect();
        for (_, credit) in self.stdin_credit.lock().unwrap().drain() {
            credit.close();
        }
        drop(waiters);
        for waiter in pending {
            match waiter {
                Pending::Task(events) => {
                    let _ =
                        events.try_send(Delivery::End(Err(Error::Disconnected(reason.clone()))));
                }
                Pending::Reply(reply) => {
                    let _ = reply.send(Err(Error::Disconnected(reason.clone())));
                }
            }
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: FramedWrite<W, FrameCodec<()>>,
    mut queue: mpsc::Receiver<ClientMessage>,
    alive: CancellationToken,
) {
    tokio::select! {
        biased;
        result = codec::write_batched(&mut writer, &mut queue) => {
            if let Err(e) = result {
                debug!(error = %e, "write to the server failed");
            }
        }
        _ = alive.cancelled() => {
            // Send what the last users queued (a drop's Cancel, say) first.
            queue.close();
            let _ = codec::write_batched(&mut writer, &mut queue).await;
        }
    }
    let _ = SinkExt::<ClientMessage>::close(&mut writer).await;
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: FramedRead<R, FrameCodec<ServerMessage>>,
    inner: Arc<Inner>,
    alive: CancellationToken,
) {
    let mut last_error: Option<TaskError> = None;
    // Made once: a fresh `cancelled()` per frame would register a waiter
    // with the token and take it back again for every frame.
    let closing = alive.cancelled();
    tokio::pin!(closing);
    let reason = loop {
        let frame = tokio::select! {
            biased;
            frame = reader.next() => frame,
            _ = &mut closing => break "the client closed the connection".to_string(),
        };
        match frame {
            Some(Ok(ServerMessage::Error { id: None, error })) => last_error = Some(error),
            Some(Ok(message)) => {
                deliver(&inner, message).await;
                if !codec::holds_frame(reader.read_buffer()) {
                    codec::release_room(reader.read_buffer_mut());
                }
            }
            Some(Err(e)) => break format!("bad frame from the server: {e}"),
            None => break "the server closed the connection".to_string(),
        }
    };
    let reason = match last_error {
        Some(error) => format!("{reason}: {error}"),
        None => reason,
    };
    inner.close(reason);
}

/// Routes one frame to whoever waits for its request id.
async fn deliver(inner: &Inner, message: ServerMessage) {
    use ServerMessage as M;
    let (id, delivery) = match message {
        M::Accepted { id, task } => (id, Delivery::Event(TaskEvent::Accepted(task))),
        M::Progress { id, event } => (id, Delivery::Event(TaskEvent::Progress(event))),
        M::Output {
            id,
            stream: OutputStream::Stdout,
            chunk,
        } => (id, Delivery::Event(TaskEvent::Stdout(chunk))),
        M::Output {
            id,
            stream: OutputStream::Stderr,
            chunk,
        } => (id, Delivery::Event(TaskEvent::Stderr(chunk))),
        M::Exited { id, outcome } => (id, Delivery::End(Ok(outcome))),
        M::Failed { id, error } => (id, Delivery::End(Err(Error::Remote(error)))),
        M::Error {
            id: Some(id),
            error,
        } => return answer_error(inner, id, error),
        M::Pong { id, .. }
        | M::StatusReply { id, .. }
        | M::CatalogReply { id, .. }
        | M::Done { id }
        | M::TaskList { id, .. } => return answer(inner, id, Ok(message)),
        M::StdinCredit { id, bytes } => return inner.credit_stdin(id, bytes),
        M::Welcome(_) | M::Error { id: None, .. } => return,
    };
    let ends = matches!(delivery, Delivery::End(_));
    if ends {
        inner.close_stdin(id);
    }
    let waiter = {
        let mut waiters = inner.waiters.lock().unwrap();
        let pending = &mut waiters.pending;
        if ends {
            pending.remove(&id)
        } else {
            match pending.get(&id) {
                Some(Pending::Task(events)) => Some(Pending::Task(events.clone())),
                _ => None,
            }
        }
    };
    if let Some(Pending::Task(events)) = waiter {
        // Waits while the handle's buffer is full: that is the backpressure.
        // An error means the handle was dropped, which already cancelled it.
        let _ = events.send(delivery).await;
    }
}

fn answer(inner: &Inner, id: RequestId, result: Result<ServerMessage, Error>) {
    let waiter = inner.forget(id);
    if let Some(Pending::Reply(reply)) = waiter {
        let _ = reply.send(result);
    }
}

/// A non-terminal error about a request: fatal for a status or ping, only
/// informative for a task (e.g. stdin that arrived after the task ended).
fn answer_error(inner: &Inner, id: RequestId, error: TaskError) {
    let is_reply = matches!(
        inner.waiters.lock().unwrap().pending.get(&id),
        Some(Pending::Reply(_))
    );
    if is_reply {
        answer(inner, id, Err(Error::Remote(error)));
    } else {
        debug!(id, %error, "server note about a task");
    }
}

/// One running task. Read its events with [`next`](TaskHandle::next), or
/// skip them with [`wait`](TaskHandle::wait) or collect them with
/// [`output`](TaskHandle::output). Dropping the handle of a submitted task
/// before it ends cancels the task; dropping an attached one only stops
/// following it.
///
/// When the connection breaks (the server restarted, say), the handle
/// reconnects and re-attaches by itself, from the bytes it already gave
/// out (see [`ConnectOptions::resume`]). Its stdin does not survive that.
pub struct TaskHandle {
    id: RequestId,
    /// The server-wide id, once the server accepted the task.
    task: Option<TaskId>,
    /// Output bytes handed out so far, per stream: where a resume starts.
    delivered: Offsets,
    /// Times the handle resumed.
    resumed: u32,
    /// Keeps the connection open while the handle lives.
    #[allow(dead_code)]
    alive: Arc<Alive>,
    events: mpsc::Receiver<Delivery>,
    stdin: StdinWriter,
    inner: Arc<Inner>,
    end: Option<Result<Outcome, Error>>,
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("request", &self.id)
            .field("task", &self.task)
            .finish()
    }
}

impl TaskHandle {
    /// The task's server-wide id, once its `Accepted` event has been read
    /// (by [`next`](TaskHandle::next), [`wait`](TaskHandle::wait) or
    /// [`output`](TaskHandle::output)).
    pub fn id(&self) -> Option<&TaskId> {
        self.task.as_ref()
    }

    /// The request id of this task on its current connection.
    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// The next event, or `None` once the task has ended; then
    /// [`wait`](TaskHandle::wait) returns the outcome at once.
    pub async fn next(&mut self) -> Option<TaskEvent> {
        if self.end.is_some() {
            return None;
        }
        let delivery = self.events.recv().await;
        let lost = match delivery {
            Some(Delivery::Event(event)) => return Some(self.note(event)),
            Some(Delivery::End(Err(Error::Disconnected(reason)))) => reason,
            Some(Delivery::End(end)) => {
                self.end = Some(end);
                return None;
            }
            None => self.inner.disconnected().to_string(),
        };
        match self.resume(&lost).await {
            Ok(()) => Some(TaskEvent::Progress(ProgressEvent::Resumed {
                attempts: self.resumed,
            })),
            Err(e) => {
                self.end = Some(Err(e));
                None
            }
        }
    }

    /// Counts what the program is handed, so that a resume starts after it.
    fn note(&mut self, event: TaskEvent) -> TaskEvent {
        match &event {
            TaskEvent::Accepted(task) => self.task = Some(task.clone()),
            TaskEvent::Stdout(chunk) => self
                .delivered
                .advance(OutputStream::Stdout, chunk.len() as u64),
            TaskEvent::Stderr(chunk) => self
                .delivered
                .advance(OutputStream::Stderr, chunk.len() as u64),
            TaskEvent::Progress(_) => {}
        }
        event
    }

    /// Reconnects and re-attaches after the connection broke, retrying
    /// with backoff within the resume window. Fails with the disconnection
    /// when resuming is off, the task has no id yet, or the window passes.
    async fn resume(&mut self, lost: &str) -> Result<(), Error> {
        let (Some(task), Some(dialer)) = (self.task.clone(), self.inner.dialer.clone()) else {
            return Err(Error::Disconnected(lost.to_owned()));
        };
        let Some(window) = dialer.options.resume else {
            return Err(Error::Disconnected(lost.to_owned()));
        };
        let deadline = Instant::now() + window;
        let mut pause = FIRST_RESUME_BACKOFF;
        loop {
            let last = match self.reattach(&dialer, &task).await {
                Ok(()) => {
                    self.resumed += 1;
                    debug!(%task, resumed = self.resumed, "re-attached after a broken connection");
                    return Ok(());
                }
                // A server that came back before its engine knows the
                // task only once the engine answers: try again.
                Err(Error::Remote(e)) if e.kind == ErrorKind::Engine => e.to_string(),
                // The server answered: the task is gone or not ours.
                Err(e @ Error::Remote(_)) => return Err(e),
                Err(e) => e.to_string(),
            };
            if Instant::now() + pause > deadline {
                return Err(Error::Disconnected(format!(
                    "{lost}; re-attaching to task {task} failed for {window:?} (last: {last}); \
                     `tcp-task attach {task}` may still follow it"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RESUME_BACKOFF);
        }
    }

    /// One attempt: a new connection, an attach from what was delivered,
    /// and its `Accepted`. The handle then reads from the new connection.
    async fn reattach(&mut self, dialer: &Dialer, task: &TaskId) -> Result<(), Error> {
        let client = Client::connect_with(dialer.addr.as_str(), dialer.options.clone()).await?;
        let mut fresh = client.attach_from(task, self.delivered).await?;
        match fresh.events.recv().await {
            Some(Delivery::Event(TaskEvent::Accepted(_))) => {}
            Some(Delivery::End(Err(e))) => return Err(e),
            other => {
                return Err(Error::Disconnected(format!(
                    "the server answered an attach without accepting it ({})",
                    if other.is_some() {
                        "another frame"
                    } else {
                        "closed"
                    }
                )))
            }
        }
        std::mem::swap(&mut self.id, &mut fresh.id);
        std::mem::swap(&mut self.events, &mut fresh.events);
        std::mem::swap(&mut self.inner, &mut fresh.inner);
        std::mem::swap(&mut self.alive, &mut fresh.alive);
        // The old connection's stdin is gone with it.
        self.stdin = StdinWriter {
            id: self.id,
            inner: self.inner.clone(),
            credit: None,
        };
        // `fresh` now holds the dead connection's parts: nothing to cancel.
        fresh.end = Some(Err(Error::Disconnected("replaced".into())));
        Ok(())
    }

    /// Waits for the end, discarding the events still to come.
    pub async fn wait(mut self) -> Result<Outcome, Error> {
        while self.next().await.is_some() {}
        self.end
            .take()
            .expect("next() returned None, so the end is known")
    }

    /// Waits for the end, collecting stdout and stderr.
    pub async fn output(mut self) -> Result<TaskOutput, Error> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = self.next().await {
            match event {
                TaskEvent::Stdout(chunk) => stdout.extend_from_slice(&chunk),
                TaskEvent::Stderr(chunk) => stderr.extend_from_slice(&chunk),
                _ => {}
            }
        }
        let outcome = self
            .end
            .take()
            .expect("next() returned None, so the end is known")?;
        Ok(TaskOutput {
            stdout,
            stderr,
            outcome,
        })
    }

    /// A writer for the task's stdin (the spec must have set `stdin`).
    pub fn stdin(&self) -> StdinWriter {
        self.stdin.clone()
    }

    /// Asks the server to stop the task. The handle then ends with an
    /// outcome whose ending is `Cancelled` (or the task's own, if it ended
    /// first). On an attached handle it only stops following: the handle
    /// ends with an error of kind [`ErrorKind::Detached`].
    pub async fn cancel(&self) -> Result<(), Error> {
        self.inner.send(ClientMessage::Cancel { id: self.id }).await
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if self.end.is_some() {
            return;
        }
        self.inner.close_stdin(self.id);
        let removed = self.inner.forget(self.id);
        if removed.is_none() {
            return; // already ended, only not read yet
        }
        let cancel = ClientMessage::Cancel { id: self.id };
        if let Err(mpsc::error::TrySendError::Full(cancel)) = self.inner.outgoing.try_send(cancel) {
            let outgoing = self.inner.outgoing.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { outgoing.send(cancel).await });
            }
        }
    }
}

/// Streams bytes into a task's stdin. Cloneable; every clone writes to the
/// same stdin.
///
/// A write waits while the task has not taken what was sent before (the
/// server's window, [`STDIN_WINDOW`]): a task that does not read its stdin
/// stalls its own writer, never the connection or its other tasks.
#[derive(Clone)]
pub struct StdinWriter {
    id: RequestId,
    inner: Arc<Inner>,
    /// `None` when the task has no stdin.
    credit: Option<Arc<Semaphore>>,
}

impl StdinWriter {
    /// Sends `data`, split into chunks the server accepts, each once the
    /// task's window has room for it. Fails once the task has ended.
    pub async fn write(&self, mut data: Bytes) -> Result<(), Error> {
        let credit = self.credit()?;
        let max = (self.inner.limits.max_chunk_len as usize)
            .clamp(1, MAX_CHUNK_LEN)
            .min(STDIN_WINDOW as usize);
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(max));
            let room = credit
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| self.ended())?;
            // The bytes leave the window; the server's credit brings them back.
            room.forget();
            self.inner
                .send(ClientMessage::Stdin { id: self.id, chunk })
                .await?;
        }
        Ok(())
    }

    /// Ends the task's stdin: it reads end-of-file.
    pub async fn close(&self) -> Result<(), Error> {
        self.credit()?;
        self.inner
            .send(ClientMessage::StdinClose { id: self.id })
            .await
    }

    fn credit(&self) -> Result<&Semaphore, Error> {
        self.credit.as_deref().ok_or_else(|| {
            Error::Remote(TaskError::new(
                ErrorKind::BadRequest,
                "this task has no stdin: set `stdin: true` in its TaskSpec",
            ))
        })
    }

    fn ended(&self) -> Error {
        match self.inner.waiters.lock().unwrap().closed.clone() {
            Some(reason) => Error::Disconnected(reason),
            None => Error::Remote(TaskError::new(
                ErrorKind::UnknownRequest,
                format!("request {} has ended: its stdin takes no more", self.id),
            )),
        }
    }
}

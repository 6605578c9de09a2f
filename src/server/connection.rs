//! One client connection on the server side: a reader that dispatches
//! frames, a writer that batches them, and the table of tasks running for
//! this client.
//!
//! A Submit goes through admission (the connection's, the client's and the
//! server's quotas, then the rules) and only an allowed plan reaches the
//! [`Executor`]. Nothing here knows about Docker.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::counted::Counted;
use super::handshake::{protocol_error, read_hello, refuse_plaintext, send_now};
use super::outgoing::{Outgoing, TaskEvents};
use super::shared::{server_name, Shared};
use super::stdin::StdinWindow;
use super::tls;
use super::write_timeout::WriteTimeout;
use crate::access::Credential;
use crate::admission::{Admitted, Quota, Scope};
use crate::codec::{self, FrameCodec};
use crate::executor::{Events, Executor};
use crate::metrics::Listener;
use crate::protocol::{
    ClientMessage, ErrorKind, Offsets, RequestId, ServerMessage, Task, TaskError, TaskId, TaskSpec,
    Welcome, PROTOCOL_VERSION, STDIN_WINDOW,
};
use crate::tasks::{Record, Tasks};

/// Frames waiting for the writer. Output frames are also bounded in bytes by
/// the connection's output budget; this bounds the small ones.
const OUTGOING_QUEUE: usize = 1024;

/// Stdin chunks between a task's stdin window and its runtime: one, so
/// that nearly all of what a client sent and the task did not take yet is
/// counted in its window.
const STDIN_QUEUE: usize = 1;

/// A request of this connection that follows a task: a Submit, an
/// Attach or a Wait.
struct TaskEntry {
    /// `None` once stdin is closed (or was never asked for, or this
    /// request did not submit the task).
    stdin: Option<StdinWindow>,
    /// What a `Cancel` of the request fires: the task's own token for a
    /// Submit, the end of following it for an Attach or Wait.
    cancel: CancellationToken,
}

type TaskTable = Arc<Mutex<HashMap<RequestId, TaskEntry>>>;

/// Serves a freshly accepted socket: the TLS handshake first when the
/// server speaks TLS, then the protocol. Runs in the connection's own task,
/// so a slow TLS client holds up nobody else; the TLS handshake and the
/// hello together get the handshake timeout.
pub(crate) async fn serve_socket<E: Executor>(
    socket: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<E>>,
) {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let Some(acceptor) = shared.tls.clone() else {
        return serve(socket, peer, shared, deadline).await;
    };
    match tokio::time::timeout_at(deadline, tls::accept(&acceptor, socket)).await {
        Ok(Ok(stream)) => serve(stream, peer, shared, deadline).await,
        Ok(Err(tls::Refused::Plaintext(socket))) => {
            shared
                .metrics
                .connection_refused(Listener::Tcp, "plaintext");
            refuse_plaintext(socket, peer, &shared, deadline).await
        }
        Ok(Err(tls::Refused::Failed(reason))) => {
            shared.metrics.connection_refused(Listener::Tcp, "tls");
            info!(%peer, %reason, "TLS handshake failed")
        }
        Err(_) => {
            shared
                .metrics
                .connection_refused(Listener::Tcp, "handshake_timeout");
            info!(%peer, timeout = ?shared.config.handshake_timeout, "no TLS handshake within the handshake timeout; closed")
        }
    }
}

/// Serves one connection until the client leaves, breaks the protocol, sits
/// idle, or the server shuts down. Returns once every task it started has
/// ended and its terminal frame has been written (or the client is gone).
/// The hello must arrive by `deadline`.
pub(crate) async fn serve<S, E>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared<E>>,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: Executor,
{
    let stream = Counted::new(stream, shared.metrics.clone());
    let (mut reader, writer) = tokio::io::split(stream);
    let writer = WriteTimeout::new(writer, shared.config.write_timeout);
    let max_frame_len = shared.config.max_frame_len;
    let mut writer = FramedWrite::new(writer, FrameCodec::<()>::new(max_frame_len));

    let mut buffer = BytesMut::new();
    let handshake = tokio::time::timeout_at(
        deadline,
        read_hello(&mut reader, &mut buffer, max_frame_len as usize),
    )
    .await
    .unwrap_or_else(|_| {
        Err(TaskError::new(
            ErrorKind::Timeout,
            format!(
                "no handshake within {:?}; a tcp-task client sends its hello first",
                shared.config.handshake_timeout
            ),
        ))
    })
    .and_then(|hello| shared.check_credentials(&hello, peer));

    let login = match handshake {
        Ok(login) => login,
        Err(error) => {
            shared
                .metrics
                .connection_refused(Listener::Tcp, handshake_refusal(error.kind));
            info!(%peer, %error, "handshake refused");
            let _ = send_now(&mut writer, ServerMessage::Error { id: None, error }).await;
            return;
        }
    };
    // Debug formatting: the name is the client's free text, and escaping it
    // keeps a name with line breaks from forging log lines.
    let client_name = login.client.as_ref().map(|c| c.name());
    debug!(%peer, client = ?login.hello.client, token = ?client_name, "handshake done");
    let welcome = ServerMessage::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: server_name(),
        limits: shared.config.limits(),
    });
    if send_now(&mut writer, welcome).await.is_err() {
        return;
    }

    // An idle connection should cost little: the write buffer starts empty
    // instead of at FramedWrite's 8 KiB and grows to what the connection
    // sends (ServerMessage is kept small for the outgoing queue likewise).
    *writer.write_buffer_mut() = BytesMut::new();
    // Bytes that came after the hello are the start of the next frames.
    // They go in front of the socket rather than into the FramedRead's
    // buffer: it decodes only after a read of its own, so requests sent in
    // the same write as the hello would wait for the client's next write.
    let after_hello = std::io::Cursor::new(Bytes::copy_from_slice(&buffer));
    drop(buffer);
    let frames = FramedRead::with_capacity(
        after_hello.chain(reader),
        FrameCodec::<ClientMessage>::new(max_frame_len),
        0,
    );
    Connection::new(peer, shared, login.client)
        .run(frames, writer)
        .await;
}

/// The state of one connection after its handshake.
struct Connection<E> {
    peer: SocketAddr,
    /// The named client whose token opened the connection, if any.
    client: Option<Arc<Credential>>,
    shared: Arc<Shared<E>>,
    outgoing: mpsc::Sender<Outgoing>,
    outgoing_rx: Option<mpsc::Receiver<Outgoing>>,
    tasks: TaskTable,
    /// Bounds the tasks running on this connection.
    quota: Quota,
    /// Bounds the Attach and Wait requests following tasks at once.
    watches: Quota,
    /// Bytes of output that may wait for the writer, across all tasks.
    output_budget: Arc<Semaphore>,
    /// Woken whenever a task ends, so a draining connection notices when it
    /// has none left.
    task_ended: Arc<Notify>,
    tracker: TaskTracker,
    /// Cancels every task of this connection (its tokens are children).
    gone: CancellationToken,
    draining: bool,
}

/// What the reader loop decided after one frame.
enum Next {
    Continue,
    Close,
}

impl<E: Executor> Connection<E> {
    fn new(
        peer: SocketAddr,
        shared: Arc<Shared<E>>,
        client: Option<Arc<Credential>>,
    ) -> Connection<E> {
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        let gone = shared.abort.child_token();
        let output_budget = Arc::new(Semaphore::new(shared.config.output_budget()));
        let quota = Quota::new(shared.config.max_tasks_per_connection, Scope::Connection);
        let watches = Quota::new(shared.config.max_tasks_per_connection, Scope::Following);
        Connection {
            peer,
            client,
            shared,
            outgoing,
            outgoing_rx: Some(outgoing_rx),
            tasks: Arc::default(),
            quota,
            watches,
            output_budget,
            task_ended: Arc::default(),
            tracker: TaskTracker::new(),
            gone,
            draining: false,
        }
    }

    async fn run<R, W>(
        mut self,
        mut frames: FramedRead<R, FrameCodec<ClientMessage>>,
        writer: FramedWrite<W, FrameCodec<()>>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let writer_task = self.spawn_writer(writer);
        let idle_timeout = self.shared.config.idle_timeout;
        // The futures the loop waits on besides the next frame are made
        // once, not once per frame: each would register a waiter anew.
        // One timer for the connection's life: a frame only notes the time,
        // and the timer is moved when it fires.
        let idle = tokio::time::sleep(idle_timeout);
        let shutdown = self.shared.shutdown.clone().cancelled_owned();
        let gone = self.gone.clone().cancelled_owned();
        let task_ended = self.task_ended.clone();
        let ended = task_ended.notified();
        tokio::pin!(idle, shutdown, gone, ended);
        let mut active_at = Instant::now();
        loop {
            if self.draining && self.running() == 0 {
                self.send_error(
                    None,
                    ErrorKind::ShuttingDown,
                    "the server is shutting down; reconnect once it is back, or use another server",
                )
                .await;
                break;
            }
            // Biased: a broken writer first (a cheap check), then frames;
            // under a stream of frames the timers and notifications are not
            // polled for each one (a fair select polls its branches in
            // random order). They are whenever the reader waits, which it
            // does at the latest when its task's budget runs out.
            let frame = tokio::select! {
                biased;
                _ = &mut gone => break,
                frame = frames.next() => frame,
                _ = &mut idle => {
                    let now = Instant::now();
                    // A running task keeps the connection open however quiet.
                    if self.running() > 0 {
                        active_at = now;
                    }
                    let quiet_until = active_at + idle_timeout;
                    if quiet_until > now {
                        idle.as_mut().reset(quiet_until);
                        continue;
                    }
                    let message = format!("closing the connection after {idle_timeout:?} without a frame or a running task");
                    self.send_error(None, ErrorKind::Timeout, message).await;
                    break;
                }
                _ = &mut shutdown, if !self.draining => {
                    self.draining = true;
                    continue;
                }
                _ = &mut ended => {
                    ended.set(task_ended.notified());
                    active_at = Instant::now();
                    continue;
                }
            };
            // The time is noted once per batch of frames, after the last
            // one the reader holds: a clock read per frame is a measurable
            // share of a small request's cost.
            if !codec::holds_frame(frames.read_buffer()) {
                active_at = Instant::now();
                codec::release_room(frames.read_buffer_mut());
            }
            let next = match frame {
                None => Next::Close,
                Some(Err(codec::CodecError::Io(e))) => {
                    debug!(peer = %self.peer, error = %e, "the connection broke");
                    Next::Close
                }
                Some(Err(e)) => {
                    info!(peer = %self.peer, error = %e, "bad frame; closing the connection");
                    let error = protocol_error(&e);
                    let _ = self
                        .outgoing
                        .send(ServerMessage::Error { id: None, error }.into())
                        .await;
                    Next::Close
                }
                Some(Ok(message)) => {
                    self.shared.metrics.frames_received(1);
                    self.dispatch(message).await
                }
            };
            if let Next::Close = next {
                break;
            }
        }
        // Whatever ended the connection, its tasks end with it.
        self.gone.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        drop(self.outgoing);
        let _ = writer_task.await;
        debug!(peer = %self.peer, "connection closed");
    }

    fn spawn_writer<W>(
        &mut self,
        mut writer: FramedWrite<W, FrameCodec<()>>,
    ) -> tokio::task::JoinHandle<()>
    where
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let mut queue = self.outgoing_rx.take().expect("the writer is spawned once");
        let gone = self.gone.clone();
        let peer = self.peer;
        let metrics = self.shared.metrics.clone();
        tokio::spawn(async move {
            let sent = |frames| metrics.frames_sent(frames);
            if let Err(e) = codec::write_batched_counting(&mut writer, &mut queue, sent).await {
                debug!(%peer, error = %e, "write failed; the client is gone");
                // The client is gone or reads nothing (write_timeout):
                // end the connection. Its tasks run on, as after any
                // broken connection, for the reattach grace.
                gone.cancel();
            }
        })
    }

    fn running(&self) -> usize {
        self.tasks.lock().unwrap().len()
    }

    async fn send(&self, message: ServerMessage) {
        let _ = self.outgoing.send(message.into()).await;
    }

    async fn send_error(&self, id: Option<RequestId>, kind: ErrorKind, message: impl Into<String>) {
        let error = TaskError::new(kind, message);
        self.send(ServerMessage::Error { id, error }).await;
    }

    async fn dispatch(&mut self, message: ClientMessage) -> Next {
        match message {
            ClientMessage::Submit { id, spec, detach } => self.submit(id, *spec, detach).await,
            ClientMessage::Stdin { id, chunk } => self.stdin(id, chunk).await,
            ClientMessage::StdinClose { id } => self.stdin_close(id).await,
            ClientMessage::Cancel { id } => self.cancel(id),
            ClientMessage::Ping { id, payload } => {
                self.send(ServerMessage::Pong { id, payload }).await
            }
            ClientMessage::Status { id } => self.status(id),
            ClientMessage::ListCatalog { id } => {
                let entries = self.shared.admission.catalog().infos();
                self.send(ServerMessage::CatalogReply { id, entries }).await;
            }
            ClientMessage::Attach {
                id,
                task,
                from,
                follow,
            } => self.follow(id, task, Some((from, follow))).await,
            ClientMessage::Wait { id, task } => self.follow(id, task, None).await,
            ClientMessage::Kill { id, task, signal } => self.kill(id, task, signal),
            ClientMessage::Remove { id, task, force } => self.remove(id, task, force),
            ClientMessage::List { id, all } => {
                let tasks = self.shared.tasks.list(self.client_name(), all);
                self.send(ServerMessage::TaskList { id, tasks }).await;
            }
        }
        Next::Continue
    }

    fn client_name(&self) -> Option<&str> {
        self.client.as_deref().map(Credential::name)
    }

    async fn submit(&mut self, id: RequestId, spec: TaskSpec, detach: bool) {
        match self.admit(id, spec.clone(), detach) {
            Ok(admitted) => self.start_task(id, admitted, &spec, detach).await,
            Err(Refusal::Duplicate(error)) => {
                self.send(ServerMessage::Error {
                    id: Some(id),
                    error,
                })
                .await
            }
            Err(Refusal::Terminal(error)) => {
                self.shared.metrics.request_refused(error.kind);
                debug!(request = id, kind = error.kind.as_str(), "task refused");
                self.send(ServerMessage::Failed { id, error }).await
            }
        }
    }

    /// Decides whether the task may run, before it is accepted. A refusal
    /// is immediate: the connection never waits for room.
    fn admit(&self, id: RequestId, spec: TaskSpec, detach: bool) -> Result<Admitted, Refusal> {
        // A duplicate first: a Failed frame under a running task's id would
        // read as that task's end.
        if let Err(error) = self.check_new_id(id) {
            return Err(Refusal::Duplicate(error));
        }
        if self.draining {
            return Err(Refusal::Terminal(TaskError::new(
                ErrorKind::ShuttingDown,
                "the server is shutting down and takes no new tasks; retry against another server or after it restarts",
            )));
        }
        // An HTTP task's answer goes to its caller only: its container
        // keeps no log of it to replay to a later attach.
        if detach && matches!(spec.task, Task::Http { .. }) {
            return Err(Refusal::Terminal(TaskError::new(
                ErrorKind::BadRequest,
                "an HTTP task cannot be detached: its answer goes to the client that submitted it",
            )));
        }
        let client = self.client.as_deref();
        let mut quotas = vec![&self.quota, &self.shared.task_quota];
        quotas.extend(client.and_then(Credential::quota));
        let rules = client.map(|c| c.rules.as_ref());
        self.shared
            .admission
            .admit(spec, rules, &quotas)
            .map_err(Refusal::Terminal)
    }

    /// A request id must not name a request that still runs here.
    fn check_new_id(&self, id: RequestId) -> Result<(), TaskError> {
        if self.tasks.lock().unwrap().contains_key(&id) {
            return Err(TaskError::new(
                ErrorKind::DuplicateId,
                format!("request id {id} is already running on this connection; use a new id"),
            ));
        }
        Ok(())
    }

    async fn start_task(
        &mut self,
        id: RequestId,
        mut admitted: Admitted,
        spec: &TaskSpec,
        detach: bool,
    ) {
        let tasks = self.shared.tasks.clone();
        let record = match tasks.create(&mut admitted, spec, self.client_name(), detach) {
            Ok(record) => record,
            Err(error) => return self.send(ServerMessage::Failed { id, error }).await,
        };
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let entry = TaskEntry {
            stdin: admitted
                .plan
                .stdin
                .then(|| StdinWindow::start(id, stdin_tx, self.outgoing.clone())),
            cancel: record.cancel.clone(),
        };
        self.tasks.lock().unwrap().insert(id, entry);
        // Accepted goes on the queue before the task can produce anything, so
        // it is always the task's first frame.
        let task = record.id.clone();
        tracing::debug!(%task, request = id, detach, "accepted a task");
        self.send(ServerMessage::Accepted { id, task }).await;

        let events = TaskEvents::new(id, self.outgoing.clone(), self.output_budget.clone());
        tasks.launch(record.clone(), admitted, Arc::new(events), stdin_rx);
        // This connection only watches the task: if it breaks, the task
        // runs on for its client to come back.
        let watch = self.watcher(id);
        self.tracker.spawn(async move {
            let delivered = watch.send_end(&record).await;
            tasks.unwatch(&record, delivered);
        });
    }

    /// Follows a task by its id: its output replayed from `from` and, with
    /// `follow`, live (an Attach), or only its end (a Wait; `replay` is
    /// `None`).
    async fn follow(&mut self, id: RequestId, task: TaskId, replay: Option<(Offsets, bool)>) {
        if let Err(error) = self.check_new_id(id) {
            return self
                .send(ServerMessage::Error {
                    id: Some(id),
                    error,
                })
                .await;
        }
        let found = self.shared.tasks.find(&task, self.client_name());
        let permit = self.watches.take();
        let (record, permit) = match (found, permit) {
            (Ok(record), Ok(permit)) => (record, permit),
            (Err(error), _) | (_, Err(error)) => {
                return self.send(ServerMessage::Failed { id, error }).await
            }
        };
        let stop = self.gone.child_token();
        let entry = TaskEntry {
            stdin: None,
            cancel: stop.clone(),
        };
        self.tasks.lock().unwrap().insert(id, entry);
        record.watch();
        tracing::debug!(%task, request = id, ?replay, running = record.is_running(), "following a task");
        self.send(ServerMessage::Accepted { id, task }).await;
        let tasks = self.shared.tasks.clone();
        let events = TaskEvents::new(id, self.outgoing.clone(), self.output_budget.clone());
        let watch = self.watcher(id);
        self.tracker.spawn(async move {
            let delivered = tokio::select! {
                delivered = async {
                    match replay {
                        None => watch.send_end(&record).await,
                        Some((from, follow)) => {
                            let short = send_output(&tasks, &record, from, follow, &events).await;
                            if let Some(error) = short {
                                watch.send_terminal(ServerMessage::Failed { id, error }).await
                            } else if !follow && record.is_running() {
                                watch.send_detached(&record).await
                            } else {
                                watch.send_end(&record).await
                            }
                        }
                    }
                } => delivered,
                _ = stop.cancelled() => watch.send_detached(&record).await,
            };
            drop(permit);
            tasks.unwatch(&record, delivered);
        });
    }

    fn watcher(&self, id: RequestId) -> Watcher {
        Watcher {
            id,
            outgoing: self.outgoing.clone(),
            tasks: self.tasks.clone(),
            task_ended: self.task_ended.clone(),
            gone: self.gone.clone(),
        }
    }

    fn kill(&self, id: RequestId, task: TaskId, signal: i32) {
        self.act_on(id, task, move |tasks, record| async move {
            tasks.kill(&record, signal).await
        });
    }

    fn remove(&self, id: RequestId, task: TaskId, force: bool) {
        self.act_on(id, task, move |tasks, record| async move {
            tasks.remove(&record, force).await
        });
    }

    /// Kill and Remove wait for the engine: carried out in their own task so
    /// the connection keeps reading, and answered `Done` or with an error.
    fn act_on<A, F>(&self, id: RequestId, task: TaskId, act: A)
    where
        A: FnOnce(Arc<Tasks<E>>, Arc<Record>) -> F + Send + 'static,
        F: Future<Output = Result<(), TaskError>> + Send,
    {
        let tasks = self.shared.tasks.clone();
        let found = tasks.find(&task, self.client_name());
        let outgoing = self.outgoing.clone();
        self.tracker.spawn(async move {
            let done = match found {
                Ok(record) => act(tasks, record).await,
                Err(error) => Err(error),
            };
            let _ = outgoing.send(answer(id, done).into()).await;
        });
    }

    /// Never waits: a task that does not read its stdin holds only its own
    /// window (src/server/stdin.rs), not this connection's reading.
    async fn stdin(&self, id: RequestId, chunk: Bytes) {
        let pushed = self
            .tasks
            .lock()
            .unwrap()
            .get(&id)
            .map(|task| task.stdin.as_ref().map(|window| window.push(chunk)));
        let message = match pushed {
            Some(Some(Ok(()))) => return,
            Some(Some(Err(overrun))) => return self.stdin_overrun(id, overrun.held).await,
            Some(None) => format!("stdin for request {id}, whose stdin is closed or was not requested (set `stdin` in the task spec); ignored"),
            None => format!("stdin for request {id}, which is not running (it ended or was never submitted); ignored"),
        };
        self.send_error(Some(id), ErrorKind::UnknownRequest, message)
            .await;
    }

    /// A client that sends past its window broke the protocol for this
    /// task: the task's input would have a hole, so the task is cancelled
    /// (its end follows) rather than fed the rest.
    async fn stdin_overrun(&self, id: RequestId, held: usize) {
        let message = format!(
            "stdin for request {id} went past its window of {STDIN_WINDOW} bytes ({held} unacknowledged): a client must wait for StdinCredit before sending more; the task is cancelled"
        );
        self.send_error(Some(id), ErrorKind::BadRequest, message)
            .await;
        if let Some(task) = self.tasks.lock().unwrap().get_mut(&id) {
            task.stdin = None;
            task.cancel.cancel();
        }
    }

    async fn stdin_close(&self, id: RequestId) {
        let known = match self.tasks.lock().unwrap().get_mut(&id) {
            Some(task) => {
                task.stdin = None;
                true
            }
            None => false,
        };
        if !known {
            let message = format!("stdin close for request {id}, which is not running; ignored");
            self.send_error(Some(id), ErrorKind::UnknownRequest, message)
                .await;
        }
    }

    /// Cancelling a task that already ended is not an error: the client
    /// cannot know that its cancel crossed the terminal frame.
    fn cancel(&self, id: RequestId) {
        if let Some(task) = self.tasks.lock().unwrap().get(&id) {
            task.cancel.cancel();
        }
    }

    /// Status asks the engine, which may be slow: answered from its own task
    /// so the connection keeps reading.
    fn status(&self, id: RequestId) {
        let shared = self.shared.clone();
        let outgoing = self.outgoing.clone();
        self.tracker.spawn(async move {
            let status = shared.status().await;
            let _ = outgoing
                .send(
                    ServerMessage::StatusReply {
                        id,
                        status: Box::new(status),
                    }
                    .into(),
                )
                .await;
        });
    }
}

/// `Done`, or the error as a plain (non-terminal) error frame.
fn answer(id: RequestId, done: Result<(), TaskError>) -> ServerMessage {
    match done {
        Ok(()) => ServerMessage::Done { id },
        Err(error) => ServerMessage::Error {
            id: Some(id),
            error,
        },
    }
}

/// Sends the replayed output of `record` from `from` as this request's
/// Output frames, until the task's output ends (or, without `follow`, until
/// what it wrote so far is sent). Returns the error to end the request
/// with when the engine's log of an ended task holds less than the task
/// wrote (the engine could not write it: a full disk): a replay that is
/// silently short would pass for the whole output.
async fn send_output<E: Executor>(
    tasks: &Arc<Tasks<E>>,
    record: &Arc<Record>,
    from: Offsets,
    follow: bool,
    events: &TaskEvents,
) -> Option<TaskError> {
    // A task that could not run has no output of its own (a failed exec's
    // report is in its error).
    if record.result().is_some_and(|r| r.is_err()) {
        return None;
    }
    let mut at = from;
    let mut replay = tasks.output(record.clone(), from, follow);
    while let Some(item) = replay.next().await {
        let sent = match item {
            Ok((stream, chunk)) => {
                at.advance(stream, chunk.len() as u64);
                events.output(stream, chunk).await
            }
            Err(error) => {
                let _ = events.note(error).await;
                return None;
            }
        };
        if sent.is_err() {
            return None;
        }
    }
    let replayed = at.stdout + at.stderr;
    let wrote = record.output_bytes();
    tracing::debug!(task = %record.id, ?from, to = ?at, wrote, "replay ended");
    (record.result().is_some() && replayed < wrote).then(|| short_log(record, replayed, wrote))
}

fn short_log(record: &Record, replayed: u64, wrote: u64) -> TaskError {
    let ended = match record.result() {
        Some(Ok(outcome)) => format!(" (it ended with exit status {})", outcome.exit_status()),
        _ => String::new(),
    };
    TaskError::new(
        ErrorKind::Engine,
        format!(
            "the engine's log of task {} holds {replayed} of the {wrote} output bytes it wrote{ended}: \
             the engine could not keep the rest (is the disk of its data-root full?)",
            record.id
        ),
    )
}

/// What one request that follows a task needs to end it: the connection's
/// queue and table.
struct Watcher {
    id: RequestId,
    outgoing: mpsc::Sender<Outgoing>,
    tasks: TaskTable,
    task_ended: Arc<Notify>,
    gone: CancellationToken,
}

impl Watcher {
    /// Waits for the task's end and sends its terminal frame. `false` when
    /// the connection went first. A task that is being cancelled (by its
    /// client, or by the server's shutdown) ends promptly, and its end is
    /// still sent if the connection can carry it.
    async fn send_end(&self, record: &Record) -> bool {
        let result = tokio::select! {
            result = record.ended() => result,
            _ = self.gone.cancelled(), if !record.cancel.is_cancelled() => {
                if record.cancel.is_cancelled() {
                    record.ended().await
                } else {
                    self.tasks.lock().unwrap().remove(&self.id);
                    return false;
                }
            }
        };
        let terminal = match result {
            Ok(outcome) => ServerMessage::Exited {
                id: self.id,
                outcome,
            },
            Err(error) => ServerMessage::Failed { id: self.id, error },
        };
        self.send_terminal(terminal).await
    }

    /// The client stopped following: the request ends, the task runs on.
    async fn send_detached(&self, record: &Record) -> bool {
        let error = TaskError::new(
            ErrorKind::Detached,
            format!(
                "stopped following task {}; it runs on (`tcp-task attach {}` follows it again)",
                record.id, record.id
            ),
        );
        self.send_terminal(ServerMessage::Failed { id: self.id, error })
            .await;
        false
    }

    async fn send_terminal(&self, terminal: ServerMessage) -> bool {
        // Out of the table before the terminal frame is sent, so that the
        // client may reuse the id as soon as it sees the frame.
        self.tasks.lock().unwrap().remove(&self.id);
        let sent = self.outgoing.send(terminal.into()).await.is_ok();
        self.task_ended.notify_one();
        sent
    }
}

enum Refusal {
    /// The id is in use: answering with a terminal frame would end the task
    /// that owns it, so the answer is a plain error.
    Duplicate(TaskError),
    /// Refused: the request's only frame is this `Failed`.
    Terminal(TaskError),
}

/// Why a handshake was refused, as `tcptask_connections_refused` counts it.
fn handshake_refusal(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::Timeout => "handshake_timeout",
        ErrorKind::VersionMismatch => "version_mismatch",
        _ => "handshake",
    }
}

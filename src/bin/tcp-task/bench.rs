//! `tcp-task bench load`: many tasks over many connections against a
//! running server, for an operator checking their own deployment.
//!
//! It reports throughput, latency percentiles and errors by kind, and it
//! checks the server's promises on the wire: every submitted task gets
//! exactly one terminal frame (`Exited` or `Failed`), and the same task
//! prints the same bytes every time.
//!
//! Why not the client library: [`tcp_task::Client`] removes a request's
//! waiter when its terminal frame arrives and drops any later frame for that
//! id without a word, so a duplicated terminal frame can never be seen
//! through it. The load tool therefore speaks the protocol itself, with the
//! library's codec and message types, and counts terminal frames per
//! request id. A frame for an id that is not in flight is counted too
//! (`stray`). At the end of its share each connection sends a `Ping` and
//! reads up to the `Pong`, so a duplicate the server queued before it is
//! still seen.

use futures::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcp_task::codec::FrameCodec;
use tcp_task::protocol::{
    ClientMessage, Hello, OutputStream, RequestId, ServerMessage, Task, DEFAULT_MAX_FRAME_LEN,
};
use tcp_task::{Ending, Outcome, TaskSpec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::args::{ConnectionArgs, LoadArgs};
use crate::run::snake_case;
use crate::EXIT_SERVER_ERROR;

/// Exit status when a task was lost, duplicated or wrong, or a frame
/// arrived for no task in flight: the server broke a promise.
pub const EXIT_BROKEN: u8 = 1;
/// Exit status when the promises held but some tasks failed (errors by
/// kind) or were never submitted.
pub const EXIT_ERRORS: u8 = 2;

/// Time allowed for the TCP connection, TLS and the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the final Ping's answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What one task printed and how it ended: what must be the same every time.
#[derive(PartialEq, Eq, Debug)]
struct Signature {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    ending: Ending,
    exit_code: Option<i32>,
    signal: Option<i32>,
    output_truncated: bool,
}

/// Counts of one connection, or of the whole run once merged.
#[derive(Default, Debug)]
struct Tally {
    submitted: u64,
    completed: u64,
    lost: u64,
    duplicated: u64,
    wrong: u64,
    stray: u64,
    /// Failed tasks by error kind, and connections that broke or never
    /// opened by what went wrong (`connect`, `handshake`, `disconnected`…).
    errors: BTreeMap<String, u64>,
    /// The first message of each error kind, for the person reading.
    messages: BTreeMap<String, String>,
    /// Submit to terminal frame, per completed task.
    latencies: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.submitted += other.submitted;
        self.completed += other.completed;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.wrong += other.wrong;
        self.stray += other.stray;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, message) in other.messages {
            self.messages.entry(kind).or_insert(message);
        }
        self.latencies.extend(other.latencies);
    }

    fn error(&mut self, (kind, message): Failure) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.messages.entry(kind).or_insert(message);
    }
}

/// An error's kind (snake_case, the key in `errors`) and what it said.
type Failure = (String, String);

fn failure(kind: &str, message: impl std::fmt::Display) -> Failure {
    (kind.to_string(), message.to_string())
}

/// A server's error, by its kind.
fn remote(error: &tcp_task::TaskError) -> Failure {
    (snake_case(&format!("{:?}", error.kind)), error.to_string())
}

/// What every connection shares.
struct Shared {
    spec: TaskSpec,
    tasks: u64,
    /// Tasks not yet taken by a connection.
    left: AtomicU64,
    /// With `--rate`: when the run started and the time between tasks.
    schedule: Option<(Instant, Duration)>,
    /// The first completed task's output: the one every other must match.
    reference: Mutex<Option<Signature>>,
    progress: ProgressBar,
}

impl Shared {
    /// Takes one task to submit, if any is left, with the time it is due:
    /// now, or with `--rate` its place in the schedule.
    fn take(&self) -> Option<Instant> {
        let left = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        let due = match self.schedule {
            Some((start, interval)) => start + interval.mul_f64((self.tasks - left) as f64),
            None => Instant::now(),
        };
        Some(due)
    }

    /// True when `signature` matches the reference (the first one becomes it).
    fn matches(&self, signature: Signature) -> bool {
        let mut reference = self.reference.lock().unwrap();
        match reference.as_ref() {
            Some(first) => *first == signature,
            None => {
                *reference = Some(signature);
                true
            }
        }
    }
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    tasks: u64,
    connections: usize,
    window: usize,
    /// `--rate`: tasks offered per second (null: as fast as the windows allow).
    rate: Option<f64>,
    submitted: u64,
    not_submitted: u64,
    completed: u64,
    lost: u64,
    duplicated: u64,
    wrong: u64,
    stray: u64,
    errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    error_messages: BTreeMap<String, String>,
    elapsed_s: f64,
    tasks_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    exit_status: u8,
}

pub async fn load(connection: &ConnectionArgs, args: LoadArgs) -> u8 {
    let spec = match spec_of(&args) {
        Ok(spec) => spec,
        Err(message) => {
            eprintln!("tcp-task: {message}");
            return EXIT_SERVER_ERROR;
        }
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(args.tasks);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} tasks, {per_sec}, {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        spec,
        tasks: args.tasks,
        left: AtomicU64::new(args.tasks),
        schedule: args
            .rate
            .map(|rate| (started, Duration::from_secs_f64(1.0 / rate))),
        reference: Mutex::new(None),
        progress,
    });
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let shared = shared.clone();
            let connection = connection.clone();
            let (window, stall) = (args.window, args.stall);
            tokio::spawn(async move { drive(&connection, window, stall, &shared).await })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(part) => tally.merge(part),
            Err(e) => tally.error(failure("worker", e)),
        }
    }
    let elapsed = started.elapsed();
    shared.progress.finish_and_clear();
    let report = report(&args, tally, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_report(&report);
    }
    report.exit_status
}

fn spec_of(args: &LoadArgs) -> Result<TaskSpec, String> {
    let mut spec = match &args.task {
        Some(name) => TaskSpec {
            task: Task::Named {
                name: name.clone(),
                args: args.command.clone(),
                params: None,
            },
            ..TaskSpec::default()
        },
        None => match args.command.split_first() {
            Some((image, command)) => TaskSpec::image(image, command),
            None => {
                return Err(
                    "say what to run: --task NAME [ARGS…] or IMAGE [CMD…] (see --help)".into(),
                )
            }
        },
    };
    spec.timeout_ms = args.timeout.map(|t| t.as_millis() as u64);
    Ok(spec)
}

/// One connection: takes tasks from the shared count, keeps up to `window`
/// of them in flight, and checks every frame that comes back.
async fn drive(
    connection: &ConnectionArgs,
    window: usize,
    stall: Duration,
    shared: &Shared,
) -> Tally {
    let mut tally = Tally::default();
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, open(connection)).await;
    let result = match opened {
        Ok(Ok((stream, limits_window))) => {
            let window = match limits_window {
                0 => window,
                max => window.min(max),
            };
            exchange(stream, window, stall, shared, &mut tally).await
        }
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(failure(
            "connect_timeout",
            format!("no connection and handshake within {CONNECT_TIMEOUT:?}"),
        )),
    };
    if let Err(failure) = result {
        tally.error(failure);
        shared
            .progress
            .set_message(format!("errors: {:?}", tally.errors));
    }
    tally
}

type Stream = Box<dyn AsyncReadWrite>;
trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// Connects (with TLS when asked) and performs the handshake. Returns the
/// stream and the server's per-connection task limit, or what went wrong.
async fn open(connection: &ConnectionArgs) -> Result<(Framed, usize), Failure> {
    let address = connection.address();
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| failure("connect", format!("cannot connect to {address}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream: Stream = match connection.tls() {
        Some(tls) => Box::new(
            tls.connect(tcp, address)
                .await
                .map_err(|e| failure("tls", e))?,
        ),
        None => Box::new(tcp),
    };
    let (reader, writer) = tokio::io::split(stream);
    let mut writer = FramedWrite::new(writer, FrameCodec::<()>::new(DEFAULT_MAX_FRAME_LEN));
    let mut reader = FramedRead::new(
        reader,
        FrameCodec::<ServerMessage>::new(DEFAULT_MAX_FRAME_LEN),
    );
    let hello = Hello::new(
        format!("tcp-task bench {}", env!("CARGO_PKG_VERSION")),
        connection.token.clone(),
    );
    writer
        .send(hello)
        .await
        .map_err(|e| failure("handshake", e))?;
    match reader.next().await {
        Some(Ok(ServerMessage::Welcome(welcome))) => Ok((
            Framed { reader, writer },
            welcome.limits.max_tasks_per_connection as usize,
        )),
        Some(Ok(ServerMessage::Error { error, .. })) => Err(remote(&error)),
        Some(Ok(other)) => Err(failure(
            "handshake",
            format!("unexpected first frame {other:?}"),
        )),
        Some(Err(e)) => Err(failure("handshake", e)),
        None => Err(failure("handshake", "the server closed the connection")),
    }
}

struct Framed {
    reader: FramedRead<tokio::io::ReadHalf<Stream>, FrameCodec<ServerMessage>>,
    writer: FramedWrite<tokio::io::WriteHalf<Stream>, FrameCodec<()>>,
}

/// A task in flight on one connection.
struct InFlight {
    submitted: Instant,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn exchange(
    mut framed: Framed,
    window: usize,
    stall: Duration,
    shared: &Shared,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let mut next_id: RequestId = 1;
    let mut in_flight: HashMap<RequestId, InFlight> = HashMap::new();
    // Ids whose terminal frame has come: a second one is a duplicate.
    let mut ended: std::collections::HashSet<RequestId> = Default::default();
    let mut ping: Option<RequestId> = None;
    // A task taken whose time (with --rate) has not come yet.
    let mut pending: Option<Instant> = None;
    // The last frame, or the first task sent after none was in flight.
    let mut heard = Instant::now();
    loop {
        // Fill the window.
        let mut sent = false;
        while ping.is_none() && in_flight.len() < window.max(1) {
            let Some(due) = pending.take().or_else(|| shared.take()) else {
                break;
            };
            if due > Instant::now() {
                pending = Some(due);
                break;
            }
            if in_flight.is_empty() {
                heard = Instant::now();
            }
            let id = next_id;
            next_id += 1;
            let submit = ClientMessage::Submit {
                id,
                spec: Box::new(shared.spec.clone()),
                detach: false,
            };
            if let Err(e) = framed.writer.feed(submit).await {
                // The task was taken but never reached the server: it
                // counts as not submitted.
                return Err(give_up(tally, &mut in_flight, shared, broken(e)));
            }
            tally.submitted += 1;
            in_flight.insert(
                id,
                InFlight {
                    submitted: due,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                },
            );
            sent = true;
        }
        if in_flight.is_empty() && ping.is_none() && pending.is_none() {
            // Our share is done: a Ping flushes out anything the server
            // queued before it, a duplicate terminal frame included.
            let id = next_id;
            next_id += 1;
            let ping_frame = ClientMessage::Ping {
                id,
                payload: Default::default(),
            };
            if let Err(e) = framed.writer.feed(ping_frame).await {
                return Err(broken(e));
            }
            ping = Some(id);
            sent = true;
        }
        if sent {
            if let Err(e) = SinkExt::<ClientMessage>::flush(&mut framed.writer).await {
                return Err(give_up(tally, &mut in_flight, shared, broken(e)));
            }
        }
        let (limit, silence) = match ping {
            Some(_) => (DRAIN_TIMEOUT, "no_pong"),
            None => (stall, "stalled"),
        };
        let mut wait = limit.saturating_sub(heard.elapsed());
        if let Some(due) = pending.filter(|_| in_flight.len() < window.max(1)) {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let quiet = in_flight.is_empty() && ping.is_none();
        let frame = match tokio::time::timeout(wait, framed.reader.next()).await {
            Ok(frame) => {
                heard = Instant::now();
                frame
            }
            // The schedule's wake-up: the next task is due.
            Err(_) if quiet || heard.elapsed() < limit => continue,
            // Tasks that got no frame at all for this long are given up:
            // a server that forgets a task must not hang the run.
            Err(_) => {
                let silence = failure(silence, format!("no frame from the server for {limit:?}"));
                return Err(give_up(tally, &mut in_flight, shared, silence));
            }
        };
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let bad = failure("bad_frame", format!("bad frame from the server: {e}"));
                return Err(give_up(tally, &mut in_flight, shared, bad));
            }
            None => {
                let closed = failure("disconnected", "the server closed the connection");
                return Err(give_up(tally, &mut in_flight, shared, closed));
            }
        };
        match message {
            ServerMessage::Pong { id, .. } if Some(id) == ping => return Ok(()),
            ServerMessage::Accepted { id, .. } | ServerMessage::Progress { id, .. } => {
                if !in_flight.contains_key(&id) {
                    tally.stray += 1;
                }
            }
            ServerMessage::Output { id, stream, chunk } => match in_flight.get_mut(&id) {
                Some(task) => match stream {
                    OutputStream::Stdout => task.stdout.extend_from_slice(&chunk),
                    OutputStream::Stderr => task.stderr.extend_from_slice(&chunk),
                },
                None => tally.stray += 1,
            },
            ServerMessage::Exited { id, outcome } => {
                if let Some(task) = end(id, &mut in_flight, &mut ended, tally) {
                    let signature = signature(task.stdout, task.stderr, &outcome);
                    if !shared.matches(signature) {
                        tally.wrong += 1;
                    }
                    finished(tally, shared, task.submitted);
                }
            }
            ServerMessage::Failed { id, error } => {
                if let Some(task) = end(id, &mut in_flight, &mut ended, tally) {
                    tally.error(remote(&error));
                    finished(tally, shared, task.submitted);
                }
            }
            ServerMessage::Error { id: None, error } => {
                tally.error(remote(&error));
            }
            // A note about one request (stdin after its end, say): not an end.
            ServerMessage::Error { id: Some(_), .. } => {}
            ServerMessage::Welcome(_)
            | ServerMessage::Pong { .. }
            | ServerMessage::StatusReply { .. }
            | ServerMessage::CatalogReply { .. }
            | ServerMessage::Done { .. }
            | ServerMessage::TaskList { .. }
            // The tool sends no stdin, so it is never owed credit.
            | ServerMessage::StdinCredit { .. } => tally.stray += 1,
        }
    }
}

/// The task of a terminal frame, when it is the first for a task in flight;
/// otherwise counts a duplicate (a second terminal frame) or a stray.
fn end(
    id: RequestId,
    in_flight: &mut HashMap<RequestId, InFlight>,
    ended: &mut std::collections::HashSet<RequestId>,
    tally: &mut Tally,
) -> Option<InFlight> {
    match in_flight.remove(&id) {
        Some(task) => {
            ended.insert(id);
            Some(task)
        }
        None if ended.contains(&id) => {
            tally.duplicated += 1;
            None
        }
        None => {
            tally.stray += 1;
            None
        }
    }
}

fn finished(tally: &mut Tally, shared: &Shared, submitted: Instant) {
    tally.completed += 1;
    tally.latencies.push(submitted.elapsed());
    shared.progress.inc(1);
}

/// The connection broke: every task in flight on it is lost.
fn give_up(
    tally: &mut Tally,
    in_flight: &mut HashMap<RequestId, InFlight>,
    shared: &Shared,
    why: Failure,
) -> Failure {
    let lost = in_flight.len() as u64;
    tally.lost += lost;
    in_flight.clear();
    if lost > 0 {
        shared.progress.inc(lost);
    }
    why
}

/// A write to the server failed.
fn broken(error: impl std::fmt::Display) -> Failure {
    failure(
        "disconnected",
        format!("writing to the server failed: {error}"),
    )
}

fn signature(stdout: Vec<u8>, stderr: Vec<u8>, outcome: &Outcome) -> Signature {
    Signature {
        stdout,
        stderr,
        ending: outcome.ending,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        output_truncated: outcome.output_truncated,
    }
}

/// The value below which `q` of the sorted `values` lie (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(args: &LoadArgs, mut tally: Tally, elapsed: Duration) -> Report {
    tally.latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let broken = tally.lost + tally.duplicated + tally.wrong + tally.stray > 0;
    let not_submitted = args.tasks - tally.submitted;
    let failed = !tally.errors.is_empty() || not_submitted > 0;
    let exit_status = if broken {
        EXIT_BROKEN
    } else if failed {
        EXIT_ERRORS
    } else {
        0
    };
    Report {
        tasks: args.tasks,
        connections: args.connections,
        window: args.window,
        rate: args.rate,
        submitted: tally.submitted,
        not_submitted,
        completed: tally.completed,
        lost: tally.lost,
        duplicated: tally.duplicated,
        wrong: tally.wrong,
        stray: tally.stray,
        elapsed_s: elapsed.as_secs_f64(),
        tasks_per_second: tally.completed as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: ms(percentile(&tally.latencies, 0.50)),
        p90_ms: ms(percentile(&tally.latencies, 0.90)),
        p99_ms: ms(percentile(&tally.latencies, 0.99)),
        max_ms: ms(tally.latencies.last().copied().unwrap_or_default()),
        errors: tally.errors,
        error_messages: tally.messages,
        exit_status,
    }
}

fn print_report(r: &Report) {
    println!(
        "{} tasks over {} connections (window {}) in {:.2}s: {:.1} tasks/s",
        r.tasks, r.connections, r.window, r.elapsed_s, r.tasks_per_second
    );
    if let Some(rate) = r.rate {
        println!("offered {rate} tasks/s; latency counts from each task's scheduled start");
    }
    println!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
    );
    println!(
        "submitted {}  completed {}  not submitted {}",
        r.submitted, r.completed, r.not_submitted
    );
    println!(
        "lost {}  duplicated {}  wrong {}  stray {}",
        r.lost, r.duplicated, r.wrong, r.stray
    );
    if r.errors.is_empty() {
        println!("errors: none");
    } else {
        let list: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("errors: {}", list.join(", "));
        for (kind, message) in &r.error_messages {
            println!("  first {kind}: {message}");
        }
    }
    match r.exit_status {
        0 => println!("ok: every task ended once, with the same output"),
        EXIT_BROKEN => println!("FAILED: tasks were lost, duplicated or wrong"),
        _ => println!("some tasks failed or were never submitted (see errors)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}

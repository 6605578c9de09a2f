//! The warm-container agent: PID 1 of a pre-started container. It waits for
//! a task on its stdin, runs it, relays its stdin, stdout and stderr, and
//! reports how it ended, over the framing in [`crate::agent_proto`]. Then it
//! exits, or waits for the next task when started with `--tasks N` (N > 1;
//! 0 means no limit).
//!
//! `--serve-port PORT -- COMMAND…` (an HTTP task's container) starts the
//! image's own server, COMMAND (its entrypoint and CMD), before the agent
//! says it is ready, and says so only once something answers on PORT on
//! the container's loopback; the server's stdout and stderr go to the
//! agent's stderr, which the server keeps for error messages. Its tasks are
//! then `relay PORT` (tools/src/relay.rs), the server's way in.
//!
//! `--reset` (with `--tasks` above 1) puts the container back as it was
//! before each next task, and checks it, before saying `ready` again
//! (tools/src/reset.rs); if it cannot, the agent exits and the container is
//! discarded. Without it, a container that serves several tasks keeps what
//! one task wrote for the next. Either way the agent says `ready` again
//! after each task but the last.
//!
//! `--socket PATH` (the server's choice of data plane, see
//! [`crate::agent_proto`]) makes the agent connect to the Unix socket at
//! PATH first of all, read the server's frames from it instead of stdin,
//! and write each of its own frames to its stdout (the container's log, for
//! a restarted server) and then to the socket (for the server, live). A
//! socket that cannot be reached is exit status
//! [`proto::SOCKET_UNREACHABLE`]; a socket that breaks later (the server
//! went away) leaves the log: the task runs on, as it does when a server's
//! attach stream goes.
//!
//! `--prefetch PROGRAM` reads the program's file once before the agent says
//! it is ready: in a fresh container the first exec of a file otherwise goes
//! through a cold page cache (with fuse-overlayfs, one userspace round trip
//! per lookup and page), a few milliseconds the task would pay.
//!
//! Being PID 1 it has init's duties:
//! - it reaps every zombie (orphans are re-parented to it), so the
//!   container needs no docker-init;
//! - when the task's process ends, it kills every process the task left
//!   behind (`kill(-1, SIGKILL)`), as the kernel does when a container's
//!   init exits. That also closes every copy of the output pipes, so the
//!   relay always finishes, and a reused container starts each task empty.
//!   A task whose process left no other behind (no child is left to us)
//!   is spared that sweep.
//!
//! Threads, all blocking std I/O, started once for the agent's whole life
//! (a thread per task would cost each task a clone and a stack): one
//! reads frames from stdin (or the socket), one reaps children, two pump
//! each task's stdout and stderr, one relays the signals it catches; only
//! a task that takes stdin gets a thread of its own to feed it. The main
//! thread owns the state and takes their news from one channel. Signals
//! reach the task as `K` frames: the server sends them; the agent
//! forwards them.
//!
//! The task's process is started without `fork` (std's `posix_spawn`,
//! which needs no `pre_exec`): the signals the agent forwards are caught
//! with a handler rather than blocked, so the child has nothing to undo.
//!
//! A task's last frames (usage, exit) and the next `ready` go out in one
//! write: every write to stdout is a message for the engine's log driver,
//! relayed by containerd-shim and dockerd, the main per-frame cost.
//!
//! Stdin the task has not read yet is bounded ([`STDIN_QUEUE_BYTES`]): past
//! it the reader stops reading until the task takes some, so the pipe to
//! the server fills and the server stops sending (it holds one window per
//! task and no more). Frames behind that stdin (a signal) wait with it.

use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::agent_proto::{self as proto, ExitReport, ProtoError, TaskHeader, UsageReport};
use crate::cli::Fail;
use crate::reset::{self, Baseline};
use crate::sys::{self, Reaped};

/// Output is read and sent in chunks of at most this many bytes, the
/// server's chunk size, so chunks pass through unsplit.
const CHUNK: usize = 64 * 1024;

/// Stdin bytes received and not yet written to the task (or dropped).
const STDIN_QUEUE_BYTES: usize = 1024 * 1024;

/// `EINVAL`: what a spawn error without an errno (a NUL in an argument)
/// is reported as.
const EINVAL: i32 = 22;

/// News for the main thread.
enum Event {
    /// A well-formed frame from the server.
    Frame(u8, Vec<u8>),
    /// A stdin frame's payload, counted against the stdin bound.
    Stdin(Queued),
    /// Our stdin ended: `Ok` at a frame boundary (the server is gone),
    /// `Err` on a malformed frame or a read error.
    InputEnd(Result<(), String>),
    /// The task's process terminated, having used this much; `alone`
    /// when it left no other process behind.
    Exited(Reaped, sys::Usage, bool),
    /// A signal sent to us (the container) for the task.
    Signal(i32),
}

pub fn run(args: &[String]) -> Result<(), Fail> {
    let options = parse_args(args)?;
    let tasks = options.tasks;
    // Before anything else: the server waits for this connection only as
    // long as its ready timeout, and a socket that cannot be reached must
    // be told from an agent that failed later.
    let socket = match &options.socket {
        Some(path) => Some(UnixStream::connect(path).map_err(|e| {
            Fail::Exit(
                proto::SOCKET_UNREACHABLE,
                format!("cannot connect to the server's socket {path}: {e}"),
            )
        })?),
        None => None,
    };
    // No task may ptrace us or open our /proc/1/fd (our frames to the
    // server): a process of the same user could otherwise.
    let _ = sys::set_not_dumpable();
    if let Some(program) = &options.prefetch {
        prefetch(program);
    }
    let baseline = match options.reset {
        true => Some(Baseline::take().map_err(|e| {
            Fail::Exit(
                3,
                format!("this container cannot be reset between tasks: {e}"),
            )
        })?),
        false => None,
    };
    if let Some(port) = options.serve_port {
        start_server(&options.serve, port)?;
    }
    // A write to a server that went away must be an error we handle, not
    // death by SIGPIPE. Children get the default back: std resets it.
    let _ = sys::ignore_signal(sys::SIGPIPE);
    let out = Output::new(socket.as_ref())?;
    out.send(proto::READY, &[proto::VERSION])?;
    let (tx, rx) = mpsc::channel();
    let caught = sys::catch_signals(&proto::FORWARDED_SIGNALS)
        .map_err(|e| Fail::Exit(3, format!("cannot take signals for the task: {e}")))?;
    spawn_signal_relay(caught, tx.clone());
    let input = match &socket {
        Some(socket) => socket
            .try_clone()
            .map(|s| File::from(std::os::fd::OwnedFd::from(s)))
            .map_err(|e| Fail::Exit(125, format!("cannot read the server's socket: {e}")))?,
        None => dup_stdin()?,
    };
    spawn_reader(input, tx.clone(), StdinBound::new(STDIN_QUEUE_BYTES));
    let workers = Workers::spawn(&tx, &out);
    let mut served: u64 = 0;
    while tasks == 0 || served < tasks {
        let Some(header) = next_task(&rx)? else {
            return Ok(());
        };
        let ended = run_task(&header, &rx, &out, &workers)?;
        served += 1;
        let more = tasks == 0 || served < tasks;
        match (&baseline, more) {
            // Ready again at once, in the same write as the task's end:
            // the server hands out no container before this.
            (None, true) => ended.send(&out, true)?,
            (Some(baseline), true) => {
                ended.send(&out, false)?;
                baseline.reset().map_err(|e| {
                    Fail::Exit(
                        3,
                        format!("the container could not be reset, so it is not reused: {e}"),
                    )
                })?;
                out.send(proto::READY, &[proto::VERSION])?;
            }
            (_, false) => ended.send(&out, false)?,
        }
    }
    Ok(())
}

/// How a task ended, for the server: what its process used (if it ran)
/// and its exit report.
struct Ended {
    usage: Option<UsageReport>,
    report: ExitReport,
}

impl Ended {
    /// Sends the task's last frames, and `ready` for the next task, as
    /// one write: the engine's log driver (which every frame passes
    /// through on its way to the container's log) then handles one
    /// message for them instead of one per frame.
    fn send(&self, out: &Output, ready: bool) -> Result<(), Fail> {
        let usage = self.usage.map(UsageReport::encode);
        let report = self.report.encode();
        let mut frames: Vec<(u8, &[u8])> = Vec::with_capacity(3);
        if let Some(usage) = &usage {
            frames.push((proto::USAGE, usage));
        }
        frames.push((proto::EXIT, &report));
        if ready {
            frames.push((proto::READY, &[proto::VERSION]));
        }
        out.send_frames(&frames)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Options {
    tasks: u64,
    /// Reset the container between tasks (tools/src/reset.rs).
    reset: bool,
    prefetch: Option<String>,
    /// The server's Unix socket: the data plane instead of stdin/stdout.
    socket: Option<String>,
    serve_port: Option<u16>,
    /// The image's server: argv after `--`.
    serve: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, Fail> {
    let mut options = Options {
        tasks: 1,
        reset: false,
        prefetch: None,
        socket: None,
        serve_port: None,
        serve: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--" {
            options.serve = args.cloned().collect();
            break;
        }
        if flag == "--reset" {
            options.reset = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| Fail::Usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--tasks" => {
                options.tasks = value
                    .parse()
                    .map_err(|_| Fail::Usage(format!("--tasks takes a number, not {value:?}")))?
            }
            "--prefetch" => options.prefetch = Some(value.clone()),
            "--socket" => options.socket = Some(value.clone()),
            "--serve-port" => {
                options.serve_port = Some(value.parse().map_err(|_| {
                    Fail::Usage(format!("--serve-port takes a port number, not {value:?}"))
                })?)
            }
            _ => return Err(Fail::Usage(format!("unknown option {flag:?}"))),
        }
    }
    if options.serve_port.is_some() && options.serve.is_empty() {
        return Err(Fail::usage(
            "--serve-port needs the server's command after --",
        ));
    }
    Ok(options)
}

/// How often the agent tries the port while the image's server starts.
const LISTEN_POLL: Duration = Duration::from_millis(5);

/// Starts the image's server and returns once it answers on `port`. The
/// server bounds the wait (the task's timeout, or the warm ready timeout);
/// a server that ends first is an error whose message says so.
fn start_server(argv: &[String], port: u16) -> Result<(), Fail> {
    let (program, args) = argv.split_first().expect("parse_args requires a command");
    // Its stdout joins our stderr: our stdout carries the frames.
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Fail::Exit(125, format!("cannot use stderr: {e}")))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            Fail::Exit(
                code,
                format!("cannot start the image's command `{program}`: {e}"),
            )
        })?;
    loop {
        if answers(port) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Fail::Exit(
                3,
                format!("the image's command `{program}` ended ({status}) before anything listened on port {port}"),
            ));
        }
        thread::sleep(LISTEN_POLL);
    }
}

/// Whether something accepts connections on `port` on the loopback.
fn answers(port: u16) -> bool {
    let wait = Duration::from_millis(100);
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
    .iter()
    .any(|address| TcpStream::connect_timeout(address, wait).is_ok())
}

/// Reads `program` (looked up in PATH when it has no slash) and throws the
/// bytes away: only the page cache keeps them. Best effort.
fn prefetch(program: &str) {
    let candidates: Vec<std::path::PathBuf> = if program.contains('/') {
        vec![program.into()]
    } else {
        let path = std::env::var("PATH").unwrap_or_default();
        path.split(':')
            .map(|dir| std::path::Path::new(dir).join(program))
            .collect()
    };
    if let Some(mut file) = candidates.iter().find_map(|c| File::open(c).ok()) {
        let _ = io::copy(&mut file, &mut io::sink());
    }
}

fn malformed(e: impl Display) -> Fail {
    Fail::Exit(2, format!("malformed input from the server: {e}"))
}

/// The server closed the channel: nothing left to do or report.
fn server_gone() -> Fail {
    Fail::Exit(0, String::new())
}

fn dup_stdin() -> Result<File, Fail> {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Fail::Exit(125, format!("cannot use stdin: {e}")))
}

/// Frames to the server, whole frames per write so that the threads that
/// share it never interleave bytes.
#[derive(Clone)]
struct Output(Arc<Mutex<Sinks>>);

/// Where each frame goes: the stdout (the container's log; with attach,
/// also the server's live view of it) and, with `--socket`, the socket.
struct Sinks {
    log: File,
    /// `None` without `--socket`, and once the socket broke.
    live: Option<UnixStream>,
    /// The frames being written, kept from one write to the next.
    buf: Vec<u8>,
}

impl Output {
    fn new(socket: Option<&UnixStream>) -> Result<Output, Fail> {
        // A raw dup of fd 1: std's stdout is line-buffered, which would
        // split frames at newlines.
        let log = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(|e| Fail::Exit(125, format!("cannot use stdout: {e}")))?;
        let live = match socket {
            Some(socket) => Some(
                socket
                    .try_clone()
                    .map_err(|e| Fail::Exit(125, format!("cannot use the socket: {e}")))?,
            ),
            None => None,
        };
        let buf = Vec::with_capacity(proto::HEADER_LEN + CHUNK);
        Ok(Output(Arc::new(Mutex::new(Sinks { log, live, buf }))))
    }

    fn send(&self, kind: u8, payload: &[u8]) -> Result<(), Fail> {
        self.send_frames(&[(kind, payload)])
    }

    /// Sends `frames` in one write to each sink.
    fn send_frames(&self, frames: &[(u8, &[u8])]) -> Result<(), Fail> {
        // A pump that panicked cannot leave a half-written frame behind
        // (write_all either finished or failed), so poison is harmless.
        let mut sinks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Sinks { log, live, buf } = &mut *sinks;
        buf.clear();
        for (kind, payload) in frames {
            buf.extend_from_slice(&proto::header(*kind, payload.len()));
            buf.extend_from_slice(payload);
        }
        // The log first: a frame the server saw live must be in the log a
        // restarted server reads.
        log.write_all(buf)
            .map_err(|e| Fail::Exit(1, format!("cannot write to the server: {e}")))?;
        if let Some(socket) = live.as_mut() {
            // The server went away: what follows goes to the log only, where
            // the next server finds it (as with attach, whose end leaves
            // the log going).
            if socket.write_all(buf).is_err() {
                *live = None;
            }
        }
        Ok(())
    }
}

/// Reads frames for the agent's whole life and hands them to the main
/// thread; stops at end of input or at the first malformed frame.
fn spawn_reader(input: File, tx: Sender<Event>, bound: Arc<StdinBound>) {
    thread::spawn(move || {
        let mut input = BufReader::with_capacity(CHUNK, input);
        loop {
            let event = match read_frame(&mut input) {
                Ok(Some((proto::STDIN, payload))) => Event::Stdin(bound.queue(payload)),
                Ok(Some((kind, payload))) => Event::Frame(kind, payload),
                Ok(None) => Event::InputEnd(Ok(())),
                Err(e) => Event::InputEnd(Err(e)),
            };
            let last = matches!(event, Event::InputEnd(_));
            if tx.send(event).is_err() || last {
                return;
            }
        }
    });
}

/// Reads one frame from the server. `Ok(None)` at a clean end (between
/// frames); `Err` for a malformed or truncated frame, decided from the
/// header before any payload is read.
fn read_frame(input: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut header = [0u8; proto::HEADER_LEN];
    match fill(input, &mut header)? {
        0 => return Ok(None),
        n if n < header.len() => return Err(ProtoError::Truncated.to_string()),
        _ => {}
    }
    let (kind, len) = proto::parse_header(header, proto::TO_AGENT).map_err(|e| e.to_string())?;
    let expected = match kind {
        proto::CLOSE => Some(0),
        proto::SIGNAL => Some(1),
        _ => None,
    };
    if expected.is_some_and(|n| n != len) {
        return Err(ProtoError::BadPayload("wrong length for a close or signal frame").to_string());
    }
    let mut payload = vec![0; len];
    if fill(input, &mut payload)? < len {
        return Err(ProtoError::Truncated.to_string());
    }
    Ok(Some((kind, payload)))
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A server that dies with our frames unread in its socket
            // leaves us ECONNRESET, not an end of file: it is gone all the
            // same, and the task must run on (the log has its output).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("reading the server's frames: {e}")),
        }
    }
    Ok(done)
}

/// Waits for the next task header. Stdin, close and signal frames that
/// arrive first belong to a task that already ended and are dropped.
fn next_task(rx: &Receiver<Event>) -> Result<Option<TaskHeader>, Fail> {
    loop {
        match rx.recv() {
            Ok(Event::Frame(proto::TASK, payload)) => {
                return TaskHeader::decode(&payload).map(Some).map_err(malformed)
            }
            Ok(Event::Frame(..) | Event::Stdin(_) | Event::Exited(..) | Event::Signal(_)) => {}
            Ok(Event::InputEnd(Ok(()))) | Err(_) => return Ok(None),
            Ok(Event::InputEnd(Err(e))) => return Err(malformed(e)),
        }
    }
}

/// Runs one task and says how it ended; its frames up to then are sent.
fn run_task(
    header: &TaskHeader,
    rx: &Receiver<Event>,
    out: &Output,
    workers: &Workers,
) -> Result<Ended, Fail> {
    let oom_before = workers.oom.count();
    let mut child = match spawn(header) {
        Ok(child) => child,
        Err(report) => {
            return Ok(Ended {
                usage: None,
                report,
            })
        }
    };
    let mut started = child.id().to_be_bytes().to_vec();
    started.extend_from_slice(header.tag.as_bytes());
    out.send(proto::STARTED, &started)?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let pumped = [
        workers.stdout.start(child.stdout.take()),
        workers.stderr.start(child.stderr.take()),
    ];
    let feeder = child.stdin.take().map(Feeder::spawn);
    workers.reaper.watch(pid);
    let ended = supervise(pid, feeder, rx);
    // A task whose process left none behind has nothing to kill: the
    // sweep (kill(-1) and a walk of /proc) would only cost it time.
    if !matches!(ended, Ok((_, _, true))) {
        kill_leftovers();
    }
    workers.reaper.drained();
    for (pump, started) in [&workers.stdout, &workers.stderr].into_iter().zip(pumped) {
        if started {
            pump.finished();
        }
    }
    let (reaped, usage, _) = ended?;
    let usage = UsageReport {
        user_us: usage.user_us,
        system_us: usage.system_us,
        peak_memory_bytes: usage.peak_memory_bytes,
    };
    let oom =
        matches!((oom_before, workers.oom.count()), (Some(before), Some(after)) if after > before);
    let report = match reaped {
        Reaped::Exited(code) => ExitReport::Exited { code, oom },
        Reaped::Signaled(signal) => ExitReport::Signaled { signal, oom },
    };
    Ok(Ended {
        usage: Some(usage),
        report,
    })
}

/// The threads that serve every task, started once: a thread per task
/// costs a clone, a stack's mapping and unmapping, which for a short task
/// was a good part of the agent's CPU. And the container's OOM counter,
/// opened once.
struct Workers {
    reaper: Reaper,
    stdout: Pump,
    stderr: Pump,
    oom: OomCounter,
}

impl Workers {
    fn spawn(tx: &Sender<Event>, out: &Output) -> Workers {
        Workers {
            reaper: Reaper::spawn(tx.clone()),
            stdout: Pump::spawn(proto::STDOUT, out.clone()),
            stderr: Pump::spawn(proto::STDERR, out.clone()),
            oom: OomCounter::open(),
        }
    }
}

/// Starts the task's process, or says why it could not start.
fn spawn(header: &TaskHeader) -> Result<Child, ExitReport> {
    if let Some(dir) = &header.workdir {
        enter_check(dir)?;
    }
    let mut command = Command::new(&header.argv[0]);
    command.args(&header.argv[1..]);
    for pair in &header.env {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    if let Some(dir) = &header.workdir {
        command.current_dir(dir);
    }
    let stdin = if header.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    // No `pre_exec`: std then starts the child with posix_spawn (vfork),
    // much cheaper than fork for a process with our threads and memory.
    // The signals we catch for the task are its own again after exec.
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ExitReport::SpawnFailed {
            errno: e.raw_os_error().unwrap_or(EINVAL),
        })
}

/// Docker creates a missing working directory; so do we, as far as the
/// container's user may. A directory we still cannot use is reported apart
/// from a missing command.
fn enter_check(dir: &str) -> Result<(), ExitReport> {
    let _ = fs::create_dir_all(dir);
    match fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(ExitReport::WorkdirFailed {
            errno: e.raw_os_error().unwrap_or(EINVAL),
        }),
    }
}

/// Relays the task's stdin frames, signals, and waits for its end.
fn supervise(
    pid: i32,
    mut feeder: Option<Feeder>,
    rx: &Receiver<Event>,
) -> Result<(Reaped, sys::Usage, bool), Fail> {
    loop {
        match rx.recv() {
            Ok(Event::Exited(reaped, usage, alone)) => return Ok((reaped, usage, alone)),
            Ok(Event::Stdin(data)) => {
                if let Some(feeder) = &feeder {
                    feeder.send(data);
                }
            }
            // Dropping the feeder closes the pipe once queued chunks are in.
            Ok(Event::Frame(proto::CLOSE, _)) => feeder = None,
            Ok(Event::Frame(proto::SIGNAL, signal)) => {
                let _ = sys::send_signal(pid, i32::from(signal[0]));
            }
            Ok(Event::Signal(signal)) => {
                let _ = sys::send_signal(pid, signal);
            }
            Ok(Event::Frame(..)) => {
                return Err(malformed("a task header arrived while a task was running"))
            }
            // The server is gone (killed, say): the task runs on, its
            // output and end going to the container's log, where the next
            // server finds them. Its stdin ends here.
            Ok(Event::InputEnd(Ok(()))) => feeder = None,
            Err(_) => return Err(server_gone()),
            Ok(Event::InputEnd(Err(e))) => return Err(malformed(e)),
        }
    }
}

/// Passes the signals sent to the container on as events: a task taken
/// over by a restarted server is signalled this way.
fn spawn_signal_relay(mut caught: UnixStream, tx: Sender<Event>) {
    thread::spawn(move || {
        let mut signal = [0u8; 1];
        loop {
            match caught.read(&mut signal) {
                Ok(1) => {
                    if tx.send(Event::Signal(i32::from(signal[0]))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    });
}

/// Kills every process but us, again until none is left (one that forks
/// while `kill(-1)` walks the list can escape a round; the waiter reaps the
/// dead), for at most [`reset::KILL_WAIT`]. Only as PID 1: anywhere else
/// `kill(-1)` would reach every process of the user.
fn kill_leftovers() {
    if sys::pid() != 1 {
        return;
    }
    let deadline = std::time::Instant::now() + reset::KILL_WAIT;
    loop {
        let _ = sys::send_signal(-1, sys::SIGKILL);
        if reset::other_processes().is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Reaps children, a task at a time: told the pid of a task's process, it
/// reaps until no child is left, and reports that process's end (and
/// whether it left any other process) when it comes. Orphans the task
/// leaves are re-parented to PID 1 and reaped here too.
struct Reaper {
    pids: Sender<i32>,
    done: Receiver<()>,
}

impl Reaper {
    fn spawn(tx: Sender<Event>) -> Reaper {
        let (pids, watch) = mpsc::channel::<i32>();
        let (report, done) = mpsc::channel();
        thread::spawn(move || {
            for pid in watch {
                while let Ok((reaped, how, usage)) = sys::wait_any_with_usage() {
                    if reaped == pid {
                        // Every process in the container descends from us,
                        // orphans re-parented to us before their parent
                        // can be reaped: no child left means no process.
                        let alone = !sys::has_children();
                        let _ = tx.send(Event::Exited(how, usage, alone));
                    }
                }
                if report.send(()).is_err() {
                    return;
                }
            }
        });
        Reaper { pids, done }
    }

    /// Reaps until `pid` and every other child has ended.
    fn watch(&self, pid: i32) {
        let _ = self.pids.send(pid);
    }

    /// Waits until no child is left (or the reaper is gone).
    fn drained(&self) {
        let _ = self.done.recv();
    }
}

/// Copies each task's output pipe of one kind to the server as frames of
/// that kind, to the pipe's end.
struct Pump {
    pipes: Sender<File>,
    done: Receiver<()>,
}

impl Pump {
    fn spawn(kind: u8, out: Output) -> Pump {
        let (pipes, todo) = mpsc::channel::<File>();
        let (report, done) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0; CHUNK];
            for mut pipe in todo {
                copy_frames(&mut pipe, kind, &out, &mut buf);
                drop(pipe);
                if report.send(()).is_err() {
                    return;
                }
            }
        });
        Pump { pipes, done }
    }

    /// Starts copying `pipe`; false when there is none.
    fn start(&self, pipe: Option<impl Into<std::os::fd::OwnedFd>>) -> bool {
        match pipe {
            Some(pipe) => self.pipes.send(File::from(pipe.into())).is_ok(),
            None => false,
        }
    }

    /// Waits until the pipe given to [`Pump::start`] has ended.
    fn finished(&self) {
        let _ = self.done.recv();
    }
}

/// Copies `pipe` to the server as `kind` frames until it ends, or until
/// the frames cannot be written (the agent then fails on its next frame).
fn copy_frames(pipe: &mut File, kind: u8, out: &Output, buf: &mut [u8]) {
    loop {
        match pipe.read(buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.send(kind, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes stdin chunks to the task from its own thread, so a task that does
/// not read its stdin never blocks the main thread. What waits in its queue
/// is bounded by the reader ([`StdinBound`]).
struct Feeder(Sender<Queued>);

impl Feeder {
    fn spawn(mut stdin: ChildStdin) -> Feeder {
        let (tx, rx) = mpsc::channel::<Queued>();
        thread::spawn(move || {
            for chunk in rx {
                // The task closed its stdin or ended: drop the rest.
                if stdin.write_all(&chunk.data).is_err() {
                    return;
                }
            }
        });
        Feeder(tx)
    }

    fn send(&self, chunk: Queued) {
        let _ = self.0.send(chunk);
    }
}

/// The bytes of stdin received and not yet written to the task. The reader
/// waits for room before it takes in more; a chunk gives its room back
/// when it is dropped, written or not, so no path can leak room.
struct StdinBound {
    limit: usize,
    queued: Mutex<usize>,
    room: Condvar,
}

impl StdinBound {
    fn new(limit: usize) -> Arc<StdinBound> {
        Arc::new(StdinBound {
            limit,
            queued: Mutex::new(0),
            room: Condvar::new(),
        })
    }

    /// Waits until the queue is under its bound, then counts `data` in. One
    /// chunk may take it past the bound, so any chunk size gets through.
    fn queue(self: &Arc<Self>, data: Vec<u8>) -> Queued {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        while *queued >= self.limit {
            queued = self.room.wait(queued).unwrap_or_else(|e| e.into_inner());
        }
        *queued += data.len();
        Queued {
            data,
            bound: self.clone(),
        }
    }
}

/// One stdin chunk, counted in its bound until dropped.
struct Queued {
    data: Vec<u8>,
    bound: Arc<StdinBound>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut queued = self.bound.queued.lock().unwrap_or_else(|e| e.into_inner());
        *queued -= self.data.len();
        self.bound.room.notify_all();
    }
}

/// The container's count of OOM kills (cgroup v1, then v2), read before
/// and after each task: the engine only reports OOM once the whole
/// container has stopped, and the agent outlives its task. The file is
/// opened once and read from its start each time (the kernel makes its
/// text anew for a read at offset 0).
struct OomCounter(Option<File>);

impl OomCounter {
    fn open() -> OomCounter {
        const FILES: [&str; 2] = [
            "/sys/fs/cgroup/memory/memory.oom_control",
            "/sys/fs/cgroup/memory.events",
        ];
        OomCounter(FILES.iter().find_map(|path| File::open(path).ok()))
    }

    fn count(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        // Either file is a few short lines.
        let mut buf = [0u8; 1024];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn read(bytes: &[u8]) -> Result<Option<(u8, Vec<u8>)>, String> {
        read_frame(&mut Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn frames_are_read_whole() {
        let mut bytes = proto::frame(proto::STDIN, b"abc");
        bytes.extend(proto::frame(proto::CLOSE, b""));
        let mut input = Cursor::new(bytes);
        assert_eq!(
            read_frame(&mut input),
            Ok(Some((proto::STDIN, b"abc".to_vec())))
        );
        assert_eq!(read_frame(&mut input), Ok(Some((proto::CLOSE, Vec::new()))));
        assert_eq!(read_frame(&mut input), Ok(None));
    }

    #[test]
    fn malformed_headers_fail_without_waiting_for_a_payload() {
        // The reader would block on a pipe if it trusted these lengths.
        assert!(read(&[b'Z', 0, 0, 0, 1, 0])
            .unwrap_err()
            .contains("unknown frame kind"));
        assert!(read(&[proto::TASK, 0xff, 0xff, 0xff, 0xff])
            .unwrap_err()
            .contains("exceeds the maximum"));
        assert!(read(&proto::frame(proto::CLOSE, b"x")).is_err());
        assert!(read(&proto::frame(proto::SIGNAL, b"")).is_err());
        assert!(read(&proto::frame(proto::STDOUT, b"x")).is_err());
    }

    /// The server died with our frames unread in its socket: the kernel
    /// says ECONNRESET, which ends the input like an end of file does.
    #[test]
    fn a_reset_socket_is_the_server_gone() {
        let (server, mut agent) = UnixStream::pair().expect("a socket pair");
        agent.write_all(b"a frame the server never reads").unwrap();
        drop(server);
        assert_eq!(read_frame(&mut agent), Ok(None));
    }

    #[test]
    fn truncated_frames_are_errors_not_clean_ends() {
        let whole = proto::frame(proto::STDIN, b"hello");
        for cut in 1..whole.len() {
            let err = read(&whole[..cut]).expect_err("truncated");
            assert!(err.contains("inside a frame"), "cut {cut}: {err}");
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let plain = parse_args(&[]).ok();
        assert_eq!(plain.map(|o| (o.tasks, o.prefetch)), Some((1, None)));
        let serve = parse_args(&args(&["--serve-port", "8080", "--", "srv", "--x"])).ok();
        assert_eq!(
            serve.map(|o| (o.serve_port, o.serve)),
            Some((Some(8080), args(&["srv", "--x"])))
        );
        assert!(parse_args(&args(&["--serve-port", "8080"])).is_err());
        assert!(parse_args(&args(&["--serve-port", "x", "--", "srv"])).is_err());
        let reset = parse_args(&args(&["--reset", "--tasks", "3"])).ok();
        assert_eq!(reset.map(|o| (o.reset, o.tasks)), Some((true, 3)));
        let both = parse_args(&args(&["--tasks", "3", "--prefetch", "true"])).ok();
        assert_eq!(
            both.map(|o| (o.tasks, o.prefetch)),
            Some((3, Some("true".into())))
        );
        let socket = parse_args(&args(&["--socket", "/.tcp-task/agent.sock"])).ok();
        assert_eq!(
            socket.and_then(|o| o.socket),
            Some("/.tcp-task/agent.sock".into())
        );
        assert!(parse_args(&args(&["--socket"])).is_err());
        assert!(parse_args(&args(&["--tasks", "x"])).is_err());
        assert!(parse_args(&args(&["--tasks"])).is_err());
        assert!(parse_args(&args(&["3"])).is_err());
    }
}

//! One task on a warm container: hand the agent the task, then a
//! [`WarmProcess`] whose output, stdin and end travel as the
//! agent's frames. Its end is given in the same terms as a cold
//! container's, so supervision cannot tell them apart.

use bollard::Docker;
use bytes::Bytes;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::channel::short;
use super::channel::{AgentInput, Record};
use super::container::{WarmContainer, RELAY_PATH};
use super::pool::Lease;
use super::proto::{self, ExitReport, TaskHeader, UsageReport};
use crate::executor::events::EventSink;
use crate::executor::exit::container_end;
use crate::executor::kept::WarmTag;
use crate::executor::plan::Plan;
use crate::executor::process::{CommandFailure, Process, ProcessEnd, StartError, Stdin};
use crate::task::{ErrorKind, Offsets, OutputStream, ProgressEvent, TaskError, Usage};

/// What handing a task to a warm container gave.
pub(crate) enum Handed {
    Started(Box<WarmProcess>),
    /// The container was gone before the task started: nothing of the task
    /// was used, so it can run elsewhere.
    Gone,
    Failed(StartError),
}

/// Hands `plan`'s task to the agent of `lease`'s container and waits for
/// it to say the process started.
pub(crate) async fn hand(
    mut lease: Lease,
    docker: &Docker,
    plan: &Plan,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Handed {
    let Some(container) = lease.container() else {
        return Handed::Gone;
    };
    let header = task_header(plan);
    let stdin_wanted = header.stdin;
    let clean = Arc::new(AtomicBool::new(true));
    let input = container.input.clone();
    if write_frame(&input, proto::TASK, &header.encode(), &clean)
        .await
        .is_err()
    {
        return Handed::Gone;
    }
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Handed::Failed(StartError::Cancelled),
        record = container.records.recv() => record,
    };
    let program = header.argv.first().cloned().unwrap_or_default();
    match first {
        Some(Record::Started(_)) => {}
        None => return Handed::Gone,
        Some(Record::Exit(report)) => {
            let refused = refusal(report, &program, plan.workdir.as_deref(), container).await;
            // The agent is fine and waits for the next task.
            lease.finish(true);
            return Handed::Failed(refused);
        }
        Some(_) => {
            let error = TaskError::new(
                ErrorKind::Engine,
                format!(
                    "the agent in warm container {} broke the protocol",
                    short(&container.id)
                ),
            );
            return Handed::Failed(error.into());
        }
    }
    let container = short(&container.id);
    let _ = events.progress(ProgressEvent::Created { container }).await;
    let _ = events.progress(ProgressEvent::Started).await;
    Handed::Started(Box::new(WarmProcess {
        docker: docker.clone(),
        stdin: stdin_wanted.then(|| WarmStdin {
            input: input.clone(),
            clean: clean.clone(),
        }),
        lease,
        clean,
        program,
        workdir: plan.workdir.clone(),
        report: None,
        usage: None,
        relayed: Offsets::default(),
    }))
}

/// What the agent is asked to run: the task's command; for an HTTP task,
/// the relay to its server's port, whose stdin and stdout carry the HTTP
/// exchange (the server's environment was fixed when it started).
fn task_header(plan: &Plan) -> TaskHeader {
    let tag = plan
        .task
        .as_ref()
        .map(|tag| WarmTag::new(tag, plan.timeout, &plan.command).encode())
        .unwrap_or_default();
    match &plan.http {
        Some(call) => TaskHeader {
            argv: vec![RELAY_PATH.to_owned(), call.port.to_string()],
            env: Vec::new(),
            workdir: None,
            stdin: true,
            tag,
        },
        None => TaskHeader {
            argv: plan.command.clone(),
            env: plan.env.clone(),
            workdir: plan.workdir.clone(),
            stdin: plan.stdin,
            tag,
        },
    }
}

/// A task running on a warm container.
pub(crate) struct WarmProcess {
    docker: Docker,
    lease: Lease,
    /// False while a frame to the agent is half-written.
    clean: Arc<AtomicBool>,
    stdin: Option<WarmStdin>,
    program: String,
    workdir: Option<String>,
    /// The agent's exit report; `None` until it comes (or if the container
    /// died without one).
    report: Option<ExitReport>,
    /// What the task's process used, as the agent reported it.
    usage: Option<UsageReport>,
    /// The output handed out so far, per stream: where a reading of the
    /// container's log takes over if the channel goes with the engine.
    relayed: Offsets,
}

impl WarmProcess {
    /// What the container's agent (and an HTTP task's server) last wrote
    /// on stderr, for error messages.
    pub async fn diagnostics(&mut self) -> String {
        match self.lease.container() {
            Some(container) => container.diagnostics.text().await,
            None => String::new(),
        }
    }
}

impl Process for WarmProcess {
    type Stdin = WarmStdin;

    fn take_stdin(&mut self) -> Option<WarmStdin> {
        self.stdin.take()
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        let container = self.lease.container()?;
        while let Some(record) = container.records.recv().await {
            match record {
                Record::Stdout(chunk) => return Some(self.relay(OutputStream::Stdout, chunk)),
                Record::Stderr(chunk) => return Some(self.relay(OutputStream::Stderr, chunk)),
                Record::Exit(report) => {
                    self.report = Some(report);
                    return None;
                }
                Record::Usage(usage) => self.usage = Some(usage),
                Record::Ready | Record::Started(_) => {}
            }
        }
        // The attach stream ended mid-task: the container died under it.
        None
    }

    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        match self.report {
            Some(ExitReport::Exited { code, oom }) => Ok(ProcessEnd::Exited {
                code: i64::from(code),
                oom_killed: oom,
            }),
            // The code the container would have had: 128+N for signal N.
            Some(ExitReport::Signaled { signal, oom }) => Ok(ProcessEnd::Exited {
                code: 128 + i64::from(signal),
                oom_killed: oom,
            }),
            Some(report) => {
                let container = self.lease.container().ok_or_else(gone)?;
                match refusal(report, &self.program, self.workdir.as_deref(), container).await {
                    StartError::Command(failure) => Ok(ProcessEnd::NotStarted(failure)),
                    StartError::Failed(error) => Err(error),
                    StartError::Cancelled => Err(gone()),
                }
            }
            None => {
                // The engine knows how the container ended.
                let id = self.lease.container().ok_or_else(gone)?.id.clone();
                container_end(&self.docker, &id, None).await
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(|u| Usage {
            cpu_user_us: u.user_us,
            cpu_system_us: u.system_us,
            peak_memory_bytes: u.peak_memory_bytes,
        })
    }

    async fn finish(self) {
        // Fit for another task only when the agent reported the end and no
        // frame to it was left half-written.
        let ended = matches!(
            self.report,
            Some(ExitReport::Exited { .. } | ExitReport::Signaled { .. })
        );
        let reusable = ended && self.clean.load(Ordering::Acquire);
        self.lease.finish(reusable);
    }
}

impl WarmProcess {
    fn relay(&mut self, stream: OutputStream, chunk: Bytes) -> (OutputStream, Bytes) {
        self.relayed.advance(stream, chunk.len() as u64);
        (stream, chunk)
    }

    /// The output handed out so far, per stream.
    pub fn relayed(&self) -> Offsets {
        self.relayed
    }

    /// Its container's id.
    pub fn container_id(&mut self) -> Option<String> {
        Some(self.lease.container()?.id.clone())
    }

    /// The container and the agent's input, for signals while it runs.
    pub fn agent(&mut self) -> Option<(String, AgentInput)> {
        let container = self.lease.container()?;
        Some((container.id.clone(), container.input.clone()))
    }

    /// Takes the container out of its pool for good, not removed: it holds
    /// a kept task's output in its log. Gives its id.
    pub fn keep(self) -> Option<String> {
        self.lease.keep()
    }
}

/// Sends `signal` to the task through its agent.
pub(crate) async fn signal_task(input: &AgentInput, signal: u8) -> io::Result<()> {
    let mut input = input.lock().await;
    input
        .write_all(&proto::frame(proto::SIGNAL, &[signal]))
        .await?;
    input.flush().await
}

/// The task's stdin, as frames to the agent.
pub(crate) struct WarmStdin {
    input: AgentInput,
    clean: Arc<AtomicBool>,
}

impl Stdin for WarmStdin {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        write_frame(&self.input, proto::STDIN, &chunk, &self.clean).await
    }

    async fn close(&mut self) {
        let _ = write_frame(&self.input, proto::CLOSE, &[], &self.clean).await;
    }
}

/// Writes one frame to the agent, header and payload in one write (one
/// wake-up of the agent, not two); `clean` is false while a frame is
/// half-written, which makes the container unfit for reuse.
async fn write_frame(
    input: &AgentInput,
    kind: u8,
    payload: &[u8],
    clean: &AtomicBool,
) -> io::Result<()> {
    let frame = proto::frame(kind, payload);
    let mut input = input.lock().await;
    clean.store(false, Ordering::Release);
    input.write_all(&frame).await?;
    input.flush().await?;
    clean.store(true, Ordering::Release);
    Ok(())
}

fn gone() -> TaskError {
    TaskError::new(
        ErrorKind::Engine,
        "a warm container was given back while its task still used it; this is a bug",
    )
}

/// Why the agent did not start the process, in the cold path's terms
/// (`docker run` gives 127 for a missing command, 126 for one that cannot
/// be run).
async fn refusal(
    report: ExitReport,
    program: &str,
    workdir: Option<&str>,
    container: &WarmContainer,
) -> StartError {
    match report {
        ExitReport::SpawnFailed { errno } => spawn_failure(program, errno),
        ExitReport::WorkdirFailed { errno } => StartError::Failed(TaskError::new(
            ErrorKind::BadRequest,
            format!(
                "the working directory `{}` cannot be used in the container ({}); choose one \
                 that exists or that the task's user may create",
                workdir.unwrap_or(""),
                io::Error::from_raw_os_error(errno)
            ),
        )),
        ExitReport::Exited { .. } | ExitReport::Signaled { .. } => {
            StartError::Failed(TaskError::new(
                ErrorKind::Engine,
                format!(
                    "the agent in warm container {} reported an end before a start: {}",
                    short(&container.id),
                    container.diagnostics.text().await
                ),
            ))
        }
    }
}

fn spawn_failure(program: &str, errno: i32) -> StartError {
    const ENOENT: i32 = 2;
    const ENOEXEC: i32 = 8;
    const EACCES: i32 = 13;
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    let text = io::Error::from_raw_os_error(errno);
    let detail = format!("exec: {text}");
    match errno {
        ENOENT => StartError::Command(CommandFailure::NotFound { detail }),
        ENOEXEC | EACCES | ENOTDIR | EISDIR => {
            StartError::Command(CommandFailure::NotInvokable { detail })
        }
        _ => StartError::Failed(TaskError::new(
            ErrorKind::Engine,
            format!("command `{program}` could not be started: {text}"),
        )),
    }
}

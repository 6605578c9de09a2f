//! The cold runtime: every task is a fresh container.
//!
//! pull (when missing) → create → attach (and upload the tools) → start,
//! then a [`ColdProcess`]: output from the attach stream, stdin into it,
//! the end from the engine, and the container removed when the process is
//! finished. The task runs under `measure` (the tools binary, between
//! docker-init and the task), whose last stderr line says what the
//! container used; [`UsageLine`] takes it out of the output.

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{AttachContainerOptions, CreateContainerOptions};
use bollard::Docker;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::cleanup::{ContainerGuard, Owner};
use super::config::ExecutorConfig;
use super::container::container_body;
use super::engine::{create_error, engine_error, init_exec_failure, start_error};
use super::events::EventSink;
use super::exit::{container_end, ExitWatch, SIGKILL_EXIT};
use super::kept::{container_name, stop_with_verdict};
use super::plan::Plan;
use super::process::{Process, ProcessEnd, StartError, Stdin};
use super::pull::{credentials_for, ensure_image, ImageRef};
use super::tools::{Tools, ToolsMount, MEASURE_PATH};
use super::usage::UsageLine;
use crate::task::ProgressEvent;
use crate::task::{Ending, Offsets, OutputStream, TaskError, TaskId, Usage};

/// Starts tasks in new containers.
#[derive(Debug)]
pub(crate) struct Cold {
    pub docker: Docker,
    pub config: ExecutorConfig,
    pub owner: Owner,
    tools: Tools,
    next_task: AtomicU64,
}

impl Cold {
    pub fn new(docker: Docker, config: ExecutorConfig, owner: Owner, tools: Tools) -> Cold {
        Cold {
            docker,
            config,
            owner,
            tools,
            next_task: AtomicU64::new(1),
        }
    }

    /// Pulls the image if need be (the only step a cancel interrupts: the
    /// others are short, and a container half made is removed before this
    /// returns), then creates, attaches and starts the task's container.
    pub async fn start(
        &self,
        plan: &Plan,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<ColdProcess, StartError> {
        let default_command = self.pull(plan, events, cancel).await?;
        let (container, tools) = self.create(plan, default_command).await?;
        // Before the start, so that its end cannot be missed.
        let watch = ExitWatch::subscribe(&self.docker, container.id());
        let short = container.id().chars().take(12).collect();
        let _ = events
            .progress(ProgressEvent::Created { container: short })
            .await;
        match self.attach_and_start(&container, plan, tools).await {
            Ok(attached) => {
                let _ = events.progress(ProgressEvent::Started).await;
                Ok(ColdProcess::new(
                    self.docker.clone(),
                    container,
                    watch,
                    attached,
                ))
            }
            Err(e) => {
                if let Err(removal) = container.remove().await {
                    tracing::error!(error = %removal, "a task's container could not be removed");
                }
                Err(e)
            }
        }
    }

    /// Pulls the plan's image if the engine lacks it, with the request's
    /// credentials or the server's for its registry; gives the image's
    /// default command. A cancel abandons it.
    pub async fn pull(
        &self,
        plan: &Plan,
        events: &EventSink,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, StartError> {
        let credentials = credentials_for(
            &ImageRef::parse(&plan.image),
            plan.pull_auth.as_ref(),
            &self.config.registry_auth,
        );
        tokio::select! {
            pulled = ensure_image(&self.docker, &plan.image, credentials, events) => Ok(pulled?),
            // Dropping the pull's connection makes the engine abandon it.
            _ = cancel.cancelled() => Err(StartError::Cancelled),
        }
    }

    /// Creates the task's container. Its command runs under `measure`
    /// (the image's default command when the plan names none); an image
    /// with no command at all is left for the engine to refuse.
    async fn create(
        &self,
        plan: &Plan,
        default_command: Vec<String>,
    ) -> Result<(ContainerGuard, ToolsMount), TaskError> {
        // A kept task's container is named after it, for `docker logs`.
        let options = plan.task.as_ref().map(|tag| CreateContainerOptions {
            name: Some(container_name(&tag.id)),
            ..CreateContainerOptions::default()
        });
        let (created, tools) = self
            .tools
            .create(&self.docker, options, || self.body(plan, &default_command))
            .await
            .map_err(|e| create_error(&plan.image, &e))?;
        for warning in &created.warnings {
            tracing::warn!(container = %created.id, %warning, "engine warning on create");
        }
        Ok((ContainerGuard::new(self.docker.clone(), created.id), tools))
    }

    /// The container's settings, and how the tools get into it.
    fn body(&self, plan: &Plan, default_command: &[String]) -> (ContainerCreateBody, ToolsMount) {
        let task = self.next_task.fetch_add(1, Ordering::Relaxed);
        let mut body = container_body(&self.config, &self.owner, plan, &task.to_string());
        let argv = if plan.command.is_empty() {
            default_command.to_vec()
        } else {
            plan.command.clone()
        };
        if argv.is_empty() {
            return (body, ToolsMount::Unneeded);
        }
        body.entrypoint = Some(vec![MEASURE_PATH.to_owned()]);
        body.cmd = Some(argv);
        let tools = self.tools.mount(&mut body);
        (body, tools)
    }

    /// Attaches before starting, so not a byte of output is missed; the
    /// tools go in meanwhile when they are uploaded (two engine calls at
    /// once, not one after the other).
    async fn attach_and_start(
        &self,
        container: &ContainerGuard,
        plan: &Plan,
        tools: ToolsMount,
    ) -> Result<Attached, StartError> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: plan.stdin,
            stdout: true,
            stderr: true,
            ..AttachContainerOptions::default()
        };
        let attach = self.docker.attach_container(container.id(), Some(options));
        let upload = self.tools.provide(&self.docker, container.id(), tools);
        let (attach, uploaded) = tokio::join!(attach, upload);
        let attach = attach.map_err(|e| engine_error("attaching to the container", &e))?;
        uploaded?;
        self.docker
            .start_container(container.id(), None)
            .await
            .map_err(|e| start_error(&e))?;
        Ok(Attached {
            output: attach.output,
            stdin: plan.stdin.then(|| ColdStdin(attach.input)),
        })
    }
}

/// The attach connection's demultiplexed output.
type OutputFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

struct Attached {
    output: OutputFrames,
    stdin: Option<ColdStdin>,
}

/// A task's container, running.
pub(crate) struct ColdProcess {
    docker: Docker,
    container: ContainerGuard,
    watch: ExitWatch,
    frames: OutputFrames,
    stdin: Option<ColdStdin>,
    report: InitReport,
    /// Chunks read but not yet handed out.
    ready: VecDeque<(OutputStream, Bytes)>,
    /// Its end, once read early (to judge a held init report), or what
    /// ended it before it ran.
    early_end: Option<Result<ProcessEnd, TaskError>>,
    /// `measure`'s report, taken out of stderr.
    usage: UsageLine,
    /// The output handed out so far, per stream: where a reading of the
    /// container's log takes over if the attach stream is lost.
    relayed: Offsets,
}

impl ColdProcess {
    fn new(
        docker: Docker,
        container: ContainerGuard,
        watch: ExitWatch,
        attached: Attached,
    ) -> ColdProcess {
        ColdProcess {
            docker,
            container,
            watch,
            frames: attached.output,
            stdin: attached.stdin,
            report: InitReport::default(),
            ready: VecDeque::new(),
            early_end: None,
            usage: UsageLine::default(),
            relayed: Offsets::default(),
        }
    }

    /// The output closed. If docker-init's report was held, the exit code
    /// tells whether it was an exec failure (the command never ran) or the
    /// task's own stderr after all.
    async fn closed(&mut self) {
        let Some(report) = self.report.take_held() else {
            return;
        };
        let end = container_end(&self.docker, self.container.id(), Some(&mut self.watch)).await;
        let failure = match &end {
            Ok(ProcessEnd::Exited { code, .. }) => init_exec_failure(*code, &report),
            _ => None,
        };
        match failure {
            Some(failure) => self.early_end = Some(Ok(ProcessEnd::NotStarted(failure))),
            None => {
                self.ready.push_back((OutputStream::Stderr, report));
                self.early_end = Some(end);
            }
        }
    }
}

impl Process for ColdProcess {
    type Stdin = ColdStdin;

    fn take_stdin(&mut self) -> Option<ColdStdin> {
        self.stdin.take()
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        let chunk = self.next_output().await;
        if let Some((stream, bytes)) = &chunk {
            self.relayed.advance(*stream, bytes.len() as u64);
        }
        chunk
    }

    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        let end = match self.early_end.take() {
            Some(end) => end,
            None => container_end(&self.docker, self.container.id(), Some(&mut self.watch)).await,
        };
        Ok(counted_oom(end?, self.usage.oom_kills()))
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }

    async fn finish(self) {
        let (_, container) = self.detach();
        if let Err(e) = container.remove().await {
            tracing::error!(error = %e, "a task's container could not be removed");
        }
    }
}

impl ColdProcess {
    /// The container's id.
    pub fn container_id(&self) -> &str {
        self.container.id()
    }

    /// The output handed out so far, per stream.
    pub fn relayed(&self) -> Offsets {
        self.relayed
    }

    async fn next_output(&mut self) -> Option<(OutputStream, Bytes)> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(chunk);
            }
            if self.early_end.is_some() {
                // Only a held report reads the end early, and only once the
                // output has closed.
                return None;
            }
            let (stream, chunk) = match self.frames.next().await {
                Some(Ok(LogOutput::StdOut { message })) => (OutputStream::Stdout, message),
                Some(Ok(LogOutput::StdErr { message })) => {
                    let message = self.usage.filter(message);
                    if message.is_empty() {
                        continue;
                    }
                    (OutputStream::Stderr, message)
                }
                // Only a TTY gives raw console frames, and tasks never get
                // one; if it happens anyway, the bytes are the task's output.
                Some(Ok(LogOutput::Console { message })) => (OutputStream::Stdout, message),
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "attach stream broke; waiting for the exit status");
                    self.report = InitReport::default();
                    return None;
                }
                None => {
                    if let Some(unfinished) = self.usage.finish() {
                        self.ready.push_back((OutputStream::Stderr, unfinished));
                    }
                    self.closed().await;
                    return self.ready.pop_front();
                }
            };
            self.report.offer(stream, chunk, &mut self.ready);
        }
    }
}

impl ColdProcess {
    /// Lets go of a kept task's container instead of removing it. When the
    /// server ended the task (`verdict`), the container may still run: it
    /// is killed, and the verdict written on it for a restarted server.
    pub async fn keep(self, id: &TaskId, verdict: Option<Ending>) {
        let (docker, container) = self.detach();
        let container = container.keep();
        if let Some(ending) = verdict {
            stop_with_verdict(&docker, &container, id, ending).await;
        }
    }
}

impl ColdProcess {
    /// Closes the attach connection and the event watch, before the
    /// container is removed or stopped: the engine does not finish removing
    /// a container while it still copies output to a reader that has
    /// stopped reading.
    fn detach(self) -> (Docker, ContainerGuard) {
        let ColdProcess {
            docker,
            container,
            frames,
            stdin,
            watch,
            ..
        } = self;
        drop((frames, stdin, watch));
        (docker, container)
    }
}

/// The end, with an OOM kill the engine missed: under load it can lose
/// the `oom` event of a container whose task then ends as a plain SIGKILL
/// (137). `measure` read the cgroup's own count of OOM kills after the
/// task ended; a 137 with kills counted was one.
fn counted_oom(end: ProcessEnd, oom_kills: Option<u64>) -> ProcessEnd {
    match end {
        ProcessEnd::Exited {
            code: SIGKILL_EXIT,
            oom_killed: false,
        } if oom_kills.is_some_and(|kills| kills > 0) => ProcessEnd::Exited {
            code: SIGKILL_EXIT,
            oom_killed: true,
        },
        end => end,
    }
}

/// The attach connection's write half: the container's stdin. Closing it
/// is end-of-file for the process (the container is created `StdinOnce`).
pub(crate) struct ColdStdin(Pin<Box<dyn AsyncWrite + Send>>);

impl Stdin for ColdStdin {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.write_all(&chunk).await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// How docker-init (tini, PID 1 in every cold task) starts its report that
/// it could not exec the task's command, which it then exits 127 or 126
/// for. `docker run` without an init refuses such a start instead; to
/// report the same error, a first stderr chunk that starts with this is
/// held until the exit code tells whether it was that failure.
const INIT_FAILURE_PREFIX: &[u8] = b"[FATAL tini (";

/// How `measure` (between docker-init and the task) starts the same
/// report, in the same words after it, with the same exit codes.
const MEASURE_FAILURE_PREFIX: &[u8] = b"measure: exec ";

/// The most of a would-be docker-init report held back: its line is short
/// (a command name and an error), so a longer one is the task's own output.
const MAX_HELD: usize = 4096;

/// Holds back what may be docker-init's exec-failure report.
#[derive(Debug, Default)]
pub(crate) struct InitReport {
    seen_output: bool,
    held: Option<Bytes>,
}

impl InitReport {
    /// Takes one chunk of output; whatever is no longer held goes to
    /// `ready`, in order.
    pub(crate) fn offer(
        &mut self,
        stream: OutputStream,
        chunk: Bytes,
        ready: &mut VecDeque<(OutputStream, Bytes)>,
    ) {
        let first = !std::mem::replace(&mut self.seen_output, true);
        let report =
            chunk.starts_with(INIT_FAILURE_PREFIX) || chunk.starts_with(MEASURE_FAILURE_PREFIX);
        if first && stream == OutputStream::Stderr && report {
            self.held = Some(chunk);
            return;
        }
        // docker-init writes its report in three writes to an unbuffered
        // stderr (prefix, message, newline), which the engine relays as one
        // frame or several, depending on timing: keep holding until the
        // line is complete.
        if let Some(line) = self.held.as_mut() {
            if stream == OutputStream::Stderr
                && !line.ends_with(b"\n")
                && line.len() + chunk.len() <= MAX_HELD
            {
                let mut joined = BytesMut::with_capacity(line.len() + chunk.len());
                joined.extend_from_slice(line);
                joined.extend_from_slice(&chunk);
                *line = joined.freeze();
                return;
            }
        }
        // More output: the held chunk was the task's own after all.
        if let Some(earlier) = self.held.take() {
            ready.push_back((OutputStream::Stderr, earlier));
        }
        ready.push_back((stream, chunk));
    }

    pub(crate) fn take_held(&mut self) -> Option<Bytes> {
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stderr(text: &str) -> (OutputStream, Bytes) {
        (
            OutputStream::Stderr,
            Bytes::copy_from_slice(text.as_bytes()),
        )
    }

    /// Offers `chunks`; returns what was released and what is still held.
    fn offer_all(chunks: Vec<(OutputStream, Bytes)>) -> (Vec<u8>, Option<Bytes>) {
        let mut report = InitReport::default();
        let mut ready = VecDeque::new();
        for (stream, chunk) in chunks {
            report.offer(stream, chunk, &mut ready);
        }
        let released = ready.into_iter().flat_map(|(_, c)| c.to_vec()).collect();
        (released, report.take_held())
    }

    #[test]
    fn a_sigkill_with_an_oom_kill_counted_is_an_oom_kill() {
        let exited = |code, oom_killed| ProcessEnd::Exited { code, oom_killed };
        let oom = |end| {
            matches!(
                end,
                ProcessEnd::Exited {
                    oom_killed: true,
                    ..
                }
            )
        };
        assert!(oom(counted_oom(exited(137, false), Some(1))));
        assert!(!oom(counted_oom(exited(137, false), Some(0))));
        assert!(!oom(counted_oom(exited(137, false), None)));
        // A child killed for memory while the task itself ended otherwise.
        assert!(!oom(counted_oom(exited(1, false), Some(1))));
        assert!(oom(counted_oom(exited(137, true), None)));
    }

    #[test]
    fn an_init_report_in_pieces_is_held_whole() {
        let (released, held) = offer_all(vec![
            stderr("[FATAL tini (7)] "),
            stderr("exec /etc/passwd failed: Permission denied"),
            stderr("\n"),
        ]);
        assert!(released.is_empty(), "nothing released: {released:?}");
        assert_eq!(
            &held.expect("the held report")[..],
            b"[FATAL tini (7)] exec /etc/passwd failed: Permission denied\n"
        );
    }

    #[test]
    fn a_task_line_that_looks_like_one_is_relayed_with_what_follows() {
        let (released, held) = offer_all(vec![
            stderr("[FATAL tini (7)] "),
            stderr("not really\n"),
            stderr("more\n"),
        ]);
        assert!(held.is_none());
        assert_eq!(released, b"[FATAL tini (7)] not really\nmore\n");
    }
}

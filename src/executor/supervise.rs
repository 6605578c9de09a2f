//! Supervision, written once for every kind of process: relay its output
//! (up to the output limit) and its stdin, end it on cancel or timeout, and
//! turn its end into the task's [`Outcome`] or error.

use bytes::Bytes;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::events::EventSink;
use super::process::{CommandFailure, Process, ProcessEnd, Stdin};
use super::TaskIo;
use crate::task::{Ending, ErrorKind, Outcome, TaskError};

/// The highest signal number Linux has; codes above 128 + this are plain
/// exit codes.
const MAX_SIGNAL: i64 = 64;

/// How the watch over a running process ended.
enum Stop {
    /// The process closed its output: collect its end.
    Closed,
    /// We end it, and the outcome says why.
    Killed(Ending),
}

/// Runs `process` to its end under the task's timeout, cancel token and
/// output limit, and gives the task's outcome. A process that still runs
/// when this returns (cancelled, timed out, over the limit) is ended by its
/// `finish`, which the caller owes it. `running_for` is how long the
/// process has run already (an adopted one): its deadline is counted from
/// its real start.
pub(crate) async fn supervise<P: Process>(
    process: &mut P,
    command: &[String],
    (timeout, running_for): (Duration, Duration),
    io: TaskIo,
    output_limit: u64,
) -> Result<Outcome, TaskError> {
    let TaskIo {
        events,
        stdin,
        cancel,
    } = io;
    let now = Instant::now();
    let started = now.checked_sub(running_for).unwrap_or(now);
    let deadline = deadline_in(timeout.saturating_sub(running_for));
    let feed = feed_stdin(stdin, process.take_stdin());
    let stop = {
        let relay = relay(process, &events, output_limit);
        watch(relay, feed, &cancel, deadline).await
    };
    let end = match stop {
        Stop::Killed(ending) => Err(ending),
        Stop::Closed => collect(process, command, &cancel, deadline, started).await,
    };
    match end {
        Ok(result) => result,
        Err(ending) => Ok(killed(ending, started.elapsed())),
    }
}

/// `left` from now; a timeout too long to add is no timeout.
fn deadline_in(left: Duration) -> Deadline {
    let now = Deadline::now();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(left).unwrap_or(now + century)
}

/// Runs the output relay and the stdin feed until the output closes, the
/// task is cancelled or its deadline passes.
async fn watch(
    relay: impl std::future::Future<Output = Stop>,
    feed: impl std::future::Future<Output = ()>,
    cancel: &CancellationToken,
    deadline: Deadline,
) -> Stop {
    tokio::pin!(relay, feed);
    let mut fed = false;
    loop {
        tokio::select! {
            // Cancel first: a task that is cancelled and ends at once is
            // reported cancelled, as the client asked.
            biased;
            _ = cancel.cancelled() => return Stop::Killed(Ending::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Stop::Killed(Ending::TimedOut),
            stop = &mut relay => return stop,
            () = &mut feed, if !fed => fed = true,
        }
    }
}

/// Relays output as it comes, byte for byte, until the process closes its
/// output or has written `limit` bytes (stdout and stderr together).
///
/// While the client is slow `events.output` waits; this loop then stops
/// reading the process's output and backpressure reaches the process.
async fn relay<P: Process>(process: &mut P, events: &EventSink, limit: u64) -> Stop {
    let mut relayed: u64 = 0;
    while let Some((stream, mut chunk)) = process.output().await {
        let room = limit.saturating_sub(relayed);
        let over = chunk.len() as u64 > room;
        if over {
            // `room` < chunk.len(), which is a usize.
            chunk.truncate(room as usize);
        }
        relayed += chunk.len() as u64;
        if !chunk.is_empty() && events.output(stream, chunk).await.is_err() {
            // Nobody reads the output any more: the client is gone.
            return Stop::Killed(Ending::Cancelled);
        }
        if over {
            return Stop::Killed(Ending::OutputLimit);
        }
    }
    Stop::Closed
}

/// Copies the client's stdin chunks to the process, then closes its stdin.
async fn feed_stdin<S: Stdin>(mut chunks: mpsc::Receiver<Bytes>, stdin: Option<S>) {
    let Some(mut stdin) = stdin else { return };
    while let Some(chunk) = chunks.recv().await {
        // The process closed stdin or ended: the rest has nowhere to go.
        if stdin.write(chunk).await.is_err() {
            return;
        }
    }
    stdin.close().await;
}

/// The process closed its output: wait for its end (still honouring cancel
/// and timeout, in case the output closed early) and read it. `Err` when
/// the task has to be ended after all, with the ending to report.
async fn collect<P: Process>(
    process: &mut P,
    command: &[String],
    cancel: &CancellationToken,
    deadline: Deadline,
    started: Instant,
) -> Result<Result<Outcome, TaskError>, Ending> {
    let end = tokio::select! {
        end = process.end() => end,
        _ = cancel.cancelled() => return Err(Ending::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(Ending::TimedOut),
    };
    Ok(match end {
        Ok(ProcessEnd::Exited { code, oom_killed }) => {
            let mut outcome = ended(code, oom_killed, started.elapsed());
            outcome.usage = process.usage();
            Ok(outcome)
        }
        Ok(ProcessEnd::NotStarted(failure)) => Err(command_error(command, failure)),
        Err(error) => Err(error),
    })
}

/// The outcome of a process that ended by itself.
///
/// Heuristic, documented: an exit code 128+N (N a signal number) is read as
/// death by signal N. The init process of every task (docker-init, or the
/// warm agent) exits 128+N when its child dies of signal N, so this is
/// exact for killed processes; a process that calls `exit(130)` itself is
/// misread as signal 2, as `docker run`'s users would read it too.
pub(crate) fn ended(code: i64, oom_killed: bool, duration: Duration) -> Outcome {
    let exit_code = i32::try_from(code).ok();
    let signal = (code > 128 && code <= 128 + MAX_SIGNAL).then(|| (code - 128) as i32);
    let ending = if oom_killed {
        Ending::OomKilled
    } else if signal.is_some() {
        Ending::Signaled
    } else {
        Ending::Exited
    };
    Outcome {
        ending,
        exit_code,
        signal: if ending == Ending::Exited {
            None
        } else {
            signal
        },
        duration_ms: millis(duration),
        output_truncated: false,
        usage: None,
    }
}

/// The outcome of a task we ended (or never started).
pub(crate) fn killed(ending: Ending, duration: Duration) -> Outcome {
    Outcome {
        ending,
        exit_code: None,
        signal: None,
        duration_ms: millis(duration),
        output_truncated: ending == Ending::OutputLimit,
        usage: None,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What the user is told when the command cannot start: the one place
/// these messages are written, whichever runtime found out.
pub(crate) fn command_error(command: &[String], failure: CommandFailure) -> TaskError {
    let shown = command
        .first()
        .map_or("the image's default command", String::as_str);
    match failure {
        CommandFailure::NotFound { detail } => TaskError::new(
            ErrorKind::CommandNotFound,
            format!(
                "command `{shown}` was not found in the image ({detail}); check the command name \
                 and the image's PATH"
            ),
        ),
        CommandFailure::NotInvokable { detail } => TaskError::new(
            ErrorKind::CommandNotInvokable,
            format!(
                "command `{shown}` exists but cannot be run ({detail}); check that it is an \
                 executable file and that the task's user may run it"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_signals_and_oom() {
        let d = Duration::from_millis(5);
        let plain = ended(42, false, d);
        assert_eq!(
            (plain.ending, plain.exit_code, plain.signal),
            (Ending::Exited, Some(42), None)
        );
        let signaled = ended(137, false, d);
        assert_eq!(
            (signaled.ending, signaled.signal),
            (Ending::Signaled, Some(9))
        );
        assert_eq!(signaled.exit_status(), 137);
        assert_eq!(ended(137, true, d).ending, Ending::OomKilled);
        assert_eq!(ended(255, false, d).ending, Ending::Exited);
    }

    #[test]
    fn killed_outcomes_mark_truncation_only_for_the_output_limit() {
        assert!(killed(Ending::OutputLimit, Duration::ZERO).output_truncated);
        assert!(!killed(Ending::TimedOut, Duration::ZERO).output_truncated);
    }

    #[test]
    fn command_failures_read_like_docker_run() {
        let cmd = vec!["nope".to_owned()];
        let missing = CommandFailure::NotFound {
            detail: "exec: no such file".into(),
        };
        let err = command_error(&cmd, missing);
        assert_eq!(err.kind, ErrorKind::CommandNotFound);
        assert!(err.message.contains("`nope`"), "{}", err.message);
        let denied = CommandFailure::NotInvokable {
            detail: "permission denied".into(),
        };
        assert_eq!(
            command_error(&[], denied).kind,
            ErrorKind::CommandNotInvokable
        );
    }
}

//! How a container's end becomes an [`Outcome`]: the engine's exit status,
//! the OOM flag, and the endings we cause ourselves. Shared by the cold and
//! the warm path, so both report the same outcome for the same ending.

use bollard::query_parameters::WaitContainerOptions;
use bollard::Docker;
use std::time::Duration;

use super::engine::engine_error;
use crate::protocol::{Ending, ErrorKind, Outcome, TaskError};

/// The container's exit status, from the engine's wait.
pub(crate) async fn wait_exit(docker: &Docker, id: &str) -> Result<i64, TaskError> {
    use bollard::errors::Error as BollardError;
    use futures::StreamExt;
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let mut wait = docker.wait_container(id, Some(options));
    match wait.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(engine_error("waiting for the container", &e)),
        None => Err(TaskError::new(
            ErrorKind::Engine,
            "the engine ended the wait without an exit status; check the engine's health",
        )),
    }
}

/// The highest signal number Linux has; codes above 128 + this are plain
/// exit codes.
const MAX_SIGNAL: i64 = 64;

/// The outcome of a container that ended by itself.
///
/// Heuristic, documented: an exit code 128+N (N a signal number) is read as
/// death by signal N. docker-init, PID 1 in every task, exits 128+N when its
/// child dies of signal N, so this is exact for killed processes; a process
/// that calls `exit(130)` itself is misread as signal 2, as `docker run`'s
/// users would read it too.
pub(crate) fn ended_outcome(code: i64, oom_killed: bool, duration: Duration) -> Outcome {
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
    }
}

/// The outcome of a task we ended (or never started).
pub(crate) fn killed_outcome(ending: Ending, duration: Duration) -> Outcome {
    Outcome {
        ending,
        exit_code: None,
        signal: None,
        duration_ms: millis(duration),
        output_truncated: ending == Ending::OutputLimit,
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_signals_and_oom() {
        let d = Duration::from_millis(5);
        let plain = ended_outcome(42, false, d);
        assert_eq!(
            (plain.ending, plain.exit_code, plain.signal),
            (Ending::Exited, Some(42), None)
        );
        let killed = ended_outcome(137, false, d);
        assert_eq!((killed.ending, killed.signal), (Ending::Signaled, Some(9)));
        assert_eq!(killed.exit_status(), 137);
        let oom = ended_outcome(137, true, d);
        assert_eq!(oom.ending, Ending::OomKilled);
        assert_eq!(ended_outcome(255, false, d).ending, Ending::Exited);
    }

    #[test]
    fn killed_outcomes_mark_truncation_only_for_the_output_limit() {
        assert!(killed_outcome(Ending::OutputLimit, Duration::ZERO).output_truncated);
        assert!(!killed_outcome(Ending::TimedOut, Duration::ZERO).output_truncated);
    }
}

//! Turning the engine's errors into [`TaskError`]s a user can act on.

use bollard::errors::Error as BollardError;
use std::path::Path;

use super::process::{CommandFailure, StartError};
use crate::task::{ErrorKind, TaskError};

/// Whether the engine's error is about `path` (a mount it cannot make:
/// the engine names the path it misses).
pub(crate) fn names_path(e: &BollardError, path: &Path) -> bool {
    e.to_string().contains(&*path.to_string_lossy())
}

/// A failure of the engine itself (or of reaching it).
pub(crate) fn engine_error(context: &str, e: &BollardError) -> TaskError {
    let hint = match e {
        BollardError::DockerResponseServerError { .. } => "",
        _ => "; is the Docker engine running and reachable (DOCKER_HOST)?",
    };
    TaskError::new(
        ErrorKind::Engine,
        format!("Docker engine error while {context}: {e}{hint}"),
    )
}

/// The engine's status code for `e`, when it answered at all.
pub(crate) fn status_code(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Classifies a failed container start. The engine reports a command that
/// cannot be run only as text from runc; `docker run` maps the same texts to
/// exit statuses 127 and 126, and so do we.
pub(crate) fn start_error(e: &BollardError) -> StartError {
    let text = match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => return StartError::Failed(engine_error("starting the container", other)),
    };
    let lower = text.to_lowercase();
    if lower.contains("executable file not found") || lower.contains("no such file or directory") {
        StartError::Command(CommandFailure::NotFound { detail: text })
    } else if lower.contains("permission denied") || lower.contains("is a directory") {
        StartError::Command(CommandFailure::NotInvokable { detail: text })
    } else {
        StartError::Failed(TaskError::new(
            ErrorKind::Engine,
            format!("the container could not start: {text}"),
        ))
    }
}

/// docker-init's report that it could not exec the command (held back by
/// the cold process's output), read with the exit code it gave: 127 when
/// the command does not exist, 126 when it cannot be run. `None` when it was
/// not that.
pub(crate) fn init_exec_failure(code: i64, report: &[u8]) -> Option<CommandFailure> {
    let text = String::from_utf8_lossy(report);
    let detail = text.trim_end().to_owned();
    if !detail.contains("exec ") || !detail.contains(" failed: ") {
        return None;
    }
    match code {
        127 => Some(CommandFailure::NotFound { detail }),
        126 => Some(CommandFailure::NotInvokable { detail }),
        _ => None,
    }
}

/// Classifies a failed container create.
pub(crate) fn create_error(image: &str, e: &BollardError) -> TaskError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => TaskError::new(
            ErrorKind::ImageNotFound,
            format!("image `{image}` is not on the engine (it was removed meanwhile?); try again"),
        ),
        BollardError::DockerResponseServerError {
            status_code: 400,
            message,
        } => TaskError::new(
            ErrorKind::BadRequest,
            format!("the engine refused the task's settings: {message}"),
        ),
        other => engine_error("creating the container", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code: 400,
            message: message.to_owned(),
        }
    }

    fn is_command(error: StartError, missing: bool) -> bool {
        match error {
            StartError::Command(CommandFailure::NotFound { .. }) => missing,
            StartError::Command(CommandFailure::NotInvokable { .. }) => !missing,
            _ => false,
        }
    }

    #[test]
    fn start_errors_map_like_docker_run() {
        let missing = server(
            "OCI runtime create failed: runc create failed: unable to start container process: \
             exec: \"nope\": executable file not found in $PATH: unknown",
        );
        assert!(is_command(start_error(&missing), true));
        let denied = server("exec: \"/tmp\": permission denied: unknown");
        assert!(is_command(start_error(&denied), false));
        let report = b"[FATAL tini (7)] exec nope failed: No such file or directory\n";
        assert!(matches!(
            init_exec_failure(127, report),
            Some(CommandFailure::NotFound { .. })
        ));
        assert!(matches!(
            init_exec_failure(126, report),
            Some(CommandFailure::NotInvokable { .. })
        ));
        assert!(init_exec_failure(1, report).is_none());
        let other = server("cgroup trouble");
        assert!(matches!(
            start_error(&other),
            StartError::Failed(TaskError {
                kind: ErrorKind::Engine,
                ..
            })
        ));
    }
}

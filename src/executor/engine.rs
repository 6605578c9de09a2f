//! Turning the engine's errors into [`TaskError`]s a user can act on.

use bollard::errors::Error as BollardError;

use crate::protocol::{ErrorKind, TaskError};

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
pub(crate) fn start_error(command: &[String], e: &BollardError) -> TaskError {
    let text = match e {
        BollardError::DockerResponseServerError { message, .. } => message.as_str(),
        other => return engine_error("starting the container", other),
    };
    let shown = command
        .first()
        .map_or("the image's default command", String::as_str);
    let lower = text.to_lowercase();
    if lower.contains("executable file not found") || lower.contains("no such file or directory") {
        TaskError::new(
            ErrorKind::CommandNotFound,
            format!(
                "command `{shown}` was not found in the image ({text}); check the command name \
                 and the image's PATH"
            ),
        )
    } else if lower.contains("permission denied") || lower.contains("is a directory") {
        TaskError::new(
            ErrorKind::CommandNotInvokable,
            format!(
                "command `{shown}` exists but cannot be run ({text}); check that it is an \
                 executable file and that the task's user may run it"
            ),
        )
    } else {
        TaskError::new(
            ErrorKind::Engine,
            format!("the container could not start: {text}"),
        )
    }
}

/// docker-init's report that it could not exec the command (held back by
/// the output relay), read with the exit code it gave: 127 when the command
/// does not exist, 126 when it cannot be run. `None` when it was not that.
pub(crate) fn init_exec_error(code: i64, report: &[u8], command: &[String]) -> Option<TaskError> {
    let text = String::from_utf8_lossy(report);
    let text = text.trim_end();
    if !text.contains("exec ") || !text.contains(" failed: ") {
        return None;
    }
    let shown = command
        .first()
        .map_or("the image's default command", String::as_str);
    match code {
        127 => Some(TaskError::new(
            ErrorKind::CommandNotFound,
            format!(
                "command `{shown}` was not found in the image ({text}); check the command name \
                 and the image's PATH"
            ),
        )),
        126 => Some(TaskError::new(
            ErrorKind::CommandNotInvokable,
            format!(
                "command `{shown}` exists but cannot be run ({text}); check that it is an \
                 executable file and that the task's user may run it"
            ),
        )),
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

    #[test]
    fn start_errors_map_like_docker_run() {
        let cmd = vec!["nope".to_owned()];
        let missing = server(
            "OCI runtime create failed: runc create failed: unable to start container process: \
             exec: \"nope\": executable file not found in $PATH: unknown",
        );
        assert_eq!(start_error(&cmd, &missing).kind, ErrorKind::CommandNotFound);
        let denied = server("exec: \"/tmp\": permission denied: unknown");
        assert_eq!(
            start_error(&cmd, &denied).kind,
            ErrorKind::CommandNotInvokable
        );
        let report = b"[FATAL tini (7)] exec nope failed: No such file or directory\n";
        let from_init = init_exec_error(127, report, &cmd).expect("an exec failure");
        assert_eq!(from_init.kind, ErrorKind::CommandNotFound);
        assert_eq!(
            init_exec_error(126, report, &cmd).map(|e| e.kind),
            Some(ErrorKind::CommandNotInvokable)
        );
        assert!(init_exec_error(1, report, &cmd).is_none());
        let other = server("cgroup trouble");
        assert_eq!(start_error(&cmd, &other).kind, ErrorKind::Engine);
    }
}

//! The checks of an HTTP task's call (`Task::Http`): a port, a task name
//! that is one path of the image's server, JSON parameters, and none of
//! the settings that only a process of our own could take.

use crate::executor::HttpCall;
use crate::protocol::TaskSpec;
use crate::task::{ErrorKind, TaskError};

/// The longest task name: it becomes the path `/task/{name}`.
const MAX_TASK_NAME: usize = 256;

/// Characters a task name may hold: those of a URL path, unescaped
/// (RFC 3986 `pchar` and `/`), so that the request line cannot be forged.
const PATH_PUNCTUATION: &str = "-._~!$&'()*+,;=:@/";

/// The call `spec` asks for, checked.
pub(crate) fn call(
    spec: &TaskSpec,
    port: u16,
    task: &str,
    params: Option<&str>,
) -> Result<HttpCall, TaskError> {
    if port == 0 {
        return Err(bad(
            "port 0 cannot be listened on; give the port the image's server listens on",
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || PATH_PUNCTUATION.contains(c);
    if task.is_empty() || task.len() > MAX_TASK_NAME || !task.chars().all(allowed) {
        return Err(bad(&format!(
            "task name {task:?} is not a path the server can call: use 1 to {MAX_TASK_NAME} \
             letters, digits or `{PATH_PUNCTUATION}`"
        )));
    }
    if spec.stdin {
        return Err(bad(
            "an HTTP task takes its input as params, not stdin; unset stdin",
        ));
    }
    if !spec.labels.is_empty() {
        return Err(bad(
            "an HTTP task's container may serve the next task of its kind, so it carries \
             the server's labels only; leave labels out",
        ));
    }
    if spec.workdir.is_some() {
        return Err(bad(
            "an HTTP task's server runs in its image's working directory; unset workdir",
        ));
    }
    let params = params.unwrap_or("null");
    if let Err(e) = serde_json::from_str::<serde_json::Value>(params) {
        return Err(bad(&format!(
            "the task's params are not valid JSON ({e}); send a JSON value"
        )));
    }
    Ok(HttpCall {
        port,
        task: task.to_owned(),
        params: params.to_owned(),
    })
}

fn bad(message: &str) -> TaskError {
    TaskError::new(ErrorKind::BadRequest, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_params_and_settings_are_checked() {
        let spec = TaskSpec::default();
        let ok = call(&spec, 8080, "sum", Some("[1,2]")).expect("a good call");
        assert_eq!(
            (ok.port, ok.task.as_str(), ok.params.as_str()),
            (8080, "sum", "[1,2]")
        );
        assert_eq!(call(&spec, 8080, "a/b-c.d", None).unwrap().params, "null");
        for name in ["", "sum x", "sum\r\nHost: evil", "%41", &"a".repeat(300)] {
            let refused = call(&spec, 8080, name, None).expect_err(name);
            assert_eq!(refused.kind, ErrorKind::BadRequest);
        }
        assert!(call(&spec, 0, "sum", None).is_err());
        assert!(call(&spec, 8080, "sum", Some("{nope")).is_err());
        let stdin = TaskSpec {
            stdin: true,
            ..TaskSpec::default()
        };
        assert!(call(&stdin, 8080, "sum", None).is_err());
    }
}

//! Reading a container's end from the engine: its exit code and whether
//! the kernel OOM-killed it. Used by every process that runs as a
//! container whose end the engine knows (a cold one; a warm one that died
//! under its task).

use bollard::errors::Error as BollardError;
use bollard::query_parameters::WaitContainerOptions;
use bollard::Docker;
use futures::StreamExt;
use std::time::Duration;

use super::engine::engine_error;
use super::process::ProcessEnd;
use crate::task::{ErrorKind, TaskError};

/// The exit code of a SIGKILLed process, which an OOM kill also gives.
const SIGKILL_EXIT: i64 = 128 + 9;
/// How often, and how far apart, a SIGKILL exit without the OOM flag is
/// asked about again.
const OOM_RECHECKS: u32 = 10;
const OOM_RECHECK_EVERY: Duration = Duration::from_millis(50);

/// The container's exit status, from the engine's wait.
pub(crate) async fn wait_exit(docker: &Docker, id: &str) -> Result<i64, TaskError> {
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

/// How the container ended: `code` when it is known already, else from
/// the engine's wait; and whether it was OOM-killed.
pub(crate) async fn container_end(
    docker: &Docker,
    id: &str,
    code: Option<i64>,
) -> Result<ProcessEnd, TaskError> {
    let code = match code {
        Some(code) => code,
        None => wait_exit(docker, id).await?,
    };
    let oom_killed = oom_killed(docker, id, code).await?;
    Ok(ProcessEnd::Exited { code, oom_killed })
}

/// Whether the kernel OOM-killed the container's process. The engine
/// learns of an OOM kill and of the exit by separate events that can
/// arrive in either order, so a SIGKILL exit without the flag is asked
/// about again for a short while before it is believed.
async fn oom_killed(docker: &Docker, id: &str, code: i64) -> Result<bool, TaskError> {
    for attempt in 0..=OOM_RECHECKS {
        let inspected = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| engine_error("inspecting the ended container", &e))?;
        let oom = inspected.state.and_then(|s| s.oom_killed).unwrap_or(false);
        if oom || code != SIGKILL_EXIT || attempt == OOM_RECHECKS {
            return Ok(oom);
        }
        tokio::time::sleep(OOM_RECHECK_EVERY).await;
    }
    Ok(false)
}

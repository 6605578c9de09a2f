//! Reading a container's end from the engine: its exit code and whether
//! the kernel OOM-killed it. Used by every process that runs as a
//! container whose end the engine knows (a cold one; a warm one that died
//! under its task).
//!
//! The fast way is the engine's own news: an [`ExitWatch`] subscribed
//! before the container starts gets its `oom` and `die` events as they
//! happen, so the end is known when the output closes, with no further
//! request. The wait and inspect requests race with it, in case the event
//! stream fails.
//!
//! The engine can still miss an OOM kill under load (no `oom` event, no
//! flag: a plain 137). A cold task's `measure` reads the cgroup's own
//! count of OOM kills before the container ends, which settles it
//! (`counted_oom` in cold.rs).

use bollard::errors::Error as BollardError;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptions, WaitContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::engine::engine_error;
use super::process::ProcessEnd;
use crate::task::{ErrorKind, TaskError};

/// The exit code of a SIGKILLed process, which an OOM kill also gives.
pub(crate) const SIGKILL_EXIT: i64 = 128 + 9;
/// How often, and how far apart, a SIGKILL exit without the OOM flag is
/// asked about again.
const OOM_RECHECKS: u32 = 10;
const OOM_RECHECK_EVERY: Duration = Duration::from_millis(50);
/// How long after a SIGKILL exit the event watch waits for the `oom` event
/// that may belong to it. Under load the engine was seen to report it more
/// than a second after the exit; only tasks that die of SIGKILL wait.
const LATE_OOM_WINDOW: Duration = Duration::from_secs(3);

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

/// How far back the event subscription reaches: it is made when the
/// container is created, but its request may reach the engine after the
/// container has already died; the engine replays what it missed.
const EVENTS_LOOKBACK: Duration = Duration::from_secs(1);

/// The engine's `die` event for one container (and whether an `oom` event
/// came first), read from the moment the container is created.
pub(crate) struct ExitWatch {
    died: oneshot::Receiver<(i64, bool)>,
    reader: JoinHandle<()>,
}

impl ExitWatch {
    /// Subscribes to the events of container `id`. Call before starting it.
    pub fn subscribe(docker: &Docker, id: &str) -> ExitWatch {
        let since = SystemTime::now()
            .checked_sub(EVENTS_LOOKBACK)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("container".to_owned(), vec![id.to_owned()]),
            ("event".to_owned(), vec!["oom".to_owned(), "die".to_owned()]),
        ]);
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        };
        let mut events = docker.events(Some(options));
        let (tx, died) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut oom = false;
            while let Some(Ok(event)) = events.next().await {
                match event.action.as_deref() {
                    Some("oom") => oom = true,
                    Some("die") => {
                        let Some(code) = exit_code(event) else { return };
                        // The engine may report an OOM kill just after the
                        // exit it caused: give it a moment.
                        if code == SIGKILL_EXIT && !oom {
                            let late = async {
                                while let Some(Ok(event)) = events.next().await {
                                    if event.action.as_deref() == Some("oom") {
                                        return true;
                                    }
                                }
                                false
                            };
                            oom = tokio::time::timeout(LATE_OOM_WINDOW, late)
                                .await
                                .unwrap_or(false);
                        }
                        let _ = tx.send((code, oom));
                        return;
                    }
                    _ => {}
                }
            }
        });
        ExitWatch { died, reader }
    }
}

/// The exit code a `die` event carries.
fn exit_code(event: EventMessage) -> Option<i64> {
    event
        .actor?
        .attributes?
        .get("exitCode")
        .and_then(|code| code.parse().ok())
}

// The subscription would outlive the container otherwise.
impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How the container ended: its exit code and whether it was OOM-killed.
/// From `watch`'s die event when it has one, else (or if the event stream
/// fails first) from the engine's wait and inspect.
pub(crate) async fn container_end(
    docker: &Docker,
    id: &str,
    watch: Option<&mut ExitWatch>,
) -> Result<ProcessEnd, TaskError> {
    let (code, oom_event) = match watch {
        Some(watch) => tokio::select! {
            // A closed channel (the stream failed) leaves the wait to answer.
            Ok((code, oom)) = &mut watch.died => (code, Some(oom)),
            code = wait_exit(docker, id) => (code?, None),
        },
        None => (wait_exit(docker, id).await?, None),
    };
    let oom_killed = match oom_event {
        Some(true) => true,
        Some(false) if code != SIGKILL_EXIT => false,
        // A SIGKILL exit whose `oom` event did not come within its window:
        // the engine's own flag has the last word.
        Some(false) => inspect_oom(docker, id).await?,
        None => oom_killed(docker, id, code).await?,
    };
    Ok(ProcessEnd::Exited { code, oom_killed })
}

/// Whether the kernel OOM-killed the container's process. The engine
/// learns of an OOM kill and of the exit by separate events that can
/// arrive in either order, so a SIGKILL exit without the flag is asked
/// about again for a short while before it is believed.
async fn oom_killed(docker: &Docker, id: &str, code: i64) -> Result<bool, TaskError> {
    for attempt in 0..=OOM_RECHECKS {
        let oom = inspect_oom(docker, id).await?;
        if oom || code != SIGKILL_EXIT || attempt == OOM_RECHECKS {
            return Ok(oom);
        }
        tokio::time::sleep(OOM_RECHECK_EVERY).await;
    }
    Ok(false)
}

/// The engine's OOM flag of a container.
async fn inspect_oom(docker: &Docker, id: &str) -> Result<bool, TaskError> {
    let inspected = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| engine_error("inspecting the ended container", &e))?;
    Ok(inspected.state.and_then(|s| s.oom_killed).unwrap_or(false))
}

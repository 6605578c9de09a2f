//! A task whose engine goes away while it runs (dockerd killed or
//! restarted).
//!
//! The engine keeps the container's log and its exit state, and with
//! `live-restore` the container even runs on; without it, the engine's
//! restart stops the container, and its exit state says so. Either way the
//! task's result is the engine's to tell once it is back, not an engine
//! error: so a task whose supervision failed because the engine stopped
//! answering waits for the engine (up to [`ENGINE_RETURN_WAIT`]) and is
//! then followed from its container's log, from the bytes already relayed,
//! as a restarted server follows a task it adopts.

use bollard::Docker;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::task::{ErrorKind, Outcome, TaskError};

/// How long a running task waits for its engine to come back before it
/// ends with the engine error.
pub const ENGINE_RETURN_WAIT: Duration = Duration::from_secs(300);
/// How often the engine is asked whether it is back.
const PING_EVERY: Duration = Duration::from_millis(500);

/// Whether `result` failed because the engine does not answer: an engine
/// error, and the engine still silent now. An error the engine itself gave
/// (it answers) is the task's result as it is.
pub(crate) async fn engine_lost(docker: &Docker, result: &Result<Outcome, TaskError>) -> bool {
    matches!(result, Err(e) if e.kind == ErrorKind::Engine) && docker.ping().await.is_err()
}

/// Waits until the engine answers again. False when it did not within
/// `within`, or when the task was cancelled meanwhile (a container cannot
/// be stopped through an engine that is away: the cancel ends the wait,
/// and the task ends with the engine error).
pub(crate) async fn engine_back(
    docker: &Docker,
    cancel: &CancellationToken,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if docker.ping().await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(PING_EVERY) => {}
        }
    }
}

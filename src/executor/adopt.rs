//! A restarted server takes back the kept tasks of the server it replaces.
//!
//! The containers are found by their labels ([`super::kept`]); one whose
//! owner process is gone is adopted. A container that still runs is
//! supervised again from its log (its deadline counted from its real start,
//! its output limit from its first byte); one that ended while no server
//! watched becomes a result, with its true exit code, signal and OOM flag.

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::cleanup::{Liveness, Owner, LABEL_MANAGED};
use super::cold::ColdStdin;
use super::engine::engine_error;
use super::exit::container_end;
use super::kept::{self, tag_of, times_of, verdict_of, LABEL_ID, LABEL_SCOPE, LABEL_TIMEOUT_MS};
use super::plan::TaskTag;
use super::process::{Process, ProcessEnd};
use super::supervise::{ended, killed};
use super::Replay;
use crate::task::{Offsets, Outcome, OutputStream, TaskError};

/// A kept task found at start-up.
#[derive(Debug)]
pub struct Adopted {
    pub tag: TaskTag,
    pub image: String,
    pub command: Vec<String>,
    /// When its container was created.
    pub created: SystemTime,
    /// `None` while it runs; its result once it has ended.
    pub ended: Option<Outcome>,
    pub(crate) container: String,
    pub(crate) timeout: Duration,
    /// How long it has been running.
    pub(crate) running_for: Duration,
}

/// The kept tasks in `scope` whose server is gone, by their containers.
pub(crate) async fn adoptable(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
) -> Result<Vec<Adopted>, TaskError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_MANAGED}=true"), LABEL_ID.to_owned()],
    )]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| engine_error("listing kept tasks", &e))?;
    let mut adopted = Vec::new();
    for summary in containers {
        let labels = summary.labels.unwrap_or_default();
        let (Some(id), Some(tag)) = (summary.id, tag_of(&labels)) else {
            continue;
        };
        if me.judge(&labels) != Liveness::Gone
            || labels.get(LABEL_SCOPE).map(String::as_str) != scope
        {
            continue;
        }
        let inspected = docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| engine_error("inspecting a kept task", &e))?;
        let timeout = labels
            .get(LABEL_TIMEOUT_MS)
            .and_then(|t| t.parse().ok())
            .map_or(Duration::MAX, Duration::from_millis);
        adopted.push(describe(id, tag, timeout, &inspected));
    }
    Ok(adopted)
}

fn describe(
    container: String,
    tag: TaskTag,
    timeout: Duration,
    inspected: &ContainerInspectResponse,
) -> Adopted {
    let config = inspected.config.clone().unwrap_or_default();
    let state = inspected.state.clone().unwrap_or_default();
    let times = times_of(inspected);
    let now = SystemTime::now();
    let started = times.started.unwrap_or(now);
    let running_for = now.duration_since(started).unwrap_or_default();
    let ended = (!state.running.unwrap_or(false)).then(|| {
        let ran = times
            .finished
            .and_then(|f| f.duration_since(started).ok())
            .unwrap_or_default();
        let name = inspected.name.as_deref().unwrap_or_default();
        match verdict_of(name) {
            Some(verdict) => killed(verdict, ran),
            // It ran past its deadline while no server watched: the
            // server would have ended it then.
            None if ran > timeout => killed(crate::task::Ending::TimedOut, timeout),
            None => ended(
                state.exit_code.unwrap_or(-1),
                state.oom_killed.unwrap_or(false),
                ran,
            ),
        }
    });
    let created = inspected
        .created
        .as_deref()
        .and_then(kept::parse_rfc3339)
        .unwrap_or(started);
    Adopted {
        tag,
        image: config.image.unwrap_or_default(),
        command: config.cmd.unwrap_or_default(),
        created,
        ended,
        container,
        timeout,
        running_for,
    }
}

/// An adopted task's running container, seen through its log: its output
/// from the first byte (the relay counts the output limit from there),
/// and its end from the engine. Its stdin ended with the server that had
/// it open.
pub(crate) struct LoggedProcess {
    docker: Docker,
    container: String,
    log: Replay,
}

impl LoggedProcess {
    pub fn new(docker: Docker, container: String) -> LoggedProcess {
        let log = kept::replay(&docker, &container, Offsets::default(), u64::MAX, true);
        LoggedProcess {
            docker,
            container,
            log,
        }
    }
}

impl Process for LoggedProcess {
    type Stdin = ColdStdin;

    fn take_stdin(&mut self) -> Option<ColdStdin> {
        None
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        match self.log.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the log of an adopted task broke; waiting for its end");
                None
            }
            None => None,
        }
    }

    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        container_end(&self.docker, &self.container, None).await
    }

    // The container is kept; whoever supervised it decides what follows.
    async fn finish(self) {}
}

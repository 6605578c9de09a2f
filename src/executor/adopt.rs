//! A restarted server takes back the kept tasks of the server it replaces.
//!
//! The containers are found by their labels ([`super::kept`]); one whose
//! owner process is gone is adopted. A container that still runs is
//! supervised again from its log (its deadline counted from its real start,
//! its output limit from its first byte); one that ended while no server
//! watched becomes a result, with its true exit code, signal and OOM flag.

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cleanup::{remove_container, Liveness, Owner, LABEL_MANAGED};
use super::cleanup::{LABEL_ID, LABEL_SCOPE};
use super::cold::ColdStdin;
use super::engine::engine_error;
use super::exit::container_end;
use super::kept::{self, tag_of, times_of, verdict_of, LABEL_TIMEOUT_MS};
use super::plan::TaskTag;
use super::process::{Process, ProcessEnd};
use super::supervise::{ended, killed};
use super::warm::{end_of, last_task, LABEL_WARM};
use super::Replay;
use crate::task::{Ending, Offsets, Outcome, OutputStream, TaskError};

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
    /// It ran on a warm container, whose log holds the agent's frames.
    pub(crate) warm: bool,
}

/// The kept tasks in `scope` whose server is gone, by their containers:
/// cold ones by their labels, warm ones by the last task their log names.
pub(crate) async fn adoptable(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
) -> Result<Vec<Adopted>, TaskError> {
    let mut adopted = Vec::new();
    for (id, labels) in orphans(docker, me, scope, LABEL_ID).await? {
        let Some(tag) = tag_of(&labels) else { continue };
        // One container going away meanwhile must not cost the others.
        let Some(inspected) = inspect(docker, &id).await else {
            continue;
        };
        // Created, never started: its server was killed in between. Its
        // state would read as an exit 0; the task is not over, it never
        // began. The container goes, and the server's journal (if it
        // keeps one) runs the task again.
        let status = inspected.state.as_ref().and_then(|s| s.status);
        if status == Some(ContainerStateStatusEnum::CREATED) {
            tracing::info!(container = %id, task = %tag.id, "removing a kept task's container that never started");
            if let Err(e) = remove_container(docker, &id).await {
                tracing::warn!(container = %id, error = %e, "could not remove a container that never started");
            }
            continue;
        }
        let timeout = labels
            .get(LABEL_TIMEOUT_MS)
            .and_then(|t| t.parse().ok())
            .map_or(Duration::MAX, Duration::from_millis);
        let config = inspected.config.clone().unwrap_or_default();
        let times = times_of(&inspected);
        let started = times.started.unwrap_or_else(SystemTime::now);
        let found = Found {
            tag,
            image: config.image.unwrap_or_default(),
            command: config.cmd.unwrap_or_default(),
            started,
            timeout,
        };
        adopted.push(found.adopt(id, &inspected, None, false));
    }
    for (id, _) in orphans(docker, me, scope, LABEL_WARM).await? {
        let (tag, report) = match last_task(docker, &id).await {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "could not read a warm container's log; not adopting its task");
                continue;
            }
        };
        let end = match &report {
            Some(report) => match end_of(report) {
                Some(end) => Some(end),
                // It never started: nothing to adopt.
                None => continue,
            },
            None => None,
        };
        let Some(inspected) = inspect(docker, &id).await else {
            continue;
        };
        let image = inspected.config.clone().unwrap_or_default().image;
        let found = Found {
            tag: tag.task_tag(),
            image: image.unwrap_or_default(),
            command: tag.command.clone(),
            started: UNIX_EPOCH + Duration::from_millis(tag.started_ms),
            timeout: Duration::from_millis(tag.timeout_ms),
        };
        adopted.push(found.adopt(id, &inspected, end, true));
    }
    Ok(adopted)
}

/// This scope's containers with label `label` whose server is gone.
async fn orphans(
    docker: &Docker,
    me: &Owner,
    scope: Option<&str>,
    label: &str,
) -> Result<Vec<(String, HashMap<String, String>)>, TaskError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_MANAGED}=true"), label.to_owned()],
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
    Ok(containers
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .filter(|(_, labels)| {
            me.judge(labels) == Liveness::Gone
                && labels.get(LABEL_SCOPE).map(String::as_str) == scope
        })
        .collect())
}

/// The container, unless it went away (or the engine failed, logged).
async fn inspect(docker: &Docker, id: &str) -> Option<ContainerInspectResponse> {
    match docker.inspect_container(id, None).await {
        Ok(inspected) => Some(inspected),
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "could not inspect a kept task's container; not adopting it");
            None
        }
    }
}

/// What a kept task's container says of it.
struct Found {
    tag: TaskTag,
    image: String,
    command: Vec<String>,
    started: SystemTime,
    timeout: Duration,
}

impl Found {
    /// The task, running or ended. `end` is how it ended when its warm
    /// container's log says; otherwise the container's state does.
    fn adopt(
        self,
        container: String,
        inspected: &ContainerInspectResponse,
        end: Option<ProcessEnd>,
        warm: bool,
    ) -> Adopted {
        let state = inspected.state.clone().unwrap_or_default();
        let times = times_of(inspected);
        let now = SystemTime::now();
        let running_for = now.duration_since(self.started).unwrap_or_default();
        let name = inspected.name.as_deref().unwrap_or_default();
        // A warm task whose log holds no end is judged by its log, read
        // through (LoggedWarmProcess), not by its container's exit code:
        // that is the agent's, 0 after any task. Unless the server ended
        // it: then its verdict stands.
        let judged_by_log = warm && end.is_none() && verdict_of(name).is_none();
        let running = (state.running.unwrap_or(false) || judged_by_log) && end.is_none();
        let ended = (!running).then(|| {
            let finished = times.finished.unwrap_or(now);
            let ran = finished.duration_since(self.started).unwrap_or_default();
            let (code, oom) = match end {
                Some(ProcessEnd::Exited { code, oom_killed }) => (code, oom_killed),
                _ => (
                    state.exit_code.unwrap_or(-1),
                    state.oom_killed.unwrap_or(false),
                ),
            };
            match verdict_of(name) {
                Some(verdict) => killed(verdict, ran),
                // It ran past its deadline while no server watched: the
                // server would have ended it then.
                None if ran > self.timeout => killed(Ending::TimedOut, self.timeout),
                None => ended(code, oom, ran),
            }
        });
        let created = inspected
            .created
            .as_deref()
            .and_then(kept::parse_rfc3339)
            .unwrap_or(self.started);
        Adopted {
            tag: self.tag,
            image: self.image,
            command: self.command,
            created,
            ended,
            container,
            timeout: self.timeout,
            running_for,
            warm,
        }
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
    /// The output handed out so far, per stream (from where the log was
    /// read): where a reading after an engine outage takes over.
    relayed: Offsets,
}

impl LoggedProcess {
    pub fn new(docker: Docker, container: String) -> LoggedProcess {
        LoggedProcess::from(docker, container, Offsets::default())
    }

    /// The same, for a task whose output up to `from` went out already.
    pub fn from(docker: Docker, container: String, from: Offsets) -> LoggedProcess {
        let log = kept::replay(&docker, &container, from, u64::MAX, true);
        LoggedProcess {
            docker,
            container,
            log,
            relayed: from,
        }
    }

    /// The output handed out so far, per stream.
    pub fn relayed(&self) -> Offsets {
        self.relayed
    }
}

impl Process for LoggedProcess {
    type Stdin = ColdStdin;

    fn take_stdin(&mut self) -> Option<ColdStdin> {
        None
    }

    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        match self.log.next().await {
            Some(Ok(chunk)) => {
                self.relayed.advance(chunk.0, chunk.1.len() as u64);
                Some(chunk)
            }
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

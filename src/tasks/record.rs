//! One task the server knows: who may see it, whether it still runs, its
//! result once it ends, and who is watching it.
//!
//! Its output is not here: the engine keeps it. A record holds what a
//! listing shows and what decides the task's fate when its watchers leave.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::executor::{Delivery, EventSink, Events};
use crate::task::{Outcome, OutputStream, ProgressEvent, TaskError, TaskId, TaskInfo, TaskState};

pub(crate) type TaskResult = Result<Outcome, TaskError>;

/// A task, running or ended.
pub(crate) struct Record {
    pub id: TaskId,
    /// The named client that submitted it; only that client sees it.
    pub owner: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub detached: bool,
    pub created: SystemTime,
    /// Ends the task (a cancel, an expired grace, the server's shutdown).
    pub cancel: CancellationToken,
    result: watch::Sender<Option<TaskResult>>,
    output_bytes: AtomicU64,
    presence: Mutex<Presence>,
    /// Where the submitter's live events go while it is connected.
    submitter: Mutex<Option<EventSink>>,
}

/// Who is watching, and whether the result reached anyone.
#[derive(Debug, Default)]
struct Presence {
    /// The submitter while connected, and every attach or wait.
    watchers: usize,
    /// Bumped whenever a watcher comes or goes: an expiring grace timer
    /// only acts if nothing happened since it was set.
    generation: u64,
    /// The result reached a client.
    delivered: bool,
    /// When it ended, for retention.
    ended_at: Option<Instant>,
}

/// What a record's watchers leaving means for its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwatched {
    /// Someone still watches, or nothing changes.
    Nothing,
    /// The task runs with nobody watching: start the reattach grace.
    Grace { generation: u64 },
    /// Its result was delivered and nobody watches: forget it.
    Forget,
}

impl Record {
    pub fn new(
        id: TaskId,
        owner: Option<String>,
        (image, command): (String, Vec<String>),
        detached: bool,
        created: SystemTime,
        cancel: CancellationToken,
    ) -> Record {
        Record {
            id,
            owner,
            image,
            command,
            detached,
            created,
            cancel,
            result: watch::channel(None).0,
            output_bytes: AtomicU64::new(0),
            presence: Mutex::default(),
            submitter: Mutex::default(),
        }
    }

    /// Whether `client` may see this task: only its owner, and a task
    /// nobody owns only clients without a name.
    pub fn visible_to(&self, client: Option<&str>) -> bool {
        self.owner.as_deref() == client
    }

    pub fn result(&self) -> Option<TaskResult> {
        self.result.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.result.borrow().is_none()
    }

    /// Resolves with the task's result once it has ended.
    pub async fn ended(&self) -> TaskResult {
        let mut rx = self.result.subscribe();
        let ended = rx.wait_for(Option::is_some).await;
        match ended {
            Ok(result) => result.clone().expect("waited for Some"),
            // The sender lives in `self`, which outlives this wait.
            Err(_) => unreachable!("a record's result channel closed while it lives"),
        }
    }

    pub fn set_result(&self, result: TaskResult) {
        self.presence.lock().unwrap().ended_at = Some(Instant::now());
        self.result.send_replace(Some(result));
        // Nobody gets live events from an ended task.
        self.submitter.lock().unwrap().take();
    }

    pub fn ended_at(&self) -> Option<Instant> {
        self.presence.lock().unwrap().ended_at
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }

    pub fn add_output_bytes(&self, bytes: u64) {
        self.output_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The submitter's connection takes the live events (and counts as a
    /// watcher until [`Record::unwatch`]).
    pub fn set_submitter(&self, sink: EventSink) {
        *self.submitter.lock().unwrap() = Some(sink);
        self.watch();
    }

    pub fn watch(&self) {
        let mut presence = self.presence.lock().unwrap();
        presence.watchers += 1;
        presence.generation += 1;
    }

    /// A watcher is done; `delivered` when it sent the result to its
    /// client.
    pub fn unwatch(&self, delivered: bool) -> Unwatched {
        let running = self.is_running();
        let mut presence = self.presence.lock().unwrap();
        presence.watchers = presence.watchers.saturating_sub(1);
        presence.generation += 1;
        presence.delivered |= delivered;
        if presence.watchers > 0 || self.detached {
            Unwatched::Nothing
        } else if running {
            Unwatched::Grace {
                generation: presence.generation,
            }
        } else if presence.delivered {
            Unwatched::Forget
        } else {
            Unwatched::Nothing
        }
    }

    /// After an ending: whether the result already went out to a client
    /// that is gone now (so it is forgotten at once).
    pub fn delivered_and_unwatched(&self) -> bool {
        let presence = self.presence.lock().unwrap();
        presence.delivered && presence.watchers == 0 && !self.detached
    }

    /// Whether nothing happened since `generation` and nobody watches: the
    /// reattach grace that started then has run out.
    pub fn abandoned_since(&self, generation: u64) -> bool {
        let presence = self.presence.lock().unwrap();
        presence.generation == generation && presence.watchers == 0
    }

    /// The submitter's sink, while it is connected.
    fn submitter(&self) -> Option<EventSink> {
        self.submitter.lock().unwrap().clone()
    }

    fn submitter_gone(&self) {
        self.submitter.lock().unwrap().take();
    }

    pub fn info(&self) -> TaskInfo {
        let state = match self.result() {
            None => TaskState::Running,
            Some(Ok(outcome)) => TaskState::Ended(outcome),
            Some(Err(error)) => TaskState::Failed(error),
        };
        let created_ms = self
            .created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        TaskInfo {
            id: self.id.clone(),
            image: self.image.clone(),
            command: self.command.clone(),
            detached: self.detached,
            created_ms,
            state,
            output_bytes: self.output_bytes(),
        }
    }
}

/// The events of a running task: counted, and passed to its submitter
/// while it is connected. Once the submitter is gone they go nowhere (the
/// engine's log has the output), and the task runs on: a broken connection
/// is not a cancel.
pub(crate) struct Forward(pub Arc<Record>);

impl Events for Forward {
    fn attended(&self) -> bool {
        self.0.submitter().is_some()
    }

    fn progress(&self, progress: ProgressEvent) -> Delivery<'_> {
        Box::pin(async move {
            if let Some(sink) = self.0.submitter() {
                if sink.progress(progress).await.is_err() {
                    self.0.submitter_gone();
                }
            }
            Ok(())
        })
    }

    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_> {
        self.0.add_output_bytes(data.len() as u64);
        Box::pin(async move {
            if let Some(sink) = self.0.submitter() {
                if sink.output(stream, data).await.is_err() {
                    self.0.submitter_gone();
                }
            }
            Ok(())
        })
    }
}

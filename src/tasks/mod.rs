//! The server's tasks, by their ids: they outlive the connection that
//! submitted them, and with the engine's help the server itself.
//!
//! A task runs here, not in its connection: the connection only watches
//! it. When the submitter's connection breaks the task runs on for the
//! reattach grace, waiting for its client to attach again; a detached task
//! runs on regardless, and its result is kept for the retention period.
//! A result that reached its client is forgotten, and its container
//! removed, as soon as nobody watches it.
//!
//! Nothing here knows of frames or of Docker: connections speak to this
//! module in records and results, and it speaks to the [`Executor`].

mod follow;
mod journal;
mod record;
mod retention;

pub(crate) use journal::{Journal, Ticket};
pub(crate) use record::{Forward, Record, TaskResult, Unwatched};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admitted;
use crate::executor::{no_such_task, Adopted, EventSink, Executor, Plan, Replay, TaskIo, TaskTag};
use crate::protocol::{Task, TaskSpec};
use crate::task::{ErrorKind, Offsets, TaskError, TaskId, TaskInfo};
use retention::{Bounds, KeptResult};

/// How long tasks and their results are kept (the `[server]` settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keeping {
    pub reattach_grace: Duration,
    pub retention: Duration,
    pub bounds: Bounds,
}

impl Keeping {
    pub fn new(
        reattach_grace: Duration,
        retention: Duration,
        max_count: usize,
        max_bytes: u64,
    ) -> Keeping {
        Keeping {
            reattach_grace,
            retention,
            bounds: Bounds {
                max_count,
                max_bytes,
            },
        }
    }
}

/// How often an attach to a task that has no container yet (queued,
/// pulling) looks again.
const CONTAINER_POLL: Duration = Duration::from_millis(50);

/// How often kept results are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every task the server knows.
pub(crate) struct Tasks<E> {
    executor: Arc<E>,
    records: Mutex<HashMap<TaskId, Arc<Record>>>,
    keeping: Keeping,
    /// The tasks' runs, which belong to no connection.
    runs: TaskTracker,
    /// Where accepted tasks are written down until they end, when the
    /// server has a state directory.
    journal: OnceLock<Journal>,
    /// Fired when the server gives up on its attached tasks (the end of
    /// the shutdown grace); detached tasks run on for the next server.
    abort: CancellationToken,
    /// Set while the tasks that earlier servers left are not taken over
    /// yet (the engine did not answer when this server started): a task
    /// id this server does not know may be one of them.
    taking_over: AtomicBool,
    /// Tasks that ran and ended since the server started (any ending).
    pub finished: AtomicU64,
    /// Tasks that could not run since the server started.
    pub failed: AtomicU64,
}

impl<E: Executor> Tasks<E> {
    pub fn new(executor: Arc<E>, keeping: Keeping, abort: CancellationToken) -> Arc<Tasks<E>> {
        Arc::new(Tasks {
            executor,
            records: Mutex::default(),
            keeping,
            runs: TaskTracker::new(),
            journal: OnceLock::new(),
            abort,
            taking_over: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Writes accepted tasks down in `journal` from now on, so that a
    /// server started after this one is killed runs the ones that had not
    /// started. Call before serving.
    pub fn keep_journal(&self, journal: Journal) {
        if self.journal.set(journal).is_err() {
            tracing::warn!("a journal was already kept; the new one is ignored");
        }
    }

    /// The tasks that servers which are gone had accepted and not
    /// finished, as they were written down; see [`Tasks::requeue`].
    pub fn left_behind(&self) -> Vec<Ticket> {
        self.journal
            .get()
            .map(Journal::left_behind)
            .unwrap_or_default()
    }

    /// At a clean shutdown, after [`Tasks::end_attached`]: the journal
    /// keeps only what the next server must take.
    pub fn close_journal(&self) {
        if let Some(journal) = self.journal.get() {
            journal.close();
        }
    }

    /// Forgets what [`Tasks::left_behind`] gave, once it is taken over.
    pub fn release_left_behind(&self) {
        if let Some(journal) = self.journal.get() {
            journal.release();
        }
    }

    /// Makes the record of an admitted task, so that its id can go to the
    /// client before the task produces anything; [`Tasks::launch`] starts
    /// it. With a journal, the task is written down first: a task the
    /// server cannot write down is refused rather than at risk.
    pub fn create(
        &self,
        admitted: &mut Admitted,
        spec: &TaskSpec,
        owner: Option<&str>,
        detach: bool,
    ) -> Result<Arc<Record>, TaskError> {
        let id = new_task_id();
        let ticket = Ticket {
            id: id.to_string(),
            client: owner.map(str::to_owned),
            detach,
            created_ms: millis_since_epoch(SystemTime::now()),
            spec: spec.clone(),
        };
        self.write_down(&ticket)?;
        Ok(self.insert(id, &ticket, &mut admitted.plan))
    }

    /// Writes `ticket` in the journal, if there is one and its task can
    /// outlive this server at all.
    fn write_down(&self, ticket: &Ticket) -> Result<(), TaskError> {
        let Some(journal) = self.journal.get() else {
            return Ok(());
        };
        if !ticket.detach && self.keeping.reattach_grace.is_zero() {
            return Ok(());
        }
        journal.write(ticket).map_err(|e| {
            TaskError::new(
                ErrorKind::Internal,
                format!("the server could not write the task down in its state directory ({e}); free space there or fix its permissions, then submit again"),
            )
        })
    }

    /// The record of `ticket`'s task, its tag set in `plan`.
    fn insert(&self, id: TaskId, ticket: &Ticket, plan: &mut Plan) -> Arc<Record> {
        plan.task = Some(TaskTag {
            id: id.clone(),
            client: ticket.client.clone(),
            detach: ticket.detach,
        });
        let what = (plan.image.clone(), plan.command.clone());
        self.insert_record(id, ticket, what)
    }

    fn insert_record(
        &self,
        id: TaskId,
        ticket: &Ticket,
        what: (String, Vec<String>),
    ) -> Arc<Record> {
        let cancel = if ticket.detach {
            CancellationToken::new()
        } else {
            self.abort.child_token()
        };
        let created = UNIX_EPOCH + Duration::from_millis(ticket.created_ms);
        let record = Record::new(
            id,
            ticket.client.clone(),
            what,
            ticket.detach,
            created,
            cancel,
        );
        let record = Arc::new(record);
        self.records
            .lock()
            .unwrap()
            .insert(record.id.clone(), record.clone());
        record
    }

    /// Runs a created task; `submitter` gets its live events while its
    /// connection lasts.
    pub fn launch(
        self: &Arc<Self>,
        record: Arc<Record>,
        admitted: Admitted,
        submitter: EventSink,
        stdin: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) {
        record.set_submitter(submitter);
        self.run(record, admitted, stdin);
    }

    fn run(
        self: &Arc<Self>,
        record: Arc<Record>,
        admitted: Admitted,
        stdin: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) {
        let Admitted { plan, permits } = admitted;
        let io = TaskIo {
            events: Arc::new(Forward(record.clone())),
            stdin,
            cancel: record.cancel.clone(),
        };
        // The executor records which path ran the task.
        let span = tracing::info_span!(
            "task",
            task = %record.id,
            image = %plan.image,
            path = tracing::field::Empty
        );
        let tasks = self.clone();
        let run = async move {
            let result = tasks.executor.run(plan, io).await;
            log_end(&result);
            drop(permits);
            tasks.finished(&record, result);
        };
        self.runs.spawn(tracing::Instrument::instrument(run, span));
    }

    /// Takes over a task that a server which is gone had accepted but not
    /// started: it runs now, under its own id, as admission decided again
    /// (`admitted`); a refusal becomes its result. Call after
    /// [`Tasks::adopt`]: a task whose container was adopted is skipped
    /// (`false`).
    pub fn requeue(
        self: &Arc<Self>,
        ticket: Ticket,
        admitted: Result<Admitted, TaskError>,
    ) -> bool {
        let Ok(id) = TaskId::parse(&ticket.id) else {
            return false;
        };
        if self.records.lock().unwrap().contains_key(&id) {
            return false;
        }
        tracing::info!(task = %id, "running a task a previous server had accepted but not started");
        let (record, admitted) = match admitted {
            Ok(mut admitted) => (self.insert(id, &ticket, &mut admitted.plan), Ok(admitted)),
            Err(error) => (
                self.insert_record(id, &ticket, what_of(&ticket.spec)),
                Err(error),
            ),
        };
        if let Err(e) = self.write_down(&ticket) {
            tracing::warn!(task = %record.id, error = %e, "a taken-over task is not written down again");
        }
        // Its client, if it had one, has the grace to come back.
        record.watch();
        self.unwatch(&record, false);
        match admitted {
            Ok(admitted) => self.run(record, admitted, tokio::sync::mpsc::channel(1).1),
            Err(error) => {
                tracing::info!(task = %record.id, %error, "a taken-over task is refused now");
                self.finished(&record, Err(error));
            }
        }
        true
    }

    fn finished(&self, record: &Arc<Record>, result: TaskResult) {
        let counter = if result.is_ok() {
            &self.finished
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Ended: from here its container, or its result alone, is what
        // is kept of it.
        if let Some(journal) = self.journal.get() {
            journal.remove(&record.id);
        }
        record.set_result(result);
        if record.delivered_and_unwatched() {
            self.forget(&record.id);
        }
        self.sweep();
    }

    /// The task `id`, if `client` may see it. Another client's task is
    /// answered as an unknown one; so is a task nobody knows, except while
    /// the tasks earlier servers left are not taken over yet: then it may
    /// be one of those, and the answer is an engine error (try again), not
    /// that it does not exist.
    pub fn find(&self, id: &TaskId, client: Option<&str>) -> Result<Arc<Record>, TaskError> {
        // What a client sent: any string, of any length the frame allows.
        TaskId::parse(id.as_str())?;
        let found = self
            .records
            .lock()
            .unwrap()
            .get(id)
            .filter(|r| r.visible_to(client))
            .cloned();
        match found {
            Some(record) => Ok(record),
            None if self.taking_over.load(Ordering::SeqCst) => Err(TaskError::new(
                ErrorKind::Engine,
                format!(
                    "task {id} is not known here yet: this server started while the Docker engine \
                     did not answer, and takes over the tasks an earlier server left once it \
                     does; try again then"
                ),
            )),
            None => Err(no_such_task(id)),
        }
    }

    /// Marks the tasks earlier servers left as not taken over yet (see
    /// [`Tasks::find`]), or, with `false`, as taken over.
    pub fn set_taking_over(&self, pending: bool) {
        self.taking_over.store(pending, Ordering::SeqCst);
    }

    /// A watcher is done with `record`; see [`Record::unwatch`].
    pub fn unwatch(self: &Arc<Self>, record: &Arc<Record>, delivered: bool) {
        match record.unwatch(delivered) {
            Unwatched::Nothing => {}
            Unwatched::Forget => self.forget(&record.id),
            Unwatched::Grace { generation } => self.start_grace(record.clone(), generation),
        }
    }

    /// Nobody watches a running attached task: it gets the reattach grace,
    /// then it is cancelled.
    fn start_grace(self: &Arc<Self>, record: Arc<Record>, generation: u64) {
        let grace = self.keeping.reattach_grace;
        if grace.is_zero() {
            record.cancel.cancel();
            return;
        }
        tracing::debug!(task = %record.id, ?grace, "the task's client is gone; waiting for it to re-attach");
        self.runs.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = record.ended() => return,
            }
            if record.abandoned_since(generation) {
                tracing::info!(task = %record.id, ?grace, "no client re-attached within the grace; cancelling the task");
                record.cancel.cancel();
            }
        });
    }

    /// Its output from `from`, replayed by the executor once. A task still
    /// waiting for its container has nothing to replay yet: this waits
    /// for the container (or the task's end). [`Tasks::output`] reads on
    /// across a replay's early end.
    async fn replay(
        &self,
        record: &Record,
        from: Offsets,
        follow: bool,
    ) -> Result<Replay, TaskError> {
        loop {
            match self.executor.replay(&record.id, from, follow).await {
                Err(e) if e.kind == ErrorKind::NoSuchTask && follow && record.is_running() => {
                    tokio::select! {
                        _ = tokio::time::sleep(CONTAINER_POLL) => {}
                        _ = record.ended() => {}
                    }
                }
                replay => return replay,
            }
        }
    }

    pub async fn kill(&self, record: &Record, signal: i32) -> Result<(), TaskError> {
        if !(1..=64).contains(&signal) {
            return Err(TaskError::new(
                ErrorKind::BadRequest,
                format!("{signal} is not a signal number; give one from 1 to 64 (9 is SIGKILL, 15 SIGTERM)"),
            ));
        }
        if !record.is_running() {
            return Err(TaskError::new(
                ErrorKind::BadRequest,
                format!(
                    "task {} has already ended; `tcp-task wait {}` gives its result",
                    record.id, record.id
                ),
            ));
        }
        self.executor.signal(&record.id, signal).await
    }

    /// Forgets an ended task and removes what is kept of it; with `force`
    /// a running one is cancelled first.
    pub async fn remove(&self, record: &Arc<Record>, force: bool) -> Result<(), TaskError> {
        if record.is_running() {
            if !force {
                return Err(TaskError::new(
                    ErrorKind::BadRequest,
                    format!("task {} is still running; stop it first (`tcp-task kill {}`), or remove it with `tcp-task rm -f`", record.id, record.id),
                ));
            }
            record.cancel.cancel();
            record.ended().await.ok();
        }
        self.forget(&record.id);
        Ok(())
    }

    /// The tasks `client` may see: the running ones, and with `all` the
    /// ended ones whose results are kept; oldest first.
    pub fn list(&self, client: Option<&str>, all: bool) -> Vec<TaskInfo> {
        let mut tasks: Vec<TaskInfo> = self
            .records
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.visible_to(client) && (all || r.is_running()))
            .map(|r| r.info())
            .collect();
        tasks.sort_by_key(|t| t.created_ms);
        tasks
    }

    /// Kept results: how many, and the output bytes they hold.
    pub fn retained(&self) -> (u64, u64) {
        let records = self.records.lock().unwrap();
        let ended = records.values().filter(|r| !r.is_running());
        ended.fold((0, 0), |(n, bytes), r| (n + 1, bytes + r.output_bytes()))
    }

    fn forget(&self, id: &TaskId) {
        if self.records.lock().unwrap().remove(id).is_some() {
            self.executor.discard(id);
        }
    }

    /// Forgets the results whose time is up, and the oldest while there
    /// are too many.
    fn sweep(&self) {
        let now = Instant::now();
        let kept: Vec<KeptResult> = {
            let records = self.records.lock().unwrap();
            records
                .values()
                .filter_map(|r| {
                    let ended_at = r.ended_at()?;
                    // An attached task's result waits only the grace for
                    // its client; a detached one the retention.
                    let keep_for = if r.detached {
                        self.keeping.retention
                    } else {
                        self.keeping.reattach_grace
                    };
                    Some(KeptResult {
                        id: r.id.clone(),
                        ended_at,
                        expires_at: ended_at + keep_for,
                        bytes: r.output_bytes(),
                    })
                })
                .collect()
        };
        for id in retention::to_forget(now, kept, self.keeping.bounds) {
            tracing::debug!(task = %id, "forgetting a kept result");
            self.forget(&id);
        }
    }

    /// Sweeps kept results every second until `stop`.
    pub fn spawn_sweeper(self: &Arc<Self>, stop: CancellationToken) {
        let tasks = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.cancelled() => return,
                }
                match tasks.upgrade() {
                    Some(tasks) => tasks.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Takes over the tasks a server that is gone left behind: running
    /// ones are supervised again, ended ones kept as results. Returns how
    /// many.
    pub async fn adopt(self: &Arc<Self>) -> Result<usize, TaskError> {
        let adopted = self.executor.adopt().await?;
        let count = adopted.len();
        for task in adopted {
            self.take_over(task);
        }
        Ok(count)
    }

    fn take_over(self: &Arc<Self>, adopted: Adopted) {
        let tag = &adopted.tag;
        let cancel = if tag.detach {
            CancellationToken::new()
        } else {
            self.abort.child_token()
        };
        let what = (adopted.image.clone(), adopted.command.clone());
        let record = Arc::new(Record::new(
            tag.id.clone(),
            tag.client.clone(),
            what,
            tag.detach,
            adopted.created,
            cancel,
        ));
        tracing::info!(task = %record.id, running = adopted.ended.is_none(), "adopted a task of a previous server");
        self.records
            .lock()
            .unwrap()
            .insert(record.id.clone(), record.clone());
        if let Some(outcome) = adopted.ended.clone() {
            record.set_result(Ok(outcome));
            self.count_output(record);
            return;
        }
        // Its client, if it had one, has the grace to come back.
        record.watch();
        self.unwatch(&record, false);
        let io = TaskIo {
            events: Arc::new(Forward(record.clone())),
            stdin: tokio::sync::mpsc::channel(1).1,
            cancel: record.cancel.clone(),
        };
        let tasks = self.clone();
        self.runs.spawn(async move {
            let result = tasks.executor.resume(adopted, io).await;
            tasks.finished(&record, result);
        });
    }

    /// Counts the output an adopted, ended task holds, for the retention
    /// bound.
    fn count_output(self: &Arc<Self>, record: Arc<Record>) {
        let tasks = self.clone();
        self.runs.spawn(async move {
            use futures::StreamExt;
            let Ok(mut replay) = tasks.replay(&record, Offsets::default(), false).await else {
                return;
            };
            while let Some(Ok((_, chunk))) = replay.next().await {
                record.add_output_bytes(chunk.len() as u64);
            }
        });
    }

    /// At shutdown: waits for the runs of attached tasks to end (the
    /// shutdown has cancelled them) and forgets them, their clients having
    /// been told the server is going. Detached tasks and their results are
    /// left for the next server, which adopts them.
    pub async fn end_attached(&self) {
        let attached: Vec<Arc<Record>> = {
            let records = self.records.lock().unwrap();
            records.values().filter(|r| !r.detached).cloned().collect()
        };
        for record in attached {
            let _ = record.ended().await;
            self.forget(&record.id);
        }
    }
}

/// One line per task end, like an access log: the outcome in a few fields
/// (the task span adds the task's id, its image and the path).
pub(crate) fn log_end(result: &Result<crate::task::Outcome, TaskError>) {
    match result {
        Ok(outcome) => tracing::info!(
            ending = outcome.ending.as_str(),
            exit_code = outcome.exit_code,
            duration_ms = outcome.duration_ms,
            "task ended"
        ),
        Err(error) => tracing::info!(kind = error.kind.as_str(), %error, "task failed"),
    }
}

/// What a listing shows of a task that never got a plan.
fn what_of(spec: &TaskSpec) -> (String, Vec<String>) {
    match &spec.task {
        Task::Image { image, command } => (image.clone(), command.clone()),
        Task::Named { name, args, .. } => (name.clone(), args.clone()),
        Task::Http { image, task, .. } => (image.clone(), vec![task.clone()]),
    }
}

fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh task id: 100 bits from the operating system's random source.
fn new_task_id() -> TaskId {
    let mut bytes = [0u8; 16];
    // Without randomness the ids would be guessable: better to stop.
    getrandom::fill(&mut bytes).expect("the operating system gives no random bytes");
    TaskId::from_random(u128::from_le_bytes(bytes))
}

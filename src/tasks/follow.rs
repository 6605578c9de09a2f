//! A task's output for a client that attaches to it: replayed by the
//! executor from given offsets and, when following, live until the task
//! ends.
//!
//! The executor's replay of a running task can end early or fail for a
//! moment: a runtime may end a followed log at once on a container created
//! and not yet started (a task taken over after a restart, say), or list a
//! new container a moment before its log can be read (`NoSuchTask`). A
//! reading here then starts again from where it stopped, so the client
//! gets every byte once; after the task's end it reads once more for what
//! came meanwhile.

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::{Record, Tasks};
use crate::executor::{Executor, Replay};
use crate::task::{ErrorKind, Offsets, OutputStream, TaskError};

/// How long a reading whose replay ended while its task runs waits before
/// it reads again (at once when the task ends).
const READ_AGAIN: Duration = Duration::from_millis(100);

/// How long a reading of an ended task waits for the engine's log to hold
/// all the task wrote. The server relays output as it comes (a warm task's
/// through the agent's socket), and the engine writes its log a moment
/// later; past this, the replay ends short (and says so).
const LOG_CATCH_UP: Duration = Duration::from_secs(5);

type Item = Result<(OutputStream, bytes::Bytes), TaskError>;

impl<E: Executor> Tasks<E> {
    /// `record`'s output from `from`: what it wrote so far and, with
    /// `follow`, all of it up to the task's end.
    pub fn output(self: &Arc<Self>, record: Arc<Record>, from: Offsets, follow: bool) -> Replay {
        let reading = Reading {
            tasks: self.clone(),
            record,
            at: from,
            follow,
            current: None,
            catch_up: None,
            done: false,
        };
        futures::stream::unfold(reading, Reading::next).boxed()
    }
}

struct Reading<E> {
    tasks: Arc<Tasks<E>>,
    record: Arc<Record>,
    /// What was handed out so far, per stream.
    at: Offsets,
    follow: bool,
    /// The executor's replay being read, and whether the task ran when it
    /// was opened.
    current: Option<(Replay, bool)>,
    /// Until when an ended task's log may still catch up.
    catch_up: Option<Instant>,
    done: bool,
}

impl<E: Executor> Reading<E> {
    async fn next(mut self) -> Option<(Item, Self)> {
        while !self.done {
            let (replay, was_running) = match &mut self.current {
                Some((replay, was_running)) => (replay, *was_running),
                None => {
                    let was_running = self.record.is_running();
                    match self.tasks.replay(&self.record, self.at, self.follow).await {
                        Ok(replay) => (
                            &mut self.current.insert((replay, was_running)).0,
                            was_running,
                        ),
                        Err(error) => return self.fail(error),
                    }
                }
            };
            match replay.next().await {
                Some(Ok((stream, chunk))) => {
                    self.at.advance(stream, chunk.len() as u64);
                    return Some((Ok((stream, chunk)), self));
                }
                Some(Err(error)) if !self.passing(&error) => return self.fail(error),
                Some(Err(_)) => {}
                None if self.log_lags() => {
                    self.current = None;
                    tokio::time::sleep(READ_AGAIN).await;
                    continue;
                }
                None if !self.follow || !was_running => self.done = true,
                None => {}
            }
            self.current = None;
            if self.record.is_running() {
                tokio::select! {
                    _ = tokio::time::sleep(READ_AGAIN) => {}
                    _ = self.record.ended() => {}
                }
            }
        }
        None
    }

    /// Whether the task has ended with more output than its replay gave
    /// so far, and the engine's log may still catch up.
    fn log_lags(&mut self) -> bool {
        if self.record.result().is_none()
            || self.at.stdout + self.at.stderr >= self.record.output_bytes()
        {
            return false;
        }
        let until = *self
            .catch_up
            .get_or_insert_with(|| Instant::now() + LOG_CATCH_UP);
        Instant::now() < until
    }

    /// Whether `error` is the runtime not having the running task's output
    /// quite yet, rather than a failure.
    fn passing(&self, error: &TaskError) -> bool {
        self.follow && error.kind == ErrorKind::NoSuchTask && self.record.is_running()
    }

    fn fail(mut self, error: TaskError) -> Option<(Item, Self)> {
        self.done = true;
        Some((Err(error), self))
    }
}

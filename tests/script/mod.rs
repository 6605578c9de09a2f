//! A test-only executor for the protocol tests: it runs no container, it
//! follows a small script named by the task's command, so the tests of the
//! connection layer can produce exact output, stalls and endings. The shipped
//! server never uses it. [`raw`] is their hand-driven client.

#![allow(dead_code)]

pub mod raw;

use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tcp_task::executor::{Executor, ExecutorStats, Plan, Replay, TaskIo};
use tcp_task::protocol::{Ending, ErrorKind, Outcome, OutputStream, TaskError, TaskSpec};
use tcp_task::{Offsets, TaskId};

/// Counters the tests read to see what the executor went through.
#[derive(Debug, Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub cancelled: AtomicU64,
    pub finished: AtomicU64,
    /// Output bytes the sink accepted (for the flow-control test).
    pub bytes_accepted: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// One task's output, chunk by chunk.
pub type Logged = Vec<(OutputStream, Bytes)>;

#[derive(Debug, Clone, Default)]
pub struct ScriptExecutor {
    pub counters: Arc<Counters>,
    /// What `ticks` wrote, by task id: what `replay` gives back.
    pub log: Arc<Mutex<HashMap<String, Logged>>>,
    /// The next `replay` ends at once with nothing, as the engine's
    /// follow of a container created and not yet started does.
    pub replay_ends_early_once: Arc<AtomicBool>,
    /// The next `replay` fails with `NoSuchTask`, as the engine's log of a
    /// container it lists but has not quite registered does.
    pub replay_fails_once: Arc<AtomicBool>,
    /// The next this many `replay`s give the log without its last entry,
    /// as an engine's log a moment behind the output relayed live.
    pub replay_lags: Arc<AtomicUsize>,
}

/// The commands understood:
/// - `echo TEXT`: TEXT on stdout
/// - `chunks N SIZE TAG`: N stdout chunks of SIZE bytes, chunk i filled with
///   `TAG:i;` repeated, yielding between chunks so tasks interleave
/// - `interleave N`: `o{i}` on stdout and `e{i}` on stderr alternately
/// - `sleep MS`: waits (cancellable)
/// - `ticks N MS`: `t{i}` lines on stdout, MS apart, kept for `replay`
/// - `cat`: stdin to stdout until end-of-file
/// - `flood BYTES`: BYTES of output in 64 KiB chunks, counting what the
///   sink accepts
/// - `exit CODE`
/// - `fail`: an engine error
impl Executor for ScriptExecutor {
    async fn run(&self, plan: Plan, mut io: TaskIo) -> Result<Outcome, TaskError> {
        let task = plan
            .task
            .as_ref()
            .map(|t| t.id.to_string())
            .unwrap_or_default();
        let command = plan.command;
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let script = async {
            match args.as_slice() {
                ["echo", text] => {
                    let _ = io
                        .events
                        .output(OutputStream::Stdout, Bytes::from(text.to_string()))
                        .await;
                    Ok(0)
                }
                ["chunks", n, size, tag] => {
                    for i in 0..n.parse::<usize>().unwrap() {
                        let chunk = chunk_bytes(tag, i, size.parse().unwrap());
                        if io.events.output(OutputStream::Stdout, chunk).await.is_err() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Ok(0)
                }
                ["interleave", n] => {
                    for i in 0..n.parse::<usize>().unwrap() {
                        let _ = io
                            .events
                            .output(OutputStream::Stdout, Bytes::from(format!("o{i}")))
                            .await;
                        let _ = io
                            .events
                            .output(OutputStream::Stderr, Bytes::from(format!("e{i}")))
                            .await;
                    }
                    Ok(0)
                }
                ["sleep", ms] => {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    Ok(0)
                }
                ["ticks", n, ms] => {
                    for i in 0..n.parse::<usize>().unwrap() {
                        let line = Bytes::from(format!("t{i}\n"));
                        self.log
                            .lock()
                            .unwrap()
                            .entry(task.clone())
                            .or_default()
                            .push((OutputStream::Stdout, line.clone()));
                        let _ = io.events.output(OutputStream::Stdout, line).await;
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    }
                    Ok(0)
                }
                ["cat"] => {
                    while let Some(chunk) = io.stdin.recv().await {
                        let _ = io.events.output(OutputStream::Stdout, chunk).await;
                    }
                    Ok(0)
                }
                ["flood", total] => {
                    let total: u64 = total.parse().unwrap();
                    let block = Bytes::from(vec![b'x'; 64 * 1024]);
                    let mut sent = 0;
                    while sent < total {
                        if io
                            .events
                            .output(OutputStream::Stdout, block.clone())
                            .await
                            .is_err()
                        {
                            break;
                        }
                        sent += block.len() as u64;
                        self.counters.bytes_accepted.store(sent, Ordering::SeqCst);
                    }
                    Ok(0)
                }
                ["exit", code] => Ok(code.parse().unwrap()),
                ["fail"] => Err(TaskError::new(ErrorKind::Engine, "scripted engine failure")),
                other => Err(TaskError::new(
                    ErrorKind::CommandNotFound,
                    format!("no script {other:?}"),
                )),
            }
        };
        let ended = tokio::select! {
            code = script => code.map(|code| (Ending::Exited, Some(code))),
            _ = io.cancel.cancelled() => {
                self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
                Ok((Ending::Cancelled, None))
            }
        };
        self.counters.finished.fetch_add(1, Ordering::SeqCst);
        let (ending, exit_code) = ended?;
        Ok(Outcome {
            ending,
            exit_code,
            signal: None,
            duration_ms: started.elapsed().as_millis() as u64,
            output_truncated: false,
            usage: None,
        })
    }

    async fn stats(&self) -> ExecutorStats {
        ExecutorStats::default()
    }

    /// What `ticks` wrote so far, past `from`; the stream ends there
    /// (follow or not: the server reads again while the task runs).
    async fn replay(
        &self,
        task: &TaskId,
        from: Offsets,
        _follow: bool,
    ) -> Result<Replay, TaskError> {
        if self.replay_ends_early_once.swap(false, Ordering::SeqCst) {
            return Ok(futures::stream::empty().boxed());
        }
        if self.replay_fails_once.swap(false, Ordering::SeqCst) {
            let error = TaskError::new(ErrorKind::NoSuchTask, "no such container (yet)");
            return Ok(futures::stream::iter([Err(error)]).boxed());
        }
        let mut entries = self
            .log
            .lock()
            .unwrap()
            .get(task.as_str())
            .cloned()
            .unwrap_or_default();
        let lags = self
            .replay_lags
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lags {
            entries.pop();
        }
        let mut seen = Offsets::default();
        let mut items = Vec::new();
        for (stream, chunk) in entries {
            let skip = from
                .of(stream)
                .saturating_sub(seen.of(stream))
                .min(chunk.len() as u64);
            seen.advance(stream, chunk.len() as u64);
            if (skip as usize) < chunk.len() {
                items.push(Ok((stream, chunk.slice(skip as usize..))));
            }
        }
        Ok(futures::stream::iter(items).boxed())
    }
}

/// What `chunks` writes as chunk `i` of task `tag`.
pub fn chunk_bytes(tag: &str, i: usize, size: usize) -> Bytes {
    let pattern = format!("{tag}:{i};");
    Bytes::from(pattern.bytes().cycle().take(size).collect::<Vec<u8>>())
}

pub fn script<const N: usize>(command: [&str; N]) -> TaskSpec {
    TaskSpec::image("script", command)
}

//! A test-only executor for the protocol tests: it runs no container, it
//! follows a small script named by the task's command, so the tests of the
//! connection layer can produce exact output, stalls and endings. The shipped
//! server never uses it. [`raw`] is their hand-driven client.

#![allow(dead_code)]

pub mod raw;

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcp_task::executor::{Executor, ExecutorStats, Plan, TaskIo};
use tcp_task::protocol::{Ending, ErrorKind, Outcome, OutputStream, TaskError, TaskSpec};

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

#[derive(Debug, Clone, Default)]
pub struct ScriptExecutor {
    pub counters: Arc<Counters>,
}

/// The commands understood:
/// - `echo TEXT`: TEXT on stdout
/// - `chunks N SIZE TAG`: N stdout chunks of SIZE bytes, chunk i filled with
///   `TAG:i;` repeated, yielding between chunks so tasks interleave
/// - `interleave N`: `o{i}` on stdout and `e{i}` on stderr alternately
/// - `sleep MS`: waits (cancellable)
/// - `cat`: stdin to stdout until end-of-file
/// - `flood BYTES`: BYTES of output in 64 KiB chunks, counting what the
///   sink accepts
/// - `exit CODE`
/// - `fail`: an engine error
impl Executor for ScriptExecutor {
    async fn run(&self, plan: Plan, mut io: TaskIo) -> Result<Outcome, TaskError> {
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
}

/// What `chunks` writes as chunk `i` of task `tag`.
pub fn chunk_bytes(tag: &str, i: usize, size: usize) -> Bytes {
    let pattern = format!("{tag}:{i};");
    Bytes::from(pattern.bytes().cycle().take(size).collect::<Vec<u8>>())
}

pub fn script<const N: usize>(command: [&str; N]) -> TaskSpec {
    TaskSpec::image("script", command)
}

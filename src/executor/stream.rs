//! Relaying a running container's streams: stdout and stderr from the
//! attach connection to the client, stdin from the client to the container.

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::events::EventSink;
use crate::protocol::OutputStream;

/// Why the output relay stopped.
#[derive(Debug)]
pub(crate) enum OutputEnd {
    /// The container closed its streams: it has exited. `init_failure` is
    /// docker-init's report that it could not exec the command, held back
    /// from the client (see [`INIT_FAILURE_PREFIX`]).
    Eof { init_failure: Option<Bytes> },
    /// The task wrote more than the output limit; what fit was relayed.
    LimitReached,
    /// The client's connection is gone.
    ClientGone,
    /// The attach connection broke before the container ended.
    Broken(BollardError),
}

/// How docker-init (tini, PID 1 in every task) starts its report that it
/// could not exec the task's command, which it then exits 127 or 126 for.
/// `docker run` without an init refuses such a start instead; to report the
/// same `CommandNotFound` error, the relay holds a first stderr chunk that
/// starts with this until the exit code tells whether it was that failure.
pub(crate) const INIT_FAILURE_PREFIX: &[u8] = b"[FATAL tini (";

/// The most of a would-be docker-init report held back: its line is short
/// (a command name and an error), so a longer one is the task's own output.
const MAX_HELD: usize = 4096;

/// The attach connection's demultiplexed output.
pub(crate) type OutputFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// Relays output chunks as they arrive, byte for byte, until the container
/// ends or `limit` bytes (stdout and stderr together) have been relayed.
///
/// `events.output` waits while the connection's byte budget is spent; this
/// loop then stops reading the attach connection, the engine's buffer fills
/// and the container's writes block: backpressure reaches the process.
pub(crate) async fn relay_output(
    mut frames: OutputFrames,
    events: &EventSink,
    limit: u64,
) -> OutputEnd {
    let mut relayed: u64 = 0;
    let mut held: Option<Bytes> = None;
    let mut first = true;
    while let Some(frame) = frames.next().await {
        let (stream, chunk) = match frame {
            Ok(LogOutput::StdOut { message }) => (OutputStream::Stdout, message),
            Ok(LogOutput::StdErr { message }) => (OutputStream::Stderr, message),
            // Only a TTY gives raw console frames, and tasks never get one;
            // if it happens anyway, the bytes are still the task's output.
            Ok(LogOutput::Console { message }) => (OutputStream::Stdout, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => return OutputEnd::Broken(e),
        };
        if std::mem::take(&mut first)
            && stream == OutputStream::Stderr
            && chunk.starts_with(INIT_FAILURE_PREFIX)
        {
            held = Some(chunk);
            continue;
        }
        // docker-init writes its report in three writes to an unbuffered
        // stderr (prefix, message, newline), which the engine relays as one
        // frame or several, depending on timing: keep holding until the
        // line is complete.
        if let Some(line) = held.as_mut() {
            if stream == OutputStream::Stderr
                && !line.ends_with(b"\n")
                && line.len() + chunk.len() <= MAX_HELD
            {
                let mut joined = BytesMut::with_capacity(line.len() + chunk.len());
                joined.extend_from_slice(line);
                joined.extend_from_slice(&chunk);
                *line = joined.freeze();
                continue;
            }
        }
        // More output: the held chunk was the task's own after all.
        if let Some(earlier) = held.take() {
            if let Some(end) =
                send(events, OutputStream::Stderr, earlier, limit, &mut relayed).await
            {
                return end;
            }
        }
        if let Some(end) = send(events, stream, chunk, limit, &mut relayed).await {
            return end;
        }
    }
    OutputEnd::Eof { init_failure: held }
}

/// Relays what fits under `limit`; `Some` when the relay must stop.
pub(crate) async fn send(
    events: &EventSink,
    stream: OutputStream,
    mut chunk: Bytes,
    limit: u64,
    relayed: &mut u64,
) -> Option<OutputEnd> {
    let room = limit.saturating_sub(*relayed);
    let over = chunk.len() as u64 > room;
    if over {
        // `room` < chunk.len(), which is a usize.
        chunk.truncate(room as usize);
    }
    *relayed += chunk.len() as u64;
    if !chunk.is_empty() && events.output(stream, chunk).await.is_err() {
        return Some(OutputEnd::ClientGone);
    }
    over.then_some(OutputEnd::LimitReached)
}

/// The attach connection's write half: the container's stdin.
pub(crate) type StdinWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// Copies the client's stdin chunks to the container. When the client
/// closes stdin the write half is shut down, which the engine passes on as
/// end-of-file (the container is created with `StdinOnce`).
pub(crate) async fn relay_stdin(mut chunks: mpsc::Receiver<Bytes>, mut input: StdinWriter) {
    while let Some(chunk) = chunks.recv().await {
        // A failed write means the process closed stdin or exited: the rest
        // of the client's stdin has nowhere to go.
        if input.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = input.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    use crate::events::Outgoing;
    use crate::protocol::ServerMessage;

    fn stderr(text: &str) -> Result<LogOutput, BollardError> {
        Ok(LogOutput::StdErr {
            message: Bytes::copy_from_slice(text.as_bytes()),
        })
    }

    /// Relays `frames`; returns how the relay ended and the stderr bytes
    /// the client got.
    async fn relay(frames: Vec<Result<LogOutput, BollardError>>) -> (OutputEnd, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
        let sink = EventSink::new(1, tx, Arc::new(Semaphore::new(1 << 20)));
        let end = relay_output(Box::pin(futures::stream::iter(frames)), &sink, 1 << 20).await;
        drop(sink);
        let mut got = Vec::new();
        while let Some(out) = rx.recv().await {
            if let ServerMessage::Output { chunk, .. } = out.message {
                got.extend_from_slice(&chunk);
            }
        }
        (end, got)
    }

    #[tokio::test]
    async fn an_init_report_in_pieces_is_held_whole() {
        let (end, got) = relay(vec![
            stderr("[FATAL tini (7)] "),
            stderr("exec /etc/passwd failed: Permission denied"),
            stderr("\n"),
        ])
        .await;
        let OutputEnd::Eof {
            init_failure: Some(report),
        } = end
        else {
            panic!("expected the held report, got {end:?}");
        };
        assert_eq!(
            &report[..],
            b"[FATAL tini (7)] exec /etc/passwd failed: Permission denied\n"
        );
        assert!(got.is_empty(), "nothing relayed: {got:?}");
    }

    #[tokio::test]
    async fn a_task_line_that_looks_like_one_is_relayed_with_what_follows() {
        let (end, got) = relay(vec![
            stderr("[FATAL tini (7)] "),
            stderr("not really\n"),
            stderr("more\n"),
        ])
        .await;
        assert!(
            matches!(end, OutputEnd::Eof { init_failure: None }),
            "{end:?}"
        );
        assert_eq!(got, b"[FATAL tini (7)] not really\nmore\n");
    }
}

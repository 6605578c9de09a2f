//! One task's stdin on the server side, with flow control.
//!
//! A client may have up to [`STDIN_WINDOW`] bytes of a task's stdin in the
//! server at once. The connection's reader only queues a chunk and goes
//! on; a relay of the task's own hands the chunks to the runtime one at a
//! time and gives the window back in `StdinCredit` frames as they go. So a
//! task that does not read its stdin holds its own window and nothing else:
//! the connection keeps reading, and its other tasks' frames (a `Cancel`
//! of this very task included) keep flowing.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use super::outgoing::Outgoing;
use crate::protocol::{RequestId, ServerMessage, STDIN_WINDOW};

/// Credit is given back once this much has gone to the runtime (or when
/// the queue runs empty), so a client streaming a large stdin gets a few
/// credits per window rather than one per chunk.
const CREDIT_BATCH: usize = STDIN_WINDOW as usize / 4;

/// The connection's end of a task's stdin. Dropping it closes the task's
/// stdin once the queued chunks have gone in.
pub(crate) struct StdinWindow {
    chunks: mpsc::UnboundedSender<Bytes>,
    /// Bytes the client sent that have not yet gone to the runtime.
    held: Arc<AtomicUsize>,
}

/// The client sent more than its window: it did not wait for credit.
#[derive(Debug)]
pub(crate) struct Overrun {
    pub held: usize,
}

impl StdinWindow {
    /// Starts the relay of request `id`'s stdin into `runtime` (the
    /// executor's stdin queue). The relay ends when the window is dropped
    /// and its chunks are in, or when the task stops taking stdin.
    pub(crate) fn start(
        id: RequestId,
        runtime: mpsc::Sender<Bytes>,
        outgoing: mpsc::Sender<Outgoing>,
    ) -> StdinWindow {
        let (chunks, queue) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicUsize::new(0));
        tokio::spawn(relay(id, queue, runtime, held.clone(), outgoing));
        StdinWindow { chunks, held }
    }

    /// Queues one chunk without waiting. Refused when it would take the
    /// bytes held past the window; the chunk is then dropped.
    pub(crate) fn push(&self, chunk: Bytes) -> Result<(), Overrun> {
        let len = chunk.len();
        let held = self.held.fetch_add(len, Ordering::AcqRel) + len;
        if held > STDIN_WINDOW as usize {
            self.held.fetch_sub(len, Ordering::AcqRel);
            return Err(Overrun { held });
        }
        // The relay is gone only when the task stopped taking stdin: the
        // chunk has nowhere to go, as with a closed pipe.
        let _ = self.chunks.send(chunk);
        Ok(())
    }
}

async fn relay(
    id: RequestId,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    runtime: mpsc::Sender<Bytes>,
    held: Arc<AtomicUsize>,
    outgoing: mpsc::Sender<Outgoing>,
) {
    let mut owed = 0;
    while let Some(chunk) = queue.recv().await {
        let len = chunk.len();
        if runtime.send(chunk).await.is_err() {
            return; // the task ended or closed its stdin
        }
        held.fetch_sub(len, Ordering::AcqRel);
        owed += len;
        if owed >= CREDIT_BATCH || queue.is_empty() {
            let credit = ServerMessage::StdinCredit {
                id,
                bytes: owed as u32,
            };
            if outgoing.send(credit.into()).await.is_err() {
                return; // the connection is gone
            }
            owed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credits(rx: &mut mpsc::Receiver<Outgoing>) -> usize {
        let mut total = 0;
        while let Ok(frame) = rx.try_recv() {
            match frame.message {
                ServerMessage::StdinCredit { id: 7, bytes } => total += bytes as usize,
                other => panic!("unexpected frame {other:?}"),
            }
        }
        total
    }

    #[tokio::test]
    async fn a_full_window_is_refused_and_credit_comes_back_as_the_runtime_takes() {
        let (runtime, mut taken) = mpsc::channel(1);
        let (outgoing, mut frames) = mpsc::channel(64);
        let window = StdinWindow::start(7, runtime, outgoing);
        let half = STDIN_WINDOW as usize / 2;
        let chunk = |byte| Bytes::from(vec![byte; half]);
        window.push(chunk(b'a')).unwrap();
        window.push(chunk(b'b')).unwrap();
        // Nobody reads the runtime's queue: `a` goes into it (one place)
        // and is credited; `b` waits in the relay's hands, still held.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(credits(&mut frames), half);
        window.push(chunk(b'c')).unwrap();
        let overrun = window.push(Bytes::from_static(b"y")).unwrap_err();
        assert_eq!(overrun.held, STDIN_WINDOW as usize + 1);

        // The runtime takes `a`: `b` moves in and its bytes come back.
        assert_eq!(taken.recv().await.unwrap(), chunk(b'a'));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(credits(&mut frames), half);
        window.push(Bytes::from_static(b"y")).unwrap();
    }

    #[tokio::test]
    async fn dropping_the_window_closes_stdin_after_the_queued_chunks() {
        let (runtime, mut taken) = mpsc::channel(1);
        let (outgoing, _frames) = mpsc::channel(64);
        let window = StdinWindow::start(7, runtime, outgoing);
        window.push(Bytes::from_static(b"a")).unwrap();
        window.push(Bytes::from_static(b"b")).unwrap();
        drop(window);
        assert_eq!(taken.recv().await.unwrap(), "a");
        assert_eq!(taken.recv().await.unwrap(), "b");
        assert_eq!(taken.recv().await, None);
    }
}

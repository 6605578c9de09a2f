//! What a connection sends: its outgoing queue, and the port through which
//! its tasks report. A task's progress and output reach the connection as
//! the executor's own events and become frames here, the only place that
//! knows both sides.

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::executor::{Delivery, Disconnected, Events};
use crate::protocol::{OutputStream, ProgressEvent, RequestId, ServerMessage, MAX_CHUNK_LEN};

/// A frame on its way to the connection writer, with the share of the
/// output budget it holds until it is written.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub message: ServerMessage,
    /// Held, not read: dropping it gives the bytes back to the budget.
    pub _permit: Option<OwnedSemaphorePermit>,
}

// The writer encodes the message; the permit is released when the frame has
// been encoded into the write buffer and the `Outgoing` is dropped.
impl serde::Serialize for Outgoing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.message.serialize(serializer)
    }
}

impl From<ServerMessage> for Outgoing {
    fn from(message: ServerMessage) -> Outgoing {
        Outgoing {
            message,
            _permit: None,
        }
    }
}

/// One task's events on this connection: frames for request `id`.
pub(crate) struct TaskEvents {
    id: RequestId,
    tx: mpsc::Sender<Outgoing>,
    /// Bytes of output that may wait for the writer, across the
    /// connection's tasks. A client that stops reading pauses the tasks'
    /// output instead of growing the server's memory.
    budget: Arc<Semaphore>,
}

impl TaskEvents {
    pub fn new(id: RequestId, tx: mpsc::Sender<Outgoing>, budget: Arc<Semaphore>) -> TaskEvents {
        TaskEvents { id, tx, budget }
    }

    /// Sends output in chunks of at most [`MAX_CHUNK_LEN`] bytes, each
    /// waiting for its share of the budget.
    async fn send_output(&self, stream: OutputStream, mut data: Bytes) -> Result<(), Disconnected> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_CHUNK_LEN));
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| Disconnected)?;
            let outgoing = Outgoing {
                message: ServerMessage::Output {
                    id: self.id,
                    stream,
                    chunk,
                },
                _permit: Some(permit),
            };
            self.tx.send(outgoing).await.map_err(|_| Disconnected)?;
        }
        Ok(())
    }
}

impl TaskEvents {
    /// A non-terminal error about this request, e.g. output that cannot
    /// be replayed.
    pub async fn note(&self, error: crate::protocol::TaskError) -> Result<(), Disconnected> {
        let message = ServerMessage::Error {
            id: Some(self.id),
            error,
        };
        self.tx.send(message.into()).await.map_err(|_| Disconnected)
    }
}

impl Events for TaskEvents {
    fn progress(&self, event: ProgressEvent) -> Delivery<'_> {
        let message = ServerMessage::Progress { id: self.id, event };
        Box::pin(async move { self.tx.send(message.into()).await.map_err(|_| Disconnected) })
    }

    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_> {
        Box::pin(self.send_output(stream, data))
    }
}
#[cfg(test)]
mod tests {
    /// Every queued frame takes this much room in the outgoing queue, and
    /// a new connection's queue starts with room for 32 of them: a large
    /// variant (a status reply) belongs in a box.
    #[test]
    fn a_queued_frame_stays_small() {
        assert!(std::mem::size_of::<super::Outgoing>() <= 128);
    }
}

//! The path from a running task to its connection's writer.
//!
//! An executor reports what a task does through an [`EventSink`]; the server
//! turns each report into a frame on the task's connection. Output waits for
//! room in the connection's byte budget, so a client that stops reading
//! pauses the task's output instead of growing the server's memory.

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::protocol::{OutputStream, ProgressEvent, RequestId, ServerMessage, MAX_CHUNK_LEN};

/// A frame on its way to the connection writer, with the share of the byte
/// budget it holds until it is written.
#[derive(Debug)]
pub struct Outgoing {
    pub message: ServerMessage,
    pub permit: Option<OwnedSemaphorePermit>,
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
            permit: None,
        }
    }
}

/// The connection is gone; the task's events have nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client's connection is gone")]
pub struct Disconnected;

/// Where an executor sends one task's progress and output.
#[derive(Debug, Clone)]
pub struct EventSink {
    id: RequestId,
    tx: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
}

impl EventSink {
    pub fn new(id: RequestId, tx: mpsc::Sender<Outgoing>, budget: Arc<Semaphore>) -> EventSink {
        EventSink { id, tx, budget }
    }

    pub async fn progress(&self, event: ProgressEvent) -> Result<(), Disconnected> {
        let message = ServerMessage::Progress { id: self.id, event };
        self.tx.send(message.into()).await.map_err(|_| Disconnected)
    }

    /// Sends output, split into chunks of at most [`MAX_CHUNK_LEN`] bytes.
    /// Waits while the connection's output budget is spent.
    pub async fn output(&self, stream: OutputStream, mut data: Bytes) -> Result<(), Disconnected> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_CHUNK_LEN));
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| Disconnected)?;
            let message = ServerMessage::Output {
                id: self.id,
                stream,
                chunk,
            };
            let outgoing = Outgoing {
                message,
                permit: Some(permit),
            };
            self.tx.send(outgoing).await.map_err(|_| Disconnected)?;
        }
        Ok(())
    }

    /// True once the connection's writer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

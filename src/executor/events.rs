//! What a running task tells its client, in the executor's own terms, and
//! the port it tells it through. The server's connection implements the
//! port and turns each event into a frame; nothing here knows of frames.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::task::OutputStream;

/// Lifecycle news about a task before it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for a free slot; `position` 1 is next.
    Queued { position: u32 },
    /// The engine is pulling the image; one event per layer update.
    Pulling {
        layer: String,
        status: String,
        current: Option<u64>,
        total: Option<u64>,
    },
    /// The container exists (short id).
    Created { container: String },
    /// The task's process is running.
    Started,
}

/// The task's client is gone: its events have nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task's client is gone")]
pub struct Disconnected;

/// An event on its way; resolves once the consumer has room for it.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), Disconnected>> + Send + 'a>>;

/// Where one task's progress and output go.
///
/// `output` may wait: a consumer that cannot keep up makes it wait, the
/// runtime then stops reading the process's output, and the process blocks
/// on its own writes. That is how backpressure reaches a task.
pub trait Events: Send + Sync {
    fn progress(&self, progress: Progress) -> Delivery<'_>;
    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_>;
}

/// A task's event port, shared by the parts that report on it.
pub type EventSink = Arc<dyn Events>;

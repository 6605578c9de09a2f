//! The port through which a running task tells its client of its progress
//! and output (in the shared words of [`crate::task`]). The server's
//! connection implements it and turns each event into a frame; nothing
//! here knows of frames.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::task::{OutputStream, ProgressEvent};

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
    fn progress(&self, progress: ProgressEvent) -> Delivery<'_>;
    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_>;

    /// Whether a client receives the events live right now. A runtime
    /// keeps what it would otherwise discard at the task's end (a warm
    /// container's log) when nobody does.
    fn attended(&self) -> bool {
        true
    }
}

/// A task's event port, shared by the parts that report on it.
pub type EventSink = Arc<dyn Events>;

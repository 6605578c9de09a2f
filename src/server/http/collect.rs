//! The event port of an `/api/execute` task: the HTTP caller wants the
//! answer whole, not a stream, so its body (the task's stdout) is gathered
//! here, up to a bound; the task's own stderr is not the caller's.

use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex};

use crate::executor::{Delivery, Disconnected, Events};
use crate::task::{OutputStream, ProgressEvent};

/// Gathers a task's stdout, at most `max` bytes.
#[derive(Debug, Clone)]
pub(crate) struct Collect {
    body: Arc<Mutex<BytesMut>>,
    overflowed: Arc<Mutex<bool>>,
    max: usize,
}

impl Collect {
    pub fn new(max: usize) -> Collect {
        Collect {
            body: Arc::default(),
            overflowed: Arc::default(),
            max,
        }
    }

    /// What was gathered, and whether more came than `max`.
    pub fn take(&self) -> (Bytes, bool) {
        let body = std::mem::take(&mut *self.body.lock().unwrap_or_else(|e| e.into_inner()));
        let over = *self.overflowed.lock().unwrap_or_else(|e| e.into_inner());
        (body.freeze(), over)
    }

    fn add(&self, data: &[u8]) -> Result<(), Disconnected> {
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        if body.len() + data.len() > self.max {
            *self.overflowed.lock().unwrap_or_else(|e| e.into_inner()) = true;
            // Nobody will take the rest: the task is stopped.
            return Err(Disconnected);
        }
        body.extend_from_slice(data);
        Ok(())
    }
}

impl Events for Collect {
    fn progress(&self, _progress: ProgressEvent) -> Delivery<'_> {
        Box::pin(async { Ok(()) })
    }

    fn output(&self, stream: OutputStream, data: Bytes) -> Delivery<'_> {
        let added = match stream {
            OutputStream::Stdout => self.add(&data),
            OutputStream::Stderr => Ok(()),
        };
        Box::pin(async move { added })
    }
}

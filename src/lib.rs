//! tcp-task: run containers for remote clients over a framed TCP protocol.
//!
//! A client keeps one persistent connection to a server, submits tasks and
//! streams back their progress and output. See `README.md` for the command
//! line and `docs/PROTOCOL.md` for the wire format.

pub mod codec;
pub mod docker;
pub mod events;
pub mod executor;
pub mod images;
pub mod protocol;

pub use protocol::{Ending, ErrorKind, Outcome, OutputStream, ProgressEvent, TaskError, TaskSpec};

//! tcp-task: run containers for remote clients over a framed TCP protocol.
//!
//! A client keeps one persistent connection to a server, submits tasks and
//! streams back their progress and output. See `README.md` for the command
//! line and `docs/PROTOCOL.md` for the wire format.

pub mod auth;
pub mod client;
pub mod codec;
mod connection;
pub mod events;
pub mod executor;
pub mod protocol;
pub mod server;
pub mod tls;

pub use client::{Client, ConnectOptions, Error, StdinWriter, TaskEvent, TaskHandle, TaskOutput};
pub use protocol::{Ending, ErrorKind, Outcome, OutputStream, ProgressEvent, TaskError, TaskSpec};
pub use server::{RunningServer, Server, ServerConfig};
pub use tls::{ClientTlsConfig, TlsConfig};

//! tcp-task: run containers for remote clients over a framed TCP protocol.
//!
//! A client keeps one persistent connection to a server, submits tasks and
//! streams back their progress and output. See `README.md` for the command
//! line and `docs/PROTOCOL.md` for the wire format.

pub mod catalog;
pub mod client;
pub mod codec;
pub mod config;
mod connection;
pub mod docker;
pub mod events;
pub mod executor;
pub mod images;
pub mod protocol;
pub mod server;

pub use client::{Client, ConnectOptions, Error, StdinWriter, TaskEvent, TaskHandle, TaskOutput};
pub use protocol::{Ending, ErrorKind, Outcome, OutputStream, ProgressEvent, TaskError, TaskSpec};
pub use server::{RunningServer, Server, ServerConfig};

// The README's Rust examples are compiled as doctests, so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

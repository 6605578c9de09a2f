//! tcp-task: run containers for remote clients over a framed TCP protocol.
//!
//! A client keeps one persistent connection to a server, submits tasks and
//! streams back their progress and output. See `README.md` for the command
//! line and `docs/PROTOCOL.md` for the wire format.

// The client side: all that a client-only build (`default-features =
// false`) compiles.
pub mod client;
pub mod codec;
pub mod protocol;
pub mod task;
pub mod tls;

// The server side (feature `server`, on by default).
#[cfg(feature = "server")]
pub mod access;
#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod catalog;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod docker;
#[cfg(feature = "server")]
pub mod executor;
#[cfg(feature = "server")]
pub mod images;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod tasks;

pub use client::{Client, ConnectOptions, Error, StdinWriter, TaskEvent, TaskHandle, TaskOutput};
pub use protocol::{ProgressEvent, TaskSpec};
#[cfg(feature = "server")]
pub use server::{RunningServer, Server, ServerConfig, TlsConfig};
pub use task::{
    Ending, ErrorKind, Offsets, Outcome, OutputStream, TaskError, TaskId, TaskInfo, TaskState,
};

// The README's Rust examples are compiled as doctests, so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "server"))]
pub struct ReadmeDoctests;

pub use tls::ClientTlsConfig;

/// Entry points for the cargo-fuzz targets in `fuzz/`, behind the
/// `fuzzing` feature. Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::protocol::{Hello, TaskError};

    /// The server's checks of a hello frame body: magic, version, decoding.
    pub fn check_hello(body: &[u8]) -> Result<Hello, TaskError> {
        crate::server::check_hello(body)
    }

    /// The server's handshake reader over `input`, as if a client had sent
    /// exactly those bytes and closed.
    pub fn read_hello(input: &[u8], max_frame_len: usize) -> Result<Hello, TaskError> {
        let mut reader = input;
        let mut buffer = bytes::BytesMut::new();
        futures::executor::block_on(crate::server::read_hello(
            &mut reader,
            &mut buffer,
            max_frame_len,
        ))
    }
}

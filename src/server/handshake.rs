//! The first frame of a connection: the client's hello, checked before
//! anything else is read, so that a peer of another version (or of another
//! protocol altogether) gets an answer that says so.

use bytes::BytesMut;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedWrite;
use tracing::info;

use super::shared::Shared;
use crate::codec::{self, CodecError, FrameCodec};
use crate::protocol::{ErrorKind, Hello, ServerMessage, TaskError, MAGIC, PROTOCOL_VERSION};

/// A plaintext client at a TLS server: it cannot read TLS, so it is told in
/// a plaintext frame, after its hello is read (closing with unread bytes
/// could reset the connection before the frame is read).
pub(crate) async fn refuse_plaintext<E>(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Shared<E>,
    deadline: Instant,
) {
    info!(%peer, "a plaintext client at the TLS server; refused");
    let (mut reader, writer) = tokio::io::split(socket);
    let max_frame_len = shared.config.max_frame_len;
    let mut writer = FramedWrite::new(writer, FrameCodec::<()>::new(max_frame_len));
    let mut buffer = BytesMut::new();
    let read = read_hello(&mut reader, &mut buffer, max_frame_len as usize);
    let _ = tokio::time::timeout_at(deadline, read).await;
    let error = TaskError::new(
        ErrorKind::Protocol,
        "this server speaks TLS only: connect with TLS, trusting the CA that signed its certificate (--tls-ca FILE)",
    );
    let send = send_now(&mut writer, ServerMessage::Error { id: None, error });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
}

/// Writes one frame right away; used before the batching writer exists.
pub(crate) async fn send_now<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, FrameCodec<()>>,
    message: ServerMessage,
) -> Result<(), CodecError> {
    use futures::SinkExt;
    writer.send(message).await
}

/// Reads the client's hello: the first frame. Checks the magic and version
/// before decoding the rest, so a peer of another version (or no tcp-task
/// peer at all) gets an error that says so.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    max_frame_len: usize,
) -> Result<Hello, TaskError> {
    loop {
        if let Some(reason) = foreign_protocol(buffer) {
            return Err(TaskError::new(ErrorKind::Protocol, reason));
        }
        match codec::take_frame(buffer, max_frame_len) {
            Ok(Some(body)) => return check_hello(&body),
            Ok(None) => {}
            Err(e) => return Err(protocol_error(&e)),
        }
        match reader.read_buf(buffer).await {
            Ok(0) => {
                return Err(TaskError::new(
                    ErrorKind::Protocol,
                    "connection closed during the handshake",
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(TaskError::new(
                    ErrorKind::Protocol,
                    format!("read failed during the handshake: {e}"),
                ))
            }
        }
    }
}

/// Recognises the first bytes of protocols people point at the wrong port.
fn foreign_protocol(first_bytes: &[u8]) -> Option<String> {
    if first_bytes.len() >= 3 && first_bytes[0] == 0x16 && first_bytes[1] == 0x03 {
        return Some(
            "the client started a TLS handshake, but this server speaks plaintext; connect without TLS or start the server with --tls-cert and --tls-key".into(),
        );
    }
    const HTTP_METHODS: [&[u8]; 5] = [b"GET ", b"POST", b"PUT ", b"HEAD", b"CONN"];
    if first_bytes.len() >= 4 && HTTP_METHODS.contains(&&first_bytes[..4]) {
        return Some("this is a tcp-task server, not an HTTP server".into());
    }
    None
}

pub(crate) fn check_hello(body: &[u8]) -> Result<Hello, TaskError> {
    if body.len() < MAGIC.len() || body[..MAGIC.len()] != MAGIC {
        return Err(TaskError::new(
            ErrorKind::Protocol,
            "wrong magic bytes in the handshake: the peer is not a tcp-task client",
        ));
    }
    let version: u16 = codec::decode_prefix(&body[MAGIC.len()..]).map_err(|_| {
        TaskError::new(
            ErrorKind::Protocol,
            "handshake too short to hold a protocol version",
        )
    })?;
    if version != PROTOCOL_VERSION {
        return Err(TaskError::new(
            ErrorKind::VersionMismatch,
            format!(
                "the client speaks protocol version {version}, this server speaks version {PROTOCOL_VERSION}; use a client and server of matching versions"
            ),
        ));
    }
    codec::decode_body(body).map_err(|e| protocol_error(&e))
}

pub(crate) fn protocol_error(error: &CodecError) -> TaskError {
    let kind = match error {
        CodecError::FrameTooLarge { .. } => ErrorKind::FrameTooLarge,
        _ => ErrorKind::Protocol,
    };
    TaskError::new(kind, error.to_string())
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

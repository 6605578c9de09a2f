//! A client that speaks the protocol by hand over a plain socket, to send
//! what the library never would: bad frames, frames pipelined behind a
//! hello, floods, silence. One type does the framing for every test that
//! needs it; split it to send from one task while another reads.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tcp_task::codec::{decode_body, encode_body, take_frame};
use tcp_task::protocol::{ErrorKind, Hello, ServerMessage, DEFAULT_MAX_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long a read waits for the next frame (or the close) unless the test
/// says otherwise: long enough for a loaded machine, short enough that a
/// hung server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

/// `body` behind its 4-byte big-endian length: one frame on the wire.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// `message` encoded as one frame, to concatenate with others and send in
/// one write.
pub fn frame(message: &impl serde::Serialize) -> Vec<u8> {
    framed(&encode_body(message).unwrap())
}

/// One end of a connection, or one half of it after [`RawPeer::into_split`]:
/// the sending methods need a writable stream, the reading ones a readable
/// one.
pub struct RawPeer<S = TcpStream> {
    stream: S,
    /// Bytes read but not yet decoded.
    buffer: BytesMut,
    patience: Duration,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: BytesMut::new(),
            patience: PATIENCE,
        }
    }

    /// Connected, hello sent and welcomed.
    pub async fn handshaken(addr: SocketAddr) -> RawPeer {
        let mut peer = RawPeer::connect(addr).await;
        peer.send(&Hello::new("raw", None)).await;
        assert!(matches!(peer.read().await, Some(ServerMessage::Welcome(_))));
        peer
    }

    /// A reading half and a writing half that can live in different tasks.
    /// Bytes already read and not yet decoded stay with the reading half.
    pub fn into_split(self) -> (RawPeer<OwnedReadHalf>, RawPeer<OwnedWriteHalf>) {
        let (read, write) = self.stream.into_split();
        let reader = RawPeer {
            stream: read,
            buffer: self.buffer,
            patience: self.patience,
        };
        let writer = RawPeer {
            stream: write,
            buffer: BytesMut::new(),
            patience: self.patience,
        };
        (reader, writer)
    }
}

impl<S> RawPeer<S> {
    /// Waits up to `patience` for each frame instead of the default 10 s.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }
}

impl<S: AsyncWrite + Unpin> RawPeer<S> {
    /// Bytes as they are, framed or not.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// `body` as one frame, whatever it holds.
    pub async fn send_body(&mut self, body: &[u8]) {
        self.send_raw(&framed(body)).await;
    }

    /// A hello or a client message, as one frame.
    pub async fn send(&mut self, message: &impl serde::Serialize) {
        self.send_raw(&frame(message)).await;
    }
}

impl<S: AsyncRead + Unpin> RawPeer<S> {
    /// The next frame, or `None` once the server closed the connection.
    /// Fails the test if neither happens within the patience.
    pub async fn read(&mut self) -> Option<ServerMessage> {
        let read = async {
            loop {
                if let Some(body) =
                    take_frame(&mut self.buffer, DEFAULT_MAX_FRAME_LEN as usize).unwrap()
                {
                    return Some(decode_body(&body).unwrap());
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(self.patience, read)
            .await
            .expect("the server neither answered nor closed")
    }

    /// Every frame until the server closes the connection.
    pub async fn frames_until_closed(&mut self) -> Vec<ServerMessage> {
        let mut frames = Vec::new();
        while let Some(message) = self.read().await {
            frames.push(message);
        }
        frames
    }

    /// Reads until the server closes; returns the error frames seen.
    pub async fn errors_until_closed(&mut self) -> Vec<ErrorKind> {
        let frames = self.frames_until_closed().await;
        frames
            .into_iter()
            .filter_map(|message| match message {
                ServerMessage::Error { error, .. } => Some(error.kind),
                _ => None,
            })
            .collect()
    }
}

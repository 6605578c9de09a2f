//! Frames: a 4-byte big-endian body length, then the body, a bincode 2
//! (serde, standard configuration) encoding of one message.
//!
//! bincode stays behind this module: nothing else names it, so replacing it
//! with a wire-compatible encoder is a change to this file alone.
//!
//! A declared length above the maximum is an error before any buffer is grown
//! for it, so a peer cannot make us allocate by announcing a huge frame.

use bytes::{Buf, BufMut, BytesMut};
use futures::{Sink, SinkExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::DEFAULT_MAX_FRAME_LEN;

const LENGTH_PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes any serializable message; decodes messages of type `D`.
#[derive(Debug)]
pub struct FrameCodec<D> {
    max_frame_len: usize,
    _decodes: PhantomData<fn() -> D>,
}

impl<D> FrameCodec<D> {
    pub fn new(max_frame_len: u32) -> FrameCodec<D> {
        FrameCodec {
            max_frame_len: max_frame_len as usize,
            _decodes: PhantomData,
        }
    }

    /// The same limits, decoding another message type (used after the
    /// handshake, when the expected message type changes).
    pub fn retype<T>(&self) -> FrameCodec<T> {
        FrameCodec::new(self.max_frame_len as u32)
    }
}

impl<D> Default for FrameCodec<D> {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The most that decoding one frame body may make bincode reserve.
///
/// bincode trusts the lengths inside a body: it reserves a string's or a
/// byte chunk's memory before it reads the bytes. Without a limit, a 20-byte
/// frame that announces a string of 2^60 bytes makes it ask for that much,
/// and the failed allocation aborts the whole process, before any
/// handshake. Only strings and byte chunks are reserved ahead (sequences
/// grow as they are read), and each lies inside the body, so a valid body
/// never reserves more than its own length: every frame up to this size
/// still decodes, far above the maximum frame length a server would set, and
/// a lying length costs at most this much zeroed memory, never touched.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    config().with_limit::<DECODE_LIMIT>()
}

/// Encodes `message` as one frame body (without the length prefix).
pub fn encode_body<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (message, read) = bincode::serde::decode_from_slice(body, decode_config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Malformed(format!(
            "{} unexpected bytes after the message",
            body.len() - read
        )));
    }
    Ok(message)
}

/// Decodes a value from the start of `body`, ignoring what follows. The
/// handshake uses it to read the magic and version of a hello whose later
/// fields may be of another version.
pub fn decode_prefix<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(body, decode_config())
        .map(|(message, _)| message)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Takes one whole frame body off the front of `src`, if it is all there.
///
/// The declared length is checked against `max_frame_len` before anything is
/// reserved for it: the length is only the peer's claim.
pub fn take_frame(
    src: &mut BytesMut,
    max_frame_len: usize,
) -> Result<Option<BytesMut>, CodecError> {
    if src.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max_frame_len {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_len,
        });
    }
    if src.len() < LENGTH_PREFIX + len {
        src.reserve(LENGTH_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX);
    Ok(Some(src.split_to(len)))
}

impl<D: DeserializeOwned> Decoder for FrameCodec<D> {
    type Item = D;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        match take_frame(src, self.max_frame_len)? {
            Some(body) => decode_body(&body).map(Some),
            None => Ok(None),
        }
    }
}

impl<D, E: Serialize> Encoder<E> for FrameCodec<D> {
    type Error = CodecError;

    fn encode(&mut self, message: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0); // patched below, once the body's length is known
        let mut writer = dst.writer();
        let written = bincode::serde::encode_into_std_write(&message, &mut writer, config());
        let dst = writer.into_inner();
        let len = match written {
            Ok(len) => len,
            Err(e) => {
                dst.truncate(start);
                return Err(CodecError::Malformed(e.to_string()));
            }
        };
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Writes what arrives on `queue` to `sink` until the queue closes: many
/// frames per flush when they arrive together, one flush when the queue is
/// momentarily empty, so a burst costs one write call instead of one each.
pub async fn write_batched<S, I>(
    sink: &mut S,
    queue: &mut mpsc::Receiver<I>,
) -> Result<(), CodecError>
where
    S: Sink<I, Error = CodecError> + Unpin,
{
    while let Some(item) = queue.recv().await {
        sink.feed(item).await?;
        while let Ok(item) = queue.try_recv() {
            sink.feed(item).await?;
        }
        sink.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientMessage, ServerMessage};

    #[test]
    fn oversized_length_is_refused_before_reserving() {
        let mut codec = FrameCodec::<ClientMessage>::new(1024);
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 0][..]);
        let capacity_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 0xFFFF_FFFF,
                max: 1024
            }
        ));
        assert_eq!(buf.capacity(), capacity_before);
    }

    #[test]
    fn frame_split_across_reads_decodes_once_complete() {
        let mut codec = FrameCodec::<ServerMessage>::default();
        let mut whole = BytesMut::new();
        let message = ServerMessage::Accepted { id: 7 };
        codec.encode(message.clone(), &mut whole).unwrap();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(message.clone()));
            }
        }
    }

    #[test]
    fn a_lying_length_inside_a_body_is_an_error_not_an_allocation() {
        // Stdin { id: 1, chunk } whose chunk claims 2^60 bytes (varint
        // marker 253: a u64 follows), in a frame of a few bytes.
        let mut body = vec![1u8, 1, 253];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        let mut codec = FrameCodec::<ClientMessage>::default();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn outgoing_frame_over_the_maximum_is_an_error() {
        let mut codec = FrameCodec::<ClientMessage>::new(16);
        let mut buf = BytesMut::new();
        let big = ClientMessage::Stdin {
            id: 1,
            chunk: bytes::Bytes::from(vec![0u8; 64]),
        };
        assert!(matches!(
            codec.encode(big, &mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }
}

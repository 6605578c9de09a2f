//! Frames: a 4-byte big-endian body length, then the body, a bincode 2
//! (serde, standard configuration) encoding of one message.
//!
//! bincode stays behind this module: nothing else names it, so replacing it
//! with a wire-compatible encoder is a change to this file alone.
//!
//! A declared length above the maximum is an error before any buffer is grown
//! for it, so a peer cannot make us allocate by announcing a huge frame.

use bytes::{Buf, BufMut, BytesMut};
use futures::SinkExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, FramedWrite};

use crate::protocol::DEFAULT_MAX_FRAME_LEN;

const LENGTH_PREFIX: usize = 4;

/// Room a decoder keeps for the next read once it needs more bytes: many
/// small frames per read call, and still little for an idle connection
/// that once had traffic to hold.
const READ_AHEAD: usize = 2048;

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

/// Decodes from `body` with a bound on what decoding may allocate.
///
/// bincode allocates a string's or byte buffer's declared length before it
/// reads the bytes, so without a bound a ten-byte frame declaring a string
/// of 2^60 bytes makes the process panic or abort. Every byte a message
/// holds is inside its body, but bincode's limit counts a byte buffer twice
/// (once when it is claimed, once when it is read), so a message that
/// decodes needs at most twice `body.len()`; the bound is the smallest step
/// above that (the limit is a compile-time constant in bincode, hence the
/// steps).
fn decode_bounded<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let standard = config();
    let len = body.len().saturating_mul(2);
    if len <= KIB {
        bincode::serde::decode_from_slice(body, standard.with_limit::<KIB>())
    } else if len <= MIB {
        bincode::serde::decode_from_slice(body, standard.with_limit::<MIB>())
    } else if len <= 16 * MIB {
        bincode::serde::decode_from_slice(body, standard.with_limit::<{ 16 * MIB }>())
    } else {
        bincode::serde::decode_from_slice(body, standard.with_limit::<{ u32::MAX as usize }>())
    }
}

/// Encodes `message` as one frame body (without the length prefix).
pub fn encode_body<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (message, read) = decode_bounded(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
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
    decode_bounded(body)
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
    let Some(len) = frame_len(src, max_frame_len)? else {
        return Ok(None);
    };
    src.advance(LENGTH_PREFIX);
    Ok(Some(src.split_to(len)))
}

/// The body length of the whole frame at the front of `src`, or `None`
/// (with room reserved for the rest of the frame) while it is not all there.
fn frame_len(src: &mut BytesMut, max_frame_len: usize) -> Result<Option<usize>, CodecError> {
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
    Ok(Some(len))
}

/// Whether `src` holds a whole frame at its front (a length prefix and the
/// body it announces).
pub fn holds_frame(src: &[u8]) -> bool {
    src.len() >= LENGTH_PREFIX
        && src.len() - LENGTH_PREFIX
            >= u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
}

impl<D: DeserializeOwned> Decoder for FrameCodec<D> {
    type Item = D;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        match frame_len(src, self.max_frame_len)? {
            Some(len) => {
                // Decoded in place: splitting the body off would cost a
                // reference count on the buffer for every frame.
                let message = decode_body(&src[LENGTH_PREFIX..LENGTH_PREFIX + len]);
                src.advance(LENGTH_PREFIX + len);
                message.map(Some)
            }
            None => {
                // The reader reads into the spare capacity only. A buffer
                // that starts small would otherwise settle at one frame's
                // size (take_frame reserves just the missing bytes, and an
                // emptied buffer reuses its allocation): one read call per
                // frame when a client pipelines.
                if src.capacity() - src.len() < READ_AHEAD {
                    src.reserve(READ_AHEAD);
                }
                Ok(None)
            }
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

/// Frames the writer takes off its queue at a time.
const BATCH: usize = 32;

/// A connection's buffer grown past this by a big frame gives its room back
/// once it is empty: an idle connection should not hold what its largest
/// frame once needed.
const KEPT_ROOM: usize = 4 * READ_AHEAD;

/// Lets go of `buffer`'s allocation if it is empty and grew past
/// [`KEPT_ROOM`]; it grows again on demand.
pub fn release_room(buffer: &mut BytesMut) {
    // An emptied buffer's `capacity` counts only what lies past the bytes
    // already consumed; `try_reclaim` looks at the whole allocation, and
    // allocates nothing.
    if buffer.is_empty() && buffer.try_reclaim(KEPT_ROOM + 1) {
        *buffer = BytesMut::new();
    }
}

/// A connection's frame writer.
pub type FrameWriter<W> = FramedWrite<W, FrameCodec<()>>;

/// Writes what arrives on `queue` to `sink` until the queue closes: many
/// frames per flush when they arrive together, one flush when the queue is
/// momentarily empty, so a burst costs one write call instead of one each.
pub async fn write_batched<W, I>(
    sink: &mut FrameWriter<W>,
    queue: &mut mpsc::Receiver<I>,
) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    I: Serialize,
{
    write_batched_counting(sink, queue, |_| {}).await
}

/// [`write_batched`], telling `flushed` how many frames each flush carried
/// (the server counts them in its metrics).
pub async fn write_batched_counting<W, I>(
    sink: &mut FrameWriter<W>,
    queue: &mut mpsc::Receiver<I>,
    mut flushed: impl FnMut(u64),
) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    I: Serialize,
{
    // Frames are taken off the queue many at a time: the queue gives their
    // room back to the senders in one step, not one locked step per frame.
    let mut batch = Vec::new();
    let mut frames = 0;
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        frames += batch.len() as u64;
        for item in batch.drain(..) {
            sink.feed(item).await?;
        }
        if !queue.is_empty() {
            continue;
        }
        SinkExt::<I>::flush(sink).await?;
        flushed(frames);
        frames = 0;
        // An idle connection keeps no room for frames it is not sending.
        batch.shrink_to_fit();
        release_room(sink.write_buffer_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose one byte buffer fills it to just under each step of
    /// the decode limit still decodes (the limit counts the buffer twice).
    #[test]
    fn chunks_near_each_limit_step_decode() {
        for payload in [400, 510, 1000, 1010, 1015, 1019, 1020, 600_000, 1_048_000] {
            let message = crate::protocol::ServerMessage::Pong {
                id: 0,
                payload: bytes::Bytes::from(vec![0x10; payload]),
            };
            let body = encode_body(&message).unwrap();
            let decoded: crate::protocol::ServerMessage = decode_body(&body).unwrap();
            assert_eq!(decoded, message, "payload of {payload} bytes");
        }
    }
    use crate::protocol::{ClientMessage, ServerMessage};

    /// A buffer that held exactly one frame keeps room for many before the
    /// next read: with exactly one frame's room, a pipelining client's
    /// frames would cost one read call each.
    #[test]
    fn an_emptied_buffer_keeps_room_for_the_next_read() {
        let mut codec = FrameCodec::<ServerMessage>::default();
        let mut frame = BytesMut::new();
        let pong = ServerMessage::Pong {
            id: 1,
            payload: bytes::Bytes::from_static(b"x"),
        };
        codec.encode(pong.clone(), &mut frame).unwrap();
        let mut buf = BytesMut::with_capacity(frame.len());
        buf.extend_from_slice(&frame);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(pong));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() - buf.len() >= READ_AHEAD,
            "{}",
            buf.capacity()
        );
    }

    /// A read buffer emptied after a big frame gives its room back; one
    /// that held small frames keeps it.
    #[test]
    fn an_emptied_read_buffer_lets_go_of_what_a_big_frame_needed() {
        let mut codec = FrameCodec::<ServerMessage>::default();
        for (len, kept) in [(64 * 1024, false), (100, true)] {
            let pong = ServerMessage::Pong {
                id: 1,
                payload: bytes::Bytes::from(vec![7; len]),
            };
            let mut buf = BytesMut::new();
            codec.encode(pong.clone(), &mut buf).unwrap();
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(pong));
            release_room(&mut buf);
            assert!(!buf.try_reclaim(KEPT_ROOM + 1), "{len}-byte frame");
            assert_eq!(buf.try_reclaim(len), kept, "{len}-byte frame");
        }
    }

    /// After a big frame the writer's buffer gives its room back once the
    /// frame is written; small frames keep theirs.
    #[tokio::test]
    async fn the_writer_lets_go_of_what_a_big_frame_grew_its_buffer_to() {
        let mut writer = FramedWrite::new(tokio::io::sink(), FrameCodec::<()>::default());
        for (len, kept) in [(64 * 1024, false), (100, true)] {
            let (tx, mut rx) = mpsc::channel(1);
            tx.send(ServerMessage::Pong {
                id: 1,
                payload: bytes::Bytes::from(vec![7; len]),
            })
            .await
            .unwrap();
            drop(tx);
            write_batched(&mut writer, &mut rx).await.unwrap();
            let buffer = writer.write_buffer_mut();
            assert!(buffer.is_empty());
            assert!(!buffer.try_reclaim(KEPT_ROOM + 1), "{len}-byte frame");
            assert_eq!(buffer.try_reclaim(len), kept, "{len}-byte frame");
        }
    }

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

    /// A string whose declared length is far beyond the body is refused
    /// without allocating it (bincode would otherwise reserve it first).
    #[test]
    fn a_huge_declared_string_length_is_refused_without_allocating_it() {
        // Hello { magic, version 1, client: a string of 2^62 bytes, ... }
        let mut body = crate::protocol::MAGIC.to_vec();
        body.push(1);
        body.push(253); // bincode varint: a u64 follows
        body.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let err = decode_body::<crate::protocol::Hello>(&body).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
        // The same for a body above each step of the bound.
        for padding in [2 * 1024, 2 * 1024 * 1024] {
            let mut long = body.clone();
            long.resize(body.len() + padding, 0);
            assert!(decode_body::<crate::protocol::Hello>(&long).is_err());
        }
    }

    #[test]
    fn frame_split_across_reads_decodes_once_complete() {
        let mut codec = FrameCodec::<ServerMessage>::default();
        let mut whole = BytesMut::new();
        let message = ServerMessage::Accepted {
            id: 7,
            task: crate::task::TaskId::from_random(7),
        };
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

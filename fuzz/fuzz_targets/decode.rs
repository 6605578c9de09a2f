//! Arbitrary bytes into everything that reads from a peer before trusting
//! it: the frame decoder for both directions and the server's handshake.
//! Nothing may panic, hang, or allocate past the frame maximum.
//!
//! Run with `cargo +nightly fuzz run decode` (add `-- -max_total_time=600`
//! for a bounded run). The bounded in-CI counterparts are the handshake
//! test in src/connection/handshake_tests.rs and tests/codec_props.rs.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tcp_task::codec::FrameCodec;
use tcp_task::protocol::{ClientMessage, ServerMessage};
use tokio_util::codec::Decoder;

/// Small, so that the length checks are reached often.
const MAX_FRAME_LEN: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // What the server decodes after the handshake: frames until the bytes
    // run out or one is refused (the connection would then be closed).
    let mut server_side = FrameCodec::<ClientMessage>::new(MAX_FRAME_LEN);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(_)) = server_side.decode(&mut buffer) {}
    assert!(buffer.capacity() <= 2 * (4 + MAX_FRAME_LEN as usize + data.len()));

    // What a client decodes from a server it may not trust.
    let mut client_side = FrameCodec::<ServerMessage>::new(MAX_FRAME_LEN);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(_)) = client_side.decode(&mut buffer) {}

    // The handshake: the bytes as a whole connection, and as a hello body.
    let _ = tcp_task::fuzzing::read_hello(data, MAX_FRAME_LEN as usize);
    let _ = tcp_task::fuzzing::check_hello(data);
});

//! The handshake reader against hostile input: a seeded generator sends
//! 120,000 (or TCP_TASK_FUZZ_INPUTS, for a run at scale: see
//! docs/RELIABILITY.md) random, mutated and truncated hellos through
//! [`read_hello`], in
//! pieces of random size as a network would deliver them, and checks each
//! answer against a plain model of what the answer must be. Also: a header
//! announcing 4 GiB is refused before anything is reserved for it.
//!
//! The decoder after the handshake has its own property tests
//! (tests/codec_props.rs); this file is about the first frame only.

use super::*;
use crate::protocol::Hello;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

/// 120,000, or TCP_TASK_FUZZ_INPUTS (the fuzz tests' knob, tests/fuzz/).
fn inputs() -> u64 {
    std::env::var("TCP_TASK_FUZZ_INPUTS")
        .map(|n| {
            n.replace('_', "")
                .parse()
                .expect("TCP_TASK_FUZZ_INPUTS is a count")
        })
        .unwrap_or(120_000)
}
const SEED: u64 = 0x7c97_a5ee_d00d_f00d;

/// SplitMix64: small, seeded, and the same on every platform, so a failing
/// case can be replayed from its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Between `min` and `max` random bytes.
    fn bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
        let n = min + self.below(max - min + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` printable characters.
    fn text(&mut self, max: usize) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| char::from(b' ' + self.below(95) as u8))
            .collect()
    }
}

/// Hands out its bytes a few at a time, then end-of-file.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .step
            .min(self.data.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

fn random_hello(rng: &mut Rng) -> Hello {
    let client = rng.text(40);
    let token = (rng.below(2) == 0).then(|| rng.text(80));
    Hello::new(client, token)
}

/// One random edit of `input`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next() as u8;
        }
        2 => {
            let i = rng.below(len + 1);
            let extra = rng.bytes(1, 8);
            input.splice(i..i, extra);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let end = (i + 1 + rng.below(8)).min(len);
            input.drain(i..end);
        }
        4 => input.truncate(rng.below(len + 1)),
        5 if len >= 4 => {
            // Another length prefix: small, near a limit, or huge.
            let declared: u32 = match rng.below(4) {
                0 => rng.below(64) as u32,
                1 => ((len - 4) as u32 + rng.below(3) as u32).saturating_sub(1),
                2 => u32::MAX - rng.below(4) as u32,
                _ => rng.next() as u32,
            };
            input[..4].copy_from_slice(&declared.to_be_bytes());
        }
        6 => input.extend(rng.bytes(0, 16)),
        _ => {
            // A foreign protocol's first bytes.
            let prefixes: [&[u8]; 4] = [b"\x16\x03\x01", b"GET ", b"POST", b"\x16\x03"];
            let prefix = prefixes[rng.below(prefixes.len())];
            input.splice(0..0, prefix.iter().copied());
        }
    }
}

/// What `read_hello` must answer for `input`, worked out without it.
fn model(input: &[u8], max_frame_len: usize) -> Result<Hello, ErrorKind> {
    if input.len() >= 3 && input[0] == 0x16 && input[1] == 0x03 {
        return Err(ErrorKind::Protocol);
    }
    const HTTP: [&[u8]; 5] = [b"GET ", b"POST", b"PUT ", b"HEAD", b"CONN"];
    if input.len() >= 4 && HTTP.contains(&&input[..4]) {
        return Err(ErrorKind::Protocol);
    }
    if input.len() < 4 {
        return Err(ErrorKind::Protocol); // closed during the handshake
    }
    let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
    if len > max_frame_len {
        return Err(ErrorKind::FrameTooLarge);
    }
    let Some(body) = input.get(4..4 + len) else {
        return Err(ErrorKind::Protocol); // closed mid-frame
    };
    if body.len() < MAGIC.len() || body[..MAGIC.len()] != MAGIC {
        return Err(ErrorKind::Protocol);
    }
    match codec::decode_prefix::<u16>(&body[MAGIC.len()..]) {
        Err(_) => Err(ErrorKind::Protocol),
        Ok(version) if version != PROTOCOL_VERSION => Err(ErrorKind::VersionMismatch),
        Ok(_) => codec::decode_body::<Hello>(body).map_err(|_| ErrorKind::Protocol),
    }
}

#[test]
fn hostile_hellos_get_the_answer_the_model_predicts_and_never_more_memory_than_the_maximum() {
    let mut rng = Rng(SEED);
    let mut admitted = 0;
    let inputs = inputs();
    let started = std::time::Instant::now();
    for case in 0..inputs {
        let max_frame_len = if rng.below(2) == 0 { 256 } else { 64 * 1024 };
        let input = match rng.below(10) {
            // A good hello, whole.
            0..=1 => frame(&codec::encode_body(&random_hello(&mut rng)).unwrap()),
            // A good hello, then one to four edits.
            2..=6 => {
                let mut input = frame(&codec::encode_body(&random_hello(&mut rng)).unwrap());
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut rng, &mut input);
                }
                input
            }
            // A plausible header over random bytes.
            7 => {
                let body = rng.bytes(0, 48);
                let mut input = frame(&body);
                if rng.below(2) == 0 && body.len() >= 4 {
                    input[4..8].copy_from_slice(&MAGIC);
                }
                input
            }
            // Noise.
            _ => rng.bytes(0, 64),
        };
        let expected = model(&input, max_frame_len);
        let step = 1 + rng.below(32);
        let mut reader = Trickle {
            data: input.clone(),
            at: 0,
            step,
        };
        let mut buffer = BytesMut::new();
        let got = futures::executor::block_on(read_hello(&mut reader, &mut buffer, max_frame_len));
        let context = || format!("case {case} (step {step}, max {max_frame_len}): {input:02x?}");
        match (&got, &expected) {
            (Ok(hello), Ok(model_hello)) => {
                assert_eq!(hello, model_hello, "{}", context());
                admitted += 1;
                // What came after the hello stays for the next frames.
                let frame_len = 4 + u32::from_be_bytes(input[..4].try_into().unwrap()) as usize;
                assert!(input[frame_len..].starts_with(&buffer[..]), "{}", context());
            }
            (Err(error), Err(kind)) => assert_eq!(error.kind, *kind, "{}: {error}", context()),
            _ => panic!("{}: got {got:?}, the model says {expected:?}", context()),
        }
        // Never more than one maximal frame plus the reader's own slack,
        // whatever the header claimed.
        assert!(
            buffer.capacity() <= 2 * (4 + max_frame_len) + 1024,
            "{}: {} bytes reserved",
            context(),
            buffer.capacity()
        );
    }
    // The generator must reach the success path often, or the test would
    // only be exercising refusals.
    assert!(admitted > inputs / 10, "only {admitted} hellos admitted");
    eprintln!(
        "handshake reader: {inputs} hostile hellos, 0 panics, {admitted} admitted, {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_hello_header_announcing_4_gib_is_refused_before_anything_is_reserved() {
    let mut reader = Trickle {
        data: vec![0xFF, 0xFF, 0xFF, 0xFF, 0x00],
        at: 0,
        step: 5,
    };
    let mut buffer = BytesMut::new();
    let max_frame_len = crate::protocol::DEFAULT_MAX_FRAME_LEN as usize;
    let got = futures::executor::block_on(read_hello(&mut reader, &mut buffer, max_frame_len));
    assert_eq!(got.unwrap_err().kind, ErrorKind::FrameTooLarge);
    // Only what the first read needed (tokio reads into at least 64 bytes).
    assert!(
        buffer.capacity() <= 64,
        "{} bytes reserved",
        buffer.capacity()
    );
}

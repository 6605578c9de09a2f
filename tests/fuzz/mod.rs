//! What the fuzz tests share (tests/codec_props.rs, tests/agent_fuzz.rs):
//! how many inputs to run, and a byte mutator.
//!
//! The default run is short; TCP_TASK_FUZZ_INPUTS sets the inputs per
//! decoder for a run at scale (docs/RELIABILITY.md has the command and the
//! figures of the last one).

use rand::rngs::StdRng;
use rand::Rng;

/// Inputs per decoder: TCP_TASK_FUZZ_INPUTS, else `default`.
pub fn inputs(default: usize) -> usize {
    match std::env::var("TCP_TASK_FUZZ_INPUTS") {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("TCP_TASK_FUZZ_INPUTS={text:?} is not a count")),
        Err(_) => default,
    }
}

/// Bytes a binary format gives meaning to: bincode's varint markers (251 =
/// u16 follows, 252 = u32, 253 = u64, 254 = u128), option and bool tags,
/// extremes, and the warm agent's frame kinds.
pub const INTERESTING: [u8; 14] = [
    0, 1, 2, 0x7F, 0x80, 250, 251, 252, 253, 0xFF, b'T', b'X', b'O', b'R',
];

/// One to four random edits of `frame`: flipped bits, interesting bytes,
/// insertions (often a marker and a wide value), deletions, truncation,
/// repeats, and a marker followed by a huge little-endian length. Edits
/// start at `keep` or later (a length prefix the caller fixes up after).
pub fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>, keep: usize) {
    for _ in 0..rng.random_range(1..=4) {
        let len = frame.len();
        match rng.random_range(0..9) {
            // Flip one bit.
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                frame[at] ^= 1 << rng.random_range(0..8);
            }
            // Set one byte to anything.
            1 if len > 0 => {
                let at = rng.random_range(0..len);
                frame[at] = rng.random();
            }
            // Set one byte to a value the format gives meaning to.
            2 if len > 0 => {
                let at = rng.random_range(0..len);
                frame[at] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            // Insert a few bytes, often a varint marker and a wide value.
            3 => {
                let at = rng.random_range(0..=len);
                let mut insert = vec![INTERESTING[rng.random_range(0..INTERESTING.len())]];
                for _ in 0..rng.random_range(0..9) {
                    insert.push(rng.random());
                }
                frame.splice(at..at, insert);
            }
            // Delete a range.
            4 if len > 0 => {
                let at = rng.random_range(0..len);
                let end = (at + rng.random_range(1..=8)).min(len);
                frame.drain(at..end);
            }
            // Truncate.
            5 if len > 0 => frame.truncate(rng.random_range(0..len)),
            // Duplicate a range.
            6 if len > 0 => {
                let at = rng.random_range(0..len);
                let end = (at + rng.random_range(1..=16)).min(len);
                let copy = frame[at..end].to_vec();
                frame.splice(end..end, copy);
            }
            // Overwrite with 8 random bytes (a u64 varint payload's worth).
            7 if len > 0 => {
                let at = rng.random_range(0..len);
                for b in frame.iter_mut().skip(at).take(8) {
                    *b = rng.random();
                }
            }
            // Set a byte to 0xFD and the 8 after it to a huge length.
            8 if len > keep => {
                let at = rng.random_range(keep..len);
                frame[at] = 253;
                let huge = rng.random_range(1u64 << 20..=u64::MAX).to_le_bytes();
                frame.splice(at + 1..(at + 1).min(frame.len()), huge);
            }
            _ => {}
        }
    }
}

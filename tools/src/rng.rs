//! A tiny pseudo-random generator: xorshift64* (Vigna, 2016). Good enough for
//! test data and dice rolls, and small enough to re-implement in a test.
//!
//! The exact generator, so that tests can reproduce `randbytes N SEED`:
//!
//! ```text
//! state = SEED, or 0x9E3779B97F4A7C15 when SEED is 0 (xorshift is stuck at 0)
//! next():
//!     state ^= state >> 12
//!     state ^= state << 25        (shifts and the product wrap at 64 bits)
//!     state ^= state >> 27
//!     return state * 0x2545F4914F6CDD1D
//! ```
//!
//! The byte stream is each `next()` output in little-endian order, one after
//! the other; the last output is cut short when N is not a multiple of 8.
//! For SEED 1 the first output is 0x47E4CE4B896CDD1D, so the stream starts
//! `1d dd 6c 89 4b ce e4 47`.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Replaces a zero seed, which would make xorshift output zeros forever.
pub const ZERO_SEED_REPLACEMENT: u64 = 0x9E37_79B9_7F4A_7C15;
const MULTIPLIER: u64 = 0x2545_F491_4F6C_DD1D;

pub struct XorShift64Star {
    state: u64,
}

impl XorShift64Star {
    pub fn new(seed: u64) -> Self {
        let state = if seed == 0 {
            ZERO_SEED_REPLACEMENT
        } else {
            seed
        };
        XorShift64Star { state }
    }

    /// Seeded from the kernel's entropy, or from the clock and pid where
    /// /dev/urandom is missing (a FROM-scratch container has no /dev/urandom
    /// unless the engine provides one; Docker does).
    pub fn from_entropy() -> Self {
        let mut bytes = [0u8; 8];
        let seed =
            match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
                Ok(()) => u64::from_le_bytes(bytes),
                Err(_) => {
                    let nanos = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    nanos ^ (u64::from(std::process::id()) << 32)
                }
            };
        Self::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(MULTIPLIER)
    }

    /// Fills `buf` with the byte stream described in the module docs. Call it
    /// with lengths that are multiples of 8 to continue the same stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&bytes[..rest.len()]);
        }
    }

    /// A uniformly distributed integer in `0..span`, or any u64 when `span`
    /// is 0 (meaning 2^64). Rejection sampling, so no value is favoured.
    pub fn below(&mut self, span: u64) -> u64 {
        if span == 0 {
            return self.next_u64();
        }
        // The largest multiple of `span` that fits; draws above it are redrawn.
        let zone = u64::MAX - (u64::MAX % span + 1) % span;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % span;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_one_matches_the_documented_stream() {
        let mut rng = XorShift64Star::new(1);
        assert_eq!(rng.next_u64(), 0x47E4_CE4B_896C_DD1D);
        let mut buf = [0u8; 8];
        XorShift64Star::new(1).fill(&mut buf);
        assert_eq!(buf, [0x1d, 0xdd, 0x6c, 0x89, 0x4b, 0xce, 0xe4, 0x47]);
    }

    #[test]
    fn same_seed_same_stream_and_chunking_does_not_matter() {
        let mut whole = vec![0u8; 1000];
        XorShift64Star::new(42).fill(&mut whole);
        let mut rng = XorShift64Star::new(42);
        let mut pieces = vec![0u8; 1000];
        for chunk in pieces.chunks_mut(64) {
            rng.fill(chunk);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        XorShift64Star::new(43).fill(&mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn zero_seed_is_replaced() {
        let mut a = XorShift64Star::new(0);
        let mut b = XorShift64Star::new(ZERO_SEED_REPLACEMENT);
        assert_ne!(a.next_u64(), 0);
        let mut a2 = XorShift64Star::new(0);
        assert_eq!(a2.next_u64(), b.next_u64());
        let _ = a.next_u64();
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = XorShift64Star::new(7);
        let mut seen = [false; 6];
        for _ in 0..1000 {
            let x = rng.below(6);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(1), 0);
    }
}

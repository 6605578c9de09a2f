//! Primality: a deterministic Miller-Rabin test for any u64, and a segmented
//! sieve of Eratosthenes that enumerates primes in constant memory.

/// The largest N `primes` accepts: enumerating past it takes minutes.
pub const MAX_SIEVE: u64 = 10_000_000_000;

/// Odd numbers per sieve segment: 256 KiB of flags, about an L2 cache.
const SEGMENT: usize = 1 << 18;

/// Is `n` prime? Exact for every u64.
pub fn is_prime(n: u64) -> bool {
    const SMALL: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in SMALL {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    // n - 1 = d * 2^s with d odd.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    // These twelve bases decide every n < 3.3 * 10^24 (Sorenson & Webster).
    'bases: for a in SMALL {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    (u128::from(a) * u128::from(b) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut result = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    result
}

/// Calls `each` with every prime `<= n`, in increasing order. The caller keeps
/// `n <= MAX_SIEVE`; memory stays O(sqrt n) whatever `n` is.
pub fn for_each_prime(n: u64, mut each: impl FnMut(u64)) {
    if n < 2 {
        return;
    }
    each(2);
    let root = n.isqrt();
    // Odd base primes up to sqrt(n), from a plain sieve over odd numbers.
    let small_len = (root / 2 + 1) as usize; // index i stands for 2i+1
    let mut small = vec![true; small_len];
    let mut base = Vec::new();
    for i in 1..small_len {
        if small[i] {
            let p = 2 * i as u64 + 1;
            base.push(p);
            let mut j = (p * p / 2) as usize;
            while j < small_len {
                small[j] = false;
                j += p as usize;
            }
        }
    }
    // Segments over odd numbers: slot k of a segment stands for low + 2k.
    let mut flags = vec![true; SEGMENT];
    let mut low = 3u64;
    while low <= n {
        let high = n.min(low + 2 * (SEGMENT as u64 - 1)); // inclusive, odd or n
        let len = ((high - low) / 2 + 1) as usize;
        flags[..len].fill(true);
        for &p in &base {
            if p * p > high {
                break;
            }
            // First odd multiple of p that is >= max(p*p, low).
            let mut m = (p * p).max(low.div_ceil(p) * p);
            if m % 2 == 0 {
                m += p;
            }
            let mut k = ((m - low) / 2) as usize;
            while k < len {
                flags[k] = false;
                k += p as usize;
            }
        }
        for (k, &prime) in flags[..len].iter().enumerate() {
            if prime {
                each(low + 2 * k as u64);
            }
        }
        low += 2 * SEGMENT as u64;
    }
}

/// π(n): how many primes are `<= n`.
pub fn count_primes(n: u64) -> u64 {
    let mut count = 0;
    for_each_prime(n, |_| count += 1);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(n: u64) -> bool {
        n >= 2
            && (2..n)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn is_prime_agrees_with_trial_division() {
        for n in 0..5000 {
            assert_eq!(is_prime(n), naive(n), "{n}");
        }
    }

    #[test]
    fn is_prime_handles_large_and_tricky_numbers() {
        assert!(is_prime(18_446_744_073_709_551_557)); // largest u64 prime
        assert!(!is_prime(u64::MAX));
        assert!(!is_prime(3_215_031_751)); // strong pseudoprime to bases 2, 3, 5, 7
        assert!(!is_prime(3_825_123_056_546_413_051)); // ... to bases 2..=23
        assert!(is_prime(1_000_000_007));
    }

    #[test]
    fn sieve_lists_primes_in_order() {
        let mut v = Vec::new();
        for_each_prime(30, |p| v.push(p));
        assert_eq!(v, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        let mut w = Vec::new();
        for_each_prime(2, |p| w.push(p));
        assert_eq!(w, [2]);
        assert_eq!(count_primes(1), 0);
        assert_eq!(count_primes(0), 0);
    }

    #[test]
    fn sieve_matches_known_counts_across_segment_edges() {
        assert_eq!(count_primes(100), 25);
        assert_eq!(count_primes(1_000_000), 78_498);
        assert_eq!(count_primes(10_000_000), 664_579);
        // Several segments, with n on and around a segment boundary.
        let edge = 3 + 2 * SEGMENT as u64;
        for n in [edge - 2, edge - 1, edge, edge + 1] {
            let mut expect = 0;
            for_each_prime(n, |p| {
                assert!(p <= n);
                expect += 1;
            });
            let brute = (0..=n).filter(|&k| is_prime(k)).count();
            assert_eq!(expect, brute as u64, "n = {n}");
        }
    }
}

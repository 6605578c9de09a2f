//! π to many decimal places with Machin's formula,
//! `π = 16·atan(1/5) − 4·atan(1/239)`, in fixed-point arithmetic on a
//! hand-rolled big number: only division by a small integer, addition and
//! subtraction are needed, so no bignum crate.

/// The most digits `pi` computes; more takes seconds and is no better a demo.
pub const MAX_DIGITS: usize = 10_000;

/// Each limb holds nine decimal digits.
const BASE: u64 = 1_000_000_000;
const LIMB_DIGITS: usize = 9;
/// Extra limbs beyond the requested digits absorb the truncation error of the
/// series (one unit in the last place per term, some 10^4 terms at most).
const GUARD_LIMBS: usize = 2;

/// A non-negative fixed-point number: `limbs[0]` is the integer part,
/// `limbs[1..]` the fraction in base 10^9, most significant first.
#[derive(Clone)]
struct Fixed {
    limbs: Vec<u64>,
}

impl Fixed {
    fn from_int(value: u64, frac_limbs: usize) -> Fixed {
        let mut limbs = vec![0; frac_limbs + 1];
        limbs[0] = value;
        Fixed { limbs }
    }

    /// `self /= d` (truncating). Returns the index of the first non-zero limb
    /// (or `len` when zero), so callers can skip the leading zeros next time.
    fn div_small(&mut self, d: u64, start: usize) -> usize {
        let mut rem = 0u64;
        for limb in &mut self.limbs[start..] {
            // rem < d <= 2^32, so rem * BASE + limb fits in u64.
            let cur = rem * BASE + *limb;
            *limb = cur / d;
            rem = cur % d;
        }
        self.limbs[start..]
            .iter()
            .position(|&l| l != 0)
            .map_or(self.limbs.len(), |i| start + i)
    }

    /// `self = other / d`, reusing `self`'s buffer, from limb `start` on
    /// (everything before `start` is zero in `other`).
    fn set_div(&mut self, other: &Fixed, d: u64, start: usize) {
        self.limbs[..start].fill(0);
        let mut rem = 0u64;
        for (out, &limb) in self.limbs[start..].iter_mut().zip(&other.limbs[start..]) {
            let cur = rem * BASE + limb;
            *out = cur / d;
            rem = cur % d;
        }
    }

    fn add(&mut self, other: &Fixed, start: usize) {
        let mut carry = 0;
        for i in (start..self.limbs.len()).rev() {
            let sum = self.limbs[i] + other.limbs[i] + carry;
            self.limbs[i] = sum % BASE;
            carry = sum / BASE;
        }
        for i in (0..start).rev() {
            if carry == 0 {
                break;
            }
            let sum = self.limbs[i] + carry;
            self.limbs[i] = sum % BASE;
            carry = sum / BASE;
        }
    }

    /// `self -= other`; the caller guarantees `self >= other`.
    fn sub(&mut self, other: &Fixed, start: usize) {
        let mut borrow = 0;
        for i in (start..self.limbs.len()).rev() {
            let sub = other.limbs[i] + borrow;
            if self.limbs[i] >= sub {
                self.limbs[i] -= sub;
                borrow = 0;
            } else {
                self.limbs[i] = self.limbs[i] + BASE - sub;
                borrow = 1;
            }
        }
        for i in (0..start).rev() {
            if borrow == 0 {
                break;
            }
            if self.limbs[i] >= 1 {
                self.limbs[i] -= 1;
                borrow = 0;
            } else {
                self.limbs[i] = BASE - 1;
            }
        }
    }

    fn mul_small(&mut self, m: u64) {
        let mut carry = 0;
        for limb in self.limbs.iter_mut().rev() {
            let prod = *limb * m + carry;
            *limb = prod % BASE;
            carry = prod / BASE;
        }
        // Integer parts here stay far below BASE (π·16 < 10^9).
        self.limbs[0] += carry * BASE;
    }
}

/// atan(1/x) = Σ (−1)^k / ((2k+1)·x^(2k+1)), summed until the terms vanish.
fn atan_inv(x: u64, frac_limbs: usize) -> Fixed {
    let x2 = x * x;
    let mut power = Fixed::from_int(1, frac_limbs);
    let mut start = power.div_small(x, 0); // 1/x
    let mut sum = power.clone();
    let mut term = Fixed::from_int(0, frac_limbs);
    let mut k = 1u64;
    loop {
        start = power.div_small(x2, start); // 1/x^(2k+1)
        if start == power.limbs.len() {
            return sum;
        }
        term.set_div(&power, 2 * k + 1, start);
        if k % 2 == 1 {
            sum.sub(&term, start);
        } else {
            sum.add(&term, start);
        }
        k += 1;
    }
}

/// π truncated (not rounded) to `digits` decimal places, as `3.14159…`, so
/// that every answer is a prefix of the longer ones. `digits == 0` gives `3`.
/// The caller keeps `digits <= MAX_DIGITS`.
pub fn pi_digits(digits: usize) -> String {
    let frac_limbs = digits.div_ceil(LIMB_DIGITS) + GUARD_LIMBS;
    let mut pi = atan_inv(5, frac_limbs);
    pi.mul_small(4);
    let mut b = atan_inv(239, frac_limbs);
    pi.sub(&b, 0); // 4·atan(1/5) − atan(1/239) = π/4
    pi.mul_small(4);
    b.limbs.clear();

    let mut out = String::with_capacity(digits + 2);
    out.push_str(&pi.limbs[0].to_string());
    if digits > 0 {
        out.push('.');
        let mut frac = String::with_capacity(frac_limbs * LIMB_DIGITS);
        for limb in &pi.limbs[1..] {
            frac.push_str(&format!("{limb:09}"));
        }
        out.push_str(&frac[..digits]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI_100: &str = "3.1415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679";

    #[test]
    fn hundred_digits_match_the_known_value() {
        assert_eq!(pi_digits(100), PI_100);
    }

    #[test]
    fn short_answers_are_truncated_prefixes() {
        assert_eq!(pi_digits(0), "3");
        assert_eq!(pi_digits(1), "3.1");
        assert_eq!(pi_digits(4), "3.1415"); // truncated, not rounded to 3.1416
        for n in 0..=100 {
            assert_eq!(pi_digits(n), PI_100[..if n == 0 { 1 } else { n + 2 }]);
        }
    }

    #[test]
    fn thousand_digits_end_as_published() {
        // The 991st to 1000th decimals of π are 2164201989.
        let pi = pi_digits(1000);
        assert_eq!(pi.len(), 1002);
        assert!(pi.ends_with("2164201989"), "{}", &pi[990..]);
    }
}

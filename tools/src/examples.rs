//! The example tasks: the programs behind tcp-task's pre-compiled catalog.
//!
//! Each prints its result on stdout as one line (`primes N` prints one prime
//! per line, `grayscale` writes a PNG). Bad input is reported on stderr with a
//! usage line and exit code 2.
//!
//! | applet              | prints                                              |
//! |---------------------|-----------------------------------------------------|
//! | `sum N...`          | the sum                                             |
//! | `multiply N...`     | the product                                         |
//! | `random LO HI`      | a uniformly random integer in `[LO, HI]` (i64)      |
//! | `isprime N`         | `true` or `false`                                   |
//! | `primes [--count] N`| the primes `<= N`, one per line, or only their count (N <= 10^10) |
//! | `pi DIGITS`         | π truncated to DIGITS decimals, `3.14159…` (DIGITS <= 10000) |
//! | `grayscale`         | stdin PNG → stdout 8-bit grayscale PNG (alpha kept) |
//!
//! Numbers for `sum` and `multiply`: when every number is an integer the
//! arithmetic is exact in i128 (overflow is an error); when any has a decimal
//! point (or an exponent) all are f64. Results print without a trailing `.0`:
//! `sum 1.5 2.5` prints `4`, `sum 0.1 0.2` prints `0.30000000000000004`.
//!
//! # Parameters as JSON
//!
//! A task can also be given its inputs in the environment variable
//! `TASK_PARAMS`, as a JSON object; it is read only when no arguments were
//! given (arguments win). Numbers may be JSON numbers or strings:
//!
//! | applet             | `TASK_PARAMS`                         | same as          |
//! |--------------------|---------------------------------------|------------------|
//! | `sum`, `multiply`  | `{"numbers":[1,2,3]}`                 | `sum 1 2 3`      |
//! | `random`           | `{"lo":1,"hi":6}`                     | `random 1 6`     |
//! | `isprime`          | `{"n":97}`                            | `isprime 97`     |
//! | `primes`           | `{"n":97}`, or `{"n":97,"count":true}`| `primes --count 97` |
//! | `pi`               | `{"digits":50}`                       | `pi 50`          |
//!
//! Invalid JSON, a missing field, or a field of the wrong type is a usage
//! error (exit 2) that names the field and shows the expected shape.

use crate::cli::{expect_args, parse, print_line, raw_stdin, raw_stdout, Fail};
use crate::rng::XorShift64Star;
use crate::{grayscale as gray, pi as pi_mod, primes as primes_mod};
use serde_json::Value;
use std::fmt;
use std::io::{BufWriter, Read, Write};

/// The environment variable holding a task's JSON parameters.
pub const PARAMS_VAR: &str = "TASK_PARAMS";

pub fn sum(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(args, &["numbers"], &[], r#"{"numbers":[1,2,3]}"#)?;
    print_line(Numbers::parse(&inputs)?.sum()?)
}

pub fn multiply(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(args, &["numbers"], &[], r#"{"numbers":[1,2,3]}"#)?;
    print_line(Numbers::parse(&inputs)?.product()?)
}

pub fn random(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(args, &["lo", "hi"], &[], r#"{"lo":1,"hi":6}"#)?;
    expect_args(&inputs, 2)?;
    let lo: i64 = parse("LO", &inputs[0])?;
    let hi: i64 = parse("HI", &inputs[1])?;
    if lo > hi {
        return Err(Fail::usage(format!(
            "LO ({lo}) must not be greater than HI ({hi})"
        )));
    }
    print_line(random_in(&mut XorShift64Star::from_entropy(), lo, hi))
}

/// A uniform draw from `[lo, hi]`; the span can be all of i64 (2^64 values).
fn random_in(rng: &mut XorShift64Star, lo: i64, hi: i64) -> i64 {
    // The span as u64, where 0 stands for 2^64 (lo = i64::MIN, hi = i64::MAX).
    let span = (hi as i128 - lo as i128 + 1) as u64;
    (lo as i128 + rng.below(span) as i128) as i64
}

pub fn isprime(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(args, &["n"], &[], r#"{"n":97}"#)?;
    expect_args(&inputs, 1)?;
    let n: i128 = parse("N", &inputs[0])?;
    // Primes are natural numbers: zero and negatives are simply not prime.
    let prime = match u64::try_from(n) {
        Ok(n) => primes_mod::is_prime(n),
        Err(_) if n < 0 => false,
        Err(_) => return Err(Fail::usage(format!("N must be at most {}", u64::MAX))),
    };
    print_line(prime)
}

pub fn primes(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(
        args,
        &["n"],
        &[("count", "--count")],
        r#"{"n":97} or {"n":97,"count":true}"#,
    )?;
    let (count, n) = match inputs.as_slice() {
        [flag, n] if flag == "--count" => (true, n),
        [n] => (false, n),
        _ => return Err(Fail::usage("expected N or --count N")),
    };
    let n: u64 = parse("N", n)?;
    if n > primes_mod::MAX_SIEVE {
        return Err(Fail::usage(format!(
            "N must be at most {} (10^10); use isprime to test a single large number",
            primes_mod::MAX_SIEVE
        )));
    }
    if count {
        return print_line(primes_mod::count_primes(n));
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut result = Ok(());
    primes_mod::for_each_prime(n, |p| {
        if result.is_ok() {
            result = writeln!(out, "{p}");
        }
    });
    result
        .and_then(|()| out.flush())
        .map_err(|e| Fail::io("cannot write to stdout", e))
}

pub fn pi(args: &[String]) -> Result<(), Fail> {
    let inputs = inputs(args, &["digits"], &[], r#"{"digits":50}"#)?;
    expect_args(&inputs, 1)?;
    let digits: usize = parse("DIGITS", &inputs[0])?;
    if digits > pi_mod::MAX_DIGITS {
        return Err(Fail::usage(format!(
            "DIGITS must be at most {} (got {digits})",
            pi_mod::MAX_DIGITS
        )));
    }
    print_line(pi_mod::pi_digits(digits))
}

pub fn grayscale(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let mut input = Vec::new();
    raw_stdin()?
        .read_to_end(&mut input)
        .map_err(|e| Fail::io("cannot read stdin", e))?;
    if input.is_empty() {
        return Err(Fail::usage("no PNG on stdin"));
    }
    let output = gray::to_grayscale(&input).map_err(Fail::usage)?;
    raw_stdout()?
        .write_all(&output)
        .map_err(|e| Fail::io("cannot write to stdout", e))
}

/// The applet's positional inputs: `args` when any were given, otherwise the
/// values of `keys` in the `TASK_PARAMS` JSON object (arrays flattened),
/// preceded by the flag of each `(field, flag)` in `flags` whose field is true.
type Flags<'a> = &'a [(&'a str, &'a str)];

fn inputs(
    args: &[String],
    keys: &[&str],
    flags: Flags,
    example: &str,
) -> Result<Vec<String>, Fail> {
    if !args.is_empty() {
        return Ok(args.to_vec());
    }
    let raw = match std::env::var(PARAMS_VAR) {
        Ok(raw) if !raw.trim().is_empty() => raw,
        _ => {
            return Err(Fail::usage(format!(
                "no arguments given (pass them as arguments, or as JSON in {PARAMS_VAR}, e.g. {PARAMS_VAR}='{example}')"
            )))
        }
    };
    inputs_from_json(&raw, keys, flags, example)
}

fn inputs_from_json(
    raw: &str,
    keys: &[&str],
    flags: Flags,
    example: &str,
) -> Result<Vec<String>, Fail> {
    let json: Value = serde_json::from_str(raw).map_err(|e| {
        Fail::usage(format!(
            "{PARAMS_VAR} is not valid JSON ({e}); expected e.g. {example}"
        ))
    })?;
    let Value::Object(map) = &json else {
        return Err(Fail::usage(format!(
            "{PARAMS_VAR} must be a JSON object like {example}"
        )));
    };
    let mut out = Vec::new();
    for (field, flag) in flags {
        match map.get(*field) {
            None | Some(Value::Bool(false)) | Some(Value::Null) => {}
            Some(Value::Bool(true)) => out.push(flag.to_string()),
            Some(other) => {
                return Err(Fail::usage(format!(
                    "{PARAMS_VAR} field {field:?} must be true or false, not {other}"
                )))
            }
        }
    }
    for key in keys {
        let value = map.get(*key).ok_or_else(|| {
            Fail::usage(format!(
                "{PARAMS_VAR} has no field {key:?}; expected e.g. {example}"
            ))
        })?;
        match value {
            Value::Array(items) => {
                for item in items {
                    out.push(scalar(key, item, example)?);
                }
            }
            other => out.push(scalar(key, other, example)?),
        }
    }
    Ok(out)
}

fn scalar(key: &str, value: &Value, example: &str) -> Result<String, Fail> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s.clone()),
        other => Err(Fail::usage(format!(
            "{PARAMS_VAR} field {key:?} holds {other}, not a number; expected e.g. {example}"
        ))),
    }
}

/// The numbers of `sum` and `multiply`: exact integers, or floating point as
/// soon as one of them is not an integer.
#[derive(Debug, PartialEq)]
enum Numbers {
    Ints(Vec<i128>),
    Floats(Vec<f64>),
}

/// The sum (`multiply`: false) or product (true) of `numbers`, as `sum` and
/// `multiply` print it; `Err` is the message of a usage error. The HTTP
/// example server answers with it.
pub fn arithmetic(numbers: &[String], multiply: bool) -> Result<String, String> {
    let parsed = Numbers::parse(numbers);
    let total = parsed.and_then(|n| if multiply { n.product() } else { n.sum() });
    match total {
        Ok(total) => Ok(total.to_string()),
        Err(Fail::Usage(message) | Fail::Exit(_, message)) => Err(message),
    }
}

/// A result, printed without a trailing `.0` for whole floats.
#[derive(Debug, PartialEq)]
enum Total {
    Int(i128),
    Float(f64),
}

impl fmt::Display for Total {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Total::Int(i) => write!(f, "{i}"),
            // f64's Display already omits ".0" and never uses exponents; map
            // -0 to 0 so that `sum -0.5 0.5` does not print "-0".
            Total::Float(x) if *x == 0.0 => write!(f, "0"),
            Total::Float(x) => write!(f, "{x}"),
        }
    }
}

impl Numbers {
    fn parse(texts: &[String]) -> Result<Numbers, Fail> {
        if texts.is_empty() {
            return Err(Fail::usage("no numbers given"));
        }
        if let Ok(ints) = texts.iter().map(|t| t.trim().parse::<i128>()).collect() {
            return Ok(Numbers::Ints(ints));
        }
        let mut floats = Vec::with_capacity(texts.len());
        for text in texts {
            match text.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => floats.push(x),
                _ => return Err(Fail::usage(format!("{text:?} is not a number"))),
            }
        }
        Ok(Numbers::Floats(floats))
    }

    fn sum(&self) -> Result<Total, Fail> {
        match self {
            Numbers::Ints(v) => v
                .iter()
                .try_fold(0i128, |acc, &x| acc.checked_add(x))
                .map(Total::Int)
                .ok_or_else(|| overflow("sum")),
            Numbers::Floats(v) => finite(v.iter().sum(), "sum"),
        }
    }

    fn product(&self) -> Result<Total, Fail> {
        match self {
            Numbers::Ints(v) => v
                .iter()
                .try_fold(1i128, |acc, &x| acc.checked_mul(x))
                .map(Total::Int)
                .ok_or_else(|| overflow("product")),
            Numbers::Floats(v) => finite(v.iter().product(), "product"),
        }
    }
}

fn overflow(what: &str) -> Fail {
    Fail::usage(format!(
        "the {what} overflows a 128-bit integer; write the numbers with a decimal point (e.g. 1.0) to use floating point"
    ))
}

fn finite(x: f64, what: &str) -> Result<Total, Fail> {
    if x.is_finite() {
        Ok(Total::Float(x))
    } else {
        Err(Fail::usage(format!(
            "the {what} is too large for a 64-bit float"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn sum_of(v: &[&str]) -> String {
        Numbers::parse(&strings(v))
            .unwrap()
            .sum()
            .unwrap()
            .to_string()
    }

    fn product_of(v: &[&str]) -> String {
        Numbers::parse(&strings(v))
            .unwrap()
            .product()
            .unwrap()
            .to_string()
    }

    #[test]
    fn integers_stay_exact() {
        assert_eq!(sum_of(&["1", "2", "3"]), "6");
        assert_eq!(sum_of(&["-5", "+2"]), "-3");
        assert_eq!(product_of(&["2", "3", "7"]), "42");
        // Beyond f64's 53-bit mantissa, still exact.
        assert_eq!(sum_of(&["9007199254740993", "1"]), "9007199254740994");
        assert_eq!(
            product_of(&["4294967296", "4294967296"]),
            "18446744073709551616"
        );
    }

    #[test]
    fn decimals_switch_to_floats_and_print_without_dot_zero() {
        assert_eq!(
            Numbers::parse(&strings(&["1", "2.5"])).unwrap(),
            Numbers::Floats(vec![1.0, 2.5])
        );
        assert_eq!(sum_of(&["1.5", "2.5"]), "4");
        assert_eq!(sum_of(&["1", "2.5"]), "3.5");
        assert_eq!(product_of(&["0.5", "3"]), "1.5");
        assert_eq!(sum_of(&["-0.5", "0.5"]), "0");
        assert_eq!(sum_of(&["1e3", "1"]), "1001");
    }

    #[test]
    fn bad_numbers_are_usage_errors() {
        for bad in [
            &[][..],
            &["x"],
            &["1", "two"],
            &["inf"],
            &["NaN"],
            &["1..2"],
        ] {
            assert!(
                matches!(Numbers::parse(&strings(bad)), Err(Fail::Usage(_))),
                "{bad:?}"
            );
        }
        let huge =
            Numbers::parse(&strings(&["170141183460469231731687303715884105727", "1"])).unwrap();
        assert!(matches!(huge.sum(), Err(Fail::Usage(_))));
        let big = Numbers::parse(&strings(&["1e308", "10.0"])).unwrap();
        assert!(matches!(big.product(), Err(Fail::Usage(_))));
    }

    #[test]
    fn json_params_become_arguments() {
        let nums = inputs_from_json(r#"{"numbers":[1,2.5,"3"]}"#, &["numbers"], &[], "").unwrap();
        assert_eq!(nums, ["1", "2.5", "3"]);
        let range = inputs_from_json(r#"{"hi":6,"lo":1}"#, &["lo", "hi"], &[], "").unwrap();
        assert_eq!(range, ["1", "6"]);
        let primes = inputs_from_json(
            r#"{"n":97,"count":true}"#,
            &["n"],
            &[("count", "--count")],
            "",
        )
        .unwrap();
        assert_eq!(primes, ["--count", "97"]);
        // A whole JSON float keeps its decimal point, so sum uses floats.
        assert_eq!(
            inputs_from_json(r#"{"numbers":[1.0]}"#, &["numbers"], &[], "").unwrap(),
            ["1.0"]
        );
    }

    #[test]
    fn bad_json_params_are_usage_errors() {
        for bad in [
            "{",
            "[1,2]",
            r#"{"nums":[1]}"#,
            r#"{"numbers":[true]}"#,
            r#"{"numbers":{"a":1}}"#,
        ] {
            assert!(
                matches!(
                    inputs_from_json(bad, &["numbers"], &[], ""),
                    Err(Fail::Usage(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn random_covers_the_range_including_extremes() {
        let mut rng = XorShift64Star::new(3);
        let mut seen = [false; 6];
        for _ in 0..600 {
            let x = random_in(&mut rng, 1, 6);
            assert!((1..=6).contains(&x));
            seen[(x - 1) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(random_in(&mut rng, 5, 5), 5);
        let _ = random_in(&mut rng, i64::MIN, i64::MAX); // full span: no overflow
        assert!(random_in(&mut rng, i64::MIN, i64::MIN + 1) <= i64::MIN + 1);
    }
}

//! What every applet shares: the table entry, the error type, argument and
//! output helpers.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::str::FromStr;

/// An applet's entry point: gets its arguments (without the applet name).
pub type Run = fn(&[String]) -> Result<(), Fail>;

/// One row of the applet table in `main.rs`.
pub struct Applet {
    pub name: &'static str,
    pub run: Run,
    /// The argument synopsis shown in usage messages.
    pub args: &'static str,
    /// One line for the applet listing.
    pub about: &'static str,
    /// Left out of `--list` and the listing (internal applets).
    pub hidden: bool,
}

impl Applet {
    pub const fn new(
        name: &'static str,
        run: Run,
        args: &'static str,
        about: &'static str,
    ) -> Self {
        Applet {
            name,
            run,
            args,
            about,
            hidden: false,
        }
    }

    pub const fn hidden(mut self) -> Self {
        self.hidden = true;
        self
    }
}

/// How an applet ends when it does not succeed.
#[derive(Debug, PartialEq)]
pub enum Fail {
    /// Bad arguments: `main` prints the message and the usage line, exit 2.
    Usage(String),
    /// Exit with this code; the message (if not empty) goes to stderr.
    Exit(i32, String),
}

impl Fail {
    pub fn usage(msg: impl Display) -> Fail {
        Fail::Usage(msg.to_string())
    }

    /// Exit with `code` without printing anything more.
    pub fn quiet(code: i32) -> Fail {
        Fail::Exit(code, String::new())
    }

    pub fn io(what: &str, err: io::Error) -> Fail {
        Fail::Exit(1, format!("{what}: {err}"))
    }
}

/// Checks the argument count, so that extra or missing arguments are usage
/// errors rather than silently ignored.
pub fn expect_args(args: &[String], n: usize) -> Result<(), Fail> {
    match args.len().cmp(&n) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Fail::usage(format!(
            "expected {n} argument(s), got {}",
            args.len()
        ))),
        std::cmp::Ordering::Greater => {
            Err(Fail::usage(format!("unexpected argument {:?}", args[n])))
        }
    }
}

/// Parses one argument, naming it in the error.
pub fn parse<T: FromStr>(name: &str, value: &str) -> Result<T, Fail>
where
    T::Err: Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| Fail::usage(format!("{name} {value:?} is not valid: {e}")))
}

/// Prints one line to stdout and flushes it, reporting (not panicking on) a
/// closed or failing stdout.
pub fn print_line(line: impl Display) -> Result<(), Fail> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Fail::io("cannot write to stdout", e))
}

/// Prints one line to stderr and flushes it.
pub fn eprint_line(line: impl Display) -> Result<(), Fail> {
    let mut err = io::stderr().lock();
    writeln!(err, "{line}")
        .and_then(|()| err.flush())
        .map_err(|e| Fail::io("cannot write to stderr", e))
}

/// Stdout as an unbuffered `File` (a dup of fd 1). Bulk writers use it so
/// that each `write` is one syscall of exactly the size they chose, with no
/// line buffering in between.
pub fn raw_stdout() -> Result<File, Fail> {
    io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Fail::io("cannot use stdout", e))
}

/// Stdin as an unbuffered `File` (a dup of fd 0).
pub fn raw_stdin() -> Result<File, Fail> {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Fail::io("cannot use stdin", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argument_count_is_checked() {
        assert!(expect_args(&strings(&["1"]), 1).is_ok());
        assert!(matches!(expect_args(&strings(&[]), 1), Err(Fail::Usage(_))));
        assert!(matches!(
            expect_args(&strings(&["1", "2"]), 1),
            Err(Fail::Usage(_))
        ));
    }

    #[test]
    fn parse_reports_the_argument() {
        assert_eq!(parse::<u64>("N", " 42 "), Ok(42));
        let Err(Fail::Usage(msg)) = parse::<u64>("N", "x") else {
            panic!("expected a usage error");
        };
        assert!(msg.contains("N \"x\""), "{msg}");
    }
}

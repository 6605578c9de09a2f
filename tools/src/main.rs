//! `tcp-task-tools`: one static multi-call binary that tcp-task packs into its
//! images (FROM scratch, so there is no shell and no libc to lean on).
//!
//! Like busybox, the applet to run is the basename of `argv[0]` (the image has
//! `/bin/sum -> tcp-task-tools`, so `sum 1 2` works), or, when invoked as
//! `tcp-task-tools`, the first argument (`tcp-task-tools sum 1 2`).
//! `tcp-task-tools --list` prints the applet names, one per line: the library
//! reads it at build time to make those symlinks.
//!
//! Exit codes shared by every applet: 0 success, 2 bad arguments (with a usage
//! line on stderr), 127 unknown applet; the rest is up to each applet.

mod agent;
// Shared with the server, which uses the other direction's half.
#[allow(dead_code)]
mod agent_proto;
mod cli;
mod examples;
mod grayscale;
mod http_tasks;
mod leftovers;
mod measure;
mod pi;
mod primes;
mod relay;
mod reset;
mod rng;
mod signal_names;
mod sys;
mod testing;

use cli::{Applet, Fail};
use std::ffi::OsString;
use std::path::Path;

/// Every applet. Adding one is one line here plus its function.
const APPLETS: &[Applet] = &[
    // Example tasks: the pre-compiled catalog's programs.
    Applet::new("sum", examples::sum, "N...", "print the sum of the numbers"),
    Applet::new(
        "multiply",
        examples::multiply,
        "N...",
        "print the product of the numbers",
    ),
    Applet::new(
        "random",
        examples::random,
        "LO HI",
        "print a random integer in [LO, HI]",
    ),
    Applet::new(
        "isprime",
        examples::isprime,
        "N",
        "print true if N is prime, else false",
    ),
    Applet::new(
        "primes",
        examples::primes,
        "[--count] N",
        "print the primes <= N (or their count)",
    ),
    Applet::new(
        "pi",
        examples::pi,
        "DIGITS",
        "print pi to DIGITS decimal places (max 10000)",
    ),
    Applet::new(
        "grayscale",
        examples::grayscale,
        "< in.png > out.png",
        "convert a PNG to grayscale",
    ),
    Applet::new(
        "http-tasks",
        http_tasks::run,
        "[PORT] [--delay-ms N]",
        "the sum and multiply tasks as an HTTP server (POST /task/NAME)",
    ),
    // Test helpers: small, predictable behaviours for tests and benchmarks.
    Applet::new("true", testing::true_, "", "exit 0"),
    Applet::new("false", testing::false_, "", "exit 1"),
    Applet::new("exit", testing::exit, "CODE", "exit with CODE (0-255)"),
    Applet::new(
        "echo",
        testing::echo,
        "ARGS...",
        "print the arguments to stdout",
    ),
    Applet::new(
        "echoerr",
        testing::echoerr,
        "ARGS...",
        "print the arguments to stderr",
    ),
    Applet::new(
        "mixed",
        testing::mixed,
        "N",
        "alternate N lines on stdout and stderr",
    ),
    Applet::new(
        "lines",
        testing::lines,
        "N INTERVAL_MS",
        "print N lines, one every INTERVAL_MS",
    ),
    Applet::new(
        "ticks",
        testing::ticks,
        "N INTERVAL_MS CODE",
        "N lines on stdout and stderr, INTERVAL_MS apart, then exit CODE",
    ),
    Applet::new(
        "randbytes",
        testing::randbytes,
        "N SEED",
        "write N pseudo-random bytes",
    ),
    Applet::new("zeros", testing::zeros, "N", "write N zero bytes"),
    Applet::new(
        "leave",
        leftovers::leave,
        "WHAT...",
        "leave files, a process, IPC objects... for the next task (reset tests)",
    ),
    Applet::new(
        "look",
        leftovers::look,
        "",
        "report what a task can see of a previous task's leftovers",
    ),
    Applet::new("cat", testing::cat, "", "copy stdin to stdout, unbuffered"),
    Applet::new(
        "sleep",
        testing::sleep,
        "SECS",
        "sleep SECS seconds (fractions allowed)",
    ),
    Applet::new(
        "killself",
        testing::killself,
        "SIG [DELAY_MS]",
        "send itself signal SIG (number or name), after DELAY_MS",
    ),
    Applet::new("env", testing::env, "", "print the environment, sorted"),
    Applet::new("pwd", testing::pwd, "", "print the current directory"),
    Applet::new("id", testing::id, "", "print uid=U gid=G"),
    Applet::new(
        "forkbomb",
        testing::forkbomb,
        "",
        "spawn copies until fork fails, exit 3",
    ),
    Applet::new(
        "forkbomb-child",
        testing::forkbomb_child,
        "",
        "(internal) a forkbomb copy",
    )
    .hidden(),
    Applet::new(
        "alloc",
        testing::alloc,
        "MB [DELAY_MS]",
        "wait DELAY_MS (at least 1000), then allocate and touch MB MiB",
    ),
    Applet::new("flood", testing::flood, "", "write 'x' to stdout forever"),
    Applet::new(
        "spin",
        testing::spin,
        "MS",
        "burn MS milliseconds of user CPU time",
    ),
    Applet::new(
        "counter",
        testing::counter,
        "N FILE",
        "write N numbered lines; the count so far in FILE",
    ),
    Applet::new(
        "writefile",
        testing::writefile,
        "PATH",
        "try to write a file at PATH",
    ),
    Applet::new(
        "netcheck",
        testing::netcheck,
        "HOST:PORT",
        "try a TCP connection (2 s timeout)",
    ),
    Applet::new(
        "unixcheck",
        testing::unixcheck,
        "PATH N",
        "connect to the Unix socket PATH N times, writing garbage when it connects",
    ),
    Applet::new(
        "ifaces",
        testing::ifaces,
        "",
        "list the network interfaces (from /proc/net/dev)",
    ),
    Applet::new(
        "routes",
        testing::routes,
        "",
        "list the IPv4 routes (from /proc/net/route)",
    ),
    // The warm-container agent, an HTTP task's way to its port, and what
    // measures a cold task.
    Applet::new(
        "measure",
        measure::run,
        "PROGRAM [ARGS...]",
        "run PROGRAM, then report the container's CPU time and peak memory",
    ),
    Applet::new(
        "relay",
        relay::run,
        "PORT",
        "join stdin and stdout to a connection to PORT on loopback",
    ),
    Applet::new(
        "agent",
        agent::run,
        "[--tasks N] [--prefetch PROGRAM]",
        "warm-container agent: runs tasks sent over stdin (PID 1)",
    ),
];

const SELF_NAME: &str = "tcp-task-tools";

fn main() {
    // Rust ignores SIGPIPE; restore the default so that `flood | head` ends
    // the way it would with any Unix tool instead of an error per write.
    sys::default_sigpipe();

    let mut args: Vec<String> = std::env::args_os().map(lossy).collect();
    let argv0 = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    let mut name = basename(&argv0);
    if name == SELF_NAME {
        match args.first().map(String::as_str) {
            None => {
                eprintln!("{SELF_NAME}: no applet given");
                print_usage(&mut std::io::stderr());
                std::process::exit(127);
            }
            Some("--help" | "-h") => {
                print_usage(&mut std::io::stdout());
                return;
            }
            Some("--list") => {
                for applet in APPLETS.iter().filter(|a| !a.hidden) {
                    println!("{}", applet.name);
                }
                return;
            }
            Some(_) => name = args.remove(0),
        }
    }
    let Some(applet) = APPLETS.iter().find(|a| a.name == name) else {
        eprintln!("{SELF_NAME}: unknown applet {name:?}");
        print_usage(&mut std::io::stderr());
        std::process::exit(127);
    };
    let code = match (applet.run)(&args) {
        Ok(()) => 0,
        Err(Fail::Usage(msg)) => {
            eprintln!("{}: {msg}", applet.name);
            eprintln!(
                "usage: {}",
                format!("{} {}", applet.name, applet.args).trim_end()
            );
            2
        }
        Err(Fail::Exit(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("{}: {msg}", applet.name);
            }
            code
        }
    };
    std::process::exit(code);
}

fn lossy(arg: OsString) -> String {
    arg.into_string()
        .unwrap_or_else(|raw| raw.to_string_lossy().into_owned())
}

fn basename(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn print_usage(out: &mut dyn std::io::Write) {
    // Best effort: there is nowhere better to report a failed usage message.
    let _ = writeln!(
        out,
        "usage: {SELF_NAME} APPLET [ARGS...]   (or call it through a symlink named APPLET)\n\
         \x20      {SELF_NAME} --list\n\napplets:"
    );
    for applet in APPLETS.iter().filter(|a| !a.hidden) {
        let _ = writeln!(
            out,
            "  {:<10} {:<20} {}",
            applet.name, applet.args, applet.about
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_names_are_unique_and_symlink_safe() {
        let mut names: Vec<&str> = APPLETS.iter().map(|a| a.name).collect();
        assert!(names
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "duplicate applet name");
        assert!(!names.contains(&SELF_NAME));
    }

    #[test]
    fn basename_takes_the_last_component() {
        assert_eq!(basename("/bin/sum"), "sum");
        assert_eq!(basename("sum"), "sum");
        assert_eq!(basename(""), "");
    }
}

//! Test helpers: small programs with exactly predictable behaviour, for the
//! integration tests and benchmarks (exit codes, output interleaving, large or
//! endless output, signals, resource limits, sandbox checks).
//!
//! | applet                  | behaviour                                                   |
//! |-------------------------|-------------------------------------------------------------|
//! | `true`, `false`         | exit 0 / exit 1 (arguments ignored)                         |
//! | `exit CODE`             | exit with CODE, 0 to 255                                    |
//! | `echo ARGS...`          | the arguments joined by spaces, plus `\n`, on stdout        |
//! | `echoerr ARGS...`       | the same on stderr                                          |
//! | `mixed N`               | `out i\n` on stdout then `err i\n` on stderr, i in 0..N, each flushed |
//! | `lines N INTERVAL_MS`   | `line i\n` for i in 0..N, flushed, INTERVAL_MS apart (no wait before the first or after the last) |
//! | `ticks N INTERVAL_MS CODE` | `out i\n` on stdout and `err i\n` on stderr for i in 0..N, INTERVAL_MS apart, then exit CODE |
//! | `randbytes N SEED`      | N bytes of xorshift64* output (exact generator in `rng.rs`), 64 KiB writes |
//! | `zeros N`               | N zero bytes, 1 MiB writes                                  |
//! | `cat`                   | stdin to stdout until EOF, each read written at once        |
//! | `sleep SECS`            | sleeps; SECS may have a fraction                            |
//! | `killself SIG [DELAY_MS]` | after DELAY_MS (default 0), sends itself SIG (a number, `TERM` or `SIGTERM`) with its default action; if still alive 1 s later, says why on stderr and exits 1 |
//! | `env`                   | `KEY=VALUE` per variable, sorted by key                     |
//! | `pwd`                   | the current directory                                       |
//! | `id`                    | `uid=U gid=G`                                               |
//! | `forkbomb`              | spawns `/proc/self/exe forkbomb-child` until that fails, then prints `fork failed: <err>` on stderr, waits 1 s, exits 3 |
//! | `alloc MB [DELAY_MS]`   | after DELAY_MS (at least 1000), allocates MB MiB, writes every page, prints `allocated MB MiB` |
//! | `flood`                 | 64 KiB blocks of `x` on stdout, forever                     |
//! | `counter N FILE`        | `i` as 15 digits plus `\n` (16 bytes) on stdout for i in 0..N, 256 lines (4 KiB) per write; after each write, FILE holds the lines written so far (20 digits plus `\n`, rewritten in place) |
//! | `writefile PATH`        | creates PATH and writes `tcp-task\n`: prints `wrote PATH`, or the error on stderr and exit 1 |
//! | `netcheck HOST:PORT`    | TCP connect, 2 s timeout: prints `connected` (exit 0) or `no network: <err>` (exit 1), both on stdout |
//! | `unixcheck PATH N`      | N connects to the Unix socket PATH, writing 64 KiB of garbage on each that succeeds; prints `connected C refused R other O` (O: other errors, the last one after it) |
//! | `ifaces`                | the network interfaces the task can see, one per line, sorted (from `/proc/net/dev`; no traffic sent) |

use crate::cli::{eprint_line, expect_args, parse, print_line, raw_stdin, raw_stdout, Fail};
use crate::rng::XorShift64Star;
use crate::sys;
use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn true_(_args: &[String]) -> Result<(), Fail> {
    Ok(())
}

pub fn false_(_args: &[String]) -> Result<(), Fail> {
    Err(Fail::quiet(1))
}

pub fn exit(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let code: u8 = parse("CODE (0-255)", &args[0])?;
    if code == 0 {
        Ok(())
    } else {
        Err(Fail::quiet(i32::from(code)))
    }
}

pub fn echo(args: &[String]) -> Result<(), Fail> {
    print_line(args.join(" "))
}

pub fn echoerr(args: &[String]) -> Result<(), Fail> {
    eprint_line(args.join(" "))
}

pub fn mixed(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let n: u64 = parse("N", &args[0])?;
    for i in 0..n {
        print_line(format_args!("out {i}"))?;
        eprint_line(format_args!("err {i}"))?;
    }
    Ok(())
}

pub fn lines(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 2)?;
    let n: u64 = parse("N", &args[0])?;
    let interval = Duration::from_millis(parse("INTERVAL_MS", &args[1])?);
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(interval);
        }
        print_line(format_args!("line {i}"))?;
    }
    Ok(())
}

pub fn ticks(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 3)?;
    let n: u64 = parse("N", &args[0])?;
    let interval = Duration::from_millis(parse("INTERVAL_MS", &args[1])?);
    let code: u8 = parse("CODE", &args[2])?;
    for i in 0..n {
        if i > 0 {
            std::thread::sleep(interval);
        }
        print_line(format_args!("out {i}"))?;
        eprint_line(format_args!("err {i}"))?;
    }
    std::process::exit(i32::from(code))
}

pub fn randbytes(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 2)?;
    let mut left: u64 = parse("N", &args[0])?;
    let mut rng = XorShift64Star::new(parse("SEED", &args[1])?);
    let mut out = raw_stdout()?;
    // 64 KiB is a multiple of 8, so chunked filling continues one stream.
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let len = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..len]);
        out.write_all(&buf[..len])
            .map_err(|e| Fail::io("cannot write to stdout", e))?;
        left -= len as u64;
    }
    Ok(())
}

pub fn zeros(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let mut left: u64 = parse("N", &args[0])?;
    let mut out = raw_stdout()?;
    let buf = vec![0u8; 1024 * 1024];
    while left > 0 {
        let len = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..len])
            .map_err(|e| Fail::io("cannot write to stdout", e))?;
        left -= len as u64;
    }
    Ok(())
}

pub fn cat(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    // Unbuffered on both sides: whatever one read returns is written before
    // the next read, so `cat` answers an interactive client line by line.
    let (mut input, mut out) = (raw_stdin()?, raw_stdout()?);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::io("cannot read stdin", e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| Fail::io("cannot write to stdout", e))?;
    }
}

pub fn sleep(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let secs: f64 = parse("SECS", &args[0])?;
    let duration = Duration::try_from_secs_f64(secs).map_err(|_| {
        Fail::usage(format!(
            "SECS must be a non-negative number of seconds, not {secs}"
        ))
    })?;
    std::thread::sleep(duration);
    Ok(())
}

/// Burns `MS` milliseconds of CPU time in user mode (measured by the
/// process's own accounting, so a busy machine stretches the wall time,
/// not the CPU time), then prints how much it used.
pub fn spin(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let ms: u64 = parse("MS", &args[0])?;
    let target = ms.saturating_mul(1000);
    let mut x: u64 = 1;
    while sys::own_usage().user_us < target {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    print_line(format_args!("spun {} ms", sys::own_usage().user_us / 1000))
}

/// The optional last argument DELAY_MS of an applet with `n` required
/// ones: how long it waits before it acts.
fn delay_after(args: &[String], n: usize) -> Result<Duration, Fail> {
    match args.get(n) {
        None => expect_args(args, n).map(|()| Duration::ZERO),
        Some(ms) => {
            expect_args(args, n + 1)?;
            Ok(Duration::from_millis(parse("DELAY_MS", ms)?))
        }
    }
}

pub fn killself(args: &[String]) -> Result<(), Fail> {
    let delay = delay_after(args, 1)?;
    let sig = signal_number(&args[0])?;
    std::thread::sleep(delay);
    // std handles SIGSEGV/SIGBUS and ignores SIGPIPE: restore the default
    // action so the signal does what it would to any process. (Fails, harmlessly,
    // for KILL and STOP, whose action cannot be changed.)
    let _ = sys::default_signal(sig);
    sys::send_signal(sys::pid(), sig).map_err(|e| Fail::io("kill failed", e))?;
    // Delivery happens on the way out of the kill syscall; give a stopped or
    // slow delivery a moment before concluding it was ignored.
    std::thread::sleep(Duration::from_secs(1));
    Err(Fail::Exit(
        1,
        format!(
            "still alive after signal {sig}: it was ignored (PID 1 of a container ignores signals \
             it has no handler for; run the container with an init, e.g. `docker run --init`)"
        ),
    ))
}

fn signal_number(text: &str) -> Result<i32, Fail> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Fail::usage(format!(
            "signal number must be 1 to 64, not {n}"
        )));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    sys::SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, num)| num)
        .ok_or_else(|| {
            let names: Vec<&str> = sys::SIGNALS.iter().map(|(n, _)| *n).collect();
            Fail::usage(format!(
                "unknown signal {text:?}; use a number or one of {}",
                names.join(" ")
            ))
        })
}

pub fn env(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    let mut out = BufWriter::new(io::stdout().lock());
    for (key, value) in vars {
        writeln!(out, "{key}={value}").map_err(|e| Fail::io("cannot write to stdout", e))?;
    }
    out.flush()
        .map_err(|e| Fail::io("cannot write to stdout", e))
}

pub fn pwd(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let dir =
        std::env::current_dir().map_err(|e| Fail::io("cannot read the current directory", e))?;
    print_line(dir.display())
}

pub fn id(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    print_line(format_args!("uid={} gid={}", sys::uid(), sys::gid()))
}

/// Set to run `forkbomb` outside a container or without a pids limit.
const FORKBOMB_OVERRIDE: &str = "TCP_TASK_FORKBOMB_ANYWAY";

pub fn forkbomb(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    // Safety catches: a forkbomb where nothing limits it would only hurt the
    // machine running the tests. Docker creates /.dockerenv in every
    // container, and a container's pids.max reads "max" when it has no limit.
    if std::env::var_os(FORKBOMB_OVERRIDE).is_none() {
        let refuse = |why: &str| {
            Fail::Exit(
                2,
                format!(
                    "refusing to run {why}; run it in a container with a pids limit \
                     (e.g. docker run --pids-limit 64), or set {FORKBOMB_OVERRIDE}=1 if you really mean it"
                ),
            )
        };
        if !Path::new("/.dockerenv").exists() {
            return Err(refuse("outside a container (no /.dockerenv)"));
        }
        if pids_unlimited() {
            return Err(refuse("without a pids limit (pids.max is \"max\")"));
        }
    }
    loop {
        // Children are never waited for: they stay as processes (or zombies)
        // and keep counting against the pids limit, which is the point.
        let spawned = Command::new("/proc/self/exe")
            .arg0(crate::SELF_NAME)
            .arg("forkbomb-child")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            // Best effort: stderr may be gone too, and the exit code says it anyway.
            let _ = eprint_line(format_args!("fork failed: {e}"));
            // Keep the children (and the pids limit) busy a little longer, so
            // a test can observe the limit being hit.
            std::thread::sleep(Duration::from_secs(1));
            return Err(Fail::quiet(3));
        }
    }
}

/// Whether this container's cgroup says it may create any number of
/// processes (cgroup v2 at the root of a private namespace, or v1's pids
/// controller). Unknown (no such file) counts as limited: we cannot tell.
fn pids_unlimited() -> bool {
    ["/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .any(|max| max.trim() == "max")
}

/// A forkbomb copy: waits until its parent is gone (so none outlives the
/// bomb), or 10 s at most.
pub fn forkbomb_child(_args: &[String]) -> Result<(), Fail> {
    let parent = sys::parent_pid();
    for _ in 0..100 {
        if sys::parent_pid() != parent {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn alloc(args: &[String]) -> Result<(), Fail> {
    let delay = delay_after(args, 1)?;
    let mb: u64 = parse("MB", &args[0])?;
    let bytes = mb
        .checked_mul(1024 * 1024)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Fail::usage(format!("{mb} MiB does not fit in the address space")))?;
    // A moment first: the engine (containerd on cgroup v1) starts watching a
    // container's OOM notifications only after its process has started, and
    // under load an OOM kill in the first milliseconds can come before that,
    // to be reported as a plain SIGKILL (seen with 200 ms at load 20; so a
    // second). The tests that use this applet
    // check how tcp-task reports an OOM kill, not that race.
    std::thread::sleep(Duration::from_millis(1000).max(delay));
    let mut block: Vec<u8> = Vec::new();
    block
        .try_reserve_exact(bytes)
        .map_err(|e| Fail::Exit(1, format!("cannot allocate {mb} MiB: {e}")))?;
    // A non-zero fill writes every page for real (zeros could be turned into
    // calloc, whose untouched pages would not count against a memory limit).
    block.resize(bytes, 0x5a);
    std::hint::black_box(&block);
    print_line(format_args!("allocated {mb} MiB"))
}

pub fn flood(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let mut out = raw_stdout()?;
    let block = vec![b'x'; 64 * 1024];
    loop {
        out.write_all(&block)
            .map_err(|e| Fail::io("cannot write to stdout", e))?;
    }
}

/// Lines per `counter` write: 4 KiB, no more than `PIPE_BUF`, so each
/// write to a pipe is atomic (all of it or, blocked, none of it).
const COUNTER_BATCH: u64 = 256;

/// Writes a known stream without pause and tells, outside that stream, how
/// far it got: a test reads FILE from the container (the Engine API's
/// archive download) to see whether the task is blocked on its stdout.
pub fn counter(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 2)?;
    let n: u64 = parse("N", &args[0])?;
    if n > 999_999_999_999_999 {
        return Err(Fail::usage(format!("N must fit in 15 digits, not {n}")));
    }
    let path = &args[1];
    let file = std::fs::File::create(path)
        .map_err(|e| Fail::Exit(1, format!("cannot create {path}: {e}")))?;
    let record = |count: u64| {
        // Fixed width, in place: a reader never sees a shorter, stale tail.
        file.write_all_at(format!("{count:020}\n").as_bytes(), 0)
            .map_err(|e| Fail::io(&format!("cannot write {path}"), e))
    };
    record(0)?;
    let mut out = raw_stdout()?;
    let mut batch = Vec::with_capacity(COUNTER_BATCH as usize * 16);
    let mut written = 0;
    while written < n {
        let end = n.min(written + COUNTER_BATCH);
        batch.clear();
        for i in written..end {
            // Into a Vec: cannot fail.
            let _ = writeln!(batch, "{i:015}");
        }
        out.write_all(&batch)
            .map_err(|e| Fail::io("cannot write to stdout", e))?;
        written = end;
        record(written)?;
    }
    Ok(())
}

pub fn writefile(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let path = &args[0];
    std::fs::write(path, b"tcp-task\n")
        .map_err(|e| Fail::Exit(1, format!("cannot write {path}: {e}")))?;
    print_line(format_args!("wrote {path}"))
}

pub fn netcheck(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let target = &args[0];
    let port_ok = target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(Fail::usage(format!(
            "expected HOST:PORT, e.g. 127.0.0.1:80, not {target:?}"
        )));
    }
    match connect(target) {
        Ok(()) => print_line("connected"),
        Err(e) => {
            print_line(format_args!("no network: {e}"))?;
            Err(Fail::quiet(1))
        }
    }
}

/// Tries a Unix socket `N` times, as a task that abuses the warm agent's
/// socket would: every connect that succeeds gets garbage written to it.
pub fn unixcheck(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 2)?;
    let path = &args[0];
    let times: u32 = parse("N", &args[1])?;
    let garbage = vec![0xa5u8; 64 * 1024];
    let (mut connected, mut refused, mut other) = (0, 0, 0);
    let mut last = String::new();
    for _ in 0..times {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(mut stream) => {
                connected += 1;
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = stream.write_all(&garbage);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => {
                other += 1;
                last = format!(" ({e})");
            }
        }
    }
    print_line(format_args!(
        "connected {connected} refused {refused} other {other}{last}"
    ))
}

/// Lists the interfaces of the task's network namespace. Checking that a
/// task has no network this way sends nothing anywhere.
pub fn ifaces(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let table = std::fs::read_to_string("/proc/net/dev")
        .map_err(|e| Fail::usage(format!("cannot read /proc/net/dev: {e}")))?;
    let mut names = interface_names(&table);
    names.sort();
    for name in names {
        print_line(name)?;
    }
    Ok(())
}

/// Prints the IPv4 routing table, one route a line: `IFACE DEST/PREFIX
/// via GATEWAY` (`default` for 0.0.0.0/0), from `/proc/net/route`. How the
/// Swarm backend's tests see that a task has no way out without sending
/// a packet.
pub fn routes(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 0)?;
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| Fail::usage(format!("cannot read /proc/net/route: {e}")))?;
    for line in route_lines(&table) {
        print_line(line)?;
    }
    Ok(())
}

/// `/proc/net/route`: a header, then `Iface Destination Gateway Flags
/// RefCnt Use Metric Mask …`, addresses in hex, in the host's byte order.
fn route_lines(table: &str) -> Vec<String> {
    let ip = |hex: &str| {
        let n = u32::from_str_radix(hex, 16).unwrap_or(0);
        std::net::Ipv4Addr::from(n.to_le_bytes())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gateway, mask) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(2)?,
                fields.get(7)?,
            );
            let prefix = u32::from_str_radix(mask, 16).ok()?.count_ones();
            let dest = if prefix == 0 {
                "default".to_owned()
            } else {
                format!("{}/{prefix}", ip(dest))
            };
            Some(format!("{iface} {dest} via {}", ip(gateway)))
        })
        .collect()
}

/// `/proc/net/dev` has two header lines, then `name: counters…` per line.
fn interface_names(table: &str) -> Vec<&str> {
    table
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect()
}

fn connect(target: &str) -> io::Result<()> {
    let mut last = io::Error::new(
        ErrorKind::NotFound,
        format!("{target} resolves to no address"),
    );
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_from_the_kernel_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            route_lines(table),
            [
                "eth0 default via 172.17.0.1",
                "eth0 172.17.0.0/16 via 0.0.0.0"
            ]
        );
    }

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(signal_number("15"), Ok(15));
        assert_eq!(signal_number("TERM"), Ok(15));
        assert_eq!(signal_number("sigkill"), Ok(9));
        assert!(matches!(signal_number("0"), Err(Fail::Usage(_))));
        assert!(matches!(signal_number("BOGUS"), Err(Fail::Usage(_))));
    }

    #[test]
    fn exit_codes_are_range_checked() {
        assert_eq!(exit(&["7".into()]), Err(Fail::quiet(7)));
        assert_eq!(exit(&["0".into()]), Ok(()));
        assert!(matches!(exit(&["256".into()]), Err(Fail::Usage(_))));
        assert!(matches!(exit(&[]), Err(Fail::Usage(_))));
    }

    #[test]
    fn interface_names_come_from_the_table() {
        let table = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n  eth0: 4 5 6\n";
        assert_eq!(interface_names(table), vec!["lo", "eth0"]);
    }

    #[test]
    fn netcheck_wants_host_and_port() {
        for bad in ["localhost", ":80", "host:port", "host:99999"] {
            assert!(
                matches!(netcheck(&[bad.into()]), Err(Fail::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sleep_rejects_negative_and_nan() {
        assert!(matches!(sleep(&["-1".into()]), Err(Fail::Usage(_))));
        assert!(matches!(sleep(&["nan".into()]), Err(Fail::Usage(_))));
        assert_eq!(sleep(&["0.001".into()]), Ok(()));
    }
}

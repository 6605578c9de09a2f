//! `measure PROGRAM ARGS…`: runs PROGRAM as its child, with the same
//! stdin, stdout and stderr, and once it has ended reports what the
//! container used on stderr, in one last line the server takes out of the
//! output (see `src/executor/usage.rs`); then exits as the child did
//! (128+N after signal N, as docker-init does).
//!
//! A cold task's container runs it between docker-init and the task: the
//! engine removes a container's cgroup as soon as its last process exits,
//! so the cgroup's counts (CPU time in user and kernel mode, peak memory)
//! can only be read from inside, after the task's end and before the
//! container's. Where the cgroup files are missing, the kernel's
//! accounting of the child (`wait4`) stands in.

use std::fs;
use std::io::{self, Write};
use std::process::Command;

use crate::cli::Fail;
use crate::sys::{self, Reaped, Usage};

/// Starts the trailer line: a NUL and an ESC, which text output does not
/// hold, then a name.
pub const TRAILER: &[u8] = b"\0\x1btcp-task-usage ";

pub fn run(args: &[String]) -> Result<(), Fail> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| Fail::usage("no program to run"))?;
    let child = match Command::new(program).args(rest).spawn() {
        Ok(child) => child,
        Err(e) => {
            // The words docker-init uses, which the server reads as a
            // command that is missing (127) or cannot be run (126).
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            // One write: the server holds back a first stderr chunk that
            // starts with the whole prefix, and `eprintln!` would write its
            // pieces one by one, which the engine may relay as frames.
            let line = format!("measure: exec {program} failed: {e}\n");
            let _ = io::stderr().lock().write_all(line.as_bytes());
            std::process::exit(code);
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let (reaped, usage) = wait_for(pid)?;
    report(container_usage().unwrap_or(usage), oom_kills());
    std::process::exit(match reaped {
        Reaped::Exited(code) => code,
        Reaped::Signaled(signal) => 128 + signal,
    });
}

/// Reaps children until `pid` ends (docker-init reaps the orphans, but a
/// grandchild may still be ours for a moment).
fn wait_for(pid: i32) -> Result<(Reaped, Usage), Fail> {
    loop {
        let (reaped, how, usage) =
            sys::wait_any_with_usage().map_err(|e| Fail::io("waiting for the task", e))?;
        if reaped == pid {
            return Ok((how, usage));
        }
    }
}

/// One write, so that the line is never split by other output.
fn report(usage: Usage, oom_kills: Option<u64>) {
    let mut text = format!(
        "user_us={} system_us={} peak_memory_bytes={}",
        usage.user_us, usage.system_us, usage.peak_memory_bytes
    );
    if let Some(kills) = oom_kills {
        text.push_str(&format!(" oom_kills={kills}"));
    }
    text.push('\n');
    let mut line = TRAILER.to_vec();
    line.extend_from_slice(text.as_bytes());
    let _ = io::stderr().lock().write_all(&line);
}

/// How many processes the kernel OOM-killed in the container's cgroup (v1,
/// else v2). The engine learns of an OOM kill by an event it can miss under
/// load; the cgroup's own count, read here before the container ends, is
/// not missed.
fn oom_kills() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory/memory.oom_control",
        "/sys/fs/cgroup/memory.events",
    ]
    .iter()
    .find_map(|path| {
        let text = fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
    })
}

/// The container's own counts from its cgroup: v1 (`cpuacct`, `memory`),
/// else v2. `None` when neither is readable.
fn container_usage() -> Option<Usage> {
    let read = |path: &str| fs::read_to_string(path).ok();
    let number = |path: &str| read(path)?.trim().parse::<u64>().ok();
    if let (Some(user_ns), Some(system_ns)) = (
        number("/sys/fs/cgroup/cpuacct/cpuacct.usage_user"),
        number("/sys/fs/cgroup/cpuacct/cpuacct.usage_sys"),
    ) {
        return Some(Usage {
            user_us: user_ns / 1000,
            system_us: system_ns / 1000,
            peak_memory_bytes: number("/sys/fs/cgroup/memory/memory.max_usage_in_bytes")?,
        });
    }
    let stat = read("/sys/fs/cgroup/cpu.stat")?;
    let field = |name: &str| {
        stat.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(Usage {
        user_us: field("user_usec ")?,
        system_us: field("system_usec ")?,
        peak_memory_bytes: number("/sys/fs/cgroup/memory.peak")?,
    })
}

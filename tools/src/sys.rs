//! The few libc calls std does not expose. std links libc anyway, so these
//! are plain `extern "C"` declarations rather than a dependency on the `libc`
//! crate. Each is wrapped in a safe function: none of them touches memory.

use std::io;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn getpid() -> i32;
    fn getppid() -> i32;
    fn getuid() -> u32;
    fn getgid() -> u32;
    fn signal(sig: i32, handler: usize) -> usize;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

/// `SIG_DFL` in `<signal.h>`.
const SIG_DFL: usize = 0;
/// `SIG_IGN` in `<signal.h>`.
const SIG_IGN: usize = 1;
/// `SIG_ERR` in `<signal.h>`.
const SIG_ERR: usize = usize::MAX;
pub const SIGKILL: i32 = 9;
pub const SIGPIPE: i32 = 13;
/// `EINTR`: interrupted; try again.
pub const EINTR: i32 = 4;

pub use crate::signal_names::SIGNALS;

pub fn pid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { getpid() }
}

pub fn parent_pid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { getppid() }
}

pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { getuid() }
}

pub fn gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { getgid() }
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill only takes integers; an invalid signal is reported as EINVAL.
    if unsafe { kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Restores the default disposition of `sig`: std installs handlers (SIGSEGV,
/// SIGBUS for stack overflow detection) or ignores it (SIGPIPE), which would
/// otherwise change what a signal does to us.
pub fn default_signal(sig: i32) -> io::Result<()> {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    if unsafe { signal(sig, SIG_DFL) } == SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Lets a write to a closed pipe end the process, as it would any Unix tool.
pub fn default_sigpipe() {
    // Cannot fail for a valid signal number; nothing to do if it somehow did.
    let _ = default_signal(SIGPIPE);
}

/// Ignores `sig`. The ignored disposition survives exec, so only for
/// SIGPIPE, which std resets to the default in every child it spawns.
pub fn ignore_signal(sig: i32) -> io::Result<()> {
    // SAFETY: installing SIG_IGN runs no code of ours in signal context.
    if unsafe { signal(sig, SIG_IGN) } == SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A terminated child, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Exited(i32),
    Signaled(i32),
}

impl Reaped {
    /// Decodes a wait status (`WIFEXITED`, `WEXITSTATUS`, `WTERMSIG`).
    pub fn from_status(status: i32) -> Reaped {
        let signal = status & 0x7f;
        if signal == 0 {
            Reaped::Exited((status >> 8) & 0xff)
        } else {
            Reaped::Signaled(signal)
        }
    }
}

/// Waits for any child to terminate (stopped children are not reported):
/// `(pid, how)`. `Err` (`ECHILD`) when there are no children left.
pub fn wait_any() -> io::Result<(i32, Reaped)> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int to `status`, a local we own.
        let pid = unsafe { waitpid(-1, &mut status, 0) };
        if pid > 0 {
            return Ok((pid, Reaped::from_status(status)));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(EINTR) {
            return Err(err);
        }
    }
}

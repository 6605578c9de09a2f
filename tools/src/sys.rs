//! The few libc calls std does not expose. std links libc anyway, so these
//! are plain `extern "C"` declarations rather than a dependency on the `libc`
//! crate. Each is wrapped in a safe function: none of them touches memory.

use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn getpid() -> i32;
    fn getppid() -> i32;
    fn getuid() -> u32;
    fn getgid() -> u32;
    fn signal(sig: i32, handler: usize) -> usize;
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn __errno_location() -> *mut i32;
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
    fn waitid(idtype: u32, id: u32, info: *mut SigInfo, options: i32) -> i32;
    fn getrusage(who: i32, rusage: *mut Rusage) -> i32;
    fn shmctl(id: i32, cmd: i32, buf: *mut u8) -> i32;
    fn semctl(id: i32, num: i32, cmd: i32, ...) -> i32;
    fn msgctl(id: i32, cmd: i32, buf: *mut u8) -> i32;
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
    fn semget(key: i32, count: i32, flags: i32) -> i32;
    fn msgget(key: i32, flags: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// `struct timeval` on 64-bit Linux.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Timeval {
    sec: i64,
    usec: i64,
}

/// `struct rusage` on 64-bit Linux (x86_64 and aarch64 alike): two
/// timevals, then 14 longs, `ru_maxrss` (KiB) first.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    rest: [i64; 13],
}

/// What a process used: CPU time in user and kernel mode, in
/// microseconds, and its peak resident memory, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub user_us: u64,
    pub system_us: u64,
    pub peak_memory_bytes: u64,
}

impl From<Rusage> for Usage {
    fn from(r: Rusage) -> Usage {
        let micros = |t: Timeval| (t.sec.max(0) as u64) * 1_000_000 + t.usec.max(0) as u64;
        Usage {
            user_us: micros(r.utime),
            system_us: micros(r.stime),
            peak_memory_bytes: (r.maxrss.max(0) as u64) * 1024,
        }
    }
}

/// This process's own CPU time so far (`getrusage(RUSAGE_SELF)`).
pub fn own_usage() -> Usage {
    const RUSAGE_SELF: i32 = 0;
    let mut usage = Rusage::default();
    // SAFETY: getrusage writes one struct rusage to a local we own.
    unsafe { getrusage(RUSAGE_SELF, &mut usage) };
    usage.into()
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

/// Where [`on_signal`] writes the signals it catches: the non-blocking
/// write end of the socket pair [`catch_signals`] makes.
static CAUGHT: AtomicI32 = AtomicI32::new(-1);

/// The handler of the signals [`catch_signals`] takes: one byte, the
/// signal's number, to the socket. Only async-signal-safe calls, and the
/// interrupted code's errno is put back. A full socket (a flood of
/// signals nobody reads) drops the signal rather than block.
extern "C" fn on_signal(sig: i32) {
    // SAFETY: __errno_location gives this thread's errno; write(2) only
    // reads the one byte on our stack.
    unsafe {
        let errno = *__errno_location();
        let byte = sig as u8;
        write(CAUGHT.load(Ordering::Relaxed), &byte, 1);
        *__errno_location() = errno;
    }
}

/// Catches `signals` for the whole process, from any thread: each one
/// caught becomes a byte (its number) to read from the returned socket.
/// A handler, not a blocked mask, so that a child keeps none of it: exec
/// resets caught signals to their default and the mask stays empty,
/// which lets std start a child with `posix_spawn` (no `fork`, no copy of
/// our page tables). `signal()` is glibc's BSD flavour: `SA_RESTART`, so
/// the other threads' reads and waits are not interrupted.
pub fn catch_signals(signals: &[i32]) -> io::Result<UnixStream> {
    let (read, write) = UnixStream::pair()?;
    write.set_nonblocking(true)?;
    CAUGHT.store(write.into_raw_fd(), Ordering::Relaxed);
    for &sig in signals {
        // SAFETY: on_signal is async-signal-safe (see there).
        if unsafe { signal(sig, on_signal as extern "C" fn(i32) as usize) } == SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(read)
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

/// Waits for any child to terminate, with what it used (its own use and
/// that of the descendants it waited for, as `wait4` reports it).
/// `Err` (`ECHILD`) when there are no children left.
pub fn wait_any_with_usage() -> io::Result<(i32, Reaped, Usage)> {
    let mut status = 0;
    let mut usage = Rusage::default();
    loop {
        // SAFETY: wait4 writes one int and one struct rusage, locals we own.
        let pid = unsafe { wait4(-1, &mut status, 0, &mut usage) };
        if pid > 0 {
            return Ok((pid, Reaped::from_status(status), usage.into()));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(EINTR) {
            return Err(err);
        }
    }
}

/// `siginfo_t`: 128 bytes on Linux; only written here, never read.
#[repr(C, align(8))]
struct SigInfo([u8; 128]);

/// Whether this process has any child, running or ended and not yet
/// reaped. Reaps none (`WNOWAIT`) and does not wait.
pub fn has_children() -> bool {
    const P_ALL: u32 = 0;
    const WNOHANG: i32 = 1;
    const WEXITED: i32 = 4;
    const WNOWAIT: i32 = 0x0100_0000;
    let mut info = SigInfo([0; 128]);
    loop {
        // SAFETY: waitid writes one siginfo_t, a local we own.
        let r = unsafe { waitid(P_ALL, 0, &mut info, WEXITED | WNOHANG | WNOWAIT) };
        if r == 0 {
            return true;
        }
        // ECHILD: none. Anything else but EINTR cannot happen with these
        // arguments; counting it as "some" only costs a needless sweep.
        match io::Error::last_os_error().raw_os_error() {
            Some(EINTR) => continue,
            Some(ECHILD) => return false,
            _ => return true,
        }
    }
}

/// `ECHILD`: no child to wait for.
const ECHILD: i32 = 10;

/// Reaps one terminated child without waiting; false when none is ready
/// (or there are no children).
pub fn reap_any_nohang() -> bool {
    const WNOHANG: i32 = 1;
    let mut status = 0;
    // SAFETY: wait4 writes one int to a local we own; rusage may be null.
    unsafe { wait4(-1, &mut status, WNOHANG, std::ptr::null_mut()) > 0 }
}

/// Removes System V IPC object `id` of the kind listed in `file` (one of
/// `/proc/sysvipc/{shm,sem,msg}`): `IPC_RMID`.
pub fn remove_sysv(file: &str, id: i32) -> io::Result<()> {
    const IPC_RMID: i32 = 0;
    // SAFETY: IPC_RMID reads and writes no buffer; the pointers are null.
    let done = unsafe {
        match file.rsplit('/').next() {
            Some("shm") => shmctl(id, IPC_RMID, std::ptr::null_mut()),
            Some("sem") => semctl(id, 0, IPC_RMID),
            Some("msg") => msgctl(id, IPC_RMID, std::ptr::null_mut()),
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes this process non-dumpable: then a process of the same user (a
/// task) can neither ptrace it nor open its `/proc/PID/fd`, mem or environ,
/// which need the rights of ptrace. Not inherited across exec.
pub fn set_not_dumpable() -> io::Result<()> {
    const PR_SET_DUMPABLE: i32 = 4;
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    if unsafe { prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates one System V shared memory segment (4 KiB), semaphore set and
/// message queue, private, left for whoever comes next (the `leave`
/// applet).
pub fn make_sysv_objects() -> io::Result<()> {
    const IPC_PRIVATE: i32 = 0;
    const IPC_CREAT: i32 = 0o1000;
    let flags = IPC_CREAT | 0o600;
    // SAFETY: these take integers only and return an id or -1.
    let ids = unsafe {
        [
            shmget(IPC_PRIVATE, 4096, flags),
            semget(IPC_PRIVATE, 1, flags),
            msgget(IPC_PRIVATE, flags),
        ]
    };
    if ids.contains(&-1) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! The warm-container agent's wire format, shared word for word by the agent
//! (`tools/src/agent.rs`) and the server (`src/executor/warm/`, which
//! includes this file with `#[path]`): one definition, two users.
//!
//! # Channel
//!
//! One of two, the server's choice (docs/WARM.md, "The data plane"):
//!
//! - **attach**: the container's attach stream, with no TTY. The server
//!   writes frames to the agent's stdin; the agent writes frames to its
//!   stdout.
//! - **socket** (`--socket PATH`): a Unix socket the server listens on,
//!   bind-mounted read-only into the container at PATH. The agent connects
//!   to it before anything else (or exits [`SOCKET_UNREACHABLE`]), reads the
//!   server's frames from it, and writes each of its frames to its stdout
//!   first, then to the socket: the stdout is the container's log, which a
//!   restarted server reads the frames back from, so it must hold every
//!   frame the server may have seen. The server accepts one connection
//!   only and then closes its listener: a task that connects again is
//!   refused.
//!
//! Either way the agent's stderr is for people only: it says why the agent
//! gave up. Nothing else ever writes to the agent's stdout, so binary task
//! output stays byte-exact: it travels as frame payloads, never as raw
//! text.
//!
//! # Frame
//!
//! ```text
//! +------+-------------------+-------------------+
//! | kind | length (u32, BE)  | payload (length)  |
//! +------+-------------------+-------------------+
//!   1 B          4 B            0..=MAX_PAYLOAD B
//! ```
//!
//! A kind the receiver does not expect from that direction, a length above
//! [`MAX_PAYLOAD`], or a stream that ends inside a frame is malformed: the
//! agent says so on stderr and exits 2; it never waits for bytes that a bad
//! header promised.
//!
//! # Server → agent
//!
//! - `T` task: [`TaskHeader`] (below). Only while no task runs.
//! - `I` stdin: bytes for the task's stdin.
//! - `C` close: end of the task's stdin (zero-length payload).
//! - `K` signal: one byte, the signal number to send the task's process.
//!
//! `I`, `C` and `K` that arrive between tasks are leftovers of a finished
//! task and are ignored. End of file on the agent's input (stdin or
//! socket; on the socket, a reset too) means the server is gone: an idle
//! agent exits, a running task runs on, its frames going to the log.
//!
//! # Agent → server
//!
//! - `R` ready: one byte, [`VERSION`]. Sent once, at start.
//! - `A` started: u32 BE, the task's pid. The process is running.
//! - `O` / `E`: a chunk of the task's stdout / stderr.
//! - `U` usage: [`UsageReport`], 24 bytes: what the task's process used
//!   (`wait4`'s accounting), just before its `X`.
//! - `X` exit: [`ExitReport`], 6 bytes. Always the task's last frame.
//!
//! # Task header payload
//!
//! ```text
//! flags u8 (bit 0: the task takes stdin; otherwise its stdin is /dev/null)
//! argc u32, then argc strings      (argc >= 1)
//! envc u32, then envc strings      ("KEY=VALUE")
//! workdir string                   (empty: the container's)
//! string = length u32 BE + bytes (no NUL)
//! ```

use std::fmt;

/// The protocol version the `R` frame announces.
pub const VERSION: u8 = 3;

/// The agent's exit status when `--socket` was given and it could not
/// connect there: the server then knows the socket, not the agent, failed
/// (and, choosing the data plane by itself, falls back to attach).
pub const SOCKET_UNREACHABLE: i32 = 4;

/// The largest payload of any frame. Task output is sent in smaller chunks;
/// a task header (argv and env) must fit.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 5;

/// The signals the agent, as its container's PID 1, passes on to the task
/// it runs when they are sent to the container (`docker kill -s`): SIGHUP,
/// SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH. PID 1 would
/// otherwise ignore them. It is how a server that took the task over
/// after a restart, with no frame channel to the agent, signals it.
pub const FORWARDED_SIGNALS: [i32; 7] = [1, 2, 3, 10, 12, 15, 28];

pub const TASK: u8 = b'T';
pub const STDIN: u8 = b'I';
pub const CLOSE: u8 = b'C';
pub const SIGNAL: u8 = b'K';

pub const READY: u8 = b'R';
pub const STARTED: u8 = b'A';
pub const STDOUT: u8 = b'O';
pub const STDERR: u8 = b'E';
pub const EXIT: u8 = b'X';
pub const USAGE: u8 = b'U';

/// The kinds the agent accepts.
pub const TO_AGENT: &[u8] = &[TASK, STDIN, CLOSE, SIGNAL];
/// The kinds the server accepts.
pub const FROM_AGENT: &[u8] = &[READY, STARTED, STDOUT, STDERR, USAGE, EXIT];

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    UnknownKind(u8),
    TooLong(usize),
    /// The stream ended inside a frame.
    Truncated,
    /// A payload that does not decode; says which part.
    BadPayload(&'static str),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            ProtoError::TooLong(n) => {
                write!(f, "frame length {n} exceeds the maximum {MAX_PAYLOAD}")
            }
            ProtoError::Truncated => write!(f, "the stream ended inside a frame"),
            ProtoError::BadPayload(what) => write!(f, "malformed payload: {what}"),
        }
    }
}

/// The 5 header bytes of a frame of `kind` with `len` payload bytes.
pub fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [kind, n[0], n[1], n[2], n[3]]
}

/// A whole frame: header and payload in one buffer (one write).
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
    out
}

/// Checks a header against the kinds `allowed` and [`MAX_PAYLOAD`]; gives
/// the kind and payload length.
pub fn parse_header(bytes: [u8; HEADER_LEN], allowed: &[u8]) -> Result<(u8, usize), ProtoError> {
    let kind = bytes[0];
    if !allowed.contains(&kind) {
        return Err(ProtoError::UnknownKind(kind));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtoError::TooLong(len));
    }
    Ok((kind, len))
}

/// What to run: the `T` frame's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskHeader {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the container's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub stdin: bool,
    /// The server's name for the task, echoed after the pid in the `A`
    /// frame. The agent's frames are the container's log, so a server that
    /// restarts finds there which task ran, and its output and end.
    pub tag: String,
}

impl TaskHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.stdin)];
        put_list(&mut out, &self.argv);
        put_list(&mut out, &self.env);
        put_str(&mut out, self.workdir.as_deref().unwrap_or(""));
        put_str(&mut out, &self.tag);
        out
    }

    pub fn decode(payload: &[u8]) -> Result<TaskHeader, ProtoError> {
        let mut r = Reader(payload);
        let flags = r.u8("flags")?;
        let argv = r.list("argv")?;
        if argv.is_empty() {
            return Err(ProtoError::BadPayload("empty argv"));
        }
        let env = r.list("env")?;
        if env.iter().any(|kv| !kv.contains('=')) {
            return Err(ProtoError::BadPayload("env entry without '='"));
        }
        let workdir = r.string("workdir")?;
        let tag = r.string("tag")?;
        if !r.0.is_empty() {
            return Err(ProtoError::BadPayload(
                "trailing bytes after the task header",
            ));
        }
        Ok(TaskHeader {
            argv,
            env,
            workdir: (!workdir.is_empty()).then_some(workdir),
            stdin: flags & 1 == 1,
            tag,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        put_str(out, item);
    }
}

/// Bounds-checked reads from a payload. A count is never trusted to size
/// a buffer: each item must actually be there.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::BadPayload(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, ProtoError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let len = self.u32(what)?;
        let bytes = self.take(len, what)?;
        if bytes.contains(&0) {
            return Err(ProtoError::BadPayload("NUL byte in a string"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::BadPayload("string not UTF-8"))
    }

    fn list(&mut self, what: &'static str) -> Result<Vec<String>, ProtoError> {
        let count = self.u32(what)?;
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(self.string(what)?);
        }
        Ok(items)
    }
}

/// What a task's process used, from the kernel's accounting of it (and of
/// the descendants it waited for): the `U` frame's payload, three u64 BE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// CPU time in user mode, microseconds.
    pub user_us: u64,
    /// CPU time in the kernel on its behalf, microseconds.
    pub system_us: u64,
    /// The most resident memory it held at once, bytes.
    pub peak_memory_bytes: u64,
}

impl UsageReport {
    pub fn encode(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.user_us.to_be_bytes());
        out[8..16].copy_from_slice(&self.system_us.to_be_bytes());
        out[16..].copy_from_slice(&self.peak_memory_bytes.to_be_bytes());
        out
    }

    pub fn decode(payload: &[u8]) -> Result<UsageReport, ProtoError> {
        let bytes: &[u8; 24] = payload
            .try_into()
            .map_err(|_| ProtoError::BadPayload("usage report is not 24 bytes"))?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(UsageReport {
            user_us: u64_at(0),
            system_us: u64_at(8),
            peak_memory_bytes: u64_at(16),
        })
    }
}

/// How a task ended, as the agent saw it: the `X` frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReport {
    /// The process exited with this code.
    Exited { code: i32, oom: bool },
    /// The process was killed by this signal; `oom` when the container's
    /// memory cgroup counted an OOM kill during the task.
    Signaled { signal: i32, oom: bool },
    /// The process could not be started: the `errno` of exec.
    SpawnFailed { errno: i32 },
    /// The working directory could not be entered: its `errno`.
    WorkdirFailed { errno: i32 },
}

impl ExitReport {
    pub fn encode(self) -> [u8; 6] {
        let (kind, value, oom) = match self {
            ExitReport::Exited { code, oom } => (0, code, oom),
            ExitReport::Signaled { signal, oom } => (1, signal, oom),
            ExitReport::SpawnFailed { errno } => (2, errno, false),
            ExitReport::WorkdirFailed { errno } => (3, errno, false),
        };
        let v = value.to_be_bytes();
        [kind, v[0], v[1], v[2], v[3], u8::from(oom)]
    }

    pub fn decode(payload: &[u8]) -> Result<ExitReport, ProtoError> {
        let [kind, a, b, c, d, oom] = payload else {
            return Err(ProtoError::BadPayload("exit report is not 6 bytes"));
        };
        let value = i32::from_be_bytes([*a, *b, *c, *d]);
        let oom = *oom == 1;
        match kind {
            0 => Ok(ExitReport::Exited { code: value, oom }),
            1 => Ok(ExitReport::Signaled { signal: value, oom }),
            2 => Ok(ExitReport::SpawnFailed { errno: value }),
            3 => Ok(ExitReport::WorkdirFailed { errno: value }),
            _ => Err(ProtoError::BadPayload("unknown exit kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(bytes: &[u8]) -> [u8; HEADER_LEN] {
        bytes.try_into().expect("five bytes")
    }

    #[test]
    fn headers_are_checked_before_any_payload_is_read() {
        assert_eq!(parse_header(header(STDIN, 3), TO_AGENT), Ok((STDIN, 3)));
        assert_eq!(
            parse_header(header(STDOUT, 3), TO_AGENT),
            Err(ProtoError::UnknownKind(STDOUT))
        );
        assert_eq!(
            parse_header(header_of(b"Xzzzz"), TO_AGENT),
            Err(ProtoError::UnknownKind(b'X'))
        );
        let huge = header_of(&[TASK, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            parse_header(huge, TO_AGENT),
            Err(ProtoError::TooLong(u32::MAX as usize))
        );
    }

    #[test]
    fn task_headers_round_trip() {
        let task = TaskHeader {
            argv: vec!["echo".into(), "a b".into(), String::new()],
            env: vec!["A=1".into(), "EMPTY=".into()],
            workdir: Some("/tmp".into()),
            stdin: true,
            tag: "{\"id\":\"x\"}".into(),
        };
        assert_eq!(TaskHeader::decode(&task.encode()), Ok(task));
        let plain = TaskHeader {
            argv: vec!["true".into()],
            ..TaskHeader::default()
        };
        assert_eq!(TaskHeader::decode(&plain.encode()), Ok(plain));
    }

    #[test]
    fn malformed_task_headers_are_refused() {
        let good = TaskHeader {
            argv: vec!["true".into()],
            env: vec!["A=1".into()],
            ..TaskHeader::default()
        }
        .encode();
        // Every truncation of a valid header is refused, never read past.
        for cut in 0..good.len() {
            assert!(TaskHeader::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(TaskHeader::decode(&trailing).is_err());
        // A count that promises four billion strings fails on the first.
        let lying = [0, 0xff, 0xff, 0xff, 0xff];
        assert!(TaskHeader::decode(&lying).is_err());
        let empty_argv = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            TaskHeader::decode(&empty_argv),
            Err(ProtoError::BadPayload("empty argv"))
        );
        let bad_env = TaskHeader {
            argv: vec!["x".into()],
            env: vec!["NOEQUALS".into()],
            ..TaskHeader::default()
        }
        .encode();
        assert!(TaskHeader::decode(&bad_env).is_err());
        let nul = TaskHeader {
            argv: vec!["a\0b".into()],
            ..TaskHeader::default()
        };
        assert_eq!(
            TaskHeader::decode(&nul.encode()),
            Err(ProtoError::BadPayload("NUL byte in a string"))
        );
    }

    #[test]
    fn exit_reports_round_trip_and_bad_ones_are_refused() {
        for report in [
            ExitReport::Exited {
                code: 42,
                oom: false,
            },
            ExitReport::Signaled {
                signal: 9,
                oom: true,
            },
            ExitReport::SpawnFailed { errno: 2 },
            ExitReport::WorkdirFailed { errno: 13 },
        ] {
            assert_eq!(ExitReport::decode(&report.encode()), Ok(report));
        }
        assert!(ExitReport::decode(&[0, 0, 0]).is_err());
        assert!(ExitReport::decode(&[9, 0, 0, 0, 0, 0]).is_err());
    }
}

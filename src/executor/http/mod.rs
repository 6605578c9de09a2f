//! HTTP tasks: the original task service's contract. The image's own
//! server listens on a port inside its container (network `none`); the
//! container's agent runs `relay PORT` as the task, and the request and its
//! answer travel as that relay's stdin and stdout. [`HttpProcess`] makes
//! the exchange a [`Process`] like any other, so supervision (timeout,
//! cancel, output limit) is the same: its output is the answer's body, its
//! end is the answer's status.

mod answer;

use bytes::Bytes;

use super::plan::HttpCall;
use super::process::{Process, ProcessEnd, Stdin};
use super::warm::{WarmProcess, WarmStdin};
use crate::task::{ErrorKind, OutputStream, TaskError};
use answer::Answer;

/// How much of an error answer's body its message quotes.
const QUOTED_BODY: usize = 1024;
/// How much of the relay's own stderr is kept.
const RELAY_STDERR: usize = 4096;

/// One HTTP task's call on its container.
pub(crate) struct HttpProcess {
    inner: WarmProcess,
    /// The request, until it is written.
    request: Option<Bytes>,
    stdin: Option<WarmStdin>,
    answer: Answer,
    task: String,
    port: u16,
    /// The start of the body, for the message of a non-2xx answer.
    quoted: Vec<u8>,
    relay_stderr: Vec<u8>,
    /// The answer is not valid HTTP: why.
    malformed: Option<String>,
    /// The exchange stopped short of a whole answer: why.
    cut: Option<String>,
}

impl HttpProcess {
    /// The call on `inner`, a relay to the server's port.
    pub fn new(mut inner: WarmProcess, call: &HttpCall) -> HttpProcess {
        let stdin = inner.take_stdin();
        HttpProcess {
            inner,
            request: Some(request(call)),
            stdin,
            answer: Answer::default(),
            task: call.task.clone(),
            port: call.port,
            quoted: Vec::new(),
            relay_stderr: Vec::new(),
            malformed: None,
            cut: None,
        }
    }

    async fn send_request(&mut self) {
        let (Some(request), Some(stdin)) = (self.request.take(), self.stdin.as_mut()) else {
            return;
        };
        if let Err(e) = stdin.write(request).await {
            self.cut = Some(format!("the request could not be sent: {e}"));
        }
        stdin.close().await;
    }

    fn quote(&mut self, body: &Bytes) -> Bytes {
        let room = QUOTED_BODY.saturating_sub(self.quoted.len());
        self.quoted.extend_from_slice(&body[..room.min(body.len())]);
        body.clone()
    }

    async fn failed(&mut self, kind: ErrorKind, what: &str) -> TaskError {
        let relay = String::from_utf8_lossy(&self.relay_stderr)
            .trim()
            .to_owned();
        let server = self.inner.diagnostics().await;
        let server = server.trim();
        TaskError::new(
            kind,
            format!(
                "task `{}` on port {}: {what}{}. The task's last output:\n{}",
                self.task,
                self.port,
                if relay.is_empty() {
                    String::new()
                } else {
                    format!(" ({relay})")
                },
                if server.is_empty() { "(none)" } else { server },
            ),
        )
    }
}

/// `POST /task/{task}` with `{"params": PARAMS}`. The task name holds only
/// URL path characters and the params are JSON text (admission checked
/// both), so they go in as they are. `Connection: close`: the server ends
/// the exchange, and the relay with it.
fn request(call: &HttpCall) -> Bytes {
    let body = format!("{{\"params\":{}}}", call.params);
    let head = format!(
        "POST /task/{task} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: tcp-task/{version}\r\n\
         Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {length}\r\n\
         Connection: close\r\n\r\n",
        task = call.task,
        port = call.port,
        version = env!("CARGO_PKG_VERSION"),
        length = body.len(),
    );
    Bytes::from(head + &body)
}

impl Process for HttpProcess {
    type Stdin = WarmStdin;

    /// The task's input is its params: no stdin of its own.
    fn take_stdin(&mut self) -> Option<WarmStdin> {
        None
    }

    /// The answer's body, as it comes; `None` once it is whole, or when the
    /// exchange broke (then `end` says how).
    async fn output(&mut self) -> Option<(OutputStream, Bytes)> {
        self.send_request().await;
        loop {
            if self.malformed.is_some() || self.cut.is_some() || self.answer.complete() {
                return None;
            }
            match self.answer.next_body() {
                Ok(Some(body)) => return Some((OutputStream::Stdout, self.quote(&body))),
                Ok(None) => {}
                Err(e) => {
                    self.malformed = Some(e);
                    return None;
                }
            }
            match self.inner.output().await {
                Some((OutputStream::Stdout, bytes)) => self.answer.push(&bytes),
                Some((OutputStream::Stderr, bytes)) => {
                    let room = RELAY_STDERR.saturating_sub(self.relay_stderr.len());
                    self.relay_stderr
                        .extend_from_slice(&bytes[..room.min(bytes.len())]);
                }
                None => {
                    return match self.answer.close() {
                        Ok(Some(rest)) => Some((OutputStream::Stdout, self.quote(&rest))),
                        Ok(None) => None,
                        Err(e) => {
                            self.cut = Some(e);
                            None
                        }
                    };
                }
            }
        }
    }

    /// A 2xx answer is a success (exit code 0); another status is
    /// `TaskFailed`; no whole answer is `TaskExited` (the server or the
    /// relay ended) or `TaskFailed` (it was not HTTP).
    async fn end(&mut self) -> Result<ProcessEnd, TaskError> {
        if let Some(status) = self.answer.status().filter(|_| self.answer.complete()) {
            if (200..300).contains(&status.code) {
                return Ok(ProcessEnd::Exited {
                    code: 0,
                    oom_killed: false,
                });
            }
            let what = format!(
                "the task answered HTTP {} {}: {}",
                status.code,
                status.reason,
                String::from_utf8_lossy(&self.quoted).trim()
            );
            return Err(TaskError::new(
                ErrorKind::TaskFailed,
                format!("task `{}` on port {}: {what}", self.task, self.port),
            ));
        }
        if let Some(why) = self.malformed.clone() {
            let what = format!("the answer is not valid HTTP: {why}");
            return Err(self.failed(ErrorKind::TaskFailed, &what).await);
        }
        // The exchange stopped short: how the relay ended says more.
        let why = self.cut.clone().unwrap_or_default();
        let ended = self.inner.end().await;
        let what = match ended {
            Ok(ProcessEnd::Exited {
                oom_killed: true, ..
            }) => "the container ran out of memory before the task answered".to_owned(),
            _ => format!("no whole answer came: {why}"),
        };
        Err(self.failed(ErrorKind::TaskExited, &what).await)
    }

    /// Frees the container: it serves one task.
    async fn finish(self) {
        self.inner.finish().await
    }
}

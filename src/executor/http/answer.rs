//! Reading an HTTP/1.1 answer from bytes as they come: the head (with
//! httparse), then the body by its framing — `Content-Length`, `chunked`,
//! or until the connection closes — handed out as it is decoded. Every
//! size is bounded; a malformed answer is an error, never a panic.

use bytes::{Buf, Bytes, BytesMut};

/// The largest answer head accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines accepted.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (the size and any extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// The answer's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub code: u16,
    pub reason: String,
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a `SIZE[;ext]\r\n` line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// The `\r\n` after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

#[derive(Debug)]
enum State {
    Head,
    Body(Framing),
    Done,
}

/// An answer being read.
#[derive(Debug)]
pub(crate) struct Answer {
    buffer: BytesMut,
    state: State,
    status: Option<Status>,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            buffer: BytesMut::new(),
            state: State::Head,
            status: None,
        }
    }
}

impl Answer {
    /// Takes more bytes of the answer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The status, once the head is read.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// Whether the whole answer has been read.
    pub fn complete(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next piece of body the bytes so far hold, if any; `Err` when
    /// the answer is not valid HTTP.
    pub fn next_body(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.state {
                State::Head => {
                    if !self.read_head()? {
                        return Ok(None);
                    }
                }
                State::Body(framing) => return self.body(framing),
                State::Done => return Ok(None),
            }
        }
    }

    /// The connection closed: what was buffered is the rest. `Err` when the
    /// answer was cut short.
    pub fn close(&mut self) -> Result<Option<Bytes>, String> {
        match self.state {
            State::Head => Err("the connection closed before a whole answer head".into()),
            State::Body(Framing::UntilClose) => {
                self.state = State::Done;
                Ok((!self.buffer.is_empty()).then(|| self.buffer.split().freeze()))
            }
            State::Body(_) => {
                Err("the connection closed in the middle of the answer's body".into())
            }
            State::Done => Ok(None),
        }
    }

    /// Parses the head when it is all there; true once it is.
    fn read_head(&mut self) -> Result<bool, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let length = match response.parse(&self.buffer) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if self.buffer.len() > MAX_HEAD => {
                return Err(format!("the answer's head is longer than {MAX_HEAD} bytes"))
            }
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(e) => return Err(format!("the answer is not HTTP: {e}")),
        };
        let code = response.code.unwrap_or(0);
        let reason = response.reason.unwrap_or_default().to_owned();
        let framing = framing(code, response.headers)?;
        self.buffer.advance(length);
        if (100..200).contains(&code) {
            // An interim answer (100 Continue): the real one follows.
            return Ok(true);
        }
        self.status = Some(Status { code, reason });
        self.state = match framing {
            Framing::Length(0) => State::Done,
            framing => State::Body(framing),
        };
        Ok(true)
    }

    fn body(&mut self, framing: Framing) -> Result<Option<Bytes>, String> {
        match framing {
            Framing::UntilClose => {
                Ok((!self.buffer.is_empty()).then(|| self.buffer.split().freeze()))
            }
            Framing::Length(left) => {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let take = left.min(self.buffer.len() as u64);
                let piece = self.buffer.split_to(take as usize).freeze();
                self.state = match left - take {
                    0 => State::Done,
                    left => State::Body(Framing::Length(left)),
                };
                Ok(Some(piece))
            }
            Framing::Chunked(chunk) => self.chunked(chunk),
        }
    }

    /// Decodes chunked framing until a piece of data, the end, or the end
    /// of what is buffered.
    fn chunked(&mut self, mut chunk: Chunk) -> Result<Option<Bytes>, String> {
        loop {
            self.state = State::Body(Framing::Chunked(chunk));
            match chunk {
                Chunk::Size => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| format!("bad chunk size {size:?} in the answer"))?;
                    chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if self.buffer.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(self.buffer.len() as u64);
                    let piece = self.buffer.split_to(take as usize).freeze();
                    let next = match left - take {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    };
                    self.state = State::Body(Framing::Chunked(next));
                    return Ok(Some(piece));
                }
                Chunk::DataEnd => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    if !line.is_empty() {
                        return Err("chunk data longer than its size in the answer".into());
                    }
                    chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// One CRLF- (or LF-) ended line, without its end, when it is all in.
    fn line(&mut self) -> Result<Option<String>, String> {
        match self.buffer.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = self.buffer.split_to(end + 1);
                let text = String::from_utf8_lossy(&line);
                Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            None if self.buffer.len() > MAX_CHUNK_LINE => Err(format!(
                "a chunk line longer than {MAX_CHUNK_LINE} bytes in the answer"
            )),
            None => Ok(None),
        }
    }
}

/// The body's framing by the status and headers (RFC 9112, 6.3).
fn framing(code: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    if (100..200).contains(&code) || code == 204 || code == 304 {
        return Ok(Framing::Length(0));
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if let Some(encoding) = value("transfer-encoding") {
        if encoding.rsplit(',').next().map(str::trim) == Some("chunked") {
            return Ok(Framing::Chunked(Chunk::Size));
        }
        return Ok(Framing::UntilClose);
    }
    match value("content-length") {
        Some(length) => length
            .parse()
            .map(Framing::Length)
            .map_err(|_| format!("bad Content-Length {length:?} in the answer")),
        None => Ok(Framing::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step` and gathers the body.
    fn read(bytes: &[u8], step: usize, closes: bool) -> Result<(u16, Vec<u8>, bool), String> {
        let mut answer = Answer::default();
        let mut body = Vec::new();
        for piece in bytes.chunks(step) {
            answer.push(piece);
            while let Some(part) = answer.next_body()? {
                body.extend_from_slice(&part);
            }
        }
        if closes && !answer.complete() {
            if let Some(rest) = answer.close()? {
                body.extend_from_slice(&rest);
            }
        }
        let code = answer.status().map_or(0, |s| s.code);
        Ok((code, body, answer.complete()))
    }

    #[test]
    fn every_framing_in_any_pieces() {
        let length = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"result\":3}trailing";
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n{\"res\r\n7\r\nult\":3}\r\n0\r\nX: y\r\n\r\n";
        let close = b"HTTP/1.0 404 Not Found\r\n\r\n{\"error\":\"no\"}";
        for step in [1, 2, 7, 1000] {
            let (code, body, done) = read(length, step, false).unwrap();
            assert_eq!((code, &body[..], done), (200, &b"{\"result\":3}"[..], true));
            let (code, body, done) = read(chunked, step, false).unwrap();
            assert_eq!((code, &body[..], done), (200, &b"{\"result\":3}"[..], true));
            let (code, body, done) = read(close, step, true).unwrap();
            assert_eq!(
                (code, &body[..], done),
                (404, &b"{\"error\":\"no\"}"[..], true)
            );
        }
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read(interim, 3, false).unwrap(), (204, Vec::new(), true));
    }

    #[test]
    fn malformed_or_cut_answers_are_errors() {
        assert!(read(b"SSH-2.0-OpenSSH\r\n\r\n", 100, false).is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 100, false).is_err());
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(read(cut, 100, true).is_err());
        assert!(read(b"HTTP/1.1 200", 100, true).is_err());
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(read(bad_chunk, 100, false).is_err());
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 1));
        assert!(read(long.as_bytes(), 4096, false).is_err());
        let long_chunk = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            "1".repeat(2000)
        );
        assert!(read(long_chunk.as_bytes(), 4096, false).is_err());
    }
}

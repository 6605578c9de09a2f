//! What a cold task used, as its container's `measure` (the tools binary,
//! between docker-init and the task: `tools/src/measure.rs`) reports it:
//! one last line on stderr, after the task's own output, which this takes
//! out of the stream before the client sees it.
//!
//! The line starts with a NUL and an ESC, which text does not hold. A task
//! that prints such a line itself can only misstate its own usage: the
//! last line wins, and a line that never ends is given back as output once
//! it is longer than any real report.

use bytes::{Bytes, BytesMut};
use futures::{future, stream, Stream, StreamExt};
use std::sync::{Arc, Mutex};

use crate::task::{OutputStream, TaskError, Usage};

/// The start of the report line; the same bytes as `measure`'s `TRAILER`.
pub(crate) const TRAILER: &[u8] = b"\0\x1btcp-task-usage ";

/// The longest report line: four numbers and their names.
const MAX_LINE: usize = 256;

/// Watches a cold task's stderr for the report.
#[derive(Debug, Default)]
pub(crate) struct UsageLine {
    /// A report begun but not ended yet.
    partial: Option<BytesMut>,
    usage: Option<Usage>,
    /// The cgroup's count of OOM kills, when `measure` could read it.
    oom_kills: Option<u64>,
}

impl UsageLine {
    /// A stderr chunk: what of it is the task's own output (the report, if
    /// it is in there, taken out).
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let mut data = match self.partial.take() {
            Some(mut partial) => {
                partial.extend_from_slice(&chunk);
                partial.freeze()
            }
            None => chunk,
        };
        let Some(at) = find(&data, TRAILER) else {
            // A report cut by the chunk's end: hold its start back.
            let held = held_tail(&data);
            let tail = data.split_off(data.len() - held);
            if !tail.is_empty() {
                self.partial = Some(BytesMut::from(&tail[..]));
            }
            return data;
        };
        let before = data.split_to(at);
        match data.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = data.split_to(end + 1);
                if let Some((usage, oom_kills)) = parse(&line[TRAILER.len()..end]) {
                    self.usage = Some(usage);
                    self.oom_kills = oom_kills;
                }
                // Whatever follows was written after the report: output.
                join(before, data)
            }
            None if data.len() <= MAX_LINE => {
                self.partial = Some(BytesMut::from(&data[..]));
                before
            }
            None => join(before, data),
        }
    }

    /// The stream ended: a report still unfinished was output after all.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.partial.take().map(BytesMut::freeze)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// How many processes of the container the kernel OOM-killed.
    pub fn oom_kills(&self) -> Option<u64> {
        self.oom_kills
    }
}

/// A kept cold task's output, replayed from its container's log, as its
/// client saw it live: the log holds the report line, as its stderr did,
/// and the offsets a client resumes from count the output without it.
pub(crate) fn strip_report<S>(output: S) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream<Item = Result<(OutputStream, Bytes), TaskError>> + Send + 'static,
{
    let line = Arc::new(Mutex::new(UsageLine::default()));
    let end = line.clone();
    let rest = stream::once(async move { end.lock().unwrap().finish() })
        .filter_map(|rest| future::ready(rest.map(|r| Ok((OutputStream::Stderr, r)))));
    output
        .map(move |item| match item {
            Ok((OutputStream::Stderr, chunk)) => {
                Ok((OutputStream::Stderr, line.lock().unwrap().filter(chunk)))
            }
            other => other,
        })
        .chain(rest)
        .filter(|item| future::ready(!matches!(item, Ok((_, chunk)) if chunk.is_empty())))
}

/// How many bytes at the end of `data` could begin a report.
fn held_tail(data: &[u8]) -> usize {
    (1..TRAILER.len().min(data.len() + 1))
        .rev()
        .find(|&n| data.ends_with(&TRAILER[..n]))
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut joined = BytesMut::with_capacity(a.len() + b.len());
    joined.extend_from_slice(&a);
    joined.extend_from_slice(&b);
    joined.freeze()
}

/// `user_us=1 system_us=2 peak_memory_bytes=3 oom_kills=0` (the last only
/// where the cgroup shows it): the usage and the OOM-kill count.
fn parse(line: &[u8]) -> Option<(Usage, Option<u64>)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut usage = Usage::default();
    let mut oom_kills = None;
    for pair in text.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match key {
            "user_us" => usage.cpu_user_us = value,
            "system_us" => usage.cpu_system_us = value,
            "peak_memory_bytes" => usage.peak_memory_bytes = value,
            "oom_kills" => oom_kills = Some(value),
            _ => {}
        }
    }
    Some((usage, oom_kills))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(user: u64) -> Vec<u8> {
        let mut line = TRAILER.to_vec();
        line.extend_from_slice(
            format!("user_us={user} system_us=2 peak_memory_bytes=3\n").as_bytes(),
        );
        line
    }

    #[test]
    fn the_report_is_taken_out_wherever_the_chunks_split() {
        let mut stream = b"last words\n".to_vec();
        stream.extend(report(1500));
        for split in 0..stream.len() {
            let mut line = UsageLine::default();
            let mut output = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                output.extend_from_slice(&line.filter(Bytes::copy_from_slice(part)));
            }
            output.extend(line.finish().unwrap_or_default());
            assert_eq!(output, b"last words\n", "split at {split}");
            let usage = line.usage().expect("a report");
            assert_eq!(
                (
                    usage.cpu_user_us,
                    usage.cpu_system_us,
                    usage.peak_memory_bytes
                ),
                (1500, 2, 3)
            );
        }
    }

    #[tokio::test]
    async fn a_replayed_log_loses_its_report() {
        let mut tail = b"err\n".to_vec();
        tail.extend(report(7));
        let log = vec![
            Ok((OutputStream::Stdout, Bytes::from_static(b"out\n"))),
            Ok((OutputStream::Stderr, Bytes::from(tail))),
        ];
        let replayed: Vec<_> = strip_report(stream::iter(log))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(
            replayed,
            vec![
                (OutputStream::Stdout, Bytes::from_static(b"out\n")),
                (OutputStream::Stderr, Bytes::from_static(b"err\n")),
            ]
        );
    }

    #[test]
    fn the_oom_kill_count_is_read_when_the_report_has_it_and_the_last_report_wins() {
        let mut line = UsageLine::default();
        let mut stream = TRAILER.to_vec();
        stream.extend_from_slice(b"user_us=1 system_us=2 peak_memory_bytes=3 oom_kills=1\n");
        assert!(line.filter(Bytes::from(stream)).is_empty());
        assert_eq!(line.oom_kills(), Some(1));
        // A later report without the count (a task forging one first).
        assert!(line.filter(Bytes::from(report(5))).is_empty());
        assert_eq!(line.oom_kills(), None);
        assert_eq!(line.usage().map(|u| u.cpu_user_us), Some(5));
    }

    #[test]
    fn a_report_that_never_ends_is_output() {
        let mut line = UsageLine::default();
        let mut forged = TRAILER.to_vec();
        forged.extend_from_slice(b"user_us=1");
        assert!(line.filter(Bytes::from(forged.clone())).is_empty());
        assert_eq!(line.finish().as_deref(), Some(&forged[..]));
        let long = [TRAILER, &[b'x'; 400][..]].concat();
        assert_eq!(line.filter(Bytes::from(long.clone())).len(), long.len());
        assert!(line.usage().is_none());
    }
}

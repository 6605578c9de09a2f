//! A client that stops reading. The server's writes to it then wait on a
//! full socket, and every task of the connection waits behind them, each
//! holding its executor slot: a client that never reads could hold every
//! slot of the server. So a write that makes no progress for the
//! connection's `write_timeout` fails, and the connection closes. Its
//! tasks run on as after any broken connection (their output goes to the
//! engine's log, for `attach` within the reattach grace).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

/// A writer whose writes fail after `limit` without progress.
pub(crate) struct WriteTimeout<W> {
    inner: W,
    limit: Duration,
    /// Armed when a write first waits; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<W> WriteTimeout<W> {
    pub(crate) fn new(inner: W, limit: Duration) -> WriteTimeout<W> {
        WriteTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?} (write_timeout)"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_limit_and_one_read_resets_it() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = WriteTimeout::new(server, Duration::from_millis(200));
        writer.write_all(&[0; 1024]).await.unwrap(); // the pipe is now full

        // A reader that takes a little every 100 ms keeps the writes going.
        let (mut read_half, _keep) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0; 256];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                read_half.read_exact(&mut buf).await.unwrap();
            }
            read_half
        });
        writer
            .write_all(&[1; 2048])
            .await
            .expect("a slow reader is not a stall");
        let _read_half = reader.await.unwrap();

        // Nobody reads any more: the next write fails once the limit passes.
        let started = std::time::Instant::now();
        let error = writer.write_all(&[2; 2048]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(error.to_string().contains("write_timeout"), "{error}");
    }
}

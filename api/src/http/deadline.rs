//! Deadlines on the two halves of an HTTP exchange that the client paces: the request
//! body it sends, and the response it takes.
//!
//! hyper bounds the time to send a request's head (`header_read_timeout`) but nothing
//! after it: a client may trickle a body one byte every few seconds, or stop reading a
//! response, and hold its connection for as long as it likes. [`BodyDeadline`] fails a
//! body that has not arrived by its deadline (the server answers 408 and closes), and
//! [`WriteDeadline`] fails a connection whose client has taken no byte of a response for
//! a while.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client was too slow: it is answered 408 and its connection closed.
    #[error("the request body did not arrive within {0:?}")]
    Late(Duration),
    /// The connection failed mid-body: nothing to answer.
    #[error(transparent)]
    Read(hyper::Error),
}

/// A request body that must arrive by a deadline; past it, reading fails and `late` is
/// set, so that the client is told 408 whatever the handler made of the failure.
pub(crate) struct BodyDeadline {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    late: Arc<AtomicBool>,
}

impl BodyDeadline {
    /// `body`, which must have arrived `timeout` from now; `late` is set if it has not.
    pub(crate) fn new(body: Incoming, timeout: Duration, late: Arc<AtomicBool>) -> BodyDeadline {
        BodyDeadline {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            late,
        }
    }
}

impl hyper::body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyError::Late(self.timeout))));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(BodyError::Read)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose writes fail once the client has taken no byte for `timeout`, so
/// a client that stops reading cannot hold its connection (and the response waiting in
/// it) for ever.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits on the client.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    /// `inner`, whose writes may wait on the client for at most `timeout` each.
    pub(crate) fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: fails once the wait has lasted `timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no response byte for {timeout:?}"),
        ))
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => match self.poll_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_the_timeout() {
        use tokio::io::AsyncWriteExt;
        // A pipe whose reader never reads: writes stall once its buffer is full.
        let (writer, _reader) = tokio::io::duplex(16);
        let mut stream = WriteDeadline::new(writer, Duration::from_secs(30));
        let started = Instant::now();
        let err = stream.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_takes_slowly_succeeds() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (writer, mut reader) = tokio::io::duplex(16);
        let mut stream = WriteDeadline::new(writer, Duration::from_secs(30));
        let drain = async {
            let mut buf = [0u8; 16];
            let mut got = 0;
            while got < 256 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                got += reader.read(&mut buf).await.unwrap();
            }
        };
        let (written, ()) = tokio::join!(stream.write_all(&[1u8; 256]), drain);
        written.expect("each wait is shorter than the timeout");
    }
}

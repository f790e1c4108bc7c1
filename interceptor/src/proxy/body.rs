//! Body wrappers that stream (never buffer a whole body) while counting.
use super::upstream::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the rule's max_body of {0} bytes")]
pub struct TooLarge(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct Idle(pub std::time::Duration);

/// A request body that counts what passed and fails once it exceeds `max`
/// (a chunked body has no Content-Length to check up front), or when the
/// client pauses longer than `idle` (a slow upload holds a connection and
/// an upstream connection).
pub struct LimitedBody<B> {
    inner: B,
    max: Option<u64>,
    count: Arc<AtomicU64>,
    idle: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The timer runs only while the client owes bytes (not while the
    /// upstream is slow to take them).
    waiting: bool,
    /// Set when the client idled out, so the caller answers 408.
    pub idled: Arc<std::sync::atomic::AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub fn new(
        inner: B,
        max: Option<u64>,
        count: Arc<AtomicU64>,
        idle: std::time::Duration,
    ) -> Self {
        Self {
            inner,
            max,
            count,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            idled: Default::default(),
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready() {
            this.waiting = false;
        } else {
            if !this.waiting {
                this.waiting = true;
                let until = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(until);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                this.idled.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(Idle(this.idle)))));
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let total =
                        this.count.fetch_add(d.len() as u64, Ordering::Relaxed) + d.len() as u64;
                    if let Some(max) = this.max
                        && total > max
                    {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(max)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Done = Box<dyn FnOnce(u64, Option<String>) + Send + Sync>;

/// A response body that counts bytes and calls `done` exactly once: at the
/// end of the stream, on an error, or when the client goes away (drop).
pub struct TrackedBody<B> {
    inner: B,
    bytes: u64,
    /// An empty body (HEAD, 204) may never be polled.
    ended: bool,
    done: Option<Done>,
}

impl<B: Body> TrackedBody<B> {
    pub fn new(inner: B, done: impl FnOnce(u64, Option<String>) + Send + Sync + 'static) -> Self {
        let ended = inner.is_end_stream();
        Self {
            inner,
            bytes: 0,
            ended,
            done: Some(Box::new(done)),
        }
    }
}

impl<B> TrackedBody<B> {
    fn finish(&mut self, error: Option<String>) {
        self.ended = true;
        if let Some(d) = self.done.take() {
            d(self.bytes, error);
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(e))) => this.finish(Some(format!("upstream body: {e}"))),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        let error = (!self.ended)
            .then(|| "the client went away before the end of the response".to_string());
        self.finish(error);
    }
}

//! The request body as the client sends it: bounded pauses (`timeouts.clientBody`), its
//! errors told apart from the backend's, and a signal when it has all been read.
//!
//! A malformed body (bad chunked framing, a connection cut mid-body) or a client that stops
//! sending is the client's fault: it gets `400` or `408`, and the endpoint is not blamed. The
//! backend's response timeout starts once the whole body is read ([`BodyDone`]), so a long
//! upload at a steady pace succeeds whatever its length.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_session_persistence::edge::{BodyIdleTimeout, IdleTimeoutBody};

/// What went wrong with a request body, on the client's side.
#[derive(Debug)]
pub(crate) enum ClientBodyError {
    /// No data for `timeouts.clientBody`: `408`.
    Timeout(Duration),
    /// Malformed or cut short: `400`.
    Malformed(hyper::Error),
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBodyError::Timeout(after) => {
                write!(f, "the client sent no request body data for {after:?}")
            }
            ClientBodyError::Malformed(_) => f.write_str("the client's request body is malformed"),
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientBodyError::Timeout(_) => None,
            ClientBodyError::Malformed(err) => Some(err),
        }
    }
}

/// Set once a request body has been read to its end; in the request's extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct BodyDone(Arc<Done>);

#[derive(Debug, Default)]
struct Done {
    done: AtomicBool,
    waker: AtomicWaker,
}

impl BodyDone {
    fn set(&self) {
        self.0.done.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// Resolves once the body has been read to its end.
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.0.done.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.0.waker.register(cx.waker());
            if self.0.done.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    }
}

pin_project! {
    /// A request body from a client; see the [module docs](self).
    pub(crate) struct ClientBody {
        #[pin]
        inner: IdleTimeoutBody<Incoming>,
        done: Option<BodyDone>,
    }
}

impl ClientBody {
    /// `body`, with pauses bounded by `idle`, and the signal its end will give; `None` for a
    /// body that is already at its end (most requests), which needs no signal.
    pub(crate) fn new(body: Incoming, idle: Option<Duration>) -> (Self, Option<BodyDone>) {
        let done = (!body.is_end_stream()).then(BodyDone::default);
        // No limit: a timer that never fires before the connection's own.
        let idle = idle.unwrap_or(Duration::from_secs(1 << 30));
        (Self { inner: IdleTimeoutBody::new(body, idle), done: done.clone() }, done)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done.set();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(err))) => {
                Poll::Ready(Some(Err(match err.downcast::<BodyIdleTimeout>() {
                    Ok(timeout) => ClientBodyError::Timeout(timeout.after),
                    Err(err) => match err.downcast::<hyper::Error>() {
                        Ok(hyper) => ClientBodyError::Malformed(*hyper),
                        // IdleTimeoutBody only passes on Incoming's errors and its own.
                        Err(_) => ClientBodyError::Timeout(Duration::ZERO),
                    },
                })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

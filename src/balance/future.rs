use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

pin_project! {
    /// Response future of [`Balancer`](super::Balancer).
    #[project = Proj]
    pub struct ResponseFuture<P, Q> {
        #[pin]
        kind: Kind<P, Q>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<P, Q> {
        Pinned { #[pin] future: P },
        Balanced { #[pin] future: Q },
        Failed { error: Option<BoxError> },
    }
}

impl<P, Q> ResponseFuture<P, Q> {
    pub(super) fn pinned(future: P) -> Self {
        Self { kind: Kind::Pinned { future } }
    }

    pub(super) fn balanced(future: Q) -> Self {
        Self { kind: Kind::Balanced { future } }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self { kind: Kind::Failed { error: Some(error) } }
    }
}

impl<P, Q> fmt::Debug for ResponseFuture<P, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Pinned { .. } => "pinned",
            Kind::Balanced { .. } => "balanced",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture").field("kind", &kind).finish()
    }
}

impl<P, Q, T, E1, E2> Future for ResponseFuture<P, Q>
where
    P: Future<Output = Result<T, E1>>,
    Q: Future<Output = Result<T, E2>>,
    E1: Into<BoxError>,
    E2: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Proj { kind } = self.project();
        match kind.project() {
            KindProj::Pinned { future } => future.poll(cx).map_err(Into::into),
            KindProj::Balanced { future } => future.poll(cx).map_err(Into::into),
            KindProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

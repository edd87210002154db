//! One endpoint as the balancer holds it: tagged with its key and counting its load.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::load::Load;
use tower_service::Service;

use crate::ServedBy;

/// An endpoint service tagged with its key.
///
/// Every clone shares one in-flight counter, so pinned requests (sent to a clone directly) and
/// balanced ones (sent through p2c) feed the same [`Load`] measure. Each response carries
/// [`ServedBy`] with the key.
pub struct Endpoint<K, S> {
    key: K,
    inner: S,
    in_flight: Arc<AtomicUsize>,
}

impl<K, S> Endpoint<K, S> {
    /// Tags `inner` with `key`, with a fresh load counter.
    pub fn new(key: K, inner: S) -> Self {
        Self { key, inner, in_flight: Arc::new(AtomicUsize::new(0)) }
    }

    /// The endpoint's key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Requests sent to this endpoint (through any clone) whose response has not come yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl<K: Clone, S: Clone> Clone for Endpoint<K, S> {
    fn clone(&self) -> Self {
        Self { key: self.key.clone(), inner: self.inner.clone(), in_flight: self.in_flight.clone() }
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<K, S> Load for Endpoint<K, S> {
    type Metric = usize;

    fn load(&self) -> usize {
        self.in_flight()
    }
}

impl<K, S, B, RB> Service<Request<B>> for Endpoint<K, S>
where
    K: Clone + Send + Sync + 'static,
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = EndpointFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        EndpointFuture {
            inner: self.inner.call(req),
            key: Some(self.key.clone()),
            _guard: InFlight(self.in_flight.clone()),
        }
    }
}

/// Counts a request as in flight until its future completes or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// Response future of [`Endpoint`]: tags the response with [`ServedBy`].
    pub struct EndpointFuture<F, K> {
        #[pin]
        inner: F,
        key: Option<K>,
        _guard: InFlight,
    }
}

impl<F, K> fmt::Debug for EndpointFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointFuture").finish_non_exhaustive()
    }
}

impl<F, K, RB, E> Future for EndpointFuture<F, K>
where
    F: Future<Output = Result<Response<RB>, E>>,
    K: Clone + Send + Sync + 'static,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(key) = this.key.take() {
            ServedBy(key).insert(res.extensions_mut());
        }
        Poll::Ready(Ok(res))
    }
}

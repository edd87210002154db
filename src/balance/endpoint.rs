//! One endpoint as the balancer holds it: tagged with its key, counting its load, and carrying
//! the state that decides which requests it may take.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower::load::Load;
use tower_service::Service;

use super::state::EndpointState;
use super::view::Shared;
use crate::ServedBy;

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const REMOVED: u8 = 2;

/// What every clone of one endpoint in one balancer shares: its membership (serving,
/// draining, removed), and the state every balancer of its [`HealthView`] shares.
///
/// The lifecycle is written only by the balancer's table (under its lock) and read lock-free
/// on the hot path; a stale read costs at most one request routed by the previous state.
///
/// [`HealthView`]: super::HealthView
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// `SERVING`, `DRAINING` or `REMOVED`.
    lifecycle: AtomicU8,
    pub(crate) shared: Arc<Shared>,
}

impl Health {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { lifecycle: AtomicU8::new(SERVING), shared }
    }

    /// May take new sessions (p2c, affinity): serving and not ejected.
    pub(crate) fn is_eligible(&self) -> bool {
        self.lifecycle.load(Ordering::Acquire) == SERVING && !self.is_ejected()
    }

    /// May take requests of its established sessions: present (serving or draining) and not
    /// ejected.
    pub(crate) fn takes_pinned(&self) -> bool {
        self.lifecycle.load(Ordering::Acquire) != REMOVED && !self.is_ejected()
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.shared.is_ejected()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.lifecycle.load(Ordering::Acquire) == DRAINING
    }

    pub(crate) fn state(&self) -> EndpointState {
        if self.is_ejected() {
            EndpointState::Ejected
        } else if self.is_draining() {
            EndpointState::Draining
        } else {
            EndpointState::Serving
        }
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        let value = if draining { DRAINING } else { SERVING };
        self.lifecycle.store(value, Ordering::Release);
    }

    pub(crate) fn set_removed(&self) {
        self.lifecycle.store(REMOVED, Ordering::Release);
    }

    pub(crate) fn in_fail_fast(&self) -> bool {
        self.shared.in_fail_fast()
    }

    pub(crate) fn set_fail_fast(&self, on: bool) {
        self.shared.set_fail_fast(on);
    }

    /// Counts a request of an established session while the endpoint drains (the only time
    /// an operator watches them; a counter every thread writes costs a cache-line transfer
    /// per request otherwise).
    pub(crate) fn count_pinned(&self) {
        if self.is_draining() {
            self.shared.count_pinned();
        }
    }

    /// Takes one of `limit` waiting places, or `None` when all are taken.
    pub(crate) fn try_wait(&self, limit: usize) -> Option<WaitSlot> {
        let waiting = &self.shared.waiting;
        let mut now = waiting.load(Ordering::Relaxed);
        loop {
            if now >= limit {
                return None;
            }
            match waiting.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(WaitSlot(self.shared.clone())),
                Err(actual) => now = actual,
            }
        }
    }
}

/// One waiting place at an endpoint, given back on drop.
#[derive(Debug)]
pub(crate) struct WaitSlot(Arc<Shared>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An endpoint service tagged with its key: the [`ServedBy`] tagger.
///
/// The [`Balancer`](super::Balancer) wraps every endpoint in one; you need it only for a
/// balancer of your own. Each response carries [`ServedBy`] with the key, which is all the
/// layer needs to know who served a request; [`key`](Self::key) lets a picker find the pinned
/// endpoint; and every clone shares one in-flight counter, exposed as tower's [`Load`] (so
/// tower's p2c can balance over endpoints).
///
/// Under axum, a balancer of your own such as `tower::steer::Steer` needs two more things:
/// axum's services must be `Sync`, and `Steer` is not (it names the request type, and axum's
/// request body is not `Sync`), so put it behind a `Buffer` (which is `Clone + Sync`); and a
/// `Buffer` fails with a `BoxError`, so turn errors into responses with `HandleErrorLayer`
/// beneath the persistence layer.
///
/// ```
/// use axum::Router;
/// use axum::body::Body;
/// use axum::error_handling::HandleErrorLayer;
/// use axum::http::{Request, StatusCode};
/// use tower::steer::Steer;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
/// use tower_session_persistence::balance::Endpoint;
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{PinnedEndpoint, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let pods = ["pod-a", "pod-b"].map(|name| {
///     Endpoint::new(name.to_owned(), Router::new().fallback(move || async move { name }))
/// });
/// // The pinned pod if there is one, else the first.
/// let steer = Steer::new(pods, |req: &Request<Body>, pods: &[Endpoint<String, Router>]| {
///     let pin = req.extensions().get::<PinnedEndpoint<String>>();
///     pin.and_then(|PinnedEndpoint(key)| pods.iter().position(|pod| pod.key() == key))
///         .unwrap_or(0)
/// });
/// let policy = SessionPolicy::cookie("sid").path("/shop").build()?;
/// let sticky = ServiceBuilder::new()
///     .layer(SessionPersistenceLayer::new(policy, PlainCodec::default()))
///     .layer(HandleErrorLayer::new(|error: BoxError| async move {
///         (StatusCode::BAD_GATEWAY, error.to_string())
///     }))
///     .buffer(1024)
///     .service(steer);
/// let app = Router::new().nest_service("/shop", sticky);
///
/// let req = Request::get("/shop/cart").header("cookie", "sid=pod-b").body(Body::empty())?;
/// let res = app.oneshot(req).await?;
/// let body = axum::body::to_bytes(res.into_body(), 1024).await?;
/// assert_eq!(body, "pod-b");
/// # Ok(())
/// # }
/// ```
pub struct Endpoint<K, S> {
    key: K,
    inner: S,
    health: Arc<Health>,
}

impl<K, S> Endpoint<K, S> {
    /// Tags `inner` with `key`, with a fresh load counter.
    pub fn new(key: K, inner: S) -> Self {
        Self { key, inner, health: Arc::default() }
    }

    /// Tags `inner` with `key`, sharing `health` with an earlier service under the same key.
    pub(crate) fn with_health(key: K, inner: S, health: Arc<Health>) -> Self {
        Self { key, inner, health }
    }

    /// The endpoint's key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Requests sent to this endpoint (through any clone) whose response has not come yet.
    pub fn in_flight(&self) -> usize {
        self.health.shared.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

impl<K: Clone, S: Clone> Clone for Endpoint<K, S> {
    fn clone(&self) -> Self {
        Self { key: self.key.clone(), inner: self.inner.clone(), health: self.health.clone() }
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("in_flight", &self.in_flight())
            .field("state", &self.health.state())
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
        self.health.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        EndpointFuture {
            inner: self.inner.call(req),
            key: Some(self.key.clone()),
            _guard: InFlight(self.health.shared.clone()),
        }
    }
}

/// Counts a request as in flight until its future completes or is dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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

/// An endpoint as its group's p2c balancer sees it: ready only while it may take new sessions.
///
/// When an endpoint is drained, ejected or removed, its copy in p2c fails its next readiness
/// check, so p2c drops it at once, in the same poll that would have chosen it, without
/// waiting for the discovery message that follows.
pub(crate) struct Gated<K, S>(pub(crate) Endpoint<K, S>);

impl<K: Clone, S: Clone> Clone for Gated<K, S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, S> Load for Gated<K, S> {
    type Metric = usize;

    fn load(&self) -> usize {
        self.0.in_flight()
    }
}

/// The error with which an ineligible endpoint leaves p2c.
#[derive(Debug)]
struct Ineligible;

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("endpoint takes no new sessions")
    }
}

impl std::error::Error for Ineligible {}

impl<K, S, B, RB> Service<Request<B>> for Gated<K, S>
where
    K: Clone + fmt::Debug + Send + Sync + 'static,
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = GatedFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.0.health.is_eligible() {
            return Poll::Ready(Err(Ineligible.into()));
        }
        // A readiness error drops this copy from p2c (tower logs it); pinned requests that
        // meet the same error eject the endpoint.
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        GatedFuture {
            inner: self.0.call(req),
            target: Some((self.0.key.clone(), self.0.health.clone())),
        }
    }
}

pin_project! {
    /// Response future of [`Gated`]: an error says which endpoint it came from.
    pub(crate) struct GatedFuture<F, K> {
        #[pin]
        inner: EndpointFuture<F, K>,
        target: Option<(K, Arc<Health>)>,
    }
}

impl<F, K, RB, E> Future for GatedFuture<F, K>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    K: Clone + fmt::Debug + Send + Sync + 'static,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(res) => Poll::Ready(Ok(res)),
            Err(error) => {
                let error = error.into();
                let Some((key, health)) = this.target.take() else {
                    return Poll::Ready(Err(error));
                };
                Poll::Ready(Err(Box::new(FailedAt { key, health, error })))
            }
        }
    }
}

/// An error of a balanced request, with the endpoint it came from, so that the balancer can
/// eject that endpoint. Never leaves the balancer: its response future unwraps it.
#[derive(Debug)]
pub(crate) struct FailedAt<K> {
    pub(crate) key: K,
    pub(crate) health: Arc<Health>,
    pub(crate) error: BoxError,
}

impl<K> fmt::Display for FailedAt<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<K: fmt::Debug> std::error::Error for FailedAt<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

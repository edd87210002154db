use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::{Pending, ResponseFuture};
use super::settings::{Incoming, Settings, now};
use super::{Decision, SessionPersistenceLayer};
use crate::policy::SessionPolicy;
use crate::token::Codec;
use crate::{EndpointKey, PinnedEndpoint};

/// Middleware that keeps a client's session on one endpoint; see the
/// [module docs](crate::layer).
///
/// Made by [`SessionPersistenceLayer`]; the inner service stays reachable:
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{SessionPersistence, SessionPersistenceLayer};
///
/// let backend =
///     service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(())) });
/// let policy = SessionPolicy::cookie("sid").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default());
/// let svc: SessionPersistence<_> = layer.layer(backend);
/// let _backend = svc.into_inner();
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
pub struct SessionPersistence<S, K = String> {
    inner: S,
    settings: Arc<Settings>,
    _key: PhantomData<fn() -> K>,
}

impl<S: Clone, K> Clone for SessionPersistence<S, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), settings: self.settings.clone(), _key: PhantomData }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for SessionPersistence<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPersistence")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S, K> SessionPersistence<S, K> {
    pub(super) fn from_parts(inner: S, settings: Arc<Settings>) -> Self {
        Self { inner, settings, _key: PhantomData }
    }

    /// A layer that wraps services in `SessionPersistence`; the same as
    /// [`SessionPersistenceLayer::keyed`].
    pub fn layer(policy: SessionPolicy, codec: impl Codec) -> SessionPersistenceLayer<K> {
        SessionPersistenceLayer::keyed(policy, codec)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for SessionPersistence<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: EndpointKey,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let now = now();
        let (mut parts, body) = req.into_parts();
        let (incoming, state) = self.settings.read::<K>(&mut parts, now);
        let pending = match incoming {
            Incoming::Valid { key, issued, refreshed, stale } => {
                PinnedEndpoint(key.clone()).insert(&mut parts.extensions);
                Pending::Pinned { key, issued, refreshed, stale }
            }
            Incoming::Unusable(decision) => {
                // A pin left by someone else must not be honoured under our session.
                PinnedEndpoint::<K>::take(&mut parts.extensions);
                if decision != Decision::New {
                    tracing::debug!(decision = %decision, scope = %self.settings.scope, "session not honoured");
                }
                Pending::Unpinned(decision)
            }
        };
        let method = parts.method.clone();
        let future = self.inner.call(Request::from_parts(parts, body));
        ResponseFuture::new(future, self.settings.clone(), pending, state, method, now)
    }
}

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::{Pending, ResponseFuture};
use super::{Identifier, LearnLayer, Shared};
use crate::store::SessionStore;
use crate::{EndpointKey, PinnedEndpoint};

/// Middleware that pins requests carrying a learned session identifier; see the
/// [module docs](crate::learn).
///
/// Made by [`LearnLayer`]. `poll_ready` forwards to the inner service; a request whose lookup
/// needs I/O takes the service that was made ready into its future and leaves a clone here,
/// hence `S: Clone`.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, service_fn};
/// use tower_session_persistence::learn::{Identifier, Learn, LearnLayer};
/// use tower_session_persistence::store::MemoryStore;
///
/// let backend =
///     service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(())) });
/// let layer = LearnLayer::<String>::new(Identifier::cookie("sid"), MemoryStore::new(10), [3u8; 32])?;
/// let svc: Learn<_, String> = layer.layer(backend);
/// let _backend = svc.into_inner();
/// # Ok::<(), tower_session_persistence::learn::KeyTooShort>(())
/// ```
pub struct Learn<S, K> {
    inner: S,
    shared: Arc<Shared>,
    _key: PhantomData<fn() -> K>,
}

impl<S: Clone, K> Clone for Learn<S, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), shared: self.shared.clone(), _key: PhantomData }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Learn<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learn").field("inner", &self.inner).field("shared", &self.shared).finish()
    }
}

impl<S, K> Learn<S, K> {
    pub(super) fn from_parts(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared, _key: PhantomData }
    }

    /// A layer that wraps services in `Learn`; the same as [`LearnLayer::new`].
    ///
    /// # Errors
    ///
    /// As [`LearnLayer::new`].
    pub fn layer(
        identifier: Identifier,
        store: impl SessionStore,
        key: impl AsRef<[u8]>,
    ) -> Result<LearnLayer<K>, super::KeyTooShort> {
        LearnLayer::new(identifier, store, key)
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

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Learn<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: EndpointKey,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        // A pin left by someone else is never honoured under this layer.
        PinnedEndpoint::<K>::take(req.extensions_mut());
        let now = (shared.clock)();
        let Some(key) = shared.identifier.in_request(req.headers()).map(|id| shared.store_key(id))
        else {
            let future = self.inner.call(req);
            return ResponseFuture::calling(future, self.shared.clone(), Pending::none(now));
        };
        let mut lookup = shared.store.lookup(&key, shared.lifetime, now);
        let mut pending = Pending::with_key(key, now);
        match lookup.take_ready() {
            // An in-process store: answered already, no need to wait.
            Some(found) => {
                pending.found(found, req.extensions_mut(), shared);
                let future = self.inner.call(req);
                ResponseFuture::calling(future, self.shared.clone(), pending)
            }
            None => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::looking_up(lookup, ready, req, self.shared.clone(), pending)
            }
        }
    }
}

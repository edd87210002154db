use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::Decision;
use super::settings::Settings;
use crate::token::Codec;
use crate::{EndpointKey, ServedBy};

/// What the request brought, kept until the response comes.
pub(super) enum Pending<K> {
    Pinned { key: K, issued: u64, refreshed: u64 },
    Unpinned(Decision),
}

pin_project! {
    /// Response future of [`SessionPersistence`](super::SessionPersistence).
    pub struct ResponseFuture<F, K, C> {
        #[pin]
        inner: F,
        settings: Arc<Settings<C>>,
        pending: Option<Pending<K>>,
        now: u64,
        _key: PhantomData<fn() -> K>,
    }
}

impl<F, K, C> ResponseFuture<F, K, C> {
    pub(super) fn new(inner: F, settings: Arc<Settings<C>>, pending: Pending<K>, now: u64) -> Self {
        Self { inner, settings, pending: Some(pending), now, _key: PhantomData }
    }
}

impl<F, K, C> fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, K, C, B, E> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    K: EndpointKey,
    C: Codec,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(Ok(res));
        };
        // A response without a tag was not balanced (an error page, a route without
        // endpoints): there is nothing to say about the session.
        let Some(ServedBy(served)) = ServedBy::<K>::take(res.extensions_mut()) else {
            return Poll::Ready(Ok(res));
        };
        let now = *this.now;
        let settings = &**this.settings;
        let decision = match pending {
            Pending::Pinned { key, issued, refreshed } if key == served => {
                if settings.refresh_due(refreshed, now) {
                    settings.write(res.headers_mut(), &served, issued, now);
                }
                Decision::Pinned
            }
            Pending::Pinned { .. } => {
                settings.write(res.headers_mut(), &served, now, now);
                Decision::Repinned
            }
            Pending::Unpinned(decision) => {
                settings.write(res.headers_mut(), &served, now, now);
                decision
            }
        };
        tracing::debug!(decision = %decision, endpoint = ?served, scope = %settings.scope, "session");
        res.extensions_mut().insert(decision);
        Poll::Ready(Ok(res))
    }
}

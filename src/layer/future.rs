use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Method, Response};
use pin_project_lite::pin_project;

use super::Decision;
use super::settings::Settings;
use crate::strategy::Reply;
use crate::{EndpointKey, PinnedUnavailable, ServedBy};

/// What the request brought, kept until the response comes.
pub(super) enum Pending<K> {
    Pinned { key: K, issued: Option<u64>, refreshed: Option<u64> },
    Unpinned(Decision),
}

pin_project! {
    /// Response future of [`SessionPersistence`](super::SessionPersistence).
    pub struct ResponseFuture<F, K> {
        #[pin]
        inner: F,
        settings: Arc<Settings>,
        pending: Option<Pending<K>>,
        method: Method,
        now: u64,
        _key: PhantomData<fn() -> K>,
    }
}

impl<F, K> ResponseFuture<F, K> {
    pub(super) fn new(
        inner: F,
        settings: Arc<Settings>,
        pending: Pending<K>,
        method: Method,
        now: u64,
    ) -> Self {
        Self { inner, settings, pending: Some(pending), method, now, _key: PhantomData }
    }
}

impl<F, K> fmt::Debug for ResponseFuture<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, K, B, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    K: EndpointKey,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let Some(pending) = this.pending.take() else { return Poll::Ready(Ok(res)) };
        let (mut parts, body) = res.into_parts();
        let settings = &**this.settings;
        // A response without a tag was not balanced (an error page, a route without
        // endpoints): there is nothing to say about the session.
        let Some(ServedBy(served)) = ServedBy::<K>::take(&mut parts.extensions) else {
            // Unless the balancer refused the pinned endpoint, and an error handler beneath
            // the layer said so: the session stays as it is.
            if let Pending::Pinned { key, .. } = &pending
                && parts.extensions.get::<PinnedUnavailable>().is_some()
            {
                let decision = Decision::Rejected;
                tracing::debug!(decision = %decision, endpoint = ?key, scope = %settings.scope, "session");
                crate::metrics::decision(&settings.scope, decision, key);
                parts.extensions.insert(decision);
            }
            return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
        };
        let now = *this.now;
        let (decision, issued, due, previous) = match pending {
            Pending::Pinned { key, issued, refreshed } if key == served => {
                let due = settings.refresh_due(issued, refreshed, now);
                (Decision::Pinned, issued.unwrap_or(now), due, None)
            }
            Pending::Pinned { key, .. } => (Decision::Repinned, now, true, Some(key)),
            Pending::Unpinned(decision) => (decision, now, true, None),
        };
        let make_token = || settings.token(&served, issued, now);
        let reply =
            Reply::new(decision, due, this.method, settings.max_age(issued, now), &make_token);
        settings.strategy.on_response(&settings.policy, &mut parts, &reply);
        match previous {
            // Where the session was pinned before it moved.
            Some(previous) => {
                tracing::debug!(decision = %decision, endpoint = ?served, ?previous, scope = %settings.scope, "session");
            }
            None => {
                tracing::debug!(decision = %decision, endpoint = ?served, scope = %settings.scope, "session");
            }
        }
        crate::metrics::decision(&settings.scope, decision, &served);
        parts.extensions.insert(decision);
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

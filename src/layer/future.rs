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
use crate::seam::served_by_type;
use crate::strategy::{AnyState, Reply};
use crate::{EndpointKey, PinnedUnavailable, ServedBy};

/// What the request brought, kept until the response comes.
pub(super) enum Pending<K> {
    Pinned { key: K, issued: Option<u64>, refreshed: Option<u64>, stale: bool },
    Unpinned(Decision),
}

pin_project! {
    /// Response future of [`SessionPersistence`](super::SessionPersistence).
    pub struct ResponseFuture<F, K> {
        #[pin]
        inner: F,
        settings: Arc<Settings>,
        pending: Option<Pending<K>>,
        state: Option<AnyState>,
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
        state: AnyState,
        method: Method,
        now: u64,
    ) -> Self {
        Self {
            inner,
            settings,
            pending: Some(pending),
            state: Some(state),
            method,
            now,
            _key: PhantomData,
        }
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
        let (Some(pending), Some(state)) = (this.pending.take(), this.state.take()) else {
            return Poll::Ready(Ok(res));
        };
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
            } else if settings.watch.should_warn() {
                warn_untagged::<K>(served_by_type(&parts.extensions), &settings.scope);
            }
            return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
        };
        settings.watch.tagged();
        let now = *this.now;
        let (decision, issued, due, previous) = match pending {
            Pending::Pinned { key, issued, refreshed, stale } if key == served => {
                // A token under an older key is written again under the primary one.
                let due = stale || settings.refresh_due(issued, refreshed, now);
                (Decision::Pinned, issued.unwrap_or(now), due, None)
            }
            Pending::Pinned { key, .. } => (Decision::Repinned, now, true, Some(key)),
            Pending::Unpinned(decision) => (decision, now, true, None),
        };
        let make_token = || settings.token(&served, issued, now);
        let reply =
            Reply::new(decision, due, this.method, settings.max_age(issued, now), &make_token);
        settings.strategy.on_response(&settings.policy, &mut parts, &reply, state);
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

/// The one warning of a layer whose balancer never tagged a response for it: without
/// `ServedBy<K>` the layer cannot write a session, and nothing else would tell.
#[cold]
fn warn_untagged<K>(found: Option<&'static str>, scope: &str) {
    let expected = std::any::type_name::<K>();
    match found {
        Some(found) => tracing::warn!(
            scope,
            "SessionPersistenceLayer<{expected}> got a response tagged ServedBy<{found}>, not \
             ServedBy<{expected}>: no session is written. The layer's key type must be the \
             balancer's (SessionPersistenceLayer::keyed or .key::<{found}>()). Warned once."
        ),
        None => tracing::warn!(
            scope,
            "SessionPersistenceLayer<{expected}> got a response without ServedBy<{expected}>: no \
             session is written. Likely causes: the service beneath is not a balancer that tags \
             its responses (wrap its endpoints in balance::Endpoint, or insert ServedBy), its \
             key type is not {expected}, or the layer wraps routes that are not balanced (use \
             route_layer on the balanced routes). Warned once; ignore it if this service also \
             answers some requests itself."
        ),
    }
}

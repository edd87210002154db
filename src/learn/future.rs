use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Shared;
use crate::store::{StoreError, StoreFuture, StoreKey};
use crate::{Decision, EndpointKey, PinnedEndpoint, PinnedUnavailable, ServedBy};

/// What the request brought, kept until the response comes.
pub(super) struct Pending<K> {
    /// The request's identifier, hashed.
    key: Option<StoreKey>,
    /// The endpoint the store knew for it.
    known: Option<K>,
    /// Whether the store could not answer.
    failed: bool,
    now: SystemTime,
}

impl<K: EndpointKey> Pending<K> {
    pub(super) fn none(now: SystemTime) -> Self {
        Self { key: None, known: None, failed: false, now }
    }

    pub(super) fn with_key(key: StoreKey, now: SystemTime) -> Self {
        Self { key: Some(key), known: None, failed: false, now }
    }

    /// Takes the store's answer: a known endpoint pins the request.
    pub(super) fn found(
        &mut self,
        found: Result<Option<Arc<[u8]>>, StoreError>,
        extensions: &mut Extensions,
        shared: &Shared,
    ) {
        match found {
            Ok(Some(bytes)) => match K::from_bytes(&bytes) {
                Some(key) => {
                    PinnedEndpoint(key.clone()).insert(extensions);
                    self.known = Some(key);
                }
                None => {
                    tracing::debug!(scope = %shared.scope, "learned session names no endpoint of this key type");
                }
            },
            Ok(None) => {}
            Err(err) => {
                // The store warns (rate-limited); the request is balanced as unknown.
                tracing::debug!(error = %err, scope = %shared.scope, "learned session not looked up");
                self.failed = true;
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F, Res> {
        Lookup {
            lookup: StoreFuture<Option<Arc<[u8]>>>,
            service: Option<S>,
            request: Option<Req>,
        },
        Call {
            #[pin]
            future: F,
        },
        Store {
            insert: StoreFuture<()>,
            response: Option<Res>,
        },
    }
}

pin_project! {
    /// Response future of [`Learn`](super::Learn): waits for the store's lookup (when it is
    /// not answered at once), calls the inner service, and stores what the response teaches
    /// (bounded by the store's own timeout) before handing the response on.
    pub struct ResponseFuture<S, B, K>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, Request<B>, S::Future, S::Response>,
        shared: Arc<Shared>,
        pending: Pending<K>,
    }
}

impl<S, B, K> ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
{
    pub(super) fn calling(future: S::Future, shared: Arc<Shared>, pending: Pending<K>) -> Self {
        Self { state: State::Call { future }, shared, pending }
    }

    pub(super) fn looking_up(
        lookup: StoreFuture<Option<Arc<[u8]>>>,
        service: S,
        request: Request<B>,
        shared: Arc<Shared>,
        pending: Pending<K>,
    ) -> Self {
        Self {
            state: State::Lookup { lookup, service: Some(service), request: Some(request) },
            shared,
            pending,
        }
    }
}

impl<S, B, K> fmt::Debug for ResponseFuture<S, B, K>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, K, ResBody> Future for ResponseFuture<S, B, K>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    K: EndpointKey,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Lookup { lookup, service, request } => {
                    let found = ready!(Pin::new(lookup).poll(cx));
                    let mut request = request.take().expect("polled after completion");
                    let mut service = service.take().expect("polled after completion");
                    this.pending.found(found, request.extensions_mut(), this.shared);
                    let future = service.call(request);
                    this.state.set(State::Call { future });
                }
                StateProj::Call { future } => {
                    let mut response = ready!(future.poll(cx))?;
                    match learn(this.shared, this.pending, &mut response) {
                        Some(mut insert) => match insert.take_ready() {
                            Some(result) => {
                                stored(result, this.shared);
                                return Poll::Ready(Ok(response));
                            }
                            None => {
                                this.state.set(State::Store { insert, response: Some(response) })
                            }
                        },
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::Store { insert, response } => {
                    let result = ready!(Pin::new(insert).poll(cx));
                    stored(result, this.shared);
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}

fn stored(result: Result<(), StoreError>, shared: &Shared) {
    if let Err(err) = result {
        tracing::debug!(error = %err, scope = %shared.scope, "learned session not stored");
    }
}

/// Decides what the response teaches: records the [`Decision`], and returns the store
/// operation to run, if any.
fn learn<K: EndpointKey, B>(
    shared: &Shared,
    pending: &mut Pending<K>,
    response: &mut Response<B>,
) -> Option<StoreFuture<()>> {
    let extensions = response.extensions_mut();
    let Some(ServedBy(served)) = ServedBy::<K>::take(extensions) else {
        // Not balanced (an error page); or the balancer refused the known endpoint and an
        // error handler beneath said so: the mapping stays as it is.
        if let Some(known) = &pending.known
            && extensions.get::<PinnedUnavailable>().is_some()
        {
            let decision = Decision::Rejected;
            tracing::debug!(decision = %decision, endpoint = ?known, scope = %shared.scope, "learned session");
            extensions.insert(decision);
        }
        return None;
    };
    let set = shared.identifier.in_response(response.headers()).map(|id| shared.store_key(id));
    let known = pending.known.take();
    let (decision, key) = match (set, pending.key.take()) {
        // The application (re)starts a session: learn it, unless it only repeats what the
        // request said about an identifier already mapped to this endpoint.
        (Some(set), request) => {
            let same_id = request.as_ref() == Some(&set);
            match &known {
                Some(k) if *k == served && same_id => (Decision::Pinned, None),
                Some(k) if *k == served => (Decision::Pinned, Some(set)),
                Some(_) => (Decision::Repinned, Some(set)),
                None => (Decision::New, Some(set)),
            }
        }
        (None, Some(request)) => match &known {
            Some(k) if *k == served => (Decision::Pinned, None),
            // Failover: the identifier now belongs to the endpoint that served it.
            Some(_) => (Decision::Repinned, Some(request)),
            None if shared.learn_requests && !pending.failed => (Decision::New, Some(request)),
            None => {
                tracing::debug!(endpoint = ?served, scope = %shared.scope, failed = pending.failed, "learned session unknown");
                return None;
            }
        },
        (None, None) => return None,
    };
    match &known {
        Some(previous) if decision == Decision::Repinned => {
            tracing::debug!(decision = %decision, endpoint = ?served, ?previous, scope = %shared.scope, "learned session");
        }
        _ => {
            tracing::debug!(decision = %decision, endpoint = ?served, scope = %shared.scope, "learned session");
        }
    }
    response.extensions_mut().insert(decision);
    let key = key?;
    Some(shared.store.insert(&key, &served.to_bytes(), shared.lifetime, pending.now))
}

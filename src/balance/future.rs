//! The balancer's response future: waits for a chosen endpoint (bounded), falls back per
//! policy, and redispatches a request that never reached its endpoint (bounded attempts,
//! within the retry budget).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tower::BoxError;
use tower::retry::budget::Budget;
use tower_service::Service;

use super::core::{BalancedFuture, Core, Dispatched, DispatcherGone, Enqueued, NoEndpoints};
use super::endpoint::{Endpoint, EndpointFuture, FailedAt, Health, WaitSlot};
use super::failure::{is_idempotent, take_unsent_request};
use crate::{EndpointKey, OnUnavailable, PinnedUnavailable, ServedBy};

/// Why a request went to one endpoint rather than through p2c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Its session names the endpoint: falls back per `OnUnavailable`.
    Pinned,
    /// Its affinity key maps to the endpoint: best effort, falls back to p2c.
    Affinity,
    /// Balanced by p2c.
    Balanced,
    /// Sent again, to another endpoint than the one that failed it: falls back to p2c.
    Redispatched,
}

/// A place in an endpoint's bounded queue and the fail-fast deadline.
struct Wait {
    _slot: WaitSlot,
    expired: Pin<Box<Sleep>>,
}

type Waiting<T> = Pin<Box<dyn Future<Output = Result<oneshot::Receiver<T>, BoxError>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<K, S, F, G, B, T> {
        /// Waiting for one endpoint's readiness, still owning the request.
        Direct { endpoint: Endpoint<K, S>, req: Option<Request<B>>, wait: Option<Wait> },
        /// Sent to that endpoint.
        Calling { #[pin] future: EndpointFuture<F, K>, key: K, health: Arc<Health> },
        /// For the group's p2c: sent at once if an endpoint is ready, else queued.
        ToBalance { group: usize, req: Option<Request<B>> },
        /// Waiting for room in the group's queue.
        Enqueued { waiting: Waiting<T> },
        /// Waiting for the group's dispatcher.
        Queued { answer: oneshot::Receiver<T> },
        /// Sent by p2c.
        Balanced { #[pin] future: G },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// Response future of [`Balancer`](super::Balancer).
    pub struct ResponseFuture<K, S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<
            K,
            S,
            <S as Service<Request<B>>>::Future,
            BalancedFuture<K, S, B>,
            B,
            Dispatched<K, S, B>,
        >,
        core: Arc<Core<K, S, B>>,
        mode: Mode,
        replay: Option<Request<B>>,
        // How many more times the request may be sent to another endpoint.
        redispatches: u8,
    }
}

type StateOf<K, S, B> = State<
    K,
    S,
    <S as Service<Request<B>>>::Future,
    BalancedFuture<K, S, B>,
    B,
    Dispatched<K, S, B>,
>;

impl<K, S, B> fmt::Debug for ResponseFuture<K, S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Direct { .. } => "waiting for its endpoint",
            State::Calling { .. } => "sent to its endpoint",
            State::ToBalance { .. } => "for p2c",
            State::Enqueued { .. } => "waiting for room in the queue",
            State::Queued { .. } => "queued for p2c",
            State::Balanced { .. } => "sent by p2c",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture").field("state", &state).field("mode", &self.mode).finish()
    }
}

impl<K, S, B, RB> ResponseFuture<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    /// A request for one endpoint (its pin or its affinity key).
    pub(super) fn direct(
        core: Arc<Core<K, S, B>>,
        endpoint: Endpoint<K, S>,
        req: Request<B>,
        mode: Mode,
        replay: Option<Request<B>>,
    ) -> Self {
        let state = State::Direct { endpoint, req: Some(req), wait: None };
        let redispatches = core.settings.redispatches;
        Self { state, core, mode, replay, redispatches }
    }

    /// A request for p2c.
    pub(super) fn balanced(
        core: Arc<Core<K, S, B>>,
        req: Request<B>,
        replay: Option<Request<B>>,
    ) -> Self {
        let state = balance(&core, req);
        let redispatches = core.settings.redispatches;
        Self { state, core, mode: Mode::Balanced, replay, redispatches }
    }

    /// A request that fails at once.
    pub(super) fn failed(core: Arc<Core<K, S, B>>, error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            core,
            mode: Mode::Balanced,
            replay: None,
            redispatches: 0,
        }
    }
}

/// The state of a request put on the balanced path.
fn balance<K, S, B, RB>(core: &Core<K, S, B>, req: Request<B>) -> StateOf<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    match core.pick_group() {
        Some(group) => State::ToBalance { group, req: Some(req) },
        None => State::Failed { error: Some(NoEndpoints.into()) },
    }
}

/// The state of a request whose endpoint cannot take it (gone, ejected, busy past the
/// deadline): per policy for a pinned request, p2c for the others.
fn fall_back<K, S, B, RB>(
    core: &Core<K, S, B>,
    mode: Mode,
    req: Option<Request<B>>,
    key: &K,
    why: &'static str,
) -> StateOf<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    let Some(req) = req else {
        return State::Failed { error: Some(PolledAfterCompletion.into()) };
    };
    if mode == Mode::Pinned && core.settings.on_unavailable == OnUnavailable::Reject {
        tracing::debug!(endpoint = ?key, why, "pinned endpoint unavailable; rejecting");
        return State::Failed { error: Some(PinnedUnavailable.into()) };
    }
    tracing::debug!(endpoint = ?key, why, ?mode, "endpoint unavailable; rebalancing");
    balance(core, req)
}

/// After an error from endpoint `key`. If the classifier says the endpoint is failing (the
/// request never reached it), eject it and, policy permitting, redispatch the request: the one
/// the endpoint handed back, else the replay copy. If the request was sent, redispatch only
/// an idempotent replay copy, and only when the balancer opted in. Either way within the
/// request's attempts and the balancer's retry budget.
fn fail_over<K, S, B, RB>(
    core: &Arc<Core<K, S, B>>,
    mode: &mut Mode,
    replay: &mut Option<Request<B>>,
    redispatches: &mut u8,
    key: &K,
    health: &Arc<Health>,
    error: BoxError,
) -> Result<StateOf<K, S, B>, BoxError>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    let settings = &core.settings;
    let (req, reason) = if (settings.classifier)(&error) {
        core.eject(key, health);
        if *mode == Mode::Pinned && settings.on_unavailable == OnUnavailable::Reject {
            tracing::debug!(endpoint = ?key, %error, "pinned endpoint failing; rejecting");
            return Err(PinnedUnavailable.into());
        }
        (take_unsent_request::<B>(&error).or_else(|| replay.take()), "not_sent")
    } else if settings.retry_sent {
        (replay.take_if(|copy| is_idempotent(copy.method())), "sent")
    } else {
        (None, "sent")
    };
    let Some(req) = req else { return Err(error) };
    if *redispatches == 0 {
        tracing::debug!(endpoint = ?key, %error, "endpoint failing; no attempt left");
        crate::metrics::redispatch_denied("attempts");
        return Err(error);
    }
    // Nowhere else to go: the endpoint's own error says more than "no endpoints".
    let Some(endpoint) = core.redispatch_target(key) else {
        tracing::debug!(endpoint = ?key, %error, "endpoint failing; no other endpoint to redispatch to");
        return Err(error);
    };
    if let Some(budget) = &settings.budget
        && !budget.withdraw()
    {
        tracing::debug!(endpoint = ?key, %error, "endpoint failing; retry budget spent");
        crate::metrics::redispatch_denied("budget");
        return Err(error);
    }
    *redispatches -= 1;
    crate::metrics::redispatched(reason);
    tracing::debug!(endpoint = ?key, to = ?endpoint.key(), %error, "endpoint failing; redispatching");
    *mode = Mode::Redispatched;
    Ok(State::Direct { endpoint, req: Some(req), wait: None })
}

impl<K, S, B, RB> Future for ResponseFuture<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Direct { endpoint, req, wait } => {
                    let health = endpoint.health().clone();
                    if !health.takes_pinned() {
                        fall_back(this.core, *this.mode, req.take(), endpoint.key(), "left")
                    } else {
                        match endpoint.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                health.set_fail_fast(false);
                                *wait = None;
                                match req.take() {
                                    Some(req) => State::Calling {
                                        future: endpoint.call(req),
                                        key: endpoint.key().clone(),
                                        health,
                                    },
                                    None => {
                                        State::Failed { error: Some(PolledAfterCompletion.into()) }
                                    }
                                }
                            }
                            Poll::Ready(Err(error)) => {
                                // Nothing was sent: the endpoint itself is failing.
                                let error: BoxError = error.into();
                                tracing::debug!(endpoint = ?endpoint.key(), %error, "endpoint failed its readiness check");
                                this.core.eject(endpoint.key(), &health);
                                fall_back(
                                    this.core,
                                    *this.mode,
                                    req.take(),
                                    endpoint.key(),
                                    "failed",
                                )
                            }
                            Poll::Pending => {
                                let settings = &this.core.settings;
                                let mut why = None;
                                if wait.is_none() {
                                    if health.in_fail_fast() {
                                        why = Some("busy (fail-fast)");
                                    } else if let Some(slot) =
                                        health.try_wait(settings.endpoint_queue)
                                    {
                                        let expired =
                                            Box::pin(tokio::time::sleep(settings.failfast));
                                        *wait = Some(Wait { _slot: slot, expired });
                                    } else {
                                        why = Some("busy (queue full)");
                                    }
                                }
                                if let Some(w) = wait.as_mut()
                                    && w.expired.as_mut().poll(cx).is_ready()
                                {
                                    health.set_fail_fast(true);
                                    why = Some("busy past the deadline");
                                }
                                match why {
                                    Some(why) => {
                                        *wait = None;
                                        fall_back(
                                            this.core,
                                            *this.mode,
                                            req.take(),
                                            endpoint.key(),
                                            why,
                                        )
                                    }
                                    None => return Poll::Pending,
                                }
                            }
                        }
                    }
                }
                StateProj::Calling { future, key, health } => match ready!(future.poll(cx)) {
                    Ok(res) => {
                        if this.core.settings.consecutive_5xx.is_some() {
                            this.core.outlier(key, health, res.status());
                        }
                        return Poll::Ready(Ok(res));
                    }
                    Err(error) => {
                        match fail_over(
                            this.core,
                            this.mode,
                            this.replay,
                            this.redispatches,
                            key,
                            health,
                            error.into(),
                        ) {
                            Ok(next) => next,
                            Err(error) => return Poll::Ready(Err(error)),
                        }
                    }
                },
                StateProj::ToBalance { group, req } => {
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    };
                    match this.core.try_now(*group, req, cx) {
                        Ok(future) => State::Balanced { future },
                        Err(req) => match this.core.enqueue(*group, req) {
                            Enqueued::Queued(answer) => State::Queued { answer },
                            Enqueued::Waiting(waiting) => State::Enqueued { waiting },
                            Enqueued::Failed(error) => State::Failed { error: Some(error) },
                        },
                    }
                }
                StateProj::Enqueued { waiting } => match ready!(waiting.as_mut().poll(cx)) {
                    Ok(answer) => State::Queued { answer },
                    Err(error) => return Poll::Ready(Err(error)),
                },
                StateProj::Queued { answer } => match ready!(Pin::new(answer).poll(cx)) {
                    Ok(Ok(future)) => State::Balanced { future },
                    Ok(Err(error)) => return Poll::Ready(Err(error)),
                    Err(_) => return Poll::Ready(Err(DispatcherGone.into())),
                },
                StateProj::Balanced { future } => match ready!(future.poll(cx)) {
                    Ok(res) => {
                        if this.core.settings.consecutive_5xx.is_some()
                            && let Some(ServedBy(key)) = res.extensions().get::<ServedBy<K>>()
                            && let Some(health) = this.core.health(key)
                        {
                            this.core.outlier(key, &health, res.status());
                        }
                        return Poll::Ready(Ok(res));
                    }
                    Err(error) => match error.downcast::<FailedAt<K>>() {
                        Ok(failed) => {
                            let FailedAt { key, health, error } = *failed;
                            match fail_over(
                                this.core,
                                this.mode,
                                this.replay,
                                this.redispatches,
                                &key,
                                &health,
                                error,
                            ) {
                                Ok(next) => next,
                                Err(error) => return Poll::Ready(Err(error)),
                            }
                        }
                        Err(error) => return Poll::Ready(Err(error)),
                    },
                },
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(|| PolledAfterCompletion.into());
                    return Poll::Ready(Err(error));
                }
            };
            this.state.set(next);
        }
    }
}

/// A balancer future polled again after it completed: a bug in the caller, answered with an
/// error rather than a panic.
#[derive(Clone, Copy, Debug)]
struct PolledAfterCompletion;

impl std::fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("balancer future polled after completion")
    }
}

impl std::error::Error for PolledAfterCompletion {}

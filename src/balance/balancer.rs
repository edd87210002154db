//! The persistence-aware balancer: its handle, its builder and its `Service` impl.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::BoxError;
use tower::balance::p2c::Balance;
use tower::discover::{Change, Discover};
use tower::retry::budget::{Budget, TpsBudget};
use tower_service::Service;

use super::affinity::{AffinityKey, NoAffinity};
use super::core::{Classifier, Core, P2c, Settings, dispatch};
use super::failure::{NoReplay, Replay, ReplayEmptyBodies, is_connect_failure};
use super::future::{Mode, ResponseFuture};
use super::state::EndpointState;
use super::view::{EndpointStats, HealthView, Member};
use crate::policy::SessionPolicy;
use crate::token::Codec;
use crate::{
    EndpointKey, OnUnavailable, PinnedEndpoint, PinnedUnavailable, SessionPersistenceLayer,
};

/// A load balancer that honours [`PinnedEndpoint`]; see the [module docs](super).
///
/// Cheap to clone; every clone shares the same endpoints. The handle also changes endpoint
/// states at run time ([`drain`](Self::drain), [`set_state`](Self::set_state)) and group
/// weights ([`set_weight`](Self::set_weight)); endpoints come and go through each group's
/// [`Discover`].
pub struct Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    core: Arc<Core<K, S, B>>,
}

impl<K, S, B> Clone for Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    fn clone(&self) -> Self {
        Self { core: self.core.clone() }
    }
}

impl<K: fmt::Debug, S, B> fmt::Debug for Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.core.keys_debug())
            .field("weights", &self.core.weights())
            .field("settings", &self.core.settings)
            .finish()
    }
}

/// Configures and starts a [`Balancer`].
///
/// `A` is the affinity key extractor ([`affinity`](Self::affinity)), `R` the replay policy
/// ([`replay`](Self::replay)), both "none" by default, and `V` the [`HealthView`] shared with
/// other balancers ([`health_view`](Self::health_view)), by default one of its own.
#[must_use = "a builder does nothing until `build` is called"]
pub struct BalancerBuilder<D, A = NoAffinity, R = NoReplay, V = OwnView> {
    groups: Vec<(u64, D)>,
    on_unavailable: OnUnavailable,
    capacity: usize,
    failfast: Duration,
    endpoint_queue: usize,
    eject_for: Duration,
    classifier: Classifier,
    affinity: A,
    replay: R,
    view: V,
    retry_sent: bool,
    redispatches: u8,
    budget: Option<(u32, f32)>,
    consecutive_5xx: Option<u32>,
}

/// The default of [`BalancerBuilder`]'s view: a [`HealthView`] of the balancer's own, shared
/// by its clones only.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct OwnView;

/// What [`BalancerBuilder::build`] takes its [`HealthView`] from: [`OwnView`] (a new one) or
/// a given view.
pub trait IntoHealthView<K> {
    /// The view.
    fn into_view(self) -> HealthView<K>;
}

impl<K: EndpointKey> IntoHealthView<K> for OwnView {
    fn into_view(self) -> HealthView<K> {
        HealthView::new()
    }
}

impl<K> IntoHealthView<K> for HealthView<K> {
    fn into_view(self) -> HealthView<K> {
        self
    }
}

impl<D, A, R, V> fmt::Debug for BalancerBuilder<D, A, R, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("weights", &self.groups.iter().map(|g| g.0).collect::<Vec<_>>())
            .field("on_unavailable", &self.on_unavailable)
            .field("capacity", &self.capacity)
            .field("failfast", &self.failfast)
            .field("endpoint_queue", &self.endpoint_queue)
            .field("eject_for", &self.eject_for)
            .field("retry_sent", &self.retry_sent)
            .field("redispatches", &self.redispatches)
            .field("budget", &self.budget)
            .field("consecutive_5xx", &self.consecutive_5xx)
            .finish_non_exhaustive()
    }
}

impl<D> Default for BalancerBuilder<D> {
    fn default() -> Self {
        Self::new()
    }
}

/// Default of [`BalancerBuilder::failfast`].
const FAILFAST: Duration = Duration::from_secs(1);
/// Default of [`BalancerBuilder::endpoint_queue`].
const ENDPOINT_QUEUE: usize = 128;
/// Default of [`BalancerBuilder::eject_for`].
const EJECT_FOR: Duration = Duration::from_secs(10);
/// Default of [`BalancerBuilder::redispatches`]: HAProxy's `retries 3`.
const REDISPATCHES: u8 = 3;
/// Default of [`BalancerBuilder::retry_budget`]: linkerd's, 20% of requests and 10 a second.
const BUDGET: (u32, f32) = (10, 0.2);
/// How long a request counts towards the retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl<D> BalancerBuilder<D> {
    /// Starts configuring a balancer; add groups with [`group`](Self::group).
    pub fn new() -> Self {
        Self {
            groups: Vec::new(),
            on_unavailable: OnUnavailable::default(),
            capacity: 1024,
            failfast: FAILFAST,
            endpoint_queue: ENDPOINT_QUEUE,
            eject_for: EJECT_FOR,
            classifier: Arc::new(is_connect_failure),
            affinity: NoAffinity,
            replay: NoReplay,
            view: OwnView,
            retry_sent: false,
            redispatches: REDISPATCHES,
            budget: Some(BUDGET),
            consecutive_5xx: None,
        }
    }
}

impl<D, A, R, V> BalancerBuilder<D, A, R, V> {
    /// Adds a group of endpoints (a Gateway API `backendRef`) with its weight. New sessions
    /// are spread over groups by weight; established sessions reach their endpoint whatever
    /// its group's weight, 0 included. Groups are numbered from 0 in the order they are
    /// added ([`Balancer::set_weight`]).
    ///
    /// Endpoint keys must be unique across groups.
    pub fn group(mut self, weight: u32, discover: D) -> Self {
        self.groups.push((u64::from(weight), discover));
        self
    }

    /// What to do when a request's pinned endpoint cannot take it: gone, ejected after a
    /// failure, or busy past the [`failfast`](Self::failfast) deadline (default
    /// [`OnUnavailable::Rebalance`]).
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// How many balanced requests may wait for an endpoint in each group (default 1024).
    /// Callers beyond that wait for room, until the [`failfast`](Self::failfast) deadline.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How long a request waits for readiness before failing fast (default 1 s): a pinned
    /// or affinity request for its endpoint, then it falls back (per
    /// [`on_unavailable`](Self::on_unavailable) for a pinned one); a balanced request for any
    /// endpoint of its group, then it fails with [`NoEndpoints`](super::NoEndpoints).
    ///
    /// After a pinned request has waited out the deadline, its endpoint is in *fail-fast*
    /// until it is next seen ready: requests for it fall back at once instead of queueing
    /// (linkerd2-proxy's behaviour). `Duration::ZERO` never waits.
    ///
    /// This bounds waiting for *readiness* only. A response that never comes is the
    /// endpoint service's business (a `tower::timeout::Timeout` or tower-http's
    /// `TimeoutLayer` around it).
    pub fn failfast(mut self, deadline: Duration) -> Self {
        self.failfast = deadline;
        self
    }

    /// How many requests may wait for one endpoint's readiness at a time (pinned and
    /// affinity requests; default 128). Beyond that a request falls back at once, like
    /// HAProxy's `maxqueue`.
    pub fn endpoint_queue(mut self, limit: usize) -> Self {
        self.endpoint_queue = limit;
        self
    }

    /// How long an endpoint is ejected after a failure (default 10 s): it takes neither new
    /// nor pinned requests, so its sessions fail over; then it is tried again.
    /// `Duration::ZERO` turns passive ejection off.
    pub fn eject_for(mut self, period: Duration) -> Self {
        self.eject_for = period;
        self
    }

    /// Decides which endpoint errors mean "the endpoint is failing and the request never
    /// reached it". Such an error ejects the endpoint and, with [`replay`](Self::replay),
    /// sends a copy of the request elsewhere. Default: [`is_connect_failure`]. A readiness
    /// error from a pinned or affinity endpoint always counts.
    pub fn failure_classifier<F>(mut self, classify: F) -> Self
    where
        F: Fn(&BoxError) -> bool + Send + Sync + 'static,
    {
        self.classifier = Arc::new(classify);
        self
    }

    /// Gives requests without a session an affinity: a key extracted from the request (see
    /// [`affinity`](super::affinity) for ready-made extractors) picks an endpoint by
    /// rendezvous hashing, respecting group weights and skipping draining and ejected
    /// endpoints. Requests without a key, or whose endpoint is busy past the deadline, are
    /// balanced by p2c.
    pub fn affinity<A2>(self, key: A2) -> BalancerBuilder<D, A2, R, V> {
        self.retyped(|_| key, |r| r, |v| v)
    }

    /// Copies each request before its first attempt, so that it can be sent again when its
    /// endpoint fails without handing it back ([`NotSent::with_request`]) and, with
    /// [`retry_sent_idempotent`](Self::retry_sent_idempotent), after an idempotent request
    /// failed once sent. See [`ReplayEmptyBodies`] and
    /// [`replay_empty_bodies`](Self::replay_empty_bodies). Never needed for endpoint services
    /// that hand unsent requests back: those are redispatched whatever their method and body.
    ///
    /// [`NotSent::with_request`]: super::NotSent::with_request
    pub fn replay<R2>(self, replay: R2) -> BalancerBuilder<D, A, R2, V> {
        self.retyped(|a| a, |_| replay, |v| v)
    }

    /// Replays requests whose body is empty: [`replay`](Self::replay) with
    /// [`ReplayEmptyBodies`].
    pub fn replay_empty_bodies(self) -> BalancerBuilder<D, A, ReplayEmptyBodies, V> {
        self.replay(ReplayEmptyBodies)
    }

    /// Shares `view` with every other balancer built with it: one failure seen by any ejects
    /// the endpoint in all, and p2c everywhere compares the endpoint's whole load. Give one
    /// view to all the per-core (or per-route) balancers of a process over the same
    /// endpoints. The view's key type is the balancer's: a mismatch does not compile.
    pub fn health_view<K>(self, view: HealthView<K>) -> BalancerBuilder<D, A, R, HealthView<K>> {
        self.retyped(|a| a, |r| r, |_| view)
    }

    /// The same settings with the typed parts (affinity, replay, view) mapped.
    fn retyped<A2, R2, V2>(
        self,
        affinity: impl FnOnce(A) -> A2,
        replay: impl FnOnce(R) -> R2,
        view: impl FnOnce(V) -> V2,
    ) -> BalancerBuilder<D, A2, R2, V2> {
        BalancerBuilder {
            groups: self.groups,
            on_unavailable: self.on_unavailable,
            capacity: self.capacity,
            failfast: self.failfast,
            endpoint_queue: self.endpoint_queue,
            eject_for: self.eject_for,
            classifier: self.classifier,
            affinity: affinity(self.affinity),
            replay: replay(self.replay),
            view: view(self.view),
            retry_sent: self.retry_sent,
            redispatches: self.redispatches,
            budget: self.budget,
            consecutive_5xx: self.consecutive_5xx,
        }
    }

    /// How many times one request may be *redispatched*: sent to another endpoint after its
    /// endpoint failed before it was sent (default 3, HAProxy's `retries 3`). Every attempt
    /// goes through the balanced path, on a fresh choice of endpoint (the failed one is
    /// ejected); the layer then re-pins the session once, to the endpoint that answered.
    /// `0` turns redispatch off. Not done under [`OnUnavailable::Reject`] for pinned
    /// requests: they get [`PinnedUnavailable`].
    pub fn redispatches(mut self, attempts: u8) -> Self {
        self.redispatches = attempts;
        self
    }

    /// Bounds redispatches to `ratio` of recent requests (over 10 s; `0.2` is one
    /// redispatch per five requests) plus `min_per_sec` a second (default 0.2 and 10,
    /// linkerd's retry budget), so that a failing fleet is not sent more load than it gets.
    /// `ratio` is clamped to 0–1000 (a `NaN` counts as 0).
    pub fn retry_budget(mut self, ratio: f32, min_per_sec: u32) -> Self {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1000.0) };
        self.budget = Some((min_per_sec.min(i32::MAX as u32 - 1), ratio));
        self
    }

    /// No retry budget: each request gets its [`redispatches`](Self::redispatches), however
    /// many fail.
    pub fn no_retry_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Passive outlier detection (Envoy's `consecutive_5xx`): an endpoint that answers `n`
    /// 5xx responses in a row (counted over every balancer of its [`HealthView`]) is ejected
    /// for [`eject_for`](Self::eject_for), like after a connect failure. Off by default (a
    /// backend's 5xx is usually the application's answer, not the endpoint's health);
    /// `Some(0)` counts as off.
    pub fn eject_after_5xx(mut self, n: Option<u32>) -> Self {
        self.consecutive_5xx = n.filter(|&n| n > 0);
        self
    }

    /// Also send again an *idempotent* request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) that
    /// reached its endpoint and then failed (a reset, a timeout), from the copy made by
    /// [`replay`](Self::replay); off by default, since the endpoint may have acted on it.
    /// The endpoint is not ejected for such an error.
    pub fn retry_sent_idempotent(mut self, on: bool) -> Self {
        self.retry_sent = on;
        self
    }

    /// Starts the balancer: per group, one task that follows its discovery and one that
    /// dispatches its balanced requests through tower's p2c.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build<K, S, B, RB>(self) -> Balancer<K, S, B>
    where
        D: Discover<Key = K, Service = S> + Send + 'static,
        D::Error: Into<BoxError>,
        K: EndpointKey,
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError> + Send + Sync,
        S::Future: Send + 'static,
        B: Send + 'static,
        RB: Send + 'static,
        A: AffinityKey<B>,
        R: Replay<B>,
        V: IntoHealthView<K>,
    {
        // With no redispatch there is nothing to budget: no deposit per request either.
        let budget = self
            .budget
            .filter(|_| self.redispatches > 0)
            .map(|(min_per_sec, ratio)| TpsBudget::new(BUDGET_WINDOW, min_per_sec, ratio));
        let settings = Settings {
            on_unavailable: self.on_unavailable,
            failfast: self.failfast,
            endpoint_queue: self.endpoint_queue,
            eject_for: self.eject_for,
            classifier: self.classifier,
            affinity: self
                .affinity
                .enabled()
                .then(|| Box::new(self.affinity) as Box<dyn AffinityKey<B>>),
            replay: self.replay.enabled().then(|| Box::new(self.replay) as Box<dyn Replay<B>>),
            retry_sent: self.retry_sent,
            redispatches: self.redispatches,
            budget,
            consecutive_5xx: self.consecutive_5xx,
        };
        let weights: Vec<u64> = self.groups.iter().map(|(w, _)| *w).collect();
        let view = self.view.into_view();
        let (core, ends) = Core::new(&weights, self.capacity, settings, view.clone(), |feed| {
            P2c::new(Box::new(Balance::new(feed)))
        });
        let core = Arc::new(core);
        let member: Weak<dyn Member<K>> = Arc::downgrade(&core) as Weak<dyn Member<K>>;
        view.join(member);
        for (group, ((_, discover), (p2c, queue))) in self.groups.into_iter().zip(ends).enumerate()
        {
            tokio::spawn(dispatch(p2c, queue));
            tokio::spawn(follow(Box::pin(discover), Arc::downgrade(&core), group));
        }
        Balancer { core }
    }
}

impl<K, S, B> Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    /// A [`SessionPersistenceLayer`] for this balancer: its key type is the balancer's by
    /// construction, so a layer keyed otherwise cannot be built this way. The same as
    /// [`SessionPersistenceLayer::keyed`].
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
    /// use tower_session_persistence::policy::SessionPolicy;
    /// use tower_session_persistence::token::PlainCodec;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let (endpoints, discover) = discover_channel();
    /// let pod = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    /// endpoints.insert("pod-a".to_owned(), pod);
    /// let balancer = BalancerBuilder::new().group(1, discover).build();
    /// # tokio::task::yield_now().await;
    /// let layer = balancer.session_layer(SessionPolicy::cookie("sid").build()?, PlainCodec::default());
    /// let res = layer.layer(balancer).oneshot(Request::new(())).await?;
    /// assert_eq!(res.headers()["set-cookie"].to_str()?.split(';').next(), Some("sid=pod-a"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn session_layer(
        &self,
        policy: SessionPolicy,
        codec: impl Codec,
    ) -> SessionPersistenceLayer<K> {
        SessionPersistenceLayer::keyed(policy, codec)
    }

    /// The number of endpoints known now, over all groups, in any state.
    pub fn len(&self) -> usize {
        self.core.len()
    }

    /// Whether no endpoint is known now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the weight of group `group` (numbered from 0 in the order of
    /// [`BalancerBuilder::group`]) for new sessions from now on; established sessions are not
    /// affected. Returns `false` if there is no such group.
    pub fn set_weight(&self, group: usize, weight: u32) -> bool {
        self.core.set_weight(group, weight)
    }
}

impl<K, S, B> Balancer<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    /// The state of the endpoint `key`, or `None` if it is not known (never inserted, or
    /// removed).
    pub fn state(&self, key: &K) -> Option<EndpointState> {
        self.core.state(key)
    }

    /// Every known endpoint with its state, in no particular order.
    pub fn endpoints(&self) -> Vec<(K, EndpointState)> {
        self.core.endpoints()
    }

    /// Requests in flight to the endpoint `key` now (from every balancer of its
    /// [`HealthView`]); with [`drain`](Self::drain), tells when a draining endpoint has gone
    /// quiet.
    pub fn in_flight(&self, key: &K) -> Option<usize> {
        self.core.in_flight(key)
    }

    /// What is known of the endpoint `key` (from every balancer of its [`HealthView`]): load,
    /// ejection, pinned requests and the time of the last one while draining, which tells an
    /// operator that a drain has gone quiet. `None` if this balancer does not know `key`.
    pub fn stats(&self, key: &K) -> Option<EndpointStats> {
        self.core.stats(key)
    }

    /// The [`HealthView`] this balancer shares with others (its own, if it was given none).
    pub fn health_view(&self) -> &HealthView<K> {
        &self.core.view
    }

    /// Moves the endpoint `key` to `state`; returns `false` if it is not known.
    ///
    /// * [`Serving`](EndpointState::Serving) ends a drain and an ejection (an active health
    ///   check that finds the endpoint healthy again).
    /// * [`Draining`](EndpointState::Draining): no new sessions; established ones keep
    ///   reaching it until discovery removes it.
    /// * [`Ejected`](EndpointState::Ejected): takes nothing for the ejection period (an
    ///   active health check that finds it failing).
    ///
    /// Takes effect for the next request. A later discovery `Insert` of the same key
    /// returns it to serving.
    pub fn set_state(&self, key: &K, state: EndpointState) -> bool {
        self.core.set_state(key, state)
    }

    /// Drains the endpoint `key`: the same as
    /// [`set_state(key, EndpointState::Draining)`](Self::set_state).
    pub fn drain(&self, key: &K) -> bool {
        self.set_state(key, EndpointState::Draining)
    }
}

/// Applies one group's discovery changes to the table. Runs as its own task, so that a
/// removed endpoint leaves at once, not at the next balanced request; ends with the discovery
/// stream or with the balancer.
async fn follow<D, K, S, B>(mut discover: Pin<Box<D>>, core: Weak<Core<K, S, B>>, group: usize)
where
    D: Discover<Key = K, Service = S>,
    D::Error: Into<BoxError>,
    K: EndpointKey,
    S: Service<Request<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    while let Some(change) = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await {
        let Some(core) = core.upgrade() else { return };
        match change {
            Ok(Change::Insert(key, service)) => core.insert(group, key, service),
            Ok(Change::Remove(key)) => core.remove(group, &key),
            Err(error) => {
                let error: BoxError = error.into();
                tracing::warn!(%error, group, "endpoint discovery failed; keeping the endpoints known so far");
                return;
            }
        }
    }
}

impl<K, S, B, RB> Service<Request<B>> for Balancer<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError> + Send + Sync,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, B>;

    /// Always ready: each request waits in its own future, for its own endpoint (pinned,
    /// affinity) or for its group's bounded queue (balanced), so that one busy endpoint never
    /// holds up requests for the others. Every wait is bounded by the fail-fast deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let core = &self.core;
        let pin = PinnedEndpoint::<K>::take(req.extensions_mut());
        let replay = core.settings.replay.as_ref().and_then(|r| r.replay(&req));
        if let Some(budget) = &core.settings.budget {
            budget.deposit();
        }
        if let Some(PinnedEndpoint(key)) = pin {
            match core.pinned(&key) {
                Some(endpoint) => {
                    return ResponseFuture::direct(
                        core.clone(),
                        endpoint,
                        req,
                        Mode::Pinned,
                        replay,
                    );
                }
                None if core.settings.on_unavailable == OnUnavailable::Reject => {
                    tracing::debug!(endpoint = ?key, "pinned endpoint gone or ejected; rejecting");
                    return ResponseFuture::failed(core.clone(), PinnedUnavailable.into());
                }
                None => {
                    tracing::debug!(endpoint = ?key, "pinned endpoint gone or ejected; rebalancing")
                }
            }
        }
        if let Some(affinity) = &core.settings.affinity
            && let Some(endpoint) = affinity.affinity_key(&req).and_then(|h| core.affinity(h))
        {
            return ResponseFuture::direct(core.clone(), endpoint, req, Mode::Affinity, replay);
        }
        ResponseFuture::balanced(core.clone(), req, replay)
    }
}

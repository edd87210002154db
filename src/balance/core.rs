//! The balancer's shared state: the table of endpoints and their states, one p2c dispatcher
//! per weighted group, and every state transition.
//!
//! Every change of an endpoint's lists (members, p2c) happens under the table's write lock, and
//! is made to match the endpoint's state *now* (`resync`), whoever changed it: this balancer,
//! or another balancer of the same [`HealthView`] (an ejection seen elsewhere, its end), which
//! tells every balancer of the view with no lock held. So the lists follow the last state
//! whatever order the notices arrive in. The lock is never held across an `.await`.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::MapErr;
use http::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::BoxError;
use tower::balance::p2c::Balance;
use tower::retry::budget::TpsBudget;
use tower_service::Service;

use super::affinity::{self, AffinityKey};
use super::endpoint::{Endpoint, Gated, GatedFuture, Health};
use super::failure::Replay;
use super::feed::{FeedReceiver, FeedSender, feed};
use super::state::EndpointState;
use super::view::{EndpointStats, HealthView, Member, Shared};
use super::weights::WeightedPicker;
use crate::{EndpointKey, OnUnavailable};

/// The future of one group's p2c `Balance`.
pub(crate) type BalancedFuture<K, S, B> =
    MapErr<GatedFuture<<S as Service<Request<B>>>::Future, K>, fn(BoxError) -> BoxError>;

/// What a group's dispatcher answers: the dispatched request's future, or why it was not.
pub(crate) type Dispatched<K, S, B> = Result<BalancedFuture<K, S, B>, BoxError>;

/// A balanced request waiting for its group's dispatcher.
pub(crate) struct Msg<K, S, B>
where
    S: Service<Request<B>>,
{
    req: Request<B>,
    reply: oneshot::Sender<Dispatched<K, S, B>>,
    deadline: Instant,
}

/// A balanced request waiting for room in its group's queue; then, the dispatcher's answer.
pub(crate) type WaitingForRoom<K, S, B> =
    Pin<Box<dyn Future<Output = Result<oneshot::Receiver<Dispatched<K, S, B>>, BoxError>> + Send>>;

/// The receiving ends of one group, for its dispatcher: its p2c balancer and its request queue.
pub(crate) type GroupEnds<K, S, B> = (SharedP2c<K, S, B>, mpsc::Receiver<Msg<K, S, B>>);

/// One group's p2c balancer, shared by its dispatcher and by the requests that find an
/// endpoint ready at once (they skip the queue and the two task hand-offs of the dispatcher).
pub(crate) type SharedP2c<K, S, B> = Arc<Mutex<P2c<B, BalancedFuture<K, S, B>>>>;

/// A p2c balancer: tower's `Balance` over the group's feed, as a trait object, so that the
/// table need not carry `Balance`'s bounds.
pub(crate) trait Picker<B, F>: Send {
    /// Whether an endpoint is ready for the next request.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Sends `req` to the endpoint found ready; only right after `poll_ready` said so, under
    /// the same lock.
    fn call(&mut self, req: Request<B>) -> F;
}

impl<K, S, B, RB> Picker<B, BalancedFuture<K, S, B>>
    for Balance<FeedReceiver<K, Gated<K, S>>, Request<B>>
where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request<B>) -> BalancedFuture<K, S, B> {
        Service::call(self, req)
    }
}

/// A group's p2c balancer and whether its dispatcher is waiting on it.
pub(crate) struct P2c<B, F> {
    picker: Box<dyn Picker<B, F>>,
    /// The dispatcher polled, found no endpoint ready, and waits with its wakers registered
    /// in p2c: nobody else may poll now (the last poll's waker is the one woken).
    dispatcher_waiting: bool,
}

impl<B, F> P2c<B, F> {
    pub(crate) fn new(picker: Box<dyn Picker<B, F>>) -> Self {
        Self { picker, dispatcher_waiting: false }
    }
}

/// How a balanced request got into its group's queue.
pub(crate) enum Enqueued<K, S, B>
where
    S: Service<Request<B>>,
{
    /// In the queue; the answer comes on this channel.
    Queued(oneshot::Receiver<Dispatched<K, S, B>>),
    /// The queue was full: waiting for room, until the deadline.
    Waiting(WaitingForRoom<K, S, B>),
    /// No group can take it.
    Failed(BoxError),
}

/// The error for a request that no endpoint can take: every group is empty, drained,
/// ejected or has weight 0, or no endpoint of the chosen group became ready before the
/// fail-fast deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoEndpoints;

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no endpoint is available for a new session")
    }
}

impl std::error::Error for NoEndpoints {}

/// The error for a balanced request whose group's dispatcher task is gone (it panicked, or its
/// runtime shut down): the request cannot be balanced. A gateway answers it with `503`; the
/// balancer is broken until it is built again.
///
/// ```
/// use tower::BoxError;
/// use tower_session_persistence::balance::DispatcherGone;
///
/// let error: BoxError = DispatcherGone::default().into();
/// assert!(error.is::<DispatcherGone>());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherGone;

impl fmt::Display for DispatcherGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the balancer's dispatcher for this group stopped")
    }
}

impl std::error::Error for DispatcherGone {}

/// Decides whether an error means "the endpoint is failing; the request never left".
pub(crate) type Classifier = Arc<dyn Fn(&BoxError) -> bool + Send + Sync>;

/// Everything the builder configured.
pub(crate) struct Settings<B> {
    pub(crate) on_unavailable: OnUnavailable,
    pub(crate) failfast: Duration,
    pub(crate) endpoint_queue: usize,
    pub(crate) eject_for: Duration,
    pub(crate) classifier: Classifier,
    pub(crate) affinity: Option<Box<dyn AffinityKey<B>>>,
    pub(crate) replay: Option<Box<dyn Replay<B>>>,
    /// Also send the replay copy again after an idempotent request failed once sent.
    pub(crate) retry_sent: bool,
    /// How many times one request may be sent to another endpoint.
    pub(crate) redispatches: u8,
    /// Redispatches as a share of requests, so that a failing fleet is not sent more load.
    pub(crate) budget: Option<TpsBudget>,
    /// Eject an endpoint after this many 5xx answers in a row (Envoy's `consecutive_5xx`).
    pub(crate) consecutive_5xx: Option<u32>,
}

impl<B> fmt::Debug for Settings<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("on_unavailable", &self.on_unavailable)
            .field("failfast", &self.failfast)
            .field("endpoint_queue", &self.endpoint_queue)
            .field("eject_for", &self.eject_for)
            .field("affinity", &self.affinity.is_some())
            .field("replay", &self.replay.is_some())
            .field("retry_sent", &self.retry_sent)
            .field("redispatches", &self.redispatches)
            .field("budget", &self.budget.is_some())
            .field("consecutive_5xx", &self.consecutive_5xx)
            .finish_non_exhaustive()
    }
}

/// One weighted group: its p2c feed and its dispatcher's queue.
pub(crate) struct Group<K, S, B>
where
    S: Service<Request<B>>,
{
    weight: AtomicU64,
    /// How many endpoints may take new sessions now (the length of its member list).
    eligible: AtomicUsize,
    p2c: FeedSender<K, Gated<K, S>>,
    queue: mpsc::Sender<Msg<K, S, B>>,
    balance: SharedP2c<K, S, B>,
}

struct Slot<K, S> {
    endpoint: Endpoint<K, S>,
    group: usize,
    /// The endpoint's affinity hash.
    hash: u64,
    /// In its group's members and p2c set now.
    listed: bool,
}

struct Table<K, S> {
    slots: HashMap<K, Slot<K, S>>,
    /// Per group, the endpoints that may take new sessions, with their affinity hash.
    members: Vec<affinity::Members<Endpoint<K, S>>>,
}

/// The state every clone of a [`Balancer`](super::Balancer) shares.
pub(crate) struct Core<K, S, B>
where
    S: Service<Request<B>>,
{
    table: RwLock<Table<K, S>>,
    groups: Box<[Group<K, S, B>]>,
    picker: WeightedPicker,
    /// What every balancer of the process knows about the endpoints.
    pub(crate) view: HealthView<K>,
    /// Redispatches so far: where the next one starts looking among equals.
    redispatched: AtomicUsize,
    pub(crate) settings: Settings<B>,
}

impl<K, S, B> Core<K, S, B>
where
    S: Service<Request<B>>,
{
    fn read(&self) -> RwLockReadGuard<'_, Table<K, S>> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<K, S>> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn len(&self) -> usize {
        self.read().slots.len()
    }

    pub(crate) fn weights(&self) -> Vec<u64> {
        self.groups.iter().map(|g| g.weight.load(Ordering::Relaxed)).collect()
    }

    pub(crate) fn set_weight(&self, group: usize, weight: u32) -> bool {
        match self.groups.get(group) {
            Some(g) => {
                g.weight.store(u64::from(weight), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub(crate) fn keys_debug(&self) -> Vec<String>
    where
        K: fmt::Debug,
    {
        self.read().slots.keys().map(|k| format!("{k:?}")).collect()
    }
}

impl<K, S, B> Core<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    /// Creates the table and one dispatcher task per group; returns the core and the p2c
    /// balancers' discovery receivers, to be handed to [`dispatch`].
    pub(crate) fn new(
        weights: &[u64],
        capacity: usize,
        settings: Settings<B>,
        view: HealthView<K>,
        picker: impl Fn(FeedReceiver<K, Gated<K, S>>) -> P2c<B, BalancedFuture<K, S, B>>,
    ) -> (Self, Vec<GroupEnds<K, S, B>>) {
        let mut groups = Vec::with_capacity(weights.len());
        let mut ends = Vec::with_capacity(weights.len());
        for &weight in weights {
            let (p2c, discover) = feed();
            let (queue, requests) = mpsc::channel(capacity);
            let balance = Arc::new(Mutex::new(picker(discover)));
            groups.push(Group {
                weight: AtomicU64::new(weight),
                eligible: AtomicUsize::new(0),
                p2c,
                queue,
                balance: balance.clone(),
            });
            ends.push((balance, requests));
        }
        let members = weights.iter().map(|_| affinity::Members::new()).collect();
        let table = Table { slots: HashMap::new(), members };
        let core = Core {
            table: RwLock::new(table),
            groups: groups.into_boxed_slice(),
            picker: WeightedPicker::default(),
            view,
            redispatched: AtomicUsize::new(0),
            settings,
        };
        (core, ends)
    }

    /// Brings the group's members and p2c set in line with `key`'s eligibility now. Called
    /// under the write lock, after every transition: whoever made it (this balancer, another
    /// of the same view), the lists follow the state.
    fn resync(&self, table: &mut Table<K, S>, key: &K) {
        let Some(slot) = table.slots.get_mut(key) else { return };
        let now = slot.endpoint.health().is_eligible();
        if slot.listed == now {
            return;
        }
        slot.listed = now;
        let (group, hash, endpoint) = (slot.group, slot.hash, slot.endpoint.clone());
        let g = &self.groups[group];
        if now {
            table.members[group].push((hash, endpoint.clone()));
            g.p2c.insert(key.clone(), Gated(endpoint));
        } else {
            table.members[group].retain(|(_, e)| e.key() != key);
            g.p2c.remove(key.clone());
        }
        g.eligible.store(table.members[group].len(), Ordering::Release);
    }

    /// Takes `key` out of its group's lists whatever its state (before its slot is replaced
    /// or removed).
    fn unlist(&self, table: &mut Table<K, S>, key: &K) {
        let Some(slot) = table.slots.get_mut(key) else { return };
        let group = slot.group;
        slot.listed = false;
        table.members[group].retain(|(_, e)| e.key() != key);
        // p2c may hold a copy even when unlisted: from before the endpoint became ineligible.
        self.groups[group].p2c.remove(key.clone());
        self.groups[group].eligible.store(table.members[group].len(), Ordering::Release);
    }

    /// Discovery inserted `key` into `group`: a new endpoint, or a new service for a known
    /// one. Either way it serves (an insert ends a drain); a replaced endpoint keeps its load
    /// and any ejection in progress, which the view keeps for every balancer.
    pub(crate) fn insert(&self, group: usize, key: K, service: S) {
        let mut table = self.write();
        let health = match table.slots.get(&key) {
            Some(slot) if slot.group == group => {
                let health = slot.endpoint.health().clone();
                // Out with the old service everywhere it is listed; back in below.
                self.unlist(&mut table, &key);
                health
            }
            Some(slot) => {
                let (old, health) = (slot.group, slot.endpoint.health().clone());
                tracing::warn!(endpoint = ?key, from = old, to = group, "endpoint key inserted by a second group; keys must be unique across groups, moving it");
                self.unlist(&mut table, &key);
                health.set_removed();
                Arc::new(Health::new(health.shared.clone()))
            }
            None => {
                tracing::debug!(endpoint = ?key, group, "endpoint added");
                Arc::new(Health::new(self.view.shared(&key)))
            }
        };
        health.set_draining(false);
        let hash = affinity::endpoint_hash(&key.to_bytes());
        let endpoint = Endpoint::with_health(key.clone(), service, health);
        table.slots.insert(key.clone(), Slot { endpoint, group, hash, listed: false });
        self.resync(&mut table, &key);
    }

    /// Discovery removed `key` from `group`: its sessions fail over from now on.
    pub(crate) fn remove(&self, group: usize, key: &K) {
        let mut table = self.write();
        let health = match table.slots.get(key) {
            Some(slot) if slot.group == group => slot.endpoint.health().clone(),
            Some(_) => {
                tracing::debug!(endpoint = ?key, group, "remove ignored: the key belongs to another group");
                return;
            }
            None => return,
        };
        tracing::debug!(endpoint = ?key, group, "endpoint removed");
        self.unlist(&mut table, key);
        table.slots.remove(key);
        health.set_removed();
    }

    /// The state of `key`, or `None` if it is not known.
    pub(crate) fn state(&self, key: &K) -> Option<EndpointState> {
        self.read().slots.get(key).map(|slot| slot.endpoint.health().state())
    }

    /// Every known endpoint and its state.
    pub(crate) fn endpoints(&self) -> Vec<(K, EndpointState)> {
        self.read()
            .slots
            .iter()
            .map(|(k, slot)| (k.clone(), slot.endpoint.health().state()))
            .collect()
    }

    pub(crate) fn in_flight(&self, key: &K) -> Option<usize> {
        self.read().slots.get(key).map(|slot| slot.endpoint.in_flight())
    }

    /// Moves `key` to `state`; `false` if it is not known. Draining is this balancer's own;
    /// an ejection (or its end) reaches every balancer of the view.
    pub(crate) fn set_state(&self, key: &K, state: EndpointState) -> bool {
        let mut table = self.write();
        let Some(slot) = table.slots.get(key) else { return false };
        let health = slot.endpoint.health().clone();
        let shared = health.shared.clone();
        let mut recovered = false;
        match state {
            EndpointState::Serving => {
                health.set_draining(false);
                if shared.set_ejected(false) {
                    shared.next_ejection();
                    recovered = true;
                }
            }
            EndpointState::Draining => health.set_draining(true),
            // Below, with the lock released: an ejection is the view's.
            EndpointState::Ejected => {}
        }
        tracing::debug!(endpoint = ?key, %state, "endpoint state set");
        self.resync(&mut table, key);
        drop(table);
        if recovered {
            self.view.changed(key, &shared);
        }
        if state == EndpointState::Ejected {
            self.begin_ejection(key, &shared);
        }
        true
    }

    /// Ejects the endpoint `key` whose state is `health` after a failure, in every balancer
    /// of the view; `false` if ejection is off, the endpoint is gone or replaced, or it is
    /// ejected already (by this balancer or another).
    pub(crate) fn eject(&self, key: &K, health: &Arc<Health>) -> bool {
        if self.settings.eject_for.is_zero() {
            return false;
        }
        {
            let table = self.read();
            match table.slots.get(key) {
                Some(slot) if Arc::ptr_eq(slot.endpoint.health(), health) => {}
                _ => return false,
            }
        }
        if !self.begin_ejection(key, &health.shared) {
            return false;
        }
        tracing::info!(endpoint = ?key, period = ?self.settings.eject_for, "endpoint ejected after a failure");
        true
    }

    /// Ejects `key` in the view (`false` if it is ejected already, by any balancer), tells
    /// every balancer of the view, and ends the ejection after the ejection period. Called
    /// with no lock held: every balancer of the view (this one included) takes its own.
    fn begin_ejection(&self, key: &K, shared: &Arc<Shared>) -> bool {
        if !shared.set_ejected(true) {
            return false;
        }
        let epoch = shared.next_ejection();
        self.view.changed(key, shared);
        self.recover_later(key.clone(), shared.clone(), epoch);
        true
    }

    /// Ends the ejection numbered `epoch` after the ejection period, for every balancer of
    /// the view. One timer per ejection, on the runtime of the balancer that ejected.
    fn recover_later(&self, key: K, shared: Arc<Shared>, epoch: u64) {
        let view = self.view.clone();
        let period = self.settings.eject_for;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(endpoint = ?key, "ejected outside a tokio runtime: no timer ends it; set_state(Serving) will");
            return;
        };
        // From now, not from the task's first poll, which may come later.
        let until = Instant::now() + period;
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            view.recover(&key, &shared, epoch);
        });
    }

    /// The endpoint for a request pinned to `key`, if it takes pinned requests (serving or
    /// draining, not ejected).
    pub(crate) fn pinned(&self, key: &K) -> Option<Endpoint<K, S>> {
        let table = self.read();
        let slot = table.slots.get(key)?;
        let health = slot.endpoint.health();
        if !health.takes_pinned() {
            return None;
        }
        health.count_pinned();
        Some(slot.endpoint.clone())
    }

    /// The state of the endpoint `key` in this balancer.
    pub(crate) fn health(&self, key: &K) -> Option<Arc<Health>> {
        self.read().slots.get(key).map(|slot| slot.endpoint.health().clone())
    }

    /// Counts an answer of `key` for passive outlier detection: a 5xx adds one to its run of
    /// 5xx answers (shared by the view), anything else ends the run; a run of
    /// `consecutive_5xx` ejects it.
    pub(crate) fn outlier(&self, key: &K, health: &Arc<Health>, status: http::StatusCode) {
        let Some(limit) = self.settings.consecutive_5xx else { return };
        if !status.is_server_error() {
            health.shared.end_5xx_run();
            return;
        }
        if health.shared.add_5xx() >= limit {
            health.shared.end_5xx_run();
            tracing::info!(endpoint = ?key, limit, "endpoint answered 5xx in a row");
            self.eject(key, health);
        }
    }

    /// What is known of `key`: its state here, and what the view shares.
    pub(crate) fn stats(&self, key: &K) -> Option<EndpointStats> {
        self.read().slots.get(key).map(|slot| slot.endpoint.health().shared.stats())
    }

    /// Where to redispatch a request that failed at `failed`: the least loaded endpoint that
    /// may take new sessions in a group of non-zero weight, other than `failed` (which may
    /// still be listed: ejection is off, or the request was sent and the endpoint is not to
    /// blame); ties go round. A scan of the members: failures are the rare path.
    pub(crate) fn redispatch_target(&self, failed: &K) -> Option<Endpoint<K, S>> {
        let table = self.read();
        let candidates: Vec<&Endpoint<K, S>> = table
            .members
            .iter()
            .enumerate()
            .filter(|(group, _)| self.groups[*group].weight.load(Ordering::Relaxed) > 0)
            .flat_map(|(_, members)| members.iter().map(|(_, endpoint)| endpoint))
            .filter(|endpoint| endpoint.key() != failed)
            .collect();
        let n = candidates.len();
        let start = self.redispatched.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| candidates[(start + i) % n])
            .min_by_key(|endpoint| endpoint.in_flight())
            .cloned()
    }

    /// The endpoint that affinity key `key` maps to: weighted rendezvous over the groups that
    /// can take new sessions, then that group's consistent-hashing ring of eligible endpoints
    /// (`affinity::Members`: a pick that does not grow with the endpoints).
    pub(crate) fn affinity(&self, key: u64) -> Option<Endpoint<K, S>> {
        let table = self.read();
        let weights = table
            .members
            .iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
            .map(|(i, _)| (i, self.groups[i].weight.load(Ordering::Relaxed)));
        let group = affinity::weighted_rendezvous(key, weights)?;
        table.members[group].pick(key).cloned()
    }

    /// Picks a group by weight among those that can take new sessions.
    pub(crate) fn pick_group(&self) -> Option<usize> {
        let weights = self.groups.iter().map(|g| {
            if g.eligible.load(Ordering::Acquire) > 0 {
                g.weight.load(Ordering::Relaxed)
            } else {
                0
            }
        });
        self.picker.pick(weights)
    }

    /// Sends a balanced request at once, from the caller's task, to the less loaded of two
    /// members of `group` sampled at random (power of two choices), if that endpoint is ready
    /// now and the group's dispatcher is not waiting (requests already waiting go first);
    /// otherwise hands the request back, for the queue.
    ///
    /// It samples the member list itself rather than tower's p2c: tower's ready cache moves
    /// the endpoint it calls out of its ready map and back through a pending set (an
    /// allocation and two map updates per request), which at thousands of endpoints costs a
    /// cache miss each. tower's p2c still takes the requests that must wait (the dispatcher)
    /// and the first request after a change of the endpoints, so that it reads the change.
    // The request comes back by value when it must queue; boxing it would allocate on the
    // hot path.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_now<RB>(
        &self,
        group: usize,
        req: Request<B>,
        cx: &mut Context<'_>,
    ) -> Result<BalancedFuture<K, S, B>, Request<B>>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
    {
        {
            let Ok(mut p2c) = self.groups[group].balance.try_lock() else { return Err(req) };
            if p2c.dispatcher_waiting {
                return Err(req);
            }
            // A change of the endpoints waits: this request goes through tower's p2c, which
            // reads it (and drops removed endpoints from its cache). A `Pending` registers
            // this task's waker; harmless, as the dispatcher polls (and registers its own)
            // before it waits on p2c.
            if self.groups[group].p2c.has_pending() {
                return match p2c.picker.poll_ready(cx) {
                    Poll::Ready(Ok(())) => Ok(p2c.picker.call(req)),
                    _ => Err(req),
                };
            }
        }
        let mut chosen = {
            let table = self.read();
            let members = &table.members[group];
            let n = members.len();
            let random = next_random();
            // Truncation intended: two independent indices from one 64-bit draw.
            let first = (random as u32 as usize) % n.max(1);
            let Some(a) = members.get(first) else { return Err(req) };
            let chosen = match n {
                1 => a,
                _ => {
                    // A second index, different from the first.
                    let second = ((random >> 32) as usize % (n - 1) + first + 1) % n;
                    match members.get(second) {
                        Some(b) if b.in_flight() < a.in_flight() => b,
                        _ => a,
                    }
                }
            };
            Gated(chosen.clone())
        };
        match chosen.poll_ready(cx) {
            Poll::Ready(Ok(())) => Ok(futures_util::TryFutureExt::map_err(
                chosen.call(req),
                std::convert::identity as fn(BoxError) -> BoxError,
            )),
            _ => Err(req),
        }
    }

    /// Queues a balanced request for `group`'s p2c dispatcher.
    pub(crate) fn enqueue(&self, group: usize, req: Request<B>) -> Enqueued<K, S, B> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.settings.failfast;
        let msg = Msg { req, reply, deadline };
        let queue = &self.groups[group].queue;
        match queue.try_send(msg) {
            Ok(()) => Enqueued::Queued(answer),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let queue = queue.clone();
                Enqueued::Waiting(Box::pin(async move {
                    match tokio::time::timeout_at(deadline, queue.reserve()).await {
                        Ok(Ok(permit)) => {
                            permit.send(msg);
                            Ok(answer)
                        }
                        Ok(Err(_)) => Err(DispatcherGone.into()),
                        Err(_) => Err(NoEndpoints.into()),
                    }
                }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Enqueued::Failed(DispatcherGone.into()),
        }
    }
}

impl<K, S, B> Member<K> for Core<K, S, B>
where
    K: EndpointKey,
    S: Service<Request<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    fn changed(&self, key: &K, shared: &Arc<Shared>) {
        let mut table = self.write();
        // Only if the slot still holds this entry: a key removed everywhere and inserted
        // again has a new one, and the notice is stale.
        let ours = table
            .slots
            .get(key)
            .is_some_and(|slot| Arc::ptr_eq(&slot.endpoint.health().shared, shared));
        if ours {
            self.resync(&mut table, key);
        }
    }
}

/// One group's dispatcher: hands queued requests to the group's p2c one at a time, each as
/// soon as p2c has a ready endpoint, or fails the request with [`NoEndpoints`] at its
/// deadline. Requests that find an endpoint ready at once never come here
/// ([`Core::try_now`]). Ends when every handle of the balancer is gone.
pub(crate) async fn dispatch<K, S, B>(
    p2c: SharedP2c<K, S, B>,
    mut queue: mpsc::Receiver<Msg<K, S, B>>,
) where
    S: Service<Request<B>>,
{
    let lock = || p2c.lock().unwrap_or_else(PoisonError::into_inner);
    while let Some(Msg { req, mut reply, deadline }) = queue.recv().await {
        if reply.is_closed() {
            continue;
        }
        let mut expired = pin!(tokio::time::sleep_until(deadline));
        let mut req = Some(req);
        let answer = poll_fn(|cx| {
            {
                let mut p2c = lock();
                match p2c.picker.poll_ready(cx) {
                    Poll::Ready(ready) => {
                        p2c.dispatcher_waiting = false;
                        return Poll::Ready(match (ready, req.take()) {
                            (Ok(()), Some(req)) => Some(Ok(p2c.picker.call(req))),
                            _ => Some(Err(NoEndpoints.into())),
                        });
                    }
                    Poll::Pending => p2c.dispatcher_waiting = true,
                }
            }
            let gone = reply.poll_closed(cx).is_ready();
            if gone || expired.as_mut().poll(cx).is_ready() {
                lock().dispatcher_waiting = false;
                if gone {
                    return Poll::Ready(None);
                }
                tracing::debug!("no endpoint of the group became ready before the deadline");
                return Poll::Ready(Some(Err(NoEndpoints.into())));
            }
            Poll::Pending
        })
        .await;
        // The caller may have gone meanwhile; its request is then dropped with the future.
        if let Some(answer) = answer {
            let _ = reply.send(answer);
        }
    }
}

/// A random 64-bit number for p2c's sampling: xorshift per thread, seeded from the standard
/// library's per-process random hasher keys. Not for anything secret.
fn next_random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

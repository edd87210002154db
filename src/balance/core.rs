//! The balancer's shared state: the table of endpoints and their states, one p2c dispatcher
//! per weighted group, and every state transition.
//!
//! Every transition (insert, remove, drain, eject, recover) happens under the table's write
//! lock and sends its p2c change while holding it, so the order of changes in each group's
//! p2c channel is the order of the transitions. The lock is never held across an `.await`.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::MapErr;
use http::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::BoxError;
use tower::balance::p2c::Balance;
use tower_service::Service;

use super::affinity::{self, AffinityKey};
use super::endpoint::{Endpoint, Gated, GatedFuture, Health};
use super::failure::Replay;
use super::feed::{FeedReceiver, FeedSender, feed};
use super::state::EndpointState;
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

/// The receiving ends of one group: its p2c balancer's discovery and its request queue.
pub(crate) type GroupEnds<K, S, B> = (FeedReceiver<K, Gated<K, S>>, mpsc::Receiver<Msg<K, S, B>>);

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
}

struct Slot<K, S> {
    endpoint: Endpoint<K, S>,
    group: usize,
    /// The endpoint's affinity hash.
    hash: u64,
}

struct Table<K, S> {
    slots: HashMap<K, Slot<K, S>>,
    /// Per group, the endpoints that may take new sessions, with their affinity hash.
    members: Vec<Vec<(u64, Endpoint<K, S>)>>,
}

/// The state every clone of a [`Balancer`](super::Balancer) shares.
pub(crate) struct Core<K, S, B>
where
    S: Service<Request<B>>,
{
    table: RwLock<Table<K, S>>,
    groups: Box<[Group<K, S, B>]>,
    picker: WeightedPicker,
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
    ) -> (Self, Vec<GroupEnds<K, S, B>>) {
        let mut groups = Vec::with_capacity(weights.len());
        let mut ends = Vec::with_capacity(weights.len());
        for &weight in weights {
            let (p2c, discover) = feed();
            let (queue, requests) = mpsc::channel(capacity);
            groups.push(Group {
                weight: AtomicU64::new(weight),
                eligible: AtomicUsize::new(0),
                p2c,
                queue,
            });
            ends.push((discover, requests));
        }
        let table =
            Table { slots: HashMap::new(), members: weights.iter().map(|_| Vec::new()).collect() };
        let core = Core {
            table: RwLock::new(table),
            groups: groups.into_boxed_slice(),
            picker: WeightedPicker::default(),
            settings,
        };
        (core, ends)
    }

    /// Brings a group's members and p2c set in line with an endpoint's eligibility, after a
    /// transition that changed it from `was` to `now`. Called under the write lock.
    fn resync(&self, table: &mut Table<K, S>, key: &K, group: usize, was: bool, now: bool) {
        let g = &self.groups[group];
        if was && !now {
            table.members[group].retain(|(_, e)| e.key() != key);
            g.p2c.remove(key.clone());
        }
        if !was
            && now
            && let Some(slot) = table.slots.get(key)
        {
            let endpoint = slot.endpoint.clone();
            table.members[group].push((slot.hash, endpoint.clone()));
            g.p2c.insert(key.clone(), Gated(endpoint));
        }
        g.eligible.store(table.members[group].len(), Ordering::Release);
    }

    /// Discovery inserted `key` into `group`: a new endpoint, or a new service for a known
    /// one. Either way it serves (an insert ends a drain); a replaced endpoint keeps its load
    /// and any ejection in progress.
    pub(crate) fn insert(&self, group: usize, key: K, service: S) {
        let mut table = self.write();
        let health = match table.slots.get(&key) {
            Some(slot) if slot.group == group => {
                let health = slot.endpoint.health().clone();
                // Out with the old service everywhere it is listed; back in below.
                let was = health.is_eligible();
                self.resync(&mut table, &key, group, was, false);
                health
            }
            Some(slot) => {
                let (old, health) = (slot.group, slot.endpoint.health().clone());
                tracing::warn!(endpoint = ?key, from = old, to = group, "endpoint key inserted by a second group; keys must be unique across groups, moving it");
                let was = health.is_eligible();
                self.resync(&mut table, &key, old, was, false);
                health.set_removed();
                Arc::default()
            }
            None => {
                tracing::debug!(endpoint = ?key, group, "endpoint added");
                Arc::default()
            }
        };
        health.set_draining(false);
        let hash = affinity::endpoint_hash(&key.to_bytes());
        let endpoint = Endpoint::with_health(key.clone(), service, health.clone());
        table.slots.insert(key.clone(), Slot { endpoint, group, hash });
        let now = health.is_eligible();
        self.resync(&mut table, &key, group, false, now);
    }

    /// Discovery removed `key` from `group`: its sessions fail over from now on.
    pub(crate) fn remove(&self, group: usize, key: &K) {
        let mut table = self.write();
        match table.slots.get(key) {
            Some(slot) if slot.group == group => {}
            Some(_) => {
                tracing::debug!(endpoint = ?key, group, "remove ignored: the key belongs to another group");
                return;
            }
            None => return,
        }
        tracing::debug!(endpoint = ?key, group, "endpoint removed");
        let Some(slot) = table.slots.get(key) else { return };
        let health = slot.endpoint.health().clone();
        let was = health.is_eligible();
        self.resync(&mut table, key, group, was, false);
        table.slots.remove(key);
        health.set_removed();
        if !was {
            // p2c may still hold a copy from before the endpoint became ineligible.
            self.groups[group].p2c.remove(key.clone());
        }
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

    /// Moves `key` to `state`; `false` if it is not known.
    pub(crate) fn set_state(self: &Arc<Self>, key: &K, state: EndpointState) -> bool {
        let mut table = self.write();
        let Some(slot) = table.slots.get(key) else { return false };
        let (health, group) = (slot.endpoint.health().clone(), slot.group);
        let was = health.is_eligible();
        let mut timer = None;
        match state {
            EndpointState::Serving => {
                health.set_draining(false);
                if health.set_ejected(false) {
                    health.next_ejection();
                }
            }
            EndpointState::Draining => health.set_draining(true),
            EndpointState::Ejected => {
                if health.set_ejected(true) {
                    timer = Some(health.next_ejection());
                }
            }
        }
        tracing::debug!(endpoint = ?key, %state, "endpoint state set");
        let now = health.is_eligible();
        self.resync(&mut table, key, group, was, now);
        drop(table);
        if let Some(epoch) = timer {
            self.recover_later(key.clone(), health, epoch);
        }
        true
    }

    /// Ejects the endpoint `key` whose shared state is `health` after a failure; `false` if
    /// ejection is off, the endpoint is gone or replaced, or it is ejected already.
    pub(crate) fn eject(self: &Arc<Self>, key: &K, health: &Arc<Health>) -> bool {
        if self.settings.eject_for.is_zero() {
            return false;
        }
        let mut table = self.write();
        let group = match table.slots.get(key) {
            Some(slot) if Arc::ptr_eq(slot.endpoint.health(), health) => slot.group,
            _ => return false,
        };
        let was = health.is_eligible();
        if !health.set_ejected(true) {
            return false;
        }
        let epoch = health.next_ejection();
        self.resync(&mut table, key, group, was, false);
        drop(table);
        tracing::info!(endpoint = ?key, period = ?self.settings.eject_for, "endpoint ejected after a failure");
        self.recover_later(key.clone(), health.clone(), epoch);
        true
    }

    /// Ends the ejection numbered `epoch` after the ejection period.
    fn recover_later(self: &Arc<Self>, key: K, health: Arc<Health>, epoch: u64) {
        let core = Arc::downgrade(self);
        let period = self.settings.eject_for;
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            if let Some(core) = Weak::upgrade(&core) {
                core.recover(&key, &health, epoch);
            }
        });
    }

    fn recover(&self, key: &K, health: &Arc<Health>, epoch: u64) {
        let mut table = self.write();
        let group = match table.slots.get(key) {
            Some(slot) if Arc::ptr_eq(slot.endpoint.health(), health) => slot.group,
            _ => return,
        };
        if health.ejection() != epoch || !health.set_ejected(false) {
            return;
        }
        tracing::info!(endpoint = ?key, "ejection over; trying the endpoint again");
        let now = health.is_eligible();
        self.resync(&mut table, key, group, false, now);
    }

    /// The endpoint for a request pinned to `key`, if it takes pinned requests (serving or
    /// draining, not ejected).
    pub(crate) fn pinned(&self, key: &K) -> Option<Endpoint<K, S>> {
        let table = self.read();
        let slot = table.slots.get(key)?;
        slot.endpoint.health().takes_pinned().then(|| slot.endpoint.clone())
    }

    /// The endpoint that affinity key `key` maps to: weighted rendezvous over the groups that
    /// can take new sessions, then rendezvous over that group's eligible endpoints.
    pub(crate) fn affinity(&self, key: u64) -> Option<Endpoint<K, S>> {
        let table = self.read();
        let weights = table
            .members
            .iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
            .map(|(i, _)| (i, self.groups[i].weight.load(Ordering::Relaxed)));
        let group = affinity::weighted_rendezvous(key, weights)?;
        affinity::rendezvous(key, &table.members[group]).cloned()
    }

    /// Puts a request on the balanced path: picks a group by weight among those that can take
    /// new sessions and queues the request for its p2c dispatcher.
    pub(crate) fn enqueue(&self, req: Request<B>) -> Enqueued<K, S, B> {
        let weights = self.groups.iter().map(|g| {
            if g.eligible.load(Ordering::Acquire) > 0 {
                g.weight.load(Ordering::Relaxed)
            } else {
                0
            }
        });
        let Some(group) = self.picker.pick(weights) else {
            return Enqueued::Failed(NoEndpoints.into());
        };
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

/// One group's dispatcher: owns the group's p2c `Balance` and hands it queued requests one
/// at a time, each as soon as p2c has a ready endpoint, or fails the request with
/// [`NoEndpoints`] at its deadline. Ends when every handle of the balancer is gone.
pub(crate) async fn dispatch<K, S, B, RB>(
    mut balance: Balance<FeedReceiver<K, Gated<K, S>>, Request<B>>,
    mut queue: mpsc::Receiver<Msg<K, S, B>>,
) where
    K: EndpointKey,
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    while let Some(Msg { req, mut reply, deadline }) = queue.recv().await {
        if reply.is_closed() {
            continue;
        }
        let mut expired = pin!(tokio::time::sleep_until(deadline));
        let ready = poll_fn(|cx| {
            if let Poll::Ready(ready) = balance.poll_ready(cx) {
                return Poll::Ready(Some(ready.is_ok()));
            }
            if reply.poll_closed(cx).is_ready() {
                return Poll::Ready(None);
            }
            if expired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(false));
            }
            Poll::Pending
        })
        .await;
        let answer = match ready {
            None => continue,
            Some(true) => Ok(balance.call(req)),
            Some(false) => {
                tracing::debug!("no endpoint of the group became ready before the deadline");
                Err(NoEndpoints.into())
            }
        };
        // The caller may have gone meanwhile; its request is then dropped with the future.
        let _ = reply.send(answer);
    }
}

//! The persistence-aware balancer.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use futures_util::future::MapErr;
use http::{Request, Response};
use tower::BoxError;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, Discover};
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

use super::discover::{DiscoverSender, discover_channel};
use super::endpoint::{Endpoint, EndpointFuture};
use super::future::ResponseFuture;
use super::weights::WeightedPicker;
use crate::{EndpointKey, OnUnavailable, PinnedEndpoint, PinnedUnavailable};

/// The future of one group's p2c `Balance`.
type BalancedFuture<K, S, B> = MapErr<
    EndpointFuture<<S as Service<Request<B>>>::Future, K>,
    fn(<S as Service<Request<B>>>::Error) -> BoxError,
>;

/// The buffered p2c balancer of one weighted group.
type GroupBuffer<K, S, B> = Buffer<Request<B>, BalancedFuture<K, S, B>>;

/// Every known endpoint of every group, by key: where pinned requests look.
type Registry<K, S> = Arc<RwLock<HashMap<K, Endpoint<K, S>>>>;

/// The error for a request that no endpoint can take: every group is empty or has weight 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoEndpoints;

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no endpoint is available for a new session")
    }
}

impl std::error::Error for NoEndpoints {}

struct Group<K, S, B>
where
    S: Service<Request<B>>,
{
    weight: u64,
    /// How many endpoints the group has now; an empty group takes no new sessions.
    size: Arc<AtomicUsize>,
    balance: GroupBuffer<K, S, B>,
}

/// A load balancer that honours [`PinnedEndpoint`]; see the [module docs](super).
///
/// Cheap to clone; every clone shares the same endpoints.
pub struct Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    groups: Arc<[Group<K, S, B>]>,
    registry: Registry<K, S>,
    picker: Arc<WeightedPicker>,
    on_unavailable: OnUnavailable,
}

impl<K, S, B> Clone for Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    fn clone(&self) -> Self {
        Self {
            groups: self.groups.clone(),
            registry: self.registry.clone(),
            picker: self.picker.clone(),
            on_unavailable: self.on_unavailable,
        }
    }
}

impl<K: fmt::Debug, S, B> fmt::Debug for Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Balancer")
            .field("endpoints", &registry.keys().collect::<Vec<_>>())
            .field("weights", &self.groups.iter().map(|g| g.weight).collect::<Vec<_>>())
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

/// Configures and starts a [`Balancer`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct BalancerBuilder<D> {
    groups: Vec<(u64, D)>,
    on_unavailable: OnUnavailable,
    capacity: usize,
}

impl<D> fmt::Debug for BalancerBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("weights", &self.groups.iter().map(|g| g.0).collect::<Vec<_>>())
            .field("on_unavailable", &self.on_unavailable)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<D> Default for BalancerBuilder<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> BalancerBuilder<D> {
    /// Starts configuring a balancer; add groups with [`group`](Self::group).
    pub fn new() -> Self {
        Self { groups: Vec::new(), on_unavailable: OnUnavailable::default(), capacity: 1024 }
    }

    /// Adds a group of endpoints (a Gateway API `backendRef`) with its weight. New sessions
    /// are spread over groups by weight; established sessions reach their endpoint whatever
    /// its group's weight, 0 included.
    pub fn group(mut self, weight: u32, discover: D) -> Self {
        self.groups.push((u64::from(weight), discover));
        self
    }

    /// What to do when a request's pinned endpoint is gone (default
    /// [`OnUnavailable::Rebalance`]).
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// How many balanced requests may wait for an endpoint in each group (default 1024).
    /// Callers beyond that wait for room.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Starts the balancer: one discovery task and one p2c worker per group.
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
    {
        let registry: Registry<K, S> = Arc::default();
        let groups = self
            .groups
            .into_iter()
            .map(|(weight, discover)| {
                let (tx, rx) = discover_channel();
                let size = Arc::new(AtomicUsize::new(0));
                tokio::spawn(follow(Box::pin(discover), registry.clone(), tx, size.clone()));
                let balance = Buffer::new(Balance::new(rx), self.capacity);
                Group { weight, size, balance }
            })
            .collect();
        Balancer { groups, registry, picker: Arc::default(), on_unavailable: self.on_unavailable }
    }
}

impl<K, S, B> Balancer<K, S, B>
where
    S: Service<Request<B>>,
{
    /// Starts configuring a balancer; add groups with [`BalancerBuilder::group`].
    pub fn builder<D>() -> BalancerBuilder<D> {
        BalancerBuilder {
            groups: Vec::new(),
            on_unavailable: OnUnavailable::default(),
            capacity: 1024,
        }
    }

    /// The number of endpoints known now, over all groups.
    pub fn len(&self) -> usize {
        self.registry.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no endpoint is known now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies one group's discovery changes to the registry and hands them on to its p2c
/// balancer. Runs as its own task, so that a removed endpoint leaves the registry at once,
/// not at the next balanced request.
async fn follow<D, K, S>(
    mut discover: Pin<Box<D>>,
    registry: Registry<K, S>,
    balance: DiscoverSender<K, Endpoint<K, S>>,
    size: Arc<AtomicUsize>,
) where
    D: Discover<Key = K, Service = S>,
    D::Error: Into<BoxError>,
    K: EndpointKey,
    S: Clone,
{
    let mut mine = std::collections::HashSet::new();
    while let Some(change) = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await {
        let change = match change {
            Ok(change) => change,
            Err(error) => {
                let error: BoxError = error.into();
                tracing::warn!(%error, "endpoint discovery failed; keeping the endpoints known so far");
                return;
            }
        };
        let change = {
            let mut registry = registry.write().unwrap_or_else(PoisonError::into_inner);
            match change {
                Change::Insert(key, service) => {
                    tracing::debug!(endpoint = ?key, "endpoint added");
                    let endpoint = Endpoint::new(key.clone(), service);
                    registry.insert(key.clone(), endpoint.clone());
                    mine.insert(key.clone());
                    Change::Insert(key, endpoint)
                }
                Change::Remove(key) => {
                    tracing::debug!(endpoint = ?key, "endpoint removed");
                    registry.remove(&key);
                    mine.remove(&key);
                    Change::Remove(key)
                }
            }
        };
        size.store(mine.len(), Ordering::Relaxed);
        if !balance.send(change) {
            return;
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
    type Future = ResponseFuture<
        Oneshot<Endpoint<K, S>, Request<B>>,
        Oneshot<GroupBuffer<K, S, B>, Request<B>>,
    >;

    /// Always ready: each request waits in its own future, for its own endpoint (pinned) or
    /// for room in its group's bounded queue (balanced), so that one busy endpoint never
    /// holds up requests for the others.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(PinnedEndpoint(key)) = PinnedEndpoint::<K>::take(req.extensions_mut()) {
            let endpoint =
                self.registry.read().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
            match endpoint {
                Some(endpoint) => return ResponseFuture::pinned(endpoint.oneshot(req)),
                None if self.on_unavailable == OnUnavailable::Reject => {
                    tracing::debug!(endpoint = ?key, "pinned endpoint is gone; rejecting");
                    return ResponseFuture::failed(PinnedUnavailable.into());
                }
                None => tracing::debug!(endpoint = ?key, "pinned endpoint is gone; rebalancing"),
            }
        }
        let weights = self
            .groups
            .iter()
            .map(|group| if group.size.load(Ordering::Relaxed) > 0 { group.weight } else { 0 });
        match self.picker.pick(weights) {
            Some(i) => ResponseFuture::balanced(self.groups[i].balance.clone().oneshot(req)),
            None => ResponseFuture::failed(NoEndpoints.into()),
        }
    }
}

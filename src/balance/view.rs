//! One health view per process: what every balancer that holds an endpoint knows about it.
//!
//! A gateway often runs one balancer per serving thread (per-core runtimes, no shared lock on
//! the hot path) and one per route. Without a shared view, each learns on its own that an
//! endpoint is dead: one failed request per balancer, again after every ejection period. With
//! one [`HealthView`] given to all of them ([`BalancerBuilder::health_view`]), a failure seen
//! by any balancer ejects the endpoint in all of them, its recovery is tried once, and p2c
//! everywhere sees the endpoint's whole load.
//!
//! The per-endpoint part is atomics only, read lock-free on the hot path; the view's map and
//! its list of balancers are locked only when an endpoint is added or changes state.
//!
//! [`BalancerBuilder::health_view`]: super::BalancerBuilder::health_view

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::EndpointKey;

/// What every balancer of a view shares about one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) in_flight: AtomicUsize,
    /// Pinned or affinity requests waiting for this endpoint's readiness now.
    pub(crate) waiting: AtomicUsize,
    /// Passively ejected after a failure (or by its owner); cleared by the recovery timer.
    ejected: AtomicBool,
    /// A waiter timed out and the endpoint has not been seen ready since: new requests for it
    /// do not queue (linkerd2-proxy's fail-fast state).
    failfast: AtomicBool,
    /// Counts ejections, so that a recovery timer ends only the ejection it was started for.
    epoch: AtomicU64,
    /// Requests of established sessions sent to it while it was draining.
    pinned: AtomicU64,
    /// When the last of them came: milliseconds since the Unix epoch, 0 for never.
    last_pinned_ms: AtomicU64,
    /// 5xx answers in a row (passive outlier detection, when on).
    run_of_5xx: AtomicU32,
}

impl Shared {
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Sets or clears the ejection; returns whether it changed.
    pub(crate) fn set_ejected(&self, ejected: bool) -> bool {
        self.ejected.swap(ejected, Ordering::AcqRel) != ejected
    }

    /// Starts a new ejection epoch; returns its number.
    pub(crate) fn next_ejection(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current ejection epoch.
    pub(crate) fn ejection(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn in_fail_fast(&self) -> bool {
        self.failfast.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fail_fast(&self, on: bool) {
        // Read first: the common case (already clear) then costs no cache-line write.
        if self.failfast.load(Ordering::Relaxed) != on {
            self.failfast.store(on, Ordering::Relaxed);
        }
    }

    /// Counts a request of an established session sent while draining, and notes its time.
    pub(crate) fn count_pinned(&self) {
        self.pinned.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX).max(1);
        self.last_pinned_ms.store(ms, Ordering::Relaxed);
    }

    /// One more 5xx answer; returns the run's length.
    pub(crate) fn add_5xx(&self) -> u32 {
        self.run_of_5xx.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// An answer other than 5xx, or an ejection: the run starts again.
    pub(crate) fn end_5xx_run(&self) {
        // Read first: the common case (no run) then costs no cache-line write.
        if self.run_of_5xx.load(Ordering::Relaxed) != 0 {
            self.run_of_5xx.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> EndpointStats {
        let ms = self.last_pinned_ms.load(Ordering::Relaxed);
        EndpointStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ejected: self.is_ejected(),
            pinned_while_draining: self.pinned.load(Ordering::Relaxed),
            last_pinned_while_draining: (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// What a balancer or a [`HealthView`] reports about one endpoint: its load, its ejection and
/// its established sessions' traffic, which tells when a draining endpoint has gone quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Requests sent to it, by every balancer of the view, whose response has not come yet.
    pub in_flight: usize,
    /// Ejected after a failure (by any balancer of the view).
    pub ejected: bool,
    /// Requests of established sessions (pinned) it was sent while draining (by any balancer
    /// of the view). Not counted otherwise: a counter every thread writes would cost each
    /// request a cache-line transfer.
    pub pinned_while_draining: u64,
    /// When the last pinned request reached it while it was draining; `None` if none has.
    pub last_pinned_while_draining: Option<SystemTime>,
}

/// A balancer's side of a view: told when an endpoint's shared state changed, so that it
/// brings its own lists (p2c, affinity members) in line.
pub(crate) trait Member<K>: Send + Sync {
    fn changed(&self, key: &K, shared: &Arc<Shared>);
}

struct Inner<K> {
    endpoints: Mutex<Endpoints<K>>,
    members: Mutex<Vec<Weak<dyn Member<K>>>>,
}

struct Endpoints<K> {
    map: HashMap<K, Weak<Shared>>,
    /// The map's length after the last sweep of dead entries.
    swept: usize,
}

/// The health of endpoints as seen by every balancer of one process; cheap to clone.
///
/// Give the same view to every balancer over the same endpoints
/// ([`BalancerBuilder::health_view`](super::BalancerBuilder::health_view)), on any number of
/// runtimes: an endpoint is one entry, keyed by its [`EndpointKey`], whatever balancers and
/// groups hold it. Shared: its load (requests in flight, which p2c compares), its ejection
/// after a failure (seen by one, applied by all, ended by one timer), its fail-fast state and
/// its waiting places, its traffic counters ([`EndpointStats`]). Not shared: draining, which
/// each balancer's owner decides, and membership, which each balancer's discovery decides.
///
/// Without one, each balancer has a view of its own (its clones share it).
///
/// ```
/// use tower_session_persistence::balance::HealthView;
///
/// let view = HealthView::<String>::new();
/// // Before any balancer holds the endpoint, there is nothing to say about it.
/// assert_eq!(view.stats(&"10.0.0.1:80".to_owned()), None);
/// let per_thread = view.clone(); // the same view, for a balancer on another runtime
/// # drop(per_thread);
/// ```
pub struct HealthView<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for HealthView<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K> fmt::Debug for HealthView<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints = self.inner.endpoints.lock().map(|e| e.map.len()).unwrap_or_default();
        f.debug_struct("HealthView").field("endpoints", &endpoints).finish_non_exhaustive()
    }
}

impl<K: EndpointKey> Default for HealthView<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: EndpointKey> HealthView<K> {
    /// An empty view.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoints: Mutex::new(Endpoints { map: HashMap::new(), swept: 0 }),
                members: Mutex::new(Vec::new()),
            }),
        }
    }

    /// What the view knows of the endpoint `key`, or `None` if no balancer of the view holds
    /// it now.
    pub fn stats(&self, key: &K) -> Option<EndpointStats> {
        let endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        endpoints.map.get(key).and_then(Weak::upgrade).map(|shared| shared.stats())
    }

    /// The shared state of `key`, made if no balancer holds it.
    pub(crate) fn shared(&self, key: &K) -> Arc<Shared> {
        let mut endpoints = self.inner.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = endpoints.map.get(key).and_then(Weak::upgrade) {
            return shared;
        }
        // Endpoints come and go (rolling restarts): sweep the dead entries whenever the map
        // has doubled since the last sweep, so that it stays bounded by the live ones.
        if endpoints.map.len() >= 2 * endpoints.swept.max(32) {
            endpoints.map.retain(|_, shared| shared.strong_count() > 0);
            endpoints.swept = endpoints.map.len();
        }
        let shared = Arc::new(Shared::default());
        endpoints.map.insert(key.clone(), Arc::downgrade(&shared));
        shared
    }

    /// Adds a balancer to those told of changes.
    pub(crate) fn join(&self, member: Weak<dyn Member<K>>) {
        let mut members = self.inner.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|m| m.strong_count() > 0);
        members.push(member);
    }

    /// Tells every balancer of the view that `key`'s shared state changed. Called with no
    /// balancer's lock held: each takes its own.
    pub(crate) fn changed(&self, key: &K, shared: &Arc<Shared>) {
        let members: Vec<_> = {
            let members = self.inner.members.lock().unwrap_or_else(PoisonError::into_inner);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        for member in members {
            member.changed(key, shared);
        }
    }

    /// Ends the ejection numbered `epoch` of `key`, if it is still the current one.
    pub(crate) fn recover(&self, key: &K, shared: &Arc<Shared>, epoch: u64) {
        if shared.ejection() != epoch || !shared.set_ejected(false) {
            return;
        }
        tracing::info!(endpoint = ?key, "ejection over; trying the endpoint again");
        self.changed(key, shared);
    }
}

//! The in-process store: a bounded concurrent cache (moka, LRU eviction) of identifier
//! hashes to endpoint keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{Lifetime, SessionStore, StoreFuture, StoreKey, millis, unix_millis};

/// What one entry costs in memory, as the weigher counts it: measured with
/// `benches/learn_memory.sh` (RSS after a million entries, divided), rounded up. An endpoint
/// key that is not shared with other entries adds its length.
pub(crate) const ENTRY_BYTES: u32 = 200;

/// How many distinct endpoint keys are shared between entries (one copy each); beyond that,
/// each entry holds its own copy.
const MAX_SHARED_ENDPOINTS: usize = 4096;

/// One learned session.
struct Slot {
    endpoint: Arc<[u8]>,
    /// Whether `endpoint` is the shared copy (not weighed per entry).
    shared: bool,
    /// When it was stored and last used, in Unix milliseconds of the layer's clock.
    first: u64,
    last: AtomicU64,
    /// Its timeouts in milliseconds, 0 for none.
    idle: u64,
    absolute: u64,
    /// When it was stored by the monotonic clock: the cache's own expiry (memory reclamation)
    /// counts from here.
    born: Instant,
}

impl Slot {
    /// Whether the session is over at `now` (Unix milliseconds).
    fn expired(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        (self.absolute != 0 && now.saturating_sub(self.first) >= self.absolute)
            || (self.idle != 0 && now.saturating_sub(last) >= self.idle)
    }
}

/// The cache's own expiry, which frees memory: the same timeouts by the monotonic clock. The
/// store's answers are decided by [`Slot::expired`] with the layer's clock, so a test clock
/// only makes entries look older, never younger.
struct SlotExpiry;

impl SlotExpiry {
    fn remaining(slot: &Slot, at: Instant) -> Option<Duration> {
        let idle = (slot.idle != 0).then(|| Duration::from_millis(slot.idle));
        let absolute = (slot.absolute != 0).then(|| {
            Duration::from_millis(slot.absolute)
                .saturating_sub(at.saturating_duration_since(slot.born))
        });
        match (idle, absolute) {
            (Some(idle), Some(absolute)) => Some(idle.min(absolute)),
            (one, other) => one.or(other),
        }
    }
}

impl Expiry<u128, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &u128, slot: &Arc<Slot>, at: Instant) -> Option<Duration> {
        Self::remaining(slot, at)
    }

    fn expire_after_read(
        &self,
        _: &u128,
        slot: &Arc<Slot>,
        at: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Self::remaining(slot, at)
    }

    fn expire_after_update(
        &self,
        _: &u128,
        slot: &Arc<Slot>,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(slot, at)
    }
}

/// The in-process [`SessionStore`]: sessions learned by this process, shared by all its
/// threads and rules. No set-up, no network; lost on restart, not shared between replicas
/// (use [`RedisStore`](super::RedisStore) for that).
///
/// Built on [moka](https://docs.rs/moka)'s concurrent cache with LRU eviction: bounded by a
/// number of entries and, through a weigher, by bytes; each entry expires by its own
/// [`Lifetime`] (idle refreshed on use, absolute from when it was stored). Lookups answer at
/// once, without allocating. Cheap to clone: clones share the cache.
///
/// Memory: about 200 bytes per entry (`docs/BENCHMARKS.md`), so a million sessions take about
/// 200 MB; keys are 16-byte hashes and endpoint keys are shared between entries.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_session_persistence::store::{Lifetime, MemoryStore, SessionStore, StoreKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new(100_000);
/// let key = StoreKey::new("default/shop/0", [9; 16]);
/// let lifetime = Lifetime { idle: Some(Duration::from_secs(60)), absolute: None };
/// let t0 = SystemTime::now();
/// store.insert(&key, b"pod-a", lifetime, t0).await.unwrap();
/// let found = store.lookup(&key, lifetime, t0 + Duration::from_secs(59)).await.unwrap();
/// assert_eq!(found.as_deref(), Some(&b"pod-a"[..]));
/// // Idle for a minute since that lookup: gone.
/// let found = store.lookup(&key, lifetime, t0 + Duration::from_secs(119)).await.unwrap();
/// assert_eq!(found, None);
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache<u128, Arc<Slot>>,
    endpoints: RwLock<HashMap<Box<[u8]>, Arc<[u8]>>>,
    max_entries: u64,
    max_bytes: u64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.cache.entry_count())
            .field("max_entries", &self.inner.max_entries)
            .field("max_bytes", &self.inner.max_bytes)
            .finish()
    }
}

impl MemoryStore {
    /// A store of at most `max_entries` sessions (least recently used evicted first).
    pub fn new(max_entries: u64) -> Self {
        Self::with_limits(max_entries, u64::MAX)
    }

    /// A store of at most `max_entries` sessions and about `max_bytes` of memory, whichever
    /// is reached first.
    ///
    /// ```
    /// use tower_session_persistence::store::MemoryStore;
    ///
    /// // A million sessions, but no more than 64 MiB.
    /// let store = MemoryStore::with_limits(1_000_000, 64 << 20);
    /// assert_eq!(store.max_entries(), 1_000_000);
    /// ```
    pub fn with_limits(max_entries: u64, max_bytes: u64) -> Self {
        let capacity = max_entries.saturating_mul(u64::from(ENTRY_BYTES)).min(max_bytes);
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &u128, slot: &Arc<Slot>| {
                let own = if slot.shared { 0 } else { slot.endpoint.len() };
                ENTRY_BYTES.saturating_add(u32::try_from(own).unwrap_or(u32::MAX))
            })
            .expire_after(SlotExpiry)
            .build();
        Self {
            inner: Arc::new(Inner { cache, endpoints: RwLock::default(), max_entries, max_bytes }),
        }
    }

    /// The entry limit.
    pub fn max_entries(&self) -> u64 {
        self.inner.max_entries
    }

    /// How many entries the store holds (approximate until pending maintenance has run; see
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Runs the cache's pending maintenance now (evictions, expiry); it otherwise runs along
    /// with the store's operations. For tests and measurements.
    pub fn run_pending_tasks(&self) {
        self.inner.cache.run_pending_tasks();
    }

    /// The shared copy of an endpoint key, made on first sight.
    fn endpoint(&self, bytes: &[u8]) -> (Arc<[u8]>, bool) {
        let endpoints = &self.inner.endpoints;
        if let Some(shared) = endpoints.read().unwrap_or_else(PoisonError::into_inner).get(bytes) {
            return (shared.clone(), true);
        }
        let mut endpoints = endpoints.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = endpoints.get(bytes) {
            return (shared.clone(), true);
        }
        let copy: Arc<[u8]> = bytes.into();
        if endpoints.len() >= MAX_SHARED_ENDPOINTS {
            return (copy, false);
        }
        endpoints.insert(bytes.into(), copy.clone());
        (copy, true)
    }
}

fn cache_key(key: &StoreKey) -> u128 {
    u128::from_be_bytes(*key.digest())
}

impl SessionStore for MemoryStore {
    fn lookup(
        &self,
        key: &StoreKey,
        _lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>> {
        let key = cache_key(key);
        let now = unix_millis(now);
        let found = match self.inner.cache.get(&key) {
            Some(slot) if slot.expired(now) => {
                self.inner.cache.invalidate(&key);
                None
            }
            Some(slot) => {
                slot.last.fetch_max(now, Ordering::Relaxed);
                Some(slot.endpoint.clone())
            }
            None => None,
        };
        StoreFuture::ready(Ok(found))
    }

    fn insert(
        &self,
        key: &StoreKey,
        endpoint: &[u8],
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<()> {
        let (endpoint, shared) = self.endpoint(endpoint);
        let now = unix_millis(now);
        let slot = Slot {
            endpoint,
            shared,
            first: now,
            last: AtomicU64::new(now),
            idle: lifetime.effective_idle().map_or(0, |d| millis(d).max(1)),
            absolute: lifetime.absolute.map_or(0, |d| millis(d).max(1)),
            born: Instant::now(),
        };
        self.inner.cache.insert(cache_key(key), Arc::new(slot));
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> StoreKey {
        StoreKey::new("s", [n; 16])
    }

    fn at(t0: SystemTime, secs: u64) -> SystemTime {
        t0 + Duration::from_secs(secs)
    }

    fn get(
        store: &MemoryStore,
        k: &StoreKey,
        lifetime: Lifetime,
        now: SystemTime,
    ) -> Option<Vec<u8>> {
        let mut future = store.lookup(k, lifetime, now);
        future.take_ready().expect("answers at once").unwrap().map(|e| e.to_vec())
    }

    #[test]
    fn idle_is_refreshed_by_use_and_absolute_is_not() {
        let store = MemoryStore::new(10);
        let t0 = SystemTime::now();
        let lifetime = Lifetime {
            idle: Some(Duration::from_secs(10)),
            absolute: Some(Duration::from_secs(25)),
        };
        let _ = store.insert(&key(1), b"a", lifetime, t0).take_ready();
        for s in [9, 18] {
            assert_eq!(
                get(&store, &key(1), lifetime, at(t0, s)).as_deref(),
                Some(&b"a"[..]),
                "{s}"
            );
        }
        // Used every 9 s, never idle for 10 s, but 25 s after it was stored: over.
        assert_eq!(get(&store, &key(1), lifetime, at(t0, 25)), None);
        // And removed: earlier times do not bring it back.
        assert_eq!(get(&store, &key(1), lifetime, at(t0, 1)), None);

        let _ = store.insert(&key(2), b"b", lifetime, t0).take_ready();
        assert_eq!(get(&store, &key(2), lifetime, at(t0, 10)), None, "idle for 10 s");
    }

    #[test]
    fn default_idle_applies_without_timeouts() {
        let store = MemoryStore::new(10);
        let t0 = SystemTime::now();
        let none = Lifetime::default();
        let _ = store.insert(&key(1), b"a", none, t0).take_ready();
        let just_before = t0 + super::super::DEFAULT_IDLE - Duration::from_millis(1);
        assert!(get(&store, &key(1), none, just_before).is_some());
        let after = just_before + super::super::DEFAULT_IDLE;
        assert!(get(&store, &key(1), none, after).is_none());
    }

    #[test]
    fn bounded_by_entries_and_by_bytes() {
        let store = MemoryStore::new(100);
        let t0 = SystemTime::now();
        for n in 0..=255u8 {
            let _ = store.insert(&key(n), b"a", Lifetime::default(), t0).take_ready();
        }
        store.run_pending_tasks();
        assert!(store.entry_count() <= 100, "{}", store.entry_count());
        // The most recent ones are there.
        assert!(get(&store, &key(255), Lifetime::default(), t0).is_some());

        let store = MemoryStore::with_limits(1000, u64::from(ENTRY_BYTES) * 10);
        for n in 0..=255u8 {
            let _ = store.insert(&key(n), b"a", Lifetime::default(), t0).take_ready();
        }
        store.run_pending_tasks();
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }

    #[test]
    fn endpoint_keys_are_shared() {
        let store = MemoryStore::new(10);
        let (a, shared) = store.endpoint(b"pod-a");
        let (b, _) = store.endpoint(b"pod-a");
        assert!(shared && Arc::ptr_eq(&a, &b));
    }
}

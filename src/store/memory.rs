//! The in-process store: a bounded concurrent cache (quick_cache, S3-FIFO eviction) of
//! identifier hashes to endpoint keys.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use quick_cache::Weighter;
use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};

use super::{Lifetime, SessionStore, StoreFuture, StoreKey, millis, unix_millis};

/// What one entry costs in memory, as the weigher counts it: measured with
/// `cargo bench --bench learn` (resident memory after a million entries, divided; see
/// `docs/BENCHMARKS.md`), rounded up. An endpoint key that is not shared with other entries
/// adds its length.
pub(crate) const ENTRY_BYTES: u64 = 120;

/// How many distinct endpoint keys are shared between entries (one copy each); beyond that,
/// each entry holds its own copy.
const MAX_SHARED_ENDPOINTS: usize = 4096;

/// The longest a lookup leaves the recorded last use unchanged: refreshing it is a write, so
/// a session in steady use is written at most this often (and every sixteenth of its idle
/// timeout when that is shorter). A session survives any gap between requests shorter than its
/// idle timeout minus this.
const REFRESH: u64 = 1_000;

/// One learned session, held in the cache itself (no allocation of its own).
#[derive(Clone)]
struct Slot {
    endpoint: Arc<[u8]>,
    /// When it was stored and last used, in Unix milliseconds of the layer's clock.
    first: u64,
    last: u64,
    /// Its timeouts in milliseconds, 0 for none.
    idle: u64,
    absolute: u64,
    /// Whether `endpoint` is the shared copy (not weighed per entry).
    shared: bool,
}

impl Slot {
    /// Whether the session is over at `now` (Unix milliseconds).
    fn expired(&self, now: u64) -> bool {
        (self.absolute != 0 && now.saturating_sub(self.first) >= self.absolute)
            || (self.idle != 0 && now.saturating_sub(self.last) >= self.idle)
    }

    /// Whether a lookup at `now` should record the use.
    fn stale(&self, now: u64) -> bool {
        self.idle != 0 && now.saturating_sub(self.last) >= REFRESH.min(self.idle / 16)
    }
}

/// Weighs entries in bytes.
#[derive(Clone, Copy)]
struct Bytes;

impl Weighter<u128, Slot> for Bytes {
    fn weight(&self, _: &u128, slot: &Slot) -> u64 {
        let own = if slot.shared { 0 } else { slot.endpoint.len() };
        ENTRY_BYTES + u64::try_from(own).unwrap_or(u64::MAX)
    }
}

/// Hashes the keys by taking their first 64 bits: they are already keyed hashes (HMAC
/// output), uniformly spread and unknown to clients, so hashing them again is wasted work.
#[derive(Clone, Copy, Default)]
struct Digest;

impl BuildHasher for Digest {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`Digest`].
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is expected; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, key: u128) {
        // Truncation intended: the high half of a uniform 128-bit hash.
        self.0 = (key >> 64) as u64;
    }
}

/// Endpoint key bytes → the one copy entries share.
type SharedEndpoints = HashMap<Box<[u8]>, Arc<[u8]>>;

type Entries = Cache<u128, Slot, Bytes, Digest, DefaultLifecycle<u128, Slot>>;

/// The in-process [`SessionStore`]: sessions learned by this process, shared by all its
/// threads and rules. No set-up, no network; lost on restart, not shared between replicas
/// (use `RedisStore`, with the `redis` feature, for that).
///
/// Built on [quick_cache](https://docs.rs/quick_cache)'s concurrent cache (sharded, S3-FIFO
/// eviction: entries used once leave before entries in use): bounded by a number of entries
/// and, through a weigher, by bytes. Each entry carries its own [`Lifetime`]: a lookup
/// refreshes the idle timeout, the absolute one counts from when it was stored; an expired
/// entry is answered as absent and removed when it is looked up, and one that is never looked
/// up again is among the first evicted when the store is full. Lookups answer at once, without
/// allocating. Cheap to clone: clones share the cache.
///
/// Memory: about 110 bytes per entry (`docs/BENCHMARKS.md`), so a million sessions take about
/// 110 MB; keys are 16-byte hashes, entries are held in the cache itself, and endpoint keys
/// are shared between entries. Beyond the CPU's caches a lookup costs what its cache and TLB
/// misses cost: a process holding millions of sessions gains most from huge pages (with glibc,
/// `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), measured in `docs/BENCHMARKS.md`.
///
/// A lookup records the use (a write) at most once a second per session, or every sixteenth
/// of its idle timeout when that is shorter: a session survives any gap between requests
/// shorter than its idle timeout minus that.
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
    cache: Entries,
    endpoints: RwLock<SharedEndpoints>,
    max_entries: AtomicU64,
    max_bytes: AtomicU64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.inner.cache.len())
            .field("max_entries", &self.max_entries())
            .field("max_bytes", &self.max_bytes())
            .finish()
    }
}

impl MemoryStore {
    /// A store of at most `max_entries` sessions.
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
        let max_entries = max_entries.max(1);
        let capacity = capacity(max_entries, max_bytes);
        let estimated = usize::try_from(capacity / ENTRY_BYTES).unwrap_or(usize::MAX);
        let cache = Entries::with(estimated, capacity, Bytes, Digest, DefaultLifecycle::default());
        Self {
            inner: Arc::new(Inner {
                cache,
                endpoints: RwLock::default(),
                max_entries: AtomicU64::new(max_entries),
                max_bytes: AtomicU64::new(max_bytes),
            }),
        }
    }

    /// Changes the limits of a store in use, for every clone: sessions are kept, and when the
    /// new limits are smaller the store evicts down to them at once (S3-FIFO: sessions used
    /// once go first). For a configuration reloaded without a restart.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use tower_session_persistence::store::{Lifetime, MemoryStore, SessionStore, StoreKey};
    ///
    /// let store = MemoryStore::new(1_000);
    /// for n in 0..=255u8 {
    ///     let _ = store.insert(&StoreKey::new("s", [n; 16]), b"pod-a", Lifetime::default(), SystemTime::now());
    /// }
    /// store.set_limits(100, u64::MAX);
    /// assert_eq!(store.max_entries(), 100);
    /// assert!(store.entry_count() <= 100);
    /// ```
    pub fn set_limits(&self, max_entries: u64, max_bytes: u64) {
        let max_entries = max_entries.max(1);
        self.inner.max_entries.store(max_entries, Ordering::Relaxed);
        self.inner.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.inner.cache.set_capacity(capacity(max_entries, max_bytes));
    }

    /// The entry limit.
    pub fn max_entries(&self) -> u64 {
        self.inner.max_entries.load(Ordering::Relaxed)
    }

    /// The memory limit, in bytes as the store weighs entries (`u64::MAX`: none).
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes.load(Ordering::Relaxed)
    }

    /// How many entries the store holds, expired ones not looked up since included.
    pub fn entry_count(&self) -> u64 {
        u64::try_from(self.inner.cache.len()).unwrap_or(u64::MAX)
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

/// The cache's weight capacity for these limits.
fn capacity(max_entries: u64, max_bytes: u64) -> u64 {
    max_entries.saturating_mul(ENTRY_BYTES).min(max_bytes).max(ENTRY_BYTES)
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
        let cache = &self.inner.cache;
        // A shared (read) lock answers most lookups; an entry that is over or due a refresh
        // is judged again under the shard's write lock and changed in place (one probe, no
        // copy of the entry), so a mapping stored meanwhile by another request is never
        // overwritten or removed by this one.
        let found = match cache.get(&key) {
            None => None,
            Some(slot) if !slot.expired(now) && !slot.stale(now) => Some(slot.endpoint),
            Some(_) => {
                let judged = cache.entry(&key, Some(Duration::ZERO), |_, slot| {
                    if slot.expired(now) {
                        return EntryAction::Remove;
                    }
                    if slot.stale(now) {
                        slot.last = slot.last.max(now);
                    }
                    EntryAction::Retain(slot.endpoint.clone())
                });
                match judged {
                    EntryResult::Retained(endpoint) => Some(endpoint),
                    // Removed as expired, or gone meanwhile (the guard for a vacant key is
                    // dropped here: nothing is inserted).
                    _ => None,
                }
            }
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
            first: now,
            last: now,
            idle: lifetime.effective_idle().map_or(0, |d| millis(d).max(1)),
            absolute: lifetime.absolute.map_or(0, |d| millis(d).max(1)),
            shared,
        };
        self.inner.cache.insert(cache_key(key), slot);
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(store.entry_count(), 0);

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
        assert!(store.entry_count() <= 100, "{}", store.entry_count());
        // The most recent one is there.
        assert!(get(&store, &key(255), Lifetime::default(), t0).is_some());

        let store = MemoryStore::with_limits(1000, ENTRY_BYTES * 10);
        for n in 0..=255u8 {
            let _ = store.insert(&key(n), b"a", Lifetime::default(), t0).take_ready();
        }
        assert!(store.entry_count() <= 10, "{}", store.entry_count());
    }

    #[test]
    fn sessions_in_use_survive_a_flood_of_new_ones() {
        let store = MemoryStore::new(1000);
        let t0 = SystemTime::now();
        let wide = |n: u32| {
            let mut digest = [0u8; 16];
            digest[..4].copy_from_slice(&n.to_be_bytes());
            digest[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
            StoreKey::new("s", digest)
        };
        for n in 0..100 {
            let _ = store.insert(&wide(n), b"a", Lifetime::default(), t0).take_ready();
        }
        for n in 100..20_000 {
            // The first hundred are in use all along.
            let _ = get(&store, &wide(n % 100), Lifetime::default(), t0);
            let _ = store.insert(&wide(n), b"a", Lifetime::default(), t0).take_ready();
        }
        let kept = (0..100).filter(|n| get(&store, &wide(*n), Lifetime::default(), t0).is_some());
        assert!(kept.count() >= 90);
    }

    #[test]
    fn limits_change_in_place_and_keep_sessions() {
        let store = MemoryStore::new(1000);
        let clone = store.clone();
        let t0 = SystemTime::now();
        for n in 0..=255u8 {
            let _ = store.insert(&key(n), b"a", Lifetime::default(), t0).take_ready();
        }
        store.set_limits(2000, u64::MAX);
        assert_eq!(clone.max_entries(), 2000);
        assert_eq!(store.entry_count(), 256, "growing keeps every session");
        assert!(get(&clone, &key(7), Lifetime::default(), t0).is_some());
        store.set_limits(50, u64::MAX);
        assert!(store.entry_count() <= 50, "{}", store.entry_count());
        store.set_limits(1000, ENTRY_BYTES * 10);
        assert_eq!(store.max_bytes(), ENTRY_BYTES * 10);
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

//! What a learned session costs per request: a lookup in the in-process store at 1 thousand
//! and 1 million entries (10 million with `LEARN_BENCH_MAX=10000000`), the identifier's keyed
//! hash, the whole `Learn` layer around a ready inner service, and, with
//! `LEARN_BENCH_REDIS=redis://127.0.0.1:PORT/0` and the `redis` feature, the same layer over a
//! Redis store on loopback (the difference is Redis's added latency).
//!
//! `cargo bench --bench learn` (`--features redis` for the Redis case). Also measures the
//! memory per entry of the in-process store (`learn/memory`): resident memory before and after
//! filling it, divided by the entries; and, for calibration, a plain `HashMap` lookup at the
//! same sizes (`learn/hashmap_floor`): what any table costs on this machine's memory.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use http::{Request, Response};
use tower::{Layer, Service, service_fn};
use tower_session_persistence::learn::{Identifier, LearnLayer};
use tower_session_persistence::store::{Lifetime, MemoryStore, SessionStore, StoreKey};
use tower_session_persistence::{PinnedEndpoint, ServedBy};

const KEY: [u8; 32] = [7; 32];
const SCOPE: &str = "default/shop/0";

/// A balancer stand-in that answers at once: the pinned endpoint or "pod-a".
fn inner() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|mut req: Request<()>| {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or_else(|| "pod-a".to_owned(), |p| p.0);
        let mut res = Response::new(());
        ServedBy(key).insert(res.extensions_mut());
        std::future::ready(Ok(res))
    })
}

/// SplitMix64: a cheap, reproducible stream of keys.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The `n`th key, in `scope`. The scope is shared, as the layer shares its own (a reference
/// count, no allocation per lookup).
fn key(scope: &Arc<str>, n: u64) -> StoreKey {
    let mut digest = [0u8; 16];
    digest[..8].copy_from_slice(&mix(n).to_be_bytes());
    digest[8..].copy_from_slice(&mix(!n).to_be_bytes());
    StoreKey::new(scope.clone(), digest)
}

const ENDPOINTS: [&[u8]; 3] = [b"echo/10.0.0.1:8080", b"echo/10.0.0.2:8080", b"echo/10.0.0.3:8080"];

fn filled(scope: &Arc<str>, entries: u64) -> MemoryStore {
    let store = MemoryStore::new(entries);
    let now = SystemTime::now();
    for n in 0..entries {
        let endpoint = ENDPOINTS[(n % 3) as usize];
        let _ = store.insert(&key(scope, n), endpoint, Lifetime::default(), now).take_ready();
    }
    store
}

fn sizes() -> Vec<u64> {
    let max: u64 =
        std::env::var("LEARN_BENCH_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    [1_000, 1_000_000, 10_000_000].into_iter().filter(|n| *n <= max).collect()
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn store_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("learn/memory_store_lookup");
    let scope: Arc<str> = SCOPE.into();
    for entries in sizes() {
        let before = rss();
        let store = filled(&scope, entries);
        if let (Some(before), Some(after)) = (before, rss()) {
            println!(
                "learn/memory: {entries} entries, {} bytes resident ({} per entry), {} held",
                after.saturating_sub(before),
                after.saturating_sub(before) / entries,
                store.entry_count()
            );
        }
        let lifetime = Lifetime::default();
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(entries), &entries, |b, &entries| {
            b.iter(|| {
                n = (n + 7919) % entries;
                let found = store.lookup(&key(&scope, n), lifetime, SystemTime::now()).take_ready();
                black_box(found)
            })
        });
        drop(store);
    }
    group.finish();
}

/// The floor a hash table lookup of a random key has on this machine: a `std` `HashMap` of
/// 128-bit keys to 8-byte values, the same sizes and access pattern as `store_lookup`, no
/// locks, no expiry, no eviction. What the store adds beyond this is its own cost; what this
/// grows by from a thousand to ten million entries is the memory hierarchy's.
fn hashmap_floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("learn/hashmap_floor");
    let scope: Arc<str> = SCOPE.into();
    for entries in sizes() {
        let digest = |n: u64| u128::from_be_bytes(*key(&scope, n).digest());
        let map: std::collections::HashMap<u128, u64> =
            (0..entries).map(|n| (digest(n), n % 3)).collect();
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(entries), &entries, |b, &entries| {
            b.iter(|| {
                n = (n + 7919) % entries;
                black_box(map.get(&digest(n)).copied())
            })
        });
    }
    group.finish();
}

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("learn/layer");
    let store = MemoryStore::new(1_000_000);
    let layer = |store: MemoryStore| {
        LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), store, KEY)
            .unwrap()
            .scope(SCOPE)
    };
    let mut svc = layer(store.clone()).layer(inner());
    group.bench_function("inner alone", |b| {
        let mut inner = inner();
        b.iter(|| {
            let res = inner.call(Request::new(())).now_or_never().unwrap().unwrap();
            black_box(res)
        })
    });
    group.bench_function("no identifier", |b| {
        b.iter(|| {
            let res = svc.call(Request::new(())).now_or_never().unwrap().unwrap();
            black_box(res)
        })
    });
    // Learn 1000 sessions through the layer, then look them up.
    let cookies: Vec<String> =
        (0..1000).map(|n| format!("JSESSIONID=app-session-{n:032}")).collect();
    let mut learning = layer(store).learn_requests(true).layer(inner());
    for cookie in &cookies {
        let req = Request::builder().header("cookie", cookie).body(()).unwrap();
        let _ = learning.call(req).now_or_never().unwrap();
    }
    let mut i = 0;
    group.bench_function("known identifier (memory store)", |b| {
        b.iter(|| {
            i = (i + 1) % cookies.len();
            let req = Request::builder().header("cookie", &cookies[i]).body(()).unwrap();
            let res = svc.call(req).now_or_never().unwrap().unwrap();
            black_box(res)
        })
    });
    group.finish();
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use tower_session_persistence::store::RedisStore;
    let Ok(url) = std::env::var("LEARN_BENCH_REDIS") else {
        println!("learn/redis: skipped, set LEARN_BENCH_REDIS=redis://127.0.0.1:PORT/0");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store =
        runtime.block_on(async { RedisStore::new(&url).unwrap().timeout(Duration::from_secs(1)) });
    let layer = || {
        LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), store.clone(), KEY)
            .unwrap()
            .scope(SCOPE)
    };
    let cookies: Vec<String> =
        (0..1000).map(|n| format!("JSESSIONID=app-session-{n:032}")).collect();
    let learning = layer().learn_requests(true).layer(inner());
    runtime.block_on(async {
        for cookie in &cookies {
            let req = Request::builder().header("cookie", cookie).body(()).unwrap();
            tower::ServiceExt::oneshot(learning.clone(), req).await.unwrap();
        }
    });
    let svc = layer().layer(inner());
    let mut group = c.benchmark_group("learn/redis");
    let scope: Arc<str> = SCOPE.into();
    let mut i = 0;
    group.bench_function("known identifier (redis store, loopback)", |b| {
        b.to_async(&runtime).iter(|| {
            i = (i + 1) % cookies.len();
            let req = Request::builder().header("cookie", &cookies[i]).body(()).unwrap();
            let svc = svc.clone();
            async move { black_box(tower::ServiceExt::oneshot(svc, req).await.unwrap()) }
        })
    });
    group.bench_function("store lookup alone", |b| {
        b.to_async(&runtime).iter(|| {
            i = (i + 1) % 1000;
            let store = store.clone();
            let key = key(&scope, i as u64);
            async move { black_box(store.lookup(&key, Lifetime::default(), SystemTime::now()).await) }
        })
    });
    group.finish();
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {
    let _ = Duration::ZERO;
    println!("learn/redis: skipped, needs --features redis and LEARN_BENCH_REDIS");
}

criterion_group!(benches, store_lookup, hashmap_floor, layer, redis);
criterion_main!(benches);

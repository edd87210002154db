//! The balancer's pick with 3, 100, 1,000 and 10,000 endpoints: pinned (a request with a
//! session), p2c (a request without one) and affinity (a request without a session but with an
//! affinity key); and the affinity lookup alone, rendezvous against [`affinity::Members`].
//!
//! `cargo bench --bench balancer` (a group alone: `-- "balancer affinity"`, `-- "affinity
//! lookup"`). Endpoints answer at once, so the time through the balancer is its own work plus
//! one ready endpoint call. Pinned and p2c should stay flat as the endpoint count grows; the
//! balancer's affinity path is a rendezvous over the group's endpoints (O(N)) until it picks
//! through [`affinity::Members`], whose lookup is measured alone here.

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderName;
use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_session_persistence::PinnedEndpoint;
use tower_session_persistence::balance::affinity::{self, Members, header};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};

/// The endpoint counts every group measures.
const SIZES: [usize; 4] = [3, 100, 1_000, 10_000];

/// A balancer over `n` endpoints that answer at once, every endpoint known to p2c too.
fn build<A>(
    rt: &tokio::runtime::Runtime,
    n: usize,
    affinity: A,
) -> impl Service<Request<()>, Response = Response<()>, Error = tower::BoxError, Future: Send> + Clone
where
    A: affinity::AffinityKey<()>,
{
    rt.block_on(async {
        let (endpoints, discover) = discover_channel();
        for i in 0..n {
            endpoints.insert(
                format!("pod-{i}"),
                service_fn(|_: Request<()>| {
                    std::future::ready(Ok::<_, Infallible>(Response::new(())))
                }),
            );
        }
        let balancer = BalancerBuilder::new().group(1, discover).affinity(affinity).build();
        while balancer.len() < n {
            tokio::task::yield_now().await;
        }
        // Let the p2c side take every endpoint too.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        std::mem::forget(endpoints);
        balancer
    })
}

/// Requests without a session but with an affinity key (`x-user`, a different user each
/// time).
fn through_the_balancer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("balancer affinity");
    for n in SIZES {
        let balancer = build(&rt, n, header(HeaderName::from_static("x-user")));
        let mut user = 0u64;
        group.bench_function(BenchmarkId::new("affinity", n), |b| {
            b.to_async(&rt).iter(|| {
                user += 1;
                let req = Request::builder().header("x-user", user).body(()).unwrap();
                let svc = balancer.clone();
                async move { black_box(svc.oneshot(req).await.unwrap()) }
            })
        });
    }
    group.finish();
}

/// The affinity lookup alone over `n` endpoints: the O(N) rendezvous the balancer does today
/// (written here as it is in `affinity`: the highest SplitMix64 score wins) against
/// [`Members::pick`].
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("affinity lookup");
    for n in SIZES {
        let hashes: Vec<(u64, usize)> =
            (0..n).map(|i| (affinity::endpoint_hash(format!("pod-{i}").as_bytes()), i)).collect();
        let mut members = Members::new();
        for &member in &hashes {
            members.push(member);
        }
        members.pick(0);
        let mut key = 0u64;
        group.bench_function(BenchmarkId::new("members", n), |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                black_box(members.pick(black_box(key)))
            })
        });
        group.bench_function(BenchmarkId::new("rendezvous", n), |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let key = black_box(key);
                black_box(
                    hashes
                        .iter()
                        .max_by_key(|(hash, _)| (splitmix(key ^ hash), *hash))
                        .map(|(_, i)| *i),
                )
            })
        });
    }
    group.finish();
}

/// The SplitMix64 finaliser, as `affinity`'s rendezvous scores a member.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("balancer");
    for n in SIZES {
        let mut balancer = build(&rt, n, affinity::NoAffinity::default());
        let pinned_key = format!("pod-{}", n / 2);
        group.bench_function(BenchmarkId::new("pinned", n), |b| {
            b.to_async(&rt).iter(|| {
                let mut req = Request::new(());
                PinnedEndpoint(pinned_key.clone()).insert(req.extensions_mut());
                let fut = balancer.call(req);
                async move { black_box(fut.await.unwrap()) }
            })
        });
        group.bench_function(BenchmarkId::new("p2c", n), |b| {
            b.to_async(&rt).iter(|| {
                let svc = balancer.clone();
                async move { black_box(svc.oneshot(Request::new(())).await.unwrap()) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, through_the_balancer, lookup);
criterion_main!(benches);

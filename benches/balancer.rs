//! The balancer's pick, pinned and unpinned, with 3, 100 and 10,000 endpoints; and the
//! affinity path (rendezvous hashing, O(N) in the group's endpoints) with 3 and 10,000.
//!
//! `cargo bench --bench balancer`. Endpoints answer at once, so the time is the balancer's own
//! work plus one ready endpoint call; pinned and unpinned should stay flat as the endpoint
//! count grows, affinity grows with it.

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderName;
use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_session_persistence::PinnedEndpoint;
use tower_session_persistence::balance::affinity::header;
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};

/// A balancer over `n` endpoints that answer at once, every endpoint known to p2c too.
fn build<A>(
    rt: &tokio::runtime::Runtime,
    n: usize,
    affinity: A,
) -> impl Service<Request<()>, Response = Response<()>, Error = tower::BoxError, Future = impl Send>
+ Clone
where
    A: tower_session_persistence::balance::affinity::AffinityKey<()>,
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
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        std::mem::forget(endpoints);
        balancer
    })
}

/// Requests without a session but with an affinity key (`x-user`, a different user each
/// time): each pick scores every eligible endpoint of the group.
fn affinity(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("balancer affinity");
    for n in [3usize, 10_000] {
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

fn pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("balancer");
    for n in [3usize, 100, 10_000] {
        let mut balancer = rt.block_on(async {
            let (endpoints, discover) = discover_channel();
            for i in 0..n {
                endpoints.insert(
                    format!("pod-{i}"),
                    service_fn(|_: Request<()>| {
                        std::future::ready(Ok::<_, Infallible>(Response::new(())))
                    }),
                );
            }
            let balancer = BalancerBuilder::new().group(1, discover).build();
            while balancer.len() < n {
                tokio::task::yield_now().await;
            }
            // Let the p2c side take every endpoint too.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            std::mem::forget(endpoints);
            balancer
        });
        let pinned_key = format!("pod-{}", n / 2);
        group.bench_function(BenchmarkId::new("pinned", n), |b| {
            b.to_async(&rt).iter(|| {
                let mut req = Request::new(());
                PinnedEndpoint(pinned_key.clone()).insert(req.extensions_mut());
                let fut = balancer.call(req);
                async move { black_box(fut.await.unwrap()) }
            })
        });
        group.bench_function(BenchmarkId::new("unpinned", n), |b| {
            b.to_async(&rt).iter(|| {
                let svc = balancer.clone();
                async move { black_box(svc.oneshot(Request::new(())).await.unwrap()) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, affinity);
criterion_main!(benches);

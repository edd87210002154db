//! What p2c's ready cache costs endpoints whose readiness is a reservation, measured: the
//! figures behind the "Readiness" section of docs/ARCHITECTURE.md. If a change to the balancer
//! makes `p2c_holds_one_readiness_unit_of_each_idle_endpoint` fail, the cost is gone: update
//! that section.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::balance::{Balancer, BalancerBuilder, discover_channel};
use tower_session_persistence::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};

type Limited = tower::limit::ConcurrencyLimit<
    tower::util::ServiceFn<fn(Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>>>,
>;

fn ok(_: Request<()>) -> std::future::Ready<Result<Response<()>, Infallible>> {
    std::future::ready(Ok(Response::new(())))
}

/// An endpoint admitting `limit` requests at a time: its readiness is a semaphore permit,
/// taken by `poll_ready` and given back when the response is done (as with `Buffer`, rate
/// limits and connection pools that reserve).
fn limited(limit: usize) -> Limited {
    ServiceBuilder::new().concurrency_limit(limit).service(service_fn(ok as fn(_) -> _))
}

async fn balancer(limit: usize) -> Balancer<String, Limited, ()> {
    let (endpoints, discover) = discover_channel();
    for key in ["a", "b", "c"] {
        endpoints.insert(key.to_owned(), limited(limit));
    }
    std::mem::forget(endpoints);
    let balancer = BalancerBuilder::new()
        .group(1, discover)
        .on_unavailable(OnUnavailable::Reject)
        .failfast(Duration::from_millis(100))
        .build();
    while balancer.len() < 3 {
        tokio::task::yield_now().await;
    }
    balancer
}

async fn pinned(balancer: &Balancer<String, Limited, ()>, key: &str) -> Result<String, BoxError> {
    let mut req = Request::new(());
    PinnedEndpoint(key.to_owned()).insert(req.extensions_mut());
    let mut res = balancer.clone().oneshot(req).await?;
    Ok(ServedBy::<String>::take(res.extensions_mut()).unwrap().0)
}

/// One balanced request makes p2c poll every endpoint ready and call one of them; the others'
/// ready copies stay in p2c's cache, each holding its endpoint's permit. An endpoint that admits
/// one request at a time then cannot take its own sessions although nothing is in flight.
#[tokio::test(flavor = "current_thread")]
async fn p2c_holds_one_readiness_unit_of_each_idle_endpoint() {
    let balancer = balancer(1).await;
    let mut res = balancer.clone().oneshot(Request::new(())).await.unwrap();
    let called = ServedBy::<String>::take(res.extensions_mut()).unwrap().0;
    let mut blocked = 0;
    for key in ["a", "b", "c"] {
        assert_eq!(balancer.in_flight(&key.to_owned()), Some(0), "{key} is idle");
        match pinned(&balancer, key).await {
            Ok(served) => assert_eq!(served, key),
            Err(error) => {
                assert!(error.is::<PinnedUnavailable>(), "{error}");
                assert_ne!(key, called, "the endpoint p2c called holds nothing");
                blocked += 1;
            }
        }
    }
    assert_eq!(blocked, 2, "every idle endpoint but the one called is held by p2c");
}

/// The documented remedy: room for two. p2c's copy holds one unit, pinned requests use the
/// other, and no session is ever refused while its endpoint is idle.
#[tokio::test(flavor = "current_thread")]
async fn with_room_for_two_pinned_requests_are_never_held_up_by_p2c() {
    let balancer = balancer(2).await;
    for round in 0..20 {
        balancer.clone().oneshot(Request::new(())).await.unwrap();
        for key in ["a", "b", "c"] {
            assert_eq!(pinned(&balancer, key).await.unwrap(), key, "round {round}");
        }
    }
}

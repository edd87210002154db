//! Endpoints whose readiness is a reservation (`ConcurrencyLimit`, `Buffer`, rate limits,
//! pools that reserve): p2c's ready cache must not hold their units, or their own pinned
//! requests cannot get in. The "Readiness" section of docs/ARCHITECTURE.md.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::balance::{Balancer, BalancerBuilder, discover_channel};
use tower_session_persistence::{OnUnavailable, PinnedEndpoint, ServedBy};

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

/// One balanced request makes p2c poll every endpoint ready and call one of them; the others
/// wait in p2c's ready cache. Their readiness is only probed: whatever it reserved is given back
/// at once, so an endpoint that admits one request at a time still takes its own sessions.
/// (Before, p2c's copies held one permit each, and pinned requests to idle endpoints were
/// refused: two of three, every time.)
#[tokio::test(flavor = "current_thread")]
async fn p2c_holds_no_readiness_unit_of_idle_endpoints() {
    let balancer = balancer(1).await;
    for round in 0..20 {
        balancer.clone().oneshot(Request::new(())).await.unwrap();
        for key in ["a", "b", "c"] {
            assert_eq!(balancer.in_flight(&key.to_owned()), Some(0), "{key} is idle");
            assert_eq!(pinned(&balancer, key).await.unwrap(), key, "round {round}");
        }
    }
}

/// An endpoint that was busy when p2c last looked: p2c waits for it, and the permit it gets
/// when the endpoint frees up is given back at once, even if no balanced request comes to
/// make p2c look again.
#[tokio::test(flavor = "current_thread")]
async fn a_permit_freed_while_p2c_waits_is_not_kept_by_p2c() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let first = Arc::new(AtomicBool::new(true));
    let (endpoints, discover) = discover_channel();
    for key in ["a", "b", "c"] {
        let (gate, first) = (gate.clone(), first.clone());
        let svc = service_fn(move |_: Request<()>| {
            let (gate, first) = (gate.clone(), first.clone());
            async move {
                // "a" answers its first request only when the test opens the gate.
                if key == "a" && first.swap(false, Ordering::SeqCst) {
                    gate.notified().await;
                }
                Ok::<_, Infallible>(Response::new(()))
            }
        });
        endpoints.insert(key.to_owned(), ServiceBuilder::new().concurrency_limit(1).service(svc));
    }
    let balancer = BalancerBuilder::new()
        .group(1, discover)
        .on_unavailable(OnUnavailable::Reject)
        .failfast(Duration::from_millis(100))
        .build();
    while balancer.len() < 3 {
        tokio::task::yield_now().await;
    }
    // "a" is busy: its only permit is taken by a pinned request that waits for the gate.
    let mut req = Request::new(());
    PinnedEndpoint("a".to_owned()).insert(req.extensions_mut());
    let busy = tokio::spawn(balancer.clone().oneshot(req));
    while balancer.in_flight(&"a".to_owned()) != Some(1) {
        tokio::task::yield_now().await;
    }
    // A balanced request: p2c finds "a" busy and waits for its permit, served elsewhere.
    let mut res = balancer.clone().oneshot(Request::new(())).await.unwrap();
    assert_ne!(ServedBy::<String>::take(res.extensions_mut()).unwrap().0, "a");
    // "a" answers; its permit goes to the first in line, p2c's copy, which gives it back.
    gate.notify_one();
    busy.await.unwrap().unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let mut req = Request::new(());
    PinnedEndpoint("a".to_owned()).insert(req.extensions_mut());
    let mut res = balancer.oneshot(req).await.expect("a's sessions still reach it");
    assert_eq!(ServedBy::<String>::take(res.extensions_mut()).unwrap().0, "a");
}

/// Room for two, the rule before this was fixed, still works.
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

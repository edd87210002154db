//! The balancer's readiness, load and weight behaviour, with tower-test mocks and `service_fn`
//! endpoints.

use std::collections::HashMap;
use std::convert::Infallible;

use http::{Request, Response};
use tokio_test::{assert_pending, assert_ready};
use tower::{Service, ServiceExt, service_fn};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};
use tower_test::mock;

type Handle = mock::Handle<Request<()>, Response<()>>;

/// Lets the discovery and p2c tasks run.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn pinned(key: &str) -> Request<()> {
    let mut req = Request::new(());
    PinnedEndpoint(key.to_owned()).insert(req.extensions_mut());
    req
}

fn served_by(res: &mut Response<()>) -> String {
    ServedBy::<String>::take(res.extensions_mut()).expect("tagged").0
}

async fn answer(handle: &mut Handle) {
    let (_req, send) = handle.next_request().await.expect("a request");
    send.send_response(Response::new(()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_pinned_request_waits_for_its_own_endpoint_and_no_other() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    let (b, mut hb) = mock::pair::<Request<()>, Response<()>>();
    ha.allow(0);
    hb.allow(100);
    let (endpoints, discover) = discover_channel();
    endpoints.insert("a".to_owned(), a);
    endpoints.insert("b".to_owned(), b);
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;

    let mut to_a = tokio_test::task::spawn(balancer.clone().oneshot(pinned("a")));
    assert_pending!(to_a.poll(), "a is not ready: its request waits");

    // Meanwhile b's sessions and new sessions are served.
    let to_b = tokio::spawn(balancer.clone().oneshot(pinned("b")));
    answer(&mut hb).await;
    assert_eq!(served_by(&mut to_b.await.unwrap().unwrap()), "b");
    let fresh = tokio::spawn(balancer.clone().oneshot(Request::new(())));
    answer(&mut hb).await;
    assert_eq!(served_by(&mut fresh.await.unwrap().unwrap()), "b", "p2c skips a busy endpoint");
    assert_pending!(to_a.poll());

    // a becomes ready: the waiting request goes to a, not elsewhere.
    ha.allow(1);
    assert!(to_a.is_woken());
    assert_pending!(to_a.poll());
    answer(&mut ha).await;
    let mut res = assert_ready!(to_a.poll()).unwrap();
    assert_eq!(served_by(&mut res), "a");
}

#[tokio::test(flavor = "current_thread")]
async fn pinned_traffic_feeds_the_load_that_p2c_sees() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    let (b, mut hb) = mock::pair::<Request<()>, Response<()>>();
    ha.allow(1000);
    hb.allow(1000);
    let (endpoints, discover) = discover_channel();
    endpoints.insert("a".to_owned(), a);
    endpoints.insert("b".to_owned(), b);
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;

    // Ten pinned requests held open on a.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tokio::spawn(balancer.clone().oneshot(pinned("a"))));
    }
    let mut a_requests = Vec::new();
    for _ in 0..10 {
        a_requests.push(ha.next_request().await.unwrap());
    }
    // New sessions: with two endpoints p2c compares both, and a carries 10 in flight.
    let mut fresh = Vec::new();
    for _ in 0..5 {
        fresh.push(tokio::spawn(balancer.clone().oneshot(Request::new(()))));
        settle().await;
    }
    for _ in 0..5 {
        answer(&mut hb).await;
    }
    for f in fresh {
        assert_eq!(served_by(&mut f.await.unwrap().unwrap()), "b");
    }
    for (_req, send) in a_requests {
        send.send_response(Response::new(()));
    }
    for h in held {
        assert_eq!(served_by(&mut h.await.unwrap().unwrap()), "a");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_gone_endpoint_rebalances_or_rejects() {
    for policy in [OnUnavailable::Rebalance, OnUnavailable::Reject] {
        let (endpoints, discover) = discover_channel();
        for name in ["a", "b"] {
            endpoints.insert(
                name.to_owned(),
                service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }),
            );
        }
        let balancer = BalancerBuilder::new().group(1, discover).on_unavailable(policy).build();
        settle().await;
        assert_eq!(balancer.len(), 2);
        endpoints.remove("a".to_owned());
        settle().await;
        assert_eq!(balancer.len(), 1);
        let result = balancer.clone().oneshot(pinned("a")).await;
        match policy {
            OnUnavailable::Rebalance => assert_eq!(served_by(&mut result.unwrap()), "b"),
            _ => assert!(result.unwrap_err().is::<PinnedUnavailable>()),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn new_sessions_follow_weights_and_established_ones_ignore_them() {
    let (v1, d1) = discover_channel();
    let (v2, d2) = discover_channel();
    let (v3, d3) = discover_channel();
    let ok = || service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    for key in ["v1-a", "v1-b"] {
        v1.insert(key.to_owned(), ok());
    }
    v2.insert("v2-a".to_owned(), ok());
    v3.insert("v3-a".to_owned(), ok());
    let mut balancer = BalancerBuilder::new().group(70, d1).group(30, d2).group(0, d3).build();
    settle().await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let mut res = balancer.ready().await.unwrap().call(Request::new(())).await.unwrap();
        let key = served_by(&mut res);
        *counts.entry(key[..2].to_owned()).or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert!((650..=750).contains(&v1), "{counts:?}");
    assert!((250..=350).contains(&v2), "{counts:?}");
    assert_eq!(counts.get("v3"), None, "weight 0 takes no new sessions");

    // A session on the weight-0 group still reaches it.
    for _ in 0..10 {
        let mut res = balancer.clone().oneshot(pinned("v3-a")).await.unwrap();
        assert_eq!(served_by(&mut res), "v3-a");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_endpoints_fails_fast() {
    let (_endpoints, discover) =
        discover_channel::<String, mock::Mock<Request<()>, Response<()>>>();
    let mut balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;
    assert!(balancer.is_empty());
    let err = balancer.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
    assert!(err.is::<tower_session_persistence::balance::NoEndpoints>(), "{err}");
}

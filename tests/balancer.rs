//! The balancer's readiness, load and weight behaviour, with tower-test mocks and `service_fn`
//! endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio_test::{assert_pending, assert_ready};
use tower::{Service, ServiceExt, service_fn};
use tower_session_persistence::balance::{BalancerBuilder, EndpointState, discover_channel};
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

// ---------------------------------------------------------------------------------------------
// Endpoint states, fail-fast, ejection and replay (issue 5). Time is paused: every deadline is
// crossed by `tokio::time::advance`, never by waiting.

fn ok_endpoint()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn key(name: &str) -> String {
    name.to_owned()
}

/// A busy pinned endpoint: its request waits for that endpoint only, up to the deadline, then
/// falls back per policy; a busy endpoint is not a failing one.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_busy_pinned_endpoint_fails_fast_after_the_deadline() {
    for policy in [OnUnavailable::Rebalance, OnUnavailable::Reject] {
        let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
        let (b, mut hb) = mock::pair::<Request<()>, Response<()>>();
        ha.allow(0);
        hb.allow(100);
        let (endpoints, discover) = discover_channel();
        endpoints.insert(key("a"), a);
        endpoints.insert(key("b"), b);
        let balancer = BalancerBuilder::new()
            .group(1, discover)
            .on_unavailable(policy)
            .failfast(Duration::from_secs(1))
            .build();
        settle().await;

        let mut to_a = tokio_test::task::spawn(balancer.clone().oneshot(pinned("a")));
        assert_pending!(to_a.poll());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_pending!(to_a.poll(), "still within the deadline");
        tokio::time::advance(Duration::from_millis(2)).await;
        match policy {
            OnUnavailable::Rebalance => {
                assert_pending!(to_a.poll(), "handed to p2c");
                answer(&mut hb).await;
                let mut res = assert_ready!(to_a.poll()).unwrap();
                assert_eq!(served_by(&mut res), "b");
            }
            _ => {
                let err = assert_ready!(to_a.poll()).unwrap_err();
                assert!(err.is::<PinnedUnavailable>(), "{err}");
            }
        }
        assert_eq!(balancer.state(&key("a")), Some(EndpointState::Serving), "busy is not failing");
    }
}

/// After one request waited out the deadline, the endpoint is in fail-fast: requests for it do
/// not queue until it is seen ready again (linkerd2-proxy's behaviour).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fail_fast_skips_the_queue_until_the_endpoint_is_ready_again() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    let (b, mut hb) = mock::pair::<Request<()>, Response<()>>();
    ha.allow(0);
    hb.allow(100);
    let (endpoints, discover) = discover_channel();
    endpoints.insert(key("a"), a);
    endpoints.insert(key("b"), b);
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;

    let first = tokio::spawn(balancer.clone().oneshot(pinned("a")));
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    answer(&mut hb).await;
    assert_eq!(served_by(&mut first.await.unwrap().unwrap()), "b");

    // No time passes: the next request for "a" falls back at once.
    let mut second = tokio_test::task::spawn(balancer.clone().oneshot(pinned("a")));
    assert_pending!(second.poll());
    answer(&mut hb).await;
    assert_eq!(served_by(&mut assert_ready!(second.poll()).unwrap()), "b");

    // "a" is ready again: its sessions are served by it.
    ha.allow(1);
    let third = tokio::spawn(balancer.clone().oneshot(pinned("a")));
    answer(&mut ha).await;
    assert_eq!(served_by(&mut third.await.unwrap().unwrap()), "a");
}

/// At most `endpoint_queue` requests wait for one endpoint; the next falls back at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_queue_for_one_endpoint_is_bounded() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    let (b, mut hb) = mock::pair::<Request<()>, Response<()>>();
    ha.allow(0);
    hb.allow(100);
    let (endpoints, discover) = discover_channel();
    endpoints.insert(key("a"), a);
    endpoints.insert(key("b"), b);
    let balancer = BalancerBuilder::new().group(1, discover).endpoint_queue(2).build();
    settle().await;

    let mut waiting: Vec<_> =
        (0..2).map(|_| tokio_test::task::spawn(balancer.clone().oneshot(pinned("a")))).collect();
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    let mut third = tokio_test::task::spawn(balancer.clone().oneshot(pinned("a")));
    assert_pending!(third.poll(), "handed to p2c without waiting");
    answer(&mut hb).await;
    assert_eq!(served_by(&mut assert_ready!(third.poll()).unwrap()), "b");

    // The two that wait are served by "a" when it has room.
    ha.allow(2);
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    answer(&mut ha).await;
    answer(&mut ha).await;
    for w in &mut waiting {
        assert_eq!(served_by(&mut assert_ready!(w.poll()).unwrap()), "a");
    }
}

/// A readiness error is a failing endpoint: it is ejected (no pinned, no new requests) for the
/// ejection period, then tried again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_endpoint_is_ejected_for_a_while() {
    for policy in [OnUnavailable::Rebalance, OnUnavailable::Reject] {
        let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
        let (endpoints, discover) = discover_channel();
        endpoints.insert(key("a"), tower::util::BoxCloneSyncService::new(a));
        endpoints.insert(key("b"), ok_endpoint_mocked());
        let balancer = BalancerBuilder::new()
            .group(1, discover)
            .on_unavailable(policy)
            .eject_for(Duration::from_secs(10))
            .build();
        settle().await;

        ha.send_error("endpoint broken");
        let result = balancer.clone().oneshot(pinned("a")).await;
        assert_eq!(balancer.state(&key("a")), Some(EndpointState::Ejected));
        match policy {
            OnUnavailable::Rebalance => assert_eq!(served_by(&mut result.unwrap()), "b"),
            _ => assert!(result.unwrap_err().is::<PinnedUnavailable>()),
        }
        // While ejected: its sessions fail over at once, new sessions avoid it.
        ha.allow(100);
        for _ in 0..10 {
            let result = balancer.clone().oneshot(pinned("a")).await;
            match policy {
                OnUnavailable::Rebalance => assert_eq!(served_by(&mut result.unwrap()), "b"),
                _ => assert!(result.unwrap_err().is::<PinnedUnavailable>()),
            }
            let mut fresh = balancer.clone().oneshot(Request::new(())).await.unwrap();
            assert_eq!(served_by(&mut fresh), "b");
        }
        // The period ends: "a" is tried again.
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(balancer.state(&key("a")), Some(EndpointState::Serving));
        let again = tokio::spawn(balancer.clone().oneshot(pinned("a")));
        answer(&mut ha).await;
        assert_eq!(served_by(&mut again.await.unwrap().unwrap()), "a");
    }
}

/// An endpoint answering `b` for anything, as a tower-test mock is not needed.
fn ok_endpoint_mocked()
-> tower::util::BoxCloneSyncService<Request<()>, Response<()>, tower::BoxError> {
    tower::util::BoxCloneSyncService::new(ok_endpoint().map_err(tower::BoxError::from))
}

fn refusing(
    kind: std::io::ErrorKind,
) -> tower::util::BoxCloneSyncService<Request<()>, Response<()>, tower::BoxError> {
    tower::util::BoxCloneSyncService::new(service_fn(move |_: Request<()>| async move {
        Err::<Response<()>, _>(tower::BoxError::from(std::io::Error::from(kind)))
    }))
}

fn replay_unit(req: &Request<()>) -> Option<Request<()>> {
    let mut copy = Request::new(());
    *copy.uri_mut() = req.uri().clone();
    Some(copy)
}

/// A connect failure (recognised by the default classifier) ejects the endpoint; with replay
/// the request is sent once more on the balanced path and its client sees no error. Any other
/// error is returned as it is and ejects nothing.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connect_failure_ejects_and_is_replayed_once() {
    let build =
        |failing: tower::util::BoxCloneSyncService<Request<()>, Response<()>, tower::BoxError>,
         policy: OnUnavailable,
         replay: bool| {
            let (endpoints, discover) = discover_channel();
            endpoints.insert(key("a"), failing);
            endpoints.insert(key("b"), ok_endpoint_mocked());
            let builder = BalancerBuilder::new().group(1, discover).on_unavailable(policy);
            if replay {
                builder.replay(replay_unit).build()
            } else {
                builder.replay(|_: &Request<()>| None).build()
            }
        };

    // Replayed: served by "b", "a" ejected.
    let balancer =
        build(refusing(std::io::ErrorKind::ConnectionRefused), OnUnavailable::Rebalance, true);
    settle().await;
    let mut res = balancer.clone().oneshot(pinned("a")).await.unwrap();
    assert_eq!(served_by(&mut res), "b");
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Ejected));

    // Without a replay copy: the error reaches the caller, "a" is still ejected.
    let balancer =
        build(refusing(std::io::ErrorKind::ConnectionRefused), OnUnavailable::Rebalance, false);
    settle().await;
    let err = balancer.clone().oneshot(pinned("a")).await.unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err}");
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Ejected));

    // Reject: a pinned request is never re-pinned, it gets the 503 error.
    let balancer =
        build(refusing(std::io::ErrorKind::ConnectionRefused), OnUnavailable::Reject, true);
    settle().await;
    let err = balancer.clone().oneshot(pinned("a")).await.unwrap_err();
    assert!(err.is::<PinnedUnavailable>(), "{err}");

    // A reset after sending is not a connect failure: returned, no ejection, no replay.
    let balancer =
        build(refusing(std::io::ErrorKind::ConnectionReset), OnUnavailable::Rebalance, true);
    settle().await;
    let err = balancer.clone().oneshot(pinned("a")).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Serving));
}

/// New sessions that meet a refusing endpoint through p2c are replayed too, and the endpoint
/// leaves p2c at once. Groups are picked deterministically, so the failing one is met.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn balanced_requests_are_replayed_away_from_a_refusing_endpoint() {
    let (bad, d1) = discover_channel();
    let (good, d2) = discover_channel();
    bad.insert(key("a"), refusing(std::io::ErrorKind::ConnectionRefused));
    good.insert(key("b"), ok_endpoint_mocked());
    let balancer = BalancerBuilder::new().group(1, d1).group(1, d2).replay(replay_unit).build();
    settle().await;
    for _ in 0..20 {
        let mut res = balancer.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(served_by(&mut res), "b");
    }
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Ejected));
    // A classifier that sees no failure: the error is the caller's.
    let (bad, d1) = discover_channel();
    bad.insert(key("a"), refusing(std::io::ErrorKind::ConnectionRefused));
    let balancer = BalancerBuilder::new()
        .group(1, d1)
        .failure_classifier(|_| false)
        .replay(replay_unit)
        .build();
    settle().await;
    assert!(balancer.clone().oneshot(Request::new(())).await.is_err());
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Serving));
}

/// Draining: established sessions keep reaching the endpoint, new sessions never do; serving
/// again undoes it; removal ends it.
#[tokio::test(flavor = "current_thread")]
async fn a_draining_endpoint_keeps_its_sessions_and_takes_no_new_ones() {
    let (endpoints, discover) = discover_channel();
    for name in ["a", "b", "c"] {
        endpoints.insert(key(name), ok_endpoint());
    }
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;
    assert!(balancer.drain(&key("a")));
    assert!(!balancer.drain(&key("nope")), "unknown keys are reported");
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Draining));
    for _ in 0..100 {
        let mut res = balancer.clone().oneshot(Request::new(())).await.unwrap();
        assert_ne!(served_by(&mut res), "a", "a draining endpoint took a new session");
        let mut res = balancer.clone().oneshot(pinned("a")).await.unwrap();
        assert_eq!(served_by(&mut res), "a", "a draining endpoint lost a session");
    }
    assert!(balancer.set_state(&key("a"), EndpointState::Serving));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        seen.insert(served_by(&mut balancer.clone().oneshot(Request::new(())).await.unwrap()));
    }
    assert!(seen.contains("a"), "serving again takes new sessions: {seen:?}");

    balancer.drain(&key("a"));
    endpoints.remove(key("a"));
    settle().await;
    assert_eq!(balancer.state(&key("a")), None);
    let mut res = balancer.clone().oneshot(pinned("a")).await.unwrap();
    assert_ne!(served_by(&mut res), "a", "removed: the session moves");
    let mut states = balancer.endpoints();
    states.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(states, [(key("b"), EndpointState::Serving), (key("c"), EndpointState::Serving)]);
}

/// A balanced request waits for its group's readiness no longer than the deadline.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_balanced_request_fails_fast_when_no_endpoint_is_ready() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    ha.allow(0);
    let (endpoints, discover) = discover_channel();
    endpoints.insert(key("a"), a);
    let balancer =
        BalancerBuilder::new().group(1, discover).failfast(Duration::from_millis(500)).build();
    settle().await;
    let mut fresh = tokio_test::task::spawn(balancer.clone().oneshot(Request::new(())));
    assert_pending!(fresh.poll());
    settle().await;
    tokio::time::advance(Duration::from_millis(501)).await;
    settle().await;
    let err = assert_ready!(fresh.poll()).unwrap_err();
    assert!(err.is::<tower_session_persistence::balance::NoEndpoints>(), "{err}");
    // A group whose only endpoint drains takes no new session at all: fails at once.
    balancer.drain(&key("a"));
    let err = balancer.clone().oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<tower_session_persistence::balance::NoEndpoints>(), "{err}");
}

/// Weights change at run time (a config reload): a weight-0 group takes no new session, and its
/// established sessions still reach it.
#[tokio::test(flavor = "current_thread")]
async fn set_weight_moves_new_sessions_only() {
    let (v1, d1) = discover_channel();
    let (v2, d2) = discover_channel();
    v1.insert(key("v1-a"), ok_endpoint());
    v2.insert(key("v2-a"), ok_endpoint());
    let balancer = BalancerBuilder::new().group(1, d1).group(1, d2).build();
    settle().await;
    assert!(balancer.set_weight(1, 0));
    assert!(!balancer.set_weight(2, 1), "no such group");
    for _ in 0..50 {
        assert_eq!(
            served_by(&mut balancer.clone().oneshot(Request::new(())).await.unwrap()),
            "v1-a"
        );
        assert_eq!(served_by(&mut balancer.clone().oneshot(pinned("v2-a")).await.unwrap()), "v2-a");
    }
}

/// A key that another group holds is not removed by this group's discovery.
#[tokio::test(flavor = "current_thread")]
async fn a_remove_from_the_wrong_group_is_ignored() {
    let (g1, d1) = discover_channel();
    let (g2, d2) = discover_channel();
    g1.insert(key("a"), ok_endpoint());
    let balancer = BalancerBuilder::new().group(1, d1).group(1, d2).build();
    settle().await;
    g2.remove(key("a"));
    settle().await;
    assert_eq!(balancer.state(&key("a")), Some(EndpointState::Serving));
    drop(g1);
}

/// A new session whose group has a ready endpoint is sent from the caller's own task, on the
/// future's first poll: no queue, no dispatcher task in between. When none is ready, the
/// request waits for the dispatcher, which sends it once one is.
#[tokio::test(flavor = "current_thread")]
async fn a_balanced_request_goes_out_on_its_first_poll_when_an_endpoint_is_ready() {
    let (a, mut ha) = mock::pair::<Request<()>, Response<()>>();
    let (endpoints, discover) = discover_channel();
    endpoints.insert(key("a"), a);
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;

    ha.allow(1);
    let mut fresh = tokio_test::task::spawn(balancer.clone().oneshot(Request::new(())));
    assert_pending!(fresh.poll(), "sent, waiting for the answer");
    let (_req, send) = assert_ready!(tokio_test::task::spawn(ha.next_request()).poll())
        .expect("sent on the first poll, by this task");
    send.send_response(Response::new(()));
    assert_eq!(served_by(&mut assert_ready!(fresh.poll()).unwrap()), "a");

    // Not ready: queued for the dispatcher, sent when the endpoint becomes ready.
    let mut waiting = tokio_test::task::spawn(balancer.clone().oneshot(Request::new(())));
    assert_pending!(waiting.poll());
    settle().await;
    assert_pending!(
        tokio_test::task::spawn(ha.next_request()).poll(),
        "nothing ready: nothing sent"
    );
    ha.allow(1);
    settle().await;
    assert_pending!(waiting.poll());
    answer(&mut ha).await;
    assert_eq!(served_by(&mut assert_ready!(waiting.poll()).unwrap()), "a");
}

/// An endpoint whose service holds `token` (while any copy of the service lives, the table's,
/// the member list's or p2c's cache's, the token's count stays above one), and which is not
/// ready for the first `unready` polls of any of its kind (then always): so that the first
/// balanced request waits, and tower's p2c takes copies of the endpoints into its cache.
#[derive(Clone)]
struct Tracked {
    _token: Arc<()>,
    unready: Arc<AtomicUsize>,
}

impl Service<Request<()>> for Tracked {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self
            .unready
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

/// New sessions take the fast path, which samples the member list and leaves tower's p2c
/// alone while nothing changes; a removed endpoint must still leave p2c's cache, which holds a
/// copy of its service (and, in a gateway, its connection pool).
#[tokio::test(flavor = "current_thread")]
async fn a_removed_endpoint_is_released_though_no_new_session_waits() {
    let (a, b) = (Arc::new(()), Arc::new(()));
    let unready = Arc::new(AtomicUsize::new(3));
    let (endpoints, discover) = discover_channel();
    endpoints.insert(key("a"), Tracked { _token: a.clone(), unready: unready.clone() });
    endpoints.insert(key("b"), Tracked { _token: b.clone(), unready });
    let balancer = BalancerBuilder::new().group(1, discover).build();
    settle().await;
    for _ in 0..20 {
        balancer.clone().oneshot(Request::new(())).await.unwrap();
    }
    assert!(Arc::strong_count(&a) > 2, "a is in the table, its members and p2c's cache");
    endpoints.remove(key("a"));
    settle().await;
    for _ in 0..20 {
        let mut res = balancer.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(served_by(&mut res), "b");
    }
    settle().await;
    assert_eq!(Arc::strong_count(&a), 1, "every copy of a's service is dropped");
    assert!(Arc::strong_count(&b) > 1);
}

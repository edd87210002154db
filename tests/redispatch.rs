//! Failover in the balancer: one health view shared by balancers on several runtimes, and
//! redispatch of requests that never reached their endpoint (bounded attempts, retry budget,
//! the opt-in retry of sent idempotent requests).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, Request, Response};
use tower::{BoxError, ServiceExt, service_fn};
use tower_session_persistence::balance::{
    Balancer, BalancerBuilder, EndpointState, HealthView, NotSent, discover_channel,
};
use tower_session_persistence::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};

/// An endpoint service as a gateway has one: answers its name and the body it got.
type Svc = tower::util::BoxCloneSyncService<Request<String>, Response<String>, BoxError>;

/// Answers `name: <body>`.
fn alive(name: &'static str, calls: Arc<AtomicUsize>) -> Svc {
    Svc::new(service_fn(move |req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = format!("{name}: {}", req.body());
        async move { Ok::<_, BoxError>(Response::new(body)) }
    }))
}

/// Never reaches its backend, and hands the request back (as a connection refused would).
fn refusing(calls: Arc<AtomicUsize>) -> Svc {
    Svc::new(service_fn(move |req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<Response<String>, BoxError>(NotSent::with_request("refused", req).into()) }
    }))
}

/// Reaches its backend, which resets the connection before answering.
fn resetting(calls: Arc<AtomicUsize>) -> Svc {
    Svc::new(service_fn(move |_req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<Response<String>, BoxError>("connection reset after the request".into()) }
    }))
}

fn pinned(key: &str, method: Method, body: &str) -> Request<String> {
    let mut req = Request::builder().method(method).body(body.to_owned()).unwrap();
    PinnedEndpoint(key.to_owned()).insert(req.extensions_mut());
    req
}

async fn known(balancer: &Balancer<String, Svc, String>, n: usize) {
    for _ in 0..200 {
        if balancer.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the balancer never knew its {n} endpoints");
}

/// `count` fresh call counters.
fn counters<const N: usize>() -> [Arc<AtomicUsize>; N] {
    std::array::from_fn(|_| Arc::new(AtomicUsize::new(0)))
}

#[tokio::test(flavor = "current_thread")]
async fn a_post_refused_by_its_pinned_endpoint_reaches_another_with_its_body() {
    let [dead, b] = counters();
    let (endpoints, discover) = discover_channel();
    endpoints.insert("dead".to_owned(), refusing(dead.clone()));
    endpoints.insert("b".to_owned(), alive("b", b.clone()));
    let balancer = BalancerBuilder::new().group(1, discover).build();
    known(&balancer, 2).await;

    let mut res = balancer.clone().oneshot(pinned("dead", Method::POST, "order=42")).await.unwrap();
    assert_eq!(res.body(), "b: order=42");
    assert_eq!(ServedBy::<String>::take(res.extensions_mut()), Some(ServedBy("b".to_owned())));
    assert_eq!(dead.load(Ordering::SeqCst), 1);
    assert_eq!(balancer.state(&"dead".to_owned()), Some(EndpointState::Ejected));
}

#[tokio::test(flavor = "current_thread")]
async fn redispatch_stops_after_its_attempts() {
    let calls = counters::<3>();
    let (endpoints, discover) = discover_channel();
    for (i, c) in calls.iter().enumerate() {
        endpoints.insert(format!("dead-{i}"), refusing(c.clone()));
    }
    let balancer = BalancerBuilder::new().group(1, discover).redispatches(1).build();
    known(&balancer, 3).await;

    let error = balancer.clone().oneshot(pinned("dead-0", Method::GET, "")).await.unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    let total: usize = calls.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(total, 2, "the first attempt and one redispatch");
}

#[tokio::test(flavor = "current_thread")]
async fn an_empty_retry_budget_redispatches_nothing() {
    let [dead, b] = counters();
    let (endpoints, discover) = discover_channel();
    endpoints.insert("dead".to_owned(), refusing(dead.clone()));
    endpoints.insert("b".to_owned(), alive("b", b.clone()));
    let balancer = BalancerBuilder::new().group(1, discover).retry_budget(0.0, 0).build();
    known(&balancer, 2).await;

    let error = balancer.clone().oneshot(pinned("dead", Method::GET, "")).await.unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    assert_eq!(b.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn reject_keeps_its_meaning_when_the_pinned_endpoint_refuses() {
    let [dead, b] = counters();
    let (endpoints, discover) = discover_channel();
    endpoints.insert("dead".to_owned(), refusing(dead.clone()));
    endpoints.insert("b".to_owned(), alive("b", b.clone()));
    let balancer =
        BalancerBuilder::new().group(1, discover).on_unavailable(OnUnavailable::Reject).build();
    known(&balancer, 2).await;

    let error = balancer.clone().oneshot(pinned("dead", Method::GET, "")).await.unwrap_err();
    assert!(error.is::<PinnedUnavailable>(), "{error}");
    assert_eq!(b.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_sent_request_is_retried_only_when_idempotent_and_opted_in() {
    let [reset, b] = counters();
    let build = |opt_in: bool| {
        let (endpoints, discover) = discover_channel();
        endpoints.insert("reset".to_owned(), resetting(reset.clone()));
        endpoints.insert("b".to_owned(), alive("b", b.clone()));
        BalancerBuilder::new()
            .group(1, discover)
            .replay_empty_bodies()
            .retry_sent_idempotent(opt_in)
            .build()
    };
    let off = build(false);
    let on = build(true);
    known(&off, 2).await;
    known(&on, 2).await;

    assert!(off.clone().oneshot(pinned("reset", Method::GET, "")).await.is_err());
    let res = on.clone().oneshot(pinned("reset", Method::GET, "")).await.unwrap();
    assert_eq!(res.body(), "b: ");
    assert!(on.clone().oneshot(pinned("reset", Method::POST, "")).await.is_err());
    assert_eq!(on.state(&"reset".to_owned()), Some(EndpointState::Serving), "not ejected");
}

/// Runs `f` on a runtime of its own thread, as a gateway's serving threads do.
fn on_own_runtime<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f())
    })
}

/// Two serving threads, each with its balancer over the same two endpoints; `shared` gives
/// both the same view. The first thread's request meets the dead endpoint; then the second
/// thread sends a request pinned to it. Returns the dead endpoint's calls and the second
/// thread's state of it.
fn two_threads(shared: bool) -> (usize, Option<EndpointState>) {
    let dead = Arc::new(AtomicUsize::new(0));
    let view = HealthView::<String>::new();
    let (first_done, first_seen) = std::sync::mpsc::channel::<()>();
    let start = |view: Option<HealthView<String>>,
                 dead: Arc<AtomicUsize>,
                 wait: Option<std::sync::mpsc::Receiver<()>>,
                 done: Option<std::sync::mpsc::Sender<()>>| {
        on_own_runtime(move || {
            Box::pin(async move {
                let (endpoints, discover) = discover_channel();
                endpoints.insert("dead".to_owned(), refusing(dead));
                endpoints.insert("b".to_owned(), alive("b", Arc::default()));
                let builder = BalancerBuilder::new().group(1, discover);
                let balancer = match view {
                    Some(view) => builder.health_view(view).build(),
                    None => builder.build(),
                };
                known(&balancer, 2).await;
                if let Some(wait) = wait {
                    wait.recv().unwrap();
                    // The view's notice is applied by the thread that ejected: let it land.
                    tokio::task::yield_now().await;
                }
                let res = balancer.clone().oneshot(pinned("dead", Method::GET, "")).await;
                assert_eq!(res.unwrap().body(), "b: ");
                if let Some(done) = done {
                    done.send(()).unwrap();
                }
                balancer.state(&"dead".to_owned())
            })
        })
    };
    let v = |view: &HealthView<String>| shared.then(|| view.clone());
    let first = start(v(&view), dead.clone(), None, Some(first_done));
    let second = start(v(&view), dead.clone(), Some(first_seen), None);
    first.join().unwrap();
    let state = second.join().unwrap();
    (dead.load(Ordering::SeqCst), state)
}

#[test]
fn one_failure_ejects_the_endpoint_for_every_balancer_of_the_view() {
    let (calls, state) = two_threads(true);
    assert_eq!(calls, 1, "the second thread never tried the dead endpoint");
    assert_eq!(state, Some(EndpointState::Ejected));
}

#[test]
fn balancers_without_a_shared_view_each_meet_the_failure() {
    let (calls, state) = two_threads(false);
    assert_eq!(calls, 2);
    assert_eq!(state, Some(EndpointState::Ejected));
}

#[tokio::test(flavor = "current_thread")]
async fn the_view_shares_load_and_pinned_counts_between_balancers() {
    let view = HealthView::<String>::new();
    let (release, gate) = tokio::sync::watch::channel(false);
    let build = |gate: tokio::sync::watch::Receiver<bool>| {
        let (endpoints, discover) = discover_channel();
        let slow = Svc::new(service_fn(move |_req: Request<String>| {
            let mut gate = gate.clone();
            async move {
                gate.wait_for(|open| *open).await.map_err(|e| -> BoxError { e.into() })?;
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        }));
        endpoints.insert("a".to_owned(), slow);
        BalancerBuilder::new().group(1, discover).health_view(view.clone()).build()
    };
    let one = build(gate.clone());
    let two = build(gate);
    known(&one, 1).await;
    known(&two, 1).await;

    let pending = tokio::spawn(one.clone().oneshot(pinned("a", Method::GET, "")));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let a = "a".to_owned();
    assert_eq!(two.in_flight(&a), Some(1), "the other balancer sees the load");
    let stats = view.stats(&a).unwrap();
    assert_eq!(
        (stats.in_flight, stats.pinned_while_draining),
        (1, 0),
        "counted while draining only"
    );
    assert_eq!(stats.last_pinned_while_draining, None, "not draining");

    release.send(true).unwrap();
    pending.await.unwrap().unwrap();
    two.drain(&a);
    two.clone().oneshot(pinned("a", Method::GET, "")).await.unwrap();
    let stats = two.stats(&a).unwrap();
    assert_eq!((stats.in_flight, stats.pinned_while_draining), (0, 1));
    let last = stats.last_pinned_while_draining.expect("a pinned request while draining");
    assert!(last.elapsed().unwrap_or_default() < Duration::from_secs(60));
    assert_eq!(one.state(&a), Some(EndpointState::Serving), "draining is each balancer's own");
}

#[tokio::test(flavor = "current_thread")]
async fn five_5xx_in_a_row_eject_an_endpoint_when_outlier_detection_is_on() {
    let failing = || {
        Svc::new(service_fn(|_req: Request<String>| async {
            let mut res = Response::new(String::new());
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, BoxError>(res)
        }))
    };
    let build = |n: Option<u32>| {
        let (endpoints, discover) = discover_channel();
        endpoints.insert("sick".to_owned(), failing());
        BalancerBuilder::new().group(1, discover).eject_after_5xx(n).build()
    };
    let (on, off) = (build(Some(5)), build(None));
    known(&on, 1).await;
    known(&off, 1).await;
    let sick = "sick".to_owned();
    for i in 1..=5 {
        assert_eq!(on.state(&sick), Some(EndpointState::Serving), "before answer {i}");
        let res = on.clone().oneshot(pinned("sick", Method::GET, "")).await.unwrap();
        assert_eq!(res.status(), 503);
        off.clone().oneshot(pinned("sick", Method::GET, "")).await.unwrap();
    }
    assert_eq!(on.state(&sick), Some(EndpointState::Ejected));
    assert_eq!(off.state(&sick), Some(EndpointState::Serving), "off by default");
}

#[tokio::test(flavor = "current_thread")]
async fn ejecting_from_a_thread_without_a_runtime_does_not_panic() {
    let (endpoints, discover) = discover_channel();
    endpoints.insert("a".to_owned(), alive("a", Arc::default()));
    let balancer = BalancerBuilder::new().group(1, discover).build();
    known(&balancer, 1).await;
    let handle = balancer.clone();
    let state = std::thread::spawn(move || {
        let a = "a".to_owned();
        assert!(handle.set_state(&a, EndpointState::Ejected));
        handle.state(&a)
    })
    .join()
    .expect("no panic outside a runtime");
    assert_eq!(state, Some(EndpointState::Ejected));
    assert!(balancer.set_state(&"a".to_owned(), EndpointState::Serving));
    assert_eq!(balancer.state(&"a".to_owned()), Some(EndpointState::Serving));
}

//! Production balancing, end to end (issue 5): scale-up, a killed endpoint under load,
//! draining, weight 0, a stalled pinned endpoint. Real hyper backends on loopback, the layer in
//! front of the balancer served by axum, reqwest clients with cookie jars.
//!
//! No assertion depends on timing: waits are bounded polling loops, and a deadline only guards
//! against a hang.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use common::{Backend, Upstream, backend, serve};
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};
use tower_session_persistence::balance::{
    Balancer, BalancerBuilder, DiscoverSender, EndpointState, discover_channel,
};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{OnUnavailable, SessionPersistenceLayer};

type Endpoint = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Sessions per test, as the issue asks.
const SESSIONS: usize = 300;
/// Requests in flight at once while sessions are being established: small enough that a
/// loaded 2-core machine never runs past the balancer's fail-fast deadline while setting up
/// (seen at 50 with a load average of 10), since setting up is not what these tests measure.
const PARALLEL: usize = 10;

struct Stack {
    url: String,
    backends: Vec<Backend>,
    groups: Vec<DiscoverSender<String, Endpoint>>,
    balancer: Balancer<String, Endpoint, Body>,
    http: Client<HttpConnector, Body>,
}

/// An HTTP client for the endpoints that keeps no idle connection: every request connects, so
/// a killed backend is met as a refused connection, never as a stale pooled one.
fn unpooled() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http()
}

fn upstream(http: &Client<HttpConnector, Body>, b: &Backend) -> Endpoint {
    BoxCloneSyncService::new(Upstream::new(http, b.addr))
}

/// `groups[i]` names the backends of group `i` (weight 1 each).
async fn stack(groups: &[&[&str]], policy: OnUnavailable) -> Stack {
    stack_with(groups, policy, |b, http| upstream(http, b), Duration::from_secs(1)).await
}

async fn stack_with(
    groups: &[&[&str]],
    policy: OnUnavailable,
    endpoint: impl Fn(&Backend, &Client<HttpConnector, Body>) -> Endpoint,
    failfast: Duration,
) -> Stack {
    let http = unpooled();
    // A long ejection, so that a killed endpoint is still ejected when a test looks.
    let mut builder = BalancerBuilder::new()
        .on_unavailable(policy)
        .failfast(failfast)
        .eject_for(Duration::from_secs(60));
    let mut senders = Vec::new();
    let mut backends = Vec::new();
    for names in groups {
        let (sender, discover) = discover_channel();
        for name in *names {
            let b = backend(name).await;
            sender.insert(name.to_string(), endpoint(&b, &http));
            backends.push(b);
        }
        senders.push(sender);
        builder = builder.group(1, discover);
    }
    let balancer: Balancer<String, Endpoint, Body> = builder.replay_empty_bodies().build();
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("sid").build().unwrap(),
        SignedCodec::new([[9u8; 32]]).unwrap(),
    );
    let url = serve(ServiceBuilder::new().layer(layer).service(balancer.clone())).await;
    let expected = backends.len();
    until(|| balancer.len() == expected).await;
    Stack { url, backends, groups: senders, balancer, http }
}

/// Polls `done` until it holds (bounded: 20 s).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..4000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 20 s");
}

/// One client session: a cookie jar, and the endpoint the gateway pinned it to.
#[derive(Clone)]
struct Session {
    client: reqwest::Client,
    on: String,
}

/// What one request saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Served by this backend; `true` if the response issued a new session.
    Ok(String, bool),
    /// Failed: this status, or no response.
    Failed(Option<u16>),
}

async fn request(client: &reqwest::Client, url: &str) -> Seen {
    match client.get(url).send().await {
        Ok(res) if res.status() == 200 => {
            let issued = res
                .headers()
                .get_all("set-cookie")
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.starts_with("sid=")));
            let on = res.headers()["x-backend"].to_str().unwrap().to_owned();
            Seen::Ok(on, issued)
        }
        Ok(res) => Seen::Failed(Some(res.status().as_u16())),
        Err(_) => Seen::Failed(None),
    }
}

fn jar() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

/// Opens `n` sessions (PARALLEL at a time); each is pinned by its first response.
async fn open_sessions(url: &str, n: usize) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(PARALLEL) {
        let mut tasks = Vec::new();
        for _ in chunk {
            let url = url.to_owned();
            tasks.push(tokio::spawn(async move {
                let client = jar();
                match request(&client, &url).await {
                    Seen::Ok(on, true) => Session { client, on },
                    other => panic!("a new session was not issued: {other:?}"),
                }
            }));
        }
        for t in tasks {
            sessions.push(t.await.unwrap());
        }
    }
    sessions
}

/// Sends `rounds` requests per session (all sessions at once, each in order); returns what
/// each session saw.
async fn run(url: &str, sessions: &[Session], rounds: usize) -> Vec<Vec<Seen>> {
    let tasks: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (client, url) = (s.client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    seen.push(request(&client, &url).await);
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all
}

fn counts(sessions: &[Session]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for s in sessions {
        *counts.entry(s.on.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_from_3_to_4_endpoints_moves_no_session() {
    let mut s = stack(&[&["a", "b", "c"]], OnUnavailable::Rebalance).await;
    let sessions = open_sessions(&s.url, SESSIONS).await;
    assert_eq!(counts(&sessions).len(), 3, "{:?}", counts(&sessions));

    let d = backend("d").await;
    s.groups[0].insert("d".to_owned(), upstream(&s.http, &d));
    s.backends.push(d);
    until(|| s.balancer.len() == 4).await;

    let seen = run(&s.url, &sessions, 3).await;
    let mut moved = 0;
    for (session, seen) in sessions.iter().zip(&seen) {
        for x in seen {
            if *x != Seen::Ok(session.on.clone(), false) {
                moved += 1;
            }
        }
    }
    println!("scale-up 3 → 4 with {SESSIONS} sessions: {moved} requests left their endpoint");
    assert_eq!(moved, 0);

    // The new endpoint is live: new sessions reach it.
    let fresh = open_sessions(&s.url, 100).await;
    assert!(counts(&fresh).contains_key("d"), "{:?}", counts(&fresh));
}

/// One request of the load in `killing_one_of_3…`.
struct Sent {
    /// Started after the kill was complete.
    after: bool,
    /// In flight at some moment of the kill: started before it was complete, ended after it
    /// began.
    exposed: bool,
    seen: Seen,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_3_endpoints_under_load_moves_only_its_sessions_once() {
    let mut s = stack(&[&["a", "b", "c"]], OnUnavailable::Rebalance).await;
    let sessions = open_sessions(&s.url, SESSIONS).await;
    let victim = s.backends[0].name.clone();
    let on_victim = sessions.iter().filter(|x| x.on == victim).count();
    assert!(on_victim > 0);

    // Load: every session sends requests in a loop until it has sent three that started after
    // the kill.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let kill_began = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = sessions
        .iter()
        .map(|session| {
            let (client, url) = (session.client.clone(), s.url.clone());
            let (in_flight, kill_began, killed, finished, total) = (
                in_flight.clone(),
                kill_began.clone(),
                killed.clone(),
                finished.clone(),
                total.clone(),
            );
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut after_kill = 0;
                while after_kill < 3 {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let after = killed.load(Ordering::SeqCst);
                    let seen = request(&client, &url).await;
                    let exposed = !after && kill_began.load(Ordering::SeqCst);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    sent.push(Sent { after, exposed, seen });
                    after_kill += usize::from(after);
                }
                finished.fetch_add(1, Ordering::SeqCst);
                sent
            })
        })
        .collect();

    // Kill under load.
    until(|| total.load(Ordering::SeqCst) >= SESSIONS).await;
    kill_began.store(true, Ordering::SeqCst);
    let at_kill = in_flight.load(Ordering::SeqCst);
    s.backends[0].kill().await;
    killed.store(true, Ordering::SeqCst);
    until(|| finished.load(Ordering::SeqCst) == SESSIONS).await;

    let (mut failed, mut exposed, mut moved, mut requests) = (0, 0, 0, 0);
    for (session, task) in sessions.iter().zip(tasks) {
        let sent = task.await.unwrap();
        requests += sent.len();
        if session.on != victim {
            for x in &sent {
                assert_eq!(
                    x.seen,
                    Seen::Ok(session.on.clone(), false),
                    "a session on a live endpoint moved or failed"
                );
            }
            continue;
        }
        exposed += sent.iter().filter(|x| x.exposed).count();
        // The victim's session: served by the victim; then, after at most the failure of a
        // request in flight at the kill, one new cookie from a live endpoint, which holds.
        let mut now_on: Option<String> = None;
        for x in &sent {
            match (&x.seen, &now_on) {
                (Seen::Failed(_), None) => {
                    assert!(x.exposed, "a request failed that was not in flight at the kill");
                    failed += 1;
                }
                (Seen::Ok(on, false), None) if *on == victim => {
                    assert!(!x.after, "served by a dead endpoint")
                }
                (Seen::Ok(on, true), None) if *on != victim => now_on = Some(on.clone()),
                (Seen::Ok(on, false), Some(new)) if on == new => {}
                (seen, _) => {
                    panic!("{seen:?} for a session of the killed endpoint (now on {now_on:?})")
                }
            }
        }
        assert!(now_on.is_some(), "a session of the killed endpoint never moved");
        moved += 1;
    }
    println!(
        "kill 1 of 3 under load, {SESSIONS} sessions, {requests} requests: {moved} sessions moved \
         (the victim had {on_victim}), the other {} moved 0; {failed} requests failed; {at_kill} \
         requests were in flight when the kill began, {exposed} of them (or started during it) \
         to the victim",
        SESSIONS - on_victim
    );
    assert_eq!(moved, on_victim);
    assert!(failed <= exposed);
    assert_eq!(s.balancer.state(&victim), Some(EndpointState::Ejected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_endpoint_keeps_its_sessions_and_gets_no_new_ones() {
    let s = stack(&[&["a", "b", "c"]], OnUnavailable::Rebalance).await;
    let sessions = open_sessions(&s.url, SESSIONS).await;
    let drained = "a".to_owned();
    assert!(s.balancer.drain(&drained));

    let seen = run(&s.url, &sessions, 3).await;
    for (session, seen) in sessions.iter().zip(&seen) {
        for x in seen {
            assert_eq!(*x, Seen::Ok(session.on.clone(), false), "a session moved while draining");
        }
    }
    let fresh = open_sessions(&s.url, 100).await;
    assert!(!counts(&fresh).contains_key(&drained), "{:?}", counts(&fresh));

    // Removal ends the drain: its sessions move, once.
    s.groups[0].remove(drained.clone());
    until(|| s.balancer.state(&drained).is_none()).await;
    let mine: Vec<_> = sessions.iter().filter(|x| x.on == drained).cloned().collect();
    assert!(!mine.is_empty());
    for (session, seen) in mine.iter().zip(run(&s.url, &mine, 3).await) {
        let Seen::Ok(new, true) = &seen[0] else { panic!("{:?}", seen[0]) };
        assert_ne!(*new, session.on);
        assert_eq!(seen[1..], [Seen::Ok(new.clone(), false), Seen::Ok(new.clone(), false)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_0_on_a_service_in_a_split_keeps_its_sessions() {
    // A 50/50 split between two services; then the second one's weight goes to 0.
    let s = stack(&[&["v1-a", "v1-b"], &["v2-a"]], OnUnavailable::Rebalance).await;
    let sessions = open_sessions(&s.url, SESSIONS).await;
    let on_v2 = sessions.iter().filter(|x| x.on == "v2-a").count();
    assert!(on_v2 > 0);
    assert!(s.balancer.set_weight(1, 0));

    for (session, seen) in sessions.iter().zip(run(&s.url, &sessions, 3).await) {
        for x in seen {
            assert_eq!(x, Seen::Ok(session.on.clone(), false), "a session moved");
        }
    }
    let fresh = open_sessions(&s.url, 100).await;
    assert!(!counts(&fresh).contains_key("v2-a"), "{:?}", counts(&fresh));

    // The same holds for a gateway rebuilt from a config that says weight 0 (a reload): the
    // tokens are stateless, so a new balancer with the same keys honours them.
    let (g1, d1) = discover_channel();
    let (g2, d2) = discover_channel();
    for b in &s.backends {
        let group = if b.name.starts_with("v1") { &g1 } else { &g2 };
        group.insert(b.name.clone(), upstream(&s.http, b));
    }
    let reloaded: Balancer<String, Endpoint, Body> =
        BalancerBuilder::new().group(1, d1).group(0, d2).replay_empty_bodies().build();
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("sid").build().unwrap(),
        SignedCodec::new([[9u8; 32]]).unwrap(),
    );
    let url = serve(ServiceBuilder::new().layer(layer).service(reloaded.clone())).await;
    until(|| reloaded.len() == 3).await;
    for (session, seen) in sessions.iter().zip(run(&url, &sessions, 1).await) {
        assert_eq!(seen[0], Seen::Ok(session.on.clone(), false), "a session moved on reload");
    }
}

/// Endpoints with room for a few requests: at most 2 in flight, 1 held by the buffer's worker
/// and 2 in its queue; a stalled backend therefore makes its endpoint not ready.
///
/// The queue needs 2 places: p2c keeps a ready copy of each endpoint, and a `Buffer`'s
/// readiness is a reserved place, so p2c holds one of them.
fn limited(b: &Backend, http: &Client<HttpConnector, Body>) -> Endpoint {
    let svc =
        ServiceBuilder::new().buffer(2).concurrency_limit(2).service(Upstream::new(http, b.addr));
    BoxCloneSyncService::new(svc)
}

/// At most this many requests can be admitted by one `limited` endpoint.
const ADMITTED: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pinned_endpoint_fails_fast_and_others_are_unaffected() {
    for policy in [OnUnavailable::Rebalance, OnUnavailable::Reject] {
        let s = stack_with(&[&["a", "b", "c"]], policy, limited, Duration::from_millis(200)).await;
        let sessions = open_sessions(&s.url, 60).await;
        let stalled = &s.backends[0];
        let mine: Vec<_> = sessions.iter().filter(|x| x.on == stalled.name).cloned().collect();
        assert!(mine.len() > ADMITTED, "{}", mine.len());
        stalled.stalled.store(true, Ordering::SeqCst);

        // Every session of the stalled endpoint sends one request at once.
        let tasks: Vec<_> = mine
            .iter()
            .map(|x| {
                let (client, url) = (x.client.clone(), s.url.clone());
                tokio::spawn(async move { request(&client, &url).await })
            })
            .collect();
        // Those the endpoint cannot admit fail fast, while the stall goes on.
        until(|| tasks.iter().filter(|t| t.is_finished()).count() >= mine.len() - ADMITTED).await;
        assert!(stalled.held.load(Ordering::SeqCst) <= 2);
        // Sessions elsewhere are served as usual meanwhile (one at a time: the limited
        // endpoints are small).
        for session in sessions.iter().filter(|x| x.on != stalled.name) {
            for _ in 0..2 {
                let x = request(&session.client, &s.url).await;
                assert_eq!(x, Seen::Ok(session.on.clone(), false));
            }
        }
        let mut fell_back = 0;
        let mut held = Vec::new();
        for t in tasks {
            if t.is_finished() {
                let x = t.await.unwrap();
                match policy {
                    OnUnavailable::Rebalance => {
                        let Seen::Ok(on, true) = &x else { panic!("{x:?}") };
                        assert_ne!(*on, stalled.name);
                    }
                    _ => assert_eq!(x, Seen::Failed(Some(503))),
                }
                fell_back += 1;
            } else {
                held.push(t);
            }
        }
        println!(
            "{policy:?}: of {} requests for a stalled endpoint, {fell_back} failed fast, {} waited for it",
            mine.len(),
            held.len()
        );
        assert!(held.len() <= ADMITTED);
        // The stall ends: the admitted requests are served by their endpoint, unchanged.
        stalled.stalled.store(false, Ordering::SeqCst);
        until(|| {
            stalled.release.notify_waiters();
            held.iter().all(|t| t.is_finished())
        })
        .await;
        for t in held {
            let x = tokio::time::timeout(Duration::from_secs(20), t).await.unwrap().unwrap();
            assert_eq!(x, Seen::Ok(stalled.name.clone(), false));
        }
        assert_eq!(s.balancer.state(&stalled.name), Some(EndpointState::Serving));
    }
}

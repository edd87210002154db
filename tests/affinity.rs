//! Affinity for requests without a session (GEP-1619's second tier): a rendezvous hash of a
//! request attribute. Deterministic, portable across replicas, weighted, skips draining and
//! ejected endpoints, and moves about 1/(N+1) of the keys when one endpoint joins N.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use common::{Backend, Upstream, backend, client, serve};
use http::{HeaderName, Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::balance::{
    Balancer, BalancerBuilder, DiscoverSender, EndpointState, affinity, discover_channel,
};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const USER: HeaderName = HeaderName::from_static("x-user");

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn ok() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn user(name: &str) -> Request<()> {
    Request::builder().header(USER, name).body(()).unwrap()
}

async fn served(
    balancer: &Balancer<
        String,
        impl Service<
            Request<()>,
            Response = Response<()>,
            Error = Infallible,
            Future = impl Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
        (),
    >,
    req: Request<()>,
) -> String {
    let mut res = balancer.clone().oneshot(req).await.unwrap();
    ServedBy::<String>::take(res.extensions_mut()).unwrap().0
}

#[tokio::test(flavor = "current_thread")]
async fn affinity_is_deterministic_portable_and_second_to_sessions() {
    let names: Vec<String> = (0..8).map(|i| format!("pod-{i}")).collect();
    // Two replicas that learn the endpoints in a different order.
    let (r1, d1) = discover_channel();
    let (r2, d2) = discover_channel();
    for n in &names {
        r1.insert(n.clone(), ok());
    }
    for n in names.iter().rev() {
        r2.insert(n.clone(), ok());
    }
    let one = BalancerBuilder::new().group(1, d1).affinity(affinity::header::<()>(USER)).build();
    let two = BalancerBuilder::new().group(1, d2).affinity(affinity::header::<()>(USER)).build();
    settle().await;
    let mut used = HashSet::new();
    for i in 0..200 {
        let name = format!("user-{i}");
        let first = served(&one, user(&name)).await;
        assert_eq!(served(&one, user(&name)).await, first, "not deterministic");
        assert_eq!(served(&two, user(&name)).await, first, "replicas disagree");
        used.insert(first);
    }
    assert_eq!(used.len(), names.len(), "keys spread over every endpoint");

    // A session wins over affinity.
    for i in 0..20 {
        let mut req = user(&format!("user-{i}"));
        PinnedEndpoint("pod-3".to_owned()).insert(req.extensions_mut());
        assert_eq!(served(&one, req).await, "pod-3");
    }
    // Without the attribute, requests are balanced by load.
    let mut spread = HashSet::new();
    for _ in 0..200 {
        spread.insert(served(&one, Request::new(())).await);
    }
    assert!(spread.len() > 1, "{spread:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn affinity_respects_group_weights() {
    let (g1, d1) = discover_channel();
    let (g2, d2) = discover_channel();
    let (g3, d3) = discover_channel();
    for n in ["v1-a", "v1-b"] {
        g1.insert(n.to_owned(), ok());
    }
    for n in ["v2-a", "v2-b"] {
        g2.insert(n.to_owned(), ok());
    }
    g3.insert("v3-a".to_owned(), ok());
    let balancer = BalancerBuilder::new()
        .group(75, d1)
        .group(25, d2)
        .group(0, d3)
        .affinity(affinity::header::<()>(USER))
        .build();
    settle().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..4000 {
        *counts
            .entry(served(&balancer, user(&format!("u{i}"))).await[..2].to_owned())
            .or_default() += 1;
    }
    println!("affinity over weights 75/25/0, 4000 keys: {counts:?}");
    let v1 = counts.get("v1").copied().unwrap_or(0);
    assert!((2800..=3200).contains(&v1), "{counts:?}");
    assert_eq!(counts.get("v3"), None, "weight 0 takes no new key");
}

#[tokio::test(flavor = "current_thread")]
async fn affinity_skips_draining_and_ejected_endpoints_and_moves_only_their_keys() {
    let (g, d) = discover_channel();
    for n in ["a", "b", "c", "d"] {
        g.insert(n.to_owned(), ok());
    }
    let balancer =
        BalancerBuilder::new().group(1, d).affinity(affinity::header::<()>(USER)).build();
    settle().await;
    let keys: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(served(&balancer, user(k)).await);
    }
    for state in [EndpointState::Draining, EndpointState::Ejected] {
        assert!(balancer.set_state(&"a".to_owned(), state));
        for (k, was) in keys.iter().zip(&before) {
            let now = served(&balancer, user(k)).await;
            if was == "a" {
                assert_ne!(
                    now, "a",
                    "{state}: a key stayed on an endpoint that takes no new sessions"
                );
            } else {
                assert_eq!(&now, was, "{state}: a key moved that had no reason to");
            }
        }
        assert!(balancer.set_state(&"a".to_owned(), EndpointState::Serving));
        for (k, was) in keys.iter().zip(&before) {
            assert_eq!(&served(&balancer, user(k)).await, was, "serving again: keys come back");
        }
    }
}

/// End to end: users identified by a header, no cookie jar (every request is sessionless, so
/// affinity decides each time); one endpoint joins N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_one_endpoint_to_n_moves_about_1_in_n_plus_1_keys() {
    const USERS: usize = 2000;
    for n in [3usize, 10, 100] {
        let http = client();
        let (endpoints, discover): (DiscoverSender<String, Upstream>, _) = discover_channel();
        let mut backends: Vec<Backend> = Vec::new();
        for i in 0..n {
            let b = backend(&format!("b{i}")).await;
            endpoints.insert(b.name.clone(), Upstream::new(&http, b.addr));
            backends.push(b);
        }
        let balancer: Balancer<String, Upstream, Body> = BalancerBuilder::new()
            .group(1, discover)
            .affinity(affinity::header::<Body>(USER))
            .build();
        let layer = SessionPersistenceLayer::<String>::new(
            SessionPolicy::cookie("sid").build().unwrap(),
            SignedCodec::new([[9u8; 32]]).unwrap(),
        );
        let url = serve(ServiceBuilder::new().layer(layer).service(balancer.clone())).await;
        wait_for(|| balancer.len() == n).await;

        let before = backends_of(&url, USERS).await;
        let newcomer = backend(&format!("b{n}")).await;
        endpoints.insert(newcomer.name.clone(), Upstream::new(&http, newcomer.addr));
        wait_for(|| balancer.len() == n + 1).await;
        let after = backends_of(&url, USERS).await;

        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, newcomer.name, "a key moved between old endpoints");
                moved += 1;
            }
        }
        let fraction = moved as f64 / USERS as f64;
        let ideal = 1.0 / (n + 1) as f64;
        println!(
            "affinity, {n} → {} endpoints, {USERS} keys: {moved} moved = {fraction:.4} (1/(N+1) = {ideal:.4})",
            n + 1
        );
        assert!(fraction > ideal * 0.5 && fraction < ideal * 1.5, "{fraction} vs {ideal}");
    }
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..4000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 20 s");
}

/// The backend that serves each of `users` users (20 at a time).
async fn backends_of(url: &str, users: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(20) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let (client, url, user) = (client.clone(), url.to_owned(), format!("user-{i}"));
                tokio::spawn(async move {
                    let res = client.get(url).header(USER, user).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    res.headers()["x-backend"].to_str().unwrap().to_owned()
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

//! End to end: real hyper backends on loopback, the layer and the balancer served by axum, and
//! reqwest with a cookie jar as the client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use common::{Backend, Upstream, backend, client, serve};
use tower::ServiceBuilder;
use tower_session_persistence::balance::{BalancerBuilder, DiscoverSender, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{OnUnavailable, SessionPersistenceLayer};

struct Stack {
    url: String,
    backends: Vec<Backend>,
    endpoints: DiscoverSender<String, Upstream>,
}

async fn stack(names: &[&str], on_unavailable: OnUnavailable) -> Stack {
    let http = client();
    let (endpoints, discover) = discover_channel();
    let mut backends = Vec::new();
    for name in names {
        let b = backend(name).await;
        endpoints.insert(name.to_string(), Upstream::new(&http, b.addr));
        backends.push(b);
    }
    let balancer = BalancerBuilder::new().group(1, discover).on_unavailable(on_unavailable).build();
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("sid").build().unwrap(),
        SignedCodec::new([[9u8; 32]]).unwrap(),
    );
    let svc = ServiceBuilder::new().layer(layer).service(balancer);
    let url = serve(svc).await;
    Stack { url, backends, endpoints }
}

fn jar_client() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res
}

fn backend_of(res: &reqwest::Response) -> String {
    res.headers()["x-backend"].to_str().unwrap().to_owned()
}

fn session_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("sid="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_jar_keeps_reaching_one_endpoint() {
    let s = stack(&["a", "b", "c"], OnUnavailable::Rebalance).await;
    let client = jar_client();
    let first = get(&client, &s.url).await;
    let pinned = backend_of(&first);
    let cookie = session_cookie(&first).expect("the first response issues a session");
    assert!(cookie.contains("HttpOnly") && cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Max-Age") && !cookie.contains("Expires"), "{cookie}");
    for i in 0..50 {
        let res = get(&client, &format!("{}/page/{i}", s.url)).await;
        assert_eq!(backend_of(&res), pinned, "request {i} left its endpoint");
        assert_eq!(session_cookie(&res), None, "an unchanged session is not re-issued");
        // The backend never sees the gateway's cookie, but does see its own.
        let seen = res.headers()["x-seen-cookie"].to_str().unwrap();
        assert!(!seen.contains("sid="), "{seen}");
        assert_eq!(seen, "app=1");
        // The backend's own Set-Cookie is passed on untouched.
        let own: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert_eq!(own, ["app=1; Path=/; Priority=High"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_spread_over_all_endpoints() {
    let s = stack(&["a", "b", "c"], OnUnavailable::Rebalance).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let res = get(&jar_client(), &s.url).await;
        assert!(session_cookie(&res).is_some());
        *counts.entry(backend_of(&res)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    // p2c over idle endpoints picks at random: each gets a fair share, far from all or none.
    for (name, n) in &counts {
        assert!(*n >= 30, "{name} got only {n} of 200: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_re_pins_its_sessions_with_a_new_cookie() {
    let s = stack(&["a", "b", "c"], OnUnavailable::Rebalance).await;
    let client = jar_client();
    let first = get(&client, &s.url).await;
    let gone = backend_of(&first);
    let old_cookie = session_cookie(&first).unwrap();

    assert!(s.endpoints.remove(gone.clone()));
    // Discovery is applied by its own task; wait until the balancer stops using it.
    let mut moved = None;
    for _ in 0..100 {
        let res = get(&client, &s.url).await;
        if backend_of(&res) != gone {
            moved = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = moved.expect("the removed endpoint kept serving its session");
    let new_cookie = session_cookie(&moved).expect("a re-pinned session gets a new cookie");
    assert_ne!(new_cookie, old_cookie);
    let now_on = backend_of(&moved);
    for _ in 0..20 {
        let res = get(&client, &s.url).await;
        assert_eq!(backend_of(&res), now_on);
        assert_eq!(session_cookie(&res), None);
    }
    drop(s.backends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_answers_503_when_the_endpoint_is_gone() {
    let s = stack(&["a", "b"], OnUnavailable::Reject).await;
    let client = jar_client();
    let first = get(&client, &s.url).await;
    let gone = backend_of(&first);
    assert!(s.endpoints.remove(gone.clone()));
    let mut status = None;
    for _ in 0..100 {
        let res = client.get(&s.url).send().await.unwrap();
        if res.status() != 200 {
            assert!(session_cookie(&res).is_none(), "a rejected request issues no session");
            status = Some(res.status());
            break;
        }
        assert_eq!(backend_of(&res), gone);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    // A client without a session is still served.
    let res = get(&jar_client(), &s.url).await;
    assert_ne!(backend_of(&res), gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_does_not_delay_sessions_pinned_elsewhere() {
    let s = stack(&["a", "b", "c"], OnUnavailable::Rebalance).await;
    // One client per endpoint.
    let mut clients: HashMap<String, reqwest::Client> = HashMap::new();
    while clients.len() < 3 {
        let c = jar_client();
        let res = get(&c, &s.url).await;
        clients.entry(backend_of(&res)).or_insert(c);
    }
    let stalled = &s.backends[0];
    stalled.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    let stuck_client = clients[&stalled.name].clone();
    let stuck_url = s.url.clone();
    let stuck = tokio::spawn(async move { stuck_client.get(stuck_url).send().await });
    for _ in 0..500 {
        if stalled.held.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stalled.held.load(std::sync::atomic::Ordering::SeqCst), 1, "request not held");
    // While that request hangs, sessions on the other endpoints are served, every time.
    for (name, c) in &clients {
        if *name == stalled.name {
            continue;
        }
        for _ in 0..10 {
            let res = get(c, &s.url).await;
            assert_eq!(&backend_of(&res), name);
        }
    }
    assert!(!stuck.is_finished(), "the stalled endpoint answered");
    stalled.stalled.store(false, std::sync::atomic::Ordering::SeqCst);
    stalled.release.notify_waiters();
    let res = tokio::time::timeout(Duration::from_secs(10), stuck).await.unwrap().unwrap().unwrap();
    assert_eq!(backend_of(&res), stalled.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_cookie_fields_and_quoted_values_are_honoured() {
    let s = stack(&["a", "b", "c"], OnUnavailable::Rebalance).await;
    let first = get(&jar_client(), &s.url).await;
    let pinned = backend_of(&first);
    let pair = session_cookie(&first).unwrap().split(';').next().unwrap().to_owned();
    let value = pair.strip_prefix("sid=").unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let send = |fields: Vec<String>| {
        let mut req = http::Request::get(&s.url);
        for f in fields {
            req = req.header("cookie", f);
        }
        http.request(req.body(Body::empty()).unwrap())
    };
    for fields in [
        vec!["x=1".to_owned(), format!("y=2; {pair}"), "z=3".to_owned()],
        vec![format!("sid=\"{value}\"; other=keep")],
        vec![format!("{pair}; sid=not-a-token")],
    ] {
        let res = send(fields.clone()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-backend"], pinned.as_str(), "{fields:?}");
        let seen = res.headers()["x-seen-cookie"].to_str().unwrap();
        assert!(!seen.contains("sid"), "{seen}");
    }
    let res = send(vec!["x=1".to_owned(), pair.clone(), "y=2".to_owned()]).await.unwrap();
    assert_eq!(res.headers()["x-seen-cookie"], "x=1 | y=2", "emptied field removed, others intact");
}

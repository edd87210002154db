//! The `Learn` layer: sessions learned from the application's own cookie or header, over
//! stand-in balancers (deterministic) and over the crate's `Balancer` (failover).
#![cfg(feature = "learn")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderName, Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::learn::{Identifier, LearnLayer};
use tower_session_persistence::store::{
    Lifetime, MemoryStore, SessionStore, StoreError, StoreFuture, StoreKey,
};
use tower_session_persistence::{Decision, PinnedEndpoint, PinnedUnavailable, ServedBy};

const KEY: [u8; 32] = [9; 32];
const MCP: HeaderName = HeaderName::from_static("mcp-session-id");

/// A stand-in balancer: serves the pinned endpoint, else the one named by `x-default` (or
/// `pod-a`). The application on it starts a session (`Set-Cookie: JSESSIONID=<pod>-<n>` and
/// the `mcp-session-id` header) when asked with `x-start`, and echoes what it received.
fn balancer()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    let counter = Arc::new(AtomicUsize::new(0));
    service_fn(move |mut req: Request<()>| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let pinned = PinnedEndpoint::<String>::take(req.extensions_mut()).map(|p| p.0);
            let default = req.headers().get("x-default").map_or("pod-a", |v| v.to_str().unwrap());
            let pod = pinned.clone().unwrap_or_else(|| default.to_owned());
            let mut res = Response::new(());
            if let Some(start) = req.headers().get("x-start") {
                let id = format!("{}-{n}", start.to_str().unwrap());
                let cookie = format!("JSESSIONID={id}; Path=/; HttpOnly");
                res.headers_mut().append("set-cookie", cookie.parse().unwrap());
                res.headers_mut().insert(MCP, id.parse().unwrap());
            }
            if let Some(cookie) = req.headers().get("cookie") {
                res.headers_mut().insert("x-seen-cookie", cookie.clone());
            }
            res.headers_mut().insert("x-pinned", pinned.is_some().to_string().parse().unwrap());
            res.headers_mut().insert("x-backend", pod.parse().unwrap());
            if req.headers().contains_key("x-reject") && pinned.is_some() {
                return Ok(PinnedUnavailable::response());
            }
            ServedBy(pod).insert(res.extensions_mut());
            Ok(res)
        }
    })
}

fn cookie_layer(store: impl SessionStore) -> LearnLayer<String> {
    LearnLayer::new(Identifier::cookie("JSESSIONID"), store, KEY).unwrap().scope("default/shop/0")
}

async fn send<S>(svc: &S, headers: &[(&str, &str)]) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
{
    let mut req = Request::builder();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    svc.clone().oneshot(req.body(()).unwrap()).await.unwrap()
}

fn decision(res: &Response<()>) -> Option<Decision> {
    res.extensions().get::<Decision>().copied()
}

fn backend(res: &Response<()>) -> &str {
    res.headers()["x-backend"].to_str().unwrap()
}

fn pinned(res: &Response<()>) -> bool {
    res.headers()["x-pinned"] == "true"
}

/// The cookie pair the response set, as a client sends it back.
fn jsessionid(res: &Response<()>) -> String {
    let set = res.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// A store that answers later (a boxed future after a yield), as a networked store does, so
/// that the layer's waiting path is the one tested.
#[derive(Debug, Clone)]
struct Deferred(MemoryStore);

impl SessionStore for Deferred {
    fn lookup(
        &self,
        key: &StoreKey,
        l: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>> {
        let answer = self.0.lookup(key, l, now);
        StoreFuture::boxed(async move {
            tokio::task::yield_now().await;
            answer.await
        })
    }
    fn insert(&self, key: &StoreKey, e: &[u8], l: Lifetime, now: SystemTime) -> StoreFuture<()> {
        let answer = self.0.insert(key, e, l, now);
        StoreFuture::boxed(async move {
            tokio::task::yield_now().await;
            answer.await
        })
    }
}

/// A key a store was given, and the value (empty for a lookup).
type Seen = (StoreKey, Vec<u8>);

/// Records every key and value a store is given.
#[derive(Debug, Clone, Default)]
struct Recording {
    seen: Arc<Mutex<Vec<Seen>>>,
    inner: Option<MemoryStore>,
}

impl SessionStore for Recording {
    fn lookup(
        &self,
        key: &StoreKey,
        l: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>> {
        self.seen.lock().unwrap().push((key.clone(), Vec::new()));
        self.inner.as_ref().expect("a store").lookup(key, l, now)
    }
    fn insert(&self, key: &StoreKey, e: &[u8], l: Lifetime, now: SystemTime) -> StoreFuture<()> {
        self.seen.lock().unwrap().push((key.clone(), e.to_vec()));
        self.inner.as_ref().expect("a store").insert(key, e, l, now)
    }
}

/// A store that is down.
#[derive(Debug, Clone)]
struct Down;

impl SessionStore for Down {
    fn lookup(&self, _: &StoreKey, _: Lifetime, _: SystemTime) -> StoreFuture<Option<Arc<[u8]>>> {
        StoreFuture::boxed(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn insert(&self, _: &StoreKey, _: &[u8], _: Lifetime, _: SystemTime) -> StoreFuture<()> {
        StoreFuture::ready(Err(StoreError::timeout()))
    }
}

async fn learns_from_the_responses_cookie(store: impl SessionStore) {
    let svc = cookie_layer(store).layer(balancer());
    for pod in ["pod-a", "pod-b", "pod-c"] {
        let first = send(&svc, &[("x-default", pod), ("x-start", pod)]).await;
        assert_eq!(decision(&first), Some(Decision::New));
        assert!(!pinned(&first));
        // The application's cookie reaches the client untouched; the layer sets nothing.
        let set: Vec<_> = first.headers().get_all("set-cookie").iter().collect();
        assert_eq!(set.len(), 1);
        assert!(set[0].to_str().unwrap().starts_with(&format!("JSESSIONID={pod}-")));
        assert!(set[0].to_str().unwrap().ends_with("; Path=/; HttpOnly"));
        let cookie = jsessionid(&first);
        for other in ["pod-a", "pod-b", "pod-c"] {
            let with = format!("a=1; {cookie}; b=2");
            let again = send(&svc, &[("x-default", other), ("cookie", &with)]).await;
            assert_eq!(backend(&again), pod, "the session stays on the pod that set it");
            assert!(pinned(&again));
            assert_eq!(decision(&again), Some(Decision::Pinned));
            // And the backend sees the application's cookie as the client sent it.
            assert_eq!(again.headers()["x-seen-cookie"], with.as_str());
            assert!(again.headers().get("set-cookie").is_none());
        }
    }
}

#[tokio::test]
async fn learns_from_the_responses_cookie_with_a_store_that_answers_at_once() {
    learns_from_the_responses_cookie(MemoryStore::new(1000)).await;
}

#[tokio::test]
async fn learns_from_the_responses_cookie_with_a_store_that_answers_later() {
    learns_from_the_responses_cookie(Deferred(MemoryStore::new(1000))).await;
}

#[tokio::test]
async fn learns_from_a_header() {
    let store = MemoryStore::new(1000);
    let svc =
        LearnLayer::<String>::new(Identifier::header(MCP), store, KEY).unwrap().layer(balancer());
    let first = send(&svc, &[("x-default", "pod-c"), ("x-start", "mcp")]).await;
    assert_eq!(decision(&first), Some(Decision::New));
    let id = first.headers()[MCP].to_str().unwrap().to_owned();
    for _ in 0..5 {
        let again = send(&svc, &[("x-default", "pod-a"), ("mcp-session-id", &id)]).await;
        assert_eq!((backend(&again), decision(&again)), ("pod-c", Some(Decision::Pinned)));
    }
    // A cookie of the same name is not the header.
    let cookie = format!("mcp-session-id={id}");
    let other = send(&svc, &[("x-default", "pod-a"), ("cookie", &cookie)]).await;
    assert_eq!((backend(&other), decision(&other)), ("pod-a", None));
}

#[tokio::test]
async fn a_client_chosen_identifier_is_learned_only_when_the_rule_says_so() {
    let store = MemoryStore::new(1000);
    let svc = cookie_layer(store.clone()).layer(balancer());
    // Unknown: balanced, and nothing learned from a request.
    let res = send(&svc, &[("x-default", "pod-b"), ("cookie", "JSESSIONID=mine")]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-b", None));
    let res = send(&svc, &[("x-default", "pod-c"), ("cookie", "JSESSIONID=mine")]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-c", None));
    assert_eq!(store.entry_count(), 0);

    let svc = cookie_layer(store.clone()).learn_requests(true).layer(balancer());
    let res = send(&svc, &[("x-default", "pod-b"), ("cookie", "JSESSIONID=mine")]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-b", Some(Decision::New)));
    let res = send(&svc, &[("x-default", "pod-c"), ("cookie", "JSESSIONID=mine")]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-b", Some(Decision::Pinned)));
}

#[tokio::test]
async fn an_identifier_the_application_replaces_is_learned_too() {
    let svc = cookie_layer(MemoryStore::new(1000)).layer(balancer());
    let first = send(&svc, &[("x-default", "pod-b"), ("x-start", "old")]).await;
    let old = jsessionid(&first);
    // The application rotates the session on the pinned pod (a login, say).
    let rotated = send(&svc, &[("cookie", &old), ("x-start", "new")]).await;
    assert_eq!((backend(&rotated), decision(&rotated)), ("pod-b", Some(Decision::Pinned)));
    let new = jsessionid(&rotated);
    let res = send(&svc, &[("x-default", "pod-c"), ("cookie", &new)]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-b", Some(Decision::Pinned)));
}

#[tokio::test]
async fn scopes_never_share_sessions() {
    let store = MemoryStore::new(1000);
    let one = cookie_layer(store.clone()).layer(balancer());
    let two = LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), store, KEY)
        .unwrap()
        .scope("default/shop/1")
        .layer(balancer());
    let first = send(&one, &[("x-default", "pod-b"), ("x-start", "s")]).await;
    let cookie = jsessionid(&first);
    let res = send(&two, &[("x-default", "pod-c"), ("cookie", &cookie)]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-c", None));
}

#[tokio::test]
async fn a_rejected_pin_keeps_its_mapping() {
    let svc = cookie_layer(MemoryStore::new(1000)).layer(balancer());
    let first = send(&svc, &[("x-default", "pod-b"), ("x-start", "s")]).await;
    let cookie = jsessionid(&first);
    let res = send(&svc, &[("cookie", &cookie), ("x-reject", "1")]).await;
    assert_eq!(res.status(), 503);
    assert_eq!(decision(&res), Some(Decision::Rejected));
    let res = send(&svc, &[("x-default", "pod-c"), ("cookie", &cookie)]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-b", Some(Decision::Pinned)));
}

#[tokio::test]
async fn idle_and_absolute_expiry_follow_the_clock() {
    let start = SystemTime::now();
    let offset = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset = offset.clone();
        move || start + Duration::from_secs(offset.load(Ordering::Relaxed))
    };
    let at = |secs| offset.store(secs, Ordering::Relaxed);
    let svc = cookie_layer(MemoryStore::new(1000))
        .idle_timeout(Duration::from_secs(10))
        .absolute_timeout(Duration::from_secs(60))
        .clock(clock)
        .layer(balancer());

    at(0);
    let used = jsessionid(&send(&svc, &[("x-default", "pod-b"), ("x-start", "used")]).await);
    let idle = jsessionid(&send(&svc, &[("x-default", "pod-c"), ("x-start", "idle")]).await);
    // Used every 9 s: never idle for 10 s, but over 60 s after it was learned.
    for t in (9..60).step_by(9) {
        at(t);
        let res = send(&svc, &[("cookie", &used)]).await;
        assert_eq!((backend(&res), decision(&res)), ("pod-b", Some(Decision::Pinned)), "at {t}s");
    }
    at(60);
    let res = send(&svc, &[("cookie", &used)]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-a", None), "absolute timeout");
    // Not used since 0 s: idle for 10 s long ago.
    let res = send(&svc, &[("cookie", &idle)]).await;
    assert_eq!((backend(&res), decision(&res)), ("pod-a", None), "idle timeout");

    // Just under the idle timeout, it holds.
    at(100);
    let fresh = jsessionid(&send(&svc, &[("x-default", "pod-c"), ("x-start", "fresh")]).await);
    at(109);
    let res = send(&svc, &[("cookie", &fresh)]).await;
    assert_eq!(backend(&res), "pod-c");
}

#[tokio::test]
async fn the_store_never_sees_an_identifier() {
    let recording = Recording { inner: Some(MemoryStore::new(100)), ..Recording::default() };
    let seen = recording.seen.clone();
    let layer = cookie_layer(recording).learn_requests(true);
    let svc = layer.clone().layer(balancer());
    const SECRET: &str = "s3cr3t-app-session-0123456789abcdef";
    let cookie = format!("JSESSIONID={SECRET}");
    send(&svc, &[("cookie", &cookie)]).await;
    send(&svc, &[("cookie", &cookie)]).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "lookup, insert, lookup");
    for (key, value) in seen.iter() {
        assert_eq!(key.scope(), "default/shop/0");
        let text = format!("{key:?} {} {}", key.hex(), String::from_utf8_lossy(value));
        assert!(!text.contains(SECRET) && !text.contains("s3cr3t"), "{text}");
        assert!(value.is_empty() || value == b"pod-a");
    }
    // Hashes of the same identifier agree; the layer's Debug shows no key material either.
    assert_eq!(seen[0].0, seen[1].0);
    assert!(!format!("{layer:?}").contains(SECRET));
}

#[tokio::test]
async fn an_unavailable_store_balances_as_unknown() {
    let svc = cookie_layer(Down).learn_requests(true).layer(balancer());
    for pod in ["pod-a", "pod-b"] {
        let res = send(&svc, &[("x-default", pod), ("cookie", "JSESSIONID=abc")]).await;
        assert_eq!(res.status(), 200);
        assert_eq!((backend(&res), decision(&res)), (pod, None));
        // Learning from a response fails too, quietly: the response is served.
        let res = send(&svc, &[("x-default", pod), ("x-start", "s")]).await;
        assert_eq!(res.status(), 200);
        assert_eq!(decision(&res), Some(Decision::New));
    }
}

/// The crate's balancer beneath: an endpoint removed while it has learned sessions.
#[tokio::test]
async fn failover_re_maps_the_identifier() {
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        endpoints.insert(
            pod.to_owned(),
            service_fn(move |req: Request<()>| async move {
                let mut res = Response::new(pod);
                if !req.headers().contains_key("cookie") {
                    let cookie = format!("JSESSIONID={pod}-session; Path=/");
                    res.headers_mut().insert("set-cookie", cookie.parse().unwrap());
                }
                Ok::<_, Infallible>(res)
            }),
        );
    }
    let balancer = BalancerBuilder::new().group(1, discover).build();
    while balancer.len() < 3 {
        tokio::task::yield_now().await;
    }
    let svc =
        LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), MemoryStore::new(100), KEY)
            .unwrap()
            .layer(balancer.clone());
    let call = |cookie: Option<String>| {
        let svc = svc.clone();
        async move {
            let mut req = Request::builder();
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            svc.oneshot(req.body(()).unwrap()).await.unwrap()
        }
    };
    let first = call(None).await;
    let pod = *first.body();
    let cookie = format!("JSESSIONID={pod}-session");
    for _ in 0..10 {
        let res = call(Some(cookie.clone())).await;
        assert_eq!(
            (*res.body(), res.extensions().get::<Decision>()),
            (pod, Some(&Decision::Pinned))
        );
    }
    endpoints.remove(pod.to_owned());
    while balancer.len() > 2 {
        tokio::task::yield_now().await;
    }
    let moved = call(Some(cookie.clone())).await;
    assert_ne!(*moved.body(), pod);
    assert_eq!(moved.extensions().get::<Decision>(), Some(&Decision::Repinned));
    for _ in 0..10 {
        let res = call(Some(cookie.clone())).await;
        assert_eq!(*res.body(), *moved.body(), "re-mapped to the endpoint that took over");
        assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
    }
}

/// A Redis store whose server does not answer (a listener that accepts and stays silent), or
/// is not there: each request waits at most about the store's timeout, and is served.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_silent_or_absent_redis_costs_at_most_its_timeout() {
    use tower_session_persistence::store::RedisStore;

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for addr in [silent_addr, closed] {
        let store = RedisStore::new(&format!("redis://{addr}/0"))
            .unwrap()
            .timeout(Duration::from_millis(50));
        let svc = cookie_layer(store).learn_requests(true).layer(balancer());
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let res = send(&svc, &[("x-default", "pod-c"), ("cookie", "JSESSIONID=abc")]).await;
            let waited = started.elapsed();
            assert_eq!(
                (res.status().as_u16(), backend(&res), decision(&res)),
                (200, "pod-c", None)
            );
            // 50 ms for the lookup; a loaded machine gets generous slack, a hang would not pass.
            assert!(waited < Duration::from_secs(2), "{addr}: waited {waited:?}");
        }
    }
}

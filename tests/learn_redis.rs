//! Learned sessions in a real Redis: Debian's `redis-server`, started by the tests on a free
//! loopback port (`--save '' --appendonly no`), and two gateway processes sharing it.
//!
//! `.ci/run` installs `redis-server` and runs the tests with the `redis` feature. Elsewhere,
//! when `redis-server` is missing or the feature is off, each test says so on stderr and
//! passes without testing (`cargo test` must work on a fresh machine); under CI (`CI` set) it
//! fails instead.

mod gateway_process;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the tests can run here; otherwise says why, visibly, or fails under CI.
fn available(test: &str) -> Option<PathBuf> {
    let missing = |why: &str| {
        assert!(std::env::var_os("CI").is_none(), "{test}: {why}; CI must have it (.ci/run)");
        // Straight to stderr, past the test harness's capture, so that it shows.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        None
    };
    if !cfg!(feature = "redis") {
        return missing("built without the `redis` feature (cargo test --features redis)");
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("redis-server")).find(|p| p.is_file())
    });
    match found {
        Some(path) => Some(path),
        None => missing("redis-server is not installed (apt-get install redis-server)"),
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` on a loopback port; killed when dropped.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl RedisServer {
    fn start(binary: PathBuf) -> Self {
        let mut server = Self { binary, port: free_port(), child: None };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, on the same port, empty), and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + gateway_process::PATIENCE;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Without the `redis` feature there is nothing to run: said visibly, and a failure under CI.
#[cfg(not(feature = "redis"))]
#[test]
fn learned_sessions_in_redis() {
    assert!(available("learned_sessions_in_redis").is_none());
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use http::{Request, Response};
    use redis::AsyncCommands;
    use tower::{Layer, ServiceExt, service_fn};
    use tower_session_persistence::learn::{Identifier, LearnLayer};
    use tower_session_persistence::store::{Lifetime, RedisStore, SessionStore, StoreKey};
    use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy};

    use super::*;

    async fn connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(server.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    #[tokio::test]
    async fn keys_are_scoped_hashes_and_redis_expires_them() {
        let Some(binary) = available("keys_are_scoped_hashes_and_redis_expires_them") else {
            return;
        };
        let server = RedisServer::start(binary);
        let store = RedisStore::new(&server.url()).unwrap();
        let mut redis = connection(&server).await;

        // Through the layer: an application session learned from a response.
        const SECRET: &str = "Zm9vYmFy-very-secret-session-id";
        let app = service_fn(|mut req: Request<()>| async move {
            let pod = PinnedEndpoint::<String>::take(req.extensions_mut())
                .map_or("pod-b".to_owned(), |p| p.0);
            let mut res = Response::new(pod.clone());
            if req.headers().get("cookie").is_none() {
                let cookie = format!("JSESSIONID={SECRET}; Path=/");
                res.headers_mut().insert("set-cookie", cookie.parse().unwrap());
            }
            ServedBy(pod).insert(res.extensions_mut());
            Ok::<_, Infallible>(res)
        });
        let svc =
            LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), store.clone(), [4u8; 32])
                .unwrap()
                .scope("default/shop/0")
                .idle_timeout(Duration::from_secs(600))
                .absolute_timeout(Duration::from_secs(3600))
                .layer(app);
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::New));
        let req =
            Request::builder().header("cookie", format!("JSESSIONID={SECRET}")).body(()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));

        // A dump of Redis shows the scope, a hash, the time and the endpoint; no identifier.
        let keys: Vec<String> = redis.keys("*").await.unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let key = &keys[0];
        let hash = key.strip_prefix("tsp:learn:default/shop/0:").expect("prefix and scope");
        assert!(hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        let value: Vec<u8> = redis.get(key).await.unwrap();
        assert!(value.ends_with(b"pod-b"));
        for text in [key.as_bytes(), &value] {
            let text = String::from_utf8_lossy(text);
            assert!(!text.contains(SECRET) && !text.contains("very-secret"), "{text}");
        }
        // The TTL is Redis's own: the idle timeout.
        let ttl: i64 = redis.pttl(key).await.unwrap();
        assert!((590_000..=600_000).contains(&ttl), "{ttl}");

        // Idle expiry by Redis, refreshed by lookups; absolute expiry from the first store.
        let k = StoreKey::new("s", [1; 16]);
        let idle = Lifetime { idle: Some(Duration::from_millis(600)), absolute: None };
        let now = std::time::SystemTime::now;
        store.insert(&k, b"pod-a", idle, now()).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(store.lookup(&k, idle, now()).await.unwrap().is_some(), "refreshed by use");
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        let exists: bool = redis.exists(store.redis_key(&k)).await.unwrap();
        assert!(!exists, "Redis expired it after 600 ms idle");

        let both = Lifetime {
            idle: Some(Duration::from_secs(60)),
            absolute: Some(Duration::from_secs(3600)),
        };
        store.insert(&k, b"pod-a", both, now()).await.unwrap();
        let later = now() + Duration::from_secs(3599);
        assert!(store.lookup(&k, both, later).await.unwrap().is_some());
        let ttl: i64 = redis.pttl(store.redis_key(&k)).await.unwrap();
        assert!(ttl <= 1_000, "the TTL is capped by what is left of the absolute timeout: {ttl}");
        let over = now() + Duration::from_secs(3600);
        assert!(store.lookup(&k, both, over).await.unwrap().is_none());
        let exists: bool = redis.exists(store.redis_key(&k)).await.unwrap();
        assert!(!exists, "deleted once over");
    }

    /// A backend that starts an application session on `/login` (`JSESSIONID=<name>-<n>`).
    async fn backend(name: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let app = service_fn(move |req: Request<Body>| {
            let sessions = sessions.clone();
            async move {
                let mut res = Response::builder().header("x-backend", name);
                if req.uri().path() == "/login" && !req.headers().contains_key("cookie") {
                    let n = sessions.fetch_add(1, Ordering::Relaxed);
                    res = res
                        .header("set-cookie", format!("JSESSIONID={name}-{n}; Path=/; HttpOnly"));
                }
                Ok::<_, Infallible>(res.body(Body::from(name)).unwrap())
            }
        });
        tokio::spawn(async move {
            axum::serve(listener, axum::Router::new().fallback_service(app)).await.unwrap()
        });
        addr
    }

    fn config(redis: &str, backends: &[SocketAddr]) -> String {
        let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            r#"keys: ["c2Vzc2lvbi1wZXJzaXN0ZW5jZS1leGFtcGxlLWtleS0zMmI="]
store: {{redis: {{url: "{redis}", timeout: 300ms}}}}
services:
  - name: app
    endpoints: [{endpoints}]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: shop}}
    spec:
      rules:
        - backendRefs: [{{name: app, port: 80}}]
          sessionPersistence: {{cookie: {{name: JSESSIONID}}, idleTimeout: 30m}}
          x-session-persistence: {{strategy: learn}}
"#,
            endpoints = endpoints.join(", ")
        )
    }

    /// One request; its status, backend and how long it took.
    async fn get(
        client: &reqwest::Client,
        url: &str,
        cookie: Option<&str>,
    ) -> (u16, String, Duration) {
        let started = Instant::now();
        let mut req = client.get(url);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let backend =
            res.headers().get("x-backend").map_or("-", |v| v.to_str().unwrap()).to_owned();
        (status, backend, started.elapsed())
    }

    /// Logs in through `url`; the session cookie and the backend that set it.
    async fn login(client: &reqwest::Client, url: &str) -> (String, String) {
        let res = client.get(format!("{url}/login")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let backend = res.headers()["x-backend"].to_str().unwrap().to_owned();
        let set = res.headers()["set-cookie"].to_str().unwrap();
        (set.split(';').next().unwrap().to_owned(), backend)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_share_sessions_and_survive_a_redis_restart() {
        let Some(binary) = available("two_gateways_share_sessions_and_survive_a_redis_restart")
        else {
            return;
        };
        let mut server = RedisServer::start(binary);
        let backends = [backend("b1").await, backend("b2").await, backend("b3").await];
        let file = config(&server.url(), &backends);
        let one = gateway_process::start_gateway(&file).await;
        let two = gateway_process::start_gateway(&file).await;
        let client = reqwest::Client::new();

        // Learned through one, honoured by both.
        let mut sessions = Vec::new();
        for i in 0..9 {
            let through = if i % 2 == 0 { &one.url } else { &two.url };
            sessions.push(login(&client, through).await);
        }
        for (cookie, owner) in &sessions {
            for url in [&one.url, &two.url, &one.url, &two.url] {
                let (status, backend, _) = get(&client, url, Some(cookie)).await;
                assert_eq!((status, backend.as_str()), (200, owner.as_str()), "{cookie}");
            }
        }

        // Redis dies: every request is served, balanced, within the timeout's reach.
        server.kill();
        let mut seen = std::collections::HashSet::new();
        for round in 0..8 {
            for (cookie, _) in &sessions {
                let url = if round % 2 == 0 { &one.url } else { &two.url };
                let (status, backend, took) = get(&client, url, Some(cookie)).await;
                assert_eq!(status, 200, "never an error while Redis is down");
                assert!(took < Duration::from_secs(2), "bounded wait, took {took:?}");
                seen.insert(backend);
            }
            let res = client.get(format!("{}/login", one.url)).send().await.unwrap();
            assert_eq!(res.status(), 200, "new sessions are served too");
        }
        assert!(seen.len() > 1, "sessions are balanced meanwhile: {seen:?}");

        // Redis returns (empty): learning resumes, across both gateways.
        server.restart();
        let deadline = Instant::now() + gateway_process::PATIENCE;
        loop {
            let (cookie, owner) = login(&client, &one.url).await;
            let mut honoured = true;
            for _ in 0..3 {
                let (_, backend, _) = get(&client, &two.url, Some(&cookie)).await;
                honoured &= backend == owner;
            }
            if honoured {
                break;
            }
            assert!(Instant::now() < deadline, "learning did not resume");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..6 {
            let (first, second) = if i % 2 == 0 { (&one, &two) } else { (&two, &one) };
            let (cookie, owner) = login(&client, &first.url).await;
            for _ in 0..4 {
                let (status, backend, _) = get(&client, &second.url, Some(&cookie)).await;
                assert_eq!((status, backend.as_str()), (200, owner.as_str()));
            }
        }

        // Each gateway said so, at most once per 10 s of outage (a loaded machine may stretch
        // it past one period), and never printed a session identifier.
        for gateway in [&one, &two] {
            let log = gateway.stderr.lock().unwrap().clone();
            let warnings = log.matches("session store unavailable").count();
            assert!((1..=3).contains(&warnings), "{warnings} warnings:\n{log}");
            assert!(log.contains("session store reachable again"), "{log}");
            assert!(!log.contains("JSESSIONID=b"), "{log}");
        }
    }
}

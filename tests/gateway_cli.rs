//! Drives the `gateway` example binary as its users do: real hyper backends on loopback, a
//! YAML file, `--config FILE --listen 127.0.0.1:0`, the `listening on` line on stdout, and a
//! real HTTP client with a cookie jar.
//!
//! The binary is `<target>/<profile>/examples/gateway`, next to this test's `deps/` folder.
//! `cargo test` builds it; with a target filter (`cargo test --test gateway_cli`) cargo does
//! not, so the first test runs `cargo build --example gateway` itself, which also keeps the
//! binary from being stale.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

mod gateway_process;
use gateway_process::{TempFile, rewrite, run_gateway, spawn_gateway, start_gateway};

// ----- Backends. -----

/// A backend that answers with its name (body and `x-backend`), and echoes what it received
/// in `x-seen-*` headers. At `.../own-cookie` it also sets a cookie of its own; at
/// `.../cacheable` it allows caching.
struct Backend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Stops the backend for good: its listener and every connection are closed when this
    /// returns, so the next connection attempt is refused.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

async fn backend(name: &'static str) -> Backend {
    serve_backend(name, true).await
}

/// A backend that closes each connection after one response, so that the gateway never holds
/// an idle connection to it: once it is stopped, the gateway's next attempt is refused.
async fn closing_backend(name: &'static str) -> Backend {
    serve_backend(name, false).await
}

async fn serve_backend(name: &'static str, keep_alive: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it closes every connection too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(answer(name, req))
            });
            connections.spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(keep_alive);
                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Backend { addr, task }
}

fn answer(name: &'static str, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.headers().get("upgrade").is_some_and(|p| p == "echo") {
        // Switch to a protocol that echoes every byte back.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .header("x-backend", name)
            .header(
                "x-seen-cookie",
                req.headers().get("cookie").cloned().unwrap_or(HeaderValue::from_static("")),
            )
            .body(Full::default())
            .unwrap();
    }
    let req = &req;
    let seen = |header: &str| {
        req.headers()
            .get_all(header)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut res = Response::builder()
        .header("x-backend", name)
        .header("x-seen-cookie", seen("cookie"))
        .header("x-seen-host", seen("host"))
        .header("x-seen-xff", seen("x-forwarded-for"))
        .header("x-seen-xfp", seen("x-forwarded-proto"))
        .header("x-seen-xfh", seen("x-forwarded-host"))
        .header("x-seen-hop", seen("x-hop"))
        .header("x-seen-path", req.uri().to_string());
    if req.uri().path().ends_with("/own-cookie") {
        res = res.header("set-cookie", "backend-own=v1; Path=/; HttpOnly");
    }
    if req.uri().path().ends_with("/cacheable") {
        res = res.header("cache-control", "max-age=60");
    }
    res.body(Full::new(Bytes::from(name.to_owned()))).unwrap()
}

/// An address where nothing listens, and where nothing else can start to while the returned
/// socket lives: it is bound and never listens, so connections to it are refused. (A listener
/// bound and dropped would free the port for any other test to take.)
fn dead_address() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// How many lines of the gateway's log contain `needle` so far.
fn log_lines(gw: &gateway_process::Gateway, needle: &str) -> usize {
    gw.stderr.lock().unwrap().lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the gateway's log has more than `before` lines containing `needle`: the
/// evidence that it acted on something (a reload, say). Bounded by `PATIENCE`.
async fn wait_for_log(gw: &gateway_process::Gateway, needle: &str, before: usize) {
    let deadline = tokio::time::Instant::now() + gateway_process::PATIENCE;
    while log_lines(gw, needle) <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new `{needle}` in the log:\n{}",
            gw.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- Clients and configs. -----

fn jar_client() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

/// No cookie store: every request is a new client as far as sessions go.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).send().await.unwrap_or_else(|err| panic!("GET {url}: {err}"))
}

fn served_by(res: &reqwest::Response) -> String {
    res.headers()["x-backend"].to_str().unwrap().to_owned()
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn set_cookies(res: &reqwest::Response) -> Vec<String> {
    res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

fn route(name: &str, extra_spec: &str, rules: &str) -> String {
    format!(
        "  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: {name}}}
    spec:
{extra_spec}      rules:
{rules}"
    )
}

// ----- Tests. -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jar_sticks_to_one_backend_and_new_clients_spread() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let config = format!(
        "keys: [\"{key}\"]
services:
  - name: echo
    endpoints: [\"{}\", \"{}\", \"{}\"]
routes:
{}",
        backends[0].addr,
        backends[1].addr,
        backends[2].addr,
        route(
            "shop",
            "",
            "        - backendRefs: [{name: echo, port: 80}]
          sessionPersistence: {cookie: {name: sticky}}
"
        ),
        key = "A".repeat(44),
    );
    let gw = start_gateway(&config).await;

    let jar = jar_client();
    let first = served_by(&get(&jar, &gw.url).await);
    for _ in 0..49 {
        assert_eq!(served_by(&get(&jar, &format!("{}/cart", gw.url)).await), first);
    }

    let fresh = fresh_client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        *counts.entry(served_by(&get(&fresh, &gw.url).await)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_stripped_and_other_cookies_survive_byte_exact() {
    let backends = [backend("a").await, backend("b").await];
    let config = format!(
        "services:
  - {{name: echo, endpoints: [\"{}\", \"{}\"]}}
routes:
{}",
        backends[0].addr,
        backends[1].addr,
        route(
            "shop",
            "",
            "        - backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: sticky}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let client = fresh_client();

    let first = get(&client, &gw.url).await;
    let pinned = served_by(&first);
    let ours = set_cookies(&first)
        .into_iter()
        .find(|c| c.starts_with("sticky="))
        .expect("a new session sets the cookie");
    let pair = ours.split(';').next().unwrap().to_owned();
    assert!(ours.contains("HttpOnly") && ours.contains("Secure"), "GEP defaults: {ours}");

    for _ in 0..5 {
        let res = client
            .get(&gw.url)
            .header("cookie", format!("theme=dark%20blue; {pair}; z=\"q\""))
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&res), pinned);
        assert_eq!(header(&res, "x-seen-cookie"), "theme=dark%20blue; z=\"q\"");
        assert!(set_cookies(&res).is_empty(), "an unchanged session sets nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_session_persistence_leaves_headers_alone() {
    let b = backend("a").await;
    let config = format!(
        "services:
  - {{name: echo, endpoints: [\"{}\"]}}
routes:
{}",
        b.addr,
        route(
            "shop",
            "",
            "        - matches: [{path: {type: PathPrefix, value: /plain}}]
          backendRefs: [{name: echo}]
        - matches: [{path: {type: PathPrefix, value: /sticky}}]
          backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: sticky}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let client = fresh_client();

    let res = get(&client, &format!("{}/plain", gw.url)).await;
    assert_eq!(res.status(), 200);
    assert!(set_cookies(&res).is_empty());
    let res = get(&client, &format!("{}/plain/own-cookie", gw.url)).await;
    assert_eq!(set_cookies(&res), ["backend-own=v1; Path=/; HttpOnly"]);
    let res = client
        .get(format!("{}/plain", gw.url))
        .header("cookie", "sticky=whatever; a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "x-seen-cookie"), "sticky=whatever; a=1");

    // The rule with persistence adds its own cookie next to the backend's, which is kept.
    let res = get(&client, &format!("{}/sticky/own-cookie", gw.url)).await;
    let cookies = set_cookies(&res);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"backend-own=v1; Path=/; HttpOnly".to_owned()), "{cookies:?}");
    assert!(cookies.iter().any(|c| c.starts_with("sticky=")), "{cookies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_new_sessions_and_weight_zero_gets_none() {
    let (v1, v2, v3) = (backend("v1").await, backend("v2").await, backend("v3").await);
    let config = format!(
        "services:
  - {{name: echo-v1, endpoints: [\"{}\"]}}
  - {{name: echo-v2, endpoints: [\"{}\"]}}
  - {{name: echo-v3, endpoints: [\"{}\"]}}
routes:
{}",
        v1.addr,
        v2.addr,
        v3.addr,
        route(
            "split",
            "",
            "        - backendRefs:
            - {name: echo-v1, port: 80, weight: 70}
            - {name: echo-v2, port: 80, weight: 30}
            - {name: echo-v3, port: 80, weight: 0}
          sessionPersistence: {cookie: {name: split}}
"
        ),
    );
    let gw = start_gateway(&config).await;

    let fresh = fresh_client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        *counts.entry(served_by(&get(&fresh, &gw.url).await)).or_default() += 1;
    }
    let share = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert!((650..=750).contains(&share("v1")), "{counts:?}");
    assert!((250..=350).contains(&share("v2")), "{counts:?}");
    assert_eq!(share("v3"), 0, "{counts:?}");

    // A client pinned to the weight-30 service stays there.
    let mut pinned = None;
    for _ in 0..50 {
        let jar = jar_client();
        if served_by(&get(&jar, &gw.url).await) == "v2" {
            pinned = Some(jar);
            break;
        }
    }
    let jar = pinned.expect("some new session lands on v2");
    for _ in 0..20 {
        assert_eq!(served_by(&get(&jar, &gw.url).await), "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_gateway_api_shapes_and_the_header_type_work() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let config = format!(
        "services:
  - {{name: echo, endpoints: [\"{}\", \"{}\", \"{}\"]}}
routes:
{}",
        backends[0].addr,
        backends[1].addr,
        backends[2].addr,
        route(
            "shapes",
            "",
            "        - matches: [{path: {value: /v16}}]
          backendRefs: [{name: echo}]
          sessionPersistence:
            sessionName: Session-A
            type: Cookie
            absoluteTimeout: 10s
            cookieConfig: {lifetimeType: Permanent}
        - matches: [{path: {type: PathPrefix, value: /main}}]
          backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: main-session, path: /main}}
        - matches: [{path: {type: PathPrefix, value: /header}}]
          backendRefs: [{name: echo}]
          sessionPersistence: {type: Header, header: {name: x-session}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let fresh = fresh_client();

    let res = get(&fresh, &format!("{}/v16", gw.url)).await;
    let cookie = set_cookies(&res).pop().expect("a session cookie");
    assert!(cookie.starts_with("Session-A="), "{cookie}");
    assert!(cookie.contains("Max-Age=10"), "{cookie}");

    let res = get(&fresh, &format!("{}/main/x", gw.url)).await;
    let cookie = set_cookies(&res).pop().expect("a session cookie");
    assert!(cookie.starts_with("main-session="), "{cookie}");
    assert!(cookie.contains("Path=/main"), "{cookie}");
    assert!(!cookie.contains("Max-Age"), "a session cookie by default: {cookie}");

    let jar = jar_client();
    let first = served_by(&get(&jar, &format!("{}/main/x", gw.url)).await);
    for _ in 0..10 {
        assert_eq!(served_by(&get(&jar, &format!("{}/main/y", gw.url)).await), first);
    }

    let res = get(&fresh, &format!("{}/header", gw.url)).await;
    let pinned = served_by(&res);
    let token = header(&res, "x-session");
    assert!(!token.is_empty(), "the header session is in the response");
    for _ in 0..10 {
        let res = fresh
            .get(format!("{}/header", gw.url))
            .header("x-session", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&res), pinned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_block_reaches_the_library() {
    let b = backend("a").await;
    let config = format!(
        "services:
  - {{name: echo, endpoints: [\"{}\"]}}
routes:
{}",
        b.addr,
        route(
            "ext",
            "",
            "        - matches: [{path: {value: /attrs}}]
          backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: attrs}}
          x-session-persistence:
            secure: false
            sameSite: Lax
            attributes: [Priority=High]
            nocache: true
        - matches: [{path: {value: /prefix}}]
          backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: backend-own}}
          x-session-persistence: {strategy: prefix}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let client = fresh_client();

    let res = get(&client, &format!("{}/attrs/cacheable", gw.url)).await;
    let cookie = set_cookies(&res).pop().expect("a session cookie");
    assert!(cookie.starts_with("attrs="), "{cookie}");
    assert!(cookie.contains("SameSite=Lax") && cookie.contains("Priority=High"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    let cache_control: Vec<_> = res.headers().get_all("cache-control").iter().collect();
    assert!(cache_control.iter().any(|v| v.to_str().unwrap().contains("private")), "{res:?}");

    // prefix: the backend's own cookie carries the session, `<token>~<its value>`.
    let res = get(&client, &format!("{}/prefix/own-cookie", gw.url)).await;
    let cookie = set_cookies(&res).pop().expect("the backend's cookie");
    let (pair, attributes) = cookie.split_once(';').unwrap();
    assert!(pair.starts_with("backend-own=") && pair.ends_with("~v1"), "{cookie}");
    assert_eq!(attributes, " Path=/; HttpOnly", "the backend's attributes are kept");
    let res = client.get(format!("{}/prefix", gw.url)).header("cookie", pair).send().await.unwrap();
    assert_eq!(header(&res, "x-seen-cookie"), "backend-own=v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_stopped_backend_fail_over_or_get_503_and_affinity_holds() {
    let (x, y) = (closing_backend("x").await, closing_backend("y").await);
    let config = format!(
        "services:
  - {{name: pair, endpoints: [\"{}\", \"{}\"]}}
routes:
{}",
        x.addr,
        y.addr,
        route(
            "failover",
            "",
            "        - matches: [{path: {value: /rebalance}}]
          backendRefs: [{name: pair}]
          sessionPersistence: {cookie: {name: s1}}
          x-balancer: {replay: true}
        - matches: [{path: {value: /reject}}]
          backendRefs: [{name: pair}]
          sessionPersistence: {cookie: {name: s2}}
          x-session-persistence: {onUnavailable: reject}
        - matches: [{path: {value: /affinity}}]
          backendRefs: [{name: pair}]
          x-balancer: {affinity: {header: x-user}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let url = |path: &str| format!("{}{path}", gw.url);

    // Affinity (no sessions on this rule): one user, one backend; users spread.
    let fresh = fresh_client();
    let mut users: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let res = fresh.get(url("/affinity")).header("x-user", format!("user-{user}"));
            let served = served_by(&res.send().await.unwrap());
            let first = users.entry(format!("user-{user}")).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "round {round}, user-{user}");
        }
    }
    let on_x = users.values().filter(|b| *b == "x").count();
    assert!((1..20).contains(&on_x), "users spread over both backends: {users:?}");

    // One client pinned on each rule, both to the same backend.
    let rebalancing = jar_client();
    let victim = served_by(&get(&rebalancing, &url("/rebalance")).await);
    let mut rejecting = None;
    for _ in 0..64 {
        let jar = jar_client();
        if served_by(&get(&jar, &url("/reject")).await) == victim {
            rejecting = Some(jar);
            break;
        }
    }
    let rejecting = rejecting.expect("a session on the same backend");

    let (stopped, survivor) = if victim == "x" { (x, y) } else { (y, x) };
    stopped.stop().await;

    // Rebalance + replay: the client sees no error, and its session moves to the survivor.
    let res = get(&rebalancing, &url("/rebalance")).await;
    assert_eq!(res.status(), 200);
    let moved = served_by(&res);
    assert_ne!(moved, victim);
    assert!(set_cookies(&res).iter().any(|c| c.starts_with("s1=")), "re-pinned");
    for _ in 0..5 {
        assert_eq!(served_by(&get(&rebalancing, &url("/rebalance")).await), moved);
    }

    // Reject: the session's endpoint is gone, 503.
    let res = get(&rejecting, &url("/reject")).await;
    assert_eq!(res.status(), 503);
    assert!(set_cookies(&res).is_empty());
    drop(survivor);
}

/// Sends an HTTP/1.1 upgrade request for the `echo` protocol on a raw connection; returns the
/// response head and the connection.
async fn upgrade(gateway_url: &str, cookie: Option<&str>) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gateway_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n{cookie}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the gateway closed the connection: {received:?}");
        received.push(byte[0]);
    }
    (String::from_utf8(received).unwrap(), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_pinned_and_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (x, y) = (backend("x").await, backend("y").await);
    let config = format!(
        "services:
  - {{name: pair, endpoints: [\"{}\", \"{}\"]}}
routes:
{}",
        x.addr,
        y.addr,
        route(
            "ws",
            "",
            "        - backendRefs: [{name: pair}]
          sessionPersistence: {cookie: {name: ws}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let lines = |head: &str, name: &str| -> Vec<String> {
        head.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_owned())
            .collect()
    };

    let (head, _) = upgrade(&gw.url, None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let pinned = lines(&head, "x-backend").pop().unwrap();
    let session = lines(&head, "set-cookie").pop().expect("the 101 carries the session");
    let pair = session.split(';').next().unwrap().to_owned();

    for _ in 0..5 {
        let (head, mut stream) = upgrade(&gw.url, Some(&format!("{pair}; app=1"))).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(lines(&head, "x-backend").concat(), pinned, "{head}");
        assert_eq!(lines(&head, "x-seen-cookie"), ["app=1"], "{head}");
        assert_eq!(lines(&head, "upgrade"), ["echo"], "{head}");
        stream.write_all(b"ping through the tunnel").await.unwrap();
        let mut echoed = [0u8; 23];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping through the tunnel");
    }
}

#[test]
fn config_errors_exit_1_and_name_the_yaml_path() {
    const SERVICES: &str = "services:\n  - {name: echo, endpoints: [\"127.0.0.1:9\"]}\n";
    let rule = |body: &str| {
        format!("{SERVICES}routes:\n{}", route("shop", "", &format!("        - {body}\n")))
    };
    let cases = [
        (
            rule("{backendRefs: [{name: echo}], sessionPersistence: {absoluteTimeout: 1d}}"),
            "routes[0].spec.rules[0].sessionPersistence.absoluteTimeout: ",
            "GEP-2257",
        ),
        (
            rule("{backendRefs: [{name: echo-v9}]}"),
            "routes[0].spec.rules[0].backendRefs[0].name: ",
            "echo-v9",
        ),
        (
            rule("{backendRefs: [{name: echo, wieght: 3}]}"),
            "routes[0].spec.rules[0].backendRefs[0].wieght: ",
            "unknown field",
        ),
        (format!("keys: [\"c2hvcnQ=\"]\n{SERVICES}"), "keys[0]: ", "32 bytes"),
        (format!("keys: [\"not base64!\"]\n{SERVICES}"), "keys[0]: ", "base64"),
        (
            "services:\n  - {name: echo, endpoints: [\"localhost:80\"]}\n".to_owned(),
            "services[0].endpoints[0]: ",
            "IP:port",
        ),
        ("services:\n  - {name: echo, endpoints: []}\n".to_owned(), "services[0].endpoints: ", ""),
        (
            format!("{SERVICES}  - {{name: echo, endpoints: [\"127.0.0.1:10\"]}}\n"),
            "services[1].name: ",
            "duplicate",
        ),
        (
            rule(
                "{matches: [{path: {type: RegularExpression, value: /a}}], \
                 backendRefs: [{name: echo}]}",
            ),
            "routes[0].spec.rules[0].matches[0].path.type: ",
            "",
        ),
        (
            rule("{matches: [{path: {value: cart}}], backendRefs: [{name: echo}]}"),
            "routes[0].spec.rules[0].matches[0].path.value: ",
            "/",
        ),
        (
            rule(
                "{backendRefs: [{name: echo}], \
                 sessionPersistence: {cookie: {lifetimeType: Permanent}}}",
            ),
            "routes[0].spec.rules[0].sessionPersistence.absoluteTimeout: ",
            "Permanent",
        ),
        (
            rule(
                "{backendRefs: [{name: echo}], sessionPersistence: {cookie: {}}, \
                 x-session-persistence: {sameSite: Sometimes}}",
            ),
            "routes[0].spec.rules[0].x-session-persistence.sameSite: ",
            "",
        ),
        (
            rule("{backendRefs: [{name: echo}]}").replace("kind: HTTPRoute", "kind: TLSRoute"),
            "routes[0].kind: ",
            "HTTPRoute or GRPCRoute",
        ),
        (format!("{SERVICES}timeout: soon\n"), "timeout: ", "GEP-2257"),
    ];
    for (yaml, path, words) in cases {
        let file = TempFile::new(&yaml);
        let (status, _, stderr) = run_gateway(&["--config", file.0.to_str().unwrap()]);
        assert_eq!(status.code(), Some(1), "{yaml}\nstderr: {stderr}");
        let expected = format!("config error: {path}");
        assert!(stderr.starts_with(&expected), "{yaml}\nexpected {expected:?}, got: {stderr}");
        assert!(stderr.contains(words), "{yaml}\nexpected {words:?} in: {stderr}");
    }

    let file = TempFile::new(&rule("{backendRefs: [{name: echo}]}"));
    let (status, stdout, _) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(0));
    assert!(stdout.starts_with("config ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_idle_timeout_ends_an_unused_session() {
    let a = backend("a").await;
    let config = format!(
        "services:\n  - {{name: echo, endpoints: [\"{}\"]}}\nroutes:\n{}",
        a.addr,
        route(
            "shop",
            "",
            "        - backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: sticky}}
          x-session-persistence: {idleTimeout: 2s}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let jar = jar_client();
    let first = get(&jar, &gw.url).await;
    assert!(set_cookies(&first).iter().any(|c| c.starts_with("sticky=")), "a session starts");
    get(&jar, &gw.url).await;
    gw.wait_log("session=pinned").await;
    // Unused for longer than the idle timeout: the token it carries is over.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let later = get(&jar, &gw.url).await;
    assert!(set_cookies(&later).iter().any(|c| c.starts_with("sticky=")), "a new session");
    gw.wait_log("session=expired").await;
}

#[test]
fn check_warns_of_the_legacy_idle_timeout_in_the_main_shape_and_not_of_ours() {
    const SERVICES: &str = "services:\n  - {name: echo, endpoints: [\"127.0.0.1:9\"]}\n";
    let file = |rule: &str| {
        TempFile::new(&format!(
            "{SERVICES}routes:\n{}",
            route("shop", "", &format!("        - backendRefs: [{{name: echo}}]\n{rule}"))
        ))
    };
    let legacy = file("          sessionPersistence: {cookie: {name: s}, idleTimeout: 5m}\n");
    let (status, stdout, stderr) =
        run_gateway(&["--config", legacy.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("config ok: 1 rule(s), 1 warning(s)"), "{stdout}");
    let warning = lines.next().unwrap_or_default();
    assert!(
        warning.starts_with("warning: routes[0].spec.rules[0].sessionPersistence.idleTimeout: "),
        "{stdout}"
    );
    assert!(warning.contains("x-session-persistence.idleTimeout"), "{stdout}");
    // The log says it too, naming the field.
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains("routes[0].spec.rules[0].sessionPersistence.idleTimeout"), "{stderr}");

    let ours = file(
        "          sessionPersistence: {cookie: {name: s}}\n          \
         x-session-persistence: {idleTimeout: 5m}\n",
    );
    let (status, stdout, stderr) = run_gateway(&["--config", ours.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "config ok: 1 rule(s)");
    assert!(!stderr.contains("WARN"), "{stderr}");

    let both = file(
        "          sessionPersistence: {cookie: {name: s}, idleTimeout: 5m}\n          \
         x-session-persistence: {idleTimeout: 5m}\n",
    );
    let (status, _, stderr) = run_gateway(&["--config", both.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.starts_with(
            "config error: routes[0].spec.rules[0].x-session-persistence.idleTimeout: "
        ),
        "{stderr}"
    );
}

#[test]
fn the_documented_configuration_is_valid() {
    let source = include_str!("../examples/gateway.rs");
    let docs: String = source
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
        .collect();
    let yaml = docs
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("the docs show a YAML configuration");
    let key = "A".repeat(44);
    let yaml = yaml.replace("<base64 of 32+ bytes>", &key).replace("<older key>", &key);
    // The documented Secret, with a certificate made here.
    let made = rcgen::generate_simple_self_signed(vec!["www.shop.example".to_owned()]).unwrap();
    let b64 = |text: String| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    let yaml = yaml
        .replace("<base64 of the certificate PEM>", &b64(made.cert.pem()))
        .replace("<base64 of the key PEM>", &b64(made.signing_key.serialize_pem()));
    let file = TempFile::new(&yaml);
    let (status, stdout, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(0), "{yaml}\n{stderr}");
    assert_eq!(stdout.trim(), "config ok: 1 rule(s)");
}

/// The README's per-strategy configurations stay valid.
#[test]
fn the_example_configurations_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/configs exists") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        // A Redis store needs the gateway built with the `redis` feature.
        if !cfg!(feature = "redis") && path.ends_with("learn-redis.yaml") {
            continue;
        }
        let (status, stdout, stderr) =
            run_gateway(&["--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(status.code(), Some(0), "{}: {stderr}", path.display());
        assert!(stdout.trim().starts_with("config ok: "), "{}: {stdout}", path.display());
        checked += 1;
    }
    assert!(checked >= 7, "one configuration per strategy, found {checked}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let (status, _, stderr) = run_gateway(&["--frobnicate"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--frobnicate") && stderr.contains("USAGE"), "{stderr}");
    let (status, _, _) = run_gateway(&["--listen"]);
    assert_eq!(status.code(), Some(2));
    let (status, stdout, _) = run_gateway(&["--help"]);
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("--config FILE") && stdout.contains("--listen ADDR"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_counts_visits_while_the_session_sticks() {
    let gw = spawn_gateway(&[], None).await;
    let jar = jar_client();
    let mut backend = None;
    for visit in 1..=5 {
        let text = get(&jar, &gw.url).await.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = body["backend"].as_str().unwrap().to_owned();
        assert!(["demo-1", "demo-2", "demo-3"].contains(&name.as_str()), "{body}");
        assert_eq!(*backend.get_or_insert_with(|| name.clone()), name, "{body}");
        assert_eq!(body["visits"], visit, "{body}");
        assert_eq!(body["path"], "/", "{body}");
        let seen = body["cookies_seen"].as_str().unwrap();
        assert!(!seen.contains("demo-session"), "the gateway's cookie is stripped: {body}");
        if visit > 1 {
            assert!(seen.contains("demo-visitor="), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_answer_502_504_and_404() {
    let (dead, _bound) = dead_address();
    // Accepts connections (the kernel does) but never answers.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "timeout: 300ms
services:
  - {{name: dead, endpoints: [\"{dead}\"]}}
  - {{name: stalled, endpoints: [\"{}\"]}}
routes:
{}",
        stalled.local_addr().unwrap(),
        route(
            "broken",
            "      hostnames: [\"broken.example\"]\n",
            "        - matches: [{path: {value: /dead}}]
          backendRefs: [{name: dead}]
          sessionPersistence: {cookie: {}}
        - matches: [{path: {value: /stalled}}]
          backendRefs: [{name: stalled}]
"
        ),
    );
    let gw = start_gateway(&config).await;
    let client = fresh_client();
    let send = |path: &str, host: &str| {
        client.get(format!("{}{path}", gw.url)).header("host", host).send()
    };

    let res = send("/dead", "broken.example").await.unwrap();
    assert_eq!(res.status(), 502);
    assert!(set_cookies(&res).is_empty(), "no session for a failed request");
    assert!(res.text().await.unwrap().starts_with("502 "));

    let res = send("/stalled", "broken.example").await.unwrap();
    assert_eq!(res.status(), 504);

    let res = send("/dead", "other.example").await.unwrap();
    assert_eq!(res.status(), 404);
    let res = send("/elsewhere", "broken.example").await.unwrap();
    assert_eq!(res.status(), 404);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_header_is_kept_and_forwarded_headers_are_set() {
    let b = backend("a").await;
    let config = format!(
        "services:
  - {{name: echo, endpoints: [\"{}\"]}}
routes:
{}",
        b.addr,
        route(
            "shop",
            "      hostnames: [\"shop.example\"]\n",
            "        - backendRefs: [{name: echo}]
          sessionPersistence: {cookie: {name: sticky}}
"
        ),
    );
    let gw = start_gateway(&config).await;
    let res = fresh_client()
        .get(format!("{}/cart/items?id=7&x=%20", gw.url))
        .header("host", "Shop.Example:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-seen-host"), "Shop.Example:8443");
    assert_eq!(header(&res, "x-seen-xfh"), "Shop.Example:8443");
    // An untrusted client's own claim is replaced (`trustedProxies` is empty by default).
    assert_eq!(header(&res, "x-seen-xff"), "127.0.0.1");
    assert_eq!(header(&res, "x-seen-xfp"), "http");
    assert_eq!(header(&res, "x-seen-path"), "/cart/items?id=7&x=%20");
    assert_eq!(header(&res, "x-seen-hop"), "", "headers named by Connection are hop-by-hop");
}

/// Live changes: the configuration file is rewritten while the gateway runs (and `SIGHUP`
/// forces a re-read); endpoints are added, drained and removed without a restart, and no
/// session whose endpoint can still take it moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_change_live_without_moving_sessions() {
    let backends = [backend("a").await, backend("b").await, backend("c").await, backend("d").await];
    let config = |endpoints: &str| {
        format!(
            "keys: [\"{key}\"]
services:
  - name: echo
    endpoints: [{endpoints}]
routes:
{}",
            route(
                "shop",
                "",
                "        - backendRefs: [{name: echo, port: 80}]
          sessionPersistence: {cookie: {name: sticky}}
"
            ),
            key = "A".repeat(44),
        )
    };
    let [a, b, c, d] = &backends;
    let (a, b, c, d) = (a.addr, b.addr, c.addr, d.addr);
    let file = TempFile::new(&config(&format!("\"{a}\", \"{b}\", \"{c}\"")));
    let gw = spawn_gateway(&["--config", file.0.to_str().unwrap()], None).await;

    // 30 sessions spread over a, b and c.
    let mut sessions = Vec::new();
    for _ in 0..30 {
        let jar = jar_client();
        let on = served_by(&get(&jar, &gw.url).await);
        sessions.push((jar, on));
    }
    let stays = |sessions: &[(reqwest::Client, String)]| {
        let sessions: Vec<_> = sessions.iter().map(|(j, on)| (j.clone(), on.clone())).collect();
        let url = gw.url.clone();
        async move {
            for (jar, on) in &sessions {
                let res = get(jar, &url).await;
                assert_eq!(&served_by(&res), on, "a session moved");
                assert!(set_cookies(&res).iter().all(|c| !c.starts_with("sticky=")), "re-issued");
            }
        }
    };

    // Scale up to d and drain a (a's ids are the default `<service>/<address>` keys).
    const RELOADED: &str = "configuration reloaded";
    let reloads = log_lines(&gw, RELOADED);
    rewrite(
        &file.0,
        &config(&format!("{{address: \"{a}\", draining: true}}, \"{b}\", \"{c}\", \"{d}\"")),
    );
    wait_for_log(&gw, RELOADED, reloads).await;
    let fresh = fresh_client();
    let mut reached_d = false;
    for _ in 0..300 {
        if served_by(&get(&fresh, &gw.url).await) == "d" {
            reached_d = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reached_d, "the new endpoint never took a session");
    stays(&sessions).await;
    for _ in 0..60 {
        assert_ne!(served_by(&get(&fresh, &gw.url).await), "a", "a drains: no new sessions");
    }

    // Remove a, and force the re-read with SIGHUP: only a's sessions move, once.
    let reloads = log_lines(&gw, RELOADED);
    rewrite(&file.0, &config(&format!("\"{b}\", \"{c}\", \"{d}\"")));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&gw, RELOADED, reloads).await;
    let on_a: Vec<_> = sessions.iter().filter(|(_, on)| on == "a").cloned().collect();
    let others: Vec<_> = sessions.iter().filter(|(_, on)| on != "a").cloned().collect();
    let mut moved_from_a = Vec::new();
    for (jar, _) in &on_a {
        let mut moved = None;
        for _ in 0..300 {
            let res = get(jar, &gw.url).await;
            if served_by(&res) != "a" {
                moved = Some(res);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let moved = moved.expect("a's session never moved");
        assert!(set_cookies(&moved).iter().any(|c| c.starts_with("sticky=")), "re-pinned");
        let now_on = served_by(&moved);
        assert_eq!(served_by(&get(jar, &gw.url).await), now_on);
        moved_from_a.push((jar.clone(), now_on));
    }
    stays(&others).await;

    // A broken file changes nothing: once the gateway has read it (and said so), every
    // session stays where it was.
    const REFUSED: &str = "configuration not reloaded";
    let refusals = log_lines(&gw, REFUSED);
    rewrite(&file.0, "services: [{name: echo, endpoints: []}]\n");
    wait_for_log(&gw, REFUSED, refusals).await;
    stays(&others).await;
    stays(&moved_from_a).await;
}

/// One access-log line per request with the session decision and the endpoint; never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_the_decision() {
    let backends = [backend("a").await, closing_backend("b").await];
    let config = format!(
        "keys: [\"{key}\"]
services:
  - name: echo
    endpoints: [{{address: \"{}\", id: pod-a}}, {{address: \"{}\", id: pod-b}}]
routes:
{}",
        backends[0].addr,
        backends[1].addr,
        route(
            "shop",
            "",
            "        - backendRefs: [{name: echo, port: 80}]
          sessionPersistence: {cookie: {name: sticky}}
          x-session-persistence: {onUnavailable: reject}
          x-balancer: {ejectFor: 60s}
"
        ),
        key = "A".repeat(44),
    );
    let gw = start_gateway(&config).await;
    let lines = |gw: &gateway_process::Gateway| {
        gw.stderr
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(" access: "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // A client on b, then b stops: its next request is rejected.
    // Fresh clients are balanced over a and b: 100 of them all on a is one chance in 2^100.
    let mut on_b = None;
    for _ in 0..100 {
        let jar = jar_client();
        let res = get(&jar, &format!("{}/cart;v=1?q=secret", gw.url)).await;
        if served_by(&res) == "b" {
            let cookie = set_cookies(&res).into_iter().find(|c| c.starts_with("sticky=")).unwrap();
            let token = cookie["sticky=".len()..].split(';').next().unwrap().to_owned();
            on_b = Some((jar, token));
            break;
        }
    }
    let (jar, token) = on_b.expect("no fresh client reached b");
    assert!(set_cookies(&get(&jar, &gw.url).await).is_empty(), "pinned: nothing re-issued");
    let [_, b] = backends;
    b.stop().await;
    let mut rejected = false;
    for _ in 0..50 {
        if get(&jar, &gw.url).await.status() == 503 {
            rejected = true;
            break;
        }
    }
    assert!(rejected, "reject mode answers 503 once b is gone");
    // Lines are written as responses go out; wait for them to reach the pipe.
    let mut log = Vec::new();
    for _ in 0..200 {
        log = lines(&gw);
        if log.iter().any(|l| l.contains("session=rejected")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        log.iter().any(|l| l.contains("session=new") && l.contains("endpoint=pod-b")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("session=pinned") && l.contains("endpoint=pod-b")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("\" 503 ") && l.contains("session=rejected")),
        "{log:#?}"
    );
    assert!(log.iter().all(|l| l.contains("rule=default/shop/0")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("\"GET /cart HTTP/1.1\" 200")), "{log:#?}");
    let all = gw.stderr.lock().unwrap().clone();
    assert!(
        !all.contains("secret") && !all.contains("v=1"),
        "query and path parameters are not logged"
    );
    assert!(token.len() > 20 && !all.contains(&token), "the session token reached the log");
}

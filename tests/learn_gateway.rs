//! The gateway binary with `strategy: learn` and the in-process store, as a user runs it; and
//! its configuration errors, each naming the YAML field at fault.

mod gateway_process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use gateway_process::{TempFile, rewrite, run_gateway, spawn_gateway, start_gateway};
use http::{Request, Response};
use tower::service_fn;

const KEYS: &str = "keys: [\"c2Vzc2lvbi1wZXJzaXN0ZW5jZS1leGFtcGxlLWtleS0zMmI=\"]\n";

/// A backend: `/login` without a cookie starts `JSESSIONID=<name>-<n>`, `/mcp` without the
/// header starts `Mcp-Session-Id: <name>-<n>`; it echoes the `Cookie` it got.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(AtomicUsize::new(0));
    let app = service_fn(move |req: Request<Body>| {
        let sessions = sessions.clone();
        async move {
            let mut res = Response::builder().header("x-backend", name);
            if let Some(cookie) = req.headers().get("cookie") {
                res = res.header("x-seen-cookie", cookie);
            }
            let path = req.uri().path();
            if path == "/login" && !req.headers().contains_key("cookie") {
                let n = sessions.fetch_add(1, Ordering::Relaxed);
                res = res.header("set-cookie", format!("JSESSIONID={name}-{n}; Path=/; HttpOnly"));
            }
            if path == "/mcp" && !req.headers().contains_key("mcp-session-id") {
                let n = sessions.fetch_add(1, Ordering::Relaxed);
                res = res.header("mcp-session-id", format!("{name}-{n}"));
            }
            Ok::<_, Infallible>(res.body(Body::from(name)).unwrap())
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback_service(app)).await.unwrap()
    });
    addr
}

fn route(name: &str, rule: &str) -> String {
    format!(
        "  - apiVersion: gateway.networking.k8s.io/v1\n    kind: HTTPRoute\n    metadata: {{name: {name}}}\n    spec:\n      rules:\n        - {rule}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_learns_the_applications_cookie_and_header() {
    let addrs = [backend("b1").await, backend("b2").await, backend("b3").await];
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let yaml = format!(
        "{KEYS}store: {{memory: {{maxEntries: 1000}}}}\nservices:\n  - {{name: app, endpoints: [{}]}}\nroutes:\n{}{}",
        endpoints.join(", "),
        route(
            "mcp",
            "{matches: [{path: {type: PathPrefix, value: /mcp}}], backendRefs: [{name: app}], \
             sessionPersistence: {type: Header, header: {name: Mcp-Session-Id}}, \
             x-session-persistence: {strategy: learn}}"
        ),
        route(
            "shop",
            "{backendRefs: [{name: app}], sessionPersistence: {cookie: {name: JSESSIONID}}, \
             x-session-persistence: {strategy: learn, learn: {cookie: JSESSIONID}}}"
        ),
    );
    let gw = start_gateway(&yaml).await;
    let client = reqwest::Client::new();
    let mut owners = std::collections::HashSet::new();
    for _ in 0..6 {
        let res = client.get(format!("{}/login", gw.url)).send().await.unwrap();
        let owner = res.headers()["x-backend"].to_str().unwrap().to_owned();
        // The application's Set-Cookie reaches the client as it was sent, alone.
        let set: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert_eq!(set.len(), 1, "{set:?}");
        let set = set[0].to_str().unwrap();
        assert!(
            set.starts_with(&format!("JSESSIONID={owner}-")) && set.ends_with("; Path=/; HttpOnly")
        );
        let pair = set.split(';').next().unwrap().to_owned();
        for _ in 0..8 {
            let cookie = format!("theme=dark; {pair}");
            let res =
                client.get(format!("{}/", gw.url)).header("cookie", &cookie).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["x-backend"], owner.as_str());
            assert_eq!(res.headers()["x-seen-cookie"], cookie.as_str(), "untouched");
            assert!(res.headers().get("set-cookie").is_none());
        }
        owners.insert(owner);
    }
    assert!(owners.len() > 1, "new sessions are balanced: {owners:?}");

    let res = client.get(format!("{}/mcp", gw.url)).send().await.unwrap();
    let owner = res.headers()["x-backend"].to_str().unwrap().to_owned();
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    for _ in 0..8 {
        let res = client
            .get(format!("{}/mcp", gw.url))
            .header("mcp-session-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-backend"], owner.as_str());
    }
    // The access log says what happened, and never shows an identifier.
    let log = gw.stderr.lock().unwrap().clone();
    assert!(log.contains("session=new") && log.contains("session=pinned"), "{log}");
    assert!(!log.contains(&id) && !log.contains("JSESSIONID=b"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_store_block_resizes_the_memory_store_and_keeps_its_sessions() {
    let addrs = [backend("b1").await, backend("b2").await, backend("b3").await];
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let config = |store: &str| {
        format!(
            "{KEYS}store: {store}\nservices:\n  - {{name: app, endpoints: [{}]}}\nroutes:\n{}",
            endpoints.join(", "),
            route(
                "shop",
                "{backendRefs: [{name: app}], sessionPersistence: {cookie: {name: JSESSIONID}}, \
                 x-session-persistence: {strategy: learn}}"
            ),
        )
    };
    let file = TempFile::new(&config("{memory: {maxEntries: 1000}}"));
    let path = file.0.clone();
    let gw = spawn_gateway(&["--config", path.to_str().unwrap()], Some(file)).await;
    let client = reqwest::Client::new();
    let res = client.get(format!("{}/login", gw.url)).send().await.unwrap();
    let owner = res.headers()["x-backend"].to_str().unwrap().to_owned();
    let set = res.headers()["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap().to_owned();
    let served = || async {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let res =
                client.get(format!("{}/", gw.url)).header("cookie", &pair).send().await.unwrap();
            seen.push(res.headers()["x-backend"].to_str().unwrap().to_owned());
        }
        seen
    };
    assert!(served().await.iter().all(|b| *b == owner));

    rewrite(&path, &config("{memory: {maxEntries: 2000, maxBytes: 1000000}}"));
    gw.wait_log("store.memory limits reloaded").await;
    assert!(served().await.iter().all(|b| *b == owner), "the learned session was kept");

    // Another store would start empty: it waits for a restart, and the running one serves on.
    #[cfg(feature = "redis")]
    {
        rewrite(&path, &config("{redis: {url: \"redis://127.0.0.1:9/0\"}}"));
        gw.wait_log("a store change needs a restart").await;
        assert!(served().await.iter().all(|b| *b == owner), "the running store still answers");
    }
}

#[test]
fn learn_configuration_errors_name_the_field() {
    const SERVICES: &str = "services:\n  - {name: echo, endpoints: [\"127.0.0.1:9\"]}\nroutes:\n";
    let rule = |body: &str| format!("{KEYS}{SERVICES}{}", route("shop", body));
    let cookie = "backendRefs: [{name: echo}], sessionPersistence: {cookie: {name: JSESSIONID}}";
    let ext = "routes[0].spec.rules[0].x-session-persistence";
    let redis_url = if cfg!(feature = "redis") { "store.redis.url: " } else { "store.redis: " };
    let cases = [
        (
            rule(&format!(
                "{{{cookie}, x-session-persistence: {{strategy: learn, codec: plain}}}}"
            )),
            format!("{ext}.codec: "),
            "learn",
        ),
        (
            rule(&format!(
                "{{{cookie}, x-session-persistence: {{strategy: learn, learn: {{cookie: a, header: b}}}}}}"
            )),
            format!("{ext}.learn: "),
            "one of",
        ),
        (
            rule(&format!("{{{cookie}, x-session-persistence: {{learn: {{cookie: a}}}}}}")),
            format!("{ext}.learn: "),
            "strategy learn",
        ),
        (
            rule(
                "{backendRefs: [{name: echo}], sessionPersistence: {cookie: {}}, x-session-persistence: {strategy: learn}}",
            ),
            format!("{ext}.learn: "),
            "name",
        ),
        (
            rule(&format!(
                "{{{cookie}, x-session-persistence: {{strategy: learn, learn: {{header: \"bad name\"}}}}}}"
            )),
            format!("{ext}.learn.header: "),
            "header name",
        ),
        (
            rule(&format!(
                "{{{cookie}, x-session-persistence: {{strategy: learn, learn: {{cookie: \"a;b\"}}}}}}"
            )),
            format!("{ext}.learn.cookie: "),
            "cookie name",
        ),
        (
            rule(&format!(
                "{{{cookie}, x-session-persistence: {{strategy: learn, learn: {{frmRequests: true}}}}}}"
            )),
            format!("{ext}.learn.frmRequests: "),
            "unknown field",
        ),
        (
            format!("{KEYS}store: {{memory: {{maxEntries: 0}}}}\n"),
            "store.memory.maxEntries: ".to_owned(),
            "at least 1",
        ),
        (format!("{KEYS}store: {{}}\n"), "store: ".to_owned(), "one of"),
        (
            format!("{KEYS}store: {{memory: {{}}, redis: {{url: \"redis://127.0.0.1:1/0\"}}}}\n"),
            "store: ".to_owned(),
            "not both",
        ),
        (
            format!("{KEYS}store: {{redis: {{url: \"http://example.com\"}}}}\n"),
            redis_url.to_owned(),
            "",
        ),
        (format!("{KEYS}store: {{disk: {{}}}}\n"), "store.disk: ".to_owned(), "unknown field"),
    ];
    let mut all = cases.to_vec();
    if cfg!(feature = "redis") {
        all.push((
            "store: {redis: {url: \"redis://127.0.0.1:1/0\"}}\n".to_owned(),
            "store.redis: ".to_owned(),
            "keys",
        ));
        all.push((
            format!("{KEYS}store: {{redis: {{url: \"redis://127.0.0.1:1/0\", timeout: soon}}}}\n"),
            "store.redis.timeout: ".to_owned(),
            "GEP-2257",
        ));
    }
    for (yaml, path, words) in all {
        let file = TempFile::new(&yaml);
        let (status, _, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
        assert_eq!(status.code(), Some(1), "{yaml}\nstderr: {stderr}");
        let expected = format!("config error: {path}");
        assert!(stderr.starts_with(&expected), "{yaml}\nexpected {expected:?}, got: {stderr}");
        assert!(stderr.contains(words), "{yaml}\nexpected {words:?} in: {stderr}");
    }
}

//! The gateway's admin port: after a known sequence of requests, `/metrics` shows exactly the
//! expected counts (session decisions from the library's `metrics` feature, requests per rule
//! and code, endpoint states), and never a token or a client address; `/healthz` and
//! `/readyz` answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

mod gateway_process;
use gateway_process::{TempFile, run_gateway, start_lines};

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The samples of a Prometheus text page: `name{sorted labels}` → value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    let mut all = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        all.insert(key, value.parse().expect("a number"));
    }
    all
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let echo = backend().await;
    let config = format!(
        "keys: ['MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=']
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
services: [{{name: echo, endpoints: ['{echo}']}}]
routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    hostnames: [shop.example]
    rules:
    - backendRefs: [{{name: echo}}]
      sessionPersistence: {{cookie: {{name: s}}}}
"
    );
    let gateway = start_lines(&config, 2).await;
    let (url, admin) = (&gateway.urls[0], &gateway.urls[1]);
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    let client = reqwest::Client::new();
    let get = |cookie: Option<&str>| {
        let mut req = client.get(format!("{url}/cart")).header("host", "shop.example");
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie.to_owned());
        }
        req.send()
    };

    // One new session, two pinned requests, one invalid token, one request with no route.
    let first = get(None).await.unwrap();
    let set = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let token = cookie.split_once('=').unwrap().1.to_owned();
    for _ in 0..2 {
        let res = get(Some(&cookie)).await.unwrap();
        assert!(res.headers().get("set-cookie").is_none());
    }
    let forged = get(Some("s=forged-token")).await.unwrap();
    assert!(forged.headers().get("set-cookie").is_some());
    let nowhere = client.get(format!("{url}/")).header("host", "other.example").send().await;
    assert_eq!(nowhere.unwrap().status(), 404);

    let page = client.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = page.text().await.unwrap();
    let all = samples(&text);
    let endpoint = format!("echo/{echo}");
    let decision = |d: &str| {
        let key = format!(
            "session_persistence_decisions_total{{decision=\"{d}\",endpoint=\"{endpoint}\",scope=\"default/shop/0\"}}"
        );
        all.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(decision("new"), 1.0, "{text}");
    assert_eq!(decision("pinned"), 2.0, "{text}");
    assert_eq!(decision("invalid"), 1.0, "{text}");
    assert_eq!(decision("re-pinned") + decision("expired") + decision("rejected"), 0.0, "{text}");
    let requests = |route: &str, code: &str| {
        all.get(&format!("gateway_requests_total{{code=\"{code}\",route=\"{route}\"}}")).copied()
    };
    assert_eq!(requests("default/shop/0", "200"), Some(4.0), "{text}");
    assert_eq!(requests("-", "404"), Some(1.0), "{text}");
    assert_eq!(
        all.get("gateway_request_duration_seconds_count{route=\"default/shop/0\"}").copied(),
        Some(4.0),
        "{text}"
    );
    let endpoint_labels = format!("endpoint=\"{endpoint}\",service=\"echo\"");
    assert_eq!(all.get(&format!("gateway_endpoint_up{{{endpoint_labels}}}")), Some(&1.0), "{text}");
    assert_eq!(
        all.get(&format!("gateway_endpoint_state{{{endpoint_labels},state=\"serving\"}}")),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(all.get(&format!("gateway_endpoint_in_flight{{{endpoint_labels}}}")), Some(&0.0));
    // Neither the token nor the client's address is a label.
    assert!(!text.contains(&token) && !text.contains("forged-token"), "{text}");
    let client_ip_labels = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("127.0.0.1") && !l.contains(&endpoint));
    assert_eq!(client_ip_labels.count(), 0, "{text}");

    let health = client.get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready: 1 of 1 endpoint(s) up\n");
    // The admin port is not a traffic port, and the traffic port has no admin pages.
    let on_traffic = client.get(format!("{url}/metrics")).header("host", "other.example").send();
    assert_eq!(on_traffic.await.unwrap().status(), 404);
}

#[tokio::test]
async fn without_an_admin_block_there_is_no_admin_port() {
    let echo = backend().await;
    let config = format!(
        "listen: 127.0.0.1:0
services: [{{name: echo, endpoints: ['{echo}']}}]
routes:
- {{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {{name: a}}, spec: {{rules: [{{backendRefs: [{{name: echo}}]}}]}}}}
"
    );
    let gateway = start_lines(&config, 1).await;
    assert!(gateway.urls[0].starts_with("http://"));
    let file =
        TempFile::new(&config.replace("listen: 127.0.0.1:0\n", "admin: {listen: 'localhost:1'}\n"));
    let (status, _, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
    assert!(!status.success());
    assert!(stderr.contains("config error: admin.listen: "), "{stderr}");
}

//! Active health checks through the gateway binary: an endpoint whose checks fail loses its
//! sessions and takes no new ones within `interval × fall`; it takes new sessions again after
//! `rise` good checks, and the sessions that moved stay where they went.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

mod gateway_process;
use gateway_process::{TempFile, spawn_gateway, start_gateway};

/// A backend named `name` whose `/healthz` answers 200 while `healthy`, else 503; every other
/// path answers its name.
async fn backend(name: &'static str, healthy: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let ok = healthy.load(Ordering::SeqCst);
                    async move {
                        let res = if req.uri().path() == "/healthz" {
                            let status =
                                if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            Response::builder().status(status).body(Full::new(Bytes::new()))
                        } else {
                            Response::builder()
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from(name)))
                        };
                        Ok::<_, Infallible>(res.unwrap())
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn served_by(res: &reqwest::Response) -> String {
    res.headers()["x-backend"].to_str().unwrap().to_owned()
}

fn cookies(res: &reqwest::Response) -> usize {
    res.headers().get_all("set-cookie").iter().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_loses_its_sessions_and_comes_back_after_rise_checks() {
    let (a_ok, b_ok) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let a = backend("a", a_ok.clone()).await;
    let b = backend("b", b_ok.clone()).await;
    let gw = start_gateway(&format!(
        "services:
  - name: echo
    endpoints: [{{address: \"{a}\", id: a}}, {{address: \"{b}\", id: b}}]
    healthCheck: {{path: /healthz, interval: 500ms, timeout: 400ms, rise: 2, fall: 2}}
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: shop}}
    spec:
      rules:
        - backendRefs: [{{name: echo}}]
          sessionPersistence: {{cookie: {{name: sticky}}}}
          x-session-persistence: {{secure: false}}
"
    ))
    .await;
    // Sessions on both endpoints.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..40 {
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        match served_by(&res).as_str() {
            "a" => on_a.push(client),
            _ => on_b.push(client),
        }
        if on_a.len() >= 5 && on_b.len() >= 5 {
            break;
        }
    }
    assert!(on_a.len() >= 5 && on_b.len() >= 5, "sessions on both: {} {}", on_a.len(), on_b.len());

    a_ok.store(false, Ordering::SeqCst);
    let failing_from = Instant::now();
    // Within interval × fall (1 s) plus a margin, a's sessions move, each with one new cookie.
    let moved = loop {
        let res = on_a[0].get(format!("{}/", gw.url)).send().await.unwrap();
        if served_by(&res) == "b" {
            assert_eq!(cookies(&res), 1, "the moved session gets exactly one new cookie");
            break failing_from.elapsed();
        }
        assert!(failing_from.elapsed() < Duration::from_secs(6), "a still serves its sessions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for client in &on_a[1..] {
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!(served_by(&res), "b");
        assert_eq!(cookies(&res), 1, "re-pinned once");
        let again = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!((served_by(&again), cookies(&again)), ("b".to_owned(), 0), "then pinned");
    }
    for client in &on_b {
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!((served_by(&res), cookies(&res)), ("b".to_owned(), 0), "b's sessions untouched");
    }
    for _ in 0..20 {
        let res = reqwest::get(format!("{}/", gw.url)).await.unwrap();
        assert_eq!(served_by(&res), "b", "a down endpoint takes no new sessions");
    }

    a_ok.store(true, Ordering::SeqCst);
    let healed_from = Instant::now();
    // After rise (2) good checks, new sessions reach a again.
    loop {
        let res = reqwest::get(format!("{}/", gw.url)).await.unwrap();
        if served_by(&res) == "a" {
            break;
        }
        assert!(healed_from.elapsed() < Duration::from_secs(8), "a never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for client in &on_a {
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!((served_by(&res), cookies(&res)), ("b".to_owned(), 0), "moved sessions stay");
    }
    eprintln!("moved after {moved:?}; back after {:?}", healed_from.elapsed());
}

/// A draining endpoint with a deadline keeps its sessions until the deadline, then loses them
/// (each re-pinned once); new sessions never reach it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_takes_the_endpoint_out_and_its_sessions_re_pin() {
    let a = backend("a", Arc::new(AtomicBool::new(true))).await;
    let b = backend("b", Arc::new(AtomicBool::new(true))).await;
    let config = |a_entry: &str| {
        format!(
            "services:
  - name: echo
    endpoints: [{a_entry}, {{address: \"{b}\", id: b}}]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: shop}}
    spec:
      rules:
        - backendRefs: [{{name: echo}}]
          sessionPersistence: {{cookie: {{name: sticky}}}}
          x-session-persistence: {{secure: false}}
"
        )
    };
    let file = TempFile::new(&config(&format!("{{address: \"{a}\", id: a}}")));
    let path = file.0.clone();
    let gw = spawn_gateway(&["--config", path.to_str().unwrap()], None).await;
    let mut on_a = Vec::new();
    for _ in 0..40 {
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        if served_by(&res) == "a" {
            on_a.push(client);
        }
        if on_a.len() >= 3 {
            break;
        }
    }
    assert!(on_a.len() >= 3);
    let reloaded = gw.stderr.lock().unwrap().matches("configuration reloaded").count();
    let next = path.with_extension("next");
    std::fs::write(
        &next,
        config(&format!("{{address: \"{a}\", id: a, draining: true, drainTimeout: 3s}}")),
    )
    .unwrap();
    std::fs::rename(&next, &path).unwrap();
    let draining_from = Instant::now();
    while gw.stderr.lock().unwrap().matches("configuration reloaded").count() <= reloaded {
        assert!(draining_from.elapsed() < Duration::from_secs(20), "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: its sessions stay, no new ones come.
    for client in &on_a {
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!((served_by(&res), cookies(&res)), ("a".to_owned(), 0));
    }
    for _ in 0..10 {
        assert_eq!(served_by(&reqwest::get(format!("{}/", gw.url)).await.unwrap()), "b");
    }
    // After the deadline, every session of a re-pins once.
    loop {
        let res = on_a[0].get(format!("{}/", gw.url)).send().await.unwrap();
        if served_by(&res) == "b" {
            assert_eq!(cookies(&res), 1);
            break;
        }
        assert!(draining_from.elapsed() < Duration::from_secs(15), "the deadline never took a out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(draining_from.elapsed() >= Duration::from_secs(2), "taken out before its deadline");
    for client in &on_a[1..] {
        let res = client.get(format!("{}/", gw.url)).send().await.unwrap();
        assert_eq!((served_by(&res), cookies(&res)), ("b".to_owned(), 1));
    }
    drop(file);
}

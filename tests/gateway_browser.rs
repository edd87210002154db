//! A real browser keeps a GEP-default session (`Secure; HttpOnly; SameSite=Strict`) through
//! the gateway over HTTPS on a host name that is not a loopback name: headless Chromium
//! (Debian's `chromium`) loads a page from `https://shop.example:PORT` (mapped to 127.0.0.1 by
//! its resolver rules) whose script fetches `/cart` twelve times; every answer must come from
//! the same backend. Browsers keep `Secure` cookies over plain http only on loopback names, so
//! this is the case TLS termination exists for.
//!
//! Chromium missing: the test says SKIPPED (and fails under CI, whose `.ci/run` installs it).
//! The certificate is self-signed and made here; Chromium is told to accept it
//! (`--ignore-certificate-errors`): the page is still an https origin, so its cookies are
//! `Secure` ones.

mod common;
mod gateway_process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const PAGE: &str = r#"<!doctype html><html><body><pre id="out">waiting</pre><script>
(async () => {
  const seen = [];
  for (let i = 0; i < 12; i++) {
    const res = await fetch('/cart');
    seen.push(await res.text());
  }
  document.getElementById('out').textContent = 'seen:' + seen.join(',') + ':end';
})().catch(e => { document.getElementById('out').textContent = 'error:' + e; });
</script></body></html>"#;

/// A backend serving the page and answering `/cart` with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let (kind, body) = if req.uri().path() == "/page" {
                            ("text/html", PAGE.to_owned())
                        } else {
                            ("text/plain", name.to_owned())
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", kind)
                                .header("cache-control", "no-store")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_a_secure_strict_session_over_https_on_a_real_host_name() {
    let Some(chromium) =
        common::external::require("chromium", "--version", "apt-get install chromium")
    else {
        return;
    };
    let mut endpoints = Vec::new();
    for name in ["b1", "b2", "b3"] {
        endpoints.push(format!("'{}'", backend(name).await));
    }
    let made = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let config = format!(
        "keys: ['MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=']
services: [{{name: shop, endpoints: [{endpoints}]}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    addresses: [{{value: 127.0.0.1}}]
    listeners:
    - {{name: https, protocol: HTTPS, port: 0, hostname: shop.example, tls: {{certificateRefs: [{{name: shop}}]}}}}
secrets:
- {{apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {{name: shop}}, data: {{tls.crt: '{crt}', tls.key: '{key}'}}}}
routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    rules:
    - backendRefs: [{{name: shop}}]
      sessionPersistence: {{cookie: {{name: shop-session}}}}
",
        endpoints = endpoints.join(", "),
        crt = b64(made.cert.pem()),
        key = b64(made.signing_key.serialize_pem()),
    );
    let gateway = gateway_process::start_lines(&config, 1).await;
    let port = gateway.port(0);
    let profile = std::env::temp_dir().join(format!("gateway-browser-{}", std::process::id()));
    let url = format!("https://shop.example:{port}/page");
    let program = chromium.name.clone();
    let args = vec![
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-first-run".to_owned(),
        "--ignore-certificate-errors".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        "--host-resolver-rules=MAP shop.example 127.0.0.1".to_owned(),
        "--virtual-time-budget=20000".to_owned(),
        "--dump-dom".to_owned(),
        url,
    ];
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::task::spawn_blocking(move || Command::new(program).args(args).output()),
    )
    .await
    .expect("chromium finished within 120 s")
    .unwrap()
    .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let Some(seen) = dom.split("seen:").nth(1).and_then(|rest| rest.split(":end").next()) else {
        panic!(
            "the page did not finish: {dom}\nchromium stderr: {}\ngateway: {}",
            String::from_utf8_lossy(&output.stderr),
            gateway.stderr.lock().unwrap()
        );
    };
    let seen: Vec<&str> = seen.split(',').collect();
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(
        seen.iter().all(|backend| *backend == seen[0]),
        "the browser's session moved between backends: {seen:?}"
    );
    assert!(["b1", "b2", "b3"].contains(&seen[0]), "{seen:?}");
}

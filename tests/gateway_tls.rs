//! The gateway deployed as Gateway API users write it: `gateways:` listeners, `secrets:` and
//! TLS termination. Certificates are made in each test (rcgen); clients are reqwest (with a
//! cookie jar) and rustls over https to host names that are not loopback names, resolved to
//! 127.0.0.1 by the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

mod gateway_process;
use gateway_process::{PATIENCE, TempFile, run_gateway, start_lines as start};

// ----- Certificates. -----

/// A self-signed certificate for `names`, as PEM, with its key.
struct Cert {
    pem: String,
    key: String,
    der: CertificateDer<'static>,
}

fn cert(names: &[&str]) -> Cert {
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    Cert {
        pem: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
        der: made.cert.der().clone(),
    }
}

fn expired_cert(name: &str) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let made = params.self_signed(&key).unwrap();
    Cert { pem: made.pem(), key: key.serialize_pem(), der: made.der().clone() }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A `secrets:` entry for `cert`, in `data` (base64) form.
fn secret(name: &str, cert: &Cert) -> String {
    format!(
        "- {{apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {{name: {name}}}, \
         data: {{tls.crt: \"{}\", tls.key: \"{}\"}}}}\n",
        b64(&cert.pem),
        b64(&cert.key)
    )
}

// ----- A backend and the gateway. -----

/// A backend answering with its name and the `X-Forwarded-Proto` it got.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .map(|v| v.to_str().unwrap_or("?").to_owned())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-backend", name)
                                .header("x-seen-proto", proto)
                                .body(Full::new(Bytes::from(name)))
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

/// A gateway with an HTTP listener and one HTTPS listener holding both certificates
/// (`shop.example`, `*.api.example`), a session route on the HTTPS hostnames.
fn two_cert_config(echo: SocketAddr, shop: &Cert, api: &Cert) -> String {
    format!(
        "keys: ['{key}']
services: [{{name: echo, endpoints: ['{echo}']}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    addresses: [{{type: IPAddress, value: 127.0.0.1}}]
    listeners:
    - {{name: plain, protocol: HTTP, port: 0}}
    - name: tls
      protocol: HTTPS
      port: 0
      tls: {{mode: Terminate, certificateRefs: [{{kind: Secret, name: shop}}, {{name: api}}]}}
secrets:
{shop_secret}{api_secret}routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    parentRefs: [{{name: edge}}]
    rules:
    - backendRefs: [{{name: echo}}]
      sessionPersistence: {{cookie: {{name: shop-session}}}}
",
        key = b64("0123456789abcdef0123456789abcdef"),
        shop_secret = secret("shop", shop),
        api_secret = secret("api", api),
    )
}

fn client(roots: &[&Cert], resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.der.clone()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_with_alpn(tls, &[b"h2", b"http/1.1"]))
        .cookie_store(true)
        .timeout(PATIENCE);
    for (name, addr) in resolve {
        builder = builder.resolve(name, *addr);
    }
    builder.build().unwrap()
}

fn tls_with_alpn(mut config: rustls::ClientConfig, alpn: &[&[u8]]) -> rustls::ClientConfig {
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A rustls client handshake with `sni`, offering `alpn`, limited to `versions`.
async fn handshake(
    port: u16,
    sni: &str,
    roots: &[&Cert],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.der.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_with_alpn(config, alpn)));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    connector.connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp).await
}

fn peer_cert(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

// ----- Tests. -----

#[tokio::test]
async fn https_keeps_a_secure_session_over_h2_on_a_real_host_name() {
    let echo = backend("one").await;
    let (shop, api) = (cert(&["shop.example"]), cert(&["*.api.example"]));
    let gateway = start(&two_cert_config(echo, &shop, &api), 2).await;
    assert!(gateway.urls[0].starts_with("http://127.0.0.1:"), "{:?}", gateway.urls);
    assert!(gateway.urls[1].starts_with("https://127.0.0.1:"), "{:?}", gateway.urls);
    let https: SocketAddr = ([127, 0, 0, 1], gateway.port(1)).into();
    let client = client(&[&shop, &api], &[("shop.example", https)]);
    let url = format!("https://shop.example:{}/cart", gateway.port(1));

    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.version(), http::Version::HTTP_2, "ALPN h2 to clients");
    assert_eq!(first.headers()["x-seen-proto"], "https", "X-Forwarded-Proto from the TLS listener");
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("shop-session="), "{cookie}");
    assert!(cookie.contains("Secure") && cookie.contains("SameSite=Strict"), "{cookie}");
    // The jar sends the Secure cookie back over https: the session is kept (no new cookie).
    for _ in 0..3 {
        let again = client.get(&url).send().await.unwrap();
        assert_eq!(again.status(), 200);
        assert!(again.headers().get("set-cookie").is_none(), "the session was not kept");
    }
    // The plain listener serves the same route, and says http.
    let plain = reqwest::Client::new();
    let res = plain.get(format!("{}/cart", gateway.urls[0])).send().await.unwrap();
    assert_eq!(res.headers()["x-seen-proto"], "http");
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_alpn_and_versions_hold() {
    let echo = backend("one").await;
    let (shop, api) = (cert(&["shop.example"]), cert(&["*.api.example"]));
    let gateway = start(&two_cert_config(echo, &shop, &api), 2).await;
    let port = gateway.port(1);
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];

    let to_shop =
        handshake(port, "shop.example", &[&shop], &[b"h2", b"http/1.1"], &all).await.unwrap();
    assert_eq!(peer_cert(&to_shop), shop.der, "exact name");
    assert_eq!(to_shop.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let to_api = handshake(port, "v2.api.example", &[&api], &[b"http/1.1"], &all).await.unwrap();
    assert_eq!(peer_cert(&to_api), api.der, "wildcard name");
    assert_eq!(to_api.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // TLS 1.2 only: still served (with an AEAD suite).
    let old =
        handshake(port, "shop.example", &[&shop], &[], &[&rustls::version::TLS12]).await.unwrap();
    assert_eq!(old.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    // A name no certificate has: the listener's first certificate, which the client refuses.
    let other = handshake(port, "other.example", &[&shop, &api], &[], &all).await;
    assert!(other.is_err(), "a certificate for another name must not verify");
}

#[tokio::test]
async fn listener_hostnames_intersect_route_hostnames() {
    let echo = backend("one").await;
    let (shop, api) = (cert(&["shop.example"]), cert(&["*.api.example"]));
    // The route asks for two hosts; its listener (sectionName) serves shop.example only.
    let config = format!(
        "services: [{{name: echo, endpoints: ['{echo}']}}]
listen: 127.0.0.1:0
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    listeners:
    - {{name: shop, protocol: HTTPS, port: 0, hostname: shop.example, tls: {{certificateRefs: [{{name: shop}}]}}}}
secrets:
{}{}routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    parentRefs: [{{name: edge, sectionName: shop}}]
    hostnames: [shop.example, v1.api.example]
    rules: [{{backendRefs: [{{name: echo}}]}}]
",
        secret("shop", &shop),
        secret("api", &api)
    );
    let gateway = start(&config, 1).await;
    let addr: SocketAddr = ([127, 0, 0, 1], gateway.port(0)).into();
    let client = client(&[&shop], &[("shop.example", addr), ("v1.api.example", addr)]);
    let ok = client.get(format!("https://shop.example:{}/", addr.port())).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The listener's hostname is shop.example: its SNI table has no other name.
    let other =
        handshake(addr.port(), "v1.api.example", &[&shop, &api], &[], &[&rustls::version::TLS13])
            .await;
    assert!(other.is_err(), "a host outside the listener's hostname must not be served");
}

#[tokio::test]
async fn editing_the_secret_swaps_the_certificate_without_dropping_connections() {
    let echo = backend("one").await;
    let (old, api) = (cert(&["shop.example"]), cert(&["*.api.example"]));
    let gateway = start(&two_cert_config(echo, &old, &api), 2).await;
    let port = gateway.port(1);
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];

    // An established HTTP/1.1 connection over TLS, kept alive.
    let stream = handshake(port, "shop.example", &[&old], &[b"http/1.1"], &all).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let get =
        || Request::get("/").header("host", "shop.example").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);

    // The Secret is edited (atomically, as a ConfigMap update or an editor would).
    let new = cert(&["shop.example"]);
    let text = two_cert_config(echo, &new, &api);
    let staging = gateway.config.0.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, &gateway.config.0).unwrap();
    gateway.wait_log("certificates reloaded").await;

    let fresh = handshake(port, "shop.example", &[&new], &[], &all).await.unwrap();
    assert_eq!(peer_cert(&fresh), new.der, "new handshakes get the new certificate");
    // The old connection was not dropped: it still serves requests.
    let res = sender.send_request(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "one");

    // A broken Secret in a later edit is refused; the running certificate stays.
    let broken = two_cert_config(echo, &new, &api).replace(&b64(&new.key), &b64("garbage"));
    std::fs::write(&staging, broken).unwrap();
    std::fs::rename(&staging, &gateway.config.0).unwrap();
    gateway.wait_log("configuration not reloaded").await;
    let still = handshake(port, "shop.example", &[&new], &[], &all).await.unwrap();
    assert_eq!(peer_cert(&still), new.der);
}

#[tokio::test]
async fn an_idle_tls_keep_alive_connection_is_closed_within_client_idle() {
    let echo = backend("one").await;
    let (shop, api) = (cert(&["shop.example"]), cert(&["*.api.example"]));
    // clientIdle much shorter than requestHeader: the connection must get the former.
    let config = format!(
        "timeouts: {{requestHeader: 20s, clientIdle: 1s}}\n{}",
        two_cert_config(echo, &shop, &api)
    );
    let gateway = start(&config, 2).await;
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let stream =
        handshake(gateway.port(1), "shop.example", &[&shop], &[b"http/1.1"], &all).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let closed = tokio::spawn(connection);
    let get = Request::get("/").header("host", "shop.example").body(Empty::<Bytes>::new());
    let res = sender.send_request(get.unwrap()).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "one");
    let idle_from = std::time::Instant::now();
    // Well before requestHeader's 20 s.
    let ended = tokio::time::timeout(Duration::from_secs(8), closed).await;
    let open = idle_from.elapsed();
    assert!(ended.is_ok(), "an idle TLS connection still open after {open:?}");
    assert!(open >= Duration::from_millis(800), "closed after {open:?}, before clientIdle");
}

/// `--check` on a config; returns (success, stderr).
fn check(config: &str) -> (bool, String) {
    let file = TempFile::new(config);
    let (status, _, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
    (status.success(), stderr)
}

fn https_config(listener_tls: &str, secrets: &str) -> String {
    format!(
        "services: [{{name: echo, endpoints: ['127.0.0.1:9']}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    listeners:
    - {{name: tls, protocol: HTTPS, port: 8443, tls: {listener_tls}}}
secrets:
{secrets}routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    rules: [{{backendRefs: [{{name: echo}}]}}]
"
    )
}

#[test]
fn every_bad_secret_is_refused_naming_its_yaml_path() {
    let good = cert(&["shop.example"]);
    let other = cert(&["shop.example"]);
    let refs = "{certificateRefs: [{kind: Secret, name: shop}]}";
    let (ok, stderr) = check(&https_config(refs, &secret("shop", &good)));
    assert!(ok, "a good Secret: {stderr}");

    let cases: Vec<(String, String, &str)> = vec![
        (
            https_config("{certificateRefs: [{name: nope}]}", &secret("shop", &good)),
            "gateways[0].spec.listeners[0].tls.certificateRefs[0].name: no Secret named \"default/nope\"".into(),
            "missing Secret",
        ),
        (
            https_config("{certificateRefs: [{kind: ConfigMap, name: shop}]}", &secret("shop", &good)),
            "gateways[0].spec.listeners[0].tls.certificateRefs[0].kind: \"ConfigMap\" is not supported".into(),
            "unknown kind",
        ),
        (
            https_config(refs, &secret("shop", &Cert { key: other.key.clone(), ..cert(&["shop.example"]) })),
            "secrets[0].data.tls.key: is not the key of the certificate in secrets[0].data.tls.crt".into(),
            "key of another certificate",
        ),
        (
            https_config(refs, &secret("shop", &Cert { pem: "garbage".into(), ..cert(&["x.example"]) })),
            "secrets[0].data.tls.crt: holds no PEM CERTIFICATE block".into(),
            "garbage PEM",
        ),
        (
            https_config(refs, &secret("shop", &Cert { key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), ..cert(&["x.example"]) })),
            "secrets[0].data.tls.key: ".into(),
            "a key that is not a key",
        ),
        (
            https_config(refs, "- {apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {name: shop}, data: {tls.crt: '!!!', tls.key: 'AAAA'}}\n"),
            "secrets[0].data.tls.crt: is not base64".into(),
            "not base64",
        ),
        (
            https_config(refs, "- {apiVersion: v1, kind: Secret, type: Opaque, metadata: {name: shop}, stringData: {a: b}}\n"),
            "secrets[0].type: \"Opaque\" is not kubernetes.io/tls".into(),
            "wrong type",
        ),
        (
            https_config(refs, "- {apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {name: shop}, stringData: {tls.key: x}}\n"),
            "secrets[0].data: has no tls.crt".into(),
            "no certificate",
        ),
        (
            https_config("{mode: Passthrough, certificateRefs: [{name: shop}]}", &secret("shop", &good)),
            "gateways[0].spec.listeners[0].tls.mode: \"Passthrough\" is not supported".into(),
            "passthrough",
        ),
    ];
    for (config, expected, case) in cases {
        let (ok, stderr) = check(&config);
        assert!(!ok, "{case}: accepted");
        assert!(stderr.contains(&format!("config error: {expected}")), "{case}: {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }

    // stringData (PEM text) works as well as data.
    let string_data = format!(
        "- apiVersion: v1\n  kind: Secret\n  type: kubernetes.io/tls\n  metadata: {{name: shop}}\n  stringData:\n    tls.crt: |\n{}    tls.key: |\n{}",
        indent(&good.pem),
        indent(&good.key)
    );
    let (ok, stderr) = check(&https_config(refs, &string_data));
    assert!(ok, "stringData: {stderr}");

    // An expired certificate is served (the operator replaces it), with a warning.
    let (ok, stderr) = check(&https_config(refs, &secret("shop", &expired_cert("shop.example"))));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("secrets[0].data.tls.crt has expired"), "{stderr}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

#[test]
fn listeners_and_parent_refs_are_checked() {
    let base = |listeners: &str, parents: &str| {
        format!(
            "services: [{{name: echo, endpoints: ['127.0.0.1:9']}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    listeners: {listeners}
routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    hostnames: [shop.example]
    parentRefs: {parents}
    rules: [{{backendRefs: [{{name: echo}}]}}]
"
        )
    };
    let http = "[{name: web, protocol: HTTP, port: 8080}]";
    assert!(check(&base(http, "[{name: edge}]")).0);
    let cases = [
        (
            base(http, "[{name: other}]"),
            "routes[0].spec.parentRefs[0].name: no Gateway named default/other",
        ),
        (
            base(http, "[{name: edge, sectionName: api}]"),
            "routes[0].spec.parentRefs[0].sectionName: Gateway default/edge has no listener named \"api\"",
        ),
        (base(http, "[{name: edge, port: 9}]"), "routes[0].spec.parentRefs[0].port: "),
        (
            base(
                "[{name: web, protocol: HTTP, port: 8080, hostname: api.example}]",
                "[{name: edge}]",
            ),
            "routes[0].spec.parentRefs: the route attaches to no listener",
        ),
        (
            base("[{name: web, protocol: TCP, port: 8080}]", "[]"),
            "gateways[0].spec.listeners[0].protocol: \"TCP\" is not supported",
        ),
        (
            base(
                "[{name: a, protocol: HTTP, port: 8080}, {name: b, protocol: HTTPS, port: 8080, tls: {certificateRefs: []}}]",
                "[]",
            ),
            "gateways[0].spec.listeners[1].tls.certificateRefs: must name at least one Secret",
        ),
        (
            base("[{name: web, protocol: HTTPS, port: 8443}]", "[]"),
            "gateways[0].spec.listeners[0].tls: an HTTPS listener needs tls",
        ),
        (
            base(
                "[{name: web, protocol: HTTP, port: 80}, {name: web, protocol: HTTP, port: 81}]",
                "[]",
            ),
            "gateways[0].spec.listeners[1].name: another listener",
        ),
    ];
    for (config, expected) in cases {
        let (ok, stderr) = check(&config);
        assert!(!ok, "accepted: {expected}");
        assert!(stderr.contains(&format!("config error: {expected}")), "{expected}: {stderr}");
    }
    // --listen cannot stand for a Gateway's listeners.
    let file = TempFile::new(&base(http, "[]"));
    let (status, _, stderr) =
        run_gateway(&["--config", file.0.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--listen: the file has gateways:"), "{stderr}");
}

#[tokio::test]
async fn an_http_listener_redirects_to_https_with_a_request_redirect_filter() {
    let echo = backend("one").await;
    let shop = cert(&["shop.example"]);
    let config = format!(
        "services: [{{name: echo, endpoints: ['{echo}']}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    addresses: [{{value: 127.0.0.1}}]
    listeners:
    - {{name: http, protocol: HTTP, port: 0, hostname: shop.example}}
    - {{name: https, protocol: HTTPS, port: 0, hostname: shop.example, tls: {{certificateRefs: [{{name: shop}}]}}}}
secrets:
{}routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: to-https}}
  spec:
    parentRefs: [{{name: edge, sectionName: http}}]
    rules:
    - filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, port: 8443, statusCode: 301}}}}]
- apiVersion: gateway.networking.k8s.io/v1
  kind: HTTPRoute
  metadata: {{name: shop}}
  spec:
    parentRefs: [{{name: edge, sectionName: https}}]
    rules:
    - backendRefs: [{{name: echo}}]
      sessionPersistence: {{cookie: {{name: s}}}}
",
        secret("shop", &shop)
    );
    let gateway = start(&config, 2).await;
    let http: SocketAddr = ([127, 0, 0, 1], gateway.port(0)).into();
    let https: SocketAddr = ([127, 0, 0, 1], gateway.port(1)).into();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("shop.example", http)
        .build()
        .unwrap();
    let res =
        plain.get(format!("http://shop.example:{}/cart?item=1", http.port())).send().await.unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "https://shop.example:8443/cart?item=1");
    assert!(res.headers().get("set-cookie").is_none(), "a redirect is no session");
    // Another host on the HTTP listener: no route (the listener serves shop.example).
    let res = plain.get(format!("http://{http}/")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    // The HTTPS listener serves the backend, not the redirect.
    let client = client(&[&shop], &[("shop.example", https)]);
    let res =
        client.get(format!("https://shop.example:{}/cart", https.port())).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-backend"], "one");
}

//! HTTP/2 and gRPC end to end: a gateway-like stack (the layer over the crate's balancer over
//! hyper-util client endpoints) served over h2c, with real clients.
//!
//! * gRPC (Gateway API `GRPCRoute` with `sessionPersistence` of type `Header`): three tonic
//!   backends that answer their own name, upstreams over HTTP/2, and tonic clients. A client
//!   that sends back, in its metadata, the `x-session` it got in a response's initial metadata
//!   keeps reaching one backend, also with many calls in flight on one connection; clients
//!   without it are balanced.
//! * HTTP/2 cookies: an h2 client sends its cookies in several `cookie` fields (RFC 9113
//!   §8.2.3 allows it and h2 keeps them apart); the session is found in any of them and the
//!   backend gets the others untouched.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use bytes::Bytes;
use common::{Upstream, backend, error_response};
use http::{Request, Response, StatusCode, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;
use tower::{BoxError, ServiceBuilder};
use tower_session_persistence::SessionPersistenceLayer;
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;

/// `message HelloRequest { string name = 1; }`, written by hand: no protoc needed.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `message HelloReply { string backend = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    backend: String,
}

const SAY_HELLO: &str = "/test.Greeter/SayHello";

/// Calls from a client named `hold` wait at their backend until the test releases them.
struct Hold {
    arrived: AtomicUsize,
    release: tokio::sync::Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Self { arrived: AtomicUsize::new(0), release: tokio::sync::Semaphore::new(0) }
    }
}

impl Hold {
    /// Waits until `n` held calls have reached their backends.
    async fn arrived(&self, n: usize) {
        while self.arrived.load(Ordering::SeqCst) < n {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// A tonic server whose one unary method answers the backend's name (after holding the call,
/// for a client named `hold`).
async fn grpc_backend(name: &'static str, hold: &Arc<Hold>) -> SocketAddr {
    let hold = hold.clone();
    let greeter = tower::service_fn(move |req: Request<tonic::body::Body>| {
        let hold = hold.clone();
        async move {
            let say_hello = tower::service_fn(move |req: tonic::Request<HelloRequest>| {
                let hold = hold.clone();
                async move {
                    if req.get_ref().name == "hold" {
                        hold.arrived.fetch_add(1, Ordering::SeqCst);
                        hold.release.acquire().await.unwrap().forget();
                    }
                    let reply = HelloReply { backend: name.to_owned() };
                    Ok::<_, tonic::Status>(tonic::Response::new(reply))
                }
            });
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok::<_, Infallible>(grpc.unary(say_hello, req).await)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(greeter, incoming));
    addr
}

/// The layer over the balancer over one upstream per backend, served on loopback for HTTP/1
/// and h2c (prior knowledge) clients alike. `http2` makes the upstreams HTTP/2 too.
async fn gateway(policy: SessionPolicy, backends: &[(String, SocketAddr)], http2: bool) -> String {
    let client = Client::builder(TokioExecutor::new()).http2_only(http2).build_http();
    let (endpoints, discover) = discover_channel();
    for (name, addr) in backends {
        endpoints.insert(name.clone(), Upstream::new(&client, *addr));
    }
    let balancer = BalancerBuilder::new().group(1, discover).build();
    while balancer.len() < backends.len() {
        tokio::task::yield_now().await;
    }
    let stack = ServiceBuilder::new()
        .map_request(move |mut req: Request<Incoming>| {
            // hyper's HTTP/1 client refuses a request still marked HTTP/2.
            if !http2 {
                *req.version_mut() = Version::HTTP_11;
            }
            req.map(Body::new)
        })
        .layer(SessionPersistenceLayer::<String>::new(
            policy,
            SignedCodec::new([[5u8; 32]]).unwrap(),
        ))
        .map_result(answer)
        .service(balancer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(stack.clone());
            let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            tokio::spawn(async move { server.serve_connection(TokioIo::new(stream), svc).await });
        }
    });
    format!("http://{addr}")
}

/// Balancer errors become responses beneath the layer, as a gateway's would.
fn answer(res: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    Ok(res.unwrap_or_else(error_response))
}

/// One unary call; returns the backend that answered and the session it was given, if any.
async fn say_hello(
    channel: &Channel,
    session: Option<&MetadataValue<tonic::metadata::Ascii>>,
) -> (String, Option<MetadataValue<tonic::metadata::Ascii>>) {
    say_hello_as("client", channel, session).await
}

async fn say_hello_as(
    name: &str,
    channel: &Channel,
    session: Option<&MetadataValue<tonic::metadata::Ascii>>,
) -> (String, Option<MetadataValue<tonic::metadata::Ascii>>) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(HelloRequest { name: name.to_owned() });
    if let Some(session) = session {
        req.metadata_mut().insert("x-session", session.clone());
    }
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let res = grpc.unary(req, SAY_HELLO.parse().unwrap(), codec).await.expect("the call succeeds");
    let session = res.metadata().get("x-session").cloned();
    (res.into_inner().backend, session)
}

async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap()
}

/// Two calls without a session in flight together, multiplexed on one new HTTP/2 connection
/// (so that a gateway serves both on the same thread, with the same balancer): the first is
/// held at its backend until the second has reached its own. p2c compares the loads of two
/// endpoints, and the held call's endpoint is busy, so the second call goes to another
/// backend: balanced, every time, with no chance involved. Returns both backends, each call
/// given a session.
async fn two_fresh_calls_at_once(url: &str, hold: &Hold) -> [String; 2] {
    let channel = connect(url).await;
    let call = |channel: Channel| {
        tokio::spawn(async move {
            let (backend, session) = say_hello_as("hold", &channel, None).await;
            assert!(session.is_some(), "a call without a session is given one");
            backend
        })
    };
    let before = hold.arrived.load(Ordering::SeqCst);
    let first = call(channel.clone());
    hold.arrived(before + 1).await;
    let second = call(channel);
    hold.arrived(before + 2).await;
    hold.release.add_permits(2);
    [first.await.unwrap(), second.await.unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_echoing_its_session_metadata_stays_on_one_backend() {
    let hold = Arc::new(Hold::default());
    let mut backends = Vec::new();
    for name in ["grpc-1", "grpc-2", "grpc-3"] {
        backends.push((name.to_owned(), grpc_backend(name, &hold).await));
    }
    let policy = SessionPolicy::header("x-session").build().unwrap();
    let url = gateway(policy, &backends, true).await;

    let channel = connect(&url).await;
    let (pinned, session) = say_hello(&channel, None).await;
    let session = session.expect("the first response's metadata carries a session");
    for i in 0..10 {
        let (backend, renewed) = say_hello(&channel, Some(&session)).await;
        assert_eq!(backend, pinned, "call {i} left its backend");
        assert!(renewed.is_none(), "an unchanged session is not sent again");
    }
    // Many calls in flight at once, multiplexed on the one HTTP/2 connection.
    let calls = (0..20).map(|_| say_hello(&channel, Some(&session)));
    for (backend, _) in futures_util::future::join_all(calls).await {
        assert_eq!(backend, pinned, "a concurrent call left its backend");
    }
    // The same session from a new connection, as another replica of the client would send it.
    let (backend, _) = say_hello(&connect(&url).await, Some(&session)).await;
    assert_eq!(backend, pinned);

    // Clients without a session are balanced, and each is given one.
    let [one, two] = two_fresh_calls_at_once(&url, &hold).await;
    assert_ne!(one, two, "two calls without a session, at once, reached the same backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_session_cookie_is_found_among_several_cookie_fields() {
    let mut backends = Vec::new();
    let mut running = Vec::new();
    for name in ["a", "b", "c"] {
        let b = backend(name).await;
        backends.push((name.to_owned(), b.addr));
        running.push(b);
    }
    let url = gateway(SessionPolicy::cookie("sid").build().unwrap(), &backends, false).await;
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let send = async |cookies: &[&str]| {
        let mut req = Request::get(&url);
        for cookie in cookies {
            req = req.header("cookie", *cookie);
        }
        let res = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
        assert_eq!((res.status(), res.version()), (StatusCode::OK, Version::HTTP_2));
        let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let session = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .find_map(|v| v.split(';').next().filter(|pair| pair.starts_with("sid=")))
            .map(str::to_owned);
        (header("x-backend").unwrap(), session, header("x-seen-cookie").unwrap())
    };

    let (pinned, session, _) = send(&[]).await;
    let session = session.expect("a session is issued");
    let shapes = [
        vec!["theme=dark", session.as_str(), "lang=en"],
        vec![session.as_str(), "theme=dark", "lang=en"],
        vec!["theme=dark", "lang=en", session.as_str()],
    ];
    for cookies in &shapes {
        let (backend, renewed, seen) = send(cookies).await;
        assert_eq!(backend, pinned, "{cookies:?}");
        assert_eq!(renewed, None, "{cookies:?}");
        // The session's field is gone; the others reach the backend as separate fields.
        assert_eq!(seen, "theme=dark | lang=en", "{cookies:?}");
    }
    // The session inside a field with other pairs, next to a separate field.
    let combined = format!("theme=dark; {session}");
    let (backend, renewed, seen) = send(&[&combined, "lang=en"]).await;
    assert_eq!((backend, renewed), (pinned, None));
    assert_eq!(seen, "theme=dark | lang=en");
}

mod gateway_process;

/// The same through the example gateway: a client speaking h2c to it, a Service with
/// `appProtocol: kubernetes.io/h2c` so that it speaks h2c to the backends (trailers and
/// `te: trailers` pass), and header persistence carried in the gRPC metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_gateway_keeps_its_backend() {
    let names = ["g1", "g2", "g3"];
    let hold = Arc::new(Hold::default());
    let mut endpoints = Vec::new();
    for name in names {
        endpoints.push(format!("\"{}\"", grpc_backend(name, &hold).await));
    }
    let config = format!(
        "keys: [\"{key}\"]
services:
  - name: greeter
    appProtocol: kubernetes.io/h2c
    endpoints: [{endpoints}]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: grpc}}
    spec:
      rules:
        - backendRefs: [{{name: greeter}}]
          sessionPersistence: {{type: Header, header: {{name: x-session}}}}
",
        key = "A".repeat(44),
        endpoints = endpoints.join(", "),
    );
    let gw = gateway_process::start_gateway(&config).await;
    let channel = connect(&gw.url).await;
    let (first, session) = say_hello(&channel, None).await;
    let session = session.expect("the first answer carries x-session in its metadata");
    for _ in 0..10 {
        let (backend, again) = say_hello(&channel, Some(&session)).await;
        assert_eq!(backend, first);
        assert!(again.is_none(), "an unchanged session is not re-issued");
    }
    let [one, two] = two_fresh_calls_at_once(&gw.url, &hold).await;
    assert_ne!(one, two, "two calls without a session, at once, reached the same backend");
}

/// A `GRPCRoute` as Gateway API users write it: a rule matching `test.Greeter/SayHello` with
/// header persistence, a rule for another service, and a method no rule matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_matches_methods_and_keeps_sessions() {
    let hold = Arc::new(Hold::default());
    let mut endpoints = Vec::new();
    for name in ["g1", "g2", "g3"] {
        endpoints.push(format!("\"{}\"", grpc_backend(name, &hold).await));
    }
    let other = grpc_backend("other", &hold).await;
    let config = format!(
        "keys: [\"{key}\"]
services:
  - {{name: greeter, appProtocol: kubernetes.io/h2c, endpoints: [{endpoints}]}}
  - {{name: other, appProtocol: kubernetes.io/h2c, endpoints: ['{other}']}}
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: GRPCRoute
    metadata: {{name: greeter}}
    spec:
      rules:
        - matches: [{{method: {{service: test.Greeter, method: SayHello}}}}]
          backendRefs: [{{name: greeter, port: 50051}}]
          sessionPersistence: {{type: Header, header: {{name: x-session}}}}
        - matches: [{{method: {{service: test.Other}}}}]
          backendRefs: [{{name: other}}]
",
        key = "A".repeat(44),
        endpoints = endpoints.join(", "),
    );
    let gw = gateway_process::start_gateway(&config).await;
    let channel = connect(&gw.url).await;
    let (first, session) = say_hello(&channel, None).await;
    assert_ne!(first, "other", "SayHello is the greeter rule's");
    let session = session.expect("the first answer carries x-session in its metadata");
    for _ in 0..10 {
        let (backend, again) = say_hello(&channel, Some(&session)).await;
        assert_eq!(backend, first);
        assert!(again.is_none(), "an unchanged session is not re-issued");
    }
    // A method of no rule: the gateway's 404, which gRPC reports as unimplemented.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(HelloRequest { name: "x".into() });
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let status = grpc.unary(req, "/test.Greeter/Other".parse().unwrap(), codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

/// What a GRPCRoute cannot say is refused, naming the field.
#[test]
fn grpc_route_config_errors_name_the_field() {
    let check = |rule: &str, app_protocol: &str| {
        let config = format!(
            "services: [{{name: g, appProtocol: {app_protocol}, endpoints: ['127.0.0.1:9']}}]
routes:
  - {{apiVersion: gateway.networking.k8s.io/v1, kind: GRPCRoute, metadata: {{name: r}}, spec: {{rules: [{rule}]}}}}
"
        );
        let file = gateway_process::TempFile::new(&config);
        let (status, _, stderr) =
            gateway_process::run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
        (status.success(), stderr)
    };
    assert!(check("{backendRefs: [{name: g}]}", "kubernetes.io/h2c").0);
    for (rule, protocol, expected) in [
        (
            "{backendRefs: [{name: g}]}",
            "http",
            "routes[0].spec.rules[0].backendRefs[0].name: service \"g\" speaks HTTP/1.1",
        ),
        (
            "{matches: [{method: {method: SayHello}}], backendRefs: [{name: g}]}",
            "kubernetes.io/h2c",
            "routes[0].spec.rules[0].matches[0].method.service: is required",
        ),
        (
            "{matches: [{method: {type: RegularExpression, service: a}}], backendRefs: [{name: g}]}",
            "kubernetes.io/h2c",
            "routes[0].spec.rules[0].matches[0].method.type: ",
        ),
        (
            "{matches: [{path: {value: /a}}], backendRefs: [{name: g}]}",
            "kubernetes.io/h2c",
            "routes[0].spec.rules[0].matches[0].path: a GRPCRoute matches a method",
        ),
        (
            "{matches: [{headers: [{name: a, value: b}]}], backendRefs: [{name: g}]}",
            "kubernetes.io/h2c",
            "routes[0].spec.rules[0].matches[0].headers: is not supported",
        ),
    ] {
        let (ok, stderr) = check(rule, protocol);
        assert!(!ok, "accepted: {rule}");
        assert!(stderr.contains(&format!("config error: {expected}")), "{rule}: {stderr}");
    }
}

/// The same GRPCRoute over TLS: an HTTPS listener (ALPN `h2`), tonic's HTTP/2 over a rustls
/// connection to `grpc.example` (resolved here to 127.0.0.1), the session in the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_over_tls_keeps_sessions() {
    use base64::Engine as _;
    let hold = Arc::new(Hold::default());
    let mut endpoints = Vec::new();
    for name in ["g1", "g2", "g3"] {
        endpoints.push(format!("'{}'", grpc_backend(name, &hold).await));
    }
    let made = rcgen::generate_simple_self_signed(vec!["grpc.example".to_owned()]).unwrap();
    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    let config = format!(
        "keys: ['{key}']
services: [{{name: greeter, appProtocol: kubernetes.io/h2c, endpoints: [{endpoints}]}}]
gateways:
- apiVersion: gateway.networking.k8s.io/v1
  kind: Gateway
  metadata: {{name: edge}}
  spec:
    addresses: [{{value: 127.0.0.1}}]
    listeners:
    - {{name: grpc, protocol: HTTPS, port: 0, hostname: grpc.example, tls: {{certificateRefs: [{{name: grpc}}]}}}}
secrets:
- {{apiVersion: v1, kind: Secret, type: kubernetes.io/tls, metadata: {{name: grpc}}, data: {{tls.crt: '{crt}', tls.key: '{tls_key}'}}}}
routes:
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {{name: greeter}}
  spec:
    parentRefs: [{{name: edge}}]
    rules:
    - matches: [{{method: {{service: test.Greeter}}}}]
      backendRefs: [{{name: greeter}}]
      sessionPersistence: {{type: Header, header: {{name: x-session}}}}
",
        key = "A".repeat(44),
        endpoints = endpoints.join(", "),
        crt = b64(made.cert.pem()),
        tls_key = b64(made.signing_key.serialize_pem()),
    );
    let gw = gateway_process::start_lines(&config, 1).await;
    assert!(gw.urls[0].starts_with("https://"), "{:?}", gw.urls);
    let port = gw.port(0);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let negotiated = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = negotiated.clone();
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, seen) = (connector.clone(), seen.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from("grpc.example").unwrap();
            let stream = connector.connect(name, tcp).await?;
            seen.lock().unwrap().push(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://grpc.example:{port}"))
        .unwrap()
        .connect_with_connector(connect)
        .await
        .expect("tonic connects over TLS");
    let (first, session) = say_hello(&channel, None).await;
    let session = session.expect("the first answer carries x-session in its metadata");
    for _ in 0..10 {
        let (backend, again) = say_hello(&channel, Some(&session)).await;
        assert_eq!(backend, first);
        assert!(again.is_none(), "an unchanged session is not re-issued");
    }
    let alpn = negotiated.lock().unwrap().clone();
    assert!(!alpn.is_empty() && alpn.iter().all(|p| p.as_deref() == Some(&b"h2"[..])), "{alpn:?}");
}

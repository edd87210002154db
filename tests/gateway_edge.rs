//! The gateway at the edge, attacked as the open internet would: slow and silent clients,
//! floods beyond the connection limit, stalled and sloppy origins, spoofed forwarded headers,
//! ambiguous hosts, and configuration that can never work. Every test starts the example
//! binary; timings are given generous margins and only upper bounds (and lower bounds a timer
//! cannot beat) are asserted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod gateway_process;
use gateway_process::{Gateway, TempFile, run_gateway, spawn_gateway_with_env, start_gateway};

/// Slack for a loaded CI machine on top of any configured timeout.
const MARGIN: Duration = Duration::from_secs(4);

/// A backend that answers every request with what it saw: headers as `x-seen-<name>` (all
/// fields joined by ` | `), its path in `x-seen-path`, its method in `x-seen-method`, and the number of body bytes read.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let length = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    let mut res = Response::builder()
                        .header("x-seen-path", parts.uri.to_string())
                        .header("x-seen-method", parts.method.as_str());
                    for name in parts.headers.keys() {
                        let all: Vec<String> = parts
                            .headers
                            .get_all(name)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        res = res.header(format!("x-seen-{name}"), all.join(" | "));
                    }
                    if parts.uri.path().ends_with("/login") {
                        let to = parts.uri.query().unwrap_or("to=/cart").trim_start_matches("to=");
                        res = res.status(302).header("location", to.to_owned());
                    }
                    Ok::<_, Infallible>(
                        res.body(Full::new(Bytes::from(length.to_string()))).unwrap(),
                    )
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// A backend that reads a request head and answers with `answer`, then does nothing more
/// (the connection stays open).
async fn raw_backend(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(stream);
            });
        }
    });
    addr
}

fn config(endpoint: SocketAddr, extra: &str, rule: &str) -> String {
    format!(
        "{extra}
services:
  - {{name: echo, endpoints: [\"{endpoint}\"]}}
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: shop}}
    spec:
      rules:
        - backendRefs: [{{name: echo}}]
{rule}"
    )
}

fn addr_of(gateway: &Gateway) -> SocketAddr {
    gateway.url.trim_start_matches("http://").parse().unwrap()
}

/// Sends `bytes` on a new connection and reads until the gateway closes it (or `limit`);
/// returns what was read and how long the connection stayed open.
async fn raw(gateway: SocketAddr, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                panic!("still open after {limit:?}; read so far: {}", String::from_utf8_lossy(&out))
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

#[tokio::test]
async fn slow_and_silent_request_heads_are_closed_within_request_header() {
    let backend = echo_backend().await;
    let gw =
        start_gateway(&config(backend, "timeouts: {requestHeader: 1s, clientIdle: 30s}", "")).await;
    let limit = Duration::from_secs(1) + MARGIN;
    let (_, open) = raw(addr_of(&gw), b"GET / HTTP/1.1\r\nHost: shop\r\nX-Slow: ", limit).await;
    assert!(open >= Duration::from_millis(900) && open < limit, "half a head: open {open:?}");
    let (_, open) = raw(addr_of(&gw), b"", limit).await;
    assert!(open >= Duration::from_millis(900) && open < limit, "nothing sent: open {open:?}");
}

/// Whether the gateway closes `stream` within `limit` (whatever it sends first is read).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async { while let Ok(1..) = stream.read(&mut buf).await {} })
        .await
        .is_ok()
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_within_client_idle() {
    let backend = echo_backend().await;
    // clientIdle longer than requestHeader: an idle connection must get the former.
    let gw =
        start_gateway(&config(backend, "timeouts: {requestHeader: 1s, clientIdle: 3s}", "")).await;
    let mut stream = TcpStream::connect(addr_of(&gw)).await.unwrap();
    stream.write_all(b"GET /a HTTP/1.1\r\nHost: shop\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    let closed = closed_within(&mut stream, Duration::from_secs(3) + MARGIN).await;
    let open = idle_from.elapsed();
    assert!(closed, "an idle keep-alive connection still open after {open:?}");
    assert!(open >= Duration::from_millis(2500), "closed after {open:?}, before clientIdle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_beyond_max_connections_does_not_keep_new_clients_out() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(
        backend,
        "timeouts: {requestHeader: 2s}\nlimits: {maxConnections: 20}",
        "",
    ))
    .await;
    let addr = addr_of(&gw);
    // Three times the limit, each holding half a head: the gateway takes 20, the kernel
    // queues the rest.
    let mut flood = Vec::new();
    for _ in 0..60 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nX-Slow: ").await.unwrap();
        flood.push(stream);
    }
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), async {
        reqwest::Client::new().get(format!("{}/fresh", gw.url)).send().await
    })
    .await
    .expect("a new client is served once the flood times out")
    .expect("a response");
    assert_eq!(res.status(), 200);
    // Three rounds of 20 slow heads at 2 s each, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(20), "served after {:?}", started.elapsed());
    let logs = gw.stderr.lock().unwrap().clone();
    assert!(logs.contains("maxConnections reached"), "{logs}");
    drop(flood);
}

#[tokio::test]
async fn a_stalled_origin_body_is_cut_within_backend_idle() {
    let origin = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let gw = start_gateway(&config(origin, "timeouts: {backendIdle: 1s}", "")).await;
    let limit = Duration::from_secs(1) + MARGIN;
    let (read, open) = raw(addr_of(&gw), b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n", limit).await;
    assert!(read.starts_with("HTTP/1.1 200"), "{read}");
    assert!(read.ends_with("0123456789"), "the part that came is forwarded: {read}");
    assert!(open >= Duration::from_millis(900), "cut after {open:?}, before backendIdle");
}

#[tokio::test]
async fn an_origin_answer_with_content_length_and_chunked_arrives_whole() {
    let origin = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
    )
    .await;
    let gw = start_gateway(&config(origin, "", "")).await;
    let res = reqwest::get(format!("{}/", gw.url)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-length").is_none_or(|l| l == "12"));
    assert_eq!(res.text().await.unwrap(), "hello world!");
}

/// 40 s of upload at 1 KiB every half second, against a 5 s response timeout: the wait for
/// the answer starts when the body is done.
#[tokio::test]
async fn a_steady_40s_upload_succeeds_with_backend_response_5s() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(backend, "timeouts: {backendResponse: 5s}", "")).await;
    let chunks = futures_util::stream::unfold(0u32, |sent| async move {
        if sent == 80 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let frame = http_body::Frame::data(Bytes::from(vec![b'x'; 1024]));
        Some((Ok::<_, Infallible>(frame), sent + 1))
    });
    let stream = TcpStream::connect(addr_of(&gw)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let req = Request::post("/upload")
        .header("host", "shop")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (80 * 1024).to_string());
}

#[tokio::test]
async fn spoofed_forwarded_headers_never_reach_the_backend_from_an_untrusted_peer() {
    let backend = echo_backend().await;
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-forwarded-for", "203.0.113.9")
            .header("forwarded", "for=203.0.113.9")
            .header("x-real-ip", "203.0.113.9")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-port", "1")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "chosen-by-the-client")
    };
    let seen = |res: &reqwest::Response, name: &str| {
        res.headers().get(format!("x-seen-{name}")).map(|v| v.to_str().unwrap().to_owned())
    };
    let gw = start_gateway(&config(backend, "", "")).await;
    let client = reqwest::Client::new();
    let res = spoof(client.get(format!("{}/", gw.url))).send().await.unwrap();
    assert_eq!(seen(&res, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        seen(&res, "forwarded").as_deref(),
        Some(format!("for=127.0.0.1;host=\"{}\";proto=http", addr_of(&gw)).as_str())
    );
    assert_eq!(seen(&res, "x-real-ip"), None);
    assert_eq!(seen(&res, "x-forwarded-port"), None);
    assert_eq!(seen(&res, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen(&res, "x-forwarded-host"), Some(addr_of(&gw).to_string()));
    assert_eq!(seen(&res, "via").as_deref(), Some("1.1 gateway"));
    let id = seen(&res, "x-request-id").unwrap();
    assert!(id.len() == 32 && id != "chosen-by-the-client", "{id}");

    // From a trusted proxy, the same headers are kept and extended.
    let gw = start_gateway(&config(backend, "trustedProxies: [127.0.0.0/8]", "")).await;
    let res = spoof(client.get(format!("{}/", gw.url))).send().await.unwrap();
    assert_eq!(seen(&res, "x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen(&res, "x-real-ip").as_deref(), Some("203.0.113.9"));
    assert_eq!(seen(&res, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen(&res, "x-request-id").as_deref(), Some("chosen-by-the-client"));
}

#[tokio::test]
async fn ambiguous_hosts_connect_and_malformed_bodies_are_the_client_s_4xx() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(backend, "", "")).await;
    let addr = addr_of(&gw);
    let limit = Duration::from_secs(5);
    let status = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    let (two_hosts, _) = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status(&two_hosts), "HTTP/1.1 400 Bad Request", "{two_hosts}");
    let (absolute, _) = raw(
        addr,
        b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status(&absolute), "HTTP/1.1 400 Bad Request", "{absolute}");
    let (connect, _) = raw(
        addr,
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status(&connect), "HTTP/1.1 405 Method Not Allowed", "{connect}");
    let (chunked, _) = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          ZZ\r\nnot hex\r\n0\r\n\r\n",
        limit,
    )
    .await;
    assert_eq!(status(&chunked), "HTTP/1.1 400 Bad Request", "{chunked}");
    let logs = gw.stderr.lock().unwrap().clone();
    assert!(
        !logs.contains("upstream request failed"),
        "a client's body blamed on the backend:\n{logs}"
    );
}

#[tokio::test]
async fn heads_over_the_limits_get_431() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(backend, "", "")).await;
    let client = reqwest::Client::new();
    let big = "x".repeat(20 * 1024);
    let res = client.get(format!("{}/", gw.url)).header("x-big", big).send().await.unwrap();
    assert_eq!(res.status(), 431);
    let mut many = client.get(format!("{}/", gw.url));
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let res = client.get(format!("{}/", gw.url)).header("x-ok", "x".repeat(8 * 1024)).send();
    assert_eq!(res.await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_unrequested_101_is_a_502_naming_the_endpoint() {
    let origin = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let gw = start_gateway(&config(origin, "", "")).await;
    let res = reqwest::get(format!("{}/", gw.url)).await.unwrap();
    assert_eq!(res.status(), 502);
    let wanted = format!("endpoint=echo/{origin}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = gw.stderr.lock().unwrap().clone();
        if logs.lines().any(|l| l.contains(" 502 ") && l.contains(&wanted)) {
            break;
        }
        assert!(Instant::now() < deadline, "no access line naming {wanted}:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A listener whose accept queue is full: the kernel drops further connection attempts, as
/// a host that never answers would.
async fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue; attempts beyond it hang, which is what we want from the gateway's.
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[tokio::test]
async fn a_backend_that_never_accepts_fails_within_connect_not_backend_response() {
    let (hole, _fillers) = black_hole().await;
    let gw =
        start_gateway(&config(hole, "timeouts: {connect: 1s, backendResponse: 60s}", "")).await;
    let started = Instant::now();
    let res = reqwest::get(format!("{}/", gw.url)).await.unwrap();
    assert_eq!(res.status(), 502, "a connect timeout: the backend was never reached");
    assert!(started.elapsed() < Duration::from_secs(1) + MARGIN, "{:?}", started.elapsed());
}

#[tokio::test]
async fn url_sessions_route_on_a_path_prefix_and_survive_a_followed_redirect() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(
        backend,
        "",
        "          matches: [{path: {type: PathPrefix, value: /cart}}]
          sessionPersistence: {cookie: {name: jsessionid}}
          x-session-persistence: {strategy: url}
",
    ))
    .await;
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = client.get(format!("{}/cart/login", gw.url)).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/cart;jsessionid="), "{location}");
    // Followed as a browser would: the rule on /cart matches, the backend sees /cart.
    let res = client.get(format!("{}{location}", gw.url)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{location}");
    assert_eq!(res.headers()["x-seen-path"], "/cart");
    let res = client.get(format!("{}/cart;jsessionid=forged/items", gw.url)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-seen-path"], "/cart/items");
}

#[test]
fn configurations_that_can_never_work_are_refused_naming_the_field() {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let rule = |persistence: &str| config(backend, "", persistence);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "config error: routes: "),
        ("services: []\n".to_owned(), "config error: routes: "),
        (
            rule("          sessionPersistence: {type: Header, header: {name: cookie}}\n"),
            "sessionPersistence.header.name: ",
        ),
        (
            rule("          sessionPersistence: {type: Header, header: {name: Content-Length}}\n"),
            "sessionPersistence.header.name: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: __Host-s}}\n          x-session-persistence: {domain: a.example}\n",
            ),
            "x-session-persistence.domain: ",
        ),
        (
            rule("          sessionPersistence: {cookie: {name: __Host-s, path: /shop}}\n"),
            "sessionPersistence.cookie.path: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: __Host-s}}\n          x-session-persistence: {secure: false}\n",
            ),
            "x-session-persistence.secure: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: __Secure-s}}\n          x-session-persistence: {secure: false}\n",
            ),
            "x-session-persistence.secure: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: s}}\n          x-session-persistence: {secure: false, sameSite: None}\n",
            ),
            "x-session-persistence.sameSite: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: s}}\n          x-session-persistence: {attributes: [Max-Age=99]}\n",
            ),
            "x-session-persistence.attributes[0]: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: s}}\n          x-session-persistence: {attributes: [\"Domain=evil.example\"]}\n",
            ),
            "x-session-persistence.attributes[0]: ",
        ),
        (
            rule(
                "          sessionPersistence: {cookie: {name: s}}\n        - backendRefs: [{name: echo}]\n          matches: [{path: {value: /b}}]\n          sessionPersistence: {cookie: {name: s}}\n",
            ),
            "routes[0].spec.rules[1].sessionPersistence: ",
        ),
        (config(backend, "timeouts: {requestHeader: 0s}", ""), "timeouts.requestHeader: "),
        (config(backend, "timeouts: {clientIdle: 5}", ""), "timeouts.clientIdle: "),
        (config(backend, "limits: {maxConnections: 0}", ""), "limits.maxConnections: "),
        (
            config(backend, "limits: {maxRequestHeaderBytes: 100}", ""),
            "limits.maxRequestHeaderBytes: ",
        ),
        (config(backend, "trustedProxies: [everyone]", ""), "trustedProxies[0]: "),
        (config(backend, "timeout: 5s\ntimeouts: {backendResponse: 5s}", ""), "timeout: "),
    ];
    for (text, wanted) in cases {
        let file = gateway_process::TempFile::new(&text);
        let (status, _, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
        assert_eq!(status.code(), Some(1), "{text}\n{stderr}");
        assert!(stderr.contains(wanted), "{text}\nexpected {wanted:?} in: {stderr}");
    }
    // Sharing a scope on purpose makes one cookie one session for both rules.
    let shared = rule(
        "          sessionPersistence: {cookie: {name: s}}\n          x-session-persistence: {scope: shop}\n        - backendRefs: [{name: echo}]\n          matches: [{path: {value: /b}}]\n          sessionPersistence: {cookie: {name: s}}\n          x-session-persistence: {scope: shop}\n",
    );
    let file = gateway_process::TempFile::new(&shared);
    let (status, stdout, stderr) = run_gateway(&["--config", file.0.to_str().unwrap(), "--check"]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("2 rule(s)"), "{stdout}");
}

#[tokio::test]
async fn sigterm_closes_idle_and_half_open_connections_at_once() {
    let backend = echo_backend().await;
    let mut gw =
        start_gateway(&config(backend, "timeouts: {shutdownGrace: 20s, requestHeader: 30s}", ""))
            .await;
    let mut half = TcpStream::connect(addr_of(&gw)).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let pid = gw.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "{exited}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// A backend that takes `delay` per request and records the most requests it had at once.
async fn counting_backend(
    delay: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (now, most) = (now.clone(), most.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let (now, most) = (now.clone(), most.clone());
                    async move {
                        let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(at_once, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_endpoint_queues_requests_for_the_endpoint() {
    let (backend, most) = counting_backend(Duration::from_millis(300)).await;
    let gw = start_gateway(&config(
        backend,
        "limits: {maxConnectionsPerEndpoint: 2}",
        "          x-balancer: {failfast: 20s, endpointQueue: 64}\n",
    ))
    .await;
    let client = reqwest::Client::new();
    let requests = (0..8).map(|_| client.get(format!("{}/", gw.url)).send());
    for res in futures_util::future::join_all(requests).await {
        assert_eq!(res.unwrap().status(), 200);
    }
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2, "at most 2 at once");
}

#[tokio::test]
async fn url_tokens_reach_no_log_line_even_at_trace_level() {
    let backend = echo_backend().await;
    let file = TempFile::new(&config(
        backend,
        "",
        "          sessionPersistence: {cookie: {name: jsessionid}}
          x-session-persistence: {strategy: url}
        - backendRefs: [{name: echo}]
          matches: [{path: {value: /q}}]
          sessionPersistence: {cookie: {name: qsession}}
          x-session-persistence: {strategy: url, url: {parameter: query}}
",
    ));
    let path = file.0.to_str().unwrap().to_owned();
    let gw =
        spawn_gateway_with_env(&["--config", &path], Some(file), &[("RUST_LOG", "trace")]).await;
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = client.get(format!("{}/login", gw.url)).send().await.unwrap();
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let token = location.split("jsessionid=").nth(1).unwrap().to_owned();
    assert!(token.len() > 20, "{location}");
    for url in [
        format!("{}{location}", gw.url),
        format!("{}/a;jsessionid=SECRET-PATH-TOKEN/b", gw.url),
        format!("{}/q/x?qsession=SECRET-QUERY-TOKEN&page=2", gw.url),
    ] {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "{url}");
    }
    // Let the access lines of the last requests be written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = gw.stderr.lock().unwrap().clone();
    assert!(
        logs.contains("target") || logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logs are on:\n{logs}"
    );
    for secret in [token.as_str(), "SECRET-PATH-TOKEN", "SECRET-QUERY-TOKEN"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_within_client_body() {
    let backend = echo_backend().await;
    let gw = start_gateway(&config(backend, "timeouts: {clientBody: 1s}", "")).await;
    let limit = Duration::from_secs(1) + MARGIN;
    let (answer, open) = raw(
        addr_of(&gw),
        b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\n0123456789",
        limit,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(open >= Duration::from_millis(900), "answered after {open:?}, before clientBody");
    let logs = gw.stderr.lock().unwrap().clone();
    assert!(!logs.contains("upstream request failed"), "the endpoint was blamed:\n{logs}");
}

/// Reads one response (head and a `content-length` body) from a keep-alive connection, with
/// what came after it left in `pending`.
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let mut buf = [0u8; 8192];
    let response = tokio::time::timeout(MARGIN, async {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if pending.len() >= end + 4 + length {
                    let body =
                        String::from_utf8_lossy(&pending[end + 4..end + 4 + length]).into_owned();
                    pending.drain(..end + 4 + length);
                    return (head, body);
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed the connection; read so far: {pending:?}");
            pending.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    response.expect("a response within the margin")
}

/// Waits until `text` is in the gateway's log `n` times.
async fn wait_log_count(gw: &Gateway, text: &str, n: usize) {
    let deadline = Instant::now() + MARGIN;
    while gw.stderr.lock().unwrap().matches(text).count() < n {
        assert!(Instant::now() < deadline, "not {n} {text:?}:\n{}", gw.stderr.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_keep_alive_connection_that_released_its_state_serves_what_comes_next() {
    const RELEASED: &str = "idle: HTTP state released";
    let backend = echo_backend().await;
    let file = TempFile::new(&config(backend, "timeouts: {requestHeader: 2s}", ""));
    let path = file.0.to_str().unwrap().to_owned();
    let gw = spawn_gateway_with_env(
        &["--config", &path],
        Some(file),
        &[("RUST_LOG", "gateway::keep_alive=trace")],
    )
    .await;
    let releases = || gw.stderr.lock().unwrap().matches(RELEASED).count();
    let mut stream = TcpStream::connect(addr_of(&gw)).await.unwrap();
    let mut pending = Vec::new();
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: shop\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut stream, &mut pending).await;
    assert!(head.contains("x-seen-path: /first"), "{head}");
    wait_log_count(&gw, RELEASED, 1).await;

    // After a release: two requests in one write, the second with a body.
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: shop\r\n\r\nPOST /third HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream, &mut pending).await;
    assert!(head.contains("x-seen-path: /second\r\nx-seen-method: GET\r\n"), "{head}");
    let (head, body) = read_response(&mut stream, &mut pending).await;
    assert!(head.contains("x-seen-path: /third\r\nx-seen-method: POST\r\n"), "{head}");
    assert_eq!(body, "5");
    wait_log_count(&gw, RELEASED, 2).await;

    // A head begun is not idle: it is never released, however slowly it comes.
    stream.write_all(b"GET /fourth HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"st: shop\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut stream, &mut pending).await;
    assert!(head.contains("x-seen-path: /fourth\r\nx-seen-method: GET\r\n"), "{head}");
    assert_eq!(releases(), 2, "released with a head begun");
    wait_log_count(&gw, RELEASED, 3).await;

    // Nor is a request whose body is still coming.
    stream
        .write_all(b"POST /fifth HTTP/1.1\r\nHost: shop\r\nContent-Length: 6\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"def").await.unwrap();
    let (head, body) = read_response(&mut stream, &mut pending).await;
    assert!(head.contains("x-seen-path: /fifth\r\nx-seen-method: POST\r\n"), "{head}");
    assert_eq!(body, "6");
    assert_eq!(releases(), 3, "released with a body coming");
    wait_log_count(&gw, RELEASED, 4).await;

    // A head begun after a release still has requestHeader (2 s) to finish.
    stream.write_all(b"GET /never-finished HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let closed = closed_within(&mut stream, Duration::from_secs(2) + MARGIN).await;
    assert!(closed, "a half head still open after {:?}", started.elapsed());
    assert!(pending.is_empty(), "{pending:?}");
}

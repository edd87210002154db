//! Every strategy through the layer, over a stand-in balancer whose responses the request
//! scripts: `x-respond-<header>: <value>` comes back as `<header>: <value>`, and
//! `x-respond-status` sets the status.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::strategy::{Insert, Passive, Prefix, Rewrite, Url};
use tower_session_persistence::token::{Binding, Claims, Codec, Dates, PlainCodec, SignedCodec};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn backend(
    default: &'static str,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |mut req: Request<()>| async move {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or(default.to_owned(), |p| p.0);
        let mut res = Response::new(());
        for (name, value) in req.headers() {
            if let Some(header) = name.as_str().strip_prefix("x-respond-") {
                if header == "status" {
                    *res.status_mut() = StatusCode::from_bytes(value.as_bytes()).unwrap();
                } else {
                    res.headers_mut()
                        .append(HeaderName::from_bytes(header.as_bytes()).unwrap(), value.clone());
                }
            }
        }
        let seen: Vec<_> = req.headers().get_all("cookie").iter().cloned().collect();
        for v in seen {
            res.headers_mut().append("x-seen-cookie", v);
        }
        if let Some(exposed) = req.headers().get("x-session-token") {
            res.headers_mut().insert("x-seen-token", exposed.clone());
        }
        res.headers_mut().insert("x-seen-uri", req.uri().to_string().parse().unwrap());
        res.headers_mut().insert("x-backend", key.parse().unwrap());
        ServedBy(key).insert(res.extensions_mut());
        Ok(res)
    })
}

fn signed() -> SignedCodec {
    SignedCodec::new([[3u8; 32]]).unwrap()
}

fn token(name: &str, endpoint: &str) -> String {
    let claims = Claims {
        endpoint: endpoint.as_bytes().to_vec(),
        issued: Some(now()),
        refreshed: Some(now()),
    };
    signed().encode(&claims, Binding { name, scope: name }).unwrap()
}

async fn call<S>(svc: &S, req: http::request::Builder) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req.body(()).unwrap()).await.unwrap()
}

fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

fn get() -> http::request::Builder {
    Request::builder().method(Method::GET).uri("/")
}

#[tokio::test]
async fn insert_preserve_lets_the_application_end_persistence() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    )
    .strategy(Insert::new().preserve(true));
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    // The application's own SRV passes and nothing is inserted.
    let res =
        call(&svc, get().header("x-respond-set-cookie", "SRV=app-value; Path=/; Max-Age=3600"))
            .await;
    assert_eq!(all(res.headers(), "set-cookie"), ["SRV=app-value; Path=/; Max-Age=3600"]);
    // A logout's deletion reaches the client.
    let logout = "SRV=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/";
    let res = call(
        &svc,
        get()
            .header("cookie", format!("SRV={}", token("SRV", "s2")))
            .header("x-respond-set-cookie", logout),
    )
    .await;
    assert_eq!(all(res.headers(), "set-cookie"), [logout]);
    assert_eq!(res.headers()["x-backend"], "s2");
    // Without it, the application's cookie of our name is replaced by ours.
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    );
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let res = call(&svc, get().header("x-respond-set-cookie", "SRV=app-value; Path=/")).await;
    let cookies = all(res.headers(), "set-cookie");
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].starts_with("SRV=") && !cookies[0].contains("app-value"));
}

#[tokio::test]
async fn nocache_marks_only_cacheable_responses_that_get_a_cookie() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    )
    .strategy(Insert::new().nocache(true));
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let private =
        |res: &Response<()>| all(res.headers(), "cache-control").contains(&"private".to_owned());
    let res = call(&svc, get()).await;
    assert!(!private(&res), "a plain 200 is not cacheable in HAProxy 2.6");
    let res = call(&svc, get().header("x-respond-etag", "\"v1\"")).await;
    assert!(private(&res));
    assert_eq!(all(res.headers(), "set-cookie").len(), 1);
    let res = call(&svc, get().header("x-respond-cache-control", "max-age=60")).await;
    assert_eq!(all(res.headers(), "cache-control"), ["max-age=60", "private"]);
    let res = call(&svc, get().method(Method::POST).header("x-respond-etag", "\"v1\"")).await;
    assert!(!private(&res), "POST is never cacheable");
    let res = call(
        &svc,
        get()
            .header("cookie", format!("SRV={}", token("SRV", "s2")))
            .header("x-respond-etag", "\"v1\""),
    )
    .await;
    assert!(!private(&res), "no cookie inserted, nothing to protect");
    assert!(all(res.headers(), "set-cookie").is_empty());
}

#[tokio::test]
async fn postonly_inserts_only_on_post() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    )
    .strategy(Insert::new().postonly(true));
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    for (method, expected) in [(Method::GET, 0), (Method::PUT, 0), (Method::POST, 1)] {
        let res = call(&svc, get().method(method.clone())).await;
        assert_eq!(all(res.headers(), "set-cookie").len(), expected, "{method}");
    }
}

#[tokio::test]
async fn rewrite_replaces_the_applications_value_and_keeps_its_attributes() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    )
    .strategy(Rewrite::new());
    let svc = ServiceBuilder::new().layer(layer).service(backend("s2"));
    let res = call(
        &svc,
        get().header("x-respond-set-cookie", "SRV=app-value; Path=/; Max-Age=3600; Priority=High"),
    )
    .await;
    let cookies = all(res.headers(), "set-cookie");
    assert_eq!(cookies.len(), 1);
    let value = cookies[0].strip_prefix("SRV=").unwrap().split(';').next().unwrap().to_owned();
    assert!(cookies[0].ends_with("; Path=/; Max-Age=3600; Priority=High"), "{}", cookies[0]);
    assert_ne!(value, "app-value");
    // No application cookie: rewrite never creates one.
    let res = call(&svc, get()).await;
    assert!(all(res.headers(), "set-cookie").is_empty());
    // The token comes back, pins, and reaches the backend unchanged.
    let res = call(
        &svc,
        Request::builder().uri("/").header("cookie", format!("a=1; SRV={}", token("SRV", "s9"))),
    )
    .await;
    assert_eq!(res.headers()["x-backend"], "s9");
    assert_eq!(res.headers()["x-seen-cookie"], format!("a=1; SRV={}", token("SRV", "s9")).as_str());
    // With the policy's indirect it is removed.
    let layer = SessionPersistenceLayer::new(
        SessionPolicy::cookie("SRV").indirect(true).build().unwrap(),
        signed(),
    )
    .strategy(Rewrite::new());
    let svc = ServiceBuilder::new().layer(layer).service(backend("s2"));
    let res = call(&svc, get().header("cookie", format!("a=1; SRV={}", token("SRV", "s9")))).await;
    assert_eq!(res.headers()["x-seen-cookie"], "a=1");
}

#[tokio::test]
async fn prefix_wraps_and_unwraps_the_applications_cookie() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("JSESSIONID").build().unwrap(),
        signed(),
    )
    .strategy(Prefix);
    let svc = ServiceBuilder::new().layer(layer).service(backend("s2"));
    let res =
        call(&svc, get().header("x-respond-set-cookie", "JSESSIONID=abc123; Path=/; HttpOnly"))
            .await;
    let cookie = all(res.headers(), "set-cookie").remove(0);
    let (value, attributes) = cookie.strip_prefix("JSESSIONID=").unwrap().split_once(';').unwrap();
    let (id, app) = value.split_once('~').unwrap();
    assert_eq!(app, "abc123");
    assert_eq!(attributes, " Path=/; HttpOnly");

    // Coming back: pinned, and the backend sees its own value.
    let res = call(&svc, get().header("cookie", format!("x=1; JSESSIONID={id}~abc123; y=2"))).await;
    assert_eq!(res.headers()["x-backend"], "s2");
    assert_eq!(res.headers()["x-seen-cookie"], "x=1; JSESSIONID=abc123; y=2");
    let pinned_elsewhere = token("JSESSIONID", "s7");
    let res =
        call(&svc, get().header("cookie", format!("JSESSIONID={pinned_elsewhere}~a~b"))).await;
    assert_eq!(res.headers()["x-backend"], "s7");
    assert_eq!(res.headers()["x-seen-cookie"], "JSESSIONID=a~b", "split at the first ~");
    // An unknown id is still stripped; a value without ~ passes unchanged; both are balanced.
    let res = call(&svc, get().header("cookie", "JSESSIONID=zz~abc")).await;
    assert_eq!(res.headers()["x-seen-cookie"], "JSESSIONID=abc");
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Invalid));
    let res = call(&svc, get().header("cookie", "JSESSIONID=abc123")).await;
    assert_eq!(res.headers()["x-seen-cookie"], "JSESSIONID=abc123");
    assert_eq!(res.headers()["x-backend"], "s2");
}

#[tokio::test]
async fn passive_reads_and_never_writes() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    )
    .strategy(Passive);
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let res = call(&svc, get()).await;
    assert!(all(res.headers(), "set-cookie").is_empty());
    let cookie = format!("SRV={}; a=1", token("SRV", "s3"));
    let res =
        call(&svc, get().header("cookie", &cookie).header("x-respond-set-cookie", "SRV=x")).await;
    assert_eq!(res.headers()["x-backend"], "s3");
    assert_eq!(res.headers()["x-seen-cookie"], cookie.as_str());
    assert_eq!(all(res.headers(), "set-cookie"), ["SRV=x"]);
}

#[tokio::test]
async fn plain_codec_speaks_haproxy() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        PlainCodec::new(Dates::None),
    );
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let res = call(&svc, get()).await;
    assert_eq!(
        all(res.headers(), "set-cookie"),
        ["SRV=s1; HttpOnly; SameSite=Strict; Secure; Path=/"]
    );
    let res = call(&svc, get().header("cookie", "SRV=s2")).await;
    assert_eq!(res.headers()["x-backend"], "s2");
    for bad in ["SRV=", "SRV=|awkPk"] {
        let res = call(&svc, get().header("cookie", bad)).await;
        assert_eq!(res.headers()["x-backend"], "s1", "{bad}");
    }
    // An endpoint without an id: the client is told to drop its cookie.
    let svc = ServiceBuilder::new()
        .layer(SessionPersistenceLayer::<String>::new(
            SessionPolicy::cookie("SRV").build().unwrap(),
            PlainCodec::new(Dates::None),
        ))
        .service(backend(""));
    let res = call(&svc, get()).await;
    let deletion = all(res.headers(), "set-cookie").remove(0);
    let parsed = cookie::Cookie::parse(deletion.clone()).unwrap();
    assert_eq!(parsed.value(), "");
    assert_eq!(parsed.max_age(), Some(cookie::time::Duration::ZERO), "{deletion}");
}

#[tokio::test]
async fn plain_dates_follow_maxidle_and_maxlife() {
    let policy = SessionPolicy::cookie("SRV")
        .idle_timeout(Duration::from_secs(30 * 60))
        .absolute_timeout(Duration::from_secs(8 * 3600))
        .build()
        .unwrap();
    let layer =
        SessionPersistenceLayer::<String>::new(policy, PlainCodec::new(Dates::LastAndFirst))
            .refresh_interval(Duration::ZERO)
            .max_clock_skew(Duration::from_secs(86_400));
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let codec = PlainCodec::new(Dates::LastAndFirst);
    let value = |endpoint: &str, last: u64, first: u64| {
        let claims = Claims {
            endpoint: endpoint.as_bytes().to_vec(),
            issued: Some(first),
            refreshed: Some(last),
        };
        codec.encode(&claims, Binding { name: "SRV", scope: "SRV" }).unwrap()
    };
    let issued = |res: &Response<()>| {
        let c = all(res.headers(), "set-cookie").remove(0);
        c.strip_prefix("SRV=").unwrap().split(';').next().unwrap().to_owned()
    };
    let t = now();
    // New: both dates now.
    let res = call(&svc, get()).await;
    let v = issued(&res);
    let parts: Vec<&str> = v.split('|').collect();
    assert_eq!(parts[0], "s1");
    assert_eq!(parts[1], parts[2]);
    // Ten minutes idle, an hour old: pinned, last date moves, first date kept.
    let res =
        call(&svc, get().header("cookie", format!("SRV={}", value("s2", t - 600, t - 3600)))).await;
    assert_eq!(res.headers()["x-backend"], "s2");
    assert!(issued(&res).ends_with(&value("s2", t, t - 3600)[8..]), "first date kept");
    // 31 minutes idle: expired, balanced, both dates new.
    let res =
        call(&svc, get().header("cookie", format!("SRV={}", value("s2", t - 31 * 60, t - 3600))))
            .await;
    assert_eq!(res.headers()["x-backend"], "s1");
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Expired));
    // Nine hours old: too old.
    let res =
        call(&svc, get().header("cookie", format!("SRV={}", value("s2", t - 600, t - 9 * 3600))))
            .await;
    assert_eq!(res.headers()["x-backend"], "s1");
    // No dates: accepted, and dates are added.
    let res = call(&svc, get().header("cookie", "SRV=s2")).await;
    assert_eq!(res.headers()["x-backend"], "s2");
    assert_eq!(issued(&res).split('|').count(), 3);
    // Two days in the future: ignored.
    let res =
        call(&svc, get().header("cookie", format!("SRV={}", value("s2", t + 2 * 86_400, t)))).await;
    assert_eq!(res.headers()["x-backend"], "s1");
}

#[tokio::test]
async fn cookie_attributes_are_all_written() {
    let policy = SessionPolicy::cookie("SRV")
        .domain(".example.com")
        .domain(".example.net")
        .partitioned(true)
        .attribute("Priority=High")
        .build()
        .unwrap();
    let layer = SessionPersistenceLayer::<String>::new(policy, signed());
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let cookie = all(call(&svc, get()).await.headers(), "set-cookie").remove(0);
    for part in [
        "Domain=example.com",
        "Domain=example.net",
        "Partitioned",
        "Priority=High",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
}

#[tokio::test]
async fn url_sessions_travel_in_path_or_query_parameters() {
    let token_header = HeaderName::from_static("x-session-token");
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("jsessionid").build().unwrap(),
        signed(),
    )
    .strategy(Url::path_parameter().expose_header(token_header.clone()));
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let t = token("jsessionid", "s4");
    let res = call(&svc, Request::builder().uri(format!("/cart;jsessionid={t}?x=1&y=%20"))).await;
    assert_eq!(res.headers()["x-backend"], "s4");
    assert_eq!(res.headers()["x-seen-uri"], "/cart?x=1&y=%20");
    assert_eq!(res.headers()["x-seen-token"], t.as_str(), "offered to the application");
    // A client's own value of the header never reaches the application; a bad token is no session.
    let res = call(
        &svc,
        Request::builder().uri("/cart;jsessionid=forged").header(&token_header, "forged"),
    )
    .await;
    assert!(res.headers().get("x-seen-token").is_none());
    assert_eq!(res.headers()["x-backend"], "s1");
    // A redirect of a new session carries the token.
    let res = call(
        &svc,
        Request::builder()
            .uri("/login")
            .header("x-respond-status", "302")
            .header("x-respond-location", "/home?tab=1"),
    )
    .await;
    let location = res.headers()["location"].to_str().unwrap();
    let (path, query) = location.split_once('?').unwrap();
    assert_eq!(query, "tab=1");
    let carried = path.strip_prefix("/home;jsessionid=").unwrap();
    let res = call(&svc, Request::builder().uri(format!("/home;jsessionid={carried}"))).await;
    assert_eq!(res.headers()["x-backend"], "s1");
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));

    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("session").build().unwrap(),
        signed(),
    )
    .strategy(Url::query());
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let t = token("session", "s5");
    let res =
        call(&svc, Request::builder().uri(format!("/a?x=1&session={t}&session=other&z"))).await;
    assert_eq!(res.headers()["x-backend"], "s5");
    assert_eq!(res.headers()["x-seen-uri"], "/a?x=1&z");
    let res = call(
        &svc,
        Request::builder()
            .uri("/a")
            .header("host", "shop.example")
            .header("x-respond-status", "303")
            .header("x-respond-location", "https://shop.example/b"),
    )
    .await;
    assert!(
        res.headers()["location"].to_str().unwrap().starts_with("https://shop.example/b?session=")
    );
    // Another host (an identity provider, say) never gets the token.
    let res = call(
        &svc,
        Request::builder()
            .uri("/a")
            .header("host", "shop.example")
            .header("x-respond-status", "303")
            .header("x-respond-location", "https://login.example/authorize?x=1"),
    )
    .await;
    assert_eq!(res.headers()["location"], "https://login.example/authorize?x=1");
}

/// The layer's part in an upgrade, with scripted responses (nothing is upgraded here; see
/// `a_real_upgrade_through_the_layer_is_pinned_and_tunnels_bytes`).
#[tokio::test]
async fn upgrade_requests_are_pinned_and_the_101_carries_the_cookie() {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    );
    let svc = ServiceBuilder::new().layer(layer).service(backend("s1"));
    let upgrade = || {
        get()
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-respond-status", "101")
    };
    let res = call(&svc, upgrade()).await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(all(res.headers(), "set-cookie").len(), 1, "a new session is set on the 101");
    let res = call(&svc, upgrade().header("cookie", format!("SRV={}", token("SRV", "s2")))).await;
    assert_eq!(res.headers()["x-backend"], "s2", "the upgrade is pinned");
    assert!(all(res.headers(), "set-cookie").is_empty());
}

/// A real upgrade through the layer: a hyper server whose service is the layer over a
/// stand-in balancer that switches to an echo protocol on `Upgrade: echo` (answering with
/// the endpoint's name before each echo), and a hyper client that upgrades and then talks
/// over the connection. The upgrade needs the request's extensions (hyper's `OnUpgrade`) to
/// pass through the layer untouched.
#[tokio::test]
async fn a_real_upgrade_through_the_layer_is_pinned_and_tunnels_bytes() {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("SRV").build().unwrap(),
        signed(),
    );
    let balancer = service_fn(|mut req: Request<Incoming>| async move {
        let key =
            PinnedEndpoint::<String>::take(req.extensions_mut()).map_or("s1".to_owned(), |p| p.0);
        assert_eq!(req.headers()["upgrade"], "echo");
        let upgrade = hyper::upgrade::on(&mut req);
        let name = key.clone();
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.expect("the connection is upgraded"));
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                let echo = [format!("{name}:").as_bytes(), &buf[..n]].concat();
                if io.write_all(&echo).await.is_err() {
                    break;
                }
            }
        });
        let mut res = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Empty::<Bytes>::new())
            .unwrap();
        ServedBy(key).insert(res.extensions_mut());
        Ok::<_, Infallible>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(balancer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades(),
            );
        }
    });

    // Upgrades a new connection, sending `cookie` if any; returns the `Set-Cookie` headers of
    // the 101 and what the tunnel answers to `ping`.
    let upgrade = async |cookie: Option<String>| {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        let mut req = Request::get("/").header("host", "shop").header("connection", "upgrade");
        req = req.header("upgrade", "echo");
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let res = sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let set_cookies = all(res.headers(), "set-cookie");
        let mut io = TokioIo::new(hyper::upgrade::on(res).await.expect("the client upgrades"));
        io.write_all(b"ping").await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ping") {
            let mut buf = [0u8; 64];
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0, "the tunnel closed after {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
        (set_cookies, String::from_utf8(answer).unwrap())
    };

    // A new session: the 101 carries its cookie, and the tunnel reaches the balanced endpoint.
    let (set_cookies, answer) = upgrade(None).await;
    assert_eq!(answer, "s1:ping");
    assert_eq!(set_cookies.len(), 1, "{set_cookies:?}");
    let pair = set_cookies[0].split(';').next().unwrap().to_owned();
    let issued = pair.strip_prefix("SRV=").expect("our cookie");
    let claims = signed().decode(issued, Binding { name: "SRV", scope: "SRV" }).unwrap();
    assert_eq!(claims.endpoint, b"s1");
    // A session on s2 (the stand-in balances to s1): the tunnel reaches s2, nothing re-issued.
    let (set_cookies, answer) = upgrade(Some(format!("SRV={}", token("SRV", "s2")))).await;
    assert_eq!(answer, "s2:ping", "the upgraded connection is pinned");
    assert!(set_cookies.is_empty(), "{set_cookies:?}");
}

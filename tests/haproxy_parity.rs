//! Differential tests: the same requests through real HAProxy 2.6 (Debian's package) and
//! through the example gateway configured the same way, asserting the same routing decision,
//! the same `Set-Cookie` (value and attributes), the same cookies reaching the origin and the
//! same cache protection, case by case. Intended differences are asserted as such.
//!
//! The origins are the ones of `reference/haproxy/haproxy-sticky.cfg`: two hyper servers, `s1`
//! and `s2`, answering `X-Server` and `X-Seen-Cookie`, with a `Set-Cookie` of their own on
//! `/app-srv`, `/app-jsession` and `/logout`, an `ETag` on `/etag` and `Cache-Control:
//! max-age=60` on `/maxage`.
//!
//! `.ci/run` installs HAProxy. Where it is missing and `CI` is not set, each test reports
//! itself skipped (`SKIPPED <test>: ...` in `cargo test`'s output, see
//! `tests/common/external.rs`) and compares nothing: `cargo test` must work on a fresh
//! machine. Under CI a missing HAProxy fails them, and so does any version but 2.6.
//!
//! Ports: HAProxy listens on a socket this test bound (port 0, kept open) and handed to it as
//! its standard input (`bind fd@0`): no port is ever picked, freed and reused, so no other
//! process can take it in between. One listener serves every mode; the `Host` header chooses
//! the mode's backend, as it chooses the route in the gateway.

mod common;
mod gateway_process;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_process::{Gateway, TempFile, start_gateway};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

// ----- The origins. -----

fn origin_answer(name: &'static str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let seen = req
        .headers()
        .get_all("cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let mut res = Response::builder().header("x-server", name).header("x-seen-cookie", seen);
    let path = req.uri().path();
    if path.starts_with("/app-srv") {
        res = res.header("set-cookie", "SRV=app-value; Path=/; Max-Age=3600");
    } else if path.starts_with("/app-jsession") {
        res = res.header("set-cookie", "JSESSIONID=abc123; Path=/; HttpOnly");
    } else if path.starts_with("/logout") {
        res = res.header("set-cookie", "SRV=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/");
    } else if path.starts_with("/etag") {
        res = res.header("etag", "\"v1\"");
    } else if path.starts_with("/maxage") {
        res = res.header("cache-control", "max-age=60");
    }
    res.body(Full::new(Bytes::from(format!("{name}\n")))).unwrap()
}

async fn origin(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(origin_answer(name, &req))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

// ----- The two proxies, configured alike. -----

/// One persistence mode: HAProxy's `cookie` line and the gateway's equivalent stanza.
struct Mode {
    name: &'static str,
    haproxy: &'static str,
    gateway: &'static str,
}

const MODES: &[Mode] = &[
    Mode {
        name: "insert",
        haproxy: "cookie SRV insert indirect nocache",
        gateway: "{sessionName: SRV, type: Cookie}\n          x-session-persistence: {codec: plain, strategy: insert, indirect: true, nocache: true, secure: false, httpOnly: false, sameSite: Omit}",
    },
    Mode {
        name: "direct",
        haproxy: "cookie SRV insert nocache",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, strategy: insert, indirect: false, nocache: true, secure: false, httpOnly: false, sameSite: Omit}",
    },
    Mode {
        name: "rewrite",
        haproxy: "cookie SRV rewrite",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, strategy: rewrite}",
    },
    Mode {
        name: "prefix",
        haproxy: "cookie JSESSIONID prefix nocache",
        gateway: "{sessionName: JSESSIONID}\n          x-session-persistence: {codec: plain, strategy: prefix}",
    },
    Mode {
        name: "dates",
        haproxy: "cookie SRV insert indirect nocache maxidle 30m maxlife 8h",
        gateway: "{sessionName: SRV, idleTimeout: 30m, absoluteTimeout: 8h}\n          x-session-persistence: {codec: plain, nocache: true, secure: false, httpOnly: false, sameSite: Omit}",
    },
    Mode {
        name: "attrs",
        haproxy: "cookie SRV insert indirect nocache httponly secure domain .example.com domain .example.net attr \"SameSite=Lax\" attr \"Priority=High\"",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, nocache: true, secure: true, httpOnly: true, sameSite: Lax, domain: [.example.com, .example.net], attributes: [Priority=High]}",
    },
    Mode {
        name: "postonly",
        haproxy: "cookie SRV insert indirect postonly",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, postonly: true, secure: false, httpOnly: false, sameSite: Omit}",
    },
    Mode {
        name: "preserve",
        haproxy: "cookie SRV insert indirect preserve nocache",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, preserve: true, nocache: true, secure: false, httpOnly: false, sameSite: Omit}",
    },
    Mode {
        name: "passive",
        haproxy: "cookie SRV",
        gateway: "{sessionName: SRV}\n          x-session-persistence: {codec: plain, strategy: passive}",
    },
];

struct Haproxy {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
    _config: TempFile,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy 2.6, or `None` (reported as skipped) where it is missing outside CI.
fn haproxy_program() -> Option<common::external::Program> {
    let haproxy = common::external::require("haproxy", "-v", "apt-get install haproxy")?;
    assert!(
        haproxy.version.starts_with("HAProxy version 2.6."),
        "the differential tests compare with HAProxy 2.6 (Debian 12's package); found {:?}",
        haproxy.version
    );
    Some(haproxy)
}

async fn start_haproxy(haproxy: &str, s1: SocketAddr, s2: SocketAddr) -> Haproxy {
    // Bound here and kept: HAProxy inherits it as its standard input.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = String::from(
        "global\n    nbthread 1\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n    balance roundrobin\nfrontend proxies\n    bind fd@0\n",
    );
    for mode in MODES {
        config.push_str(&format!(
            "    use_backend p_{name} if {{ hdr(host) -i {name}.test }}\n",
            name = mode.name
        ));
    }
    for mode in MODES {
        config.push_str(&format!(
            "backend p_{name}\n    {line}\n    server s1 {s1} cookie s1\n    server s2 {s2} cookie s2\n",
            name = mode.name,
            line = mode.haproxy,
        ));
    }
    let file = TempFile::new(&config);
    let mut child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&file.0)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haproxy starts");
    let stderr = gateway_process::drain(child.stderr.take().expect("piped"));
    let haproxy = Haproxy { child, url, stderr, _config: file };
    // The socket listens already, so a request waits in its backlog until HAProxy serves it;
    // one that gets no answer means HAProxy did not start.
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let probe = Request::get(&haproxy.url).header("host", "insert.test").body(Empty::new());
    let answer = tokio::time::timeout(Duration::from_secs(20), client.request(probe.unwrap()));
    if !matches!(answer.await, Ok(Ok(ref res)) if res.status() == 200) {
        panic!("HAProxy does not answer; its stderr:\n{}", haproxy.stderr.lock().unwrap());
    }
    haproxy
}

async fn start_our_gateway(s1: SocketAddr, s2: SocketAddr) -> Gateway {
    let mut yaml = format!(
        "services:\n  - name: origins\n    endpoints: [{{address: \"{s1}\", id: s1}}, {{address: \"{s2}\", id: s2}}]\nroutes:\n"
    );
    for mode in MODES {
        yaml.push_str(&format!(
            "  - apiVersion: gateway.networking.k8s.io/v1\n    kind: HTTPRoute\n    metadata: {{name: {name}}}\n    spec:\n      hostnames: [{name}.test]\n      rules:\n        - backendRefs: [{{name: origins}}]\n          sessionPersistence: {stanza}\n",
            name = mode.name,
            stanza = mode.gateway,
        ));
    }
    start_gateway(&yaml).await
}

// ----- Requests and what to compare. -----

/// What one proxy answered, reduced to what the comparison looks at.
#[derive(Debug)]
struct Answer {
    server: String,
    seen_cookie: String,
    set_cookies: Vec<String>,
    cache_control: Vec<String>,
}

struct Bed {
    client: Client<HttpConnector, Empty<Bytes>>,
    haproxy: Haproxy,
    gateway: Gateway,
}

impl Bed {
    async fn send(
        &self,
        url: &str,
        host: &str,
        method: &Method,
        path: &str,
        cookie: Option<&str>,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{url}{path}"))
            .header("host", host);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let res =
            self.client.request(req.body(Empty::new()).unwrap()).await.expect("the proxy answers");
        assert_eq!(res.status(), 200, "{url}{path} ({host})");
        let all = |name: &str| {
            res.headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let answer = Answer {
            server: all("x-server").join(","),
            seen_cookie: all("x-seen-cookie").join(","),
            set_cookies: all("set-cookie"),
            cache_control: all("cache-control"),
        };
        let _ = res.into_body().collect().await;
        answer
    }

    /// The same request through both proxies.
    async fn both(
        &self,
        mode: &str,
        method: Method,
        path: &str,
        cookie: Option<&str>,
    ) -> (Answer, Answer) {
        let host = format!("{mode}.test");
        let theirs = self.send(&self.haproxy.url, &host, &method, path, cookie).await;
        let ours = self.send(&self.gateway.url, &host, &method, path, cookie).await;
        (theirs, ours)
    }
}

/// A Set-Cookie header as name, value and a normalised attribute set: names lower-cased,
/// `Domain` without a leading dot (RFC 6265 §5.2.3 ignores it), values kept.
fn parse_set_cookie(header: &str) -> (String, String, BTreeSet<String>) {
    let mut parts = header.split(';');
    let (name, value) = parts.next().unwrap().trim().split_once('=').unwrap();
    let attributes = parts
        .map(|a| {
            let a = a.trim();
            match a.split_once('=') {
                Some((k, v)) => {
                    let k = k.trim().to_ascii_lowercase();
                    let v = v.trim();
                    let v = if k == "domain" { v.trim_start_matches('.') } else { v };
                    format!("{k}={v}")
                }
                None => a.to_ascii_lowercase(),
            }
        })
        .collect();
    (name.to_owned(), value.to_owned(), attributes)
}

/// The persistence cookie of an answer, if any, as (value, attributes).
fn session_cookie(answer: &Answer, name: &str) -> Option<(String, BTreeSet<String>)> {
    let mut found =
        answer.set_cookies.iter().map(|h| parse_set_cookie(h)).filter(|(n, _, _)| n == name);
    let first = found.next().map(|(_, v, a)| (v, a));
    assert!(found.next().is_none(), "one {name} cookie at most: {answer:?}");
    first
}

/// Both answers made the same decision, set the same cookie for the server that served, let
/// the origin see the same cookies and protected caches alike. `pinned` says whether the
/// request must have reached a given server on both.
fn assert_same(case: &str, name: &str, theirs: &Answer, ours_: &Answer, pinned: Option<&str>) {
    if let Some(server) = pinned {
        assert_eq!(theirs.server, server, "{case}: HAProxy routing");
        assert_eq!(ours_.server, server, "{case}: gateway routing");
    }
    assert_eq!(theirs.seen_cookie, ours_.seen_cookie, "{case}: what the origin saw");
    match (session_cookie(theirs, name), session_cookie(ours_, name)) {
        (None, None) => {}
        (Some((tv, ta)), Some((ov, oa))) => {
            // A cookie naming a server names the one that served (balanced choices may differ).
            assert_eq!(
                tv.replace(&theirs.server, "<served>"),
                ov.replace(&ours_.server, "<served>"),
                "{case}: cookie value"
            );
            assert_eq!(ta, oa, "{case}: cookie attributes");
        }
        (t, o) => panic!("{case}: HAProxy set {t:?}, the gateway set {o:?}"),
    }
    // Other Set-Cookie headers (the origin's own) pass alike.
    let others = |a: &Answer| {
        a.set_cookies
            .iter()
            .filter(|h| !h.starts_with(&format!("{name}=")))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(others(theirs), others(ours_), "{case}: the origin's own cookies");
    let private = |a: &Answer| a.cache_control.iter().any(|v| v.eq_ignore_ascii_case("private"));
    assert_eq!(private(theirs), private(ours_), "{case}: Cache-Control: private");
    assert_eq!(
        theirs.cache_control.len(),
        ours_.cache_control.len(),
        "{case}: Cache-Control headers {theirs:?} {ours_:?}"
    );
}

/// Both proxies in front of the same origins; `None` (the test reported as skipped) where
/// HAProxy is missing outside CI.
async fn bed() -> Option<(Bed, Vec<tokio::task::JoinHandle<()>>)> {
    let binary = haproxy_program()?;
    let (s1, t1) = origin("s1").await;
    let (s2, t2) = origin("s2").await;
    let haproxy = start_haproxy(&binary.name, s1, s2).await;
    let gateway = start_our_gateway(s1, s2).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    Some((Bed { client, haproxy, gateway }, vec![t1, t2]))
}

// ----- The cases. -----

/// A case: its name, the request (method, path, Cookie) and the server it must be pinned to.
type Case = (&'static str, Method, &'static str, Option<&'static str>, Option<&'static str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_indirect_nocache() {
    let Some((bed, _origins)) = bed().await else { return };
    let get = Method::GET;
    let cases: &[Case] = &[
        ("no cookie", get.clone(), "/", None, None),
        ("valid cookie", get.clone(), "/", Some("SRV=s2"), Some("s2")),
        ("valid among others", get.clone(), "/", Some("a=1; SRV=s2; b=2"), Some("s2")),
        ("first of our name wins", get.clone(), "/", Some("SRV=s1; SRV=s2"), Some("s1")),
        ("at the start", get.clone(), "/", Some("SRV=s2; a=1"), Some("s2")),
        ("unknown id", get.clone(), "/", Some("SRV=bogus"), None),
        ("empty id", get.clone(), "/", Some("SRV="), None),
        ("names are case-sensitive", get.clone(), "/", Some("srv=s2"), None),
        ("values are case-sensitive", get.clone(), "/", Some("SRV=S2"), None),
        ("ETag: cacheable", get.clone(), "/etag", None, None),
        ("max-age: cacheable", get.clone(), "/maxage", None, None),
        ("POST is not cacheable", Method::POST, "/etag", None, None),
        ("valid cookie on a cacheable answer", get.clone(), "/etag", Some("SRV=s1"), Some("s1")),
        ("the origin's SRV is replaced", get.clone(), "/app-srv", None, None),
        ("the origin's SRV is dropped", get.clone(), "/app-srv", Some("SRV=s2"), Some("s2")),
    ];
    for (case, method, path, cookie, pinned) in cases {
        let (theirs, ours) = bed.both("insert", method.clone(), path, *cookie).await;
        assert_same(case, "SRV", &theirs, &ours, *pinned);
    }
    // Intended difference: HAProxy does not strip quotes (`SRV="s2"` is an unknown id); the
    // gateway accepts quoted values, as Envoy does and as RFC 6265's cookie-value allows.
    let (theirs, ours) = bed.both("insert", Method::GET, "/", Some("SRV=\"s2\"")).await;
    assert!(session_cookie(&theirs, "SRV").is_some(), "HAProxy re-issues: {theirs:?}");
    assert_eq!(ours.server, "s2");
    assert!(session_cookie(&ours, "SRV").is_none(), "the gateway honours it: {ours:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_without_indirect_lets_the_origin_see_the_cookie() {
    let Some((bed, _origins)) = bed().await else { return };
    for (case, cookie, pinned) in
        [("valid", "SRV=s2; a=1", Some("s2")), ("unknown", "a=1; SRV=zz", None)]
    {
        let (theirs, ours) = bed.both("direct", Method::GET, "/", Some(cookie)).await;
        assert_same(case, "SRV", &theirs, &ours, pinned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_replaces_the_origins_value() {
    let Some((bed, _origins)) = bed().await else { return };
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("the origin's cookie carries the id", "/app-srv", None, None),
        ("no origin cookie, nothing set", "/", None, None),
        ("valid cookie passes to the origin", "/", Some("SRV=s2"), Some("s2")),
        ("rewritten on every answer", "/app-srv", Some("SRV=s1"), Some("s1")),
    ];
    for (case, path, cookie, pinned) in cases {
        let (theirs, ours) = bed.both("rewrite", Method::GET, path, *cookie).await;
        assert_same(case, "SRV", &theirs, &ours, *pinned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_wraps_the_applications_cookie() {
    let Some((bed, _origins)) = bed().await else { return };
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("the origin's cookie is prefixed", "/app-jsession", None, None),
        ("the prefix comes off", "/", Some("x=1; JSESSIONID=s2~abc123; y=2"), Some("s2")),
        ("split at the first ~", "/", Some("JSESSIONID=s2~a~b"), Some("s2")),
        ("an unknown id is still stripped", "/", Some("JSESSIONID=zz~abc"), None),
        ("no ~: passed unchanged", "/", Some("JSESSIONID=abc123"), None),
        (
            "prefixed again with a valid cookie",
            "/app-jsession",
            Some("JSESSIONID=s1~old"),
            Some("s1"),
        ),
    ];
    for (case, path, cookie, pinned) in cases {
        let (theirs, ours) = bed.both("prefix", Method::GET, path, *cookie).await;
        assert_same(case, "JSESSIONID", &theirs, &ours, *pinned);
    }
}

/// HAProxy's date: `(seconds + 3) >> 2` in five base64 characters (reference/haproxy).
fn date(seconds: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let units = (seconds + 3) >> 2;
    (0..5).map(|i| ALPHABET[((units >> (24 - 6 * i)) & 0x3f) as usize] as char).collect()
}

fn undate(text: &str) -> u64 {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    text.bytes().fold(0u64, |v, c| (v << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u64)
        << 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxidle_and_maxlife_dates() {
    let Some((bed, _origins)) = bed().await else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let cases: Vec<(&str, Option<String>, Option<&str>)> = vec![
        ("no cookie: both dates now", None, None),
        (
            "10 minutes idle: refreshed, first date kept",
            Some(format!("SRV=s2|{}|{}", date(now - 600), date(now - 3600))),
            Some("s2"),
        ),
        (
            "31 minutes idle: expired",
            Some(format!("SRV=s2|{}|{}", date(now - 31 * 60), date(now - 3600))),
            None,
        ),
        (
            "9 hours old: too old",
            Some(format!("SRV=s2|{}|{}", date(now - 600), date(now - 9 * 3600))),
            None,
        ),
        ("no dates: accepted, dated", Some("SRV=s2".to_owned()), Some("s2")),
        ("bad dates: accepted, dated", Some("SRV=s2|!!!!!|!!!!!".to_owned()), Some("s2")),
        (
            "two days ahead: ignored",
            Some(format!("SRV=s2|{}|{}", date(now + 2 * 86_400), date(now - 3600))),
            None,
        ),
    ];
    for (case, cookie, pinned) in cases {
        let (theirs, ours_) = bed.both("dates", Method::GET, "/", cookie.as_deref()).await;
        if let Some(server) = pinned {
            assert_eq!((theirs.server.as_str(), ours_.server.as_str()), (server, server), "{case}");
        }
        assert_eq!(theirs.seen_cookie, ours_.seen_cookie, "{case}");
        let (tv, ta) = session_cookie(&theirs, "SRV").expect(case);
        let (ov, oa) = session_cookie(&ours_, "SRV").expect(case);
        assert_eq!(ta, oa, "{case}: attributes");
        let (t, o): (Vec<&str>, Vec<&str>) = (tv.split('|').collect(), ov.split('|').collect());
        assert_eq!((t.len(), o.len()), (3, 3), "{case}: {tv} / {ov}");
        assert_eq!(t[0], theirs.server, "{case}");
        assert_eq!(o[0], ours_.server, "{case}");
        // Both write "now" for the last date; the two requests may straddle a 4 s step.
        assert!(undate(t[1]).abs_diff(undate(o[1])) <= 4, "{case}: last {tv} / {ov}");
        if pinned.is_some()
            && cookie.as_deref().is_some_and(|c| c.matches('|').count() == 2 && !c.contains('!'))
        {
            assert_eq!(t[2], o[2], "{case}: the first date is kept");
        } else {
            assert!(undate(t[2]).abs_diff(undate(o[2])) <= 4, "{case}: first {tv} / {ov}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cookie_attribute() {
    let Some((bed, _origins)) = bed().await else { return };
    let (theirs, ours) = bed.both("attrs", Method::GET, "/", None).await;
    assert_same("all attributes", "SRV", &theirs, &ours, None);
    let (_, attributes) = session_cookie(&ours, "SRV").unwrap();
    for expected in [
        "path=/",
        "domain=example.com",
        "domain=example.net",
        "httponly",
        "secure",
        "samesite=Lax",
        "priority=High",
    ] {
        assert!(attributes.contains(expected), "{expected} missing: {attributes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postonly_preserve_and_passive() {
    let Some((bed, _origins)) = bed().await else { return };
    for method in [Method::GET, Method::PUT, Method::POST] {
        let (theirs, ours) = bed.both("postonly", method.clone(), "/", None).await;
        assert_same(&format!("postonly {method}"), "SRV", &theirs, &ours, None);
    }
    let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        ("the application's SRV passes, nothing inserted", "/app-srv", None, None),
        ("a logout ends persistence", "/logout", Some("SRV=s2"), Some("s2")),
        ("plain answer inserts", "/", None, None),
    ];
    for (case, path, cookie, pinned) in cases {
        let (theirs, ours) = bed.both("preserve", Method::GET, path, *cookie).await;
        assert_same(case, "SRV", &theirs, &ours, *pinned);
    }
    for (case, cookie, pinned) in [
        ("passive: nothing written", None, None),
        ("passive: read", Some("SRV=s2; a=1"), Some("s2")),
    ] {
        let (theirs, ours) = bed.both("passive", Method::GET, "/", cookie).await;
        assert_same(case, "SRV", &theirs, &ours, pinned);
    }
}

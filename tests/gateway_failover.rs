//! Failover through the gateway binary with its default configuration (pooled upstream
//! connections, two serving threads, no `x-balancer` block): a killed endpoint, an endpoint
//! that accepts no connections, a POST whose pinned endpoint is dead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

mod gateway_process;
use gateway_process::{Gateway, start_gateway};

/// A backend named `name` that answers every request with its name (header `x-backend`) and
/// the request's body; killing it closes its port and every connection to it at once.
struct Backend {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Dropped with this task: aborting it ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<Incoming>| async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let body = body.unwrap_or_default();
                            let res =
                                Response::builder().header("x-backend", name).body(Full::new(body));
                            Ok::<_, Infallible>(res.unwrap())
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, server }
    }

    fn kill(&self) {
        self.server.abort();
    }
}

fn config(endpoints: &[(&str, SocketAddr)], extra: &str) -> String {
    config_with(endpoints, extra, "")
}

/// `service` is added to the service's entry (`appProtocol: kubernetes.io/h2c`).
fn config_with(endpoints: &[(&str, SocketAddr)], extra: &str, service: &str) -> String {
    let list: Vec<String> =
        endpoints.iter().map(|(id, addr)| format!("{{address: \"{addr}\", id: {id}}}")).collect();
    format!(
        "{extra}services:
  - name: echo
    {service}endpoints: [{}]
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: shop}}
    spec:
      rules:
        - backendRefs: [{{name: echo}}]
          sessionPersistence: {{cookie: {{name: sticky}}}}
          x-session-persistence: {{secure: false}}
",
        list.join(", ")
    )
}

fn jar() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

fn served_by(res: &reqwest::Response) -> String {
    res.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

fn set_cookies(res: &reqwest::Response) -> usize {
    res.headers().get_all("set-cookie").iter().count()
}

/// One request of a session as the client saw it.
struct Seen {
    sent: Instant,
    done: Instant,
    /// The serving backend, or the error (status or transport).
    outcome: Result<String, String>,
    set_cookies: usize,
}

async fn request(client: &reqwest::Client, url: &str) -> Seen {
    let sent = Instant::now();
    let res = client.get(url).send().await;
    let done = Instant::now();
    match res {
        Ok(res) if res.status().is_success() => {
            let (outcome, set_cookies) = (Ok(served_by(&res)), set_cookies(&res));
            Seen { sent, done, outcome, set_cookies }
        }
        Ok(res) => Seen { sent, done, outcome: Err(res.status().to_string()), set_cookies: 0 },
        Err(error) => Seen { sent, done, outcome: Err(error.to_string()), set_cookies: 0 },
    }
}

/// Opens `n` sessions; returns each client and the backend its session is on.
async fn open_sessions(gw: &Gateway, n: usize) -> Vec<(reqwest::Client, String)> {
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let client = jar();
        let seen = request(&client, &format!("{}/", gw.url)).await;
        let backend = seen.outcome.expect("a session opens");
        assert_eq!(seen.set_cookies, 1);
        sessions.push((client, backend));
    }
    sessions
}

/// 300 sessions over three endpoints make requests; one endpoint is killed and stays in the
/// configuration for 60 s of steady traffic. Only requests in flight at the kill may fail;
/// each of the victim's sessions gets exactly one new cookie, the others none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_endpoint_costs_only_the_requests_in_flight_and_re_pins_its_sessions_once() {
    let [a, b, c] =
        [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let gw = start_gateway(&config(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], "")).await;
    let sessions = open_sessions(&gw, 300).await;
    let victims = sessions.iter().filter(|(_, on)| on == "a").count();
    assert!(victims > 30, "a has sessions: {victims}");

    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/", gw.url);
    let mut traffic = JoinSet::new();
    for (i, (client, _)) in sessions.iter().enumerate() {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        traffic.spawn(async move {
            let mut seen = Vec::new();
            // Spread out: about 300 requests a second over all sessions.
            tokio::time::sleep(Duration::from_millis((i as u64 * 3) % 1000)).await;
            while !stop.load(Ordering::Relaxed) {
                seen.push(request(&client, &url).await);
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            (i, seen)
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    a.kill();
    // The dead endpoint stays configured: ejections end every `ejectFor` (10 s) and it is
    // tried again, six times over.
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_session: HashMap<usize, Vec<Seen>> = HashMap::new();
    while let Some(done) = traffic.join_next().await {
        let (i, seen) = done.unwrap();
        by_session.insert(i, seen);
    }
    let mut in_flight_failures = 0;
    let mut requests = 0;
    for (i, (_, first)) in sessions.iter().enumerate() {
        let seen = &by_session[&i];
        requests += seen.len();
        let mut new_cookies = 0;
        for s in seen {
            match &s.outcome {
                Ok(_) => {}
                Err(error) => {
                    let in_flight = s.sent <= killed_at && s.done >= killed_at;
                    assert!(
                        in_flight,
                        "session {i} on {first}: a request failed ({error}) {:?} after the kill",
                        s.sent.checked_duration_since(killed_at)
                    );
                    in_flight_failures += 1;
                }
            }
            if s.sent > killed_at {
                new_cookies += s.set_cookies;
                assert_ne!(s.outcome.as_deref(), Ok("a"), "a is dead");
            }
        }
        let expected = usize::from(first == "a");
        assert_eq!(new_cookies, expected, "session {i} on {first}: new cookies after the kill");
    }
    assert!(requests > 300 * 50, "steady traffic for a minute: {requests} requests");
    eprintln!(
        "{requests} requests, {victims} sessions moved, {in_flight_failures} failed in flight"
    );
}

/// An endpoint that accepts no connections (its listen queue full): requests meant for it
/// succeed elsewhere within the connect timeout, and it is ejected once for both serving
/// threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_accepts_no_connection_is_ejected_once_for_every_thread() {
    let (b, c) = (Backend::start("b").await, Backend::start("c").await);
    // A listen queue of one, filled, never accepted: later connects get no answer at all.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = socket.listen(0).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let mut filling = Vec::new();
    for _ in 0..4 {
        let connect = TcpStream::connect(silent_addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            filling.push(stream);
        }
    }
    let probe = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(silent_addr));
    assert!(probe.await.is_err(), "the silent endpoint's queue is full");

    let gw = start_gateway(&config(
        &[("silent", silent_addr), ("b", b.addr), ("c", c.addr)],
        "timeouts: {connect: 1s}\n",
    ))
    .await;
    let url = format!("{}/", gw.url);
    let mut slowest = Duration::ZERO;
    // Fresh clients: new connections, spread over both serving threads.
    for _ in 0..60 {
        let seen = request(&jar(), &url).await;
        let backend = seen.outcome.expect("every request succeeds");
        assert_ne!(backend, "silent");
        slowest = slowest.max(seen.done - seen.sent);
    }
    assert!(slowest < Duration::from_secs(3), "within the connect timeout: {slowest:?}");
    let log = gw.stderr.lock().unwrap().clone();
    let ejections = log.matches("endpoint ejected after a failure").count();
    assert_eq!(ejections, 1, "one ejection for both threads:\n{log}");
    eprintln!("slowest of 60 requests: {slowest:?} (connect timeout 1 s)");
    drop(filling);
}

/// A POST with a body, pinned to an endpoint that died: redispatched, the body arrives
/// intact, the session re-pinned with one new cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dead_pinned_endpoint_is_redispatched_with_its_body() {
    post_to_a_dead_pinned_endpoint("").await;
}

/// The same with endpoints reached over h2c (one multiplexed connection per endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_a_dead_pinned_h2c_endpoint_is_redispatched_with_its_body() {
    post_to_a_dead_pinned_endpoint("appProtocol: kubernetes.io/h2c\n    ").await;
}

async fn post_to_a_dead_pinned_endpoint(service: &str) {
    let [a, b] = [Backend::start("a").await, Backend::start("b").await];
    let gw = start_gateway(&config_with(&[("a", a.addr), ("b", b.addr)], "", service)).await;
    let url = format!("{}/", gw.url);
    let client = loop {
        let client = jar();
        if request(&client, &url).await.outcome.as_deref() == Ok("a") {
            break client;
        }
    };
    a.kill();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let res = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "b");
    assert_eq!(set_cookies(&res), 1, "re-pinned once");
    assert_eq!(res.bytes().await.unwrap(), Bytes::from(body), "the body arrived intact");
    let again = request(&client, &url).await;
    assert_eq!((again.outcome, again.set_cookies), (Ok("b".to_owned()), 0));
}

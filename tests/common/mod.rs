//! Real parts for end-to-end tests: hyper backends on loopback, an endpoint service that
//! proxies to them, and a server for the layer + balancer stack.
#![allow(dead_code, unreachable_pub)]

pub mod external;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::{BoxError, Service, ServiceExt};
use tower_session_persistence::PinnedUnavailable;

/// A running backend: answers `200` with its name in the body and `x-backend` header, and
/// echoes the `Cookie` header it received in `x-seen-cookie`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// While set, the backend accepts connections but never answers.
    pub stalled: Arc<AtomicBool>,
    pub release: Arc<Notify>,
    /// How many requests are being held by the stall now.
    pub held: Arc<AtomicUsize>,
    /// How many connections are open now.
    pub connections: Arc<AtomicUsize>,
    killed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Kills the backend as a crashed process would go: stops listening (new connections are
    /// refused) and closes every open connection, dropping the requests on them. Returns once
    /// the listener is closed and every connection is gone.
    pub async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let _ = self.killed.send(true);
        for _ in 0..2000 {
            if self.connections.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("connections of a killed backend did not close");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn backend(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicUsize::new(0));
    let owned = name.to_owned();
    let (s, r, h) = (stalled.clone(), release.clone(), held.clone());
    let connections = Arc::new(AtomicUsize::new(0));
    let (killed, on_kill) = tokio::sync::watch::channel(false);
    let open = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (name, stalled, release, held) = (owned.clone(), s.clone(), r.clone(), h.clone());
            let (open, mut on_kill) = (open.clone(), on_kill.clone());
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (name, stalled, release, held) =
                        (name.clone(), stalled.clone(), release.clone(), held.clone());
                    async move {
                        if stalled.load(Ordering::SeqCst) {
                            let released = release.notified();
                            held.fetch_add(1, Ordering::SeqCst);
                            released.await;
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        let seen = req
                            .headers()
                            .get_all("cookie")
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect::<Vec<_>>()
                            .join(" | ");
                        let res = Response::builder()
                            .header("x-backend", &name)
                            .header("x-seen-cookie", seen)
                            .header("set-cookie", "app=1; Path=/; Priority=High")
                            .body(http_body_util::Full::new(bytes::Bytes::from(name)))
                            .unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = on_kill.wait_for(|killed| *killed) => {}
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Backend { name: name.to_owned(), addr, stalled, release, held, connections, killed, task }
}

/// An endpoint service: forwards requests to one backend address.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    addr: SocketAddr,
}

impl Upstream {
    pub fn new(client: &Client<HttpConnector, Body>, addr: SocketAddr) -> Self {
        Self { client: client.clone(), addr }
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        *req.uri_mut() = Uri::try_from(format!("http://{}{}", self.addr, path)).unwrap();
        let client = self.client.clone();
        Box::pin(async move {
            let res = client.request(req).await?;
            Ok(res.map(Body::new))
        })
    }
}

/// Turns a balancer error into the response a gateway would give.
pub fn error_response(error: BoxError) -> Response<Body> {
    let status = if error.is::<PinnedUnavailable>() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    };
    Response::builder().status(status).body(Body::from(error.to_string())).unwrap()
}

/// Serves `svc` on a loopback port; returns the base URL.
pub async fn serve<S>(svc: S) -> String
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let svc = svc.clone();
        async move { svc.oneshot(req).await.unwrap_or_else(error_response) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

//! Session persistence around a hand-written hyper service, with no axum at all.
//!
//! The stack is plain tower: the persistence layer, over the crate's balancer, over `Proxy`, a
//! hand-written service that forwards a request to one backend with hyper-util's client.
//! hyper serves it through `TowerToHyperService`. `cargo run --example hyper_service` starts
//! three hyper backends and the proxy on loopback ports, sends requests with hyper's client
//! (cookies handled by hand), prints which backend answered, and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, ResponseFuture, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{PinnedUnavailable, SessionPersistenceLayer};

/// Forwards each request to one backend, streaming both bodies; cheap to clone.
#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, Incoming>,
    backend: SocketAddr,
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(())) // the client's pool queues requests itself
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(format!("http://{}{path}", self.backend)).expect("a URI");
        self.client.request(req)
    }
}

/// hyper drops the connection when a service fails, so failures become responses; beneath
/// the layer, so that it sees a rejected session as one.
type Body = Either<Incoming, Full<Bytes>>;
fn answer(result: Result<Response<Incoming>, BoxError>) -> Result<Response<Body>, BoxError> {
    Ok(match result {
        Ok(res) => res.map(Either::Left),
        Err(e) if e.is::<PinnedUnavailable>() => PinnedUnavailable::response().map(Either::Right),
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Either::Right(Full::from(e.to_string())))
            .expect("a valid response"),
    })
}

/// Which backend answered the client that kept its cookie, and each fresh client.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) with_cookie: Vec<String>,
    pub(crate) fresh: Vec<String>,
}

pub(crate) async fn run() -> Result<Report, BoxError> {
    let (client, (endpoints, discover)) =
        (Client::builder(TokioExecutor::new()), discover_channel());
    let client = client.build_http();
    for name in ["backend-1", "backend-2", "backend-3"] {
        let backend = backend(name).await?;
        endpoints.insert(name.to_owned(), Proxy { client: client.clone(), backend });
    }
    let policy = SessionPolicy::cookie("sid").build()?;
    let stack = ServiceBuilder::new()
        .layer(SessionPersistenceLayer::new(policy, SignedCodec::new([[7u8; 32]])?))
        .map_result(answer)
        .service(BalancerBuilder::new().group(1, discover).build());

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(stack.clone());
            let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            tokio::spawn(async move { server.serve_connection(TokioIo::new(stream), svc).await });
        }
    });

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let get = async |cookie: Option<&str>| -> Result<(String, Option<String>), BoxError> {
        let mut req = Request::get(&url);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let res = client.request(req.body(Empty::new())?).await?;
        // Keep `name=value`; the attributes are for a cookie store.
        let set = res.headers().get("set-cookie").map(|v| v.to_str().map(|v| v.split(';').next()));
        let set = set.transpose()?.flatten().map(str::to_owned);
        let body = String::from_utf8(res.into_body().collect().await?.to_bytes().to_vec())?;
        println!("cookie: {:<5} -> {body}, set-cookie: {}", cookie.is_some(), set.is_some());
        Ok((body, set))
    };
    let (first, cookie) = get(None).await?;
    let cookie = cookie.ok_or("no session was issued")?;
    let mut with_cookie = vec![first];
    while with_cookie.len() < 6 {
        with_cookie.push(get(Some(&cookie)).await?.0);
    }
    if with_cookie.iter().any(|b| *b != with_cookie[0]) {
        return Err("the session left its backend".into());
    }
    let mut fresh = Vec::new();
    while fresh.len() < 12 {
        fresh.push(get(None).await?.0);
    }
    Ok(Report { with_cookie, fresh })
}

/// A hyper backend that answers its name.
async fn backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reply = hyper::service::service_fn(move |_: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conn = hyper::server::conn::http1::Builder::new();
            tokio::spawn(async move { conn.serve_connection(TokioIo::new(stream), reply).await });
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let report = run().await?;
    println!("the client with a cookie stayed on {}", report.with_cookie[0]);
    println!("fresh clients were balanced: {:?}", report.fresh);
    Ok(())
}

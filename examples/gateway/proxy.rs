//! The endpoint service: forwards one request to one backend address and streams the answer
//! back.
//!
//! This is what the balancer holds for each endpoint. It rewrites the URI to the endpoint,
//! keeps the client's `Host`, removes hop-by-hop headers both ways, adds the `X-Forwarded-*`
//! headers, and bounds the wait for the response head. Bodies are streamed, never collected;
//! protocol upgrades are handed to the [`upgrade`] module. HTTP/1.1 endpoints are reached over
//! the connections of their own [`pool`](crate::pool); h2c endpoints over hyper-util's client.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Service};

use crate::pool::Pool;
use crate::upgrade;

/// What HTTP/1.1 endpoints are made with: each gets its own connection pool, with this connect
/// timeout.
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    connect_timeout: Option<Duration>,
}

/// The client of h2c endpoints: one multiplexed connection per endpoint.
pub(crate) type H2cClient = Client<HttpConnector, Body>;

/// The address of the client that sent a request, put into its extensions by the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// The upstream did not answer within the configured timeout.
#[derive(Debug)]
pub(crate) struct UpstreamTimeout;

impl fmt::Display for UpstreamTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream did not answer in time")
    }
}

impl std::error::Error for UpstreamTimeout {}

/// What HTTP/1.1 endpoints are made with, for one serving thread.
pub(crate) fn client(connect_timeout: Option<Duration>) -> HttpClient {
    HttpClient { connect_timeout }
}

/// Builds a client that speaks HTTP/2 with prior knowledge (h2c) to its endpoints: gRPC
/// backends, Services whose port has `appProtocol: kubernetes.io/h2c`.
pub(crate) fn h2c_client(connect_timeout: Option<Duration>) -> H2cClient {
    builder().http2_only(true).build(connector(connect_timeout))
}

fn connector(connect_timeout: Option<Duration>) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(connect_timeout);
    connector
}

/// Keeps the `Host` header the request carries (`set_host` only fills it in when it is
/// missing).
fn builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(30)).set_host(true);
    builder
}

/// Forwards requests to one endpoint.
#[derive(Clone)]
pub(crate) struct Upstream {
    authority: Authority,
    sender: Sender,
    timeout: Option<Duration>,
    /// Whether the endpoint speaks HTTP/2 (h2c); otherwise HTTP/1.1.
    h2: bool,
}

/// How an endpoint's requests are sent.
#[derive(Clone)]
enum Sender {
    Http1(Pool),
    H2c(Box<H2cClient>),
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr, client: HttpClient, timeout: Option<Duration>) -> Self {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        let sender = Sender::Http1(Pool::new(addr, client.connect_timeout));
        Self { authority, sender, timeout, h2: false }
    }

    /// The same, for an endpoint that speaks h2c; `client` must be an [`h2c_client`].
    pub(crate) fn h2c(addr: SocketAddr, client: H2cClient, timeout: Option<Duration>) -> Self {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        Self { authority, sender: Sender::H2c(Box::new(client)), timeout, h2: true }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: a request waits for a connection in its own future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // An upgrade: the client's side of it, taken before the request goes on.
        let upgrade = upgrade::requested(&req).map(|protocol| {
            let client_side = hyper::upgrade::on(&mut req);
            (protocol, client_side)
        });
        let req = match prepare(req, &self.authority, self.h2) {
            Ok(mut req) => {
                if let Some((protocol, _)) = &upgrade {
                    upgrade::restore(req.headers_mut(), protocol.clone());
                }
                req
            }
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let sent = match &self.sender {
            Sender::Http1(pool) => {
                let (pool, mut req) = (pool.clone(), req);
                origin_form(&mut req, &self.authority);
                futures_util::future::Either::Left(async move { pool.send(req).await })
            }
            Sender::H2c(client) => {
                let sent = client.request(req);
                futures_util::future::Either::Right(async move {
                    Ok::<_, BoxError>(sent.await?.map(Body::new))
                })
            }
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let mut res = match timeout {
                Some(limit) => {
                    tokio::time::timeout(limit, sent).await.map_err(|_| UpstreamTimeout)?
                }
                None => sent.await,
            }?;
            let switched = match upgrade {
                Some((asked, client_side)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let protocol = res.headers().get(header::UPGRADE).cloned().unwrap_or(asked);
                    tokio::spawn(upgrade::tunnel(client_side, hyper::upgrade::on(&mut res)));
                    Some(protocol)
                }
                _ => None,
            };
            strip_hop_by_hop(res.headers_mut());
            if let Some(protocol) = switched {
                upgrade::restore(res.headers_mut(), protocol);
            }
            Ok(res)
        })
    }
}

/// What hyper-util's client did before writing an HTTP/1.1 request: a `Host` when there is
/// none, and the request target in origin-form (authority-form for `CONNECT`).
fn origin_form(req: &mut Request<Body>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let mut parts = http::uri::Parts::default();
    if req.method() == http::Method::CONNECT {
        parts.authority = Some(authority.clone());
    } else {
        parts.path_and_query = req.uri().path_and_query().cloned();
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Turns the client's request into the upstream request.
fn prepare(
    mut req: Request<Body>,
    authority: &Authority,
    h2: bool,
) -> Result<Request<Body>, BoxError> {
    let client_ip = req.extensions().get::<ClientAddr>().map(|addr| addr.0.ip().to_canonical());
    // HTTP/2 clients send no `Host`: the authority travels in the URI.
    let host = match req.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let path =
        req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path)
        .build()?;
    *req.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };

    let headers = req.headers_mut();
    // gRPC needs `te: trailers`, the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
    let trailers = h2
        && headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !h2 {
        join_cookies(headers);
    }
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
        headers.insert(X_FORWARDED_HOST, host);
    }
    if let Some(ip) = client_ip {
        // Append to what earlier proxies said, as one field.
        let earlier: Vec<&str> =
            headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        let value = if earlier.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", earlier.join(", "))
        };
        headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(value)?);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    Ok(req)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that concern one connection only (RFC 9110 §7.6.1), and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none (and nothing else is named without `Connection`): one look at
    // each name instead of seven removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Whether `name` is one of the hop-by-hop headers [`strip_hop_by_hop`] always removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [header::CONNECTION, header::TE, header::TRAILER, header::TRANSFER_ENCODING, header::UPGRADE]
        .contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_the_upstream_request() {
        let mut req = Request::builder()
            .uri("/a/b?c=d")
            .header("host", "shop.example:8443")
            .header("connection", "close, x-private")
            .header("x-private", "1")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(ClientAddr("192.0.2.1:5555".parse().unwrap()));
        let req = prepare(req, &Authority::from_static("127.0.0.1:9"), false).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:9/a/b?c=d");
        let h = req.headers();
        assert_eq!(h["host"], "shop.example:8443");
        assert_eq!(h["x-forwarded-host"], "shop.example:8443");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["cookie"], "a=1; b=2");
        for gone in ["connection", "x-private", "te"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }
}

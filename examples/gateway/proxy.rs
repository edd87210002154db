//! The endpoint service: forwards one request to one backend address and streams the answer
//! back.
//!
//! This is what the balancer holds for each endpoint. It rewrites the URI to the endpoint,
//! keeps the client's host (`Host` for HTTP/1.1, `:authority` for h2c, never both disagreeing),
//! removes hop-by-hop headers both ways, writes the forwarded headers under the trust policy,
//! and bounds every wait on the backend: the connection (`connect`), the response head from the
//! end of the request body (`backendResponse`: a steady upload of any length is never cut) and
//! each pause of the response body (`backendIdle`). Bodies are streamed, never collected;
//! protocol upgrades are handed to the [`upgrade`] module. HTTP/1.1 endpoints are reached over
//! the connections of their own [`pool`](crate::pool); h2c endpoints over one multiplexed
//! [`h2c`](crate::h2c) connection. Both hand a request that never left back to the balancer.
//!
//! With `limits.maxConnectionsPerEndpoint`, an endpoint is ready only while it has a free
//! place, shared by every serving thread: the balancer then queues pinned requests for it
//! (`x-balancer.endpointQueue`, `failfast`) and p2c prefers the others.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{BoxError, Service};
use tower_session_persistence::balance::{HealthView, NotSent, take_unsent_request};
use tower_session_persistence::edge::{ForwardedHeaders, IdleTimeoutBody, Proto};

use crate::client_body::BodyDone;
use crate::edge::{Edge, Timeouts};
use crate::h2c::H2c;
use crate::pool::Pool;
use crate::upgrade;

/// What every endpoint service of a process is made with: the timeouts, the forwarded-header
/// policy, and the per-endpoint limits shared by every serving thread. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Upstreams {
    settings: Arc<Settings>,
    /// Endpoint key → its places, when `maxConnectionsPerEndpoint` is set.
    places: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// The endpoints' health as every balancer of every thread sees it: one failure seen
    /// anywhere ejects an endpoint everywhere.
    view: HealthView<String>,
}

#[derive(Debug)]
struct Settings {
    timeouts: Timeouts,
    forwarded: ForwardedHeaders,
    per_endpoint: Option<usize>,
}

impl Upstreams {
    pub(crate) fn new(edge: &Edge) -> Self {
        Self {
            settings: Arc::new(Settings {
                timeouts: edge.timeouts,
                forwarded: edge.forwarded.clone(),
                per_endpoint: edge.limits.max_connections_per_endpoint,
            }),
            places: Arc::default(),
            view: HealthView::new(),
        }
    }

    /// The process's one view of endpoint health, for every balancer.
    pub(crate) fn health_view(&self) -> &HealthView<String> {
        &self.view
    }

    /// The service of the endpoint `key` at `addr`, speaking HTTP/1.1, or h2c when `h2c`.
    /// Needs a tokio runtime for h2c (its client starts tasks on use).
    pub(crate) fn endpoint(&self, key: &str, addr: SocketAddr, h2c: bool) -> Upstream {
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is a valid authority");
        let connect = self.settings.timeouts.connect;
        let sender = if h2c {
            Sender::H2c(H2c::new(addr, Some(connect)))
        } else {
            Sender::Http1(Pool::new(addr, Some(connect)))
        };
        let places = self.settings.per_endpoint.map(|max| {
            let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
            let shared =
                places.entry(key.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(max)));
            PollSemaphore::new(shared.clone())
        });
        Upstream {
            key: key.into(),
            authority,
            sender,
            settings: self.settings.clone(),
            places,
            place: None,
        }
    }
}

/// Who sent a request and how, put into its extensions by the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr {
    pub(crate) addr: SocketAddr,
    pub(crate) proto: Proto,
}

/// The host the request is for, checked once by the gateway (`edge::request_host`).
#[derive(Clone, Debug)]
pub(crate) struct RequestHost(pub(crate) Option<String>);

/// The upstream did not send its response head within `backendResponse`.
#[derive(Debug)]
pub(crate) struct UpstreamTimeout;

impl fmt::Display for UpstreamTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream did not answer in time")
    }
}

impl std::error::Error for UpstreamTimeout {}

/// The upstream switched protocols though the client asked for no upgrade.
#[derive(Debug)]
pub(crate) struct UnrequestedUpgrade;

impl fmt::Display for UnrequestedUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream answered 101 to a request that asked for no upgrade")
    }
}

impl std::error::Error for UnrequestedUpgrade {}

/// An error of the exchange with one endpoint, naming it (for the access log).
#[derive(Debug)]
pub(crate) struct EndpointError {
    pub(crate) endpoint: Arc<str>,
    source: BoxError,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint {}", self.endpoint)
    }
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The endpoint that served a response, or failed it, for the access log (the session layer
/// takes the balancer's `ServedBy`).
#[derive(Clone, Debug)]
pub(crate) struct ServedByEndpoint(pub(crate) String);

/// How long the backend took to send its response head, for the access log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamTime(pub(crate) Duration);

/// Forwards requests to one endpoint.
pub(crate) struct Upstream {
    key: Arc<str>,
    authority: Authority,
    sender: Sender,
    settings: Arc<Settings>,
    /// The endpoint's places, with `maxConnectionsPerEndpoint`.
    places: Option<PollSemaphore>,
    /// A place taken by `poll_ready`, for the next `call`.
    place: Option<OwnedSemaphorePermit>,
}

impl Clone for Upstream {
    fn clone(&self) -> Self {
        // A clone starts without a place: places are taken by each clone's own poll_ready.
        Self {
            key: self.key.clone(),
            authority: self.authority.clone(),
            sender: self.sender.clone(),
            settings: self.settings.clone(),
            places: self.places.clone(),
            place: None,
        }
    }
}

/// How an endpoint's requests are sent.
#[derive(Clone)]
enum Sender {
    Http1(Pool),
    H2c(H2c),
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream").field("endpoint", &self.key).finish_non_exhaustive()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Without a per-endpoint limit, always ready: a request waits for a connection in its
        // own future. With one, ready once a place is free.
        if let Some(places) = &mut self.places
            && self.place.is_none()
        {
            match places.poll_acquire(cx) {
                Poll::Ready(Some(place)) => self.place = Some(place),
                Poll::Ready(None) => return Poll::Ready(Err("the endpoint's limit closed".into())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let place = self.place.take();
        let key = self.key.clone();
        let named = move |source: BoxError| -> BoxError {
            Box::new(EndpointError { endpoint: key.clone(), source })
        };
        if self.places.is_some() && place.is_none() {
            return Box::pin(std::future::ready(Err(named("called before it was ready".into()))));
        }
        // An upgrade: the client's side of it, taken before the request goes on.
        let upgrade = upgrade::requested(&req).map(|protocol| {
            let client_side = hyper::upgrade::on(&mut req);
            (protocol, client_side)
        });
        let body_done = req.extensions_mut().remove::<BodyDone>();
        let h2 = matches!(self.sender, Sender::H2c(_));
        let (req, host) = match prepare(req, &self.authority, h2, &self.settings.forwarded) {
            Ok((mut req, host)) => {
                if let Some((protocol, _)) = &upgrade {
                    upgrade::restore(req.headers_mut(), protocol.clone());
                }
                (req, host)
            }
            Err(err) => return Box::pin(std::future::ready(Err(named(err)))),
        };
        let sent = match &self.sender {
            Sender::Http1(pool) => {
                let (pool, mut req) = (pool.clone(), req);
                origin_form(&mut req, &self.authority);
                futures_util::future::Either::Left(async move { pool.send(req).await })
            }
            Sender::H2c(h2c) => {
                let h2c = h2c.clone();
                futures_util::future::Either::Right(async move { h2c.send(req).await })
            }
        };
        let timeouts = self.settings.timeouts;
        let tunnel_idle = timeouts.tunnel_idle;
        Box::pin(async move {
            let started = Instant::now();
            let answered = match timeouts.backend_response {
                Some(limit) => {
                    // The wait for the answer starts once the request is all sent: a long
                    // upload is bounded by `clientBody` between its chunks, not by this.
                    let deadline = async {
                        if let Some(done) = &body_done {
                            done.wait().await;
                        }
                        tokio::time::sleep(limit).await;
                    };
                    tokio::select! {
                        biased;
                        answered = sent => answered,
                        () = deadline => Err(UpstreamTimeout.into()),
                    }
                }
                None => sent.await,
            };
            let unsent = |error| hand_back(error, host, body_done, upgrade.is_some());
            let mut res = answered.map_err(unsent).map_err(&named)?;
            let switched = match upgrade {
                Some((asked, client_side)) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let protocol = res.headers().get(header::UPGRADE).cloned().unwrap_or(asked);
                    tokio::spawn(upgrade::tunnel(
                        client_side,
                        hyper::upgrade::on(&mut res),
                        tunnel_idle,
                    ));
                    Some(protocol)
                }
                None if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(named(UnrequestedUpgrade.into()));
                }
                _ => None,
            };
            // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is wrong; the body was
            // decoded by its chunks and is framed anew for the client.
            if res.headers().contains_key(header::TRANSFER_ENCODING) {
                res.headers_mut().remove(header::CONTENT_LENGTH);
            }
            strip_hop_by_hop(res.headers_mut());
            if let Some(protocol) = switched {
                upgrade::restore(res.headers_mut(), protocol);
            }
            res.extensions_mut().insert(UpstreamTime(started.elapsed()));
            if place.is_some() || timeouts.backend_idle.is_some() {
                res = res.map(|body| {
                    Body::new(Streamed {
                        body: IdleTimeoutBody::new(body, timeouts.backend_idle.unwrap_or(FOREVER)),
                        place,
                    })
                });
            }
            Ok(res)
        })
    }
}

/// Long enough to mean "no limit" for a timer (about 31 years).
const FOREVER: Duration = Duration::from_secs(1 << 30);

pin_project! {
    /// A response body from an endpoint: fails when the backend stalls for `backendIdle`, and
    /// holds the endpoint's place until it ends.
    struct Streamed<B> {
        #[pin]
        body: IdleTimeoutBody<B>,
        place: Option<OwnedSemaphorePermit>,
    }
}

impl<B> http_body::Body for Streamed<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            this.place.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What hyper-util's client did before writing an HTTP/1.1 request: a `Host` when there is
/// none, and the request target in origin-form.
fn origin_form(req: &mut Request<Body>, authority: &Authority) {
    if !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The forwarded headers of a request are written: it was handed back unsent by one endpoint
/// and goes to another.
#[derive(Clone, Copy, Debug)]
struct Forwarded;

/// Readies a request that an endpoint handed back unsent (in `error`) for another endpoint: the
/// request host and the end-of-body signal it had, its forwarded headers marked as written.
/// An upgrade is not sent again: its client side was given to this attempt.
fn hand_back(
    error: BoxError,
    host: Option<String>,
    body_done: Option<BodyDone>,
    upgrading: bool,
) -> BoxError {
    let Some(mut req) = take_unsent_request::<Body>(&error) else { return error };
    if upgrading {
        return error;
    }
    let extensions = req.extensions_mut();
    extensions.insert(RequestHost(host));
    extensions.insert(Forwarded);
    if let Some(done) = body_done {
        extensions.insert(done);
    }
    Box::new(NotSent::with_request(error, req))
}

/// Turns the client's request into the upstream request; returns it and the client's host.
fn prepare(
    mut req: Request<Body>,
    endpoint: &Authority,
    h2: bool,
    forwarded: &ForwardedHeaders,
) -> Result<(Request<Body>, Option<String>), BoxError> {
    let client = req.extensions().get::<ClientAddr>().copied();
    let host = match req.extensions_mut().remove::<RequestHost>() {
        Some(RequestHost(host)) => host,
        // Not through the gateway's checks (unit tests): the request's own.
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(Authority::as_str))
            .map(str::to_owned),
    };
    let path =
        req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    // h2c: the client's host is the `:authority` (the connector reaches the endpoint whatever
    // it says), and no `Host` says otherwise. HTTP/1.1: the endpoint's address in the URI
    // (only its path is written) and the client's host in `Host`.
    let authority = match (&host, h2) {
        (Some(host), true) => {
            Authority::try_from(host.as_str()).unwrap_or_else(|_| endpoint.clone())
        }
        _ => endpoint.clone(),
    };
    *req.uri_mut() =
        Uri::builder().scheme(Scheme::HTTP).authority(authority).path_and_query(path).build()?;
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
    if h2 {
        headers.remove(header::HOST);
    } else {
        join_cookies(headers);
        if let Some(value) = host.as_deref().and_then(|h| HeaderValue::try_from(h).ok()) {
            headers.insert(header::HOST, value);
        }
    }
    if let Some(client) = client
        && req.extensions_mut().remove::<Forwarded>().is_none()
    {
        forwarded.apply(req.headers_mut(), client.addr.ip(), client.proto, host.as_deref());
    }
    Ok((req, host))
}

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
    use tower_session_persistence::edge::TrustedProxies;

    use super::*;

    fn request() -> Request<Body> {
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
        let addr = "192.0.2.1:5555".parse().unwrap();
        req.extensions_mut().insert(ClientAddr { addr, proto: Proto::Http });
        req
    }

    #[test]
    fn prepares_the_upstream_request() {
        let untrusted = ForwardedHeaders::new(TrustedProxies::none());
        let endpoint = Authority::from_static("127.0.0.1:9");
        let (req, _) = prepare(request(), &endpoint, false, &untrusted).unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:9/a/b?c=d");
        let h = req.headers();
        assert_eq!(h["host"], "shop.example:8443");
        assert_eq!(h["x-forwarded-host"], "shop.example:8443");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1", "an untrusted client's claim is replaced");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["cookie"], "a=1; b=2");
        for gone in ["connection", "x-private", "te"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        let trusted = ForwardedHeaders::new(TrustedProxies::parse(["192.0.2.0/24"]).unwrap());
        let (req, _) = prepare(request(), &endpoint, false, &trusted).unwrap();
        assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
    }

    #[test]
    fn h2c_requests_carry_the_client_host_as_authority_only() {
        let untrusted = ForwardedHeaders::new(TrustedProxies::none());
        let endpoint = Authority::from_static("127.0.0.1:9");
        let (req, _) = prepare(request(), &endpoint, true, &untrusted).unwrap();
        assert_eq!(req.uri(), "http://shop.example:8443/a/b?c=d");
        assert!(!req.headers().contains_key("host"));
        assert_eq!(req.headers()["te"], "trailers");
    }
}

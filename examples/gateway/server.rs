//! The listeners: one serving thread per core, each with its own single-threaded tokio
//! runtime, its own listening socket (`SO_REUSEPORT`: the kernel spreads new connections over
//! them) and its own [`Gateway`] (balancers, connection pools), pinned to its core. Each thread
//! accepts connections, speaks HTTP/1.1 (with upgrades) and h2c on them, tells the gateway who
//! the client is, and shuts down gracefully.
//!
//! Why this shape: a connection, its requests, its upstream connections and the balancer's
//! tasks all live on one thread, so a request never waits for a wake-up from another thread
//! and no lock is shared between cores (`docs/BENCHMARKS.md` has the measurements against one
//! multi-threaded runtime, and with and without pinning). Sessions stay sticky whichever
//! thread takes a connection: tokens are stateless and every thread's gateway is built from
//! the same configuration and keys. What each thread learns about endpoints at run time (an
//! endpoint ejected after a refused connection, p2c's load estimates, a pinned endpoint in
//! fail-fast) is its own; configuration changes are applied to every thread.
//!
//! Requests are traced by tower-http at `debug` level, with `Cookie` and `Set-Cookie` marked
//! sensitive so that no session token reaches a log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use http::Request;
use http::header::{COOKIE, HeaderName, SET_COOKIE};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;
use tower_session_persistence::edge::Proto;
use tracing::Level;

use crate::client_body::ClientBody;
use crate::connection::{Activity, Tracked, Watched};
use crate::edge::{Limits, Timeouts};
use crate::keep_alive::{ClientIo, ConnectionService, Kept, ResponseBody};
use crate::proxy::ClientAddr;
use crate::routing::ArrivedOn;
use crate::stack::Gateway;

/// How many serving threads to run: one per core this process may use.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Binds `count` listening sockets to `addr`, all on the same port (the one the system picked
/// when `addr`'s port is 0), saying clearly what went wrong. Needs a tokio runtime.
///
/// `SO_REUSEPORT` would let the sockets join another program's listener on the same port
/// instead of failing, so the address is first bound once without it: a port in use is an
/// error, as with a single listener.
pub(crate) async fn bind(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, String> {
    let in_use = |err: std::io::Error| format!("cannot listen on {addr}: {err}");
    let probe = TcpListener::bind(addr).await.map_err(in_use)?;
    if count <= 1 || cfg!(not(unix)) {
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr().map_err(in_use)?;
    drop(probe);
    (0..count).map(|_| reuse_port(addr).map_err(in_use)).collect()
}

#[cfg(unix)]
fn reuse_port(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(not(unix))]
fn reuse_port(_: SocketAddr) -> std::io::Result<TcpListener> {
    unreachable!("one listener only where there is no SO_REUSEPORT")
}

/// What every serving thread shares: the timeouts and limits of its connections, and the
/// places for connections across all threads (`limits.maxConnections`).
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    connections: Arc<Semaphore>,
}

impl Serving {
    pub(crate) fn new(timeouts: Timeouts, limits: Limits) -> Self {
        let places = limits.max_connections.min(Semaphore::MAX_PERMITS);
        Self { timeouts, limits, connections: Arc::new(Semaphore::new(places)) }
    }
}

/// One listening socket of a serving thread: the port it serves (an index into the
/// listeners' ports) and, on an HTTPS port, its TLS acceptor.
pub(crate) struct Socket {
    pub(crate) listener: TcpListener,
    pub(crate) port: usize,
    pub(crate) tls: Option<TlsAcceptor>,
}

/// A [`Socket`] on its way to its serving thread.
struct StdSocket {
    listener: std::net::TcpListener,
    port: usize,
    tls: Option<TlsAcceptor>,
}

/// The serving threads, once each has built its gateway and is accepting connections.
pub(crate) struct Workers {
    /// Every thread's gateway, for configuration changes.
    pub(crate) gateways: Vec<Gateway>,
    stop: watch::Sender<bool>,
    done: Vec<oneshot::Receiver<bool>>,
    grace: Duration,
}

impl Workers {
    /// Starts one thread per entry of `sockets` (each thread's own sockets, one per port).
    /// Each builds its own gateway with `make` on its own runtime (the balancers' tasks and
    /// the connection pools belong to it), waits up to `limit` for the balancers to know their
    /// endpoints, and serves.
    pub(crate) async fn start<F>(
        listeners: Vec<Vec<Socket>>,
        make: F,
        serving: Serving,
        limit: Duration,
    ) -> Result<Self, String>
    where
        F: Fn() -> Gateway + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let grace = serving.timeouts.shutdown_grace;
        // One thread per core this process may use: each stays on its core. (Not when there
        // are fewer threads than such cores, as under a CPU quota: the system places them.)
        let cores = core_affinity::get_core_ids().filter(|cores| cores.len() == listeners.len());
        let (stop, stopped) = watch::channel(false);
        let mut ready = Vec::new();
        let mut done = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            // Moved to the thread's runtime: deregistered here, registered there.
            let listener = listener
                .into_iter()
                .map(|socket| {
                    let Socket { listener, port, tls } = socket;
                    let listener = listener
                        .into_std()
                        .map_err(|err| format!("cannot hand over a listener: {err}"))?;
                    Ok(StdSocket { listener, port, tls })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let (ready_tx, ready_rx) = oneshot::channel::<Result<Gateway, String>>();
            let (done_tx, done_rx) = oneshot::channel();
            let (make, stopped, serving) = (make.clone(), stopped.clone(), serving.clone());
            let core = cores.as_ref().map(|cores| cores[index]);
            let serve_one = move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    tracing::debug!(?core, "cannot pin a serving thread to its core");
                }
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("cannot start a runtime: {err}")));
                            return;
                        }
                    };
                runtime.block_on(async move {
                    // Every thread builds the same rules; the first one says so in the log.
                    let gateway = if index == 0 {
                        make()
                    } else {
                        tracing::dispatcher::with_default(&tracing::Dispatch::none(), || make())
                    };
                    if !gateway.ready(limit).await {
                        let message = format!(
                            "the balancers did not take their endpoints within {}s",
                            limit.as_secs()
                        );
                        let _ = ready_tx.send(Err(message));
                        return;
                    }
                    let mut sockets = Vec::with_capacity(listener.len());
                    for StdSocket { listener, port, tls } in listener {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => sockets.push(Socket { listener, port, tls }),
                            Err(err) => {
                                let _ = ready_tx.send(Err(format!("cannot listen: {err}")));
                                return;
                            }
                        }
                    }
                    if ready_tx.send(Ok(gateway.clone())).is_err() {
                        return;
                    }
                    let serving = sockets.into_iter().map(|socket| {
                        serve(socket, gateway.clone(), stopped.clone(), serving.clone())
                    });
                    let all_closed = futures_util::future::join_all(serving).await;
                    let _ = done_tx.send(all_closed.into_iter().all(|closed| closed));
                });
            };
            std::thread::Builder::new()
                .name(format!("gateway-{index}"))
                .spawn(serve_one)
                .map_err(|err| format!("cannot start a serving thread: {err}"))?;
            ready.push(ready_rx);
            done.push(done_rx);
        }
        let mut gateways = Vec::with_capacity(ready.len());
        for ready in ready {
            gateways.push(ready.await.map_err(|_| "a serving thread stopped".to_owned())??);
        }
        Ok(Self { gateways, stop, done, grace })
    }

    /// Serves until `shutdown` completes; then closes idle connections at once and lets
    /// requests in flight finish (up to `shutdownGrace`).
    pub(crate) async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = self.stop.send(true);
        let mut all_closed = true;
        for done in self.done {
            all_closed &= done.await.unwrap_or(false);
        }
        if all_closed {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!("some requests did not finish within {:?}", self.grace);
        }
    }
}

/// The connections a serving thread has open, to wait for them on shutdown.
#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// Ends a connection's count in [`Open`] when its task ends, however it ends.
struct Counted(Arc<Open>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Serves `gateway` on `listener` until `stop` says so, then closes idle connections and lets
/// requests in flight finish (up to `shutdownGrace`). Returns whether they all did.
async fn serve(
    socket: Socket,
    gateway: Gateway,
    mut stop: watch::Receiver<bool>,
    serving: Serving,
) -> bool {
    let Socket { listener, port, tls } = socket;
    let timeouts = serving.timeouts;
    let builders = Arc::new(Builders::new(&serving.limits));
    let sensitive: Arc<[HeaderName]> = Arc::new([COOKIE, SET_COOKIE]);
    // `RUST_LOG` is read once: without its debug events, the trace layer would only cost time.
    let traced = tracing::enabled!(target: "tower_http::trace::make_span", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_request", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_response", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_eos", Level::DEBUG);
    let open = Arc::new(Open::default());
    let mut saturated = false;
    loop {
        // A place first: at the limit, the gateway stops accepting (clients wait in the
        // kernel's queue) rather than failing for want of file descriptors.
        let place = match serving.connections.clone().try_acquire_owned() {
            Ok(place) => {
                saturated = false;
                place
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        limit = serving.limits.max_connections,
                        "limits.maxConnections reached: not accepting until connections close"
                    );
                }
                tokio::select! {
                    place = serving.connections.clone().acquire_owned() => match place {
                        Ok(place) => place,
                        Err(_) => break,
                    },
                    _ = stop.wait_for(|&stop| stop) => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|&stop| stop) => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let proto = if tls.is_some() { Proto::Https } else { Proto::Http };
        let connection = Connection {
            builders: builders.clone(),
            gateway: gateway.clone(),
            sensitive: sensitive.clone(),
            traced,
            timeouts,
            client: ClientAddr { addr: remote, proto },
            port: ArrivedOn(port),
        };
        open.count.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(open.clone());
        let mut stop = stop.clone();
        let tls = tls.clone();
        // Plain and TLS connections are separate tasks: a task's allocation is the size of
        // its future, and a TLS connection's is several times a plain one's.
        let Some(acceptor) = tls else {
            tokio::spawn(connection.run_plain(stream, stop, (counted, place)));
            continue;
        };
        tokio::spawn(async move {
            let _counted = counted;
            let _place = place;
            // The handshake is part of the request head: bounded by requestHeader, and
            // dropped at once on shutdown.
            let handshake = tokio::time::timeout(timeouts.request_header, acceptor.accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => {
                        crate::admin::tls_handshake(true);
                        stream
                    }
                    Ok(Err(error)) => {
                        crate::admin::tls_handshake(false);
                        tracing::debug!(%error, client = %remote, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        crate::admin::tls_handshake(false);
                        tracing::debug!(client = %remote, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stop.wait_for(|&stop| stop) => return,
            };
            let activity = Activity::new();
            connection.run(stream, stop, activity, Http::Detect, ()).await;
        });
    }
    drop(listener);
    let all_closed = async {
        loop {
            let closed = open.closed.notified();
            if open.count.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    };
    tokio::select! {
        () = all_closed => true,
        () = tokio::time::sleep(timeouts.shutdown_grace) => false,
    }
}

/// hyper's connection builders, configured once per listener.
struct Builders {
    /// HTTP/1.1 or HTTP/2, told apart by hyper-util (TLS connections).
    auto: auto::Builder<TokioExecutor>,
    http1: Arc<http1::Builder>,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        // The head limit is hyper's read buffer: a head that does not fit is answered 431, and
        // a connection never buffers more than this while reading one.
        http1.header_read_timeout(None).max_buf_size(limits.max_request_header_bytes.max(8192));
        if limits.max_request_headers != crate::edge::DEFAULT_HEADERS {
            http1.max_headers(limits.max_request_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING))
            .keep_alive_timeout(H2_PING)
            .max_header_list_size(
                u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX),
            );
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .header_read_timeout(None)
            .max_buf_size(limits.max_request_header_bytes.max(8192));
        if limits.max_request_headers != crate::edge::DEFAULT_HEADERS {
            auto.http1().max_headers(limits.max_request_headers);
        }
        auto.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING))
            .keep_alive_timeout(H2_PING)
            .max_header_list_size(
                u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX),
            );
        Self { auto, http1: Arc::new(http1), http2 }
    }
}

/// Which HTTP a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Http {
    /// Told by hyper-util from the first bytes (TLS connections).
    Detect,
    /// HTTP/1.x (with upgrades).
    One,
    /// HTTP/2 with prior knowledge (h2c).
    Two,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection starts with the HTTP/2 preface, looked at without reading it
/// (`MSG_PEEK`), as hyper-util would tell: any byte that differs means HTTP/1. `None` when
/// the client closed first. Peeking rather than reading spares hyper's HTTP/1 read buffer the
/// replayed prefix, which made it grow from 8 to 16 KiB on every connection.
async fn sniff_h2(stream: &tokio::net::TcpStream) -> std::io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // Part of the preface only: what is there stays readable, so wait a little for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a connection's task needs to serve it, once its bytes are plain HTTP (after the TLS
/// handshake on an HTTPS port).
struct Connection {
    builders: Arc<Builders>,
    gateway: Gateway,
    sensitive: Arc<[HeaderName]>,
    traced: bool,
    timeouts: Timeouts,
    client: ClientAddr,
    port: ArrivedOn,
}

impl Connection {
    /// A plain TCP connection: HTTP/1.x, or h2c when it starts with the HTTP/2 preface. Until
    /// its first bytes come, the connection holds no HTTP state; it is closed without an
    /// answer if none come within `requestHeader`, or at once on shutdown.
    /// `held` lives as long as the connection.
    async fn run_plain<G: Send + 'static>(
        self,
        stream: tokio::net::TcpStream,
        mut stop: watch::Receiver<bool>,
        held: G,
    ) {
        let activity = Activity::new();
        let http = tokio::select! {
            sniffed = tokio::time::timeout(self.timeouts.request_header, sniff_h2(&stream)) => {
                match sniffed {
                    Ok(Ok(Some(true))) => Http::Two,
                    Ok(Ok(Some(false))) => Http::One,
                    Ok(Ok(None)) => return,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, client = %self.client.addr, "connection failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %self.client.addr, "client timeout: no request");
                        return;
                    }
                }
            }
            _ = stop.wait_for(|&stop| stop) => return,
        };
        self.run(stream, stop, activity, http, held).await;
    }

    async fn run<IO, G>(
        self,
        stream: IO,
        stop: watch::Receiver<bool>,
        activity: Arc<Activity>,
        http: Http,
        held: G,
    ) where
        IO: ClientIo,
        G: Send + 'static,
    {
        let Connection { builders, gateway, sensitive, traced, timeouts, client, port } = self;
        let client_body = timeouts.client_body;
        // Session tokens travel in these headers: marked sensitive, they stay out of traces
        // and out of HTTP/2 header compression tables.
        let inner = ServiceBuilder::new()
            .layer(SetSensitiveResponseHeadersLayer::from_shared(sensitive.clone()))
            .map_request(move |req: Request<Incoming>| {
                let (parts, body) = req.into_parts();
                let (body, done) = ClientBody::new(body, client_body);
                let mut req = Request::from_parts(parts, Body::new(body));
                req.extensions_mut().insert(client);
                req.extensions_mut().insert(port);
                if let Some(done) = done {
                    req.extensions_mut().insert(done);
                }
                req
            })
            .service(gateway);
        let outer =
            ServiceBuilder::new().layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive));
        let io = Watched::new(stream, activity.clone(), timeouts);
        let remote = client.addr;
        if traced {
            let service = outer
                .layer(TraceLayer::new_for_http().make_span_with(log_safe_span).on_failure(()))
                .service(inner);
            let service = TowerToHyperService::new(Tracked::new(service, activity.clone()));
            serve_as(&builders, http, io, service, activity, stop, remote, held).await;
        } else {
            let service =
                TowerToHyperService::new(Tracked::new(outer.service(inner), activity.clone()));
            serve_as(&builders, http, io, service, activity, stop, remote, held).await;
        }
    }
}

/// Serves a connection with the HTTP it speaks; `held` lives as long as the connection.
#[allow(clippy::too_many_arguments)]
async fn serve_as<IO, S, B, G>(
    builders: &Builders,
    http: Http,
    io: Watched<IO>,
    service: S,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
    remote: SocketAddr,
    held: G,
) where
    IO: ClientIo,
    S: ConnectionService<B> + Clone,
    B: ResponseBody,
    G: Send + 'static,
{
    match http {
        Http::One => {
            let builder = builders.http1.clone();
            let client = remote;
            crate::keep_alive::serve(Kept { builder, io, service, activity, stop, client, held })
                .await;
        }
        // Rare on plain ports: boxed, so that HTTP/1 connections' tasks stay small.
        Http::Two => {
            let connection = builders.http2.serve_connection(TokioIo::new(io), service);
            let shut_down = |c: Pin<&mut http2::Connection<_, S, TokioExecutor>>| {
                c.graceful_shutdown();
            };
            Box::pin(drive(connection, shut_down, &activity, stop, remote)).await;
        }
        // TLS only: boxed too, since hyper-util's connection holds either HTTP inline.
        Http::Detect => {
            let connection =
                builders.auto.serve_connection_with_upgrades(TokioIo::new(io), service);
            Box::pin(drive(connection, |c| c.graceful_shutdown(), &activity, stop, remote)).await;
        }
    }
}

/// HTTP/2 pings: every 20 s, and a connection whose client does not answer in 20 s is closed.
const H2_PING: Duration = Duration::from_secs(20);

/// Drives one connection until it ends, or until shutdown: then at once when no request is
/// in flight (a half-sent head included), else after hyper's graceful close.
async fn drive<C, E>(
    connection: C,
    shut_down: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    mut stop: watch::Receiver<bool>,
    client: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(error) = ended {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|&stop| stop) => {}
    }
    if activity.is_idle() {
        return;
    }
    shut_down(connection.as_mut());
    if let Err(error) = connection.await {
        tracing::debug!(%error, %client, "connection ended with an error");
    }
}

/// A request's span for tower-http's trace layer: method, path without parameters or query
/// (URL sessions travel there), version. Headers are not recorded.
fn log_safe_span<B>(req: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        path = %crate::access_log::loggable_path(req.uri().path()),
        version = ?req.version(),
    )
}

/// Resolves on Ctrl-C (and on SIGTERM on Unix, as a service manager sends).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

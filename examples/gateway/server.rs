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
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures_util::future::Either;
use http::Request;
use http::header::{COOKIE, HeaderName, SET_COOKIE};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Level;

use crate::proxy::ClientAddr;
use crate::stack::Gateway;

/// How long open connections may take to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

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

/// The serving threads, once each has built its gateway and is accepting connections.
pub(crate) struct Workers {
    /// Every thread's gateway, for configuration changes.
    pub(crate) gateways: Vec<Gateway>,
    stop: watch::Sender<bool>,
    done: Vec<oneshot::Receiver<bool>>,
}

impl Workers {
    /// Starts one thread per listener. Each builds its own gateway with `make` on its own
    /// runtime (the balancers' tasks and the connection pools belong to it), waits up to
    /// `limit` for the balancers to know their endpoints, and serves.
    pub(crate) async fn start<F>(
        listeners: Vec<TcpListener>,
        make: F,
        limit: Duration,
    ) -> Result<Self, String>
    where
        F: Fn() -> Gateway + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        // One thread per core this process may use: each stays on its core. (Not when there
        // are fewer threads than such cores, as under a CPU quota: the system places them.)
        let cores = core_affinity::get_core_ids().filter(|cores| cores.len() == listeners.len());
        let (stop, stopped) = watch::channel(false);
        let mut ready = Vec::new();
        let mut done = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            // Moved to the thread's runtime: deregistered here, registered there.
            let listener =
                listener.into_std().map_err(|err| format!("cannot hand over a listener: {err}"))?;
            let (ready_tx, ready_rx) = oneshot::channel::<Result<Gateway, String>>();
            let (done_tx, done_rx) = oneshot::channel();
            let (make, mut stopped) = (make.clone(), stopped.clone());
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
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("cannot listen: {err}")));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(gateway.clone())).is_err() {
                        return;
                    }
                    let stop = async move {
                        let _ = stopped.wait_for(|&stop| stop).await;
                    };
                    let _ = done_tx.send(serve(listener, gateway, stop).await);
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
        Ok(Self { gateways, stop, done })
    }

    /// Serves until `shutdown` completes, then lets open connections finish their requests
    /// (up to 10 s).
    pub(crate) async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down: finishing open requests");
        let _ = self.stop.send(true);
        let mut all_closed = true;
        for done in self.done {
            all_closed &= done.await.unwrap_or(false);
        }
        if all_closed {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!("some connections did not finish within {DRAIN:?}");
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` completes, then lets open connections
/// finish their requests (up to 10 s). Returns whether they all did.
async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let sensitive: Arc<[HeaderName]> = Arc::new([COOKIE, SET_COOKIE]);
    // `RUST_LOG` is read once: without its debug events, the trace layer would only cost time.
    let traced = tracing::enabled!(target: "tower_http::trace::make_span", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_request", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_response", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_eos", Level::DEBUG);
    tokio::pin!(shutdown);
    loop {
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
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        // Session tokens travel in these headers: marked sensitive, they stay out of traces
        // and out of HTTP/2 header compression tables.
        let inner = ServiceBuilder::new()
            .layer(SetSensitiveResponseHeadersLayer::from_shared(sensitive.clone()))
            .map_request(move |req: Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ClientAddr(remote));
                req
            })
            .service(gateway.clone());
        let outer = ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive.clone()));
        let io = TokioIo::new(stream);
        let connection = if traced {
            let service = outer.layer(TraceLayer::new_for_http().on_failure(())).service(inner);
            let connection =
                builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
            Either::Left(graceful.watch(connection.into_owned()))
        } else {
            let connection = builder
                .serve_connection_with_upgrades(io, TowerToHyperService::new(outer.service(inner)));
            Either::Right(graceful.watch(connection.into_owned()))
        };
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, client = %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(DRAIN) => false,
    }
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

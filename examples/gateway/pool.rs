//! HTTP/1.1 connections to one endpoint, kept open and reused: one pool per endpoint per
//! serving thread, so that finding a connection takes no shared lock, no hash and no task.
//!
//! It does what hyper-util's legacy client did for the gateway, in less: a request takes the
//! connection used last (or opens one, within the connect timeout), and the connection comes
//! back once the response body has been read to its end. A connection that the backend closed
//! while it was idle is skipped, and a request that such a connection refused before sending
//! anything is sent on the next one. A request that no connection took is handed back to the
//! balancer, which sends it to another endpoint. Connections idle for 30 s are closed.
//!
//! A connection has no task of its own: the request's future drives it (hyper's `Connection`
//! is polled beside the response future, then by the response body), so the socket's
//! readiness wakes the client connection's task directly, as HAProxy's one-thread-per-stream
//! loop does, instead of waking a connection task that wakes the request's. Only upgrades
//! (WebSocket and the like), whose connection outlives the response, get a task.
//!
//! Measured under load, hyper-util's client cost the gateway about a tenth of its CPU
//! (`docs/BENCHMARKS.md`): a lock and a hash per checkout, a task per request to put the
//! connection back, and request futures of several kilobytes moved on every call.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::BoxError;
use tower_session_persistence::balance::NotSent;

/// How long an unused connection is kept.
const IDLE: Duration = Duration::from_secs(30);

/// The connections to one endpoint. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    connect_timeout: Option<Duration>,
    /// Idle connections, the most recently used last, with when they became idle.
    idle: Mutex<Vec<(Upstream, Instant)>>,
    /// Whether the task that closes long-idle connections runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(addr: SocketAddr, connect_timeout: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                connect_timeout,
                idle: Mutex::new(Vec::new()),
                reaping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form, with a `Host`) on a pooled connection, or on a new one.
    ///
    /// A request that never left (no connection could be made, or a new connection closed
    /// before it was written) comes back in a [`NotSent`] error, untouched, for the balancer
    /// to send elsewhere.
    pub(crate) async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        if req.headers().contains_key(http::header::UPGRADE) {
            return self.send_upgrade(req).await;
        }
        loop {
            let (mut upstream, reused) = match self.inner.checkout() {
                Some(upstream) => (upstream, true),
                None => match self.connect().await {
                    Ok(upstream) => (upstream, false),
                    Err(error) => return Err(Box::new(NotSent::with_request(error, req))),
                },
            };
            // An idle connection is ready at once, unless the backend closed it meanwhile.
            if let Err(error) = upstream.ready().await {
                if reused {
                    continue;
                }
                return Err(Box::new(NotSent::with_request(error, req)));
            }
            let answer = upstream.sender.try_send_request(req);
            match upstream.drive(answer).await {
                Ok(res) => {
                    let pool = Arc::downgrade(&self.inner);
                    return Ok(res.map(|body| {
                        Body::new(Returning { body, upstream: Some(upstream), pool })
                    }));
                }
                Err(mut error) => match error.take_message() {
                    // Refused before anything was written: a connection that was closing.
                    Some(unsent) if reused => req = unsent,
                    Some(unsent) => {
                        return Err(Box::new(NotSent::with_request(error.into_error(), unsent)));
                    }
                    None => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// Sends an upgrade request on a connection of its own, driven by a task: after a 101
    /// the connection becomes the tunnel and outlives this request.
    async fn send_upgrade(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let addr = self.inner.addr;
        let opened = async {
            let stream = open(addr, self.inner.connect_timeout).await?;
            Ok::<_, BoxError>(http1::handshake(TokioIo::new(stream)).await?)
        };
        let (mut sender, connection) = match opened.await {
            Ok(opened) => opened,
            Err(error) => return Err(Box::new(NotSent::with_request(error, req))),
        };
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, %addr, "upstream connection ended with an error");
            }
        });
        match sender.try_send_request(req).await {
            Ok(res) => Ok(res.map(Body::new)),
            Err(mut error) => match error.take_message() {
                Some(unsent) => Err(Box::new(NotSent::with_request(error.into_error(), unsent))),
                None => Err(error.into_error().into()),
            },
        }
    }

    /// Opens a connection. Any failure here (refused, unreachable, timed out, a failed
    /// handshake) is before the request was sent.
    async fn connect(&self) -> Result<Upstream, BoxError> {
        let stream = open(self.inner.addr, self.inner.connect_timeout).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        self.reap();
        Ok(Upstream { sender, connection: Some(connection), addr: self.inner.addr })
    }

    /// Starts, once, the task that closes connections idle for longer than [`IDLE`]; it ends
    /// with the pool.
    fn reap(&self) {
        if self.inner.reaping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|(upstream, since)| since.elapsed() < IDLE && !upstream.is_closed());
            }
        });
    }
}

/// Opens a TCP connection to an endpoint within `timeout`, with Nagle off (requests and
/// answers are written whole).
pub(crate) async fn open(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let connecting = TcpStream::connect(addr);
    let stream = match timeout {
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))??,
        None => connecting.await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One connection: the handle requests are sent through, and the connection itself, which
/// whoever waits on it polls.
struct Upstream {
    sender: SendRequest<Body>,
    /// Dropped once it has ended, which fails (and hands back) any request still queued on
    /// it: an ended connection that lived on would leave them waiting forever.
    connection: Option<Connection<TokioIo<TcpStream>, Body>>,
    addr: SocketAddr,
}

impl Upstream {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Moves the connection on (writes, reads, keep-alive bookkeeping). `true` once it has
    /// ended: closed by the backend, failed, or done.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(connection) = &mut self.connection else { return true };
        match Pin::new(connection).poll(cx) {
            Poll::Pending => return false,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, addr = %self.addr, "upstream connection ended with an error");
            }
        }
        self.connection = None;
        true
    }

    /// Waits until the connection takes a request, driving it meanwhile.
    async fn ready(&mut self) -> Result<(), BoxError> {
        poll_fn(|cx| {
            if self.poll_connection(cx) {
                // Its sender may still say ready: it wanted a request before it ended.
                return Poll::Ready(Err("the upstream connection ended".into()));
            }
            self.sender.poll_ready(cx).map_err(Into::into)
        })
        .await
    }

    /// Waits for `answer` (a request sent on this connection), driving the connection so
    /// that the request is written and its answer read.
    async fn drive<T>(&mut self, answer: impl Future<Output = T>) -> T {
        let mut answer = std::pin::pin!(answer);
        poll_fn(|cx| {
            // Once the connection has ended (and been dropped) every request on it has been
            // answered or failed, so `answer` is ready too.
            self.poll_connection(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }
}

impl Inner {
    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((upstream, since)) = idle.pop() {
            if !upstream.is_closed() && since.elapsed() < IDLE {
                return Some(upstream);
            }
        }
        None
    }

    fn put_back(&self, upstream: Upstream) {
        if !upstream.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.push((upstream, Instant::now()));
        }
    }
}

/// A response body that drives its connection while it is read, and gives the connection
/// back to the pool once it has been read to its end. Dropped before that, the connection is
/// closed, not reused.
struct Returning {
    body: Incoming,
    upstream: Option<Upstream>,
    pool: Weak<Inner>,
}

impl Returning {
    /// Puts the connection back if it can take another request now. One whose request is
    /// still being written (the backend answered before reading all of it) is closed: its
    /// next user would wait on the previous client's upload.
    fn give_back(&mut self, cx: &mut Context<'_>) {
        let (Some(mut upstream), Some(pool)) = (self.upstream.take(), self.pool.upgrade()) else {
            return;
        };
        if !upstream.poll_connection(cx) && matches!(upstream.sender.poll_ready(cx), Poll::Ready(Ok(()))) {
            pool.put_back(upstream);
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(upstream) = &mut this.upstream {
                // The connection hands the body over as it is asked for: move it on, then ask
                // again.
                if upstream.poll_connection(cx) {
                    this.upstream = None;
                }
                polled = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        if let Poll::Ready(None) = polled {
            this.give_back(cx);
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

impl Drop for Returning {
    fn drop(&mut self) {
        // Bodies known to be empty, or whose last frame said so, are often not polled to
        // their end. Nothing waits on this poll: the connection's next user polls it again.
        if self.body.is_end_stream() {
            self.give_back(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }
}

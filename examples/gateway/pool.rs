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
//! Measured under load, hyper-util's client cost the gateway about a tenth of its CPU
//! (`docs/BENCHMARKS.md`): a lock and a hash per checkout, a task per request to put the
//! connection back, and request futures of several kilobytes moved on every call.

use std::fmt;
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
use hyper::client::conn::http1::{self, SendRequest};
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
    idle: Mutex<Vec<(SendRequest<Body>, Instant)>>,
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
        loop {
            let (mut sender, reused) = match self.inner.checkout() {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(Box::new(NotSent::with_request(error, req))),
                },
            };
            // An idle connection is ready at once, unless the backend closed it meanwhile.
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(Box::new(NotSent::with_request(error, req)));
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let pool = Arc::downgrade(&self.inner);
                    return Ok(
                        res.map(|body| Body::new(Returning { body, sender: Some(sender), pool }))
                    );
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

    /// Opens a connection and starts driving it on this thread. Any failure here (refused,
    /// unreachable, timed out, a failed handshake) is before the request was sent.
    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let addr = self.inner.addr;
        let stream = open(addr, self.inner.connect_timeout).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, %addr, "upstream connection ended with an error");
            }
        });
        self.reap();
        Ok(sender)
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
                idle.retain(|(sender, since)| since.elapsed() < IDLE && !sender.is_closed());
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

impl Inner {
    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE {
                return Some(sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<Body>) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.push((sender, Instant::now()));
        }
    }
}

/// A response body that gives its connection back to the pool once it has been read to its
/// end. Dropped before that, the connection is not reused (hyper closes it).
struct Returning {
    body: Incoming,
    sender: Option<SendRequest<Body>>,
    pool: Weak<Inner>,
}

impl Returning {
    fn give_back(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.put_back(sender);
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
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.give_back();
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
        // Bodies known to be empty are often never polled.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

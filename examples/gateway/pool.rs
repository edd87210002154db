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
use std::future::poll_fn;
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
            let reusable = poll_fn(|cx| Poll::Ready(self.inner.checkout(cx))).await;
            let (mut sender, reused) = match reusable {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(Box::new(NotSent::with_request(error, req))),
                },
            };
            // A new connection is ready once its handshake is done; a pooled one was checked.
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
    /// The most recently used idle connection that can take a request now. One still busy
    /// with its previous exchange (a backend that answered before it read the whole upload,
    /// and the upload goes on) stays in the pool, behind: a request never waits on another
    /// client's upload.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = Vec::new();
        let mut found = None;
        while let Some((mut sender, since)) = idle.pop() {
            if sender.is_closed() || since.elapsed() >= IDLE {
                continue;
            }
            match sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    found = Some(sender);
                    break;
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => busy.push((sender, since)),
            }
        }
        // Back at the front, in their order: the next checkouts try the others first.
        if !busy.is_empty() {
            busy.reverse();
            idle.splice(0..0, busy);
        }
        found
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
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend written by hand, so that the test decides what the connection does: every
    /// connection it accepts is counted, answers one request with `answer` once it has read
    /// `read` bytes (or the head), then stays open or closes.
    async fn backend(
        answer: &'static [u8],
        read: usize,
        close_after: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
                        if head_end.is_some() && seen.len() >= read {
                            seen.clear();
                            if stream.write_all(answer).await.is_err() || close_after {
                                return;
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn get() -> Request<Body> {
        Request::get("/").header("host", "backend").body(Body::empty()).unwrap()
    }

    /// Sends `req` and reads the answer's body, failing instead of waiting forever.
    async fn exchange(pool: &Pool, req: Request<Body>) -> Result<(u16, Bytes), BoxError> {
        let done = async {
            let res = pool.send(req).await?;
            let status = res.status().as_u16();
            let body = http_body_util::BodyExt::collect(res.into_body()).await?.to_bytes();
            Ok::<_, BoxError>((status, body))
        };
        tokio::time::timeout(Duration::from_secs(5), done).await.expect("no answer within 5 s")
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let (addr, accepted) = backend(OK, 0, false).await;
        let pool = Pool::new(addr, None);
        for _ in 0..3 {
            assert_eq!(exchange(&pool, get()).await.unwrap(), (200, Bytes::from_static(b"ok")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_backend_closed_is_skipped() {
        let (addr, accepted) = backend(OK, 0, true).await;
        let pool = Pool::new(addr, None);
        for _ in 0..3 {
            // Give the close time to arrive: the pooled connection has ended by then.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(exchange(&pool, get()).await.unwrap(), (200, Bytes::from_static(b"ok")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_still_sending_an_earlier_upload_is_passed_over() {
        // The backend answers as soon as it has the head, and never reads the rest.
        let (addr, accepted) = backend(OK, 0, false).await;
        let pool = Pool::new(addr, None);
        let upload = Request::post("/")
            .header("host", "backend")
            .body(Body::from(vec![7u8; 8 << 20]))
            .unwrap();
        // Answered (the upload still being written behind the answer): the next request
        // does not wait for that upload, it gets a connection of its own.
        let _ = exchange(&pool, upload).await;
        assert_eq!(exchange(&pool, get()).await.unwrap(), (200, Bytes::from_static(b"ok")));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}

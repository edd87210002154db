//! Plain HTTP/1 keep-alive connections that hold no HTTP state while idle.
//!
//! hyper keeps a connection's read and write buffers (8 KiB each), its dispatcher and the box
//! for its response future for as long as the connection lives. An idle keep-alive client
//! would cost that much, more than twenty times what HAProxy keeps for one, which frees a
//! connection's buffers between requests as NGINX does. So a plain HTTP/1 connection idle
//! for `RELEASE_IDLE_AFTER` (in `connection`) between requests hands its hyper connection
//! back (a graceful shutdown, which hyper completes at once when idle, with the socket told
//! to stay open), keeps the socket and the service, and waits for the next request's first
//! byte with a one-byte read. That byte comes first to the hyper connection built for the
//! next request. The wait is a task of its own, and the connection's first task (sniffing,
//! building the service stack, serving) ends: an idle connection is the socket, the service,
//! its `Activity` and a one-byte read, about 1.9 KB in all against 23 KB before
//! (`docs/BENCHMARKS.md`).
//!
//! The state is released only when nothing can be lost: no request in flight, no byte of the
//! next one read, every byte of the last response flushed, not upgraded. If hyper is not idle
//! after all, the graceful shutdown lets the current exchange finish and closes the
//! connection, as a shutdown would.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::watch;

use crate::connection::{Activity, Watched};

/// An error as hyper takes it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client connection's socket, as the connection's tasks hold it.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// A service that answers a client connection's requests: what hyper's connections and the
/// connection's tasks need of it.
pub(crate) trait ConnectionService<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = http::Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Unpin
    + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = http::Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Unpin
        + Send
        + 'static
{
}

/// A response body that hyper writes to a client connection.
pub(crate) trait ResponseBody:
    hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

/// What a plain HTTP/1 connection keeps from one request to the next.
pub(crate) struct Kept<IO, S, G> {
    pub(crate) builder: Arc<http1::Builder>,
    pub(crate) io: Watched<IO>,
    pub(crate) service: S,
    pub(crate) activity: Arc<Activity>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) client: SocketAddr,
    /// Whatever must live as long as the connection (its place under the connection limit,
    /// its count for shutdown).
    pub(crate) held: G,
}

/// A connection's work, with its type erased: serving and parking start each other.
type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves a plain HTTP/1 connection until it ends or `stop` turns true (then as `drive` in
/// `server` does: at once when idle, else after the request in flight), releasing its HTTP
/// state whenever it idles between requests. Returns at the first release: from then on,
/// the connection lives in tasks of its own, small while it waits.
pub(crate) async fn serve<IO, S, B, G>(kept: Kept<IO, S, G>)
where
    IO: ClientIo,
    S: ConnectionService<B>,
    B: ResponseBody,
    G: Send + 'static,
{
    kept.activity.enable_release();
    serving(kept).await;
}

/// Serves until the connection ends, or until it may be released: then a task of its own
/// waits for the next request ([`parking`]).
fn serving<IO, S, B, G>(kept: Kept<IO, S, G>) -> Work
where
    IO: ClientIo,
    S: ConnectionService<B>,
    B: ResponseBody,
    G: Send + 'static,
{
    Box::pin(async move {
        let Kept { builder, io, service, activity, mut stop, client, held } = kept;
        let Some((io, service, unread)) =
            until_idle(&builder, io, service, &activity, &mut stop, client).await
        else {
            return;
        };
        tracing::trace!(%client, "idle: HTTP state released");
        let mut kept = Kept { builder, io, service, activity, stop, client, held };
        if unread.is_empty() {
            // Even empty, it holds hyper's whole read buffer: let that go before waiting.
            drop(unread);
            tokio::spawn(parking(kept));
        } else {
            kept.io.unread(unread);
            tokio::spawn(serving(kept));
        }
    })
}

/// Waits for the next request's first byte with a one-byte read (the socket's read deadline,
/// `clientIdle` from the last response, still holds), then serves again.
fn parking<IO, S, B, G>(mut kept: Kept<IO, S, G>) -> Work
where
    IO: ClientIo,
    S: ConnectionService<B>,
    B: ResponseBody,
    G: Send + 'static,
{
    Box::pin(async move {
        let mut first = [0u8; 1];
        let read = tokio::select! {
            read = kept.io.read(&mut first) => read,
            _ = kept.stop.wait_for(|&stop| stop) => return,
        };
        match read {
            Ok(1) => kept.io.unread(Bytes::copy_from_slice(&first)),
            Ok(_) => return,
            Err(error) => {
                tracing::debug!(%error, client = %kept.client, "connection closed while idle");
                return;
            }
        }
        serving(kept).await;
    })
}

/// Serves requests with a new hyper connection until the connection ends (`None`) or may be
/// released: then its socket, its service and the bytes hyper had read ahead.
async fn until_idle<IO, S, B>(
    builder: &http1::Builder,
    io: Watched<IO>,
    service: S,
    activity: &Activity,
    stop: &mut watch::Receiver<bool>,
    client: SocketAddr,
) -> Option<(Watched<IO>, S, Bytes)>
where
    IO: ClientIo,
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let mut connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    let stopping = tokio::select! {
        biased;
        ended = &mut connection => {
            if let Err(error) = ended {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
            return None;
        }
        _ = stop.wait_for(|&stop| stop) => true,
        // Set while the connection is polled (by its socket's read timer), so looked at
        // right after it.
        () = poll_fn(|_| if activity.may_release() { Poll::Ready(()) } else { Poll::Pending }) => false,
    };
    if stopping {
        if !activity.is_idle() {
            Pin::new(&mut connection).graceful_shutdown();
            if let Err(error) = connection.await {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
        }
        return None;
    }
    activity.set_detached(true);
    Pin::new(&mut connection).graceful_shutdown();
    let closed = poll_fn(|cx| Poll::Ready(Pin::new(&mut connection).poll(cx))).await;
    activity.set_detached(false);
    match closed {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => {
            tracing::debug!(%error, %client, "connection ended with an error");
            return None;
        }
        // Not idle after all: it closes after the exchange under way.
        Poll::Pending => {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
            return None;
        }
    }
    // `None` when upgraded.
    let parts = connection.into_parts()?;
    Some((parts.io.into_inner(), parts.service, parts.read_buf))
}

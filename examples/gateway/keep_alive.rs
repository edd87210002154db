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
//! next request. What hyper and its driving future hold is boxed, so the task of an idle
//! connection is the socket, the service and the wait.
//!
//! The state is released only when nothing can be lost: no request in flight, no byte of the
//! next one read, every byte of the last response flushed, not upgraded. If hyper is not idle
//! after all, the graceful shutdown lets the current exchange finish and closes the
//! connection, as a shutdown would.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::watch;

use crate::connection::{Activity, Watched};

/// Serves a plain HTTP/1 connection until it ends or `stop` turns true (then as `drive` in
/// `server` does: at once when idle, else after the request in flight), releasing its HTTP
/// state whenever it idles between requests.
pub(crate) async fn serve<IO, S, B>(
    builder: &http1::Builder,
    mut io: Watched<IO>,
    mut service: S,
    activity: &Activity,
    mut stop: watch::Receiver<bool>,
    client: SocketAddr,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    activity.enable_release();
    loop {
        // Boxed: the task of an idle connection holds none of hyper's state, nor what drives it.
        let served = Box::pin(until_idle(builder, io, service, activity, &mut stop, client));
        let Some((idle, kept, unread)) = served.await else {
            return;
        };
        tracing::trace!(%client, "idle: HTTP state released");
        (io, service) = (idle, kept);
        if !unread.is_empty() {
            io.unread(unread);
            continue;
        }
        // Even empty, it holds hyper's whole read buffer: let that go before waiting.
        drop(unread);
        let mut first = [0u8; 1];
        // The socket's read deadline (clientIdle from the last response) still holds.
        let read = tokio::select! {
            read = io.read(&mut first) => read,
            _ = stop.wait_for(|&stop| stop) => return,
        };
        match read {
            Ok(1) => io.unread(Bytes::copy_from_slice(&first)),
            Ok(_) => return,
            Err(error) => {
                tracing::debug!(%error, %client, "connection closed while idle");
                return;
            }
        }
    }
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
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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

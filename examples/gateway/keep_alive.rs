//! Plain HTTP/1 keep-alive connections that hold no HTTP state while idle.
//!
//! hyper keeps a connection's read and write buffers (8 KiB each), its dispatcher and the box
//! for its response future for as long as the connection lives. An idle keep-alive client
//! would cost that much, more than twenty times what HAProxy keeps for one, which frees a
//! connection's buffers between requests as NGINX does. So a plain HTTP/1 connection idle
//! for `RELEASE_IDLE_AFTER` (in `connection`) between requests hands its hyper connection back (a graceful
//! shutdown, which hyper completes at once when idle, with the socket told to stay open),
//! keeps the socket and the service, and waits for the next request's first byte with a
//! one-byte read. That byte comes first to the hyper connection built for the next request.
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
        // Boxed: while idle, the task keeps none of it.
        let mut connection =
            Box::pin(builder.serve_connection(TokioIo::new(io), service).with_upgrades());
        let stopping = tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, %client, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|&stop| stop) => true,
            // Set while the connection is polled (by its socket's read timer), so looked at
            // right after it.
            () = poll_fn(|_| if activity.may_release() { Poll::Ready(()) } else { Poll::Pending }) => false,
        };
        if stopping {
            if !activity.is_idle() {
                connection.as_mut().graceful_shutdown();
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %client, "connection ended with an error");
                }
            }
            return;
        }
        activity.set_detached(true);
        connection.as_mut().graceful_shutdown();
        let closed = poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
        activity.set_detached(false);
        match closed {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, %client, "connection ended with an error");
                return;
            }
            // Not idle after all: it closes after the exchange under way.
            Poll::Pending => {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %client, "connection ended with an error");
                }
                return;
            }
        }
        let Some(parts) = Pin::into_inner(connection).into_parts() else {
            return; // upgraded
        };
        tracing::trace!(%client, "idle: HTTP state released");
        io = parts.io.into_inner();
        service = parts.service;
        if parts.read_buf.is_empty() {
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
        } else {
            io.unread(parts.read_buf);
        }
    }
}

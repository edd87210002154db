//! The h2c connection to one endpoint (HTTP/2 with prior knowledge, `appProtocol:
//! kubernetes.io/h2c`): one multiplexed connection per endpoint per serving thread, opened on
//! first use and again once it has closed.
//!
//! Like the HTTP/1.1 [`pool`](crate::pool), it hands a request that never left back to the
//! balancer in a [`NotSent`] error (no connection could be made, or the connection refused the
//! stream before anything was written), so that a gRPC call with its body goes to another
//! endpoint rather than failing.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use tower::BoxError;
use tower_session_persistence::balance::NotSent;

use crate::pool;

/// The h2c connection to one endpoint. Cheap to clone.
#[derive(Clone)]
pub(crate) struct H2c {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    connect_timeout: Option<Duration>,
    /// The open connection; locked across a connect, so that requests arriving meanwhile
    /// share the one being made.
    sender: Mutex<Option<SendRequest<Body>>>,
}

impl fmt::Debug for H2c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2c").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

impl H2c {
    pub(crate) fn new(addr: SocketAddr, connect_timeout: Option<Duration>) -> Self {
        Self { inner: Arc::new(Inner { addr, connect_timeout, sender: Mutex::new(None) }) }
    }

    /// Sends `req` (absolute-form: its authority is the client's host) as one stream.
    pub(crate) async fn send(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let mut sender = match self.sender().await {
            Ok(sender) => sender,
            Err(error) => return Err(Box::new(NotSent::with_request(error, req))),
        };
        if let Err(error) = sender.ready().await {
            self.forget().await;
            return Err(Box::new(NotSent::with_request(error, req)));
        }
        match sender.try_send_request(req).await {
            Ok(res) => Ok(res.map(Body::new)),
            Err(mut error) => match error.take_message() {
                Some(unsent) => {
                    self.forget().await;
                    Err(Box::new(NotSent::with_request(error.into_error(), unsent)))
                }
                None => Err(error.into_error().into()),
            },
        }
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        let mut slot = self.inner.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = self.connect().await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Drops a connection that refused a stream, so that the next request opens another.
    async fn forget(&self) {
        *self.inner.sender.lock().await = None;
    }

    /// Opens a connection and starts driving it on this thread.
    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let addr = self.inner.addr;
        let stream = pool::open(addr, self.inner.connect_timeout).await?;
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %addr, "h2c upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

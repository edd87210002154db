//! Recognising a failing endpoint, and sending again a request that never reached it.
//!
//! The balancer does not know its endpoints' error type, so it asks a classifier whether an
//! error means "the endpoint is failing and the request never left": a connect failure. Such
//! an error ejects the endpoint (see [`EndpointState::Ejected`](super::EndpointState)), and
//! the request is *redispatched* on the balanced path, so the client sees no failure at all
//! and its session re-pins (HAProxy's `option redispatch`). The request to send again is the
//! one the endpoint service hands back in [`NotSent::with_request`] (any method, any body:
//! the body was never read), else a copy made beforehand by a [`Replay`] policy. Any other
//! error (a reset after the request was sent, a timeout) is returned as it is: the request may
//! have had effects, and one broken exchange says little about the endpoint.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;
use std::sync::{Mutex, PoisonError};

use http::Request;
use tower::BoxError;

/// The most causes [`is_connect_failure`] looks at.
const MAX_DEPTH: usize = 16;

/// The default failure classifier: `true` when the error, or any error in its `source()`
/// chain, is [`NotSent`] or an [`io::Error`] that only a connection attempt produces
/// (refused, host or network unreachable, address not available).
///
/// hyper-util's legacy client keeps the `io::Error` of a failed connect in its chain, so its
/// connect failures are recognised; a request that was written and then lost is not.
pub fn is_connect_failure(error: &BoxError) -> bool {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error.as_ref());
    for _ in 0..MAX_DEPTH {
        let Some(err) = cause else { return false };
        if err.is::<NotSent>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Wraps an endpoint service's error to tell the balancer that the request never reached the
/// endpoint (the default classifier, [`is_connect_failure`], recognises it anywhere in an
/// error's chain). With [`with_request`](Self::with_request) it also hands the request back,
/// untouched, so that the balancer sends it to another endpoint.
///
/// ```
/// use http::Request;
/// use tower::BoxError;
/// use tower_session_persistence::balance::{NotSent, take_unsent_request};
///
/// let req = Request::post("/cart").body("a body never read".to_owned()).unwrap();
/// let error: BoxError = NotSent::with_request("connection refused", req).into();
/// let back = take_unsent_request::<String>(&error).expect("handed back");
/// assert_eq!(back.body(), "a body never read");
/// assert!(take_unsent_request::<String>(&error).is_none(), "taken once");
/// ```
pub struct NotSent {
    error: BoxError,
    /// The unsent request, type-erased (the balancer knows its body type); behind a lock
    /// because errors are `Sync` and bodies need not be.
    request: Mutex<Option<Box<dyn Any + Send>>>,
}

impl NotSent {
    /// Marks `error` as a failure before the request was sent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self { error: error.into(), request: Mutex::new(None) }
    }

    /// Marks `error` as a failure before `req` was sent, and hands `req` back for another
    /// endpoint. Give it back as the endpoint got it: the balancer sends it on as it is.
    pub fn with_request<B: Send + 'static>(error: impl Into<BoxError>, req: Request<B>) -> Self {
        Self { error: error.into(), request: Mutex::new(Some(Box::new(req))) }
    }

    /// The request handed back, if there is one with body type `B` and it was not taken yet.
    pub fn take_request<B: 'static>(&self) -> Option<Request<B>> {
        let mut slot = self.request.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.take()?.downcast::<Request<B>>() {
            Ok(req) => Some(*req),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.error
    }
}

/// The request handed back by a [`NotSent`] anywhere in `error`'s `source()` chain, if its
/// body type is `B` and nobody took it yet.
pub fn take_unsent_request<B: 'static>(error: &BoxError) -> Option<Request<B>> {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error.as_ref());
    for _ in 0..MAX_DEPTH {
        let err = cause?;
        if let Some(not_sent) = err.downcast_ref::<NotSent>()
            && let Some(req) = not_sent.take_request()
        {
            return Some(req);
        }
        cause = err.source();
    }
    None
}

impl fmt::Debug for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let handed_back = self.request.lock().map(|r| r.is_some()).unwrap_or_default();
        f.debug_struct("NotSent")
            .field("error", &self.error)
            .field("request_handed_back", &handed_back)
            .finish()
    }
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request not sent: {}", self.error)
    }
}

impl Error for NotSent {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// Whether a request with `method` may be sent again after it reached an endpoint and failed
/// (RFC 9110 §9.2.2: the idempotent methods).
pub(crate) fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE]
        .contains(method)
}

/// Makes a copy of a request before it is sent, so that it can be sent again elsewhere. Set
/// with [`BalancerBuilder::replay`](super::BalancerBuilder::replay).
///
/// The copy is used when the endpoint failed to connect and did not hand the request back
/// ([`NotSent::with_request`]), and, with
/// [`BalancerBuilder::retry_sent_idempotent`](super::BalancerBuilder::retry_sent_idempotent),
/// when an idempotent request reached its endpoint and failed.
///
/// Implemented for closures `Fn(&Request<B>) -> Option<Request<B>>`, for [`NoReplay`] (the
/// default) and for [`ReplayEmptyBodies`].
pub trait Replay<B>: Send + Sync + 'static {
    /// A copy of `req` to send instead if the first attempt never reaches its endpoint, or
    /// `None` if it cannot be replayed.
    fn replay(&self, req: &Request<B>) -> Option<Request<B>>;

    /// Whether this ever replays; `false` spares the balancer the call.
    fn enabled(&self) -> bool {
        true
    }
}

/// Never replays (the default).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct NoReplay;

impl<B> Replay<B> for NoReplay {
    fn replay(&self, _req: &Request<B>) -> Option<Request<B>> {
        None
    }

    fn enabled(&self) -> bool {
        false
    }
}

/// Replays requests whose body is empty ([`http_body::Body::is_end_stream`]): method, URI,
/// version, headers and extensions are copied, the body is `B::default()`.
///
/// This covers `GET`, `HEAD` and every other request without a body, which is what browsers
/// send most. The copy costs a header map clone per request.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct ReplayEmptyBodies;

impl<B> Replay<B> for ReplayEmptyBodies
where
    B: http_body::Body + Default,
{
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        if !req.body().is_end_stream() {
            return None;
        }
        let mut copy = Request::new(B::default());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

impl<B, F> Replay<B> for F
where
    F: Fn(&Request<B>) -> Option<Request<B>> + Send + Sync + 'static,
{
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        self(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_recognised_through_the_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused: BoxError = Box::new(Wrapper(io::ErrorKind::ConnectionRefused.into()));
        assert!(is_connect_failure(&refused));
        let reset: BoxError = Box::new(Wrapper(io::ErrorKind::ConnectionReset.into()));
        assert!(!is_connect_failure(&reset));
        let not_sent: BoxError = Box::new(NotSent::new("no connection"));
        assert!(is_connect_failure(&not_sent));
        assert!(!is_connect_failure(&BoxError::from("other")));
    }

    #[test]
    fn empty_bodies_are_replayed_with_their_head() {
        let mut req = Request::post("http://x/a?b")
            .header("x-a", "1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(7u8);
        let copy = ReplayEmptyBodies.replay(&req).unwrap();
        assert_eq!(copy.method(), "POST");
        assert_eq!(copy.uri(), "http://x/a?b");
        assert_eq!(copy.headers()["x-a"], "1");
        assert_eq!(copy.extensions().get::<u8>(), Some(&7));
        let full = Request::new(http_body_util::Full::new(bytes::Bytes::from_static(b"x")));
        assert!(ReplayEmptyBodies.replay(&full).is_none());
    }
}

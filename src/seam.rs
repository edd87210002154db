//! The seam between the persistence layer and a balancer.
//!
//! The layer and the balancer never call each other: they meet through two typed
//! extensions, so either one works with any other piece that speaks them.
//!
//! * [`PinnedEndpoint<K>`] travels in **request** extensions, set by
//!   [`SessionPersistence`](crate::SessionPersistence) when the request carries a valid session,
//!   and is *taken* (removed) by the balancer.
//! * [`ServedBy<K>`] travels in **response** extensions, set by the balancer to the endpoint
//!   that actually served the request, and is *taken* by the layer to decide what to write back.
//!
//! Taking, rather than reading, is what lets layers nest: a global layer pinning a region and a
//! regional layer pinning a backend each see only the value meant for them.
//!
//! A hand-written balancer honours the seam with [`PinnedEndpoint::take`] and
//! [`ServedBy::insert`]:
//!
//! ```
//! use http::{Request, Response};
//! use tower_session_persistence::{PinnedEndpoint, ServedBy};
//!
//! fn route(mut req: Request<()>) -> Response<()> {
//!     // Honour the pin when there is one, otherwise pick "b".
//!     let key = PinnedEndpoint::<String>::take(req.extensions_mut())
//!         .map(|pin| pin.0)
//!         .unwrap_or_else(|| "b".to_owned());
//!     let mut res = Response::new(());
//!     ServedBy(key).insert(res.extensions_mut());
//!     res
//! }
//!
//! let mut req = Request::new(());
//! req.extensions_mut().insert(PinnedEndpoint("a".to_owned()));
//! let mut res = route(req);
//! assert_eq!(ServedBy::<String>::take(res.extensions_mut()), Some(ServedBy("a".to_owned())));
//! ```

use std::error::Error;
use std::fmt;

use http::Extensions;

/// The endpoint a request is pinned to, decoded from the client's session.
///
/// Set in request extensions by the layer; a balancer should [`take`](Self::take) it.
///
/// ```
/// use http::Extensions;
/// use tower_session_persistence::PinnedEndpoint;
///
/// let mut extensions = Extensions::new();
/// PinnedEndpoint("pod-a".to_owned()).insert(&mut extensions);
/// let pin = PinnedEndpoint::<String>::take(&mut extensions);
/// assert_eq!(pin, Some(PinnedEndpoint("pod-a".to_owned())));
/// // Taken: a layer or balancer further in never sees it.
/// assert_eq!(PinnedEndpoint::<String>::take(&mut extensions), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PinnedEndpoint<K>(pub K);

impl<K: Clone + Send + Sync + 'static> PinnedEndpoint<K> {
    /// Removes and returns the pin from `extensions`, so that nested layers never see it.
    pub fn take(extensions: &mut Extensions) -> Option<Self> {
        extensions.remove::<Self>()
    }

    /// Puts the pin into `extensions`, replacing any earlier one of the same key type.
    pub fn insert(self, extensions: &mut Extensions) {
        extensions.insert(self);
    }
}

/// The endpoint that served a response.
///
/// Set in response extensions by the balancer; the layer [`take`](Self::take)s it to decide
/// whether the client's session is new, unchanged or re-pinned.
///
/// ```
/// use http::Response;
/// use tower_session_persistence::ServedBy;
///
/// let mut res = Response::new(());
/// ServedBy(7u64).insert(res.extensions_mut());
/// assert_eq!(ServedBy::<u64>::take(res.extensions_mut()), Some(ServedBy(7)));
/// // Each key type is its own extension: nested layers with different keys never mix.
/// assert_eq!(ServedBy::<String>::take(res.extensions_mut()), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServedBy<K>(pub K);

impl<K: Clone + Send + Sync + 'static> ServedBy<K> {
    /// Removes and returns the tag from `extensions`, so that outer layers never see it.
    pub fn take(extensions: &mut Extensions) -> Option<Self> {
        let tag = extensions.remove::<Self>()?;
        if extensions.get::<ServedByType>().is_some_and(|t| t.0 == std::any::type_name::<K>()) {
            extensions.remove::<ServedByType>();
        }
        Some(tag)
    }

    /// Puts the tag into `extensions`, replacing any earlier one of the same key type.
    ///
    /// Prefer this to `extensions.insert(ServedBy(key))`: it also notes the key's type, so
    /// that a layer expecting another key type can say which one it found.
    pub fn insert(self, extensions: &mut Extensions) {
        extensions.insert(ServedByType(std::any::type_name::<K>()));
        extensions.insert(self);
    }
}

/// The key type of the last [`ServedBy`] put in with [`ServedBy::insert`], for the layer's
/// warning about a key type mismatch.
#[derive(Clone, Copy, Debug)]
struct ServedByType(&'static str);

/// The key type of a [`ServedBy`] in `extensions`, if one was put in with [`ServedBy::insert`].
pub(crate) fn served_by_type(extensions: &Extensions) -> Option<&'static str> {
    extensions.get::<ServedByType>().map(|t| t.0)
}

/// What a balancer does when a request's pinned endpoint is not available.
///
/// GEP-1619 leaves this to the implementation: HAProxy's `option redispatch` re-balances,
/// Envoy's `strict` mode rejects.
///
/// ```
/// # #[cfg(feature = "balance")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceExt, service_fn};
/// use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
/// use tower_session_persistence::{OnUnavailable, PinnedEndpoint, PinnedUnavailable};
///
/// let (endpoints, discover) = discover_channel();
/// let pod = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
/// endpoints.insert("pod-a".to_owned(), pod);
/// let balancer =
///     BalancerBuilder::new().group(1, discover).on_unavailable(OnUnavailable::Reject).build();
///
/// // A session whose endpoint is gone.
/// let mut req = Request::new(());
/// PinnedEndpoint("pod-z".to_owned()).insert(req.extensions_mut());
/// let error = balancer.oneshot(req).await.unwrap_err();
/// assert!(error.is::<PinnedUnavailable>());
/// # }
/// # #[cfg(not(feature = "balance"))] fn main() {}
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnUnavailable {
    /// Balance the request as if it had no session; the layer then issues a new session
    /// (the default).
    #[default]
    Rebalance,
    /// Fail the request with [`PinnedUnavailable`], which a gateway answers with
    /// `503 Service Unavailable`.
    Reject,
}

/// The error a balancer returns when the pinned endpoint is gone and the policy is
/// [`OnUnavailable::Reject`].
///
/// It does not say which endpoint: errors end up in logs and responses, and the key of an
/// endpoint is topology that clients should not learn. See [`OnUnavailable`] for an example,
/// and [`response`](Self::response) for the answer a gateway gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PinnedUnavailable;

impl PinnedUnavailable {
    /// The status a gateway should answer with: `503 Service Unavailable`.
    pub const STATUS: http::StatusCode = http::StatusCode::SERVICE_UNAVAILABLE;

    /// The response for this error: [`STATUS`](Self::STATUS), an empty body, and the error
    /// itself in the response's extensions.
    ///
    /// Made beneath [`SessionPersistence`](crate::SessionPersistence) (an error handler
    /// between the layer and the balancer), it lets the layer record the request as
    /// [`Decision::Rejected`](crate::Decision::Rejected), log it, and leave the client's session
    /// alone:
    ///
    /// ```
    /// use http::Response;
    /// use tower::BoxError;
    /// use tower_session_persistence::PinnedUnavailable;
    ///
    /// fn error_page(error: BoxError) -> Response<String> {
    ///     if error.is::<PinnedUnavailable>() {
    ///         return PinnedUnavailable::response();
    ///     }
    ///     let mut res = Response::new("bad gateway".to_owned());
    ///     *res.status_mut() = http::StatusCode::BAD_GATEWAY;
    ///     res
    /// }
    ///
    /// let res = error_page(PinnedUnavailable::default().into());
    /// assert_eq!(res.status(), 503);
    /// assert!(res.extensions().get::<PinnedUnavailable>().is_some());
    /// ```
    pub fn response<B: Default>() -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = Self::STATUS;
        res.extensions_mut().insert(Self);
        res
    }
}

impl fmt::Display for PinnedUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session's endpoint is unavailable")
    }
}

impl Error for PinnedUnavailable {}

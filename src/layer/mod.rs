//! The session persistence middleware: [`SessionPersistenceLayer`], [`SessionPersistence`] and
//! its [`ResponseFuture`].
//!
//! On the way in, the service reads the client's session (a cookie or a header), verifies the
//! token, removes it from what the backend will see, and puts a [`PinnedEndpoint`] into the
//! request's extensions. On the way out, it takes the [`ServedBy`] tag that the balancer set and
//! writes a new token when the session is new, re-pinned, expired or due for a refresh. A
//! missing, invalid, foreign or expired token is simply no session: the request is balanced and
//! the response carries a fresh one. The layer never fails a request of its own.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};
//! use tower_session_persistence::policy::SessionPolicy;
//! # #[cfg(feature = "signed")]
//! use tower_session_persistence::token::SignedCodec;
//!
//! # #[cfg(feature = "signed")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SessionPersistenceLayer::new(
//!     SessionPolicy::cookie("shop").build()?,
//!     SignedCodec::new([[42u8; 32]])?,
//! );
//! // Stands in for a balancer: honours the pin, otherwise "pod-a".
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|mut req: Request<()>| async move {
//!     let key = PinnedEndpoint::<String>::take(req.extensions_mut()).map_or("pod-a".to_owned(), |p| p.0);
//!     let mut res = Response::new(());
//!     res.extensions_mut().insert(ServedBy(key));
//!     Ok::<_, std::convert::Infallible>(res)
//! }));
//!
//! let res = svc.clone().oneshot(Request::new(())).await?;
//! let set_cookie = res.headers()["set-cookie"].to_str()?;
//! assert!(set_cookie.starts_with("shop="));
//! assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Secure"));
//!
//! // The client sends it back: same endpoint, nothing new to set.
//! let cookie = set_cookie.split(';').next().unwrap();
//! let res = svc.oneshot(Request::builder().header("cookie", cookie).body(())?).await?;
//! assert!(res.headers().get("set-cookie").is_none());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "signed"))] fn main() {}
//! ```

mod future;
mod service;
mod settings;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

pub use self::future::ResponseFuture;
pub use self::service::SessionPersistence;
use self::settings::Settings;
use crate::policy::{Carrier, SessionPolicy};
use crate::strategy::{DynStrategy, Header, Insert, Strategy};
use crate::token::Codec;
#[cfg(doc)]
use crate::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};

/// How the layer treated a request's session; also put into the response's extensions so that
/// the application can log or count it.
///
/// A response that no balancer tagged with [`ServedBy`] (a local route, an error page) has
/// no decision, except [`Rejected`](Self::Rejected).
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Stands in for a balancer: honours the pin, otherwise `pod-a`.
/// let balancer = service_fn(|mut req: Request<()>| async move {
///     let pin = PinnedEndpoint::<String>::take(req.extensions_mut());
///     let mut res = Response::new(());
///     ServedBy(pin.map_or("pod-a".to_owned(), |p| p.0)).insert(res.extensions_mut());
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// let policy = SessionPolicy::cookie("sid").build()?;
/// let app = SessionPersistenceLayer::new(policy, PlainCodec::default()).layer(balancer);
///
/// let res = app.clone().oneshot(Request::new(())).await?;
/// assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::New));
/// let req = Request::builder().header("cookie", "sid=pod-a").body(())?;
/// let res = app.oneshot(req).await?;
/// match res.extensions().get::<Decision>() {
///     Some(Decision::Pinned) => {}
///     other => panic!("expected a pinned session, got {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// No session came with the request: it was balanced and a session was issued.
    New,
    /// A valid session came and the request reached its endpoint.
    Pinned,
    /// A valid session came but another endpoint served the request; the session now names
    /// that endpoint.
    Repinned,
    /// The session had passed its absolute or idle timeout: treated as no session.
    Expired,
    /// The token was not one of ours (forged, tampered, foreign, garbage): treated as no
    /// session.
    Invalid,
    /// A valid session came but its endpoint could not take the request, and the balancer
    /// refused to move it ([`OnUnavailable::Reject`]): the response is the `503` that an error
    /// handler beneath the layer made of [`PinnedUnavailable`] with
    /// [`PinnedUnavailable::response`]. The session is left as it is.
    ///
    /// A balancer error that reaches the layer as an `Err` has no decision: the layer cannot
    /// tell what a generic error means, so turn errors into responses beneath it.
    Rejected,
}

impl Decision {
    /// A lower-case word for logs: `new`, `pinned`, `re-pinned`, `expired`, `invalid`,
    /// `rejected`.
    ///
    /// ```
    /// use tower_session_persistence::Decision;
    ///
    /// assert_eq!(Decision::Repinned.as_str(), "re-pinned");
    /// assert_eq!(Decision::Rejected.to_string(), "rejected");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::New => "new",
            Decision::Pinned => "pinned",
            Decision::Repinned => "re-pinned",
            Decision::Expired => "expired",
            Decision::Invalid => "invalid",
            Decision::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Applies session persistence to a service; see the [module docs](self).
///
/// `K` is the endpoint key type of the balancer beneath, `String` unless you say otherwise
/// ([`keyed`](Self::keyed)). Cheap to clone (the configuration sits behind an `Arc`); the
/// setters never panic, and a setter on a clone changes only that clone (copy on write).
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::SessionPersistenceLayer;
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Insert;
/// use tower_session_persistence::token::PlainCodec;
///
/// let policy = SessionPolicy::cookie("shop").idle_timeout(Duration::from_secs(1800)).build()?;
/// // The plain codec shows the endpoint in clear: use `SignedCodec` or `SealedCodec` in
/// // production.
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default())
///     // One scope per route rule: a session never crosses rules.
///     .scope("default/shop/cart")
///     .strategy(Insert::new().nocache(true))
///     .max_clock_skew(Duration::from_secs(5))
///     .refresh_interval(Duration::from_secs(60));
/// assert_eq!(layer.policy().name(), "shop");
///
/// // Configuring a clone leaves the original as it was.
/// let other = layer.clone().scope("default/shop/checkout");
/// assert_eq!(other.get_scope(), "default/shop/checkout");
/// assert_eq!(layer.get_scope(), "default/shop/cart");
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
#[must_use]
pub struct SessionPersistenceLayer<K = String> {
    settings: Arc<Settings>,
    _key: PhantomData<fn() -> K>,
}

impl<K> Clone for SessionPersistenceLayer<K> {
    fn clone(&self) -> Self {
        Self { settings: self.settings.clone(), _key: PhantomData }
    }
}

impl<K> fmt::Debug for SessionPersistenceLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPersistenceLayer")
            .field("key", &std::any::type_name::<K>())
            .field("settings", &self.settings)
            .finish()
    }
}

impl SessionPersistenceLayer {
    /// A layer enforcing `policy`, with tokens written and read by `codec`, for a balancer
    /// whose endpoint keys are `String`s (pod names, `host:port`), as
    /// [`discover_channel`](crate::balance::discover_channel)'s usually are. For another key
    /// type use [`keyed`](Self::keyed).
    ///
    /// The scope defaults to the session's name; give each route rule its own with
    /// [`scope`](Self::scope).
    pub fn new(policy: SessionPolicy, codec: impl Codec) -> Self {
        Self::keyed(policy, codec)
    }
}

impl<K> SessionPersistenceLayer<K> {
    /// A layer like [`new`](SessionPersistenceLayer::new) for a balancer whose endpoint keys
    /// are `K`. The key type must be the one the balancer tags responses with
    /// ([`ServedBy<K>`]): a layer that never sees its `ServedBy<K>` writes no session and
    /// warns once (with the `tracing` feature).
    ///
    /// ```
    /// use tower_session_persistence::SessionPersistenceLayer;
    /// use tower_session_persistence::policy::SessionPolicy;
    /// use tower_session_persistence::token::PlainCodec;
    ///
    /// let policy = SessionPolicy::cookie("sid").build()?;
    /// let layer: SessionPersistenceLayer<u64> = SessionPersistenceLayer::keyed(policy, PlainCodec::default());
    /// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
    /// ```
    pub fn keyed(policy: SessionPolicy, codec: impl Codec) -> Self {
        let scope = policy.name().into();
        let refresh = policy.idle_timeout().map(|idle| idle / 4);
        let strategy: Arc<dyn DynStrategy> = match policy.carrier() {
            Carrier::Cookie(_) => Arc::new(Insert::new()),
            Carrier::Header(_) => Arc::new(Header),
        };
        Self {
            settings: Arc::new(Settings {
                policy,
                codec: Arc::new(codec),
                strategy,
                scope,
                max_skew: Duration::from_secs(60),
                refresh,
                watch: Arc::default(),
            }),
            _key: PhantomData,
        }
    }

    /// The same configuration for a balancer whose endpoint keys are `K2`.
    ///
    /// ```
    /// use tower_session_persistence::SessionPersistenceLayer;
    /// use tower_session_persistence::policy::SessionPolicy;
    /// use tower_session_persistence::token::PlainCodec;
    ///
    /// let policy = SessionPolicy::cookie("sid").build()?;
    /// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default()).key::<u64>();
    /// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
    /// ```
    pub fn key<K2>(self) -> SessionPersistenceLayer<K2> {
        SessionPersistenceLayer { settings: self.settings, _key: PhantomData }
    }

    /// Copy on write: a layer shared with clones gets its own settings first.
    fn settings_mut(&mut self) -> &mut Settings {
        let settings = Arc::make_mut(&mut self.settings);
        // A configured copy is a new layer: its warnings are its own.
        if Arc::strong_count(&settings.watch) > 1 {
            settings.watch = Arc::default();
        }
        settings
    }

    /// Binds tokens to `scope`, typically one route rule (`namespace/route/rule-name`): a token
    /// issued under one scope is never honoured under another.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.settings_mut().scope = scope.into().into();
        self
    }

    /// How the session travels (default: [`Insert`] for cookies, [`Header`] for headers); see
    /// the [`strategy`](crate::strategy) module.
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.settings_mut().strategy = Arc::new(strategy);
        self
    }

    /// How far in the future a token's times may lie before it is refused (default 60 s), to
    /// allow for clock differences between replicas.
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.settings_mut().max_skew = skew;
        self
    }

    /// How old a token may get before it is re-issued with a new refresh time (default a
    /// quarter of the idle timeout, or never without one). A session survives any gap between
    /// requests shorter than the idle timeout minus this interval. Zero re-issues whenever the
    /// refresh time has passed, as HAProxy does with `maxidle`.
    ///
    /// Whatever the interval, a token that the codec verified with an older key (after a key
    /// rotation) is re-issued under the primary key on its next response.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().refresh = Some(interval);
        self
    }

    /// The policy this layer enforces.
    pub fn policy(&self) -> &SessionPolicy {
        &self.settings.policy
    }

    /// The scope tokens are bound to ([`scope`](Self::scope)).
    pub fn get_scope(&self) -> &str {
        &self.settings.scope
    }
}

impl<S, K> Layer<S> for SessionPersistenceLayer<K> {
    type Service = SessionPersistence<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionPersistence::from_parts(inner, self.settings.clone())
    }
}

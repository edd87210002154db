//! Learned sessions: persistence on the application's own session identifier.
//!
//! Many applications already have a session identifier that the gateway must not or cannot
//! replace: a `JSESSIONID` cookie the application signs itself, an `Mcp-Session-Id` header, a
//! gRPC metadata key chosen by the client library. [`LearnLayer`] learns which endpoint owns
//! each identifier, as HAProxy's stick tables (`stick store-response res.cook(JSESSIONID)`)
//! and NGINX's `sticky learn` do:
//!
//! * when a response sets the identifier (a `Set-Cookie` of that name, or the header), the
//!   mapping identifier → endpoint is stored in a [`SessionStore`];
//! * a request carrying a known identifier is pinned to its endpoint ([`PinnedEndpoint`]);
//!   an unknown one is balanced, and learned if its response sets it;
//! * with [`learn_requests`](LearnLayer::learn_requests), an identifier the client chose
//!   itself is learned from the request too (HAProxy's `stick on`);
//! * when the balancer moves a pinned request elsewhere (its endpoint is gone), the
//!   identifier is re-mapped to the new endpoint ([`Decision::Repinned`]);
//! * the application's cookie and header reach the backend and the client untouched: the
//!   layer reads headers and sets none.
//!
//! The store never sees an identifier: it gets a [`StoreKey`], an HMAC-SHA256 (with the
//! layer's secret key) of the scope and the identifier, truncated to 128 bits. Identifiers
//! are never logged and never put in a metric label; the layer's `tracing` events carry the
//! decision, the endpoint key and the scope only.
//!
//! # Why a layer of its own, not a [`Strategy`](crate::strategy::Strategy)
//!
//! A token strategy reads everything it needs from the request itself, synchronously; a
//! learned session needs a store lookup, which for a shared store is I/O, *before* the
//! request may go on to the balancer. The [`Strategy`](crate::strategy::Strategy) trait is
//! synchronous, and making it asynchronous would put a boxed future on the hot path of every
//! token strategy. So [`Learn`] is a tower service of its own that speaks the same seam: it
//! puts [`PinnedEndpoint<K>`] into request extensions and takes [`ServedBy<K>`] from response
//! extensions, so it works over the crate's [`Balancer`](crate::balance::Balancer) or any
//! balancer that honours the seam, and reports the same [`Decision`]s.
//!
//! Its [`ResponseFuture`] is a named state machine (lookup → call → store). The store's
//! answers are [`StoreFuture`](crate::store::StoreFuture)s: the in-process [`MemoryStore`]
//! answers at once with no allocation and the inner service is called straight from `call`;
//! only a networked store (Redis) boxes its future, one allocation beside a network round
//! trip. Waiting for a lookup means calling the inner service later, so the service made
//! ready by `poll_ready` is moved into the future and a clone left in its place (the usual
//! tower pattern); `poll_ready` only forwards.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_session_persistence::learn::{Identifier, LearnLayer};
//! use tower_session_persistence::store::MemoryStore;
//! use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Stands in for a balancer: honours the pin, otherwise "pod-b"; the application on it
//! // starts a session when there is none.
//! let app = service_fn(|mut req: Request<()>| async move {
//!     let pod = PinnedEndpoint::<String>::take(req.extensions_mut()).map_or("pod-b".to_owned(), |p| p.0);
//!     let mut res = Response::new(pod.clone());
//!     if req.headers().get("cookie").is_none() {
//!         res.headers_mut().insert("set-cookie", "JSESSIONID=abc123; Path=/; HttpOnly".parse()?);
//!     }
//!     ServedBy(pod).insert(res.extensions_mut());
//!     Ok::<_, http::Error>(res)
//! });
//! let layer = LearnLayer::<String>::new(Identifier::cookie("JSESSIONID"), MemoryStore::new(10_000), [7u8; 32])?
//!     .scope("default/shop/0");
//! let svc = layer.layer(app);
//!
//! // The application's cookie is learned from its response, and left as it is.
//! let res = svc.clone().oneshot(Request::new(())).await?;
//! assert_eq!(res.headers()["set-cookie"], "JSESSIONID=abc123; Path=/; HttpOnly");
//! assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::New));
//!
//! // The client sends it back: pinned to the endpoint that set it.
//! let req = Request::builder().header("cookie", "JSESSIONID=abc123").body(())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
//! assert_eq!(res.body(), "pod-b");
//! # Ok(())
//! # }
//! ```
//!
//! [`PinnedEndpoint`]: crate::PinnedEndpoint
//! [`PinnedEndpoint<K>`]: crate::PinnedEndpoint
//! [`ServedBy<K>`]: crate::ServedBy
//! [`Decision`]: crate::Decision
//! [`Decision::Repinned`]: crate::Decision::Repinned
//! [`StoreKey`]: crate::store::StoreKey
//! [`SessionStore`]: crate::store::SessionStore
//! [`MemoryStore`]: crate::store::MemoryStore

mod future;
mod service;

use std::error::Error;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use http::header::{HeaderMap, HeaderName, SET_COOKIE};
use sha2::Sha256;
use tower_layer::Layer;

pub use self::future::ResponseFuture;
pub use self::service::Learn;
use crate::carrier;
use crate::store::{Lifetime, SessionStore, StoreKey};

/// The shortest secret key [`LearnLayer::new`] takes, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Where the application's session identifier travels.
///
/// ```
/// use tower_session_persistence::learn::Identifier;
///
/// let cookie = Identifier::cookie("JSESSIONID");
/// let header = Identifier::header(http::HeaderName::from_static("mcp-session-id"));
/// assert_eq!(cookie.name(), "JSESSIONID");
/// assert_eq!(header.name(), "mcp-session-id");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identifier {
    /// A cookie: read from every `Cookie` field of requests (the first of that name wins,
    /// quotes removed), learned from responses' `Set-Cookie` of that name (a deletion, with
    /// an empty value or `Max-Age` of zero or less, is not learned).
    Cookie(String),
    /// A header (or gRPC metadata key): the first value, trimmed, in requests and responses.
    Header(HeaderName),
}

impl Identifier {
    /// The application's cookie `name`.
    pub fn cookie(name: impl Into<String>) -> Self {
        Identifier::Cookie(name.into())
    }

    /// The application's header `name`.
    pub fn header(name: HeaderName) -> Self {
        Identifier::Header(name)
    }

    /// The cookie's or the header's name.
    pub fn name(&self) -> &str {
        match self {
            Identifier::Cookie(name) => name,
            Identifier::Header(name) => name.as_str(),
        }
    }

    /// The identifier a request carries, if any (non-empty).
    fn in_request<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match self {
            Identifier::Cookie(name) => carrier::cookie::find(headers, name),
            Identifier::Header(name) => carrier::header::find(headers, name),
        }
        .filter(|id| !id.is_empty())
    }

    /// The identifier a response sets, if any (non-empty, not a deletion).
    fn in_response<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        match self {
            Identifier::Cookie(name) => headers.get_all(SET_COOKIE).iter().find_map(|header| {
                let value = carrier::set_cookie::value_of(header, name)?;
                let value = carrier::cookie::unquote(value);
                (!value.is_empty() && !deletes(header)).then_some(value)
            }),
            Identifier::Header(name) => {
                carrier::header::find(headers, name).filter(|id| !id.is_empty())
            }
        }
    }
}

/// Whether a `Set-Cookie` header deletes its cookie (`Max-Age` zero or less).
fn deletes(header: &http::HeaderValue) -> bool {
    let Ok(text) = header.to_str() else { return false };
    cookie::Cookie::parse(text)
        .ok()
        .and_then(|c| c.max_age())
        .is_some_and(|age| age.is_zero() || age.is_negative())
}

/// The layer's key is too short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTooShort;

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the key that hashes session identifiers needs at least {MIN_KEY_LEN} bytes")
    }
}

impl Error for KeyTooShort {}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What every clone of a layer and its services share.
pub(crate) struct Shared {
    identifier: Identifier,
    store: Arc<dyn SessionStore>,
    key: Box<[u8]>,
    /// The MAC keyed and fed with the label and the scope; cloned for each identifier.
    mac: Hmac<Sha256>,
    scope: Arc<str>,
    lifetime: Lifetime,
    learn_requests: bool,
    clock: Clock,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learn")
            .field("identifier", &self.identifier)
            .field("store", &self.store)
            .field("scope", &self.scope)
            .field("lifetime", &self.lifetime)
            .field("learn_requests", &self.learn_requests)
            .finish_non_exhaustive()
    }
}

/// Domain separation: these hashes are never the same as any other use of the key.
const LABEL: &[u8] = b"tower-session-persistence learned session v1\0";

impl Shared {
    fn keyed(key: &[u8], scope: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(LABEL);
        mac.update(&u64::try_from(scope.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(scope.as_bytes());
        mac
    }

    /// The store key of `identifier` in this layer's scope.
    pub(crate) fn store_key(&self, identifier: &str) -> StoreKey {
        let digest = self.mac.clone().chain_update(identifier.as_bytes()).finalize().into_bytes();
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        StoreKey::new(self.scope.clone(), short)
    }
}

/// Learns which endpoint owns each of the application's session identifiers, and pins
/// requests that carry a known one; see the [module docs](self).
///
/// `K` is the balancer's endpoint key type. A cheap-to-clone configuration holder (an `Arc`).
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::learn::{Identifier, LearnLayer};
/// use tower_session_persistence::store::MemoryStore;
///
/// let layer = LearnLayer::<String>::new(
///     Identifier::header(http::HeaderName::from_static("mcp-session-id")),
///     MemoryStore::new(100_000),
///     [42u8; 32],
/// )?
/// // One scope per route rule: identifiers never cross rules.
/// .scope("default/mcp/0")
/// .idle_timeout(Duration::from_secs(1800))
/// .absolute_timeout(Duration::from_secs(8 * 3600))
/// // MCP clients choose nothing, but other protocols let the client pick the identifier.
/// .learn_requests(false);
/// assert_eq!(layer.identifier().name(), "mcp-session-id");
/// # Ok::<(), tower_session_persistence::learn::KeyTooShort>(())
/// ```
#[must_use]
pub struct LearnLayer<K> {
    shared: Arc<Shared>,
    _key: PhantomData<fn() -> K>,
}

impl<K> Clone for LearnLayer<K> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), _key: PhantomData }
    }
}

impl<K> fmt::Debug for LearnLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LearnLayer").field(&self.shared).finish()
    }
}

impl<K> LearnLayer<K> {
    /// A layer learning `identifier` into `store`, hashing identifiers with `key` (a secret
    /// of at least 32 bytes; replicas that share a store must share the key).
    ///
    /// The scope defaults to the identifier's name; the lifetime to 30 minutes idle
    /// ([`DEFAULT_IDLE`](crate::store::DEFAULT_IDLE)).
    ///
    /// # Errors
    ///
    /// [`KeyTooShort`] if `key` has fewer than [`MIN_KEY_LEN`] bytes.
    pub fn new(
        identifier: Identifier,
        store: impl SessionStore,
        key: impl AsRef<[u8]>,
    ) -> Result<Self, KeyTooShort> {
        let key = key.as_ref();
        if key.len() < MIN_KEY_LEN {
            return Err(KeyTooShort);
        }
        let scope: Arc<str> = identifier.name().into();
        Ok(Self {
            shared: Arc::new(Shared {
                mac: Shared::keyed(key, &scope),
                key: key.into(),
                identifier,
                store: Arc::new(store),
                scope,
                lifetime: Lifetime::default(),
                learn_requests: false,
                clock: Arc::new(SystemTime::now),
            }),
            _key: PhantomData,
        })
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared).expect("a layer is configured before it is cloned")
    }

    /// Binds learned sessions to `scope`, typically one route rule (`namespace/route/index`):
    /// the same identifier under another scope is another session.
    ///
    /// # Panics
    ///
    /// If the layer has been cloned already: configure it first.
    pub fn scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        let shared = self.shared_mut();
        shared.scope = scope.into();
        shared.mac = Shared::keyed(&shared.key, &shared.scope);
        self
    }

    /// Ends a learned session not used for this long (each request that carries it counts).
    ///
    /// # Panics
    ///
    /// If the layer has been cloned already: configure it first.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.shared_mut().lifetime.idle = Some(idle);
        self
    }

    /// Ends a learned session this long after it was learned, however often it is used.
    ///
    /// # Panics
    ///
    /// If the layer has been cloned already: configure it first.
    pub fn absolute_timeout(mut self, absolute: Duration) -> Self {
        self.shared_mut().lifetime.absolute = Some(absolute);
        self
    }

    /// Also learns identifiers that clients send before any response set them (default
    /// `false`: only what a backend's response sets is learned). HAProxy's
    /// `stick on req.cook(NAME)`; needed when clients choose their own session identifiers.
    ///
    /// # Panics
    ///
    /// If the layer has been cloned already: configure it first.
    pub fn learn_requests(mut self, on: bool) -> Self {
        self.shared_mut().learn_requests = on;
        self
    }

    /// The clock that dates learned sessions (default the system's wall clock, which replicas
    /// sharing a store must agree on). For tests and simulations.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use tower_session_persistence::learn::{Identifier, LearnLayer};
    /// use tower_session_persistence::store::MemoryStore;
    ///
    /// let start = SystemTime::now();
    /// let layer = LearnLayer::<String>::new(Identifier::cookie("sid"), MemoryStore::new(10), [1u8; 32])?
    ///     .clock(move || start + Duration::from_secs(3600));
    /// # Ok::<(), tower_session_persistence::learn::KeyTooShort>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If the layer has been cloned already: configure it first.
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.shared_mut().clock = Arc::new(clock);
        self
    }

    /// Where the identifier travels.
    pub fn identifier(&self) -> &Identifier {
        &self.shared.identifier
    }

    /// The learned sessions' lifetime.
    pub fn lifetime(&self) -> Lifetime {
        self.shared.lifetime
    }
}

impl<S, K> Layer<S> for LearnLayer<K> {
    type Service = Learn<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Learn::from_parts(inner, self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn hashes_are_keyed_and_scoped() {
        let layer = |key: [u8; 32], scope: &str| {
            LearnLayer::<String>::new(Identifier::cookie("sid"), MemoryStore::new(1), key)
                .unwrap()
                .scope(scope)
        };
        let a = layer([1; 32], "a");
        let key = a.shared.store_key("abc");
        assert_eq!(key, a.shared.store_key("abc"));
        assert_ne!(key, a.shared.store_key("abd"));
        assert_ne!(key.digest(), layer([1; 32], "b").shared.store_key("abc").digest());
        assert_ne!(key.digest(), layer([2; 32], "a").shared.store_key("abc").digest());
        assert!(
            LearnLayer::<String>::new(Identifier::cookie("s"), MemoryStore::new(1), [0; 31])
                .is_err()
        );
    }

    #[test]
    fn identifiers_in_requests_and_responses() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; JSESSIONID=\"q\"".parse().unwrap());
        let cookie = Identifier::cookie("JSESSIONID");
        assert_eq!(cookie.in_request(&headers), Some("q"));

        let mut res = HeaderMap::new();
        res.append(SET_COOKIE, "JSESSIONID=; Max-Age=0".parse().unwrap());
        res.append(SET_COOKIE, "JSESSIONID=gone; Max-Age=0; Path=/".parse().unwrap());
        assert_eq!(cookie.in_response(&res), None);
        res.append(SET_COOKIE, "other=1".parse().unwrap());
        res.append(SET_COOKIE, "JSESSIONID=new; Path=/; HttpOnly".parse().unwrap());
        assert_eq!(cookie.in_response(&res), Some("new"));

        let header = Identifier::header(HeaderName::from_static("mcp-session-id"));
        let mut h = HeaderMap::new();
        h.insert("mcp-session-id", " s-1 ".parse().unwrap());
        assert_eq!(header.in_request(&h), Some("s-1"));
        assert_eq!(header.in_response(&h), Some("s-1"));
        h.insert("mcp-session-id", "".parse().unwrap());
        assert_eq!(header.in_request(&h), None);
    }
}

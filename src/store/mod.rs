//! Where learned sessions live: the [`SessionStore`] trait and its two implementations,
//! [`MemoryStore`] (in-process, the default) and [`RedisStore`] (shared by replicas, with the
//! `redis` feature).
//!
//! A store maps a [`StoreKey`] (a keyed hash of the application's session identifier, bound
//! to a scope) to the bytes of an endpoint key ([`EndpointKey::to_bytes`]), for as long as
//! the session's [`Lifetime`] allows: the idle timeout is refreshed by every lookup, the
//! absolute timeout counts from when the mapping was stored. Stores never see an identifier
//! in clear: the [`Learn`](crate::learn::Learn) layer hashes it before it asks.
//!
//! Every operation returns a [`StoreFuture`]: an in-process store answers at once (no
//! allocation, no task switch), a networked one with a boxed future. A store that cannot
//! answer returns a [`StoreError`]; the layer then treats the session as unknown, so a store
//! outage never fails a request.
//!
//! # Implementing a store
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use std::time::SystemTime;
//! use tower_session_persistence::store::{Lifetime, SessionStore, StoreFuture, StoreKey};
//!
//! /// A store without expiry, for illustration only.
//! #[derive(Debug, Default)]
//! struct Naive(Mutex<HashMap<StoreKey, Arc<[u8]>>>);
//!
//! impl SessionStore for Naive {
//!     fn lookup(&self, key: &StoreKey, _: Lifetime, _: SystemTime) -> StoreFuture<Option<Arc<[u8]>>> {
//!         StoreFuture::ready(Ok(self.0.lock().unwrap().get(key).cloned()))
//!     }
//!     fn insert(&self, key: &StoreKey, endpoint: &[u8], _: Lifetime, _: SystemTime) -> StoreFuture<()> {
//!         self.0.lock().unwrap().insert(key.clone(), endpoint.into());
//!         StoreFuture::ready(Ok(()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Naive::default();
//! let key = StoreKey::new("default/shop/0", [7; 16]);
//! let now = SystemTime::now();
//! store.insert(&key, b"pod-a", Lifetime::default(), now).await.unwrap();
//! assert_eq!(store.lookup(&key, Lifetime::default(), now).await.unwrap().as_deref(), Some(&b"pod-a"[..]));
//! # }
//! ```
//!
//! [`EndpointKey::to_bytes`]: crate::EndpointKey::to_bytes

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

/// How long a learned session lives when neither timeout is set: 30 minutes idle, as
/// HAProxy's stick tables are usually configured (`expire 30m`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);

/// How long a learned session lives.
///
/// `idle`: the mapping ends when it has not been looked up for this long (each lookup
/// refreshes it). `absolute`: the mapping ends this long after it was stored, however often it
/// is used. With neither, [`DEFAULT_IDLE`] applies, so that every entry expires.
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::store::{DEFAULT_IDLE, Lifetime};
///
/// assert_eq!(Lifetime::default().ttl(), DEFAULT_IDLE);
/// let lifetime = Lifetime { idle: Some(Duration::from_secs(600)), absolute: Some(Duration::from_secs(60)) };
/// // A new entry lives until the sooner of the two.
/// assert_eq!(lifetime.ttl(), Duration::from_secs(60));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lifetime {
    /// Ends a mapping not used for this long.
    pub idle: Option<Duration>,
    /// Ends a mapping this long after it was stored.
    pub absolute: Option<Duration>,
}

impl Lifetime {
    /// The idle timeout in force: the configured one, or [`DEFAULT_IDLE`] when neither timeout
    /// is set; `None` when only the absolute timeout bounds the entry.
    pub fn effective_idle(&self) -> Option<Duration> {
        match (self.idle, self.absolute) {
            (None, None) => Some(DEFAULT_IDLE),
            (idle, _) => idle,
        }
    }

    /// How long a freshly stored entry lives: the sooner of the idle and the absolute timeout.
    pub fn ttl(&self) -> Duration {
        match (self.effective_idle(), self.absolute) {
            (Some(idle), Some(absolute)) => idle.min(absolute),
            (Some(idle), None) => idle,
            (None, Some(absolute)) => absolute,
            (None, None) => DEFAULT_IDLE,
        }
    }
}

/// The name of a learned session in a store: a scope (one route rule) and a keyed hash of the
/// application's identifier, 128 bits.
///
/// The hash is made by the [`Learn`](crate::learn::Learn) layer with a secret key, over the
/// scope and the identifier: it binds the scope, reveals nothing of the identifier, and cannot
/// be computed by someone without the key. `Debug` shows the scope only.
///
/// ```
/// use tower_session_persistence::store::StoreKey;
///
/// let key = StoreKey::new("default/shop/0", [1; 16]);
/// assert_eq!(key.scope(), "default/shop/0");
/// assert_eq!(key.digest(), &[1; 16]);
/// assert_eq!(key.hex().len(), 32);
/// assert!(!format!("{key:?}").contains("0101"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    scope: Arc<str>,
    digest: [u8; 16],
}

impl StoreKey {
    /// A key in `scope` with the given hash.
    pub fn new(scope: impl Into<Arc<str>>, digest: [u8; 16]) -> Self {
        Self { scope: scope.into(), digest }
    }

    /// The scope: the route rule whose session this is.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The keyed hash of the identifier; already bound to the scope.
    pub fn digest(&self) -> &[u8; 16] {
        &self.digest
    }

    /// The hash in lower-case hexadecimal, for stores with textual keys.
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for b in self.digest {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey").field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// A store that holds learned sessions: identifier hash → endpoint key bytes, with expiry.
///
/// Shared by every clone of a layer, every rule and every serving thread, hence `Send + Sync`
/// and `&self`. Futures are `'static`: an implementation clones what it needs (an `Arc`, a
/// connection handle) into them. See the [module docs](self) for an example.
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// The endpoint stored under `key`, if the entry exists and `lifetime` has not ended at
    /// `now`; a hit refreshes the idle timeout. An entry found expired is removed.
    fn lookup(
        &self,
        key: &StoreKey,
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>>;

    /// Stores `endpoint` under `key` as of `now` (a new mapping: both timeouts start now),
    /// replacing any earlier entry.
    fn insert(
        &self,
        key: &StoreKey,
        endpoint: &[u8],
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<()>;
}

impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn lookup(
        &self,
        key: &StoreKey,
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<Option<Arc<[u8]>>> {
        (**self).lookup(key, lifetime, now)
    }

    fn insert(
        &self,
        key: &StoreKey,
        endpoint: &[u8],
        lifetime: Lifetime,
        now: SystemTime,
    ) -> StoreFuture<()> {
        (**self).insert(key, endpoint, lifetime, now)
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// The answer of a [`SessionStore`]: ready at once (an in-process store) or later (a boxed
/// future, for stores that do I/O). `Unpin`, so it can be polled from anywhere.
///
/// ```
/// use tower_session_persistence::store::StoreFuture;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut now = StoreFuture::ready(Ok(1));
/// assert_eq!(now.take_ready().unwrap().unwrap(), 1);
/// let later = StoreFuture::boxed(async { Ok(2) });
/// assert_eq!(later.await.unwrap(), 2);
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct StoreFuture<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Ready(Option<Result<T, StoreError>>),
    Boxed(Boxed<T>),
}

impl<T> StoreFuture<T> {
    /// An answer that is already known.
    pub fn ready(result: Result<T, StoreError>) -> Self {
        Self { inner: Inner::Ready(Some(result)) }
    }

    /// An answer that takes I/O.
    pub fn boxed(future: impl Future<Output = Result<T, StoreError>> + Send + 'static) -> Self {
        Self { inner: Inner::Boxed(Box::pin(future)) }
    }

    /// The answer, if it was known when the future was made (and not taken yet); lets a
    /// caller skip a poll.
    pub fn take_ready(&mut self) -> Option<Result<T, StoreError>> {
        match &mut self.inner {
            Inner::Ready(ready) => ready.take(),
            Inner::Boxed(_) => None,
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Ready(_) => "ready",
            Inner::Boxed(_) => "boxed",
        };
        f.debug_tuple("StoreFuture").field(&kind).finish()
    }
}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are `Unpin`.
        match &mut self.get_mut().inner {
            Inner::Ready(ready) => {
                Poll::Ready(ready.take().expect("StoreFuture polled after completion"))
            }
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

// `Boxed` is `Pin<Box<..>>` and `Option<Result<T, _>>` is only moved out of: no field is
// structurally pinned, whatever `T`.
impl<T> Unpin for StoreFuture<T> {}

/// Why a store could not answer. It never contains an identifier, a key or a value; the
/// [`Learn`](crate::learn::Learn) layer treats it as "unknown session".
///
/// ```
/// use tower_session_persistence::store::StoreError;
///
/// let error = StoreError::timeout();
/// assert!(error.is_timeout());
/// assert_eq!(error.to_string(), "session store: timed out");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    timeout: bool,
    reason: Box<str>,
}

impl StoreError {
    /// The store did not answer in time.
    pub fn timeout() -> Self {
        Self { timeout: true, reason: "timed out".into() }
    }

    /// The store is unreachable or answered with an error; `reason` is a short text without
    /// any session data.
    pub fn unavailable(reason: impl Into<Box<str>>) -> Self {
        Self { timeout: false, reason: reason.into() }
    }

    /// Whether the store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session store: {}", self.reason)
    }
}

impl Error for StoreError {}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

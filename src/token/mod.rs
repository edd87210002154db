//! What a session token says, and the codecs that write and read it.
//!
//! A token carries [`Claims`]: the endpoint's key, when the session was first issued and when
//! it was last refreshed. A [`Codec`] turns claims into the text that travels in a cookie or a
//! header and back, bound to a [`Binding`] (the session's name and the rule's scope) so that a
//! token is never honoured by another rule or under another name.
//!
//! Tokens are stateless: any gateway replica holding the same keys reads them, and the server
//! keeps nothing per session.

mod plain;
#[cfg(feature = "sealed")]
mod sealed;
#[cfg(feature = "signed")]
mod signed;

pub use self::plain::{Dates, PlainCodec};
#[cfg(feature = "sealed")]
#[cfg_attr(docsrs, doc(cfg(feature = "sealed")))]
pub use self::sealed::SealedCodec;
#[cfg(feature = "signed")]
#[cfg_attr(docsrs, doc(cfg(feature = "signed")))]
pub use self::signed::SignedCodec;

/// The shortest key the signed and sealed codecs accept, in bytes: 256 bits of secret.
pub const MIN_KEY_LEN: usize = 32;

/// What a token says about a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The endpoint's key, as [`EndpointKey::to_bytes`](crate::EndpointKey::to_bytes) wrote it.
    pub endpoint: Vec<u8>,
    /// When the session was first issued, in seconds since the Unix epoch; `None` when the
    /// token carries no such date (a dateless HAProxy cookie).
    pub issued: Option<u64>,
    /// When the token was last written, in seconds since the Unix epoch; `None` when the token
    /// carries no such date.
    pub refreshed: Option<u64>,
}

/// What [`Codec::decode_with_key`] read: the claims, and which of the codec's keys verified
/// them.
///
/// A token verified by any key but the first (the primary, which signs) was written before a
/// key rotation: the layer re-issues it under the primary key on its next response, so that a
/// rotation completes within one visit of each session and the old key can be dropped.
///
/// ```
/// use tower_session_persistence::token::{Claims, Decoded};
///
/// let claims = Claims { endpoint: b"pod-a".to_vec(), issued: None, refreshed: None };
/// assert!(!Decoded::primary(claims.clone()).is_stale());
/// let old = Decoded::primary(claims).with_key(1);
/// assert_eq!(old.key(), 1);
/// assert!(old.is_stale());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decoded {
    /// What the token says.
    pub claims: Claims,
    key: usize,
}

impl Decoded {
    /// Claims verified by the primary key (index 0), or by a codec without keys.
    pub fn primary(claims: Claims) -> Self {
        Self { claims, key: 0 }
    }

    /// The same claims, verified by the key at `index` in the codec's list (0 is the primary).
    pub fn with_key(mut self, index: usize) -> Self {
        self.key = index;
        self
    }

    /// The index of the key that verified the token: 0 for the primary key.
    pub fn key(&self) -> usize {
        self.key
    }

    /// Whether a key other than the primary verified the token: it should be written again.
    pub fn is_stale(&self) -> bool {
        self.key != 0
    }
}

/// The context a token is bound to: a token made for one binding is rejected under any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The cookie's or header's name.
    pub name: &'a str,
    /// The persistence scope, typically one route rule (`namespace/route/rule-index`).
    pub scope: &'a str,
}

/// Writes [`Claims`] into a token and reads them back.
///
/// Implementations must reject, by returning `None`, any token they did not write for the same
/// [`Binding`]: forged, tampered, truncated or foreign tokens all mean "no session".
///
/// A codec with several keys (rotation) reports which one verified a token through
/// [`decode_with_key`](Self::decode_with_key); the layer re-issues tokens that an older key
/// verified on their next response.
///
/// Codecs compose. This one writes with a new codec and still reads what HAProxy wrote, so
/// that clients keep their sessions through a migration; a plain token counts as written under
/// an old key, so each client gets a new token on its next visit:
///
/// ```
/// use tower_session_persistence::token::{Binding, Claims, Codec, Decoded, PlainCodec};
///
/// struct Migrating<C> {
///     new: C,
///     old: PlainCodec,
/// }
///
/// impl<C: Codec> Codec for Migrating<C> {
///     fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
///         self.new.encode(claims, binding)
///     }
///
///     fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
///         self.decode_with_key(token, binding).map(|decoded| decoded.claims)
///     }
///
///     fn decode_with_key(&self, token: &str, binding: Binding<'_>) -> Option<Decoded> {
///         self.new.decode_with_key(token, binding).or_else(|| {
///             // Any index but 0 says "re-issue".
///             self.old.decode(token, binding).map(|claims| Decoded::primary(claims).with_key(1))
///         })
///     }
/// }
///
/// # #[cfg(feature = "signed")] {
/// use tower_session_persistence::token::SignedCodec;
///
/// let codec = Migrating { new: SignedCodec::new([[7u8; 32]])?, old: PlainCodec::default() };
/// let binding = Binding { name: "SRV", scope: "shop" };
/// // A cookie HAProxy wrote (`cookie SRV insert`, server `s1`) still names `s1` ...
/// let old = codec.decode_with_key("s1", binding).unwrap();
/// assert_eq!(old.claims.endpoint, b"s1");
/// assert!(old.is_stale(), "re-issued on its next response");
/// // ... and new sessions get signed tokens.
/// let now = Some(1_700_000_000);
/// let claims = Claims { endpoint: b"s1".to_vec(), issued: now, refreshed: now };
/// assert_ne!(codec.encode(&claims, binding).as_deref(), Some("s1"));
/// # }
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
pub trait Codec: Send + Sync + 'static {
    /// Writes `claims` as a token for `binding`. The result must be a valid cookie value and
    /// header value (RFC 6265 `cookie-octet`s). `None` when this codec cannot name the endpoint
    /// (the layer then tells the client to drop its session).
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String>;

    /// Reads the claims of `token` if this codec wrote it for `binding`.
    ///
    /// Decoders bound their work: refuse long tokens (the built-in codecs refuse over 1024
    /// characters) before any other work.
    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims>;

    /// Reads `token` like [`decode`](Self::decode) and says which key verified it; this is
    /// what the layer calls. The default reports the primary key: codecs that verify with
    /// more than one key (rotation, migration) override it so that tokens under an older key
    /// are re-issued under the primary one.
    fn decode_with_key(&self, token: &str, binding: Binding<'_>) -> Option<Decoded> {
        self.decode(token, binding).map(Decoded::primary)
    }
}

impl<T: Codec + ?Sized> Codec for Box<T> {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        (**self).encode(claims, binding)
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        (**self).decode(token, binding)
    }

    fn decode_with_key(&self, token: &str, binding: Binding<'_>) -> Option<Decoded> {
        (**self).decode_with_key(token, binding)
    }
}

impl<T: Codec + ?Sized> Codec for std::sync::Arc<T> {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        (**self).encode(claims, binding)
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        (**self).decode(token, binding)
    }

    fn decode_with_key(&self, token: &str, binding: Binding<'_>) -> Option<Decoded> {
        (**self).decode_with_key(token, binding)
    }
}

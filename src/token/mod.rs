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
/// Codecs compose. This one writes with a new codec and still reads what HAProxy wrote, so
/// that clients keep their sessions through a migration:
///
/// ```
/// use tower_session_persistence::token::{Binding, Claims, Codec, PlainCodec};
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
///         self.new.decode(token, binding).or_else(|| self.old.decode(token, binding))
///     }
/// }
///
/// # #[cfg(feature = "signed")] {
/// use tower_session_persistence::token::SignedCodec;
///
/// let codec = Migrating { new: SignedCodec::new([[7u8; 32]])?, old: PlainCodec::default() };
/// let binding = Binding { name: "SRV", scope: "shop" };
/// // A cookie HAProxy wrote (`cookie SRV insert`, server `s1`) still names `s1` ...
/// assert_eq!(codec.decode("s1", binding).unwrap().endpoint, b"s1");
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
    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims>;
}

impl<T: Codec + ?Sized> Codec for Box<T> {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        (**self).encode(claims, binding)
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        (**self).decode(token, binding)
    }
}

impl<T: Codec + ?Sized> Codec for std::sync::Arc<T> {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        (**self).encode(claims, binding)
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        (**self).decode(token, binding)
    }
}

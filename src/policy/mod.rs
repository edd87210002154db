//! What a session is: the user-facing policy in GEP-1619's words, validated once.
//!
//! A [`SessionPolicy`] is built with [`SessionPolicy::cookie`] or [`SessionPolicy::header`] and
//! checked by [`PolicyBuilder::build`], which names the field and the rule at fault. With the
//! `serde` feature, [`SessionPersistenceConfig`] reads the Gateway API `sessionPersistence`
//! stanza in both of its shapes and turns it into a policy.
//!
//! ```
//! use std::time::Duration;
//! use tower_session_persistence::policy::{Lifetime, SessionPolicy};
//!
//! let policy = SessionPolicy::cookie("shop-session")
//!     .lifetime(Lifetime::Permanent)
//!     .absolute_timeout(Duration::from_secs(3600))
//!     .build()?;
//! assert_eq!(policy.name(), "shop-session");
//!
//! // Permanent cookies need an absolute timeout: it becomes their Max-Age.
//! let err = SessionPolicy::cookie("shop-session").lifetime(Lifetime::Permanent).build().unwrap_err();
//! assert_eq!(err.field(), "absoluteTimeout");
//! # Ok::<(), tower_session_persistence::policy::PolicyError>(())
//! ```

#[cfg(feature = "serde")]
mod config;
mod duration;
mod error;

use std::time::Duration;

pub use cookie::SameSite;
use http::{HeaderName, HeaderValue};

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use self::config::{
    CookieConfig, HeaderConfig, LegacyCookieConfig, PersistenceType, SessionPersistenceConfig,
};
pub use self::duration::parse_duration;
pub use self::error::PolicyError;

/// The longest session name the Gateway API accepts.
pub const MAX_NAME_LEN: usize = 256;
/// The longest cookie path the Gateway API accepts.
pub const MAX_PATH_LEN: usize = 1024;

/// Whether the session cookie outlives the browser session (GEP-1619 `lifetimeType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub enum Lifetime {
    /// No `Max-Age` or `Expires`: the browser drops the cookie when it closes. An
    /// `absoluteTimeout` is still enforced by the layer from the token's issue time.
    #[default]
    Session,
    /// `Max-Age` equal to `absoluteTimeout`, which is then required.
    Permanent,
}

/// Where the session travels between client and gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// An HTTP cookie (GEP-1619 `type: Cookie`).
    Cookie(CookieAttributes),
    /// A request and response header (GEP-1619 `type: Header`); matched case-insensitively.
    Header(HeaderName),
}

/// The attributes of the session cookie. Defaults follow GEP-1619: `Path=/`, `HttpOnly`,
/// `Secure`, `SameSite=Strict`, no `Domain`, session lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAttributes {
    /// `Path`.
    pub path: String,
    /// `Domain` attributes, in order (HAProxy allows several; browsers use the last).
    pub domains: Vec<String>,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: bool,
    /// `SameSite`; `None` leaves the attribute out.
    pub same_site: Option<SameSite>,
    /// `Partitioned` (CHIPS).
    pub partitioned: bool,
    /// Further attributes written as they are (`Priority=High`), as HAProxy's `attr`.
    pub extra: Vec<String>,
    /// Session or permanent.
    pub lifetime: Lifetime,
}

impl CookieAttributes {
    /// This cookie as a `Set-Cookie` value: `name=value` and every attribute, exactly as
    /// [`Insert`](crate::strategy::Insert) writes it. `max_age` is written as whole seconds
    /// (saturating: a lifetime too long to write is written as the longest one, never as a
    /// deletion). `None` when the result is not a valid header value (a `name` or `value` with
    /// characters a header cannot carry).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_session_persistence::policy::{Carrier, SessionPolicy};
    ///
    /// let policy = SessionPolicy::cookie("sid").path("/shop").build()?;
    /// let Carrier::Cookie(cookie) = policy.carrier() else { unreachable!() };
    /// let value = cookie.set_cookie(policy.name(), "token", Some(Duration::from_secs(60))).unwrap();
    /// assert_eq!(value, "sid=token; HttpOnly; SameSite=Strict; Secure; Path=/shop; Max-Age=60");
    /// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
    /// ```
    pub fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age: Option<Duration>,
    ) -> Option<HeaderValue> {
        set_cookie_value(name, self, Some(value), max_age)
    }

    /// A `Set-Cookie` value that deletes this cookie from the client (empty value,
    /// `Max-Age=0` and an expiry in the past), with the same `Path` and `Domain` so that it
    /// names the same cookie.
    ///
    /// ```
    /// use tower_session_persistence::policy::CookieAttributes;
    ///
    /// let value = CookieAttributes::default().removal("sid").unwrap();
    /// assert!(value.to_str()?.starts_with("sid=; "));
    /// assert!(value.to_str()?.contains("Max-Age=0"));
    /// # Ok::<(), http::header::ToStrError>(())
    /// ```
    pub fn removal(&self, name: &str) -> Option<HeaderValue> {
        set_cookie_value(name, self, None, None)
    }
}

/// The `Set-Cookie` value for `token`, or a deletion when there is none.
fn set_cookie_value(
    name: &str,
    attributes: &CookieAttributes,
    token: Option<&str>,
    max_age: Option<Duration>,
) -> Option<HeaderValue> {
    let mut cookie = cookie::Cookie::build((name, token.unwrap_or_default()))
        .path(attributes.path.as_str())
        .http_only(attributes.http_only)
        .secure(attributes.secure)
        .partitioned(attributes.partitioned);
    if let Some(same_site) = attributes.same_site {
        cookie = cookie.same_site(same_site);
    }
    if let Some(domain) = attributes.domains.first() {
        cookie = cookie.domain(domain.as_str());
    }
    let mut cookie = cookie.build();
    match (token, max_age) {
        (None, _) => cookie.make_removal(),
        (Some(_), Some(age)) => {
            // Saturating: the cookie crate's duration holds `i64` seconds.
            cookie.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        (Some(_), None) => {}
    }
    let mut text = cookie.to_string();
    // The cookie crate knows one Domain and no free-form attributes; both were validated when
    // the policy was built, so appending them keeps the header well-formed.
    for domain in attributes.domains.iter().skip(1) {
        // Written as the cookie crate writes the first: without a leading dot (RFC 6265 §5.2.3).
        text.push_str("; Domain=");
        text.push_str(domain.trim_start_matches('.'));
    }
    for attribute in &attributes.extra {
        text.push_str("; ");
        text.push_str(attribute);
    }
    HeaderValue::try_from(text).ok()
}

impl Default for CookieAttributes {
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            domains: Vec::new(),
            http_only: true,
            secure: true,
            same_site: Some(SameSite::Strict),
            partitioned: false,
            extra: Vec::new(),
            lifetime: Lifetime::Session,
        }
    }
}

/// A validated session persistence policy. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::policy::{Carrier, SameSite, SessionPolicy};
///
/// let policy = SessionPolicy::cookie("sid")
///     .path("/shop")
///     .domain("example.com")
///     .same_site(Some(SameSite::Lax))
///     .attribute("Priority=High")
///     .idle_timeout(Duration::from_secs(1800))
///     .build()?;
/// let Carrier::Cookie(cookie) = policy.carrier() else { unreachable!() };
/// assert_eq!((cookie.path.as_str(), cookie.same_site), ("/shop", Some(SameSite::Lax)));
/// assert!(cookie.secure && cookie.http_only, "GEP-1619's defaults");
/// assert_eq!(policy.idle_timeout(), Some(Duration::from_secs(1800)));
/// assert_eq!(policy.absolute_timeout(), None);
///
/// let header = SessionPolicy::header("x-session").build()?;
/// assert!(matches!(header.carrier(), Carrier::Header(name) if name == "x-session"));
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    name: String,
    carrier: Carrier,
    absolute_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    indirect: Option<bool>,
}

impl SessionPolicy {
    /// Starts a cookie policy with the cookie named `name` and GEP-1619's default attributes.
    pub fn cookie(name: impl Into<String>) -> PolicyBuilder {
        PolicyBuilder::new(name.into(), CarrierKind::Cookie(CookieAttributes::default()))
    }

    /// Starts a header policy: the session travels in the header named `name`.
    pub fn header(name: impl Into<String>) -> PolicyBuilder {
        PolicyBuilder::new(name.into(), CarrierKind::Header)
    }

    /// The session's name: the cookie's or the header's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the session travels.
    pub fn carrier(&self) -> &Carrier {
        &self.carrier
    }

    /// How long a session lasts from its first issue, whatever the client does.
    pub fn absolute_timeout(&self) -> Option<Duration> {
        self.absolute_timeout
    }

    /// How long a session lasts without a request.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// Whether the session cookie is removed before the request reaches the backend
    /// (HAProxy's `indirect`), as set with [`PolicyBuilder::indirect`]; `None` leaves it to the
    /// strategy's default: [`Insert`](crate::strategy::Insert) removes it,
    /// [`Rewrite`](crate::strategy::Rewrite) passes it on. This is the only place the setting
    /// lives: the cookie strategies read it from here.
    pub fn indirect(&self) -> Option<bool> {
        self.indirect
    }

    /// A builder holding everything this policy says, to change some of it and build again.
    ///
    /// ```
    /// use tower_session_persistence::policy::SessionPolicy;
    ///
    /// let strict = SessionPolicy::cookie("sid").build()?;
    /// let relaxed = strict.to_builder().secure(false).build()?;
    /// assert_eq!(relaxed.name(), "sid");
    /// assert_ne!(relaxed, strict);
    /// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
    /// ```
    pub fn to_builder(&self) -> PolicyBuilder {
        let carrier = match &self.carrier {
            Carrier::Cookie(attributes) => CarrierKind::Cookie(attributes.clone()),
            Carrier::Header(_) => CarrierKind::Header,
        };
        PolicyBuilder {
            name: self.name.clone(),
            carrier,
            absolute_timeout: self.absolute_timeout,
            idle_timeout: self.idle_timeout,
            indirect: self.indirect,
        }
    }
}

#[derive(Debug)]
enum CarrierKind {
    Cookie(CookieAttributes),
    Header,
}

/// Builds a [`SessionPolicy`]; see [`SessionPolicy::cookie`] and [`SessionPolicy::header`].
///
/// [`build`](Self::build) checks everything at once and names what it refuses:
///
/// ```
/// use std::time::Duration;
/// use tower_session_persistence::policy::SessionPolicy;
///
/// let err = SessionPolicy::cookie("sid").idle_timeout(Duration::ZERO).build().unwrap_err();
/// assert_eq!(err.to_string(), "idleTimeout: must be greater than zero");
/// let err = SessionPolicy::cookie("sid").path("no-slash").build().unwrap_err();
/// assert_eq!(err.field(), "cookie.path");
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PolicyBuilder {
    name: String,
    carrier: CarrierKind,
    absolute_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    indirect: Option<bool>,
}

impl PolicyBuilder {
    fn new(name: String, carrier: CarrierKind) -> Self {
        Self { name, carrier, absolute_timeout: None, idle_timeout: None, indirect: None }
    }

    fn cookie_mut(&mut self) -> Option<&mut CookieAttributes> {
        match &mut self.carrier {
            CarrierKind::Cookie(attributes) => Some(attributes),
            CarrierKind::Header => None,
        }
    }

    /// Sessions end this long after they were first issued.
    pub fn absolute_timeout(mut self, timeout: Duration) -> Self {
        self.absolute_timeout = Some(timeout);
        self
    }

    /// Sessions end when no request has come for this long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Whether to remove the session cookie before the request reaches the backend (HAProxy's
    /// `indirect`). Unset, the strategy decides: [`Insert`](crate::strategy::Insert) (the
    /// default) removes it, [`Rewrite`](crate::strategy::Rewrite) passes it on. Ignored for
    /// header sessions, whose header is always removed.
    pub fn indirect(mut self, indirect: bool) -> Self {
        self.indirect = Some(indirect);
        self
    }

    /// The cookie's `Path` (default `/`). Ignored for header sessions.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.path = path.into();
        }
        self
    }

    /// Adds a `Domain` attribute (default none; repeatable). Ignored for header sessions.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.domains.push(domain.into());
        }
        self
    }

    /// Whether the cookie is `Partitioned` (default `false`). Ignored for header sessions.
    pub fn partitioned(mut self, on: bool) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.partitioned = on;
        }
        self
    }

    /// Adds an attribute written as it is, such as `Priority=High` (HAProxy's `attr`).
    /// Ignored for header sessions.
    pub fn attribute(mut self, attribute: impl Into<String>) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.extra.push(attribute.into());
        }
        self
    }

    /// Whether the cookie is `HttpOnly` (default `true`). Ignored for header sessions.
    pub fn http_only(mut self, on: bool) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.http_only = on;
        }
        self
    }

    /// Whether the cookie is `Secure` (default `true`). Turn it off only where clients reach
    /// the gateway over plain HTTP. Ignored for header sessions.
    pub fn secure(mut self, on: bool) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.secure = on;
        }
        self
    }

    /// The cookie's `SameSite` (default `Strict`); `None` leaves it out. Ignored for header
    /// sessions.
    pub fn same_site(mut self, same_site: Option<SameSite>) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.same_site = same_site;
        }
        self
    }

    /// Session (default) or permanent cookie. Ignored for header sessions.
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        if let Some(c) = self.cookie_mut() {
            c.lifetime = lifetime;
        }
        self
    }

    /// Checks the policy against the Gateway API's rules.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the field and the rule it breaks.
    pub fn build(self) -> Result<SessionPolicy, PolicyError> {
        let name_field = match self.carrier {
            CarrierKind::Cookie(_) => "cookie.name",
            CarrierKind::Header => "header.name",
        };
        check_token(&self.name, name_field)?;
        for (field, timeout) in
            [("absoluteTimeout", self.absolute_timeout), ("idleTimeout", self.idle_timeout)]
        {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(PolicyError::new(field, "must be greater than zero"));
            }
        }
        let carrier = match self.carrier {
            CarrierKind::Cookie(attributes) => {
                check_path(&attributes.path)?;
                for domain in &attributes.domains {
                    check_domain(domain)?;
                }
                for attribute in &attributes.extra {
                    check_attribute(attribute)?;
                }
                check_browser_rules(&self.name, &attributes)?;
                if attributes.lifetime == Lifetime::Permanent && self.absolute_timeout.is_none() {
                    return Err(PolicyError::new(
                        "absoluteTimeout",
                        "must be specified when cookie lifetimeType is Permanent",
                    ));
                }
                Carrier::Cookie(attributes)
            }
            CarrierKind::Header => {
                let name = HeaderName::from_bytes(self.name.as_bytes())
                    .map_err(|_| PolicyError::new(name_field, "must be a valid header name"))?;
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    return Err(PolicyError::new(
                        name_field,
                        format!(
                            "{:?} is a header HTTP itself uses (framing, routing or cookies); \
                             choose another name",
                            name.as_str()
                        ),
                    ));
                }
                Carrier::Header(name)
            }
        };
        Ok(SessionPolicy {
            name: self.name,
            carrier,
            absolute_timeout: self.absolute_timeout,
            idle_timeout: self.idle_timeout,
            indirect: self.indirect,
        })
    }
}

/// RFC 6265 `cookie-name = token` (RFC 7230 tchar), 1 to 256 characters, as the Gateway API's
/// `CookieName` and `HeaderName` patterns say.
fn check_token(name: &str, field: &'static str) -> Result<(), PolicyError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(PolicyError::new(field, "must be 1 to 256 characters long"));
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(tchar) {
        return Err(PolicyError::new(
            field,
            "must be an RFC 6265 token: letters, digits and !#$%&'*+-.^_`|~ only",
        ));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), PolicyError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PolicyError::new("cookie.path", "must be at most 1024 characters long"));
    }
    // RFC 6265 path-value: any CHAR except CTLs or ";".
    if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control() || b > 0x7e)
    {
        return Err(PolicyError::new(
            "cookie.path",
            "must start with '/' and contain no ';', control or non-ASCII characters",
        ));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), PolicyError> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new("cookie.domain", "must be a host name: letters, digits, '-' and '.'"))
    }
}

fn check_attribute(attribute: &str) -> Result<(), PolicyError> {
    // RFC 6265 extension-av: any CHAR except CTLs or ";".
    if attribute.is_empty()
        || attribute.bytes().any(|b| b == b';' || b.is_ascii_control() || b > 0x7e)
    {
        return Err(PolicyError::new(
            "cookie.attributes",
            "must be non-empty and contain no ';', control or non-ASCII characters",
        ));
    }
    // Attributes with a field of their own go through that field's checks; written here they
    // would slip past them (a `Max-Age` on a Session cookie, a second `Path`).
    let name = attribute.split('=').next().unwrap_or_default().trim();
    if let Some(own) = OWN_FIELD_ATTRIBUTES.iter().find(|own| own.eq_ignore_ascii_case(name)) {
        return Err(PolicyError::new(
            "cookie.attributes",
            format!("{own} has its own setting; it may not be given as an extra attribute"),
        ));
    }
    Ok(())
}

/// Cookie attributes the policy sets from fields of its own.
const OWN_FIELD_ATTRIBUTES: [&str; 8] =
    ["Max-Age", "Expires", "Domain", "Path", "Secure", "HttpOnly", "SameSite", "Partitioned"];

/// Headers a session may not travel in: HTTP's framing (`content-length`,
/// `transfer-encoding`), routing (`host`), connection management and cookies themselves.
const RESERVED_HEADERS: [&str; 13] = [
    "cookie",
    "set-cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-type",
    "location",
];

/// What browsers require of cookies whose names carry a prefix (RFC 6265bis §4.1.3), and of
/// `SameSite=None` (§5.4.7: refused without `Secure`). A policy that breaks them would hand
/// out cookies that browsers silently drop.
fn check_browser_rules(name: &str, cookie: &CookieAttributes) -> Result<(), PolicyError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("__host-") {
        if !cookie.secure {
            return Err(PolicyError::new(
                "cookie.secure",
                format!("a {name:?} cookie (prefix __Host-) must be Secure"),
            ));
        }
        if !cookie.domains.is_empty() {
            return Err(PolicyError::new(
                "cookie.domain",
                format!("a {name:?} cookie (prefix __Host-) must not have a Domain"),
            ));
        }
        if cookie.path != "/" {
            return Err(PolicyError::new(
                "cookie.path",
                format!("a {name:?} cookie (prefix __Host-) must have Path=/"),
            ));
        }
    }
    if lower.starts_with("__secure-") && !cookie.secure {
        return Err(PolicyError::new(
            "cookie.secure",
            format!("a {name:?} cookie (prefix __Secure-) must be Secure"),
        ));
    }
    if cookie.same_site == Some(SameSite::None) && !cookie.secure {
        return Err(PolicyError::new(
            "cookie.sameSite",
            "SameSite=None needs Secure: browsers refuse such cookies otherwise",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_gep() {
        let policy = SessionPolicy::cookie("s").build().unwrap();
        let Carrier::Cookie(c) = policy.carrier() else { panic!("cookie carrier expected") };
        assert_eq!(c, &CookieAttributes::default());
        assert_eq!(c.path, "/");
        assert!(c.http_only && c.secure);
        assert_eq!(c.same_site, Some(SameSite::Strict));
        assert_eq!(c.lifetime, Lifetime::Session);
        assert_eq!(policy.indirect(), None, "the strategy decides");
    }

    #[test]
    fn names_must_be_tokens() {
        for bad in ["", "a b", "a=b", "a;b", "ä", &"x".repeat(257)] {
            let err = SessionPolicy::cookie(bad).build().unwrap_err();
            assert_eq!(err.field(), "cookie.name", "{bad:?}");
        }
        let err = SessionPolicy::header("invalid header:name").build().unwrap_err();
        assert_eq!(err.field(), "header.name");
        assert!(SessionPolicy::cookie("x".repeat(256)).build().is_ok());
        assert!(SessionPolicy::cookie("Session-A_1.x!#$%&'*+^`|~").build().is_ok());
    }

    #[test]
    fn permanent_needs_absolute_timeout() {
        let err = SessionPolicy::cookie("s").lifetime(Lifetime::Permanent).build().unwrap_err();
        assert_eq!(err.field(), "absoluteTimeout");
        assert!(err.to_string().contains("Permanent"), "{err}");
        SessionPolicy::cookie("s")
            .lifetime(Lifetime::Permanent)
            .absolute_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
    }

    #[test]
    fn browser_cookie_rules_are_enforced() {
        let field = |b: PolicyBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(field(SessionPolicy::cookie("__Host-s").secure(false)), "cookie.secure");
        assert_eq!(field(SessionPolicy::cookie("__host-s").domain("a.example")), "cookie.domain");
        assert_eq!(field(SessionPolicy::cookie("__Host-s").path("/shop")), "cookie.path");
        assert_eq!(field(SessionPolicy::cookie("__Secure-s").secure(false)), "cookie.secure");
        assert_eq!(
            field(SessionPolicy::cookie("s").secure(false).same_site(Some(SameSite::None))),
            "cookie.sameSite"
        );
        assert!(SessionPolicy::cookie("__Host-s").build().is_ok());
        assert!(SessionPolicy::cookie("__Secure-s").domain("a.example").path("/x").build().is_ok());
        assert!(SessionPolicy::cookie("s").same_site(Some(SameSite::None)).build().is_ok());
        for smuggled in ["Max-Age=1", "expires=Thu, 01 Jan 2099 00:00:00 GMT", "Domain=x", "path=/"]
        {
            let err = SessionPolicy::cookie("s").attribute(smuggled).build().unwrap_err();
            assert_eq!(err.field(), "cookie.attributes", "{smuggled}");
        }
        assert!(SessionPolicy::cookie("s").attribute("Priority=High").build().is_ok());
    }

    #[test]
    fn session_headers_may_not_be_http_s_own() {
        for reserved in ["cookie", "Host", "content-length", "Transfer-Encoding", "set-cookie"] {
            let err = SessionPolicy::header(reserved).build().unwrap_err();
            assert_eq!(err.field(), "header.name", "{reserved}");
        }
        assert!(SessionPolicy::header("x-session").build().is_ok());
    }

    #[test]
    fn rejects_bad_paths_domains_and_zero_timeouts() {
        assert_eq!(
            SessionPolicy::cookie("s").path("a").build().unwrap_err().field(),
            "cookie.path"
        );
        assert_eq!(
            SessionPolicy::cookie("s").path("/a;b").build().unwrap_err().field(),
            "cookie.path"
        );
        assert_eq!(
            SessionPolicy::cookie("s").domain("a b").build().unwrap_err().field(),
            "cookie.domain"
        );
        assert_eq!(
            SessionPolicy::cookie("s")
                .absolute_timeout(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "absoluteTimeout"
        );
    }
}

//! The cookie strategies, in HAProxy's words: insert, rewrite, prefix, passive.

use http::header::{CACHE_CONTROL, HeaderValue, SET_COOKIE};
use http::{Method, request, response};

use super::cache::cacheable;
use super::{Reply, Strategy};
use crate::carrier::cookie::{self as cookies, Edit};
use crate::carrier::set_cookie::{self, Rewrite as SetCookieEdit};
use crate::policy::{Carrier, CookieAttributes, SessionPolicy};

/// The gateway's own cookie (HAProxy `insert`), the default for cookie sessions.
///
/// * `indirect` is the policy's ([`PolicyBuilder::indirect`](crate::policy::PolicyBuilder::indirect)):
///   unless the policy turns it off, the cookie is removed before the request reaches the
///   backend.
/// * `preserve` (default off): when the backend sets a cookie of the same name itself, it is
///   passed on and nothing is inserted, so the application can end persistence (a logout).
///   Without it, the backend's cookie of that name is removed.
/// * `nocache` (default off): when a cookie is inserted into a response that a shared cache
///   could store, `Cache-Control: private` is added, as HAProxy 2.6 does.
/// * `postonly` (default off): cookies are inserted only into responses to `POST`.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Insert;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Endpoint `s1`, answering with a validator: a shared cache could store the response.
/// let backend = service_fn(|_: Request<()>| async {
///     let mut res = Response::builder().header("etag", "\"v1\"").body(())?;
///     ServedBy("s1".to_owned()).insert(res.extensions_mut());
///     Ok::<_, http::Error>(res)
/// });
/// // The plain codec writes the endpoint's key as it is, as HAProxy does.
/// let policy = SessionPolicy::cookie("SRV").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default())
///     .strategy(Insert::new().nocache(true));
/// let res = layer.layer(backend).oneshot(Request::new(())).await?;
/// assert_eq!(res.headers()["set-cookie"], "SRV=s1; HttpOnly; SameSite=Strict; Secure; Path=/");
/// assert_eq!(res.headers()["cache-control"], "private");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Insert {
    preserve: bool,
    nocache: bool,
    postonly: bool,
}

impl Insert {
    /// `insert` (`indirect` unless the policy turns it off).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a backend's own cookie of our name wins over ours.
    pub fn preserve(mut self, on: bool) -> Self {
        self.preserve = on;
        self
    }

    /// Whether to add `Cache-Control: private` when inserting into a cacheable response.
    pub fn nocache(mut self, on: bool) -> Self {
        self.nocache = on;
        self
    }

    /// Whether to insert only into responses to `POST`.
    pub fn postonly(mut self, on: bool) -> Self {
        self.postonly = on;
        self
    }
}

/// Our cookie's value, removed from the request when the policy says `indirect` (or says
/// nothing and `default` is on): insert and rewrite alike.
fn read(policy: &SessionPolicy, req: &mut request::Parts, default: bool) -> Option<String> {
    if policy.indirect().unwrap_or(default) {
        // Found and removed in one pass.
        cookies::take(&mut req.headers, policy.name())
    } else {
        cookies::find(&req.headers, policy.name()).map(str::to_owned)
    }
}

fn cookie_attributes(policy: &SessionPolicy) -> CookieAttributes {
    match policy.carrier() {
        Carrier::Cookie(attributes) => attributes.clone(),
        _ => CookieAttributes::default(),
    }
}

impl Strategy for Insert {
    type State = ();

    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, ()) {
        (read(policy, req, true), ())
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        (): (),
    ) {
        let name = policy.name();
        if set_cookie::sets(&res.headers, name) {
            if self.preserve {
                return;
            }
            set_cookie::rewrite(&mut res.headers, name, |_| SetCookieEdit::Remove);
        }
        if !reply.is_due() || (self.postonly && reply.method() != Method::POST) {
            return;
        }
        let attributes = match policy.carrier() {
            Carrier::Cookie(attributes) => attributes,
            _ => &cookie_attributes(policy),
        };
        let value = match reply.token() {
            Some(token) => attributes.set_cookie(name, token, reply.max_age()),
            None => attributes.removal(name),
        };
        let Some(value) = value else {
            tracing::warn!("session cookie is not a valid header value");
            return;
        };
        res.headers.append(SET_COOKIE, value);
        if self.nocache && cacheable(reply.method(), res.status, &res.headers) {
            res.headers.append(CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }
}

/// The backend's own cookie carries the session (HAProxy `rewrite`): the value of every
/// `Set-Cookie` of that name is replaced by the token, every attribute kept. The cookie is
/// passed on to the backend unless the policy sets
/// [`indirect(true)`](crate::policy::PolicyBuilder::indirect) (HAProxy refuses that).
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Rewrite;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // An application on endpoint `s1` that sets its own session cookie.
/// let backend = service_fn(|_: Request<()>| async {
///     let set_cookie = "JSESSIONID=abc; Path=/app; Priority=High";
///     let mut res = Response::builder().header("set-cookie", set_cookie).body(())?;
///     ServedBy("s1".to_owned()).insert(res.extensions_mut());
///     Ok::<_, http::Error>(res)
/// });
/// let policy = SessionPolicy::cookie("JSESSIONID").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default());
/// let layer = layer.strategy(Rewrite::new());
/// let res = layer.layer(backend).oneshot(Request::new(())).await?;
/// // The value is the token now; every attribute is the application's.
/// assert_eq!(res.headers()["set-cookie"], "JSESSIONID=s1; Path=/app; Priority=High");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Rewrite {
    _private: (),
}

impl Rewrite {
    /// `rewrite`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for Rewrite {
    type State = ();

    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, ()) {
        (read(policy, req, false), ())
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        (): (),
    ) {
        if !set_cookie::sets(&res.headers, policy.name()) {
            return;
        }
        if let Some(token) = reply.token() {
            set_cookie::rewrite(&mut res.headers, policy.name(), |_| {
                SetCookieEdit::Value(token.to_owned())
            });
        }
    }
}

/// The backend's own cookie is prefixed with the token (HAProxy `prefix`): the backend's
/// `JSESSIONID=abc` reaches the client as `JSESSIONID=<token>~abc` and comes back to the
/// backend as `JSESSIONID=abc`. The split is at the first `~`; a value without `~` passes
/// unchanged and carries no session; an unknown token is still stripped.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Prefix;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // An application on endpoint `s1` that sets its own session cookie and answers with the
/// // `Cookie` header it received.
/// let backend = service_fn(|req: Request<()>| async move {
///     let seen = req.headers().get("cookie").map(|v| v.to_str().unwrap().to_owned());
///     let mut res = Response::builder().header("set-cookie", "JSESSIONID=abc; Path=/").body(seen)?;
///     ServedBy("s1".to_owned()).insert(res.extensions_mut());
///     Ok::<_, http::Error>(res)
/// });
/// let policy = SessionPolicy::cookie("JSESSIONID").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default());
/// let layer = layer.strategy(Prefix);
/// let app = layer.layer(backend);
///
/// let res = app.clone().oneshot(Request::new(())).await?;
/// assert_eq!(res.headers()["set-cookie"], "JSESSIONID=s1~abc; Path=/");
/// // The client sends it back; the application sees its own value only.
/// let req = Request::builder().header("cookie", "JSESSIONID=s1~abc").body(())?;
/// let res = app.oneshot(req).await?;
/// assert_eq!(res.body().as_deref(), Some("JSESSIONID=abc"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix;

impl Strategy for Prefix {
    type State = ();

    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, ()) {
        let mut first: Option<Option<String>> = None;
        cookies::edit(&mut req.headers, policy.name(), |value| {
            let split = value.split_once('~');
            // The first occurrence decides, as in HAProxy; without `~` its whole value is the id.
            first.get_or_insert_with(|| Some(split.map_or(value, |(id, _)| id).to_owned()));
            match split {
                Some((_, rest)) => Edit::Value(rest.to_owned()),
                None => Edit::Keep,
            }
        });
        (first.flatten(), ())
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        (): (),
    ) {
        if !set_cookie::sets(&res.headers, policy.name()) {
            return;
        }
        if let Some(token) = reply.token() {
            set_cookie::rewrite(&mut res.headers, policy.name(), |value| {
                SetCookieEdit::Value(format!("{token}~{value}"))
            });
        }
    }
}

/// Read-only (HAProxy's `cookie NAME` with no mode): the cookie picks the endpoint; neither
/// the request nor the response is changed.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Passive;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Stands in for a balancer: honours the pin, otherwise `s1`.
/// let balancer = service_fn(|mut req: Request<()>| async move {
///     let pin = PinnedEndpoint::<String>::take(req.extensions_mut());
///     let key = pin.map_or("s1".to_owned(), |p| p.0);
///     let mut res = Response::new(());
///     ServedBy(key).insert(res.extensions_mut());
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// let policy = SessionPolicy::cookie("SRV").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default());
/// let layer = layer.strategy(Passive);
/// let app = layer.layer(balancer);
///
/// // Someone else (the application, another proxy) set `SRV=s2`: it is honoured, not touched.
/// let req = Request::builder().header("cookie", "SRV=s2").body(())?;
/// let res = app.clone().oneshot(req).await?;
/// assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
/// // Nothing is ever written.
/// let res = app.oneshot(Request::new(())).await?;
/// assert!(res.headers().get("set-cookie").is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passive;

impl Strategy for Passive {
    type State = ();

    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, ()) {
        (cookies::find(&req.headers, policy.name()).map(str::to_owned), ())
    }

    fn on_response(&self, _: &SessionPolicy, _: &mut response::Parts, _: &Reply<'_>, (): ()) {}
}

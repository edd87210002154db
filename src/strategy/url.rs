use http::header::{HOST, HeaderName, HeaderValue, LOCATION};
use http::uri::PathAndQuery;
use http::{Uri, request, response};

use super::{Reply, Strategy};
use crate::carrier::url::{self as urls, Place};
use crate::policy::SessionPolicy;

/// The session travels in the URL, named as the policy names it: a path parameter
/// (`/cart;jsessionid=TOKEN?x=1`, servlet style) or a query parameter (`/cart?session=TOKEN`).
///
/// * `strip` (default on): the parameter is removed before the backend sees the URL; the rest
///   of the URL stays byte-exact.
/// * `expose_header` (default none): a valid session's token is offered to the backend in this
///   request header, so that the application can write it into its links; a client's own value
///   of that header is always removed.
///
/// On redirects (a `Location` header), the token is added to the target URL whenever a new
/// session is due.
///
/// URLs are rewritten before routing, so with axum wrap the whole `Router` in the layer
/// (`ServiceBuilder::new().layer(..).service(router)`) rather than using `Router::layer`.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::strategy::Url;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Stands in for a balancer: honours the pin, otherwise `s1`; redirects `/login` to `/cart`
/// // and answers anything else with the URL it saw.
/// let balancer = service_fn(|mut req: Request<()>| async move {
///     let pin = PinnedEndpoint::<String>::take(req.extensions_mut());
///     let key = pin.map_or("s1".to_owned(), |p| p.0);
///     let mut res = match req.uri().path() {
///         "/login" => Response::builder().status(303).header("location", "/cart"),
///         _ => Response::builder(),
///     }
///     .body(req.uri().to_string())?;
///     ServedBy(key).insert(res.extensions_mut());
///     Ok::<_, http::Error>(res)
/// });
/// let policy = SessionPolicy::cookie("session").build()?;
/// let layer = SessionPersistenceLayer::new(policy, PlainCodec::default());
/// let app = layer.strategy(Url::query()).layer(balancer);
///
/// // A new session rides on the redirect.
/// let res = app.clone().oneshot(Request::builder().uri("/login").body(())?).await?;
/// assert_eq!(res.headers()["location"], "/cart?session=s1");
/// // The client follows it; the backend sees the URL without the session.
/// let res = app.oneshot(Request::builder().uri("/cart?session=s1&page=2").body(())?).await?;
/// assert_eq!(res.body(), "/cart?page=2");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Url {
    place: Place,
    strip: bool,
    expose: Option<HeaderName>,
}

impl Url {
    /// A path parameter: `;name=TOKEN` after a path segment.
    pub fn path_parameter() -> Self {
        Self { place: Place::PathParameter, strip: true, expose: None }
    }

    /// A query parameter: `name=TOKEN`.
    pub fn query() -> Self {
        Self { place: Place::Query, strip: true, expose: None }
    }

    /// Whether to remove the parameter before the backend sees the URL.
    pub fn strip(mut self, on: bool) -> Self {
        self.strip = on;
        self
    }

    /// Offers a valid session's token to the backend in `header`.
    pub fn expose_header(mut self, header: HeaderName) -> Self {
        self.expose = Some(header);
        self
    }
}

impl Url {
    /// The path a router should match: `path` without any path parameter `name` (a
    /// `;name=…` in any segment), so that `/cart;jsessionid=T/items` matches a `PathPrefix
    /// /cart` rule. Routers that choose a route *before* this layer strips the parameter (a
    /// gateway's route table, axum's `Router` when the layer is inside it) match on this.
    /// Borrows when there is nothing to remove.
    ///
    /// ```
    /// use tower_session_persistence::strategy::Url;
    ///
    /// assert_eq!(Url::routing_path("/cart;jsessionid=T/items", "jsessionid"), "/cart/items");
    /// assert_eq!(Url::routing_path("/cart;v=1", "jsessionid"), "/cart;v=1");
    /// ```
    pub fn routing_path<'a>(path: &'a str, name: &str) -> std::borrow::Cow<'a, str> {
        if !path.contains(';') {
            return std::borrow::Cow::Borrowed(path);
        }
        // Only the path: a `?` here is data, not a query.
        let path = path.split(['?', '#']).next().unwrap_or(path);
        match urls::strip(path, Place::PathParameter, name) {
            Some(stripped) => std::borrow::Cow::Owned(stripped),
            None => std::borrow::Cow::Borrowed(path),
        }
    }
}

fn with_target(uri: &Uri, target: &str) -> Option<Uri> {
    // `http://host?session=T` stripped leaves nothing; an empty path is `/` (RFC 9112 §3.2.2).
    let target = if target.is_empty() { "/" } else { target };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).ok()?);
    Uri::from_parts(parts).ok()
}

impl Strategy for Url {
    /// The host the request was for: redirects elsewhere never carry the token.
    type State = Option<String>;

    fn on_request(
        &self,
        policy: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, Option<String>) {
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .map(str::to_ascii_lowercase);
        (self.read(policy, req), host)
    }

    fn on_valid(&self, _policy: &SessionPolicy, req: &mut request::Parts, token: &str) {
        if let Some(header) = &self.expose
            && let Ok(value) = HeaderValue::try_from(token)
        {
            req.headers.insert(header.clone(), value);
        }
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        host: Option<String>,
    ) {
        if !reply.is_due() {
            return;
        }
        let Some(location) = res.headers.get(LOCATION).and_then(|l| l.to_str().ok()) else {
            return;
        };
        // The token goes only where this session is valid: relative targets, and absolute
        // ones naming the host the request was for (not an identity provider's login page).
        if !same_origin(location, host.as_deref()) {
            return;
        }
        let Some(token) = reply.token() else { return };
        let rewritten = urls::with_token(location, self.place, policy.name(), token);
        if let Ok(value) = HeaderValue::try_from(rewritten) {
            res.headers.insert(LOCATION, value);
        }
    }
}

/// Whether a `Location` target stays on `host`: a relative reference, or an absolute one
/// (`scheme://authority…`, `//authority…`) whose authority is `host` (case-insensitive).
fn same_origin(location: &str, host: Option<&str>) -> bool {
    let after_scheme = match location.find([':', '/', '?', '#']) {
        Some(colon) if location.as_bytes()[colon] == b':' => {
            let scheme = &location[..colon];
            let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !is_scheme {
                return true;
            }
            &location[colon + 1..]
        }
        _ => location,
    };
    let Some(rest) = after_scheme.strip_prefix("//") else {
        // No authority: relative (or `mailto:`-like, which names no host of ours either way).
        return after_scheme.len() == location.len();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
}

impl Url {
    fn read(&self, policy: &SessionPolicy, req: &mut request::Parts) -> Option<String> {
        if let Some(header) = &self.expose {
            req.headers.remove(header);
        }
        let target = req.uri.path_and_query().map(PathAndQuery::as_str)?;
        let token = urls::find(target, self.place, policy.name()).map(str::to_owned);
        if self.strip
            && token.is_some()
            && let Some(stripped) = urls::strip(target, self.place, policy.name())
            && let Some(uri) = with_target(&req.uri, &stripped)
        {
            req.uri = uri;
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn only_same_origin_redirects_carry_the_token() {
        let host = Some("shop.example:8080");
        for relative in ["/cart", "cart", "?page=2", "#top", "../x", "/a:b"] {
            assert!(same_origin(relative, host), "{relative}");
        }
        assert!(same_origin("http://shop.example:8080/cart", host));
        assert!(same_origin("HTTPS://Shop.Example:8080", host));
        assert!(same_origin("//shop.example:8080/x", host));
        for elsewhere in [
            "https://login.example/authorize?x=1",
            "//login.example/x",
            "http://shop.example/cart",
            "http://evil.example@login.example/",
            "mailto:someone@shop.example",
        ] {
            assert!(!same_origin(elsewhere, host), "{elsewhere}");
        }
        assert!(!same_origin("https://shop.example/", None));
    }
}

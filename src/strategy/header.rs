use http::header::{HeaderName, HeaderValue};
use http::{request, response};

use super::{Reply, Strategy};
use crate::carrier;
use crate::policy::{Carrier, SessionPolicy};

/// The session travels in a header (GEP-1619 `type: Header`), the default for header
/// sessions: read from the request (names match case-insensitively) and removed before the
/// backend; set on the response when the session is new, re-pinned or refreshed.
///
/// ```
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_session_persistence::policy::SessionPolicy;
/// use tower_session_persistence::token::PlainCodec;
/// use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Stands in for a balancer: honours the pin, otherwise `s1`; says whether it saw the header.
/// let balancer = service_fn(|mut req: Request<()>| async move {
///     let pin = PinnedEndpoint::<String>::take(req.extensions_mut());
///     let key = pin.map_or("s1".to_owned(), |p| p.0);
///     let mut res = Response::new(req.headers().contains_key("x-session"));
///     ServedBy(key).insert(res.extensions_mut());
///     Ok::<_, std::convert::Infallible>(res)
/// });
/// // `Header` is the default strategy of a header policy.
/// let policy = SessionPolicy::header("x-session").build()?;
/// let app = SessionPersistenceLayer::new(policy, PlainCodec::default()).layer(balancer);
///
/// let res = app.clone().oneshot(Request::new(())).await?;
/// assert_eq!(res.headers()["x-session"], "s1");
/// let req = Request::builder().header("x-session", "s1").body(())?;
/// let res = app.oneshot(req).await?;
/// assert!(!*res.body(), "the backend never sees the header");
/// assert!(res.headers().get("x-session").is_none(), "unchanged: not sent again");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header;

fn name(policy: &SessionPolicy) -> Option<HeaderName> {
    match policy.carrier() {
        Carrier::Header(name) => Some(name.clone()),
        _ => HeaderName::from_bytes(policy.name().as_bytes()).ok(),
    }
}

impl Strategy for Header {
    type State = ();

    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> (Option<String>, ()) {
        let Some(name) = name(policy) else { return (None, ()) };
        let token = carrier::header::find(&req.headers, &name).map(str::to_owned);
        carrier::header::strip(&mut req.headers, &name);
        (token, ())
    }

    fn on_response(
        &self,
        policy: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        (): (),
    ) {
        if !reply.is_due() {
            return;
        }
        let (Some(name), Some(token)) = (name(policy), reply.token()) else { return };
        if let Ok(value) = HeaderValue::try_from(token) {
            res.headers.insert(name, value);
        }
    }
}

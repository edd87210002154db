use http::header::{HeaderName, HeaderValue};
use http::{request, response};

use super::{Reply, Strategy};
use crate::carrier;
use crate::policy::{Carrier, SessionPolicy};

/// The session travels in a header (GEP-1619 `type: Header`), the default for header
/// sessions: read from the request (names match case-insensitively) and removed before the
/// backend; set on the response when the session is new, re-pinned or refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header;

fn name(policy: &SessionPolicy) -> Option<HeaderName> {
    match policy.carrier() {
        Carrier::Header(name) => Some(name.clone()),
        _ => HeaderName::from_bytes(policy.name().as_bytes()).ok(),
    }
}

impl Strategy for Header {
    fn on_request(&self, policy: &SessionPolicy, req: &mut request::Parts) -> Option<String> {
        let name = name(policy)?;
        let token = carrier::header::find(&req.headers, &name).map(str::to_owned);
        carrier::header::strip(&mut req.headers, &name);
        token
    }

    fn on_response(&self, policy: &SessionPolicy, res: &mut response::Parts, reply: &Reply<'_>) {
        if !reply.is_due() {
            return;
        }
        let (Some(name), Some(token)) = (name(policy), reply.token()) else { return };
        if let Ok(value) = HeaderValue::try_from(token) {
            res.headers.insert(name, value);
        }
    }
}

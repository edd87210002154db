//! The layer's configuration and the three things it does with a session: read, strip, write.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{HeaderValue, SET_COOKIE};

use super::Decision;
use crate::EndpointKey;
use crate::carrier;
use crate::policy::{Carrier, Lifetime, SessionPolicy};
use crate::token::{Binding, Claims, Codec};

pub(crate) struct Settings<C> {
    pub(crate) policy: SessionPolicy,
    pub(crate) codec: C,
    pub(crate) scope: String,
    pub(crate) max_skew: Duration,
    pub(crate) refresh: Option<Duration>,
}

impl<C> fmt::Debug for Settings<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The codec holds keys: leave it out.
        f.debug_struct("Settings")
            .field("policy", &self.policy)
            .field("scope", &self.scope)
            .field("max_skew", &self.max_skew)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// A session read from a request.
#[derive(Debug)]
pub(crate) enum Incoming<K> {
    /// A valid session for endpoint `K`.
    Valid { key: K, issued: u64, refreshed: u64 },
    /// No usable session, and why: [`Decision::New`], [`Decision::Expired`] or
    /// [`Decision::Invalid`].
    Unusable(Decision),
}

/// Wall-clock seconds: tokens are read by other replicas, so a monotonic clock would not do.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl<C: Codec> Settings<C> {
    fn binding(&self) -> Binding<'_> {
        Binding { name: self.policy.name(), scope: &self.scope }
    }

    /// Finds, verifies and checks the age of the request's session.
    pub(crate) fn read<K: EndpointKey>(&self, headers: &HeaderMap, now: u64) -> Incoming<K> {
        let token = match self.policy.carrier() {
            Carrier::Cookie(_) => carrier::cookie::find(headers, self.policy.name()),
            Carrier::Header(name) => carrier::header::find(headers, name),
        };
        let Some(token) = token else {
            return Incoming::Unusable(Decision::New);
        };
        let Some(claims) = self.codec.decode(token, self.binding()) else {
            return Incoming::Unusable(Decision::Invalid);
        };
        let Claims { endpoint, issued, refreshed } = claims;
        let latest = now.saturating_add(self.max_skew.as_secs());
        if issued > latest || refreshed > latest || refreshed < issued {
            return Incoming::Unusable(Decision::Invalid);
        }
        let outlived = |since: u64, timeout: Option<Duration>| {
            timeout.is_some_and(|t| now.saturating_sub(since) >= t.as_secs())
        };
        if outlived(issued, self.policy.absolute_timeout())
            || outlived(refreshed, self.policy.idle_timeout())
        {
            return Incoming::Unusable(Decision::Expired);
        }
        match K::from_bytes(&endpoint) {
            Some(key) => Incoming::Valid { key, issued, refreshed },
            None => Incoming::Unusable(Decision::Invalid),
        }
    }

    /// Removes the session from what the backend will see, where the policy says so.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        match self.policy.carrier() {
            Carrier::Cookie(_) if self.policy.indirect() => {
                carrier::cookie::strip(headers, self.policy.name());
            }
            Carrier::Cookie(_) => {}
            Carrier::Header(name) => {
                carrier::header::strip(headers, name);
            }
        }
    }

    /// Whether a still-valid token should be re-issued to move its refresh time forward.
    pub(crate) fn refresh_due(&self, refreshed: u64, now: u64) -> bool {
        self.refresh.is_some_and(|every| now.saturating_sub(refreshed) >= every.as_secs())
    }

    /// Writes a token for `key` into the response: an appended `Set-Cookie`, or the session
    /// header.
    pub(crate) fn write<K: EndpointKey>(
        &self,
        headers: &mut HeaderMap,
        key: &K,
        issued: u64,
        now: u64,
    ) {
        let claims = Claims { endpoint: key.to_bytes().into_owned(), issued, refreshed: now };
        let token = self.codec.encode(&claims, self.binding());
        match self.policy.carrier() {
            Carrier::Cookie(attributes) => {
                let mut cookie = cookie::Cookie::build((self.policy.name(), token))
                    .path(attributes.path.as_str())
                    .http_only(attributes.http_only)
                    .secure(attributes.secure);
                if let Some(same_site) = attributes.same_site {
                    cookie = cookie.same_site(same_site);
                }
                if let Some(domain) = &attributes.domain {
                    cookie = cookie.domain(domain.as_str());
                }
                if attributes.lifetime == Lifetime::Permanent
                    && let Some(absolute) = self.policy.absolute_timeout()
                {
                    // What is left of the session's absolute lifetime.
                    let left = (issued + absolute.as_secs()).saturating_sub(now);
                    let left = i64::try_from(left).unwrap_or(i64::MAX);
                    cookie = cookie.max_age(cookie::time::Duration::seconds(left));
                }
                match HeaderValue::try_from(cookie.build().to_string()) {
                    Ok(value) => {
                        headers.append(SET_COOKIE, value);
                    }
                    Err(_) => tracing::warn!("session cookie is not a valid header value"),
                }
            }
            Carrier::Header(name) => match HeaderValue::try_from(token) {
                Ok(value) => {
                    headers.insert(name.clone(), value);
                }
                Err(_) => tracing::warn!("session token is not a valid header value"),
            },
        }
    }
}

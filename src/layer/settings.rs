//! The layer's configuration and what it does with a session: read it, judge it, write it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::request;

use super::Decision;
use crate::EndpointKey;
use crate::policy::{Carrier, Lifetime, SessionPolicy};
use crate::strategy::{AnyState, DynStrategy};
use crate::token::{Binding, Claims, Codec, Decoded};

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) policy: SessionPolicy,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) strategy: Arc<dyn DynStrategy>,
    /// Shared, so that counting a decision copies no text (a metric label takes the `Arc`).
    pub(crate) scope: std::sync::Arc<str>,
    pub(crate) max_skew: Duration,
    pub(crate) refresh: Option<Duration>,
    /// What this layer has seen of its balancer, for the one warning about a missing tag.
    pub(crate) watch: Arc<Watch>,
}

/// Whether the layer has seen a response tagged for it, and whether it has warned yet.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    tagged: AtomicBool,
    warned: AtomicBool,
}

impl Watch {
    /// Notes a response tagged with our `ServedBy`.
    pub(crate) fn tagged(&self) {
        // Read first: the common case (already set) costs no cache-line write.
        if !self.tagged.load(Ordering::Relaxed) {
            self.tagged.store(true, Ordering::Relaxed);
        }
    }

    /// Whether an untagged response should be warned about: never once a tagged one came, and
    /// only the first time.
    pub(crate) fn should_warn(&self) -> bool {
        !self.tagged.load(Ordering::Relaxed)
            && !self.warned.load(Ordering::Relaxed)
            && !self.warned.swap(true, Ordering::Relaxed)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The codec holds keys: leave it out.
        f.debug_struct("Settings")
            .field("policy", &self.policy)
            .field("strategy", &self.strategy)
            .field("scope", &self.scope)
            .field("max_skew", &self.max_skew)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// A session read from a request.
#[derive(Debug)]
pub(crate) enum Incoming<K> {
    /// A valid session for endpoint `K`; `stale` when an older key verified it.
    Valid { key: K, issued: Option<u64>, refreshed: Option<u64>, stale: bool },
    /// No usable session, and why: [`Decision::New`], [`Decision::Expired`] or
    /// [`Decision::Invalid`].
    Unusable(Decision),
}

/// Wall-clock seconds: tokens are read by other replicas, so a monotonic clock would not do.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Settings {
    fn binding(&self) -> Binding<'_> {
        Binding { name: self.policy.name(), scope: &self.scope }
    }

    /// Lets the strategy find the token (and prepare the request for the backend), then
    /// verifies it and checks its age. Also returns the strategy's state for the response.
    pub(crate) fn read<K: EndpointKey>(
        &self,
        req: &mut request::Parts,
        now: u64,
    ) -> (Incoming<K>, AnyState) {
        let (token, state) = self.strategy.on_request(&self.policy, req);
        let Some(token) = token else {
            return (Incoming::Unusable(Decision::New), state);
        };
        let incoming = self.judge(&token, now);
        if matches!(incoming, Incoming::Valid { .. }) {
            self.strategy.on_valid(&self.policy, req, &token);
        }
        (incoming, state)
    }

    fn judge<K: EndpointKey>(&self, token: &str, now: u64) -> Incoming<K> {
        let Some(decoded) = self.codec.decode_with_key(token, self.binding()) else {
            return Incoming::Unusable(Decision::Invalid);
        };
        let stale = decoded.is_stale();
        let Decoded { claims: Claims { endpoint, issued, refreshed }, .. } = decoded;
        let latest = now.saturating_add(self.max_skew.as_secs());
        let future = |t: Option<u64>| t.is_some_and(|t| t > latest);
        if future(issued)
            || future(refreshed)
            || matches!((issued, refreshed), (Some(i), Some(r)) if r < i)
        {
            return Incoming::Unusable(Decision::Invalid);
        }
        // A token without a date (a plain HAProxy value) cannot have outlived anything.
        let outlived = |since: Option<u64>, timeout: Option<Duration>| match (since, timeout) {
            // Compared as durations: a sub-second timeout (`500ms`) ends a session after one
            // whole second, not at once.
            (Some(since), Some(t)) => Duration::from_secs(now.saturating_sub(since)) >= t,
            _ => false,
        };
        if outlived(issued, self.policy.absolute_timeout())
            || outlived(refreshed, self.policy.idle_timeout())
        {
            return Incoming::Unusable(Decision::Expired);
        }
        match K::from_bytes(&endpoint) {
            Some(key) => Incoming::Valid { key, issued, refreshed, stale },
            None => Incoming::Unusable(Decision::Invalid),
        }
    }

    /// Whether a valid token that stays on its endpoint should still be written again: its
    /// refresh time is older than the refresh interval, or it lacks a date the timeouts need.
    pub(crate) fn refresh_due(
        &self,
        issued: Option<u64>,
        refreshed: Option<u64>,
        now: u64,
    ) -> bool {
        let absolute = self.policy.absolute_timeout().is_some();
        let rolling = self.refresh.is_some() || self.policy.idle_timeout().is_some();
        if (absolute && issued.is_none()) || (rolling && refreshed.is_none()) {
            return true;
        }
        match (self.refresh, refreshed) {
            (Some(every), Some(refreshed)) => now > refreshed.saturating_add(every.as_secs()),
            _ => false,
        }
    }

    /// The token naming `key` for a session first issued at `issued`, written now.
    pub(crate) fn token<K: EndpointKey>(&self, key: &K, issued: u64, now: u64) -> Option<String> {
        let claims = Claims {
            endpoint: key.to_bytes().into_owned(),
            issued: Some(issued),
            refreshed: Some(now),
        };
        self.codec.encode(&claims, self.binding())
    }

    /// For permanent cookies, what is left of the session's absolute lifetime.
    pub(crate) fn max_age(&self, issued: u64, now: u64) -> Option<Duration> {
        let Carrier::Cookie(attributes) = self.policy.carrier() else { return None };
        if attributes.lifetime != Lifetime::Permanent {
            return None;
        }
        let absolute = self.policy.absolute_timeout()?;
        // Rounded up: a sub-second lifetime must not become `Max-Age=0`, a deletion. Saturating:
        // a timeout near `Duration::MAX` is the longest lifetime, not an overflow.
        let absolute = absolute.as_secs().saturating_add(u64::from(absolute.subsec_nanos() > 0));
        Some(Duration::from_secs(issued.saturating_add(absolute).saturating_sub(now)))
    }
}

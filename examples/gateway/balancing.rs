//! A rule's balancing options: the `x-balancer` extension block, checked, and the balancer
//! built with them.
//!
//! ```yaml
//! x-balancer:
//!   failfast: 1s         # how long a request waits for its endpoint to be ready
//!   endpointQueue: 128   # how many requests may wait for one endpoint
//!                        # (endpoints are busy only with limits.maxConnectionsPerEndpoint:
//!                        # without it they are always ready and these never trigger)
//!   ejectFor: 10s        # how long an endpoint that refused a connection is left out, by
//!                        # every serving thread; 0s: never
//!   redispatches: 3      # how many times a request its endpoint never got (refused, connect
//!                        # timeout, a dead pooled connection) goes to another endpoint,
//!                        # whatever its method and body; 0: never. Within a retry budget
//!                        # (20% of requests + 10/s per thread and rule)
//!   replay: false        # also send a bodiless idempotent request (GET, HEAD, OPTIONS, PUT,
//!                        # DELETE) again, elsewhere, when it failed after it was sent
//!   consecutive5xx: 5    # eject an endpoint after this many 5xx answers in a row (Envoy's
//!                        # outlier detection); absent or 0: off
//!   affinity: {header: x-user}   # or {cookie: NAME}, or {clientIP: true}: for requests
//!                                # without a session, a hash of this picks the endpoint
//! ```
//!
//! Every field is optional; an absent one keeps the library's default.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderName, Request};
use serde::Deserialize;
use tower::discover::Discover;
use tower_session_persistence::OnUnavailable;
use tower_session_persistence::balance::{Balancer, BalancerBuilder, HealthView, affinity};

use crate::config::{ConfigError, duration};
use crate::proxy::{ClientAddr, Upstream};

/// The `x-balancer` block as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Extension {
    failfast: Option<String>,
    endpoint_queue: Option<usize>,
    eject_for: Option<String>,
    redispatches: Option<u8>,
    replay: Option<bool>,
    #[serde(rename = "consecutive5xx")]
    consecutive_5xx: Option<u32>,
    affinity: Option<AffinityConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AffinityConfig {
    header: Option<String>,
    cookie: Option<String>,
    #[serde(rename = "clientIP")]
    client_ip: Option<bool>,
}

/// Where a request's affinity key comes from.
#[derive(Clone, Debug)]
enum Affinity {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

/// A rule's checked balancing options.
#[derive(Clone, Debug, Default)]
pub(crate) struct Balancing {
    failfast: Option<Duration>,
    endpoint_queue: Option<usize>,
    eject_for: Option<Duration>,
    replay: bool,
    redispatches: Option<u8>,
    consecutive_5xx: Option<u32>,
    affinity: Option<Affinity>,
}

/// The endpoint keys and services the gateway's balancers hold.
type Key = String;

/// The affinity extractor, boxed: one type whatever the source.
type KeyFn = Box<dyn Fn(&Request<Body>) -> Option<u64> + Send + Sync>;

impl Balancing {
    /// Starts a balancer over `groups` (weight, discovery), with `on_unavailable` for sessions
    /// whose endpoint cannot take them.
    pub(crate) fn build<D>(
        &self,
        groups: Vec<(u32, D)>,
        on_unavailable: OnUnavailable,
        view: HealthView<Key>,
    ) -> Balancer<Key, Upstream, Body>
    where
        D: Discover<Key = Key, Service = Upstream> + Send + 'static,
        D::Error: Into<tower::BoxError>,
    {
        let mut builder = BalancerBuilder::new().on_unavailable(on_unavailable).health_view(view);
        for (weight, discover) in groups {
            builder = builder.group(weight, discover);
        }
        if let Some(deadline) = self.failfast {
            builder = builder.failfast(deadline);
        }
        if let Some(limit) = self.endpoint_queue {
            builder = builder.endpoint_queue(limit);
        }
        if let Some(period) = self.eject_for {
            builder = builder.eject_for(period);
        }
        if let Some(attempts) = self.redispatches {
            builder = builder.redispatches(attempts);
        }
        // Requests an endpoint never got are redispatched whatever they are (the pool hands
        // them back); `replay` adds bodiless idempotent ones that failed once sent.
        let builder =
            builder.retry_sent_idempotent(self.replay).eject_after_5xx(self.consecutive_5xx);
        match (self.affinity.as_ref().map(key_fn), self.replay) {
            (None, false) => builder.build(),
            (None, true) => builder.replay_empty_bodies().build(),
            (Some(key), false) => builder.affinity(key).build(),
            (Some(key), true) => builder.affinity(key).replay_empty_bodies().build(),
        }
    }
}

fn key_fn(affinity: &Affinity) -> KeyFn {
    match affinity.clone() {
        Affinity::Header(name) => Box::new(affinity::header(name)),
        Affinity::Cookie(name) => Box::new(affinity::cookie(name)),
        Affinity::ClientIp => Box::new(|req: &Request<Body>| {
            req.extensions().get::<ClientAddr>().map(|client| match client.addr.ip() {
                IpAddr::V4(ip) => affinity::hash(&ip.octets()),
                IpAddr::V6(ip) => affinity::hash(&ip.octets()),
            })
        }),
    }
}

/// Checks a rule's `x-balancer` block (`at` is the rule's YAML path).
pub(crate) fn check(extension: Option<&Extension>, at: &str) -> Result<Balancing, ConfigError> {
    let Some(ext) = extension else {
        return Ok(Balancing::default());
    };
    let field = |name: &str| format!("{at}.x-balancer.{name}");
    let affinity = match &ext.affinity {
        None => None,
        Some(config) => Some(check_affinity(config, &field("affinity"))?),
    };
    if ext.endpoint_queue == Some(0) {
        return Err(ConfigError::new(field("endpointQueue"), "must be at least 1"));
    }
    Ok(Balancing {
        failfast: duration(ext.failfast.as_deref(), &field("failfast"))?,
        endpoint_queue: ext.endpoint_queue,
        eject_for: duration(ext.eject_for.as_deref(), &field("ejectFor"))?,
        replay: ext.replay.unwrap_or(false),
        redispatches: ext.redispatches,
        consecutive_5xx: ext.consecutive_5xx,
        affinity,
    })
}

fn check_affinity(config: &AffinityConfig, at: &str) -> Result<Affinity, ConfigError> {
    let chosen = [config.header.is_some(), config.cookie.is_some(), config.client_ip.is_some()];
    if chosen.iter().filter(|set| **set).count() != 1 {
        return Err(ConfigError::new(at, "needs exactly one of header, cookie or clientIP"));
    }
    if let Some(name) = &config.header {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::new(format!("{at}.header"), format!("{name:?} is not a header name"))
        })?;
        return Ok(Affinity::Header(name));
    }
    if let Some(name) = &config.cookie {
        if name.is_empty() {
            return Err(ConfigError::new(format!("{at}.cookie"), "must not be empty"));
        }
        return Ok(Affinity::Cookie(name.clone()));
    }
    match config.client_ip {
        Some(true) => Ok(Affinity::ClientIp),
        _ => Err(ConfigError::new(format!("{at}.clientIP"), "must be true when given")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_json(json: &str) -> Result<Balancing, ConfigError> {
        check(Some(&serde_json::from_str(json).unwrap()), "r")
    }

    #[test]
    fn reads_every_option() {
        let b = check_json(
            r#"{"failfast": "250ms", "endpointQueue": 8, "ejectFor": "0s", "replay": true,
                "redispatches": 1, "consecutive5xx": 5, "affinity": {"header": "x-user"}}"#,
        )
        .unwrap();
        assert_eq!(b.failfast, Some(Duration::from_millis(250)));
        assert_eq!(b.eject_for, Some(Duration::ZERO));
        assert_eq!(b.endpoint_queue, Some(8));
        assert!(b.replay);
        assert_eq!((b.redispatches, b.consecutive_5xx), (Some(1), Some(5)));
        assert!(matches!(b.affinity, Some(Affinity::Header(h)) if h == "x-user"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = check_json(r#"{"affinity": {"header": "a", "cookie": "b"}}"#).unwrap_err();
        assert!(e.to_string().starts_with("r.x-balancer.affinity: "), "{e}");
        let e = check_json(r#"{"affinity": {"header": "bad header"}}"#).unwrap_err();
        assert!(e.to_string().starts_with("r.x-balancer.affinity.header: "), "{e}");
        let e = check_json(r#"{"failfast": "1 s"}"#).unwrap_err();
        assert!(e.to_string().starts_with("r.x-balancer.failfast: "), "{e}");
        let e = check_json(r#"{"endpointQueue": 0}"#).unwrap_err();
        assert!(e.to_string().starts_with("r.x-balancer.endpointQueue: "), "{e}");
    }
}

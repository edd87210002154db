//! The file's edge blocks: `timeouts:`, `limits:` and `trustedProxies:`, checked into an
//! [`Edge`] plan. Every field is optional, with a default close to HAProxy's ordinary
//! configuration (`docs/SECURITY.md`, "At the edge", has the table).

use std::time::Duration;

use serde::Deserialize;
use tower_session_persistence::edge::{ForwardedHeaders, TrustedProxies};

use crate::config::{ConfigError, duration};

/// The `timeouts:` block; GEP-2257 durations.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TimeoutsConfig {
    request_header: Option<String>,
    client_idle: Option<String>,
    client_body: Option<String>,
    tunnel_idle: Option<String>,
    shutdown_grace: Option<String>,
    connect: Option<String>,
    backend_response: Option<String>,
    backend_idle: Option<String>,
}

/// The `limits:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    max_connections: Option<usize>,
    max_connections_per_endpoint: Option<usize>,
    max_request_header_bytes: Option<usize>,
    max_request_headers: Option<usize>,
}

/// Every timeout the gateway enforces; `None` where the file turned one off with `0s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// The whole request head, from the connection's start or its first byte after a
    /// response (HAProxy `timeout http-request`).
    pub(crate) request_header: Duration,
    /// Keep-alive idleness between requests, and a client that stops reading a response
    /// (HAProxy `timeout http-keep-alive`, `timeout client`).
    pub(crate) client_idle: Duration,
    /// Inactivity while reading a request body.
    pub(crate) client_body: Option<Duration>,
    /// Upgraded connections (WebSocket) with no traffic either way (HAProxy `timeout tunnel`).
    pub(crate) tunnel_idle: Option<Duration>,
    /// How long requests in flight may take to finish on shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Opening a connection to a backend (HAProxy `timeout connect`).
    pub(crate) connect: Duration,
    /// From the end of the request body to the response head (HAProxy `timeout server`, as
    /// it applies before the response).
    pub(crate) backend_response: Option<Duration>,
    /// Inactivity while streaming a response body (HAProxy `timeout server`, after).
    pub(crate) backend_idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            client_body: Some(Duration::from_secs(30)),
            tunnel_idle: Some(Duration::from_secs(3600)),
            shutdown_grace: Duration::from_secs(10),
            connect: Duration::from_secs(3),
            backend_response: Some(Duration::from_secs(30)),
            backend_idle: Some(Duration::from_secs(30)),
        }
    }
}

/// The connection and request limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Client connections open at once; beyond it the gateway stops accepting.
    pub(crate) max_connections: usize,
    /// Requests in flight to one endpoint at once, over every serving thread; the rest wait
    /// (up to `x-balancer.failfast`, at most `endpointQueue` of them).
    pub(crate) max_connections_per_endpoint: Option<usize>,
    /// A request head's size: request line and headers (`431` beyond it).
    pub(crate) max_request_header_bytes: usize,
    /// A request head's number of header fields (`431` beyond it).
    pub(crate) max_request_headers: usize,
}

/// HAProxy's `tune.bufsize` (16 KiB) holds the whole head; so does this.
pub(crate) const DEFAULT_HEADER_BYTES: usize = 16 * 1024;
/// HAProxy's `tune.http.maxhdr` is 101; hyper's default, 100.
pub(crate) const DEFAULT_HEADERS: usize = 100;
/// File descriptors kept for other uses than client connections and their upstream ones:
/// listeners, the configuration file, logs, h2c clients, the demo.
const RESERVED_FDS: u64 = 64;

/// The edge blocks, checked.
#[derive(Clone, Debug)]
pub(crate) struct Edge {
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) forwarded: ForwardedHeaders,
}

/// Checks the edge blocks; `legacy_timeout` is the older top-level `timeout:`, another name
/// for `timeouts.backendResponse`.
pub(crate) fn check(
    timeouts: Option<&TimeoutsConfig>,
    legacy_timeout: Option<&str>,
    limits: Option<&LimitsConfig>,
    trusted: Option<&[String]>,
) -> Result<Edge, ConfigError> {
    let default = TimeoutsConfig::default();
    let t = timeouts.unwrap_or(&default);
    let defaults = Timeouts::default();
    // Timeouts that bound what a client may hold: never off.
    let required = |text: &Option<String>, name: &str, default: Duration| {
        let at = format!("timeouts.{name}");
        match duration(text.as_deref(), &at)? {
            None => Ok(default),
            Some(zero) if zero.is_zero() => Err(ConfigError::new(
                at,
                "must be greater than zero: without it a client could hold a connection forever",
            )),
            Some(limit) => Ok(limit),
        }
    };
    // The others: `0s` turns them off.
    let optional = |text: &Option<String>, name: &str, default: Option<Duration>| {
        Ok::<_, ConfigError>(match duration(text.as_deref(), &format!("timeouts.{name}"))? {
            None => default,
            Some(zero) if zero.is_zero() => None,
            Some(limit) => Some(limit),
        })
    };
    if legacy_timeout.is_some() && t.backend_response.is_some() {
        return Err(ConfigError::new(
            "timeout",
            "is the older name of timeouts.backendResponse: give only one of them",
        ));
    }
    let backend_response = match legacy_timeout {
        Some(text) => match duration(Some(text), "timeout")? {
            Some(zero) if zero.is_zero() => None,
            limit => limit,
        },
        None => optional(&t.backend_response, "backendResponse", defaults.backend_response)?,
    };
    let timeouts = Timeouts {
        request_header: required(&t.request_header, "requestHeader", defaults.request_header)?,
        client_idle: required(&t.client_idle, "clientIdle", defaults.client_idle)?,
        client_body: optional(&t.client_body, "clientBody", defaults.client_body)?,
        tunnel_idle: optional(&t.tunnel_idle, "tunnelIdle", defaults.tunnel_idle)?,
        shutdown_grace: match duration(t.shutdown_grace.as_deref(), "timeouts.shutdownGrace")? {
            None => defaults.shutdown_grace,
            Some(grace) => grace,
        },
        connect: required(&t.connect, "connect", defaults.connect)?,
        backend_response,
        backend_idle: optional(&t.backend_idle, "backendIdle", defaults.backend_idle)?,
    };

    let default = LimitsConfig::default();
    let l = limits.unwrap_or(&default);
    let positive = |value: Option<usize>, name: &str| match value {
        Some(0) => Err(ConfigError::new(format!("limits.{name}"), "must be at least 1")),
        other => Ok(other),
    };
    let max_request_header_bytes = positive(l.max_request_header_bytes, "maxRequestHeaderBytes")?
        .unwrap_or(DEFAULT_HEADER_BYTES);
    if !(8192..=1024 * 1024).contains(&max_request_header_bytes) {
        return Err(ConfigError::new(
            "limits.maxRequestHeaderBytes",
            "must be between 8192 and 1048576 (8 KiB to 1 MiB)",
        ));
    }
    let max_request_headers =
        positive(l.max_request_headers, "maxRequestHeaders")?.unwrap_or(DEFAULT_HEADERS);
    if max_request_headers > 10_000 {
        return Err(ConfigError::new("limits.maxRequestHeaders", "must be at most 10000"));
    }
    let limits = Limits {
        max_connections: match positive(l.max_connections, "maxConnections")? {
            Some(max) => max,
            None => default_max_connections(),
        },
        max_connections_per_endpoint: positive(
            l.max_connections_per_endpoint,
            "maxConnectionsPerEndpoint",
        )?,
        max_request_header_bytes,
        max_request_headers,
    };

    let trusted = TrustedProxies::parse(trusted.unwrap_or_default()).map_err(|err| {
        ConfigError::new(format!("trustedProxies[{}]", err.index), err.to_string())
    })?;
    Ok(Edge { timeouts, limits, forwarded: ForwardedHeaders::new(trusted) })
}

/// Half of the file descriptors this process may open, after raising its soft limit to the
/// hard one (as HAProxy does), less a reserve: each client connection may need an upstream
/// connection too.
fn default_max_connections() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(yaml: &str) -> Result<Timeouts, String> {
        let config: TimeoutsConfig = serde_norway::from_str(yaml).unwrap();
        check(Some(&config), None, None, None).map(|e| e.timeouts).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_zero() {
        let t = timeouts("{}").unwrap();
        assert_eq!(t, Timeouts::default());
        let t = timeouts("{backendIdle: 0s, connect: 1s}").unwrap();
        assert_eq!((t.backend_idle, t.connect), (None, Duration::from_secs(1)));
        let e = timeouts("{requestHeader: 0s}").unwrap_err();
        assert!(e.starts_with("timeouts.requestHeader: must be greater than zero"), "{e}");
        let e = timeouts("{clientIdle: 1d}").unwrap_err();
        assert!(e.starts_with("timeouts.clientIdle: "), "{e}");
    }

    #[test]
    fn the_legacy_timeout_is_backend_response() {
        let edge = check(None, Some("5s"), None, None).unwrap();
        assert_eq!(edge.timeouts.backend_response, Some(Duration::from_secs(5)));
        let both: TimeoutsConfig = serde_norway::from_str("{backendResponse: 1s}").unwrap();
        let e = check(Some(&both), Some("5s"), None, None).unwrap_err().to_string();
        assert!(e.starts_with("timeout: "), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let limits = |yaml: &str| {
            let config: LimitsConfig = serde_norway::from_str(yaml).unwrap();
            check(None, None, Some(&config), None).map(|e| e.limits).map_err(|e| e.to_string())
        };
        let l = limits("{maxConnections: 5}").unwrap();
        assert_eq!((l.max_connections, l.max_request_headers), (5, DEFAULT_HEADERS));
        assert!(limits("{maxConnections: 0}").unwrap_err().starts_with("limits.maxConnections"));
        let e = limits("{maxRequestHeaderBytes: 10}").unwrap_err();
        assert!(e.starts_with("limits.maxRequestHeaderBytes"), "{e}");
        assert!(limits("{}").unwrap().max_connections >= 1);
        let e = check(None, None, None, Some(&["10.0.0.0/8".into(), "x".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("trustedProxies[1]: "), "{e}");
    }
}

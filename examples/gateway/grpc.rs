//! `GRPCRoute` matches: a gRPC call is an HTTP/2 POST to `/<service>/<method>`, so a method
//! match is a path match: `service` and `method` → `Exact /<service>/<method>`; `service`
//! alone → `PathPrefix /<service>`. Everything else about a `GRPCRoute` rule (backendRefs with
//! weights, `sessionPersistence` of type Header or Cookie, the extension blocks) is read as for
//! an `HTTPRoute` rule.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::routing::PathMatch;

/// A `GRPCRouteMatch`'s `method`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MethodMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

/// The path match of a `method` match at `at` (`….matches[i].method`).
pub(crate) fn path_match(method: &MethodMatch, at: &str) -> Result<PathMatch, ConfigError> {
    if let Some(kind) = method.kind.as_deref().filter(|k| *k != "Exact") {
        return Err(ConfigError::new(
            format!("{at}.type"),
            format!("{kind:?} is not supported: Exact only"),
        ));
    }
    let service_ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    let method_ok =
        |m: &str| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if let Some(service) = method.service.as_deref().filter(|s| !service_ok(s)) {
        return Err(ConfigError::new(
            format!("{at}.service"),
            format!("{service:?} is not a gRPC service name (letters, digits, '_', '.')"),
        ));
    }
    if let Some(name) = method.method.as_deref().filter(|m| !method_ok(m)) {
        return Err(ConfigError::new(
            format!("{at}.method"),
            format!("{name:?} is not a gRPC method name (letters, digits, '_')"),
        ));
    }
    match (method.service.as_deref(), method.method.as_deref()) {
        (Some(service), Some(name)) => Ok(PathMatch::Exact(format!("/{service}/{name}"))),
        (Some(service), None) => Ok(PathMatch::Prefix(format!("/{service}"))),
        (None, Some(_)) => Err(ConfigError::new(
            format!("{at}.service"),
            "is required here: a method of any service would need a regular expression",
        )),
        (None, None) => Ok(PathMatch::Prefix(String::new())),
    }
}

/// The answer to a gRPC call that no rule matches: `UNIMPLEMENTED` in gRPC's own terms (HTTP
/// 200 with `grpc-status: 12`, a trailers-only response), as gRPC clients read it; a plain
/// 404 would reach them as a protocol error. `None` for other requests.
pub(crate) fn no_route<B>(req: &http::Request<B>) -> Option<http::Response<axum::body::Body>> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return None;
    }
    let mut res = http::Response::new(axum::body::Body::empty());
    let headers = res.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", http::HeaderValue::from_static("12"));
    headers.insert("grpc-message", http::HeaderValue::from_static("no route matches this method"));
    Some(res)
}

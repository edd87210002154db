//! A rule's `filters:`: the Gateway API `RequestRedirect` filter (the way an HTTP listener sends
//! its clients to HTTPS: `scheme: https`). Other filter types are refused, naming the field.
//!
//! The `Location` follows the Gateway API: the scheme and hostname given, else the request's;
//! the port given, else the scheme's well-known port when a scheme is given, else the
//! request's; a well-known port is left out of the URL; the path and query stay as they were.

use axum::body::Body;
use http::header::LOCATION;
use http::{HeaderValue, Request, Response, StatusCode};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tower_session_persistence::edge::Proto;

use crate::config::ConfigError;
use crate::proxy::{ClientAddr, RequestHost};
use crate::routing::Hostname;

/// One entry of a rule's `filters`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FilterConfig {
    #[serde(rename = "type")]
    kind: String,
    request_redirect: Option<RedirectConfig>,
    // The other filter types, named so that the error says which is not supported.
    #[allow(dead_code)]
    request_header_modifier: Option<IgnoredAny>,
    #[allow(dead_code)]
    response_header_modifier: Option<IgnoredAny>,
    #[allow(dead_code)]
    request_mirror: Option<IgnoredAny>,
    #[allow(dead_code)]
    url_rewrite: Option<IgnoredAny>,
    #[allow(dead_code)]
    extension_ref: Option<IgnoredAny>,
    #[allow(dead_code)]
    cors: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectConfig {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<IgnoredAny>,
    port: Option<u16>,
    status_code: Option<u16>,
}

/// A checked `RequestRedirect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<String>,
    port: Option<u16>,
    status: StatusCode,
}

/// Checks a rule's `filters` (at `<rule>.filters`): the redirect, if the rule has one.
pub(crate) fn check(
    filters: Option<&[FilterConfig]>,
    at: &str,
) -> Result<Option<Redirect>, ConfigError> {
    let mut redirect = None;
    for (f, filter) in filters.into_iter().flatten().enumerate() {
        let at = format!("{at}.filters[{f}]");
        if filter.kind != "RequestRedirect" {
            return Err(ConfigError::new(
                format!("{at}.type"),
                format!("{:?} is not supported: RequestRedirect only", filter.kind),
            ));
        }
        let Some(config) = &filter.request_redirect else {
            return Err(ConfigError::new(
                format!("{at}.requestRedirect"),
                "is required with type: RequestRedirect",
            ));
        };
        if redirect.is_some() {
            return Err(ConfigError::new(at, "a rule has at most one RequestRedirect"));
        }
        if config.path.is_some() {
            return Err(ConfigError::new(
                format!("{at}.requestRedirect.path"),
                "is not supported: the path is kept as it is",
            ));
        }
        let scheme = match config.scheme.as_deref() {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{at}.requestRedirect.scheme"),
                    format!("{other:?} is not http or https"),
                ));
            }
        };
        let hostname = match config.hostname.as_deref() {
            None => None,
            Some(text) => match Hostname::parse(text) {
                Ok(Hostname::Exact(name)) => Some(name),
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.requestRedirect.hostname"),
                        format!("{text:?} is not a hostname (no wildcard)"),
                    ));
                }
            },
        };
        if config.port == Some(0) {
            return Err(ConfigError::new(
                format!("{at}.requestRedirect.port"),
                "must be 1 to 65535",
            ));
        }
        let status = match config.status_code.unwrap_or(302) {
            301 => StatusCode::MOVED_PERMANENTLY,
            302 => StatusCode::FOUND,
            other => {
                return Err(ConfigError::new(
                    format!("{at}.requestRedirect.statusCode"),
                    format!("{other} is not 301 or 302"),
                ));
            }
        };
        redirect = Some(Redirect { scheme, hostname, port: config.port, status });
    }
    Ok(redirect)
}

fn well_known(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl Redirect {
    /// The redirect for `req`.
    pub(crate) fn respond(&self, req: &Request<Body>) -> Response<Body> {
        let from = match req.extensions().get::<ClientAddr>().map(|c| c.proto) {
            Some(Proto::Https) => "https",
            _ => "http",
        };
        let host = req.extensions().get::<RequestHost>().and_then(|h| h.0.clone());
        let (request_name, request_port) = match host.as_deref() {
            Some(host) => split_host(host),
            None => (String::new(), None),
        };
        let scheme = self.scheme.unwrap_or(from);
        let name = self.hostname.clone().unwrap_or(request_name);
        let port = match (self.port, self.scheme) {
            (Some(port), _) => port,
            (None, Some(scheme)) => well_known(scheme),
            (None, None) => request_port.unwrap_or(well_known(from)),
        };
        let authority = if port == well_known(scheme) {
            name
        } else if name.contains(':') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("{scheme}://{authority}{path}");
        let mut res = Response::new(Body::empty());
        *res.status_mut() = self.status;
        if let Ok(value) = HeaderValue::from_str(&location) {
            res.headers_mut().insert(LOCATION, value);
        } else {
            *res.status_mut() = StatusCode::BAD_REQUEST;
        }
        res
    }
}

/// A `Host` value's name (IPv6 literals without brackets) and port.
fn split_host(host: &str) -> (String, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (name.to_owned(), after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name.to_owned(), port.parse().ok()),
        None => (host.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str) -> Redirect {
        let filters: Vec<FilterConfig> = serde_norway::from_str(yaml).unwrap();
        check(Some(&filters), "r").unwrap().unwrap()
    }

    fn location(redirect: &Redirect, host: &str, proto: Proto, path: &str) -> String {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(RequestHost(Some(host.to_owned())));
        req.extensions_mut().insert(ClientAddr { addr: ([127, 0, 0, 1], 1).into(), proto });
        let res = redirect.respond(&req);
        res.headers()[LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn locations_follow_the_gateway_api() {
        let https = redirect(
            "[{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]",
        );
        assert_eq!(https.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            location(&https, "shop.example:8080", Proto::Http, "/cart?x=1"),
            "https://shop.example/cart?x=1"
        );
        let port =
            redirect("[{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}]");
        assert_eq!(port.status, StatusCode::FOUND);
        assert_eq!(location(&port, "shop.example", Proto::Http, "/"), "https://shop.example:8443/");
        let host = redirect("[{type: RequestRedirect, requestRedirect: {hostname: www.example}}]");
        assert_eq!(
            location(&host, "shop.example:8080", Proto::Http, "/a"),
            "http://www.example:8080/a"
        );
    }

    #[test]
    fn what_is_not_supported_is_refused() {
        let err = |yaml: &str| {
            let filters: Vec<FilterConfig> = serde_norway::from_str(yaml).unwrap();
            check(Some(&filters), "r").unwrap_err().to_string()
        };
        assert!(err("[{type: URLRewrite, urlRewrite: {}}]").starts_with("r.filters[0].type: "));
        assert!(
            err("[{type: RequestRedirect, requestRedirect: {scheme: ftp}}]")
                .starts_with("r.filters[0].requestRedirect.scheme: ")
        );
        assert!(
            err("[{type: RequestRedirect, requestRedirect: {statusCode: 307}}]")
                .starts_with("r.filters[0].requestRedirect.statusCode: ")
        );
        assert!(err("[{type: RequestRedirect}]").starts_with("r.filters[0].requestRedirect: "));
    }
}

//! HAProxy 2.6's idea of a cacheable response, for `nocache`.

use http::header::{CACHE_CONTROL, ETAG, EXPIRES, HeaderMap, LAST_MODIFIED, PRAGMA};
use http::{Method, StatusCode};

/// Whether a shared cache could store this response, as HAProxy 2.6 judges it: a safe method,
/// a cacheable status, nothing forbidding it, and freshness or a validator present.
pub(crate) fn cacheable(method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
    let method_ok = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    let status_ok =
        matches!(status.as_u16(), 200 | 203 | 204 | 206 | 300 | 301 | 404 | 405 | 410 | 414 | 501);
    if !method_ok || !status_ok {
        return false;
    }
    let pragma_no_cache = headers
        .get_all(PRAGMA)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache")));
    if pragma_no_cache {
        return false;
    }
    let directives: Vec<(String, Option<String>)> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim().to_ascii_lowercase();
            match d.split_once('=') {
                Some((k, v)) => (k.trim().to_owned(), Some(v.trim().trim_matches('"').to_owned())),
                None => (d, None),
            }
        })
        .collect();
    let has = |name: &str| directives.iter().any(|(k, _)| k == name);
    let value =
        |name: &str| directives.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone());
    if has("private") || has("no-cache") || has("no-store") {
        return false;
    }
    if value("s-maxage").as_deref() == Some("0") {
        return false;
    }
    if value("max-age").as_deref() == Some("0") && !has("s-maxage") {
        return false;
    }
    let fresh = has("max-age") || has("s-maxage") || headers.contains_key(EXPIRES);
    let validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    fresh || validator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn follows_haproxy_2_6() {
        let ok = StatusCode::OK;
        assert!(!cacheable(&Method::GET, ok, &h(&[])), "no freshness, no validator");
        assert!(cacheable(&Method::GET, ok, &h(&[("etag", "\"v1\"")])));
        assert!(cacheable(&Method::GET, ok, &h(&[("cache-control", "max-age=60")])));
        assert!(cacheable(&Method::HEAD, ok, &h(&[("last-modified", "x")])));
        assert!(cacheable(&Method::GET, ok, &h(&[("expires", "x")])));
        assert!(!cacheable(&Method::POST, ok, &h(&[("etag", "\"v1\"")])));
        assert!(!cacheable(&Method::GET, StatusCode::CREATED, &h(&[("etag", "\"v1\"")])));
        assert!(cacheable(&Method::GET, StatusCode::NOT_FOUND, &h(&[("etag", "\"v1\"")])));
        for cc in ["private", "no-cache", "no-store", "s-maxage=0", "max-age=0", "Public, No-Cache"]
        {
            assert!(
                !cacheable(&Method::GET, ok, &h(&[("cache-control", cc), ("etag", "x")])),
                "{cc}"
            );
        }
        assert!(cacheable(&Method::GET, ok, &h(&[("cache-control", "max-age=0, s-maxage=10")])));
        assert!(!cacheable(&Method::GET, ok, &h(&[("pragma", "no-cache"), ("etag", "x")])));
    }
}

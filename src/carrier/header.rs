//! A session header (GEP-1619 `type: Header`).

use http::header::{HeaderMap, HeaderName};

/// The first value of the session header, if it is visible ASCII.
pub(crate) fn find<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// Removes the session header; returns whether it was there.
pub(crate) fn strip(headers: &mut HeaderMap, name: &HeaderName) -> bool {
    headers.remove(name).is_some()
}

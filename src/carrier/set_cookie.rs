//! The backend's `Set-Cookie` response headers: found by cookie name, rewritten by splicing the
//! value so that every attribute, unknown ones included, survives byte for byte.
//!
//! The `cookie` crate parses the leading `name=value` pair; the attributes after the first `;`
//! are never parsed, because the crate drops attributes it does not know.

use cookie::Cookie;
use http::HeaderMap;
use http::header::{HeaderValue, SET_COOKIE};

/// The name and the byte range of the value of a `Set-Cookie` header's first pair.
fn pair(header: &[u8]) -> Option<(&str, std::ops::Range<usize>)> {
    let end = header.iter().position(|&b| b == b';').unwrap_or(header.len());
    let text = std::str::from_utf8(&header[..end]).ok()?;
    let cookie = Cookie::parse(text.trim()).ok()?;
    let eq = text.find('=')?;
    let value_start = eq + 1 + (text.len() - eq - 1 - text[eq + 1..].trim_start().len());
    let value_end = value_start + text[value_start..].trim_end().len();
    // `name_raw` borrows from `text`, hence from `header`.
    Some((cookie.name_raw()?, value_start..value_end))
}

/// The value of a `Set-Cookie` header if it sets the cookie `name`.
pub(crate) fn value_of<'h>(header: &'h HeaderValue, name: &str) -> Option<&'h str> {
    let bytes = header.as_bytes();
    let (found, range) = pair(bytes)?;
    (found == name).then(|| std::str::from_utf8(&bytes[range]).ok()).flatten()
}

/// Whether the response sets the cookie `name`.
pub(crate) fn sets(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all(SET_COOKIE).iter().any(|h| value_of(h, name).is_some())
}

/// What to do with one of the backend's `Set-Cookie` headers for our cookie.
pub(crate) enum Rewrite {
    /// Drop it.
    Remove,
    /// Replace its value, keeping everything else.
    Value(String),
}

/// Applies `rewrite` to every `Set-Cookie` header that sets `name`, given its current value.
/// Other headers, and the order of all `Set-Cookie` headers, are kept. Returns whether anything
/// changed.
pub(crate) fn rewrite(
    headers: &mut HeaderMap,
    name: &str,
    mut rewrite: impl FnMut(&str) -> Rewrite,
) -> bool {
    if !sets(headers, name) {
        return false;
    }
    let mut changed = false;
    let mut kept = Vec::new();
    for header in headers.get_all(SET_COOKIE) {
        let bytes = header.as_bytes();
        let Some((_, range)) = pair(bytes).filter(|(found, _)| *found == name) else {
            kept.push(header.clone());
            continue;
        };
        let value = std::str::from_utf8(&bytes[range.clone()]).unwrap_or_default();
        match rewrite(value) {
            Rewrite::Remove => changed = true,
            Rewrite::Value(new) => {
                let mut spliced = Vec::with_capacity(bytes.len() + new.len());
                spliced.extend_from_slice(&bytes[..range.start]);
                spliced.extend_from_slice(new.as_bytes());
                spliced.extend_from_slice(&bytes[range.end..]);
                match HeaderValue::from_bytes(&spliced) {
                    Ok(value) => {
                        changed = true;
                        kept.push(value);
                    }
                    // A token is always a valid header value; keep the original otherwise.
                    Err(_) => kept.push(header.clone()),
                }
            }
        }
    }
    if changed {
        headers.remove(SET_COOKIE);
        for header in kept {
            headers.append(SET_COOKIE, header);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(SET_COOKIE, v.parse().unwrap());
        }
        map
    }

    fn all(map: &HeaderMap) -> Vec<&str> {
        map.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn splices_the_value_and_keeps_every_attribute() {
        let mut headers = map(&[
            "a=1; Path=/",
            "JSESSIONID=abc123; Path=/; HttpOnly; Priority=High; X-Unknown",
            "JSESSIONID = spaced ;Max-Age=1",
        ]);
        assert!(rewrite(&mut headers, "JSESSIONID", |v| Rewrite::Value(format!("t~{v}"))));
        assert_eq!(
            all(&headers),
            [
                "a=1; Path=/",
                "JSESSIONID=t~abc123; Path=/; HttpOnly; Priority=High; X-Unknown",
                "JSESSIONID = t~spaced ;Max-Age=1",
            ]
        );
    }

    #[test]
    fn removes_only_ours_and_keeps_order() {
        let mut headers = map(&["a=1", "SRV=app; Path=/", "b=2", "SRVX=1"]);
        assert!(rewrite(&mut headers, "SRV", |_| Rewrite::Remove));
        assert_eq!(all(&headers), ["a=1", "b=2", "SRVX=1"]);
        assert!(!rewrite(&mut headers, "SRV", |_| Rewrite::Remove));
    }

    #[test]
    fn finds_values() {
        let v: HeaderValue = "SRV=; Expires=Thu, 01 Jan 1970 00:00:00 GMT".parse().unwrap();
        assert_eq!(value_of(&v, "SRV"), Some(""));
        assert_eq!(value_of(&v, "srv"), None);
        let v: HeaderValue = "garbage".parse().unwrap();
        assert_eq!(value_of(&v, "garbage"), None);
    }
}

//! The `Cookie` request header: find our cookie, strip it, keep the rest byte-exact.
//!
//! The header is split on `;` (RFC 6265 `cookie-string`), and each pair is parsed by the
//! `cookie` crate. Every `Cookie` field is read, since HTTP/2 may split one header into many
//! (RFC 9113 §8.2.3). Non-UTF-8 pairs are never ours and are kept as they are.

use cookie::Cookie;
use http::header::{COOKIE, HeaderMap, HeaderValue};

/// Splits one `Cookie` field into its pairs, each with the whitespace that followed its `;`.
fn pairs(field: &[u8]) -> impl Iterator<Item = &[u8]> {
    field.split(|&b| b == b';')
}

/// The name and value of a pair if it parses as a cookie.
fn parse(pair: &[u8]) -> Option<Cookie<'_>> {
    Cookie::parse(std::str::from_utf8(pair).ok()?.trim()).ok()
}

/// The value of the first cookie named `name` in any `Cookie` field, without surrounding
/// double quotes.
pub(crate) fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(COOKIE).iter().flat_map(|field| pairs(field.as_bytes())).find_map(|pair| {
        let cookie = parse(pair)?;
        if cookie.name() != name {
            return None;
        }
        // `value_raw` borrows from the header itself, not from the parsed cookie.
        let value = cookie.value_raw().unwrap_or_default();
        Some(value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value))
    })
}

/// Removes every cookie named `name` from every `Cookie` field. The other pairs keep their
/// bytes and separators; a field left empty is removed. Returns whether anything was removed.
pub(crate) fn strip(headers: &mut HeaderMap, name: &str) -> bool {
    let ours = |pair: &[u8]| parse(pair).is_some_and(|c| c.name() == name);
    let found = headers.get_all(COOKIE).iter().any(|field| pairs(field.as_bytes()).any(ours));
    if !found {
        return false;
    }
    let fields: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for field in fields {
        let mut kept: Vec<u8> = Vec::with_capacity(field.len());
        for pair in pairs(field.as_bytes()).filter(|pair| !ours(pair)) {
            if kept.is_empty() {
                // The first kept pair loses the whitespace that followed a removed `;`.
                let start =
                    pair.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(pair.len());
                kept.extend_from_slice(&pair[start..]);
            } else {
                kept.push(b';');
                kept.extend_from_slice(pair);
            }
        }
        if kept.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The bytes come from a valid header value, minus whole pairs: still valid.
        if let Ok(value) = HeaderValue::from_bytes(&kept) {
            headers.append(COOKIE, value);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for field in fields {
            map.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
        }
        map
    }

    fn fields(map: &HeaderMap) -> Vec<&[u8]> {
        map.get_all(COOKIE).iter().map(HeaderValue::as_bytes).collect()
    }

    #[test]
    fn finds_the_first_occurrence_in_any_field() {
        let map = headers(&[b"a=1; b=2", b"sid=first; sid=second", b"sid=third"]);
        assert_eq!(find(&map, "sid"), Some("first"));
        assert_eq!(find(&map, "a"), Some("1"));
        assert_eq!(find(&map, "missing"), None);
        assert_eq!(find(&headers(&[b"sid=\"quoted\""]), "sid"), Some("quoted"));
        assert_eq!(find(&headers(&[b"x=\xff\xfe; sid=v"]), "sid"), Some("v"));
        assert_eq!(find(&headers(&[b"sid="]), "sid"), Some(""));
        assert_eq!(find(&headers(&[b"SID=v"]), "sid"), None, "names are case-sensitive");
    }

    #[test]
    fn strips_ours_and_keeps_the_rest_byte_exact() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"a=1; sid=x; b=2", Some(b"a=1; b=2")),
            (b"sid=x; a=1;b=2", Some(b"a=1;b=2")),
            (b"a=1;b=\"q v\";  sid=x", Some(b"a=1;b=\"q v\"")),
            (b"a=1; sid=x; sid=y; c", Some(b"a=1; c")),
            (b"x=\xff; sid=x", Some(b"x=\xff")),
            (b"sid=x", None),
            (b"sid=x; sid=y", None),
        ];
        for (input, expected) in cases {
            let mut map = headers(&[input]);
            assert!(strip(&mut map, "sid"));
            let got = fields(&map);
            assert_eq!(got.first().copied(), *expected, "{}", String::from_utf8_lossy(input));
            assert!(got.len() <= 1);
        }
    }

    #[test]
    fn strips_across_split_fields_and_leaves_unrelated_headers_alone() {
        let mut map = headers(&[b"a=1", b"sid=x", b"b=2; sid=y"]);
        assert!(strip(&mut map, "sid"));
        assert_eq!(fields(&map), vec![&b"a=1"[..], b"b=2"]);

        let mut map = headers(&[b"a=1;  b=2"]);
        assert!(!strip(&mut map, "sid"));
        assert_eq!(fields(&map), vec![&b"a=1;  b=2"[..]]);
    }
}

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
pub fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
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

/// What to do with one of our cookie pairs in the request.
pub(crate) enum Edit {
    /// Leave the pair as it is.
    Keep,
    /// Remove the pair.
    Remove,
    /// Give the pair this value.
    Value(String),
}

/// Applies `edit` to the value of every cookie named `name` in every `Cookie` field. Other
/// pairs keep their bytes and separators; a field left empty is removed. Returns whether
/// anything changed.
pub(crate) fn edit(
    headers: &mut HeaderMap,
    name: &str,
    mut edit: impl FnMut(&str) -> Edit,
) -> bool {
    let mut changed = false;
    let mut fields: Vec<HeaderValue> = Vec::new();
    for field in headers.get_all(COOKIE) {
        let mut kept: Vec<u8> = Vec::with_capacity(field.len());
        let mut field_changed = false;
        for pair in pairs(field.as_bytes()) {
            let replacement = match parse(pair) {
                Some(cookie) if cookie.name() == name => {
                    match edit(cookie.value_raw().unwrap_or_default()) {
                        Edit::Keep => None,
                        Edit::Remove => Some(None),
                        Edit::Value(value) => Some(Some(format!("{name}={value}"))),
                    }
                }
                _ => None,
            };
            let bytes: &[u8] = match &replacement {
                None => pair,
                Some(None) => {
                    field_changed = true;
                    continue;
                }
                Some(Some(new)) => {
                    field_changed = true;
                    new.as_bytes()
                }
            };
            if kept.is_empty() {
                // The first kept pair loses the whitespace that followed a removed `;`.
                let start =
                    bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
                kept.extend_from_slice(&bytes[start..]);
            } else {
                kept.push(b';');
                if replacement.is_some() {
                    // A rewritten pair keeps the whitespace that preceded it.
                    let ws = pair.iter().take_while(|b| b.is_ascii_whitespace()).count();
                    kept.extend_from_slice(&pair[..ws]);
                }
                kept.extend_from_slice(bytes);
            }
        }
        changed |= field_changed;
        if !field_changed {
            fields.push(field.clone());
        } else if !kept.iter().all(u8::is_ascii_whitespace) {
            // The bytes come from a valid header value or from a token: still valid.
            if let Ok(value) = HeaderValue::from_bytes(&kept) {
                fields.push(value);
            }
        }
    }
    if changed {
        headers.remove(COOKIE);
        for field in fields {
            headers.append(COOKIE, field);
        }
    }
    changed
}

/// Removes every cookie named `name` from every `Cookie` field; see `edit`.
pub fn strip(headers: &mut HeaderMap, name: &str) -> bool {
    edit(headers, name, |_| Edit::Remove)
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
    fn rewrites_values_in_place() {
        let mut map = headers(&[b"a=1;  sid=x~app; b=2", b"sid=y~other"]);
        assert!(edit(&mut map, "sid", |v| match v.split_once('~') {
            Some((_, rest)) => Edit::Value(rest.to_owned()),
            None => Edit::Keep,
        }));
        assert_eq!(fields(&map), vec![&b"a=1;  sid=app; b=2"[..], b"sid=other"]);
        let mut map = headers(&[b"a=1; sid=plain"]);
        assert!(!edit(&mut map, "sid", |_| Edit::Keep));
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

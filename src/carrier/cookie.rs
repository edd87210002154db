//! The `Cookie` request header: find our cookie, strip it, keep the rest byte-exact.
//!
//! The header is split on `;` (RFC 6265 `cookie-string`), and each pair that may be ours is
//! parsed by the `cookie` crate. Every `Cookie` field is read, since HTTP/2 may split one header
//! into many (RFC 9113 §8.2.3). Non-UTF-8 pairs are never ours and are kept as they are.
//!
//! This runs on every request, so the crate (which keeps the grammar) only sees the pairs that
//! a byte test cannot rule out: a field that does not contain the name at all is skipped with a
//! substring search, and a pair whose name (before `=`, trimmed) differs is skipped without
//! parsing. A test holds these fast paths to the crate's answer on arbitrary input.

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

/// The ASCII characters that `str::trim` removes (`char::is_whitespace`; unlike
/// `u8::is_ascii_whitespace`, this includes the vertical tab).
fn is_trimmed(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Whether `pair` may be a cookie named `name`: a cheap byte test that lets through every
/// pair the `cookie` crate would parse with that name, and hardly any other. Its name is
/// what precedes the first `=`, trimmed; names with non-ASCII bytes (which `str::trim` may
/// shorten by Unicode whitespace) are left to the crate.
fn candidate(pair: &[u8], name: &str) -> bool {
    let Some(eq) = pair.iter().position(|&b| b == b'=') else { return false };
    let key = &pair[..eq];
    if !key.is_ascii() {
        return true;
    }
    let start = key.iter().position(|&b| !is_trimmed(b)).unwrap_or(key.len());
    let end = key.iter().rposition(|&b| !is_trimmed(b)).map_or(start, |i| i + 1);
    key[start..end] == *name.as_bytes()
}

/// The pair parsed as a cookie, if it is one named `name`. The byte test comes first, so the
/// `cookie` crate (which keeps the grammar) sees only the pairs that may be ours.
fn ours<'p>(pair: &'p [u8], name: &str) -> Option<Cookie<'p>> {
    if !candidate(pair, name) {
        return None;
    }
    parse(pair).filter(|cookie| cookie.name() == name)
}

/// Whether `field` may hold a cookie named `name`: every such cookie's name is in it, byte for
/// byte (the crate only trims around it). Searched with `str::contains`, much faster than
/// splitting the field; a field that is not UTF-8 is always searched pair by pair.
fn mentions(field: &HeaderValue, name: &str) -> bool {
    std::str::from_utf8(field.as_bytes()).map_or(true, |text| text.contains(name))
}

/// The value of the first cookie named `name` in any `Cookie` field, without surrounding
/// double quotes.
pub(crate) fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter(|field| mentions(field, name))
        .flat_map(|field| pairs(field.as_bytes()))
        .find_map(|pair| {
            let cookie = ours(pair, name)?;
            // `value_raw` borrows from the header itself, not from the parsed cookie.
            Some(unquote(cookie.value_raw().unwrap_or_default()))
        })
}

/// A cookie value without its surrounding double quotes, if it has both.
pub(crate) fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

/// Finds the first cookie named `name` (as [`find`]) and removes every cookie of that name
/// (as [`strip`]), in one pass over the header.
pub(crate) fn take(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mut first = None;
    edit(headers, name, |value| {
        if first.is_none() {
            first = Some(unquote(value).to_owned());
        }
        Edit::Remove
    });
    first
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
    // Most requests carry no cookie of ours: they are left without allocating anything.
    // The fields are copied (to be put back) only once one of them changes.
    let mut fields: Option<Vec<HeaderValue>> = None;
    for (index, field) in headers.get_all(COOKIE).iter().enumerate() {
        let edited = if mentions(field, name) { edit_field(field, name, &mut edit) } else { None };
        let Some(edited) = edited else {
            if let Some(fields) = &mut fields {
                fields.push(field.clone());
            }
            continue;
        };
        let fields = fields
            .get_or_insert_with(|| headers.get_all(COOKIE).iter().take(index).cloned().collect());
        fields.extend(edited);
    }
    let Some(mut fields) = fields else { return false };
    if fields.len() <= 1 {
        // One field, the usual case: replaced in place, or removed.
        match fields.pop() {
            Some(field) => headers.insert(COOKIE, field),
            None => headers.remove(COOKIE),
        };
        return true;
    }
    headers.remove(COOKIE);
    for field in fields {
        headers.append(COOKIE, field);
    }
    true
}

/// Applies `edit` to our pairs in one `Cookie` field: `None` when nothing changed, else the
/// new field (`Some(None)` when nothing is left of it).
fn edit_field(
    field: &HeaderValue,
    name: &str,
    edit: &mut impl FnMut(&str) -> Edit,
) -> Option<Option<HeaderValue>> {
    let mut kept: Vec<u8> = Vec::with_capacity(field.len());
    let mut field_changed = false;
    for pair in pairs(field.as_bytes()) {
        let replacement = match ours(pair, name) {
            Some(cookie) => match edit(cookie.value_raw().unwrap_or_default()) {
                Edit::Keep => None,
                Edit::Remove => Some(None),
                Edit::Value(value) => Some(Some(format!("{name}={value}"))),
            },
            None => None,
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
            let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
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
    if !field_changed {
        return None;
    }
    if kept.iter().all(u8::is_ascii_whitespace) {
        return Some(None);
    }
    // The bytes come from a valid header value or from a token: still valid.
    Some(HeaderValue::from_bytes(&kept).ok())
}

/// Removes every cookie named `name` from every `Cookie` field; see `edit`.
#[cfg(test)]
pub(crate) fn strip(headers: &mut HeaderMap, name: &str) -> bool {
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

    /// The implementation before the byte pre-check: every pair parsed by the `cookie` crate,
    /// `find` and `strip` in two passes. The fast paths must agree with it on any input.
    mod reference {
        use super::super::{Edit, pairs, parse};
        use http::header::{COOKIE, HeaderMap, HeaderValue};

        pub(super) fn find<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
            headers.get_all(COOKIE).iter().flat_map(|f| pairs(f.as_bytes())).find_map(|pair| {
                let cookie = parse(pair)?;
                if cookie.name() != name {
                    return None;
                }
                let value = cookie.value_raw().unwrap_or_default();
                Some(value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value))
            })
        }

        pub(super) fn edit(
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
                        let start = bytes
                            .iter()
                            .position(|b| !b.is_ascii_whitespace())
                            .unwrap_or(bytes.len());
                        kept.extend_from_slice(&bytes[start..]);
                    } else {
                        kept.push(b';');
                        if replacement.is_some() {
                            let ws = pair.iter().take_while(|b| b.is_ascii_whitespace()).count();
                            kept.extend_from_slice(&pair[..ws]);
                        }
                        kept.extend_from_slice(bytes);
                    }
                }
                changed |= field_changed;
                if !field_changed {
                    fields.push(field.clone());
                } else if !kept.iter().all(u8::is_ascii_whitespace)
                    && let Ok(value) = HeaderValue::from_bytes(&kept)
                {
                    fields.push(value);
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
    }

    /// Bytes that make cookie headers interesting: separators, quotes, ASCII and Unicode
    /// whitespace (no-break space, ideographic space, next line), invalid UTF-8, and the
    /// letters of the names looked for.
    const PIECES: &[&[u8]] = &[
        b"s",
        b"i",
        b"d",
        b"a",
        b"=",
        b";",
        b"; ",
        b" ",
        b"\t",
        b"\"",
        b"~",
        b"sid",
        b"sid=",
        b"\xc2\xa0",
        b"\xe3\x80\x80",
        b"\xc2\x85",
        b"\xff",
        b"\xe2\x80",
        b"x",
    ];

    fn field() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        proptest::collection::vec(proptest::sample::select(PIECES), 0..24)
            .prop_map(|pieces| pieces.concat())
            .prop_filter("a header value", |bytes| HeaderValue::from_bytes(bytes).is_ok())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn fast_paths_agree_with_the_cookie_crate_on_every_pair(
            fields in proptest::collection::vec(field(), 0..4),
            name in proptest::sample::select(&["sid", "s", "a", "", "sid\u{a0}"][..]),
        ) {
            let map = headers(&fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
            proptest::prop_assert_eq!(find(&map, name), reference::find(&map, name));

            let (mut fast, mut slow) = (map.clone(), map.clone());
            let (mut seen_fast, mut seen_slow) = (Vec::new(), Vec::new());
            let rewrite = |seen: &mut Vec<String>, v: &str| {
                seen.push(v.to_owned());
                match v.split_once('~') {
                    Some((_, rest)) => Edit::Value(rest.to_owned()),
                    None if v.len().is_multiple_of(2) => Edit::Remove,
                    None => Edit::Keep,
                }
            };
            let changed_fast = edit(&mut fast, name, |v| rewrite(&mut seen_fast, v));
            let changed_slow = reference::edit(&mut slow, name, |v| rewrite(&mut seen_slow, v));
            proptest::prop_assert_eq!(changed_fast, changed_slow);
            proptest::prop_assert_eq!(seen_fast, seen_slow);
            proptest::prop_assert_eq!(fields_of(&fast), fields_of(&slow));

            let (mut taken, mut stripped) = (map.clone(), map.clone());
            let first = reference::find(&map, name).map(str::to_owned);
            reference::edit(&mut stripped, name, |_| Edit::Remove);
            proptest::prop_assert_eq!(take(&mut taken, name), first);
            proptest::prop_assert_eq!(fields_of(&taken), fields_of(&stripped));
        }
    }

    fn fields_of(map: &HeaderMap) -> Vec<Vec<u8>> {
        map.get_all(COOKIE).iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    #[test]
    fn unicode_whitespace_around_a_name_is_still_left_to_the_crate() {
        // `str::trim` removes a no-break space, so the crate reads this pair as `sid`.
        let map = headers(&[b"a=1;\xc2\xa0sid=v"]);
        assert_eq!(find(&map, "sid"), reference::find(&map, "sid"));
        assert_eq!(find(&map, "sid"), Some("v"));
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

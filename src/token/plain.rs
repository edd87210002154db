//! The plain codec: HAProxy's `cookie` values, byte for byte, for migrating from HAProxy.

use super::{Binding, Claims, Codec};

/// Which HAProxy dates a plain token carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dates {
    /// `id` alone (HAProxy without `maxidle`/`maxlife`).
    #[default]
    None,
    /// `id|last` (HAProxy `maxidle` alone).
    Last,
    /// `id|last|first` (HAProxy `maxlife`, with or without `maxidle`).
    LastAndFirst,
}

/// Plain tokens, byte-compatible with HAProxy's `cookie` keyword: the endpoint's id as it is,
/// optionally followed by HAProxy's `maxidle`/`maxlife` dates (`id|last|first`, each date five
/// base64 characters of the time in 4-second units).
///
/// For migration and debugging only: a plain token shows the endpoint's id and anyone can forge
/// one; it is bound to nothing. Existing HAProxy clients keep their sessions when the endpoint
/// keys are the old `server … cookie <id>` values. As HAProxy does, a value without dates is
/// accepted, a date that does not decode counts as absent, and an empty id is never valid.
///
/// ```
/// use tower_session_persistence::token::{Binding, Claims, Codec, Dates, PlainCodec};
///
/// let codec = PlainCodec::new(Dates::LastAndFirst);
/// let b = Binding { name: "SRV", scope: "" };
/// let claims = Claims { endpoint: b"s1".to_vec(), issued: Some(1795755920), refreshed: Some(1795755920) };
/// assert_eq!(codec.encode(&claims, b).as_deref(), Some("s1|awkPk|awkPk"));
/// assert_eq!(codec.decode("s2", b).unwrap().endpoint, b"s2");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlainCodec {
    dates: Dates,
}

impl PlainCodec {
    /// A plain codec writing `dates`.
    pub fn new(dates: Dates) -> Self {
        Self { dates }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The longest plain token [`PlainCodec::decode`] reads, as for the keyed codecs: longer ones
/// are refused before any other work.
const MAX_TOKEN_LEN: usize = 1024;

/// The largest date a plain token can carry: 30 bits of 4-second units (early 2106).
const MAX_UNITS: u64 = (1 << 30) - 1;

/// HAProxy's `s30tob64((seconds + 3) >> 2)`: 30 bits, most significant 6 first. Dates beyond
/// what 30 bits hold are written as the largest one, never wrapped round to a date in the past.
pub(crate) fn encode_date(seconds: u64) -> [u8; 5] {
    let units = (seconds.saturating_add(3) >> 2).min(MAX_UNITS);
    let mut out = [0u8; 5];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = ALPHABET[((units >> (24 - 6 * i)) & 0x3f) as usize];
    }
    out
}

/// HAProxy's `b64tos30(…) << 2`; `None` for anything but five alphabet characters.
pub(crate) fn decode_date(text: &[u8]) -> Option<u64> {
    if text.len() < 5 {
        return None;
    }
    let mut units = 0u64;
    for &c in &text[..5] {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u64;
        units = (units << 6) | digit;
    }
    Some(units << 2)
}

/// HAProxy splits the id from the dates at the first `|`; ids are otherwise opaque cookie
/// octets.
fn valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'|' | b';' | b',' | b'"' | b'\\'))
}

impl Codec for PlainCodec {
    fn encode(&self, claims: &Claims, _binding: Binding<'_>) -> Option<String> {
        if !valid_id(&claims.endpoint) {
            return None;
        }
        let mut out = String::from_utf8(claims.endpoint.clone()).ok()?;
        let date =
            |t: Option<u64>| String::from_utf8_lossy(&encode_date(t.unwrap_or(0))).into_owned();
        if self.dates != Dates::None {
            out.push('|');
            out.push_str(&date(claims.refreshed));
        }
        if self.dates == Dates::LastAndFirst {
            out.push('|');
            out.push_str(&date(claims.issued));
        }
        Some(out)
    }

    fn decode(&self, token: &str, _binding: Binding<'_>) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = token.as_bytes().splitn(3, |&b| b == b'|');
        let id = parts.next()?;
        if id.is_empty() {
            return None;
        }
        let refreshed = parts.next().and_then(decode_date);
        let issued = parts.next().and_then(decode_date);
        Some(Claims { endpoint: id.to_vec(), issued, refreshed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binding<'static> = Binding { name: "SRV", scope: "" };

    #[test]
    fn dates_match_haproxy_vectors() {
        // reference/haproxy: now = 1795755920 encodes as awkPk; awkPz was issued at 1795755979.
        assert_eq!(&encode_date(1795755920), b"awkPk");
        assert_eq!(decode_date(b"awkPk"), Some(1795755920));
        assert_eq!(&encode_date(1795755921), b"awkPl", "rounded up to 4 s");
        assert_eq!(&encode_date(1795755979), b"awkPz");
        assert_eq!(decode_date(b"!!!!!"), None);
        assert_eq!(decode_date(b"awk"), None);
        // The far future saturates instead of wrapping round (or overflowing).
        let last = encode_date(u64::MAX);
        assert_eq!(&last, b"/////");
        assert_eq!(encode_date(MAX_UNITS << 2), last);
        assert_eq!(decode_date(&last), Some(MAX_UNITS << 2));
        assert!(decode_date(&encode_date(1 << 40)) > decode_date(b"awkPk"));
    }

    #[test]
    fn long_tokens_are_refused() {
        let c = PlainCodec::default();
        let id = "s".repeat(MAX_TOKEN_LEN);
        assert_eq!(c.decode(&id, B).unwrap().endpoint.len(), MAX_TOKEN_LEN);
        assert_eq!(c.decode(&format!("{id}s"), B), None);
    }

    #[test]
    fn values_match_haproxy() {
        let at = |t| Claims { endpoint: b"s2".to_vec(), issued: Some(t), refreshed: Some(t) };
        assert_eq!(PlainCodec::new(Dates::None).encode(&at(0), B).as_deref(), Some("s2"));
        assert_eq!(
            PlainCodec::new(Dates::Last).encode(&at(1795755920), B).as_deref(),
            Some("s2|awkPk")
        );
        let c = PlainCodec::new(Dates::LastAndFirst);
        let decoded = c.decode("s2|awkNO|awkBg", B).unwrap();
        assert_eq!(decoded.endpoint, b"s2");
        assert_eq!(decoded.refreshed, decode_date(b"awkNO"));
        assert_eq!(decoded.issued, decode_date(b"awkBg"));
        // Dateless and bad dates are accepted without dates; empty ids never are.
        for v in ["s2", "s2|junk", "s2|!!!!!|!!!!!"] {
            let d = c.decode(v, B).unwrap();
            assert_eq!(
                (d.endpoint.as_slice(), d.issued, d.refreshed),
                (&b"s2"[..], None, None),
                "{v}"
            );
        }
        assert_eq!(c.decode("", B), None);
        assert_eq!(c.decode("|awkPk", B), None);
        // An endpoint without a usable id cannot be written: the layer sends a deletion.
        let bad = Claims { endpoint: Vec::new(), issued: None, refreshed: None };
        assert_eq!(c.encode(&bad, B), None);
        let bad = Claims { endpoint: b"a|b".to_vec(), issued: None, refreshed: None };
        assert_eq!(c.encode(&bad, B), None);
    }
}

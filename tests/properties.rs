//! Property tests (proptest): codec round-trips, tamper rejection, what a sealed token hides,
//! and that stripping our cookie never changes another cookie's bytes.

// Without its features this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(all(feature = "signed", feature = "sealed")))]
compile_error!(
    "tests/properties.rs needs the features signed, sealed (on by default): run it with default features"
);

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response};
use proptest::prelude::*;
use tower::{ServiceExt as _, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::{
    Binding, Claims, Codec, Dates, PlainCodec, SealedCodec, SignedCodec,
};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const KEY: [u8; 32] = [0x5a; 32];
const OLD_KEY: [u8; 32] = [0xa5; 32];

fn signed() -> SignedCodec {
    SignedCodec::new([KEY, OLD_KEY]).unwrap()
}

fn sealed() -> SealedCodec {
    SealedCodec::new([KEY, OLD_KEY]).unwrap()
}

/// Both keyed codecs, by name.
fn keyed() -> [(&'static str, Box<dyn Codec>); 2] {
    [("signed", Box::new(signed())), ("sealed", Box::new(sealed()))]
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// RFC 6265 cookie names (RFC 7230 tokens).
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}"
}

/// Scopes are free text.
fn scope() -> impl Strategy<Value = String> {
    ".{0,40}"
}

/// Claims as the keyed codecs write them: 32-bit times, endpoint keys up to 512 bytes.
fn claims() -> impl Strategy<Value = Claims> {
    (prop::collection::vec(any::<u8>(), 0..=512), 0..=u64::from(u32::MAX), 0..=u64::from(u32::MAX))
        .prop_map(|(endpoint, issued, refreshed)| Claims {
            endpoint,
            issued: Some(issued),
            refreshed: Some(refreshed),
        })
}

/// Characters a client might put into a token: the base64url alphabet and some that are not.
fn token_char() -> impl Strategy<Value = char> {
    prop::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.~%!* \""
            .chars()
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn keyed_codecs_round_trip(claims in claims(), name in name(), scope in scope()) {
        let b = Binding { name: &name, scope: &scope };
        for (what, codec) in keyed() {
            let token = codec.encode(&claims, b).expect("endpoint keys up to 512 bytes fit");
            prop_assert!(token.len() <= 1024, "{what}");
            // A cookie-octet string and a header value, without padding.
            prop_assert!(
                token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{what}: {token}"
            );
            prop_assert_eq!(codec.decode(&token, b), Some(claims.clone()), "{}", what);
        }
    }

    #[test]
    fn keyed_codecs_never_write_what_they_would_refuse(len in 0usize..2000) {
        let claims = Claims { endpoint: vec![7; len], issued: Some(1), refreshed: Some(2) };
        let b = Binding { name: "s", scope: "r" };
        for (what, codec) in keyed() {
            if let Some(token) = codec.encode(&claims, b) {
                prop_assert_eq!(codec.decode(&token, b), Some(claims.clone()), "{}", what);
            } else {
                prop_assert!(len > longest_endpoint(what), "{what}: {len}");
            }
        }
    }

    #[test]
    fn plain_codec_round_trips_haproxy_values(
        id in "[!#$%&'()*+./0-9:<=>?@A-Z\\[\\]^_`a-z{}~-]{1,64}",
        issued in 0u64..(1 << 32) - 4,
        refreshed in 0u64..(1 << 32) - 4,
    ) {
        let claims = Claims { endpoint: id.clone().into_bytes(), issued: Some(issued), refreshed: Some(refreshed) };
        let b = Binding { name: "SRV", scope: "" };
        // HAProxy dates count 4-second units, rounded up.
        let date = |t: u64| Some(t.div_ceil(4) * 4);
        let expected = [
            (Dates::None, None, None),
            (Dates::Last, None, date(refreshed)),
            (Dates::LastAndFirst, date(issued), date(refreshed)),
        ];
        for (dates, issued, refreshed) in expected {
            let codec = PlainCodec::new(dates);
            let token = codec.encode(&claims, b).unwrap();
            prop_assert!(token.starts_with(&id));
            let decoded = codec.decode(&token, b).unwrap();
            prop_assert_eq!(decoded, Claims { endpoint: id.clone().into_bytes(), issued, refreshed });
        }
    }

    #[test]
    fn any_single_character_change_is_rejected(
        claims in claims(),
        at in any::<prop::sample::Index>(),
        replacement in token_char(),
    ) {
        let b = Binding { name: "sid", scope: "default/shop/0" };
        for (what, codec) in keyed() {
            let token = codec.encode(&claims, b).unwrap();
            let i = at.index(token.len());
            prop_assume!(token.as_bytes()[i] != replacement as u8);
            let mut changed = token.clone().into_bytes();
            changed[i] = replacement as u8;
            let changed = String::from_utf8(changed).unwrap();
            prop_assert_eq!(codec.decode(&changed, b), None, "{}: {}", what, changed);
        }
    }

    #[test]
    fn any_bit_flip_of_the_raw_token_is_rejected(
        claims in claims(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let b = Binding { name: "sid", scope: "default/shop/0" };
        for (what, codec) in keyed() {
            let mut raw = URL_SAFE_NO_PAD.decode(codec.encode(&claims, b).unwrap()).unwrap();
            let i = at.index(raw.len());
            raw[i] ^= 1 << bit;
            prop_assert_eq!(codec.decode(&URL_SAFE_NO_PAD.encode(&raw), b), None, "{}", what);
        }
    }

    #[test]
    fn any_truncation_extension_or_insertion_is_rejected(
        claims in claims(),
        at in any::<prop::sample::Index>(),
        extra in prop::collection::vec(token_char(), 1..8),
    ) {
        let b = Binding { name: "sid", scope: "default/shop/0" };
        let extra: String = extra.into_iter().collect();
        for (what, codec) in keyed() {
            let token = codec.encode(&claims, b).unwrap();
            let i = at.index(token.len());
            prop_assert_eq!(codec.decode(&token[..i], b), None, "{} truncated", what);
            prop_assert_eq!(codec.decode(&format!("{token}{extra}"), b), None, "{} extended", what);
            let inserted = format!("{}{extra}{}", &token[..i], &token[i..]);
            prop_assert_eq!(codec.decode(&inserted, b), None, "{} inserted", what);
        }
    }

    #[test]
    fn tokens_are_bound_to_their_name_and_scope(
        claims in claims(),
        (n1, n2) in (name(), name()),
        (s1, s2) in (scope(), scope()),
    ) {
        prop_assume!((&n1, &s1) != (&n2, &s2));
        for (what, codec) in keyed() {
            let token = codec.encode(&claims, Binding { name: &n1, scope: &s1 }).unwrap();
            prop_assert_eq!(codec.decode(&token, Binding { name: &n2, scope: &s2 }), None, "{}", what);
        }
    }

    #[test]
    fn rotation_old_keys_open_new_keys_write(claims in claims()) {
        let b = Binding { name: "sid", scope: "r" };
        let before = [
            ("signed", Box::new(SignedCodec::new([OLD_KEY]).unwrap()) as Box<dyn Codec>),
            ("sealed", Box::new(SealedCodec::new([OLD_KEY]).unwrap())),
        ];
        for ((what, old), (_, rotated)) in before.iter().zip(keyed()) {
            let token = old.encode(&claims, b).unwrap();
            prop_assert_eq!(rotated.decode(&token, b), Some(claims.clone()), "{} accepts old", what);
            let token = rotated.encode(&claims, b).unwrap();
            prop_assert_eq!(old.decode(&token, b), None, "{} writes with the new key", what);
        }
    }

    #[test]
    fn sealed_tokens_hide_the_endpoint_and_are_never_repeated(
        endpoint in prop::collection::vec(any::<u8>(), 8..=64),
        other in prop::collection::vec(any::<u8>(), 0..=22),
        time in 0..=u64::from(u32::MAX),
    ) {
        let codec = sealed();
        let b = Binding { name: "sid", scope: "r" };
        let claims = Claims { endpoint: endpoint.clone(), issued: Some(time), refreshed: Some(time) };
        let one = codec.encode(&claims, b).unwrap();
        let two = codec.encode(&claims, b).unwrap();
        prop_assert_ne!(&one, &two, "two clients on one endpoint cannot tell");
        for token in [&one, &two] {
            let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
            prop_assert!(!raw.windows(endpoint.len()).any(|w| w == endpoint.as_slice()));
            prop_assert!(!raw.windows(4).skip(2 + 24).any(|w| w == (time as u32).to_be_bytes()) || time == 0);
        }
        // Endpoint keys of up to 22 bytes all give tokens of one length.
        let short = |e: Vec<u8>| codec.encode(&Claims { endpoint: e, ..claims.clone() }, b).unwrap().len();
        prop_assert_eq!(short(other), short(Vec::new()));
    }
}

/// A token's length in characters for an endpoint key of `len` bytes, from each codec's
/// documented format: unpadded base64url of the raw bytes.
fn token_len(codec: &str, len: usize) -> usize {
    let raw = match codec {
        // version (1) ‖ issued (4) ‖ refreshed (4) ‖ tag (16) ‖ encrypted key (len)
        "signed" => 1 + 4 + 4 + 16 + len,
        // version (1) ‖ key id (1) ‖ nonce (24) ‖ ciphertext ‖ tag (16), the plaintext being
        // issued (4) ‖ refreshed (4) ‖ key length (2) ‖ key (len), zero-padded to 32 bytes
        "sealed" => 1 + 1 + 24 + (4 + 4 + 2 + len).next_multiple_of(32) + 16,
        other => unreachable!("{other}"),
    };
    // Every 3 bytes make 4 characters; 1 or 2 bytes left over make 2 or 3.
    raw / 3 * 4 + [0, 2, 3][raw % 3]
}

/// The longest endpoint key whose token fits in 1024 characters: the last length for which
/// the formula above stays within the limit.
fn longest_endpoint(codec: &str) -> usize {
    (0..).take_while(|&len| token_len(codec, len) <= 1024).last().unwrap()
}

#[test]
fn the_length_limits_are_exactly_those_of_the_formats() {
    // Worked out by hand from the formats: signed, 25 + 743 = 768 bytes = 1024 characters;
    // sealed, 26 + 704 + 16 = 746 bytes = 995 characters, and one more byte of key would
    // need a 736-byte plaintext, 778 bytes, 1038 characters.
    assert_eq!((token_len("signed", 743), token_len("signed", 744)), (1024, 1026));
    assert_eq!((token_len("sealed", 694), token_len("sealed", 695)), (995, 1038));
    assert_eq!(longest_endpoint("signed"), 743);
    assert_eq!(longest_endpoint("sealed"), 694);
    // Every length up to well past the limit: written exactly when the token fits, with the
    // length the format gives, and read back.
    let b = Binding { name: "s", scope: "r" };
    for (what, codec) in keyed() {
        for len in 0..=1100 {
            let claims = Claims { endpoint: vec![7; len], issued: Some(1), refreshed: Some(2) };
            match codec.encode(&claims, b) {
                Some(token) => {
                    assert!(len <= longest_endpoint(what), "{what}: {len} bytes written");
                    assert_eq!(token.len(), token_len(what, len), "{what}: {len} bytes");
                    assert!(codec.decode(&token, b) == Some(claims), "{what}: {len} bytes");
                }
                None => assert!(len > longest_endpoint(what), "{what}: {len} bytes refused"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cookie stripping through the layer.

/// A stand-in balancer that reports the `Cookie` fields it got.
fn backend(
    mut req: Request<()>,
) -> std::future::Ready<Result<Response<Vec<HeaderValue>>, Infallible>> {
    let key =
        PinnedEndpoint::<String>::take(req.extensions_mut()).map_or("pod-a".to_owned(), |p| p.0);
    let mut res = Response::new(req.headers().get_all("cookie").iter().cloned().collect());
    ServedBy(key).insert(res.extensions_mut());
    std::future::ready(Ok(res))
}

fn layer() -> SessionPersistenceLayer<String> {
    SessionPersistenceLayer::new(SessionPolicy::cookie("sid").build().unwrap(), signed())
        .scope("default/shop/0")
}

fn call(fields: &[HeaderValue]) -> Response<Vec<HeaderValue>> {
    let mut req = Request::new(());
    for field in fields {
        req.headers_mut().append("cookie", field.clone());
    }
    let svc = tower::Layer::layer(&layer(), service_fn(backend));
    svc.oneshot(req).now_or_never().expect("immediately ready").unwrap()
}

/// The non-empty pairs of some `Cookie` fields, without the whitespace around them.
fn pairs(fields: &[HeaderValue]) -> Vec<Vec<u8>> {
    fields
        .iter()
        .flat_map(|f| f.as_bytes().split(|&b| b == b';'))
        .map(|p| p.trim_ascii().to_vec())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Another application's cookie: a name other than ours, a cookie-octet value, maybe quoted,
/// or something that is not a pair at all.
fn other_pair() -> impl Strategy<Value = String> {
    let value = "[!#-+./0-9:<-\\[\\]-~-]{0,12}";
    prop_oneof![
        4 => (name(), value).prop_map(|(n, v)| format!("{n}={v}")),
        1 => (name(), value).prop_map(|(n, v)| format!("{n}=\"{v}\"")),
        1 => name(),
        1 => value.prop_map(|v| format!("={v}")),
    ]
    .prop_filter("not ours", |p| {
        cookie::Cookie::parse(p.as_str()).map_or(true, |c| c.name() != "sid")
    })
}

fn ours() -> impl Strategy<Value = String> {
    let token = signed()
        .encode(
            &Claims { endpoint: b"pod-b".to_vec(), issued: Some(now()), refreshed: Some(now()) },
            Binding { name: "sid", scope: "default/shop/0" },
        )
        .unwrap();
    prop_oneof![
        Just(format!("sid={token}")),
        Just(format!("sid=\"{token}\"")),
        "[A-Za-z0-9_-]{0,30}".prop_map(|v| format!("sid={v}")),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "  ", "\t", " \t"])
}

/// A `Cookie` header as a list of fields: other cookies with our cookie mixed in `n` times,
/// arbitrary whitespace around the separators, cut into one to three fields.
fn cookie_fields() -> impl Strategy<Value = (Vec<String>, usize, Vec<HeaderValue>)> {
    (
        prop::collection::vec((other_pair(), ws(), ws()), 0..12),
        prop::collection::vec((ours(), any::<prop::sample::Index>()), 0..3),
        prop::collection::vec(any::<prop::sample::Index>(), 0..2),
    )
        .prop_map(|(others, inserted, cuts)| {
            let mut items: Vec<(String, &str, &str)> = others.clone();
            for (pair, at) in &inserted {
                let i = at.index(items.len() + 1);
                items.insert(i, (pair.clone(), " ", ""));
            }
            let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(items.len() + 1)).collect();
            cut_at.sort_unstable();
            let mut fields = Vec::new();
            let mut start = 0;
            for end in cut_at.into_iter().chain([items.len()]) {
                if end <= start {
                    continue;
                }
                let text: Vec<String> = items[start..end]
                    .iter()
                    .map(|(pair, before, after)| format!("{before}{pair}{after}"))
                    .collect();
                let text = text.join(";");
                if !text.trim().is_empty() {
                    fields.push(HeaderValue::from_str(text.trim()).unwrap());
                }
                start = end;
            }
            let others = others.into_iter().map(|(pair, _, _)| pair).collect();
            (others, inserted.len(), fields)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stripping_ours_never_changes_another_cookie((others, ours, fields) in cookie_fields()) {
        let res = call(&fields);
        let seen = res.body();
        // Every other pair arrives, byte for byte and in order; none of ours does.
        let expected: Vec<Vec<u8>> =
            others.iter().map(|p| p.trim().as_bytes().to_vec()).filter(|p| !p.is_empty()).collect();
        prop_assert_eq!(pairs(seen), expected);
        // Without our cookie the header is not touched at all.
        if ours == 0 {
            prop_assert_eq!(seen, &fields);
            prop_assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::New));
        }
        // Every field that reaches the backend is still a valid, non-empty header value.
        prop_assert!(seen.iter().all(|f| !f.as_bytes().trim_ascii().is_empty()));
    }

    #[test]
    fn the_layer_never_panics_on_arbitrary_cookie_bytes(
        fields in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff, Just(b';'), Just(b'=')],
                0..64,
            ),
            0..6,
        ),
        token_at in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut fields: Vec<Vec<u8>> = fields;
        if let (Some(at), false) = (token_at, fields.is_empty()) {
            // Sometimes a real session somewhere in the bytes.
            let i = at.index(fields.len());
            let token = signed().encode(
                &Claims { endpoint: b"pod-b".to_vec(), issued: Some(now()), refreshed: Some(now()) },
                Binding { name: "sid", scope: "default/shop/0" },
            ).unwrap();
            fields[i].extend_from_slice(format!(";sid={token}").as_bytes());
        }
        let values: Vec<HeaderValue> =
            fields.iter().map(|f| HeaderValue::from_bytes(f).unwrap()).collect();
        let res = call(&values);
        let decision = res.extensions().get::<Decision>().copied();
        prop_assert!(matches!(
            decision,
            Some(Decision::New | Decision::Invalid | Decision::Pinned)
        ));
    }
}

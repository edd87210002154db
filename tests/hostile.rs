//! Hostile input, one test each: whatever a client sends, the layer gives a defined answer.
//! A session it cannot honour is no session (balanced, and a new one issued); other cookies and
//! URL parameters reach the backend unchanged; nothing panics and every request is served.
//!
//! Every test runs the layer over a `service_fn` stand-in for a balancer, once with the signed
//! codec and once with the sealed one.

// Without its features this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(all(feature = "signed", feature = "sealed")))]
compile_error!(
    "tests/hostile.rs needs the features signed, sealed (on by default): run it with default features"
);

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::strategy::{Prefix, Url};
use tower_session_persistence::token::{
    Binding, Claims, Codec, Dates, PlainCodec, SealedCodec, SignedCodec,
};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const KEY: [u8; 32] = [0x17; 32];
const SCOPE: &str = "default/shop/0";
/// Where the stand-in balancer sends requests without a session.
const BALANCED: &str = "pod-a";
/// Where the tokens in these tests pin to.
const PINNED: &str = "pod-b";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Signed,
    Sealed,
}

const KINDS: [Kind; 2] = [Kind::Signed, Kind::Sealed];

fn codec(kind: Kind) -> Box<dyn Codec> {
    match kind {
        Kind::Signed => Box::new(SignedCodec::new([KEY]).unwrap()),
        Kind::Sealed => Box::new(SealedCodec::new([KEY]).unwrap()),
    }
}

fn sid() -> SessionPolicy {
    SessionPolicy::cookie("sid")
        .absolute_timeout(Duration::from_secs(3600))
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn layer(kind: Kind) -> SessionPersistenceLayer<String> {
    layer_for(kind, sid())
}

fn layer_for(kind: Kind, policy: SessionPolicy) -> SessionPersistenceLayer<String> {
    match kind {
        Kind::Signed => SessionPersistenceLayer::new(policy, SignedCodec::new([KEY]).unwrap()),
        Kind::Sealed => SessionPersistenceLayer::new(policy, SealedCodec::new([KEY]).unwrap()),
    }
    .scope(SCOPE)
}

fn token_at(kind: Kind, endpoint: &str, issued: u64, refreshed: u64, b: Binding<'_>) -> String {
    let claims = Claims {
        endpoint: endpoint.as_bytes().to_vec(),
        issued: Some(issued),
        refreshed: Some(refreshed),
    };
    codec(kind).encode(&claims, b).unwrap()
}

const BINDING: Binding<'static> = Binding { name: "sid", scope: SCOPE };

fn valid(kind: Kind) -> String {
    token_at(kind, PINNED, now(), now(), BINDING)
}

/// A stand-in balancer: the pinned endpoint or `pod-a`; echoes the Cookie fields in
/// `x-seen-cookie` and the URI in `x-seen-uri`.
fn balancer()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(|mut req: Request<()>| async move {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or(BALANCED.to_owned(), |p| p.0);
        let mut res = Response::new(());
        for v in req.headers().get_all("cookie") {
            res.headers_mut().append("x-seen-cookie", v.clone());
        }
        res.headers_mut().insert("x-seen-uri", req.uri().to_string().parse().unwrap());
        res.headers_mut().insert("x-backend", key.parse().unwrap());
        if let Some(set) = req.headers().get("x-set-cookie") {
            res.headers_mut().append("set-cookie", set.clone());
        }
        ServedBy(key).insert(res.extensions_mut());
        Ok(res)
    })
}

async fn send(layer: SessionPersistenceLayer<String>, req: Request<()>) -> Response<()> {
    ServiceBuilder::new().layer(layer).service(balancer()).oneshot(req).await.unwrap()
}

/// A request whose `Cookie` fields are `fields`, as raw bytes.
fn with_cookies(fields: &[&[u8]]) -> Request<()> {
    let mut req = Request::new(());
    for field in fields {
        req.headers_mut().append("cookie", HeaderValue::from_bytes(field).unwrap());
    }
    req
}

fn seen_cookies(res: &Response<()>) -> Vec<&[u8]> {
    res.headers().get_all("x-seen-cookie").iter().map(HeaderValue::as_bytes).collect()
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// The value of the `sid` cookie the layer set.
fn issued_token(res: &Response<()>) -> Option<String> {
    set_cookies(res.headers())
        .into_iter()
        .find_map(|c| c.split(';').next().unwrap().strip_prefix("sid=").map(str::to_owned))
}

fn decision(res: &Response<()>) -> Decision {
    *res.extensions().get::<Decision>().expect("every balanced response carries a decision")
}

/// The defined answer to anything the layer cannot honour: balanced, and a fresh, valid token
/// for the endpoint that served the request.
#[track_caller]
fn assert_no_session(kind: Kind, res: &Response<()>, expected: Decision) {
    assert_eq!(res.headers()["x-backend"], BALANCED, "{kind:?}: must be balanced");
    assert_eq!(decision(res), expected, "{kind:?}");
    let fresh = issued_token(res).expect("a new session is issued");
    let claims = codec(kind).decode(&fresh, BINDING).expect("the new token is valid");
    assert_eq!(claims.endpoint, BALANCED.as_bytes());
}

#[track_caller]
fn assert_pinned(kind: Kind, res: &Response<()>) {
    assert_eq!(res.headers()["x-backend"], PINNED, "{kind:?}: must be pinned");
    assert_eq!(decision(res), Decision::Pinned, "{kind:?}");
    assert!(issued_token(res).is_none(), "{kind:?}: nothing to re-issue");
}

// ---------------------------------------------------------------------------------------------
// Size: bounded work whatever the input.

#[tokio::test]
async fn a_cookie_header_of_8_kib_with_ours_at_the_end() {
    for kind in KINDS {
        let filler: String = (0..500).map(|i| format!("cookie{i}=value{i}; ")).collect();
        let field = format!("{filler}sid={}", valid(kind));
        assert!(field.len() > 8 * 1024, "{}", field.len());
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [filler.trim_end_matches("; ").as_bytes()]);
    }
}

#[tokio::test]
async fn a_cookie_header_of_64_kib_of_junk() {
    for kind in KINDS {
        let junk: Vec<u8> = (0..64 * 1024).map(|i| b"abc=;\" \t,~\x80\xff"[i % 12]).collect();
        let res = send(layer(kind), with_cookies(&[&junk])).await;
        assert_eq!(decision(&res), Decision::New, "no pair named sid");
        assert_eq!(res.headers()["x-backend"], BALANCED);
        assert_eq!(seen_cookies(&res), [&junk[..]], "passed on untouched");
        // Our cookie after 64 KiB of junk is still found, and only it is removed.
        let field = [&junk[..], b"; sid=", valid(kind).as_bytes()].concat();
        let res = send(layer(kind), with_cookies(&[&field])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [&junk[..]]);
    }
}

#[tokio::test]
async fn a_thousand_cookies() {
    for kind in KINDS {
        let others: Vec<String> = (0..1000).map(|i| format!("k{i}=v{i}")).collect();
        // Ours last, in one field.
        let field = format!("{}; sid={}", others.join("; "), valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [others.join("; ").as_bytes()]);
        // A thousand fields (HTTP/2 splits cookies), ours in the middle.
        let mut fields: Vec<String> = others.clone();
        fields.insert(500, format!("sid={}", valid(kind)));
        let refs: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        let res = send(layer(kind), with_cookies(&refs)).await;
        assert_pinned(kind, &res);
        let seen: Vec<&[u8]> = seen_cookies(&res);
        let expected: Vec<&[u8]> = others.iter().map(|f| f.as_bytes()).collect();
        assert_eq!(seen, expected);
        // A thousand cookies named sid, all garbage: one answer, all of them removed.
        let field = vec!["sid=garbage"; 1000].join("; ");
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        assert!(seen_cookies(&res).is_empty());
    }
}

/// Tokens in each keyed codec's documented format (see `SignedCodec` and `SealedCodec`),
/// written here with the ciphers themselves rather than by the codecs: they can be longer than
/// any token the codecs would write, and still authentic.
mod forge {
    use aes_siv::aead::KeyInit;
    use aes_siv::siv::Aes128Siv;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use hkdf::Hkdf;
    use sha2::Sha256;
    use tower_session_persistence::token::{Binding, Claims};

    fn seconds(t: Option<u64>) -> [u8; 4] {
        u32::try_from(t.unwrap_or(0)).unwrap().to_be_bytes()
    }

    /// `base64url(version ‖ issued ‖ refreshed ‖ tag ‖ ciphertext)`, AES-SIV under
    /// HKDF-SHA256(salt = label, key) expanded with `aes-128-siv`; the associated data are the
    /// label, the name, the scope and the clear header.
    pub(super) fn signed(key: &[u8], claims: &Claims, b: Binding<'_>) -> String {
        const LABEL: &[u8] = b"tower-session-persistence/signed/v1";
        let mut okm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(LABEL), key).expand(b"aes-128-siv", &mut okm).unwrap();
        let header = [&[1u8][..], &seconds(claims.issued), &seconds(claims.refreshed)].concat();
        let mut ciphertext = claims.endpoint.clone();
        let tag = Aes128Siv::new(&okm.into())
            .encrypt_inout_detached(
                [LABEL, b.name.as_bytes(), b.scope.as_bytes(), &header],
                ciphertext.as_mut_slice().into(),
            )
            .unwrap();
        URL_SAFE_NO_PAD.encode([&header[..], &tag, &ciphertext].concat())
    }

    /// `base64url(version ‖ key id ‖ nonce ‖ ciphertext ‖ tag)`, XChaCha20-Poly1305 under
    /// HKDF-SHA256(salt = label, key) expanded with `xchacha20-poly1305` (the key id: one byte
    /// expanded with `key-id`); the plaintext is the two dates and the endpoint's length and
    /// key, zero-padded to a multiple of 32 bytes; the associated data are the label, version,
    /// key id, and the name and scope each after its length as a big-endian `u64`.
    pub(super) fn sealed(key: &[u8], claims: &Claims, b: Binding<'_>) -> String {
        const LABEL: &[u8] = b"tower-session-persistence/sealed/v1";
        let hkdf = Hkdf::<Sha256>::new(Some(LABEL), key);
        let (mut okm, mut id) = ([0u8; 32], [0u8; 1]);
        hkdf.expand(b"xchacha20-poly1305", &mut okm).unwrap();
        hkdf.expand(b"key-id", &mut id).unwrap();
        let nonce = [9u8; 24];
        let len = u16::try_from(claims.endpoint.len()).unwrap().to_be_bytes();
        let mut plain =
            [&seconds(claims.issued)[..], &seconds(claims.refreshed), &len, &claims.endpoint]
                .concat();
        plain.resize(plain.len().next_multiple_of(32), 0);
        let mut ad = [LABEL, &[1, id[0]]].concat();
        for part in [b.name.as_bytes(), b.scope.as_bytes()] {
            ad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            ad.extend_from_slice(part);
        }
        let tag = XChaCha20Poly1305::new(&okm.into())
            .encrypt_inout_detached(
                &XNonce::try_from(&nonce[..]).unwrap(),
                &ad,
                plain.as_mut_slice().into(),
            )
            .unwrap();
        URL_SAFE_NO_PAD.encode([&[1, id[0]][..], &nonce, &plain, &tag].concat())
    }
}

fn forged(kind: Kind, claims: &Claims) -> String {
    match kind {
        Kind::Signed => forge::signed(&KEY, claims, BINDING),
        Kind::Sealed => forge::sealed(&KEY, claims, BINDING),
    }
}

#[test]
fn decoders_refuse_tokens_over_their_length_limit() {
    let t = now();
    let claims =
        |len: usize| Claims { endpoint: vec![b'x'; len], issued: Some(t), refreshed: Some(t) };
    // The longest endpoint keys whose tokens fit in 1024 characters (docs/SECURITY.md).
    for (kind, longest) in [(Kind::Signed, 743), (Kind::Sealed, 694)] {
        let codec = codec(kind);
        // An authentic token at the limit is accepted: the forging is right...
        let fits = forged(kind, &claims(longest));
        assert!(fits.len() <= 1024, "{kind:?}: {}", fits.len());
        assert!(codec.decode(&fits, BINDING) == Some(claims(longest)), "{kind:?}: refused");
        if let Kind::Signed = kind {
            // (AES-SIV is deterministic: the codec writes the very same token.)
            assert!(codec.encode(&claims(longest), BINDING) == Some(fits), "{kind:?}: differs");
        }
        // ...and one byte more of endpoint key makes an authentic token over the limit, which
        // only the length check can refuse: its MAC and its base64 are fine.
        let over = forged(kind, &claims(longest + 1));
        assert!(over.len() > 1024, "{kind:?}: {}", over.len());
        assert!(codec.decode(&over, BINDING).is_none(), "{kind:?}: an over-long token accepted");
        // The codec never writes that token either.
        assert_eq!(codec.encode(&claims(longest + 1), BINDING), None, "{kind:?}");
        // Well-formed version bytes followed by more than a token can hold: no session, and
        // no panic (past the limit, the decoders' fixed buffers are too small).
        for len in [1025, 1100, 1364, 1368, 4096, 64 * 1024] {
            let long = format!("AQ{}", "A".repeat(len - 2));
            assert_eq!(codec.decode(&long, BINDING), None, "{kind:?} {len}");
        }
        // An endpoint key far too long for the limit is never written.
        assert_eq!(codec.encode(&claims(2000), BINDING), None, "{kind:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cookie syntax.

#[tokio::test]
async fn duplicate_names_the_first_decides_and_all_are_removed() {
    for kind in KINDS {
        let good = valid(kind);
        // First valid: pinned, the later garbage removed too.
        let field = format!("a=1; sid={good}; b=2; sid=garbage");
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [&b"a=1; b=2"[..]]);
        // First garbage: no session, even though a valid one follows (as HAProxy does).
        let field = format!("sid=garbage; a=1; sid={good}");
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        assert_eq!(seen_cookies(&res), [&b"a=1"[..]]);
        // The first across fields is the first field's.
        let (f1, f2) = (format!("sid={good}"), "sid=garbage".to_owned());
        let res = send(layer(kind), with_cookies(&[f1.as_bytes(), f2.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert!(seen_cookies(&res).is_empty());
    }
}

#[tokio::test]
async fn empty_values_and_names_without_values() {
    for kind in KINDS {
        for field in [&b"sid="[..], b"sid=\"\"", b"sid= ", b"a=1; sid=; b=2"] {
            let res = send(layer(kind), with_cookies(&[field])).await;
            assert_no_session(kind, &res, Decision::Invalid);
            assert!(!seen_cookies(&res).iter().any(|f| f.windows(4).any(|w| w == b"sid=")));
        }
        // `sid` alone is not a name=value pair: not ours, passed on.
        let res = send(layer(kind), with_cookies(&[b"a=1; sid"])).await;
        assert_no_session(kind, &res, Decision::New);
        assert_eq!(seen_cookies(&res), [&b"a=1; sid"[..]]);
    }
}

#[tokio::test]
async fn quoted_values() {
    for kind in KINDS {
        // RFC 6265 allows a quoted cookie-value: the token inside counts.
        let field = format!("theme=\"dark mode\"; sid=\"{}\"", valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [&b"theme=\"dark mode\""[..]]);
        // Unbalanced or nested quotes are not a token.
        for bad in [format!("sid=\"{}", valid(kind)), format!("sid=\"\"{}\"\"", valid(kind))] {
            let res = send(layer(kind), with_cookies(&[bad.as_bytes()])).await;
            assert_no_session(kind, &res, Decision::Invalid);
            assert!(seen_cookies(&res).is_empty(), "{bad}");
        }
    }
}

#[tokio::test]
async fn dollar_prefixed_names() {
    for kind in KINDS {
        // RFC 2965 attributes in a Cookie header are other cookies to us, kept as they are.
        let field = format!("$Version=1; sid={}; $Path=/; $Domain=example.com", valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [&b"$Version=1; $Path=/; $Domain=example.com"[..]]);
        // `$sid` is not `sid`.
        let field = format!("$sid={}", valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_no_session(kind, &res, Decision::New);
        assert_eq!(seen_cookies(&res), [field.as_bytes()]);
    }
}

#[tokio::test]
async fn non_utf8_bytes() {
    for kind in KINDS {
        // In another cookie: kept byte for byte; ours still found.
        let field =
            [&b"x=\xff\xfe\x80; sid="[..], valid(kind).as_bytes(), b"; y=\xc3\x28"].concat();
        let res = send(layer(kind), with_cookies(&[&field])).await;
        assert_pinned(kind, &res);
        assert_eq!(seen_cookies(&res), [&b"x=\xff\xfe\x80; y=\xc3\x28"[..]]);
        // In ours: a pair that is not UTF-8 is never ours (see the carrier's docs), so it is
        // no session and passes on as it is.
        let field = [&b"sid="[..], valid(kind).as_bytes(), b"\xff"].concat();
        let res = send(layer(kind), with_cookies(&[&field])).await;
        assert_no_session(kind, &res, Decision::New);
        assert_eq!(seen_cookies(&res), [&field[..]]);
    }
}

#[tokio::test]
async fn whitespace_and_separators() {
    for kind in KINDS {
        let field = format!(";; a=1 ;\t sid = {} ;;b=2;", valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_pinned(kind, &res);
        // Empty pairs before the first kept one go with the separators; the rest stays.
        assert_eq!(seen_cookies(&res), [&b"a=1 ;;b=2;"[..]]);
        // Names are case-sensitive.
        let field = format!("SID={}", valid(kind));
        let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
        assert_no_session(kind, &res, Decision::New);
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[tokio::test]
async fn truncated_tokens() {
    for kind in KINDS {
        let good = valid(kind);
        for len in (0..good.len()).step_by(7).chain([good.len() - 1]) {
            let field = format!("sid={}", &good[..len]);
            let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
            assert_no_session(kind, &res, Decision::Invalid);
        }
    }
}

#[tokio::test]
async fn extended_tokens() {
    for kind in KINDS {
        let good = valid(kind);
        for tail in ["A", "AA", "AAA", "AAAA", "_-", "~app-value", "%3D", ".x"] {
            let field = format!("sid={good}{tail}");
            let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
            assert_no_session(kind, &res, Decision::Invalid);
        }
        // Padding is not part of the format either.
        let res = send(layer(kind), with_cookies(&[format!("sid={good}==").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
    }
}

#[tokio::test]
async fn bit_flipped_tokens() {
    for kind in KINDS {
        let raw = URL_SAFE_NO_PAD.decode(valid(kind)).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1 << (i % 8);
            let field = format!("sid={}", URL_SAFE_NO_PAD.encode(&bad));
            let res = send(layer(kind), with_cookies(&[field.as_bytes()])).await;
            assert_no_session(kind, &res, Decision::Invalid);
        }
    }
}

#[tokio::test]
async fn tokens_replayed_after_expiry() {
    for kind in KINDS {
        // Past the absolute timeout (1 h), however recently refreshed.
        let old = token_at(kind, PINNED, now() - 3601, now() - 10, BINDING);
        let res = send(layer(kind), with_cookies(&[format!("sid={old}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Expired);
        // Past the idle timeout (10 min).
        let idle = token_at(kind, PINNED, now() - 1000, now() - 601, BINDING);
        let res = send(layer(kind), with_cookies(&[format!("sid={idle}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Expired);
        // The replacement starts a new session: its issue time is now, not the old one's.
        let fresh = issued_token(&res).unwrap();
        let claims = codec(kind).decode(&fresh, BINDING).unwrap();
        assert!(claims.issued.unwrap().abs_diff(now()) <= 2);
        // Replaying the expired token again changes nothing: it stays expired.
        let res = send(layer(kind), with_cookies(&[format!("sid={idle}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Expired);
    }
}

#[tokio::test]
async fn tokens_from_the_future() {
    for kind in KINDS {
        let ahead = token_at(kind, PINNED, now() + 3600, now() + 3600, BINDING);
        let res = send(layer(kind), with_cookies(&[format!("sid={ahead}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        // Refreshed before it was issued: not a token we write.
        let odd = token_at(kind, PINNED, now(), now() - 100, BINDING);
        let res = send(layer(kind), with_cookies(&[format!("sid={odd}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
    }
}

#[tokio::test]
async fn tokens_moved_between_rules_or_names() {
    for kind in KINDS {
        let other_rule =
            token_at(kind, PINNED, now(), now(), Binding { name: "sid", scope: "default/shop/1" });
        let res = send(layer(kind), with_cookies(&[format!("sid={other_rule}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        // The same cookie name under another route, or another name under the same route.
        let other_name =
            token_at(kind, PINNED, now(), now(), Binding { name: "sid2", scope: SCOPE });
        let res = send(layer(kind), with_cookies(&[format!("sid={other_name}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        // A token of the other codec, same keys, same binding.
        let other_kind = match kind {
            Kind::Signed => Kind::Sealed,
            Kind::Sealed => Kind::Signed,
        };
        let crossed = valid(other_kind);
        let res = send(layer(kind), with_cookies(&[format!("sid={crossed}").as_bytes()])).await;
        assert_no_session(kind, &res, Decision::Invalid);
        // A token signed with a key this layer does not hold.
        let foreign = SignedCodec::new([[0x18; 32]]).unwrap().encode(
            &Claims { endpoint: PINNED.into(), issued: Some(now()), refreshed: Some(now()) },
            BINDING,
        );
        let res =
            send(layer(kind), with_cookies(&[format!("sid={}", foreign.unwrap()).as_bytes()]))
                .await;
        assert_no_session(kind, &res, Decision::Invalid);
    }
}

#[tokio::test]
async fn tokens_forged_with_a_plain_endpoint_id() {
    for kind in KINDS {
        let plain = PlainCodec::new(Dates::LastAndFirst)
            .encode(
                &Claims { endpoint: PINNED.into(), issued: Some(now()), refreshed: Some(now()) },
                BINDING,
            )
            .unwrap();
        let forgeries = [
            PINNED.to_owned(),
            plain,
            URL_SAFE_NO_PAD.encode(PINNED),
            // A well-formed header with the endpoint where the ciphertext should be.
            URL_SAFE_NO_PAD.encode([&[1u8][..], &[0; 8], PINNED.as_bytes(), &[0; 16]].concat()),
            URL_SAFE_NO_PAD.encode([&[1u8, 0][..], &[0; 24], PINNED.as_bytes(), &[0; 40]].concat()),
        ];
        for forged in forgeries {
            let res = send(layer(kind), with_cookies(&[format!("sid={forged}").as_bytes()])).await;
            assert_no_session(kind, &res, Decision::Invalid);
        }
    }
}

/// A codec that moves the layer's clock forward: the layer reads the wall clock, and this codec
/// dates every token it writes `ahead` seconds later than the layer says, and shows it every
/// token `ahead` seconds earlier than written. Raising `ahead` by `t` is, to the layer, `t`
/// seconds passing.
struct Later<C> {
    inner: C,
    ahead: Arc<AtomicU64>,
}

impl<C: Codec> Codec for Later<C> {
    fn encode(&self, claims: &Claims, b: Binding<'_>) -> Option<String> {
        let ahead = self.ahead.load(Ordering::SeqCst);
        let shift = |t: Option<u64>| t.map(|t| t + ahead);
        let claims = Claims {
            issued: shift(claims.issued),
            refreshed: shift(claims.refreshed),
            ..claims.clone()
        };
        self.inner.encode(&claims, b)
    }

    fn decode(&self, token: &str, b: Binding<'_>) -> Option<Claims> {
        let ahead = self.ahead.load(Ordering::SeqCst);
        let shift = |t: Option<u64>| t.map(|t| t - ahead);
        let claims = self.inner.decode(token, b)?;
        Some(Claims { issued: shift(claims.issued), refreshed: shift(claims.refreshed), ..claims })
    }
}

#[tokio::test]
async fn a_stolen_token_is_honoured_only_until_it_expires() {
    // Tokens are bearer credentials for routing: within its lifetime a copied token pins its
    // holder too (what it gives is a backend, not an identity). The timeouts bound how long:
    // the idle timeout (10 min) a token replayed as it was taken, the absolute timeout (1 h) a
    // thief who keeps every token the layer refreshes.
    for kind in KINDS {
        let ahead = Arc::new(AtomicU64::new(0));
        let later = |ahead: &Arc<AtomicU64>| {
            let ahead = ahead.clone();
            let policy = sid();
            match kind {
                Kind::Signed => SessionPersistenceLayer::new(
                    policy,
                    Later { inner: SignedCodec::new([KEY]).unwrap(), ahead },
                ),
                Kind::Sealed => SessionPersistenceLayer::new(
                    policy,
                    Later { inner: SealedCodec::new([KEY]).unwrap(), ahead },
                ),
            }
            .scope(SCOPE)
        };
        let layer = later(&ahead);
        let at = async |seconds: u64, token: &str| {
            ahead.store(seconds, Ordering::SeqCst);
            send(layer.clone(), with_cookies(&[format!("sid={token}").as_bytes()])).await
        };
        let stolen = valid(kind);

        // Replayed as taken: honoured just under the idle timeout, not at it. (The wall clock
        // only adds to the age: the margin below the timeout is for a second ticking.)
        for seconds in [0, 60, 590] {
            let res = at(seconds, &stolen).await;
            assert_eq!(res.headers()["x-backend"], PINNED, "{kind:?} at {seconds} s");
            assert_eq!(decision(&res), Decision::Pinned, "{kind:?} at {seconds} s");
        }
        let res = at(600, &stolen).await;
        assert_no_session(kind, &res, Decision::Expired);

        // Kept fresh: every refresh the layer writes is taken too, yet the absolute timeout
        // ends it.
        let mut latest = stolen;
        for seconds in (0..3600).step_by(590) {
            let res = at(seconds, &latest).await;
            assert_eq!(res.headers()["x-backend"], PINNED, "{kind:?} at {seconds} s");
            assert_eq!(decision(&res), Decision::Pinned, "{kind:?} at {seconds} s");
            if let Some(refreshed) = issued_token(&res) {
                latest = refreshed;
            }
        }
        assert_ne!(latest, valid(kind), "{kind:?}: the thief got refreshed tokens");
        let res = at(3600, &latest).await;
        assert_eq!(res.headers()["x-backend"], BALANCED, "{kind:?}: expired at 1 h");
        assert_eq!(decision(&res), Decision::Expired, "{kind:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The header carrier.

#[tokio::test]
async fn header_sessions_with_repeated_or_unreadable_values() {
    for kind in KINDS {
        let layer =
            || layer_for(kind, SessionPolicy::header("x-session").build().unwrap()).scope(SCOPE);
        let good =
            token_at(kind, PINNED, now(), now(), Binding { name: "x-session", scope: SCOPE });
        // Repeated: the first counts, every one is removed.
        let mut req = Request::new(());
        req.headers_mut().append("x-session", good.parse().unwrap());
        req.headers_mut().append("x-session", "garbage".parse().unwrap());
        let res = send(layer(), req).await;
        assert_eq!(res.headers()["x-backend"], PINNED);
        let mut req = Request::new(());
        req.headers_mut().append("x-session", "garbage".parse().unwrap());
        req.headers_mut().append("x-session", good.parse().unwrap());
        let res = send(layer(), req).await;
        assert_eq!(res.headers()["x-backend"], BALANCED);
        assert_eq!(decision(&res), Decision::Invalid);
        // Not visible ASCII: no session; a new one in the response header.
        let mut req = Request::new(());
        req.headers_mut().insert("x-session", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let res = send(layer(), req).await;
        assert_eq!(decision(&res), Decision::New);
        let fresh = res.headers()["x-session"].to_str().unwrap();
        let b = Binding { name: "x-session", scope: SCOPE };
        assert_eq!(codec(kind).decode(fresh, b).unwrap().endpoint, BALANCED.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// URLs.

fn url_layer(kind: Kind, strategy: Url) -> SessionPersistenceLayer<String> {
    layer(kind).strategy(strategy)
}

fn get(uri: &str) -> Request<()> {
    Request::builder().uri(uri).body(()).unwrap()
}

#[tokio::test]
async fn urls_with_repeated_parameters() {
    for kind in KINDS {
        let good = valid(kind);
        // Query: the first occurrence decides; every occurrence is stripped.
        let uri = format!("/cart?sid={good}&x=1&sid=garbage&sid={good}");
        let res = send(url_layer(kind, Url::query()), get(&uri)).await;
        assert_eq!(res.headers()["x-backend"], PINNED);
        assert_eq!(res.headers()["x-seen-uri"], "/cart?x=1");
        let uri = format!("/cart?sid=garbage&sid={good}");
        let res = send(url_layer(kind, Url::query()), get(&uri)).await;
        assert_eq!(decision(&res), Decision::Invalid);
        assert_eq!(res.headers()["x-backend"], BALANCED);
        assert_eq!(res.headers()["x-seen-uri"], "/cart");
        // Path parameters: the same, across segments.
        let uri = format!("/a;sid={good};v=2/b;sid=garbage?q=1");
        let res = send(url_layer(kind, Url::path_parameter()), get(&uri)).await;
        assert_eq!(res.headers()["x-backend"], PINNED);
        assert_eq!(res.headers()["x-seen-uri"], "/a;v=2/b?q=1");
    }
}

#[tokio::test]
async fn urls_with_encoded_parameters() {
    for kind in KINDS {
        let good = valid(kind);
        // Names match literally: an encoded name is somebody else's parameter, left alone.
        for uri in [format!("/cart?%73id={good}"), format!("/cart?sid%3D{good}")] {
            let res = send(url_layer(kind, Url::query()), get(&uri)).await;
            assert_eq!(decision(&res), Decision::New, "{uri}");
            assert_eq!(res.headers()["x-seen-uri"], uri.as_str());
        }
        // An encoded `;` is not a path parameter.
        let uri = format!("/cart%3Bsid={good}");
        let res = send(url_layer(kind, Url::path_parameter()), get(&uri)).await;
        assert_eq!(decision(&res), Decision::New);
        assert_eq!(res.headers()["x-seen-uri"], uri.as_str());
        // An encoded value is not a token (tokens never need encoding): no session, stripped.
        let encoded = good.replace('-', "%2D").replace('_', "%5F") + "%3D";
        let res = send(url_layer(kind, Url::query()), get(&format!("/c?sid={encoded}&a=1"))).await;
        assert_eq!(decision(&res), Decision::Invalid);
        assert_eq!(res.headers()["x-seen-uri"], "/c?a=1");
    }
}

#[tokio::test]
async fn absolute_form_urls_without_a_path_are_stripped_too() {
    // Found by the url_params fuzz target: `http://host?sid=T` left an empty target, which is
    // not a valid URI, so the token used to reach the backend.
    for kind in KINDS {
        let uri = format!("http://shop.example?sid={}", valid(kind));
        let res = send(url_layer(kind, Url::query()), get(&uri)).await;
        assert_eq!(res.headers()["x-backend"], PINNED);
        assert_eq!(res.headers()["x-seen-uri"], "http://shop.example/");
        let uri = format!("http://shop.example?a=1&sid={}", valid(kind));
        let res = send(url_layer(kind, Url::query()), get(&uri)).await;
        assert_eq!(res.headers()["x-seen-uri"], "http://shop.example/?a=1");
    }
}

// ---------------------------------------------------------------------------------------------
// The backend's own cookie, prefixed.

#[tokio::test]
async fn prefixed_cookies_with_hostile_values() {
    for kind in KINDS {
        let layer = || layer(kind).strategy(Prefix);
        // A forged id before `~` is stripped like a real one: the application gets its value.
        let res = send(layer(), with_cookies(&[b"sid=pod-b~app-session"])).await;
        assert_no_session_prefix(&res, Decision::Invalid);
        assert_eq!(seen_cookies(&res), [&b"sid=app-session"[..]]);
        // Many `~`: the split is at the first.
        let field = format!("sid={}~a~b~", valid(kind));
        let res = send(layer(), with_cookies(&[field.as_bytes()])).await;
        assert_eq!(res.headers()["x-backend"], PINNED);
        assert_eq!(seen_cookies(&res), [&b"sid=a~b~"[..]]);
        // Without `~` the whole value is taken as a token and passed on.
        let res = send(layer(), with_cookies(&[b"sid=just-the-app"])).await;
        assert_no_session_prefix(&res, Decision::Invalid);
        assert_eq!(seen_cookies(&res), [&b"sid=just-the-app"[..]]);
    }
}

/// With `Prefix`, a new token only travels on the backend's own `Set-Cookie`.
#[track_caller]
fn assert_no_session_prefix(res: &Response<()>, expected: Decision) {
    assert_eq!(res.headers()["x-backend"], BALANCED);
    assert_eq!(decision(res), expected);
}

// ---------------------------------------------------------------------------------------------
// Nothing leaks.

#[test]
fn keys_never_appear_in_debug_output() {
    let key = [0xAB; 32];
    let shown = [
        format!("{:?}", SignedCodec::new([key]).unwrap()),
        format!("{:?}", SealedCodec::new([key]).unwrap()),
        format!(
            "{:?}",
            SessionPersistenceLayer::<String>::new(sid(), SealedCodec::new([key]).unwrap())
        ),
    ];
    for text in shown {
        assert!(!text.contains("171, 171") && !text.to_lowercase().contains("0xab"), "{text}");
    }
}

// `tokens_never_appear_in_traces` lives in tests/traces.rs, alone in its binary.

#[tokio::test]
async fn host_prefixed_cookie_names_work_with_the_defaults() {
    // `__Host-` (RFC 6265bis) stops sibling subdomains and plain-HTTP pages from planting the
    // cookie (session fixation); browsers require Secure, Path=/ and no Domain, which are the
    // defaults.
    for kind in KINDS {
        let policy = SessionPolicy::cookie("__Host-sid").build().unwrap();
        let res = send(layer_for(kind, policy.clone()), Request::new(())).await;
        let set = set_cookies(res.headers()).pop().unwrap();
        let parsed = cookie::Cookie::parse(set.clone()).unwrap();
        assert_eq!(parsed.name(), "__Host-sid");
        assert_eq!(
            (parsed.secure(), parsed.path(), parsed.domain()),
            (Some(true), Some("/"), None)
        );
        let res = send(
            layer_for(kind, policy),
            with_cookies(&[set.split(';').next().unwrap().as_bytes()]),
        )
        .await;
        assert_eq!(decision(&res), Decision::Pinned, "{set}");
    }
}

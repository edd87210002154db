//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, nightly) and
//! by `tests/fuzz_corpus.rs` (which replays `fuzz/corpus/<target>/` on stable).
//!
//! Everything goes through the public API. The layer runs over a `service_fn` stand-in for a
//! balancer whose futures are immediately ready, so each input is driven synchronously. Each
//! target asserts invariants, not just the absence of a panic.
//!
//! In `cookie_header` and `url_params`, the two bytes `@T` in an input stand for a valid token
//! of the session, so that the fuzzer can place real sessions anywhere.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::OnceLock;

use futures_util::FutureExt as _;
use http::header::{COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use http::{Request, Response, StatusCode, Uri};
use tower::{ServiceExt as _, service_fn};
use tower_session_persistence::policy::{SessionPersistenceConfig, SessionPolicy};
use tower_session_persistence::strategy::{Insert, Prefix, Rewrite, Url};
use tower_session_persistence::token::{
    Binding, Claims, Codec, Dates, PlainCodec, SealedCodec, SignedCodec,
};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

/// The session's name in every target.
pub const NAME: &str = "sid";
/// The scope every layer binds its tokens to.
pub const SCOPE: &str = "fuzz/route/0";
/// The endpoint a request without a session goes to.
pub const DEFAULT: &str = "pod-default";
/// The endpoint every `@T` token names.
pub const PINNED: &str = "pod-pinned";
const KEY: [u8; 32] = [0x42; 32];

fn binding() -> Binding<'static> {
    Binding { name: NAME, scope: SCOPE }
}

fn signed() -> &'static SignedCodec {
    static CODEC: OnceLock<SignedCodec> = OnceLock::new();
    CODEC.get_or_init(|| SignedCodec::new([KEY]).expect("valid key"))
}

fn sealed() -> &'static SealedCodec {
    static CODEC: OnceLock<SealedCodec> = OnceLock::new();
    CODEC.get_or_init(|| SealedCodec::new([KEY]).expect("valid key"))
}

/// When every `@T` token was issued: a fixed date in the past (the policies here have no
/// timeouts), so that the signed token, which is deterministic, is the same in every run and
/// the tokens the fuzzer keeps in its corpus stay this one.
const ISSUED: u64 = 1_700_000_000;

/// What every `@T` token says.
fn pinned_claims() -> Claims {
    Claims { endpoint: PINNED.as_bytes().to_vec(), issued: Some(ISSUED), refreshed: Some(ISSUED) }
}

/// A valid token naming [`PINNED`], written once per process.
fn token(sealed_codec: bool) -> &'static str {
    static SIGNED: OnceLock<String> = OnceLock::new();
    static SEALED: OnceLock<String> = OnceLock::new();
    if sealed_codec {
        SEALED.get_or_init(|| sealed().encode(&pinned_claims(), binding()).expect("encodes"))
    } else {
        SIGNED.get_or_init(|| signed().encode(&pinned_claims(), binding()).expect("encodes"))
    }
}

/// Replaces every `@T` in `data` with `token`.
fn with_tokens(data: &[u8], token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"@T") {
            out.extend_from_slice(token.as_bytes());
            i += 2;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// What the stand-in balancer saw, returned in the response's extensions.
#[derive(Clone, Debug)]
struct Seen {
    cookies: Vec<HeaderValue>,
    uri: Uri,
}

/// Runs `req` through `layer` over a stand-in balancer that serves the pinned endpoint or
/// [`DEFAULT`], and answers with `set_cookies` and `location`.
fn run(
    layer: &SessionPersistenceLayer<String>,
    req: Request<()>,
    set_cookies: Vec<HeaderValue>,
    location: Option<HeaderValue>,
) -> (Response<()>, Seen) {
    let backend = service_fn(move |mut req: Request<()>| {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or_else(|| DEFAULT.to_owned(), |p| p.0);
        let mut res = Response::new(());
        if location.is_some() {
            *res.status_mut() = StatusCode::FOUND;
        }
        for value in &set_cookies {
            res.headers_mut().append(SET_COOKIE, value.clone());
        }
        if let Some(location) = &location {
            res.headers_mut().insert(LOCATION, location.clone());
        }
        res.headers_mut().insert("x-backend", HeaderValue::from_str(&key).expect("ascii key"));
        let seen = Seen {
            cookies: req.headers().get_all(COOKIE).iter().cloned().collect(),
            uri: req.uri().clone(),
        };
        res.extensions_mut().insert(seen);
        ServedBy(key).insert(res.extensions_mut());
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let svc = tower::Layer::layer(layer, backend);
    let mut res = svc
        .oneshot(req)
        .now_or_never()
        .expect("the stand-in balancer is always ready")
        .expect("infallible");
    let seen = res.extensions_mut().remove::<Seen>().expect("the backend was called");
    assert!(res.extensions().get::<ServedBy<String>>().is_none(), "ServedBy leaked");
    (res, seen)
}

fn layers() -> &'static [SessionPersistenceLayer<String>; 5] {
    static LAYERS: OnceLock<[SessionPersistenceLayer<String>; 5]> = OnceLock::new();
    LAYERS.get_or_init(|| {
        let policy = || SessionPolicy::cookie(NAME).build().expect("valid policy");
        let layer = |sealed_codec: bool| {
            if sealed_codec {
                SessionPersistenceLayer::new(policy(), sealed().clone()).scope(SCOPE)
            } else {
                SessionPersistenceLayer::new(policy(), signed().clone()).scope(SCOPE)
            }
        };
        [
            layer(false),
            layer(true),
            layer(false).strategy(Rewrite::new()),
            layer(false).strategy(Prefix),
            layer(false).strategy(Insert::new().preserve(true)),
        ]
    })
}

fn url_layers() -> &'static [SessionPersistenceLayer<String>; 2] {
    static LAYERS: OnceLock<[SessionPersistenceLayer<String>; 2]> = OnceLock::new();
    LAYERS.get_or_init(|| {
        let layer = || {
            SessionPersistenceLayer::new(
                SessionPolicy::cookie(NAME).build().expect("valid"),
                signed().clone(),
            )
            .scope(SCOPE)
        };
        [layer().strategy(Url::path_parameter()), layer().strategy(Url::query())]
    })
}

/// The name of a `name=value` pair as the `cookie` crate reads it, if it parses.
fn pair_name(pair: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(pair).ok()?;
    cookie::Cookie::parse(text.trim()).ok().map(|c| c.name().to_owned())
}

/// The pairs of some `Cookie` fields, trimmed of ASCII whitespace, without empty ones.
fn pairs(fields: &[HeaderValue]) -> Vec<&[u8]> {
    fields
        .iter()
        .flat_map(|f| f.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .collect()
}

fn set_cookie_name(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
    pair_name(&bytes[..end])
}

/// (a) Every decoder on arbitrary text, and on a valid token changed by the input.
pub fn token_decode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let b = binding();
    for claims in [signed().decode(&text, b), sealed().decode(&text, b)].into_iter().flatten() {
        // Only a token one of us wrote can verify: the harness writes no other claims.
        assert!(text.len() <= 1024);
        assert_eq!(claims, pinned_claims(), "forged: {text:?}");
    }
    for dates in [Dates::None, Dates::Last, Dates::LastAndFirst] {
        if let Some(claims) = PlainCodec::new(dates).decode(&text, b) {
            assert!(!claims.endpoint.is_empty());
            assert!(!claims.endpoint.contains(&b'|'));
            assert!(text.as_bytes().starts_with(&claims.endpoint));
        }
    }
    // The input as a mask over a valid token: any change must be refused.
    for sealed_codec in [false, true] {
        let valid = token(sealed_codec).as_bytes();
        let mut mutated = valid.to_vec();
        for (i, byte) in data.iter().enumerate().take(4 * valid.len()) {
            mutated[i % valid.len()] ^= byte;
        }
        // A tail beyond the mask extends the token.
        if data.len() > 4 * valid.len() {
            mutated.extend_from_slice(&data[4 * valid.len()..]);
        }
        let Ok(mutated) = std::str::from_utf8(&mutated) else { continue };
        let decoded =
            if sealed_codec { sealed().decode(mutated, b) } else { signed().decode(mutated, b) };
        if mutated.as_bytes() == valid {
            assert!(decoded.is_some());
        } else if let Some(claims) = decoded {
            // A signed token is deterministic: another text that verifies is a forgery. A
            // sealed token from an earlier run (another nonce, kept by the fuzzer) is genuine,
            // and says exactly what every harness token says; anything else is a forgery.
            assert!(sealed_codec, "a changed signed token verified: {mutated:?}");
            assert_eq!(claims, pinned_claims(), "a changed sealed token verified: {mutated:?}");
        }
        // Truncations of the valid token never verify.
        let cut = data.first().map_or(0, |&n| usize::from(n) % valid.len());
        let truncated = std::str::from_utf8(&valid[..cut]).expect("base64 is ASCII");
        let decoded = if sealed_codec {
            sealed().decode(truncated, b)
        } else {
            signed().decode(truncated, b)
        };
        assert_eq!(decoded, None);
    }
}

/// (b) `Cookie` fields of arbitrary bytes (the input split at `\n`, `@T` a valid token),
/// through the layer with `Insert` (indirect) and each codec.
pub fn cookie_header(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let index = usize::from(selector % 2);
    let sealed_codec = index == 1;
    let expanded = with_tokens(rest, token(sealed_codec));
    let fields: Vec<HeaderValue> = expanded
        .split(|&b| b == b'\n')
        .take(16)
        .filter_map(|f| HeaderValue::from_bytes(f).ok())
        .collect();
    let mut req = Request::new(());
    for field in &fields {
        req.headers_mut().append(COOKIE, field.clone());
    }
    let (res, seen) = run(&layers()[index], req, Vec::new(), None);

    let decision = *res.extensions().get::<Decision>().expect("every balanced response has one");
    let backend = res.headers()["x-backend"].to_str().expect("ascii");
    let ours: Vec<&[u8]> =
        pairs(&fields).into_iter().filter(|p| pair_name(p).as_deref() == Some(NAME)).collect();
    // The first of our pairs decides; no pair, no session.
    match ours.first() {
        None => assert_eq!(decision, Decision::New),
        Some(_) if decision == Decision::Pinned => assert_eq!(backend, PINNED),
        Some(_) => {
            assert!(matches!(decision, Decision::Invalid), "{decision:?}");
            assert_eq!(backend, DEFAULT);
        }
    }
    // A session is issued unless one was honoured.
    let issued = res.headers().get_all(SET_COOKIE).iter().count();
    assert_eq!(issued, usize::from(decision != Decision::Pinned));
    // Indirect: none of our pairs reaches the backend; every other pair does, in order.
    let theirs = |fields: &[HeaderValue]| -> Vec<Vec<u8>> {
        pairs(fields)
            .into_iter()
            .filter(|p| pair_name(p).as_deref() != Some(NAME))
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert!(pairs(&seen.cookies).iter().all(|p| pair_name(p).as_deref() != Some(NAME)));
    assert_eq!(theirs(&seen.cookies), theirs(&fields));
    if ours.is_empty() {
        assert_eq!(seen.cookies, fields, "untouched when our cookie is absent");
    }
}

/// (c) A backend's `Set-Cookie` headers of arbitrary bytes (split at `\n`) through the layer
/// with `Insert`, `Insert` + `preserve`, `Rewrite` and `Prefix`, with and without a session.
pub fn set_cookie(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let index = [0, 2, 3, 4][usize::from(selector % 4)];
    let with_session = selector & 4 != 0;
    let headers: Vec<HeaderValue> = rest
        .split(|&b| b == b'\n')
        .take(16)
        .filter_map(|h| HeaderValue::from_bytes(h).ok())
        .collect();
    let mut req = Request::new(());
    if with_session {
        let cookie = format!("{NAME}={}", token(false));
        req.headers_mut().insert(COOKIE, HeaderValue::from_str(&cookie).expect("valid"));
    }
    let (res, _) = run(&layers()[index], req, headers.clone(), None);
    let out: Vec<&HeaderValue> = res.headers().get_all(SET_COOKIE).iter().collect();
    let is_ours = |h: &HeaderValue| set_cookie_name(h).as_deref() == Some(NAME);

    // Headers for other cookies are never touched: the same bytes, in the same order.
    let others_in: Vec<&HeaderValue> = headers.iter().filter(|h| !is_ours(h)).collect();
    let others_out: Vec<&HeaderValue> = out.iter().copied().filter(|h| !is_ours(h)).collect();
    assert_eq!(others_in, others_out);

    let ours_in: Vec<&HeaderValue> = headers.iter().filter(|h| is_ours(h)).collect();
    let ours_out: Vec<&HeaderValue> = out.iter().copied().filter(|h| is_ours(h)).collect();
    let value = |h: &HeaderValue| -> Vec<u8> {
        let bytes = h.as_bytes();
        let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
        let pair = std::str::from_utf8(&bytes[..end]).expect("our pairs are UTF-8");
        let (_, value) = pair.split_once('=').expect("a parsed pair has '='");
        value.trim().as_bytes().to_vec()
    };
    let attributes = |h: &HeaderValue| -> Vec<u8> {
        let bytes = h.as_bytes();
        bytes[bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len())..].to_vec()
    };
    match index {
        // Insert: the backend's own cookie of our name goes; ours is appended when due.
        0 => {
            assert!(ours_out.len() <= 1);
            assert_eq!(ours_out.len(), usize::from(!with_session));
            if let Some(last) = ours_out.first() {
                assert_eq!(out.last(), Some(last), "ours comes last");
            }
        }
        // Insert + preserve: the backend's cookie wins and nothing is added.
        4 if !ours_in.is_empty() => assert_eq!(ours_in, ours_out),
        4 => assert_eq!(ours_out.len(), usize::from(!with_session)),
        // Rewrite and Prefix: each of the backend's headers keeps its place and attributes.
        _ => {
            assert_eq!(ours_in.len(), ours_out.len());
            for (before, after) in ours_in.iter().zip(&ours_out) {
                assert_eq!(attributes(before), attributes(after));
                let (old, new) = (value(before), value(after));
                let tok = new.split(|&b| b == b'~').next().unwrap_or_default().to_vec();
                assert!(
                    signed().decode(std::str::from_utf8(&tok).expect("ascii"), binding()).is_some(),
                    "the value starts with a valid token"
                );
                if index == 3 {
                    assert_eq!(&new[tok.len() + 1..], &old[..], "prefix keeps the value");
                } else {
                    assert_eq!(new, tok, "rewrite replaces the value");
                }
            }
        }
    }
}

/// (d) Arbitrary request targets (`@T` a valid token) through the layer with
/// `Url::path_parameter()` and `Url::query()`; the backend redirects to the same target.
pub fn url_params(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let index = usize::from(selector % 2);
    let expanded = with_tokens(rest, token(false));
    let Ok(uri) = Uri::try_from(expanded.as_slice()) else { return };
    let location = HeaderValue::from_bytes(&expanded).ok();
    let mut req = Request::new(());
    *req.uri_mut() = uri.clone();
    let (res, seen) = run(&url_layers()[index], req, Vec::new(), location);

    let decision = *res.extensions().get::<Decision>().expect("balanced");
    let target = uri.path_and_query().map_or("", |pq| pq.as_str());
    let mentions = target.contains("sid=");
    if !mentions {
        assert_eq!(decision, Decision::New);
        assert_eq!(seen.uri, uri, "a URL without our parameter is passed on as it is");
    }
    if decision == Decision::Pinned {
        assert_eq!(res.headers()["x-backend"], PINNED);
    }
    // Stripped: our parameter never reaches the backend.
    let seen_target = seen.uri.path_and_query().map_or("", |pq| pq.as_str());
    let (path, query) = seen_target.split_once('?').unwrap_or((seen_target, ""));
    let ours = |param: &str| param.split_once('=').is_some_and(|(k, _)| k == NAME);
    if index == 0 {
        assert!(!path.split('/').flat_map(|s| s.split(';').skip(1)).any(ours), "{seen_target}");
    } else {
        assert!(!query.split('&').any(ours), "{seen_target}");
    }
    // A redirect of a new session carries exactly one of our parameters, with a valid token.
    if decision != Decision::Pinned
        && let Some(location) = res.headers().get(LOCATION).and_then(|l| l.to_str().ok())
    {
        let rest = location.split('#').next().unwrap_or_default();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let found: Vec<&str> = if index == 0 {
            path.split('/').flat_map(|s| s.split(';').skip(1)).filter(|p| ours(p)).collect()
        } else {
            query.split('&').filter(|p| ours(p)).collect()
        };
        assert_eq!(found.len(), 1, "{location}");
        let token = &found[0][NAME.len() + 1..];
        let claims = signed().decode(token, binding()).expect("a valid token in the Location");
        assert_eq!(claims.endpoint, DEFAULT.as_bytes());
    }
}

/// (e) Arbitrary YAML and JSON into the Gateway API stanza; a policy that builds is valid.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = [
        serde_json::from_str::<SessionPersistenceConfig>(text).ok(),
        serde_norway::from_str::<SessionPersistenceConfig>(text).ok(),
    ];
    for config in parsed.into_iter().flatten() {
        match config.to_policy("default-name") {
            Ok(policy) => {
                let name = policy.name();
                assert!(!name.is_empty() && name.len() <= 256);
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b))
                );
            }
            Err(err) => assert!(!err.field().is_empty() && !err.rule().is_empty()),
        }
    }
}

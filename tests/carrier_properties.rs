//! Property tests for the URL and `Set-Cookie` carriers, through the layer: whatever the rest
//! of the URL or the backend's cookie attributes are, the session is found, removed or
//! written, and every other byte stays as it was.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::strategy::{Prefix, Rewrite, Url};
use tower_session_persistence::token::{Binding, Claims, Codec, SignedCodec};
use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};

fn codec() -> SignedCodec {
    SignedCodec::new([[4u8; 32]]).unwrap()
}

fn token(name: &str, endpoint: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims =
        Claims { endpoint: endpoint.as_bytes().to_vec(), issued: Some(now), refreshed: Some(now) };
    codec().encode(&claims, Binding { name, scope: name }).unwrap()
}

/// Answers with the URI it got in the body, `Set-Cookie` headers copied from the request's
/// `x-respond-set-cookie` headers, and `ServedBy` the pinned endpoint or "pod-a".
fn backend(mut req: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    let key =
        PinnedEndpoint::<String>::take(req.extensions_mut()).map_or("pod-a".to_owned(), |p| p.0);
    let mut res = Response::new(req.uri().to_string());
    for value in req.headers().get_all("x-respond-set-cookie") {
        res.headers_mut().append("set-cookie", value.clone());
    }
    res.headers_mut().insert("x-backend", key.parse().unwrap());
    ServedBy(key).insert(res.extensions_mut());
    std::future::ready(Ok(res))
}

fn run(layer: &SessionPersistenceLayer<String>, req: Request<()>) -> Response<String> {
    layer.layer(service_fn(backend)).oneshot(req).now_or_never().expect("ready").unwrap()
}

/// A path segment or parameter text without the separators of the URL grammar.
fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~%-]{1,8}"
}

/// A path of 1 to 4 segments, some with path parameters of other names.
fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (word(), prop::option::of((word(), word()))).prop_map(|(segment, param)| match param {
            Some((k, v)) if k != "jsessionid" => format!("{segment};{k}={v}"),
            _ => segment,
        }),
        1..4,
    )
}

fn query() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (word(), prop::option::of(word()))
            .prop_filter("not ours", |(k, _)| k != "session")
            .prop_map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            }),
        0..4,
    )
}

/// Attributes a backend might put after its cookie's value, known or not.
fn attributes() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("Path=/".to_owned()),
            Just("HttpOnly".to_owned()),
            Just("Secure".to_owned()),
            Just("SameSite=Lax".to_owned()),
            Just("Max-Age=3600".to_owned()),
            "[A-Za-z-]{1,10}=[A-Za-z0-9 ,:/-]{0,12}",
            "[A-Za-z-]{1,10}",
        ],
        0..5,
    )
    .prop_flat_map(|attrs| {
        // Any of the separator spellings seen in the wild.
        prop::sample::select(vec!["; ", ";", " ; "])
            .prop_map(move |sep| attrs.iter().map(|a| format!("{sep}{a}")).collect::<String>())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_path_parameter_session_is_found_and_the_rest_of_the_url_kept(
        segments in path(), at in any::<prop::sample::Index>(), query in query(),
    ) {
        let layer = SessionPersistenceLayer::<String>::new(SessionPolicy::cookie("jsessionid").build().unwrap(), codec())
            .strategy(Url::path_parameter());
        let original = format!(
            "/{}{}",
            segments.join("/"),
            if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) },
        );
        let i = at.index(segments.len());
        let mut with = segments.clone();
        with[i] = format!("{};jsessionid={}", with[i], token("jsessionid", "pod-7"));
        let target = format!(
            "/{}{}",
            with.join("/"),
            if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) },
        );
        let res = run(&layer, Request::builder().uri(&target).body(()).unwrap());
        prop_assert_eq!(&res.headers()["x-backend"], "pod-7");
        prop_assert_eq!(res.body(), &original);
    }

    #[test]
    fn a_query_session_is_found_and_the_rest_of_the_query_kept(
        segments in path(), query in query(), at in any::<prop::sample::Index>(),
    ) {
        let layer = SessionPersistenceLayer::<String>::new(SessionPolicy::cookie("session").build().unwrap(), codec())
            .strategy(Url::query());
        let original = format!(
            "/{}{}",
            segments.join("/"),
            if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) },
        );
        let mut with = query.clone();
        with.insert(at.index(query.len() + 1), format!("session={}", token("session", "pod-3")));
        let target = format!("/{}?{}", segments.join("/"), with.join("&"));
        let res = run(&layer, Request::builder().uri(&target).body(()).unwrap());
        prop_assert_eq!(&res.headers()["x-backend"], "pod-3");
        prop_assert_eq!(res.body(), &original);
    }

    #[test]
    fn rewrite_and_prefix_splice_the_value_and_keep_every_attribute_byte_exact(
        value in "[A-Za-z0-9._-]{1,12}", attrs in attributes(), other in attributes(),
    ) {
        let ours = format!("JSESSIONID={value}{attrs}");
        let theirs = format!("other=1{other}");
        for prefix in [false, true] {
            let layer = SessionPersistenceLayer::<String>::new(SessionPolicy::cookie("JSESSIONID").build().unwrap(), codec());
            let layer = if prefix { layer.strategy(Prefix) } else { layer.strategy(Rewrite::new()) };
            let req = Request::builder()
                .header("x-respond-set-cookie", HeaderValue::from_str(&theirs).unwrap())
                .header("x-respond-set-cookie", HeaderValue::from_str(&ours).unwrap())
                .body(())
                .unwrap();
            let res = run(&layer, req);
            let all: Vec<&str> = res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
            prop_assert_eq!(all.len(), 2);
            prop_assert_eq!(all[0], theirs.as_str(), "another cookie is untouched");
            let rest = all[1].strip_prefix("JSESSIONID=").unwrap();
            let (new_value, kept) = rest.split_at(rest.len() - attrs.len());
            prop_assert_eq!(kept, attrs.as_str(), "attributes byte-exact");
            if prefix {
                let (id, app) = new_value.split_once('~').unwrap();
                prop_assert_eq!(app, value.as_str());
                prop_assert!(!id.is_empty());
            } else {
                prop_assert_ne!(new_value, value.as_str());
            }
        }
    }
}

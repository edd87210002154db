//! The layer's configuration API as a user meets it: setters on clones, strategies that carry
//! state from the request to the response, key rotation, and lifetimes at the edge of
//! `Duration`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response, request, response};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_session_persistence::policy::{Lifetime, SessionPolicy};
use tower_session_persistence::strategy::{Reply, Strategy};
use tower_session_persistence::token::{Binding, Claims, Codec, Dates, PlainCodec};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

/// A balancer stand-in: honours the pin, otherwise `pod-a`.
fn balancer() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|mut req: Request<()>| async move {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or("pod-a".to_owned(), |p| p.0);
        let mut res = Response::new(());
        ServedBy(key).insert(res.extensions_mut());
        Ok::<_, Infallible>(res)
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn set_cookie(res: &Response<()>) -> Option<&str> {
    res.headers().get("set-cookie").map(|v| v.to_str().unwrap())
}

fn cookie_pair(res: &Response<()>) -> String {
    set_cookie(res).expect("a cookie").split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn setters_on_a_clone_never_panic_and_change_only_the_clone() {
    let layer = SessionPersistenceLayer::new(
        SessionPolicy::cookie("sid").build().unwrap(),
        PlainCodec::default(),
    );
    // A service made from the layer shares its settings; configuring the layer afterwards
    // must neither panic nor change that service.
    let before = layer.layer(balancer());
    let cart = layer.clone().scope("cart").max_clock_skew(Duration::ZERO);
    let checkout = layer.clone().scope("checkout");
    assert_eq!(layer.get_scope(), "sid");
    assert_eq!(cart.get_scope(), "cart");
    assert_eq!(checkout.get_scope(), "checkout");
    let res = before.oneshot(Request::new(())).await.unwrap();
    assert_eq!(set_cookie(&res).map(|c| c.starts_with("sid=pod-a")), Some(true));
}

/// Answers in the header the client used: `x-a` or `x-b` (the state), `x-a` for new clients.
#[derive(Debug)]
struct SameHeader;

impl Strategy for SameHeader {
    type State = &'static str;

    fn on_request(
        &self,
        _: &SessionPolicy,
        req: &mut request::Parts,
    ) -> (Option<String>, Self::State) {
        for name in ["x-a", "x-b"] {
            if let Some(value) = req.headers.remove(name) {
                return (value.to_str().ok().map(str::to_owned), name);
            }
        }
        (None, "x-a")
    }

    fn on_response(
        &self,
        _: &SessionPolicy,
        res: &mut response::Parts,
        reply: &Reply<'_>,
        used: Self::State,
    ) {
        // Answers on every response, due or not, so that the test sees the state each time.
        if let Some(token) = reply.token() {
            res.headers.insert(used, HeaderValue::try_from(token).unwrap());
        }
    }
}

#[tokio::test]
async fn a_strategy_carries_its_state_from_request_to_response() {
    let policy = SessionPolicy::cookie("sid").build().unwrap();
    let layer = SessionPersistenceLayer::new(policy, PlainCodec::default()).strategy(SameHeader);
    let svc = layer.layer(balancer());
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.headers()["x-a"], "pod-a");
    for name in ["x-b", "x-a", "x-b"] {
        let req = Request::builder().header(name, "pod-z").body(()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
        assert_eq!(res.headers()[name], "pod-z", "answered in {name}");
        assert_eq!(res.headers().len(), 1, "and only there");
    }
}

#[cfg(feature = "signed")]
#[tokio::test]
async fn a_signed_token_under_an_old_key_is_reissued_under_the_primary_on_its_next_response() {
    use tower_session_persistence::token::SignedCodec;
    rotation(|keys: &[[u8; 32]]| SignedCodec::new(keys.iter().copied()).unwrap()).await;
}

#[cfg(feature = "sealed")]
#[tokio::test]
async fn a_sealed_token_under_an_old_key_is_reissued_under_the_primary_on_its_next_response() {
    use tower_session_persistence::token::SealedCodec;
    rotation(|keys: &[[u8; 32]]| SealedCodec::new(keys.iter().copied()).unwrap()).await;
}

/// No timeouts, so no refresh is ever due: only the rotation can make the layer write again.
#[allow(dead_code)]
async fn rotation<C: Codec>(codec: impl Fn(&[[u8; 32]]) -> C) {
    const OLD: [u8; 32] = [1; 32];
    const NEW: [u8; 32] = [2; 32];
    let binding = Binding { name: "sid", scope: "shop" };
    let policy = || SessionPolicy::cookie("sid").build().unwrap();
    let layer = |keys: &[[u8; 32]]| {
        SessionPersistenceLayer::new(policy(), codec(keys)).scope("shop").layer(balancer())
    };

    // A session issued before the rotation, on pod-b.
    let t = now() - 100;
    let claims = Claims { endpoint: b"pod-b".to_vec(), issued: Some(t), refreshed: Some(t) };
    let old_token = codec(&[OLD]).encode(&claims, binding).unwrap();
    let send = |svc: &_, token: &str| {
        let svc: &tower_session_persistence::SessionPersistence<_> = svc;
        let req = Request::builder().header("cookie", format!("sid={token}")).body(()).unwrap();
        svc.clone().oneshot(req)
    };

    // Before the rotation, the token is honoured and nothing is written.
    let res = send(&layer(&[OLD]), &old_token).await.unwrap();
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
    assert_eq!(set_cookie(&res), None);

    // Rotated: the new key signs, the old one still verifies. The very next response re-issues.
    let rotated = layer(&[NEW, OLD]);
    let res = send(&rotated, &old_token).await.unwrap();
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
    let pair = cookie_pair(&res);
    let new_token = pair.strip_prefix("sid=").unwrap();
    let decoded = codec(&[NEW]).decode(new_token, binding).expect("written under the new key");
    assert_eq!(decoded.endpoint, b"pod-b", "same endpoint");
    assert_eq!(decoded.issued, Some(t), "same session: its absolute lifetime is kept");
    assert_eq!(codec(&[OLD]).decode(new_token, binding), None);

    // Under the new key, nothing more is written.
    let res = send(&rotated, new_token).await.unwrap();
    assert_eq!(set_cookie(&res), None);
    // And once the old key is dropped, the session still holds.
    let res = send(&layer(&[NEW]), new_token).await.unwrap();
    assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned));
}

#[tokio::test]
async fn an_absolute_timeout_near_duration_max_is_the_longest_max_age_never_a_deletion() {
    for timeout in
        [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(i64::MAX as u64)]
    {
        for dates in [Dates::None, Dates::LastAndFirst] {
            let policy = SessionPolicy::cookie("sid")
                .lifetime(Lifetime::Permanent)
                .absolute_timeout(timeout)
                .idle_timeout(timeout)
                .build()
                .unwrap();
            let svc =
                SessionPersistenceLayer::new(policy, PlainCodec::new(dates)).layer(balancer());
            let res = svc.clone().oneshot(Request::new(())).await.unwrap();
            let cookie = set_cookie(&res).unwrap().to_owned();
            let max_age = cookie.split("; ").find_map(|a| a.strip_prefix("Max-Age=")).unwrap();
            assert!(max_age.parse::<u64>().unwrap() >= i64::MAX as u64 - now(), "{cookie}");
            // The token it wrote is honoured.
            let req = Request::builder()
                .header("cookie", cookie.split(';').next().unwrap())
                .body(())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.extensions().get::<Decision>(), Some(&Decision::Pinned), "{cookie}");
        }
    }
}

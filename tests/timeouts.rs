//! Timeouts against a model: `absoluteTimeout` from the first issue, `idleTimeout` from the
//! last refresh, tokens from the future beyond the clock skew, rolling refresh at most once per
//! interval, and `Max-Age` for permanent cookies; properties over arbitrary ages and timeouts,
//! and the boundaries one by one.
//!
//! The model is written apart from the implementation (it follows the timeline in
//! milliseconds, and finds `Max-Age` by counting), and is itself checked against examples
//! worked out by hand.
//!
//! The layer reads the wall clock; the tests set the token's dates relative to it and skip the
//! rare case whose second changed during the call.

// Without its feature this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(feature = "sealed"))]
compile_error!(
    "tests/timeouts.rs needs the feature sealed (on by default): run it with default features"
);

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use http::{Request, Response};
use proptest::prelude::*;
use tower::{ServiceExt as _, service_fn};
use tower_session_persistence::policy::{Lifetime, SessionPolicy};
use tower_session_persistence::token::{Binding, Claims, Codec, SealedCodec};
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const B: Binding<'static> = Binding { name: "sid", scope: "sid" };
const SKEW: u64 = 60;

fn codec() -> SealedCodec {
    SealedCodec::new([[3; 32]]).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    absolute: Option<Duration>,
    idle: Option<Duration>,
    refresh: Option<Duration>,
    permanent: bool,
}

fn layer(setup: Setup) -> SessionPersistenceLayer<String> {
    let mut policy = SessionPolicy::cookie("sid");
    if let Some(t) = setup.absolute {
        policy = policy.absolute_timeout(t);
    }
    if let Some(t) = setup.idle {
        policy = policy.idle_timeout(t);
    }
    if setup.permanent {
        policy = policy.lifetime(Lifetime::Permanent);
    }
    let layer = SessionPersistenceLayer::new(policy.build().unwrap(), codec());
    match setup.refresh {
        Some(every) => layer.refresh_interval(every),
        None => layer,
    }
}

struct Outcome {
    decision: Decision,
    /// The claims of the token the layer wrote, if any.
    written: Option<Claims>,
    max_age: Option<i64>,
    /// The wall clock, which did not change during the call.
    now: u64,
}

/// Sends a token dated `issued_ago`/`refreshed_ago` seconds before now (negative: in the
/// future) for `pod-b`; `None` if the clock ticked during the call.
fn send(setup: Setup, issued_ago: i64, refreshed_ago: i64) -> Option<Outcome> {
    let before = now();
    let at = |ago: i64| before.checked_add_signed(-ago).unwrap();
    let claims = Claims {
        endpoint: b"pod-b".to_vec(),
        issued: Some(at(issued_ago)),
        refreshed: Some(at(refreshed_ago)),
    };
    let token = codec().encode(&claims, B).unwrap();
    let backend = service_fn(|mut req: Request<()>| {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or("pod-a".to_owned(), |p| p.0);
        let mut res = Response::new(());
        ServedBy(key).insert(res.extensions_mut());
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let svc = tower::Layer::layer(&layer(setup), backend);
    let req = Request::builder().header("cookie", format!("sid={token}")).body(()).unwrap();
    let res = svc.oneshot(req).now_or_never().unwrap().unwrap();
    if now() != before {
        return None;
    }
    let set_cookie = res.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    let parsed = set_cookie.map(|c| cookie::Cookie::parse(c).unwrap());
    Some(Outcome {
        decision: *res.extensions().get::<Decision>().unwrap(),
        written: parsed.as_ref().and_then(|c| codec().decode(c.value(), B)),
        max_age: parsed.as_ref().and_then(|c| c.max_age()).map(|d| d.whole_seconds()),
        now: before,
    })
}

/// A timeout in milliseconds (every timeout here is a whole number of them).
fn ms(t: Duration) -> i64 {
    i64::try_from(t.as_millis()).unwrap()
}

/// The model of what the layer must decide, written apart from the implementation: it follows
/// the timeline in milliseconds. A token's dates are whole seconds, so at a whole second `now`
/// a date `ago` seconds back is `ago * 1000` ms old; a session is over once an age reaches its
/// timeout.
fn expected(setup: Setup, issued_ago: i64, refreshed_ago: i64) -> Decision {
    // Refreshed before it was issued, or dated further ahead than the allowed skew: not a
    // token the layer wrote.
    if refreshed_ago > issued_ago || issued_ago < -(SKEW as i64) || refreshed_ago < -(SKEW as i64) {
        return Decision::Invalid;
    }
    let reached =
        |ago: i64, timeout: Option<Duration>| timeout.is_some_and(|t| ago * 1000 >= ms(t));
    if reached(issued_ago, setup.absolute) || reached(refreshed_ago, setup.idle) {
        return Decision::Expired;
    }
    Decision::Pinned
}

/// Whether the model re-writes a session it keeps: once more time than the refresh interval
/// has passed since the last refresh. The interval is the one set, else a quarter of the idle
/// timeout (`4 × age > idle`), else there is none.
fn refresh_due(setup: Setup, refreshed_ago: i64) -> bool {
    let age = refreshed_ago * 1000;
    match (setup.refresh, setup.idle) {
        (Some(every), _) => age > ms(every),
        (None, Some(idle)) => 4 * age > ms(idle),
        (None, None) => false,
    }
}

/// The `Max-Age` of a permanent cookie in the model: the fewest whole seconds from `now` that
/// reach the end of the session's absolute lifetime (counted by trying them in turn).
fn max_age(issued: u64, absolute: Duration, now: u64) -> i64 {
    let end = issued as i64 * 1000 + ms(absolute);
    (0..).find(|m| now as i64 * 1000 + m * 1000 >= end).unwrap()
}

#[test]
fn the_model_agrees_with_worked_examples() {
    let absolute = |t| Setup { absolute: Some(t), ..NONE };
    let idle = |t| Setup { idle: Some(t), ..NONE };
    let (secs, millis) = (Duration::from_secs, Duration::from_millis);
    // (setup, issued ago, refreshed ago, decision), worked out by hand.
    let cases = [
        (absolute(secs(60)), 59, 0, Decision::Pinned),
        (absolute(secs(60)), 60, 0, Decision::Expired),
        (absolute(millis(500)), 0, 0, Decision::Pinned),
        (absolute(millis(500)), 1, 1, Decision::Expired),
        (absolute(millis(1500)), 1, 0, Decision::Pinned),
        (absolute(millis(1500)), 2, 0, Decision::Expired),
        (idle(secs(600)), 10_000, 599, Decision::Pinned),
        (idle(secs(600)), 10_000, 600, Decision::Expired),
        (idle(millis(1)), 0, 0, Decision::Pinned),
        (idle(millis(1)), 1, 1, Decision::Expired),
        (NONE, 20_000, 20_000, Decision::Pinned),
        (NONE, -60, -60, Decision::Pinned),
        (NONE, -61, 0, Decision::Invalid),
        (NONE, 0, -61, Decision::Invalid),
        (NONE, 5, 6, Decision::Invalid),
    ];
    for (setup, issued_ago, refreshed_ago, decision) in cases {
        assert_eq!(
            expected(setup, issued_ago, refreshed_ago),
            decision,
            "{setup:?} {issued_ago} {refreshed_ago}"
        );
    }
    // Refresh: a quarter of 400 s is 100 s; of 1001 ms, 250.25 ms; or 30 s when set.
    let refreshing = Setup { refresh: Some(secs(30)), ..idle(secs(400)) };
    let due = [
        (idle(secs(400)), 100, false),
        (idle(secs(400)), 101, true),
        (idle(millis(1001)), 0, false),
        (idle(millis(1001)), 1, true),
        (refreshing, 30, false),
        (refreshing, 31, true),
        (NONE, 20_000, false),
    ];
    for (setup, ago, is_due) in due {
        assert_eq!(refresh_due(setup, ago), is_due, "{setup:?} {ago}");
    }
    // Max-Age: 1 h issued 100 s ago leaves 3500 s; 1.5 s just issued needs 2 s; 500 ms
    // issued 1 s ago is over, 0 s.
    assert_eq!(max_age(1000, secs(3600), 1100), 3500);
    assert_eq!(max_age(1000, millis(1500), 1000), 2);
    assert_eq!(max_age(1000, millis(500), 1001), 0);
}

fn timeout() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of(prop_oneof![
        (1u64..5_000).prop_map(Duration::from_millis),
        (1u64..20_000).prop_map(Duration::from_secs),
    ])
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        timeout(),
        timeout(),
        prop::option::of((0u64..3_000).prop_map(Duration::from_secs)),
        any::<bool>(),
    )
        .prop_map(|(absolute, idle, refresh, permanent)| Setup {
            absolute,
            idle,
            refresh,
            permanent: permanent && absolute.is_some(),
        })
}

/// Ages that often land on a timeout's boundary.
fn age(setup: Setup) -> impl Strategy<Value = i64> {
    let marks: Vec<i64> = [setup.absolute, setup.idle, setup.refresh]
        .into_iter()
        .flatten()
        .map(|t| ms(t).div_euclid(1000) + 1)
        .collect();
    let near = if marks.is_empty() {
        Just(0i64).boxed()
    } else {
        (prop::sample::select(marks), -1i64..=1).prop_map(|(m, d)| m + d).boxed()
    };
    prop_oneof![near, -200i64..25_000]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_layer_follows_the_model(
        (setup, issued_ago, refreshed_ago) in setup().prop_flat_map(|s| (Just(s), age(s), age(s)))
    ) {
        let Some(out) = send(setup, issued_ago, refreshed_ago) else {
            return Err(TestCaseError::reject("the clock ticked"));
        };
        let decision = expected(setup, issued_ago, refreshed_ago);
        prop_assert_eq!(out.decision, decision);
        match decision {
            Decision::Pinned => {
                // Rolling refresh: re-issued only once the interval has passed since the last
                // refresh.
                prop_assert_eq!(out.written.is_some(), refresh_due(setup, refreshed_ago));
                if let Some(claims) = &out.written {
                    prop_assert_eq!(&claims.endpoint, b"pod-b");
                    prop_assert_eq!(claims.issued, Some(out.now - issued_ago as u64), "the issue time stays");
                    prop_assert_eq!(claims.refreshed, Some(out.now));
                }
            }
            _ => {
                // A new session for the endpoint that served: issued now.
                let claims = out.written.as_ref().expect("a new session");
                prop_assert_eq!(&claims.endpoint, b"pod-a");
                prop_assert_eq!(claims.issued, Some(out.now));
            }
        }
        // A permanent cookie lives exactly as long as the session has left.
        if let (true, Some(claims), Some(absolute)) = (setup.permanent, &out.written, setup.absolute) {
            let left = max_age(claims.issued.unwrap(), absolute, out.now);
            prop_assert_eq!(out.max_age, Some(left));
            prop_assert!(left >= 1, "never Max-Age=0, which deletes the cookie");
        }
    }
}

/// Retries a call whose clock ticked.
fn send_now(setup: Setup, issued_ago: i64, refreshed_ago: i64) -> Outcome {
    (0..10).find_map(|_| send(setup, issued_ago, refreshed_ago)).unwrap()
}

const NONE: Setup = Setup { absolute: None, idle: None, refresh: None, permanent: false };

#[test]
fn absolute_timeout_boundaries() {
    // (timeout, the last whole second of the session), worked out by hand.
    for (t, last) in [
        (Duration::from_millis(500), 0),
        (Duration::from_secs(1), 0),
        (Duration::from_millis(1500), 1),
        (Duration::from_secs(60), 59),
    ] {
        let setup = Setup { absolute: Some(t), ..NONE };
        assert_eq!(send_now(setup, last, 0).decision, Decision::Pinned, "{t:?} at {last}s");
        assert_eq!(
            send_now(setup, last + 1, 0).decision,
            Decision::Expired,
            "{t:?} at {}s",
            last + 1
        );
    }
}

#[test]
fn idle_timeout_boundaries() {
    for (t, last) in [
        (Duration::from_millis(500), 0),
        (Duration::from_secs(1), 0),
        (Duration::from_millis(1500), 1),
        (Duration::from_secs(600), 599),
    ] {
        let setup = Setup { idle: Some(t), ..NONE };
        assert_eq!(send_now(setup, 10_000, last).decision, Decision::Pinned, "{t:?} at {last}s");
        assert_eq!(send_now(setup, 10_000, last + 1).decision, Decision::Expired, "{t:?}");
    }
}

#[test]
fn a_sub_second_timeout_does_not_end_every_session_at_once() {
    // GEP-2257 allows `500ms`. Tokens count whole seconds, so such a session lasts until the
    // next second; it used to be expired on arrival, and a permanent cookie got `Max-Age=0`.
    let setup = Setup {
        absolute: Some(Duration::from_millis(500)),
        idle: Some(Duration::from_millis(500)),
        refresh: None,
        permanent: true,
    };
    let out = send_now(setup, 0, 0);
    assert_eq!(out.decision, Decision::Pinned);
    let out = send_now(setup, 1, 1);
    assert_eq!(out.decision, Decision::Expired);
    assert_eq!(out.max_age, Some(1), "a new permanent cookie is not a deletion");
}

#[test]
fn future_dates_within_the_skew_are_accepted() {
    let setup = Setup { absolute: Some(Duration::from_secs(3600)), ..NONE };
    assert_eq!(send_now(setup, -(SKEW as i64), -(SKEW as i64)).decision, Decision::Pinned);
    assert_eq!(send_now(setup, -(SKEW as i64) - 1, 0).decision, Decision::Invalid);
    assert_eq!(send_now(setup, 0, -(SKEW as i64) - 1).decision, Decision::Invalid);
}

#[test]
fn refresh_happens_at_most_once_per_interval() {
    let setup = Setup {
        idle: Some(Duration::from_secs(400)),
        refresh: Some(Duration::from_secs(30)),
        ..NONE
    };
    for ago in 0..=30 {
        assert!(send_now(setup, 1000, ago).written.is_none(), "refreshed {ago}s ago");
    }
    let out = send_now(setup, 1000, 31);
    let claims = out.written.expect("due");
    assert_eq!(claims.refreshed, Some(out.now));
    // Without an idle timeout or an interval, a valid token is never re-written.
    assert!(send_now(NONE, 20_000, 20_000).written.is_none());
}

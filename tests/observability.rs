//! What the layer tells the application and the logs: every decision (`new`, `pinned`,
//! `re-pinned`, `expired`, `invalid`, `rejected`) as a response extension and as a `tracing`
//! event with the endpoint and the scope, and never a token.
// Without its feature this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(feature = "tracing"))]
compile_error!(
    "tests/observability.rs needs the feature tracing (on by default): run it with default features"
);

use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::{Binding, Claims, Codec, SignedCodec};
use tower_session_persistence::{
    Decision, OnUnavailable, PinnedUnavailable, SessionPersistenceLayer,
};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const KEY: [u8; 32] = [3; 32];

/// The layer over the crate's balancer over two pods, with the balancer's errors turned into
/// responses beneath the layer, as the docs advise.
async fn stack(
    on_unavailable: OnUnavailable,
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone {
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b"] {
        let svc = service_fn(move |_: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(pod.to_owned()))
        });
        endpoints.insert(pod.to_owned(), svc);
    }
    let balancer = BalancerBuilder::new().group(1, discover).on_unavailable(on_unavailable).build();
    while balancer.len() < 2 {
        tokio::task::yield_now().await;
    }
    let policy = SessionPolicy::cookie("sid").absolute_timeout(Duration::from_secs(600)).build();
    let layer =
        SessionPersistenceLayer::<String>::new(policy.unwrap(), SignedCodec::new([KEY]).unwrap())
            .scope("rule-7");
    ServiceBuilder::new()
        .layer(layer)
        .map_result(|result: Result<Response<String>, BoxError>| {
            Ok::<_, BoxError>(result.unwrap_or_else(|error| {
                if error.is::<PinnedUnavailable>() {
                    return PinnedUnavailable::response();
                }
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::BAD_GATEWAY;
                res
            }))
        })
        .service(balancer)
}

/// A token for `endpoint` as the layer would have written it `age` ago.
fn token(endpoint: &str, age: Duration) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let at = now - age.as_secs();
    let claims = Claims { endpoint: endpoint.into(), issued: Some(at), refreshed: Some(at) };
    let binding = Binding { name: "sid", scope: "rule-7" };
    SignedCodec::new([KEY]).unwrap().encode(&claims, binding).unwrap()
}

async fn send<S>(svc: &S, token: Option<&str>) -> (Decision, Option<String>, Response<String>)
where
    S: Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone,
{
    let mut req = Request::builder();
    if let Some(token) = token {
        req = req.header("cookie", format!("theme=dark; sid={token}"));
    }
    let res = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
    let decision = *res.extensions().get::<Decision>().expect("every answer has a decision");
    let issued = res.headers().get("set-cookie").map(|v| {
        let pair = v.to_str().unwrap().split(';').next().unwrap();
        pair.strip_prefix("sid=").unwrap().to_owned()
    });
    (decision, issued, res)
}

#[tokio::test(flavor = "current_thread")]
async fn every_decision_is_an_extension_and_an_event_and_no_token_is_logged() {
    let captured = Captured::default();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish()
        .set_default();
    let rebalance = stack(OnUnavailable::Rebalance).await;
    let reject = stack(OnUnavailable::Reject).await;
    // Every token that travels, either way.
    let mut tokens = Vec::new();

    let (decision, issued, res) = send(&rebalance, None).await;
    assert_eq!(decision, Decision::New);
    let first = issued.expect("a new session");
    let pod = res.into_body();
    tokens.push(first.clone());

    let (decision, issued, res) = send(&rebalance, Some(&first)).await;
    assert_eq!((decision, issued, res.body()), (Decision::Pinned, None, &pod));

    let garbage = "garbage-token-0123456789";
    let (decision, issued, _) = send(&rebalance, Some(garbage)).await;
    assert_eq!(decision, Decision::Invalid);
    tokens.extend([garbage.to_owned(), issued.expect("a new session")]);

    let old = token(&pod, Duration::from_secs(3600));
    let (decision, issued, _) = send(&rebalance, Some(&old)).await;
    assert_eq!(decision, Decision::Expired);
    tokens.extend([old, issued.expect("a new session")]);

    // A session on an endpoint that is gone: moved under one policy, refused under the other.
    let gone = token("pod-z", Duration::ZERO);
    let (decision, issued, _) = send(&rebalance, Some(&gone)).await;
    assert_eq!(decision, Decision::Repinned);
    tokens.push(issued.expect("the session moves"));
    let (decision, issued, res) = send(&reject, Some(&gone)).await;
    assert_eq!(
        (decision, issued, res.status()),
        (Decision::Rejected, None, StatusCode::SERVICE_UNAVAILABLE)
    );
    tokens.push(gone);

    let logs = captured.text();
    for decision in ["new", "pinned", "re-pinned", "expired", "invalid", "rejected"] {
        assert!(logs.contains(&format!("decision={decision} ")), "no {decision} event in:\n{logs}");
    }
    assert!(logs.contains(&format!("endpoint={pod:?}")), "{logs}");
    assert!(logs.contains("decision=rejected endpoint=\"pod-z\" scope=rule-7"), "{logs}");
    assert!(logs.contains("decision=re-pinned endpoint=\"pod-"), "{logs}");
    assert!(logs.contains("previous=\"pod-z\" scope=rule-7"), "{logs}");
    for token in &tokens {
        assert!(!logs.contains(token.as_str()), "a token was logged: {token}\n{logs}");
    }
    assert!(!logs.contains("theme=dark"), "a cookie header was logged:\n{logs}");
}

//! The mistakes a new user makes say so at run time: a layer whose key type is not the
//! balancer's, and a layer over a service that tags nothing, each warn once. Alone in its
//! binary with a global subscriber: a scoped subscriber does not see call sites that other
//! tests' threads reached first with no subscriber (tracing caches "never").

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::PlainCodec;
use tower_session_persistence::{ServedBy, SessionPersistenceLayer};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

fn policy() -> SessionPolicy {
    SessionPolicy::cookie("sid").build().unwrap()
}

/// A balancer stand-in keyed by `String`, tagging every response.
fn string_keyed()
-> impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|_: Request<()>| async {
        let mut res = Response::new(());
        ServedBy("pod-a".to_owned()).insert(res.extensions_mut());
        Ok::<_, Infallible>(res)
    })
}

#[tokio::test]
async fn mistakes_warn_once_and_correct_stacks_never() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // A layer keyed `u64` over a `String`-keyed balancer: no session, and one warning that
    // names both key types.
    let layer = SessionPersistenceLayer::<u64>::keyed(policy(), PlainCodec::default());
    let svc = layer.layer(string_keyed());
    for _ in 0..5 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert!(res.headers().get("set-cookie").is_none());
    }
    let logs = capture.take();
    assert_eq!(logs.matches("WARN").count(), 1, "warned once: {logs}");
    assert!(logs.contains("SessionPersistenceLayer<u64>"), "{logs}");
    assert!(logs.contains("ServedBy<alloc::string::String>"), "names what it found: {logs}");

    // A layer over a service that tags nothing (a route with no balancer beneath).
    let untagged = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let svc = SessionPersistenceLayer::new(policy(), PlainCodec::default()).layer(untagged);
    for _ in 0..5 {
        svc.clone().oneshot(Request::new(())).await.unwrap();
    }
    let logs = capture.take();
    assert_eq!(logs.matches("WARN").count(), 1, "warned once: {logs}");
    assert!(logs.contains("without ServedBy<alloc::string::String>"), "{logs}");
    assert!(logs.contains("route_layer"), "says what to do: {logs}");

    // The right key type: sessions, and no warning, even for later untagged responses (a
    // local route next to the balanced ones).
    let layer = SessionPersistenceLayer::new(policy(), PlainCodec::default());
    let svc = layer.layer(string_keyed());
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(res.headers().get("set-cookie").is_some());
    let svc = layer.layer(untagged);
    svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(capture.take(), "", "a layer that has seen its tag does not warn");

    // A configured clone is a layer of its own: it warns for itself.
    let clone = layer.clone().scope("other").key::<u64>();
    clone.layer(string_keyed()).oneshot(Request::new(())).await.unwrap();
    assert_eq!(capture.take().matches("WARN").count(), 1);
}

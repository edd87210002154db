//! No token ever reaches the traces. Alone in its binary: a scoped subscriber does not see call
//! sites that other tests' threads reached first with no subscriber (tracing caches "never").
// Without its features this suite would compile to nothing and pass unseen: say so instead.
#[cfg(not(all(feature = "tracing", feature = "signed", feature = "sealed")))]
compile_error!(
    "tests/traces.rs needs the features tracing, signed, sealed (on by default): run it with default features"
);

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::{Binding, Claims, Codec, SealedCodec, SignedCodec};
use tower_session_persistence::{PinnedEndpoint, ServedBy, SessionPersistenceLayer};

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

async fn send(codec: &dyn Fn() -> Box<dyn Codec>, cookie: &str) -> Response<()> {
    let layer = SessionPersistenceLayer::<String>::new(
        SessionPolicy::cookie("sid").build().unwrap(),
        codec(),
    );
    let svc = layer.layer(service_fn(|mut req: Request<()>| async move {
        let key = PinnedEndpoint::<String>::take(req.extensions_mut())
            .map_or("pod-a".to_owned(), |p| p.0);
        let mut res = Response::new(());
        ServedBy(key).insert(res.extensions_mut());
        Ok::<_, Infallible>(res)
    }));
    svc.oneshot(Request::builder().header("cookie", cookie).body(()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn tokens_never_appear_in_traces() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let codecs: [Box<dyn Fn() -> Box<dyn Codec>>; 2] = [
        Box::new(|| Box::new(SignedCodec::new([[8u8; 32]]).unwrap())),
        Box::new(|| Box::new(SealedCodec::new([[8u8; 32]]).unwrap())),
    ];
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    for make in &codecs {
        let claims =
            Claims { endpoint: b"pod-b".to_vec(), issued: Some(now), refreshed: Some(now) };
        let good = make().encode(&claims, Binding { name: "sid", scope: "sid" }).unwrap();
        let res = send(make.as_ref(), &format!("sid={good}")).await;
        assert!(res.headers().get("set-cookie").is_none(), "pinned, nothing re-issued");
        let bad = format!("{good}AA");
        let res = send(make.as_ref(), &format!("sid={bad}")).await;
        let fresh = res.headers()["set-cookie"].to_str().unwrap();
        let fresh = fresh.split(';').next().unwrap().strip_prefix("sid=").unwrap().to_owned();
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("invalid"), "the decision is traced: {logs}");
        for secret in [&good, &bad, &fresh] {
            assert!(!logs.contains(&secret[..20]), "a token was traced: {logs}");
        }
    }
}

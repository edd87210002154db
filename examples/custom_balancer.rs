//! The layer over a balancer of your own: here `tower::steer::Steer`.
//!
//! The layer and the balancer meet only at the seam: the layer puts `PinnedEndpoint` into the
//! request, the balancer (or the backend it picked) puts `ServedBy` into the response. Nothing
//! else is needed, so any balancer works. When this one cannot honour a pin (its pod is down),
//! it picks another pod, and the layer re-pins the session there.
//! `cargo run --example custom_balancer` runs a few requests in-process, prints them, and exits.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use tower::steer::Steer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;
use tower_session_persistence::{Decision, PinnedEndpoint, ServedBy, SessionPersistenceLayer};

const PODS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];

/// A pod: answers its name, and says in `ServedBy` who served the request.
fn pod(
    name: &'static str,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(move |_: Request<()>| async move {
        let mut res = Response::new(name.to_owned());
        ServedBy(name.to_owned()).insert(res.extensions_mut());
        Ok(res)
    })
}

/// Which pod served each request, and what the layer decided about its session.
pub(crate) type Report = Vec<(String, Decision)>;

pub(crate) async fn run() -> Result<Report, BoxError> {
    let down = Arc::new(Mutex::new(HashSet::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let is_down = down.clone();
    // Steer's picker sees `&Request`, so it reads the pin rather than taking it; a balancer
    // that owns the request should `PinnedEndpoint::take` it, so that nested layers never see it.
    let picker = move |req: &Request<()>, _: &[_]| {
        let down = is_down.lock().unwrap();
        if let Some(PinnedEndpoint(key)) = req.extensions().get::<PinnedEndpoint<String>>()
            && let Some(i) = PODS.iter().position(|pod| pod == key)
            && !down.contains(&i)
        {
            return i;
        }
        // No session, or its pod is down: round robin over the pods that are up.
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed) % PODS.len();
            if !down.contains(&i) {
                return i;
            }
        }
    };
    let balancer = Steer::new(PODS.map(pod), picker);
    let policy = SessionPolicy::cookie("sid").build()?;
    let app = ServiceBuilder::new()
        .layer(SessionPersistenceLayer::new(policy, SignedCodec::new([[7u8; 32]])?))
        .service(balancer);

    let mut report = Report::new();
    let mut cookie: Option<String> = None;
    for step in 0..8 {
        if step == 3 {
            println!("pod-a goes down");
            down.lock().unwrap().insert(0);
        }
        if step == 6 {
            println!("pod-a is back: the session stays where it is now");
            down.lock().unwrap().clear();
        }
        let mut req = Request::builder();
        if let Some(cookie) = &cookie {
            req = req.header("cookie", cookie);
        }
        let res = app.clone().oneshot(req.body(())?).await?;
        if let Some(set) = res.headers().get("set-cookie") {
            cookie = set.to_str()?.split(';').next().map(str::to_owned);
        }
        let decision = *res.extensions().get::<Decision>().ok_or("no decision")?;
        println!("request {step}: {} ({decision})", res.body());
        report.push((res.into_body(), decision));
    }
    // On pod-a until it went down, then re-pinned to pod-b, and kept there.
    if report.iter().map(|(pod, _)| pod.as_str()).ne(["pod-a"; 3].into_iter().chain(["pod-b"; 5])) {
        return Err(format!("unexpected pods: {report:?}").into());
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let report = run().await?;
    let pods: Vec<_> = report.iter().map(|(pod, _)| pod.as_str()).collect();
    println!("served by: {}", pods.join(", "));
    Ok(())
}

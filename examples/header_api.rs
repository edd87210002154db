//! Header-based session persistence for API clients that keep no cookies (GEP-1619
//! `type: Header`).
//!
//! The first response hands the client its session in `x-session`; the client sends it back
//! on every request and keeps reaching the same pod. The layer removes the header before the
//! backend sees it, and sets it on a response only when the session is new or changed.
//! `cargo run --example header_api` serves three pods behind the layer on a loopback port,
//! plays an API client with reqwest (no cookie store), prints what happened, and exits.

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderMap, StatusCode};
use tower::{BoxError, ServiceBuilder};
use tower_session_persistence::SessionPersistenceLayer;
use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
use tower_session_persistence::policy::SessionPolicy;
use tower_session_persistence::token::SignedCodec;

/// The pods that answered the client while it echoed its session, and after it sent a
/// tampered one.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) echoed: Vec<String>,
    pub(crate) tampered: String,
    pub(crate) reissued: bool,
}

pub(crate) async fn run() -> Result<Report, BoxError> {
    let (endpoints, discover) = discover_channel();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        // Each pod answers its name, and whether the session header reached it (it never does).
        let answer = move |headers: HeaderMap| async move {
            format!("{pod} (saw x-session: {})", headers.contains_key("x-session"))
        };
        endpoints.insert(pod.to_owned(), Router::new().fallback(answer));
    }
    let policy = SessionPolicy::header("x-session").build()?;
    let api = ServiceBuilder::new()
        .layer(SessionPersistenceLayer::new(policy, SignedCodec::new([[7u8; 32]])?))
        .layer(HandleErrorLayer::new(|_: BoxError| async { StatusCode::BAD_GATEWAY }))
        .service(BalancerBuilder::new().group(1, discover).build());
    let app = Router::new().fallback_service(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // An API client: no cookie store, it just echoes the header it was given.
    let client = reqwest::Client::new();
    let call = async |session: Option<&str>| -> Result<(String, Option<String>), BoxError> {
        let mut req = client.get(&url);
        if let Some(session) = session {
            req = req.header("x-session", session);
        }
        let res = req.send().await?.error_for_status()?;
        let given = res.headers().get("x-session").map(|v| v.to_str().map(str::to_owned));
        let given = given.transpose()?;
        let pod = res.text().await?;
        println!(
            "sent x-session: {:<5} -> {pod}, new x-session: {}",
            session.is_some(),
            given.is_some()
        );
        Ok((pod, given))
    };

    let (first, session) = call(None).await?;
    let mut session = session.ok_or("no session was issued")?;
    let mut echoed = vec![first];
    while echoed.len() < 6 {
        let (pod, given) = call(Some(&session)).await?;
        if given.is_some() {
            return Err("an unchanged session was issued again".into());
        }
        echoed.push(pod);
    }
    if echoed.iter().any(|pod| *pod != echoed[0]) {
        return Err("the session left its pod".into());
    }
    // A forged or damaged session is no session: balanced again, and a new one is issued.
    session.replace_range(..4, "AAAA");
    let (tampered, given) = call(Some(&session)).await?;
    Ok(Report { echoed, tampered, reissued: given.is_some() })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let report = run().await?;
    println!("the client stayed on {}", report.echoed[0]);
    println!("with a tampered session it reached {}", report.tampered);
    println!("and was given a new session: {}", report.reissued);
    Ok(())
}

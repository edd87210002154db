//! Session persistence ("sticky sessions", Kubernetes Gateway API GEP-1619) for tower, axum
//! and hyper services.
//!
//! **Session persistence** keeps a client on the backend endpoint that served it first: the
//! first response hands the client a session (a cookie, a header or a URL parameter carrying a
//! signed token), and as long as the session is valid every later request goes to that
//! endpoint, bypassing load balancing. It is strong and explicit: it holds when endpoints are
//! added or weights change, and ends only when the session expires or its endpoint goes away.
//!
//! **Session affinity**, by contrast, is a best-effort hash of something the request already
//! carries (the client's address, a header): it needs no token and no response header, but
//! moves clients whenever the set of endpoints changes. This crate does both: persistence in
//! [`SessionPersistenceLayer`], affinity as the [balancer](balance::affinity)'s choice for
//! requests that carry no session yet.
//!
//! The crate has two halves that meet at a small [seam]: the
//! [`SessionPersistenceLayer`] reads and writes sessions, and any balancer that honours
//! [`PinnedEndpoint`] and [`ServedBy`] (this crate's [`balance::Balancer`], a
//! `tower::steer::Steer`, your own) routes.
//!
//! # Quick start
//!
//! ```
//! # #[cfg(all(feature = "signed", feature = "balance"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_session_persistence::{SessionPersistenceLayer, balance, policy::SessionPolicy};
//! use tower_session_persistence::token::SignedCodec;
//! # use http::{Request, Response};
//!
//! let (endpoints, discover) = balance::discover_channel();
//! for pod in ["pod-a", "pod-b", "pod-c"] {
//!     endpoints.insert(pod.to_owned(), service_fn(move |_: Request<()>| async move { Ok::<_, std::convert::Infallible>(Response::new(pod)) }));
//! }
//! let app = ServiceBuilder::new()
//!     .layer(SessionPersistenceLayer::new(SessionPolicy::cookie("sid").build()?, SignedCodec::new([[7u8; 32]])?))
//!     .service(balance::BalancerBuilder::new().group(1, discover).build());
//! # tokio::task::yield_now().await;
//!
//! let first = app.clone().oneshot(Request::new(())).await?;
//! let cookie = first.headers()["set-cookie"].to_str()?.split(';').next().unwrap().to_owned();
//! for _ in 0..10 {
//!     let again = app.clone().oneshot(Request::builder().header("cookie", &cookie).body(())?).await?;
//!     assert_eq!(again.body(), first.body());
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "signed", feature = "balance")))] fn main() {}
//! ```
//!
//! # Where it fits
//!
//! * **axum**: `Router::layer(SessionPersistenceLayer::..)`, or `route_layer` for some routes
//!   only. axum wants services that never fail; the [`balance::Balancer`] fails with a
//!   [`BoxError`](tower::BoxError), so put an error handler (axum's `HandleErrorLayer`, or
//!   `ServiceBuilder::map_result`) *between* the layer and the balancer and answer
//!   [`PinnedUnavailable`] with [`PinnedUnavailable::response`] (`503`). URL sessions
//!   ([`strategy::Url`]) rewrite the request's path, which axum's `Router::layer` runs too
//!   late for: wrap the whole router instead. Example: `cargo run --example axum_layer`.
//! * **hyper** alone: build the stack with `ServiceBuilder` and serve it with hyper-util's
//!   `TowerToHyperService`. Example: `cargo run --example hyper_service`.
//! * **Your own balancer**: honour the [seam]; wrap each endpoint in `balance::Endpoint`,
//!   the ready-made [`ServedBy`] tagger. Example: `cargo run --example custom_balancer` (a
//!   `tower::steer::Steer`). Under axum, `Steer` is not `Sync` (axum's request body is not):
//!   put it behind a `tower::buffer::Buffer`, and its `BoxError`s through `HandleErrorLayer`
//!   beneath the layer; `balance::Endpoint`'s docs have the whole program.
//! * **The key type** `K` of [`SessionPersistenceLayer<K>`] must be the balancer's:
//!   [`SessionPersistenceLayer::new`] is for `String` keys, [`keyed`](SessionPersistenceLayer::keyed)
//!   for others, and `Balancer::session_layer` takes its balancer's. A layer that never sees
//!   its `ServedBy<K>` writes no session and warns once (with `tracing`).
//! * **API clients** without cookies: [`SessionPolicy::header`](policy::SessionPolicy::header);
//!   the client sends back the header it was given. Example: `cargo run --example header_api`.
//! * **HTTP/2 and gRPC**: every `Cookie` field of a request is read, so HTTP/2 clients that
//!   split their cookies keep their session; gRPC clients carry a header session in their
//!   metadata (Gateway API `GRPCRoute` semantics).
//! * **Applications that own their session** (`JSESSIONID`, `Mcp-Session-Id`, gRPC metadata):
//!   [`learn::LearnLayer`] learns which endpoint set each identifier and pins to it, adding
//!   nothing to the response (HAProxy's stick tables, NGINX's `sticky learn`).
//! * **A gateway**: `cargo run --example gateway` is a reverse proxy configured by Gateway API
//!   `HTTPRoute` YAML, built only from this crate's public API.
//!
//! # Observability
//!
//! Each request's [`Decision`] (`new`, `pinned`, `re-pinned`, `expired`, `invalid`,
//! `rejected`) is put into the response's extensions, for the application to log or count,
//! and, with the `tracing` feature, reported as a `DEBUG` event with the fields `decision`,
//! `endpoint` (the endpoint's key) and `scope` (the rule). Tokens are never logged, nor are
//! cookie or header values; mark `Cookie` and `Set-Cookie` sensitive in your own HTTP tracing
//! (tower-http's `SetSensitiveHeadersLayer`). The events are emitted inside whatever span the
//! request is served in, such as tower-http's `TraceLayer` span, so the layer adds none of its
//! own.
//!
//! # Features
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `serde` | deserializing the Gateway API `sessionPersistence` stanza ([`policy::SessionPersistenceConfig`]) | on |
//! | `signed` | [`token::SignedCodec`]: AES-SIV tokens, tamper-evident, the endpoint encrypted | on |
//! | `sealed` | [`token::SealedCodec`]: XChaCha20-Poly1305 tokens that hide everything | on |
//! | `balance` | [`balance::Balancer`], the persistence-aware balancer (pulls in tokio's runtime and timers, tower's p2c, XXH3); leave it out if you bring your own balancer | on |
//! | `edge` | [`edge`]: forwarded headers with a trust list, strict host checks, body idle timeouts | on |
//! | `health` | [`health`]: active health checks with HAProxy's rise/fall | on |
//! | `tracing` | `tracing` events for each decision and for the balancer's endpoint changes; without it they compile to nothing | on |
//! | `learn` | [`learn::LearnLayer`]: persistence on the application's own session identifier, learned into a [`store::SessionStore`]; the in-process [`store::MemoryStore`] | on |
//! | `redis` | `store::RedisStore`: learned sessions shared by replicas through Redis or Valkey | off |
//!
//! [`token::PlainCodec`] (HAProxy-compatible, for migration and debugging) is always there.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// Without the `tracing` feature, `tracing::debug!(..)` and friends anywhere in the crate name
// the no-op macros of `no_tracing`; see there.
#[cfg(not(feature = "tracing"))]
extern crate self as tracing;
#[cfg(not(feature = "tracing"))]
mod no_tracing;
#[cfg(not(feature = "tracing"))]
#[allow(unused_imports)]
pub(crate) use self::no_tracing::{
    no_debug as debug, no_error as error, no_info as info, no_trace as trace, no_warn as warn,
};

#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
pub mod balance;
mod carrier;
#[cfg(feature = "edge")]
#[cfg_attr(docsrs, doc(cfg(feature = "edge")))]
pub mod edge;
mod endpoint_key;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
pub mod layer;
#[cfg(feature = "learn")]
#[cfg_attr(docsrs, doc(cfg(feature = "learn")))]
pub mod learn;
pub mod metrics;
pub mod policy;
pub mod seam;
#[cfg(feature = "learn")]
#[cfg_attr(docsrs, doc(cfg(feature = "learn")))]
pub mod store;
pub mod strategy;
pub mod token;

pub use self::endpoint_key::EndpointKey;

pub use self::layer::{Decision, SessionPersistence, SessionPersistenceLayer};
pub use self::seam::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};

//! Session persistence ("sticky sessions", Kubernetes Gateway API GEP-1619) for tower, axum
//! and hyper services.
//!
//! **Session persistence** keeps a client on the backend endpoint that served it first: the
//! first response hands the client a session (here a cookie or a header carrying a signed
//! token), and as long as the session is valid every later request goes to that endpoint,
//! bypassing load balancing. It is strong and explicit: it holds when endpoints are added, and
//! ends only when the session expires or its endpoint goes away. **Session affinity**, by
//! contrast, is a best-effort hash of something in the request (the client's address, a
//! header); it needs no token, but moves clients whenever the set of endpoints changes.
//!
//! The crate has two halves that meet at a small [seam](seam): the
//! [`SessionPersistenceLayer`] reads and writes sessions, and any balancer that honours
//! [`PinnedEndpoint`] and [`ServedBy`] (such as this crate's [`balance::Balancer`]) routes.
//!
//! # Quick start
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_session_persistence::balance::{BalancerBuilder, discover_channel};
//! use tower_session_persistence::policy::SessionPolicy;
//! use tower_session_persistence::token::SignedCodec;
//! use tower_session_persistence::SessionPersistenceLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let (endpoints, discover) = discover_channel();
//! for pod in ["pod-a", "pod-b", "pod-c"] {
//!     endpoints.insert(pod.to_owned(), service_fn(move |_: Request<()>| async move {
//!         Ok::<_, Infallible>(Response::new(pod))
//!     }));
//! }
//! let app = ServiceBuilder::new()
//!     .layer(SessionPersistenceLayer::<String>::new(SessionPolicy::cookie("sid").build()?, SignedCodec::new([[7u8; 32]])?))
//!     .service(BalancerBuilder::new().group(1, discover).build());
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
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod balance;
mod carrier;
mod endpoint_key;
pub mod layer;
pub mod policy;
pub mod seam;
pub mod strategy;
pub mod token;

pub use self::endpoint_key::EndpointKey;
pub use self::layer::{Decision, SessionPersistence, SessionPersistenceLayer};
pub use self::seam::{OnUnavailable, PinnedEndpoint, PinnedUnavailable, ServedBy};

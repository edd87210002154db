//! Runs the library examples: each example's `run()` is compiled into this test, the same
//! code that `cargo run --example NAME` runs, minus its `main` (which only prints the report).
//! Each `run()` starts its own servers on loopback ports, checks its own stickiness and fails
//! with an error otherwise; the tests check its report further.

use std::collections::HashSet;

use tower_session_persistence::Decision;

// Each example's `main` is unused here.
#[allow(dead_code)]
#[path = "../examples/axum_layer.rs"]
mod axum_layer;
#[allow(dead_code)]
#[path = "../examples/custom_balancer.rs"]
mod custom_balancer;
#[allow(dead_code)]
#[path = "../examples/header_api.rs"]
mod header_api;
#[allow(dead_code)]
#[path = "../examples/hyper_service.rs"]
mod hyper_service;

fn distinct(pods: &[String]) -> usize {
    pods.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_layer_keeps_shop_and_upload_sessions_and_balances_the_rest() {
    let mut report = axum_layer::run().await.unwrap();
    if distinct(&report.profile) == 1 {
        // Twelve balanced requests over three idle pods (p2c picks at random) all on one: one
        // chance in 59 049. Once more: both runs so, one in 3.5 billion; a balancer that never
        // spreads fails every time. (Deterministic would need the example to hold requests in
        // flight, as tests/grpc.rs does.)
        report = axum_layer::run().await.unwrap();
    }
    assert_eq!(distinct(&report.shop), 1, "{report:?}");
    assert_eq!(distinct(&report.upload), 1, "{report:?}");
    assert!(distinct(&report.profile) > 1, "{report:?}");
    assert_eq!(report.after_removal.0, 503, "the cart's pod is gone and the policy rejects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_keeps_the_client_with_a_cookie_and_balances_fresh_ones() {
    let mut report = hyper_service::run().await.unwrap();
    if distinct(&report.fresh) == 1 {
        // Twelve fresh clients all on one of three backends: one chance in 59 049 (see above).
        report = hyper_service::run().await.unwrap();
    }
    assert_eq!(report.with_cookie.len(), 6);
    assert_eq!(distinct(&report.with_cookie), 1, "{report:?}");
    assert!(distinct(&report.fresh) > 1, "{report:?}");
}

#[tokio::test]
async fn custom_balancer_honours_pins_and_the_layer_repins_when_it_cannot() {
    let report = custom_balancer::run().await.unwrap();
    let decisions: Vec<Decision> = report.iter().map(|(_, decision)| *decision).collect();
    use Decision::{New, Pinned, Repinned};
    assert_eq!(decisions, [New, Pinned, Pinned, Repinned, Pinned, Pinned, Pinned, Pinned]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_api_client_echoing_its_header_stays_and_a_tampered_one_is_reissued() {
    let report = header_api::run().await.unwrap();
    assert_eq!(distinct(&report.echoed), 1, "{report:?}");
    let seen = report.echoed.iter().chain([&report.tampered]);
    assert!(seen.clone().all(|pod| pod.ends_with("(saw x-session: false)")), "{report:?}");
    assert!(report.reissued, "a tampered session gets a new one");
}

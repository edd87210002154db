//! Nesting: the global load balancer in front of regional load balancers of
//! `examples/global_regional.rs`, the very same construction, checked. Each level pins with its
//! own cookie; the pins hold and re-pin independently.

#[path = "../examples/global_regional.rs"]
mod global_regional;

use global_regional::{Hop, build, hop, region_of, settle};

const REGIONS: &[(&str, &[&str])] =
    &[("eu", &["eu-1", "eu-2", "eu-3"]), ("us", &["us-1", "us-2", "us-3"])];

struct Client {
    jar: reqwest::Client,
    on: String,
}

async fn send(client: &Client, url: &str) -> Hop {
    hop(&client.jar, url).await.expect("a 200 response")
}

/// The example itself runs to its end (it must, to be run by `cargo run --example`).
#[test]
fn the_example_runs_and_exits() {
    global_regional::main().expect("the example runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_pins_hold_and_re_pin_independently() {
    let world = build(REGIONS).await;
    let url = world.url.clone();

    // Sessions: the first response issues both cookies.
    let mut clients = Vec::new();
    for _ in 0..60 {
        let jar = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let first = hop(&jar, &url).await.unwrap();
        assert!(first.new_region && first.new_backend, "{first:?}");
        clients.push(Client { jar, on: first.backend });
    }
    let used: std::collections::HashSet<_> = clients.iter().map(|c| region_of(&c.on)).collect();
    assert_eq!(used.len(), 2, "both regions take sessions");

    // Both pins hold: same backend, nothing re-issued.
    for c in &clients {
        for _ in 0..3 {
            let h = send(c, &url).await;
            assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
        }
    }

    // A backend goes: only its sessions get a new backend cookie, in the same region; the
    // region cookie stays.
    let gone = clients[0].on.clone();
    let region = region_of(&gone).to_owned();
    world.backends[&region].remove(gone.clone());
    let regional = &world.regional[&region];
    settle(|| regional.len() == 2).await;
    for c in &mut clients {
        let h = send(c, &url).await;
        if c.on == gone {
            assert!(!h.new_region, "the region cookie was re-issued: {h:?}");
            assert!(h.new_backend, "no new backend cookie: {h:?}");
            assert_eq!(region_of(&h.backend), region, "moved out of its region: {h:?}");
            assert_ne!(h.backend, gone);
            c.on = h.backend;
        } else {
            assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
        }
    }
    for c in &clients {
        let h = send(c, &url).await;
        assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
    }

    // A region goes: its sessions get both cookies anew, in the other region; the others
    // nothing.
    let other = if region == "eu" { "us" } else { "eu" };
    world.regions.remove(region.clone());
    settle(|| world.global.len() == 1).await;
    for c in &mut clients {
        let h = send(c, &url).await;
        if region_of(&c.on) == region {
            assert!(h.new_region && h.new_backend, "{h:?}");
            assert_eq!(region_of(&h.backend), other);
            c.on = h.backend;
        } else {
            assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
        }
    }
    for c in &clients {
        let h = send(c, &url).await;
        assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_region_keeps_its_sessions_and_sends_new_ones_elsewhere() {
    let world = build(REGIONS).await;
    let url = world.url.clone();
    let mut clients = Vec::new();
    for _ in 0..40 {
        let jar = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let first = hop(&jar, &url).await.unwrap();
        clients.push(Client { jar, on: first.backend });
    }
    assert!(world.global.drain(&"eu".to_owned()));
    for c in &clients {
        let h = send(c, &url).await;
        assert_eq!(h, Hop { backend: c.on.clone(), new_region: false, new_backend: false });
    }
    for _ in 0..40 {
        let jar = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let first = hop(&jar, &url).await.unwrap();
        assert_eq!(region_of(&first.backend), "us", "a drained region took a new session");
    }
}

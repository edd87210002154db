//! Affinity for requests that carry no session: a deterministic hash of something in the
//! request (the client's address, a header, a cookie) picks the endpoint.
//!
//! Affinity is GEP-1619's weak tier. It needs no token, so it works for clients that drop
//! cookies, but it is only as stable as the set of endpoints: when an endpoint comes or goes,
//! some keys move. The balancer uses **rendezvous hashing** (highest random weight), which
//! moves the fewest keys possible: adding one endpoint to `N` moves only the keys the newcomer
//! wins, about `1/(N+1)` of them, and removing, draining or ejecting one moves only that
//! endpoint's keys. Maglev was measured against it (see `docs/ARCHITECTURE.md`): Maglev's O(1)
//! pick wins from a few thousand endpoints up, but it moves more keys than necessary and needs
//! a table rebuild on every state change, while rendezvous skips a draining or ejected
//! endpoint for free. Endpoints of one Gateway API `backendRef` are rarely that many.
//!
//! The pick has two levels, so that weights hold and endpoints never pull keys across groups:
//! a weighted rendezvous over the groups that can take new sessions (weights as in
//! [`BalancerBuilder::group`](super::BalancerBuilder::group)), then a plain rendezvous over
//! that group's serving endpoints. Adding an endpoint to a group therefore moves only keys of
//! that group, and only to the new endpoint.
//!
//! Every hash here is portable (XXH3 with fixed seeds, the SplitMix64 finaliser), so gateway
//! replicas with the same endpoints and the same group order agree on every key.
//!
//! ```
//! use http::{HeaderName, Request};
//! use tower_session_persistence::balance::affinity;
//!
//! let by_user = affinity::header::<()>(HeaderName::from_static("x-user"));
//! let req = Request::builder().header("x-user", "alice").body(()).unwrap();
//! assert_eq!(by_user(&req), Some(affinity::hash(b"alice")));
//! assert_eq!(by_user(&Request::new(())), None);
//! ```

use http::header::COOKIE;
use http::{HeaderName, Request};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of [`hash`]: request attributes.
const KEY_SEED: u64 = 0x7473_702d_6166_666e;
/// Seed of endpoint hashes.
const ENDPOINT_SEED: u64 = 0x7473_702d_656e_6470;
/// Seed of group hashes.
const GROUP_SEED: u64 = 0x7473_702d_6772_6f75;

/// The most `Cookie` pairs [`cookie`] looks at.
const MAX_COOKIES: usize = 64;

/// Extracts an affinity key from a request that carries no session. Set with
/// [`BalancerBuilder::affinity`](super::BalancerBuilder::affinity).
///
/// Implemented for closures `Fn(&Request<B>) -> Option<u64>` (such as [`header`] and
/// [`cookie()`]) and for [`NoAffinity`] (the default). A request for which it returns `None` is
/// balanced by p2c, as without affinity.
pub trait AffinityKey<B>: Send + Sync + 'static {
    /// The request's affinity key, or `None` to balance it by load.
    fn affinity_key(&self, req: &Request<B>) -> Option<u64>;

    /// Whether this ever returns a key; `false` spares the balancer the call.
    fn enabled(&self) -> bool {
        true
    }
}

/// No affinity: requests without a session are balanced by load (the default).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct NoAffinity;

impl<B> AffinityKey<B> for NoAffinity {
    fn affinity_key(&self, _req: &Request<B>) -> Option<u64> {
        None
    }

    fn enabled(&self) -> bool {
        false
    }
}

impl<B, F> AffinityKey<B> for F
where
    F: Fn(&Request<B>) -> Option<u64> + Send + Sync + 'static,
{
    fn affinity_key(&self, req: &Request<B>) -> Option<u64> {
        self(req)
    }
}

/// Hashes a request attribute into an affinity key: XXH3-64 with the crate's fixed seed, the
/// same on every platform, replica and version of this crate.
pub fn hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

/// An affinity key taken from the first value of the header `name`; `None` without it.
pub fn header<B>(
    name: HeaderName,
) -> impl Fn(&Request<B>) -> Option<u64> + Clone + Send + Sync + 'static {
    move |req| req.headers().get(&name).map(|value| hash(value.as_bytes()))
}

/// An affinity key taken from the value of the cookie `name` (the first occurrence in any
/// `Cookie` field); `None` without it.
pub fn cookie<B>(
    name: impl Into<String>,
) -> impl Fn(&Request<B>) -> Option<u64> + Clone + Send + Sync + 'static {
    let name = name.into();
    move |req| {
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|field| field.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .take(MAX_COOKIES)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| hash(c.value().as_bytes()))
    }
}

/// The portable hash of an endpoint's key bytes.
pub(crate) fn endpoint_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, ENDPOINT_SEED)
}

/// The portable hash of the `index`th group.
pub(crate) fn group_hash(index: usize) -> u64 {
    xxh3_64_with_seed(&(index as u64).to_le_bytes(), GROUP_SEED)
}

/// The SplitMix64 finaliser over `key ^ member`: the rendezvous score of a member for a key.
#[inline]
pub(crate) fn score(key: u64, member: u64) -> u64 {
    let mut z = key ^ member;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Plain rendezvous: the member with the highest score (ties, vanishingly rare, go to the
/// higher member hash, so the result never depends on order).
pub(crate) fn rendezvous<T>(key: u64, members: &[(u64, T)]) -> Option<&T> {
    members.iter().max_by_key(|(hash, _)| (score(key, *hash), *hash)).map(|(_, member)| member)
}

/// Weighted rendezvous over `(index, weight)` pairs: each index wins a share of keys in
/// proportion to its weight (the exponential race `ln(u) / w`). Zero weights never win.
pub(crate) fn weighted_rendezvous(
    key: u64,
    weights: impl Iterator<Item = (usize, u64)>,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (index, weight) in weights {
        if weight == 0 {
            continue;
        }
        let h = score(key, group_hash(index));
        // u in (0, 1): the top 53 bits, centred, so ln(u) is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let s = u.ln() / weight as f64;
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, index));
        }
    }
    best.map(|(_, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<(u64, usize)> {
        (0..n).map(|i| (endpoint_hash(format!("ep-{i}").as_bytes()), i)).collect()
    }

    fn keys(n: usize) -> impl Iterator<Item = u64> {
        (0..n as u64).map(|i| hash(&i.to_le_bytes()))
    }

    #[test]
    fn hashes_are_pinned_across_versions() {
        // Replicas and upgrades must agree: these values may never change.
        // XXH3-64 of the empty input with seed 0, from the reference implementation.
        assert_eq!(xxh3_64_with_seed(b"", 0), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash(b"alice"), 0x8179_11ec_e556_4e64);
        assert_eq!(endpoint_hash(b"pod-a"), 0xf5c3_8b27_f566_d580);
        assert_eq!(group_hash(1), 0x32ea_1ca6_0284_c87d);
        assert_eq!(score(1, 0), 0x5692_161d_100b_05e5);
        assert_eq!(score(0, 0), 0);
    }

    #[test]
    fn rendezvous_moves_only_keys_won_by_the_newcomer() {
        for n in [3, 10, 100] {
            let before = members(n);
            let after = members(n + 1);
            let mut moved = 0;
            let total = 20_000;
            for key in keys(total) {
                let a = *rendezvous(key, &before).unwrap();
                let b = *rendezvous(key, &after).unwrap();
                if a != b {
                    assert_eq!(b, n, "a key moved between old endpoints");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / total as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!((fraction - ideal).abs() < ideal * 0.25, "N={n}: {fraction} vs {ideal}");
        }
    }

    #[test]
    fn weighted_rendezvous_follows_the_weights() {
        let weights = [(0, 70u64), (1, 30), (2, 0)];
        let mut counts = [0usize; 3];
        for key in keys(20_000) {
            counts[weighted_rendezvous(key, weights.iter().copied()).unwrap()] += 1;
        }
        assert!((13_600..=14_400).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0);
        assert_eq!(weighted_rendezvous(1, [(0, 0u64)].into_iter()), None);
    }

    /// Maglev (Eisenbud et al., NSDI 2016): the lookup table, for comparison only.
    fn maglev(members: &[(u64, usize)], size: usize) -> Vec<usize> {
        let n = members.len();
        let offset: Vec<usize> =
            members.iter().map(|(h, _)| (score(*h, 1) % size as u64) as usize).collect();
        let skip: Vec<usize> =
            members.iter().map(|(h, _)| (score(*h, 2) % (size as u64 - 1) + 1) as usize).collect();
        let mut next = vec![0usize; n];
        let mut table = vec![usize::MAX; size];
        let mut filled = 0;
        loop {
            for i in 0..n {
                let mut c = (offset[i] + next[i] * skip[i]) % size;
                while table[c] != usize::MAX {
                    next[i] += 1;
                    c = (offset[i] + next[i] * skip[i]) % size;
                }
                table[c] = members[i].1;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }

    /// Disruption and pick cost of rendezvous against Maglev. Run with
    /// `cargo test --release --lib balance::affinity -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_rendezvous_against_maglev() {
        use std::hint::black_box;
        use std::time::Instant;

        println!(
            "| N | HRW moved | Maglev moved | ideal 1/(N+1) | HRW pick | Maglev pick | Maglev build |"
        );
        println!("|---|---|---|---|---|---|---|");
        for n in [3usize, 10, 100, 1_000, 10_000] {
            let size = if n <= 600 { 65_537 } else { 1_000_003 };
            let before = members(n);
            let after = members(n + 1);
            let total = if n >= 1_000 { 200_000 } else { 400_000 };

            // Rendezvous moves a key only to the newcomer, when the newcomer outscores the
            // key's winner: averaged over 16 different newcomers, to measure the share
            // rather than one newcomer's luck.
            let best: Vec<(u64, u64)> = keys(total)
                .map(|k| {
                    let w = before.iter().map(|(h, _)| (score(k, *h), *h)).max().unwrap();
                    (k, w.0)
                })
                .collect();
            let newcomers = 16;
            let hrw_moved = (0..newcomers)
                .map(|j| {
                    let h = endpoint_hash(format!("new-{j}").as_bytes());
                    best.iter().filter(|(k, top)| score(*k, h) > *top).count()
                })
                .sum::<usize>() as f64
                / newcomers as f64;
            let t = Instant::now();
            let (old, new) = (maglev(&before, size), maglev(&after, size));
            let build = t.elapsed() / 2;
            let mag_moved = keys(total)
                .filter(|&k| old[(k % size as u64) as usize] != new[(k % size as u64) as usize])
                .count();

            let picks = if n >= 1_000 { 2_000 } else { 200_000 };
            let t = Instant::now();
            for k in keys(picks) {
                black_box(rendezvous(black_box(k), &after));
            }
            let hrw_ns = t.elapsed().as_nanos() as f64 / picks as f64;
            let t = Instant::now();
            for k in keys(picks) {
                black_box(new[(black_box(k) % size as u64) as usize]);
            }
            let mag_ns = t.elapsed().as_nanos() as f64 / picks as f64;

            println!(
                "| {n} | {:.5} ({:.2}×) | {:.5} ({:.2}×) | {:.5} | {hrw_ns:.0} ns | {mag_ns:.0} ns | {build:.1?} |",
                hrw_moved / total as f64,
                hrw_moved / total as f64 * (n + 1) as f64,
                mag_moved as f64 / total as f64,
                mag_moved as f64 / total as f64 * (n + 1) as f64,
                1.0 / (n + 1) as f64,
            );
        }
    }
}

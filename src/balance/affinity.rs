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
//! A plain rendezvous costs one hash per endpoint of the group: about 1.5 µs per request at
//! 1,000 endpoints and 15 µs at 10,000. [`Members`] keeps the same guarantees (the set, not
//! the order, decides; a removed endpoint's keys move and no other key does; a newcomer takes
//! only keys it wins, about `1/(N+1)`) with a pick that does not depend on `N`: a
//! consistent-hashing ring with 128 points per endpoint and an index, rebuilt on the first
//! pick after a change. Its price is balance: each endpoint's share of keys is within about
//! 9% of the mean instead of exact. (It maps keys differently from rendezvous: replicas must
//! use the same one.)
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

use std::fmt;
use std::sync::OnceLock;

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

/// The portable hash of an endpoint's key bytes (its [`EndpointKey::to_bytes`](crate::EndpointKey::to_bytes)):
/// the hash a [`Members`] list holds with each member.
pub fn endpoint_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, ENDPOINT_SEED)
}

/// The portable hash of the `index`th group.
pub(crate) fn group_hash(index: usize) -> u64 {
    xxh3_64_with_seed(&(index as u64).to_le_bytes(), GROUP_SEED)
}

/// The SplitMix64 finaliser over `key ^ member`: the rendezvous score of a member for a key.
#[inline]
pub(crate) const fn score(key: u64, member: u64) -> u64 {
    let mut z = key ^ member;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Plain rendezvous: the member with the highest score (ties, vanishingly rare, go to the
/// higher member hash, so the result never depends on order). The balancer picks within a
/// group with [`Members`]; this stays as the reference the tests compare it with.
#[cfg(test)]
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

/// How many points of the ring each member of [`Members`] holds: each member's share of keys
/// varies by about `1/√POINTS` (9%) around the mean; the ring costs 8 bytes per point.
const POINTS: usize = 128;

/// Seed of the members' points on the ring.
const POINT_SEED: u64 = 0x7473_702d_706f_696e;

/// Seed of the keys' places on the ring.
const RING_SEED: u64 = 0x7473_702d_7269_6e67;

/// The `v`th point of the member with hash `hash`: the top 32 bits of a SplitMix64 score.
#[inline]
fn point(hash: u64, v: usize) -> u32 {
    (score(hash, POINT_SEED.wrapping_add((v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 32)
        as u32
}

/// Where `key` falls on the ring.
#[inline]
fn place(key: u64) -> u32 {
    (score(key, RING_SEED) >> 32) as u32
}

/// The endpoints of one group that may take new sessions, each with its affinity hash, and
/// the lookup that maps an affinity key to one of them in a time that does not depend on
/// their number.
///
/// The lookup is a **consistent-hashing ring** (Karger et al., 1997) with 128 points per
/// member, and an index from a place's top bits to the first point at or after it, so that a
/// pick is one hash, one index read and a comparison or two, whatever the number of members.
/// A key belongs to the member of the first point at or after the key's place. Like
/// rendezvous hashing it depends only on the *set* of members (replicas that learn them in
/// another order agree), and it moves only the keys it must: removing a member (draining,
/// ejected, gone) moves only that member's keys, each to the member of the next point, so
/// they spread over the others; putting it back brings exactly those keys back; adding one
/// moves only keys to the newcomer, about `1/(N+1)` of them. Unlike rendezvous, each member's
/// share of keys is within about 9% of the mean (one standard deviation) rather than exact,
/// and the ring takes 8 bytes per point: about 1 KiB per member.
///
/// The ring is built on the first pick after a change, in `O(N)` (a counting sort on the
/// index; measured: 0.2 ms for 100 members, 3 ms for 1,000, 30 ms for 10,000): a burst of
/// changes (discovery filling a group) costs one build, paid by the pick that follows it.
///
/// ```
/// use tower_session_persistence::balance::affinity::{self, Members};
///
/// let mut members = Members::new();
/// for name in ["pod-a", "pod-b", "pod-c"] {
///     members.push((affinity::endpoint_hash(name.as_bytes()), name));
/// }
/// let key = affinity::hash(b"alice");
/// let chosen = *members.pick(key).unwrap();
/// // Removing another member leaves the key where it was.
/// let other = if chosen == "pod-a" { "pod-b" } else { "pod-a" };
/// members.retain(|(_, name)| *name != other);
/// assert_eq!(members.pick(key), Some(&chosen));
/// ```
pub struct Members<T> {
    list: Vec<(u64, T)>,
    lookup: OnceLock<Ring>,
}

/// The ring of [`Members`]: every member's points, ascending (equal points ordered by their
/// members' hashes), and an index from a place's top bits to the first point with those top
/// bits or higher ones.
#[derive(Debug)]
struct Ring {
    /// `(point, owner)`, ascending: the owner is the position in the member list of the
    /// member of that point.
    points: Box<[(u32, u32)]>,
    /// `index[b]`: the first `i` with `points[i].0 >> shift >= b`; `points.len()` if none.
    index: Box<[u32]>,
    shift: u32,
}

impl Ring {
    fn new<T>(list: &[(u64, T)]) -> Self {
        let total = list.len() * POINTS;
        assert!(u32::try_from(total).is_ok(), "fewer than 2^32 / {POINTS} members");
        // About two to four points per index entry.
        let bits = (usize::BITS - total.leading_zeros()).saturating_sub(2).clamp(1, 24);
        let shift = u32::BITS - bits;
        let buckets = 1usize << bits;
        // Counting sort on the top bits: counts, then each bucket's start, then the points.
        let mut unsorted = Vec::with_capacity(total);
        for (member, (hash, _)) in list.iter().enumerate() {
            unsorted.extend((0..POINTS).map(|v| (point(*hash, v), member as u32)));
        }
        let mut index = vec![0u32; buckets + 1];
        for (p, _) in &unsorted {
            index[(p >> shift) as usize + 1] += 1;
        }
        for b in 0..buckets {
            index[b + 1] += index[b];
        }
        let mut next: Vec<u32> = index[..buckets].to_vec();
        let mut points = vec![(0u32, 0u32); total];
        for (p, owner) in unsorted {
            let at = &mut next[(p >> shift) as usize];
            points[*at as usize] = (p, owner);
            *at += 1;
        }
        // Then each bucket (a few points) by point; equal points by their members' hashes, so
        // that the order never depends on the member list's.
        for b in 0..buckets {
            let bucket = &mut points[index[b] as usize..index[b + 1] as usize];
            if bucket.len() > 1 {
                bucket.sort_unstable_by(|(p, a), (q, b)| {
                    p.cmp(q).then_with(|| list[*a as usize].0.cmp(&list[*b as usize].0))
                });
            }
        }
        Ring { points: points.into_boxed_slice(), index: index.into_boxed_slice(), shift }
    }

    /// The position in the member list of the member that `key` maps to.
    #[inline]
    fn pick(&self, key: u64) -> Option<usize> {
        let points = &*self.points;
        let &(_, first) = points.first()?;
        let place = place(key);
        let mut i = self.index[(place >> self.shift) as usize] as usize;
        while let Some(&(p, owner)) = points.get(i) {
            if p >= place {
                return Some(owner as usize);
            }
            i += 1;
        }
        // Past the last point, the ring wraps to the first.
        Some(first as usize)
    }
}

impl<T> Members<T> {
    /// No members.
    pub fn new() -> Self {
        Members { list: Vec::new(), lookup: OnceLock::new() }
    }

    /// Adds a member with its hash ([`endpoint_hash`] of its key).
    pub fn push(&mut self, member: (u64, T)) {
        self.list.push(member);
        self.lookup.take();
    }

    /// Keeps the members for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&(u64, T)) -> bool) {
        let before = self.list.len();
        self.list.retain(keep);
        if self.list.len() != before {
            self.lookup.take();
        }
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The members and their hashes, in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &(u64, T)> {
        self.list.iter()
    }

    /// The member at position `i` in the member list (the balancer's p2c samples by index).
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.list.get(i).map(|(_, member)| member)
    }

    /// The member that affinity key `key` maps to; `None` when there are none. Builds the
    /// lookup if the members changed since the last pick.
    pub fn pick(&self, key: u64) -> Option<&T> {
        if self.list.is_empty() {
            return None;
        }
        let i = self.lookup.get_or_init(|| Ring::new(&self.list)).pick(key)?;
        Some(&self.list[i].1)
    }
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Members<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Members")
            .field("len", &self.list.len())
            .field("built", &self.lookup.get().is_some())
            .finish_non_exhaustive()
    }
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

    fn ring(n: usize) -> Members<usize> {
        let mut m = Members::new();
        for (hash, i) in members(n) {
            m.push((hash, i));
        }
        m
    }

    #[test]
    fn the_lookup_is_pinned_across_versions() {
        // Replicas and upgrades must agree: these values may never change.
        assert_eq!(point(endpoint_hash(b"pod-a"), 0), 3_176_524_923);
        assert_eq!(point(endpoint_hash(b"pod-a"), 127), 2_167_889_902);
        assert_eq!(place(hash(b"alice")), 3_925_391_119);
        let m = ring(10);
        let picks: Vec<usize> = keys(12).map(|k| *m.pick(k).unwrap()).collect();
        assert_eq!(picks, [1, 1, 9, 8, 6, 4, 4, 6, 8, 6, 1, 3]);
    }

    #[test]
    fn members_depend_on_the_set_not_the_order() {
        let forward = ring(50);
        let mut backward = Members::new();
        for (hash, i) in members(50).into_iter().rev() {
            backward.push((hash, i));
        }
        // Built, then changed: the same set again by another path.
        backward.pick(0);
        backward.retain(|(_, i)| *i != 7);
        backward.push((endpoint_hash(b"ep-7"), 7));
        for key in keys(5_000) {
            assert_eq!(forward.pick(key), backward.pick(key));
        }
        assert_eq!(Members::<usize>::new().pick(1), None);
        let mut one = Members::new();
        one.push((endpoint_hash(b"only"), "only"));
        assert!(keys(100).all(|k| one.pick(k) == Some(&"only")));
    }

    #[test]
    fn removing_a_member_moves_only_its_keys_and_putting_it_back_restores_them() {
        for n in [2, 3, 4, 10, 100, 1_000] {
            let mut m = ring(n);
            let before: Vec<usize> = keys(20_000).map(|k| *m.pick(k).unwrap()).collect();
            let gone = n / 2;
            m.retain(|(_, i)| *i != gone);
            for (key, was) in keys(20_000).zip(&before) {
                let now = *m.pick(key).unwrap();
                if *was == gone {
                    assert_ne!(now, gone);
                } else {
                    assert_eq!(now, *was, "N={n}: a key moved that had no reason to");
                }
            }
            m.push((endpoint_hash(format!("ep-{gone}").as_bytes()), gone));
            for (key, was) in keys(20_000).zip(&before) {
                assert_eq!(*m.pick(key).unwrap(), *was, "N={n}: back, its keys come back");
            }
        }
    }

    #[test]
    fn adding_a_member_moves_only_keys_to_it_about_1_in_n_plus_1() {
        for n in [3, 10, 100, 1_000] {
            let before = ring(n);
            let total = 20_000;
            // Averaged over 8 newcomers: the share, not one newcomer's luck.
            let mut moved = 0;
            for j in 0..8 {
                let mut after = ring(n);
                after.push((endpoint_hash(format!("new-{j}").as_bytes()), usize::MAX));
                for key in keys(total) {
                    let (a, b) = (*before.pick(key).unwrap(), *after.pick(key).unwrap());
                    if a != b {
                        assert_eq!(b, usize::MAX, "N={n}: a key moved between old members");
                        moved += 1;
                    }
                }
            }
            let fraction = moved as f64 / (8 * total) as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!((fraction - ideal).abs() < ideal * 0.25, "N={n}: {fraction} vs {ideal}");
        }
    }

    #[test]
    fn keys_spread_evenly_over_the_members() {
        for n in [3, 10, 100] {
            let m = ring(n);
            let mut counts = vec![0usize; n];
            let total = 2_000 * n;
            for key in keys(total) {
                counts[*m.pick(key).unwrap()] += 1;
            }
            let mean = (total / n) as f64;
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            // 128 points each: about ±9% (one standard deviation); the extremes of 100
            // members, with the sampling noise of 2,000 keys per member, within ±40%.
            assert!(max as f64 <= mean * 1.4 && min as f64 >= mean * 0.65, "N={n}: {min}..{max}");
        }
    }

    /// Load spread of the lookup, and disruption: run with
    /// `cargo test --release --lib balance::affinity::tests::measure_members -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_members() {
        use std::hint::black_box;
        use std::time::Instant;
        println!("| N | max/mean | min/mean | pick | build |");
        println!("|---|---|---|---|---|");
        for n in [3usize, 10, 100, 1_000, 10_000] {
            let m = ring(n);
            let total = (200 * n).max(200_000);
            let mut counts = vec![0usize; n];
            for key in keys(total) {
                counts[*m.pick(key).unwrap()] += 1;
            }
            let mean = total as f64 / n as f64;
            let max = *counts.iter().max().unwrap() as f64 / mean;
            let min = *counts.iter().min().unwrap() as f64 / mean;
            let picks = 1_000_000;
            let t = Instant::now();
            for k in keys(picks) {
                black_box(m.pick(black_box(k)));
            }
            let pick = t.elapsed().as_nanos() as f64 / picks as f64;
            let t = Instant::now();
            let lookup = Ring::new(&m.list);
            let build = t.elapsed();
            black_box(lookup);
            println!("| {n} | {max:.3} | {min:.3} | {pick:.0} ns | {build:.1?} |");
        }
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

//! Picks a weighted group for a new session.

use std::sync::atomic::{AtomicU64, Ordering};

/// Spreads picks over groups in proportion to their weights, deterministically.
///
/// Pick `n` takes the fractional part of `n·φ` (a Weyl sequence, the golden ratio's
/// low-discrepancy walk over [0, 1)) and maps it onto the cumulative weights. Over any run of
/// picks each group's share stays within a few picks of its weight, without a random source
/// or a lock.
#[derive(Debug, Default)]
pub(crate) struct WeightedPicker {
    next: AtomicU64,
}

/// 2^64 / φ, rounded to odd: the Weyl sequence's step in fixed point.
const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

impl WeightedPicker {
    /// The index of the chosen weight, or `None` when every weight is zero.
    pub(crate) fn pick(&self, weights: impl Iterator<Item = u64> + Clone) -> Option<usize> {
        let total: u128 = weights.clone().map(u128::from).sum();
        if total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let point = (u128::from(n.wrapping_mul(STEP)) * total) >> 64;
        let mut upto = 0u128;
        for (i, weight) in weights.enumerate() {
            upto += u128::from(weight);
            if point < upto {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_weights() {
        let picker = WeightedPicker::default();
        let weights = [70u64, 30, 0];
        let mut counts = [0usize; 3];
        for _ in 0..1000 {
            counts[picker.pick(weights.iter().copied()).unwrap()] += 1;
        }
        assert!((695..=705).contains(&counts[0]), "{counts:?}");
        assert!((295..=305).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0);
        assert_eq!(picker.pick([0u64, 0].into_iter()), None);
        assert_eq!(picker.pick(std::iter::empty()), None);
    }
}

//! [`Backoff`]: how long to wait before the next retry.
//!
//! Exponential backoff with full jitter: the n-th retry (from 0) waits a
//! uniformly random time between zero and `min(max, base · 2^n)`. Jitter
//! spreads out clients that all lost the same leader at the same moment, so
//! the new leader is not hit by a synchronised wave of retries.

use std::time::Duration;

use rand::Rng;

use crate::config::ClientConfig;

/// Retry delays for one call; a new call starts a new `Backoff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    retries_max: u32,
    /// Retries granted so far.
    retries: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64, retries_max: u32) -> Self {
        assert!(base_ms <= max_ms, "backoff base {base_ms} ms is above its max {max_ms} ms");
        Backoff {
            base_ms,
            max_ms,
            retries_max,
            retries: 0,
        }
    }

    pub fn from_config(config: &ClientConfig) -> Self {
        Backoff::new(config.backoff_base_ms, config.backoff_max_ms, config.retries_max)
    }

    /// The longest the retry numbered `retry` (from 0) may wait.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        // 2^63 overflows nothing once saturated; beyond that the max applies anyway.
        let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay before the next retry, or `None` once `retries_max` retries
    /// have been granted.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Option<Duration> {
        if self.retries >= self.retries_max {
            return None;
        }
        let ceiling_ms = self.ceiling_ms(self.retries);
        self.retries += 1;
        Some(Duration::from_millis(rng.gen_range(0..=ceiling_ms)))
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Starts over, for long-lived loops (a watch) after they made progress.
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_ceiling_doubles_from_base_up_to_max() {
        let backoff = Backoff::new(50, 1_000, 3);

        let ceilings: Vec<u64> = (0..8).map(|retry| backoff.ceiling_ms(retry)).collect();

        assert_eq!(vec![50, 100, 200, 400, 800, 1_000, 1_000, 1_000], ceilings);
    }

    #[test]
    fn the_ceiling_never_overflows() {
        let backoff = Backoff::new(3_600_000, 3_600_000, 3);

        for retry in [30, 62, 63, 64, 1_000, u32::MAX] {
            assert_eq!(3_600_000, backoff.ceiling_ms(retry), "retry {retry}");
        }
    }

    #[test]
    fn delays_stay_between_zero_and_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1_000 {
            let mut backoff = Backoff::new(50, 1_000, 6);
            for retry in 0..6 {
                let ceiling = backoff.ceiling_ms(retry);
                let delay = backoff.next_delay(&mut rng).unwrap();
                assert!(
                    delay <= Duration::from_millis(ceiling),
                    "retry {retry}: {delay:?} above {ceiling} ms"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut rng = StdRng::seed_from_u64(11);
        let delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(1_000, 1_000, 1).next_delay(&mut rng).unwrap())
            .collect();

        let (low, high) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(
            *low < Duration::from_millis(100) && *high > Duration::from_millis(900),
            "{low:?}..{high:?} is not spread"
        );
    }

    #[test]
    fn retries_stop_at_retries_max() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new(10, 100, 3);

        let granted = std::iter::from_fn(|| backoff.next_delay(&mut rng)).take(10).count();

        assert_eq!(3, granted);
        assert_eq!(3, backoff.retries());
        assert_eq!(None, backoff.next_delay(&mut rng));
    }

    #[test]
    fn zero_retries_means_a_single_attempt() {
        let mut backoff = Backoff::new(10, 100, 0);

        assert_eq!(None, backoff.next_delay(&mut StdRng::seed_from_u64(1)));
    }

    #[test]
    fn reset_grants_retries_again_from_the_base() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(10, 100, 2);
        while backoff.next_delay(&mut rng).is_some() {}

        backoff.reset();

        assert_eq!(0, backoff.retries());
        assert!(backoff.next_delay(&mut rng).unwrap() <= Duration::from_millis(10));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let delays = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut backoff = Backoff::new(50, 1_000, 5);
            std::iter::from_fn(move || backoff.next_delay(&mut rng)).collect::<Vec<_>>()
        };

        assert_eq!(delays(42), delays(42));
    }
}

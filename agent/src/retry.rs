//! When a failed app is tried again: capped exponential backoff, pure (no clock, no sleeping),
//! so the applier's schedule is tested with simulated time.
//!
//! A failure that is not transient (a namespace that does not exist yet, an admission webhook
//! that refused, RBAC not granted yet) often heals by itself; the applier retries the held
//! state after `first`, doubling each time up to `ceiling`, until every app is applied or a new
//! ClusterState arrives, either of which starts the sequence over.
//!
//! The same policy, jittered by [`jittered`], spaces full rounds of failed hub endpoints
//! (`crate::endpoints::Rotation`); the random source is passed in, so tests fix it.

use std::time::Duration;

use rand::Rng;

/// Default first delay before a failed app is retried.
pub const DEFAULT_RETRY_FIRST: Duration = Duration::from_secs(1);

/// Default longest delay between retries of failed apps (`--retry-ceiling`).
pub const DEFAULT_RETRY_CEILING: Duration = Duration::from_secs(5 * 60);

/// How retries of failed apps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub first: Duration,
    /// Longest delay between two retries.
    pub ceiling: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: DEFAULT_RETRY_FIRST,
            ceiling: DEFAULT_RETRY_CEILING,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0 for the first): `first * 2^attempt`, at most
    /// `ceiling`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.first
            .checked_mul(factor)
            .unwrap_or(self.ceiling)
            .min(self.ceiling)
    }
}

/// `delay` with "equal jitter": uniformly in `[delay / 2, delay]`, so agents that lost the
/// same hub at the same moment spread their reconnections while the wait never exceeds the
/// unjittered delay (and so never the ceiling).
pub fn jittered(delay: Duration, rng: &mut impl Rng) -> Duration {
    let half = delay / 2;
    let spread = (delay - half).as_nanos() as u64;
    half + Duration::from_nanos(rng.gen_range(0..=spread))
}

/// Where one run of retries stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryState {
    attempts: u32,
}

impl RetryState {
    /// The delay before the next retry; each call counts one more attempt.
    pub fn next(&mut self, policy: &RetryPolicy) -> Duration {
        let delay = policy.delay(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// Starts over (every app applied, or a new ClusterState).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_ceiling() {
        let secs = Duration::from_secs;
        let cases = [
            (
                RetryPolicy::default(),
                vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300],
            ),
            (
                RetryPolicy {
                    first: secs(1),
                    ceiling: secs(10),
                },
                vec![1, 2, 4, 8, 10, 10],
            ),
            (
                RetryPolicy {
                    first: secs(3),
                    ceiling: secs(3),
                },
                vec![3, 3, 3],
            ),
        ];
        for (policy, want) in cases {
            let mut state = RetryState::default();
            let got: Vec<u64> = want.iter().map(|_| state.next(&policy).as_secs()).collect();
            assert_eq!(got, want, "{policy:?}");
            state.reset();
            assert_eq!(state.next(&policy), policy.first, "reset starts over");
        }
    }

    #[test]
    fn jitter_stays_between_half_the_delay_and_the_delay() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let policy = RetryPolicy {
            first: Duration::from_millis(200),
            ceiling: Duration::from_secs(10),
        };
        for attempt in 0..12 {
            let delay = policy.delay(attempt);
            let got: Vec<Duration> = (0..200).map(|_| jittered(delay, &mut rng)).collect();
            assert!(
                got.iter().all(|d| *d >= delay / 2 && *d <= delay),
                "{attempt}"
            );
            assert!(got.iter().all(|d| *d <= policy.ceiling));
            // Spread over the range, not stuck at one end.
            let low = got.iter().filter(|d| **d < delay * 3 / 4).count();
            assert!(
                (40..160).contains(&low),
                "attempt {attempt}: {low} of 200 low"
            );
        }
        assert_eq!(jittered(Duration::ZERO, &mut rng), Duration::ZERO);
        // The same seed gives the same waits: tests of the schedule are deterministic.
        let mut a = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = rand::rngs::StdRng::seed_from_u64(1);
        let d = Duration::from_secs(3);
        assert_eq!(jittered(d, &mut a), jittered(d, &mut b));
    }

    #[test]
    fn huge_attempt_counts_stay_at_the_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in [30, 31, 32, 1000, u32::MAX] {
            assert_eq!(policy.delay(attempt), policy.ceiling, "attempt {attempt}");
        }
    }
}

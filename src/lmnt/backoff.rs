//! The reconnect delay of a call's LMNT session: exponential with jitter, as a plain state
//! machine (no clock; the randomness is a seeded generator the caller owns).
//!
//! Jitter matters when LMNT (or the network to it) fails for many calls at once: without it
//! every call of the process retries at the same instants, and LMNT gets a thundering herd
//! exactly when it comes back. "Equal jitter": the `n`-th consecutive failure waits a random
//! delay in `[d/2, d]`, where `d = FIRST_BACKOFF × 2^(n-1)` capped at [`MAX_BACKOFF`], so
//! the delay still grows and never drops to nothing.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The upper bound of the first reconnect delay; doubled per consecutive failure up to
/// [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The upper bound of any delay: LMNT outages are usually short, and a call should not stay
/// silent much longer than this after LMNT comes back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Consecutive failures and the jitter's generator. One per call.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff with no failure yet, its jitter drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Backoff {
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A session delivered (audio or an acknowledgement): the next failure starts over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts one failure and returns how long to wait before the next attempt. A failure a
    /// retry cannot mend at once (`retryable` false: authentication, a rejected request, a
    /// protocol violation) waits as long as the longest backoff, so later utterances still
    /// get a session, at the slowest pace.
    pub fn on_failure(&mut self, retryable: bool) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = if retryable {
            FIRST_BACKOFF
                .saturating_mul(1 << self.failures.saturating_sub(1).min(8))
                .min(MAX_BACKOFF)
        } else {
            MAX_BACKOFF
        };
        let half = ceiling / 2;
        let jitter_ms = self.rng.random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_its_jitter_bounds_up_to_the_cap() {
        let mut b = Backoff::new(1);
        for n in 1..=12u32 {
            let ceiling = (FIRST_BACKOFF * 2u32.pow((n - 1).min(8))).min(MAX_BACKOFF);
            let d = b.on_failure(true);
            assert!(d >= ceiling / 2 && d <= ceiling, "failure {n}: {d:?}");
            assert_eq!(b.failures(), n);
        }
        b.reset();
        assert!(b.on_failure(true) <= FIRST_BACKOFF);
    }

    #[test]
    fn a_failure_no_retry_mends_waits_the_longest() {
        let mut b = Backoff::new(2);
        let d = b.on_failure(false);
        assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
    }

    #[test]
    fn calls_that_fail_together_do_not_retry_together() {
        // 20 calls (seeds) lose LMNT at the same instant: their third retries spread out.
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|seed| {
                let mut b = Backoff::new(seed);
                (0..3).map(|_| b.on_failure(true)).sum::<Duration>()
            })
            .collect();
        assert!(delays.len() >= 15, "{delays:?}");
        // The same seed gives the same delays (reproducible).
        let run = |seed| {
            let mut b = Backoff::new(seed);
            (0..5).map(|_| b.on_failure(true)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }
}

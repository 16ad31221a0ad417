//! When to try the bot again, and when to give up: a plain struct driven by an injected `now`
//! (no clock, no runtime), so its schedule is tested in virtual time.

use std::time::{Duration, Instant};

/// First wait after a failed attempt; doubled per consecutive failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a bot that comes back is reached within about this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this instant.
    RetryAt(Instant),
    /// The budget is spent: end the call (`bot_unreachable`).
    GiveUp,
}

/// The retry schedule of one call's bot connection. An outage starts with the first attempt
/// after the bot was last connected (or at the call's start) and lasts until an attempt
/// succeeds; it may last at most `budget`. A retry whose wait would end past the budget is
/// not made.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    budget: Duration,
    /// When the current outage began; `None` while connected.
    outage_since: Option<Instant>,
    /// Failed attempts in the current outage.
    failures: u32,
}

impl RetryBudget {
    /// A schedule allowing outages of at most `budget`.
    pub fn new(budget: Duration) -> Self {
        RetryBudget {
            budget,
            outage_since: None,
            failures: 0,
        }
    }

    /// An attempt starts at `now`: the first of an outage starts its clock.
    pub fn on_attempt(&mut self, now: Instant) {
        self.outage_since.get_or_insert(now);
    }

    /// The attempt succeeded: the next outage gets the whole budget again.
    pub fn on_connected(&mut self) {
        self.outage_since = None;
        self.failures = 0;
    }

    /// The attempt failed at `now` (or the connected bot dropped): when to try again, or
    /// [`Next::GiveUp`] once the outage would outlast the budget.
    pub fn on_failure(&mut self, now: Instant) -> Next {
        let since = *self.outage_since.get_or_insert(now);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1u32 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        let retry_at = now + backoff;
        if retry_at.saturating_duration_since(since) > self.budget {
            Next::GiveUp
        } else {
            Next::RetryAt(retry_at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backs_off_doubling_then_gives_up_at_the_budget() {
        let t0 = Instant::now();
        let mut retry = RetryBudget::new(ms(2_000));
        let mut now = t0;
        let mut waits = Vec::new();
        loop {
            retry.on_attempt(now);
            // Each attempt takes 50 ms to fail.
            now += ms(50);
            match retry.on_failure(now) {
                Next::RetryAt(at) => {
                    waits.push(at - now);
                    now = at;
                }
                Next::GiveUp => break,
            }
        }
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800)]);
        // 4 retries: 5 × 50 ms of attempts + 1.5 s of waits; the next wait (1.6 s) would
        // end 3.35 s into a 2 s budget.
        assert_eq!(now - t0, ms(1_750));
    }

    #[test]
    fn a_connection_restores_the_whole_budget() {
        let t0 = Instant::now();
        let mut retry = RetryBudget::new(ms(500));
        retry.on_attempt(t0);
        assert_eq!(retry.on_failure(t0 + ms(400)), Next::RetryAt(t0 + ms(500)));
        retry.on_attempt(t0 + ms(500));
        retry.on_connected();
        // The bot drops ten minutes later: a new outage, a new budget, the first backoff.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(retry.on_failure(later), Next::RetryAt(later + ms(100)));
    }

    #[test]
    fn a_zero_budget_never_retries_and_waits_are_capped() {
        let t0 = Instant::now();
        let mut none = RetryBudget::new(Duration::ZERO);
        none.on_attempt(t0);
        assert_eq!(none.on_failure(t0), Next::GiveUp);

        let mut long = RetryBudget::new(Duration::from_secs(600));
        let mut now = t0;
        for _ in 0..40 {
            match long.on_failure(now) {
                Next::RetryAt(at) => {
                    assert!(at - now <= MAX_BACKOFF);
                    now = at;
                }
                Next::GiveUp => break,
            }
        }
        assert!(now - t0 > Duration::from_secs(60));
    }
}

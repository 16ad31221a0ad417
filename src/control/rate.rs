//! Per-call rate limits on what a bot may make the daemon do: control messages per second, and
//! flushes per second (each flush is one paid LMNT synthesis). Sans-IO: every method takes the
//! caller's `now`; nothing here reads a clock, so the tests step virtual time.
//!
//! A call has one [`BotRateLimiter`] for its whole life, shared by its control channel and
//! `POST /v1/calls/{id}/say`, so a bot that reconnects or switches to HTTP starts with the
//! tokens it left behind, not a full bucket.

use std::time::{Duration, Instant};

/// The configured limits (`limits.bot_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Control messages (and `say` requests) a second, sustained.
    pub messages_per_sec: f64,
    /// Control messages accepted at once after a quiet spell.
    pub message_burst: u32,
    /// Flushes (and `say` requests) a second, sustained.
    pub flushes_per_sec: f64,
    /// Flushes accepted at once after a quiet spell.
    pub flush_burst: u32,
}

/// A token bucket: up to `burst` tokens, refilled continuously at `per_sec` tokens a second;
/// each admitted event takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `per_sec` must be positive and finite, `burst` at least 1
    /// (the configuration is validated for both); other values are clamped there.
    pub fn new(per_sec: f64, burst: u32, now: Instant) -> Self {
        let per_sec = if per_sec.is_finite() && per_sec > 0.0 {
            per_sec
        } else {
            f64::MIN_POSITIVE
        };
        let burst = f64::from(burst.max(1));
        TokenBucket {
            per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Refills up to `now` (an earlier `now` than the last one refills nothing), then returns
    /// `Ok` when a token is available, or how long until one will be.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }

    /// Takes one token. Call only after [`TokenBucket::check`] returned `Ok` at the same `now`.
    fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Takes one token at `now` if one is available; otherwise how long until one is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.check(now)?;
        self.take();
        Ok(())
    }
}

/// What a bot asks for, as the limiter counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A control message that is not a flush (`text`, `clear`, `mark`, `dtmf`, a malformed
    /// frame): one message token.
    Message,
    /// A `flush`, or a `say` request (text then flush): one message token and one flush token.
    Flush,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.bot_messages_per_sec` / `limits.bot_message_burst`.
    Messages,
    /// `limits.bot_flushes_per_sec` / `limits.bot_flush_burst`.
    Flushes,
}

impl Limit {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Messages => "messages",
            Limit::Flushes => "flushes",
        }
    }
}

/// A refused request: the limit it hit and how long until the same request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit that refused it.
    pub limit: Limit,
    /// How long until a token of that limit is back.
    pub retry_after: Duration,
}

/// One call's message and flush buckets.
#[derive(Debug, Clone)]
pub struct BotRateLimiter {
    messages: TokenBucket,
    flushes: TokenBucket,
}

impl BotRateLimiter {
    /// Full buckets at `now`.
    pub fn new(limits: &RateLimits, now: Instant) -> Self {
        BotRateLimiter {
            messages: TokenBucket::new(limits.messages_per_sec, limits.message_burst, now),
            flushes: TokenBucket::new(limits.flushes_per_sec, limits.flush_burst, now),
        }
    }

    /// Admits `request` at `now`, taking its tokens, or refuses it taking none (a refused
    /// flush does not spend a message token either).
    pub fn admit(&mut self, request: Request, now: Instant) -> Result<(), Refused> {
        let refused = |limit| move |retry_after| Refused { limit, retry_after };
        match request {
            Request::Message => self
                .messages
                .try_take(now)
                .map_err(refused(Limit::Messages)),
            Request::Flush => {
                self.messages.check(now).map_err(refused(Limit::Messages))?;
                self.flushes
                    .try_take(now)
                    .map_err(refused(Limit::Flushes))?;
                self.messages.take();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> RateLimits {
        RateLimits {
            messages_per_sec: 100.0,
            message_burst: 10,
            flushes_per_sec: 2.0,
            flush_burst: 3,
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5, t0);
        for _ in 0..5 {
            assert_eq!(bucket.try_take(t0), Ok(()));
        }
        assert_eq!(bucket.try_take(t0), Err(100 * MS));
        // 50 ms later half a token is back: 50 ms to wait.
        assert_eq!(bucket.try_take(t0 + 50 * MS), Err(50 * MS));
        assert_eq!(bucket.try_take(t0 + 100 * MS), Ok(()));
        // Over ten virtual seconds at exactly the rate, every request passes.
        let mut admitted = 0;
        for i in 1..=100u32 {
            if bucket.try_take(t0 + 100 * MS + i * 100 * MS).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_flood_is_held_to_the_rate_plus_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5, t0);
        // 10 000 requests a second for ten virtual seconds.
        let admitted = (0..100_000u32)
            .filter(|i| {
                bucket
                    .try_take(t0 + *i * Duration::from_micros(100))
                    .is_ok()
            })
            .count();
        assert!((100..=105).contains(&admitted), "{admitted} admitted");
    }

    #[test]
    fn a_quiet_spell_refills_no_more_than_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5, t0);
        let later = t0 + Duration::from_secs(3600);
        let admitted = (0..20).filter(|_| bucket.try_take(later).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1.0, 1, t0);
        assert_eq!(bucket.try_take(t0), Ok(()));
        assert!(bucket.try_take(t0 - Duration::from_secs(5)).is_err());
        assert_eq!(bucket.try_take(t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn flushes_are_limited_apart_and_a_refused_flush_costs_nothing() {
        let t0 = Instant::now();
        let mut limiter = BotRateLimiter::new(&limits(), t0);
        for _ in 0..3 {
            assert_eq!(limiter.admit(Request::Flush, t0), Ok(()));
        }
        let refused = limiter.admit(Request::Flush, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Flushes);
        assert_eq!(refused.retry_after, 500 * MS);
        // The refused flush took no message token: 7 of the 10 are left.
        let messages = (0..10)
            .filter(|_| limiter.admit(Request::Message, t0).is_ok())
            .count();
        assert_eq!(messages, 7);
        // Half a second later one flush token is back (2 a second), and only one.
        assert_eq!(limiter.admit(Request::Flush, t0 + 500 * MS), Ok(()));
        let refused = limiter.admit(Request::Flush, t0 + 500 * MS).unwrap_err();
        assert_eq!(refused.limit, Limit::Flushes);
    }

    #[test]
    fn a_message_flood_also_blocks_flushes() {
        let t0 = Instant::now();
        let mut limiter = BotRateLimiter::new(&limits(), t0);
        while limiter.admit(Request::Message, t0).is_ok() {}
        let refused = limiter.admit(Request::Flush, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Messages);
        assert_eq!(refused.retry_after, 10 * MS);
        assert_eq!(limiter.admit(Request::Flush, t0 + 10 * MS), Ok(()));
    }
}

//! The liveness deadline of a session, as a plain state machine driven by an injected `now`.
//!
//! While a flush, reset or finish is outstanding (sent and not yet answered by its
//! acknowledgement, or by the close for `finish`), the server owes us something. Every audio
//! frame or acknowledgement is progress. If no progress arrives for `timeout` while something
//! is owed, the session is dead. With nothing owed there is no deadline: a quiet, idle
//! session is healthy.
//!
//! Only LMNT's silence counts. While the reader does not read the socket because the
//! consumer is not taking events (backpressure: [`Liveness::on_paused`] to
//! [`Liveness::on_resumed`]), LMNT's frames wait in the socket on our account: there is no
//! deadline then, and the paused time is not added to LMNT's silence.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Tracks what the server owes and when it last made progress.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    flushes: BTreeSet<u64>,
    resets: BTreeSet<u64>,
    finish: bool,
    last_progress: Option<Instant>,
    /// Set while the reader is not reading (see [`Liveness::on_paused`]).
    paused_since: Option<Instant>,
}

impl Liveness {
    /// A tracker with nothing owed.
    pub fn new(timeout: Duration) -> Self {
        Liveness {
            timeout,
            flushes: BTreeSet::new(),
            resets: BTreeSet::new(),
            finish: false,
            last_progress: None,
            paused_since: None,
        }
    }

    fn owed(&self) -> bool {
        self.finish || !self.flushes.is_empty() || !self.resets.is_empty()
    }

    fn sent(&mut self, now: Instant) {
        // A new request restarts the clock only when nothing was owed before; otherwise the
        // older request's deadline keeps running.
        if !self.owed() || self.last_progress.is_none() {
            self.last_progress = Some(now);
        }
    }

    /// Call when a flush with `nonce` was written.
    pub fn on_flush_sent(&mut self, now: Instant, nonce: u64) {
        self.sent(now);
        self.flushes.insert(nonce);
    }

    /// Call when a reset with `nonce` was written.
    pub fn on_reset_sent(&mut self, now: Instant, nonce: u64) {
        self.sent(now);
        self.resets.insert(nonce);
    }

    /// Call when finish was written; it is answered only by the server closing.
    pub fn on_finish_sent(&mut self, now: Instant) {
        self.sent(now);
        self.finish = true;
    }

    /// Call for every audio frame or timestamps frame.
    pub fn on_progress(&mut self, now: Instant) {
        self.last_progress = Some(now);
    }

    /// Call on `flush_complete`.
    pub fn on_flush_complete(&mut self, now: Instant, nonce: u64) {
        self.flushes.remove(&nonce);
        self.on_progress(now);
    }

    /// Call on `reset_complete`: the reset and every flush sent before it are settled.
    pub fn on_reset_complete(&mut self, now: Instant, nonce: u64) {
        self.resets.remove(&nonce);
        self.flushes.retain(|&n| n > nonce);
        self.on_progress(now);
    }

    /// Call when the reader stops reading the socket because the consumer is not taking
    /// events. Until [`Liveness::on_resumed`] there is no deadline. Idempotent.
    pub fn on_paused(&mut self, now: Instant) {
        self.paused_since.get_or_insert(now);
    }

    /// Call when the reader reads again. The silence counted so far stays counted; the
    /// paused time does not: the clock goes on from where it stood when the pause began (or
    /// from a request sent during the pause, from `now`). A no-op when not paused.
    pub fn on_resumed(&mut self, now: Instant) {
        let Some(since) = self.paused_since.take() else {
            return;
        };
        if let Some(last) = self.last_progress {
            let paused_after_last = now.saturating_duration_since(since.max(last));
            self.last_progress = Some(last + paused_after_last);
        }
    }

    /// When the session is declared dead if nothing arrives; None while nothing is owed and
    /// while paused.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.owed() || self.paused_since.is_some() {
            return None;
        }
        self.last_progress.map(|t| t + self.timeout)
    }

    /// True when the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// The configured timeout (for the error message).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(500);

    #[test]
    fn idle_session_has_no_deadline() {
        let t0 = Instant::now();
        let l = Liveness::new(T);
        assert_eq!(l.deadline(), None);
        assert!(!l.expired(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn audio_extends_and_ack_clears() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.on_flush_sent(t0, 1);
        assert_eq!(l.deadline(), Some(t0 + T));
        l.on_progress(t0 + Duration::from_millis(400));
        assert!(!l.expired(t0 + Duration::from_millis(800)));
        assert!(l.expired(t0 + Duration::from_millis(900)));
        l.on_flush_complete(t0 + Duration::from_millis(850), 1);
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn a_second_flush_does_not_restart_the_first_ones_clock() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.on_flush_sent(t0, 1);
        l.on_flush_sent(t0 + Duration::from_millis(300), 2);
        assert!(l.expired(t0 + T));
        l.on_flush_complete(t0 + Duration::from_millis(400), 1);
        assert_eq!(l.deadline(), Some(t0 + Duration::from_millis(400) + T));
    }

    #[test]
    fn time_paused_by_backpressure_is_not_silence() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.on_flush_sent(t0, 1);
        l.on_progress(t0 + ms(100));
        // 100 ms of silence counted, then the consumer stops taking events for a minute.
        l.on_paused(t0 + ms(200));
        assert_eq!(l.deadline(), None);
        assert!(!l.expired(t0 + ms(60_000)));
        l.on_paused(t0 + ms(30_000)); // idempotent: the pause began at 200 ms
        l.on_resumed(t0 + ms(60_200));
        // 100 ms were counted before the pause: 400 ms are left after it.
        assert_eq!(l.deadline(), Some(t0 + ms(60_600)));
        assert!(!l.expired(t0 + ms(60_599)));
        assert!(l.expired(t0 + ms(60_600)));
        // A resume without a pause changes nothing.
        l.on_resumed(t0 + ms(70_000));
        assert_eq!(l.deadline(), Some(t0 + ms(60_600)));
    }

    #[test]
    fn a_request_sent_while_paused_is_owed_from_the_resume() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.on_paused(t0);
        l.on_flush_sent(t0 + ms(1_000), 1);
        assert_eq!(l.deadline(), None);
        l.on_resumed(t0 + ms(9_000));
        assert_eq!(l.deadline(), Some(t0 + ms(9_000) + T));
        // Nothing owed before or during a pause: no deadline after it either.
        let mut idle = Liveness::new(T);
        idle.on_paused(t0);
        idle.on_resumed(t0 + ms(9_000));
        assert_eq!(idle.deadline(), None);
    }

    #[test]
    fn reset_settles_earlier_flushes_and_finish_stays_owed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(T);
        l.on_flush_sent(t0, 1);
        l.on_reset_sent(t0, 2);
        l.on_reset_complete(t0, 2);
        assert_eq!(l.deadline(), None);
        l.on_finish_sent(t0);
        assert!(l.expired(t0 + T));
    }
}

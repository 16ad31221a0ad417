//! How the TTS delivers, and how much audio to hold before an utterance's first frame.
//!
//! The measure is the *lateness* of each chunk: for chunk `i` of an utterance,
//! `late_i = (arrival_i − arrival_0) − audio_before_i`, how far behind a real-time playout
//! started at the first arrival the chunk came. Playing an utterance without an underrun
//! needs a start-up buffer of `max_i late_i`: that one number covers jitter (a late chunk),
//! slow delivery (lateness grows over the utterance at speed < 1) and stalls. A fast bursty
//! TTS has lateness 0 and starts at once.
//!
//! Across utterances of a call the estimate rises at once to a larger observation and decays
//! by a quarter of the difference per utterance towards a smaller one.

use std::time::{Duration, Instant};

/// Estimate before anything is known: one typical network-jitter allowance, small enough that
/// the first utterance of a fast TTS starts with its first chunk.
pub const INITIAL_ESTIMATE: Duration = Duration::from_millis(40);
/// Added to a nonzero estimate: frames are due on a 20 ms grid, so a chunk can be needed up
/// to one frame before the lateness arithmetic says.
pub const SAFETY_MARGIN: Duration = Duration::from_millis(20);
/// A smaller observation moves the estimate by 1/RELEASE_DIVISOR of the difference, so one
/// lucky utterance does not undo what several slow ones taught.
const RELEASE_DIVISOR: u32 = 4;
/// RFC 3550's jitter smoothing: 1/16 of each new deviation.
const JITTER_GAIN: f64 = 1.0 / 16.0;

/// Delivery measurement for one call. Plain data, driven by the `now` its caller passes.
#[derive(Debug, Clone)]
pub struct DeliveryEstimator {
    min: Duration,
    max: Duration,
    /// Start-up buffer the past utterances needed (unclamped, without margin).
    need: Duration,
    current: Option<UtteranceDelivery>,
    /// Smoothed |inter-arrival time − audio duration of the previous chunk|, seconds.
    jitter_s: f64,
    /// Audio delivered per second of wall time after the first chunk, last measured.
    speed: Option<f64>,
}

#[derive(Debug, Clone)]
struct UtteranceDelivery {
    first: Instant,
    prev: Instant,
    first_audio: Duration,
    prev_audio: Duration,
    audio: Duration,
    max_late: Duration,
}

impl DeliveryEstimator {
    /// An estimator whose start-up buffer stays within `[min, max]`.
    pub fn new(min: Duration, max: Duration) -> Self {
        DeliveryEstimator {
            min,
            max: max.max(min),
            need: INITIAL_ESTIMATE,
            current: None,
            jitter_s: 0.0,
            speed: None,
        }
    }

    /// A chunk carrying `audio` of sound arrived at `now` for the utterance being received.
    pub fn on_audio(&mut self, now: Instant, audio: Duration) {
        match &mut self.current {
            None => {
                self.current = Some(UtteranceDelivery {
                    first: now,
                    prev: now,
                    first_audio: audio,
                    prev_audio: audio,
                    audio,
                    max_late: Duration::ZERO,
                })
            }
            Some(u) => {
                let since_first = now.saturating_duration_since(u.first);
                let late = since_first.saturating_sub(u.audio);
                u.max_late = u.max_late.max(late);
                let gap = now.saturating_duration_since(u.prev).as_secs_f64();
                let deviation = (gap - u.prev_audio.as_secs_f64()).abs();
                self.jitter_s += (deviation - self.jitter_s) * JITTER_GAIN;
                u.audio += audio;
                u.prev = now;
                u.prev_audio = audio;
                if !since_first.is_zero() {
                    let after_first = u.audio.saturating_sub(u.first_audio);
                    self.speed = Some(after_first.as_secs_f64() / since_first.as_secs_f64());
                }
            }
        }
    }

    /// The utterance being received is complete (or was interrupted): fold its lateness into
    /// the estimate. Does nothing when no audio arrived.
    pub fn on_end(&mut self) {
        if let Some(u) = self.current.take() {
            let seen = u.max_late;
            self.need = if seen >= self.need {
                seen
            } else {
                self.need - (self.need - seen) / RELEASE_DIVISOR
            };
        }
    }

    /// How much audio (or waiting since the first chunk) an utterance needs before its first
    /// frame: the estimate plus [`SAFETY_MARGIN`] (none when the estimate is zero), clamped to
    /// `[min, max]`.
    pub fn startup_buffer(&self) -> Duration {
        let target = if self.need.is_zero() {
            Duration::ZERO
        } else {
            self.need + SAFETY_MARGIN
        };
        target.clamp(self.min, self.max)
    }

    /// Smoothed arrival jitter (RFC 3550 style, against each chunk's audio duration).
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter_s.max(0.0))
    }

    /// Delivery speed relative to real time (2.0 = twice as fast); None until an utterance
    /// delivered a second chunk.
    pub fn speed(&self) -> Option<f64> {
        self.speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_gives_zero_and_slow_gives_a_quarter() {
        let t = Instant::now();
        let mut e = DeliveryEstimator::new(Duration::ZERO, Duration::from_secs(5));
        // 5 s in 50 chunks of 100 ms, one every 4 ms.
        for i in 0..50u32 {
            e.on_audio(t + 4 * i * MS, 100 * MS);
        }
        e.on_end();
        assert_eq!(
            e.need,
            INITIAL_ESTIMATE - INITIAL_ESTIMATE / RELEASE_DIVISOR
        );
        assert!(e.speed().unwrap() > 10.0);
        // 0.8x: 100 ms chunks every 125 ms over 2 s.
        let t = t + 10_000 * MS;
        for i in 0..20u32 {
            e.on_audio(t + 125 * i * MS, 100 * MS);
        }
        e.on_end();
        assert_eq!(e.need, 475 * MS);
        assert_eq!(e.startup_buffer(), 495 * MS);
        assert!((e.speed().unwrap() - 0.8).abs() < 0.01);
    }

    #[test]
    fn clamps_to_bounds() {
        let t = Instant::now();
        let mut e = DeliveryEstimator::new(50 * MS, 300 * MS);
        e.on_audio(t, 10 * MS);
        e.on_audio(t + 2_000 * MS, 10 * MS);
        e.on_end();
        assert_eq!(e.startup_buffer(), 300 * MS);
        let mut e = DeliveryEstimator::new(50 * MS, 300 * MS);
        for _ in 0..40 {
            e.on_audio(t, 10 * MS);
            e.on_end();
        }
        assert_eq!(e.startup_buffer(), 50 * MS);
    }
}

//! How rendered audio leaves the server: chunk sizes and send times, as a plain state machine
//! driven by an injected `now` (the session task sleeps until the instants it returns).
//!
//! Fault knobs (first-byte delay, speed, jitter, one stall, odd chunk lengths) come from the
//! server's command line, never from the client.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Largest binary frame local-tts sends: 64 KiB, far below the 1 MiB the Python SDKs accept.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Delivery settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryKnobs {
    /// Wait this long before the first chunk of every rendered piece.
    pub first_byte_delay: Duration,
    /// Audio delivered at this multiple of real time; None: as fast as rendered.
    pub speed: Option<f64>,
    /// Audio per binary frame.
    pub chunk_ms: u32,
    /// Random extra delay per chunk, 0 to this, from `seed`.
    pub jitter_ms: u32,
    pub seed: u64,
    /// Make every chunk an odd number of bytes (samples split across frames).
    pub odd_chunks: bool,
    /// Pause once, for `stall`, after this much audio was delivered in the session.
    pub stall_after: Option<Duration>,
    pub stall: Duration,
}

impl Default for DeliveryKnobs {
    fn default() -> Self {
        DeliveryKnobs {
            first_byte_delay: Duration::ZERO,
            speed: None,
            chunk_ms: 20,
            jitter_ms: 0,
            seed: 0,
            odd_chunks: false,
            stall_after: None,
            stall: Duration::ZERO,
        }
    }
}

/// One session's delivery schedule.
#[derive(Debug)]
pub struct Delivery {
    knobs: DeliveryKnobs,
    rng: StdRng,
    bytes_per_ms: f64,
    /// When the current piece's audio time zero is due.
    anchor: Option<Instant>,
    /// Audio of the current piece already scheduled.
    piece_audio: Duration,
    /// Audio scheduled in the whole session (for the stall).
    session_audio: Duration,
    stalled: bool,
}

impl Delivery {
    /// A schedule for a format with `bytes_per_ms` bytes per millisecond of audio.
    pub fn new(knobs: DeliveryKnobs, bytes_per_ms: f64) -> Self {
        Delivery {
            rng: StdRng::seed_from_u64(knobs.seed),
            knobs,
            bytes_per_ms,
            anchor: None,
            piece_audio: Duration::ZERO,
            session_audio: Duration::ZERO,
            stalled: false,
        }
    }

    /// Splits one rendered piece into frame payloads of `chunk_ms` of audio each (odd lengths
    /// with `odd_chunks`), never more than [`MAX_FRAME_BYTES`] and never empty.
    pub fn chunk(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut size = ((f64::from(self.knobs.chunk_ms.max(1)) * self.bytes_per_ms) as usize)
            .clamp(1, MAX_FRAME_BYTES);
        if self.knobs.odd_chunks && size.is_multiple_of(2) {
            size -= 1;
        }
        bytes.chunks(size).map(<[u8]>::to_vec).collect()
    }

    /// Call before the first chunk of a piece rendered at `now`.
    pub fn start_piece(&mut self, now: Instant) {
        self.anchor = Some(now + self.knobs.first_byte_delay);
        self.piece_audio = Duration::ZERO;
    }

    /// When to send the next chunk of `len` bytes; call in order for every chunk.
    pub fn schedule(&mut self, now: Instant, len: usize) -> Instant {
        let anchor = *self.anchor.get_or_insert(now);
        let mut at = match self.knobs.speed {
            Some(speed) if speed > 0.0 => anchor + self.piece_audio.div_f64(speed),
            _ => anchor,
        };
        if self.knobs.jitter_ms > 0 {
            at += Duration::from_millis(self.rng.random_range(0..=u64::from(self.knobs.jitter_ms)));
        }
        let audio =
            Duration::from_secs_f64(len as f64 / self.bytes_per_ms.max(f64::MIN_POSITIVE) / 1000.0);
        self.piece_audio += audio;
        self.session_audio += audio;
        if let Some(after) = self.knobs.stall_after {
            if !self.stalled && self.session_audio > after {
                // The chunk that crosses the mark is held back, and everything after it.
                self.stalled = true;
                if let Some(a) = self.anchor.as_mut() {
                    *a += self.knobs.stall;
                }
                at += self.knobs.stall;
            }
        }
        at.max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> DeliveryKnobs {
        DeliveryKnobs::default()
    }

    #[test]
    fn chunks_of_chunk_ms_and_odd_lengths() {
        let d = Delivery::new(knobs(), 48.0);
        let c = d.chunk(&[0u8; 2000]);
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![960, 960, 80]
        );
        let d = Delivery::new(
            DeliveryKnobs {
                odd_chunks: true,
                ..knobs()
            },
            48.0,
        );
        assert!(d.chunk(&[0u8; 2000]).iter().take(2).all(|c| c.len() == 959));
        let d = Delivery::new(
            DeliveryKnobs {
                chunk_ms: 100_000,
                ..knobs()
            },
            48.0,
        );
        assert_eq!(d.chunk(&[0u8; 100_000])[0].len(), MAX_FRAME_BYTES);
    }

    #[test]
    fn default_is_immediate_and_speed_paces() {
        let t0 = Instant::now();
        let mut d = Delivery::new(knobs(), 48.0);
        d.start_piece(t0);
        assert_eq!(d.schedule(t0, 960), t0);
        assert_eq!(d.schedule(t0, 960), t0);
        let mut d = Delivery::new(
            DeliveryKnobs {
                speed: Some(2.0),
                first_byte_delay: Duration::from_millis(50),
                ..knobs()
            },
            48.0,
        );
        d.start_piece(t0);
        assert_eq!(d.schedule(t0, 960), t0 + Duration::from_millis(50));
        assert_eq!(d.schedule(t0, 960), t0 + Duration::from_millis(60));
    }

    #[test]
    fn stall_once_and_seeded_jitter() {
        let t0 = Instant::now();
        let k = DeliveryKnobs {
            stall_after: Some(Duration::from_millis(30)),
            stall: Duration::from_millis(500),
            ..knobs()
        };
        let mut d = Delivery::new(k, 48.0);
        d.start_piece(t0);
        assert_eq!(d.schedule(t0, 960), t0);
        assert_eq!(d.schedule(t0, 960), t0 + Duration::from_millis(500));
        assert_eq!(d.schedule(t0, 960), t0 + Duration::from_millis(500));
        let k = DeliveryKnobs {
            jitter_ms: 10,
            seed: 7,
            ..knobs()
        };
        let run = || {
            let mut d = Delivery::new(k.clone(), 48.0);
            d.start_piece(t0);
            (0..20).map(|_| d.schedule(t0, 960)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|t| *t <= t0 + Duration::from_millis(10)));
        assert!(a.iter().any(|t| *t > t0));
    }
}

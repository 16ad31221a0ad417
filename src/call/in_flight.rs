//! Frames handed to the RTP sender whose datagrams may not have left yet.
//!
//! The driver pushes every frame it hands over, in order, with the RTP sequence number it got
//! and whether the frame makes bot events true ([`super::core::Transmit::has_events`]). A
//! frame is *released* (reported to [`super::core::CallCore::handle_frame_sent`]) in order,
//! once: its send failed, it has no events, the peer's socket reported its sequence number
//! (or a later one) sent, or [`MAX_CONFIRM_WAIT`] passed without a report. No I/O, no clock:
//! `now` is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a frame's events wait for its datagram before they are released anyway. A healthy
/// stack sends within a few milliseconds even under load; a frame not reported by then was
/// dropped by the stack (no selected candidate pair yet, a closing connection), and holding
/// the bot's events longer would only stall them.
pub const MAX_CONFIRM_WAIT: Duration = Duration::from_millis(250);

/// How a frame came to be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Its datagram left, its send failed, or it had no events to hold back.
    Done,
    /// No report came within [`MAX_CONFIRM_WAIT`]: the stack dropped it, or is stalled.
    Unconfirmed,
}

#[derive(Debug)]
struct Frame {
    /// `None` when the send failed.
    sequence: Option<u16>,
    has_events: bool,
    handed_at: Instant,
}

/// The frames between "handed to the sender" and "known to have left". See the module docs.
#[derive(Debug, Default)]
pub struct FramesInFlight {
    frames: VecDeque<Frame>,
    /// Newest sequence number reported sent.
    sent: Option<u16>,
}

impl FramesInFlight {
    /// A frame was handed over at `now` as packet `sequence` (`None`: its send failed).
    pub fn push(&mut self, now: Instant, sequence: Option<u16>, has_events: bool) {
        self.frames.push_back(Frame {
            sequence,
            has_events,
            handed_at: now,
        });
    }

    /// The socket reports packet `sequence` sent. Packets leave in order, so every earlier
    /// one has left too.
    pub fn handle_sent(&mut self, sequence: u16) {
        self.sent = Some(sequence);
    }

    /// Releases the oldest frame if it may be released at `now`. Call until it returns
    /// `None`, reporting each release to the core.
    pub fn poll_release(&mut self, now: Instant) -> Option<Released> {
        let front = self.frames.front()?;
        let released = match front.sequence {
            None => Released::Done,
            Some(_) if !front.has_events => Released::Done,
            Some(sequence) if self.sent.is_some_and(|sent| not_before(sent, sequence)) => {
                Released::Done
            }
            Some(_) if now >= front.handed_at + MAX_CONFIRM_WAIT => Released::Unconfirmed,
            Some(_) => return None,
        };
        self.frames.pop_front();
        Some(released)
    }

    /// True while a frame waits for the socket's report (after [`Self::poll_release`]
    /// returned `None`).
    pub fn is_waiting(&self) -> bool {
        !self.frames.is_empty()
    }

    /// When the oldest waiting frame is released without a report.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.frames.front().map(|f| f.handed_at + MAX_CONFIRM_WAIT)
    }
}

/// `a` is `b` or after it in 16-bit sequence-number space (RFC 3550 wrap-around).
fn not_before(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(f: &mut FramesInFlight, now: Instant) -> usize {
        std::iter::from_fn(|| f.poll_release(now)).count()
    }

    #[test]
    fn events_wait_for_their_datagram_and_keep_their_order() {
        let t0 = Instant::now();
        let mut f = FramesInFlight::default();
        f.push(t0, Some(10), false);
        f.push(t0, Some(11), true);
        f.push(t0, Some(12), false);
        // The frame without events goes at once; the next waits, and holds back the third.
        assert_eq!(drain(&mut f, t0), 1);
        assert!(f.is_waiting());
        f.handle_sent(10);
        assert_eq!(drain(&mut f, t0), 0);
        f.handle_sent(11);
        assert_eq!(drain(&mut f, t0), 2);
        assert!(!f.is_waiting());
    }

    #[test]
    fn a_failed_send_releases_at_once() {
        let t0 = Instant::now();
        let mut f = FramesInFlight::default();
        f.push(t0, None, true);
        assert_eq!(drain(&mut f, t0), 1);
    }

    #[test]
    fn a_frame_never_reported_is_released_after_the_wait() {
        let t0 = Instant::now();
        let mut f = FramesInFlight::default();
        f.push(t0, Some(5), true);
        assert_eq!(f.poll_timeout(), Some(t0 + MAX_CONFIRM_WAIT));
        assert_eq!(
            drain(&mut f, t0 + MAX_CONFIRM_WAIT - Duration::from_millis(1)),
            0
        );
        assert_eq!(
            f.poll_release(t0 + MAX_CONFIRM_WAIT),
            Some(Released::Unconfirmed)
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut f = FramesInFlight::default();
        f.push(t0, Some(65535), true);
        f.push(t0, Some(0), true);
        f.handle_sent(0);
        assert_eq!(drain(&mut f, t0), 2);
        f.push(t0, Some(3), true);
        f.handle_sent(2);
        assert_eq!(drain(&mut f, t0), 0);
    }
}

//! Overload protection: when the frame clock of the calls in progress starts running late,
//! the daemon stops admitting calls, so that the calls it has stay clean instead of every
//! call degrading together.
//!
//! Every call's driver records how late each frame went out against its deadline
//! ([`FrameClock::record`]). Once a [`WINDOW`], [`monitor`] hands the window's counts to an
//! [`OverloadDetector`] (no I/O, no clock), whose verdict admission and `/readyz` read
//! ([`FrameClock::is_overloaded`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How often the frame clock is judged. Long enough to hold a thousand frames at load (50
/// per call per second), and short: calls that arrive in a burst are admitted until the
/// first window that finds the clock late, and a burst into an idle box sets up about 150
/// calls a second (the load tool, 200 asked at once), so a 1 s window let 30 to 50 calls too
/// many in before it closed admission.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Fewer late frames than this in a window never mean overload: one call's scheduling
/// hiccup (a frame or two) is not a capacity problem.
pub const MIN_LATE_FRAMES: u64 = 3;
/// Clean windows in a row before admission reopens (5 s): a box that just recovered by
/// refusing calls would otherwise admit a burst and fall over again.
pub const CLEAR_AFTER_WINDOWS: u32 = 20;

/// When the frame clock counts as overloaded (`limits.overload_late_ms` and
/// `limits.overload_late_percent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadPolicy {
    /// A frame sent more than this after its deadline is late. `None`: protection is off.
    pub late_after: Option<Duration>,
    /// The share of late frames in a window (0..1) that means overload.
    pub late_share: f64,
}

impl OverloadPolicy {
    /// Protection off: every call is admitted up to `limits.max_calls`.
    pub fn off() -> Self {
        OverloadPolicy {
            late_after: None,
            late_share: 1.0,
        }
    }
}

/// The verdict over successive windows, with hysteresis: one bad window enters overload,
/// [`CLEAR_AFTER_WINDOWS`] clean ones in a row leave it.
#[derive(Debug)]
pub struct OverloadDetector {
    late_share: f64,
    overloaded: bool,
    clean_windows: u32,
}

impl OverloadDetector {
    /// A detector that starts not overloaded.
    pub fn new(late_share: f64) -> Self {
        OverloadDetector {
            late_share,
            overloaded: false,
            clean_windows: 0,
        }
    }

    /// One window's counts: `frames` sent, `late` of them late. Returns the verdict.
    pub fn handle_window(&mut self, frames: u64, late: u64) -> bool {
        let bad = late >= MIN_LATE_FRAMES && late as f64 > self.late_share * frames as f64;
        if bad {
            self.overloaded = true;
            self.clean_windows = 0;
        } else if self.overloaded {
            self.clean_windows += 1;
            if self.clean_windows >= CLEAR_AFTER_WINDOWS {
                self.overloaded = false;
                self.clean_windows = 0;
            }
        }
        self.overloaded
    }
}

/// The frame clock every call feeds and admission reads. Lock-free: calls record from their
/// own tasks.
#[derive(Debug)]
pub struct FrameClock {
    policy: OverloadPolicy,
    frames: AtomicU64,
    late: AtomicU64,
    overloaded: AtomicBool,
}

impl FrameClock {
    /// A clock judged by `policy`.
    pub fn new(policy: OverloadPolicy) -> Self {
        FrameClock {
            policy,
            frames: AtomicU64::new(0),
            late: AtomicU64::new(0),
            overloaded: AtomicBool::new(false),
        }
    }

    /// A frame went out `lateness` after its deadline.
    pub fn record(&self, lateness: Duration) {
        let Some(late_after) = self.policy.late_after else {
            return;
        };
        self.frames.fetch_add(1, Ordering::Relaxed);
        if lateness > late_after {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether new calls should be refused.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// The counts since the last call: (frames, late).
    fn take_window(&self) -> (u64, u64) {
        (
            self.frames.swap(0, Ordering::Relaxed),
            self.late.swap(0, Ordering::Relaxed),
        )
    }
}

/// Judges `clock` once a [`WINDOW`] until `shutdown`; does nothing when protection is off.
pub async fn monitor(clock: Arc<FrameClock>, shutdown: CancellationToken) {
    if clock.policy.late_after.is_none() {
        return;
    }
    let mut detector = OverloadDetector::new(clock.policy.late_share);
    let mut tick = tokio::time::interval(WINDOW);
    // After a stall, judge one window, not a burst of empty ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (frames, late) = clock.take_window();
        let overloaded = detector.handle_window(frames, late);
        if overloaded != clock.overloaded.swap(overloaded, Ordering::Relaxed) {
            if overloaded {
                tracing::warn!(frames, late, "frame clock running late: refusing new calls");
            } else {
                tracing::info!("frame clock on time again: admitting calls");
            }
        }
        metrics::frame_clock_window(frames, late, overloaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bad_window_enters_and_5_s_of_clean_ones_leave() {
        let mut d = OverloadDetector::new(0.02);
        assert!(!d.handle_window(5_000, 50), "1 % late is fine");
        assert!(d.handle_window(5_000, 150), "3 % late is overload");
        for _ in 1..CLEAR_AFTER_WINDOWS {
            assert!(d.handle_window(5_000, 0));
        }
        assert!(!d.handle_window(5_000, 0));
    }

    #[test]
    fn a_bad_window_restarts_the_count() {
        let mut d = OverloadDetector::new(0.02);
        assert!(d.handle_window(100, 10));
        assert!(d.handle_window(100, 0));
        assert!(d.handle_window(100, 10));
        for _ in 1..CLEAR_AFTER_WINDOWS {
            assert!(d.handle_window(100, 0));
        }
        assert!(!d.handle_window(100, 0));
    }

    #[test]
    fn a_hiccup_of_one_call_is_not_overload() {
        let mut d = OverloadDetector::new(0.02);
        assert!(!d.handle_window(50, MIN_LATE_FRAMES - 1));
        assert!(!d.handle_window(0, 0));
    }

    #[test]
    fn the_clock_counts_only_when_protection_is_on() {
        let off = FrameClock::new(OverloadPolicy::off());
        off.record(Duration::from_secs(1));
        assert_eq!(off.take_window(), (0, 0));
        let on = FrameClock::new(OverloadPolicy {
            late_after: Some(Duration::from_millis(20)),
            late_share: 0.02,
        });
        on.record(Duration::from_millis(5));
        on.record(Duration::from_millis(25));
        assert_eq!(on.take_window(), (2, 1));
        assert_eq!(on.take_window(), (0, 0));
    }
}

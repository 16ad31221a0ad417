//! Loss-aware Opus settings: the caller's RTCP receiver reports about our stream drive the
//! encoder's in-band FEC, expected loss and bitrate (what libwebrtc's audio network adaptor
//! does, in its simplest form). Sans-IO: reports go in with `now`, settings come out.
//!
//! ## Policy
//!
//! - Each report's `fraction_lost` (percent) is smoothed in time: an exponential average whose
//!   weight grows with the time since the previous report ([`RISE_TIME`] while loss grows,
//!   [`FALL_TIME`] while it falls), so the result does not depend on how often the caller
//!   reports (1 s for webrtc-rs, up to 5 s for browsers).
//! - FEC goes on once the smoothed loss reaches [`FEC_ON_PCT`], and off once it is below
//!   [`FEC_OFF_PCT`] and no report has shown loss for [`FEC_HOLD`] (a lull of a few seconds
//!   between losses does not toggle it).
//! - While FEC is on: `expected_loss_pct` is the smoothed loss rounded up, bounded by the
//!   quiet value (at least 1) and `max_expected_loss_pct`; the bitrate is at least halfway
//!   from the quiet bitrate to `max_bitrate_bps` and reaches it as the loss goes to
//!   [`LOSS_FOR_MAX_BITRATE_PCT`]. libopus codes FEC only when the bitrate leaves room for it
//!   (its `decide_fec`: at 5 % expected loss and complexity 5, above about 33 kbps
//!   fullband), and the redundancy must not starve the primary signal.
//! - While FEC is off: the quiet settings, exactly (the configured `[audio]` values).
//!
//! From 15 % smoothed loss, reports of no loss bring the settings back to quiet in about
//! `FALL_TIME × ln(15 / 0.5)` ≈ 5 s (at least [`FEC_HOLD`]), plus one report interval.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::OpusSettings;
use crate::config::AudioConfig;

/// Time constant of the smoothing while the reported loss is above the smoothed one: loss is
/// acted on within a report or two.
pub const RISE_TIME: Duration = Duration::from_secs(1);
/// Time constant while the reported loss is below the smoothed one: a little slower than
/// [`RISE_TIME`], so a lull between bursts does not turn FEC off, yet quiet again within
/// seconds once the loss is gone.
pub const FALL_TIME: Duration = Duration::from_millis(1500);
/// Smoothed loss (percent) at which FEC goes on: about one packet in a 1 s report.
pub const FEC_ON_PCT: f64 = 1.0;
/// Smoothed loss (percent) below which FEC goes off again (hysteresis with [`FEC_ON_PCT`]).
pub const FEC_OFF_PCT: f64 = 0.5;
/// FEC stays on at least this long after the last report that showed loss: random loss of a
/// few percent leaves 1 s reports without any now and then.
pub const FEC_HOLD: Duration = Duration::from_secs(4);
/// Share of the way from the quiet bitrate to `max_bitrate_bps` that FEC gets at once.
const FEC_BITRATE_FLOOR: f64 = 0.5;
/// Smoothed loss (percent) at which the bitrate reaches `max_bitrate_bps`: by then LBRR takes
/// a large share of each packet.
pub const LOSS_FOR_MAX_BITRATE_PCT: f64 = 10.0;
/// Bitrates are set in steps of this many bits per second (fewer encoder changes).
const BITRATE_STEP_BPS: u32 = 1_000;
/// The weight of a call's first report when nothing came before it: taken as it is.
const FIRST_REPORT_WEIGHT: f64 = 1.0;

/// What the operator configured (`[audio]`) beside the quiet settings: the bounds of
/// adaptation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossAdaptation {
    /// Whether receiver reports change the encoder at all (`audio.opus_loss_adaptation`).
    pub enabled: bool,
    /// The highest bitrate adaptation may set (`audio.opus_max_bitrate_bps`, at least the
    /// quiet bitrate).
    pub max_bitrate_bps: u32,
    /// The highest expected loss adaptation may set (`audio.opus_max_expected_loss_pct`).
    pub max_expected_loss_pct: u8,
}

impl LossAdaptation {
    /// The bounds from the daemon's `[audio]` configuration (validated there).
    pub fn from_config(cfg: &AudioConfig) -> Self {
        LossAdaptation {
            enabled: cfg.opus_loss_adaptation,
            max_bitrate_bps: cfg.opus_max_bitrate_bps,
            max_expected_loss_pct: cfg.opus_max_expected_loss_pct,
        }
    }
}

impl Default for LossAdaptation {
    /// On, up to 48 kbps and 25 % expected loss.
    fn default() -> Self {
        LossAdaptation {
            enabled: true,
            max_bitrate_bps: 48_000,
            max_expected_loss_pct: 25,
        }
    }
}

/// One RTCP reception report block about our stream (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Packets lost since the previous report, as a fraction of 256.
    pub fraction_lost: u8,
    /// Interarrival jitter in RTP clock ticks.
    pub jitter: u32,
}

/// The loss the caller reports about what we send, and the encoder settings it led to
/// (`GET /v1/calls/{id}`, `"outbound"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LossFigures {
    /// Receiver reports about our stream so far.
    pub receiver_reports: u64,
    /// The last report's loss, percent.
    pub loss_pct: f64,
    /// The smoothed loss the encoder follows, percent.
    pub smoothed_loss_pct: f64,
    /// The last report's interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Opus in-band FEC now (`null` for G.711 calls, which have none of these settings).
    pub opus_fec: Option<bool>,
    /// Opus expected loss now, percent.
    pub opus_expected_loss_pct: Option<u8>,
    /// Opus bitrate now, bits per second.
    pub opus_bitrate_bps: Option<u32>,
}

/// The call's loss adaptation. See the module docs for the policy.
#[derive(Debug, Clone)]
pub struct LossController {
    config: LossAdaptation,
    /// The settings with no loss reported (the configured `[audio]` values).
    quiet: OpusSettings,
    /// The codec's RTP clock rate, for the jitter in milliseconds.
    clock_rate: u32,
    /// Whether the call's codec is Opus (G.711 has nothing to adapt).
    opus: bool,
    reports: u64,
    last_report_at: Option<Instant>,
    /// When a report last showed loss.
    last_loss_at: Option<Instant>,
    loss_pct: f64,
    smoothed_pct: f64,
    jitter_ms: f64,
    fec_on: bool,
    current: OpusSettings,
    /// Settings not yet taken by [`LossController::poll_settings`].
    changed: bool,
}

impl LossController {
    /// A controller at the `quiet` settings, for a stream with RTP clock `clock_rate`;
    /// `opus` false (G.711) only keeps the figures.
    pub fn new(quiet: OpusSettings, config: LossAdaptation, clock_rate: u32, opus: bool) -> Self {
        LossController {
            config,
            quiet,
            clock_rate: clock_rate.max(1),
            opus,
            reports: 0,
            last_report_at: None,
            last_loss_at: None,
            loss_pct: 0.0,
            smoothed_pct: 0.0,
            jitter_ms: 0.0,
            fec_on: false,
            current: quiet,
            changed: false,
        }
    }

    /// A receiver report about our stream arrived at `now`.
    pub fn handle_report(&mut self, now: Instant, report: ReceiverReport) {
        self.reports += 1;
        self.loss_pct = f64::from(report.fraction_lost) * 100.0 / 256.0;
        self.jitter_ms = f64::from(report.jitter) * 1000.0 / f64::from(self.clock_rate);
        let weight = match self.last_report_at {
            None => FIRST_REPORT_WEIGHT,
            Some(last) => {
                let tau = if self.loss_pct > self.smoothed_pct {
                    RISE_TIME
                } else {
                    FALL_TIME
                };
                let dt = now.saturating_duration_since(last).as_secs_f64();
                1.0 - (-dt / tau.as_secs_f64()).exp()
            }
        };
        self.last_report_at = Some(now);
        if report.fraction_lost > 0 {
            self.last_loss_at = Some(now);
        }
        self.smoothed_pct += weight * (self.loss_pct - self.smoothed_pct);
        if self.fec_on {
            let held = self
                .last_loss_at
                .is_some_and(|at| now.saturating_duration_since(at) < FEC_HOLD);
            self.fec_on = held || self.smoothed_pct >= FEC_OFF_PCT;
        } else {
            self.fec_on = self.smoothed_pct >= FEC_ON_PCT;
        }
        if self.opus && self.config.enabled {
            let next = self.settings_for(self.smoothed_pct);
            if next != self.current {
                self.current = next;
                self.changed = true;
            }
        }
    }

    /// New encoder settings, once after each change; `None` when nothing changed.
    pub fn poll_settings(&mut self) -> Option<OpusSettings> {
        std::mem::take(&mut self.changed).then_some(self.current)
    }

    /// The settings the encoder has now (the quiet ones until a report changes them).
    pub fn settings(&self) -> OpusSettings {
        self.current
    }

    /// Whether the encoder's in-band FEC is on now.
    pub fn fec(&self) -> bool {
        self.opus && self.current.fec && self.current.expected_loss_pct > 0
    }

    /// The figures for the call's snapshot.
    pub fn figures(&self) -> LossFigures {
        LossFigures {
            receiver_reports: self.reports,
            loss_pct: round2(self.loss_pct),
            smoothed_loss_pct: round2(self.smoothed_pct),
            jitter_ms: round2(self.jitter_ms),
            opus_fec: self.opus.then_some(self.current.fec),
            opus_expected_loss_pct: self.opus.then_some(self.current.expected_loss_pct),
            opus_bitrate_bps: self.opus.then_some(self.current.bitrate_bps),
        }
    }

    /// The settings for a smoothed loss of `pct`.
    fn settings_for(&self, pct: f64) -> OpusSettings {
        let quiet = self.quiet;
        if !self.fec_on {
            return quiet;
        }
        let floor = quiet.expected_loss_pct.max(1);
        let ceiling = self.config.max_expected_loss_pct.max(floor);
        let expected = (pct.ceil().clamp(0.0, 100.0) as u8).clamp(floor, ceiling);
        let max_bitrate = self.config.max_bitrate_bps.max(quiet.bitrate_bps);
        let share = FEC_BITRATE_FLOOR
            + (1.0 - FEC_BITRATE_FLOOR) * (pct / LOSS_FOR_MAX_BITRATE_PCT).clamp(0.0, 1.0);
        let raised = f64::from(max_bitrate - quiet.bitrate_bps) * share;
        let bitrate = quiet.bitrate_bps + (raised as u32 / BITRATE_STEP_BPS) * BITRATE_STEP_BPS;
        OpusSettings {
            bitrate_bps: bitrate.min(max_bitrate),
            fec: true,
            expected_loss_pct: expected,
            complexity: quiet.complexity,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: OpusSettings = OpusSettings {
        bitrate_bps: 32_000,
        fec: false,
        expected_loss_pct: 0,
        complexity: 5,
    };

    fn controller() -> LossController {
        LossController::new(QUIET, LossAdaptation::default(), 48_000, true)
    }

    fn report(pct: f64) -> ReceiverReport {
        ReceiverReport {
            fraction_lost: (pct * 256.0 / 100.0).round() as u8,
            jitter: 480,
        }
    }

    /// Reports of `pct` every `every`, `n` of them, from `*now` on.
    fn feed(c: &mut LossController, now: &mut Instant, every: Duration, n: u32, pct: f64) {
        for _ in 0..n {
            *now += every;
            c.handle_report(*now, report(pct));
        }
    }

    #[test]
    fn no_loss_keeps_the_quiet_settings() {
        let mut c = controller();
        let mut now = Instant::now();
        feed(&mut c, &mut now, Duration::from_secs(1), 30, 0.0);
        assert_eq!(c.poll_settings(), None);
        assert_eq!(c.settings(), QUIET);
        assert!(!c.fec());
        let f = c.figures();
        assert_eq!(f.receiver_reports, 30);
        assert_eq!(f.jitter_ms, 10.0);
        assert_eq!(f.opus_fec, Some(false));
    }

    #[test]
    fn loss_turns_fec_on_and_raises_expected_loss_and_bitrate_within_bounds() {
        let mut c = controller();
        let mut now = Instant::now();
        feed(&mut c, &mut now, Duration::from_secs(1), 1, 5.0);
        let s = c
            .poll_settings()
            .expect("changed at the first lossy report");
        assert!(s.fec && c.fec());
        // 13/256 = 5.08 %: rounded up.
        assert_eq!(s.expected_loss_pct, 6);
        assert_eq!(s.bitrate_bps, 44_000, "three quarters of the way at 5 %");
        assert_eq!(c.poll_settings(), None, "reported once");
        // Heavy loss: bounded.
        feed(&mut c, &mut now, Duration::from_secs(1), 10, 60.0);
        let s = c.settings();
        assert_eq!(s.expected_loss_pct, 25);
        assert_eq!(s.bitrate_bps, 48_000);
        assert_eq!(s.complexity, 5);
    }

    #[test]
    fn back_to_quiet_within_ten_seconds_of_the_loss_going_away() {
        for every in [Duration::from_secs(1), Duration::from_secs(5)] {
            let mut c = controller();
            let mut now = Instant::now();
            feed(&mut c, &mut now, every, 10, 15.0);
            assert!(c.fec());
            let gone = now;
            while c.fec() || c.settings() != QUIET {
                feed(&mut c, &mut now, every, 1, 0.0);
                assert!(now - gone <= Duration::from_secs(10), "{every:?}: {c:?}");
            }
            assert_eq!(c.poll_settings(), Some(QUIET));
        }
    }

    #[test]
    fn a_lull_between_bursts_keeps_fec_on() {
        let mut c = controller();
        let mut now = Instant::now();
        for _ in 0..5 {
            feed(&mut c, &mut now, Duration::from_secs(1), 1, 4.0);
            feed(&mut c, &mut now, Duration::from_secs(1), 3, 0.0);
            assert!(c.fec(), "{c:?}");
        }
        // FEC keeps room: at least halfway to the maximum bitrate.
        assert!(c.settings().bitrate_bps >= 40_000, "{c:?}");
        // One lost packet in a report is not worth FEC... a single report of 0.4 % is below.
        let mut c = controller();
        feed(&mut c, &mut now, Duration::from_secs(1), 3, 0.4);
        assert!(!c.fec());
    }

    #[test]
    fn disabled_or_g711_never_changes_the_encoder_but_keeps_figures() {
        let mut c = LossController::new(
            QUIET,
            LossAdaptation {
                enabled: false,
                ..LossAdaptation::default()
            },
            48_000,
            true,
        );
        let mut now = Instant::now();
        feed(&mut c, &mut now, Duration::from_secs(1), 5, 20.0);
        assert_eq!((c.poll_settings(), c.settings()), (None, QUIET));
        assert!(c.figures().smoothed_loss_pct > 10.0);
        let mut g711 = LossController::new(QUIET, LossAdaptation::default(), 8_000, false);
        feed(&mut g711, &mut now, Duration::from_secs(1), 5, 20.0);
        assert_eq!(g711.poll_settings(), None);
        let f = g711.figures();
        assert_eq!((f.opus_fec, f.opus_bitrate_bps), (None, None));
        assert_eq!(f.jitter_ms, 60.0, "480 ticks at 8 kHz");
    }

    #[test]
    fn quiet_settings_with_fec_stay_the_floor() {
        let quiet = OpusSettings {
            fec: true,
            expected_loss_pct: 5,
            ..QUIET
        };
        let mut c = LossController::new(quiet, LossAdaptation::default(), 48_000, true);
        let mut now = Instant::now();
        feed(&mut c, &mut now, Duration::from_secs(1), 3, 2.0);
        assert_eq!(
            c.settings().expected_loss_pct,
            5,
            "never below the quiet value"
        );
        feed(&mut c, &mut now, Duration::from_secs(1), 20, 0.0);
        assert_eq!(c.settings(), quiet);
    }
}

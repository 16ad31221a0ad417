//! The recording mixer: both sides of a call onto the call's timeline, as stereo samples at
//! [`RECORDING_RATE`]. Pure: no clock, no I/O; time is the slot numbers its inputs carry.
//!
//! ## Contract
//!
//! - Slot `n` is samples `[n × SLOT_SAMPLES, (n + 1) × SLOT_SAMPLES)` of the output.
//! - **Bot** ([`RecordingMixer::push_bot`]): the frame the call sent in slot `n`, at the bot's
//!   rate, resampled to [`RECORDING_RATE`] by rubato's synchronous `Fft` on fixed 10 ms
//!   blocks whose state is kept across frames. The resampler delays its output by `D` samples
//!   ([`RecordingMixer::bot_delay`]): output sample `q` is timeline sample `q − D`, so bot input
//!   sample `i` of slot `n` lands at `n × SLOT_SAMPLES + i / r` exactly (`r` = bot rate / 16 kHz),
//!   and the first `D` outputs (the filter's fill from silence) are dropped. Skipped slots are
//!   silence: up to [`BOT_FLUSH_SLOTS`] silent frames are fed so the filter's tail comes out,
//!   then the rest of the gap is skipped without resampling (the filter holds only silence);
//!   likewise, silent frames are not resampled once the filter holds only silence.
//! - **Caller** ([`RecordingMixer::push_caller`]): the first frame anchors the caller's RTP
//!   clock at the start of the slot it arrived in. Every later frame is placed at
//!   `anchor + (its RTP time − the anchor's) × 16 kHz / clock rate`, with RTP time unwrapped
//!   from `u32` relative to the last frame seen, so jitter, reordering and wrap-around do not
//!   move it. A frame whose first sample lands where caller audio is already written is a
//!   duplicate and dropped; one that lands before what was already emitted is late and
//!   dropped. The stream is re-anchored at its arrival slot (what the old anchor placed from
//!   there on is forgotten) when a frame lands more than [`MAX_CALLER_LEAD_SAMPLES`] ahead of
//!   its arrival (the stream restarted with a new timestamp base), after
//!   [`LATE_RUN_REANCHOR`] late frames in a row (its clock runs slow against ours, or it
//!   restarted with an earlier base), or when its clock rate changes.
//! - **Output** ([`RecordingMixer::drain`]): a slot is emitted once it is
//!   [`LATE_WINDOW_SLOTS`] older than `now_slot`, with silence wherever a side has nothing,
//!   and then forgotten. [`RecordingMixer::finish`] emits the rest, through the end of the
//!   newest slot the mixer was told of, so the output is as long as the call.
//! - **Memory** is bounded by [`MAX_HELD_SAMPLES`] whatever the call's length; a driver that
//!   does not drain loses its oldest held audio (counted in [`MixerStats::discarded_samples`])
//!   rather than grow it. One drain emits at most [`MAX_DRAIN_SLOTS`].

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::RecordingError;
use crate::audio::FRAME_MS;

/// The recording's sample rate: the rate the bot gets caller audio at, enough for speech and
/// for the test tones (up to 2.2 kHz).
pub const RECORDING_RATE: u32 = 16_000;
/// Samples per channel in one 20 ms slot at [`RECORDING_RATE`].
pub const SLOT_SAMPLES: usize = (RECORDING_RATE as u64 * FRAME_MS / 1000) as usize;
/// How old a slot must be before it is emitted: how late a caller frame may arrive after the
/// bot's frame of the same slot and still be placed. Its lateness is the network's jitter
/// relative to the anchor frame (not the whole one-way delay); 500 ms covers WebRTC jitter
/// spikes, and is how much audio a call holds in memory.
pub const LATE_WINDOW_SLOTS: u64 = 25;
/// How far (in samples, 1 s) a caller frame may land ahead of the slot it arrived in before
/// the stream is taken to have restarted and is re-anchored. A frame only lands ahead by how
/// much less delay it had than the anchor frame, far below a second on any working network;
/// the bound also caps the audio held ahead of now.
pub const MAX_CALLER_LEAD_SAMPLES: u64 = RECORDING_RATE as u64;
/// Caller frames late in a row (landing before what was already emitted) after which the
/// stream is re-anchored: 500 ms of them is no jitter spike but a caller clock that runs slow
/// against ours or a stream restarted with an earlier timestamp base.
pub const LATE_RUN_REANCHOR: u32 = 25;
/// Longest caller push accepted, in samples: 120 ms, the longest Opus packet.
pub const MAX_CALLER_PUSH_SAMPLES: usize = 6 * SLOT_SAMPLES;
/// Highest bot rate accepted (the highest rate any audio codec uses).
pub const MAX_BOT_RATE: u32 = 192_000;
/// Silent frames fed to the bot's resampler across a gap and at the end, so the filter's tail
/// comes out and it holds only silence: its delay is under one frame, so two suffice.
pub const BOT_FLUSH_SLOTS: u64 = 2;
/// How late after a tick the driver may drain (it drains every tick; 500 ms of slack).
const DRAIN_SLACK_SLOTS: u64 = 25;
/// Most samples (per channel) the mixer holds: the late window, the caller's lead, the
/// driver's slack and one maximal caller push. About 200 KB whatever the call's length.
pub const MAX_HELD_SAMPLES: usize = (LATE_WINDOW_SLOTS + DRAIN_SLACK_SLOTS) as usize * SLOT_SAMPLES
    + MAX_CALLER_LEAD_SAMPLES as usize
    + MAX_CALLER_PUSH_SAMPLES;
/// Most slots one [`RecordingMixer::drain`] or [`RecordingMixer::finish`] call emits (60 s),
/// so a driver that stalled catches up in bounded steps instead of one huge buffer.
pub const MAX_DRAIN_SLOTS: u64 = 3_000;
/// Resampler block length (as in `audio::transcode`: fixed blocks, 10 ms).
const BLOCK_MS: u32 = 10;

/// One output sample: `[left, right]` = `[caller, bot]`.
pub type StereoSample = [i16; 2];

/// What became of a caller frame. Normal outcomes, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerPush {
    /// The first frame: it anchored the caller's RTP clock at its arrival slot.
    Anchored,
    /// Placed by its RTP timestamp.
    Placed,
    /// The stream restarted, its clock rate changed or it ran late: re-anchored at its
    /// arrival slot and placed there.
    Reanchored,
    /// Its place already holds caller audio (a duplicate): dropped.
    Duplicate,
    /// Its place was already emitted: dropped.
    Late,
    /// Empty, longer than [`MAX_CALLER_PUSH_SAMPLES`], a zero clock rate, or pushed after
    /// [`RecordingMixer::finish`]: dropped.
    Invalid,
}

/// Counters of what the mixer did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Bot frames resampled (including silent ones).
    pub bot_frames: u64,
    /// Bot frames for a slot already pushed: dropped.
    pub bot_frames_stale: u64,
    /// Caller frames placed (the anchoring ones included).
    pub caller_frames_placed: u64,
    /// Caller frames dropped as duplicates.
    pub caller_frames_duplicate: u64,
    /// Caller frames dropped as late.
    pub caller_frames_late: u64,
    /// Caller frames dropped as invalid.
    pub caller_frames_invalid: u64,
    /// Times the caller's stream was re-anchored.
    pub caller_reanchors: u64,
    /// Samples dropped because the driver did not drain and the mixer was full.
    pub discarded_samples: u64,
}

/// One timeline sample being assembled.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    caller: i16,
    bot: i16,
    /// Whether caller audio was written here (duplicates are detected by it).
    caller_written: bool,
}

/// The caller's RTP clock, tied to the timeline.
#[derive(Debug, Clone, Copy)]
struct CallerAnchor {
    clock_rate: u32,
    /// Unwrapped RTP time of the anchor frame (0 by definition).
    anchor_ext: i64,
    /// Timeline sample of the anchor frame's first sample.
    anchor_pos: u64,
    /// RTP time of the last frame seen, as sent and unwrapped.
    last_ts: u32,
    last_ext: i64,
}

/// The bot's resampler to [`RECORDING_RATE`], `None` when the bot's rate is that already.
struct BotResampler {
    fft: Fft<f32>,
    block_in: usize,
    block_out: usize,
    input: Vec<f32>,
    output: Vec<f32>,
}

/// The bot side: resampler state and where its output lands.
struct BotSide {
    rate: u32,
    /// Samples in one 20 ms frame at `rate`.
    frame_in: usize,
    resampler: Option<BotResampler>,
    /// The resampler's delay in output samples.
    delay: u64,
    /// The next slot the resampler expects; earlier slots are stale.
    next_slot: u64,
    /// Output position of the next resampled sample, counted before delay compensation
    /// (timeline sample + `delay`).
    out_pos: u64,
    /// Silent frames fed in a row: from [`BOT_FLUSH_SLOTS`] on, the filter holds only
    /// silence and silence is not resampled (a bot is silent most of a call).
    silent_run: u64,
    /// One frame of resampled output (reused).
    scratch: Vec<i16>,
}

/// Mixes one call's caller and bot audio into stereo at [`RECORDING_RATE`]. See the module
/// docs for the contract.
pub struct RecordingMixer {
    bot: BotSide,
    caller: Option<CallerAnchor>,
    /// Caller frames that arrived late in a row.
    caller_late_run: u32,
    /// Timeline sample just after the last caller sample written.
    caller_end: u64,
    /// Timeline samples `[emitted, emitted + held.len())`, not yet emitted.
    held: VecDeque<Cell>,
    /// Timeline sample of `held[0]`: everything before it was emitted (or discarded).
    emitted: u64,
    /// The newest slot any input or drain named.
    latest_slot: u64,
    /// Where output ends once [`RecordingMixer::finish`] began.
    final_end: Option<u64>,
    stats: MixerStats,
}

impl std::fmt::Debug for RecordingMixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingMixer")
            .field("bot_rate", &self.bot.rate)
            .field("emitted", &self.emitted)
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// First timeline sample of `slot`.
fn slot_start(slot: u64) -> u64 {
    slot.saturating_mul(SLOT_SAMPLES as u64)
}

impl RecordingMixer {
    /// A mixer for a call whose bot frames are PCM at `bot_rate` (the call's PCM rate:
    /// LMNT's, 24 000 by default, for Opus; 8 000 for G.711). Fails when `bot_rate` is zero,
    /// not a multiple of 100 Hz or above [`MAX_BOT_RATE`], or rubato cannot resample it.
    pub fn new(bot_rate: u32) -> Result<Self, RecordingError> {
        if bot_rate == 0 || bot_rate > MAX_BOT_RATE || !bot_rate.is_multiple_of(100) {
            return Err(RecordingError::UnsupportedRate { rate: bot_rate });
        }
        let frame_in = (u64::from(bot_rate) * FRAME_MS / 1000) as usize;
        let resampler = if bot_rate == RECORDING_RATE {
            None
        } else {
            let block_in = (bot_rate * BLOCK_MS / 1000) as usize;
            let block_out = (RECORDING_RATE * BLOCK_MS / 1000) as usize;
            let fft = Fft::<f32>::new(
                bot_rate as usize,
                RECORDING_RATE as usize,
                block_in,
                1,
                FixedSync::Both,
            )
            .map_err(|e| RecordingError::Resample(e.to_string()))?;
            if fft.input_frames_next() != block_in || fft.output_frames_next() != block_out {
                return Err(RecordingError::Resample(format!(
                    "expected blocks of {block_in} -> {block_out}, got {} -> {}",
                    fft.input_frames_next(),
                    fft.output_frames_next()
                )));
            }
            Some(BotResampler {
                fft,
                block_in,
                block_out,
                input: vec![0.0; frame_in],
                output: vec![0.0; block_out],
            })
        };
        let delay = resampler
            .as_ref()
            .map_or(0, |r| r.fft.output_delay() as u64);
        Ok(RecordingMixer {
            bot: BotSide {
                rate: bot_rate,
                frame_in,
                resampler,
                delay,
                next_slot: 0,
                out_pos: 0,
                silent_run: BOT_FLUSH_SLOTS,
                scratch: Vec::with_capacity(SLOT_SAMPLES),
            },
            caller: None,
            caller_late_run: 0,
            caller_end: 0,
            held: VecDeque::with_capacity(MAX_HELD_SAMPLES),
            emitted: 0,
            latest_slot: 0,
            final_end: None,
            stats: MixerStats::default(),
        })
    }

    /// The bot's rate given at construction.
    pub fn bot_rate(&self) -> u32 {
        self.bot.rate
    }

    /// The bot resampler's delay in output samples (0 when the bot's rate is
    /// [`RECORDING_RATE`]); compensated: it does not shift the bot channel.
    pub fn bot_delay(&self) -> u64 {
        self.bot.delay
    }

    /// What the mixer did so far.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// Samples per channel held, not yet emitted (at most [`MAX_HELD_SAMPLES`]).
    pub fn held_samples(&self) -> usize {
        self.held.len()
    }

    /// Samples per channel emitted so far by [`RecordingMixer::drain`] and
    /// [`RecordingMixer::finish`] (with any [`MixerStats::discarded_samples`]).
    pub fn emitted_samples(&self) -> u64 {
        self.emitted
    }

    /// The frame the call sent in `slot` (`None`: silence): exactly one 20 ms frame of PCM at
    /// the bot's rate. Slots must not decrease: a frame for a slot already pushed is dropped
    /// (counted). Skipped slots are silence.
    ///
    /// Errors concern this frame only and the mixer stays usable: a frame of the wrong length
    /// is recorded as silence ([`RecordingError::FrameLength`]); a resampler failure (a bug)
    /// leaves the slot silent. Frames pushed after [`RecordingMixer::finish`] are ignored.
    pub fn push_bot(&mut self, slot: u64, pcm: Option<&[i16]>) -> Result<(), RecordingError> {
        if self.final_end.is_some() {
            return Ok(());
        }
        if slot < self.bot.next_slot {
            self.stats.bot_frames_stale += 1;
            return Ok(());
        }
        self.note_slot(slot);
        let gap = slot - self.bot.next_slot;
        if gap > 0 {
            let fed = gap.min(BOT_FLUSH_SLOTS);
            for _ in 0..fed {
                self.feed_bot(None)?;
            }
            // The filter now holds only silence: skipping the rest of the gap is the same as
            // resampling silence through it.
            let skipped = gap - fed;
            self.bot.next_slot += skipped;
            self.bot.out_pos = self
                .bot
                .out_pos
                .saturating_add(skipped.saturating_mul(SLOT_SAMPLES as u64));
        }
        match pcm {
            Some(pcm) if pcm.len() != self.bot.frame_in => {
                self.feed_bot(None)?;
                Err(RecordingError::FrameLength {
                    expected: self.bot.frame_in,
                    got: pcm.len(),
                })
            }
            pcm => self.feed_bot(pcm),
        }
    }

    /// A decoded caller frame (16 kHz mono; concealed frames too, with the RTP timestamp
    /// they stand for) that arrived during `arrival_slot`, carrying RTP time `rtp_timestamp`
    /// on a clock of `clock_rate` Hz. Placed as the module docs say; the outcome says how.
    pub fn push_caller(
        &mut self,
        arrival_slot: u64,
        rtp_timestamp: u32,
        clock_rate: u32,
        pcm16k: &[i16],
    ) -> CallerPush {
        if self.final_end.is_some()
            || clock_rate == 0
            || pcm16k.is_empty()
            || pcm16k.len() > MAX_CALLER_PUSH_SAMPLES
        {
            self.stats.caller_frames_invalid += 1;
            return CallerPush::Invalid;
        }
        self.note_slot(arrival_slot);
        let arrival_pos = slot_start(arrival_slot);
        let Some(anchor) = self.caller.as_mut().filter(|a| a.clock_rate == clock_rate) else {
            let outcome = if self.caller.is_some() {
                CallerPush::Reanchored
            } else {
                CallerPush::Anchored
            };
            return self.anchor_caller(arrival_pos, rtp_timestamp, clock_rate, pcm16k, outcome);
        };
        let step = i64::from(rtp_timestamp.wrapping_sub(anchor.last_ts) as i32);
        let Some(ext) = anchor.last_ext.checked_add(step) else {
            return self.anchor_caller(
                arrival_pos,
                rtp_timestamp,
                clock_rate,
                pcm16k,
                CallerPush::Reanchored,
            );
        };
        anchor.last_ts = rtp_timestamp;
        anchor.last_ext = ext;
        let offset = i128::from(ext - anchor.anchor_ext) * i128::from(RECORDING_RATE);
        let pos = i128::from(anchor.anchor_pos) + offset.div_euclid(i128::from(clock_rate));

        if pos > i128::from(arrival_pos.saturating_add(MAX_CALLER_LEAD_SAMPLES)) {
            return self.anchor_caller(
                arrival_pos,
                rtp_timestamp,
                clock_rate,
                pcm16k,
                CallerPush::Reanchored,
            );
        }
        if pos < i128::from(self.emitted) {
            self.caller_late_run += 1;
            if self.caller_late_run >= LATE_RUN_REANCHOR {
                return self.anchor_caller(
                    arrival_pos,
                    rtp_timestamp,
                    clock_rate,
                    pcm16k,
                    CallerPush::Reanchored,
                );
            }
            self.stats.caller_frames_late += 1;
            return CallerPush::Late;
        }
        // emitted <= pos <= arrival_pos + lead: fits in u64.
        let pos = pos as u64;
        if self.caller_written_at(pos) {
            self.stats.caller_frames_duplicate += 1;
            return CallerPush::Duplicate;
        }
        self.caller_late_run = 0;
        self.write_caller(pos, pcm16k);
        self.stats.caller_frames_placed += 1;
        CallerPush::Placed
    }

    /// Appends to `out` every slot at least [`LATE_WINDOW_SLOTS`] older than `now_slot` not
    /// yet emitted (silence where a side has nothing), at most [`MAX_DRAIN_SLOTS`] of them,
    /// and forgets them. Returns true when more is due (the driver stalled): call again.
    pub fn drain(&mut self, now_slot: u64, out: &mut Vec<StereoSample>) -> bool {
        if let Some(end) = self.final_end {
            return self.emit_until(end, out);
        }
        self.note_slot(now_slot);
        let due = slot_start(now_slot.saturating_add(1).saturating_sub(LATE_WINDOW_SLOTS));
        self.emit_until(due, out)
    }

    /// Ends the recording at the end of `now_slot` (or of the newest slot pushed, if later):
    /// flushes the bot resampler's tail and appends to `out` everything not yet emitted, at
    /// most [`MAX_DRAIN_SLOTS`] per call. Returns true while more remains: call again. Later
    /// pushes are ignored. The total output is then `(last slot + 1) ×` [`SLOT_SAMPLES`].
    pub fn finish(
        &mut self,
        now_slot: u64,
        out: &mut Vec<StereoSample>,
    ) -> Result<bool, RecordingError> {
        let end = match self.final_end {
            Some(end) => end,
            None => {
                self.note_slot(now_slot);
                let end = slot_start(self.latest_slot.saturating_add(1));
                let mut flushed = Ok(());
                for _ in 0..BOT_FLUSH_SLOTS {
                    flushed = flushed.and(self.feed_bot(None));
                }
                self.final_end = Some(end);
                let keep = end.saturating_sub(self.emitted);
                if (self.held.len() as u64) > keep {
                    self.held.truncate(keep as usize);
                }
                flushed?;
                end
            }
        };
        let more = self.emit_until(end, out);
        if !more {
            self.held = VecDeque::new();
        }
        Ok(more)
    }

    fn note_slot(&mut self, slot: u64) {
        self.latest_slot = self.latest_slot.max(slot);
    }

    /// Resamples one bot frame (or silence) and writes it at its place on the timeline.
    fn feed_bot(&mut self, pcm: Option<&[i16]>) -> Result<(), RecordingError> {
        self.stats.bot_frames += 1;
        self.bot.next_slot = self.bot.next_slot.saturating_add(1);
        let mut scratch = std::mem::take(&mut self.bot.scratch);
        scratch.clear();
        let result = resample_frame(&mut self.bot, pcm, &mut scratch);
        // A failed block is silence, so the timeline keeps its length.
        scratch.resize(SLOT_SAMPLES, 0);
        let start = self.bot.out_pos;
        self.bot.out_pos = self.bot.out_pos.saturating_add(scratch.len() as u64);
        self.write_bot(start, &scratch);
        self.bot.scratch = scratch;
        result
    }

    /// Writes resampled bot samples whose first one is at output position `start` (before
    /// delay compensation).
    fn write_bot(&mut self, start: u64, samples: &[i16]) {
        let delay = self.bot.delay;
        let end = start
            .saturating_add(samples.len() as u64)
            .saturating_sub(delay);
        self.reserve_until(end);
        for (i, &s) in samples.iter().enumerate() {
            let Some(t) = start.saturating_add(i as u64).checked_sub(delay) else {
                continue; // the filter's fill before the first input sample
            };
            if let Some(cell) = t
                .checked_sub(self.emitted)
                .and_then(|i| self.held.get_mut(i as usize))
            {
                cell.bot = s;
            }
        }
    }

    fn caller_written_at(&self, pos: u64) -> bool {
        pos.checked_sub(self.emitted)
            .and_then(|i| self.held.get(i as usize))
            .is_some_and(|cell| cell.caller_written)
    }

    /// Anchors (or re-anchors) the caller's clock with this frame at `arrival_pos`, forgets
    /// what an earlier anchor placed from there on, and writes the frame.
    fn anchor_caller(
        &mut self,
        arrival_pos: u64,
        rtp_timestamp: u32,
        clock_rate: u32,
        pcm16k: &[i16],
        outcome: CallerPush,
    ) -> CallerPush {
        let pos = arrival_pos.max(self.emitted);
        if self.caller_end > pos {
            let from = (pos - self.emitted) as usize;
            for cell in self.held.iter_mut().skip(from) {
                cell.caller = 0;
                cell.caller_written = false;
            }
            self.caller_end = pos;
        }
        self.caller = Some(CallerAnchor {
            clock_rate,
            anchor_ext: 0,
            anchor_pos: pos,
            last_ts: rtp_timestamp,
            last_ext: 0,
        });
        if outcome == CallerPush::Reanchored {
            self.stats.caller_reanchors += 1;
        }
        self.caller_late_run = 0;
        self.write_caller(pos, pcm16k);
        self.stats.caller_frames_placed += 1;
        outcome
    }

    /// Writes caller samples from timeline sample `pos` on, where none is written yet.
    fn write_caller(&mut self, pos: u64, pcm: &[i16]) {
        let end = pos.saturating_add(pcm.len() as u64);
        self.reserve_until(end);
        for (i, &s) in pcm.iter().enumerate() {
            let Some(cell) = pos
                .saturating_add(i as u64)
                .checked_sub(self.emitted)
                .and_then(|i| self.held.get_mut(i as usize))
            else {
                continue;
            };
            if !cell.caller_written {
                cell.caller = s;
                cell.caller_written = true;
            }
        }
        self.caller_end = self.caller_end.max(end);
    }

    /// Makes `held` cover the timeline up to `end` (exclusive) with silence, dropping the
    /// oldest held samples if that would exceed [`MAX_HELD_SAMPLES`].
    fn reserve_until(&mut self, end: u64) {
        let needed = end.saturating_sub(self.emitted);
        if needed > MAX_HELD_SAMPLES as u64 {
            let excess = needed - MAX_HELD_SAMPLES as u64;
            let popped = excess.min(self.held.len() as u64) as usize;
            self.held.drain(..popped);
            self.emitted += excess;
            self.stats.discarded_samples = self.stats.discarded_samples.saturating_add(excess);
        }
        let needed = end.saturating_sub(self.emitted) as usize;
        if self.held.len() < needed {
            self.held.resize(needed, Cell::default());
        }
    }

    /// Emits held samples (silence past them) up to timeline sample `end`, at most
    /// [`MAX_DRAIN_SLOTS`] worth. Returns true when more remains before `end`.
    fn emit_until(&mut self, end: u64, out: &mut Vec<StereoSample>) -> bool {
        if end <= self.emitted {
            return false;
        }
        let n = (end - self.emitted).min(slot_start(MAX_DRAIN_SLOTS));
        out.reserve(n as usize);
        let from_held = (n as usize).min(self.held.len());
        out.extend(self.held.drain(..from_held).map(|c| [c.caller, c.bot]));
        out.resize(out.len() + (n as usize - from_held), [0, 0]);
        self.emitted += n;
        end > self.emitted
    }
}

/// Resamples one frame (or silence) of the bot to [`RECORDING_RATE`] into `out`.
fn resample_frame(
    bot: &mut BotSide,
    pcm: Option<&[i16]>,
    out: &mut Vec<i16>,
) -> Result<(), RecordingError> {
    if pcm.is_some() {
        bot.silent_run = 0;
    } else if bot.silent_run >= BOT_FLUSH_SLOTS {
        // The filter holds only silence: resampling more silence gives silence.
        out.resize(SLOT_SAMPLES, 0);
        return Ok(());
    } else {
        bot.silent_run += 1;
    }
    let Some(r) = &mut bot.resampler else {
        match pcm {
            Some(pcm) => out.extend_from_slice(pcm),
            None => out.resize(SLOT_SAMPLES, 0),
        }
        return Ok(());
    };
    match pcm {
        Some(pcm) => {
            for (dst, &s) in r.input.iter_mut().zip(pcm) {
                *dst = f32::from(s) / 32_768.0;
            }
        }
        None => r.input.fill(0.0),
    }
    for block in r.input.chunks_exact(r.block_in) {
        let input = InterleavedSlice::new(block, 1, r.block_in)
            .map_err(|e| RecordingError::Resample(e.to_string()))?;
        let mut output = InterleavedSlice::new_mut(&mut r.output, 1, r.block_out)
            .map_err(|e| RecordingError::Resample(e.to_string()))?;
        let (_, produced) = r
            .fft
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| RecordingError::Resample(e.to_string()))?;
        out.extend(
            r.output[..produced.min(r.block_out)]
                .iter()
                .map(|&x| to_i16(x)),
        );
    }
    Ok(())
}

/// Float sample in [-1, 1] (slightly beyond after filtering) to saturated 16-bit.
fn to_i16(x: f32) -> i16 {
    (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS_RATE: u32 = 48_000;
    const OPUS_TICKS: u32 = 960;
    const AMP: f64 = 16_000.0;

    fn tone(freq: f64, rate: u32, from: u64, n: usize) -> Vec<i16> {
        crate::recording::tests::sine(freq, AMP, rate, from, n)
    }

    use crate::recording::tests::goertzel_amplitude as amplitude;

    fn left(out: &[StereoSample]) -> Vec<i16> {
        out.iter().map(|s| s[0]).collect()
    }

    fn right(out: &[StereoSample]) -> Vec<i16> {
        out.iter().map(|s| s[1]).collect()
    }

    fn finish_all(m: &mut RecordingMixer, now_slot: u64, out: &mut Vec<StereoSample>) {
        while m.finish(now_slot, out).unwrap() {}
    }

    /// Pushes `slots` bot frames at `rate`, a 1 kHz tone in `[on, off)` and silence
    /// elsewhere, draining each slot; returns the whole output.
    fn bot_tone_run(
        rate: u32,
        slots: u64,
        on: u64,
        off: u64,
    ) -> (RecordingMixer, Vec<StereoSample>) {
        let mut m = RecordingMixer::new(rate).unwrap();
        let frame = (rate / 50) as usize;
        let mut out = Vec::new();
        for slot in 0..slots {
            let pcm = (on..off)
                .contains(&slot)
                .then(|| tone(1_000.0, rate, slot * frame as u64, frame));
            m.push_bot(slot, pcm.as_deref()).unwrap();
            m.drain(slot, &mut out);
        }
        finish_all(&mut m, slots - 1, &mut out);
        (m, out)
    }

    /// First and last sample index above a quarter of the tone's amplitude.
    fn onset_offset(x: &[i16]) -> (usize, usize) {
        let loud = |v: &i16| f64::from(v.unsigned_abs()) > AMP / 4.0;
        let first = x.iter().position(loud).unwrap();
        let last = x.iter().rposition(loud).unwrap();
        (first, last)
    }

    fn assert_bot_tone_aligned(rate: u32) {
        let (m, out) = bot_tone_run(rate, 60, 10, 20);
        println!("{rate} Hz: resampler delay {} samples", m.bot_delay());
        assert_eq!(out.len(), 60 * SLOT_SAMPLES, "one slot of output per slot");
        assert!(left(&out).iter().all(|&v| v == 0), "no caller, silent left");
        let right = right(&out);
        let (first, last) = onset_offset(&right);
        // A 1 kHz sine crosses a quarter of its amplitude within 0.04 ms of a zero crossing,
        // so the edges are exact to a sample or two once the delay is compensated.
        assert!(
            first.abs_diff(10 * SLOT_SAMPLES) <= 2,
            "onset at {first}, delay {}",
            m.bot_delay()
        );
        assert!(last.abs_diff(20 * SLOT_SAMPLES - 1) <= 2, "end at {last}");
        let body = &right[12 * SLOT_SAMPLES..18 * SLOT_SAMPLES];
        let a = amplitude(body, 1_000.0, RECORDING_RATE);
        assert!((a - AMP).abs() < AMP * 0.02, "1 kHz amplitude {a}");
        assert!(right[..9 * SLOT_SAMPLES].iter().all(|&v| v.abs() <= 2));
        assert!(right[21 * SLOT_SAMPLES..].iter().all(|&v| v.abs() <= 2));
    }

    #[test]
    fn bot_48k_lands_in_its_slots() {
        assert!(RecordingMixer::new(OPUS_RATE).unwrap().bot_delay() > 0);
        assert_bot_tone_aligned(OPUS_RATE);
    }

    #[test]
    fn bot_8k_lands_in_its_slots() {
        assert!(RecordingMixer::new(8_000).unwrap().bot_delay() > 0);
        assert_bot_tone_aligned(8_000);
    }

    #[test]
    fn bot_16k_passes_through_unchanged() {
        let mut m = RecordingMixer::new(RECORDING_RATE).unwrap();
        assert_eq!(m.bot_delay(), 0);
        let frame: Vec<i16> = (0..SLOT_SAMPLES as i16).collect();
        let mut out = Vec::new();
        m.push_bot(3, Some(&frame)).unwrap();
        finish_all(&mut m, 3, &mut out);
        assert_eq!(out.len(), 4 * SLOT_SAMPLES);
        assert_eq!(right(&out)[3 * SLOT_SAMPLES..], frame[..]);
        assert!(right(&out)[..3 * SLOT_SAMPLES].iter().all(|&v| v == 0));
    }

    #[test]
    fn bot_gap_is_silence_and_matches_pushing_silence() {
        let rate = OPUS_RATE;
        let frame = (rate / 50) as usize;
        let run = |skip: bool| {
            let mut m = RecordingMixer::new(rate).unwrap();
            let mut out = Vec::new();
            for slot in 0..60u64 {
                let sounding = slot < 10 || (30..40).contains(&slot);
                if skip && !sounding {
                    continue;
                }
                let pcm = sounding.then(|| tone(700.0, rate, slot * frame as u64, frame));
                m.push_bot(slot, pcm.as_deref()).unwrap();
                m.drain(slot, &mut out);
            }
            finish_all(&mut m, 59, &mut out);
            out
        };
        let (skipped, filled) = (run(true), run(false));
        assert_eq!(skipped.len(), 60 * SLOT_SAMPLES);
        assert_eq!(skipped.len(), filled.len());
        for (i, (a, b)) in skipped.iter().zip(&filled).enumerate() {
            assert!(a[1].abs_diff(b[1]) <= 1, "sample {i}: {} vs {}", a[1], b[1]);
        }
        let gap = &right(&skipped)[11 * SLOT_SAMPLES..29 * SLOT_SAMPLES];
        assert!(gap.iter().all(|&v| v == 0), "a skipped slot is silence");
    }

    #[test]
    fn bot_stale_and_misfit_frames_do_not_shift_the_timeline() {
        let mut m = RecordingMixer::new(RECORDING_RATE).unwrap();
        let ones = vec![1i16; SLOT_SAMPLES];
        m.push_bot(0, Some(&ones)).unwrap();
        m.push_bot(0, Some(&vec![9; SLOT_SAMPLES])).unwrap();
        assert_eq!(m.stats().bot_frames_stale, 1);
        let err = m.push_bot(1, Some(&[5; 100])).unwrap_err();
        assert!(matches!(
            err,
            RecordingError::FrameLength {
                expected: 320,
                got: 100
            }
        ));
        m.push_bot(2, Some(&ones)).unwrap();
        let mut out = Vec::new();
        finish_all(&mut m, 2, &mut out);
        let r = right(&out);
        assert_eq!(r.len(), 3 * SLOT_SAMPLES);
        assert!(r[..SLOT_SAMPLES].iter().all(|&v| v == 1));
        assert!(r[SLOT_SAMPLES..2 * SLOT_SAMPLES].iter().all(|&v| v == 0));
        assert!(r[2 * SLOT_SAMPLES..].iter().all(|&v| v == 1));
    }

    #[test]
    fn unsupported_bot_rates_are_refused() {
        for rate in [0, 44_123, 384_000] {
            assert!(matches!(
                RecordingMixer::new(rate),
                Err(RecordingError::UnsupportedRate { .. })
            ));
        }
    }

    /// A caller frame whose every sample is `value` (so the output tells which frame is where).
    fn marked(value: i16) -> Vec<i16> {
        vec![value; SLOT_SAMPLES]
    }

    /// Asserts the left channel holds frame `k` (value `10 × (k + 1)`) at slot `first + k`
    /// for each `k` in `frames`, and silence in the slots listed in `silent`.
    fn assert_caller_frames(out: &[StereoSample], first: u64, frames: &[u64], silent: &[u64]) {
        let l = left(out);
        for &k in frames {
            let at = ((first + k) as usize) * SLOT_SAMPLES;
            let want = 10 * (k as i16 + 1);
            assert!(
                l[at..at + SLOT_SAMPLES].iter().all(|&v| v == want),
                "frame {k} at slot {}",
                first + k
            );
        }
        for &slot in silent {
            let at = slot as usize * SLOT_SAMPLES;
            assert!(
                l[at..at + SLOT_SAMPLES].iter().all(|&v| v == 0),
                "slot {slot} silent"
            );
        }
    }

    /// Feeds caller frame `k` (RTP `base + k × ticks`) in arrival order given by
    /// `arrivals[k]` (slot), draining every slot; returns outcomes and output.
    fn caller_run(
        base: u32,
        ticks: u32,
        clock: u32,
        arrivals: &[(u64, u64)],
        end_slot: u64,
    ) -> (RecordingMixer, Vec<CallerPush>, Vec<StereoSample>) {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        let mut pushes = arrivals.to_vec();
        pushes.sort_by_key(|&(_, slot)| slot); // stable: ties keep the given order
        let mut next = 0;
        for slot in 0..=end_slot {
            m.push_bot(slot, None).unwrap();
            while next < pushes.len() && pushes[next].1 == slot {
                let k = pushes[next].0;
                let ts = base.wrapping_add(ticks.wrapping_mul(k as u32));
                outcomes.push(m.push_caller(slot, ts, clock, &marked(10 * (k as i16 + 1))));
                next += 1;
            }
            m.drain(slot, &mut out);
        }
        finish_all(&mut m, end_slot, &mut out);
        (m, outcomes, out)
    }

    #[test]
    fn caller_is_placed_by_rtp_time_not_arrival() {
        // Frame 0 anchors at slot 7; the others arrive 0 to 9 slots late (up to 180 ms of
        // jitter, deterministic), out of order among themselves.
        let arrivals: Vec<(u64, u64)> = (0..60u64)
            .map(|k| (k, if k == 0 { 7 } else { 7 + k + (k * 7919) % 10 }))
            .collect();
        let (m, outcomes, out) = caller_run(123_456, OPUS_TICKS, 48_000, &arrivals, 100);
        assert_eq!(outcomes[0], CallerPush::Anchored);
        assert!(
            outcomes[1..].iter().all(|&o| o == CallerPush::Placed),
            "{outcomes:?}"
        );
        assert_eq!(out.len(), 101 * SLOT_SAMPLES);
        let frames: Vec<u64> = (0..60).collect();
        assert_caller_frames(&out, 7, &frames, &[0, 6, 67, 100]);
        assert_eq!(m.stats().caller_frames_placed, 60);
    }

    #[test]
    fn caller_reordered_frames_swap_back() {
        let arrivals = [(0, 2), (2, 4), (1, 4), (4, 6), (3, 6), (5, 7)];
        let (_, outcomes, out) = caller_run(0, OPUS_TICKS, 48_000, &arrivals, 40);
        assert!(outcomes[1..].iter().all(|&o| o == CallerPush::Placed));
        assert_caller_frames(&out, 2, &[0, 1, 2, 3, 4, 5], &[1, 8]);
    }

    #[test]
    fn caller_duplicates_are_dropped() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        assert_eq!(
            m.push_caller(3, 1000, 48_000, &marked(10)),
            CallerPush::Anchored
        );
        assert_eq!(
            m.push_caller(4, 1960, 48_000, &marked(20)),
            CallerPush::Placed
        );
        // The same timestamp again with other content: dropped, the first one stays.
        assert_eq!(
            m.push_caller(5, 1960, 48_000, &marked(99)),
            CallerPush::Duplicate
        );
        assert_eq!(
            m.push_caller(5, 1000, 48_000, &marked(99)),
            CallerPush::Duplicate
        );
        let mut out = Vec::new();
        finish_all(&mut m, 10, &mut out);
        assert_caller_frames(&out, 3, &[0, 1], &[5]);
        assert_eq!(m.stats().caller_frames_duplicate, 2);
    }

    #[test]
    fn caller_gaps_are_silence() {
        let arrivals: Vec<(u64, u64)> = (0..30u64)
            .filter(|k| !(10..15).contains(k))
            .map(|k| (k, 5 + k))
            .collect();
        let (_, _, out) = caller_run(77, OPUS_TICKS, 48_000, &arrivals, 50);
        let placed: Vec<u64> = (0..30).filter(|k| !(10..15).contains(k)).collect();
        assert_caller_frames(&out, 5, &placed, &[15, 16, 17, 18, 19, 35, 50]);
    }

    #[test]
    fn caller_rtp_wraparound_is_seamless() {
        let arrivals: Vec<(u64, u64)> = (0..20u64).map(|k| (k, 4 + k)).collect();
        let base = u32::MAX - 5 * OPUS_TICKS + 17; // wraps between frames 5 and 6
        let (_, outcomes, out) = caller_run(base, OPUS_TICKS, 48_000, &arrivals, 40);
        assert!(outcomes[1..].iter().all(|&o| o == CallerPush::Placed));
        let frames: Vec<u64> = (0..20).collect();
        assert_caller_frames(&out, 4, &frames, &[3, 24]);
    }

    #[test]
    fn caller_at_8k_clock_is_placed_too() {
        let arrivals: Vec<(u64, u64)> = (0..10u64).map(|k| (k, 2 + k + k % 3)).collect();
        let (_, _, out) = caller_run(5, 160, 8_000, &arrivals, 30);
        let frames: Vec<u64> = (0..10).collect();
        assert_caller_frames(&out, 2, &frames, &[1, 12]);
    }

    #[test]
    fn caller_too_late_is_dropped() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            m.push_caller(0, 0, 48_000, &marked(10)),
            CallerPush::Anchored
        );
        for slot in 0..=40 {
            m.drain(slot, &mut out);
        }
        // Frame 1 belongs in slot 1, emitted by now (40 − 25 ≥ 1).
        assert_eq!(
            m.push_caller(40, OPUS_TICKS, 48_000, &marked(20)),
            CallerPush::Late
        );
        // Frame 20 (slot 20) is still inside the window.
        assert_eq!(
            m.push_caller(40, 20 * OPUS_TICKS, 48_000, &marked(210)),
            CallerPush::Placed
        );
        finish_all(&mut m, 40, &mut out);
        assert_caller_frames(&out, 0, &[0, 20], &[1]);
        assert_eq!(m.stats().caller_frames_late, 1);
    }

    #[test]
    fn caller_restart_far_ahead_reanchors_at_arrival() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        assert_eq!(
            m.push_caller(2, 500, 48_000, &marked(10)),
            CallerPush::Anchored
        );
        assert_eq!(
            m.push_caller(3, 500 + OPUS_TICKS, 48_000, &marked(20)),
            CallerPush::Placed
        );
        // A new stream 20 s ahead in RTP time, arriving in slot 10.
        let restart = 500 + 48_000 * 20;
        assert_eq!(
            m.push_caller(10, restart, 48_000, &marked(90)),
            CallerPush::Reanchored
        );
        assert_eq!(
            m.push_caller(11, restart + OPUS_TICKS, 48_000, &marked(100)),
            CallerPush::Placed
        );
        let mut out = Vec::new();
        finish_all(&mut m, 20, &mut out);
        assert_caller_frames(&out, 2, &[0, 1], &[4, 9, 12]);
        assert_caller_frames(&out, 2, &[8, 9], &[]); // values 90, 100 at slots 10, 11
        assert_eq!(m.stats().caller_reanchors, 1);
    }

    #[test]
    fn caller_restart_behind_reanchors_after_a_late_run() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        // 100 frames in time, then the stream restarts 10 s back in RTP time.
        for slot in 0..200u64 {
            m.push_bot(slot, None).unwrap();
            let ts = if slot < 100 {
                slot as u32 * OPUS_TICKS
            } else {
                (slot as u32 * OPUS_TICKS).wrapping_sub(48_000 * 10)
            };
            outcomes.push(m.push_caller(slot, ts, 48_000, &marked(7)));
            m.drain(slot, &mut out);
        }
        finish_all(&mut m, 199, &mut out);
        let late = LATE_RUN_REANCHOR as usize - 1;
        assert!(outcomes[100..100 + late]
            .iter()
            .all(|&o| o == CallerPush::Late));
        assert_eq!(outcomes[100 + late], CallerPush::Reanchored);
        assert!(outcomes[101 + late..]
            .iter()
            .all(|&o| o == CallerPush::Placed));
        let l = left(&out);
        let back = (100 + late) * SLOT_SAMPLES;
        assert!(
            l[back..].iter().all(|&v| v == 7),
            "placed again from the re-anchor on"
        );
        assert!(l[100 * SLOT_SAMPLES..back].iter().all(|&v| v == 0));
    }

    #[test]
    fn caller_invalid_pushes_are_refused() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        assert_eq!(m.push_caller(0, 0, 48_000, &[]), CallerPush::Invalid);
        assert_eq!(m.push_caller(0, 0, 0, &marked(1)), CallerPush::Invalid);
        let long = vec![1; MAX_CALLER_PUSH_SAMPLES + 1];
        assert_eq!(m.push_caller(0, 0, 48_000, &long), CallerPush::Invalid);
        assert_eq!(m.stats().caller_frames_invalid, 3);
    }

    #[test]
    fn caller_and_bot_share_the_timeline() {
        let rate = OPUS_RATE;
        let frame = (rate / 50) as usize;
        let mut m = RecordingMixer::new(rate).unwrap();
        let mut out = Vec::new();
        for slot in 0..100u64 {
            let bot = (20..30)
                .contains(&slot)
                .then(|| tone(1_000.0, rate, slot * frame as u64, frame));
            m.push_bot(slot, bot.as_deref()).unwrap();
            // The caller's frames for slots 40..60 arrive two slots late.
            if (42..62).contains(&slot) {
                let k = slot - 42;
                let pcm = tone(440.0, RECORDING_RATE, k * SLOT_SAMPLES as u64, SLOT_SAMPLES);
                let ts = 9_000u32.wrapping_add(k as u32 * OPUS_TICKS);
                // Anchor with the first frame arriving in its own slot 40.
                let arrival = if k == 0 { 40 } else { slot };
                m.push_caller(arrival, ts, 48_000, &pcm);
            }
            m.drain(slot, &mut out);
        }
        finish_all(&mut m, 99, &mut out);
        let (l, r) = (left(&out), right(&out));
        let (r_on, r_off) = onset_offset(&r);
        let (l_on, l_off) = onset_offset(&l);
        assert!(r_on.abs_diff(20 * SLOT_SAMPLES) <= 2 && r_off.abs_diff(30 * SLOT_SAMPLES) <= 3);
        assert!(l_on.abs_diff(40 * SLOT_SAMPLES) <= 2 && l_off.abs_diff(60 * SLOT_SAMPLES) <= 3);
        assert!(
            amplitude(
                &l[41 * SLOT_SAMPLES..59 * SLOT_SAMPLES],
                440.0,
                RECORDING_RATE
            ) > AMP * 0.98
        );
        assert!(
            amplitude(
                &r[41 * SLOT_SAMPLES..59 * SLOT_SAMPLES],
                1_000.0,
                RECORDING_RATE
            ) < 5.0
        );
    }

    #[test]
    fn ten_minutes_stay_within_the_memory_bound() {
        let rate = OPUS_RATE;
        let frame = (rate / 50) as usize;
        let bot_pcm = tone(300.0, rate, 0, frame);
        let caller_pcm = marked(3);
        // The bot speaks 2 s of every 10 (resampling all of it would take seconds in debug).
        let slots = 10 * 60 * 50u64;
        let mut m = RecordingMixer::new(rate).unwrap();
        let mut out = Vec::with_capacity(4 * SLOT_SAMPLES);
        let mut emitted = 0usize;
        let mut max_held = 0;
        for slot in 0..slots {
            let speaking = slot % 500 < 100;
            m.push_bot(slot, speaking.then_some(&bot_pcm[..])).unwrap();
            // Caller frames with up to 8 slots of jitter, each arriving once.
            let k = slot.saturating_sub((slot * 31) % 9);
            m.push_caller(
                slot,
                (k as u32).wrapping_mul(OPUS_TICKS),
                48_000,
                &caller_pcm,
            );
            m.drain(slot, &mut out);
            emitted += out.len();
            out.clear();
            max_held = max_held.max(m.held_samples());
            assert!(m.held.capacity() <= 2 * MAX_HELD_SAMPLES);
        }
        finish_all(&mut m, slots - 1, &mut out);
        emitted += out.len();
        assert_eq!(
            emitted as u64,
            slots * SLOT_SAMPLES as u64,
            "the whole call, no more"
        );
        assert!(
            max_held <= (LATE_WINDOW_SLOTS as usize + 2) * SLOT_SAMPLES,
            "held {max_held}"
        );
        assert!(out.capacity() <= 2 * slot_start(LATE_WINDOW_SLOTS + 1) as usize);
        assert_eq!(m.stats().discarded_samples, 0);
    }

    #[test]
    fn a_mixer_never_drained_stays_bounded() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        for slot in 0..1_000u64 {
            m.push_bot(slot, None).unwrap();
            m.push_caller(slot, slot as u32 * OPUS_TICKS, 48_000, &marked(1));
        }
        assert!(m.held_samples() <= MAX_HELD_SAMPLES);
        assert!(m.stats().discarded_samples > 0);
    }

    #[test]
    fn a_stalled_driver_catches_up_in_bounded_drains() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        let mut out = Vec::new();
        m.push_bot(0, None).unwrap();
        let now = 2 * MAX_DRAIN_SLOTS + 100;
        assert!(m.drain(now, &mut out));
        assert_eq!(out.len(), slot_start(MAX_DRAIN_SLOTS) as usize);
        assert!(m.drain(now, &mut out));
        assert!(!m.drain(now, &mut out));
        assert_eq!(out.len() as u64, slot_start(now + 1 - LATE_WINDOW_SLOTS));
    }

    #[test]
    fn finish_cuts_at_the_last_slot_and_ignores_later_pushes() {
        let mut m = RecordingMixer::new(OPUS_RATE).unwrap();
        m.push_caller(0, 0, 48_000, &marked(10));
        // A caller frame placed ahead of the last slot is cut at the call's end.
        m.push_caller(0, 5 * OPUS_TICKS, 48_000, &marked(60));
        let mut out = Vec::new();
        assert!(!m.finish(3, &mut out).unwrap());
        assert_eq!(out.len(), 4 * SLOT_SAMPLES);
        assert_eq!(m.push_caller(4, 0, 48_000, &marked(1)), CallerPush::Invalid);
        m.push_bot(4, None).unwrap();
        assert!(!m.drain(10, &mut out));
        assert!(!m.finish(10, &mut out).unwrap());
        assert_eq!(out.len(), 4 * SLOT_SAMPLES);
        assert_eq!(m.held_samples(), 0);
    }

    #[test]
    fn wild_inputs_do_not_panic() {
        let mut m = RecordingMixer::new(8_000).unwrap();
        let mut out = Vec::new();
        m.push_bot(u64::MAX - 1, None).unwrap();
        m.push_bot(u64::MAX, Some(&[1; 160])).unwrap();
        m.push_caller(u64::MAX, u32::MAX, 1, &marked(1));
        m.push_caller(u64::MAX, 0, u32::MAX, &marked(1));
        m.push_caller(0, 0, 48_000, &marked(1));
        m.drain(u64::MAX, &mut out);
        assert!(m.finish(u64::MAX, &mut out).is_ok());
        assert!(m.held_samples() <= MAX_HELD_SAMPLES);
    }
}

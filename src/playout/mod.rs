//! The jitter-aware playout schedule: one 20 ms PCM frame per slot on an absolute grid.
//!
//! ## Timing contract
//!
//! - Frame `n` (its *slot*) is due at `t0 + n × 20 ms` ([`Playout::start`] sets `t0`); the
//!   codec makes its RTP timestamp from `n` ([`crate::codec::Codec::rtp_timestamp`]). Both
//!   come from `n`, never from `Instant` arithmetic on `now`, so RTP time cannot drift from
//!   the schedule, across silence, underruns, utterance boundaries and stalls.
//! - The call hears a continuous stream: between utterances and on underrun the frame is
//!   silence (`pcm: None`). Frames stay PCM until the codec encodes them at emission time,
//!   so [`Playout::clear`] can fade the PCM.
//! - When `poll` comes late (a process stall), frames up to `max_late` behind still go out in
//!   their own slots, one per `poll`, at once: a short burst with continuous RTP time that
//!   the receiver's jitter buffer absorbs (counted as delayed). Beyond `max_late` the missed
//!   slots are skipped and counted as late; RTP time jumps with the schedule, and no audio is
//!   dropped (it plays in the following slots).
//! - Jitter awareness: [`estimator::DeliveryEstimator`] measures how the TTS delivers. An
//!   utterance's first frame goes out only when its audio is complete, or has been arriving
//!   for at least the start-up buffer, or at least the start-up buffer of it is queued.
//!   An utterance with no audio yet never starts.
//! - Events ride on the frame that makes them true: `UtteranceStarted` on the first frame,
//!   `UtteranceDone` on the last, `Mark` on the frame where the last utterance it waits for is
//!   done (or cleared), `Cleared` on the faded frame.
//!
//! Nothing here reads a clock: every method takes `now`.

pub mod estimator;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::audio::pcm::InputFormat;
use crate::audio::transcode::{PcmFrame, Transcoder};
use crate::audio::{AudioError, FRAME_MS};
use estimator::DeliveryEstimator;

/// The frame period.
pub const FRAME: Duration = Duration::from_millis(FRAME_MS);

/// Everything a call's playout needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayoutConfig {
    /// The LMNT session's audio `format`.
    pub input_format: InputFormat,
    /// The LMNT session's `sample_rate` (8000, 16000 or 24000).
    pub input_rate: u32,
    /// The rate of the frames produced: the codec's PCM rate
    /// ([`crate::codec::Codec::pcm_rate`]).
    pub output_rate: u32,
    /// Lower bound of the start-up buffer.
    pub jitter_min: Duration,
    /// Upper bound of the start-up buffer.
    pub jitter_max: Duration,
    /// Queued audio at which [`Playout::has_room`] turns false.
    pub max_queued: Duration,
    /// How late a frame may still go out in its own slot (continuous RTP time, sent at once
    /// after the frames before it); later than this the schedule skips ahead.
    pub max_late: Duration,
}

/// One frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    /// 20 ms of PCM at the output rate; `None` is silence.
    pub pcm: Option<PcmFrame>,
    /// The frame's index on the schedule (the codec's RTP time is derived from it).
    pub slot: u64,
    /// What this frame makes true, in order.
    pub events: Vec<PlayoutEvent>,
    /// When the frame was due (`t0 + n × 20 ms`).
    pub deadline: Instant,
}

/// What a frame makes true (interface.md section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayoutEvent {
    /// The utterance's first frame.
    UtteranceStarted {
        /// Utterance id.
        utterance: u64,
    },
    /// The utterance's last frame (padding and filter tail included).
    UtteranceDone {
        /// Utterance id.
        utterance: u64,
        /// Length of the audio LMNT sent for it.
        audio_ms: u64,
    },
    /// Every utterance the mark waits for has been played (or cleared).
    Mark {
        /// The bot's name for it.
        name: String,
        /// False when a `clear` dropped audio the mark waited for.
        played: bool,
    },
    /// Barge-in: the interrupted utterance, and how much of it the caller heard.
    Cleared {
        /// Utterance id.
        utterance: u64,
        /// Audio of it played, the faded frame included.
        played_ms: u64,
    },
}

/// Counters for `GET /v1/calls/{id}` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlayoutStats {
    /// Frames returned by `poll`.
    pub frames_sent: u64,
    /// Of those, frames carrying utterance audio.
    pub audio_frames: u64,
    /// Frames of silence inside a started utterance because its audio had not arrived.
    pub underrun_frames: u64,
    /// Slots skipped because `poll` came more than `max_late` late: RTP time jumps there.
    pub late_frames: u64,
    /// Frames sent more than a frame after their deadline, within `max_late`: RTP time stays
    /// continuous and the receiver's jitter buffer absorbs them.
    pub delayed_frames: u64,
    /// The start-up buffer the next utterance will use.
    pub startup_buffer: Duration,
    /// Smoothed TTS arrival jitter.
    pub arrival_jitter: Duration,
    /// TTS delivery speed relative to real time, once measured.
    pub delivery_speed: Option<f64>,
    /// Utterances that played their first frame.
    pub utterances_started: u64,
    /// Utterances that played their last frame.
    pub utterances_done: u64,
    /// Utterances interrupted by `clear`.
    pub utterances_cleared: u64,
    /// Audio bytes ignored because their utterance had been cleared.
    pub bytes_after_clear: u64,
    /// Bytes of a half sample dropped at an utterance's end (the sender cut a sample).
    pub dangling_bytes: u64,
    /// Times the transcoder failed internally (what it produced still played).
    pub transcode_errors: u64,
}

/// The per-call playout: transcoder, delivery estimator and frame queue. Owned by the call
/// core.
pub struct Playout {
    cfg: PlayoutConfig,
    transcoder: Transcoder,
    estimator: DeliveryEstimator,
    t0: Option<Instant>,
    /// Index of the next slot.
    slot: u64,
    queue: VecDeque<Entry>,
    /// Frames in `queue`.
    queued_frames: usize,
    /// Utterances received and not yet done, in order; the front one plays next.
    utterances: VecDeque<Utterance>,
    /// The utterance whose audio is arriving.
    receiving: Option<u64>,
    /// Highest utterance id ended or cleared; older ids are finished.
    closed_through: u64,
    /// Utterance ids up to this were cleared: their late audio is ignored.
    cleared_through: u64,
    /// Highest utterance id whose last frame was emitted, or that was cleared.
    done_through: u64,
    /// Marks, in order, each waiting until `done_through` reaches its utterance.
    marks: VecDeque<PendingMark>,
    /// A barge-in waiting for the next frame.
    fade: Option<Fade>,
    scratch: Vec<PcmFrame>,
    stats: PlayoutStats,
}

/// A bot's mark waiting for utterance `after` to be done.
struct PendingMark {
    after: u64,
    name: String,
    /// Cleared before its audio played.
    dropped: bool,
}

enum Entry {
    Frame { pcm: PcmFrame, utterance: u64 },
    End { utterance: u64, audio_ms: u64 },
}

#[derive(Debug)]
struct Utterance {
    id: u64,
    first_arrival: Instant,
    /// Real input samples received.
    samples: u64,
    ended: bool,
    started: bool,
    queued_frames: usize,
    emitted_frames: u64,
}

struct Fade {
    frame: Option<PcmFrame>,
    event: Option<PlayoutEvent>,
}

impl std::fmt::Debug for Playout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playout")
            .field("slot", &self.slot)
            .field("queued_frames", &self.queued_frames)
            .field("utterances", &self.utterances)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Playout {
    /// Builds the transcoder; fails on an unsupported rate or conversion.
    pub fn new(cfg: PlayoutConfig) -> Result<Playout, AudioError> {
        let transcoder = Transcoder::new(cfg.input_format, cfg.input_rate, cfg.output_rate)?;
        let estimator = DeliveryEstimator::new(cfg.jitter_min, cfg.jitter_max);
        let stats = PlayoutStats {
            startup_buffer: estimator.startup_buffer(),
            ..Default::default()
        };
        Ok(Playout {
            cfg,
            transcoder,
            estimator,
            t0: None,
            slot: 0,
            queue: VecDeque::new(),
            queued_frames: 0,
            utterances: VecDeque::new(),
            receiving: None,
            closed_through: 0,
            cleared_through: 0,
            done_through: 0,
            marks: VecDeque::new(),
            fade: None,
            scratch: Vec::new(),
            stats,
        })
    }

    /// Anchors the schedule: frame n is due at t0 + n*20 ms. Before start, poll returns None.
    /// Later calls are ignored (re-anchoring would break RTP continuity).
    pub fn start(&mut self, now: Instant) {
        if self.t0.is_none() {
            self.t0 = Some(now);
        }
    }

    /// LMNT audio bytes of utterance `utterance` (ids ascend: 1, 2, 3...). Never drops audio.
    ///
    /// Audio for a newer utterance ends the one being received. Audio for a cleared utterance
    /// is ignored (counted in `bytes_after_clear`). Returns
    /// [`AudioError::UtteranceOutOfOrder`] for an id older than one already ended.
    pub fn push_audio(
        &mut self,
        now: Instant,
        utterance: u64,
        bytes: &[u8],
    ) -> Result<(), AudioError> {
        if utterance <= self.cleared_through {
            self.stats.bytes_after_clear += bytes.len() as u64;
            return Ok(());
        }
        if let Some(current) = self.receiving {
            if utterance < current {
                return Err(AudioError::UtteranceOutOfOrder {
                    got: utterance,
                    current,
                });
            }
            if utterance > current {
                self.finish_receiving()?;
            }
        }
        if self.receiving.is_none() {
            if utterance <= self.closed_through {
                return Err(AudioError::UtteranceOutOfOrder {
                    got: utterance,
                    current: self.closed_through,
                });
            }
            self.receiving = Some(utterance);
            self.utterances.push_back(Utterance {
                id: utterance,
                first_arrival: now,
                samples: 0,
                ended: false,
                started: false,
                queued_frames: 0,
                emitted_frames: 0,
            });
        }
        let before = self.transcoder.utterance_samples();
        let mut frames = std::mem::take(&mut self.scratch);
        let result = self.transcoder.push(bytes, &mut |f| frames.push(f));
        let added = self.transcoder.utterance_samples() - before;
        self.enqueue(utterance, &mut frames);
        self.scratch = frames;
        if let Some(u) = self.utterances.back_mut() {
            u.samples += added;
        }
        if added > 0 {
            let audio = Duration::from_micros(added * 1_000_000 / u64::from(self.cfg.input_rate));
            self.estimator.on_audio(now, audio);
        }
        result
    }

    /// The utterance's audio is complete (LMNT flush_complete): flush the resampler tail, pad.
    /// An utterance that never had audio still yields `UtteranceDone { audio_ms: 0 }` in turn.
    /// Repeated, stale or cleared ids are ignored.
    pub fn end_utterance(&mut self, now: Instant, utterance: u64) {
        if utterance <= self.cleared_through {
            return;
        }
        match self.receiving {
            Some(current) if current == utterance => {
                if self.finish_receiving().is_err() {
                    // The transcoder failed internally; what it produced is queued and the
                    // utterance is closed, so the call goes on.
                    self.stats.transcode_errors += 1;
                }
            }
            Some(current) if utterance < current => {}
            _ if utterance <= self.closed_through => {}
            _ => {
                // Never received audio: close the one being received first, if any.
                if self.receiving.is_some() && self.finish_receiving().is_err() {
                    self.stats.transcode_errors += 1;
                }
                self.utterances.push_back(Utterance {
                    id: utterance,
                    first_arrival: now,
                    samples: 0,
                    ended: true,
                    started: false,
                    queued_frames: 0,
                    emitted_frames: 0,
                });
                self.queue.push_back(Entry::End {
                    utterance,
                    audio_ms: 0,
                });
                self.closed_through = utterance;
            }
        }
    }

    /// A mark that fires on the frame where utterance `after` and every one before it are
    /// done (their last frame sent) or cleared; with the next frame when they already are
    /// (`after` 0: nothing to wait for). Marks fire in the order they were given.
    pub fn mark(&mut self, after: u64, name: String) {
        self.marks.push_back(PendingMark {
            after,
            name,
            dropped: false,
        });
    }

    /// Barge-in: within one frame, fade out (no click), drop all queued audio and pending
    /// utterances; emits Cleared{utterance, played_ms} for the interrupted one with that frame.
    ///
    /// The interrupted utterance is the one playing, or else the next one waiting to start
    /// (`played_ms` 0); with neither, no `Cleared` is emitted. Utterances up to `through`
    /// (the newest one the bot had flushed) are finished: audio that arrives later for them
    /// is ignored, and marks waiting on them fire with the faded frame, `played: false`.
    pub fn clear(&mut self, through: u64) {
        let delay = self.transcoder.delay();
        let mut frame = None;
        let mut event = None;
        if let Some(front) = self.utterances.front() {
            if front.started {
                frame = self
                    .queue
                    .iter()
                    .position(|e| matches!(e, Entry::Frame { .. }))
                    .and_then(|i| match self.queue.remove(i) {
                        Some(Entry::Frame { pcm, utterance }) if utterance == front.id => Some(pcm),
                        _ => None,
                    });
                let frames = front.emitted_frames + u64::from(frame.is_some());
                let frame_samples = self.transcoder.frame_samples() as u64;
                let content = (frames * frame_samples).saturating_sub(delay);
                let received_ms = front.samples * 1000 / u64::from(self.cfg.input_rate);
                let samples_per_ms = u64::from(self.cfg.output_rate) / 1000;
                event = Some(PlayoutEvent::Cleared {
                    utterance: front.id,
                    played_ms: (content / samples_per_ms).min(received_ms),
                });
            } else {
                event = Some(PlayoutEvent::Cleared {
                    utterance: front.id,
                    played_ms: 0,
                });
            }
            self.stats.utterances_cleared += 1;
        }
        for mark in self
            .marks
            .iter_mut()
            .filter(|m| m.after > self.done_through)
        {
            mark.dropped = true;
        }
        self.cleared_through = self.cleared_through.max(through).max(self.closed_through);
        self.closed_through = self.cleared_through;
        self.done_through = self.done_through.max(self.cleared_through);
        self.queue.clear();
        self.queued_frames = 0;
        self.utterances.clear();
        self.receiving = None;
        self.transcoder.reset();
        self.estimator.on_end();
        match &mut self.fade {
            // A second clear before the next frame: the first one's fade still stands.
            Some(_) => {}
            None => self.fade = Some(Fade { frame, event }),
        }
    }

    /// False when queued audio >= max_queued: the caller must stop reading upstream (backpressure).
    pub fn has_room(&self) -> bool {
        self.queued() < self.cfg.max_queued
    }

    /// Audio queued for playout (whole frames, not yet sent).
    pub fn queued(&self) -> Duration {
        FRAME * u32::try_from(self.queued_frames).unwrap_or(u32::MAX)
    }

    /// Nothing queued, pending or waiting: no utterance, no frame, no fade and no mark.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.utterances.is_empty()
            && self.receiving.is_none()
            && self.fade.is_none()
            && self.marks.is_empty()
    }

    /// The slot the next frame will take (0 before start).
    pub fn next_slot(&self) -> u64 {
        self.slot
    }

    /// The next frame's deadline; None before start.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline_of(self.slot)
    }

    /// Call when now >= next_deadline. Returns the frame due. If `now` is late by more than one
    /// frame, does not burst: skips ahead, counts the missed slots as late, RTP time jumps with
    /// the schedule. Returns None before start, or when called before the deadline.
    pub fn poll(&mut self, now: Instant) -> Option<OutFrame> {
        let (slot, deadline) = self.due_slot(now)?;
        let mut events = Vec::new();
        let pcm = match self.fade.take() {
            Some(fade) => {
                events.extend(fade.event);
                fade.frame.map(|mut f| {
                    fade_out(&mut f);
                    self.stats.audio_frames += 1;
                    f
                })
            }
            None => self.next_pcm(now, &mut events),
        };
        while self
            .marks
            .front()
            .is_some_and(|m| m.after <= self.done_through)
        {
            if let Some(mark) = self.marks.pop_front() {
                events.push(PlayoutEvent::Mark {
                    name: mark.name,
                    played: !mark.dropped,
                });
            }
        }
        Some(OutFrame {
            pcm,
            slot,
            events,
            deadline,
        })
    }

    /// Like [`Playout::poll`], for a slot that carries something else (the bot's DTMF): the
    /// schedule moves on, the audio waits. Returns the slot due and its deadline; `None`
    /// before start or before the deadline.
    pub fn hold(&mut self, now: Instant) -> Option<(u64, Instant)> {
        self.due_slot(now)
    }

    /// Takes the slot due at `now`. A frame up to `max_late` behind still takes its own slot
    /// (the caller then sends the ones after it at once: a short burst with continuous RTP
    /// time); beyond that, the slots more than a frame behind are skipped (counted as late).
    /// `None` before start or before the deadline.
    fn due_slot(&mut self, now: Instant) -> Option<(u64, Instant)> {
        let mut deadline = self.deadline_of(self.slot)?;
        if now < deadline {
            return None;
        }
        let behind = now.duration_since(deadline);
        if behind >= FRAME && behind > self.cfg.max_late {
            let skipped = (behind.as_nanos() / FRAME.as_nanos()) as u64;
            self.slot += skipped;
            self.stats.late_frames += skipped;
            deadline = self.deadline_of(self.slot)?;
        } else if behind >= FRAME {
            self.stats.delayed_frames += 1;
        }
        let slot = self.slot;
        self.slot += 1;
        self.stats.frames_sent += 1;
        Some((slot, deadline))
    }

    /// Counters and the current estimates.
    pub fn stats(&self) -> PlayoutStats {
        PlayoutStats {
            startup_buffer: self.estimator.startup_buffer(),
            arrival_jitter: self.estimator.jitter(),
            delivery_speed: self.estimator.speed(),
            ..self.stats.clone()
        }
    }

    fn deadline_of(&self, slot: u64) -> Option<Instant> {
        let offset = Duration::from_millis(slot.checked_mul(FRAME_MS)?);
        self.t0?.checked_add(offset)
    }

    /// Moves transcoder output into the queue, tagged with its utterance.
    fn enqueue(&mut self, utterance: u64, frames: &mut Vec<PcmFrame>) {
        let n = frames.len();
        for pcm in frames.drain(..) {
            self.queue.push_back(Entry::Frame { pcm, utterance });
        }
        self.queued_frames += n;
        if let Some(u) = self.utterances.back_mut() {
            u.queued_frames += n;
        }
    }

    /// Flushes the utterance being received and queues its end.
    fn finish_receiving(&mut self) -> Result<(), AudioError> {
        let Some(id) = self.receiving.take() else {
            return Ok(());
        };
        let mut frames = std::mem::take(&mut self.scratch);
        let result = self.transcoder.finish_utterance(&mut |f| frames.push(f));
        self.enqueue(id, &mut frames);
        self.scratch = frames;
        if let Ok(dangling) = &result {
            self.stats.dangling_bytes += *dangling as u64;
        }
        let rate = u64::from(self.cfg.input_rate);
        let audio_ms = self.utterances.back_mut().map_or(0, |u| {
            u.ended = true;
            u.samples * 1000 / rate
        });
        self.queue.push_back(Entry::End {
            utterance: id,
            audio_ms,
        });
        self.closed_through = self.closed_through.max(id);
        self.estimator.on_end();
        result.map(|_| ())
    }

    /// The PCM for this slot (None = silence), with the events it makes true.
    fn next_pcm(&mut self, now: Instant, events: &mut Vec<PlayoutEvent>) -> Option<PcmFrame> {
        loop {
            match self.queue.front() {
                None => {
                    if self.utterances.front().is_some_and(|u| u.started) {
                        self.stats.underrun_frames += 1;
                    }
                    return None;
                }
                Some(Entry::End { .. }) => {
                    if let Some(Entry::End {
                        utterance,
                        audio_ms,
                    }) = self.queue.pop_front()
                    {
                        self.close_front(utterance, audio_ms, events);
                    }
                }
                Some(Entry::Frame { .. }) => {
                    let startup = self.estimator.startup_buffer();
                    let front = self.utterances.front_mut()?;
                    if !front.started {
                        let waited = now.saturating_duration_since(front.first_arrival);
                        let buffered =
                            FRAME * u32::try_from(front.queued_frames).unwrap_or(u32::MAX);
                        if !(front.ended || waited >= startup || buffered >= startup) {
                            return None;
                        }
                        front.started = true;
                        self.stats.utterances_started += 1;
                        events.push(PlayoutEvent::UtteranceStarted {
                            utterance: front.id,
                        });
                    }
                    let Some(Entry::Frame { pcm, .. }) = self.queue.pop_front() else {
                        return None;
                    };
                    front.queued_frames = front.queued_frames.saturating_sub(1);
                    front.emitted_frames += 1;
                    self.queued_frames = self.queued_frames.saturating_sub(1);
                    self.stats.audio_frames += 1;
                    if matches!(self.queue.front(), Some(Entry::End { .. })) {
                        if let Some(Entry::End {
                            utterance,
                            audio_ms,
                        }) = self.queue.pop_front()
                        {
                            self.close_front(utterance, audio_ms, events);
                        }
                    }
                    return Some(pcm);
                }
            }
        }
    }

    fn close_front(&mut self, utterance: u64, audio_ms: u64, events: &mut Vec<PlayoutEvent>) {
        if self.utterances.front().is_some_and(|u| u.id == utterance) {
            self.utterances.pop_front();
        }
        self.done_through = self.done_through.max(utterance);
        self.stats.utterances_done += 1;
        events.push(PlayoutEvent::UtteranceDone {
            utterance,
            audio_ms,
        });
    }
}

/// Raised-cosine fade from full level to zero across the frame: no step, so no click.
fn fade_out(frame: &mut [i16]) {
    let n = frame.len() as f32;
    for (i, s) in frame.iter_mut().enumerate() {
        let g = 0.5 * (1.0 + (std::f32::consts::PI * (i as f32 + 1.0) / n).cos());
        *s = (f32::from(*s) * g).round() as i16;
    }
}

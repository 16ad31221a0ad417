//! The call core: every decision of one call, with no I/O, no clock and no runtime (the shape
//! of quinn-proto's `Connection` and str0m's `Rtc`).
//!
//! ## Contract
//!
//! Inputs are `handle_*` methods; each that depends on time takes `now`. Outputs are polled
//! and must be drained by the driver after every input:
//!
//! - [`CallCore::poll_timeout`]: when to call [`CallCore::handle_timeout`] next (the next
//!   frame's `t0 + n × 20 ms`).
//! - [`CallCore::poll_transmit`]: a frame due now with its slot: PCM to encode with the
//!   call's codec, or one of the bot's DTMF event packets. The driver sends it, then calls
//!   [`CallCore::handle_frame_sent`]: the events that frame makes true (`utterance.started`,
//!   `utterance.done`, marks, `cleared`, `dtmf.sent`) are released to the bot only then, so
//!   no event runs ahead of its audio.
//! - [`CallCore::poll_lmnt`]: commands for the LMNT session, in order.
//! - [`CallCore::poll_bot`]: events and caller audio for the attached bot, in order.
//! - [`CallCore::poll_recording`]: the recording's final stereo samples, for the writer.
//! - [`CallCore::poll_encoder_settings`]: new Opus settings after the caller's loss reports
//!   changed them, for the driver's encoder.
//! - [`CallCore::poll_end`]: why the call is over, once it is; `call.ended` is then the last
//!   bot output.
//!
//! Inputs: the bot's messages and `say`, a bot attaching or leaving, LMNT's link events,
//! the caller's RTP packets (payload type, sequence number, timestamp, marker), the caller's
//! RTCP receiver reports about our stream, media going live, timeouts, drain and hang-up, and a failed recording.
//!
//! ## Ownership
//!
//! Each piece of state has one owner. The [`Ledger`] owns what LMNT owes: each utterance's
//! text, its flush nonce on the current session, and the audio bytes already played. The
//! [`Playout`] owns what the caller hears: frames, the schedule, marks. The core owns, per
//! utterance until it is done or cleared, its latency timeline (flush → first byte → first
//! frame → done), its text once LMNT acknowledged it, and its words from LMNT's timestamps
//! (for `heard_text`); and the give-up rule, drain, and the figures of [`CallSnapshot`].
//!
//! ## Backpressure
//!
//! [`CallCore::wants_lmnt_audio`] is false while the playout holds `max_queued` of audio:
//! the driver then stops reading the LMNT session, whose reader stops reading the socket.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::ledger::{AudioRoute, Ledger, LmntCommand, TextLimits};
use crate::audio::{AudioError, PcmFrame};
use crate::codec::dtmf::{self, DtmfReceiver, DtmfSender, OutEvent};
use crate::codec::loss::{LossController, LossFigures, ReceiverReport};
use crate::codec::{
    CallerDecoder, Codec, CodecKind, EncoderSettings, OpusSettings, CALLER_FRAME_SAMPLES,
};
use crate::control::{BotEvent, BotMessage, ControlError};
use crate::lmnt::{LinkEvent, LmntError, SessionEvent, Timestamp};
use crate::metrics;
use crate::playout::{Playout, PlayoutConfig, PlayoutEvent, PlayoutStats};
use crate::recording::{RecordingError, RecordingMixer, StereoSample};

/// LMNT sessions that may fail in a row without the call's utterances making any progress
/// (no new audio played, no flush acknowledged) before the pending utterances are given up
/// and the bot is told. About 3 s of retrying with the link's backoff; a failure that is not
/// retryable gives up at once.
pub const GIVE_UP_AFTER_FAILURES: u32 = 5;
/// Caller packets lost in a row that are concealed for the bot (one 20 ms frame each, so its
/// stream keeps time). A longer gap is a pause or a restart of the caller's stream, not loss.
const MAX_CONCEALED_FRAMES: u16 = 5;
/// The bot's caller-audio format, as announced in `call.started`.
const CALLER_AUDIO_FORMAT: &str = "pcm_s16le_16000_mono_20ms";

/// Why a call ended, as reported in `call.ended` and the `calls_ended` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE /v1/calls/{id}`: the caller's side hung up through signaling.
    CallerHangup,
    /// The bot sent `hangup`.
    BotHangup,
    /// The caller's peer disconnected or ICE/DTLS failed.
    PeerGone,
    /// The daemon is shutting down.
    Shutdown,
    /// The bot the call dials out to stayed unreachable for `bots.retry_budget_ms`.
    BotUnreachable,
    /// The bot's control channel dropped (without `hangup`) and no bot attached again
    /// within the grace period (`calls.bot_grace_ms`).
    BotGone,
    /// A bug inside this call's code (a panic): this call ended, the others go on.
    InternalError,
}

impl EndReason {
    /// A stable name, for `call.ended` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller_hangup",
            EndReason::BotHangup => "bot_hangup",
            EndReason::PeerGone => "peer_gone",
            EndReason::Shutdown => "shutdown",
            EndReason::BotUnreachable => "bot_unreachable",
            EndReason::BotGone => "bot_gone",
            EndReason::InternalError => "internal_error",
        }
    }
}

/// Why a bot cannot attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// Another bot holds the control channel (bot fault; retry after it leaves).
    #[error("another bot is attached to this call")]
    AlreadyAttached,
}

/// What flows to an attached bot.
#[derive(Debug, Clone, PartialEq)]
pub enum BotOutput {
    /// A JSON event.
    Event(BotEvent),
    /// 20 ms of the caller's audio, PCM s16le mono 16 kHz (640 bytes).
    CallerAudio(Bytes),
}

/// The call's state as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Answered; ICE/DTLS not up yet.
    Connecting,
    /// Media flowing.
    Live,
    /// Finishing its utterances before shutdown.
    Draining,
    /// Over.
    Ended,
}

/// Latency figures of one kind, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyFigures {
    pub count: u64,
    pub last_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl LatencyFigures {
    fn observe(&mut self, value: Duration) {
        let ms = value.as_secs_f64() * 1000.0;
        self.count += 1;
        self.last_ms = ms;
        self.mean_ms += (ms - self.mean_ms) / self.count as f64;
        self.max_ms = self.max_ms.max(ms);
    }
}

/// Live figures of a call (`GET /v1/calls/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallSnapshot {
    pub state: CallState,
    /// The negotiated codec's SDP name.
    pub codec: &'static str,
    pub utterances: u64,
    pub utterances_done: u64,
    pub frames_sent: u64,
    pub underrun_frames: u64,
    pub late_frames: u64,
    /// Frames sent late but within `audio.max_late_ms`, RTP time continuous.
    pub delayed_frames: u64,
    pub queued_ms: u64,
    pub lmnt_connected: bool,
    pub lmnt_reconnects: u64,
    /// Caller packets lost and concealed by the decoder (PLC) for the bot.
    pub caller_frames_concealed: u64,
    /// Caller packets lost and rebuilt from the next packet's in-band FEC for the bot.
    pub caller_frames_recovered: u64,
    /// The loss the caller reports about our stream, and the encoder settings it led to.
    pub outbound: LossFigures,
    /// The call's recording (a WAV, finalized as the call ends), when it is recorded.
    pub recording: Option<String>,
    pub ended_reason: Option<EndReason>,
    /// Bot flush -> first LMNT audio byte.
    pub flush_to_first_audio: LatencyFigures,
    /// Bot flush -> first frame of the utterance handed to the RTP sender.
    pub flush_to_first_frame: LatencyFigures,
}

/// Everything a call core needs, validated by its creator.
#[derive(Debug, Clone)]
pub struct CallParams {
    /// The call id, told to the bot in `call.started`.
    pub id: String,
    /// The LMNT voice, told to the bot.
    pub voice: String,
    /// The rate of the call's speech PCM ([`Codec::pcm_rate`]): the LMNT session's sample
    /// rate (told to the bot), the playout's and the encoder's.
    pub pcm_rate: u32,
    /// The negotiated codec.
    pub codec: Codec,
    /// Text limits per message and per utterance.
    pub limits: TextLimits,
    /// The playout's settings (its output rate is the codec's PCM rate).
    pub playout: PlayoutConfig,
    /// A caller's key press clears the bot's speech, as `clear` does.
    pub dtmf_barge_in: bool,
    /// Whether the call is recorded.
    pub recording: Recording,
    /// The `x-` query parameters of the call's `POST`, told to the bot in `call.started`.
    pub custom: BTreeMap<String, String>,
    /// The encoder's quiet settings and how far the caller's loss reports may move them.
    pub encoder: EncoderSettings,
    /// How long the call waits for a bot to attach again after its control channel dropped;
    /// then it ends with [`EndReason::BotGone`]. Meanwhile the bot's events and the caller's
    /// audio are kept for it (at most this long of audio).
    pub bot_grace: Duration,
}

/// The call's recording, as set up with the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recording {
    /// Not recorded.
    Off,
    /// Recorded to this file: the core mixes, the driver writes.
    To(std::path::PathBuf),
    /// Asked for, but the file could not be created: the bot is told on attach.
    Failed(String),
}

/// One RTP packet from the caller, as the driver received it.
#[derive(Debug, Clone, Copy)]
pub struct CallerPacket<'a> {
    /// RTP payload type.
    pub payload_type: u8,
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp (the caller's clock and base).
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The payload.
    pub payload: &'a [u8],
}

/// What one slot sends.
#[derive(Debug)]
pub enum Media {
    /// 20 ms of audio at the codec's PCM rate (`None` is silence), to encode; its RTP time is
    /// the codec's `rtp_timestamp(slot)`.
    Audio(Option<PcmFrame>),
    /// One RFC 4733 telephone-event packet (the bot's DTMF), sent as it is.
    Event {
        /// The 4-byte event payload.
        payload: [u8; dtmf::PAYLOAD_LEN],
        /// Set on an event's first packet.
        marker: bool,
        /// The event's start (all packets of one event share it).
        rtp_timestamp: u32,
    },
}

/// A frame due now, for schedule slot `slot`.
#[derive(Debug)]
pub struct Transmit {
    /// The frame's slot.
    pub slot: u64,
    /// What it carries.
    pub media: Media,
    /// When it was due (`t0 + slot × 20 ms`).
    pub deadline: Instant,
    /// The frame makes events true (an utterance started or done, a mark, the bot's digits
    /// sent): report it to [`CallCore::handle_frame_sent`] only once its datagram has left,
    /// so that nothing reaches the bot before the audio it speaks of. A frame without events
    /// may be reported as soon as it is handed over.
    pub has_events: bool,
}

/// What a sent frame makes true, released by [`CallCore::handle_frame_sent`].
#[derive(Debug, Default)]
struct FrameEvents {
    playout: Vec<PlayoutEvent>,
    /// The bot's digits, when this frame carried the last of them.
    dtmf_sent: Option<String>,
}

impl FrameEvents {
    fn is_empty(&self) -> bool {
        self.playout.is_empty() && self.dtmf_sent.is_none()
    }
}

/// The bot's key presses going out.
#[derive(Debug)]
struct DtmfOut {
    sender: DtmfSender,
    digits: String,
    /// The slot of the first packet: events' RTP time counts from it.
    start_slot: Option<u64>,
}

/// What the core keeps of one utterance until it is done or cleared: its latency timeline,
/// its text once LMNT has acknowledged it (the ledger owns it until then), and the words
/// LMNT's timestamps place in its audio.
#[derive(Debug, Default)]
struct Record {
    flushed_at: Option<Instant>,
    first_audio_at: Option<Instant>,
    text: String,
    words: Vec<Word>,
}

/// One word of an utterance's audio, from LMNT's timestamps, in ms of that audio.
#[derive(Debug)]
struct Word {
    text: String,
    end_ms: f64,
}

/// Tolerance when comparing timestamps (LMNT sends seconds as floats).
const TIMESTAMP_SLACK_MS: f64 = 0.5;

impl Record {
    /// Adds LMNT's timestamps for this utterance's audio. Start times are cumulative within
    /// the utterance (lmnt-version 1.2); a word that starts before the last one kept ends is
    /// a repeat from a session that replayed the utterance, and is skipped.
    fn add_words(&mut self, stamps: &[Timestamp]) {
        for stamp in stamps {
            let (start_ms, end_ms) = (
                stamp.start * 1000.0,
                (stamp.start + stamp.duration) * 1000.0,
            );
            let covered = self.words.last().map_or(0.0, |w| w.end_ms);
            if !(start_ms.is_finite() && end_ms.is_finite())
                || start_ms + TIMESTAMP_SLACK_MS < covered
            {
                continue;
            }
            self.words.push(Word {
                text: stamp.text.trim().to_owned(),
                end_ms,
            });
        }
    }

    /// The words whose audio ends within the first `played_ms`, joined by spaces.
    fn heard_text(&self, played_ms: u64) -> String {
        let played = played_ms as f64 + TIMESTAMP_SLACK_MS;
        self.words
            .iter()
            .take_while(|w| w.end_ms <= played)
            .filter(|w| !w.text.is_empty())
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One call's decisions. See the module docs for the contract.
pub struct CallCore {
    params: CallParams,
    ledger: Ledger,
    playout: Playout,
    decoder: CallerDecoder,
    state: CallState,
    draining: bool,
    ended: Option<EndReason>,
    bot_attached: bool,
    /// While a bot that dropped may still come back: when the grace period ends. What it
    /// misses meanwhile waits in `bot_out`.
    bot_gone_at: Option<Instant>,
    lmnt_connected: bool,
    lmnt_sessions: u64,
    /// LMNT sessions lost since the utterances last made progress.
    failures_without_progress: u32,
    /// Whether this call already warned that its LMNT session went down (one warning per
    /// call; later ones are debug, and the count is in the closing line's `lmnt_reconnects`).
    lmnt_down_warned: bool,
    /// Why LMNT is unavailable, once the give-up rule has given up on it and until a session
    /// opens: a bot that attaches meanwhile is told at once.
    lmnt_unavailable: Option<String>,
    /// When the oldest text still waiting for an LMNT session arrived.
    held_text_since: Option<Instant>,
    /// Utterances not yet done or cleared, by number.
    records: BTreeMap<u64, Record>,
    /// The caller's last RTP sequence number of the negotiated payload type.
    caller_last_sequence: Option<u16>,
    caller_frames_concealed: u64,
    caller_frames_recovered: u64,
    /// The caller's loss reports and the encoder settings they call for.
    loss: LossController,
    /// Whether this call counts in the FEC-calls gauge now.
    fec_counted: bool,
    /// Playout counters already reported to metrics.
    reported: PlayoutStats,
    flush_to_first_audio: LatencyFigures,
    flush_to_first_frame: LatencyFigures,
    utterances: u64,
    utterances_done: u64,
    transmits: VecDeque<Transmit>,
    /// Events of the frames handed out by `poll_transmit`, waiting for `handle_frame_sent`.
    unsent_events: VecDeque<FrameEvents>,
    /// The caller's key presses (when the offer carried telephone-event).
    dtmf_in: Option<DtmfReceiver>,
    /// The bot's key presses going out, pausing its audio.
    dtmf_out: Option<DtmfOut>,
    /// Both sides of the call on its timeline, while it is recorded.
    recording: Option<RecordingMixer>,
    lmnt_out: VecDeque<LmntCommand>,
    bot_out: VecDeque<BotOutput>,
}

impl std::fmt::Debug for CallCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCore")
            .field("id", &self.params.id)
            .field("state", &self.state)
            .field("playout", &self.playout)
            .finish_non_exhaustive()
    }
}

impl CallCore {
    /// A call in [`CallState::Connecting`], with no LMNT session and no bot yet. Fails when
    /// the playout or the caller's decoder cannot be built (bad rates: a config or internal
    /// error).
    pub fn new(params: CallParams) -> Result<Self, AudioError> {
        let playout = Playout::new(params.playout.clone())?;
        let decoder = params.codec.caller_decoder()?;
        let ledger = Ledger::new(params.limits);
        let loss = LossController::new(
            params.encoder.opus,
            params.encoder.adaptation,
            params.codec.clock_rate(),
            params.codec.kind == CodecKind::Opus,
        );
        // The clock rate the offer gave telephone-event (negotiate takes only rates the
        // receiver takes).
        let dtmf_in = params
            .codec
            .telephone_event
            .and_then(|event| DtmfReceiver::new(event.clock_rate).ok());
        let recording = match &params.recording {
            Recording::To(_) => Some(
                RecordingMixer::new(params.pcm_rate)
                    .map_err(|e| AudioError::ResamplerInit(e.to_string()))?,
            ),
            Recording::Off | Recording::Failed(_) => None,
        };
        Ok(CallCore {
            params,
            ledger,
            playout,
            decoder,
            state: CallState::Connecting,
            draining: false,
            ended: None,
            bot_attached: false,
            bot_gone_at: None,
            lmnt_connected: false,
            lmnt_sessions: 0,
            failures_without_progress: 0,
            lmnt_down_warned: false,
            lmnt_unavailable: None,
            held_text_since: None,
            records: BTreeMap::new(),
            caller_last_sequence: None,
            caller_frames_concealed: 0,
            caller_frames_recovered: 0,
            loss,
            fec_counted: false,
            reported: PlayoutStats::default(),
            flush_to_first_audio: LatencyFigures::default(),
            flush_to_first_frame: LatencyFigures::default(),
            utterances: 0,
            utterances_done: 0,
            transmits: VecDeque::new(),
            unsent_events: VecDeque::new(),
            dtmf_in,
            dtmf_out: None,
            recording,
            lmnt_out: VecDeque::new(),
            bot_out: VecDeque::new(),
        })
    }

    // ----- inputs -----

    /// The caller's media is up: the schedule starts at `now` (frame `n` at `now + n × 20 ms`).
    pub fn handle_media_live(&mut self, now: Instant) {
        self.playout.start(now);
        if self.state == CallState::Connecting {
            self.state = CallState::Live;
        }
    }

    /// A frame deadline passed: the frame due is queued for [`CallCore::poll_transmit`].
    /// Late by more than a frame, the missed slots are skipped (counted), never burst.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.bot_gone_at.is_some_and(|at| now >= at) {
            self.bot_gone_at = None;
            self.end(EndReason::BotGone);
            return;
        }
        if let Some(receiver) = &mut self.dtmf_in {
            receiver.handle_timeout(now);
            self.report_key_presses();
        }
        if self.dtmf_out.is_some() {
            self.send_dtmf_slot(now);
        } else if let Some(frame) = self.playout.poll(now) {
            self.record_bot(frame.slot, frame.pcm.as_deref());
            let events = FrameEvents {
                playout: frame.events,
                dtmf_sent: None,
            };
            self.transmits.push_back(Transmit {
                slot: frame.slot,
                media: Media::Audio(frame.pcm),
                deadline: frame.deadline,
                has_events: !events.is_empty(),
            });
            self.unsent_events.push_back(events);
        }
        self.report_playout();
    }

    /// The oldest frame from [`CallCore::poll_transmit`] has left (see
    /// [`Transmit::has_events`]), or failed to send: the schedule moved on either way.
    /// Releases the events it makes true.
    pub fn handle_frame_sent(&mut self, now: Instant) {
        let events = self.unsent_events.pop_front().unwrap_or_default();
        for event in events.playout {
            self.on_playout_event(now, event);
        }
        if let Some(digits) = events.dtmf_sent {
            self.notify(BotEvent::DtmfSent { digits });
        }
        self.end_if_drained();
    }

    /// A control-channel message from the attached bot, received at `received_at`.
    pub fn handle_bot(&mut self, now: Instant, message: BotMessage, received_at: Instant) {
        let result = match message {
            BotMessage::Text { text } => self.text(&text, now, received_at),
            BotMessage::Flush => self.flush(now).map(|_| ()),
            BotMessage::Clear => {
                self.clear();
                Ok(())
            }
            BotMessage::Mark { name } => {
                // A mark covers every utterance flushed before it.
                self.playout.mark(self.last_flushed(), name);
                Ok(())
            }
            BotMessage::Dtmf {
                digits,
                duration_ms,
                gap_ms,
            } => self.send_dtmf(digits, duration_ms, gap_ms),
            BotMessage::Hangup => {
                self.end(EndReason::BotHangup);
                Ok(())
            }
        };
        if let Err(err) = result {
            metrics::control_error(err.code());
            self.notify(err.to_event());
        }
    }

    /// `POST /v1/calls/{id}/say`: text then flush. Returns the utterance's number.
    pub fn handle_say(&mut self, now: Instant, text: &str) -> Result<u64, ControlError> {
        let result = self.text(text, now, now).and_then(|()| self.flush(now));
        if let Err(err) = &result {
            metrics::control_error(err.code());
        }
        result
    }

    /// A bot opens the control channel: it gets `call.started`, then, when a bot dropped
    /// within the grace period, everything that bot missed, in order, then everything from
    /// now on.
    pub fn handle_bot_attached(&mut self) -> Result<(), AttachError> {
        if self.bot_attached {
            return Err(AttachError::AlreadyAttached);
        }
        self.bot_attached = true;
        let reattach = self.bot_gone_at.take().is_some();
        let missed = std::mem::take(&mut self.bot_out);
        self.notify(BotEvent::CallStarted {
            call: self.params.id.clone(),
            voice: self.params.voice.clone(),
            sample_rate: self.params.pcm_rate,
            codec: self.params.codec.kind.sdp_name(),
            caller_audio: CALLER_AUDIO_FORMAT,
            custom: self.params.custom.clone(),
        });
        if let Recording::Failed(error) = &self.params.recording {
            let message = format!("the call is not recorded: {error}");
            self.notify(BotEvent::Error {
                code: "recording_failed",
                message,
            });
        }
        if let (Some(error), false) = (&self.lmnt_unavailable, reattach) {
            let message = format!("LMNT is unavailable ({error}); text is held until it is back");
            self.notify(BotEvent::Error {
                code: "lmnt_unavailable",
                message,
            });
        }
        self.bot_out.extend(missed);
        Ok(())
    }

    /// The bot's channel dropped or the bot stopped reading, at `now`. `unsent` is what was
    /// handed towards it and never reached it, oldest first: it is kept, with everything
    /// after it, for a bot that attaches within the grace period; without one by then the
    /// call ends with [`EndReason::BotGone`] (at once with a grace of zero).
    pub fn handle_bot_detached(&mut self, now: Instant, unsent: Vec<BotOutput>) {
        if !self.bot_attached {
            return;
        }
        self.bot_attached = false;
        if self.ended.is_some() {
            return;
        }
        for output in unsent.into_iter().rev() {
            self.bot_out.push_front(output);
        }
        if self.params.bot_grace.is_zero() {
            self.end(EndReason::BotGone);
        } else {
            self.bot_gone_at = Some(now + self.params.bot_grace);
        }
    }

    /// What the call's LMNT link reports.
    pub fn handle_lmnt(&mut self, now: Instant, event: LinkEvent) {
        match event {
            LinkEvent::Up => {
                self.lmnt_connected = true;
                self.lmnt_unavailable = None;
                self.lmnt_sessions += 1;
                metrics::lmnt_session_opened();
                if self.lmnt_sessions > 1 {
                    metrics::lmnt_reconnect();
                }
                let commands = self.ledger.on_connected();
                self.lmnt_out.extend(commands);
                if let Some(since) = self.held_text_since.take() {
                    metrics::observe_text_to_lmnt(now.saturating_duration_since(since));
                }
            }
            LinkEvent::Session(SessionEvent::Audio(audio)) => self.on_lmnt_audio(now, audio),
            LinkEvent::Session(SessionEvent::Timestamps(stamps)) => {
                if let Some(utterance) = self.ledger.audio_utterance() {
                    self.records
                        .entry(utterance)
                        .or_default()
                        .add_words(&stamps);
                }
            }
            LinkEvent::Session(SessionEvent::FlushComplete { nonce }) => {
                if let Some((utterance, text)) = self.ledger.on_flush_complete(nonce) {
                    self.failures_without_progress = 0;
                    self.records.entry(utterance).or_default().text = text;
                    self.playout.end_utterance(now, utterance);
                }
            }
            LinkEvent::Session(SessionEvent::ResetComplete { nonce }) => {
                self.ledger.on_reset_complete(nonce);
            }
            LinkEvent::Session(_) => {}
            LinkEvent::Down { error, .. } => self.on_lmnt_down(now, &error),
        }
    }

    /// One RTP packet from the caller. Audio is decoded for the bot, in 20 ms frames: a short
    /// run of lost packets is concealed so the bot's stream keeps the call's time;
    /// duplicates and late packets are dropped. Telephone-events become one `dtmf` event per
    /// key press (and a `clear` with `dtmf_barge_in`). Other payload types are ignored.
    pub fn handle_caller_rtp(&mut self, now: Instant, packet: CallerPacket<'_>) {
        let codec = self.params.codec;
        if Some(packet.payload_type) == codec.telephone_event.map(|event| event.payload_type) {
            // Events share the audio's sequence numbers: they are not lost audio.
            self.caller_last_sequence = Some(packet.sequence);
            if let Some(receiver) = &mut self.dtmf_in {
                if let Err(err) = receiver.handle_packet(
                    now,
                    packet.timestamp,
                    packet.sequence,
                    packet.marker,
                    packet.payload,
                ) {
                    tracing::debug!(call = %self.params.id, error = %err, "caller DTMF packet ignored");
                }
                self.report_key_presses();
            }
            return;
        }
        if packet.payload_type != codec.payload_type {
            return;
        }
        let lost = match self.caller_last_sequence {
            Some(last) => {
                let ahead = packet.sequence.wrapping_sub(last);
                if ahead == 0 || ahead > u16::MAX / 2 {
                    return; // a duplicate, or older than one already decoded
                }
                ahead - 1
            }
            None => 0,
        };
        self.caller_last_sequence = Some(packet.sequence);
        let for_bot = self.bot_attached || self.bot_gone_at.is_some();
        if !for_bot && self.recording.is_none() {
            return;
        }
        let arrival_slot = self.playout.next_slot();
        let clock_rate = codec.clock_rate();
        let bot = for_bot.then_some(&mut self.bot_out);
        let mut sink = CallerAudioSink {
            bot,
            recording: self.recording.as_mut(),
            arrival_slot,
            clock_rate,
        };
        if (1..=MAX_CONCEALED_FRAMES).contains(&lost) {
            for missing in (1..=u32::from(lost)).rev() {
                let timestamp = packet
                    .timestamp
                    .wrapping_sub(missing * codec.ticks_per_frame());
                // The packet just before this one may be in its FEC; earlier ones are not.
                let fec = missing == 1 && self.decoder.has_fec(packet.payload);
                let pcm = if fec {
                    self.decoder.recover(packet.payload)
                } else {
                    self.decoder.conceal()
                };
                let Ok(pcm) = pcm else { continue };
                if fec {
                    self.caller_frames_recovered += 1;
                    metrics::caller_frames_recovered(1);
                } else {
                    self.caller_frames_concealed += 1;
                    metrics::caller_frames_concealed(1);
                }
                sink.deliver(timestamp, pcm);
            }
        }
        match self.decoder.decode(packet.payload) {
            Ok(pcm) => sink.deliver(packet.timestamp, pcm),
            Err(err) => {
                tracing::debug!(call = %self.params.id, error = %err, "caller audio not decoded")
            }
        }
    }

    /// An RTCP reception report about our stream, from the caller: the loss and jitter it
    /// saw. Loss turns the Opus encoder's FEC on and raises its expected loss and bitrate
    /// within the configured bounds; no loss brings the quiet settings back
    /// ([`crate::codec::loss`]). New settings are polled with
    /// [`CallCore::poll_encoder_settings`].
    pub fn handle_receiver_report(&mut self, now: Instant, report: ReceiverReport) {
        metrics::receiver_report(f64::from(report.fraction_lost) / 256.0);
        self.loss.handle_report(now, report);
        self.count_fec();
    }

    /// Keeps the FEC-calls gauge in step with this call's encoder (out of it once ended).
    fn count_fec(&mut self) {
        let fec = self.loss.fec() && self.ended.is_none();
        if fec != self.fec_counted {
            self.fec_counted = fec;
            metrics::opus_fec_call(fec);
        }
    }

    /// The bot's frame of `slot`, for the recording.
    fn record_bot(&mut self, slot: u64, pcm: Option<&[i16]>) {
        if let Some(mixer) = &mut self.recording {
            if let Err(err) = mixer.push_bot(slot, pcm) {
                tracing::debug!(call = %self.params.id, error = %err, "bot frame not recorded");
            }
        }
    }

    /// Appends the recording's samples that are final to `out` (all of them once the call
    /// has ended). Returns true while more are due: call again.
    pub fn poll_recording(&mut self, out: &mut Vec<StereoSample>) -> bool {
        let slot = self.playout.next_slot();
        match (&mut self.recording, self.ended) {
            (None, _) => false,
            (Some(mixer), None) => mixer.drain(slot, out),
            (Some(mixer), Some(_)) => mixer.finish(slot, out).unwrap_or(false),
        }
    }

    /// The recording failed (a full disk, a lagging disk): it stops, the call goes on, and
    /// the bot is told once.
    pub fn handle_recording_failed(&mut self, error: &RecordingError) {
        if self.recording.take().is_some() {
            tracing::warn!(call = %self.params.id, %error, "recording stopped");
            self.notify(BotEvent::Error {
                code: "recording_failed",
                message: format!("the call is no longer recorded: {error}"),
            });
        }
    }

    /// Shutdown: the utterances in progress finish, then the call ends with
    /// [`EndReason::Shutdown`].
    pub fn handle_drain(&mut self) {
        self.draining = true;
        if self.ended.is_none() {
            self.state = CallState::Draining;
        }
        self.end_if_drained();
    }

    /// End the call now.
    pub fn handle_hangup(&mut self, reason: EndReason) {
        self.end(reason);
    }

    // ----- outputs -----

    /// When [`CallCore::handle_timeout`] is due: the next frame's deadline, or a caller's
    /// key press whose end packets never came; `None` before media is live and once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let key_press = self.dtmf_in.as_ref().and_then(DtmfReceiver::poll_timeout);
        [self.playout.next_deadline(), key_press, self.bot_gone_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next frame to encode and send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next command for the LMNT session.
    pub fn poll_lmnt(&mut self) -> Option<LmntCommand> {
        self.lmnt_out.pop_front()
    }

    /// The next event or caller-audio frame for the attached bot (poll only while one is
    /// attached: while none is, the outputs wait for the next).
    pub fn poll_bot(&mut self) -> Option<BotOutput> {
        self.bot_out.pop_front()
    }

    /// New Opus settings for the call's encoder, once after each change the caller's loss
    /// reports brought (never for G.711, nor with `audio.opus_loss_adaptation` off).
    pub fn poll_encoder_settings(&mut self) -> Option<OpusSettings> {
        let settings = self.loss.poll_settings()?;
        metrics::opus_adaptation();
        Some(settings)
    }

    /// Why the call ended, once it has.
    pub fn poll_end(&self) -> Option<EndReason> {
        self.ended
    }

    /// Whether LMNT audio may be read now: false while the playout is full.
    pub fn wants_lmnt_audio(&self) -> bool {
        self.playout.has_room()
    }

    /// Whether drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The call's figures now.
    pub fn snapshot(&self) -> CallSnapshot {
        let stats = &self.reported;
        CallSnapshot {
            state: self.state,
            codec: self.params.codec.kind.sdp_name(),
            utterances: self.utterances,
            utterances_done: self.utterances_done,
            frames_sent: stats.frames_sent,
            underrun_frames: stats.underrun_frames,
            late_frames: stats.late_frames,
            delayed_frames: stats.delayed_frames,
            queued_ms: self.playout.queued().as_millis() as u64,
            lmnt_connected: self.lmnt_connected,
            lmnt_reconnects: self.lmnt_sessions.saturating_sub(1),
            caller_frames_concealed: self.caller_frames_concealed,
            caller_frames_recovered: self.caller_frames_recovered,
            outbound: self.loss.figures(),
            recording: self.recording_path(),
            ended_reason: self.ended,
            flush_to_first_audio: self.flush_to_first_audio.clone(),
            flush_to_first_frame: self.flush_to_first_frame.clone(),
        }
    }

    // ----- policy -----

    /// Where the call is recorded, if it is.
    fn recording_path(&self) -> Option<String> {
        match &self.params.recording {
            Recording::To(path) => Some(path.display().to_string()),
            Recording::Off | Recording::Failed(_) => None,
        }
    }

    /// The newest flushed utterance (0 before the first flush).
    fn last_flushed(&self) -> u64 {
        self.ledger.open_utterance() - 1
    }

    /// Bot text: to LMNT now, or held (and timed) until a session is up.
    fn text(&mut self, text: &str, now: Instant, received_at: Instant) -> Result<(), ControlError> {
        let commands = self.ledger.on_text(text)?;
        if self.lmnt_connected {
            metrics::observe_text_to_lmnt(now.saturating_duration_since(received_at));
        } else if !text.is_empty() {
            self.held_text_since.get_or_insert(received_at);
        }
        self.lmnt_out.extend(commands);
        Ok(())
    }

    fn flush(&mut self, now: Instant) -> Result<u64, ControlError> {
        let (utterance, commands) = self.ledger.on_flush()?;
        self.lmnt_out.extend(commands);
        self.records.entry(utterance).or_default().flushed_at = Some(now);
        self.utterances += 1;
        metrics::utterance();
        Ok(utterance)
    }

    /// Barge-in. The records of the dropped utterances stay until the playout reports the
    /// interrupted one `cleared` (its words give `heard_text`); that report, or the next
    /// utterance done, forgets them.
    fn clear(&mut self) {
        let (_dropped, commands) = self.ledger.on_clear();
        self.lmnt_out.extend(commands);
        self.playout.clear(self.last_flushed());
    }

    /// The bot's `dtmf`: RFC 4733 events on the call's clock, one slot at a time from the
    /// next frame on, the bot's audio paused meanwhile.
    fn send_dtmf(
        &mut self,
        digits: String,
        duration_ms: Option<u32>,
        gap_ms: Option<u32>,
    ) -> Result<(), ControlError> {
        let Some(event) = self.params.codec.telephone_event else {
            return Err(ControlError::DtmfUnavailable);
        };
        if self.dtmf_out.is_some() {
            return Err(ControlError::DtmfBusy);
        }
        let sender = DtmfSender::new(
            &digits,
            duration_ms.unwrap_or(dtmf::DEFAULT_DURATION_MS),
            gap_ms.unwrap_or(dtmf::DEFAULT_GAP_MS),
            event.clock_rate,
        )?;
        self.dtmf_out = Some(DtmfOut {
            sender,
            digits,
            start_slot: None,
        });
        Ok(())
    }

    /// One slot of the bot's DTMF: an event packet, or silence in the gaps.
    fn send_dtmf_slot(&mut self, now: Instant) {
        let (Some(out), Some((slot, deadline))) = (&mut self.dtmf_out, self.playout.hold(now))
        else {
            return;
        };
        let start = *out.start_slot.get_or_insert(slot);
        let codec = self.params.codec;
        if let Some(mixer) = &mut self.recording {
            // The recording keeps the call's time; the key tones themselves are not in it.
            let _ = mixer.push_bot(slot, None);
        }
        let media = match out.sender.next_packet() {
            Some(OutEvent::Event {
                payload,
                marker,
                timestamp_offset_ticks,
            }) => Media::Event {
                payload,
                marker,
                rtp_timestamp: codec
                    .rtp_timestamp(start)
                    .wrapping_add(codec.event_ticks_on_rtp_clock(timestamp_offset_ticks)),
            },
            Some(OutEvent::Gap) | None => Media::Audio(None),
        };
        let mut events = FrameEvents::default();
        if out.sender.is_done() {
            events.dtmf_sent = Some(std::mem::take(&mut out.digits));
            self.dtmf_out = None;
        }
        self.transmits.push_back(Transmit {
            slot,
            media,
            deadline,
            has_events: !events.is_empty(),
        });
        self.unsent_events.push_back(events);
    }

    /// Tells the bot about the caller's finished key presses.
    fn report_key_presses(&mut self) {
        while let Some(press) = self.dtmf_in.as_mut().and_then(DtmfReceiver::poll_keypress) {
            self.notify(BotEvent::Dtmf {
                digit: press.digit.to_string(),
                duration_ms: press.duration_ms,
            });
            if self.params.dtmf_barge_in {
                self.clear();
            }
        }
    }

    fn on_lmnt_audio(&mut self, now: Instant, audio: Bytes) {
        match self.ledger.on_audio(audio) {
            AudioRoute::Play { utterance, audio } => {
                self.failures_without_progress = 0;
                let record = self.records.entry(utterance).or_default();
                if record.first_audio_at.is_none() {
                    record.first_audio_at = Some(now);
                    if let Some(flushed_at) = record.flushed_at {
                        let latency = now.saturating_duration_since(flushed_at);
                        metrics::observe_flush_to_first_audio_byte(latency);
                        self.flush_to_first_audio.observe(latency);
                    }
                }
                if let Err(err) = self.playout.push_audio(now, utterance, &audio) {
                    tracing::warn!(call = %self.params.id, error = %err, "LMNT audio rejected");
                    self.notify(BotEvent::Error {
                        code: "bad_lmnt_audio",
                        message: err.to_string(),
                    });
                }
            }
            AudioRoute::Discard => {}
            AudioRoute::Unexpected => {
                tracing::debug!(call = %self.params.id, "LMNT audio with no utterance dropped");
            }
        }
    }

    fn on_lmnt_down(&mut self, now: Instant, error: &LmntError) {
        self.ledger.on_disconnected();
        self.lmnt_connected = false;
        metrics::lmnt_error(error.kind());
        if std::mem::replace(&mut self.lmnt_down_warned, true) {
            tracing::debug!(call = %self.params.id, error = %error, "LMNT session down");
        } else {
            tracing::warn!(call = %self.params.id, error = %error, "LMNT session down");
        }
        self.failures_without_progress += 1;
        let failures = self.failures_without_progress;
        if !error.is_retryable() || failures >= GIVE_UP_AFTER_FAILURES {
            self.lmnt_unavailable = Some(error.to_string());
            self.give_up_pending(now, error, failures == GIVE_UP_AFTER_FAILURES);
        }
    }

    /// LMNT cannot be had for the flushed utterances: they are dropped from the ledger and
    /// ended in the playout (what already arrived still plays, then `utterance.done` with
    /// the audio actually played), and the bot is told which ones were not fully spoken.
    /// Text of the utterance the bot is still writing is kept for the next session.
    /// Reports even with nothing pending when `always_report`.
    fn give_up_pending(&mut self, now: Instant, error: &LmntError, always_report: bool) {
        let abandoned = self.ledger.abandon_flushed();
        let mut dropped = Vec::with_capacity(abandoned.len());
        for (utterance, text) in abandoned {
            self.records.entry(utterance).or_default().text = text;
            self.playout.end_utterance(now, utterance);
            dropped.push(utterance);
        }
        if dropped.is_empty() && !always_report {
            return;
        }
        // Audio in the wrong format is named as such; every other failure is LMNT's session.
        let code = match error {
            LmntError::AudioFormat { .. } => "bad_lmnt_audio",
            _ => "lmnt_unavailable",
        };
        self.notify(BotEvent::Error {
            code,
            message: format!(
                "LMNT session failed ({error}); utterances {dropped:?} were not fully spoken"
            ),
        });
    }

    fn on_playout_event(&mut self, now: Instant, event: PlayoutEvent) {
        match event {
            PlayoutEvent::UtteranceStarted { utterance } => {
                if let Some(record) = self.records.get(&utterance) {
                    if let Some(flushed_at) = record.flushed_at {
                        let latency = now.saturating_duration_since(flushed_at);
                        self.flush_to_first_frame.observe(latency);
                    }
                    if let Some(first_audio) = record.first_audio_at {
                        metrics::observe_first_byte_to_first_rtp(
                            now.saturating_duration_since(first_audio),
                        );
                    }
                }
                self.notify(BotEvent::UtteranceStarted { utterance });
            }
            PlayoutEvent::UtteranceDone {
                utterance,
                audio_ms,
            } => {
                let record = self.forget_through(utterance).unwrap_or_default();
                if let Some(flushed_at) = record.flushed_at {
                    metrics::observe_flush_to_utterance_done(
                        now.saturating_duration_since(flushed_at),
                    );
                }
                self.utterances_done += 1;
                self.notify(BotEvent::UtteranceDone {
                    utterance,
                    audio_ms,
                    text: record.text,
                });
            }
            PlayoutEvent::Mark { name, played } => self.notify(BotEvent::Mark { name, played }),
            PlayoutEvent::Cleared {
                utterance,
                played_ms,
            } => {
                let heard_text = self
                    .forget_through(utterance)
                    .map(|record| record.heard_text(played_ms))
                    .unwrap_or_default();
                self.notify(BotEvent::Cleared {
                    utterance,
                    played_ms,
                    heard_text,
                });
            }
        }
    }

    /// Metrics for the playout counters that moved since the last report.
    fn report_playout(&mut self) {
        let stats = self.playout.stats();
        let before = &self.reported;
        metrics::pacer_frames_sent(stats.frames_sent - before.frames_sent);
        metrics::pacer_underrun_frames(stats.underrun_frames - before.underrun_frames);
        metrics::pacer_late_frames(stats.late_frames - before.late_frames);
        metrics::pacer_delayed_frames(stats.delayed_frames - before.delayed_frames);
        metrics::observe_queued_audio(self.playout.queued());
        self.reported = stats;
    }

    /// Removes the records of `utterance` and every older one (all finished once it is);
    /// returns its own.
    fn forget_through(&mut self, utterance: u64) -> Option<Record> {
        let newer = self.records.split_off(&(utterance + 1));
        let mut finished = std::mem::replace(&mut self.records, newer);
        finished.remove(&utterance)
    }

    /// Nothing left to say or play.
    fn is_idle(&self) -> bool {
        self.ledger.unacknowledged().next().is_none()
            && self.playout.is_idle()
            && self.unsent_events.is_empty()
    }

    fn end_if_drained(&mut self) {
        if self.draining && self.is_idle() {
            self.end(EndReason::Shutdown);
        }
    }

    /// Ends the call once; `call.ended` is the bot's last output.
    fn end(&mut self, reason: EndReason) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(reason);
        self.state = CallState::Ended;
        self.count_fec();
        self.transmits.clear();
        self.notify(BotEvent::CallEnded {
            reason: reason.as_str().to_owned(),
            recording: self.recording_path(),
        });
    }

    /// Queues an event for the attached bot, or for the one expected back.
    fn notify(&mut self, event: BotEvent) {
        if self.bot_attached || self.bot_gone_at.is_some() {
            self.bot_out.push_back(BotOutput::Event(event));
        }
    }
}

/// Where decoded caller audio goes: the bot (when attached) and the recording (when on).
struct CallerAudioSink<'a> {
    bot: Option<&'a mut VecDeque<BotOutput>>,
    recording: Option<&'a mut RecordingMixer>,
    arrival_slot: u64,
    clock_rate: u32,
}

impl CallerAudioSink<'_> {
    /// One decoded (or concealed) packet, standing for RTP time `timestamp`.
    fn deliver(&mut self, timestamp: u32, pcm: &[i16]) {
        if let Some(bot) = self.bot.as_deref_mut() {
            queue_caller_audio(bot, pcm);
        }
        if let Some(mixer) = self.recording.as_deref_mut() {
            mixer.push_caller(self.arrival_slot, timestamp, self.clock_rate, pcm);
        }
    }
}

/// Queues decoded caller audio for the bot in 20 ms frames (a longer packet gives several).
fn queue_caller_audio(out: &mut VecDeque<BotOutput>, pcm: &[i16]) {
    for frame in pcm.chunks(CALLER_FRAME_SAMPLES) {
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        out.push_back(BotOutput::CallerAudio(Bytes::from(bytes)));
    }
}

//! One call: the task that joins the caller's peer connection, the bot, the LMNT session and
//! the playout. It owns every piece of the call's state; other tasks talk to it through
//! [`CallCommand`]s and read [`CallInfo`].
//!
//! The loop waits on five things: the next frame deadline (the pacer's `t0 + n·20 ms`), bot
//! commands, peer events, LMNT events (not read while the playout buffer is full:
//! backpressure reaches LMNT through TCP) and LMNT reconnects. Sending a frame never waits on
//! LMNT or on the bot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ledger::{AudioRoute, Ledger, LmntCommand, TextLimits};
use super::link::{Link, LinkEvent};
use crate::audio::CallerAudioDecoder;
use crate::control::{BotEvent, BotMessage, ControlError};
use crate::lmnt::{LmntError, SessionEvent, SessionOptions};
use crate::metrics;
use crate::pacer::{Playout, PlayoutConfig, PlayoutEvent};
use crate::rtc::{AudioSender, CallPeer, PeerEvent};

/// LMNT sessions that may fail in a row without the call's utterances making any progress
/// (no new audio played, no flush acknowledged) before the pending utterances are given up
/// and the bot is told. About 3 s of retrying with the link's backoff; a failure that is not
/// retryable gives up at once.
const GIVE_UP_AFTER_FAILURES: u32 = 5;

/// Events and caller audio queued towards the bot. Caller audio is 50 frames a second, so
/// this is about 5 s of slack before a bot that stopped reading is detached.
pub const BOT_QUEUE_FRAMES: usize = 256;

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
}

impl EndReason {
    /// A stable name, for `call.ended` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller_hangup",
            EndReason::BotHangup => "bot_hangup",
            EndReason::PeerGone => "peer_gone",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// What flows to an attached bot.
#[derive(Debug)]
pub enum BotOutput {
    /// A JSON event.
    Event(BotEvent),
    /// 20 ms of the caller's audio, PCM s16le mono 16 kHz (640 bytes).
    CallerAudio(Bytes),
}

/// Why a bot cannot attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// Another bot holds the control channel (bot fault; retry after it leaves).
    #[error("another bot is attached to this call")]
    AlreadyAttached,
}

/// Requests to a call task.
#[derive(Debug)]
pub enum CallCommand {
    /// A parsed control-channel message from the attached bot, with when it was received.
    Bot(BotMessage, Instant),
    /// `POST /v1/calls/{id}/say`: text then flush; replies with the utterance number.
    Say {
        text: String,
        reply: oneshot::Sender<Result<u64, ControlError>>,
    },
    /// A bot opens the control channel; events and caller audio go to `bot`.
    Attach {
        bot: mpsc::Sender<BotOutput>,
        reply: oneshot::Sender<Result<(), AttachError>>,
    },
    /// End the call now.
    Hangup(EndReason),
    /// Shutdown: finish the utterances in progress, then end with [`EndReason::Shutdown`].
    Drain,
}

/// Everything a call needs, validated by the caller.
pub struct CallSetup {
    pub id: String,
    pub voice: String,
    pub sample_rate: u32,
    pub session: SessionOptions,
    pub limits: TextLimits,
    pub playout: PlayoutConfig,
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
#[derive(Debug, Clone, Default, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct CallSnapshot {
    pub state: CallState,
    pub utterances: u64,
    pub utterances_done: u64,
    pub frames_sent: u64,
    pub underrun_frames: u64,
    pub late_frames: u64,
    pub queued_ms: u64,
    pub lmnt_connected: bool,
    pub lmnt_reconnects: u64,
    pub ended_reason: Option<EndReason>,
    /// Bot flush -> first LMNT audio byte.
    pub flush_to_first_audio: LatencyFigures,
    /// Bot flush -> first RTP frame of the utterance sent into the call.
    pub flush_to_first_frame: LatencyFigures,
}

/// The shared, read-mostly face of a call. Written only by its call task.
#[derive(Debug)]
pub struct CallInfo {
    pub id: String,
    pub voice: String,
    pub started_at: SystemTime,
    snapshot: Mutex<CallSnapshot>,
}

impl CallInfo {
    fn new(id: String, voice: String) -> Self {
        CallInfo {
            id,
            voice,
            started_at: SystemTime::now(),
            snapshot: Mutex::new(CallSnapshot {
                state: CallState::Connecting,
                utterances: 0,
                utterances_done: 0,
                frames_sent: 0,
                underrun_frames: 0,
                late_frames: 0,
                queued_ms: 0,
                lmnt_connected: false,
                lmnt_reconnects: 0,
                ended_reason: None,
                flush_to_first_audio: LatencyFigures::default(),
                flush_to_first_frame: LatencyFigures::default(),
            }),
        }
    }

    /// A copy of the current figures.
    pub fn snapshot(&self) -> CallSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallSnapshot> {
        // A poisoned lock only means a panic elsewhere mid-update; the figures stay usable.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Timing of one utterance, for latency metrics.
#[derive(Debug, Default)]
struct UtteranceTiming {
    flushed_at: Option<Instant>,
    first_byte_at: Option<Instant>,
}

/// Starts the call task. Returns the shared info; the task ends when the call does and
/// reports through `on_end` (the registry removes the call then).
pub fn spawn(
    setup: CallSetup,
    peer: CallPeer,
    peer_events: mpsc::Receiver<PeerEvent>,
    commands: mpsc::Receiver<CallCommand>,
    on_end: impl FnOnce(EndReason) + Send + 'static,
) -> Result<Arc<CallInfo>, crate::audio::AudioError> {
    let info = Arc::new(CallInfo::new(setup.id.clone(), setup.voice.clone()));
    let playout = Playout::new(setup.playout.clone())?;
    let decoder = CallerAudioDecoder::new()?;
    let task = CallTask {
        info: info.clone(),
        audio_out: peer.audio_sender(),
        peer,
        ledger: Ledger::new(setup.limits),
        link: Link::start(setup.session),
        playout,
        decoder,
        bot: None,
        timings: HashMap::new(),
        held_text_since: None,
        failures_without_progress: 0,
        pending_marks: VecDeque::new(),
        draining: false,
        sample_rate: setup.sample_rate,
    };
    tokio::spawn(async move {
        let reason = task.run(peer_events, commands).await;
        on_end(reason);
    });
    Ok(info)
}

struct CallTask {
    info: Arc<CallInfo>,
    /// The caller's peer connection; closed when the task ends.
    peer: CallPeer,
    audio_out: AudioSender,
    ledger: Ledger,
    link: Link,
    playout: Playout,
    decoder: CallerAudioDecoder,
    /// The attached bot, if any. Dropped (detached) when it stops reading.
    bot: Option<mpsc::Sender<BotOutput>>,
    timings: HashMap<u64, UtteranceTiming>,
    /// When the oldest text still waiting for an LMNT session arrived.
    held_text_since: Option<Instant>,
    /// LMNT sessions lost since the utterances last made progress.
    failures_without_progress: u32,
    /// Bot marks waiting for an utterance (the number) to be complete in the playout.
    pending_marks: VecDeque<(u64, String)>,
    draining: bool,
    /// The LMNT session's sample rate, told to the bot in `call.started`.
    sample_rate: u32,
}

impl CallTask {
    async fn run(
        mut self,
        mut peer_events: mpsc::Receiver<PeerEvent>,
        mut commands: mpsc::Receiver<CallCommand>,
    ) -> EndReason {
        metrics::call_started();
        let reason = loop {
            let deadline = self.playout.next_deadline().map(Instant::from_std);
            let read_audio = self.playout.has_room();
            tokio::select! {
                biased;
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.send_frame().await;
                }
                event = peer_events.recv() => match event {
                    Some(PeerEvent::Live) => self.on_live(),
                    Some(PeerEvent::CallerAudio { payload, .. }) => self.on_caller_audio(&payload),
                    Some(PeerEvent::Ended { reason }) => {
                        tracing::info!(call = %self.info.id, %reason, "caller's peer ended");
                        break EndReason::PeerGone;
                    }
                    None => break EndReason::PeerGone,
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        if let Some(reason) = self.on_command(command) {
                            break reason;
                        }
                    }
                    None => break EndReason::Shutdown,
                },
                event = self.link.next(read_audio) => self.on_link(event),
            }
            if self.draining && self.is_idle() {
                break EndReason::Shutdown;
            }
        };
        self.end(reason).await;
        reason
    }

    fn on_live(&mut self) {
        self.playout.start(Instant::now().into_std());
        self.info.lock().state = if self.draining {
            CallState::Draining
        } else {
            CallState::Live
        };
        tracing::info!(call = %self.info.id, "media live");
    }

    async fn send_frame(&mut self) {
        let now = Instant::now();
        let Some(frame) = self.playout.poll(now.into_std()) else {
            return;
        };
        if let Err(err) = self
            .audio_out
            .send(&frame.payload, frame.rtp_timestamp)
            .await
        {
            tracing::debug!(call = %self.info.id, error = %err, "frame not sent");
        }
        for event in frame.events {
            self.on_playout_event(now, event);
        }
        let stats = self.playout.stats();
        let queued = self.playout.queued();
        let mut snapshot = self.info.lock();
        metrics::pacer_frames_sent(stats.frames_sent.saturating_sub(snapshot.frames_sent));
        metrics::pacer_underrun_frames(
            stats
                .underrun_frames
                .saturating_sub(snapshot.underrun_frames),
        );
        metrics::pacer_late_frames(stats.late_frames.saturating_sub(snapshot.late_frames));
        metrics::observe_queued_audio(queued);
        snapshot.frames_sent = stats.frames_sent;
        snapshot.underrun_frames = stats.underrun_frames;
        snapshot.late_frames = stats.late_frames;
        snapshot.queued_ms = queued.as_millis() as u64;
    }

    fn on_playout_event(&mut self, now: Instant, event: PlayoutEvent) {
        match event {
            PlayoutEvent::UtteranceStarted { utterance } => {
                if let Some(flushed_at) = self.timings.get(&utterance).and_then(|t| t.flushed_at) {
                    let latency = now.saturating_duration_since(flushed_at);
                    self.info.lock().flush_to_first_frame.observe(latency);
                }
                if let Some(first_byte) = self.timings.get(&utterance).and_then(|t| t.first_byte_at)
                {
                    metrics::observe_first_byte_to_first_rtp(
                        now.saturating_duration_since(first_byte),
                    );
                }
                self.notify(BotEvent::UtteranceStarted { utterance });
            }
            PlayoutEvent::UtteranceDone {
                utterance,
                audio_ms,
            } => {
                if let Some(timing) = self.timings.remove(&utterance) {
                    if let Some(flushed_at) = timing.flushed_at {
                        metrics::observe_flush_to_utterance_done(
                            now.saturating_duration_since(flushed_at),
                        );
                    }
                }
                self.info.lock().utterances_done += 1;
                self.notify(BotEvent::UtteranceDone {
                    utterance,
                    audio_ms,
                });
            }
            PlayoutEvent::Mark { name } => self.notify(BotEvent::Mark { name }),
            PlayoutEvent::Cleared {
                utterance,
                played_ms,
            } => {
                self.timings.remove(&utterance);
                self.notify(BotEvent::Cleared {
                    utterance,
                    played_ms,
                });
            }
        }
    }

    fn on_caller_audio(&mut self, payload: &[u8]) {
        let Some(bot) = &self.bot else { return };
        match self.decoder.decode(payload) {
            Ok(pcm) => {
                let mut bytes = Vec::with_capacity(pcm.len() * 2);
                for sample in pcm {
                    bytes.extend_from_slice(&sample.to_le_bytes());
                }
                // Caller audio is best effort: a bot that is behind loses frames, not the call.
                let _ = bot.try_send(BotOutput::CallerAudio(Bytes::from(bytes)));
            }
            Err(err) => {
                tracing::debug!(call = %self.info.id, error = %err, "caller audio not decoded")
            }
        }
    }

    /// Handles a command; returns the reason when it ends the call.
    fn on_command(&mut self, command: CallCommand) -> Option<EndReason> {
        match command {
            CallCommand::Bot(message, received_at) => {
                return self.on_bot_message(message, received_at)
            }
            CallCommand::Say { text, reply } => {
                let result = self.say(&text);
                if let Err(err) = &result {
                    metrics::control_error(err.code());
                }
                let _ = reply.send(result);
            }
            CallCommand::Attach { bot, reply } => {
                if self.bot.as_ref().is_some_and(|b| !b.is_closed()) {
                    let _ = reply.send(Err(AttachError::AlreadyAttached));
                } else {
                    self.bot = Some(bot);
                    let _ = reply.send(Ok(()));
                    self.notify(BotEvent::CallStarted {
                        call: self.info.id.clone(),
                        voice: self.info.voice.clone(),
                        sample_rate: self.sample_rate,
                        caller_audio: "pcm_s16le_16000_mono_20ms",
                    });
                }
            }
            CallCommand::Hangup(reason) => return Some(reason),
            CallCommand::Drain => {
                self.draining = true;
                self.info.lock().state = CallState::Draining;
            }
        }
        None
    }

    fn on_bot_message(&mut self, message: BotMessage, received_at: Instant) -> Option<EndReason> {
        let result = match message {
            BotMessage::Text { text } => self.text(&text, received_at),
            BotMessage::Flush => self.flush().map(|_| ()),
            BotMessage::Clear => {
                self.clear();
                Ok(())
            }
            BotMessage::Mark { name } => {
                self.mark(name);
                Ok(())
            }
            BotMessage::Hangup => return Some(EndReason::BotHangup),
        };
        if let Err(err) = result {
            metrics::control_error(err.code());
            self.notify(err.to_event());
        }
        None
    }

    /// A mark covers every utterance flushed before it. Their audio may not have arrived
    /// yet, so the mark waits here until the last of them is complete in the playout, which
    /// then reports it when that audio has gone out.
    fn mark(&mut self, name: String) {
        match self.ledger.unacknowledged().last() {
            Some(after) => self.pending_marks.push_back((after, name)),
            None => self.playout.mark(name),
        }
    }

    /// Hands the playout every pending mark that no longer waits on an unacknowledged
    /// utterance (all of them after a clear or a give-up).
    fn release_marks(&mut self) {
        let oldest_pending = self.ledger.unacknowledged().next();
        while let Some((after, _)) = self.pending_marks.front() {
            if oldest_pending.is_some_and(|oldest| oldest <= *after) {
                break;
            }
            if let Some((_, name)) = self.pending_marks.pop_front() {
                self.playout.mark(name);
            }
        }
    }

    fn say(&mut self, text: &str) -> Result<u64, ControlError> {
        self.text(text, Instant::now())?;
        self.flush()
    }

    /// Bot text: to LMNT now, or held (and timed) until the session is up.
    fn text(&mut self, text: &str, received_at: Instant) -> Result<(), ControlError> {
        let commands = self.ledger.on_text(text)?;
        if self.link.sender().is_some() {
            metrics::observe_text_to_lmnt(received_at.elapsed());
        } else {
            self.held_text_since.get_or_insert(received_at);
        }
        self.execute(commands);
        Ok(())
    }

    fn flush(&mut self) -> Result<u64, ControlError> {
        let (utterance, commands) = self.ledger.on_flush()?;
        self.timings.insert(
            utterance,
            UtteranceTiming {
                flushed_at: Some(Instant::now()),
                first_byte_at: None,
            },
        );
        self.execute(commands);
        self.info.lock().utterances += 1;
        metrics::utterance();
        Ok(utterance)
    }

    fn clear(&mut self) {
        let now = Instant::now();
        self.playout.clear(now.into_std());
        let (dropped, commands) = self.ledger.on_clear();
        for utterance in dropped {
            self.timings.remove(&utterance);
        }
        self.execute(commands);
        self.release_marks();
    }

    /// Sends ledger commands on the live session. A send that fails means the session is
    /// going down; its `Down` event follows and the ledger replays what was lost.
    fn execute(&mut self, commands: Vec<LmntCommand>) {
        let Some(sender) = self.link.sender() else {
            return;
        };
        for command in commands {
            let sent = match command {
                LmntCommand::Text(text) => sender.send_text(&text),
                LmntCommand::Flush { nonce } => sender.send_flush(nonce),
                LmntCommand::Reset { nonce } => sender.send_reset(nonce),
            };
            if let Err(err) = sent {
                tracing::debug!(call = %self.info.id, error = %err, "LMNT send failed");
                return;
            }
        }
    }

    fn on_link(&mut self, event: LinkEvent) {
        let now = Instant::now();
        match event {
            LinkEvent::Up => {
                let commands = self.ledger.on_connected();
                self.execute(commands);
                if let Some(since) = self.held_text_since.take() {
                    metrics::observe_text_to_lmnt(now.saturating_duration_since(since));
                }
                let mut snapshot = self.info.lock();
                snapshot.lmnt_connected = true;
                snapshot.lmnt_reconnects = self.link.reconnects();
                drop(snapshot);
                metrics::lmnt_session_opened();
                if self.link.reconnects() > 0 {
                    metrics::lmnt_reconnect();
                }
            }
            LinkEvent::Session(SessionEvent::Audio(audio)) => match self.ledger.on_audio(audio) {
                AudioRoute::Play { utterance, audio } => {
                    self.failures_without_progress = 0;
                    if let Some(timing) = self.timings.get_mut(&utterance) {
                        if timing.first_byte_at.is_none() {
                            timing.first_byte_at = Some(now);
                            if let Some(flushed_at) = timing.flushed_at {
                                let latency = now.saturating_duration_since(flushed_at);
                                metrics::observe_flush_to_first_audio_byte(latency);
                                self.info.lock().flush_to_first_audio.observe(latency);
                            }
                        }
                    }
                    if let Err(err) = self.playout.push_audio(now.into_std(), utterance, &audio) {
                        tracing::warn!(call = %self.info.id, error = %err, "LMNT audio rejected");
                        self.notify(BotEvent::Error {
                            code: "bad_lmnt_audio",
                            message: err.to_string(),
                        });
                    }
                }
                AudioRoute::Discard => {}
                AudioRoute::Unexpected => {
                    tracing::debug!(call = %self.info.id, "LMNT audio with no utterance dropped");
                }
            },
            LinkEvent::Session(SessionEvent::FlushComplete { nonce }) => {
                if let Some(utterance) = self.ledger.on_flush_complete(nonce) {
                    self.failures_without_progress = 0;
                    self.playout.end_utterance(now.into_std(), utterance);
                    self.release_marks();
                }
            }
            LinkEvent::Session(SessionEvent::ResetComplete { nonce }) => {
                self.ledger.on_reset_complete(nonce);
            }
            LinkEvent::Session(_) => {}
            LinkEvent::Down { error, attempts } => {
                self.ledger.on_disconnected();
                self.info.lock().lmnt_connected = false;
                metrics::lmnt_error(error.kind());
                tracing::warn!(call = %self.info.id, error = %error, attempts, "LMNT session down");
                self.failures_without_progress += 1;
                let failures = self.failures_without_progress;
                if !error.is_retryable() || failures >= GIVE_UP_AFTER_FAILURES {
                    self.give_up_pending(now, &error, failures == GIVE_UP_AFTER_FAILURES);
                }
            }
        }
    }

    /// LMNT cannot be had for the flushed utterances: they are dropped from the ledger and
    /// ended in the playout (what already arrived still plays, then `utterance.done` with
    /// the audio actually played), and the bot is told which ones were not fully spoken.
    /// Text of the utterance the bot is still writing is kept for the next session.
    /// Reports even with nothing pending when `always_report`.
    fn give_up_pending(&mut self, now: Instant, error: &LmntError, always_report: bool) {
        let dropped = self.ledger.abandon_flushed();
        for &utterance in &dropped {
            self.playout.end_utterance(now.into_std(), utterance);
        }
        self.release_marks();
        if dropped.is_empty() && !always_report {
            return;
        }
        self.notify(BotEvent::Error {
            code: "lmnt_unavailable",
            message: format!(
                "LMNT session failed ({error}); utterances {dropped:?} were not fully spoken"
            ),
        });
    }

    /// Nothing left to say or play: draining may end the call.
    fn is_idle(&self) -> bool {
        self.ledger.unacknowledged().next().is_none()
            && self.playout.queued().is_zero()
            && self.timings.is_empty()
    }

    fn notify(&mut self, event: BotEvent) {
        let Some(bot) = &self.bot else { return };
        match bot.try_send(BotOutput::Event(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(call = %self.info.id, "bot stopped reading its events; detached");
                self.bot = None;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.bot = None,
        }
    }

    async fn end(&mut self, reason: EndReason) {
        // Figures first: whoever hears `call.ended` may read them at once.
        {
            let mut snapshot = self.info.lock();
            snapshot.state = CallState::Ended;
            snapshot.ended_reason = Some(reason);
        }
        metrics::call_ended(reason.as_str());
        self.notify(BotEvent::CallEnded {
            reason: reason.as_str().to_owned(),
        });
        self.link.hang_up();
        self.peer.close().await;
        tracing::info!(call = %self.info.id, reason = reason.as_str(), "call ended");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

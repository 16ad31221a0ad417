//! The per-call task: the driver of one [`CallCore`]. It owns the call's I/O (the caller's
//! peer connection and RTP sender, the codec's encoder, the LMNT link, the bot's queue) and
//! does nothing but stamp `now`, feed the core, and carry out what the core asks, after every
//! input in this order: frames (encode, send, then [`CallCore::handle_frame_sent`] once the
//! frame's datagram has left: see [`FramesInFlight`]), LMNT commands, bot outputs.
//!
//! The loop waits on: the core's next frame deadline, the socket's report of sent packets
//! while a frame's events wait for it, hang-up and drain signals (a `watch`
//! and a `CancellationToken`: they cannot be lost to a full queue), peer events, bot
//! commands, and the LMNT link, which is not read while the core does not want audio
//! (backpressure). Sending a frame never waits on LMNT or on the bot.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::{
    AttachError, BotOutput, CallCore, CallSnapshot, CallerPacket, EndReason, Media, Transmit,
};
use super::in_flight::{FramesInFlight, Released};
use super::ledger::LmntCommand;
use super::overload::FrameClock;
use super::ticks::TickSubscription;
use crate::audio::AudioError;
use crate::codec::{Codec, FrameEncoder};
use crate::control::{BotEvent, BotMessage, ControlError};
use crate::lmnt::Link;
use crate::metrics;
use crate::recording::{Recorder, StereoSample};
use crate::rtc::{AudioSender, CallPeer, PeerEvent, PeerEvents, RtcError, SentReceiver};

/// Why a frame did not go out. Either way the schedule moves on: the caller conceals 20 ms.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The encoder refused the frame (a bug).
    #[error("frame not encoded: {0}")]
    Encode(#[from] AudioError),
    /// The peer could not take it (not live yet, or gone).
    #[error(transparent)]
    Peer(#[from] RtcError),
}

/// Events and caller audio queued towards the bot's socket: about 5 s of caller audio (50
/// frames a second). When it is full the call waits for room (a bot catching up on what it
/// missed reads a long backlog through it), up to [`BOT_STALL_LIMIT`].
pub const BOT_QUEUE_FRAMES: usize = 256;
/// A bot whose queue stays full this long has stopped reading: it is detached (and may
/// attach again within the grace period). Meanwhile the call holds at most this much more
/// of its outputs, about 160 KB of caller audio.
pub const BOT_STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Requests to a call task from the HTTP handlers and the bot's channel.
#[derive(Debug)]
pub enum CallCommand {
    /// A parsed control-channel message from the attached bot, with when it was received.
    Bot(BotMessage, Instant),
    /// `POST /v1/calls/{id}/say`: text then flush; replies with the utterance number.
    Say {
        text: String,
        reply: oneshot::Sender<Result<u64, ControlError>>,
    },
    /// A bot opens the control channel; events and caller audio go to `bot`. The reply
    /// names this attachment for its [`CallCommand::Detach`].
    Attach {
        bot: mpsc::Sender<BotOutput>,
        reply: oneshot::Sender<Result<BotId, AttachError>>,
    },
    /// The bot's channel dropped (closed, broken, or a write failed) without the call
    /// having ended. `unsent` is the output whose write failed; `queued` is the rest of the
    /// attachment's queue, handed back so the driver takes what is still in it, in order:
    /// nothing the bot missed is lost if it attaches again within the grace period.
    Detach {
        bot: BotId,
        unsent: Option<BotOutput>,
        queued: mpsc::Receiver<BotOutput>,
    },
    /// The bot the call dials stayed unreachable for its retry budget: the call ends with
    /// [`EndReason::BotUnreachable`], unless another bot has attached meanwhile.
    BotUnreachable,
}

/// One attachment of a bot to a call (a later attach of the same bot is another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BotId(u64);

/// How the registry ends a call. Neither can be lost: hang-up is a `watch` whose first
/// reason sticks, drain a token every call shares.
#[derive(Debug, Clone)]
pub struct CallSignals {
    /// Set to end the call at once with that reason.
    pub hangup: watch::Receiver<Option<EndReason>>,
    /// Cancelled when the daemon drains.
    pub drain: CancellationToken,
}

/// The shared, read-mostly face of a call. Written only by its driver.
#[derive(Debug)]
pub struct CallInfo {
    pub id: String,
    pub voice: String,
    pub started_at: SystemTime,
    snapshot: Mutex<CallSnapshot>,
}

impl CallInfo {
    /// A copy of the current figures.
    pub fn snapshot(&self) -> CallSnapshot {
        self.lock().clone()
    }

    fn publish(&self, snapshot: CallSnapshot) {
        *self.lock() = snapshot;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallSnapshot> {
        // A poisoned lock only means a panic elsewhere mid-update; the figures stay usable.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything the driver owns besides the core.
pub struct CallIo {
    /// The caller's peer connection; closed when the call ends.
    pub peer: CallPeer,
    /// The peer's events (live, caller audio, ended).
    pub peer_events: PeerEvents,
    /// Commands from the HTTP handlers and the bot's channel.
    pub commands: mpsc::Receiver<CallCommand>,
    /// The call's LMNT session, reconnecting; hung up when the call ends.
    pub link: Link,
    /// The codec's encoder for the frames the core hands out.
    pub encoder: FrameEncoder,
    /// Hang-up and drain.
    pub signals: CallSignals,
    /// The call's admission; released when the task ends.
    pub permit: OwnedSemaphorePermit,
    /// The recording's file writer, when the call is recorded; finalized as the call ends.
    pub recorder: Option<Recorder>,
    /// Test hook (`testing.panic_marker`, refused unless `LMNT_BRIDGE_TEST_HOOKS=1`): bot
    /// text containing this makes the call's task panic.
    pub panic_marker: Option<String>,
    /// Where the driver reports each frame's lateness (overload protection).
    pub frame_clock: Arc<FrameClock>,
    /// The call thread's frame clock: the call's frame schedule starts on its grid, and its
    /// frame deadlines wait for its ticks.
    pub ticks: TickSubscription,
}

/// Starts the call task. Returns the shared info; the task ends when the call does and
/// reports through `on_end` (the registry forgets the call then) before it releases its
/// admission permit.
pub fn spawn(
    id: String,
    voice: String,
    core: CallCore,
    io: CallIo,
    on_end: impl FnOnce(EndReason) + Send + 'static,
) -> Arc<CallInfo> {
    let info = Arc::new(CallInfo {
        id,
        voice,
        started_at: SystemTime::now(),
        snapshot: Mutex::new(core.snapshot()),
    });
    let codec = io.peer.codec();
    let driver = Driver {
        info: info.clone(),
        started: Instant::now(),
        core,
        audio_out: io.peer.audio_sender(),
        sent: Some(io.peer.sent_packets()),
        in_flight: FramesInFlight::default(),
        peer: io.peer,
        codec,
        encoder: io.encoder,
        link: io.link,
        bot: None,
        attachments: 0,
        bot_pending: None,
        bot_full_since: None,
        recorder: io.recorder,
        recorded: Vec::new(),
        panic_marker: io.panic_marker,
        frame_clock: io.frame_clock,
        ticks: io.ticks,
    };
    let (peer_events, commands, signals, permit) =
        (io.peer_events, io.commands, io.signals, io.permit);
    tokio::spawn(async move {
        metrics::call_started();
        let mut driver = driver;
        // A panic is a bug in this call's code: it ends this call (cleanly: the peer closed,
        // the LMNT session ended, the bot told, the admission released), never the process
        // or another call.
        let run = AssertUnwindSafe(driver.run(peer_events, commands, signals));
        let outcome = run.catch_unwind().await;
        let reason = match outcome {
            Ok(reason) => reason,
            Err(panic) => {
                driver.end_after_panic(panic_message(&*panic)).await;
                EndReason::InternalError
            }
        };
        on_end(reason);
        drop(permit);
    });
    info
}

/// The text of a panic's payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

struct Driver {
    info: Arc<CallInfo>,
    /// When the task started, for the call's duration in its closing line.
    started: Instant,
    core: CallCore,
    /// The caller's peer connection; closed when the task ends.
    peer: CallPeer,
    audio_out: AudioSender,
    /// The socket's reports of `audio_out`'s packets leaving; `None` once the peer's sockets
    /// are gone (frames still waiting are then released by [`FramesInFlight`]'s timeout).
    sent: Option<SentReceiver>,
    /// Frames handed to `audio_out` whose events wait for their datagram.
    in_flight: FramesInFlight,
    codec: Codec,
    encoder: FrameEncoder,
    link: Link,
    /// The attached bot's queue, if any, and which attachment it is.
    bot: Option<(BotId, mpsc::Sender<BotOutput>)>,
    /// Attachments so far (the next [`BotId`]).
    attachments: u64,
    /// The output that found the bot's queue full, sent first when there is room.
    bot_pending: Option<BotOutput>,
    /// Since when the bot's queue has been full.
    bot_full_since: Option<Instant>,
    /// The recording's writer thread, while the call is recorded.
    recorder: Option<Recorder>,
    /// Scratch for the recording's samples on their way to the writer.
    recorded: Vec<StereoSample>,
    /// See [`CallIo::panic_marker`].
    panic_marker: Option<String>,
    /// Every call's frame lateness, for overload protection.
    frame_clock: Arc<FrameClock>,
    /// See [`CallIo::ticks`].
    ticks: TickSubscription,
}

impl Driver {
    async fn run(
        &mut self,
        mut peer_events: PeerEvents,
        mut commands: mpsc::Receiver<CallCommand>,
        mut signals: CallSignals,
    ) -> EndReason {
        let reason = loop {
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            let confirm_deadline = self.in_flight.poll_timeout().map(Instant::from_std);
            let read_lmnt = self.core.wants_lmnt_audio();
            // The bot's queue was full: wake when it has room (or when it has been full too long).
            let bot_room = match (&self.bot, &self.bot_pending, self.bot_full_since) {
                (Some((_, bot)), Some(_), Some(since)) => {
                    Some((bot.clone(), since + BOT_STALL_LIMIT))
                }
                _ => None,
            };
            let await_sent = self.in_flight.is_waiting() && self.sent.is_some();
            tokio::select! {
                biased;
                () = until_opt(&self.ticks, deadline), if deadline.is_some() => {
                    self.core.handle_timeout(Instant::now().into_std());
                }
                changed = changed_opt(&mut self.sent), if await_sent => match changed {
                    Ok(()) => self.release_sent_frames(),
                    Err(_) => self.sent = None,
                },
                _ = sleep_until_opt(confirm_deadline), if confirm_deadline.is_some() => {
                    self.release_sent_frames();
                }
                changed = signals.hangup.changed() => {
                    let reason = match changed {
                        Ok(()) => *signals.hangup.borrow_and_update(),
                        // The registry is gone: nobody can reach this call any more.
                        Err(_) => Some(EndReason::Shutdown),
                    };
                    if let Some(reason) = reason {
                        self.core.handle_hangup(reason);
                    }
                }
                _ = signals.drain.cancelled(), if !self.core.is_draining() => {
                    self.core.handle_drain();
                }
                event = peer_events.recv() => self.on_peer(event),
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => self.core.handle_hangup(EndReason::Shutdown),
                },
                event = self.link.next(read_lmnt) => {
                    self.core.handle_lmnt(Instant::now().into_std(), event);
                }
                () = wait_for_room(bot_room.clone()), if bot_room.is_some() => {}
            }
            if self.core.poll_end().is_some() {
                // Before `call.ended` goes out: a bot told the call is over may open the
                // recording at once.
                self.finish_recording().await;
            }
            self.carry_out();
            if let Some(reason) = self.core.poll_end() {
                break reason;
            }
        };
        self.end(reason).await;
        reason
    }

    fn on_peer(&mut self, event: Option<PeerEvent>) {
        match event {
            Some(PeerEvent::Live) => {
                // The schedule starts on the thread's grid (at most a frame from now), so
                // this call's frames go out on the same wake-ups as its neighbours'.
                let t0 = self.ticks.grid_start(Instant::now());
                self.core.handle_media_live(t0.into_std());
                tracing::debug!(call = %self.info.id, "media live");
            }
            Some(PeerEvent::CallerAudio {
                payload_type,
                marker,
                payload,
                rtp_timestamp,
                sequence,
            }) => self.core.handle_caller_rtp(
                Instant::now().into_std(),
                CallerPacket {
                    payload_type,
                    sequence,
                    timestamp: rtp_timestamp,
                    marker,
                    payload: &payload,
                },
            ),
            Some(PeerEvent::ReceiverReport(report)) => {
                self.core
                    .handle_receiver_report(Instant::now().into_std(), report);
            }
            Some(PeerEvent::Ended { reason }) => {
                tracing::debug!(call = %self.info.id, %reason, "caller's peer ended");
                self.core.handle_hangup(EndReason::PeerGone);
            }
            None => self.core.handle_hangup(EndReason::PeerGone),
        }
    }

    fn on_command(&mut self, command: CallCommand) {
        let now = Instant::now();
        match command {
            CallCommand::Bot(message, received_at) => {
                if let (Some(marker), BotMessage::Text { text }) = (&self.panic_marker, &message) {
                    if text.contains(marker.as_str()) {
                        panic!("test hook: bot text carried testing.panic_marker");
                    }
                }
                self.core
                    .handle_bot(now.into_std(), message, received_at.into_std());
            }
            CallCommand::Say { text, reply } => {
                let _ = reply.send(self.core.handle_say(now.into_std(), &text));
            }
            CallCommand::Attach { bot, reply } => {
                if self.bot.as_ref().is_some_and(|(_, b)| b.is_closed()) {
                    self.detach_bot(Vec::new());
                }
                let result = self.core.handle_bot_attached().map(|()| {
                    self.attachments += 1;
                    let id = BotId(self.attachments);
                    self.bot = Some((id, bot));
                    id
                });
                let _ = reply.send(result);
            }
            CallCommand::BotUnreachable => {
                if self.bot.as_ref().is_some_and(|(_, b)| b.is_closed()) {
                    self.detach_bot(Vec::new());
                }
                if self.bot.is_none() {
                    self.core.handle_hangup(EndReason::BotUnreachable);
                }
            }
            CallCommand::Detach {
                bot,
                unsent,
                mut queued,
            } => {
                if self.bot.as_ref().is_some_and(|(id, _)| *id == bot) {
                    // This attachment's sender goes first, so the queue gets nothing more.
                    self.bot = None;
                    self.bot_full_since = None;
                    let mut missed: Vec<BotOutput> = unsent.into_iter().collect();
                    while let Ok(output) = queued.try_recv() {
                        missed.push(output);
                    }
                    missed.extend(self.bot_pending.take());
                    tracing::debug!(call = %self.info.id, missed = missed.len(), "bot detached");
                    self.core.handle_bot_detached(now.into_std(), missed);
                }
            }
        }
    }

    /// Carries out the core's outputs: encoder settings, frames, then LMNT commands, then bot
    /// outputs.
    fn carry_out(&mut self) {
        if let Some(settings) = self.core.poll_encoder_settings() {
            if let Err(err) = self.encoder.apply_opus(&settings) {
                tracing::warn!(call = %self.info.id, error = %err, "encoder settings refused");
            }
        }
        while let Some(frame) = self.core.poll_transmit() {
            let has_events = frame.has_events;
            self.frame_clock.record(
                Instant::now()
                    .into_std()
                    .saturating_duration_since(frame.deadline),
            );
            let sequence = match self.send(frame) {
                Ok(sequence) => Some(sequence),
                Err(err) => {
                    tracing::debug!(call = %self.info.id, error = %err, "frame not sent");
                    None
                }
            };
            self.in_flight
                .push(Instant::now().into_std(), sequence, has_events);
            self.release_sent_frames();
        }
        while let Some(command) = self.core.poll_lmnt() {
            self.send_to_lmnt(command);
        }
        self.write_recording();
        // Figures first: whoever hears `call.ended` may read them at once.
        self.info.publish(self.core.snapshot());
        self.send_to_bot();
    }

    /// Reports to the core, in order, every frame whose datagram has left (or that need not
    /// wait for it).
    fn release_sent_frames(&mut self) {
        if let Some(sequence) = self.sent.as_mut().and_then(|s| *s.borrow_and_update()) {
            self.in_flight.handle_sent(sequence);
        }
        let now = Instant::now().into_std();
        while let Some(released) = self.in_flight.poll_release(now) {
            if released == Released::Unconfirmed {
                metrics::frame_unconfirmed();
            }
            self.core.handle_frame_sent(now);
        }
    }

    /// Encodes (audio) and sends one frame; returns its RTP sequence number.
    fn send(&mut self, frame: Transmit) -> Result<u16, SendError> {
        let sequence = match frame.media {
            Media::Audio(pcm) => {
                let payload = match pcm.as_deref() {
                    Some(pcm) => self.encoder.encode(pcm)?,
                    None => self.encoder.encode_silence()?,
                };
                let rtp_timestamp = self.codec.rtp_timestamp(frame.slot);
                self.audio_out.send(&payload, rtp_timestamp)?
            }
            Media::Event {
                payload,
                marker,
                rtp_timestamp,
            } => self.audio_out.send_event(&payload, rtp_timestamp, marker)?,
        };
        Ok(sequence)
    }

    /// Moves the recording's final samples to its writer (never blocking: the writer is a
    /// thread behind a bounded queue). A failed writer stops the recording, not the call.
    fn write_recording(&mut self) {
        let Some(recorder) = &mut self.recorder else {
            return;
        };
        let mut failed = recorder.poll_error();
        loop {
            self.recorded.clear();
            let more = self.core.poll_recording(&mut self.recorded);
            if failed.is_none() && !self.recorded.is_empty() {
                failed = recorder.write(&self.recorded).err();
            }
            if !more {
                break;
            }
        }
        if let Some(error) = failed {
            self.core.handle_recording_failed(&error);
            self.recorder = None;
        }
    }

    /// Moves the core's bot outputs into the bot's queue while it has room. A full queue
    /// keeps the output back until there is room; one full for [`BOT_STALL_LIMIT`] means the
    /// bot stopped reading, and it is detached.
    fn send_to_bot(&mut self) {
        while let Some((_, bot)) = &self.bot {
            let Some(output) = self.bot_pending.take().or_else(|| self.core.poll_bot()) else {
                break;
            };
            match bot.try_send(output) {
                Ok(()) => self.bot_full_since = None,
                Err(mpsc::error::TrySendError::Full(output)) => {
                    let now = Instant::now();
                    let since = *self.bot_full_since.get_or_insert(now);
                    if now.duration_since(since) >= BOT_STALL_LIMIT {
                        tracing::warn!(call = %self.info.id, "bot stopped reading; detached");
                        self.detach_bot(vec![output]);
                    } else {
                        self.bot_pending = Some(output);
                    }
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(output)) => self.detach_bot(vec![output]),
            }
        }
    }

    /// Forgets the bot's queue; `unsent` (what did not fit or found it closed) is kept for
    /// a bot that attaches again.
    fn detach_bot(&mut self, unsent: Vec<BotOutput>) {
        self.bot = None;
        self.bot_full_since = None;
        let unsent = self.bot_pending.take().into_iter().chain(unsent).collect();
        self.core
            .handle_bot_detached(Instant::now().into_std(), unsent);
    }

    /// Sends one ledger command on the live session. A send that fails means the session is
    /// going down; its `Down` event follows and the ledger replays what was lost.
    fn send_to_lmnt(&self, command: LmntCommand) {
        let Some(sender) = self.link.sender() else {
            return;
        };
        let sent = match command {
            LmntCommand::Text(text) => sender.send_text(&text),
            LmntCommand::Flush { nonce } => sender.send_flush(nonce),
            LmntCommand::Reset { nonce } => sender.send_reset(nonce),
        };
        if let Err(err) = sent {
            tracing::debug!(call = %self.info.id, error = %err, "LMNT send failed");
        }
    }

    /// The call has ended: the rest of the recording comes out, then the file is finalized
    /// off the runtime (it flushes to disk).
    async fn finish_recording(&mut self) {
        self.write_recording();
        let Some(recorder) = self.recorder.take() else {
            return;
        };
        let id = &self.info.id;
        match tokio::task::spawn_blocking(move || recorder.finish()).await {
            Ok(Ok(path)) => {
                tracing::debug!(call = %id, path = %path.display(), "recording finalized")
            }
            Ok(Err(error)) => tracing::warn!(call = %id, %error, "recording not finalized"),
            Err(error) => tracing::warn!(call = %id, %error, "recording writer lost"),
        }
    }

    /// After a panic inside [`Driver::run`]: the core's state is not trusted any more, so
    /// only the I/O is wound down: the bot is told (`call.ended` with `internal_error`), the
    /// LMNT session ends, the peer closes, the recording is finalized with what it has.
    async fn end_after_panic(&mut self, message: String) {
        let reason = EndReason::InternalError;
        metrics::call_ended(reason.as_str());
        tracing::error!(
            call = %self.info.id,
            panic = %message,
            "call failed: a bug in its code; this call ended, the others go on"
        );
        if let Some((_, bot)) = self.bot.take() {
            let _ = bot.try_send(BotOutput::Event(BotEvent::CallEnded {
                reason: reason.as_str().to_owned(),
                recording: None,
            }));
        }
        self.link.hang_up();
        self.peer.close();
        if let Some(recorder) = self.recorder.take() {
            let _ = tokio::task::spawn_blocking(move || recorder.finish()).await;
        }
    }

    async fn end(&mut self, reason: EndReason) {
        metrics::call_ended(reason.as_str());
        self.link.hang_up();
        self.peer.close();
        // The call's one closing line: what an operator reads to judge it.
        let figures = self.core.snapshot();
        tracing::info!(
            call = %self.info.id,
            reason = reason.as_str(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            utterances = figures.utterances,
            underrun_frames = figures.underrun_frames,
            late_frames = figures.late_frames,
            lmnt_reconnects = figures.lmnt_reconnects,
            codec = figures.codec,
            "call ended"
        );
    }
}

/// Returns when the bot's queue has room (or is closed), or at `limit`.
async fn wait_for_room(bot: Option<(mpsc::Sender<BotOutput>, Instant)>) {
    let Some((bot, limit)) = bot else {
        return std::future::pending().await;
    };
    // The permit is dropped at once: the slot it held is free again for `try_send`.
    let _ = tokio::time::timeout_at(limit, bot.reserve()).await;
}

/// Waits for the next report of `sent`; never completes without one.
async fn changed_opt(sent: &mut Option<SentReceiver>) -> Result<(), watch::error::RecvError> {
    match sent {
        Some(sent) => sent.changed().await,
        None => std::future::pending().await,
    }
}

async fn until_opt(ticks: &TickSubscription, deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => ticks.until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

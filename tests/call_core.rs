//! The call core in virtual time: every policy of a call driven by scripted inputs at chosen
//! instants, with no runtime, no socket and no clock. A harness plays the driver's part:
//! after each input it drains the core's outputs, and when a frame is due it "sends" it
//! (records it) and reports it sent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lmnt_bridge::audio::InputFormat;
use lmnt_bridge::call::core::{CallerPacket, Media, Recording, GIVE_UP_AFTER_FAILURES};
use lmnt_bridge::call::ledger::{LmntCommand, TextLimits};
use lmnt_bridge::call::{AttachError, BotOutput, CallCore, CallParams, CallState, EndReason};
use lmnt_bridge::codec::dtmf::{self, DtmfSender, OutEvent, TelephoneEvent};
use lmnt_bridge::codec::{
    Codec, CodecKind, DtmfFormat, EncoderSettings, OpusEncoder, OpusSettings,
};
use lmnt_bridge::control::{BotEvent, BotMessage};
use lmnt_bridge::lmnt::protocol::ErrorSlug;
use lmnt_bridge::lmnt::{LinkEvent, LmntError, SessionEvent, Timestamp};
use lmnt_bridge::playout::PlayoutConfig;

const MS: Duration = Duration::from_millis(1);
/// LMNT's sample rate in these tests: 24 kHz s16le, 48 bytes a millisecond.
const LMNT_RATE: u32 = 24_000;
const OPUS: Codec = Codec {
    kind: CodecKind::Opus,
    payload_type: 111,
    telephone_event: None,
};

fn params() -> CallParams {
    CallParams {
        id: "c1".into(),
        voice: "tones".into(),
        pcm_rate: OPUS.pcm_rate(LMNT_RATE),
        codec: OPUS,
        limits: TextLimits {
            max_text_message_bytes: 1_000,
            max_utterance_bytes: 5_000,
        },
        playout: PlayoutConfig {
            input_format: InputFormat::PcmS16le,
            input_rate: LMNT_RATE,
            output_rate: OPUS.pcm_rate(LMNT_RATE),
            jitter_min: Duration::ZERO,
            jitter_max: 300 * MS,
            max_queued: Duration::from_secs(5),
            max_late: 100 * MS,
        },
        dtmf_barge_in: false,
        recording: Recording::Off,
        custom: Default::default(),
        encoder: EncoderSettings::default(),
        bot_grace: BOT_GRACE,
    }
}

/// The calls' `bot_grace` in these tests.
const BOT_GRACE: Duration = Duration::from_secs(10);

/// `ms` of a 440 Hz tone from LMNT (24 kHz s16le).
fn audio(ms: u64) -> LinkEvent {
    let n = u64::from(LMNT_RATE) * ms / 1000;
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i| {
            let x = 2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(LMNT_RATE);
            ((0.5 * 32_767.0 * x.sin()) as i16).to_le_bytes()
        })
        .collect();
    LinkEvent::Session(SessionEvent::Audio(Bytes::from(bytes)))
}

fn flush_complete(nonce: u64) -> LinkEvent {
    LinkEvent::Session(SessionEvent::FlushComplete { nonce })
}

fn down(error: LmntError) -> LinkEvent {
    LinkEvent::Down { error, attempts: 1 }
}

fn text(s: &str) -> BotMessage {
    BotMessage::Text { text: s.into() }
}

/// A frame as the harness sent it: its slot, whether it carried audio, and the DTMF event
/// packet it carried instead, if any.
#[derive(Debug)]
struct Sent {
    slot: u64,
    audio: bool,
    event: Option<([u8; 4], bool, u32)>,
}

/// The driver's part, in virtual time.
struct Harness {
    core: CallCore,
    t0: Instant,
    now: Instant,
    /// Everything the bot received, in order.
    bot: Vec<BotOutput>,
    /// Every command sent to LMNT, in order.
    lmnt: Vec<LmntCommand>,
    sent: Vec<Sent>,
    /// Whether a bot is attached (bot outputs are polled only then, as the driver does).
    attached: bool,
}

impl Harness {
    /// A call with a bot attached, LMNT up and media live at `t0`.
    fn live() -> Harness {
        let mut h = Harness::connecting();
        h.attach();
        h.lmnt(LinkEvent::Up);
        h.core.handle_media_live(h.t0);
        h.drain();
        h
    }

    /// A call as it is created: nothing attached, nothing up.
    fn connecting() -> Harness {
        Harness::with(params())
    }

    /// A live call with these parameters.
    fn live_with(params: CallParams) -> Harness {
        let mut h = Harness::with(params);
        h.attach();
        h.lmnt(LinkEvent::Up);
        h.core.handle_media_live(h.t0);
        h.drain();
        h
    }

    fn with(params: CallParams) -> Harness {
        let t0 = Instant::now();
        Harness {
            core: CallCore::new(params).unwrap(),
            t0,
            now: t0,
            bot: Vec::new(),
            lmnt: Vec::new(),
            sent: Vec::new(),
            attached: false,
        }
    }

    /// A bot attaches (and gets what is queued for it).
    fn attach(&mut self) {
        self.core.handle_bot_attached().unwrap();
        self.attached = true;
        self.drain();
    }

    /// The bot's channel drops now; `unsent` was on its way and never written.
    fn detach(&mut self, unsent: Vec<BotOutput>) {
        self.core.handle_bot_detached(self.now, unsent);
        self.attached = false;
        self.drain();
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.run_until(self.t0 + Duration::from_millis(ms));
        self
    }

    /// Sends every frame due up to `until`, each exactly at its deadline.
    fn run_until(&mut self, until: Instant) {
        while let Some(deadline) = self.core.poll_timeout() {
            if deadline > until {
                break;
            }
            self.now = deadline;
            self.core.handle_timeout(deadline);
            self.drain();
        }
        self.now = until.max(self.now);
    }

    fn bot_says(&mut self, message: BotMessage) -> &mut Self {
        self.core.handle_bot(self.now, message, self.now);
        self.drain();
        self
    }

    fn lmnt(&mut self, event: LinkEvent) -> &mut Self {
        self.core.handle_lmnt(self.now, event);
        self.drain();
        self
    }

    /// The driver's duty after every input: frames first (each reported sent), then LMNT
    /// commands, then bot outputs.
    fn drain(&mut self) {
        while let Some(frame) = self.core.poll_transmit() {
            let (audio, event) = match frame.media {
                Media::Audio(pcm) => (pcm.is_some(), None),
                Media::Event {
                    payload,
                    marker,
                    rtp_timestamp,
                } => (false, Some((payload, marker, rtp_timestamp))),
            };
            self.sent.push(Sent {
                slot: frame.slot,
                audio,
                event,
            });
            self.core.handle_frame_sent(self.now);
        }
        while let Some(command) = self.core.poll_lmnt() {
            self.lmnt.push(command);
        }
        while self.attached {
            let Some(output) = self.core.poll_bot() else {
                break;
            };
            self.bot.push(output);
        }
    }

    fn events(&self) -> Vec<BotEvent> {
        self.bot
            .iter()
            .filter_map(|o| match o {
                BotOutput::Event(e) => Some(e.clone()),
                BotOutput::CallerAudio(_) => None,
            })
            .collect()
    }

    /// The caller presses `digits` (100 ms each, 60 ms apart) as RFC 4733 events at
    /// `clock_rate` on payload type 101: sequence numbers from `first_sequence`, each
    /// event's RTP time `timestamp_base` plus its offset, every packet delivered `copies`
    /// times, one packet per 20 ms slot; then everything pending is drained.
    fn caller_keys(
        &mut self,
        digits: &str,
        clock_rate: u32,
        first_sequence: u16,
        timestamp_base: u32,
        copies: usize,
    ) {
        let mut sender = DtmfSender::new(digits, 100, 60, clock_rate).unwrap();
        let mut sequence = first_sequence;
        while let Some(out) = sender.next_packet() {
            if let OutEvent::Event {
                payload,
                marker,
                timestamp_offset_ticks,
            } = out
            {
                let packet = CallerPacket {
                    payload_type: 101,
                    sequence,
                    timestamp: timestamp_base + timestamp_offset_ticks,
                    marker,
                    payload: &payload,
                };
                for _ in 0..copies {
                    self.core.handle_caller_rtp(self.now, packet);
                }
                sequence = sequence.wrapping_add(1);
            }
            let next = self.now + 20 * MS;
            self.run_until(next);
        }
        self.drain();
    }

    /// The caller's key presses the bot was told of: (digit, duration in ms).
    fn dtmf_presses(&self) -> Vec<(String, u32)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                BotEvent::Dtmf { digit, duration_ms } => Some((digit, duration_ms)),
                _ => None,
            })
            .collect()
    }

    fn position(&self, pred: impl Fn(&BotEvent) -> bool) -> Option<usize> {
        self.events().iter().position(pred)
    }

    /// The first `cleared` event: utterance, played_ms, heard_text.
    fn cleared(&self) -> Option<(u64, u64, String)> {
        self.events().into_iter().find_map(|e| match e {
            BotEvent::Cleared {
                utterance,
                played_ms,
                heard_text,
            } => Some((utterance, played_ms, heard_text)),
            _ => None,
        })
    }

    fn done(&self, utterance: u64) -> Option<u64> {
        self.events().iter().find_map(|e| match e {
            BotEvent::UtteranceDone {
                utterance: u,
                audio_ms,
                ..
            } if *u == utterance => Some(*audio_ms),
            _ => None,
        })
    }

    /// Runs frames until `utterance.done` for `utterance`, at most `limit_ms` of call time.
    fn play_until_done(&mut self, utterance: u64, limit_ms: u64) -> u64 {
        let limit = self.now + Duration::from_millis(limit_ms);
        while self.done(utterance).is_none() {
            assert!(
                self.now < limit,
                "utterance {utterance} never done: {:?}",
                self.events()
            );
            let next = self.now + 20 * MS;
            self.run_until(next);
        }
        self.done(utterance).unwrap()
    }
}

#[test]
fn text_flush_audio_and_events_in_order_each_after_its_frame() {
    let mut h = Harness::connecting();
    h.attach();
    // Text before LMNT is up is held, then sent when the session comes up.
    h.bot_says(text("hello "));
    h.drain();
    assert!(h.lmnt.is_empty());
    h.lmnt(LinkEvent::Up);
    assert_eq!(h.lmnt, [LmntCommand::Text("hello ".into())]);
    h.bot_says(text("world")).bot_says(BotMessage::Flush);
    assert_eq!(
        h.lmnt[1..],
        [
            LmntCommand::Text("world".into()),
            LmntCommand::Flush { nonce: 1 }
        ]
    );
    h.core.handle_media_live(h.t0);
    h.drain();
    h.at(10).lmnt(audio(400)).lmnt(flush_complete(1));
    // The core hands out a frame; its events reach the bot only once it is reported sent.
    let deadline = h.core.poll_timeout().unwrap();
    h.core.handle_timeout(deadline);
    let frame = h.core.poll_transmit().expect("a frame is due");
    assert!(
        matches!(frame.media, Media::Audio(Some(_))),
        "the buffered utterance starts at once"
    );
    assert!(
        h.core.poll_bot().is_none(),
        "utterance.started waits for its frame to be sent"
    );
    h.sent.push(Sent {
        slot: frame.slot,
        audio: true,
        event: None,
    });
    h.core.handle_frame_sent(deadline);
    assert_eq!(
        h.core.poll_bot(),
        Some(BotOutput::Event(BotEvent::UtteranceStarted {
            utterance: 1
        }))
    );
    assert_eq!(h.play_until_done(1, 2_000), 400);
    let events = h.events();
    assert!(matches!(events[0], BotEvent::CallStarted { codec, .. } if codec == "opus"));
    let snapshot = h.core.snapshot();
    assert_eq!(snapshot.utterances, 1);
    assert_eq!(snapshot.utterances_done, 1);
    assert_eq!(snapshot.flush_to_first_audio.count, 1);
    assert_eq!(snapshot.flush_to_first_frame.count, 1);
    assert_eq!(snapshot.underrun_frames, 0);
    // Slots advance one by one from 0 (a silent frame before the audio came): RTP time is
    // slot × 960.
    for (i, s) in h.sent.iter().enumerate() {
        assert_eq!(s.slot, i as u64);
    }
    // 400 ms of audio at LMNT's rate, encoded as it came (no resampler to add its delay):
    // exactly 20 frames of it.
    assert_eq!(h.sent.iter().filter(|s| s.audio).count(), 20);
}

#[test]
fn clear_mid_utterance_resets_lmnt_drops_late_audio_and_the_next_utterance_plays() {
    let mut h = Harness::live();
    h.bot_says(text("a long utterance"))
        .bot_says(BotMessage::Flush);
    h.lmnt(audio(2_000));
    h.at(500).bot_says(BotMessage::Clear);
    assert_eq!(h.lmnt.last(), Some(&LmntCommand::Reset { nonce: 2 }));
    h.at(520);
    let cleared = h.cleared().expect("cleared");
    assert_eq!(cleared.0, 1);
    assert!((480..=540).contains(&cleared.1), "played_ms {}", cleared.1);
    // Audio LMNT had in flight before the reset, and its stale acknowledgement, are dropped.
    h.lmnt(audio(300)).lmnt(flush_complete(1));
    h.at(700);
    assert!(h.done(1).is_none(), "the cleared utterance never completes");
    assert!(
        h.sent.iter().rev().take(5).all(|s| !s.audio),
        "silence after the clear"
    );
    h.lmnt(LinkEvent::Session(SessionEvent::ResetComplete { nonce: 2 }));
    h.bot_says(text("next")).bot_says(BotMessage::Flush);
    assert_eq!(h.lmnt.last(), Some(&LmntCommand::Flush { nonce: 3 }));
    h.lmnt(audio(200)).lmnt(flush_complete(3));
    assert_eq!(h.play_until_done(2, 1_000), 200);
}

#[test]
fn a_mark_waits_for_every_utterance_flushed_before_it() {
    let mut h = Harness::live();
    // Nothing flushed: the mark fires with the next frame.
    h.bot_says(BotMessage::Mark {
        name: "idle".into(),
    });
    h.at(20);
    assert!(h
        .position(|e| *e
            == BotEvent::Mark {
                name: "idle".into(),
                played: true
            })
        .is_some());
    // A mark right after a flush, before any of that utterance's audio exists.
    h.bot_says(text("one")).bot_says(BotMessage::Flush);
    h.bot_says(BotMessage::Mark {
        name: "after-1".into(),
    });
    h.bot_says(text("two"));
    h.at(300);
    assert!(h
        .position(|e| matches!(e, BotEvent::Mark { name, played: true } if name == "after-1"))
        .is_none());
    h.lmnt(audio(200)).lmnt(flush_complete(1));
    h.play_until_done(1, 1_000);
    let done = h.position(|e| matches!(e, BotEvent::UtteranceDone { utterance: 1, .. }));
    let mark =
        h.position(|e| matches!(e, BotEvent::Mark { name, played: true } if name == "after-1"));
    assert_eq!(
        mark,
        done.map(|d| d + 1),
        "the mark follows utterance.done 1 at once"
    );
    // Utterance 2 (unflushed when the mark came) does not hold the mark back, and a mark
    // after it waits for it.
    h.bot_says(BotMessage::Flush);
    h.bot_says(BotMessage::Mark {
        name: "after-2".into(),
    });
    h.lmnt(audio(100)).lmnt(flush_complete(2));
    h.play_until_done(2, 1_000);
    let done2 = h.position(|e| matches!(e, BotEvent::UtteranceDone { utterance: 2, .. }));
    let mark2 =
        h.position(|e| matches!(e, BotEvent::Mark { name, played: true } if name == "after-2"));
    assert_eq!(mark2, done2.map(|d| d + 1));
}

#[test]
fn reconnect_replays_unacknowledged_text_and_never_repeats_what_was_heard() {
    let mut h = Harness::live();
    h.bot_says(text("first")).bot_says(BotMessage::Flush);
    h.bot_says(text("second (open)"));
    h.lmnt(audio(300));
    h.at(200);
    h.lmnt(down(LmntError::Transport("reset by peer".into())));
    assert!(!h.core.snapshot().lmnt_connected);
    let before = h.lmnt.len();
    h.lmnt(LinkEvent::Up);
    assert_eq!(
        h.lmnt[before..],
        [
            LmntCommand::Text("first".into()),
            LmntCommand::Flush { nonce: 1 },
            LmntCommand::Text("second (open)".into()),
        ],
        "unacknowledged text, then the open utterance, on the new session"
    );
    // The new session speaks utterance 1 from its start: the first 300 ms are skipped.
    h.lmnt(audio(800)).lmnt(flush_complete(1));
    assert_eq!(
        h.play_until_done(1, 3_000),
        800,
        "800 ms heard, none of it twice"
    );
    assert_eq!(h.core.snapshot().lmnt_reconnects, 1);
    let errors = h.position(|e| matches!(e, BotEvent::Error { .. }));
    assert_eq!(errors, None, "one lost session is no error for the bot");
}

#[test]
fn give_up_after_repeated_failures_without_progress_keeps_the_open_text() {
    let mut h = Harness::live();
    h.bot_says(text("never spoken")).bot_says(BotMessage::Flush);
    h.bot_says(text("still open"));
    for attempt in 1..GIVE_UP_AFTER_FAILURES {
        h.lmnt(down(LmntError::ConnectRefused("refused".into())));
        assert!(
            h.position(|e| matches!(e, BotEvent::Error { .. }))
                .is_none(),
            "no error after {attempt} failures"
        );
    }
    h.lmnt(down(LmntError::ConnectRefused("refused".into())));
    let error = h.events().into_iter().find_map(|e| match e {
        BotEvent::Error { code, message } => Some((code, message)),
        _ => None,
    });
    let (code, message) = error.expect("the bot is told");
    assert_eq!(code, "lmnt_unavailable");
    assert!(message.contains("[1]"), "{message}");
    // The given-up utterance ends (nothing played), and the call goes on.
    assert_eq!(h.play_until_done(1, 200), 0);
    let before = h.lmnt.len();
    h.lmnt(LinkEvent::Up);
    assert_eq!(
        h.lmnt[before..],
        [LmntCommand::Text("still open".into())],
        "only the text the bot is still writing is sent again"
    );
    h.bot_says(BotMessage::Flush);
    h.lmnt(audio(100)).lmnt(flush_complete(1));
    assert_eq!(h.play_until_done(2, 1_000), 100);
}

#[test]
fn a_bot_that_attaches_while_lmnt_is_unreachable_is_told_at_once() {
    // LMNT refuses every connection from the call's start, before any bot is there.
    let mut h = Harness::connecting();
    for _ in 0..GIVE_UP_AFTER_FAILURES {
        h.lmnt(down(LmntError::ConnectRefused("refused".into())));
    }
    h.attach();
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [BotEvent::CallStarted { .. }, BotEvent::Error { code: "lmnt_unavailable", message }]
                if message.contains("refused")
        ),
        "{events:?}"
    );
    // Once a session is up again, a bot that attaches is told nothing.
    let mut h = Harness::connecting();
    for _ in 0..GIVE_UP_AFTER_FAILURES {
        h.lmnt(down(LmntError::ConnectRefused("refused".into())));
    }
    h.lmnt(LinkEvent::Up);
    h.attach();
    assert!(matches!(&h.events()[..], [BotEvent::CallStarted { .. }]));
}

#[test]
fn a_failure_no_retry_can_mend_gives_up_at_once_but_progress_resets_the_count() {
    let mut h = Harness::live();
    h.bot_says(text("one")).bot_says(BotMessage::Flush);
    for _ in 1..GIVE_UP_AFTER_FAILURES {
        h.lmnt(down(LmntError::Transport("lost".into())));
        h.lmnt(LinkEvent::Up);
    }
    // Progress: audio played. The count starts over.
    h.lmnt(audio(100));
    h.lmnt(down(LmntError::Transport("lost".into())));
    assert!(h
        .position(|e| matches!(e, BotEvent::Error { .. }))
        .is_none());
    h.lmnt(down(LmntError::Server {
        slug: ErrorSlug::Authentication,
        message: "bad key".into(),
    }));
    assert!(h
        .position(|e| matches!(e, BotEvent::Error { code, .. } if *code == "lmnt_unavailable"))
        .is_some());
    assert_eq!(h.play_until_done(1, 1_000), 100, "what arrived still plays");
}

#[test]
fn drain_finishes_the_utterance_in_progress_then_ends_the_call() {
    let mut h = Harness::live();
    h.bot_says(text("finish me")).bot_says(BotMessage::Flush);
    h.lmnt(audio(600));
    h.at(100);
    h.core.handle_drain();
    h.drain();
    assert_eq!(h.core.snapshot().state, CallState::Draining);
    h.at(400);
    assert_eq!(h.core.poll_end(), None, "still speaking");
    h.lmnt(audio(400)).lmnt(flush_complete(1));
    assert_eq!(h.play_until_done(1, 3_000), 1_000);
    assert_eq!(h.core.poll_end(), Some(EndReason::Shutdown));
    assert_eq!(
        h.events().last(),
        Some(&BotEvent::CallEnded {
            reason: "shutdown".into(),
            recording: None
        })
    );
    assert_eq!(
        h.core.poll_timeout(),
        None,
        "an ended call sends nothing more"
    );
    assert_eq!(h.core.snapshot().state, CallState::Ended);
}

#[test]
fn drain_of_an_idle_call_ends_it_at_once_and_hangup_ends_any_call() {
    let mut h = Harness::live();
    h.bot_says(text("unflushed text does not hold a drain"));
    h.core.handle_drain();
    assert_eq!(h.core.poll_end(), Some(EndReason::Shutdown));

    let mut h = Harness::live();
    h.bot_says(text("x")).bot_says(BotMessage::Flush);
    h.core.handle_hangup(EndReason::CallerHangup);
    h.core.handle_hangup(EndReason::BotHangup);
    h.drain();
    assert_eq!(
        h.core.poll_end(),
        Some(EndReason::CallerHangup),
        "the first reason sticks"
    );
    let ended: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, BotEvent::CallEnded { .. }))
        .collect();
    assert_eq!(ended.len(), 1);

    let mut h = Harness::live();
    h.bot_says(BotMessage::Hangup);
    assert_eq!(h.core.poll_end(), Some(EndReason::BotHangup));
}

#[test]
fn a_bot_that_drops_and_attaches_within_the_grace_gets_what_it_missed_in_order() {
    let mut h = Harness::live();
    assert_eq!(
        h.core.handle_bot_attached(),
        Err(AttachError::AlreadyAttached)
    );
    h.bot_says(text("for the first bot"))
        .bot_says(BotMessage::Flush);
    h.lmnt(audio(200)).lmnt(flush_complete(1));
    h.at(60);
    let before = h.events().len();
    // The channel drops mid-utterance with one event written towards it but never sent.
    let in_flight = BotEvent::Mark {
        name: "in flight".into(),
        played: true,
    };
    h.detach(vec![BotOutput::Event(in_flight.clone())]);
    h.at(600);
    assert_eq!(
        h.events().len(),
        before,
        "nothing reaches a bot that is gone"
    );
    assert_eq!(h.core.poll_end(), None, "within the grace the call goes on");
    // The bot attaches again: call.started, then what it missed, in order.
    h.attach();
    let events = h.events()[before..].to_vec();
    assert!(
        matches!(
            &events[..],
            [
                BotEvent::CallStarted { .. },
                BotEvent::Mark { .. },
                BotEvent::UtteranceDone { utterance: 1, .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(events[1], in_flight);
    h.bot_says(text("for the second"))
        .bot_says(BotMessage::Flush);
    h.lmnt(audio(100)).lmnt(flush_complete(2));
    assert_eq!(h.play_until_done(2, 1_000), 100);
    // The grace timer is gone with the bot back.
    h.at(60_000);
    assert_eq!(h.core.poll_end(), None);
}

#[test]
fn a_bot_that_does_not_come_back_within_the_grace_ends_the_call_with_bot_gone() {
    let mut h = Harness::live();
    h.detach(Vec::new());
    h.at(BOT_GRACE.as_millis() as u64 - 20);
    assert_eq!(h.core.poll_end(), None);
    h.at(BOT_GRACE.as_millis() as u64);
    assert_eq!(h.core.poll_end(), Some(EndReason::BotGone));
    assert_eq!(h.core.snapshot().ended_reason, Some(EndReason::BotGone));

    // A grace of zero ends the call as the bot drops.
    let mut h = Harness::live_with(CallParams {
        bot_grace: Duration::ZERO,
        ..params()
    });
    h.detach(Vec::new());
    assert_eq!(h.core.poll_end(), Some(EndReason::BotGone));

    // A call no bot ever attached to (driven by `say`) has no grace timer.
    let mut h = Harness::connecting();
    h.lmnt(LinkEvent::Up);
    h.core.handle_media_live(h.t0);
    h.at(60_000);
    assert_eq!(h.core.poll_end(), None);
}

#[test]
fn bad_bot_input_gets_named_errors_and_nothing_is_half_spoken() {
    let mut h = Harness::live();
    h.bot_says(BotMessage::Flush);
    h.bot_says(text(&"x".repeat(1_001)));
    let codes: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            BotEvent::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, ["empty_utterance", "text_too_long"]);
    assert!(h.lmnt.is_empty(), "nothing reached LMNT");
    assert_eq!(
        h.core.handle_say(h.now, "  "),
        Err(lmnt_bridge::control::ControlError::EmptyUtterance)
    );
    assert_eq!(h.core.handle_say(h.now, "say this"), Ok(1));
}

/// 20 ms of a 600 Hz tone at 48 kHz, frame `n` of a continuous stream.
fn tone_frame(n: usize) -> Vec<i16> {
    (0..960)
        .map(|i| {
            let t = (n * 960 + i) as f64 / 48_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * 600.0 * t).sin()) as i16
        })
        .collect()
}

#[test]
fn lost_caller_packets_are_rebuilt_from_fec_when_the_next_carries_it_else_concealed() {
    for (fec, recovered, concealed) in [(true, 3, 3), (false, 0, 6)] {
        let mut h = Harness::live();
        let mut encoder = OpusEncoder::new(
            &OpusSettings {
                fec,
                expected_loss_pct: if fec { 10 } else { 0 },
                ..OpusSettings::default()
            },
            48_000,
        )
        .unwrap();
        let payloads: Vec<Vec<u8>> = (0..20)
            .map(|n| encoder.encode(&tone_frame(n)).unwrap())
            .collect();
        let before = h.bot.len();
        // Lost: 5 (from 6's FEC), 9 and 10 (9 concealed, 10 from 11's FEC), 14 to 16 (two
        // concealed, 16 from 17's FEC).
        for n in (0..20u16).filter(|n| ![5, 9, 10, 14, 15, 16].contains(n)) {
            h.core.handle_caller_rtp(
                h.now,
                CallerPacket {
                    payload_type: 111,
                    sequence: 1_000 + n,
                    timestamp: u32::from(n) * 960,
                    marker: false,
                    payload: &payloads[usize::from(n)],
                },
            );
        }
        h.drain();
        let frames = h.bot[before..]
            .iter()
            .filter(|o| matches!(o, BotOutput::CallerAudio(pcm) if pcm.len() == 640))
            .count();
        assert_eq!(frames, 20, "one frame per 20 ms of the caller's stream");
        let snapshot = h.core.snapshot();
        assert_eq!(
            (
                snapshot.caller_frames_recovered,
                snapshot.caller_frames_concealed
            ),
            (recovered, concealed),
            "fec {fec}"
        );
    }
}

#[test]
fn receiver_reports_drive_the_encoder_and_quiet_returns_when_loss_goes() {
    use lmnt_bridge::codec::loss::ReceiverReport;
    let mut h = Harness::live();
    let quiet = OpusSettings::default();
    let report = |pct: u32| ReceiverReport {
        fraction_lost: (pct * 256 / 100) as u8,
        jitter: 96,
    };
    h.core.handle_receiver_report(h.now, report(0));
    assert_eq!(h.core.poll_encoder_settings(), None, "no loss: quiet");
    let mut lossy = None;
    for s in 1..=3 {
        h.at(s * 1000);
        h.core.handle_receiver_report(h.now, report(15));
        lossy = h.core.poll_encoder_settings().or(lossy);
    }
    let lossy = lossy.expect("loss changes the settings");
    assert!(lossy.fec && lossy.expected_loss_pct >= 10, "{lossy:?}");
    assert!(lossy.bitrate_bps > quiet.bitrate_bps && lossy.bitrate_bps <= 48_000);
    let outbound = h.core.snapshot().outbound;
    assert_eq!(outbound.receiver_reports, 4);
    assert_eq!(outbound.opus_fec, Some(true));
    assert_eq!(outbound.jitter_ms, 2.0, "96 ticks at 48 kHz");
    // The loss goes away: quiet again within 10 s of reports.
    let mut back = None;
    for s in 4..=13 {
        h.at(s * 1000);
        h.core.handle_receiver_report(h.now, report(0));
        if h.core.poll_encoder_settings() == Some(quiet) {
            back = Some(s - 3);
            break;
        }
    }
    assert!(back.is_some(), "{:?}", h.core.snapshot().outbound);
    assert_eq!(h.core.snapshot().outbound.opus_bitrate_bps, Some(32_000));
}

#[test]
fn caller_audio_reaches_the_bot_in_20ms_frames_with_losses_concealed() {
    let mut h = Harness::live();
    let mut encoder = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
    let payload = encoder.encode(&[0; 960]).unwrap();
    let packet = |sequence: u16, payload_type: u8| CallerPacket {
        payload_type,
        sequence,
        timestamp: u32::from(sequence) * 960,
        marker: false,
        payload: &payload,
    };
    let before = h.bot.len();
    for sequence in [65_534, 65_535, 2, 2, 1, 3] {
        // 0 and 1 lost across the wrap; 2 duplicated; 1 late; then 3.
        h.core.handle_caller_rtp(h.now, packet(sequence, 111));
    }
    h.core.handle_caller_rtp(h.now, packet(4, 0)); // another payload type: not the call's codec
    h.drain();
    let frames: Vec<_> = h.bot[before..]
        .iter()
        .map(|o| match o {
            BotOutput::CallerAudio(pcm) => pcm.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    // 65534, 65535, two concealed (0, 1), 2, 3: one 640-byte frame per 20 ms of call time.
    assert_eq!(frames, [640; 6]);
    assert_eq!(h.core.snapshot().caller_frames_concealed, 2);
    // While the bot is gone (within the grace) the caller's audio is kept for it.
    h.detach(Vec::new());
    h.core.handle_caller_rtp(h.now, packet(4, 111));
    let before = h.bot.len();
    h.attach();
    assert!(
        matches!(
            &h.bot[before..],
            [BotOutput::Event(BotEvent::CallStarted { .. }), BotOutput::CallerAudio(pcm)] if pcm.len() == 640
        ),
        "{:?}",
        &h.events()
    );
}

#[test]
fn a_tts_faster_than_real_time_is_held_back_not_buffered() {
    let mut h = Harness::live();
    h.bot_says(text("long")).bot_says(BotMessage::Flush);
    let mut pushed_ms = 0;
    while h.core.wants_lmnt_audio() {
        h.lmnt(audio(500));
        pushed_ms += 500;
        assert!(pushed_ms <= 6_000, "the playout never said stop");
    }
    assert!(pushed_ms >= 5_000);
    // Playing drains it: the call wants audio again once under the bound.
    h.at(1_000);
    assert!(h.core.wants_lmnt_audio());
}

fn timestamps(words: &[(&str, f64, f64)]) -> LinkEvent {
    LinkEvent::Session(SessionEvent::Timestamps(
        words
            .iter()
            .map(|&(text, start, duration)| Timestamp {
                text: text.into(),
                start,
                duration,
            })
            .collect(),
    ))
}

#[test]
fn a_barge_in_reports_the_words_heard_and_the_marks_it_dropped() {
    let mut h = Harness::live();
    h.bot_says(text("one two three"))
        .bot_says(BotMessage::Flush);
    h.bot_says(BotMessage::Mark {
        name: "after-1".into(),
    });
    h.lmnt(audio(900))
        .lmnt(timestamps(&[("one", 0.0, 0.4), ("two", 0.4, 0.5)]));
    // The session dies and the next one speaks the utterance again from its start: its
    // timestamps repeat and are not counted twice.
    h.lmnt(down(LmntError::Transport("lost".into())))
        .lmnt(LinkEvent::Up);
    h.lmnt(audio(1_500)).lmnt(timestamps(&[
        ("one", 0.0, 0.4),
        ("two", 0.4, 0.5),
        ("three", 0.9, 0.6),
    ]));
    h.at(1_000).bot_says(BotMessage::Clear);
    h.at(1_060);
    let cleared = h.cleared().expect("cleared");
    assert_eq!(cleared.0, 1);
    assert!((900..1_500).contains(&cleared.1), "played_ms {}", cleared.1);
    assert_eq!(cleared.2, "one two", "the words whose audio fully played");
    let mark = h
        .events()
        .into_iter()
        .find_map(|e| match e {
            BotEvent::Mark { name, played } if name == "after-1" => Some(played),
            _ => None,
        })
        .expect("the mark is reported");
    assert!(!mark, "its audio was dropped by the clear");

    // The next utterance's done carries its text.
    h.lmnt(LinkEvent::Session(SessionEvent::ResetComplete { nonce: 2 }));
    h.bot_says(text("four")).bot_says(BotMessage::Flush);
    h.lmnt(audio(200)).lmnt(flush_complete(3));
    h.play_until_done(2, 1_000);
    assert!(h.events().contains(&BotEvent::UtteranceDone {
        utterance: 2,
        audio_ms: 200,
        text: "four".into()
    }));
}

/// A call whose caller offered telephone-event (payload type 101 at Opus' clock).
fn dtmf_params(barge_in: bool) -> CallParams {
    dtmf_params_at(barge_in, 48_000)
}

/// A call whose caller offered telephone-event (payload type 101) at `clock_rate` Hz beside
/// Opus.
fn dtmf_params_at(barge_in: bool, clock_rate: u32) -> CallParams {
    CallParams {
        codec: Codec {
            telephone_event: Some(DtmfFormat {
                payload_type: 101,
                clock_rate,
            }),
            ..OPUS
        },
        dtmf_barge_in: barge_in,
        ..params()
    }
}

#[test]
fn each_caller_key_press_reaches_the_bot_once_and_can_barge_in() {
    for barge_in in [false, true] {
        let mut h = Harness::live_with(dtmf_params(barge_in));
        h.bot_says(text("speaking")).bot_says(BotMessage::Flush);
        h.lmnt(audio(2_000));
        h.at(200);
        // The caller's side: "5#" as a browser sends it (redundant end packets included).
        // A retransmit of each packet changes nothing.
        h.caller_keys("5#", 48_000, 7_000, 90_000, 2);
        let presses = h.dtmf_presses();
        assert_eq!(presses.len(), 2, "{presses:?}");
        assert_eq!((presses[0].0.as_str(), presses[1].0.as_str()), ("5", "#"));
        assert!(
            presses.iter().all(|p| (100..=120).contains(&p.1)),
            "{presses:?}"
        );
        let cleared = h.position(|e| matches!(e, BotEvent::Cleared { .. }));
        assert_eq!(cleared.is_some(), barge_in, "barge_in {barge_in}");
        assert_eq!(
            h.lmnt.contains(&LmntCommand::Reset { nonce: 2 }),
            barge_in,
            "a key press resets LMNT only as barge-in"
        );
    }
}

#[test]
fn the_bots_digits_go_out_as_rfc_4733_events_pausing_its_audio() {
    let mut h = Harness::live_with(dtmf_params(false));
    h.bot_says(text("hold")).bot_says(BotMessage::Flush);
    h.lmnt(audio(100)).lmnt(flush_complete(1));
    h.bot_says(BotMessage::Dtmf {
        digits: "3*".into(),
        duration_ms: None,
        gap_ms: None,
    });
    h.at(2_000);
    let first_event = h.sent.iter().position(|s| s.event.is_some()).unwrap();
    let last_event = h.sent.iter().rposition(|s| s.event.is_some()).unwrap();
    assert!(
        h.sent[first_event..=last_event].iter().all(|s| !s.audio),
        "the bot's audio waits while the digits go out"
    );
    let first_audio = h.sent.iter().position(|s| s.audio).unwrap();
    assert!(
        first_audio > last_event,
        "the utterance plays after the digits"
    );
    // Two events, each with its own timestamp, marker on its first packet, and three end
    // packets; durations grow by 960 ticks a packet.
    let events: Vec<_> = h.sent.iter().filter_map(|s| s.event).collect();
    let mut digits = Vec::new();
    for (payload, marker, timestamp) in &events {
        let event = TelephoneEvent::parse(payload).unwrap();
        if *marker {
            digits.push((dtmf::digit_of(event.event).unwrap(), *timestamp));
        }
    }
    assert_eq!(digits.iter().map(|d| d.0).collect::<String>(), "3*");
    assert_ne!(digits[0].1, digits[1].1);
    for (digit, timestamp) in &digits {
        let ends = events
            .iter()
            .filter(|(p, _, t)| t == timestamp && TelephoneEvent::parse(p).unwrap().end)
            .count();
        assert_eq!(ends, 3, "digit {digit}");
    }
    // RTP time: the first event starts at its slot's time.
    let start_slot = h.sent[first_event].slot;
    assert_eq!(digits[0].1, (start_slot * 960) as u32);
    let sent = h.position(|e| matches!(e, BotEvent::DtmfSent { digits } if digits == "3*"));
    let done = h.position(|e| matches!(e, BotEvent::UtteranceDone { .. }));
    assert!(sent.is_some() && sent < done, "{:?}", h.events());
    assert_eq!(h.play_until_done(1, 1_000), 100);
}

/// Firefox offers telephone-event only at 8 kHz beside Opus: its events carry RTP time of
/// the audio's 48 kHz clock and durations at 8 kHz, and the bot's digits go out the same way.
#[test]
fn dtmf_at_8khz_beside_opus_counts_durations_at_8khz_and_stamps_on_the_audio_clock() {
    let mut h = Harness::live_with(dtmf_params_at(false, 8_000));
    h.at(200);
    h.caller_keys("7", 8_000, 100, 480_000, 1);
    let presses = h.dtmf_presses();
    assert_eq!(presses.len(), 1, "{presses:?}");
    assert_eq!(presses[0].0, "7");
    assert!((100..=120).contains(&presses[0].1), "{presses:?}");

    h.bot_says(BotMessage::Dtmf {
        digits: "9".into(),
        duration_ms: None,
        gap_ms: None,
    });
    h.at(1_500);
    let first_event = h.sent.iter().position(|s| s.event.is_some()).unwrap();
    let events: Vec<_> = h.sent.iter().filter_map(|s| s.event).collect();
    let (payload, marker, timestamp) = events[0];
    assert!(marker);
    assert_eq!(timestamp, (h.sent[first_event].slot * 960) as u32);
    assert_eq!(TelephoneEvent::parse(&payload).unwrap().duration, 160);
    let (payload, _, next_timestamp) = events[1];
    assert_eq!(next_timestamp, timestamp, "one event, one timestamp");
    assert_eq!(TelephoneEvent::parse(&payload).unwrap().duration, 320);
}

#[test]
fn bad_dtmf_requests_get_named_errors() {
    let mut h = Harness::live_with(dtmf_params(false));
    let dtmf = |digits: &str| BotMessage::Dtmf {
        digits: digits.into(),
        duration_ms: None,
        gap_ms: None,
    };
    h.bot_says(dtmf("12x"));
    h.bot_says(dtmf("1"));
    h.bot_says(dtmf("2"));
    let mut h2 = Harness::live();
    h2.bot_says(dtmf("1"));
    let codes = |h: &Harness| -> Vec<&'static str> {
        h.events()
            .into_iter()
            .filter_map(|e| match e {
                BotEvent::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    };
    assert_eq!(codes(&h), ["invalid_dtmf_digit", "dtmf_busy"]);
    assert_eq!(codes(&h2), ["dtmf_unavailable"]);
}

#[test]
fn a_failed_recording_is_reported_once_and_the_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c1.wav");
    let mut h = Harness::live_with(CallParams {
        recording: Recording::To(path.clone()),
        ..params()
    });
    h.bot_says(text("recorded")).bot_says(BotMessage::Flush);
    h.lmnt(audio(300)).lmnt(flush_complete(1));
    h.at(1_000);
    let mut recorded = Vec::new();
    while h.core.poll_recording(&mut recorded) {}
    assert!(!recorded.is_empty(), "slots older than the window come out");
    assert_eq!(recorded.len() % 320, 0);
    let error = lmnt_bridge::recording::RecordingError::Lagged;
    h.core.handle_recording_failed(&error);
    h.core.handle_recording_failed(&error);
    h.drain();
    let failures = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, BotEvent::Error { code, .. } if *code == "recording_failed"))
        .count();
    assert_eq!(failures, 1);
    assert!(
        !h.core.poll_recording(&mut recorded),
        "nothing more is recorded"
    );
    assert_eq!(h.play_until_done(1, 1_000), 300, "the call goes on");
    h.core.handle_hangup(EndReason::CallerHangup);
    h.drain();
    assert!(h.events().contains(&BotEvent::CallEnded {
        reason: "caller_hangup".into(),
        recording: Some(path.display().to_string()),
    }));
}

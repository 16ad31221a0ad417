//! The bodies of the coverage-guided fuzz targets, one function per parser the daemon or
//! `local-tts` runs on outside input. Each takes the fuzzer's bytes, drives the parser
//! (and, where a property can be checked, checks it) and panics only on a bug: a parser that
//! panics, or a broken property.
//!
//! The AFL binaries in `fuzz/fuzz_targets/` call these directly; the main suite's
//! `tests/fuzz_regressions.rs` includes this very file (`#[path]`) and replays the committed
//! corpus and every crash input through the same functions, so a crash found here stays
//! fixed. This file therefore uses only `lmnt_bridge` and `std`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lmnt_bridge::audio::{InputFormat, SampleDecoder};
use lmnt_bridge::call::core::{CallerPacket, Recording};
use lmnt_bridge::call::ledger::TextLimits;
use lmnt_bridge::call::{BotOutput, CallCore, CallParams, EndReason};
use lmnt_bridge::codec::dtmf::{
    self as rfc4733, DtmfReceiver, DtmfSender, OutEvent, TelephoneEvent,
};
use lmnt_bridge::codec::{Codec, CodecKind, DtmfFormat, EncoderSettings, CALLER_FRAME_SAMPLES};
use lmnt_bridge::control::{BotMessage, MAX_CONTROL_FRAME_BYTES};
use lmnt_bridge::lmnt::protocol::{
    encode_init, parse_server_frame, AudioFormat, ClientCommand, ErrorSlug, InitParams, ServerFrame,
};
use lmnt_bridge::local_tts::dialect::{self, parse_command, parse_init, Command, Dialect};
use lmnt_bridge::local_tts::text::TextBuffer;
use lmnt_bridge::playout::PlayoutConfig;
use lmnt_bridge::rtc::check_offer;
use lmnt_bridge::secret::Secret;

/// A target's body: the fuzzer's bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory of its corpus under `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("control", control),
    ("lmnt_server_frame", lmnt_server_frame),
    ("lmnt_client_frame", lmnt_client_frame),
    ("local_tts_init", local_tts_init),
    ("sdp_offer", sdp_offer),
    ("caller_rtp", caller_rtp),
    ("dtmf", dtmf),
];

/// Reads structured values off the fuzzer's bytes; past the end every read gives zeros, so
/// any input is a valid script.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// A string of up to `max` bytes (invalid UTF-8 replaced, as the tests' frames could not
    /// carry it: WebSocket text frames are UTF-8).
    fn text(&mut self, max: usize) -> String {
        let len = usize::from(self.u8()).min(max);
        String::from_utf8_lossy(self.bytes(len)).into_owned()
    }
}

/// A WebSocket text frame: always UTF-8 (tungstenite checks), so the bytes are made UTF-8.
fn text_frame(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The bot's control frames (`control::parse`). A parsed `dtmf` request is also built into
/// the RFC 4733 sender the call would run, on both clocks a call can have.
pub fn control(data: &[u8]) {
    let frame = text_frame(data);
    match lmnt_bridge::control::parse(&frame) {
        Ok(BotMessage::Dtmf {
            digits,
            duration_ms,
            gap_ms,
        }) => {
            for clock_rate in [8_000, 48_000] {
                if let Ok(mut sender) = DtmfSender::new(
                    &digits,
                    duration_ms.unwrap_or(rfc4733::DEFAULT_DURATION_MS),
                    gap_ms.unwrap_or(rfc4733::DEFAULT_GAP_MS),
                    clock_rate,
                ) {
                    let total = sender.total_slots();
                    let mut slots = 0;
                    while sender.next_packet().is_some() {
                        slots += 1;
                    }
                    assert_eq!(slots, total, "the sender's schedule disagrees with itself");
                }
            }
        }
        Ok(_) => assert!(frame.len() <= MAX_CONTROL_FRAME_BYTES),
        Err(err) => {
            // The error event the bot would get renders.
            let _ = err.to_event().to_json();
        }
    }
}

/// LMNT to the daemon: server text frames (`parse_server_frame`), the frames `local-tts`
/// encodes parsed back, and binary audio frames in any split (`SampleDecoder`). The first
/// byte picks which.
pub fn lmnt_server_frame(data: &[u8]) {
    let mut input = Input(data);
    match input.u8() % 4 {
        0 | 1 => {
            if let Ok(ServerFrame::Error { slug, message, .. }) =
                parse_server_frame(&text_frame(input.rest()))
            {
                let _ = (slug.to_string(), message);
            }
        }
        2 => {
            // local-tts's typed frames (what the daemon talks to in tests) parse back as sent.
            let nonce = u64::from(input.u32());
            let request_id = input.text(64);
            let message = input.text(200);
            let frame = dialect::flush_complete(Dialect::Typed, Some(nonce)).unwrap_or_default();
            assert_eq!(
                parse_server_frame(&frame),
                Ok(ServerFrame::FlushComplete { nonce })
            );
            let frame = dialect::reset_complete(Dialect::Typed, Some(nonce)).unwrap_or_default();
            assert_eq!(
                parse_server_frame(&frame),
                Ok(ServerFrame::ResetComplete { nonce })
            );
            let frame = dialect::ready(Dialect::Typed, &request_id).unwrap_or_default();
            assert_eq!(
                parse_server_frame(&frame),
                Ok(ServerFrame::Ready {
                    request_id: Some(request_id.clone())
                })
            );
            let refusal = dialect::Refusal::new(ErrorSlug::RateLimit, message.clone());
            let frame = dialect::error(Dialect::Typed, &refusal, &request_id);
            assert_eq!(
                parse_server_frame(&frame),
                Ok(ServerFrame::Error {
                    slug: ErrorSlug::RateLimit,
                    message,
                    request_id: Some(request_id),
                })
            );
        }
        _ => {
            // Audio bytes: the samples never depend on how the stream was split.
            let format = [
                InputFormat::PcmS16le,
                InputFormat::PcmF32le,
                InputFormat::Ulaw,
            ][usize::from(input.u8() % 3)];
            let cut = usize::from(input.u8());
            let bytes = input.rest();
            let mut whole = Vec::new();
            SampleDecoder::new(format).push(bytes, &mut whole);
            let mut split = Vec::new();
            let mut decoder = SampleDecoder::new(format);
            for chunk in bytes.chunks(cut % 7 + 1) {
                decoder.push(chunk, &mut split);
            }
            assert_eq!(whole.len(), bytes.len() / format.sample_bytes());
            assert!(whole.iter().all(|s| (-1.0..=1.0).contains(s)));
            assert_eq!(
                whole.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                split.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// The daemon to LMNT: client command frames as `local-tts` parses them in each dialect
/// (`parse_command`, then its sentence buffer), and the daemon's own encoded commands, which
/// `local-tts` must read back as sent. The first byte picks which.
pub fn lmnt_client_frame(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.u8();
    if mode % 2 == 0 {
        let frame = text_frame(input.rest());
        let mut buffer = TextBuffer::default();
        for dialect in [Dialect::Typed, Dialect::Pv2, Dialect::Legacy] {
            if let Ok(commands) = parse_command(dialect, &frame) {
                assert!(!commands.is_empty(), "a parsed frame carries a command");
                for command in commands {
                    if let Command::Text(text) = command {
                        let _ = buffer.push(&text);
                        let _ = buffer.take_sentences();
                    }
                }
                let _ = buffer.take_all();
            }
        }
    } else {
        let nonce = u64::from(input.u32()) << 16 | u64::from(input.u16());
        let text = text_frame(input.rest()).into_owned();
        let cases = [
            (
                ClientCommand::Text { text: text.clone() },
                Command::Text(text),
            ),
            (ClientCommand::Flush { nonce }, Command::Flush(Some(nonce))),
            (ClientCommand::Reset { nonce }, Command::Reset(Some(nonce))),
            (ClientCommand::Finish, Command::Finish),
        ];
        for (sent, read) in cases {
            assert_eq!(
                parse_command(Dialect::Typed, &sent.encode()),
                Ok(vec![read]),
                "{sent:?}"
            );
        }
    }
}

/// `local-tts`'s init parser (`parse_init`), and the daemon's init frame (`encode_init`)
/// read back by it. The first byte picks which.
pub fn local_tts_init(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.u8();
    if mode % 2 == 0 {
        match parse_init(&text_frame(input.rest())) {
            Ok(init) => {
                assert!(dialect::SAMPLE_RATES.contains(&init.sample_rate));
                assert!(!init.voice.is_empty());
            }
            Err((dialect, refusal)) => {
                let _ = dialect::error(dialect, &refusal, "r");
            }
        }
    } else {
        let format = [
            AudioFormat::PcmS16le,
            AudioFormat::PcmF32le,
            AudioFormat::Ulaw,
            AudioFormat::Mp3,
        ][usize::from(mode >> 1) % 4];
        let sample_rate = dialect::SAMPLE_RATES[usize::from(mode >> 3) % 3];
        let return_timestamps = mode & 0x20 != 0;
        let key = Secret::new(input.text(80));
        let language = input.text(4);
        let voice = text_frame(input.rest()).into_owned();
        let params = InitParams {
            api_key: &key,
            voice: &voice,
            format,
            sample_rate,
            language: (!language.is_empty()).then_some(language.as_str()),
            return_timestamps,
        };
        let parsed = parse_init(&encode_init(&params).into_text());
        let voice_ok = voice.len() <= dialect::MAX_VOICE_ID_CHARS
            && !voice.is_empty()
            && voice
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let language_ok = language.is_empty()
            || language == "auto"
            || ((2..=3).contains(&language.len())
                && language.chars().all(|c| c.is_ascii_lowercase()));
        match parsed {
            Ok(init) => {
                assert_eq!(init.dialect, Dialect::Typed);
                assert_eq!(init.api_key.as_deref(), Some(key.expose()));
                assert_eq!(init.voice, voice);
                assert_eq!(
                    (init.format, init.sample_rate, init.extras),
                    (format, sample_rate, return_timestamps)
                );
            }
            Err((dialect, refusal)) => {
                assert_eq!(dialect, Dialect::Typed);
                assert!(
                    !voice_ok || !language_ok,
                    "a valid init was refused: {refusal:?}"
                );
            }
        }
    }
}

/// The offer checks the HTTP API runs before webrtc-rs (`check_offer`), then codec
/// negotiation and the caller-side state a negotiated call builds from it.
pub fn sdp_offer(data: &[u8]) {
    let Ok(formats) = check_offer(&text_frame(data)) else {
        return;
    };
    match lmnt_bridge::codec::negotiate(&formats) {
        Ok(codec) => {
            assert!(formats.iter().any(|f| f.payload_type == codec.payload_type));
            assert!(codec.caller_decoder().is_ok());
            if codec.telephone_event.is_some() {
                assert!(DtmfReceiver::new(codec.clock_rate()).is_ok());
            }
            let _ = codec.rtp_timestamp(u64::MAX);
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
}

/// Payload type of the negotiated codec in [`caller_rtp`].
const CODEC_PT: u8 = 96;
/// Payload type of telephone-event in [`caller_rtp`].
const EVENT_PT: u8 = 101;

/// The caller's RTP into the call core (`CallCore::handle_caller_rtp`): payloads of the
/// negotiated codec (Opus or G.711 decoders), telephone-events (RFC 4733 receiver), other
/// payload types, with any sequence numbers and timestamps, time passing, the bot coming and
/// going, and the recording mixer placing caller audio by RTP time. The first byte picks
/// the codec and the call's set-up; then each op is a packet, time passing or the bot
/// attaching or detaching.
pub fn caller_rtp(data: &[u8]) {
    let mut input = Input(data);
    let setup = input.u8();
    let kind = [CodecKind::Opus, CodecKind::Pcmu, CodecKind::Pcma][usize::from(setup % 3)];
    let codec = Codec {
        kind,
        payload_type: CODEC_PT,
        telephone_event: (setup & 0x04 != 0).then_some(DtmfFormat {
            payload_type: EVENT_PT,
            clock_rate: if setup & 0x40 != 0 {
                8_000
            } else {
                kind.clock_rate()
            },
        }),
    };
    let params = CallParams {
        id: "fuzz".into(),
        voice: "tones".into(),
        pcm_rate: codec.pcm_rate(24_000),
        codec,
        limits: TextLimits {
            max_text_message_bytes: 1_000,
            max_utterance_bytes: 5_000,
        },
        playout: PlayoutConfig {
            input_format: InputFormat::PcmS16le,
            input_rate: codec.pcm_rate(24_000),
            output_rate: codec.pcm_rate(24_000),
            jitter_min: Duration::ZERO,
            jitter_max: Duration::from_millis(300),
            max_queued: Duration::from_secs(5),
            max_late: Duration::from_millis(100),
        },
        dtmf_barge_in: setup & 0x08 != 0,
        // The core only mixes; the driver would write the file.
        recording: if setup & 0x10 != 0 {
            Recording::To(PathBuf::from("/dev/null"))
        } else {
            Recording::Off
        },
        custom: Default::default(),
        encoder: EncoderSettings::default(),
        bot_grace: Duration::from_secs(10),
    };
    let mut core = CallCore::new(params).expect("valid call parameters");
    let mut now = Instant::now();
    let mut bot = setup & 0x20 == 0;
    if bot {
        core.handle_bot_attached().expect("first bot attaches");
    }
    core.handle_media_live(now);
    let mut recorded = Vec::new();
    while !input.is_empty() {
        match input.u8() % 4 {
            0 | 1 => {
                let selector = input.u8();
                let payload_type = match selector % 4 {
                    0 | 1 => CODEC_PT,
                    2 => EVENT_PT,
                    _ => input.u8(),
                };
                let sequence = input.u16();
                let timestamp = input.u32();
                let len = usize::from(input.u8()) * if selector & 0x80 != 0 { 6 } else { 1 };
                let payload = input.bytes(len);
                core.handle_caller_rtp(
                    now,
                    CallerPacket {
                        payload_type,
                        sequence,
                        timestamp,
                        marker: selector & 0x40 != 0,
                        payload,
                    },
                );
            }
            2 => {
                let until = now + Duration::from_millis(u64::from(input.u8()));
                while let Some(deadline) = core.poll_timeout().filter(|d| *d <= until) {
                    now = deadline.max(now);
                    core.handle_timeout(now);
                    drain(&mut core, now, &mut recorded);
                }
                now = until;
            }
            _ => {
                if bot {
                    core.handle_bot_detached(now, Vec::new());
                } else {
                    core.handle_bot_attached()
                        .expect("one bot at a time attaches");
                }
                bot = !bot;
            }
        }
        drain(&mut core, now, &mut recorded);
    }
    core.handle_hangup(EndReason::CallerHangup);
    drain(&mut core, now, &mut recorded);
    while core.poll_recording(&mut recorded) {
        recorded.clear();
    }
}

/// The driver's duty after every input: frames sent, commands and bot output taken, the
/// recording drained. Checks the caller's audio reaches the bot in frames of at most 20 ms.
fn drain(
    core: &mut CallCore,
    now: Instant,
    recorded: &mut Vec<lmnt_bridge::recording::StereoSample>,
) {
    while core.poll_transmit().is_some() {
        core.handle_frame_sent(now);
    }
    while core.poll_lmnt().is_some() {}
    while let Some(output) = core.poll_bot() {
        if let BotOutput::CallerAudio(pcm) = output {
            assert!(pcm.len() % 2 == 0 && pcm.len() <= CALLER_FRAME_SAMPLES * 2);
        }
    }
    core.poll_recording(recorded);
    recorded.clear();
}

/// RFC 4733 telephone-events. Even first byte: arbitrary packets (any payload, timestamp,
/// sequence number, marker, arrival time) into `DtmfReceiver`, which must report each press
/// once, with a DTMF key. Odd: the bot's digits through `DtmfSender`, each packet encoded,
/// parsed and received again: the caller must hear exactly the digits sent.
pub fn dtmf(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.u8();
    let clock_rate = [8_000, 16_000, 48_000][usize::from(mode >> 1) % 3];
    let mut receiver = DtmfReceiver::new(clock_rate).expect("a valid clock rate");
    let start = Instant::now();
    let mut now = start;
    let mut presses = Vec::new();
    if mode % 2 == 0 {
        let mut packets = 0usize;
        while !input.is_empty() {
            let flags = input.u8();
            now += Duration::from_millis(u64::from(input.u8()) * 4);
            if flags & 0x01 != 0 {
                receiver.handle_timeout(now);
            }
            if flags & 0x02 != 0 {
                receiver.handle_stream_end();
                assert_eq!(receiver.poll_timeout(), None);
            }
            let timestamp = input.u32();
            let sequence = input.u16();
            let len = usize::from(flags >> 4);
            let payload = input.bytes(len);
            if receiver
                .handle_packet(now, timestamp, sequence, flags & 0x04 != 0, payload)
                .is_ok()
            {
                packets += 1;
            }
            while let Some(press) = receiver.poll_keypress() {
                presses.push(press);
            }
        }
        receiver.handle_stream_end();
        while let Some(press) = receiver.poll_keypress() {
            presses.push(press);
        }
        assert!(presses.len() <= packets, "more presses than packets");
        assert!(presses
            .iter()
            .all(|p| rfc4733::event_of(p.digit).and_then(rfc4733::digit_of) == Some(p.digit)));
    } else {
        let duration_ms = u32::from(input.u16()) % 2_100;
        let gap_ms = u32::from(input.u16()) % 2_100;
        let base = input.u32();
        let digits = input.text(40);
        let Ok(mut sender) = DtmfSender::new(&digits, duration_ms, gap_ms, clock_rate) else {
            return;
        };
        let mut sequence = input.u16();
        while let Some(out) = sender.next_packet() {
            if let OutEvent::Event {
                payload,
                marker,
                timestamp_offset_ticks,
            } = out
            {
                let event = TelephoneEvent::parse(&payload).expect("our own payload parses");
                assert_eq!(event.encode(), payload);
                receiver
                    .handle_packet(
                        now,
                        base.wrapping_add(timestamp_offset_ticks),
                        sequence,
                        marker,
                        &payload,
                    )
                    .expect("our own packet is accepted");
                sequence = sequence.wrapping_add(1);
            }
            now += Duration::from_millis(20);
            receiver.handle_timeout(now);
            while let Some(press) = receiver.poll_keypress() {
                presses.push(press);
            }
        }
        receiver.handle_stream_end();
        while let Some(press) = receiver.poll_keypress() {
            presses.push(press);
        }
        let heard: String = presses.iter().map(|p| p.digit).collect();
        assert_eq!(
            heard,
            digits.to_ascii_uppercase(),
            "digits sent != digits heard"
        );
        assert!(presses.iter().all(|p| p.end_seen
            && p.duration_ms + 20 >= duration_ms
            && p.duration_ms <= duration_ms + 20));
    }
}

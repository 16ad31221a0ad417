//! DTMF as RFC 4733 telephone-events, both ways: the caller's key presses to the bot, and the
//! bot's digits to the caller (to navigate another IVR). Pure: no I/O, no clock, no runtime.
//!
//! ## The wire (RFC 4733 section 2.3)
//!
//! One event per RTP packet of the `telephone-event` payload type, on the audio stream's SSRC
//! and clock (8000 Hz beside G.711, 48000 Hz beside Opus), 4 bytes:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     event     |E|R| volume    |          duration             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Every packet of one key press carries the RTP timestamp of its start; `duration` (clock
//! ticks since that start) grows with each update; the last packet has the E bit and is sent
//! three times. An event longer than `0xFFFF` ticks (1.37 s at 48 kHz) continues as a new
//! *segment* with a later timestamp (section 2.5.1.3).
//!
//! ## Contract
//!
//! - [`TelephoneEvent`] parses and encodes one payload; [`digit_of`] and [`event_of`] map
//!   event codes 0-15 to `0-9 * # A-D` and back.
//! - [`DtmfReceiver`] (caller to bot): feed it every packet of the negotiated
//!   `telephone-event` payload type with [`DtmfReceiver::handle_packet`], call
//!   [`DtmfReceiver::handle_timeout`] at [`DtmfReceiver::poll_timeout`], and drain
//!   [`DtmfReceiver::poll_keypress`] after every input: each key press comes out exactly
//!   once, in order, with its duration.
//! - [`DtmfSender`] (bot to caller): built from the bot's digits, then asked once per 20 ms
//!   slot of the call's schedule what that slot carries ([`DtmfSender::next_packet`]): an
//!   event packet, a silent gap, or `None` once the sequence is over. RTP time is the slot's,
//!   never a clock's.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::audio::FRAME_MS;
use crate::fault::Fault;

/// The SDP encoding name (`a=rtpmap:PT telephone-event/RATE`).
pub const SDP_NAME: &str = "telephone-event";
/// The `a=fmtp` events we answer with: the sixteen DTMF events, nothing else (RFC 4733
/// section 2.4.1).
pub const SDP_EVENTS: &str = "0-15";
/// Bytes of one event payload (RFC 4733 section 2.3).
pub const PAYLOAD_LEN: usize = 4;
/// The RTP clock rates a telephone-event stream may run at: the narrowband telephone clock
/// up to Opus' 48 kHz. It must also be a multiple of 50 Hz, so a 20 ms slot is a whole number
/// of ticks.
pub const CLOCK_RATES: RangeInclusive<u32> = 8_000..=48_000;
/// The largest value of the 16-bit duration field: one event (or segment) describes at most
/// this many ticks (RFC 4733 section 2.5.1.3).
pub const MAX_SEGMENT_TICKS: u32 = 0xFFFF;
/// The highest DTMF event code (`D`); codes above are other tones (RFC 4734) we do not
/// negotiate.
pub const MAX_DTMF_EVENT: u8 = 15;

/// The length of one slot of the call's schedule (and of one packet interval we send at).
const SLOT_MS: u32 = FRAME_MS as u32;
/// Slots per second.
const SLOTS_PER_SECOND: u32 = 1000 / SLOT_MS;

/// A key press whose end packets were all lost is reported this long after its last packet.
/// Senders update a running event every packet interval (20 to 50 ms in practice, then three
/// end packets), so half a second of silence means about ten updates and all three ends were
/// lost; a bot still hears of the press within a second of the key being let go.
pub const END_TIMEOUT: Duration = Duration::from_millis(500);
/// How far a new segment's timestamp may sit from `previous segment start + 0xFFFF` and still
/// be taken as the same key held down (RFC 4733 section 2.5.2.3). Senders start the next
/// segment at a packet boundary near `0xFFFF` (exactly there, one interval later as
/// libwebrtc does, or the last whole interval before it as [`DtmfSender`] does); 100 ms
/// covers packet intervals up to that.
const SEGMENT_SLACK_MS: u32 = 100;

/// The default tone length of `{"type":"dtmf"}` when the bot gives none: what phones send
/// for a short press, twice the 40 ms an ITU-T Q.24 receiver needs.
pub const DEFAULT_DURATION_MS: u32 = 100;
/// The default silence between two tones: above the 40 ms pause an ITU-T Q.24 receiver needs
/// to register two presses.
pub const DEFAULT_GAP_MS: u32 = 60;
/// The tone lengths a bot may ask for. 40 ms is the shortest tone ITU-T Q.24 receivers must
/// register; 2 s bounds how long one digit pauses the bot's audio (no IVR asks for a longer
/// hold).
pub const DURATION_MS: RangeInclusive<u32> = 40..=2_000;
/// The gaps a bot may ask for. 40 ms is the shortest pause ITU-T Q.24 receivers must register
/// as one, and the two 20 ms slots after each tone carry its end packet's retransmissions;
/// 2 s bounds the pause of the bot's audio.
pub const GAP_MS: RangeInclusive<u32> = 40..=2_000;
/// The most digits one request may carry: longer than any number an IVR asks for (an E.164
/// number has at most 15 digits, a card number 19), and it bounds how long the bot's audio
/// is paused (32 × 4 s at the limits).
pub const MAX_DIGITS: usize = 32;
/// The volume field we send: −10 dBm0, the level libwebrtc's DTMF sender uses; a gateway that
/// plays the tone in-band plays it at this level.
pub const SEND_VOLUME: u8 = 10;
/// Times the final packet of an event is sent (RFC 4733 section 2.5.1.4: three in total, in
/// consecutive packet intervals), so one or two losses still end the event with its duration.
pub const END_PACKET_SENDS: u32 = 3;

// The end packet's retransmissions take the first slots of the gap after each tone.
const _: () = assert!(*GAP_MS.start() >= (END_PACKET_SENDS - 1) * SLOT_MS);

/// A DTMF failure. Each variant is one cause; [`DtmfError::fault`] says whose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// A telephone-event payload shorter than 4 bytes (caller fault; the packet is skipped).
    #[error("telephone-event payload of {len} bytes, shorter than {PAYLOAD_LEN}")]
    ShortPayload {
        /// The payload's length.
        len: usize,
    },
    /// A telephone-event other than the DTMF events 0-15 we negotiate (caller fault; the
    /// packet is skipped and the receiver's state is untouched).
    #[error("telephone-event {event} is not a DTMF key (0-15)")]
    UnsupportedEvent {
        /// The event code.
        event: u8,
    },
    /// A digit the bot asked to send outside `0-9 * # A-D` (bot fault).
    #[error("'{digit}' (character {position} of the digits) is not a DTMF key (0-9, *, #, A-D)")]
    InvalidDigit {
        /// The offending character.
        digit: char,
        /// Its position among the digits, counting characters from 0.
        position: usize,
    },
    /// The bot asked to send no digits at all (bot fault).
    #[error("no digits to send")]
    NoDigits,
    /// The bot asked to send more than [`MAX_DIGITS`] digits (bot fault).
    #[error("{count} digits to send, more than the limit of {max}")]
    TooManyDigits {
        /// Digits asked for.
        count: usize,
        /// [`MAX_DIGITS`].
        max: usize,
    },
    /// A tone length outside [`DURATION_MS`] (bot fault).
    #[error("a DTMF tone of {duration_ms} ms is outside {min}..={max} ms")]
    DurationOutOfRange {
        /// The rejected length.
        duration_ms: u32,
        /// The shortest allowed.
        min: u32,
        /// The longest allowed.
        max: u32,
    },
    /// A gap outside [`GAP_MS`] (bot fault).
    #[error("a gap of {gap_ms} ms between DTMF tones is outside {min}..={max} ms")]
    GapOutOfRange {
        /// The rejected gap.
        gap_ms: u32,
        /// The shortest allowed.
        min: u32,
        /// The longest allowed.
        max: u32,
    },
    /// A clock rate outside [`CLOCK_RATES`] or not a multiple of 50 Hz (internal fault: the
    /// negotiation must only accept the rates we support).
    #[error(
        "telephone-event clock rate {rate} Hz is not supported (8000..=48000, a multiple of 50)"
    )]
    UnsupportedClockRate {
        /// The rejected rate.
        rate: u32,
    },
}

impl DtmfError {
    /// Whose fault the failure is.
    pub fn fault(&self) -> Fault {
        match self {
            DtmfError::ShortPayload { .. } | DtmfError::UnsupportedEvent { .. } => Fault::Caller,
            DtmfError::InvalidDigit { .. }
            | DtmfError::NoDigits
            | DtmfError::TooManyDigits { .. }
            | DtmfError::DurationOutOfRange { .. }
            | DtmfError::GapOutOfRange { .. } => Fault::Bot,
            DtmfError::UnsupportedClockRate { .. } => Fault::Internal,
        }
    }

    /// Whether trying again can succeed: a bad caller packet is skipped, so the next one may
    /// parse. A rejected request fails the same way again.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            DtmfError::ShortPayload { .. } | DtmfError::UnsupportedEvent { .. }
        )
    }

    /// A stable name, for the `code` of the bot's `error` event and for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            DtmfError::ShortPayload { .. } => "bad_dtmf_payload",
            DtmfError::UnsupportedEvent { .. } => "unsupported_dtmf_event",
            DtmfError::InvalidDigit { .. } => "invalid_dtmf_digit",
            DtmfError::NoDigits => "no_dtmf_digits",
            DtmfError::TooManyDigits { .. } => "too_many_dtmf_digits",
            DtmfError::DurationOutOfRange { .. } => "dtmf_duration_out_of_range",
            DtmfError::GapOutOfRange { .. } => "dtmf_gap_out_of_range",
            DtmfError::UnsupportedClockRate { .. } => "unsupported_dtmf_clock_rate",
        }
    }
}

/// The DTMF key of event code `event`: `0-9` for 0-9, `*` for 10, `#` for 11, `A-D` for
/// 12-15; `None` for any other event.
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=MAX_DTMF_EVENT => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// The event code of DTMF key `digit` (`0-9 * # A-D`, and `a-d` as `A-D`); `None` for any
/// other character.
pub fn event_of(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// One telephone-event payload (RFC 4733 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// The event code (0-15 are the DTMF keys, see [`digit_of`]).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// The tone's power in −dBm0, 0 to 63 (6 bits; encoding keeps only the low 6 bits).
    pub volume: u8,
    /// Clock ticks from the event's (or segment's) start to the end of this packet.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses a payload. Fewer than [`PAYLOAD_LEN`] bytes is [`DtmfError::ShortPayload`].
    /// Bytes after the first four are ignored: RFC 4733 puts one event in a payload (several
    /// events travel as RFC 2198 redundancy, under their own payload type), and reading the
    /// first event of a longer one keeps a stack that pads or packs events working. The
    /// reserved R bit is ignored.
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(TelephoneEvent {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3F,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(DtmfError::ShortPayload { len: payload.len() }),
        }
    }

    /// The 4-byte payload: R bit zero, volume masked to its 6 bits.
    pub fn encode(&self) -> [u8; PAYLOAD_LEN] {
        let [d0, d1] = self.duration.to_be_bytes();
        let end = if self.end { 0x80 } else { 0 };
        [self.event, end | (self.volume & 0x3F), d0, d1]
    }
}

/// Whether a telephone-event stream at `clock_rate` Hz can be sent and received: within
/// [`CLOCK_RATES`] and a whole number of ticks per 20 ms slot.
pub fn supports_clock_rate(clock_rate: u32) -> bool {
    ticks_per_slot(clock_rate).is_ok()
}

/// Checks a telephone-event clock rate and returns its ticks per 20 ms slot.
fn ticks_per_slot(clock_rate: u32) -> Result<u32, DtmfError> {
    if CLOCK_RATES.contains(&clock_rate) && clock_rate.is_multiple_of(SLOTS_PER_SECOND) {
        Ok(clock_rate / SLOTS_PER_SECOND)
    } else {
        Err(DtmfError::UnsupportedClockRate { rate: clock_rate })
    }
}

// ----- receiving -----

/// One key press of the caller, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPress {
    /// The key: `0-9 * # A-D`.
    pub digit: char,
    /// How long the key was held, in ms (the RFC 4733 duration over the clock rate, rounded
    /// down; every segment of a long press counted).
    pub duration_ms: u32,
    /// Whether an end packet was seen. `false` when all three were lost and the press was
    /// reported because the next one began, the [`END_TIMEOUT`] passed or the stream ended:
    /// its duration is then the last one heard, short of the real one by at most the lost
    /// updates.
    pub end_seen: bool,
}

/// A key press heard and not reported yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The RTP timestamp of its latest segment.
    timestamp: u32,
    event: u8,
    /// Ticks of its earlier segments.
    earlier_ticks: u64,
    /// The largest duration heard in the latest segment.
    duration: u16,
    /// When its last packet arrived.
    last_heard: Instant,
}

/// The caller's key presses from their RFC 4733 packets, each reported exactly once.
///
/// ## Rules
///
/// - A key press is one event timestamp. It is reported when its first end packet arrives,
///   with that duration; later packets with its timestamp (the redundant end packets,
///   retransmits, duplicates, late updates) are ignored.
/// - A packet with a newer timestamp (wrapping RTP arithmetic) starts a new press. If the
///   previous press never showed an end packet, it is reported first, with its last heard
///   duration — unless the new packet continues it as its next segment (same event, no
///   marker, timestamp about `0xFFFF` after the segment's: RFC 4733 section 2.5.2.3), in
///   which case the press goes on and its segments' durations add up.
/// - A press with no end packet is also reported [`END_TIMEOUT`] after its last packet
///   ([`DtmfReceiver::handle_timeout`]), or at [`DtmfReceiver::handle_stream_end`]. A
///   segment arriving after such a report counts as a new press.
/// - A packet with an older timestamp than the newest press is a late one and ignored, if
///   its sequence number is older too; with a newer sequence number the caller's timestamps
///   jumped back (a restarted stream), and it starts a new press.
/// - A packet whose event disagrees with the press its timestamp belongs to is ignored.
/// - Malformed payloads and non-DTMF events are errors that change nothing: the receiver
///   stays usable.
#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    /// [`SEGMENT_SLACK_MS`] in ticks.
    segment_slack: u32,
    pending: Option<Pending>,
    /// The timestamp of the newest press (pending or reported).
    newest: Option<u32>,
    /// The newest sequence number of an accepted packet.
    highest_sequence: Option<u16>,
    out: VecDeque<KeyPress>,
}

impl DtmfReceiver {
    /// A receiver for a telephone-event stream at `clock_rate` Hz (the rate the offer gave
    /// `telephone-event`). Fails with [`DtmfError::UnsupportedClockRate`] outside
    /// [`CLOCK_RATES`] or off a multiple of 50 Hz.
    pub fn new(clock_rate: u32) -> Result<DtmfReceiver, DtmfError> {
        ticks_per_slot(clock_rate)?;
        Ok(DtmfReceiver {
            clock_rate,
            segment_slack: clock_rate * SEGMENT_SLACK_MS / 1000,
            pending: None,
            newest: None,
            highest_sequence: None,
            out: VecDeque::new(),
        })
    }

    /// One RTP packet of the telephone-event payload type, received at `now`: its RTP
    /// `timestamp`, `sequence` number, `marker` bit and payload. Key presses it completes
    /// are queued for [`DtmfReceiver::poll_keypress`] (at most two: a predecessor whose end
    /// was lost, then this one). Errors name a malformed payload or a non-DTMF event; the
    /// packet is then skipped and nothing changes.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        timestamp: u32,
        sequence: u16,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), DtmfError> {
        let packet = TelephoneEvent::parse(payload)?;
        if digit_of(packet.event).is_none() {
            return Err(DtmfError::UnsupportedEvent {
                event: packet.event,
            });
        }
        let sequence_ahead = self
            .highest_sequence
            .is_none_or(|highest| is_ahead_u16(sequence, highest));
        if sequence_ahead {
            self.highest_sequence = Some(sequence);
        }
        match self.newest {
            Some(newest) if timestamp == newest => {
                if self.pending.is_none() {
                    return Ok(()); // that press was reported: a redundant end or a retransmit
                }
            }
            Some(newest) if is_ahead_u32(newest, timestamp) && !sequence_ahead => {
                return Ok(()); // a late packet of an earlier press
            }
            _ => self.begin(now, timestamp, marker, packet.event),
        }
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        if pending.event != packet.event {
            return Ok(()); // contradicts the press its timestamp belongs to
        }
        pending.duration = pending.duration.max(packet.duration);
        pending.last_heard = now;
        if packet.end {
            if let Some(pending) = self.pending.take() {
                self.report(pending, true);
            }
        }
        Ok(())
    }

    /// Time passed: a press whose last packet is [`END_TIMEOUT`] old and that never showed
    /// an end packet is reported now.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(pending) = self.pending {
            if now.saturating_duration_since(pending.last_heard) >= END_TIMEOUT {
                self.pending = None;
                self.report(pending, false);
            }
        }
    }

    /// The caller's stream ended or restarted (hangup, new SSRC): a press still waiting for
    /// its end is reported now, and the receiver forgets the stream's timestamps and
    /// sequence numbers.
    pub fn handle_stream_end(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.report(pending, false);
        }
        self.newest = None;
        self.highest_sequence = None;
    }

    /// When [`DtmfReceiver::handle_timeout`] is due: [`END_TIMEOUT`] after the last packet of
    /// a press still waiting for its end; `None` when none is.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .and_then(|pending| pending.last_heard.checked_add(END_TIMEOUT))
    }

    /// The next key press, oldest first.
    pub fn poll_keypress(&mut self) -> Option<KeyPress> {
        self.out.pop_front()
    }

    /// A packet with a timestamp not yet heard: a new press, or the next segment of the
    /// pending one.
    fn begin(&mut self, now: Instant, timestamp: u32, marker: bool, event: u8) {
        self.newest = Some(timestamp);
        let mut earlier_ticks = 0;
        if let Some(previous) = self.pending.take() {
            let step = timestamp.wrapping_sub(previous.timestamp);
            let continues = !marker
                && event == previous.event
                && step.abs_diff(MAX_SEGMENT_TICKS) <= self.segment_slack;
            if continues {
                // The previous segment lasted until this one began, capped at what its
                // duration field can say (a sender may start the next segment a packet
                // late, as libwebrtc does).
                let segment = step
                    .min(MAX_SEGMENT_TICKS)
                    .max(u32::from(previous.duration));
                earlier_ticks = previous.earlier_ticks + u64::from(segment);
            } else {
                self.report(previous, false);
            }
        }
        self.pending = Some(Pending {
            timestamp,
            event,
            earlier_ticks,
            duration: 0,
            last_heard: now,
        });
    }

    fn report(&mut self, pending: Pending, end_seen: bool) {
        let Some(digit) = digit_of(pending.event) else {
            return; // only DTMF events become pending
        };
        let ticks = pending.earlier_ticks + u64::from(pending.duration);
        let duration_ms = ticks * 1000 / u64::from(self.clock_rate);
        self.out.push_back(KeyPress {
            digit,
            duration_ms: u32::try_from(duration_ms).unwrap_or(u32::MAX),
            end_seen,
        });
    }
}

/// Whether RTP timestamp `a` is after `b` (less than half the 32-bit space ahead).
fn is_ahead_u32(a: u32, b: u32) -> bool {
    (1..=i32::MAX as u32).contains(&a.wrapping_sub(b))
}

/// Whether sequence number `a` is after `b` (less than half the 16-bit space ahead).
fn is_ahead_u16(a: u16, b: u16) -> bool {
    (1..=i16::MAX as u16).contains(&a.wrapping_sub(b))
}

// ----- sending -----

/// What one 20 ms slot of a DTMF sequence carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutEvent {
    /// Send one RTP packet of the telephone-event payload type.
    Event {
        /// The payload.
        payload: [u8; PAYLOAD_LEN],
        /// The RTP marker bit: set on the first packet of each event.
        marker: bool,
        /// The packet's RTP timestamp minus the RTP time of the sequence's first slot: the
        /// start of the event (or of its segment), in clock ticks. The caller adds the RTP
        /// time of the slot it sent the sequence's first packet in (wrapping).
        timestamp_offset_ticks: u32,
    },
    /// A silent slot between two tones: send silence audio or nothing, but no bot audio.
    Gap,
}

/// The bot's digits as RFC 4733 events, one slot at a time.
///
/// ## Schedule
///
/// Each digit is a tone of `duration_ms` rounded up to whole 20 ms slots, one packet a slot:
/// the first has the marker bit, each carries the ticks since the tone began including its
/// own slot (160, 320, … at 8 kHz), the last has the E bit. That final packet is sent again
/// in the two following slots (three times in all, RFC 4733 section 2.5.1.4), which are the
/// first two of the gap; the rest of the gap, `gap_ms` rounded up to whole slots, is
/// [`OutEvent::Gap`]. After the last digit's third end packet the sequence is done: no
/// trailing gap.
///
/// A tone longer than `0xFFFF` ticks (1.37 s at 48 kHz) is split into segments of the
/// largest whole number of slots that fits (68 slots at 48 kHz, 409 at 8 kHz): the next
/// segment's packets carry the timestamp where it begins and no marker, and the E bit comes
/// only in the last segment. A segment's last packet is not repeated (a slot carries one
/// packet); the receiver learns its length from the next segment's timestamp.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    events: Vec<u8>,
    tone_slots: u32,
    gap_slots: u32,
    ticks_per_slot: u32,
    slots_per_segment: u32,
    next_slot: u64,
    total_slots: u64,
}

impl DtmfSender {
    /// A sequence for `digits` (`0-9 * # A-D`, `a-d` accepted as `A-D`), each a tone of
    /// `duration_ms` (within [`DURATION_MS`]) with `gap_ms` (within [`GAP_MS`]) of silence
    /// between tones, on a telephone-event clock of `clock_rate` Hz. Errors name the first
    /// problem: [`DtmfError::NoDigits`], [`DtmfError::TooManyDigits`],
    /// [`DtmfError::InvalidDigit`] (with the character and its position),
    /// [`DtmfError::DurationOutOfRange`], [`DtmfError::GapOutOfRange`],
    /// [`DtmfError::UnsupportedClockRate`].
    pub fn new(
        digits: &str,
        duration_ms: u32,
        gap_ms: u32,
        clock_rate: u32,
    ) -> Result<DtmfSender, DtmfError> {
        if digits.is_empty() {
            return Err(DtmfError::NoDigits);
        }
        let count = digits.chars().count();
        if count > MAX_DIGITS {
            return Err(DtmfError::TooManyDigits {
                count,
                max: MAX_DIGITS,
            });
        }
        let events = digits
            .chars()
            .enumerate()
            .map(|(position, digit)| {
                event_of(digit).ok_or(DtmfError::InvalidDigit { digit, position })
            })
            .collect::<Result<Vec<u8>, DtmfError>>()?;
        if !DURATION_MS.contains(&duration_ms) {
            return Err(DtmfError::DurationOutOfRange {
                duration_ms,
                min: *DURATION_MS.start(),
                max: *DURATION_MS.end(),
            });
        }
        if !GAP_MS.contains(&gap_ms) {
            return Err(DtmfError::GapOutOfRange {
                gap_ms,
                min: *GAP_MS.start(),
                max: *GAP_MS.end(),
            });
        }
        let ticks_per_slot = ticks_per_slot(clock_rate)?;
        let tone_slots = duration_ms.div_ceil(SLOT_MS);
        let gap_slots = gap_ms.div_ceil(SLOT_MS);
        let period = u64::from(tone_slots + gap_slots);
        let total_slots =
            events.len() as u64 * period - u64::from(gap_slots) + u64::from(END_PACKET_SENDS - 1);
        Ok(DtmfSender {
            events,
            tone_slots,
            gap_slots,
            ticks_per_slot,
            slots_per_segment: MAX_SEGMENT_TICKS / ticks_per_slot,
            next_slot: 0,
            total_slots,
        })
    }

    /// What the next 20 ms slot carries; `None` once the sequence is done (and ever after).
    /// Call it once per slot of the call's schedule, from the slot the sequence starts in.
    pub fn next_packet(&mut self) -> Option<OutEvent> {
        if self.is_done() {
            return None;
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let period = u64::from(self.tone_slots + self.gap_slots);
        let index = usize::try_from(slot / period).ok()?;
        let event = *self.events.get(index)?;
        let tone_start = slot / period * period;
        let in_tone = (slot % period) as u32;
        let end_sends_after = END_PACKET_SENDS - 1;
        let (packet_slot, end) = if in_tone + 1 < self.tone_slots {
            (in_tone, false)
        } else if in_tone < self.tone_slots + end_sends_after {
            (self.tone_slots - 1, true) // the final packet and its repeats
        } else {
            return Some(OutEvent::Gap);
        };
        let segment = packet_slot / self.slots_per_segment;
        let in_segment = packet_slot % self.slots_per_segment;
        let segment_start = tone_start + u64::from(segment * self.slots_per_segment);
        let duration = (in_segment + 1) * self.ticks_per_slot;
        let payload = TelephoneEvent {
            event,
            end,
            volume: SEND_VOLUME,
            duration: u16::try_from(duration).unwrap_or(u16::MAX),
        }
        .encode();
        Some(OutEvent::Event {
            payload,
            marker: in_tone == 0,
            // RTP time wraps: the truncation is the arithmetic we want.
            timestamp_offset_ticks: (segment_start * u64::from(self.ticks_per_slot)) as u32,
        })
    }

    /// Whether every slot of the sequence was handed out: the last end packet went out with
    /// the previous [`DtmfSender::next_packet`], so the bot may hear `dtmf.sent` and its
    /// audio may resume.
    pub fn is_done(&self) -> bool {
        self.next_slot >= self.total_slots
    }

    /// Slots the whole sequence takes, from the first tone to the last end packet: how long
    /// the bot's audio is paused, in 20 ms.
    pub fn total_slots(&self) -> u64 {
        self.total_slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn t(ms: u64) -> Instant {
        // One base instant per test process is enough: only differences matter.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn rng(name: &str) -> StdRng {
        let seed = std::env::var("DTMF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        println!("{name}: DTMF_SEED={seed}");
        StdRng::seed_from_u64(seed)
    }

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .encode()
    }

    fn drain(receiver: &mut DtmfReceiver) -> Vec<KeyPress> {
        std::iter::from_fn(|| receiver.poll_keypress()).collect()
    }

    fn digits(presses: &[KeyPress]) -> String {
        presses.iter().map(|p| p.digit).collect()
    }

    /// A packet as it crossed the wire: arrival time, timestamp, sequence, marker, payload.
    type Wire = (u64, u32, u16, bool, [u8; 4]);

    /// Every packet of a sender, stamped with `base` and sequence numbers from `seq0`; the
    /// arrival time is the slot's.
    fn wire(mut sender: DtmfSender, base: u32, seq0: u16) -> Vec<Wire> {
        let mut packets = Vec::new();
        let mut slot = 0u64;
        let mut seq = seq0;
        while let Some(out) = sender.next_packet() {
            if let OutEvent::Event {
                payload,
                marker,
                timestamp_offset_ticks,
            } = out
            {
                packets.push((
                    slot * 20,
                    base.wrapping_add(timestamp_offset_ticks),
                    seq,
                    marker,
                    payload,
                ));
            }
            // Audio packets between events take sequence numbers too.
            seq = seq.wrapping_add(1);
            slot += 1;
        }
        assert!(sender.is_done());
        packets
    }

    fn receive(receiver: &mut DtmfReceiver, packets: &[Wire]) -> Vec<KeyPress> {
        let mut presses = Vec::new();
        for &(at, ts, seq, marker, payload) in packets {
            receiver.handle_timeout(t(at));
            receiver
                .handle_packet(t(at), ts, seq, marker, &payload)
                .unwrap();
            presses.extend(drain(receiver));
        }
        presses
    }

    // ----- payload -----

    #[test]
    fn dtmf_payload_round_trips_and_matches_the_rfc_layout() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 0x0320,
        };
        assert_eq!(event.encode(), [11, 0x8A, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&event.encode()).unwrap(), event);
        // The R bit is ignored; the volume keeps its 6 bits.
        let parsed = TelephoneEvent::parse(&[5, 0x40 | 0x3F, 0, 160]).unwrap();
        assert_eq!(
            parsed,
            TelephoneEvent {
                event: 5,
                end: false,
                volume: 63,
                duration: 160
            }
        );
        let loud = TelephoneEvent {
            volume: 0xFF,
            ..parsed
        };
        assert_eq!(loud.encode()[1], 0x3F);
    }

    #[test]
    fn dtmf_short_payloads_are_rejected_and_long_ones_read_their_first_event() {
        for len in 0..4 {
            assert_eq!(
                TelephoneEvent::parse(&[0; 3][..len.min(3)]),
                Err(DtmfError::ShortPayload { len: len.min(3) })
            );
        }
        let first = TelephoneEvent::parse(&[1, 0x80, 0, 160, 2, 0, 0, 80]).unwrap();
        assert_eq!((first.event, first.end, first.duration), (1, true, 160));
    }

    #[test]
    fn dtmf_digits_map_both_ways() {
        let keys = "0123456789*#ABCD";
        for (event, digit) in keys.chars().enumerate() {
            assert_eq!(digit_of(event as u8), Some(digit));
            assert_eq!(event_of(digit), Some(event as u8));
        }
        assert_eq!(event_of('c'), Some(14));
        for event in 16..=255 {
            assert_eq!(digit_of(event), None);
        }
        for digit in ['E', 'e', 'w', ',', ' ', '+', 'é', '٣'] {
            assert_eq!(event_of(digit), None, "{digit}");
        }
    }

    #[test]
    fn dtmf_errors_say_whose_fault() {
        assert_eq!(DtmfError::ShortPayload { len: 2 }.fault(), Fault::Caller);
        assert!(DtmfError::ShortPayload { len: 2 }.retryable());
        assert_eq!(DtmfError::NoDigits.fault(), Fault::Bot);
        assert!(!DtmfError::NoDigits.retryable());
        assert_eq!(
            DtmfError::UnsupportedClockRate { rate: 1 }.fault(),
            Fault::Internal
        );
        let err = DtmfError::InvalidDigit {
            digit: 'x',
            position: 2,
        };
        assert_eq!(err.code(), "invalid_dtmf_digit");
        assert!(err.to_string().contains("'x'"), "{err}");
    }

    // ----- receiver -----

    /// How Chromium/libwebrtc sends a 100 ms press of `event` at 8 kHz starting at `ts`:
    /// an update every 20 ms, the last one three times with the E bit.
    fn press(at: u64, ts: u32, seq: u16, event: u8) -> Vec<Wire> {
        let mut packets: Vec<Wire> = (0..5u16)
            .map(|i| {
                (
                    at + 20 * u64::from(i),
                    ts,
                    seq.wrapping_add(i),
                    i == 0,
                    payload(event, i == 4, 160 * (i + 1)),
                )
            })
            .collect();
        for i in 5..7u16 {
            packets.push((
                at + 20 * u64::from(i),
                ts,
                seq.wrapping_add(i),
                false,
                payload(event, true, 800),
            ));
        }
        packets
    }

    #[test]
    fn dtmf_receiver_reports_each_press_once_despite_redundant_ends() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        let mut packets = press(0, 1_000, 10, 1);
        packets.extend(press(200, 2_600, 30, 2));
        packets.extend(press(400, 4_200, 50, 11));
        let presses = receive(&mut receiver, &packets);
        assert_eq!(digits(&presses), "12#");
        assert!(presses.iter().all(|p| p.duration_ms == 100 && p.end_seen));
        receiver.handle_timeout(t(10_000));
        assert!(drain(&mut receiver).is_empty());
        assert_eq!(receiver.poll_timeout(), None);
    }

    #[test]
    fn dtmf_receiver_ignores_duplicates_and_reordering() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        let mut first = press(0, 1_000, 10, 5);
        let second = press(200, 2_600, 30, 5);
        // Reorder within the first press, duplicate its updates and one end, and let two of
        // its repeated ends arrive after the second press began.
        first.swap(1, 2);
        first.swap(3, 4);
        let late_ends: Vec<Wire> = first.drain(5..).collect();
        first.insert(2, first[1]);
        first.push(first[3]);
        let mut packets = first;
        packets.extend(second[..2].iter().copied());
        packets.extend(late_ends);
        packets.extend(second[2..].iter().copied());
        packets.extend(second.iter().copied()); // the whole second press again
        let presses = receive(&mut receiver, &packets);
        assert_eq!(
            presses,
            vec![
                KeyPress {
                    digit: '5',
                    duration_ms: 100,
                    end_seen: true
                };
                2
            ]
        );
    }

    #[test]
    fn dtmf_receiver_reports_a_press_whose_ends_were_lost_when_the_next_begins() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        let mut packets = press(0, 1_000, 10, 3);
        packets.retain(|p| TelephoneEvent::parse(&p.4).map(|e| !e.end).unwrap());
        assert_eq!(packets.len(), 4);
        // The next press's first packets were lost too: it begins unmarked.
        packets.extend(press(200, 2_600, 30, 3).into_iter().skip(2));
        let presses = receive(&mut receiver, &packets);
        assert_eq!(
            presses,
            vec![
                KeyPress {
                    digit: '3',
                    duration_ms: 80,
                    end_seen: false
                },
                KeyPress {
                    digit: '3',
                    duration_ms: 100,
                    end_seen: true
                },
            ]
        );
    }

    #[test]
    fn dtmf_receiver_reports_a_lone_press_after_the_end_timeout() {
        let mut receiver = DtmfReceiver::new(48000).unwrap();
        for i in 0..3u16 {
            let at = t(20 * u64::from(i));
            receiver
                .handle_packet(at, 77, i, i == 0, &payload(9, false, 960 * (i + 1)))
                .unwrap();
        }
        assert_eq!(receiver.poll_timeout(), Some(t(40) + END_TIMEOUT));
        receiver.handle_timeout(t(40) + END_TIMEOUT - Duration::from_millis(1));
        assert!(drain(&mut receiver).is_empty());
        receiver.handle_timeout(t(40) + END_TIMEOUT);
        assert_eq!(
            drain(&mut receiver),
            vec![KeyPress {
                digit: '9',
                duration_ms: 60,
                end_seen: false
            }]
        );
        assert_eq!(receiver.poll_timeout(), None);
        // Its end packets arriving after all are not a second press.
        receiver
            .handle_packet(t(2_000), 77, 5, false, &payload(9, true, 4800))
            .unwrap();
        assert!(drain(&mut receiver).is_empty());
    }

    #[test]
    fn dtmf_receiver_reports_a_pending_press_at_stream_end_and_starts_afresh() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        receiver
            .handle_packet(t(0), 5_000, 100, true, &payload(0, false, 160))
            .unwrap();
        receiver.handle_stream_end();
        assert_eq!(digits(&drain(&mut receiver)), "0");
        // A restarted stream may reuse anything, even that timestamp.
        receiver
            .handle_packet(t(50), 5_000, 7, true, &payload(4, true, 800))
            .unwrap();
        assert_eq!(digits(&drain(&mut receiver)), "4");
    }

    #[test]
    fn dtmf_receiver_survives_timestamp_and_sequence_wrap() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        let mut packets = press(0, u32::MAX - 500, u16::MAX - 3, 7);
        packets.extend(press(200, 1_100, 16, 8));
        // A late end of the first press, after the wrap: older on both counts.
        packets.push((
            400,
            u32::MAX - 500,
            u16::MAX - 1,
            false,
            payload(7, true, 800),
        ));
        let presses = receive(&mut receiver, &packets);
        assert_eq!(digits(&presses), "78");
    }

    #[test]
    fn dtmf_receiver_takes_a_timestamp_jump_back_with_newer_sequence_as_a_new_press() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        let mut packets = press(0, 900_000, 10, 1);
        packets.extend(press(200, 3_000, 30, 2));
        assert_eq!(digits(&receive(&mut receiver, &packets)), "12");
    }

    #[test]
    fn dtmf_receiver_joins_the_segments_of_a_long_press() {
        // libwebrtc's way at 48 kHz: the segment's final packet says 0xFFFF, and the next
        // segment starts at the current packet's time, one interval past 0xFFFF.
        let mut receiver = DtmfReceiver::new(48000).unwrap();
        let ts = 4_000_000_000u32;
        let mut seq = 0u16;
        let mut at = 0u64;
        let mut send = |receiver: &mut DtmfReceiver, ts: u32, marker, end, duration| {
            receiver
                .handle_packet(t(at), ts, seq, marker, &payload(12, end, duration))
                .unwrap();
            seq = seq.wrapping_add(1);
            at += 20;
        };
        for i in 1..=68u32 {
            send(&mut receiver, ts, i == 1, false, (960 * i) as u16);
        }
        send(&mut receiver, ts, false, false, 0xFFFF);
        let second = ts.wrapping_add(69 * 960);
        let first_duration = 69 * 960 - 0xFFFF;
        for i in 0..30u32 {
            send(
                &mut receiver,
                second,
                false,
                false,
                (first_duration + 960 * i) as u16,
            );
        }
        assert!(drain(&mut receiver).is_empty());
        for _ in 0..3 {
            send(
                &mut receiver,
                second,
                false,
                true,
                (first_duration + 960 * 30) as u16,
            );
        }
        assert_eq!(
            drain(&mut receiver),
            vec![KeyPress {
                digit: 'A',
                duration_ms: 99 * 20,
                end_seen: true
            }]
        );
    }

    #[test]
    fn dtmf_receiver_keeps_a_marked_press_of_the_same_key_apart() {
        // Same key again 0xFFFF ticks later, the first press's ends lost: the marker says
        // it is a new press, not a segment.
        let mut receiver = DtmfReceiver::new(48000).unwrap();
        receiver
            .handle_packet(t(0), 0, 0, true, &payload(1, false, 960))
            .unwrap();
        receiver
            .handle_packet(t(1365), 0xFFFF, 1, true, &payload(1, true, 4800))
            .unwrap();
        assert_eq!(
            drain(&mut receiver),
            vec![
                KeyPress {
                    digit: '1',
                    duration_ms: 20,
                    end_seen: false
                },
                KeyPress {
                    digit: '1',
                    duration_ms: 100,
                    end_seen: true
                }
            ]
        );
    }

    #[test]
    fn dtmf_receiver_errors_change_nothing() {
        let mut receiver = DtmfReceiver::new(8000).unwrap();
        receiver
            .handle_packet(t(0), 100, 1, true, &payload(6, false, 160))
            .unwrap();
        assert_eq!(
            receiver.handle_packet(t(20), 100, 2, false, &[6, 0x80]),
            Err(DtmfError::ShortPayload { len: 2 })
        );
        assert_eq!(
            receiver.handle_packet(t(20), 900, 3, true, &payload(16, true, 160)),
            Err(DtmfError::UnsupportedEvent { event: 16 })
        );
        // A packet contradicting its press's event is ignored.
        receiver
            .handle_packet(t(30), 100, 4, false, &payload(2, true, 320))
            .unwrap();
        assert!(drain(&mut receiver).is_empty());
        receiver
            .handle_packet(t(40), 100, 5, false, &payload(6, true, 480))
            .unwrap();
        assert_eq!(
            drain(&mut receiver),
            vec![KeyPress {
                digit: '6',
                duration_ms: 60,
                end_seen: true
            }]
        );
    }

    #[test]
    fn dtmf_receiver_rejects_unsupported_clock_rates() {
        for rate in [0, 7_999, 8_001, 48_050, 96_000, u32::MAX] {
            assert_eq!(
                DtmfReceiver::new(rate).unwrap_err(),
                DtmfError::UnsupportedClockRate { rate }
            );
        }
        assert!(DtmfReceiver::new(16_000).is_ok());
    }

    #[test]
    fn dtmf_receiver_never_panics_on_garbage() {
        let mut rng = rng("dtmf_receiver_never_panics_on_garbage");
        for rate in [8_000, 48_000] {
            let mut receiver = DtmfReceiver::new(rate).unwrap();
            let mut at = 0u64;
            let mut ts = rng.random::<u32>();
            let mut seq = rng.random::<u16>();
            for _ in 0..20_000 {
                let len = rng.random_range(0..10);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if len >= 1 && rng.random_bool(0.7) {
                    bytes[0] %= 16; // mostly DTMF, to reach the state machine
                }
                match rng.random_range(0..10) {
                    0 => ts = rng.random(),
                    1..=3 => ts = ts.wrapping_add(rng.random_range(0..70_000)),
                    4 => ts = ts.wrapping_sub(rng.random_range(0..70_000)),
                    _ => {}
                }
                seq = match rng.random_range(0..10) {
                    0 => rng.random(),
                    1 => seq.wrapping_sub(rng.random_range(0..5)),
                    _ => seq.wrapping_add(1),
                };
                at += rng.random_range(0..100);
                let _ = receiver.handle_packet(t(at), ts, seq, rng.random(), &bytes);
                if rng.random_bool(0.1) {
                    receiver.handle_timeout(t(at + rng.random_range(0..1_000)));
                }
                if rng.random_bool(0.001) {
                    receiver.handle_stream_end();
                }
                let _ = receiver.poll_timeout();
                for press in drain(&mut receiver) {
                    assert!(event_of(press.digit).is_some(), "{press:?}");
                }
            }
        }
    }

    // ----- sender -----

    fn events(sender: DtmfSender) -> Vec<Option<(TelephoneEvent, bool, u32)>> {
        let mut sender = sender;
        std::iter::from_fn(|| sender.next_packet())
            .map(|out| match out {
                OutEvent::Event {
                    payload,
                    marker,
                    timestamp_offset_ticks,
                } => Some((
                    TelephoneEvent::parse(&payload).unwrap(),
                    marker,
                    timestamp_offset_ticks,
                )),
                OutEvent::Gap => None,
            })
            .collect()
    }

    #[test]
    fn dtmf_sender_follows_the_rfc_schedule() {
        // "1#": 100 ms tones (5 slots), 100 ms gap (5 slots) at 8 kHz.
        let sender = DtmfSender::new("1#", 100, 100, 8_000).unwrap();
        assert_eq!(sender.total_slots(), 5 + 5 + 5 + 2);
        let slots = events(sender);
        assert_eq!(slots.len(), 17);
        let tone = |event: u8, offset: u32, slots: &[Option<(TelephoneEvent, bool, u32)>]| {
            for (i, slot) in slots.iter().enumerate() {
                let (packet, marker, ts) = slot.unwrap();
                let last = i >= 4;
                assert_eq!(packet.event, event);
                assert_eq!(packet.end, last, "slot {i}");
                assert_eq!(packet.volume, SEND_VOLUME);
                assert_eq!(packet.duration, 160 * (i.min(4) as u16 + 1));
                assert_eq!(marker, i == 0);
                assert_eq!(ts, offset);
            }
        };
        tone(1, 0, &slots[..7]);
        assert_eq!(&slots[7..10], &[None, None, None]);
        tone(11, 10 * 160, &slots[10..17]);
    }

    #[test]
    fn dtmf_sender_rounds_up_to_whole_slots_and_uses_the_48k_clock() {
        let slots = events(DtmfSender::new("*", 50, 40, 48_000).unwrap());
        assert_eq!(slots.len(), 3 + 2);
        let durations: Vec<u16> = slots.iter().map(|s| s.unwrap().0.duration).collect();
        assert_eq!(durations, [960, 1920, 2880, 2880, 2880]);
    }

    #[test]
    fn dtmf_sender_is_done_after_the_last_end_packet() {
        let mut sender = DtmfSender::new("9", DEFAULT_DURATION_MS, DEFAULT_GAP_MS, 8_000).unwrap();
        for _ in 0..(5 + 2) {
            assert!(!sender.is_done());
            assert!(matches!(sender.next_packet(), Some(OutEvent::Event { .. })));
        }
        assert!(sender.is_done());
        assert_eq!(sender.next_packet(), None);
        assert_eq!(sender.next_packet(), None);
    }

    #[test]
    fn dtmf_sender_segments_a_long_tone_at_48k() {
        let slots = events(DtmfSender::new("0", 2_000, 40, 48_000).unwrap());
        assert_eq!(slots.len(), 100 + 2);
        let packets: Vec<_> = slots.into_iter().map(Option::unwrap).collect();
        assert_eq!(packets[67].0.duration, 68 * 960);
        assert_eq!(packets[67].2, 0);
        assert_eq!(packets[68].0.duration, 960);
        assert_eq!(packets[68].2, 68 * 960);
        assert!(!packets[68].1, "segments carry no marker");
        assert!(packets[..99].iter().all(|p| !p.0.end));
        assert!(packets[99..]
            .iter()
            .all(|p| p.0.end && p.0.duration == 32 * 960));
        assert!(packets
            .iter()
            .all(|p| u32::from(p.0.duration) <= MAX_SEGMENT_TICKS));
    }

    #[test]
    fn dtmf_sender_rejects_bad_requests_with_named_errors() {
        assert_eq!(
            DtmfSender::new("12x4", 100, 60, 8_000).unwrap_err(),
            DtmfError::InvalidDigit {
                digit: 'x',
                position: 2
            }
        );
        let err = DtmfSender::new("1 2", 100, 60, 8_000).unwrap_err();
        assert_eq!(
            err,
            DtmfError::InvalidDigit {
                digit: ' ',
                position: 1
            }
        );
        assert_eq!(err.fault(), Fault::Bot);
        assert_eq!(
            DtmfSender::new("", 100, 60, 8_000).unwrap_err(),
            DtmfError::NoDigits
        );
        assert_eq!(
            DtmfSender::new(&"1".repeat(33), 100, 60, 8_000).unwrap_err(),
            DtmfError::TooManyDigits { count: 33, max: 32 }
        );
        assert!(DtmfSender::new(&"1".repeat(32), 100, 60, 8_000).is_ok());
        for duration_ms in [0, 39, 2_001, u32::MAX] {
            assert_eq!(
                DtmfSender::new("1", duration_ms, 60, 8_000).unwrap_err(),
                DtmfError::DurationOutOfRange {
                    duration_ms,
                    min: 40,
                    max: 2_000
                }
            );
        }
        for gap_ms in [0, 39, 2_001] {
            assert_eq!(
                DtmfSender::new("1", 100, gap_ms, 8_000).unwrap_err(),
                DtmfError::GapOutOfRange {
                    gap_ms,
                    min: 40,
                    max: 2_000
                }
            );
        }
        assert_eq!(
            DtmfSender::new("1", 100, 60, 8_025).unwrap_err(),
            DtmfError::UnsupportedClockRate { rate: 8_025 }
        );
        assert!(DtmfSender::new("abcdABCD", 40, 40, 8_000).is_ok());
    }

    #[test]
    fn dtmf_sender_never_panics_on_any_request() {
        let mut rng = rng("dtmf_sender_never_panics_on_any_request");
        const CHARS: &[char] = &['1', '#', '*', 'a', 'D', 'x', ' ', 'é', '\u{0}', '9'];
        for _ in 0..2_000 {
            let len = rng.random_range(0..40);
            let digits: String = (0..len)
                .map(|_| CHARS[rng.random_range(0..CHARS.len())])
                .collect();
            let duration = rng.random_range(0..2_500);
            let gap = rng.random_range(0..2_500);
            let rate = [8_000, 48_000, 16_000, 0, 8_025][rng.random_range(0..5)];
            if let Ok(mut sender) = DtmfSender::new(&digits, duration, gap, rate) {
                let total = sender.total_slots();
                let mut slots = 0;
                while sender.next_packet().is_some() {
                    slots += 1;
                }
                assert_eq!(slots, total);
            }
        }
    }

    // ----- round trips -----

    fn round_trip(keys: &str, duration_ms: u32, gap_ms: u32, rate: u32, base: u32) {
        let sender = DtmfSender::new(keys, duration_ms, gap_ms, rate).unwrap();
        let mut receiver = DtmfReceiver::new(rate).unwrap();
        let presses = receive(&mut receiver, &wire(sender, base, u16::MAX - 20));
        assert_eq!(digits(&presses), keys.to_ascii_uppercase(), "{rate} Hz");
        for press in &presses {
            assert!(press.end_seen);
            assert!(
                press.duration_ms >= duration_ms && press.duration_ms < duration_ms + SLOT_MS,
                "{press:?} for {duration_ms} ms at {rate} Hz"
            );
        }
    }

    #[test]
    fn dtmf_round_trip_yields_the_digits_in_order_with_their_durations() {
        for rate in [8_000, 48_000] {
            round_trip("1#", DEFAULT_DURATION_MS, DEFAULT_GAP_MS, rate, 12_345);
            round_trip("0123456789*#ABCD", 40, 40, rate, 0);
            round_trip("3*", 110, 75, rate, u32::MAX - 1_000); // RTP time wraps mid-sequence
            round_trip("55", 2_000, 2_000, rate, u32::MAX - 100_000); // segments at 48 kHz
            round_trip("abcd", 1_999, 41, rate, 7);
        }
    }

    #[test]
    fn dtmf_round_trip_survives_duplication_and_reordering() {
        let mut rng = rng("dtmf_round_trip_survives_duplication_and_reordering");
        for _ in 0..200 {
            let rate = if rng.random_bool(0.5) { 8_000 } else { 48_000 };
            let keys: String = (0..rng.random_range(1..8))
                .map(|_| digit_of(rng.random_range(0..16)).unwrap())
                .collect();
            let sender = DtmfSender::new(&keys, rng.random_range(40..300), 40, rate).unwrap();
            let mut packets = wire(sender, rng.random(), rng.random());
            for _ in 0..packets.len() / 4 {
                let i = rng.random_range(0..packets.len());
                let copy = packets[i];
                packets.insert(rng.random_range(i..=packets.len()), copy);
            }
            for _ in 0..packets.len() / 4 {
                let i = rng.random_range(0..packets.len() - 1);
                packets.swap(i, i + 1);
            }
            let mut receiver = DtmfReceiver::new(rate).unwrap();
            let presses = receive(&mut receiver, &packets);
            receiver.handle_stream_end();
            let mut all = presses;
            all.extend(drain(&mut receiver));
            assert_eq!(digits(&all), keys, "{packets:?}");
        }
    }
}

//! The call's audio codec: chosen once from the caller's offer, then the single source of
//! every codec-dependent number (payload type, RTP clock rate, PCM rate and samples per
//! 20 ms frame) and of the encoder and decoder.
//!
//! ## Contract
//!
//! - [`negotiate`] picks the codec from the offer's audio formats, in our order of preference.
//! - The call's speech PCM has one rate from LMNT to the encoder, [`Codec::pcm_rate`]:
//!   the playout produces 20 ms frames of it and [`Codec::encoder`] turns each into one RTP
//!   payload at the moment it is sent; RTP time is [`Codec::rtp_timestamp`] of the frame's
//!   slot (`slot × clock_rate / 50`), never derived from a clock, and the RTP clock rate is
//!   the codec's whatever the PCM rate.
//! - [`Codec::caller_decoder`] turns the caller's payloads into the bot's PCM, s16le mono
//!   16 kHz, 20 ms a frame, whatever the codec.
//! - [`loss`]: the caller's receiver reports drive the Opus encoder's FEC, expected loss and
//!   bitrate ([`FrameEncoder::apply_opus`]); [`CallerDecoder::recover`] rebuilds a lost
//!   caller packet from the next one's FEC.
//! - [`dtmf`]: RFC 4733 telephone-events (DTMF) both ways, on the clock rate the offer gives
//!   `telephone-event` beside the codec (the codec's own rate when offered).
//!
//! Opus is preferred, and encodes LMNT's rate natively; a phone leg that offers only G.711
//! (PCMU or PCMA) gets it, with LMNT asked for 8 kHz. Either way nothing is resampled on the
//! way out. Adding a codec means a
//! [`CodecKind`] variant, its numbers below, an encoder and a decoder variant, and its place
//! in [`PREFERENCE`]; nothing outside this module and the offer parser changes.

pub mod dtmf;
pub mod g711;
pub mod loss;
pub mod opus;

use crate::audio::{AudioError, FRAME_MS};
use crate::rtc::OfferedFormat;
use g711::{G711Decoder, G711Encoder, Law, G711_RATE};
pub use opus::{CallerAudioDecoder, OpusEncoder, OpusSettings};

/// Frames per second at [`FRAME_MS`].
const FRAMES_PER_SECOND: u32 = (1000 / FRAME_MS) as u32;
/// Sample rate of the caller's audio as the bot gets it, whatever the codec (what a speech
/// recogniser wants).
pub const CALLER_RATE: u32 = 16_000;
/// Samples of caller audio in 20 ms at [`CALLER_RATE`] (640 bytes as s16le).
pub const CALLER_FRAME_SAMPLES: usize = 320;
/// Largest RTP payload any negotiated codec produces for one 20 ms frame (Opus' 1275-byte
/// maximum, RFC 6716 section 3.2.1).
pub const MAX_FRAME_PAYLOAD_BYTES: usize = opus::MAX_OPUS_PACKET;

/// The codecs this daemon answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    /// Opus (RFC 7587): 48 kHz RTP clock, fullband mono voice.
    Opus,
    /// G.711 µ-law (RFC 3551): 8 kHz, the phone network's codec.
    Pcmu,
    /// G.711 A-law (RFC 3551): 8 kHz.
    Pcma,
}

/// Our order of preference when an offer carries several codecs: Opus sounds far better; a
/// phone leg that offers only G.711 gets G.711.
const PREFERENCE: [CodecKind; 3] = [CodecKind::Opus, CodecKind::Pcmu, CodecKind::Pcma];

impl CodecKind {
    /// The SDP encoding name (`a=rtpmap:PT NAME/RATE`), as written in answers.
    pub fn sdp_name(self) -> &'static str {
        match self {
            CodecKind::Opus => "opus",
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
        }
    }

    /// The RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            CodecKind::Opus => 48_000,
            CodecKind::Pcmu | CodecKind::Pcma => G711_RATE,
        }
    }

    /// Channels as signalled in SDP (Opus is always signalled as 2, RFC 7587 section 7).
    pub fn sdp_channels(self) -> u16 {
        match self {
            CodecKind::Opus => 2,
            CodecKind::Pcmu | CodecKind::Pcma => 1,
        }
    }

    /// The `a=fmtp` parameters of our answer.
    pub fn fmtp(self) -> &'static str {
        match self {
            // In-band FEC so the caller can rebuild a lost frame from the next one.
            CodecKind::Opus => "minptime=10;useinbandfec=1",
            CodecKind::Pcmu | CodecKind::Pcma => "",
        }
    }

    fn law(self) -> Option<Law> {
        match self {
            CodecKind::Opus => None,
            CodecKind::Pcmu => Some(Law::Ulaw),
            CodecKind::Pcma => Some(Law::Alaw),
        }
    }

    /// Whether an offered `NAME/RATE[/CHANNELS]` is this codec.
    fn matches(self, format: &OfferedFormat) -> bool {
        format.name.eq_ignore_ascii_case(self.sdp_name()) && format.clock_rate == self.clock_rate()
    }
}

/// The codec a call negotiated: what it is and the payload type the offer gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Which codec.
    pub kind: CodecKind,
    /// The payload type the caller's offer assigned to it; our answer reuses it.
    pub payload_type: u8,
    /// RFC 4733 `telephone-event` (DTMF), when the offer carries it at a clock rate we take.
    pub telephone_event: Option<DtmfFormat>,
}

/// The negotiated `telephone-event` format of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfFormat {
    /// The payload type the caller's offer assigned to it; our answer reuses it.
    pub payload_type: u8,
    /// Its RTP clock rate: the codec's when offered (RFC 4733), else the rate the offer gives
    /// (Firefox offers only 8 kHz beside Opus' 48 kHz, and then, as libwebrtc does, stamps
    /// events on the audio's RTP clock and counts their durations at 8 kHz).
    pub clock_rate: u32,
}

impl Codec {
    /// The RTP clock rate in Hz.
    pub fn clock_rate(&self) -> u32 {
        self.kind.clock_rate()
    }

    /// RTP clock ticks in one 20 ms frame.
    pub fn ticks_per_frame(&self) -> u32 {
        self.clock_rate() / FRAMES_PER_SECOND
    }

    /// The RTP timestamp of frame `slot` (without the stream's random base): `slot` frames of
    /// this codec's clock, wrapping as RTP time does.
    pub fn rtp_timestamp(&self, slot: u64) -> u32 {
        slot.wrapping_mul(u64::from(self.ticks_per_frame())) as u32
    }

    /// `ticks` of the telephone-event clock as ticks of the codec's RTP clock, on which the
    /// events' timestamps run; the two differ only when the offer gave telephone-event
    /// another rate (see [`DtmfFormat::clock_rate`]).
    pub fn event_ticks_on_rtp_clock(&self, ticks: u32) -> u32 {
        let event_rate = self
            .telephone_event
            .map_or(self.clock_rate(), |event| event.clock_rate);
        (u64::from(ticks) * u64::from(self.clock_rate()) / u64::from(event_rate)) as u32
    }

    /// The rate of the call's speech PCM, given the configured LMNT rate (one of
    /// [`crate::audio::INPUT_RATES`]): LMNT is asked for it, the playout's frames carry it
    /// and the encoder takes it, so nothing is resampled on the way out. Opus encodes each of
    /// LMNT's rates natively ([`OpusEncoder`]); G.711 asks LMNT for its own 8 kHz.
    pub fn pcm_rate(&self, configured: u32) -> u32 {
        match self.kind {
            CodecKind::Opus => configured,
            CodecKind::Pcmu | CodecKind::Pcma => G711_RATE,
        }
    }

    /// A fresh encoder for the audio we send, taking 20 ms frames at `pcm_rate` (the call's
    /// [`Codec::pcm_rate`]). Fails on out-of-range settings, and on a rate the codec cannot
    /// take (G.711 takes only 8 kHz: [`AudioError::UnsupportedConversion`]).
    pub fn encoder(
        &self,
        settings: &EncoderSettings,
        pcm_rate: u32,
    ) -> Result<FrameEncoder, AudioError> {
        match self.kind.law() {
            None => Ok(FrameEncoder::Opus(Box::new(OpusEncoder::new(
                &settings.opus,
                pcm_rate,
            )?))),
            Some(_) if pcm_rate != G711_RATE => Err(AudioError::UnsupportedConversion {
                input_rate: pcm_rate,
                output_rate: G711_RATE,
            }),
            Some(law) => Ok(FrameEncoder::G711(G711Encoder::new(law))),
        }
    }

    /// A fresh decoder for the caller's audio (to the bot's 16 kHz PCM).
    pub fn caller_decoder(&self) -> Result<CallerDecoder, AudioError> {
        match self.kind.law() {
            None => Ok(CallerDecoder::Opus(Box::new(CallerAudioDecoder::new()?))),
            Some(law) => Ok(CallerDecoder::G711(Box::new(G711Decoder::new(law)?))),
        }
    }
}

/// Encoder settings of every codec (config `[audio]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncoderSettings {
    /// Opus bitrate, FEC and complexity with no loss reported (the quiet settings).
    pub opus: OpusSettings,
    /// How far the caller's loss reports may move the Opus settings.
    pub adaptation: loss::LossAdaptation,
}

/// Why no codec could be agreed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the offer carries no codec this daemon speaks (offered: {offered}; we speak: {supported})"
)]
pub struct NoCommonCodec {
    /// What the offer carried, as `NAME/RATE` separated by commas.
    pub offered: String,
    /// What we answer with, in order of preference.
    pub supported: String,
}

/// Picks the call's codec from the offer's audio formats (in the offer's order within one
/// preference rank): the first of [`PREFERENCE`] the offer carries, with the offer's
/// `telephone-event` at that codec's clock rate if it has one, else its first
/// `telephone-event` at a rate [`dtmf`] takes.
pub fn negotiate(offered: &[OfferedFormat]) -> Result<Codec, NoCommonCodec> {
    let events = || {
        offered
            .iter()
            .filter(|t| t.name.eq_ignore_ascii_case(dtmf::SDP_NAME))
    };
    PREFERENCE
        .iter()
        .find_map(|&kind| {
            offered.iter().find(|f| kind.matches(f)).map(|f| Codec {
                kind,
                payload_type: f.payload_type,
                telephone_event: events()
                    .find(|t| t.clock_rate == kind.clock_rate())
                    .or_else(|| events().find(|t| dtmf::supports_clock_rate(t.clock_rate)))
                    .map(|t| DtmfFormat {
                        payload_type: t.payload_type,
                        clock_rate: t.clock_rate,
                    }),
            })
        })
        .ok_or_else(|| NoCommonCodec {
            offered: offered
                .iter()
                .map(|f| format!("{}/{}", f.name, f.clock_rate))
                .collect::<Vec<_>>()
                .join(", "),
            supported: PREFERENCE
                .iter()
                .map(|k| format!("{}/{}", k.sdp_name(), k.clock_rate()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The encoder of the negotiated codec: one 20 ms PCM frame in, one RTP payload out.
#[derive(Debug)]
pub enum FrameEncoder {
    /// libopus (boxed: it carries a packet buffer).
    Opus(Box<OpusEncoder>),
    /// G.711 µ-law or A-law.
    G711(G711Encoder),
}

impl FrameEncoder {
    /// Encodes one 20 ms frame at the rate the encoder was made for.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, AudioError> {
        match self {
            FrameEncoder::Opus(encoder) => encoder.encode(pcm),
            FrameEncoder::G711(encoder) => encoder.encode(pcm),
        }
    }

    /// New Opus settings from the next frame on (loss adaptation); G.711 has none and ignores
    /// them. Fails on out-of-range settings, leaving the encoder as it was.
    pub fn apply_opus(&mut self, settings: &OpusSettings) -> Result<(), AudioError> {
        match self {
            FrameEncoder::Opus(encoder) => encoder.apply(settings),
            FrameEncoder::G711(_) => Ok(()),
        }
    }

    /// One frame of silence, cheaper than encoding zeros (see
    /// [`opus::OpusEncoder::encode_silence`]).
    pub fn encode_silence(&mut self) -> Result<Vec<u8>, AudioError> {
        match self {
            FrameEncoder::Opus(encoder) => encoder.encode_silence(),
            FrameEncoder::G711(encoder) => Ok(encoder.encode_silence()),
        }
    }
}

/// The caller's audio decoder of the negotiated codec: RTP payloads in, 16 kHz mono PCM out.
#[derive(Debug)]
pub enum CallerDecoder {
    /// libopus, decoding natively at 16 kHz (boxed: it carries a PCM buffer).
    Opus(Box<CallerAudioDecoder>),
    /// G.711, expanded and resampled from 8 kHz (boxed: it carries a resampler).
    G711(Box<G711Decoder>),
}

impl CallerDecoder {
    /// Decodes one payload: 320 samples per 20 ms it carries. Errors name a bad payload;
    /// the decoder stays usable.
    pub fn decode(&mut self, payload: &[u8]) -> Result<&[i16], AudioError> {
        match self {
            CallerDecoder::Opus(decoder) => decoder.decode(payload),
            CallerDecoder::G711(decoder) => decoder.decode(payload),
        }
    }

    /// 20 ms in place of a lost packet (the codec's concealment).
    pub fn conceal(&mut self) -> Result<&[i16], AudioError> {
        match self {
            CallerDecoder::Opus(decoder) => decoder.conceal(),
            CallerDecoder::G711(decoder) => decoder.conceal(),
        }
    }

    /// Whether `next` carries in-band FEC for the packet before it (Opus LBRR; G.711 never).
    pub fn has_fec(&self, next: &[u8]) -> bool {
        match self {
            CallerDecoder::Opus(_) => opus::has_fec(next),
            CallerDecoder::G711(_) => false,
        }
    }

    /// 20 ms in place of the packet lost just before `next`: rebuilt from `next`'s in-band
    /// FEC (see [`CallerDecoder::has_fec`]), else concealed. Errors name a bad `next`.
    pub fn recover(&mut self, next: &[u8]) -> Result<&[i16], AudioError> {
        match self {
            CallerDecoder::Opus(decoder) => decoder.recover(next),
            CallerDecoder::G711(decoder) => decoder.conceal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(payload_type: u8, name: &str, clock_rate: u32) -> OfferedFormat {
        OfferedFormat {
            payload_type,
            name: name.to_owned(),
            clock_rate,
        }
    }

    #[test]
    fn opus_is_preferred_with_the_offers_payload_type_and_its_dtmf() {
        let codec = negotiate(&[
            format(0, "PCMU", 8000),
            format(101, "telephone-event", 8000),
            format(109, "OPUS", 48000),
            format(110, "telephone-event", 48000),
        ])
        .unwrap();
        assert_eq!(codec.kind, CodecKind::Opus);
        assert_eq!(codec.payload_type, 109);
        assert_eq!(
            codec.telephone_event,
            Some(DtmfFormat {
                payload_type: 110,
                clock_rate: 48000
            }),
            "DTMF at Opus' clock"
        );
        assert_eq!(
            codec.pcm_rate(24_000),
            24_000,
            "LMNT's rate, encoded natively"
        );
        assert_eq!(codec.pcm_rate(8_000), 8_000);
        assert_eq!(codec.rtp_timestamp(3), 2880);
        assert_eq!(
            codec.rtp_timestamp(u64::from(u32::MAX)),
            (u64::from(u32::MAX) * 960) as u32
        );
    }

    #[test]
    fn a_phone_leg_gets_g711_at_8khz_without_resampling() {
        let codec = negotiate(&[format(8, "PCMA", 8000), format(0, "PCMU", 8000)]).unwrap();
        assert_eq!((codec.kind, codec.payload_type), (CodecKind::Pcmu, 0));
        assert_eq!(codec.telephone_event, None);
        assert_eq!(codec.ticks_per_frame(), 160);
        assert_eq!(codec.pcm_rate(24_000), 8_000, "LMNT speaks 8 kHz");
        assert!(matches!(
            codec.encoder(&EncoderSettings::default(), 24_000),
            Err(AudioError::UnsupportedConversion {
                input_rate: 24_000,
                output_rate: 8_000
            })
        ));
        let mut encoder = codec.encoder(&EncoderSettings::default(), 8_000).unwrap();
        assert_eq!(encoder.encode(&[0; 160]).unwrap().len(), 160);
        let codec = negotiate(&[
            format(8, "PCMA", 8000),
            format(101, "telephone-event", 8000),
        ])
        .unwrap();
        assert_eq!(codec.kind, CodecKind::Pcma);
        assert_eq!(
            codec.telephone_event,
            Some(DtmfFormat {
                payload_type: 101,
                clock_rate: 8000
            })
        );
    }

    #[test]
    fn opus_takes_dtmf_at_8khz_when_the_offer_has_no_other() {
        // Firefox's offer: telephone-event only at 8 kHz beside Opus.
        let codec = negotiate(&[
            format(109, "opus", 48000),
            format(101, "telephone-event", 8000),
        ])
        .unwrap();
        assert_eq!(codec.kind, CodecKind::Opus);
        assert_eq!(
            codec.telephone_event,
            Some(DtmfFormat {
                payload_type: 101,
                clock_rate: 8000
            })
        );
        assert_eq!(codec.event_ticks_on_rtp_clock(0xFFFF), 0xFFFF * 6);
        // A rate no 20 ms slot divides is not taken.
        let codec = negotiate(&[
            format(109, "opus", 48000),
            format(101, "telephone-event", 8010),
        ])
        .unwrap();
        assert_eq!(codec.telephone_event, None);
    }

    #[test]
    fn nothing_in_common_names_what_was_offered() {
        let err = negotiate(&[format(9, "G722", 8000), format(111, "opus", 16000)]).unwrap_err();
        assert_eq!(err.offered, "G722/8000, opus/16000");
        assert_eq!(err.supported, "opus/48000, PCMU/8000, PCMA/8000");
    }

    #[test]
    fn encoder_takes_exactly_one_frame() {
        let codec = Codec {
            kind: CodecKind::Opus,
            payload_type: 111,
            telephone_event: None,
        };
        let mut encoder = codec
            .encoder(&EncoderSettings::default(), codec.pcm_rate(24_000))
            .unwrap();
        assert!(!encoder.encode(&[0; 480]).unwrap().is_empty());
        assert!(matches!(
            encoder.encode(&[0; 100]),
            Err(AudioError::FrameLength { got: 100, .. })
        ));
        let mut decoder = codec.caller_decoder().unwrap();
        assert_eq!(decoder.conceal().unwrap().len(), 320);
    }
}

//! Opus (RFC 6716, RTP per RFC 7587): the encoder for audio into the call and the decoder for
//! the caller's audio.

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bitrate, Channels, MutSignals, SampleRate, Signal};

use super::{CALLER_FRAME_SAMPLES, FRAMES_PER_SECOND};
use crate::audio::AudioError;
use crate::config::AudioConfig;

/// Largest Opus packet for one frame (RFC 6716 section 3.2.1: 1275 bytes).
pub const MAX_OPUS_PACKET: usize = 1275;
/// Samples in one 20 ms frame at 48 kHz, the highest rate the encoder takes.
const MAX_FRAME_SAMPLES: usize = 960;
/// Opus' bitrate range in bits per second (libopus accepts 500 to 512000).
pub const OPUS_BITRATE_RANGE: std::ops::RangeInclusive<u32> = 500..=512_000;
/// The longest Opus packet is 120 ms: 1920 samples at 16 kHz.
const CALLER_MAX_PACKET_SAMPLES: usize = 1_920;

/// Encoder settings (config `[audio]`: `opus_bitrate_bps`, `opus_fec`,
/// `opus_expected_loss_pct`, `opus_complexity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    /// Target bitrate, bits per second.
    pub bitrate_bps: u32,
    /// In-band forward error correction (LBRR), so the receiver can rebuild a lost frame.
    pub fec: bool,
    /// Expected packet loss, percent (0 to 100); tunes how much FEC the encoder spends.
    pub expected_loss_pct: u8,
    /// 0 (cheapest) to 10 (best).
    pub complexity: u8,
}

impl Default for OpusSettings {
    /// The quiet settings: 32 kbps, no FEC and no expected loss (stack-notes: "VoIP settings
    /// that worked"), complexity 0: `cargo bench --bench opus_complexity` measures, in the
    /// CELT mode these settings select, a third of the encoder time of complexity 5 and the
    /// lowest log-spectral distance of every level up to 10. Loss the caller reports turns
    /// FEC on ([`super::loss::LossController`]).
    fn default() -> Self {
        OpusSettings {
            bitrate_bps: 32_000,
            fec: false,
            expected_loss_pct: 0,
            complexity: 0,
        }
    }
}

impl OpusSettings {
    /// The settings from the daemon's `[audio]` configuration (not validated; `OpusEncoder::new` does).
    pub fn from_config(cfg: &AudioConfig) -> Self {
        OpusSettings {
            bitrate_bps: cfg.opus_bitrate_bps,
            fec: cfg.opus_fec,
            expected_loss_pct: cfg.opus_expected_loss_pct,
            complexity: cfg.opus_complexity,
        }
    }

    /// Checks every field's range; returns the first offending field.
    pub fn validate(&self) -> Result<(), AudioError> {
        if !OPUS_BITRATE_RANGE.contains(&self.bitrate_bps) {
            return Err(AudioError::InvalidOpusSetting(
                "bitrate_bps must be 500..=512000",
            ));
        }
        if self.expected_loss_pct > 100 {
            return Err(AudioError::InvalidOpusSetting(
                "expected_loss_pct must be 0..=100",
            ));
        }
        if self.complexity > 10 {
            return Err(AudioError::InvalidOpusSetting("complexity must be 0..=10"));
        }
        Ok(())
    }
}

/// A mono VoIP Opus encoder, one 20 ms frame per call.
///
/// Its mode follows FEC ([`OpusEncoder::signal_for`]): CELT (MDCT) while FEC is off, SILK
/// or hybrid while it is on, since only SILK carries in-band FEC.
///
/// It takes PCM at 8, 12, 16, 24 or 48 kHz (RFC 6716 section 2; the RTP clock is 48 kHz
/// whatever the input rate, RFC 7587 section 4.1). Every rate LMNT delivers is among them, so
/// the call's audio reaches the encoder at LMNT's rate, never resampled: a minute of
/// speech at 24 kHz is framed and encoded in 51 ms, against 70 ms resampled to 48 kHz first
/// (`cargo bench --bench audio_pipeline`), and nothing is lost, since 24 kHz PCM carries
/// nothing above 12 kHz.
pub struct OpusEncoder {
    encoder: Encoder,
    /// Samples in one 20 ms frame at the encoder's input rate.
    frame_samples: usize,
    packet: [u8; MAX_OPUS_PACKET],
    /// Silent frames encoded in a row (see [`OpusEncoder::encode_silence`]).
    silent_run: u32,
    /// The last packet the encoder made for silence, repeated after the hangover.
    silence_packet: Vec<u8>,
}

/// Silent frames encoded for real after audio before the encoder's last silence packet is
/// repeated instead: the encoder's 6.5 ms look-ahead and its decay carry the end of the audio
/// into the next packets, and after 100 ms of digital silence its packets are steady.
pub const SILENCE_HANGOVER_FRAMES: u32 = 5;
/// One 20 ms frame of digital silence at any rate the encoder takes (its first
/// `frame_samples`).
static SILENT_FRAME: [i16; MAX_FRAME_SAMPLES] = [0; MAX_FRAME_SAMPLES];

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// Builds and configures an encoder of PCM at `pcm_rate`; fails on out-of-range settings
    /// ([`AudioError::InvalidOpusSetting`]) and on a rate Opus does not take
    /// ([`AudioError::OpusInit`]).
    pub fn new(settings: &OpusSettings, pcm_rate: u32) -> Result<Self, AudioError> {
        settings.validate()?;
        // `SampleRate` takes only the rates Opus encodes; a rate beyond i32 is none of them.
        let rate = SampleRate::try_from(i32::try_from(pcm_rate).unwrap_or(0))
            .map_err(AudioError::OpusInit)?;
        let encoder =
            Encoder::new(rate, Channels::Mono, Application::Voip).map_err(AudioError::OpusInit)?;
        let mut encoder = OpusEncoder {
            encoder,
            frame_samples: (pcm_rate / FRAMES_PER_SECOND) as usize,
            packet: [0; MAX_OPUS_PACKET],
            silent_run: 0,
            silence_packet: Vec::new(),
        };
        encoder.apply(settings)?;
        Ok(encoder)
    }

    /// Changes bitrate, FEC, expected loss, complexity and with FEC the mode
    /// ([`OpusEncoder::signal_for`]) from the next frame on (libopus takes them between
    /// frames and smooths a change of mode; the stream stays continuous). Fails on
    /// out-of-range settings, leaving the encoder as it was.
    pub fn apply(&mut self, settings: &OpusSettings) -> Result<(), AudioError> {
        settings.validate()?;
        let encoder = &mut self.encoder;
        encoder
            .set_signal(Self::signal_for(settings))
            .map_err(AudioError::OpusInit)?;
        // validate() bounded the bitrate to 512000, so the cast is exact.
        encoder
            .set_bitrate(Bitrate::BitsPerSecond(settings.bitrate_bps as i32))
            .map_err(AudioError::OpusInit)?;
        encoder
            .set_inband_fec(settings.fec)
            .map_err(AudioError::OpusInit)?;
        encoder
            .set_packet_loss_perc(settings.expected_loss_pct)
            .map_err(AudioError::OpusInit)?;
        encoder
            .set_complexity(settings.complexity)
            .map_err(AudioError::OpusInit)?;
        Ok(())
    }

    /// The signal hint that picks the encoder's mode. Without FEC it is "music", which at
    /// 24 kbps and above makes libopus code in CELT (MDCT) mode: for speech at LMNT's 24 kHz,
    /// 32 kbps and complexity 0, CELT costs a quarter of the encoder time of the hybrid mode
    /// that "voice" picks (0.08 % of a core per call against 0.29 %) and decodes closer to
    /// the input (log-spectral distance 5.1 dB against 5.5; `cargo bench --bench
    /// opus_complexity`). In-band FEC exists only in SILK, so with FEC on (the caller
    /// reports loss) the hint is "voice": libopus codes SILK or hybrid and carries LBRR.
    /// Below about 16 kbps libopus codes SILK whatever the hint.
    pub fn signal_for(settings: &OpusSettings) -> Signal {
        if settings.fec {
            Signal::Voice
        } else {
            Signal::Music
        }
    }

    /// One 20 ms frame of silence. After [`SILENCE_HANGOVER_FRAMES`] in a row it repeats the
    /// encoder's last silence packet instead of encoding (encoding silence costs about as
    /// much as speech): a call with nothing to say costs no encoder time, and its RTP stream
    /// stays continuous. The first [`OpusEncoder::encode`] after it carries on from the
    /// encoder's silent state, as the caller's decoder does.
    pub fn encode_silence(&mut self) -> Result<Vec<u8>, AudioError> {
        if self.silent_run >= SILENCE_HANGOVER_FRAMES && !self.silence_packet.is_empty() {
            return Ok(self.silence_packet.clone());
        }
        let silence = SILENT_FRAME.get(..self.frame_samples).unwrap_or(&[]);
        let packet = self.encode_frame(silence)?;
        self.silent_run += 1;
        self.silence_packet.clone_from(&packet);
        Ok(packet)
    }

    /// Encodes one 20 ms frame (`pcm_rate / 50` samples; any other length is refused with
    /// [`AudioError::FrameLength`]) into an Opus packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, AudioError> {
        self.silent_run = 0;
        self.encode_frame(pcm)
    }

    fn encode_frame(&mut self, pcm: &[i16]) -> Result<Vec<u8>, AudioError> {
        if pcm.len() != self.frame_samples {
            return Err(AudioError::FrameLength {
                got: pcm.len(),
                expected: self.frame_samples,
            });
        }
        let n = self
            .encoder
            .encode(pcm, &mut self.packet)
            .map_err(AudioError::OpusEncode)?;
        Ok(self.packet.get(..n).unwrap_or(&[]).to_vec())
    }
}

/// Decodes the caller's Opus (any frame size, any bandwidth) to 16 kHz mono PCM for the bot's
/// recogniser. libopus decodes natively at 16 kHz, so no resampler is involved.
pub struct CallerAudioDecoder {
    decoder: Decoder,
    pcm: [i16; CALLER_MAX_PACKET_SAMPLES],
}

impl std::fmt::Debug for CallerAudioDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerAudioDecoder").finish_non_exhaustive()
    }
}

impl CallerAudioDecoder {
    /// A fresh decoder.
    pub fn new() -> Result<Self, AudioError> {
        let decoder =
            Decoder::new(SampleRate::Hz16000, Channels::Mono).map_err(AudioError::OpusInit)?;
        Ok(CallerAudioDecoder {
            decoder,
            pcm: [0; CALLER_MAX_PACKET_SAMPLES],
        })
    }

    /// Decodes one RTP payload: 320 samples per 20 ms of packet (a 60 ms packet gives 960).
    /// Returns [`AudioError::EmptyPayload`] or [`AudioError::BadPayload`] for input libopus
    /// rejects; the decoder stays usable for the next packet.
    pub fn decode(&mut self, payload: &[u8]) -> Result<&[i16], AudioError> {
        if payload.is_empty() {
            return Err(AudioError::EmptyPayload);
        }
        let packet = Packet::try_from(payload).map_err(AudioError::BadPayload)?;
        let out = MutSignals::try_from(&mut self.pcm[..]).map_err(AudioError::BadPayload)?;
        let n = self
            .decoder
            .decode(Some(packet), out, false)
            .map_err(AudioError::BadPayload)?;
        Ok(self.pcm.get(..n).unwrap_or(&[]))
    }

    /// One lost 20 ms packet rebuilt from the in-band FEC (LBRR) that `next`, the packet after
    /// it, carries: 320 samples. When `next` carries none, libopus conceals instead (as
    /// [`CallerAudioDecoder::conceal`]); see [`has_fec`] to tell which. Errors as
    /// [`CallerAudioDecoder::decode`].
    pub fn recover(&mut self, next: &[u8]) -> Result<&[i16], AudioError> {
        if next.is_empty() {
            return Err(AudioError::EmptyPayload);
        }
        let packet = Packet::try_from(next).map_err(AudioError::BadPayload)?;
        let out = MutSignals::try_from(&mut self.pcm[..CALLER_FRAME_SAMPLES])
            .map_err(AudioError::BadPayload)?;
        let n = self
            .decoder
            .decode(Some(packet), out, true)
            .map_err(AudioError::BadPayload)?;
        Ok(self.pcm.get(..n).unwrap_or(&[]))
    }

    /// One lost 20 ms packet: libopus' concealment, 320 samples (fading towards silence when
    /// losses continue).
    pub fn conceal(&mut self) -> Result<&[i16], AudioError> {
        let out = MutSignals::try_from(&mut self.pcm[..CALLER_FRAME_SAMPLES])
            .map_err(AudioError::BadPayload)?;
        let n = self
            .decoder
            .decode(None, out, false)
            .map_err(AudioError::BadPayload)?;
        Ok(self.pcm.get(..n).unwrap_or(&[]))
    }
}

/// Whether an Opus packet carries in-band FEC (LBRR) for the packet before it: libopus 1.5's
/// `opus_packet_has_lbrr`, which the linked libopus may predate. The LBRR flags are the first
/// bits of the SILK layer (one per 20 ms SILK frame, then the side channel's): CELT-only
/// packets carry none. Packets of frame-count code 3 are reported as carrying none (the
/// decoder still uses any FEC they hold; only the count of recovered frames is conservative).
pub fn has_fec(payload: &[u8]) -> bool {
    let Some(&toc) = payload.first() else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 {
        return false; // CELT only
    }
    // SILK frames per Opus frame: 10 and 20 ms give one, 40 ms two, 60 ms three.
    let silk_frames: u32 = match (config, config & 3) {
        (12..=15, _) => 1, // hybrid: 10 or 20 ms
        (_, 2) => 2,
        (_, 3) => 3,
        _ => 1,
    };
    let first = match toc & 3 {
        0 | 1 => payload.get(1),
        2 => match payload.get(1) {
            Some(&len) if len < 252 => payload.get(2),
            Some(_) => payload.get(3),
            None => None,
        },
        _ => None,
    };
    let Some(&first) = first else {
        return false;
    };
    let stereo = toc & 0x04 != 0;
    let mid = (first >> (7 - silk_frames)) & 1 == 1;
    let side = stereo && (first >> (6 - 2 * silk_frames)) & 1 == 1;
    mid || side
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert!(OpusSettings::default().validate().is_ok());
        let bad = OpusSettings {
            complexity: 11,
            ..OpusSettings::default()
        };
        assert!(matches!(
            OpusEncoder::new(&bad, 48_000),
            Err(AudioError::InvalidOpusSetting(_))
        ));
        assert!(matches!(
            OpusEncoder::new(&OpusSettings::default(), 44_100),
            Err(AudioError::OpusInit(_))
        ));
        let bad = OpusSettings {
            bitrate_bps: 10,
            ..OpusSettings::default()
        };
        assert!(bad.validate().is_err());
        let bad = OpusSettings {
            expected_loss_pct: 101,
            ..OpusSettings::default()
        };
        assert!(bad.validate().is_err());
    }

    /// 20 ms of a 440 Hz tone at 48 kHz, continuing from frame `n`.
    fn tone_frame(n: usize) -> Vec<i16> {
        tone_frame_at(48_000, n)
    }

    /// 20 ms of a 440 Hz tone at `rate`, continuing from frame `n`.
    fn tone_frame_at(rate: u32, n: usize) -> Vec<i16> {
        let len = (rate / FRAMES_PER_SECOND) as usize;
        (0..len)
            .map(|i| {
                let t = (n * len + i) as f64 / f64::from(rate);
                (8_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    /// Decodes `packets` at 48 kHz (as every receiver of a 48 kHz RTP clock may).
    fn decode_at_48k(packets: &[Vec<u8>]) -> Vec<i16> {
        let mut dec = audiopus::coder::Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
        let mut out = Vec::new();
        for packet in packets {
            let mut buf = [0i16; MAX_FRAME_SAMPLES];
            let packet = audiopus::packet::Packet::try_from(&packet[..]).unwrap();
            let signals = audiopus::MutSignals::try_from(&mut buf[..]).unwrap();
            let n = dec.decode(Some(packet), signals, false).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn every_lmnt_rate_is_encoded_natively_and_decodes_as_20_ms_at_48khz() {
        for rate in crate::audio::INPUT_RATES {
            let mut enc = OpusEncoder::new(&OpusSettings::default(), rate).unwrap();
            let len = (rate / FRAMES_PER_SECOND) as usize;
            assert!(matches!(
                enc.encode(&vec![0; len * 2]),
                Err(AudioError::FrameLength { expected, .. }) if expected == len
            ));
            let packets: Vec<_> = (0..25)
                .map(|n| enc.encode(&tone_frame_at(rate, n)).unwrap())
                .collect();
            let decoded = decode_at_48k(&packets);
            assert_eq!(
                decoded.len(),
                25 * MAX_FRAME_SAMPLES,
                "{rate} Hz: 20 ms a packet"
            );
            // The 440 Hz tone comes through at its level (after the codec's start-up).
            let steady = &decoded[5 * MAX_FRAME_SAMPLES..];
            let rms = (steady.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
                / steady.len() as f64)
                .sqrt();
            assert!((4_500.0..6_500.0).contains(&rms), "{rate} Hz: rms {rms}");
            // Silence is silence at every rate.
            enc.encode_silence().unwrap();
        }
    }

    #[test]
    fn fec_is_carried_only_when_asked_for_and_rebuilds_a_lost_frame() {
        let mut quiet = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
        let packets: Vec<_> = (0..10)
            .map(|n| quiet.encode(&tone_frame(n)).unwrap())
            .collect();
        assert!(packets.iter().all(|p| !has_fec(p)), "quiet: no LBRR");
        assert!(packets.iter().all(|p| p[0] >> 3 >= 16), "quiet: CELT mode");
        let mut lossy = OpusSettings {
            fec: true,
            expected_loss_pct: 10,
            ..OpusSettings::default()
        };
        quiet.apply(&lossy).unwrap();
        let packets: Vec<_> = (10..20)
            .map(|n| quiet.encode(&tone_frame(n)).unwrap())
            .collect();
        assert!(packets[2..].iter().all(|p| has_fec(p)), "FEC on: LBRR");
        assert!(
            packets[2..].iter().all(|p| p[0] >> 3 < 16),
            "FEC on: SILK or hybrid"
        );
        lossy.complexity = 11;
        assert!(quiet.apply(&lossy).is_err());
        // Frame 5 lost: rebuilt from frame 6's FEC, close to the original.
        let mut dec = CallerAudioDecoder::new().unwrap();
        for p in &packets[..5] {
            dec.decode(p).unwrap();
        }
        let rebuilt = dec.recover(&packets[6]).unwrap().to_vec();
        assert_eq!(rebuilt.len(), CALLER_FRAME_SAMPLES);
        let rms = (rebuilt.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 320.0).sqrt();
        assert!(rms > 3000.0, "the tone is rebuilt, not faded: rms {rms}");
        assert_eq!(dec.decode(&packets[6]).unwrap().len(), CALLER_FRAME_SAMPLES);
        assert!(!has_fec(&[]) && !has_fec(&[0xFF, 0xFF]) && !has_fec(&[0x08]));
    }

    #[test]
    fn silence_after_the_hangover_repeats_a_packet_and_audio_resumes_cleanly() {
        let mut enc = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
        let mut packets: Vec<Vec<u8>> = (0..10)
            .map(|n| enc.encode(&tone_frame(n)).unwrap())
            .collect();
        let silence: Vec<Vec<u8>> = (0..20).map(|_| enc.encode_silence().unwrap()).collect();
        let repeated = &silence[SILENCE_HANGOVER_FRAMES as usize..];
        assert!(repeated.windows(2).all(|w| w[0] == w[1]));
        packets.extend(silence);
        let resumed_from = packets.len() * MAX_FRAME_SAMPLES;
        packets.extend((30..40).map(|n| enc.encode(&tone_frame(n)).unwrap()));
        let decoded = decode_at_48k(&packets);
        let silent_from = 10 * MAX_FRAME_SAMPLES + 2 * MAX_FRAME_SAMPLES;
        let tail = &decoded[silent_from..resumed_from];
        assert!(tail.iter().all(|s| s.abs() < 64), "silence decodes silent");
        // The resumed tone is whole after the decoder's first frame.
        let resumed = &decoded[resumed_from + MAX_FRAME_SAMPLES..];
        let rms = (resumed.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
            / resumed.len() as f64)
            .sqrt();
        assert!(rms > 4_000.0, "tone after silence at rms {rms}");
    }

    #[test]
    fn caller_decoder_survives_garbage_and_loss() {
        let mut enc = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
        let mut dec = CallerAudioDecoder::new().unwrap();
        let pcm = [0i16; MAX_FRAME_SAMPLES];
        let pkt = enc.encode(&pcm).unwrap();
        assert_eq!(dec.decode(&pkt).unwrap().len(), CALLER_FRAME_SAMPLES);
        assert!(matches!(dec.decode(&[]), Err(AudioError::EmptyPayload)));
        // A code-3 TOC byte with no frame-count byte is invalid.
        let err = dec.decode(&[0xFB]).unwrap_err();
        assert!(matches!(err, AudioError::BadPayload(_)), "{err:?}");
        assert!(err.retryable());
        assert_eq!(dec.conceal().unwrap().len(), CALLER_FRAME_SAMPLES);
        // Still usable afterwards.
        assert_eq!(dec.decode(&pkt).unwrap().len(), CALLER_FRAME_SAMPLES);
        // Random bytes never panic.
        let mut x: u32 = 12_345;
        for len in 1..400 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            let _ = dec.decode(&junk);
        }
    }
}

//! G.711 (ITU-T G.711, RTP per RFC 3551): PCMU (µ-law) and PCMA (A-law), 8 kHz, one byte a
//! sample. The phone network's codec: what SIP-to-WebRTC gateways often offer alone.

use super::CALLER_RATE;
use crate::audio::pcm::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
use crate::audio::{AudioError, InputFormat, Transcoder};

/// G.711's sample rate (and RTP clock rate).
pub const G711_RATE: u32 = 8_000;
/// Samples (and payload bytes) in one 20 ms frame.
pub const G711_FRAME_SAMPLES: usize = 160;
/// Longest caller packet decoded: 120 ms, as for Opus; longer ones are cut.
const MAX_PACKET_SAMPLES: usize = 6 * G711_FRAME_SAMPLES;

/// Which companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// µ-law (PCMU, payload type 0): North America and Japan.
    Ulaw,
    /// A-law (PCMA, payload type 8): everywhere else.
    Alaw,
}

impl Law {
    fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => linear_to_ulaw(sample),
            Law::Alaw => linear_to_alaw(sample),
        }
    }

    fn decode(self, code: u8) -> i16 {
        match self {
            Law::Ulaw => ulaw_to_linear(code),
            Law::Alaw => alaw_to_linear(code),
        }
    }
}

/// Encodes 20 ms frames of 8 kHz PCM, one byte a sample. Cannot fail on a whole frame.
#[derive(Debug)]
pub struct G711Encoder {
    law: Law,
}

impl G711Encoder {
    /// An encoder for `law`.
    pub fn new(law: Law) -> Self {
        G711Encoder { law }
    }

    /// Encodes one frame of [`G711_FRAME_SAMPLES`] samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, AudioError> {
        if pcm.len() != G711_FRAME_SAMPLES {
            return Err(AudioError::FrameLength {
                got: pcm.len(),
                expected: G711_FRAME_SAMPLES,
            });
        }
        Ok(pcm.iter().map(|&s| self.law.encode(s)).collect())
    }

    /// One frame of silence (a table lookup's worth: nothing to save by caching).
    pub fn encode_silence(&mut self) -> Vec<u8> {
        vec![self.law.encode(0); G711_FRAME_SAMPLES]
    }
}

/// Decodes the caller's G.711 to the bot's 16 kHz: expanded to linear, then resampled with
/// rubato (the transcoder's FFT resampler, 5 ms of delay), one 320-sample frame per 20 ms.
pub struct G711Decoder {
    law: Law,
    upsampler: Transcoder,
    /// Linear samples of the packet being decoded, as s16le bytes for the upsampler.
    linear: Vec<u8>,
    /// 16 kHz output of the last call.
    out: Vec<i16>,
}

impl std::fmt::Debug for G711Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G711Decoder")
            .field("law", &self.law)
            .finish_non_exhaustive()
    }
}

impl G711Decoder {
    /// A decoder for `law`.
    pub fn new(law: Law) -> Result<Self, AudioError> {
        Ok(G711Decoder {
            law,
            upsampler: Transcoder::new(InputFormat::PcmS16le, G711_RATE, CALLER_RATE)?,
            linear: Vec::with_capacity(MAX_PACKET_SAMPLES * 2),
            out: Vec::with_capacity(MAX_PACKET_SAMPLES * 2),
        })
    }

    /// Decodes one payload (any whole number of samples; an empty one is an error).
    pub fn decode(&mut self, payload: &[u8]) -> Result<&[i16], AudioError> {
        if payload.is_empty() {
            return Err(AudioError::EmptyPayload);
        }
        self.linear.clear();
        for &code in payload.iter().take(MAX_PACKET_SAMPLES) {
            self.linear
                .extend_from_slice(&self.law.decode(code).to_le_bytes());
        }
        self.upsample()
    }

    /// 20 ms of silence in place of a lost packet: G.711 has no concealment of its own.
    pub fn conceal(&mut self) -> Result<&[i16], AudioError> {
        self.linear.clear();
        self.linear.resize(G711_FRAME_SAMPLES * 2, 0);
        self.upsample()
    }

    fn upsample(&mut self) -> Result<&[i16], AudioError> {
        self.out.clear();
        let out = &mut self.out;
        self.upsampler
            .push(&self.linear, &mut |frame| out.extend_from_slice(&frame))?;
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CALLER_FRAME_SAMPLES;

    #[test]
    fn a_tone_survives_encode_decode_and_reaches_16k_one_frame_per_packet() {
        for law in [Law::Ulaw, Law::Alaw] {
            let mut encoder = G711Encoder::new(law);
            let mut decoder = G711Decoder::new(law).unwrap();
            let mut out = Vec::new();
            for n in 0..50 {
                let frame: Vec<i16> = (0..G711_FRAME_SAMPLES)
                    .map(|i| {
                        let t = (n * G711_FRAME_SAMPLES + i) as f64 / f64::from(G711_RATE);
                        (10_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                    })
                    .collect();
                let payload = encoder.encode(&frame).unwrap();
                assert_eq!(payload.len(), G711_FRAME_SAMPLES);
                let pcm = decoder.decode(&payload).unwrap();
                assert_eq!(pcm.len(), CALLER_FRAME_SAMPLES, "{law:?} packet {n}");
                out.extend_from_slice(pcm);
            }
            // Zero crossings over the last second give the tone's frequency at 16 kHz.
            let tail = &out[1_600..];
            let crossings = tail.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            let hz = crossings as f64 / 2.0 / (tail.len() as f64 / 16_000.0);
            assert!((hz - 440.0).abs() < 5.0, "{law:?}: {hz} Hz");
            assert_eq!(decoder.conceal().unwrap().len(), CALLER_FRAME_SAMPLES);
            assert!(decoder.decode(&[]).is_err());
            assert!(encoder.encode(&[0; 10]).is_err());
        }
    }
}

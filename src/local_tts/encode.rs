//! Session audio formats: f32 samples in, the bytes of the requested format out.
//!
//! - `pcm_s16le`, `pcm_f32le`: raw, headerless (as LMNT sends them).
//! - `ulaw`: G.711 µ-law, 8 bits a sample. LMNT documents it as "with a WAV header"; we send
//!   **one** WAV header per session, in front of the first audio byte (sizes set to
//!   0xFFFFFFFF, "unknown length", as for any streamed WAV); later audio is bare µ-law.
//! - `mp3`: 96 kbps mono MP3 from LAME. LAME is LGPL; this crate (MIT OR Apache-2.0) does not
//!   bundle it but links the system `libmp3lame` (Debian `libmp3lame-dev`) **dynamically**
//!   through the few declarations below, so the LGPL's relinking terms are met by the
//!   system library. One encoder per session; each flush drains it with
//!   `lame_encode_flush_nogap`, so every utterance's audio is out before its acknowledgement.

use std::os::raw::{c_int, c_short, c_uchar, c_void};

use crate::lmnt::protocol::AudioFormat;

/// MP3 bitrate LMNT documents for sessions.
pub const MP3_KBPS: c_int = 96;
/// LAME quality (0 best .. 9 fastest): 5 keeps a 20 ms piece well under a millisecond.
const MP3_QUALITY: c_int = 5;

#[allow(non_camel_case_types)]
type lame_t = *mut c_void;

#[link(name = "mp3lame")]
extern "C" {
    fn lame_init() -> lame_t;
    fn lame_set_num_channels(gf: lame_t, n: c_int) -> c_int;
    fn lame_set_in_samplerate(gf: lame_t, rate: c_int) -> c_int;
    fn lame_set_brate(gf: lame_t, kbps: c_int) -> c_int;
    fn lame_set_mode(gf: lame_t, mode: c_int) -> c_int;
    fn lame_set_quality(gf: lame_t, q: c_int) -> c_int;
    fn lame_set_bWriteVbrTag(gf: lame_t, on: c_int) -> c_int;
    fn lame_init_params(gf: lame_t) -> c_int;
    fn lame_encode_buffer(
        gf: lame_t,
        left: *const c_short,
        right: *const c_short,
        nsamples: c_int,
        out: *mut c_uchar,
        out_size: c_int,
    ) -> c_int;
    fn lame_encode_flush_nogap(gf: lame_t, out: *mut c_uchar, out_size: c_int) -> c_int;
    fn lame_close(gf: lame_t) -> c_int;
}

/// LAME's `MONO` value of `MPEG_mode`.
const LAME_MODE_MONO: c_int = 3;
/// Samples handed to LAME per call, so the output buffer size stays bounded.
const MP3_BLOCK: usize = 4608;
/// LAME's documented worst case output for `n` samples is 1.25·n + 7200 bytes.
const MP3_OUT_CAP: usize = MP3_BLOCK * 5 / 4 + 7200;

/// An encoding failure (only LAME can fail).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("MP3 encoder: {0}")]
    Mp3(String),
}

/// An owned LAME encoder. The handle is used by one task at a time and closed on drop.
struct Lame(lame_t);

// SAFETY: a LAME handle has no thread affinity; `Lame` owns it exclusively (no aliasing), so
// moving it to another thread is sound.
unsafe impl Send for Lame {}
// SAFETY: every method that touches the handle takes `&mut self`; a shared `&Lame` can do
// nothing with it, so sharing references across threads is sound.
unsafe impl Sync for Lame {}

impl Lame {
    fn new(rate: u32) -> Result<Lame, EncodeError> {
        // SAFETY: lame_init has no preconditions; a null return is handled.
        let gf = unsafe { lame_init() };
        if gf.is_null() {
            return Err(EncodeError::Mp3("lame_init failed".into()));
        }
        let lame = Lame(gf);
        let rate = c_int::try_from(rate).map_err(|_| EncodeError::Mp3("bad rate".into()))?;
        // SAFETY: gf is a valid handle from lame_init, not yet closed.
        let rc = unsafe {
            lame_set_num_channels(gf, 1);
            lame_set_in_samplerate(gf, rate);
            lame_set_brate(gf, MP3_KBPS);
            lame_set_mode(gf, LAME_MODE_MONO);
            lame_set_quality(gf, MP3_QUALITY);
            lame_set_bWriteVbrTag(gf, 0);
            lame_init_params(gf)
        };
        if rc < 0 {
            return Err(EncodeError::Mp3(format!("lame_init_params returned {rc}")));
        }
        Ok(lame)
    }

    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut buf = vec![0u8; MP3_OUT_CAP];
        for block in pcm.chunks(MP3_BLOCK) {
            // SAFETY: the handle is valid; `block` holds `block.len()` samples (≤ MP3_BLOCK,
            // fits c_int) for both channel pointers (mono reads only the left); `buf` is
            // MP3_OUT_CAP bytes, LAME's worst case for that many samples.
            let n = unsafe {
                lame_encode_buffer(
                    self.0,
                    block.as_ptr(),
                    block.as_ptr(),
                    block.len() as c_int,
                    buf.as_mut_ptr(),
                    MP3_OUT_CAP as c_int,
                )
            };
            let n = usize::try_from(n)
                .map_err(|_| EncodeError::Mp3(format!("lame_encode_buffer returned {n}")))?;
            out.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut buf = vec![0u8; MP3_OUT_CAP];
        // SAFETY: valid handle; buf is MP3_OUT_CAP bytes and LAME is told so.
        let n = unsafe { lame_encode_flush_nogap(self.0, buf.as_mut_ptr(), MP3_OUT_CAP as c_int) };
        let n = usize::try_from(n)
            .map_err(|_| EncodeError::Mp3(format!("lame_encode_flush_nogap returned {n}")))?;
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
        Ok(())
    }
}

impl Drop for Lame {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and closed exactly once, here.
        unsafe {
            lame_close(self.0);
        }
    }
}

/// Turns a session's samples into its wire format. One per session.
pub struct Encoder {
    format: AudioFormat,
    rate: u32,
    header_sent: bool,
    lame: Option<Lame>,
}

impl Encoder {
    /// An encoder for `format` at `rate` Hz. Errs for MP3 when LAME refuses the settings and
    /// for WebM, which local-tts does not produce.
    pub fn new(format: AudioFormat, rate: u32) -> Result<Encoder, EncodeError> {
        let lame = match format {
            AudioFormat::Mp3 => Some(Lame::new(rate)?),
            AudioFormat::Webm => return Err(EncodeError::Mp3("webm is not supported".into())),
            _ => None,
        };
        Ok(Encoder {
            format,
            rate,
            header_sent: false,
            lame,
        })
    }

    /// Bytes per millisecond of audio in this format (MP3: from its bitrate), for chunking
    /// and pacing.
    pub fn bytes_per_ms(&self) -> f64 {
        let per_sample = match self.format {
            AudioFormat::PcmS16le => 2.0,
            AudioFormat::PcmF32le => 4.0,
            AudioFormat::Ulaw => 1.0,
            AudioFormat::Mp3 | AudioFormat::Webm => return f64::from(MP3_KBPS) / 8.0,
        };
        per_sample * f64::from(self.rate) / 1000.0
    }

    /// Encodes samples; with `end_of_utterance`, drains the codec's delay too.
    pub fn encode(
        &mut self,
        samples: &[f32],
        end_of_utterance: bool,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        match self.format {
            AudioFormat::PcmS16le => {
                for &s in samples {
                    out.extend_from_slice(&to_i16(s).to_le_bytes());
                }
            }
            AudioFormat::PcmF32le => {
                for &s in samples {
                    out.extend_from_slice(&s.clamp(-1.0, 1.0).to_le_bytes());
                }
            }
            AudioFormat::Ulaw => {
                if !self.header_sent && !samples.is_empty() {
                    out.extend_from_slice(&ulaw_wav_header(self.rate));
                    self.header_sent = true;
                }
                out.extend(samples.iter().map(|&s| linear_to_ulaw(to_i16(s))));
            }
            AudioFormat::Mp3 | AudioFormat::Webm => {
                if let Some(lame) = self.lame.as_mut() {
                    let pcm: Vec<i16> = samples.iter().map(|&s| to_i16(s)).collect();
                    lame.encode(&pcm, &mut out)?;
                    if end_of_utterance {
                        lame.flush(&mut out)?;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// G.711 µ-law encoding of one 16-bit sample.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// The WAV header sent once in front of a µ-law session (format tag 7, mono, 8 bits,
/// sizes 0xFFFFFFFF for a stream of unknown length).
pub fn ulaw_wav_header(rate: u32) -> [u8; 46] {
    let mut h = [0u8; 46];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = h.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, b"RIFF");
    put(4, &u32::MAX.to_le_bytes());
    put(8, b"WAVEfmt ");
    put(16, &18u32.to_le_bytes());
    put(20, &7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    put(22, &1u16.to_le_bytes());
    put(24, &rate.to_le_bytes());
    put(28, &rate.to_le_bytes()); // byte rate: one byte a sample
    put(32, &1u16.to_le_bytes());
    put(34, &8u16.to_le_bytes());
    put(36, &0u16.to_le_bytes()); // cbSize
    put(38, b"data");
    put(42, &u32::MAX.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
    }

    #[test]
    fn ulaw_header_once_per_session() {
        let mut e = Encoder::new(AudioFormat::Ulaw, 8000).unwrap();
        let a = e.encode(&[0.0; 10], false).unwrap();
        assert_eq!(a.len(), 46 + 10);
        assert_eq!(&a[..4], b"RIFF");
        assert_eq!(e.encode(&[0.0; 10], true).unwrap().len(), 10);
    }

    #[test]
    fn pcm_sizes() {
        let mut e = Encoder::new(AudioFormat::PcmS16le, 24000).unwrap();
        assert_eq!(
            e.encode(&[0.5, -2.0], false).unwrap(),
            vec![0x00, 0x40, 0x01, 0x80]
        );
        let mut e = Encoder::new(AudioFormat::PcmF32le, 24000).unwrap();
        assert_eq!(
            e.encode(&[0.5], false).unwrap(),
            0.5f32.to_le_bytes().to_vec()
        );
        assert_eq!(e.bytes_per_ms(), 96.0);
    }

    #[test]
    fn mp3_produces_frames_at_every_rate() {
        for rate in [8000, 16000, 24000] {
            let mut e = Encoder::new(AudioFormat::Mp3, rate).unwrap();
            let x: Vec<f32> = (0..rate).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
            let bytes = e.encode(&x, true).unwrap();
            assert!(bytes.len() > 1000, "{rate}: {}", bytes.len());
            // An MPEG audio frame sync word.
            assert_eq!(bytes[0], 0xff);
            assert_eq!(bytes[1] & 0xe0, 0xe0);
        }
    }
}

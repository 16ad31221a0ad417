//! LMNT audio bytes to `f32` samples in [-1, 1], carrying partial samples across chunks.

/// The sample encodings LMNT can deliver raw (lmnt-protocol.md, `format`). `mp3` and `webm` are
/// containers the bridge never requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// Signed 16-bit little-endian PCM (`pcm_s16le`).
    PcmS16le,
    /// 32-bit little-endian IEEE float PCM (`pcm_f32le`).
    PcmF32le,
    /// G.711 µ-law, one byte a sample (`ulaw`).
    Ulaw,
}

impl InputFormat {
    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            InputFormat::PcmS16le => 2,
            InputFormat::PcmF32le => 4,
            InputFormat::Ulaw => 1,
        }
    }
}

/// Decodes a byte stream chunk by chunk. Bytes that do not yet make a whole sample are kept
/// and completed by the next chunk, so the samples never depend on how the stream was split.
#[derive(Debug, Clone)]
pub struct SampleDecoder {
    format: InputFormat,
    carry: [u8; 4],
    carry_len: usize,
}

impl SampleDecoder {
    /// A decoder for `format` with nothing carried.
    pub fn new(format: InputFormat) -> Self {
        SampleDecoder {
            format,
            carry: [0; 4],
            carry_len: 0,
        }
    }

    /// Appends the samples completed by `bytes` to `out`. Never fails: every byte pattern is
    /// a sample (non-finite floats become 0.0, floats are clamped to [-1, 1]).
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<f32>) {
        let width = self.format.sample_bytes();
        if self.carry_len > 0 {
            let need = width - self.carry_len;
            let take = need.min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(head);
            self.carry_len += take;
            bytes = rest;
            if self.carry_len < width {
                return;
            }
            let carried = self.carry;
            out.push(decode_one(self.format, &carried[..width]));
            self.carry_len = 0;
        }
        let mut chunks = bytes.chunks_exact(width);
        out.extend(chunks.by_ref().map(|s| decode_one(self.format, s)));
        let rest = chunks.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// Bytes held back waiting for the rest of their sample.
    pub fn carried(&self) -> usize {
        self.carry_len
    }

    /// Forgets a carried partial sample (end of utterance, barge-in); returns how many bytes
    /// were dropped. Nonzero only when the sender cut a sample in half.
    pub fn discard_carry(&mut self) -> usize {
        std::mem::take(&mut self.carry_len)
    }
}

/// Decodes one sample; `bytes` has exactly the format's width (the callers guarantee it).
fn decode_one(format: InputFormat, bytes: &[u8]) -> f32 {
    match (format, bytes) {
        (InputFormat::PcmS16le, &[a, b]) => f32::from(i16::from_le_bytes([a, b])) / 32_768.0,
        (InputFormat::PcmF32le, &[a, b, c, d]) => {
            let v = f32::from_le_bytes([a, b, c, d]);
            if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        }
        (InputFormat::Ulaw, &[u]) => f32::from(ulaw_to_linear(u)) / 32_768.0,
        _ => 0.0,
    }
}

/// G.711 µ-law to 16-bit linear (ITU-T G.711, the Sun reference decoder): 0xFF and 0x7F are
/// zero, 0x80 is +32124, 0x00 is -32124.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    // magnitude <= 32124 so the cast is exact.
    let m = magnitude as i16;
    if u & 0x80 != 0 {
        -m
    } else {
        m
    }
}

/// 16-bit linear to G.711 µ-law (ITU-T G.711, the Sun reference encoder: bias 0x84, clip at
/// 32635).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let biased = magnitude.min(CLIP) + BIAS;
    // The highest set bit among 7..=14 gives the segment.
    let exponent = (31 - biased.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (biased >> (exponent + 3)) & 0x0F;
    // sign | exponent | mantissa fit in 8 bits.
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 A-law to 16-bit linear (ITU-T G.711, the Sun reference decoder).
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut magnitude = i32::from(a & 0x0F) << 4;
    let segment = i32::from((a & 0x70) >> 4);
    match segment {
        0 => magnitude += 8,
        1 => magnitude += 0x108,
        _ => magnitude = (magnitude + 0x108) << (segment - 1),
    }
    // magnitude <= 32256 so the cast is exact.
    let m = magnitude as i16;
    if a & 0x80 != 0 {
        m
    } else {
        -m
    }
}

/// 16-bit linear to G.711 A-law (ITU-T G.711, the Sun reference encoder).
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEGMENT_ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut value = i32::from(sample) >> 3;
    let mask: u8 = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    let Some(segment) = SEGMENT_ENDS.iter().position(|&end| value <= end) else {
        return 0x7F ^ mask;
    };
    let shift = if segment < 2 { 1 } else { segment };
    // segment < 8 and the mantissa is 4 bits: the value fits in 8 bits.
    let code = ((segment as i32) << 4 | ((value >> shift) & 0x0F)) as u8;
    code ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_points() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        // Monotonic within each half of the code space.
        for c in 0x80u8..0xFF {
            assert!(ulaw_to_linear(c) > ulaw_to_linear(c + 1), "code {c:#x}");
        }
    }

    #[test]
    fn g711_round_trips_within_one_quantisation_step() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(32_767), 0x80);
        assert_eq!(linear_to_ulaw(-32_768), 0x00);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_alaw(0), 0xD5);
        for code in 0..=255u8 {
            // Every code decodes to a value that encodes back to it (0x7F, µ-law's "-0",
            // encodes as 0xFF, "+0").
            let u = ulaw_to_linear(code);
            assert!(linear_to_ulaw(u) == code || u == 0, "ulaw {code:#x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "alaw {code:#x}");
        }
        for x in (-32_768..=32_767).step_by(7) {
            let x = x as i16;
            let step = |v: i16| (i32::from(v).abs() / 16).max(16);
            let u = ulaw_to_linear(linear_to_ulaw(x));
            assert!(
                (i32::from(u) - i32::from(x)).abs() <= step(x) + 132,
                "ulaw {x} -> {u}"
            );
            let a = alaw_to_linear(linear_to_alaw(x));
            assert!(
                (i32::from(a) - i32::from(x)).abs() <= step(x),
                "alaw {x} -> {a}"
            );
        }
    }

    #[test]
    fn f32_non_finite_and_out_of_range() {
        let mut d = SampleDecoder::new(InputFormat::PcmF32le);
        let mut out = Vec::new();
        for v in [f32::NAN, f32::INFINITY, 2.0, -3.0, 0.25] {
            d.push(&v.to_le_bytes(), &mut out);
        }
        assert_eq!(out, vec![0.0, 0.0, 1.0, -1.0, 0.25]);
    }

    #[test]
    fn carry_completes_across_many_tiny_chunks() {
        let mut d = SampleDecoder::new(InputFormat::PcmF32le);
        let mut out = Vec::new();
        let bytes = 0.5f32.to_le_bytes();
        for b in bytes {
            d.push(&[b], &mut out);
        }
        assert_eq!(out, vec![0.5]);
        d.push(&[1, 2, 3], &mut out);
        assert_eq!(d.carried(), 3);
        assert_eq!(d.discard_carry(), 3);
        assert_eq!(d.carried(), 0);
    }
}

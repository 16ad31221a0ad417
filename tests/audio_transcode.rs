//! Transcoder: sample accounting, chunk-seam independence, odd-byte carry, formats, and a
//! sine through resample + Opus keeping its frequency and level.

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};
use lmnt_bridge::audio::{InputFormat, PcmFrame, Transcoder};
use lmnt_bridge::codec::{OpusEncoder, OpusSettings};
use rand::{Rng, SeedableRng};

const RATES: [u32; 3] = [8_000, 16_000, 24_000];
/// Opus' PCM rate, what the transcoder feeds for an Opus call.
const OPUS_RATE: u32 = 48_000;
/// Samples in 20 ms at [`OPUS_RATE`].
const FRAME_SAMPLES: usize = 960;

fn s16_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn sine(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            (amp * 32_767.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin())
                as i16
        })
        .collect()
}

/// Pushes `chunks` then ends the utterance; returns all frames.
fn run(t: &mut Transcoder, chunks: &[&[u8]]) -> Vec<PcmFrame> {
    let mut out = Vec::new();
    for c in chunks {
        t.push(c, &mut |f| out.push(f)).unwrap();
    }
    t.finish_utterance(&mut |f| out.push(f)).unwrap();
    out
}

fn flat(frames: &[PcmFrame]) -> Vec<i16> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

fn expected_frames(n: u64, rate: u32, delay: u64) -> usize {
    let r = 48_000 / u64::from(rate);
    (n * r + 2 * delay).div_ceil(FRAME_SAMPLES as u64) as usize
}

#[test]
fn sample_accounting_every_sample_once_tail_included() {
    let seed = 0xA11CE;
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for rate in RATES {
        let mut t = Transcoder::new(InputFormat::PcmS16le, rate, OPUS_RATE).unwrap();
        let d = t.delay();
        assert_eq!(d, 240, "10 ms blocks delay 5 ms");
        let r = i64::from(48_000 / rate);
        for _ in 0..6 {
            let n: usize = rng.random_range(1..rate as usize * 2);
            // DC: the output sum must be r times the input sum (the filter's DC gain is 1).
            let input = vec![8_000i16; n];
            let frames = run(&mut t, &[&s16_bytes(&input)]);
            assert_eq!(
                frames.len(),
                expected_frames(n as u64, rate, d),
                "rate {rate} n {n}"
            );
            let sum_out: i64 = flat(&frames).iter().map(|&s| i64::from(s)).sum();
            let sum_in = 8_000 * n as i64 * r;
            let err = (sum_out - sum_in).abs() as f64 / sum_in as f64;
            assert!(err < 2e-3, "rate {rate} n {n}: out {sum_out} in {sum_in}");
            // The last sample alone: its whole filter response is in this utterance.
            let mut input = vec![0i16; n];
            input[n - 1] = 16_000;
            let frames = run(&mut t, &[&s16_bytes(&input)]);
            assert_eq!(frames.len(), expected_frames(n as u64, rate, d));
            let sum_out: i64 = flat(&frames).iter().map(|&s| i64::from(s)).sum();
            let err = (sum_out - 16_000 * r).abs() as f64 / (16_000 * r) as f64;
            assert!(err < 0.02, "rate {rate} n {n}: impulse sum {sum_out}");
        }
        // An utterance with no audio yields nothing.
        assert!(run(&mut t, &[]).is_empty());
    }
}

#[test]
fn utterances_do_not_leak_into_each_other() {
    for rate in RATES {
        let a = sine(rate, 700.0, 0.8, rate as usize / 3 + 7);
        let b = sine(rate, 300.0, 0.5, rate as usize / 2 + 3);
        let mut fresh = Transcoder::new(InputFormat::PcmS16le, rate, OPUS_RATE).unwrap();
        let alone = flat(&run(&mut fresh, &[&s16_bytes(&b)]));
        let mut t = Transcoder::new(InputFormat::PcmS16le, rate, OPUS_RATE).unwrap();
        run(&mut t, &[&s16_bytes(&a)]);
        let after = flat(&run(&mut t, &[&s16_bytes(&b)]));
        assert_eq!(alone, after, "rate {rate}");
    }
}

#[test]
fn random_chunking_is_identical_to_one_chunk_and_odd_bytes_carry() {
    let seed = 0x5EA5;
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (format, width) in [
        (InputFormat::PcmS16le, 2),
        (InputFormat::PcmF32le, 4),
        (InputFormat::Ulaw, 1),
    ] {
        for rate in RATES {
            let len = rate as usize * width; // one second
            let bytes: Vec<u8> = match format {
                InputFormat::PcmF32le => sine(rate, 523.0, 0.6, rate as usize)
                    .iter()
                    .flat_map(|&s| (f32::from(s) / 32_768.0).to_le_bytes())
                    .collect(),
                _ => (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            };
            let mut t = Transcoder::new(format, rate, OPUS_RATE).unwrap();
            let whole = flat(&run(&mut t, &[&bytes]));
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                // Odd sizes on purpose: samples are cut across chunks.
                let n = (rng.random_range(0..300usize) | 1).min(rest.len());
                let (c, r) = rest.split_at(n);
                chunks.push(c);
                rest = r;
            }
            let mut t = Transcoder::new(format, rate, OPUS_RATE).unwrap();
            let split = flat(&run(&mut t, &chunks));
            assert_eq!(whole, split, "{format:?} {rate}");
        }
    }
}

#[test]
fn odd_byte_at_the_end_is_reported_not_invented() {
    let mut t = Transcoder::new(InputFormat::PcmS16le, 24_000, OPUS_RATE).unwrap();
    let mut out = Vec::new();
    t.push(&[1, 2, 3], &mut |f| out.push(f)).unwrap();
    assert_eq!(t.utterance_samples(), 1);
    t.push(&[4], &mut |f| out.push(f)).unwrap();
    assert_eq!(t.utterance_samples(), 2);
    t.push(&[5], &mut |f| out.push(f)).unwrap();
    assert_eq!(t.finish_utterance(&mut |f| out.push(f)).unwrap(), 1);
}

#[test]
fn ulaw_and_f32_decode_like_s16() {
    // µ-law silence (0xFF) is digital silence.
    let mut t = Transcoder::new(InputFormat::Ulaw, 8_000, OPUS_RATE).unwrap();
    let frames = run(&mut t, &[&[0xFFu8; 800]]);
    assert!(!frames.is_empty() && flat(&frames).iter().all(|&s| s == 0));
    // µ-law full-scale code 0x80 is +32124/32768 of DC: output settles there.
    let frames = run(&mut t, &[&[0x80u8; 8_000]]);
    let mid = flat(&frames)[24_000];
    assert!((i32::from(mid) - 32_124).abs() < 40, "{mid}");
    // f32 and s16 of the same sine give the same frames within rounding.
    let s = sine(16_000, 440.0, 0.5, 16_000);
    let f32_bytes: Vec<u8> = s
        .iter()
        .flat_map(|&v| (f32::from(v) / 32_768.0).to_le_bytes())
        .collect();
    let a = flat(&run(
        &mut Transcoder::new(InputFormat::PcmS16le, 16_000, OPUS_RATE).unwrap(),
        &[&s16_bytes(&s)],
    ));
    let b = flat(&run(
        &mut Transcoder::new(InputFormat::PcmF32le, 16_000, OPUS_RATE).unwrap(),
        &[&f32_bytes],
    ));
    assert_eq!(a.len(), b.len());
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| (i32::from(*x) - i32::from(*y)).abs() <= 1));
}

/// Frequency by zero crossings and RMS level of `x` at 48 kHz.
fn freq_and_rms(x: &[f32]) -> (f64, f64) {
    let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    let freq = crossings as f64 * 48_000.0 / x.len() as f64;
    let rms = (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt();
    (freq, rms)
}

#[test]
fn sine_keeps_frequency_and_level_through_resample_and_opus() {
    let mut enc = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
    for rate in RATES {
        for freq in [300.0, 1_000.0, 3_000.0] {
            let input = sine(rate, freq, 0.5, rate as usize * 2);
            let mut t = Transcoder::new(InputFormat::PcmS16le, rate, OPUS_RATE).unwrap();
            let frames = run(&mut t, &[&s16_bytes(&input)]);
            // Before Opus.
            let pcm: Vec<f32> = flat(&frames)
                .iter()
                .map(|&s| f32::from(s) / 32_768.0)
                .collect();
            let (f0, r0) = freq_and_rms(&pcm[9_600..86_400]);
            assert!(
                (f0 - freq).abs() < freq * 0.01,
                "pcm rate {rate} freq {freq}: {f0}"
            );
            assert!(
                (r0 - 0.3535).abs() < 0.01,
                "pcm rate {rate} freq {freq}: rms {r0}"
            );
            // After Opus encode + decode.
            let mut dec = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
            let mut decoded = Vec::new();
            for f in &frames {
                let pkt = enc.encode(f).unwrap();
                let mut buf = [0f32; FRAME_SAMPLES];
                let n = dec
                    .decode_float(
                        Some((&pkt[..]).try_into().unwrap()),
                        (&mut buf[..]).try_into().unwrap(),
                        false,
                    )
                    .unwrap();
                decoded.extend_from_slice(&buf[..n]);
            }
            let (f1, r1) = freq_and_rms(&decoded[9_600..86_400]);
            assert!(
                (f1 - freq).abs() < freq * 0.01,
                "opus rate {rate} freq {freq}: {f1}"
            );
            let db = 20.0 * (r1 / r0).log10();
            assert!(
                db.abs() < 1.0,
                "opus rate {rate} freq {freq}: level {db:.2} dB"
            );
        }
    }
}

#[test]
fn same_rate_passes_samples_through_untouched() {
    // A codec whose PCM rate is LMNT's (G.711 at 8 kHz) gets no resampler: no delay, the
    // samples exactly, the last frame padded with silence.
    let input = sine(8_000, 440.0, 0.5, 8_000 / 50 * 3 + 17);
    let mut t = Transcoder::new(InputFormat::PcmS16le, 8_000, 8_000).unwrap();
    assert_eq!((t.delay(), t.frame_samples()), (0, 160));
    let frames = run(
        &mut t,
        &[&s16_bytes(&input[..100]), &s16_bytes(&input[100..])],
    );
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.len() == 160));
    let out = flat(&frames);
    assert_eq!(&out[..input.len()], &input[..]);
    assert!(out[input.len()..].iter().all(|&s| s == 0));
    assert!(Transcoder::new(InputFormat::PcmS16le, 24_000, 8_000).is_err());
    assert!(Transcoder::new(InputFormat::PcmS16le, 16_000, 24_000).is_err());
}

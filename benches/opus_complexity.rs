//! What each libopus complexity costs and what it sounds like, to choose
//! `audio.opus_complexity`'s default and the encoder's mode (project issue 10): for a minute
//! of speech-like audio at LMNT's default 24 kHz, encoded as the daemon does (at that rate,
//! VoIP, 32 kbps, 20 ms frames), it prints per complexity the encoder's CPU as a percentage of
//! one core per call, the mean packet size, and the log-spectral distance (LSD, dB) of the
//! decoded audio from the input over the speech frames, 0-12 kHz (all that 24 kHz carries):
//! lower is closer; about 1 dB is hard to hear. Twice: as a call with a clean path is
//! encoded (no FEC: CELT mode), and as loss adaptation encodes one whose caller reports 10 %
//! loss (FEC on, 10 % expected loss, the bitrate raised to `opus_max_bitrate_bps`' default,
//! 48 kbps: SILK or hybrid mode carrying LBRR).
//!
//! `cargo bench --bench opus_complexity`

use std::time::Instant;

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};
use lmnt_bridge::codec::loss::LossAdaptation;
use lmnt_bridge::codec::{OpusEncoder, OpusSettings};
use realfft::RealFftPlanner;

const RATE: f64 = 24_000.0;
/// Samples in a 20 ms frame at [`RATE`].
const FRAME: usize = 480;
const SECONDS: usize = 60;
const FFT: usize = 512;
/// Bins up to 12 kHz: everything LMNT's 24 kHz audio carries.
const TOP_BIN: usize = FFT / 2;

/// Voiced speech with fricatives: a glottal buzz (40 harmonics falling 6 dB/octave of a
/// pitch gliding 100-220 Hz) under a 4 Hz syllable envelope, every third syllable a burst
/// of noise instead (when `fricatives`), and pauses. Deterministic.
fn speech_like(fricatives: bool) -> Vec<i16> {
    let n = SECONDS * RATE as usize;
    let (mut phase, mut noise) = (0.0f64, 0x2545_f491_u32);
    let tau = 2.0 * std::f64::consts::PI;
    (0..n)
        .map(|i| {
            let t = i as f64 / RATE;
            let f0 = 160.0 + 60.0 * (tau * 0.3 * t).sin();
            phase += tau * f0 / RATE;
            let env = (0.5 - 0.5 * (tau * 4.0 * t).cos()) * if t % 3.0 < 2.4 { 1.0 } else { 0.0 };
            let fricative = fricatives && (t * 4.0) as u64 % 3 == 2;
            let v = if fricative {
                noise ^= noise << 13;
                noise ^= noise >> 17;
                noise ^= noise << 5;
                (f64::from(noise) / f64::from(u32::MAX) - 0.5) * 0.8
            } else {
                (1..=40).map(|h| (phase * h as f64).sin() / h as f64).sum()
            };
            (v * env * 9_000.0) as i16
        })
        .collect()
}

/// The decoder's output lags the input by the encoder's look-ahead: the lag (in samples,
/// up to 20 ms) where the two correlate best.
fn delay(input: &[i16], output: &[i16]) -> usize {
    let span = &input[RATE as usize..2 * RATE as usize];
    (0..FRAME)
        .max_by_key(|&d| {
            let out = &output[RATE as usize + d..];
            span.iter()
                .zip(out)
                .map(|(&a, &b)| i64::from(a) * i64::from(b))
                .sum::<i64>()
        })
        .unwrap_or(0)
}

/// Mean log-spectral distance (dB) between `a` and `b` over 20 ms frames where `a` speaks.
fn lsd(a: &[i16], b: &[i16]) -> f64 {
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(FFT);
    let window: Vec<f64> = (0..FRAME)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / FRAME as f64).cos())
        .collect();
    let spectrum = |x: &[i16]| {
        let mut buf = fft.make_input_vec();
        for (o, (&s, w)) in buf.iter_mut().zip(x.iter().zip(&window)) {
            *o = f64::from(s) * w;
        }
        let mut out = fft.make_output_vec();
        fft.process(&mut buf, &mut out).expect("fft sizes");
        out[1..TOP_BIN]
            .iter()
            .map(|c| c.norm_sqr())
            .collect::<Vec<f64>>()
    };
    let (mut total, mut frames) = (0.0, 0);
    for (fa, fb) in a.chunks_exact(FRAME).zip(b.chunks_exact(FRAME)) {
        let energy: f64 = fa.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / FRAME as f64;
        if energy < 1e5 {
            continue; // a pause or a syllable's edge
        }
        let (pa, pb) = (spectrum(fa), spectrum(fb));
        // Below 60 dB under the frame's mean bin: inaudible next to it, not compared.
        let floor = pa.iter().sum::<f64>() / pa.len() as f64 * 1e-6;
        if floor == 0.0 {
            continue; // no energy below 12 kHz to compare
        }
        let d: f64 = pa
            .iter()
            .zip(&pb)
            .map(|(&p, &q)| (10.0 * ((p + floor) / (q + floor)).log10()).powi(2))
            .sum::<f64>()
            / pa.len() as f64;
        total += d.sqrt();
        frames += 1;
    }
    total / f64::from(frames.max(1))
}

/// Encodes `input` with `settings`: the encoder's seconds per second of audio, the mean
/// packet size, and the decoded audio aligned with the input.
fn round_trip(input: &[i16], settings: &OpusSettings) -> (f64, f64, Vec<i16>) {
    let mut encoder = OpusEncoder::new(settings, RATE as u32).expect("encoder");
    let start = Instant::now();
    let packets: Vec<Vec<u8>> = input
        .chunks_exact(FRAME)
        .map(|f| encoder.encode(f).expect("encode"))
        .collect();
    let cost = start.elapsed().as_secs_f64() / SECONDS as f64;
    let mut decoder = Decoder::new(SampleRate::Hz24000, Channels::Mono).expect("decoder");
    let mut frame = vec![0i16; FRAME];
    let mut output = Vec::with_capacity(input.len());
    for p in &packets {
        let packet = p.as_slice().try_into().expect("packet");
        let n = decoder
            .decode(
                Some(packet),
                (&mut frame[..]).try_into().expect("out"),
                false,
            )
            .expect("decode");
        output.extend_from_slice(&frame[..n]);
    }
    let lag = delay(input, &output);
    let bytes = packets.iter().map(Vec::len).sum::<usize>() as f64 / packets.len() as f64;
    (cost, bytes, output.split_off(lag))
}

fn main() {
    let (voiced, mixed) = (speech_like(false), speech_like(true));
    println!("opus complexity: 60 s of speech-like audio, 24 kHz, 20 ms frames");
    let clean = OpusSettings::default();
    let lossy = OpusSettings {
        fec: true,
        expected_loss_pct: 10,
        bitrate_bps: LossAdaptation::default().max_bitrate_bps,
        ..clean
    };
    for (path, base) in [
        ("no FEC, 32 kbps (CELT)", clean),
        ("FEC on, 10 % loss, 48 kbps (hybrid)", lossy),
    ] {
        println!(" {path}:");
        for complexity in [0u8, 1, 2, 3, 4, 5, 6, 8, 10] {
            let settings = OpusSettings { complexity, ..base };
            let (cost, bytes, decoded) = round_trip(&mixed, &settings);
            let (_, _, decoded_voiced) = round_trip(&voiced, &settings);
            println!(
                "  complexity {complexity:>2}: encode {:.3} % of one core per call, {bytes:.1} B/packet, \
                 LSD {:.2} dB (voiced only {:.2} dB)",
                100.0 * cost,
                lsd(&mixed, &decoded),
                lsd(&voiced, &decoded_voiced)
            );
        }
    }
}

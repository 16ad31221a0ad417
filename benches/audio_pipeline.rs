//! (a) Transcode cost of 60 s of 24 kHz speech-like audio as the daemon does it (framed and
//! encoded at 24 kHz), against resampling it to 48 kHz first and a bare libopus encode of the
//! same audio at 48 kHz; (b) pacer + transcoder for 200 calls in virtual time, as CPU per
//! call-second. Prints one plain line per figure besides criterion's output.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use lmnt_bridge::audio::{InputFormat, Transcoder, FRAME_MS};
use lmnt_bridge::codec::{Codec, CodecKind, EncoderSettings, OpusEncoder, OpusSettings};
use lmnt_bridge::playout::{Playout, PlayoutConfig};

/// Speech-like: 8 harmonics of a pitch gliding 100..220 Hz, a 4 Hz syllable envelope and
/// pauses. Returns s16 samples at `rate`.
fn speech_like(rate: u32, seconds: u32) -> Vec<i16> {
    let n = (rate * seconds) as usize;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let f0 = 160.0 + 60.0 * (2.0 * std::f64::consts::PI * 0.3 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / f64::from(rate);
            let env = (0.5 - 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).cos())
                * if (t % 3.0) < 2.4 { 1.0 } else { 0.0 };
            let v: f64 = (1..=8).map(|h| (phase * h as f64).sin() / h as f64).sum();
            (v * env * 9_000.0) as i16
        })
        .collect()
}

fn bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// LMNT's rate, the daemon's default.
const LMNT_RATE: u32 = 24_000;

/// LMNT-sized chunks (100 ms at 24 kHz) through the transcoder (to `pcm_rate`) and Opus.
fn transcode_all(input: &[u8], pcm_rate: u32) -> usize {
    let mut t = Transcoder::new(InputFormat::PcmS16le, LMNT_RATE, pcm_rate).unwrap();
    let mut enc = OpusEncoder::new(&OpusSettings::default(), pcm_rate).unwrap();
    let mut total = 0;
    let mut encode = |f: lmnt_bridge::audio::PcmFrame| total += enc.encode(&f).unwrap().len();
    for c in input.chunks(4_800) {
        t.push(c, &mut encode).unwrap();
    }
    t.finish_utterance(&mut encode).unwrap();
    total
}

/// Samples in one frame at 48 kHz.
const FRAME_SAMPLES_48K: usize = (48_000 * FRAME_MS / 1000) as usize;

fn bare_opus(input48: &[i16]) -> usize {
    let mut enc = OpusEncoder::new(&OpusSettings::default(), 48_000).unwrap();
    let mut total = 0;
    for frame in input48.chunks_exact(FRAME_SAMPLES_48K) {
        total += enc.encode(frame).unwrap().len();
    }
    total
}

const CALLS: usize = 200;
const CALL_SECONDS: u64 = 10;

/// `calls` calls, each 10 s of schedule with two 3 s utterances delivered in bursts; every
/// frame is encoded as the call driver does (silence included).
fn run_calls(calls: usize, utt: &[u8]) -> u64 {
    let t0 = Instant::now();
    let codec = Codec {
        kind: CodecKind::Opus,
        payload_type: 111,
        telephone_event: None,
    };
    let pcm_rate = codec.pcm_rate(LMNT_RATE);
    let silence = vec![0i16; (pcm_rate / 50) as usize];
    let mut playouts: Vec<_> = (0..calls)
        .map(|_| {
            let mut p = Playout::new(PlayoutConfig {
                input_format: InputFormat::PcmS16le,
                input_rate: LMNT_RATE,
                output_rate: pcm_rate,
                jitter_min: Duration::ZERO,
                jitter_max: Duration::from_millis(300),
                max_queued: Duration::from_secs(120),
                max_late: Duration::from_millis(100),
            })
            .unwrap();
            p.start(t0);
            (
                p,
                codec
                    .encoder(&EncoderSettings::default(), pcm_rate)
                    .unwrap(),
            )
        })
        .collect();
    let mut sent = 0u64;
    for n in 0..(CALL_SECONDS * 50) {
        let now = t0 + Duration::from_millis(20 * n);
        for (p, encoder) in &mut playouts {
            if n == 10 || n == 250 {
                let u = if n == 10 { 1 } else { 2 };
                for c in utt.chunks(4_800) {
                    p.push_audio(now, u, c).unwrap();
                }
                p.end_utterance(now, u);
            }
            if let Some(f) = p.poll(now) {
                let pcm = f.pcm.as_deref().unwrap_or(&silence);
                sent += encoder.encode(pcm).unwrap().len() as u64;
            }
        }
    }
    sent
}

fn figures(c: &mut Criterion) {
    let input24 = bytes(&speech_like(24_000, 60));
    let input48 = speech_like(48_000, 60);
    // Plain figures first: transcode and bare encode as the median of 5 runs.
    let time = |f: &dyn Fn()| {
        let mut v: Vec<Duration> = (0..5)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed()
            })
            .collect();
        v.sort();
        v[2]
    };
    let tc = time(&|| {
        black_box(transcode_all(&input24, LMNT_RATE));
    });
    let resampled = time(&|| {
        black_box(transcode_all(&input24, 48_000));
    });
    let bare = time(&|| {
        black_box(bare_opus(&input48));
    });
    println!(
        "transcode 60 s of 24 kHz speech-like audio: {:.1} ms, real-time factor {:.0}x per core",
        tc.as_secs_f64() * 1e3,
        60.0 / tc.as_secs_f64()
    );
    println!(
        "the same resampled to 48 kHz before encoding: {:.1} ms",
        resampled.as_secs_f64() * 1e3
    );
    println!(
        "bare libopus encode of the same 60 s at 48 kHz: {:.1} ms; transcode / bare = {:.3}",
        bare.as_secs_f64() * 1e3,
        tc.as_secs_f64() / bare.as_secs_f64()
    );
    let utt = bytes(&speech_like(24_000, 3));
    let start = Instant::now();
    black_box(run_calls(CALLS, &utt));
    let calls_t = start.elapsed();
    let call_seconds = (CALLS as u64 * CALL_SECONDS) as f64;
    println!(
        "pacer + transcoder, {CALLS} calls x {CALL_SECONDS} s virtual: {:.1} ms, {:.3} % of one core per call-second",
        calls_t.as_secs_f64() * 1e3,
        100.0 * calls_t.as_secs_f64() / call_seconds
    );

    let mut g = c.benchmark_group("audio");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("transcode_60s_24k", |b| {
        b.iter(|| transcode_all(black_box(&input24), LMNT_RATE))
    });
    g.bench_function("bare_opus_60s_48k", |b| {
        b.iter(|| bare_opus(black_box(&input48)))
    });
    g.finish();
    let mut g = c.benchmark_group("pacer");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("1_call_10s", |b| b.iter(|| run_calls(1, black_box(&utt))));
    g.finish();
}

criterion_group!(benches, figures);
criterion_main!(benches);

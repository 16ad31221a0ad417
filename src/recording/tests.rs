//! The whole recording path in one process: mixer → recorder → WAV on disk → (after a
//! simulated crash) repair → hound.

use std::path::Path;
use std::time::{Duration, Instant};

use super::mixer::SLOT_SAMPLES;
use super::writer::{wav_spec, FLUSH_EVERY_BYTES};
use super::*;

const OPUS_RATE: u32 = 48_000;
const OPUS_TICKS: u32 = 960;
const AMP: f64 = 12_000.0;

/// `n` samples of a sine at `freq` of amplitude `amp`, continuous from absolute sample `from`
/// at `rate` (shared with the mixer's unit tests).
pub(super) fn sine(freq: f64, amp: f64, rate: u32, from: u64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (from + i as u64) as f64 / f64::from(rate);
            (amp * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// Amplitude of `freq` in `x` at `rate` (Goertzel, normalised so a sine of amplitude A gives
/// A; shared with the mixer's unit tests).
pub(super) fn goertzel_amplitude(x: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    2.0 * (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2).sqrt() / x.len() as f64
}

fn tone(freq: f64, rate: u32, from: u64, n: usize) -> Vec<i16> {
    sine(freq, AMP, rate, from, n)
}

fn amplitude(x: &[i16], freq: f64) -> f64 {
    goertzel_amplitude(x, freq, RECORDING_RATE)
}

fn channels(path: &Path) -> (hound::WavSpec, Vec<i16>, Vec<i16>) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let flat: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let left = flat.iter().step_by(2).copied().collect();
    let right = flat.iter().skip(1).step_by(2).copied().collect();
    (spec, left, right)
}

fn slots(x: &[i16], from: u64, to: u64) -> &[i16] {
    &x[from as usize * SLOT_SAMPLES..to as usize * SLOT_SAMPLES]
}

/// Drives a 6 s call: the bot says 1 kHz in slots 50..150 (1 to 3 s), the caller 440 Hz in
/// slots 200..290, arriving up to 4 slots late and out of order; each tick pushes, drains and
/// writes as the driver will.
fn drive_call(mixer: &mut RecordingMixer, rec: &mut Recorder, last_slot: u64) {
    let bot_frame = (OPUS_RATE / 50) as usize;
    let mut out = Vec::new();
    let mut in_flight: Vec<(u64, u64)> = Vec::new(); // (arrival slot, caller frame)
    for slot in 0..=last_slot {
        let bot = (50..150)
            .contains(&slot)
            .then(|| tone(1_000.0, OPUS_RATE, slot * bot_frame as u64, bot_frame));
        mixer.push_bot(slot, bot.as_deref()).unwrap();
        if (200..290).contains(&slot) {
            let k = slot - 200;
            let delay = if k == 0 { 0 } else { (k * 7) % 5 };
            in_flight.push((slot + delay, k));
        }
        in_flight.sort();
        while in_flight.first().is_some_and(|&(at, _)| at == slot) {
            let (_, k) = in_flight.remove(0);
            let pcm = tone(440.0, RECORDING_RATE, k * SLOT_SAMPLES as u64, SLOT_SAMPLES);
            let ts = 4_000_000_000u32.wrapping_add(k as u32 * OPUS_TICKS); // wraps at k ≈ 307
            mixer.push_caller(slot, ts, 48_000, &pcm);
        }
        mixer.drain(slot, &mut out);
        rec.write(&out).unwrap();
        out.clear();
    }
}

#[test]
fn recording_a_call_writes_a_two_channel_wav_of_the_calls_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut mixer = RecordingMixer::new(OPUS_RATE).unwrap();
    let mut rec = Recorder::start(dir.path(), "call1").unwrap();
    let last_slot = 299;
    drive_call(&mut mixer, &mut rec, last_slot);
    let mut out = Vec::new();
    while mixer.finish(last_slot, &mut out).unwrap() {}
    rec.write(&out).unwrap();
    let path = rec.finish().unwrap();
    assert_eq!(path, dir.path().join("call1.wav"));

    let (spec, left, right) = channels(&path);
    assert_eq!(spec, wav_spec());
    assert_eq!(spec.channels, 2);
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(
        left.len(),
        (last_slot as usize + 1) * SLOT_SAMPLES,
        "6 s, the call's length"
    );

    // Right: the bot's 1 kHz in 1..3 s, nothing else.
    assert!(amplitude(slots(&right, 52, 148), 1_000.0) > AMP * 0.97);
    assert!(slots(&right, 0, 49).iter().all(|&v| v.abs() <= 2));
    assert!(slots(&right, 151, 300).iter().all(|&v| v.abs() <= 2));
    // Left: the caller's 440 Hz at its RTP place (4..5.8 s), despite jitter and reordering.
    assert!(amplitude(slots(&left, 201, 289), 440.0) > AMP * 0.99);
    assert!(slots(&left, 0, 200).iter().all(|&v| v == 0));
    assert!(slots(&left, 290, 300).iter().all(|&v| v == 0));
    let onset = left.iter().position(|&v| v.abs() > 3_000).unwrap();
    assert!(
        onset.abs_diff(200 * SLOT_SAMPLES) <= 4,
        "caller onset at {onset}"
    );
    assert_eq!(mixer.stats().caller_frames_placed, 90);

    // A finished recording is intact.
    let report = repair_dir(dir.path()).unwrap();
    assert!(matches!(report[..], [(_, Ok(RepairOutcome::Intact))]));
}

#[test]
fn a_recording_cut_by_a_crash_is_repaired_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let crash_dir = tempfile::tempdir().unwrap();
    let mut mixer = RecordingMixer::new(OPUS_RATE).unwrap();
    let mut rec = Recorder::start(dir.path(), "call2").unwrap();
    drive_call(&mut mixer, &mut rec, 299);

    // What SIGKILL leaves: the file as the writer thread has written it so far, its header
    // from the last periodic flush. Wait for at least two flushes, then copy it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let declared = |p: &Path| u64::from(hound::WavReader::open(p).unwrap().len()) * 2;
    while declared(rec.path()) < 2 * FLUSH_EVERY_BYTES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let crashed = crash_dir.path().join("call2.wav");
    std::fs::copy(rec.path(), &crashed).unwrap();
    // And a write cut mid-sample.
    let len = std::fs::metadata(&crashed).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&crashed)
        .unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    // The writer may have been mid-frame too: whatever is not a whole frame goes.
    let available = len - 3 - 44;

    let report = repair_dir(crash_dir.path()).unwrap();
    let [(
        path,
        Ok(RepairOutcome::Repaired {
            data_bytes,
            truncated_bytes,
        }),
    )] = &report[..]
    else {
        panic!("{report:?}");
    };
    assert_eq!(path, &crashed);
    assert_eq!(*truncated_bytes, available % 4, "the partial sample frame");
    assert_ne!(*truncated_bytes, 0);
    assert_eq!(u64::from(*data_bytes), available - available % 4);

    let (spec, left, right) = channels(&crashed);
    assert_eq!((spec.channels, spec.sample_rate), (2, 16_000));
    assert_eq!(left.len() as u64 * 4, u64::from(*data_bytes));
    // What it holds is the call's start, the bot's tone in place.
    assert!(right.len() >= 100 * SLOT_SAMPLES);
    assert!(amplitude(slots(&right, 52, 98), 1_000.0) > AMP * 0.97);

    let mut out = Vec::new();
    while mixer.finish(299, &mut out).unwrap() {}
    rec.write(&out).unwrap();
    rec.finish().unwrap();
}

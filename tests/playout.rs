//! Playout in virtual time: every Instant is explicit, nothing sleeps.

use std::time::{Duration, Instant};

use lmnt_bridge::audio::InputFormat;
use lmnt_bridge::playout::{OutFrame, Playout, PlayoutConfig, PlayoutEvent};

const MS: Duration = Duration::from_millis(1);
const RATE: u32 = 24_000;

fn cfg(jitter_max_ms: u64, max_queued_ms: u64) -> PlayoutConfig {
    PlayoutConfig {
        input_format: InputFormat::PcmS16le,
        input_rate: RATE,
        output_rate: 48_000,
        jitter_min: Duration::ZERO,
        jitter_max: Duration::from_millis(jitter_max_ms),
        max_queued: Duration::from_millis(max_queued_ms),
        max_late: 100 * MS,
    }
}

/// `ms` of a 440 Hz tone at 24 kHz as s16le.
fn tone(ms: u64) -> Vec<u8> {
    let n = RATE as u64 * ms / 1000;
    (0..n)
        .flat_map(|i| {
            let v = (0.5
                * 32_767.0
                * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(RATE)).sin())
                as i16;
            v.to_le_bytes()
        })
        .collect()
}

/// A scripted TTS: (time, action).
enum Act {
    Audio(u64, Vec<u8>),
    End(u64),
    /// A mark that waits for the utterance given (and every one before it).
    Mark(u64, &'static str),
    /// A barge-in finishing every utterance up to the one given.
    Clear(u64),
}

/// Runs the schedule: before each deadline, applies every action due by then, then polls
/// exactly at the deadline. Returns every frame until `until`.
fn simulate(
    p: &mut Playout,
    t0: Instant,
    mut script: Vec<(Instant, Act)>,
    until: Instant,
) -> Vec<OutFrame> {
    script.sort_by_key(|(t, _)| *t);
    let mut script = script.into_iter().peekable();
    p.start(t0);
    let mut frames = Vec::new();
    while let Some(deadline) = p.next_deadline() {
        if deadline > until {
            break;
        }
        while let Some((t, _)) = script.peek() {
            if *t > deadline {
                break;
            }
            let Some((t, act)) = script.next() else { break };
            match act {
                Act::Audio(u, b) => p.push_audio(t, u, &b).unwrap(),
                Act::End(u) => p.end_utterance(t, u),
                Act::Mark(after, name) => p.mark(after, name.to_string()),
                Act::Clear(through) => p.clear(through),
            }
        }
        frames.push(p.poll(deadline).expect("frame due"));
    }
    frames
}

fn index_of(frames: &[OutFrame], ev: impl Fn(&PlayoutEvent) -> bool) -> Option<usize> {
    frames.iter().position(|f| f.events.iter().any(&ev))
}

fn started(u: u64) -> impl Fn(&PlayoutEvent) -> bool {
    move |e| matches!(e, PlayoutEvent::UtteranceStarted { utterance } if *utterance == u)
}

fn done(u: u64) -> impl Fn(&PlayoutEvent) -> bool {
    move |e| matches!(e, PlayoutEvent::UtteranceDone { utterance, .. } if *utterance == u)
}

/// Frames a 24 kHz utterance of `ms` yields: ceil((ms*48 + 480) / 960).
fn frames_for(ms: u64) -> usize {
    (ms * 48 + 480).div_ceil(960) as usize
}

#[test]
fn before_start_nothing_and_no_audio_no_start() {
    let mut p = Playout::new(cfg(300, 10_000)).unwrap();
    let t0 = Instant::now();
    assert!(p.poll(t0).is_none());
    assert!(p.next_deadline().is_none());
    p.start(t0);
    // Utterance 1 was flushed but no audio came: it does not start; silence flows.
    for i in 0..10 {
        let f = p.poll(t0 + 20 * i * MS).unwrap();
        assert!(f.events.is_empty());
        assert_eq!(f.slot, u64::from(i));
    }
    assert_eq!(p.stats().underrun_frames, 0);
    p.end_utterance(t0 + 200 * MS, 1);
    let f = p.poll(t0 + 200 * MS).unwrap();
    assert_eq!(
        f.events,
        vec![PlayoutEvent::UtteranceDone {
            utterance: 1,
            audio_ms: 0
        }]
    );
}

#[test]
fn burst_of_5s_in_200ms_starts_at_once_and_plays_gapless() {
    let mut p = Playout::new(cfg(300, 60_000)).unwrap();
    let t0 = Instant::now();
    let mut script = Vec::new();
    for i in 0..50u32 {
        script.push((t0 + 4 * i * MS, Act::Audio(1, tone(100))));
    }
    script.push((t0 + 200 * MS, Act::End(1)));
    let frames = simulate(&mut p, t0, script, t0 + 6_000 * MS);
    assert_eq!(
        index_of(&frames, started(1)),
        Some(0),
        "first frame carries the start"
    );
    let end = index_of(&frames, done(1)).unwrap();
    assert_eq!(end + 1, frames_for(5_000));
    let st = p.stats();
    assert_eq!(st.underrun_frames, 0);
    assert_eq!(st.audio_frames as usize, frames_for(5_000));
    assert!(st.delivery_speed.unwrap() > 10.0, "{st:?}");
    assert!(frames[end].events.contains(&PlayoutEvent::UtteranceDone {
        utterance: 1,
        audio_ms: 5_000
    }));
}

#[test]
fn slow_tts_at_0_8x_grows_the_startup_buffer_and_stops_underrunning() {
    let mut p = Playout::new(cfg(1_000, 60_000)).unwrap();
    let t0 = Instant::now();
    let mut script = Vec::new();
    // Six utterances of 2 s, 100 ms chunks every 125 ms (0.8x real time), 4 s apart.
    for u in 1..=6u64 {
        let base = t0 + Duration::from_secs(4 * (u - 1));
        for i in 1..=20u32 {
            script.push((base + 125 * i * MS, Act::Audio(u, tone(100))));
        }
        script.push((base + 2_500 * MS, Act::End(u)));
        script.push((
            base + 2_500 * MS,
            Act::Mark(u, ["m1", "m2", "m3", "m4", "m5", "m6"][(u - 1) as usize]),
        ));
    }
    let mut underruns_per_utt = Vec::new();
    let mut p_frames = Vec::new();
    let mut last = 0;
    // Run utterance by utterance to read the underrun counter in between.
    let mut script_iter: Vec<_> = script;
    for u in 1..=6u64 {
        let until = t0 + Duration::from_secs(4 * u) - 20 * MS;
        let (now_part, later): (Vec<_>, Vec<_>) =
            script_iter.into_iter().partition(|(t, _)| *t <= until);
        script_iter = later;
        if u == 1 {
            p_frames.extend(simulate(&mut p, t0, now_part, until));
        } else {
            // Continue the same schedule.
            let mut part = now_part.into_iter().peekable();
            while let Some(deadline) = p.next_deadline() {
                if deadline > until {
                    break;
                }
                while part.peek().is_some_and(|(t, _)| *t <= deadline) {
                    match part.next() {
                        Some((t, Act::Audio(u, b))) => p.push_audio(t, u, &b).unwrap(),
                        Some((t, Act::End(u))) => p.end_utterance(t, u),
                        Some((_, Act::Mark(after, n))) => p.mark(after, n.to_string()),
                        _ => {}
                    }
                }
                p_frames.push(p.poll(deadline).unwrap());
            }
        }
        let s = p.stats();
        underruns_per_utt.push(s.underrun_frames - last);
        last = s.underrun_frames;
        assert!(
            index_of(&p_frames, done(u)).is_some(),
            "utterance {u} finished within its 4 s"
        );
    }
    println!(
        "underruns per utterance {underruns_per_utt:?}, stats {:?}",
        p.stats()
    );
    assert!(
        underruns_per_utt[0] > 0,
        "the first utterance, before adapting, underruns"
    );
    assert!(
        underruns_per_utt[2..].iter().all(|&n| n == 0),
        "{underruns_per_utt:?}"
    );
    let s = p.stats();
    assert!(
        s.startup_buffer >= 450 * MS && s.startup_buffer <= 1_000 * MS,
        "{s:?}"
    );
    assert!((s.delivery_speed.unwrap() - 0.8).abs() < 0.02);
    // Once adapted: every frame between start and done carries audio (no gap).
    for u in 3..=6 {
        let a = index_of(&p_frames, started(u)).unwrap();
        let b = index_of(&p_frames, done(u)).unwrap();
        assert_eq!(b - a + 1, frames_for(2_000), "utterance {u} is contiguous");
    }
}

#[test]
fn a_stall_within_max_late_sends_the_missed_frames_at_once_with_continuous_rtp() {
    let mut p = Playout::new(cfg(300, 60_000)).unwrap();
    let t0 = Instant::now();
    p.start(t0);
    p.push_audio(t0, 1, &tone(2_000)).unwrap();
    p.end_utterance(t0, 1);
    for _ in 0..10 {
        let d = p.next_deadline().unwrap();
        p.poll(d).unwrap();
    }
    // A 70 ms hiccup: the frame due at 200 ms is polled at 270 ms.
    let late_now = p.next_deadline().unwrap() + 70 * MS;
    let mut burst = Vec::new();
    while let Some(f) = p.poll(late_now) {
        burst.push(f);
    }
    // Slots 10..=13 (deadlines 200..=260 ms) go out at once, in order, each in its own slot.
    assert_eq!(
        burst.iter().map(|f| f.slot).collect::<Vec<_>>(),
        [10, 11, 12, 13]
    );
    assert!(burst.iter().all(|f| f.pcm.is_some()), "no audio lost");
    let s = p.stats();
    assert_eq!(
        s.late_frames, 0,
        "no slot skipped: RTP time stays continuous"
    );
    assert_eq!(s.delayed_frames, 3, "the three more than a frame late");
    // Back on the grid: the next frame is due at 280 ms.
    assert_eq!(p.next_deadline().unwrap(), t0 + 280 * MS);
}

#[test]
fn a_200ms_stall_skips_slots_without_a_burst() {
    let mut p = Playout::new(cfg(300, 60_000)).unwrap();
    let t0 = Instant::now();
    p.start(t0);
    p.push_audio(t0, 1, &tone(3_000)).unwrap();
    p.end_utterance(t0, 1);
    let mut frames = Vec::new();
    for _ in 0..50 {
        let d = p.next_deadline().unwrap();
        frames.push(p.poll(d).unwrap());
    }
    // The process stalls: the next poll comes 200 ms after its deadline.
    let due = p.next_deadline().unwrap();
    let late_now = due + 200 * MS;
    let f = p.poll(late_now).unwrap();
    assert_eq!(f.deadline, late_now, "skipped to the slot due now");
    assert_eq!(
        f.slot,
        50 + 10,
        "the slot (and so RTP time) jumps with the schedule"
    );
    assert_eq!(p.stats().late_frames, 10);
    // No burst: polling again at the same instant yields nothing.
    assert!(p.poll(late_now).is_none());
    assert_eq!(p.next_deadline().unwrap() - late_now, 20 * MS);
    let mut prev = f;
    for _ in 0..20 {
        let d = p.next_deadline().unwrap();
        let f = p.poll(d + 3 * MS).unwrap();
        assert_eq!(f.deadline - prev.deadline, 20 * MS);
        assert_eq!(f.slot - prev.slot, 1);
        prev = f;
    }
    // No audio was dropped: the utterance still has all its frames.
    let mut n = 0;
    while index_of(std::slice::from_ref(&prev), done(1)).is_none() {
        let d = p.next_deadline().unwrap();
        prev = p.poll(d).unwrap();
        n += 1;
        assert!(n < 500);
    }
    assert_eq!(p.stats().audio_frames as usize, frames_for(3_000));
    assert_eq!(p.stats().underrun_frames, 0);
}

/// Per frame: the RMS of the whole frame and of its last 2.5 ms, full scale 1.0; silence
/// (`None`) is 0.
fn levels(frames: &[OutFrame]) -> Vec<(f64, f64)> {
    let rms = |s: &[i16]| {
        (s.iter()
            .map(|&v| (f64::from(v) / 32_768.0).powi(2))
            .sum::<f64>()
            / s.len() as f64)
            .sqrt()
    };
    frames
        .iter()
        .map(|f| match &f.pcm {
            Some(pcm) => {
                assert_eq!(pcm.len(), 960, "20 ms at 48 kHz");
                (rms(pcm), rms(&pcm[pcm.len() - 120..]))
            }
            None => (0.0, 0.0),
        })
        .collect()
}

#[test]
fn clear_mid_utterance_fades_within_a_frame_and_reports_played_ms() {
    let mut p = Playout::new(cfg(300, 60_000)).unwrap();
    let t0 = Instant::now();
    let script = vec![
        (t0, Act::Audio(1, tone(2_000))),
        (t0, Act::Mark(1, "before-clear")),
        (t0 + 500 * MS, Act::Clear(1)),
        // LMNT audio still in flight for the cleared utterance is ignored.
        (t0 + 540 * MS, Act::Audio(1, tone(500))),
        (t0 + 600 * MS, Act::Audio(2, tone(200))),
        (t0 + 600 * MS, Act::End(2)),
    ];
    let frames = simulate(&mut p, t0, script, t0 + 1_200 * MS);
    let c = index_of(&frames, |e| matches!(e, PlayoutEvent::Cleared { .. })).unwrap();
    // The clear at 500 ms rides on the frame due at 500 ms (25 frames played before it).
    assert_eq!(c, 25);
    // played = 26 frames (faded one included) minus the 5 ms resampler delay.
    assert!(frames[c].events.contains(&PlayoutEvent::Cleared {
        utterance: 1,
        played_ms: 515
    }));
    assert!(
        frames[c].events.contains(&PlayoutEvent::Mark {
            name: "before-clear".into(),
            played: false
        }),
        "the mark waited for audio the clear dropped"
    );
    let levels = levels(&frames);
    assert!(levels[c - 1].0 > 0.2, "playing before: {:?}", levels[c - 1]);
    assert!(levels[c].0 < levels[c - 1].0, "fading: {:?}", levels[c]);
    assert!(
        levels[c].1 < 0.01,
        "the faded frame ends near zero (no click): {:?}",
        levels[c]
    );
    for (i, l) in levels.iter().enumerate().skip(c + 1).take(4) {
        assert!(l.0 < 0.001, "silence after the fade, frame {i}: {l:?}");
    }
    assert!(p.stats().bytes_after_clear > 0);
    // The next utterance plays normally.
    let s2 = index_of(&frames, started(2)).unwrap();
    assert_eq!(s2, 30);
    assert!(index_of(&frames, done(2)).is_some());
}

#[test]
fn ten_minutes_zero_drift_between_rtp_and_schedule() {
    let mut p = Playout::new(cfg(300, 2_000)).unwrap();
    let t0 = Instant::now();
    p.start(t0);
    let chunk = tone(1_000);
    let mut utterance = 1;
    let mut pushed_in_utt = 0;
    let mut seed: u32 = 7;
    for n in 0..30_000u64 {
        let d = p.next_deadline().unwrap();
        assert_eq!(d - t0, Duration::from_millis(20 * n));
        while p.has_room() {
            p.push_audio(d, utterance, &chunk).unwrap();
            pushed_in_utt += 1;
            if pushed_in_utt == 7 {
                p.end_utterance(d, utterance);
                utterance += 1;
                pushed_in_utt = 0;
            }
        }
        // Poll up to 19 ms late: still the same slot.
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let jitter = u64::from(seed >> 16) % 19;
        let f = p.poll(d + Duration::from_millis(jitter)).unwrap();
        assert_eq!(f.deadline, d);
        let media_us = (f.deadline - t0).as_micros() as u64;
        assert_eq!(f.slot * 20_000, media_us, "frame {n}");
    }
    let s = p.stats();
    assert_eq!(s.frames_sent, 30_000);
    assert_eq!(s.late_frames, 0);
    assert_eq!(s.underrun_frames, 0);
}

#[test]
fn backpressure_at_max_queued_without_dropping_audio() {
    let mut p = Playout::new(cfg(300, 1_000)).unwrap();
    let t0 = Instant::now();
    p.start(t0);
    let mut pushed = 0;
    while p.has_room() {
        p.push_audio(t0, 1, &tone(100)).unwrap();
        pushed += 1;
        assert!(pushed < 100);
    }
    assert!(
        p.queued() >= 1_000 * MS && p.queued() < 1_100 * MS,
        "{:?}",
        p.queued()
    );
    // A caller that ignores backpressure still loses nothing.
    p.push_audio(t0, 1, &tone(500)).unwrap();
    p.end_utterance(t0, 1);
    let total_ms = pushed * 100 + 500;
    let mut audio_ms = None;
    for _ in 0..200 {
        let d = p.next_deadline().unwrap();
        let f = p.poll(d).unwrap();
        if !p.has_room() {
            assert!(p.queued() >= 1_000 * MS);
        }
        for e in f.events {
            if let PlayoutEvent::UtteranceDone { audio_ms: a, .. } = e {
                audio_ms = Some(a);
            }
        }
    }
    assert_eq!(audio_ms, Some(total_ms));
    assert_eq!(p.stats().audio_frames as usize, frames_for(total_ms));
    assert!(p.has_room());
    assert_eq!(p.queued(), Duration::ZERO);
}

#[test]
fn marks_fire_when_everything_before_them_went_out() {
    let mut p = Playout::new(cfg(300, 60_000)).unwrap();
    let t0 = Instant::now();
    let script = vec![
        (t0, Act::Mark(0, "empty")),
        (t0 + 100 * MS, Act::Audio(1, tone(500))),
        (t0 + 100 * MS, Act::End(1)),
        (t0 + 100 * MS, Act::Mark(1, "after-1")),
        (t0 + 300 * MS, Act::Audio(2, tone(300))),
        (t0 + 300 * MS, Act::End(2)),
    ];
    let frames = simulate(&mut p, t0, script, t0 + 2_000 * MS);
    assert_eq!(
        index_of(
            &frames,
            |e| matches!(e, PlayoutEvent::Mark { name, played: true } if name == "empty")
        ),
        Some(0)
    );
    let d1 = index_of(&frames, done(1)).unwrap();
    assert_eq!(d1, 5 + frames_for(500) - 1);
    let m = index_of(
        &frames,
        |e| matches!(e, PlayoutEvent::Mark { name, played: true } if name == "after-1"),
    );
    assert_eq!(m, Some(d1), "the mark rides on utterance 1's last frame");
    // Utterance 2 starts right after 1 ends, on the next frame.
    assert_eq!(index_of(&frames, started(2)), Some(d1 + 1));
}

//! Call recording over real sockets: the daemon records a live call (caller left, bot right,
//! on the call's timeline) to a WAV under its state directory, finalized before `call.ended`
//! names it; a daemon killed mid-recording leaves a file the next start repairs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::bot::place_call;
use support::daemon::Daemon;
use support::prometheus::{parse, value};
use support::webrtc_caller::{http_request, tone_ratio_at, CALLER_TONE_HZ};
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The recording's rate (the bot's caller-audio rate).
const RATE: u32 = 16_000;
/// Samples of one 20 ms slot in the recording.
const SLOT: usize = 320;

fn config(state_dir: &std::path::Path) -> String {
    format!(
        "[lmnt]\nvoice = \"tones\"\nsample_rate = 24000\n[calls]\nrecord = true\nstate_dir = \"{}\"\n",
        state_dir.display()
    )
}

fn channels(samples: &[i16]) -> (Vec<i16>, Vec<i16>) {
    let left = samples.chunks_exact(2).map(|s| s[0]).collect();
    let right = samples.chunks_exact(2).map(|s| s[1]).collect();
    (left, right)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_holds_both_sides_on_the_calls_timeline() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&tts.base_url, &config(state.path()), &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let text = "rec 12 ok";
    bot.say_by_char(text).await;
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    // A barge-in mid-utterance: heard_text must be the words the recording holds in full.
    let long = "abc def ghi jkl mno pqr stu vwx yz0 123 456 789";
    let before = caller.packets().len();
    bot.say_by_char(long).await;
    caller
        .wait_audible_ms(before, 700, EVENT_TIMEOUT)
        .await
        .expect("700 ms of the second utterance at the caller");
    bot.send(serde_json::json!({"type": "clear"})).await;
    let cleared = bot.wait_type("cleared", EVENT_TIMEOUT).await;
    let heard_text = cleared["heard_text"].as_str().unwrap().to_owned();
    assert!(!heard_text.is_empty(), "{cleared}");
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    let ended = bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    let path = ended["recording"]
        .as_str()
        .expect("call.ended names the recording");
    assert!(path.starts_with(&state.path().join("recordings").display().to_string()));

    let reader = hound::WavReader::open(path).expect("a finalized WAV");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, RATE, 16)
    );
    let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    let (caller_side, bot_side) = channels(&samples);

    // Its length is the call's: every slot the daemon played, within one frame.
    let metrics = http_request(&daemon.addr.to_string(), "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let (_, _, metrics) = parse(&String::from_utf8(metrics.body).unwrap());
    let slots = value(&metrics, "lmnt_bridge_pacer_frames_sent_total", &[]).unwrap()
        + value(&metrics, "lmnt_bridge_pacer_late_frames_total", &[]).unwrap_or(0.0);
    let recorded = (bot_side.len() / SLOT) as f64;
    assert!(
        (recorded - slots).abs() <= 1.0,
        "{recorded} slots recorded, {slots} played"
    );
    assert_eq!(bot_side.len() % SLOT, 0);

    // The right channel is what the bot said, the second utterance cut by the clear; the
    // left, the caller's tone.
    let recorded_text = tones::collapse_spaces(&tones::decode_i16(&bot_side, RATE));
    // (The second utterance may follow the first within a character's silence.)
    let cut = recorded_text
        .strip_prefix(&tones::expected(text))
        .unwrap_or_else(|| panic!("recorded {recorded_text:?}"))
        .trim_start();
    assert!(long.starts_with(cut), "recorded {cut:?}");
    // The words the recording holds in full: those of the cut that are whole words of the
    // utterance.
    let full_words: Vec<&str> = cut
        .split(' ')
        .zip(long.split(' '))
        .take_while(|(recorded, said)| recorded == said)
        .map(|(word, _)| word)
        .collect();
    // heard_text names exactly those; played_ms, which it comes from, has the resolution of
    // one 20 ms frame, so the last of them may be left out when the fade fell on its last
    // character's trailing silence.
    let heard: Vec<&str> = heard_text.split(' ').collect();
    assert!(
        heard == full_words || heard == full_words[..full_words.len().saturating_sub(1)],
        "heard_text {heard_text:?}, recorded in full {full_words:?}"
    );
    // (From 100 ms in: the caller's first packet anchors its side where it arrived.)
    let tone = tone_ratio_at(&caller_side[5 * SLOT..], CALLER_TONE_HZ, RATE);
    assert!(tone > 0.8, "the caller's tone on the left ({tone:.3})");
    let crosstalk = tone_ratio_at(&bot_side, CALLER_TONE_HZ, RATE);
    assert!(crosstalk < 0.05, "no caller on the right ({crosstalk:.3})");
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_left_by_a_killed_daemon_is_repaired_at_the_next_start() {
    let tts = local_tts::spawn(BIN, &["--speed", "1"], &[], Stdio::null());
    let state = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&tts.base_url, &config(state.path()), &[]);
    let (caller, mut bot) = place_call(&daemon).await;
    bot.say_by_char("abc def ghi jkl mno pqr stu vwx").await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;

    // Mid-call, once the writer has put more than a second of audio on disk (stereo 16-bit:
    // 4 bytes a sample frame, after a 44-byte header).
    let dir = state.path().join("recordings");
    let wav = wait_for_file_over(&dir, u64::from(RATE) * 4 + 44).await;
    daemon.kill();
    let size = std::fs::metadata(&wav).unwrap().len();

    let daemon = Daemon::start(&tts.base_url, &config(state.path()), &[]);
    let reader = hound::WavReader::open(&wav).unwrap_or_else(|e| {
        panic!(
            "the next start repairs the WAV ({size} bytes): {e}\n{}",
            daemon.log()
        )
    });
    assert!(
        daemon.log().contains("unfinished recording repaired"),
        "the header was stale and the start repaired it:\n{}",
        daemon.log()
    );
    assert_eq!(reader.spec().channels, 2);
    let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    assert!(samples.len() * 2 + 44 <= size as usize);
    // At least the second on disk before the kill (interleaved: two samples a frame).
    assert!(
        samples.len() >= 2 * RATE as usize,
        "{} samples",
        samples.len()
    );
    let (_, bot_side) = channels(&samples);
    let heard = tones::collapse_spaces(&tones::decode_i16(&bot_side, RATE));
    // What was recorded before the kill: the start of what the bot said (a character cut by
    // the kill may be missing at the end).
    let said = "abc def ghi jkl mno pqr stu vwx";
    assert!(heard.len() >= 3, "{heard:?}");
    assert!(said.starts_with(heard.trim_end()), "{heard:?}");
    drop(caller);
}

/// Polls `dir` until a WAV in it is larger than `bytes`; returns its path.
async fn wait_for_file_over(dir: &std::path::Path, bytes: u64) -> std::path::PathBuf {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.metadata().map(|m| m.len() > bytes).unwrap_or(false) {
                    return entry.path();
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recording over {bytes} bytes in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

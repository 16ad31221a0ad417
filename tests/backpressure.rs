//! Backpressure from the playout to LMNT's socket, end to end (issue 8): a TTS that delivers
//! far faster than real time must not grow the daemon's memory. The daemon's playout holds
//! at most `audio.max_queued_ms` of audio; beyond that, LMNT's audio must stay in LMNT's
//! socket (TCP flow control), not pile up inside the daemon.
//!
//! Real sockets: the `serve` daemon, a `local-tts` process at 50x real time, a bot on the
//! control channel and a webrtc-rs caller. Memory is the daemon's `VmRSS` from `/proc`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::bot::place_call;
use support::daemon::Daemon;
use support::webrtc_caller::get_json;
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
/// 5 s of playout buffer; 5 000 characters of text, as one utterance.
const CONFIG: &str = r#"
[audio]
max_queued_ms = 5000

[lmnt]
voice = "tones"
sample_rate = 24000

[limits]
max_text_message_bytes = 1000
max_utterance_bytes = 5000
"#;
/// The utterance's length: 5 000 characters of the `tones` voice, 60 ms each, is 5 minutes
/// of audio (14.4 MB of 24 kHz s16), delivered by `--speed 50` in about 6 s. (In 100 ms
/// chunks: local-tts sleeps until each chunk's due time, and tokio's 1 ms timer makes that
/// at least about a millisecond a chunk, so 20 ms chunks would cap delivery near 20x real
/// time.)
const UTTERANCE_CHARS: usize = 5_000;
/// Text messages of this many characters (within `max_text_message_bytes`).
const MESSAGE_CHARS: usize = 500;
/// How long memory and audio are watched after the flush (the issue's window).
const WATCH: Duration = Duration::from_secs(20);
/// Sampling period of `VmRSS` within the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Allowed growth of `VmRSS` over its level before the flush.
const MAX_GROWTH_BYTES: u64 = 8 * 1024 * 1024;
/// Characters the caller must have heard in the window. 20 s at 60 ms a character is about
/// 330; this bound only proves audio flowed, with room for a loaded machine.
const MIN_HEARD_CHARS: usize = 100;

/// `a` to `9` over and over, a space after every 7 characters: 5 000 ASCII characters that
/// neither start nor end with a space (no sentence ends, so local-tts speaks them only at
/// the flush, as one piece).
fn utterance() -> String {
    let alphabet: Vec<char> = tones::ALPHABET.chars().collect();
    let mut text = String::with_capacity(UTTERANCE_CHARS);
    let mut next = 0;
    while text.len() < UTTERANCE_CHARS {
        if text.len() % 8 == 7 && text.len() + 1 < UTTERANCE_CHARS {
            text.push(' ');
        } else {
            text.push(alphabet[next % alphabet.len()]);
            next += 1;
        }
    }
    text
}

/// `text` without spaces, and with every run of one character cut to one.
fn without_spaces_and_repeats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|&c| c != ' ') {
        if !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tts_faster_than_real_time_keeps_the_daemons_memory_bounded() {
    let tts = local_tts::spawn(
        BIN,
        &["--speed", "50", "--chunk-ms", "100"],
        &[],
        Stdio::null(),
    );
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let text = utterance();
    assert_eq!(text.len(), UTTERANCE_CHARS);
    for chunk in text.as_bytes().chunks(MESSAGE_CHARS) {
        let chunk = std::str::from_utf8(chunk).expect("ASCII");
        bot.send(json!({"type": "text", "text": chunk})).await;
    }
    // Let the call settle (text forwarded, media running) before the baseline.
    bot.listen_for(Duration::from_secs(2)).await;
    let before = daemon.rss_bytes().expect("daemon VmRSS");

    bot.send(json!({"type": "flush"})).await;
    let mut samples = Vec::new();
    let mut elapsed = Duration::ZERO;
    while elapsed < WATCH {
        bot.listen_for(SAMPLE_EVERY).await;
        elapsed += SAMPLE_EVERY;
        samples.push(daemon.rss_bytes().expect("daemon VmRSS"));
    }
    let max = samples.iter().copied().max().unwrap_or(before);
    let per_second: Vec<String> = samples
        .iter()
        .skip(3)
        .step_by(4)
        .map(|&rss| format!("{:.1}", mib(rss)))
        .collect();
    println!(
        "daemon VmRSS: before the flush {:.1} MiB, max {:.1} MiB (growth {:.1} MiB); each second [MiB]: {}",
        mib(before),
        mib(max),
        mib(max.saturating_sub(before)),
        per_second.join(" ")
    );
    let events = bot.event_values();
    assert!(
        !events.iter().any(|e| e["type"] == "error"),
        "bot got errors: {events:?}"
    );
    let call = get_json(&daemon.addr.to_string(), caller.location()).await;
    println!(
        "call after {WATCH:?}: queued_ms {}, frames_sent {}, underrun_frames {}, late_frames {}, lmnt_reconnects {}",
        call["queued_ms"],
        call["frames_sent"],
        call["underrun_frames"],
        call["late_frames"],
        call["lmnt_reconnects"]
    );
    assert_eq!(
        call["lmnt_reconnects"],
        0,
        "the LMNT session was replaced (liveness?): {call}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        max.saturating_sub(before) <= MAX_GROWTH_BYTES,
        "daemon VmRSS grew by {:.1} MiB (before {:.1} MiB, max {:.1} MiB): unread LMNT audio piles up in the daemon",
        mib(max.saturating_sub(before)),
        mib(before),
        mib(max)
    );

    // What the caller heard is the utterance's beginning, in order. Its last character may
    // have been cut mid-tone by the end of the recording: it is left out.
    let heard = tones::decode_i16(&caller.pcm_48k(), 48_000);
    let mut whole = heard.trim_end().to_owned();
    whole.pop();
    let mut whole = whole.trim_end().to_owned();
    let mut expected = tones::expected(&text);
    println!(
        "caller heard {} characters: {:?}...",
        whole.len(),
        &whole[..whole.len().min(60)]
    );
    // A daemon that stalls (a loaded machine) skips the pacer's slots it missed: RTP time
    // jumps, the caller hears silence there (an extra space, or a tone cut in two that
    // decodes twice). Only then are spaces and repeats left out of the comparison; the
    // utterance has no character twice in a row, so what remains is still checked
    // character by character.
    let late_frames = call["late_frames"].as_u64().unwrap_or(0);
    if late_frames > 0 {
        println!("{late_frames} late frames: comparing without spaces and repeats");
        whole = without_spaces_and_repeats(&whole);
        expected = without_spaces_and_repeats(&expected);
    }
    assert!(
        expected.starts_with(&whole),
        "heard {whole:?}\nnot a prefix of the utterance {:?}",
        &expected[..expected.len().min(whole.len() + 20)]
    );
    assert!(
        whole.len() >= MIN_HEARD_CHARS,
        "only {} characters heard in {WATCH:?}: {heard:?}",
        whole.len()
    );

    assert_eq!(caller.hang_up().await.expect("DELETE"), 204);
    bot.wait_type("call.ended", Duration::from_secs(15)).await;
    caller.close().await;
}

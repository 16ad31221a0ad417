//! The LMNT fault catalogue, end to end over real sockets: the `serve` daemon, a `local-tts`
//! process whose command-line knobs make it misbehave, a bot on the control channel and a
//! webrtc-rs caller. Each test is named after its fault and shows what the operator is
//! promised: the call is never lost, the bot gets a named error when speech is lost, and
//! what the caller hears (decoded from the `tones` voice) has nothing twice and nothing out
//! of order.
//!
//! `--faulty-sessions 1` makes only the first LMNT session misbehave, so the reconnect that
//! follows meets a healthy server (as after a real LMNT blip). Audio figures are bytes of
//! 24 kHz s16le: 48 bytes a millisecond; a `tones` character is 60 ms (2 880 bytes).
//!
//! Nothing here sleeps to let something happen or asserts a wall-clock figure: the waits are
//! on events, on the daemon's figures and on what reached the caller; timeouts only guard
//! against a hang. The only durations asserted are lower bounds that causality sets (audio
//! LMNT delays by 2 s cannot be played sooner than 2 s after the flush).

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::bot::{place_call, Bot};
use support::daemon::{free_port, Daemon};
use support::webrtc_caller::{get_json, get_metric, WebrtcCaller};
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
/// Guard for an event that follows a reconnect (backoff, connect, replay, playout).
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Guard for audio reaching the caller.
const AUDIO_TIMEOUT: Duration = Duration::from_secs(15);
/// 600 ms of 24 kHz s16le: ten `tones` characters.
const MID_UTTERANCE_BYTES: &str = "28800";
/// A sentence long enough (2.5 s) that the faults above strike in its middle.
const SENTENCE: &str = "the quick brown fox jumps 13 times";

fn config(liveness_timeout_ms: u64) -> String {
    format!(
        "[lmnt]\nvoice = \"tones\"\nsample_rate = 24000\nconnect_timeout_ms = 2000\n\
         liveness_timeout_ms = {liveness_timeout_ms}\n"
    )
}

/// `local-tts` with the fault knobs `extra`, delivering in real time in 60 ms frames (one
/// `tones` character each), so a fault strikes while the caller is hearing the utterance.
fn faulty_tts(extra: &[&str]) -> local_tts::Process {
    let mut args = vec!["--speed", "1", "--chunk-ms", "60"];
    args.extend_from_slice(extra);
    local_tts::spawn(BIN, &args, &[], Stdio::null())
}

/// The link's reconnect waits in ms, in order, from its debug lines
/// (`LMNT session down; reconnecting after the backoff ... delay=73ms`).
fn backoff_delays(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("reconnecting after the backoff"))
        .filter_map(|line| {
            let value = line.split("delay=").nth(1)?.split_whitespace().next()?;
            let (number, scale) = if let Some(ms) = value.strip_suffix("ms") {
                (ms, 1.0)
            } else if let Some(us) = value.strip_suffix("µs") {
                (us, 0.001)
            } else {
                (value.strip_suffix('s')?, 1_000.0)
            };
            Some(number.parse::<f64>().ok()? * scale)
        })
        .collect()
}

async fn call_figures(daemon: &Daemon, caller: &WebrtcCaller) -> Value {
    get_json(&daemon.addr.to_string(), caller.location()).await
}

/// How many LMNT failures of `kind` the daemon has counted; None before the first.
async fn lmnt_errors(daemon: &Daemon, kind: &str) -> Option<f64> {
    get_metric(
        &daemon.addr.to_string(),
        "lmnt_bridge_lmnt_errors_total",
        &[("kind", kind)],
    )
    .await
}

/// Waits for `utterance.done` of `utterance` (failing on an `error` first); returns it.
async fn wait_done(bot: &mut Bot, utterance: u64) -> Value {
    let done = bot
        .wait_for(EVENT_TIMEOUT, |v| {
            v["type"] == "utterance.done" || v["type"] == "error"
        })
        .await;
    assert_eq!(done["type"], "utterance.done", "{:?}", bot.event_values());
    assert_eq!(done["utterance"], utterance, "{:?}", bot.event_values());
    done
}

/// A call against `local-tts` with `tts_knobs`: the bot says [`SENTENCE`], and the caller
/// hears it whole (every character exactly once, in order) with no `error` event for the
/// bot. Returns the processes and peers for the caller's further checks.
async fn sentence_heard_whole(
    tts_knobs: &[&str],
    liveness_timeout_ms: u64,
) -> (local_tts::Process, Daemon, WebrtcCaller, Bot) {
    let tts = faulty_tts(tts_knobs);
    let daemon = Daemon::start(&tts.base_url, &config(liveness_timeout_ms), &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    bot.say_by_char(SENTENCE).await;
    wait_done(&mut bot, 1).await;
    caller
        .wait_holds_all_sent(&daemon.addr.to_string(), AUDIO_TIMEOUT)
        .await;
    caller.assert_heard_tones(&tones::expected(SENTENCE), &daemon.log());
    assert!(
        !bot.event_values().iter().any(|e| e["type"] == "error"),
        "no speech was lost, so the bot is told nothing: {:?}",
        bot.event_values()
    );
    (tts, daemon, caller, bot)
}

/// A session that fails mid-utterance is replaced, and the caller hears the sentence once
/// (the reconnect gap is silence, a space).
async fn utterance_survives(tts_knobs: &[&str], liveness_timeout_ms: u64, error_kind: &str) {
    let (_tts, daemon, caller, _bot) = sentence_heard_whole(tts_knobs, liveness_timeout_ms).await;
    let call = call_figures(&daemon, &caller).await;
    assert_eq!(call["lmnt_reconnects"], 1, "{call}");
    assert_eq!(call["lmnt_connected"], true, "{call}");
    assert_eq!(
        lmnt_errors(&daemon, error_kind).await,
        Some(1.0),
        "the failure is counted under its name"
    );
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_connection_refused_at_call_start_retries_and_the_bot_is_told() {
    // The daemon points at a port where nothing listens (yet).
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&format!("http://{listen}"), &config(2_000), &[]);
    // The call is set up all the same: answered, media live, the bot attached.
    let (caller, mut bot) = place_call(&daemon).await;
    let error = bot.wait_type("error", EVENT_TIMEOUT).await;
    assert_eq!(error["code"], "lmnt_unavailable", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("refused"),
        "{error}"
    );
    let refused = lmnt_errors(&daemon, "connect_refused").await.unwrap_or(0.0);
    // The bot is told once the give-up rule's 5 attempts (with jittered backoff between
    // them, see src/lmnt/backoff.rs) have failed; the link keeps retrying after that.
    assert!(refused >= 5.0, "{refused} refused connects");
    // The waits between them, from the daemon's debug log: the n-th a random delay between
    // half and all of 100 ms × 2^(n-1) (capped at 2 s), not the same for every call.
    let delays = backoff_delays(&daemon.log());
    assert!(delays.len() >= 4, "{delays:?}");
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = (100.0 * 2f64.powi(n as i32)).min(2_000.0);
        assert!(
            *delay >= ceiling / 2.0 && *delay <= ceiling,
            "wait {} of {delays:?} outside [{}, {ceiling}] ms",
            n + 1,
            ceiling / 2.0
        );
    }
    assert!(
        delays
            .iter()
            .enumerate()
            .any(|(n, d)| *d != (100.0 * 2f64.powi(n as i32)).min(2_000.0)),
        "jittered: {delays:?}"
    );
    let call = call_figures(&daemon, &caller).await;
    assert_eq!(call["state"], "live", "{call}");
    assert_eq!(call["lmnt_connected"], false, "{call}");

    // LMNT comes up: the next retry (at most 2 s later) connects and the call speaks.
    let _tts = local_tts::spawn_on(BIN, &listen, &[], &[], Stdio::null());
    bot.say_by_char("back 1").await;
    wait_done(&mut bot, 1).await;
    caller
        .wait_holds_all_sent(&daemon.addr.to_string(), AUDIO_TIMEOUT)
        .await;
    caller.assert_heard_tones("back 1", &daemon.log());
    assert_eq!(call_figures(&daemon, &caller).await["lmnt_connected"], true);
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_first_byte_after_2_s_keeps_rtp_flowing_as_silence_and_records_the_latency() {
    const DELAY_MS: u64 = 2_000;
    let tts = local_tts::spawn(
        BIN,
        &["--first-byte-delay-ms", &DELAY_MS.to_string()],
        &[],
        Stdio::null(),
    );
    // The liveness deadline (5 s) is above the first-byte delay: a slow LMNT is not a dead one.
    let daemon = Daemon::start(&tts.base_url, &config(5_000), &[]);
    let (caller, mut bot) = place_call(&daemon).await;
    // Media is flowing before the flush: the caller holds some packets already.
    caller.wait_packets(5, AUDIO_TIMEOUT).await.unwrap();
    let before = caller.packets();
    let last_before_flush = before.last().unwrap().clone();

    bot.say_by_char("slow 1").await;
    let first_audible = caller
        .wait_audible(before.len(), EVENT_TIMEOUT)
        .await
        .expect("the utterance reaches the caller");
    // While LMNT was silent the call kept sending frames (silence): the packets between the
    // flush and the first audible one are there, in sequence.
    let packets = caller.packets();
    let gap: Vec<_> = packets
        .iter()
        .skip(before.len())
        .take_while(|p| p.sequence != first_audible.sequence)
        .collect();
    let ticks = first_audible
        .rtp_timestamp
        .wrapping_sub(last_before_flush.rtp_timestamp);
    println!(
        "{} silent packets while LMNT was silent; RTP span {} ms",
        gap.len(),
        ticks / 48
    );
    assert!(!gap.is_empty(), "no packet while LMNT was silent");
    assert!(
        u64::from(ticks) >= DELAY_MS * 48,
        "the audio cannot be heard before LMNT sends it: RTP span {ticks} ticks"
    );
    let sequences: Vec<u16> = std::iter::once(&last_before_flush)
        .chain(gap.iter().copied())
        .chain(std::iter::once(&first_audible))
        .map(|p| p.sequence)
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "a continuous stream, no packet missing: {sequences:?}"
    );

    wait_done(&mut bot, 1).await;
    caller
        .wait_holds_all_sent(&daemon.addr.to_string(), AUDIO_TIMEOUT)
        .await;
    caller.assert_heard_tones("slow 1", &daemon.log());
    // The latency is recorded, per call and across calls.
    let call = call_figures(&daemon, &caller).await;
    let first_audio = &call["flush_to_first_audio"];
    assert_eq!(first_audio["count"], 1, "{call}");
    assert!(
        first_audio["last_ms"].as_f64().unwrap() >= DELAY_MS as f64,
        "{call}"
    );
    let histogram_sum = get_metric(
        &daemon.addr.to_string(),
        "lmnt_bridge_flush_to_first_audio_byte_seconds_sum",
        &[],
    )
    .await
    .expect("the latency histogram");
    assert!(histogram_sum >= DELAY_MS as f64 / 1000.0, "{histogram_sum}");
    assert_eq!(call["lmnt_reconnects"], 0, "{call}");
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_stall_mid_utterance_trips_liveness_then_reconnect_replays_and_nothing_is_heard_twice()
{
    // The first session stops sending after 600 ms of audio, for far longer than the 1 s
    // liveness deadline.
    utterance_survives(
        &[
            "--stall-after-ms",
            "600",
            "--stall-ms",
            "60000",
            "--faulty-sessions",
            "1",
        ],
        1_000,
        "liveness",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_disconnect_mid_utterance_reconnects_and_nothing_is_heard_twice() {
    // The first session's TCP connection drops (no close frame) after 600 ms of audio.
    utterance_survives(
        &[
            "--disconnect-after-bytes",
            MID_UTTERANCE_BYTES,
            "--faulty-sessions",
            "1",
        ],
        2_000,
        "transport",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_error_frame_mid_utterance_reconnects_and_nothing_is_heard_twice() {
    // The first session sends `{"type":"error","error":"internal_server_error",...}` after
    // 600 ms of audio and closes: a retryable failure.
    utterance_survives(
        &[
            "--error-after-bytes",
            MID_UTTERANCE_BYTES,
            "--faulty-sessions",
            "1",
        ],
        2_000,
        "server_error",
    )
    .await;
}

/// A session that breaks the protocol mid-utterance is ended at once; the utterance is
/// given up (a server that sent garbage is expected to do it again) with the audio that
/// arrived before the bad frame played, the bot gets `code` naming the failure `kind`, and
/// the call goes on: the next utterance is spoken whole on a new session.
async fn protocol_violation_is_named_and_the_call_goes_on(
    tts_knobs: &[&str],
    code: &str,
    kind: &str,
    audio_ms_before: u64,
) {
    let mut knobs = tts_knobs.to_vec();
    knobs.extend_from_slice(&["--faulty-sessions", "1"]);
    let tts = faulty_tts(&knobs);
    let daemon = Daemon::start(&tts.base_url, &config(2_000), &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    bot.say_by_char(SENTENCE).await;
    let error = bot.wait_type("error", EVENT_TIMEOUT).await;
    assert_eq!(error["code"], code, "{error}");
    let done = bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(done["utterance"], 1);
    assert_eq!(done["audio_ms"], audio_ms_before, "{done}");
    assert_eq!(lmnt_errors(&daemon, kind).await, Some(1.0));

    bot.say_by_char("ok").await;
    wait_done(&mut bot, 2).await;
    caller
        .wait_holds_all_sent(&daemon.addr.to_string(), AUDIO_TIMEOUT)
        .await;
    let chars_before = (audio_ms_before / 60) as usize;
    // Spaces are 60 ms of silence each, characters too.
    let spoken_before: String = tones::expected(SENTENCE)
        .chars()
        .take(chars_before)
        .collect();
    caller.assert_heard_tones(&format!("{spoken_before} ok"), &daemon.log());
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_garbage_json_frame_is_a_named_protocol_error_and_the_call_goes_on() {
    protocol_violation_is_named_and_the_call_goes_on(
        &[
            "--inject-frame",
            "garbage",
            "--inject-after-bytes",
            MID_UTTERANCE_BYTES,
        ],
        "lmnt_unavailable",
        "protocol",
        600,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_oversize_frame_is_a_named_error_and_the_call_goes_on() {
    protocol_violation_is_named_and_the_call_goes_on(
        &[
            "--inject-frame",
            "oversize",
            "--inject-after-bytes",
            MID_UTTERANCE_BYTES,
        ],
        "lmnt_unavailable",
        "frame_too_large",
        600,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_audio_in_the_wrong_format_is_bad_lmnt_audio_and_the_call_goes_on() {
    // The first session answers in µ-law with a WAV header although the daemon asked for raw
    // s16le: its first audio frame opens with `RIFF`. Nothing of it is played.
    protocol_violation_is_named_and_the_call_goes_on(
        &["--force-format", "ulaw"],
        "bad_lmnt_audio",
        "audio_format",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_frame_of_an_unknown_type_is_ignored_and_the_utterance_completes() {
    // LMNT may add frame types; one we do not know is skipped (logged at debug), the session
    // goes on and nothing is lost or repeated.
    let knobs = [
        "--inject-frame",
        "unknown-type",
        "--inject-after-bytes",
        MID_UTTERANCE_BYTES,
    ];
    let (_tts, daemon, caller, _bot) = sentence_heard_whole(&knobs, 2_000).await;
    assert_eq!(call_figures(&daemon, &caller).await["lmnt_reconnects"], 0);
    caller.close().await;
}

//! End to end over real sockets: the `serve` daemon, a `local-tts` process speaking the
//! `tones` voice, a bot on the control channel and a real WebRTC caller (webrtc-rs in
//! process, or Python aiortc). Every test decodes what the caller heard and compares text.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::bot::{place_call, Bot};
use support::daemon::{free_port, Daemon};
use support::webrtc_caller::{http_request, WebrtcCaller};
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
const CONFIG: &str = r#"
[lmnt]
voice = "tones"
sample_rate = 24000
connect_timeout_ms = 2000
liveness_timeout_ms = 2000
"#;
/// Three utterances, streamed character by character.
const UTTERANCES: [&str; 3] = ["Hello caller 1. ", "Your code is 42. ", "Goodbye now."];

/// `local-tts` delivering in jittery bursts: 100 ms chunks, each delayed 0..40 ms at random.
fn bursty_tts() -> local_tts::Process {
    local_tts::spawn(
        BIN,
        &["--chunk-ms", "100", "--jitter-ms", "40", "--seed", "7"],
        &[],
        Stdio::null(),
    )
}

fn expected_text(utterances: &[&str]) -> String {
    tones::collapse_spaces(
        &utterances
            .iter()
            .map(|u| tones::expected(u))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn heard(pcm_48k: &[i16]) -> String {
    tones::collapse_spaces(&tones::decode_i16(pcm_48k, 48_000))
}

/// Waits for `utterance.done` of 1..=n, in order, and checks `utterance.started` came first
/// for those from `started_from` on (earlier ones may have started before the bot attached).
async fn wait_done(bot: &mut Bot, n: u64, started_from: u64) {
    for utterance in 1..=n {
        let done = bot
            .wait_for(EVENT_TIMEOUT, |v| {
                v["type"] == "utterance.done" || v["type"] == "error"
            })
            .await;
        assert_eq!(
            done["type"],
            "utterance.done",
            "events: {:?}",
            bot.event_values()
        );
        assert_eq!(
            done["utterance"],
            utterance,
            "events: {:?}",
            bot.event_values()
        );
        assert!(done["audio_ms"].as_u64().unwrap() > 0);
        assert!(
            utterance < started_from
                || bot
                    .event_values()
                    .iter()
                    .any(|e| e["type"] == "utterance.started" && e["utterance"] == utterance),
            "utterance.started {utterance} missing: {:?}",
            bot.event_values()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_caller_hears_every_utterance_exactly_once_in_order() {
    let tts = bursty_tts();
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let base = daemon.base();
    // The first utterance is queued before the caller even applies the answer: its first
    // syllable must not be lost to a track that is not bound yet.
    let caller = WebrtcCaller::dial_with(&format!("{base}/v1/calls"), None, |location| {
        let origin = daemon.addr.to_string();
        async move {
            let body = json!({"text": UTTERANCES[0]}).to_string();
            let reply = http_request(
                &origin,
                "POST",
                &format!("{location}/say"),
                &[("Content-Type".into(), "application/json".into())],
                body.as_bytes(),
            )
            .await
            .expect("say");
            assert_eq!(
                reply.status,
                202,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            let reply: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(reply["utterance"], 1);
        }
    })
    .await
    .expect("dial");
    let mut bot = Bot::attach(&base, caller.location()).await;
    let started = bot.wait_type("call.started", EVENT_TIMEOUT).await;
    assert_eq!(started["voice"], "tones");
    for text in &UTTERANCES[1..] {
        bot.say_by_char(text).await;
    }
    wait_done(&mut bot, 3, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = heard(&caller.pcm_48k());
    assert_eq!(
        text,
        expected_text(&UTTERANCES),
        "daemon log:\n{}",
        daemon.log()
    );
    assert!(bot.caller_audio_frames > 10, "the bot hears the caller");
    assert_eq!(
        bot.caller_audio_bytes % 640,
        0,
        "caller audio comes in 20 ms frames of 16 kHz s16"
    );

    let call: Value = get_json(&daemon.addr.to_string(), caller.location()).await;
    assert_eq!(call["utterances"], 3);
    assert_eq!(call["underrun_frames"], 0, "{call}");
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    let ended = bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    assert_eq!(ended["reason"], "caller_hangup");
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_caller_hears_every_utterance_exactly_once_in_order() {
    let tts = bursty_tts();
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let base = daemon.base();
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("heard.wav");
    let mut aiortc = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/aiortc_caller.py"
        ))
        .args(["--url", &format!("{base}/v1/calls"), "--out-wav"])
        .arg(&wav)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the aiortc caller");
    let mut lines = BufReader::new(aiortc.stdout.take().unwrap()).lines();
    let connected: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(connected["event"], "connected", "{connected}");
    let location = connected["location"].as_str().unwrap().to_owned();

    let mut bot = Bot::attach(&base, &location).await;
    bot.wait_type("call.started", EVENT_TIMEOUT).await;
    for text in UTTERANCES {
        bot.say_by_char(text).await;
    }
    wait_done(&mut bot, 3, 1).await;
    // aiortc drops the last frames when the call closes: keep listening a little.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(aiortc.stdin.take());
    let done: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(done["event"], "done");
    assert!(aiortc.wait().unwrap().success());

    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(reader.spec().sample_rate, 48_000);
    let pcm: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(
        heard(&pcm),
        expected_text(&UTTERANCES),
        "daemon log:\n{}",
        daemon.log()
    );
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_stops_the_utterance_and_the_rest_is_never_heard() {
    let tts = bursty_tts();
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let long = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";
    bot.say_by_char(long).await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    bot.send(json!({"type": "clear"})).await;
    let cleared = bot.wait_type("cleared", EVENT_TIMEOUT).await;
    assert_eq!(cleared["utterance"], 1);
    let played_ms = cleared["played_ms"].as_u64().unwrap();
    assert!((500..=1200).contains(&played_ms), "played_ms {played_ms}");

    bot.say_by_char("ok 7").await;
    let done = bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(
        done["utterance"], 2,
        "the cleared utterance never completes"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let text = heard(&caller.pcm_48k());
    let (before, after) = text.rsplit_once(' ').unwrap_or(("", &text));
    let prefix = before
        .strip_suffix(" ok")
        .unwrap_or_else(|| panic!("heard {text:?}"));
    assert_eq!(after, "7", "heard {text:?}");
    assert!(
        long.starts_with(prefix),
        "heard {prefix:?}, not a prefix of the utterance"
    );
    assert!(
        prefix.len() < long.len() / 2,
        "the rest of the utterance was heard: {prefix:?}"
    );
    // 60 ms a character: the caller heard what played_ms says, give or take a character.
    let heard_ms = prefix.len() as u64 * 60;
    assert!(
        heard_ms.abs_diff(played_ms) <= 80,
        "heard {heard_ms} ms, played_ms {played_ms}"
    );
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_killed_mid_utterance_completes_after_reconnect() {
    // Real-time delivery, so the session is mid-utterance when the server dies; 60 ms chunks
    // (one tones character each) so the audio stops between characters, as it would stop
    // between words in speech: the gap is heard as silence, never as a split tone.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start_tts = || {
        Command::new(BIN)
            .args([
                "local-tts",
                "--listen",
                &listen,
                "--speed",
                "1",
                "--chunk-ms",
                "60",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("local-tts")
    };
    let mut tts = start_tts();
    let mut first_line = String::new();
    BufReader::new(tts.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let daemon = Daemon::start(&format!("http://{listen}"), CONFIG, &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let text = "the quick brown fox jumps over 13 lazy dogs";
    bot.say_by_char(text).await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    tts.kill().unwrap();
    tts.wait().unwrap();
    let mut tts = start_tts();
    let done = bot
        .wait_for(Duration::from_secs(20), |v| {
            v["type"] == "utterance.done" || v["type"] == "error"
        })
        .await;
    assert_eq!(
        done["type"],
        "utterance.done",
        "events {:?}",
        bot.event_values()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The reconnect gap is silence (heard as a space); every character arrives exactly once,
    // in order.
    let without_spaces = |s: &str| s.replace(' ', "");
    assert_eq!(
        without_spaces(&heard(&caller.pcm_48k())),
        without_spaces(&expected_text(&[text])),
        "daemon log:\n{}",
        daemon.log()
    );
    let call: Value = get_json(&daemon.addr.to_string(), caller.location()).await;
    assert_eq!(call["lmnt_reconnects"], 1, "{call}");
    caller.close().await;
    let _ = tts.kill();
    let _ = tts.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bot_input_gets_named_errors_and_the_call_goes_on() {
    let tts = bursty_tts();
    let daemon = Daemon::start(&tts.base_url, "[limits]\nmax_text_message_bytes = 16\nmax_utterance_bytes = 20\n[lmnt]\nvoice = \"tones\"\n", &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let cases: [(&str, &str); 5] = [
        ("{not json", "malformed_message"),
        (r#"{"type":"sing"}"#, "unknown_message_type"),
        (r#"{"type":"text"}"#, "malformed_message"),
        (
            r#"{"type":"text","text":"this is far too long"}"#,
            "text_too_long",
        ),
        (r#"{"type":"flush"}"#, "empty_utterance"),
    ];
    for (frame, code) in cases {
        bot.send_raw(frame).await;
        let error = bot.wait_type("error", EVENT_TIMEOUT).await;
        assert_eq!(error["code"], code, "{frame}");
    }
    bot.send(json!({"type": "text", "text": "abc def ghi "}))
        .await;
    bot.send(json!({"type": "text", "text": "jkl mno pqr "}))
        .await;
    assert_eq!(
        bot.wait_type("error", EVENT_TIMEOUT).await["code"],
        "utterance_too_long"
    );
    bot.send(json!({"type": "flush"})).await;
    assert_eq!(
        bot.wait_type("utterance.done", EVENT_TIMEOUT).await["utterance"],
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        heard(&caller.pcm_48k()),
        "abc def ghi",
        "nothing half-spoken"
    );

    // A second bot cannot take the channel; the call is untouched.
    let second = tokio_tungstenite::connect_async(format!(
        "{}{}/control",
        daemon.base().replacen("http://", "ws://", 1),
        caller.location()
    ))
    .await;
    assert!(second.is_err(), "a second bot was let in");
    bot.send(json!({"type": "hangup"})).await;
    assert_eq!(
        bot.wait_type("call.ended", EVENT_TIMEOUT).await["reason"],
        "bot_hangup"
    );
    caller.close().await;
}

async fn get_json(origin: &str, path: &str) -> Value {
    let reply = http_request(origin, "GET", path, &[], b"")
        .await
        .expect("GET");
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).expect("JSON")
}

fn python() -> String {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run `make test` (it creates the venv with the pinned aiortc)"
    );
    python.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmnt_that_keeps_failing_gives_the_bot_a_named_error_and_the_call_goes_on() {
    // Every session errors after 480 ms of audio (24 kHz s16: 23 040 bytes, eight 60 ms
    // chunks, one tones character each). A long utterance can never finish: each new session
    // starts it over and fails at the same point.
    let tts = local_tts::spawn(
        BIN,
        &[
            "--error-after-bytes",
            "23040",
            "--chunk-ms",
            "60",
            "--speed",
            "2",
        ],
        &[],
        Stdio::null(),
    );
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    let long = "abcdefghijklmnopqrstuvwxyz0123456789";
    bot.say_by_char(long).await;
    let error = bot.wait_type("error", Duration::from_secs(20)).await;
    assert_eq!(error["code"], "lmnt_unavailable", "{error}");
    let done = bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(done["utterance"], 1);
    let audio_ms = done["audio_ms"].as_u64().unwrap();
    assert_eq!(audio_ms, 480, "only the audio that arrived is played");

    // The call goes on: a short utterance on a fresh session is spoken whole.
    bot.say_by_char("ok").await;
    assert_eq!(
        bot.wait_type("utterance.done", Duration::from_secs(20))
            .await["utterance"],
        2
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = heard(&caller.pcm_48k());
    // 480 ms of the long utterance is its first 8 characters, each heard once.
    assert_eq!(
        text.replace(' ', ""),
        format!("{}ok", &long[..8]),
        "heard {text:?}"
    );
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_fires_when_the_audio_flushed_before_it_has_been_played() {
    let tts = bursty_tts();
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let (caller, mut bot) = place_call(&daemon).await;

    // Nothing queued: the mark fires with the next frame.
    bot.send(json!({"type": "mark", "name": "idle"})).await;
    assert_eq!(bot.wait_type("mark", EVENT_TIMEOUT).await["name"], "idle");

    // Sent before any of the utterance's audio exists: it waits for all of it to play.
    bot.say_by_char("mark me 1").await;
    bot.send(json!({"type": "mark", "name": "after-1"})).await;
    let mark = bot.wait_type("mark", EVENT_TIMEOUT).await;
    assert_eq!(mark["name"], "after-1");
    let events = bot.event_values();
    let done = events
        .iter()
        .position(|e| e["type"] == "utterance.done" && e["utterance"] == 1);
    let marked = events.iter().position(|e| e["name"] == "after-1");
    assert!(
        done.is_some() && done < marked,
        "utterance.done 1 comes before the mark: {events:?}"
    );
    caller.close().await;
}

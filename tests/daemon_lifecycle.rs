//! The daemon as systemd runs it: sd_notify READY / WATCHDOG / STOPPING on a real
//! `NOTIFY_SOCKET`, SIGTERM draining a live call, exit codes, and `/metrics` after a call.
//!
//! Nothing here asserts how long something took: the drain and the abort are told apart by
//! events, exit codes and log lines. Timeouts only guard against a hang.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bot::place_call;
use support::daemon::Daemon;
use support::prometheus::{parse, value};
use support::webrtc_caller::{http_request, rms, WebrtcCaller, AUDIBLE_RMS};
use support::{local_tts, tones};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Guard for waits on audio reaching the caller.
const AUDIO_TIMEOUT: Duration = Duration::from_secs(15);
const CONFIG: &str = "[lmnt]\nvoice = \"tones\"\n[server]\ndrain_timeout_ms = 10000\n";

fn tts() -> local_tts::Process {
    local_tts::spawn(BIN, &[], &[], Stdio::null())
}

/// Reads notify datagrams until one equals or contains `want` (lines are `KEY=VALUE`).
fn wait_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = message.lines().any(|l| l == want);
            seen.push(message);
            if hit {
                return;
            }
        }
    }
    panic!("no {want} on NOTIFY_SOCKET; saw {seen:?}");
}

/// Polls `GET /readyz` every 10 ms until it answers 503 (the daemon is draining): the sign
/// that a SIGTERM has been handled. Panics after 15 s.
async fn wait_not_ready(origin: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = http_request(origin, "GET", "/readyz", &[], b"")
            .await
            .map(|r| r.status);
        if matches!(status, Ok(503)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never turned 503 after SIGTERM (last: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the caller has heard all of `text` (the `tones` voice) up to its last tone and
/// the silence after it: as many characters as the text has, the audio ending silent. For the
/// end of a call, when the daemon sends nothing after the utterance: there is no later packet
/// to wait for, only the utterance's own audio. The caller's text is compared afterwards, as
/// strictly as ever; on timeout this panics showing what was heard.
async fn wait_heard_whole(caller: &WebrtcCaller, text: &str) {
    let want = tones::expected(text).replace(' ', "").len();
    let tail = 480; // 10 ms at 48 kHz
    let result = caller
        .wait_for_pcm("the whole utterance", AUDIO_TIMEOUT, |pcm| {
            let quiet_end = pcm.len() >= tail && rms(&pcm[pcm.len() - tail..]) < AUDIBLE_RMS;
            quiet_end && tones::decode_i16(pcm, 48_000).replace(' ', "").len() >= want
        })
        .await;
    if let Err(e) = result {
        panic!(
            "{e}: heard {:?}, expected {:?}",
            tones::collapse_spaces(&tones::decode_i16(&caller.pcm_48k(), 48_000)),
            tones::expected(text)
        );
    }
}

#[test]
fn notify_socket_sees_ready_then_watchdog_then_stopping_and_sigterm_exits_0() {
    let tts = tts();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(
        &tts.base_url,
        CONFIG,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    wait_notify(&socket, "READY=1", &mut seen);
    let watchdogs_before = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert_eq!(watchdogs_before, 0, "READY comes first: {seen:?}");
    wait_notify(&socket, "WATCHDOG=1", &mut seen);
    wait_notify(&socket, "WATCHDOG=1", &mut seen);
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=0 calls, LMNT sessions up 0/0")),
        "STATUS= tells calls and LMNT health: {seen:?}"
    );
    daemon.terminate();
    wait_notify(&socket, "STOPPING=1", &mut seen);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_current_utterance_finish_then_ends_the_call_and_exits_0() {
    // Real-time delivery: the utterance is still arriving when SIGTERM comes.
    let tts = local_tts::spawn(BIN, &["--speed", "1"], &[], Stdio::null());
    let mut daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let origin = daemon.addr.to_string();
    let (caller, mut bot) = place_call(&daemon).await;
    let text = "draining keeps this whole sentence 123";
    bot.say_by_char(text).await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;

    daemon.terminate();
    // New calls are refused while draining, with Retry-After; readiness drops. Polled every
    // 10 ms until the signal has been handled (15 s guard).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let reply = http_request(
            &origin,
            "POST",
            "/v1/calls",
            &[("Content-Type".into(), "application/sdp".into())],
            b"v=0\r\n",
        )
        .await
        .unwrap();
        if reply.status == 503 {
            break reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "POST /v1/calls is refused with 503 while draining; got {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(refused.header("retry-after").is_some());
    let body: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"]["code"], "draining");
    assert_eq!(
        http_request(&origin, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status,
        503
    );

    let done = bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(done["utterance"], 1);
    // 60 ms a character in the tones voice: all of it went into the call.
    assert_eq!(
        done["audio_ms"].as_u64(),
        Some(60 * text.len() as u64),
        "{done}"
    );
    assert_eq!(
        bot.wait_type("call.ended", EVENT_TIMEOUT).await["reason"],
        "shutdown"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(Duration::from_secs(10));
        (status, daemon.log())
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "log:\n{log}");
    // The call ended because its utterance finished, not because the drain deadline hit.
    assert!(
        !log.contains("drain deadline reached"),
        "exited within the drain deadline; log:\n{log}"
    );
    // The daemon sent nothing after the utterance's last frame: wait for that frame's audio.
    wait_heard_whole(&caller, text).await;
    assert_eq!(
        tones::collapse_spaces(&tones::decode_i16(&caller.pcm_48k(), 48_000)),
        tones::expected(text),
        "the whole utterance reached the caller"
    );
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    let tts = local_tts::spawn(BIN, &["--speed", "1"], &[], Stdio::null());
    let mut daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let origin = daemon.addr.to_string();
    let (caller, mut bot) = place_call(&daemon).await;
    // About 5 s of speech: the drain would wait for it.
    bot.say_by_char(&"abcdefghij ".repeat(8)).await;
    bot.wait_type("utterance.started", EVENT_TIMEOUT).await;
    daemon.terminate();
    // Two signals before the first is handled would be one; wait until it is.
    wait_not_ready(&origin).await;
    daemon.terminate();
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(Duration::from_secs(15));
        (status, daemon.log())
    })
    .await
    .unwrap();
    let status = status.expect("exits after the second SIGTERM");
    // It did not wait for the drain: the utterance never finished (it had about 5 s to go),
    // the exit is the abort's, and the log says so.
    let events = bot.events_until_closed(EVENT_TIMEOUT).await;
    assert!(
        !events.iter().any(|e| e["type"] == "utterance.done"),
        "the utterance was played out: {events:?}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "an aborted drain is not a clean exit; log:\n{log}"
    );
    assert!(
        log.contains("second signal: exiting without draining"),
        "log:\n{log}"
    );
    caller.close().await;
}

#[test]
fn bad_config_exits_78_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    for (toml, key) in [
        ("[lmnt]\nsample_rate = 44100\n", "lmnt.sample_rate"),
        (
            "[server]\nlisten = \"127.0.0.1:8080\"\nlistne = 1\n",
            "listne",
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("LMNT_API_KEY", "k")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains(key), "the message names {key}: {stderr}");
    }

    let out = Command::new(BIN)
        .args(["serve", "--bogus-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64");
}

#[test]
fn a_busy_port_exits_69() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr])
        .env("LMNT_API_KEY", "k")
        .env("LMNT_BASE_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_histograms_move_after_a_call() {
    let tts = tts();
    let daemon = Daemon::start(&tts.base_url, CONFIG, &[]);
    let origin = daemon.addr.to_string();
    let (caller, mut bot) = place_call(&daemon).await;
    bot.say_by_char("metrics 1").await;
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;

    let reply = http_request(&origin, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body).unwrap();
    let (_, _, samples) = parse(&text);
    let count = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels).unwrap_or(0.0);
    for (histogram, observations) in [
        ("lmnt_bridge_text_to_lmnt_seconds", 9.0), // one per streamed character
        ("lmnt_bridge_flush_to_first_audio_byte_seconds", 1.0),
        ("lmnt_bridge_first_byte_to_first_rtp_seconds", 1.0),
        ("lmnt_bridge_flush_to_utterance_done_seconds", 1.0),
    ] {
        assert_eq!(
            count(&format!("{histogram}_count"), &[]),
            observations,
            "{histogram}:\n{text}"
        );
    }
    assert_eq!(count("lmnt_bridge_calls_total", &[]), 1.0, "{text}");
    assert_eq!(
        count(
            "lmnt_bridge_calls_ended_total",
            &[("reason", "caller_hangup")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(count("lmnt_bridge_utterances_total", &[]), 1.0, "{text}");
    assert!(
        count("lmnt_bridge_pacer_frames_sent_total", &[]) > 10.0,
        "{text}"
    );
    assert_eq!(count("lmnt_bridge_calls_active", &[]), 0.0, "{text}");
    caller.close().await;
}

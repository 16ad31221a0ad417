//! Peers that vanish, end to end over real sockets: the `serve` daemon, `local-tts`, bots on
//! the control channel and real WebRTC callers (webrtc-rs in process; aiortc as a process a
//! test can SIGKILL).
//!
//! - A caller that disappears without `DELETE`: ICE ends the call within the documented
//!   bound (README, "Tests": 12 s, about twice the ICE timeouts the daemon configures) and
//!   everything the call held is given back: its registry entry, its admission, its sockets.
//! - A bot whose socket drops: the call stays up for `calls.bot_grace_ms`; a bot that
//!   attaches within it gets what it missed, in order; without one the call ends `bot_gone`.
//! - A panic inside one call's code (a bug) ends that call only, injected through the
//!   test-only hook `testing.panic_marker`, which the daemon refuses to load unless
//!   `LMNT_BRIDGE_TEST_HOOKS=1` is set.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::aiortc::AiortcCaller;
use support::bot::{place_call, Bot};
use support::daemon::Daemon;
use support::local_tts;
use support::webrtc_caller::{calls_ended, get_json, get_metric, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
/// The daemon's queue towards a bot (`lmnt_bridge::call::BOT_QUEUE_FRAMES`).
const BOT_QUEUE_FRAMES: usize = lmnt_bridge::call::BOT_QUEUE_FRAMES;
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
const AUDIO_TIMEOUT: Duration = Duration::from_secs(15);
/// The documented bound for a vanished caller's call to end (README, "Tests"): about twice
/// the ICE disconnected + failed timeouts the daemon configures (3 s + 3 s). Set by those
/// timers, not by the machine's speed.
const VANISHED_CALLER_BOUND: Duration = Duration::from_secs(12);

fn config(extra: &str) -> String {
    format!("[lmnt]\nvoice = \"tones\"\nsample_rate = 24000\n{extra}")
}

/// Polls `GET {location}` until the call is gone (404); panics after `timeout`.
async fn wait_call_gone(daemon: &Daemon, location: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = http_request(&daemon.addr.to_string(), "GET", location, &[], b"")
            .await
            .expect("GET the call");
        if reply.status == 404 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{location} still there after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the daemon holds at most `fds` file descriptors; returns what it holds.
async fn wait_fds_at_most(daemon: &Daemon, fds: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = daemon.open_fds();
        if now <= fds || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_that_vanishes_without_delete_ends_within_the_ice_bound_and_frees_everything() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    // One call at a time: the next call is admitted only if the vanished one gave back its
    // admission.
    let daemon = Daemon::start(&tts.base_url, &config("[limits]\nmax_calls = 1\n"), &[]);
    let origin = daemon.addr.to_string();

    // A first call, hung up properly, so that whatever the process sets up once (runtime
    // threads, the interface list) is in the baseline.
    let (caller, mut bot) = place_call(&daemon).await;
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    caller.close().await;
    drop(bot);
    wait_call_gone(&daemon, caller.location(), EVENT_TIMEOUT).await;
    // (Read as soon as the call is gone: anything it still releases afterwards only makes
    // the bound below looser, never the test flaky.)
    let baseline = daemon.open_fds();

    // The aiortc caller connects and talks; a bot speaks to it over a live LMNT session.
    let AiortcCaller {
        child: mut aiortc,
        location,
        ..
    } = AiortcCaller::connect(&format!("{}/v1/calls", daemon.base()), &[]);
    let mut bot = Bot::attach(&daemon.base(), &location).await;
    bot.wait_type("call.started", EVENT_TIMEOUT).await;
    bot.say_by_char("hi").await;
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert!(bot.caller_audio_frames > 0, "the caller's audio flows");
    assert_eq!(get_json(&origin, &location).await["lmnt_connected"], true);

    // SIGKILL: no DELETE, no DTLS close_notify, no ICE goodbye; its UDP socket goes quiet.
    aiortc.kill().unwrap();
    let vanished = Instant::now();
    aiortc.wait().unwrap();
    let ended = bot
        .wait_for(EVENT_TIMEOUT, |v| v["type"] == "call.ended")
        .await;
    let took = vanished.elapsed();
    println!("call.ended {:?} after the caller vanished", took);
    assert_eq!(ended["reason"], "peer_gone", "{ended}");
    assert!(took < VANISHED_CALLER_BOUND, "took {took:?}");

    // Everything is given back: the registry entry, the gauge, the admission, the sockets
    // (the peer's UDP socket and the LMNT session's TCP connection).
    wait_call_gone(&daemon, &location, EVENT_TIMEOUT).await;
    assert_eq!(
        get_metric(&daemon.addr.to_string(), "lmnt_bridge_calls_active", &[]).await,
        Some(0.0)
    );
    assert_eq!(
        calls_ended(&daemon.addr.to_string(), "peer_gone").await,
        Some(1.0)
    );
    let fds = wait_fds_at_most(&daemon, baseline, EVENT_TIMEOUT).await;
    assert!(
        fds <= baseline,
        "{fds} descriptors open, {baseline} before the call"
    );
    let (next, mut next_bot) = place_call(&daemon).await;
    next_bot.say_by_char("ok").await;
    next_bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    next.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_socket_drop_keeps_the_call_and_a_reattaching_bot_gets_what_it_missed_in_order() {
    // LMNT's first byte comes 1 s after each flush, so everything the utterance makes
    // happen comes after the daemon has seen the first bot's socket drop.
    let tts = local_tts::spawn(BIN, &["--first-byte-delay-ms", "1000"], &[], Stdio::null());
    let daemon = Daemon::start(
        &tts.base_url,
        &config("[calls]\nbot_grace_ms = 30000\n"),
        &[],
    );
    let origin = daemon.addr.to_string();
    let (caller, mut first) = place_call(&daemon).await;

    first.say_by_char("missed me").await;
    first.send(json!({"type": "mark", "name": "after"})).await;
    // The socket drops (TCP closed, no close frame, no hangup).
    drop(first);

    // The call goes on without a bot: the utterance is spoken and played to its end, and
    // the gap lasts until more of the caller's audio is waiting than the bot's queue holds
    // (the new bot catches up through it).
    // The call's 20 ms slots so far: frames sent, plus those a starved process skipped.
    let slots = |call: &Value| {
        call["frames_sent"].as_u64().unwrap() + call["late_frames"].as_u64().unwrap()
    };
    // The call as it stands; it must not have ended (the daemon's log says why if it did).
    let live_call = || async {
        let reply = http_request(&origin, "GET", caller.location(), &[], b"")
            .await
            .expect("GET");
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status, 200, "{body}\n{}", daemon.log());
        serde_json::from_str::<Value>(&body).expect("JSON")
    };
    let frames_at_drop = slots(&live_call().await);
    let gap_frames = BOT_QUEUE_FRAMES as u64 + 50;
    let deadline = Instant::now() + EVENT_TIMEOUT + EVENT_TIMEOUT;
    loop {
        let call = live_call().await;
        assert_eq!(call["state"], "live", "{call}");
        let frames = slots(&call);
        if call["utterances_done"] == 1 && frames >= frames_at_drop + gap_frames {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "utterance 1 not done or the gap too short (from frame {frames_at_drop}): {call}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bot attaches again: call.started, then what it missed, in order, then the present.
    let mut second = Bot::attach(&daemon.base(), caller.location()).await;
    second.wait_type("mark", EVENT_TIMEOUT).await;
    let kinds: Vec<String> = second
        .event_values()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "call.started",
            "utterance.started",
            "utterance.done",
            "mark"
        ],
        "{:?}",
        second.event_values()
    );
    let done = &second.event_values()[2];
    assert_eq!(done["utterance"], 1);
    assert_eq!(done["text"], "missed me", "{done}");
    // And the call is the bot's again.
    second.say_by_char("back").await;
    second.wait_type("utterance.done", EVENT_TIMEOUT).await;
    // By now the whole backlog has reached the bot: the caller's audio of the gap included
    // (the caller talks all along, a frame every 20 ms, as the daemon sends its frames).
    assert!(
        second.caller_audio_frames > BOT_QUEUE_FRAMES,
        "{} frames of the caller's audio reached the new bot",
        second.caller_audio_frames
    );
    caller.wait_holds_all_sent(&origin, AUDIO_TIMEOUT).await;
    caller.assert_heard_tones("missed me back", &daemon.log());
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_that_does_not_come_back_within_the_grace_ends_the_call_with_bot_gone() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let daemon = Daemon::start(
        &tts.base_url,
        &config("[calls]\nbot_grace_ms = 1000\n"),
        &[],
    );
    let (caller, bot) = place_call(&daemon).await;
    drop(bot);
    wait_call_gone(&daemon, caller.location(), EVENT_TIMEOUT).await;
    assert_eq!(
        calls_ended(&daemon.addr.to_string(), "bot_gone").await,
        Some(1.0)
    );
    assert!(
        daemon.log().contains("reason=\"bot_gone\"") || daemon.log().contains("bot_gone"),
        "the call's closing line names the reason:\n{}",
        daemon.log()
    );
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_inside_one_call_ends_that_call_only_and_the_others_keep_speaking() {
    const MARKER: &str = "PANIC-HERE";
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let daemon = Daemon::start(
        &tts.base_url,
        &config(&format!("[testing]\npanic_marker = \"{MARKER}\"\n")),
        &[("LMNT_BRIDGE_TEST_HOOKS", "1")],
    );
    let origin = daemon.addr.to_string();
    let (doomed, mut doomed_bot) = place_call(&daemon).await;
    let (survivor, mut bot) = place_call(&daemon).await;

    doomed_bot
        .send(json!({"type": "text", "text": MARKER}))
        .await;
    let ended = doomed_bot
        .wait_for(EVENT_TIMEOUT, |v| v["type"] == "call.ended")
        .await;
    assert_eq!(ended["reason"], "internal_error", "{ended}");
    wait_call_gone(&daemon, doomed.location(), EVENT_TIMEOUT).await;
    assert_eq!(
        calls_ended(&daemon.addr.to_string(), "internal_error").await,
        Some(1.0)
    );

    // The other call is untouched: it speaks, and its caller hears every word.
    bot.say_by_char("still here 2").await;
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    survivor.wait_holds_all_sent(&origin, AUDIO_TIMEOUT).await;
    survivor.assert_heard_tones("still here 2", &daemon.log());
    assert_eq!(
        get_json(&origin, survivor.location()).await["state"],
        "live"
    );
    // And new calls are admitted.
    let (third, mut third_bot) = place_call(&daemon).await;
    third_bot.say_by_char("new").await;
    third_bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert!(
        daemon.log().contains("call failed"),
        "the bug is logged:\n{}",
        daemon.log()
    );
    for caller in [survivor, third, doomed] {
        caller.close().await;
    }
}

#[test]
fn the_panic_hook_is_refused_unless_the_test_environment_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[testing]\npanic_marker = \"x\"\n").unwrap();
    let run = |hooks: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["check-config", "--config"])
            .arg(&path)
            .env("LMNT_BASE_URL", "http://127.0.0.1:9")
            .env_remove("LMNT_BRIDGE_TEST_HOOKS");
        if let Some(value) = hooks {
            command.env("LMNT_BRIDGE_TEST_HOOKS", value);
        }
        command.output().expect("check-config")
    };
    let refused = run(None);
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("testing.panic_marker"), "{stderr}");
    assert_eq!(run(Some("yes")).status.code(), Some(78));
    assert_eq!(run(Some("1")).status.code(), Some(0));
}

//! Bot dial-out over real sockets: the `serve` daemon dials a bot server in this test (the
//! Twilio `<Stream>` model), signs the upgrade with the `bot-signing-secret` credential, and
//! the bot drives the call with the ordinary control protocol; a URL outside
//! `bots.url_prefixes` is refused; a bot that never answers ends the call with
//! `bot_unreachable` once the retry budget is spent, while the caller's audio goes on; a
//! redirect is never followed.
//!
//! Nothing here asserts how long something took; timeouts only guard against a hang.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use support::bot::BotServer;
use support::daemon::Daemon;
use support::webrtc_caller::{calls_ended, http_request, WebrtcCaller};
use support::{local_tts, tones};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
const AUDIO_TIMEOUT: Duration = Duration::from_secs(15);
/// The HMAC key, as the systemd credential `bot-signing-secret` holds it.
const SECRET: &str = "test-bot-signing-secret-0123456789abcdef";
const UTTERANCES: [&str; 3] = ["Hello from the bot. ", "Dialed out 42. ", "Goodbye."];

/// A credentials directory holding the signing secret (as systemd's `LoadCredential=`).
fn credentials() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot-signing-secret"), format!("{SECRET}\n")).unwrap();
    dir
}

fn config(prefixes: &[&str], extra: &str) -> String {
    let prefixes: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[lmnt]\nvoice = \"tones\"\n[bots]\nurl_prefixes = [{}]\n{extra}",
        prefixes.join(", ")
    )
}

fn start(tts: &local_tts::InProcess, config: &str, creds: &tempfile::TempDir) -> Daemon {
    Daemon::start(
        &tts.base_url,
        config,
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    )
}

/// `POST /v1/calls?QUERY` with `bot=URL` encoded.
fn calls_url(daemon: &Daemon, bot: &str, extra: &str) -> String {
    let bot: String = url::form_urlencoded::byte_serialize(bot.as_bytes()).collect();
    format!("{}/v1/calls?bot={bot}{extra}", daemon.base())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// Checks `t=…,v1=…` as a bot would: HMAC-SHA256 of `"{t}.{call}"` under the secret, with
/// the timestamp close to this machine's clock (a bot rejects replays of old signatures).
fn verify_signature(value: &str, call: &str) {
    let (t, v1) = value
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("signature header {value:?}"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag: Vec<u8> = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    ring::hmac::verify(&key, format!("{t}.{call}").as_bytes(), &tag)
        .unwrap_or_else(|_| panic!("bad signature {value:?} for call {call}"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(now.abs_diff(t) < 300, "timestamp {t} is not now ({now})");
}

/// Polls `/metrics` (20 s guard) until `n` calls have ended with `reason`.
async fn wait_ended_with(daemon: &Daemon, reason: &str, n: f64) {
    let origin = daemon.addr.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if calls_ended(&origin, reason).await == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call ended with {reason}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_dials_a_signed_bot_whose_three_utterances_are_heard_exactly() {
    let tts = local_tts::start(Default::default()).await;
    let server = BotServer::bind().await;
    let creds = credentials();
    let daemon = start(&tts, &config(&[&server.url], ""), &creds);
    let bot_url = format!("{}agent?session=7", server.url);
    let accept = tokio::spawn(async move { server.accept(EVENT_TIMEOUT).await });
    let caller = WebrtcCaller::dial(
        &calls_url(&daemon, &bot_url, "&x-customer=42&x-lang=en&voice=tones"),
        None,
    )
    .await
    .expect("dial");
    let (path, headers, mut bot) = accept.await.unwrap();
    let id = caller.location().rsplit('/').next().unwrap().to_owned();
    assert_eq!(path, "/agent?session=7");
    assert_eq!(header(&headers, "x-lmnt-bridge-call"), id);
    verify_signature(header(&headers, "x-lmnt-bridge-signature"), &id);

    let started = bot.wait_type("call.started", EVENT_TIMEOUT).await;
    assert_eq!(started["call"], id.as_str());
    assert_eq!(started["voice"], "tones");
    assert_eq!(started["codec"], "opus");
    assert_eq!(started["caller_audio"], "pcm_s16le_16000_mono_20ms");
    assert_eq!(
        started["custom"],
        json!({"x-customer": "42", "x-lang": "en"}),
        "{started}"
    );

    for text in UTTERANCES {
        bot.say_by_char(text).await;
    }
    for utterance in 1..=3u64 {
        let done = bot
            .wait_for(EVENT_TIMEOUT, |v| {
                v["type"] == "utterance.done" || v["type"] == "error"
            })
            .await;
        assert_eq!(done["utterance"], utterance, "{:?}", bot.event_values());
    }
    caller
        .wait_holds_all_sent(&daemon.addr.to_string(), AUDIO_TIMEOUT)
        .await;
    let heard = tones::collapse_spaces(&tones::decode_i16(&caller.pcm_48k(), 48_000));
    let expected = tones::collapse_spaces(&UTTERANCES.map(tones::expected).join(" "));
    assert_eq!(heard, expected, "daemon log:\n{}", daemon.log());
    assert!(
        bot.caller_audio_frames > 0,
        "the dialed bot hears the caller"
    );

    assert_eq!(caller.hang_up().await.unwrap(), 204);
    assert_eq!(
        bot.wait_type("call.ended", EVENT_TIMEOUT).await["reason"],
        "caller_hangup"
    );
    caller.close().await;
    assert!(!daemon.log().contains(SECRET), "the secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_url_outside_the_allowlist_gets_403_and_no_call() {
    let tts = local_tts::start(Default::default()).await;
    let creds = credentials();
    let daemon = start(&tts, &config(&["ws://127.0.0.1:9/bots/"], ""), &creds);
    let origin = daemon.addr.to_string();
    for bot in [
        "ws://127.0.0.1:9/other/",
        "ws://127.0.0.1:9/bots.evil/",
        "ws://127.0.0.2:9/bots/",
    ] {
        let bot: String = url::form_urlencoded::byte_serialize(bot.as_bytes()).collect();
        let reply = http_request(
            &origin,
            "POST",
            &format!("/v1/calls?bot={bot}"),
            &[("Content-Type".into(), "application/sdp".into())],
            b"v=0\r\n",
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 403, "{bot}");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "bot_url_not_allowed", "{body}");
    }
    let calls = support::webrtc_caller::get_json(&origin, "/v1/calls").await;
    assert_eq!(calls["calls"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_never_answers_ends_the_call_with_bot_unreachable_after_the_budget() {
    let tts = local_tts::start(Default::default()).await;
    // Accepts TCP and never answers the upgrade: each attempt times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/", silent.local_addr().unwrap());
    let attempts = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let creds = credentials();
    let daemon = start(
        &tts,
        &config(
            &[&silent_url],
            "connect_timeout_ms = 300\nretry_budget_ms = 1500\n",
        ),
        &creds,
    );
    let origin = daemon.addr.to_string();
    let caller = WebrtcCaller::dial(&calls_url(&daemon, &silent_url, ""), None)
        .await
        .expect("the call is answered while its bot is dialed");
    // The call keeps its audio going while the bot is retried: the caller receives frames.
    caller
        .wait_frames(5, AUDIO_TIMEOUT)
        .await
        .expect("frames while dialing");

    wait_ended_with(&daemon, "bot_unreachable", 1.0).await;
    let reply = http_request(&origin, "GET", caller.location(), &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 404, "the call is over");
    let log = daemon.log();
    assert!(log.contains("bot unreachable"), "{log}");
    assert!(
        log.matches("bot dial-out failed").count() >= 2,
        "retried before giving up:\n{log}"
    );
    attempts.abort();
    caller.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_bot_is_never_followed() {
    let tts = local_tts::start(Default::default()).await;
    // An allowed bot that must never be reached: the redirect points at it.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let target_url = format!("ws://{}/", target.local_addr().unwrap());
    let redirect = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_url = format!("ws://{}/", redirect.local_addr().unwrap());
    let location = target_url.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = redirect.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            let reply =
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
            let _ = tcp.write_all(reply.as_bytes()).await;
        }
    });
    let creds = credentials();
    let daemon = start(
        &tts,
        &config(&[&redirect_url, &target_url], "retry_budget_ms = 300\n"),
        &creds,
    );
    let caller = WebrtcCaller::dial(&calls_url(&daemon, &redirect_url, ""), None)
        .await
        .expect("dial");
    wait_ended_with(&daemon, "bot_unreachable", 1.0).await;
    assert!(
        daemon.log().contains("the bot answered HTTP 302"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        target.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "the daemon followed the redirect"
    );
    server.abort();
    caller.close().await;
}

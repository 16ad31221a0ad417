//! Hostile clients (issue 11, part 3), against the real daemon over loopback sockets: slow
//! and silent HTTP clients, a connection flood, a bot over its rate limits, offers naming
//! candidates outside the networks ICE may check, and a public listener without a token.

mod support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use lmnt_bridge::local_tts::LocalTtsConfig;
use serde_json::{json, Value};
use support::bot::{place_call, Bot};
use support::daemon::Daemon;
use support::local_tts;
use support::prometheus::{parse, value};
use support::slow_client::{
    connect_sending, half_requests, raise_open_files_limit, read_until_closed, still_open,
    HALF_REQUEST,
};
use support::webrtc_caller::{http_request, HttpResponse, WebrtcCaller};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const TONES: &str = "[lmnt]\nvoice = \"tones\"\n";
/// Generous: every wait below is for an event, this only bounds a broken daemon.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Half-requests held open while `/healthz` must keep answering.
const HELD: usize = 1_000;

async fn get(daemon: &Daemon, path: &str) -> HttpResponse {
    http_request(&daemon.addr.to_string(), "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", daemon.log()))
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = String::from_utf8(get(daemon, "/metrics").await.body).unwrap();
    let (_, _, samples) = parse(&body);
    value(&samples, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_a_thousand_half_requests_are_held() {
    // Each held connection is a descriptor here and one in the daemon (which inherits this).
    let limit = raise_open_files_limit(4 * HELD as u64);
    assert!(
        limit >= 2 * HELD as u64,
        "open-files limit {limit} is too low"
    );
    let tts = local_tts::start(LocalTtsConfig::default()).await;
    let config = format!(
        "{TONES}[server]\nmax_connections = {}\nheader_timeout_ms = 600000\n",
        HELD + 50
    );
    let daemon = Daemon::start(&tts.base_url, &config, &[]);
    let held = half_requests(daemon.addr, HELD).await;

    // Every half-request has been accepted (and is counted) while /healthz answers.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut started = Instant::now();
    loop {
        let reply = get(&daemon, "/healthz").await;
        let took = started.elapsed();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"ok\n");
        let open = metric(&daemon, "lmnt_bridge_http_connections", &[]).await;
        // The held ones, and this /metrics request.
        if open > HELD as f64 {
            eprintln!("/healthz answered in {took:?} with {HELD} half-requests held");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {open} connections open of {HELD}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        started = Instant::now();
    }
    // The header timeout is ten minutes: none of them was cut or answered.
    assert_eq!(held.iter().filter(|s| still_open(s)).count(), HELD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_by_the_header_and_body_timeouts() {
    let tts = local_tts::start(LocalTtsConfig::default()).await;
    let config = format!("{TONES}[server]\nheader_timeout_ms = 1000\nbody_timeout_ms = 1000\n");
    let daemon = Daemon::start(&tts.base_url, &config, &[]);

    let mut silent = connect_sending(daemon.addr, b"").await;
    let mut half = connect_sending(daemon.addr, HALF_REQUEST).await;
    // One whole request on a kept-alive connection, then nothing: the wait for the next
    // header is bounded by the same timeout.
    let mut idle = connect_sending(
        daemon.addr,
        b"GET /healthz HTTP/1.1\r\nHost: lmnt-bridge\r\n\r\n",
    )
    .await;
    // A whole header announcing 1000 bytes of SDP, then 10 of them.
    let mut slow_body = connect_sending(
        daemon.addr,
        b"POST /v1/calls HTTP/1.1\r\nHost: lmnt-bridge\r\nContent-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\r\no=- 1",
    )
    .await;

    for (name, stream) in [("silent", &mut silent), ("half", &mut half)] {
        let wrote = read_until_closed(stream, EVENT_TIMEOUT).await;
        let wrote = String::from_utf8_lossy(&wrote);
        assert!(
            wrote.is_empty() || wrote.starts_with("HTTP/1.1 408"),
            "{name}: {wrote}"
        );
    }
    let wrote =
        String::from_utf8_lossy(&read_until_closed(&mut idle, EVENT_TIMEOUT).await).into_owned();
    assert!(wrote.starts_with("HTTP/1.1 200"), "{wrote}");
    assert_eq!(wrote.matches("HTTP/1.1").count(), 1, "{wrote}");
    let wrote = String::from_utf8_lossy(&read_until_closed(&mut slow_body, EVENT_TIMEOUT).await)
        .into_owned();
    assert!(wrote.starts_with("HTTP/1.1 408"), "{wrote}");
    assert!(wrote.contains("\"body_timeout\""), "{wrote}");

    // The daemon is fine, and no call was started by the half-sent offer.
    assert_eq!(get(&daemon, "/healthz").await.status, 200);
    let calls: Value = serde_json::from_slice(&get(&daemon, "/v1/calls").await.body).unwrap();
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_gets_503_until_one_closes() {
    const CAP: usize = 20;
    let tts = local_tts::start(LocalTtsConfig::default()).await;
    let config = format!("{TONES}[server]\nmax_connections = {CAP}\nheader_timeout_ms = 600000\n");
    let daemon = Daemon::start(&tts.base_url, &config, &[]);
    // The start-up probe's connection is closed (only this /metrics request is open).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while metric(&daemon, "lmnt_bridge_http_connections", &[]).await != 1.0 {
        assert!(Instant::now() < deadline, "connections stay open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = half_requests(daemon.addr, CAP).await;

    // Connections are accepted in order: this one comes after the CAP held ones.
    let mut over = connect_sending(daemon.addr, b"").await;
    let wrote =
        String::from_utf8_lossy(&read_until_closed(&mut over, EVENT_TIMEOUT).await).into_owned();
    assert!(wrote.starts_with("HTTP/1.1 503"), "{wrote}");
    assert!(wrote.contains("retry-after: 1"), "{wrote}");
    assert!(wrote.contains("\"too_many_connections\""), "{wrote}");
    assert!(held.iter().all(still_open));

    // One held connection goes away: its slot is free again.
    drop(held.pop());
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match http_request(&daemon.addr.to_string(), "GET", "/healthz", &[], b"").await {
            Ok(reply) if reply.status == 200 => break,
            Ok(reply) => assert_eq!(reply.status, 503),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&daemon, "lmnt_bridge_http_connections_refused_total", &[]).await >= 1.0);
}

/// Waits for the next `error` event; returns it.
async fn next_error(bot: &mut Bot) -> Value {
    bot.wait_for(EVENT_TIMEOUT, |v| v["type"] == "error").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_over_its_rate_limits_gets_rate_limited_and_say_gets_429() {
    let tts = local_tts::start(LocalTtsConfig::default()).await;
    // One token back every 100 s: nothing refills while the test runs.
    let config = format!(
        "{TONES}[limits]\nbot_messages_per_sec = 0.01\nbot_message_burst = 8\n\
         bot_flushes_per_sec = 0.01\nbot_flush_burst = 2\n"
    );
    let daemon = Daemon::start(&tts.base_url, &config, &[]);
    // Attaching the bot takes one message token: 7 left.
    let (caller, mut bot) = place_call(&daemon).await;
    for text in ["a", "b"] {
        bot.send(json!({"type": "text", "text": text})).await;
        bot.send(json!({"type": "flush"})).await;
    }
    // 3 message tokens left, no flush token: the third flush is refused, at no cost.
    bot.send(json!({"type": "text", "text": "c"})).await;
    bot.send(json!({"type": "flush"})).await;
    let error = next_error(&mut bot).await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("flushes"),
        "{error}"
    );

    // `say` is a flush too: 429 with Retry-After, from the same per-call buckets.
    let say = http_request(
        &daemon.addr.to_string(),
        "POST",
        &format!("{}/say", caller.location()),
        &[("Content-Type".into(), "application/json".into())],
        br#"{"text":"d"}"#,
    )
    .await
    .unwrap();
    assert_eq!(say.status, 429);
    assert_eq!(say.error_code(), "rate_limited");
    let retry: u64 = say.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);

    // Two message tokens are left: two texts pass, the next is refused.
    for text in ["e", "f", "g"] {
        bot.send(json!({"type": "text", "text": text})).await;
    }
    let error = next_error(&mut bot).await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("messages"),
        "{error}"
    );
    // The two admitted utterances were spoken; hangup is never limited.
    bot.wait_for(EVENT_TIMEOUT, |v| {
        v["type"] == "utterance.done" && v["utterance"] == 2
    })
    .await;
    bot.send(json!({"type": "hangup"})).await;
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    let errors: Vec<Value> = bot
        .event_values()
        .into_iter()
        .filter(|v| v["type"] == "error")
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (limit, channel) in [
        ("flushes", "control"),
        ("flushes", "http"),
        ("messages", "control"),
    ] {
        assert_eq!(
            metric(
                &daemon,
                "lmnt_bridge_rate_limited_total",
                &[("limit", limit), ("channel", channel)]
            )
            .await,
            1.0,
            "{limit} {channel}"
        );
    }
    caller.close().await;
}

/// The offer with `extra` candidate lines added before its first candidate.
fn with_candidates(offer: String, extra: &[String]) -> String {
    let at = offer
        .find("a=candidate:")
        .expect("the offer has a candidate");
    let lines: String = extra.iter().map(|l| format!("{l}\r\n")).collect();
    format!("{}{lines}{}", &offer[..at], &offer[at..])
}

/// A host candidate line for `socket`, at a priority above any real host candidate's.
fn candidate(foundation: u32, priority: u32, socket: &UdpSocket) -> String {
    let addr = socket.local_addr().unwrap();
    format!(
        "a=candidate:{foundation} 1 udp {priority} {} {} typ host",
        addr.ip(),
        addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_sends_no_check_to_a_denied_candidate() {
    let tts = local_tts::start(LocalTtsConfig::default()).await;
    let config = format!("{TONES}[rtc]\nice_deny = [\"127.0.0.2/32\"]\n");
    let daemon = Daemon::start(&tts.base_url, &config, &[]);
    // Two candidates nobody answers from: one denied, one allowed as a control. The denied
    // one has the highest priority, so it would be checked first.
    let denied = UdpSocket::bind("127.0.0.2:0").unwrap();
    let decoy = UdpSocket::bind("127.0.0.3:0").unwrap();
    let extra = [
        candidate(9001, u32::MAX >> 1, &denied),
        candidate(9002, (u32::MAX >> 1) - 1, &decoy),
    ];
    let caller = WebrtcCaller::dial_editing(&format!("{}/v1/calls", daemon.base()), None, |o| {
        with_candidates(o, &extra)
    })
    .await
    .expect("the call connects through the allowed candidate");

    // The control: the daemon checks the offer's other candidates, in priority order (one
    // STUN binding request each before the call connects through the real one). Without the
    // policy the denied candidate, first in that order, gets one as well.
    decoy.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = decoy
        .recv_from(&mut buf)
        .expect("a STUN check reaches the allowed decoy");
    // STUN: a 20-byte header with the magic cookie 0x2112A442.
    assert!(n >= 20 && buf[4..8] == [0x21, 0x12, 0xA4, 0x42]);
    denied.set_nonblocking(true).unwrap();
    assert!(
        matches!(denied.recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the denied candidate received a datagram"
    );
    assert!(metric(&daemon, "lmnt_bridge_ice_candidates_refused_total", &[]).await >= 1.0);
    caller.close().await;

    // An offer whose every candidate is denied is refused at once.
    let refused = WebrtcCaller::dial_editing(&format!("{}/v1/calls", daemon.base()), None, |o| {
        o.split("\r\n")
            .map(|l| match l.strip_prefix("a=candidate:") {
                Some(_) => l.replace(" 127.0.0.1 ", " 127.0.0.2 "),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    })
    .await
    .err()
    .expect("an offer with only denied candidates is refused")
    .to_string();
    assert!(refused.contains("status 400"), "{refused}");
    assert!(refused.contains("no_allowed_candidate"), "{refused}");
}

/// `check-config --listen ADDR` with `env`; returns the exit code and stderr.
fn check_config(listen: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["check-config", "--listen", listen])
        .env_remove("LMNT_BRIDGE_ALLOW_UNAUTHENTICATED")
        .env_remove("LMNT_BRIDGE_BEARER_TOKENS_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("LMNT_API_KEY", "k")
        .envs(env.iter().copied())
        .output()
        .expect("run check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_listener_beyond_loopback_needs_a_token_unless_waived() {
    let (code, stderr) = check_config("0.0.0.0:8080", &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("server.bearer_tokens_file"), "{stderr}");
    assert!(stderr.contains("server.allow_unauthenticated"), "{stderr}");

    let (code, stderr) = check_config(
        "0.0.0.0:8080",
        &[("LMNT_BRIDGE_ALLOW_UNAUTHENTICATED", "true")],
    );
    assert_eq!(code, Some(0), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "0123456789abcdef0123\n").unwrap();
    let (code, stderr) = check_config(
        "[::]:8080",
        &[("LMNT_BRIDGE_BEARER_TOKENS_FILE", tokens.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{stderr}");

    let (code, stderr) = check_config("127.0.0.1:8080", &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

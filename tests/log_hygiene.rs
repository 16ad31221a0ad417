//! Log hygiene over real sockets (issue 15): at the default level a call is one line when it
//! starts and one when it ends, with no warning; at `RUST_LOG=trace` no caller address
//! reaches any line unless `server.log_addresses` is on.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use support::bot::place_call;
use support::daemon::Daemon;
use support::local_tts;
use support::prometheus::{parse, value};
use support::webrtc_caller::{http_request, WebrtcCaller};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Calls placed at the default level, `AT_ONCE` at a time.
const CALLS: usize = 20;
const AT_ONCE: usize = 4;
/// The issue's budget: lines per call at the default level.
const LINES_PER_CALL: usize = 3;
/// Lines that are not about a call: "serving" and a few lifecycle lines.
const LIFECYCLE_LINES: usize = 5;

const CONFIG: &str = "[lmnt]\nvoice = \"tones\"\nsample_rate = 24000\n";

/// The call id, the last segment of the caller's `Location`.
fn call_id(caller: &WebrtcCaller) -> String {
    caller
        .location()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One call: placed, spoken to (a short tones text, until `utterance.done`), hung up by the
/// caller, until `call.ended`. Returns the call id and the caller's SDP.
async fn one_call(daemon: &Daemon) -> (String, String) {
    let (caller, mut bot) = place_call(daemon).await;
    bot.send(json!({"type": "text", "text": "ok 1"})).await;
    bot.send(json!({"type": "flush"})).await;
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    let sdp = caller.local_sdp().await;
    caller.close().await;
    (call_id(&caller), sdp)
}

/// Waits until the log holds `n` "call ended" lines (the driver logs it after closing the
/// peer, just after `call.ended` went out); returns the log.
async fn log_with_ends(daemon: &Daemon, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.log();
        if log.matches("call ended").count() >= n || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_level_is_a_few_lines_per_call_and_no_warning() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let daemon = Daemon::start_unsetting(&tts.base_url, CONFIG, &[], &["RUST_LOG"]);
    let mut ids = Vec::new();
    for _ in 0..CALLS / AT_ONCE {
        let round: Vec<_> = (0..AT_ONCE).map(|_| one_call(&daemon)).collect();
        for (id, _) in futures_util::future::join_all(round).await {
            ids.push(id);
        }
    }
    let log = log_with_ends(&daemon, CALLS).await;
    let lines: Vec<&str> = log.lines().collect();

    for id in &ids {
        let about = lines.iter().filter(|l| l.contains(id.as_str())).count();
        assert!(
            (1..=LINES_PER_CALL).contains(&about),
            "call {id}: {about} lines:\n{log}"
        );
    }
    let ends: Vec<&&str> = lines.iter().filter(|l| l.contains("call ended")).collect();
    assert_eq!(ends.len(), CALLS, "{log}");
    for end in ends {
        for figure in [
            "caller_hangup",
            "duration_ms=",
            "utterances=1",
            "underrun_frames=",
            "late_frames=",
            "lmnt_reconnects=0",
        ] {
            assert!(end.contains(figure), "no {figure} in {end}");
        }
    }
    assert!(
        lines.len() <= CALLS * LINES_PER_CALL + LIFECYCLE_LINES,
        "{} lines for {CALLS} calls:\n{log}",
        lines.len()
    );
    for line in &lines {
        assert!(
            !line.contains(" WARN ") && !line.contains(" ERROR "),
            "a normal call logged a warning or an error: {line}\n{log}"
        );
    }

    // The WebRTC stack's warnings (each call's DTLS server-name default, at least) were
    // counted instead.
    let metrics = http_request(&daemon.addr.to_string(), "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let (_, _, metrics) = parse(&String::from_utf8(metrics.body).unwrap());
    let counted = value(
        &metrics,
        "lmnt_bridge_webrtc_log_events_total",
        &[("level", "warn"), ("target", "rtc_dtls")],
    )
    .unwrap_or(0.0);
    assert!(
        counted >= CALLS as f64,
        "{counted} WebRTC warnings counted for {CALLS} calls"
    );
}

/// The caller's candidate ports, from its SDP (`a=candidate:F C udp P ADDRESS PORT typ ...`).
fn candidate_ports(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(5).map(|p| (*p).to_owned())
        })
        .collect()
}

/// Lines that carry an address: loopback (everything here is on loopback, the caller too)
/// or one of the caller's candidate ports after an address separator.
fn lines_with_addresses<'a>(log: &'a str, ports: &[String]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| {
            line.contains("127.0.0.1")
                || line.contains("::1")
                || line.contains("0.0.0.0")
                || ports.iter().any(|port| {
                    line.match_indices(port.as_str()).any(|(at, _)| {
                        let before = line[..at].chars().next_back();
                        let after = line[at + port.len()..].chars().next();
                        matches!(before, Some(':') | Some(' '))
                            && !after.is_some_and(|c| c.is_ascii_digit())
                            && (before == Some(':') || line[at + port.len()..].starts_with(" typ"))
                    })
                })
        })
        .collect()
}

/// One call spoken to and hung up at `RUST_LOG=trace`; returns the daemon's whole log and
/// the caller's candidate ports.
async fn traced_call(log_addresses: bool) -> (String, Vec<String>) {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let switch = if log_addresses { "true" } else { "false" };
    let daemon = Daemon::start(
        &tts.base_url,
        CONFIG,
        &[("RUST_LOG", "trace"), ("LMNT_BRIDGE_LOG_ADDRESSES", switch)],
    );
    let (_, sdp) = one_call(&daemon).await;
    let ports = candidate_ports(&sdp);
    assert!(!ports.is_empty(), "the caller's SDP has candidates: {sdp}");
    (log_with_ends(&daemon, 1).await, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_address_reaches_a_trace_line_unless_switched_on() {
    let (log, ports) = traced_call(false).await;
    assert!(
        log.lines().count() > 100 && log.contains("TRACE"),
        "the daemon logged at trace level"
    );
    let leaks = lines_with_addresses(&log, &ports);
    assert!(
        leaks.is_empty(),
        "{} lines carry an address (caller ports {ports:?}), e.g.:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(20)].join("\n")
    );
    assert!(
        log.contains("<redacted>"),
        "addresses were logged, redacted"
    );
    assert!(
        !log.contains("test-key-e2e"),
        "the LMNT key reached the log"
    );

    // The same call with the switch on: the addresses are there, so the check above can fail.
    let (log, ports) = traced_call(true).await;
    assert!(log.contains("127.0.0.1"), "no address with the switch on");
    let shown = lines_with_addresses(&log, &ports);
    assert!(
        shown
            .iter()
            .any(|l| ports.iter().any(|p| l.contains(p.as_str()))),
        "the caller's ports {ports:?} appear with the switch on"
    );
}

/// A bearer token of the hostile-paths test; no line may carry it.
const TOKEN: &str = "hygiene-token-5f0e9d8c7b6a";
/// A wrong token a client presents; no line may carry it either.
const WRONG_TOKEN: &str = "wrong-token-0a1b2c3d4e5f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_address_on_the_hostile_paths_at_trace() {
    use support::bot::Bot;
    use support::slow_client::{connect_sending, half_requests, read_until_closed};

    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    const CAP: usize = 6;
    let config = format!(
        "{CONFIG}[server]\nbearer_tokens_file = {:?}\nmax_connections = {CAP}\n\
         header_timeout_ms = 1000\nbody_timeout_ms = 1000\n\
         [limits]\nbot_messages_per_sec = 0.01\nbot_message_burst = 6\n\
         bot_flushes_per_sec = 0.01\nbot_flush_burst = 1\n\
         [rtc]\nice_deny = [\"127.0.0.2/32\"]\n",
        tokens.to_str().unwrap()
    );
    let daemon = Daemon::start(&tts.base_url, &config, &[("RUST_LOG", "trace")]);
    let origin = daemon.addr.to_string();
    let auth = vec![("Authorization".to_owned(), format!("Bearer {TOKEN}"))];

    // A wrong token.
    let wrong = vec![("Authorization".to_owned(), format!("Bearer {WRONG_TOKEN}"))];
    let reply = http_request(&origin, "GET", "/v1/calls", &wrong, b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 401);

    // A call whose offer names a denied candidate; its bot goes over its rate limits, and
    // `say` gets 429.
    let denied = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let denied_line = format!(
        "a=candidate:9001 1 udp 2130706431 127.0.0.2 {} typ host\r\n",
        denied.local_addr().unwrap().port()
    );
    let caller = WebrtcCaller::dial_editing(
        &format!("{}/v1/calls", daemon.base()),
        Some(TOKEN),
        |offer| offer.replacen("a=candidate:", &format!("{denied_line}a=candidate:"), 1),
    )
    .await
    .expect("the call connects");
    let mut bot = Bot::attach_with(&daemon.base(), caller.location(), Some(TOKEN)).await;
    bot.wait_type("call.started", EVENT_TIMEOUT).await;
    for message in [
        json!({"type": "text", "text": "ok 1"}),
        json!({"type": "flush"}),
        json!({"type": "text", "text": "ok 2"}),
        json!({"type": "flush"}),
    ] {
        bot.send(message).await;
    }
    let error = bot.wait_for(EVENT_TIMEOUT, |v| v["type"] == "error").await;
    assert_eq!(error["code"], "rate_limited");
    let mut headers = auth.clone();
    headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
    let say = http_request(
        &origin,
        "POST",
        &format!("{}/say", caller.location()),
        &headers,
        br#"{"text":"no"}"#,
    )
    .await
    .unwrap();
    assert_eq!(say.status, 429);
    bot.wait_type("utterance.done", EVENT_TIMEOUT).await;
    assert_eq!(caller.hang_up().await.unwrap(), 204);
    bot.wait_type("call.ended", EVENT_TIMEOUT).await;
    let ports = candidate_ports(&caller.local_sdp().await);
    caller.close().await;
    drop(bot);

    // A body that never completes (408), then slow headers over the connection cap: the
    // CAP held ones are cut by the header timeout, the one over it gets 503.
    let mut slow_body = connect_sending(
        daemon.addr,
        format!(
            "POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/sdp\r\nContent-Length: 100\r\n\r\nv=0\r\n"
        )
        .as_bytes(),
    )
    .await;
    let wrote = read_until_closed(&mut slow_body, EVENT_TIMEOUT).await;
    assert!(wrote.starts_with(b"HTTP/1.1 408"));
    // Once the call's connections are closed (only this /metrics request is open), CAP
    // connections are held and the next one, accepted after them, is over the cap.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let reply = http_request(&origin, "GET", "/metrics", &auth, b"")
            .await
            .unwrap();
        let (_, _, samples) = parse(&String::from_utf8(reply.body).unwrap());
        if value(&samples, "lmnt_bridge_http_connections", &[]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the call's connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = half_requests(daemon.addr, CAP).await;
    let mut over = connect_sending(daemon.addr, b"").await;
    let wrote = read_until_closed(&mut over, EVENT_TIMEOUT).await;
    assert!(wrote.starts_with(b"HTTP/1.1 503"));
    for stream in &mut held {
        read_until_closed(stream, EVENT_TIMEOUT).await;
    }

    let log = daemon.log();
    if let Ok(path) = std::env::var("HYGIENE_DUMP") {
        std::fs::write(path, &log).unwrap();
    }
    assert!(
        log.lines().count() > 100 && log.contains("TRACE"),
        "the daemon logged at trace level"
    );
    for (secret, what) in [
        ("test-key-e2e", "the LMNT key"),
        (TOKEN, "a bearer token"),
        (WRONG_TOKEN, "a presented token"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            lines.is_empty(),
            "{what} reached the log:\n{}",
            lines.join("\n")
        );
    }
    let mut leaks = lines_with_addresses(&log, &ports);
    leaks.extend(log.lines().filter(|l| l.contains("127.0.0.")));
    assert!(
        leaks.is_empty(),
        "{} lines carry an address (caller ports {ports:?}), e.g.:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(20)].join("\n")
    );
    // The new paths did log (so the checks above could fail).
    for path in [
        "candidates outside rtc.ice_allow/ice_deny removed",
        "bot message over the call's rate limit",
        "say over the call's rate limit",
        "over server.max_connections refused",
        "HTTP connection ended",
        "<redacted>",
    ] {
        assert!(log.contains(path), "no {path:?} in the log");
    }
}

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
/// The budget: lines per call at the default level.
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

//! Overload protection against the real daemon: when the calls in progress run late, new
//! calls get `503 overloaded` with `Retry-After`, `/readyz` says not ready and the
//! `lmnt_bridge_overloaded` gauge is 1, while the calls in progress go on; once the frame
//! clock is on time again, admission reopens.
//!
//! The lateness is made, not hoped for: the daemon is stopped (SIGSTOP) for a moment while
//! two calls are live, so every call's next frames go out well past their deadlines.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::daemon::Daemon;
use support::local_tts;
use support::prometheus;
use support::webrtc_caller::{get_json, http_request, HttpResponse, WebrtcCaller};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const OFFER: &str = include_str!("../fixtures/sdp/aiortc-offer.sdp");
/// Frames count as late only beyond this: far more than a busy test machine delays a frame,
/// far less than the stall below.
const LATE_MS: &str = "250";
/// Every call's next frames go out up to this late on resume (`audio.max_late_ms` is raised
/// so that they are sent late rather than skipped).
const STALL: Duration = Duration::from_millis(800);

async fn get(origin: &str, path: &str) -> HttpResponse {
    http_request(origin, "GET", path, &[], b"")
        .await
        .expect("GET")
}

async fn post_offer(origin: &str) -> HttpResponse {
    let headers = [("Content-Type".to_owned(), "application/sdp".to_owned())];
    http_request(origin, "POST", "/v1/calls", &headers, OFFER.as_bytes())
        .await
        .expect("POST /v1/calls")
}

/// Polls `/readyz` until its status is `status` (generous deadline: a busy machine).
async fn wait_readyz(origin: &str, status: u16) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get(origin, "/readyz").await;
        if reply.status == status {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {} (wanted {status})",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn overloaded_gauge(origin: &str) -> Option<f64> {
    let reply = get(origin, "/metrics").await;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let (_, _, samples) = prometheus::parse(&text);
    prometheus::value(&samples, "lmnt_bridge_overloaded", &[])
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_frames_refuse_new_calls_and_spare_the_calls_in_progress() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let daemon = Daemon::start(
        &tts.base_url,
        "[lmnt]\nvoice = \"tones\"\n[limits]\noverload_late_percent = 2.0\n[audio]\nmax_late_ms = 1000\n",
        // The test daemon has protection off by default; this test is about it.
        &[("LMNT_BRIDGE_OVERLOAD_LATE_MS", LATE_MS)],
    );
    let origin = daemon.addr.to_string();
    let url = format!("{}/v1/calls", daemon.base());
    let mut callers = Vec::new();
    for _ in 0..2 {
        let caller = WebrtcCaller::dial(&url, None).await.expect("dial");
        caller
            .wait_packets(25, Duration::from_secs(20))
            .await
            .expect("frames flowing");
        callers.push(caller);
    }
    assert_eq!(wait_readyz(&origin, 200).await.status, 200);

    signal(daemon.pid(), libc::SIGSTOP);
    tokio::time::sleep(STALL).await;
    signal(daemon.pid(), libc::SIGCONT);

    let not_ready = wait_readyz(&origin, 503).await;
    assert_eq!(not_ready.error_code(), "overloaded");
    let refused = post_offer(&origin).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), "overloaded");
    assert!(refused.header("retry-after").is_some(), "Retry-After set");
    assert_eq!(overloaded_gauge(&origin).await, Some(1.0));

    // The calls in progress were never touched.
    for caller in &callers {
        let call = get_json(&origin, caller.location()).await;
        assert_eq!(call["state"], "live", "{call}");
        let have = caller.packets().len();
        caller
            .wait_packets(have + 25, Duration::from_secs(20))
            .await
            .expect("frames still flowing");
    }

    // On time again: admission reopens.
    assert_eq!(wait_readyz(&origin, 200).await.status, 200);
    assert_eq!(overloaded_gauge(&origin).await, Some(0.0));
    let admitted = post_offer(&origin).await;
    assert_eq!(
        admitted.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&admitted.body)
    );
    for caller in &callers {
        assert_eq!(caller.hang_up().await.expect("DELETE"), 204);
    }
}

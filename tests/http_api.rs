//! The HTTP interface's refusals (interface.md section 3), over a real socket against the
//! real daemon: every bad request gets its status and a named JSON error, and no call is
//! disturbed by another request's failure.

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::daemon::Daemon;
use support::local_tts;
use support::webrtc_caller::{http_request, HttpResponse, WebrtcCaller};

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const OFFER: &str = include_str!("../fixtures/sdp/aiortc-offer.sdp");
const TOKEN: &str = "test-token-0123456789abcdef";

async fn request(
    origin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    http_request(origin, method, path, &headers, body)
        .await
        .expect("HTTP request")
}

fn error_code(reply: &HttpResponse) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
        panic!(
            "error body is JSON: {:?}",
            String::from_utf8_lossy(&reply.body)
        )
    });
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_named_errors_and_leave_calls_alone() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let daemon = Daemon::start(
        &tts.base_url,
        "[lmnt]\nvoice = \"tones\"\n[limits]\nmax_calls = 2\nmax_sdp_bytes = 8192\n",
        &[],
    );
    let origin = daemon.addr.to_string();
    let live = WebrtcCaller::dial(&format!("{}/v1/calls", daemon.base()), None)
        .await
        .unwrap();
    let sdp = [("Content-Type", "application/sdp")];
    let say = format!("{}/say", live.location());

    /// method, path, headers, body, expected status, expected error code
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/calls",
            vec![("Content-Type", "text/plain")],
            OFFER.into(),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/calls",
            sdp.to_vec(),
            b"hello, not SDP".to_vec(),
            400,
            "bad_sdp",
        ),
        (
            "POST",
            "/v1/calls",
            sdp.to_vec(),
            vec![0xff, 0xfe, 0x00, 0x80],
            400,
            "bad_sdp",
        ),
        (
            "POST",
            "/v1/calls",
            sdp.to_vec(),
            format!("{OFFER}{}", "a=x\r\n".repeat(3000)).into_bytes(),
            413,
            "sdp_too_large",
        ),
        (
            "POST",
            "/v1/calls",
            sdp.to_vec(),
            OFFER.replace("SAVPF 96 9 0 8", "SAVPF 9").into_bytes(),
            400,
            "no_common_codec",
        ),
        (
            "POST",
            "/v1/calls?voice=",
            sdp.to_vec(),
            OFFER.into(),
            400,
            "bad_query",
        ),
        ("GET", "/v1/calls/0123", vec![], vec![], 404, "unknown_call"),
        (
            "DELETE",
            "/v1/calls/0123",
            vec![],
            vec![],
            404,
            "unknown_call",
        ),
        (
            "POST",
            &say,
            vec![("Content-Type", "application/json")],
            b"{\"txt\": 1}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "POST",
            &say,
            vec![("Content-Type", "application/json")],
            format!("{{\"text\": \"{}\"}}", "a".repeat(6000)).into_bytes(),
            413,
            "text_too_long",
        ),
        (
            "POST",
            &say,
            vec![("Content-Type", "application/json")],
            b"{\"text\": \"   \"}".to_vec(),
            400,
            "empty_utterance",
        ),
    ];
    for (method, path, headers, body, status, code) in &cases {
        let reply = request(&origin, method, path, headers, body).await;
        assert_eq!(
            reply.status,
            *status,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(error_code(&reply), *code, "{method} {path}");
    }

    // Capacity: the second call fills it, the third is refused with Retry-After.
    let second = WebrtcCaller::dial(&format!("{}/v1/calls", daemon.base()), None)
        .await
        .unwrap();
    let full = request(&origin, "POST", "/v1/calls", &sdp, OFFER.as_bytes()).await;
    assert_eq!(full.status, 503);
    assert_eq!(error_code(&full), "at_capacity");
    assert!(full.header("retry-after").is_some());
    assert_eq!(
        request(&origin, "GET", "/readyz", &[], b"").await.status,
        503
    );

    // The first call is untouched by all of the above.
    let before = live.packets().len();
    live.wait_packets(before + 25, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let list = request(&origin, "GET", "/v1/calls", &[], b"").await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list["calls"].as_array().unwrap().len(), 2);
    assert_eq!(list["calls"][0]["state"], "live");
    assert_eq!(second.hang_up().await.unwrap(), 204);
    assert_eq!(live.hang_up().await.unwrap(), 204);
    second.close().await;
    live.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_every_endpoint_but_healthz() {
    let tts = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# operators\n{TOKEN}\n")).unwrap();
    let config = format!(
        "[lmnt]\nvoice = \"tones\"\n[server]\nbearer_tokens_file = {:?}\n",
        tokens.to_str().unwrap()
    );
    // At trace level, so that no library logging headers can hide a token.
    let daemon = Daemon::start(&tts.base_url, &config, &[("RUST_LOG", "trace")]);
    let origin = daemon.addr.to_string();

    assert_eq!(
        request(&origin, "GET", "/healthz", &[], b"").await.status,
        200
    );
    for (method, path) in [
        ("GET", "/v1/calls"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("POST", "/v1/calls"),
    ] {
        let reply = request(&origin, method, path, &[], b"").await;
        assert_eq!(reply.status, 401, "{method} {path}");
        assert_eq!(error_code(&reply), "unauthorized");
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
        let wrong = request(
            &origin,
            method,
            path,
            &[("Authorization", "Bearer test-token-0123456789abcdeX")],
            b"",
        )
        .await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
    }
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        request(
            &origin,
            "GET",
            "/v1/calls",
            &[("Authorization", &auth)],
            b""
        )
        .await
        .status,
        200
    );
    let caller = WebrtcCaller::dial(&format!("{}/v1/calls", daemon.base()), Some(TOKEN))
        .await
        .unwrap();
    caller
        .wait_packets(10, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let log = daemon.log();
    assert!(log.contains("TRACE"), "the daemon logged at trace level");
    assert!(!log.contains(TOKEN), "a bearer token reached the log");
    caller.close().await;
}

//! `local-tts` in the pv2 and legacy dialects, driven by a raw tokio-tungstenite client, with
//! frames exactly as the older SDKs send them (`lmnt-protocol.md` sections 4 and 5).

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lmnt_bridge::local_tts::LocalTtsConfig;
use serde_json::Value;
use support::{local_tts, tones};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const GUARD: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, PartialEq)]
enum F {
    Audio(Vec<u8>),
    Json(Value),
    Close(Option<u16>),
}

async fn open(url: &str, init: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(init)).await.unwrap();
    ws
}

async fn send(ws: &mut Ws, frames: &[&str]) {
    for f in frames {
        ws.send(Message::text(*f)).await.unwrap();
    }
}

/// Reads frames until (and including) one for which `stop` is true, or the close.
async fn read_until(ws: &mut Ws, stop: impl Fn(&F) -> bool) -> Vec<F> {
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("frame within guard");
        let f = match m {
            Some(Ok(Message::Binary(b))) => F::Audio(b.to_vec()),
            Some(Ok(Message::Text(t))) => {
                F::Json(serde_json::from_str(t.as_str()).expect("server JSON"))
            }
            Some(Ok(Message::Close(c))) => F::Close(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => F::Close(None),
        };
        let done = stop(&f) || matches!(f, F::Close(_));
        out.push(f);
        if done {
            return out;
        }
    }
}

fn audio(frames: &[F]) -> Vec<i16> {
    let bytes: Vec<u8> = frames
        .iter()
        .filter_map(|f| {
            if let F::Audio(b) = f {
                Some(b.clone())
            } else {
                None
            }
        })
        .flatten()
        .collect();
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn is_complete(kind: &'static str, nonce: u64) -> impl Fn(&F) -> bool {
    move |f| matches!(f, F::Json(v) if v["complete"] == kind && v["nonce"] == nonce)
}

#[tokio::test]
async fn pv2_flush_reset_eof_and_extras() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    // lmnt 2.5.1: sample_rate and return_extras as strings; keys only when truthy.
    let mut ws = open(
        &srv.ws_url,
        r#"{"X-API-Key": "k", "voice": "tones", "protocol_version": 2, "format": "pcm_s16le", "sample_rate": "24000", "return_extras": "True"}"#,
    )
    .await;
    send(
        &mut ws,
        &[
            r#"{"text": "first 1"}"#,
            r#"{"command": "flush", "nonce": 1}"#,
            r#"{"text": "next"}"#,
        ],
    )
    .await;
    let got = read_until(&mut ws, is_complete("flush", 1)).await;
    assert!(
        !got.iter()
            .any(|f| matches!(f, F::Json(v) if v.get("type").is_some())),
        "no typed frames: {got:?}"
    );
    assert_eq!(tones::decode_i16(&audio(&got), 24000), "first 1");
    let extras: Vec<&Value> = got
        .iter()
        .filter_map(|f| {
            if let F::Json(v) = f {
                v.get("durations").map(|_| v)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(extras.len(), 1);
    assert_eq!(extras[0]["buffer_empty"], true);
    assert_eq!(extras[0]["durations"][1]["text"], "1");
    // Complete is the last frame for that flush.
    assert!(matches!(got.last(), Some(F::Json(v)) if v["complete"] == "flush"));

    send(
        &mut ws,
        &[
            r#"{"command": "reset", "nonce": 2}"#,
            r#"{"text": "after"}"#,
            r#"{"command": "eof"}"#,
        ],
    )
    .await;
    let got = read_until(&mut ws, |_| false).await;
    let reset_at = got
        .iter()
        .position(|f| is_complete("reset", 2)(f))
        .expect("reset complete");
    assert!(got[..reset_at].iter().all(|f| !matches!(f, F::Audio(_))));
    assert_eq!(tones::decode_i16(&audio(&got), 24000), "after");
    assert_eq!(got.last(), Some(&F::Close(Some(1000))));
}

#[tokio::test]
async fn legacy_without_extras_sends_binary_only() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    // lmnt 1.x: int sample_rate, send_extras always present; the literal flush string.
    let mut ws = open(
        &srv.ws_url,
        r#"{"X-API-Key": "k", "voice": "tones", "format": "raw", "sample_rate": 16000, "send_extras": false}"#,
    )
    .await;
    send(
        &mut ws,
        &[
            r#"{"text": "legacy 2"}"#,
            r#"{"flush": true}"#,
            r#"{"text": " more"}"#,
            r#"{"eof": true}"#,
        ],
    )
    .await;
    let got = read_until(&mut ws, |_| false).await;
    assert!(
        got.iter().all(|f| matches!(f, F::Audio(_) | F::Close(_))),
        "{got:?}"
    );
    assert_eq!(tones::decode_i16(&audio(&got), 16000), "legacy 2 more");
    assert_eq!(got.last(), Some(&F::Close(Some(1000))));
}

#[tokio::test]
async fn legacy_with_extras_pairs_every_binary_frame() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let mut ws = open(
        &srv.ws_url,
        r#"{"X-API-Key": "k", "voice": "tones", "format": "pcm_s16le", "sample_rate": "8000", "return_extras": "True"}"#,
    )
    .await;
    send(&mut ws, &[r#"{"text": "ab"}"#, r#"{"flush": true}"#]).await;
    let got = read_until(
        &mut ws,
        |f| matches!(f, F::Json(v) if v["buffer_empty"] == true),
    )
    .await;
    // The frame after buffer_empty is its binary frame.
    let mut got = got;
    got.extend(read_until(&mut ws, |f| matches!(f, F::Audio(_))).await);
    for pair in got.chunks(2) {
        assert!(
            matches!(pair, [F::Json(v), F::Audio(_)] if v.get("durations").is_some()),
            "{pair:?}"
        );
    }
    assert_eq!(tones::decode_i16(&audio(&got), 8000), "ab");
    // A flush with nothing buffered: an empty pair with buffer_empty.
    send(&mut ws, &[r#"{"flush": true}"#]).await;
    let got = read_until(&mut ws, |f| matches!(f, F::Audio(_))).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        matches!(&got[0], F::Json(v) if v["buffer_empty"] == true && v["durations"].as_array().is_some_and(Vec::is_empty))
    );
    assert_eq!(got[1], F::Audio(Vec::new()));
}

/// (init frame, frames after it, check of the error frame).
type Case = (&'static str, &'static [&'static str], fn(&Value) -> bool);

#[tokio::test]
async fn errors_use_each_dialects_shape_then_close() {
    let cfg = LocalTtsConfig {
        require_key: Some(lmnt_bridge::secret::Secret::new("k")),
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let cases: [Case; 6] = [
        (r#"{"voice": "tones", "protocol_version": 2}"#, &[], |v| {
            v["error"].as_str().is_some_and(|m| m.contains("API key"))
        }),
        (
            r#"{"X-API-Key": "k", "voice": "tones", "format": "ogg"}"#,
            &[],
            |v| v["error"].as_str().is_some_and(|m| m.contains("format")),
        ),
        (
            r#"{"X-API-Key": "k", "voice": "tones", "protocol_version": 2, "sample_rate": "11025"}"#,
            &[],
            |v| {
                v["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("sample_rate"))
            },
        ),
        (
            r#"{"X-API-Key": "k", "voice": "tones", "lmnt-version": "1.2"}"#,
            &["{not json"],
            |v| v["type"] == "error" && v["error"]["type"] == "invalid_request_error",
        ),
        (
            r#"{"X-API-Key": "k", "voice": "tones", "protocol_version": 2}"#,
            &[r#"{"command": "dance"}"#],
            |v| v["error"].is_string(),
        ),
        (
            r#"{"X-API-Key": "k", "voice": "tones", "lmnt-version": "1.2"}"#,
            &[],
            |v| {
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("too long"))
            },
        ),
    ];
    for (i, (init, then, check)) in cases.into_iter().enumerate() {
        let mut ws = open(&srv.ws_url, init).await;
        send(&mut ws, then).await;
        if i == 5 {
            let long = format!(r#"{{"type": "text", "text": "{}"}}"#, "a".repeat(4000));
            send(&mut ws, &[&long, &long]).await;
        }
        let got = read_until(&mut ws, |_| false).await;
        let err = got
            .iter()
            .find_map(|f| {
                if let F::Json(v) = f {
                    v.get("error").map(|_| v)
                } else {
                    None
                }
            })
            .unwrap_or_else(|| panic!("case {i}: no error frame in {got:?}"));
        assert!(check(err), "case {i}: {err}");
        assert!(
            matches!(got.last(), Some(F::Close(Some(c))) if *c != 1000),
            "case {i}: {got:?}"
        );
    }
}

#[tokio::test]
async fn many_sessions_at_once_one_failure_touches_no_other() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let url = srv.ws_url.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("s{i}");
            let mut ws = open(&url, r#"{"X-API-Key": "k", "voice": "tones", "lmnt-version": "1.2", "format": "pcm_s16le"}"#).await;
            if i % 4 == 0 {
                // This session breaks the protocol and is closed; the others go on.
                send(&mut ws, &["garbage"]).await;
                return None;
            }
            send(&mut ws, &[&format!(r#"{{"type": "text", "text": "{text}"}}"#), r#"{"type": "finish"}"#]).await;
            let got = read_until(&mut ws, |_| false).await;
            Some((text, tones::decode_i16(&audio(&got), 24000)))
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Some((want, got)) = t.await.unwrap() {
            assert_eq!(got, want);
            ok += 1;
        }
    }
    assert_eq!(ok, 12);
}

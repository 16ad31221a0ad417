//! The LMNT client against `local-tts` over real sockets on 127.0.0.1 (typed dialect).

mod support;

use std::time::Duration;

use lmnt_bridge::lmnt::protocol::ErrorSlug;
use lmnt_bridge::lmnt::{
    self, AudioFormat, LmntError, SessionEvent, SessionEvents, SessionOptions,
};
use lmnt_bridge::local_tts::delivery::DeliveryKnobs;
use lmnt_bridge::local_tts::LocalTtsConfig;
use lmnt_bridge::secret::Secret;
use support::{local_tts, tones};

/// Guard against a hung test; events normally arrive within milliseconds.
const GUARD: Duration = Duration::from_secs(10);

fn opts(srv: &local_tts::InProcess, voice: &str) -> SessionOptions {
    let url = lmnt::session_url(&srv.base_url).unwrap();
    SessionOptions::new(url, Secret::new("test-key"), voice)
}

async fn next(ev: &mut SessionEvents) -> Option<SessionEvent> {
    tokio::time::timeout(GUARD, ev.recv())
        .await
        .expect("event within guard")
}

fn pcm(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Collects audio until `FlushComplete { nonce }` or `Closed`; returns (audio bytes, the
/// terminating event).
async fn audio_until_ack(ev: &mut SessionEvents) -> (Vec<u8>, SessionEvent) {
    let mut audio = Vec::new();
    loop {
        match next(ev).await.expect("session ended early") {
            SessionEvent::Audio(b) => audio.extend_from_slice(&b),
            SessionEvent::Ready { .. } | SessionEvent::Timestamps(_) => {}
            e @ (SessionEvent::FlushComplete { .. } | SessionEvent::Closed { .. }) => {
                return (audio, e)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn flush_acks_follow_their_audio_and_text_after_a_flush_is_the_next_utterance() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let (tx, mut ev) = lmnt::connect(&opts(&srv, "tones")).await.unwrap();
    tx.send_text("Hello ").unwrap();
    tx.send_text("there 42").unwrap();
    tx.send_flush(1).unwrap();
    tx.send_text("second part").unwrap();
    assert!(matches!(
        next(&mut ev).await,
        Some(SessionEvent::Ready {
            request_id: Some(_)
        })
    ));
    let (a1, e1) = audio_until_ack(&mut ev).await;
    assert_eq!(e1, SessionEvent::FlushComplete { nonce: 1 });
    assert_eq!(tones::decode_i16(&pcm(&a1), 24000), "hello there 42");
    assert_eq!(a1.len(), "Hello there 42".len() * 60 * 48);
    tx.send_flush(2).unwrap();
    let (a2, e2) = audio_until_ack(&mut ev).await;
    assert_eq!(e2, SessionEvent::FlushComplete { nonce: 2 });
    assert_eq!(tones::decode_i16(&pcm(&a2), 24000), "second part");
    tx.send_text("the end.").unwrap();
    tx.send_finish().unwrap();
    let (a3, e3) = audio_until_ack(&mut ev).await;
    assert_eq!(
        e3,
        SessionEvent::Closed {
            code: Some(1000),
            reason: String::new()
        }
    );
    assert_eq!(tones::decode_i16(&pcm(&a3), 24000), "the end");
    assert_eq!(next(&mut ev).await, None);
    assert_eq!(tx.send_text("late"), Err(LmntError::Closed));
}

#[tokio::test]
async fn reset_drops_buffered_text_and_is_acknowledged() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let (tx, mut ev) = lmnt::connect(&opts(&srv, "tones")).await.unwrap();
    tx.send_text("dropped text").unwrap();
    tx.send_reset(1).unwrap();
    tx.send_text("kept").unwrap();
    tx.send_flush(2).unwrap();
    let mut audio = Vec::new();
    let mut saw_reset = false;
    loop {
        match next(&mut ev).await.unwrap() {
            SessionEvent::ResetComplete { nonce } => {
                assert_eq!(nonce, 1);
                assert!(audio.is_empty(), "no audio for reset text");
                saw_reset = true;
            }
            SessionEvent::Audio(b) => audio.extend_from_slice(&b),
            SessionEvent::FlushComplete { nonce } => {
                assert_eq!(nonce, 2);
                break;
            }
            SessionEvent::Ready { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_reset);
    assert_eq!(tones::decode_i16(&pcm(&audio), 24000), "kept");
}

#[tokio::test]
async fn odd_length_chunks_reassemble_and_timestamps_arrive() {
    let cfg = LocalTtsConfig {
        delivery: DeliveryKnobs {
            odd_chunks: true,
            chunk_ms: 7,
            ..DeliveryKnobs::default()
        },
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let mut o = opts(&srv, "tones");
    o.sample_rate = 16000;
    o.return_timestamps = true;
    let (tx, mut ev) = lmnt::connect(&o).await.unwrap();
    tx.send_text("odd chunks 7").unwrap();
    tx.send_flush(1).unwrap();
    let mut audio = Vec::new();
    let mut odd_frames = 0;
    let mut words = Vec::new();
    loop {
        match next(&mut ev).await.unwrap() {
            SessionEvent::Audio(b) => {
                odd_frames += b.len() % 2;
                audio.extend_from_slice(&b);
            }
            SessionEvent::Timestamps(ts) => words.extend(ts.into_iter().map(|t| t.text)),
            SessionEvent::FlushComplete { .. } => break,
            SessionEvent::Ready { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(odd_frames > 10, "frames split samples");
    assert_eq!(tones::decode_i16(&pcm(&audio), 16000), "odd chunks 7");
    assert_eq!(words, ["odd", "chunks", "7"]);
}

#[tokio::test]
async fn other_formats_produce_audio() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    for (format, rate, check) in [
        (
            AudioFormat::Ulaw,
            8000,
            (|b: &[u8]| b.starts_with(b"RIFF") && b.len() == 46 + 3 * 480) as fn(&[u8]) -> bool,
        ),
        (AudioFormat::PcmF32le, 8000, |b: &[u8]| {
            b.len() == 3 * 480 * 4
        }),
        (AudioFormat::Mp3, 24000, |b: &[u8]| {
            b.len() > 500 && b[0] == 0xff
        }),
    ] {
        let mut o = opts(&srv, "tones");
        o.format = format;
        o.sample_rate = rate;
        let (tx, mut ev) = lmnt::connect(&o).await.unwrap();
        tx.send_text("abc").unwrap();
        tx.send_finish().unwrap();
        let (audio, end) = audio_until_ack(&mut ev).await;
        assert!(matches!(
            end,
            SessionEvent::Closed {
                code: Some(1000),
                ..
            }
        ));
        assert!(check(&audio), "{format}: {} bytes", audio.len());
    }
}

async fn expect_server_error(o: &SessionOptions) -> (ErrorSlug, String) {
    let (tx, mut ev) = lmnt::connect(o).await.unwrap();
    tx.send_text("x").unwrap();
    // A refused init gets no `ready`: the error is the first event, then the close.
    match next(&mut ev).await.expect("error before end") {
        SessionEvent::Error(LmntError::Server { slug, message }) => {
            let closed = next(&mut ev).await;
            assert!(
                matches!(closed, Some(SessionEvent::Closed { .. })),
                "{closed:?}"
            );
            (slug, message)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn refusals_name_their_cause() {
    let cfg = LocalTtsConfig {
        require_key: Some(Secret::new("right-key")),
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let mut o = opts(&srv, "tones");
    o.api_key = Secret::new("right-key");
    let mut bad_voice = o.clone();
    bad_voice.voice = "no such voice!".into();
    assert_eq!(expect_server_error(&bad_voice).await.0, ErrorSlug::NotFound);
    let mut bad_format = o.clone();
    bad_format.format = AudioFormat::Webm;
    let (slug, msg) = expect_server_error(&bad_format).await;
    assert_eq!(slug, ErrorSlug::InvalidRequest);
    assert!(msg.contains("webm"), "{msg}");
    let mut bad_rate = o.clone();
    bad_rate.sample_rate = 44100;
    let (slug, msg) = expect_server_error(&bad_rate).await;
    assert_eq!(slug, ErrorSlug::InvalidRequest);
    assert!(msg.contains("sample_rate"), "{msg}");
    let mut wrong_key = o.clone();
    wrong_key.api_key = Secret::new("wrong");
    let (slug, _) = expect_server_error(&wrong_key).await;
    assert_eq!(slug, ErrorSlug::Authentication);
    assert!(!LmntError::Server {
        slug,
        message: String::new()
    }
    .is_retryable());
    // The right key still works on the same server.
    let (tx, mut ev) = lmnt::connect(&o).await.unwrap();
    tx.send_finish().unwrap();
    assert!(matches!(
        next(&mut ev).await,
        Some(SessionEvent::Ready { .. })
    ));
}

#[tokio::test]
async fn liveness_deadline_ends_a_stuck_session() {
    let cfg = LocalTtsConfig {
        delivery: DeliveryKnobs {
            first_byte_delay: Duration::from_secs(30),
            ..DeliveryKnobs::default()
        },
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let mut o = opts(&srv, "tones");
    o.liveness_timeout = Duration::from_millis(200);
    let (tx, mut ev) = lmnt::connect(&o).await.unwrap();
    tx.send_text("abc").unwrap();
    let started = tokio::time::Instant::now();
    tx.send_flush(1).unwrap();
    loop {
        match next(&mut ev).await {
            Some(SessionEvent::Ready { .. }) => {}
            Some(SessionEvent::Error(e)) => {
                assert_eq!(e, LmntError::Liveness(Duration::from_millis(200)));
                assert!(e.is_retryable());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(next(&mut ev).await, None);
}

#[tokio::test]
async fn a_consumer_that_pauses_longer_than_the_liveness_timeout_loses_nothing() {
    // About 9 s of audio (426 KB in 20 ms frames), sent as fast as local-tts can: far more
    // than the client queues. The consumer does not read for five liveness timeouts; that is
    // our pause, not LMNT's silence, so the session goes on and every frame arrives.
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let mut o = opts(&srv, "tones");
    o.liveness_timeout = Duration::from_millis(200);
    let (tx, mut ev) = lmnt::connect(&o).await.unwrap();
    let text = "abcdefghijklmnopqrstuvwxyz0123456789 ".repeat(4);
    tx.send_text(&text).unwrap();
    tx.send_flush(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (audio, end) = audio_until_ack(&mut ev).await;
    assert_eq!(end, SessionEvent::FlushComplete { nonce: 1 });
    assert_eq!(
        tones::decode_i16(&pcm(&audio), 24000),
        tones::expected(&text)
    );
    tx.send_finish().unwrap();
    let (_, end) = audio_until_ack(&mut ev).await;
    assert!(matches!(end, SessionEvent::Closed { .. }), "{end:?}");
}

#[tokio::test]
async fn connect_failures_are_classified() {
    // A port nobody listens on: bind, read the port, drop the listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = lmnt::session_url(&format!("http://127.0.0.1:{port}")).unwrap();
    let o = SessionOptions::new(url, Secret::new("k"), "tones");
    let err = lmnt::connect(&o).await.err().unwrap();
    assert!(matches!(err, LmntError::ConnectRefused(_)), "{err:?}");
    assert!(err.is_retryable());
    // A wrong path on a live server: HTTP 404 at the upgrade.
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let mut o = opts(&srv, "tones");
    o.url.set_path("/elsewhere");
    let err = lmnt::connect(&o).await.err().unwrap();
    assert_eq!(err, LmntError::HandshakeRejected { status: 404 });
    // A listener that never answers the handshake: connect timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = lmnt::session_url(&format!("http://{}", silent.local_addr().unwrap())).unwrap();
    let mut o = SessionOptions::new(url, Secret::new("k"), "tones");
    o.connect_timeout = Duration::from_millis(150);
    let err = lmnt::connect(&o).await.err().unwrap();
    assert_eq!(err, LmntError::ConnectTimeout(Duration::from_millis(150)));
}

#[tokio::test]
async fn injected_faults_surface_as_errors() {
    let cfg = LocalTtsConfig {
        error_after_bytes: Some(1000),
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let (tx, mut ev) = lmnt::connect(&opts(&srv, "tones")).await.unwrap();
    tx.send_text("abcdef").unwrap();
    tx.send_flush(1).unwrap();
    let mut saw = false;
    while let Some(e) = next(&mut ev).await {
        if let SessionEvent::Error(LmntError::Server { slug, .. }) = e {
            assert_eq!(slug, ErrorSlug::InternalServer);
            saw = true;
        }
    }
    assert!(saw);
    let cfg = LocalTtsConfig {
        disconnect_after_bytes: Some(1000),
        ..LocalTtsConfig::default()
    };
    let srv = local_tts::start(cfg).await;
    let (tx, mut ev) = lmnt::connect(&opts(&srv, "tones")).await.unwrap();
    tx.send_text("abcdef").unwrap();
    tx.send_flush(1).unwrap();
    let mut last = None;
    while let Some(e) = next(&mut ev).await {
        last = Some(e);
    }
    assert!(
        matches!(last, Some(SessionEvent::Error(LmntError::Transport(_)))),
        "{last:?}"
    );
}

/// Every flush gets its audio before its acknowledgement, over loopback with default
/// delivery. The flush -> first audio latency is printed, not asserted: load changes it.
/// The daemon's view of the same figure (flush -> first LMNT byte against `local-tts`) is in
/// `cargo bench --bench call_latency`.
#[tokio::test]
async fn every_flush_gets_audio_before_its_ack() {
    let srv = local_tts::start(LocalTtsConfig::default()).await;
    let (tx, mut ev) = lmnt::connect(&opts(&srv, "tones")).await.unwrap();
    let mut lat = Vec::new();
    for nonce in 1..=20 {
        tx.send_text("latency 1").unwrap();
        let t0 = tokio::time::Instant::now();
        tx.send_flush(nonce).unwrap();
        let mut first = None;
        loop {
            match next(&mut ev).await.unwrap() {
                SessionEvent::Audio(_) if first.is_none() => first = Some(t0.elapsed()),
                SessionEvent::FlushComplete { .. } => break,
                _ => {}
            }
        }
        lat.push(first.expect("audio before ack"));
    }
    lat.sort();
    let median = lat[lat.len() / 2];
    eprintln!(
        "flush -> first audio: median {median:?}, max {:?}",
        lat[lat.len() - 1]
    );
}

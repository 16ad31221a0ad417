//! The call registry's races, over real peer connections on loopback: admission never lets
//! more than `max_calls` in, and drain and hang-up reach calls whose command queues are full.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lmnt_bridge::call::ledger::TextLimits;
use lmnt_bridge::call::overload::OverloadPolicy;
use lmnt_bridge::call::{
    BridgeSettings, CallCommand, CallOptions, Calls, CreateError, EndReason, Shards,
};
use lmnt_bridge::codec::EncoderSettings;
use lmnt_bridge::control::rate::RateLimits;
use lmnt_bridge::control::BotMessage;
use lmnt_bridge::rtc::RtcSettings;
use lmnt_bridge::secret::Secret;
use tokio::sync::mpsc::error::TrySendError;

/// A recorded aiortc offer whose only candidate is on 127.0.0.1.
const OFFER: &str = include_str!("../fixtures/sdp/aiortc-offer.sdp");
/// Generous: ending a call is local work (closing a peer connection).
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings with an LMNT address where nothing listens (the calls retry in the background,
/// which these tests do not need) and loopback-only ICE.
fn settings(max_calls: usize) -> BridgeSettings {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    BridgeSettings {
        lmnt_url: format!("ws://127.0.0.1:{port}/v1/ai/speech/stream")
            .parse()
            .unwrap(),
        api_key: Secret::new("test-key"),
        voice: "tones".into(),
        language: None,
        sample_rate: 24_000,
        connect_timeout: Duration::from_secs(1),
        liveness_timeout: Duration::from_secs(2),
        limits: TextLimits {
            max_text_message_bytes: 1_000,
            max_utterance_bytes: 5_000,
        },
        bot_rate: RateLimits {
            messages_per_sec: 200.0,
            message_burst: 400,
            flushes_per_sec: 5.0,
            flush_burst: 10,
        },
        max_calls,
        encoder: EncoderSettings::default(),
        jitter_min: Duration::ZERO,
        jitter_max: Duration::from_millis(300),
        max_queued: Duration::from_secs(5),
        max_late: Duration::from_millis(100),
        rtc: RtcSettings::loopback(),
        dtmf_barge_in: false,
        record: false,
        recordings_dir: std::env::temp_dir(),
        node_id: "node".into(),
        // No bot dial-out.
        dial: Default::default(),
        bot_grace: Duration::from_secs(10),
        panic_marker: None,
        overload: OverloadPolicy::off(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_against_max_calls_10_admit_exactly_10() {
    let calls = Calls::new(settings(10), Shards::start(2).unwrap());
    let creates = (0..50).map(|_| {
        let calls = Arc::clone(&calls);
        tokio::spawn(async move { calls.create(OFFER, CallOptions::default()).await })
    });
    let results: Vec<_> = join_all(creates)
        .await
        .into_iter()
        .map(|joined| joined.expect("create task"))
        .collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(CreateError::AtCapacity(10))))
        .count();
    assert_eq!(
        (admitted, refused),
        (10, 40),
        "{:?}",
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect::<Vec<_>>()
    );
    assert_eq!(calls.len(), 10);
    assert!(!calls.is_ready(), "at capacity");

    // Ending the calls gives their permits back.
    calls.hang_up_all(EndReason::CallerHangup);
    tokio::time::timeout(END_TIMEOUT, calls.wait_empty())
        .await
        .expect("every call ended");
    let again = calls.create(OFFER, CallOptions::default()).await;
    assert!(again.is_ok(), "{again:?}");
    calls.hang_up_all(EndReason::CallerHangup);
    tokio::time::timeout(END_TIMEOUT, calls.wait_empty())
        .await
        .expect("ended");
}

/// Blocks the call thread of `calls` (started with one) until the returned sender is
/// dropped: meanwhile no call task runs, so the command queues stay exactly as full as the
/// test makes them.
fn freeze_call_thread(calls: &Calls) -> std::sync::mpsc::Sender<()> {
    let (release, frozen) = std::sync::mpsc::channel::<()>();
    let (blocked_tx, blocked) = std::sync::mpsc::channel();
    drop(calls.shards().lease().handle().spawn(async move {
        let _ = blocked_tx.send(());
        let _ = frozen.recv();
    }));
    blocked.recv().expect("the call thread runs the freeze");
    release
}

#[tokio::test]
async fn a_drain_with_full_command_queues_still_ends_every_call() {
    let calls = Calls::new(settings(4), Shards::start(1).unwrap());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, _answer) = calls.create(OFFER, CallOptions::default()).await.unwrap();
        ids.push(id);
    }
    let frozen = freeze_call_thread(&calls);
    for id in &ids {
        let call = calls.get(id).expect("live");
        let mut queued = 0;
        loop {
            let message = BotMessage::Text { text: "x".into() };
            match call
                .commands
                .try_send(CallCommand::Bot(message, tokio::time::Instant::now()))
            {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Closed(_)) => panic!("call {id} ended early"),
            }
        }
        assert!(queued > 0, "the queue took some commands before it filled");
        assert!(call
            .commands
            .try_send(CallCommand::Bot(
                BotMessage::Flush,
                tokio::time::Instant::now()
            ))
            .is_err());
    }
    calls.start_drain();
    assert!(!calls.is_ready(), "a draining daemon admits no call");
    drop(frozen);
    tokio::time::timeout(END_TIMEOUT, calls.wait_empty())
        .await
        .expect("every call ended although its command queue was full");
    assert!(matches!(
        calls.create(OFFER, CallOptions::default()).await,
        Err(CreateError::Draining)
    ));
}

#[tokio::test]
async fn a_hang_up_with_a_full_command_queue_ends_the_call() {
    let calls = Calls::new(settings(2), Shards::start(1).unwrap());
    let (id, _answer) = calls.create(OFFER, CallOptions::default()).await.unwrap();
    let call = calls.get(&id).expect("live");
    let frozen = freeze_call_thread(&calls);
    while call
        .commands
        .try_send(CallCommand::Bot(
            BotMessage::Flush,
            tokio::time::Instant::now(),
        ))
        .is_ok()
    {}
    call.hang_up(EndReason::CallerHangup);
    drop(frozen);
    tokio::time::timeout(END_TIMEOUT, calls.wait_empty())
        .await
        .expect("the call ended");
    assert_eq!(
        call.info.snapshot().ended_reason,
        Some(EndReason::CallerHangup)
    );
}

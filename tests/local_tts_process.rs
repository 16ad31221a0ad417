//! The `local-tts` process: exit 69 when it cannot bind; SIGTERM closes open sessions with
//! 1001 and exits 0.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use lmnt_bridge::lmnt::{self, SessionEvent, SessionOptions};
use lmnt_bridge::secret::Secret;
use support::local_tts;

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");

#[test]
fn cannot_bind_exits_69() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["local-tts", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
}

#[tokio::test]
async fn sigterm_closes_sessions_going_away_and_exits_0() {
    let mut srv = local_tts::spawn(BIN, &[], &[], Stdio::null());
    let url = lmnt::session_url(&srv.base_url).unwrap();
    let (_tx, mut ev) = lmnt::connect(&SessionOptions::new(url, Secret::new("k"), "tones"))
        .await
        .unwrap();
    let guard = Duration::from_secs(10);
    let ready = tokio::time::timeout(guard, ev.recv()).await.unwrap();
    assert!(matches!(ready, Some(SessionEvent::Ready { .. })));
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let closed = tokio::time::timeout(guard, ev.recv()).await.unwrap();
    assert!(
        matches!(
            closed,
            Some(SessionEvent::Closed {
                code: Some(1001),
                ..
            })
        ),
        "{closed:?}"
    );
    let status = tokio::task::spawn_blocking(move || srv.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

//! The notify API against a fake `NOTIFY_SOCKET`: a unix datagram socket in a temp dir
//! receives READY=1, STATUS, WATCHDOG=1 pings (only while the probe says alive, and only while
//! the runtime runs), EXTEND_TIMEOUT_USEC and STOPPING=1.
//!
//! One test per binary: it sets `NOTIFY_SOCKET` for the whole process before any thread that
//! could read the environment exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lmnt_bridge::daemon::notify::{spawn_watchdog, Notifier};
use tokio::net::UnixDatagram;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Guard against a hang; every receive normally completes within one ping period.
const GUARD: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(40);

async fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = timeout(GUARD, sock.recv(&mut buf))
        .await
        .expect("a notification within the guard")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn drain_pending(sock: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.try_recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn ready_then_watchdog_pings_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let std_sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    std_sock.set_nonblocking(true).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let sock = UnixDatagram::from_std(std_sock).unwrap();
        let notifier = Notifier::new();
        assert!(notifier.is_enabled());

        notifier.ready().unwrap();
        assert_eq!(next(&sock).await, "READY=1\n");
        notifier.status("serving 0 calls\nsecond line").unwrap();
        assert_eq!(next(&sock).await, "STATUS=serving 0 calls second line\n");

        let alive = Arc::new(AtomicBool::new(true));
        let stop = CancellationToken::new();
        let probe = alive.clone();
        let task = spawn_watchdog(
            notifier,
            INTERVAL,
            move || probe.load(Ordering::SeqCst),
            stop.clone(),
        );
        for _ in 0..3 {
            assert_eq!(next(&sock).await, "WATCHDOG=1\n");
        }

        // A stalled runtime sends nothing: block this (only) runtime thread for 5 periods.
        drain_pending(&sock);
        std::thread::sleep(INTERVAL * 5 / 2);
        assert_eq!(
            drain_pending(&sock),
            Vec::<String>::new(),
            "pinged while the runtime was stalled"
        );
        assert_eq!(
            next(&sock).await,
            "WATCHDOG=1\n",
            "pings resume with the runtime"
        );

        // A failing probe withholds pings; they resume when it recovers.
        alive.store(false, Ordering::SeqCst);
        tokio::time::sleep(INTERVAL / 2).await; // let a ping already due go out
        drain_pending(&sock);
        tokio::time::sleep(INTERVAL * 3).await; // six ping periods with the probe failing
        assert_eq!(
            drain_pending(&sock),
            Vec::<String>::new(),
            "pinged while the probe failed"
        );
        alive.store(true, Ordering::SeqCst);
        assert_eq!(next(&sock).await, "WATCHDOG=1\n");

        notifier.extend_timeout(Duration::from_secs(20)).unwrap();
        // A ping may interleave; skip pings until the extension arrives.
        let mut msg = next(&sock).await;
        while msg == "WATCHDOG=1\n" {
            msg = next(&sock).await;
        }
        assert_eq!(msg, "EXTEND_TIMEOUT_USEC=20000000\n");

        stop.cancel();
        timeout(GUARD, task)
            .await
            .expect("watchdog task ends")
            .unwrap();
        drain_pending(&sock);
        notifier.stopping().unwrap();
        assert_eq!(next(&sock).await, "STOPPING=1\n");
        tokio::time::sleep(INTERVAL).await;
        assert_eq!(
            drain_pending(&sock),
            Vec::<String>::new(),
            "pinged after stop"
        );
    });
}

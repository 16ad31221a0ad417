//! Hostile HTTP clients over raw loopback sockets: connections that send half a request (or
//! nothing) and hold on, for the listener's timeouts and connection cap.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The start of a request header that never ends.
pub const HALF_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: lmnt-bridge\r\nX-Slow: ";

/// Connects to `addr` and sends `prefix` (possibly nothing), then holds the connection.
pub async fn connect_sending(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the daemon");
    if !prefix.is_empty() {
        stream
            .write_all(prefix)
            .await
            .expect("send a partial request");
    }
    stream
}

/// `n` connections that each sent [`HALF_REQUEST`].
pub async fn half_requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(connect_sending(addr, HALF_REQUEST).await);
    }
    held
}

/// Whether the daemon still holds `stream` open without having written to it: `true` when
/// nothing is readable right now (neither data nor end of stream).
pub fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Reads until the daemon closes `stream`; returns what it wrote first (empty when it just
/// closed). Panics when it is still open after `deadline`.
pub async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the daemon kept the connection open for {deadline:?}; it wrote {:?}",
        String::from_utf8_lossy(&received)
    );
    received
}

/// Raises this process's soft limit on open files to its hard limit (at most `want`), so a
/// test can hold many connections; the daemon it spawns afterwards inherits the limit.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let target = want.min(limit.rlim_max);
        if limit.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        limit.rlim_cur
    }
}

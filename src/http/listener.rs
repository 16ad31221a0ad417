//! The HTTP listener's accept loop, with the limits a hostile client meets before any handler
//! runs (`axum::serve` has neither):
//!
//! - **A cap on open connections** (`server.max_connections`): each accepted connection holds
//!   one semaphore permit inside its socket, so the permit is released when the socket closes,
//!   whether it served plain requests or was upgraded to a WebSocket (a bot's control channel
//!   counts for as long as it is open). A connection over the cap gets a `503` with
//!   `Retry-After` written straight to the socket and is closed, without reading it.
//! - **A header read timeout** (`server.header_timeout_ms`, hyper's `header_read_timeout`):
//!   a request's header must arrive within it, and so must the next request on a kept-alive
//!   connection; a client that is slower, or sends nothing, is disconnected. Body timeouts
//!   are the handlers' (they read bodies with `server.body_timeout_ms`).
//!
//! HTTP/1.1 only (as before: axum's HTTP/2 feature was never enabled). Shutdown: when `stop`
//! is cancelled the loop stops accepting, every connection finishes its request in flight and
//! closes, and [`serve`] returns once they have; upgraded WebSockets end with their calls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After an accept error other than a connection's own (out of file descriptors, most
/// likely), wait this long before accepting again instead of spinning (as `axum::serve`
/// does); it also bounds the warnings to one a second.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The body of the `503` a connection over the cap gets.
const OVER_CAP_BODY: &str = "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the daemon holds server.max_connections open connections; retry later\"}}";

/// Limits of the listener (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Open connections at most, WebSockets included.
    pub max_connections: usize,
    /// A request header must arrive within this.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` under `limits` until `stop` is cancelled; returns once every
/// connection has closed (see the module docs). Accept errors are logged and retried, never
/// fatal.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // No Nagle: control events are small frames that follow caller-audio frames closely,
        // and must not wait for the previous segment's ACK (up to 40 ms).
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY not set");
        }
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let io = Counted::new(tcp, permit);
                connections.spawn(serve_connection(
                    io,
                    router.clone(),
                    limits.header_timeout,
                    stop.clone(),
                ));
            }
            Err(_) => refuse(tcp),
        }
    }
    connections.close();
    connections.wait().await;
}

/// Errors of one incoming connection (it went away before it was accepted), not the listener's.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the cap with a `503` and closes it. One non-blocking write into
/// the fresh socket's empty send buffer: a client that cannot take it is not waited for.
fn refuse(tcp: TcpStream) {
    tracing::debug!("HTTP connection over server.max_connections refused");
    crate::metrics::http_connection_refused();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OVER_CAP_BODY}",
        OVER_CAP_BODY.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

/// One connection: HTTP/1.1 with upgrades, the header timeout, graceful close on `stop`.
async fn serve_connection(
    io: Counted,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // A client that was too slow, went away or sent garbage: its own business.
        tracing::trace!(error = %err, "HTTP connection ended");
    }
}

/// A connection's socket holding its slot under the connection cap. The slot is given back
/// before the client can see the connection close (when the socket is shut down, or else
/// just before it is dropped, after its request or when an upgraded WebSocket closes), so a
/// client that saw a connection close finds its slot free.
struct Counted {
    /// `None` once given back.
    slot: Option<Slot>,
    tcp: TcpStream,
}

impl Counted {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit) -> Self {
        Counted {
            slot: Some(Slot::new(permit)),
            tcp,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Before the socket closes (fields drop after this).
        self.slot.take();
    }
}

/// A permit of the connection cap, counted in the `lmnt_bridge_http_connections` gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        crate::metrics::http_connections(1.0);
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::http_connections(-1.0);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection is closing: its slot is free before the client sees the FIN.
        self.slot.take();
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

//! Knowing when a frame has left: webrtc-rs's `write_rtp` only queues a packet for the peer
//! connection's driver task, which encrypts it and sends it later (under load, tens of
//! milliseconds later). Events that claim "this audio has been played out" must not run ahead
//! of it, so each call's peer connection gets a runtime whose UDP sockets report every
//! outbound RTP packet of the call's stream as its datagram is handed to the kernel.
//!
//! The report is the packet's sequence number, read from the RTP header (SRTP leaves it in
//! the clear), published on a `watch`: waiting costs a wake-up only while someone waits.
//!
//! The same runtime also shortens the driver's sleeps while the DTLS handshake is due to
//! start ([`HandshakeKick`]): webrtc-rs 0.21 queues the DTLS client's first flight when ICE
//! connects but sends it only at the driver's next timer, which was about 100 ms later on
//! every call, all of it added to the caller's wait for the bot's first words.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    Transmit,
};

/// The sequence number of the newest outbound RTP packet of one stream whose datagram has
/// been handed to the kernel (or whose send the kernel refused: the stack is done with it
/// either way). `None` until the first one.
pub type SentReceiver = watch::Receiver<Option<u16>>;

/// Watches one RTP stream (by SSRC) leaving a peer connection's sockets.
#[derive(Debug)]
pub(crate) struct SentTap {
    ssrc: u32,
    sent: watch::Sender<Option<u16>>,
}

impl SentTap {
    /// A tap for the stream `ssrc` and the receiver its reports reach.
    pub(crate) fn new(ssrc: u32) -> (Arc<SentTap>, SentReceiver) {
        let (sent, rx) = watch::channel(None);
        (Arc::new(SentTap { ssrc, sent }), rx)
    }

    /// Notes every datagram of `transmit` that is an RTP packet of the watched stream.
    fn observe(&self, transmit: &Transmit<'_>) {
        let segment = transmit
            .segment_size
            .filter(|&n| n > 0)
            .unwrap_or(transmit.contents.len().max(1));
        for datagram in transmit.contents.chunks(segment) {
            if let Some(sequence) = rtp_sequence_of(datagram, self.ssrc) {
                self.sent.send_replace(Some(sequence));
            }
        }
    }
}

/// The sequence number of `datagram` when it is an RTP (or SRTP) packet of stream `ssrc`.
/// STUN (first byte 0-3), DTLS (20-63) and RTCP (payload types 64-95, RFC 5761) are not.
fn rtp_sequence_of(datagram: &[u8], ssrc: u32) -> Option<u16> {
    const RTP_HEADER_BYTES: usize = 12;
    if datagram.len() < RTP_HEADER_BYTES || datagram[0] >> 6 != 2 {
        return None;
    }
    if (64..=95).contains(&(datagram[1] & 0x7f)) {
        return None;
    }
    let packet_ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    (packet_ssrc == ssrc).then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}

/// The longest the peer connection's driver sleeps between ICE connected and the end of the
/// DTLS handshake: its first wake-up sends the queued ClientHello, so the handshake starts
/// within this of ICE connecting instead of at the next protocol timer (about 100 ms).
const HANDSHAKE_KICK: Duration = Duration::from_millis(1);
/// How long after ICE connected the sleeps stay capped at most. Only the first flight needs
/// the kick (the later ones answer a read and leave at once), so a peer that never answers
/// DTLS costs a few dozen extra wake-ups, not a millisecond timer for the rest of the call.
const KICK_WINDOW: Duration = Duration::from_millis(50);

/// Armed at ICE connected until the DTLS handshake ends (either way) or [`KICK_WINDOW`] has
/// passed: meanwhile the runtime caps the driver's sleeps at [`HANDSHAKE_KICK`].
#[derive(Debug, Default)]
pub(crate) struct HandshakeKick(Mutex<Option<Instant>>);

impl HandshakeKick {
    /// ICE has connected at `now`: the DTLS client's first flight is queued.
    pub(crate) fn start(&self, now: Instant) {
        *self.lock() = Some(now + KICK_WINDOW);
    }

    /// The handshake is over (connected, failed or closed).
    pub(crate) fn stop(&self) {
        *self.lock() = None;
    }

    /// The sleep the driver asked for, capped while the kick is armed. `now` is read only
    /// then: every driver iteration of every call passes through here.
    fn cap(&self, sleep: Duration, now: impl FnOnce() -> Instant) -> Duration {
        let mut until = self.lock();
        match *until {
            Some(end) if now() < end => sleep.min(HANDSHAKE_KICK),
            Some(_) => {
                *until = None;
                sleep
            }
            None => sleep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Only an Option<Instant> inside: a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The host runtime with its UDP sockets tapped and its sleeps capped during the DTLS
/// handshake's start. Everything else is delegated unchanged.
pub(crate) struct TappedRuntime {
    inner: Arc<dyn Runtime>,
    tap: Arc<SentTap>,
    kick: Arc<HandshakeKick>,
}

impl TappedRuntime {
    /// Wraps webrtc-rs's default (tokio) runtime; `None` when the crate was built without one.
    pub(crate) fn new(tap: Arc<SentTap>, kick: Arc<HandshakeKick>) -> Option<TappedRuntime> {
        Some(TappedRuntime {
            inner: webrtc::runtime::default_runtime()?,
            tap,
            kick,
        })
    }
}

impl fmt::Debug for TappedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TappedRuntime")
            .field("inner", &self.inner)
            .field("ssrc", &self.tap.ssrc)
            .finish()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Runtime for TappedRuntime {
    fn spawn(&self, future: BoxFuture<'static, ()>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: BoxFuture<'static, ()>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(TappedSocket {
            inner: self.inner.wrap_udp_socket(socket)?,
            tap: Arc::clone(&self.tap),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> BoxFuture<'a, io::Result<Arc<dyn AsyncTcpStream>>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner
            .sleep(self.kick.cap(duration, || self.inner.now()))
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> BoxFuture<'static, ()> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// A UDP socket that reports the watched stream's packets once the kernel has them.
#[derive(Debug)]
struct TappedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    tap: Arc<SentTap>,
}

impl AsyncUdpSocket for TappedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let result = self.inner.poll_send(cx, transmit);
        if result.is_ready() {
            self.tap.observe(transmit);
        }
        result
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(payload_type: u8, sequence: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, payload_type];
        p.extend_from_slice(&sequence.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xAA; 20]);
        p
    }

    #[test]
    fn reads_the_sequence_of_the_watched_stream_only() {
        assert_eq!(rtp_sequence_of(&rtp(111, 7, 42), 42), Some(7));
        assert_eq!(
            rtp_sequence_of(&rtp(0x80 | 101, 65535, 42), 42),
            Some(65535)
        );
        assert_eq!(rtp_sequence_of(&rtp(111, 7, 43), 42), None);
        // RTCP sender report (PT 200), STUN, DTLS, runts.
        assert_eq!(rtp_sequence_of(&rtp(200, 7, 42), 42), None);
        assert_eq!(
            rtp_sequence_of(&[0x00, 0x01, 0, 8, 0x21, 0x12, 0xA4, 0x42], 42),
            None
        );
        assert_eq!(rtp_sequence_of(&[22; 40], 42), None);
        assert_eq!(rtp_sequence_of(&[0x80, 111, 0, 1], 42), None);
    }

    #[test]
    fn the_kick_caps_sleeps_only_while_armed_and_within_its_window() {
        let kick = HandshakeKick::default();
        let (t0, long) = (Instant::now(), Duration::from_millis(100));
        assert_eq!(kick.cap(long, || t0), long);
        kick.start(t0);
        assert_eq!(kick.cap(long, || t0), HANDSHAKE_KICK);
        assert_eq!(kick.cap(Duration::ZERO, || t0), Duration::ZERO);
        kick.stop();
        assert_eq!(kick.cap(long, || t0), long);
        // A handshake that never ends stops being kicked after the window.
        kick.start(t0);
        assert_eq!(kick.cap(long, || t0 + KICK_WINDOW / 2), HANDSHAKE_KICK);
        assert_eq!(kick.cap(long, || t0 + KICK_WINDOW), long);
        assert_eq!(kick.cap(long, || t0), long, "disarmed for good");
    }

    #[test]
    fn a_gso_batch_reports_its_last_packet() {
        let (tap, rx) = SentTap::new(9);
        let mut batch = rtp(111, 1, 9);
        batch.extend(rtp(111, 2, 9));
        let transmit = Transmit {
            destination: SocketAddr::from(([127, 0, 0, 1], 9)),
            ecn: None,
            contents: &batch,
            segment_size: Some(batch.len() / 2),
            src_ip: None,
        };
        tap.observe(&transmit);
        assert_eq!(*rx.borrow(), Some(2));
    }
}

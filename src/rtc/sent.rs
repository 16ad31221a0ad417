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
//!
//! And its sockets hand webrtc-rs a caller's early nomination a second time
//! ([`NominationReplay`]): webrtc-rs 0.21's controlled ICE agent drops a Binding request
//! carrying USE-CANDIDATE that arrives before its own check of the pair has succeeded, with
//! no answer and no memory of it (RFC 8445 §7.3.1.5 says to nominate the pair once that
//! check succeeds). A caller that nominates at once (str0m does, within a millisecond of its
//! first check) then waits for its retransmission: 500 ms of every call's set-up.

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
            replay: Mutex::new(NominationReplay::default()),
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
    replay: Mutex<NominationReplay>,
}

/// The caller's first nomination, held until this agent's own check has an answer, then
/// delivered again (once per socket). A repeated Binding request is harmless: it is
/// answered again, as a retransmission would be.
#[derive(Debug, Default)]
enum NominationReplay {
    /// No nomination seen yet.
    #[default]
    Watching,
    /// A nomination was delivered; a copy waits for a Binding success response.
    Held(Vec<u8>, RecvMeta),
    /// The copy is due: deliver it at the next read.
    Due(Vec<u8>, RecvMeta),
    /// Replayed (or never needed): nothing more to do.
    Done,
}

impl NominationReplay {
    /// Looks at one datagram the socket delivered.
    fn observe(&mut self, datagram: &[u8], meta: RecvMeta) {
        *self = match (std::mem::take(self), stun_kind(datagram)) {
            (NominationReplay::Watching, Some(StunKind::Nomination)) => {
                NominationReplay::Held(datagram.to_vec(), meta)
            }
            (NominationReplay::Held(copy, meta), Some(StunKind::BindingSuccess)) => {
                NominationReplay::Due(copy, meta)
            }
            (state, _) => state,
        };
    }

    /// The held copy, once it is due.
    fn take_due(&mut self) -> Option<(Vec<u8>, RecvMeta)> {
        match std::mem::replace(self, NominationReplay::Done) {
            NominationReplay::Due(copy, meta) => Some((copy, meta)),
            other => {
                *self = other;
                None
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum StunKind {
    /// A Binding request with USE-CANDIDATE.
    Nomination,
    /// A Binding success response.
    BindingSuccess,
}

/// What a datagram is, if it is one of the two STUN messages [`NominationReplay`] watches.
fn stun_kind(datagram: &[u8]) -> Option<StunKind> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USE_CANDIDATE: u16 = 0x0025;
    if datagram.len() < 20 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    match u16::from_be_bytes([datagram[0], datagram[1]]) {
        0x0101 => Some(StunKind::BindingSuccess),
        0x0001 => {
            let mut attrs = &datagram[20..];
            while attrs.len() >= 4 {
                let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
                if kind == USE_CANDIDATE {
                    return Some(StunKind::Nomination);
                }
                let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
                attrs = attrs.get(4 + len.next_multiple_of(4)..)?;
            }
            None
        }
        _ => None,
    }
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
        let mut replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some((copy, held_meta)), Some(buf), Some(slot)) =
            (replay.take_due(), bufs.first_mut(), meta.first_mut())
        {
            if let Some(room) = buf.get_mut(..copy.len()) {
                room.copy_from_slice(&copy);
                *slot = held_meta;
                return Poll::Ready(Ok(1));
            }
        }
        let result = self.inner.poll_recv(cx, bufs, meta);
        if matches!(*replay, NominationReplay::Done) {
            return result;
        }
        if let Poll::Ready(Ok(count)) = result {
            for (buf, m) in bufs.iter().zip(meta.iter()).take(count) {
                // One datagram per buffer (STUN is never coalesced with others by GRO).
                if m.len == m.stride {
                    replay.observe(&buf[..m.len.min(buf.len())], *m);
                }
            }
            if matches!(*replay, NominationReplay::Due(..)) {
                // Read again soon, even if the socket has nothing more.
                cx.waker().wake_by_ref();
            }
        }
        result
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

    /// A STUN message: `kind`, then attributes (type, value) padded to 4 bytes.
    fn stun(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = kind.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    fn meta(len: usize) -> RecvMeta {
        let mut m = RecvMeta::default();
        m.addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        m.len = len;
        m.stride = len;
        m
    }

    #[test]
    fn tells_a_nomination_and_a_binding_success_from_other_datagrams() {
        let username: (u16, &[u8]) = (0x0006, b"abcd:efg");
        let nomination = stun(0x0001, &[username, (0x0025, b"")]);
        assert_eq!(stun_kind(&nomination), Some(StunKind::Nomination));
        assert_eq!(stun_kind(&stun(0x0001, &[username])), None);
        assert_eq!(
            stun_kind(&stun(0x0101, &[])),
            Some(StunKind::BindingSuccess)
        );
        assert_eq!(stun_kind(&rtp(111, 1, 42)), None);
        // Truncated or lying attribute lengths end the walk, never panic.
        assert_eq!(stun_kind(&nomination[..22]), None);
        let mut lying = stun(0x0001, &[username]);
        lying[22..24].copy_from_slice(&0xfff0u16.to_be_bytes());
        assert_eq!(stun_kind(&lying), None);
    }

    #[test]
    fn an_early_nomination_is_replayed_once_after_the_first_binding_success() {
        let nomination = stun(0x0001, &[(0x0025, b"")]);
        let success = stun(0x0101, &[]);
        let mut replay = NominationReplay::default();
        replay.observe(&stun(0x0001, &[]), meta(20));
        assert!(replay.take_due().is_none());
        replay.observe(&nomination, meta(nomination.len()));
        assert!(
            replay.take_due().is_none(),
            "held until this agent's check is answered"
        );
        replay.observe(&success, meta(success.len()));
        let (copy, m) = replay.take_due().expect("due after the success response");
        assert_eq!((copy, m.len), (nomination.clone(), nomination.len()));
        // Once only, whatever comes next.
        replay.observe(&nomination, meta(nomination.len()));
        replay.observe(&success, meta(success.len()));
        assert!(replay.take_due().is_none());
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

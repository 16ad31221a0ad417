//! One call's peer connection as webrtc-rs's sans-IO core (`rtc`), its UDP sockets, and the
//! task that drives it.
//!
//! The core does no I/O and reads no clock: it is handed datagrams and instants and hands
//! back datagrams, events and media. This module is the only place it meets the network:
//!
//! - [`drive`] is the call's one peer task. It sleeps until a socket is readable, the core's
//!   next timer is due or the call's close wakes it; then it reads every datagram waiting,
//!   runs the timers that are due, and drains what the core produced ([`Connection::pump`]).
//! - A frame to send does not pass through that task: [`Connection::send_rtp`] runs on the
//!   sender's task, under the connection's lock, and its datagram is in the kernel when it
//!   returns. That is one task wake-up per packet fewer than a queue to the peer task, and it
//!   tells the sender exactly when its packet left.
//!
//! The lock is a plain mutex held only for core calls and non-blocking socket calls (a few
//! microseconds), never across an `await`.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::nomination::NominationReplay;
use super::sent::rtp_sequence_of;
use super::{reports, PeerEvent, RtcError, Shared, STATE_CLOSED, STATE_FAILED};
use crate::codec::loss::ReceiverReport;

/// Receive buffer: the largest UDP payload on a 1500-byte Ethernet path with room to spare.
/// A longer datagram is truncated by the kernel and then fails SRTP or STUN integrity, as a
/// corrupted one would.
const RECV_BUFFER_BYTES: usize = 2048;
/// When the core has no timer at all (it always has one while ICE runs), the task still wakes
/// this often; a bound, not a schedule.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Datagrams read from one socket per wake-up: a caller sends 50 a second, so this is only
/// reached by a flood, which then shares the task's turns with the timers instead of starving
/// them (the socket stays readable, so the next wake-up is immediate).
const MAX_READS_PER_WAKE: usize = 64;

/// The core, its sockets, and what the peer task and the senders share about them.
pub(super) struct Connection {
    pc: RTCPeerConnection,
    sockets: Arc<[UdpSocket]>,
    /// `sockets`' local addresses, by position.
    local_addrs: Vec<SocketAddr>,
    /// The early-nomination workaround, one per socket (see [`NominationReplay`]).
    replays: Vec<NominationReplay>,
    /// The send track's sender in the core.
    sender_id: RTCRtpSenderId,
    /// The send stream's SSRC: its packets are reported on `sent`; reports about it go to the
    /// call.
    ssrc: u32,
    /// The sequence number of the newest packet of the send stream handed to the kernel.
    sent: watch::Sender<Option<u16>>,
    /// `close` ran: the core is closed and the task ends.
    closed: bool,
}

impl Connection {
    /// The connection `pc` over `sockets`. `sender_id` and `ssrc` name the send stream, whose
    /// packets are reported on `sent` as they leave. Fails only when a socket has no address.
    pub(super) fn new(
        pc: RTCPeerConnection,
        sockets: Arc<[UdpSocket]>,
        sender_id: RTCRtpSenderId,
        ssrc: u32,
        sent: watch::Sender<Option<u16>>,
    ) -> io::Result<Connection> {
        let local_addrs = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<_>>()?;
        Ok(Connection {
            pc,
            local_addrs,
            replays: sockets
                .iter()
                .map(|_| NominationReplay::default())
                .collect(),
            sockets,
            sender_id,
            ssrc,
            sent,
            closed: false,
        })
    }

    /// Hands one RTP packet of the send stream to the core and its datagram to the kernel.
    pub(super) fn send_rtp(&mut self, packet: rtc::rtp::Packet) -> Result<(), RtcError> {
        if self.closed {
            return Err(RtcError::Closed);
        }
        let mut sender = self
            .pc
            .rtp_sender(self.sender_id)
            .ok_or_else(|| RtcError::Webrtc("the send track has no sender".into()))?;
        sender
            .write_rtp(Instant::now(), packet)
            .map_err(|e| RtcError::Webrtc(e.to_string()))?;
        self.flush_writes();
        Ok(())
    }

    /// Closes the core (its DTLS close_notify goes out) and stops the task at its next wake.
    pub(super) fn close(&mut self, tag: u32) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        if let Err(e) = self.pc.close() {
            tracing::debug!(peer = tag, error = %e, "close reported an error");
        }
        self.flush_writes();
    }

    /// Sends every datagram the core has queued. A send the kernel refuses (a full buffer, an
    /// unreachable address) is dropped, as the network would drop it; a packet of the send
    /// stream counts as sent either way, since the stack is done with it.
    fn flush_writes(&mut self) {
        while let Some(out) = self.pc.poll_write() {
            let local = out.transport.local_addr;
            let index = self.local_addrs.iter().position(|&a| a == local);
            let Some(socket) = self.sockets.get(index.unwrap_or(0)) else {
                return;
            };
            if let Err(e) = socket.try_send_to(&out.message, out.transport.peer_addr) {
                tracing::trace!(error = %e, "datagram not sent");
            }
            if let Some(sequence) = rtp_sequence_of(&out.message, self.ssrc) {
                self.sent.send_replace(Some(sequence));
            }
        }
    }

    /// Reads every datagram waiting on every socket into the core.
    fn receive_all(&mut self, buf: &mut [u8]) {
        let sockets = Arc::clone(&self.sockets);
        for (i, socket) in sockets.iter().enumerate() {
            let local_addr = self.local_addrs[i];
            for _ in 0..MAX_READS_PER_WAKE {
                match socket.try_recv_from(buf) {
                    Ok((n, from)) => self.receive(i, local_addr, from, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error from an earlier send (port unreachable): the caller's
                    // address stopped answering; ICE consent notices that on its own.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
        }
    }

    /// One datagram into the core, and the caller's early nomination again once it is due.
    fn receive(&mut self, socket: usize, local_addr: SocketAddr, from: SocketAddr, data: &[u8]) {
        let replay = &mut self.replays[socket];
        replay.observe(data, from);
        let due = replay.take_due();
        self.handle_read(local_addr, from, BytesMut::from(data));
        if let Some((copy, from)) = due {
            self.handle_read(local_addr, from, BytesMut::from(&copy[..]));
        }
    }

    fn handle_read(&mut self, local_addr: SocketAddr, peer_addr: SocketAddr, message: BytesMut) {
        let read = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr,
                peer_addr,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message,
        };
        if let Err(e) = self.pc.handle_read(read) {
            tracing::trace!(error = %e, "datagram refused by the peer connection");
        }
    }

    /// Runs the core's timers if `deadline` (the core's next one, as [`Connection::pump`]
    /// last returned it) has come.
    fn run_timers(&mut self, deadline: Instant) {
        let now = Instant::now();
        if now >= deadline {
            if let Err(e) = self.pc.handle_timeout(now) {
                tracing::debug!(error = %e, "peer connection timer failed");
            }
        }
    }

    /// Sends what the core queued, turns its events and media into [`PeerEvent`]s, and
    /// returns when the task must wake next (`None` once closed: the task ends).
    fn pump(&mut self, shared: &Shared) -> Option<Instant> {
        loop {
            let mut ice_connected = false;
            while let Some(event) = self.pc.poll_event() {
                ice_connected |= on_event(shared, event);
            }
            self.deliver_reads(shared);
            // What the reads, the timers and the events above queued.
            self.flush_writes();
            if !ice_connected {
                break;
            }
            // The DTLS client's first flight is queued when ICE connects but leaves only at
            // the core's next timer (about 200 ms later, all of it added to the caller's wait
            // for the bot's first words): run the timers now.
            if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                tracing::debug!(error = %e, "peer connection timer failed");
            }
        }
        if self.closed {
            return None;
        }
        Some(
            self.pc
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + IDLE_WAKE),
        )
    }

    /// The caller's RTP, and the reception reports about the send stream, to the call.
    fn deliver_reads(&mut self, shared: &Shared) {
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(_, packet) => shared.deliver(PeerEvent::CallerAudio {
                    payload_type: packet.header.payload_type,
                    marker: packet.header.marker,
                    rtp_timestamp: packet.header.timestamp,
                    sequence: packet.header.sequence_number,
                    payload: packet.payload,
                }),
                RTCMessage::RtcpPacket(_, packets) => {
                    for block in packets.iter().flat_map(|p| reports::blocks(p.as_ref())) {
                        if block.ssrc == self.ssrc {
                            shared.deliver(PeerEvent::ReceiverReport(ReceiverReport {
                                fraction_lost: block.fraction_lost,
                                jitter: block.jitter,
                            }));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The core's state changes, as the call sees them. True when ICE has just connected.
fn on_event(shared: &Shared, event: RTCPeerConnectionEvent) -> bool {
    match event {
        RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
            tracing::debug!(peer = shared.tag, %state, "ICE connection state");
            if state == RTCIceConnectionState::Failed {
                shared.end(STATE_FAILED, "ice/dtls failed");
            }
            return state == RTCIceConnectionState::Connected;
        }
        RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
            tracing::debug!(peer = shared.tag, %state, "peer connection state");
            match state {
                // The core raises Connected only after DTLS completion installed the SRTP
                // keys, and the send track was added before the answer: a packet written
                // from now on is encrypted and sent.
                RTCPeerConnectionState::Connected => shared.go_live(),
                RTCPeerConnectionState::Failed => shared.end(STATE_FAILED, "ice/dtls failed"),
                RTCPeerConnectionState::Closed => shared.end(STATE_CLOSED, "closed by peer"),
                _ => {}
            }
        }
        _ => {}
    }
    false
}

/// The peer task: drives `conn` until it is closed, then ends the call (`Ended`) if the core
/// never said why it stopped. A panic in the core (a bug, whatever a caller sends) ends this
/// call as failed; other calls never share its state.
pub(super) async fn drive(conn: Arc<Mutex<Connection>>, shared: Arc<Shared>) {
    if AssertUnwindSafe(run(&conn, &shared))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(peer = shared.tag, "peer connection panicked; the call ends");
        shared.end(STATE_FAILED, "internal error");
    }
    shared.end(STATE_CLOSED, "closed");
    tracing::debug!(peer = shared.tag, "call peer task ended");
}

async fn run(conn: &Mutex<Connection>, shared: &Shared) {
    let sockets = Arc::clone(&lock(conn).sockets);
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let mut wake = lock(conn).pump(shared);
    while let Some(deadline) = wake {
        tokio::select! {
            biased;
            () = shared.wake.notified() => {}
            () = readable(&sockets) => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        let mut c = lock(conn);
        c.receive_all(&mut buf);
        c.run_timers(deadline);
        wake = c.pump(shared);
    }
}

/// Resolves when any of `sockets` has a datagram to read.
async fn readable(sockets: &[UdpSocket]) {
    std::future::poll_fn(|cx| {
        for socket in sockets {
            if socket.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The connection's lock. Every holder only calls the core and non-blocking socket calls; a
/// panic there leaves the core as consistent as the core itself guarantees.
pub(super) fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::sync::mpsc;

    use super::*;
    use crate::rtc::STATE_LIVE;

    fn shared() -> (Shared, mpsc::UnboundedReceiver<PeerEvent>) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (audio_tx, _) = mpsc::channel(1);
        (Shared::new(1, control_tx, audio_tx), control_rx)
    }

    #[test]
    fn the_core_states_become_live_then_one_end_and_ice_connected_asks_for_the_timers() {
        let (shared, mut control) = shared();
        let ice = RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent;
        let peer = RTCPeerConnectionEvent::OnConnectionStateChangeEvent;
        assert!(!on_event(&shared, ice(RTCIceConnectionState::Checking)));
        assert!(on_event(&shared, ice(RTCIceConnectionState::Connected)));
        assert!(control.try_recv().is_err(), "ICE alone is not live");
        assert!(!on_event(&shared, peer(RTCPeerConnectionState::Connected)));
        assert_eq!(control.try_recv().ok(), Some(PeerEvent::Live));
        assert_eq!(shared.state.load(Ordering::Acquire), STATE_LIVE);
        on_event(&shared, ice(RTCIceConnectionState::Failed));
        on_event(&shared, peer(RTCPeerConnectionState::Closed));
        assert_eq!(
            control.try_recv().ok(),
            Some(PeerEvent::Ended {
                reason: "ice/dtls failed".into()
            })
        );
        assert!(control.try_recv().is_err(), "one end only");
        assert_eq!(shared.state.load(Ordering::Acquire), STATE_FAILED);
    }
}

//! The call's WebRTC peer: the only module that touches webrtc-rs (its sans-IO core, the `rtc`
//! crate 0.21, whose minor versions break the API), driven by our own task per call
//! ([`connection`]).
//!
//! ## Model
//!
//! ```text
//! POST offer ─▶ CallPeer::answer ─▶ (CallPeer, answer SDP with every candidate, events)
//!                                     │
//!  call driver ─ AudioSender::send(payload, codec.rtp_timestamp(slot)) ─▶ RTP (ts = base + …) ─▶ caller
//!  caller ─ RTP ─▶ PeerEvent::CallerAudio ─▶ call core (decoded for the bot's recogniser)
//!  caller ─ RTCP RR ─▶ PeerEvent::ReceiverReport ─▶ call core (Opus FEC and bitrate)
//! ```
//!
//! One peer connection per call, its own UDP socket(s), host candidates only (no STUN, mDNS
//! off), non-trickle. One task per call reads the sockets and runs the connection's timers;
//! outbound frames are encrypted and sent on the sender's own task. Events arrive in this
//! order: at most one [`PeerEvent::Live`], any number of [`PeerEvent::CallerAudio`] and
//! [`PeerEvent::ReceiverReport`], then exactly one [`PeerEvent::Ended`], after which the
//! receiver yields `None`.
//!
//! ## Timing contract
//!
//! Nothing here paces or reads a clock for media: [`AudioSender::send`] puts one packet on the
//! wire per call (its datagram is in the kernel when it returns), and its RTP timestamp is the
//! caller-supplied sample count plus a random per-call base. `Live` is emitted only once
//! DTLS-SRTP keys exist and the send track is bound, so the first packet sent after `Live`
//! goes out (the core silently drops earlier ones).
//!
//! Log lines name a per-peer random tag, never an IP address.

mod connection;
mod ice_policy;
mod nat;
mod nomination;
mod offer;
mod reports;
mod sent;

pub use ice_policy::{FilteredOffer, IcePolicy, IpNet, IpNetError};
pub use offer::{check_offer, OfferedFormat, MAX_OFFER_BYTES};
pub use sent::SentReceiver;

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Notify};

use crate::codec::loss::ReceiverReport;
use crate::codec::{Codec, NoCommonCodec, MAX_FRAME_PAYLOAD_BYTES};
use crate::config::RtcConfig;
use crate::fault::Fault;
use connection::Connection;

/// Caller-audio events buffered for a slow consumer before packets are dropped: about 5 s of
/// 20 ms packets, far beyond any healthy consumer's lag.
const EVENT_CHANNEL_CAPACITY: usize = 256;
/// No traffic from the caller for this long marks ICE disconnected (keepalives are 1 s).
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(3);
/// Further silence after disconnected before ICE fails and the call ends: a vanished caller is
/// detected within about disconnected + failed = 6 s, and a short network blip survives.
const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(3);
/// ICE consent keepalive interval while idle.
const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a call's peer connection listens and what it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcSettings {
    /// Local addresses to bind one UDP socket each on; each gives one host candidate.
    /// Wildcards are expanded by webrtc-rs into every non-loopback interface; bind
    /// `127.0.0.1` explicitly for loopback.
    pub bind_ips: Vec<IpAddr>,
    /// 1:1 NAT addresses announced instead of the bound ones: empty for none, one for all,
    /// or one per `bind_ips` entry (paired by position).
    pub public_ips: Vec<IpAddr>,
    /// Inclusive UDP port range to bind in; `None` for an ephemeral port.
    pub udp_ports: Option<(u16, u16)>,
    /// Which of the offer's candidates ICE may check (`rtc.ice_allow`, `rtc.ice_deny`).
    pub ice_policy: IcePolicy,
}

impl RtcSettings {
    /// Loopback only, ephemeral ports: what tests use.
    pub fn loopback() -> Self {
        RtcSettings {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            public_ips: Vec::new(),
            udp_ports: None,
            ice_policy: IcePolicy::default(),
        }
    }
}

impl From<&RtcConfig> for RtcSettings {
    /// `udp_port_min`/`udp_port_max` of 0 (either) mean "ephemeral".
    fn from(c: &RtcConfig) -> Self {
        RtcSettings {
            bind_ips: c.bind_ips.clone(),
            public_ips: c.public_ips.clone(),
            udp_ports: (c.udp_port_min != 0 && c.udp_port_max != 0)
                .then_some((c.udp_port_min, c.udp_port_max)),
            ice_policy: IcePolicy {
                allow: c.ice_allow.clone(),
                deny: c.ice_deny.clone(),
            },
        }
    }
}

/// Why a peer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    /// The offer is larger than [`MAX_OFFER_BYTES`].
    #[error("SDP offer of {size} bytes exceeds the {limit}-byte limit")]
    OfferTooLarge {
        /// Size of the offer received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The offer is not valid SDP, or webrtc-rs rejected it.
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    /// The offer has no `m=audio` section.
    #[error("SDP offer has no audio section")]
    NoAudio,
    /// Every candidate of the offer is outside the networks `rtc.ice_allow`/`rtc.ice_deny`
    /// let ICE check: the call could never connect (caller fault, or a policy too strict).
    #[error("none of the offer's {refused} ICE candidates is in a network this daemon may check")]
    NoAllowedCandidate {
        /// Candidates the policy removed.
        refused: usize,
    },
    /// The offer's audio sections carry no codec we speak.
    #[error(transparent)]
    NoCommonCodec(#[from] NoCommonCodec),
    /// `RtcSettings::bind_ips` is empty, the UDP port range is empty or inverted, or
    /// `public_ips` cannot be paired with `bind_ips`.
    #[error("invalid ICE settings: {0}")]
    Settings(&'static str),
    /// No UDP socket could be bound (every port in the range busy, or the address is not local).
    #[error("cannot bind a UDP socket: {0}")]
    Bind(String),
    /// `send` was called before [`PeerEvent::Live`]: the packet would have been dropped.
    #[error("peer is not live yet")]
    NotLive,
    /// The payload is empty or larger than [`MAX_FRAME_PAYLOAD_BYTES`].
    #[error("RTP payload of {0} bytes is outside 1..={MAX_FRAME_PAYLOAD_BYTES}")]
    BadPayload(usize),
    /// ICE or DTLS failed: the caller is unreachable or vanished.
    #[error("ICE/DTLS connection failed")]
    ConnectionFailed,
    /// The peer connection is closed (hang-up, either side).
    #[error("peer connection closed")]
    Closed,
    /// webrtc-rs reported an unexpected error.
    #[error("webrtc: {0}")]
    Webrtc(String),
}

impl RtcError {
    /// Whose fault the failure is.
    pub fn fault(&self) -> Fault {
        match self {
            RtcError::OfferTooLarge { .. }
            | RtcError::BadOffer(_)
            | RtcError::NoAudio
            | RtcError::NoAllowedCandidate { .. }
            | RtcError::NoCommonCodec(_)
            | RtcError::ConnectionFailed
            | RtcError::Closed => Fault::Caller,
            RtcError::Settings(_) => Fault::Config,
            RtcError::Bind(_)
            | RtcError::NotLive
            | RtcError::BadPayload(_)
            | RtcError::Webrtc(_) => Fault::Internal,
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, RtcError::Bind(_) | RtcError::NotLive)
    }
}

/// What happens on a call's peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE + DTLS connected AND the outbound track is bound: frames sent from now on arrive.
    Live,
    /// One RTP packet of the caller's audio, as received.
    CallerAudio {
        /// The RTP payload type (the negotiated codec's, or another the caller sends).
        payload_type: u8,
        /// RTP marker bit.
        marker: bool,
        /// The payload.
        payload: Bytes,
        /// RTP timestamp (48 kHz clock, the caller's random base).
        rtp_timestamp: u32,
        /// RTP sequence number.
        sequence: u16,
    },
    /// The caller's RTCP reception report about the stream we send (loss and jitter it saw).
    ReceiverReport(ReceiverReport),
    /// The peer disconnected, failed or closed; the call is over (reason for logs/bot).
    Ended {
        /// Short human reason: "ice/dtls failed", "closed by peer", "closed", "internal error"
        /// (the peer connection panicked).
        reason: String,
    },
}

/// Link state values held in [`Shared::state`].
const STATE_CONNECTING: u8 = 0;
const STATE_LIVE: u8 = 1;
const STATE_FAILED: u8 = 2;
const STATE_CLOSED: u8 = 3;

/// State shared by the handle, the peer task and the senders.
struct Shared {
    /// Random tag naming this peer in logs (no addresses).
    tag: u32,
    /// One of the `STATE_*` values.
    state: AtomicU8,
    /// Set once `Ended` has been queued; later end causes are ignored.
    ended: AtomicBool,
    /// `Live` and `Ended` only (at most two messages ever), so unbounded is bounded.
    control_tx: mpsc::UnboundedSender<PeerEvent>,
    /// Caller audio; full means the consumer lags and packets are dropped (counted).
    audio_tx: mpsc::Sender<PeerEvent>,
    /// Caller-audio packets dropped because the consumer lagged.
    audio_dropped: AtomicU64,
    /// Wakes the peer task (after `close`).
    wake: Notify,
}

impl Shared {
    /// A connecting peer named `tag` in logs, its events going to the two queues.
    fn new(
        tag: u32,
        control_tx: mpsc::UnboundedSender<PeerEvent>,
        audio_tx: mpsc::Sender<PeerEvent>,
    ) -> Shared {
        Shared {
            tag,
            state: AtomicU8::new(STATE_CONNECTING),
            ended: AtomicBool::new(false),
            control_tx,
            audio_tx,
            audio_dropped: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    /// Moves Connecting -> Live and queues `Live`, once; no-op in any other state.
    fn go_live(&self) {
        let moved = self.state.compare_exchange(
            STATE_CONNECTING,
            STATE_LIVE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if moved.is_ok() {
            tracing::debug!(peer = self.tag, "call peer live");
            let _ = self.control_tx.send(PeerEvent::Live);
        }
    }

    /// Queues `Ended` once and moves to `state`; later calls only keep a Failed state.
    fn end(&self, state: u8, reason: &str) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != STATE_FAILED).then_some(state)
            });
        if !self.ended.swap(true, Ordering::AcqRel) {
            tracing::debug!(peer = self.tag, reason, "call peer ended");
            let _ = self.control_tx.send(PeerEvent::Ended {
                reason: reason.to_owned(),
            });
        }
    }

    /// Queues caller audio or a report; drops it (counted, logged now and then) when the
    /// consumer lags or is gone.
    fn deliver(&self, event: PeerEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.audio_tx.try_send(event) {
            let n = self.audio_dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(250) {
                tracing::warn!(
                    peer = self.tag,
                    dropped = n + 1,
                    "caller audio consumer lags; dropping packets"
                );
            }
        }
    }
}

/// One call's WebRTC peer connection.
///
/// Owns the connection (its task and UDP sockets). Released by [`CallPeer::close`] or by
/// dropping it.
pub struct CallPeer {
    conn: Arc<Mutex<Connection>>,
    shared: Arc<Shared>,
    codec: Codec,
    sender: AudioSender,
    /// Which of the sender's packets have left through the socket.
    sent: SentReceiver,
}

impl CallPeer {
    /// Validates the offer (size checked by the caller), negotiates the codec
    /// ([`crate::codec::negotiate`]), binds the UDP sockets, creates one peer connection with
    /// one send track of that codec and the caller's audio receive, answers with every host
    /// candidate (non-trickle), and starts the peer task. Must run inside a tokio runtime.
    ///
    /// Errors: the offer checks of [`check_offer`]; [`RtcError::NoCommonCodec`];
    /// [`RtcError::Settings`] for an empty `bind_ips`, a bad port range or unpairable
    /// `public_ips`; [`RtcError::Bind`] when no socket can be bound; [`RtcError::Webrtc`] for
    /// anything else webrtc-rs reports. On error nothing stays open.
    pub async fn answer(
        settings: &RtcSettings,
        offer_sdp: &str,
    ) -> Result<(CallPeer, String, PeerEvents), RtcError> {
        let codec = crate::codec::negotiate(&check_offer(offer_sdp)?)?;
        let filtered = settings.ice_policy.filter_offer(offer_sdp);
        if filtered.refused > 0 {
            crate::metrics::ice_candidates_refused(filtered.refused as u64);
            tracing::debug!(
                refused = filtered.refused,
                kept = filtered.kept,
                "offer candidates outside rtc.ice_allow/ice_deny removed"
            );
            if filtered.kept == 0 {
                return Err(RtcError::NoAllowedCandidate {
                    refused: filtered.refused,
                });
            }
        }
        nat::check_mapping(&settings.bind_ips, &settings.public_ips)?;
        let sockets = bind_sockets(settings)?;
        let offer = RTCSessionDescription::offer(filtered.sdp)
            .map_err(|e| RtcError::BadOffer(e.to_string()))?;

        let ssrc: u32 = rand::random();
        let tag: u32 = rand::random();
        let mut pc = build_peer_connection(&codec)?;
        let (sender_id, payload_type, event_payload_type) =
            negotiate(&mut pc, &codec, tag, ssrc, offer, &sockets)?;
        let answer = pc
            .local_description()
            .ok_or_else(|| RtcError::Webrtc("no local description after answer".into()))?
            .sdp;
        let answer = nat::announce_public_ips(&answer, &settings.bind_ips, &settings.public_ips);

        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (audio_tx, audio_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared::new(tag, control_tx, audio_tx));
        let (sent_tx, sent) = watch::channel(None);
        let conn = Connection::new(pc, sockets.into(), sender_id, ssrc, sent_tx)
            .map_err(|e| RtcError::Bind(e.to_string()))?;
        let conn = Arc::new(Mutex::new(conn));
        tokio::spawn(connection::drive(Arc::clone(&conn), Arc::clone(&shared)));
        tracing::debug!(peer = tag, "call peer answered");

        let sender = AudioSender {
            inner: Arc::new(SenderInner {
                conn: Arc::clone(&conn),
                ssrc,
                payload_type,
                event_payload_type,
                timestamp_base: rand::random(),
                seq: Mutex::new((rand::random(), true)),
                shared: Arc::clone(&shared),
            }),
        };
        let peer = CallPeer {
            conn,
            shared,
            codec,
            sender,
            sent,
        };
        let events = PeerEvents {
            control: control_rx,
            audio: audio_rx,
            audio_open: true,
            ended: false,
        };
        Ok((peer, answer, events))
    }

    /// The codec the offer and the answer agreed on.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// A handle that sends the call's outbound frames; clones share one RTP stream.
    pub fn audio_sender(&self) -> AudioSender {
        self.sender.clone()
    }

    /// The sequence number of the newest packet of [`CallPeer::audio_sender`]'s stream whose
    /// datagram has left (sequence numbers are the ones [`AudioSender::send`] returns).
    pub fn sent_packets(&self) -> SentReceiver {
        self.sent.clone()
    }

    /// Closes the peer connection; idempotent, never waits: the DTLS close_notify leaves at
    /// once and the peer task ends at its next wake. Emits `Ended { reason: "closed" }`
    /// unless the call had already ended.
    pub fn close(&self) {
        connection::lock(&self.conn).close(self.shared.tag);
        self.shared.end(STATE_CLOSED, "closed");
        self.shared.wake.notify_one();
    }
}

impl Drop for CallPeer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sends a call's outbound audio: one 20 ms frame of the negotiated codec per RTP packet.
#[derive(Clone)]
pub struct AudioSender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    conn: Arc<Mutex<Connection>>,
    ssrc: u32,
    payload_type: u8,
    /// The negotiated telephone-event payload type, if any.
    event_payload_type: Option<u8>,
    /// Random per-call RTP timestamp base (RFC 3550 §5.1).
    timestamp_base: u32,
    /// Next sequence number and whether the marker is still due.
    seq: Mutex<(u16, bool)>,
    shared: Arc<Shared>,
}

impl AudioSender {
    /// Sends one 20 ms frame (payload of the negotiated codec) as one RTP packet whose
    /// timestamp is `rtp_timestamp` plus a random per-call base (so RTP time is exactly the
    /// pacer's sample count). Marker bit set on the first packet.
    ///
    /// Returns the packet's RTP sequence number once its datagram is handed to the kernel
    /// ([`CallPeer::sent_packets`] reports it too). Never waits.
    ///
    /// Errors: [`RtcError::NotLive`] before [`PeerEvent::Live`] (nothing is sent),
    /// [`RtcError::ConnectionFailed`] / [`RtcError::Closed`] once the call is over,
    /// [`RtcError::BadPayload`] for an empty or oversized payload.
    pub fn send(&self, payload: &[u8], rtp_timestamp: u32) -> Result<u16, RtcError> {
        self.send_packet(self.inner.payload_type, payload, rtp_timestamp, None)
    }

    /// Sends one RFC 4733 telephone-event packet (payload as built by
    /// [`crate::codec::dtmf`]) on the same stream, with its own marker bit; RTP time as for
    /// [`AudioSender::send`]; returns the sequence number as `send` does. Errors as `send`, and
    /// [`RtcError::BadPayload`] when the call negotiated no telephone-event.
    pub fn send_event(
        &self,
        payload: &[u8],
        rtp_timestamp: u32,
        marker: bool,
    ) -> Result<u16, RtcError> {
        let payload_type = self
            .inner
            .event_payload_type
            .ok_or(RtcError::BadPayload(payload.len()))?;
        self.send_packet(payload_type, payload, rtp_timestamp, Some(marker))
    }

    /// One packet of the stream: the next sequence number; the marker as given, or for
    /// audio (`None`) on the stream's first packet.
    fn send_packet(
        &self,
        payload_type: u8,
        payload: &[u8],
        rtp_timestamp: u32,
        marker: Option<bool>,
    ) -> Result<u16, RtcError> {
        let inner = &self.inner;
        if payload.is_empty() || payload.len() > MAX_FRAME_PAYLOAD_BYTES {
            return Err(RtcError::BadPayload(payload.len()));
        }
        state_error(inner.shared.state.load(Ordering::Acquire))?;
        let (sequence_number, first) = {
            let mut seq = inner.seq.lock().unwrap_or_else(|p| p.into_inner());
            let current = *seq;
            *seq = (current.0.wrapping_add(1), false);
            current
        };
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: marker.unwrap_or(first),
                payload_type,
                sequence_number,
                timestamp: inner.timestamp_base.wrapping_add(rtp_timestamp),
                ssrc: inner.ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        connection::lock(&inner.conn)
            .send_rtp(packet)
            .map_err(
                |e| match state_error(inner.shared.state.load(Ordering::Acquire)) {
                    Err(ended) => ended,
                    Ok(()) => e,
                },
            )?;
        Ok(sequence_number)
    }

    /// The RTP SSRC of the outbound stream.
    pub fn ssrc(&self) -> u32 {
        self.inner.ssrc
    }

    /// The negotiated payload type.
    pub fn payload_type(&self) -> u8 {
        self.inner.payload_type
    }
}

/// Ok when packets can be sent in link state `state`, else the matching error.
fn state_error(state: u8) -> Result<(), RtcError> {
    match state {
        STATE_LIVE => Ok(()),
        STATE_CONNECTING => Err(RtcError::NotLive),
        STATE_FAILED => Err(RtcError::ConnectionFailed),
        _ => Err(RtcError::Closed),
    }
}

/// A peer connection that speaks only the negotiated codec (and telephone-event when
/// offered), with host candidates only, mDNS off, the ICE timeouts above, and only the
/// interceptors a voice call uses.
fn build_peer_connection(codec: &Codec) -> Result<RTCPeerConnection, RtcError> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(codec_parameters(codec), RtpCodecKind::Audio)
        .map_err(webrtc_err)?;
    if let Some(params) = telephone_event_parameters(codec) {
        media_engine
            .register_codec(params, RtpCodecKind::Audio)
            .map_err(webrtc_err)?;
    }
    // Only what a voice call uses: RTCP sender and receiver reports (the caller's loss
    // figures drive Opus FEC). Not webrtc-rs's defaults' NACK (an audio frame retransmitted a
    // round trip later is past its playout time; its responder kept a copy of every packet
    // sent) nor transport-wide congestion feedback (RTCP every 100 ms per call for a
    // fixed-rate stream).
    configure_simulcast_extension_headers(&mut media_engine).map_err(webrtc_err)?;
    let registry = reports::with_report_forwarder(configure_rtcp_reports(Registry::new()));
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED_TIMEOUT),
            Some(ICE_FAILED_TIMEOUT),
            Some(ICE_KEEPALIVE_INTERVAL),
        );
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_setting_engine(setting_engine.build())
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .map_err(webrtc_err)
}

/// Adds the send track, applies the offer, answers with one host candidate per socket.
/// Returns the track's sender and the negotiated payload types (the codec's, and
/// telephone-event's when offered).
fn negotiate(
    pc: &mut RTCPeerConnection,
    codec: &Codec,
    tag: u32,
    ssrc: u32,
    offer: RTCSessionDescription,
    sockets: &[UdpSocket],
) -> Result<(RTCRtpSenderId, u8, Option<u8>), RtcError> {
    let stream_id = format!("lmnt-bridge-{tag:08x}");
    let track = MediaStreamTrack::new(
        stream_id.clone(),
        format!("{stream_id}-audio"),
        "lmnt-bridge voice".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            // No codec named here: webrtc-rs would then answer with that codec alone. The
            // media engine holds only what we negotiated (the codec, and telephone-event when
            // offered), and the answer carries all of it.
            codec: Default::default(),
            ..Default::default()
        }],
    );
    let sender_id = pc.add_track(track).map_err(webrtc_err)?;
    pc.set_remote_description(Instant::now(), offer)
        .map_err(|e| RtcError::BadOffer(e.to_string()))?;
    let answer = pc.create_answer(None).map_err(webrtc_err)?;
    pc.set_local_description(Instant::now(), answer)
        .map_err(webrtc_err)?;
    for socket in sockets {
        let local = socket
            .local_addr()
            .map_err(|e| RtcError::Bind(e.to_string()))?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(webrtc_err)?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(webrtc_err)?;
        pc.add_local_candidate(init).map_err(webrtc_err)?;
    }
    // End of candidates: the answer is complete.
    pc.add_local_candidate(Default::default())
        .map_err(webrtc_err)?;

    let mime = mime_type(codec);
    let negotiated = pc
        .rtp_sender(sender_id)
        .ok_or_else(|| RtcError::Webrtc("the send track has no sender".into()))?
        .get_parameters()
        .rtp_parameters
        .codecs
        .clone();
    let payload_type_of = |mime: &str| {
        negotiated
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .map(|c| c.payload_type)
    };
    let payload_type = payload_type_of(&mime)
        .ok_or_else(|| RtcError::Webrtc(format!("the answer does not carry {mime}")))?;
    let event_payload_type = payload_type_of(&format!("audio/{}", crate::codec::dtmf::SDP_NAME));
    Ok((sender_id, payload_type, event_payload_type))
}

/// A call peer's events, in the order of the module's contract: control events (`Live`,
/// `Ended`) before any caller audio or report queued with them, nothing after `Ended`. Read
/// straight from the peer's two queues, with no task between them and the consumer (a hop
/// per packet).
#[derive(Debug)]
pub struct PeerEvents {
    control: mpsc::UnboundedReceiver<PeerEvent>,
    audio: mpsc::Receiver<PeerEvent>,
    audio_open: bool,
    ended: bool,
}

impl PeerEvents {
    /// The next event; `None` after `Ended` (or once the peer is gone). Cancel-safe: an
    /// event is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        while !self.ended {
            tokio::select! {
                biased;
                event = self.control.recv() => {
                    self.ended = matches!(event, None | Some(PeerEvent::Ended { .. }));
                    return event;
                }
                event = self.audio.recv(), if self.audio_open => match event {
                    Some(event) => return Some(event),
                    None => self.audio_open = false,
                },
            }
        }
        None
    }
}

/// The negotiated codec as webrtc-rs registers it, under the offer's payload type.
fn codec_parameters(codec: &Codec) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime_type(codec),
            clock_rate: codec.clock_rate(),
            channels: codec.kind.sdp_channels(),
            sdp_fmtp_line: codec.kind.fmtp().to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: codec.payload_type,
    }
}

/// RFC 4733 events (DTMF digits 0-15) at the negotiated clock rate, under the offer's
/// payload type, when the offer carries them.
fn telephone_event_parameters(codec: &Codec) -> Option<RTCRtpCodecParameters> {
    let event = codec.telephone_event?;
    Some(RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: format!("audio/{}", crate::codec::dtmf::SDP_NAME),
            clock_rate: event.clock_rate,
            channels: 1,
            sdp_fmtp_line: crate::codec::dtmf::SDP_EVENTS.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: event.payload_type,
    })
}

/// `audio/NAME`, as webrtc-rs names codecs.
fn mime_type(codec: &Codec) -> String {
    format!("audio/{}", codec.kind.sdp_name())
}

fn webrtc_err(e: rtc::shared::error::Error) -> RtcError {
    RtcError::Webrtc(e.to_string())
}

/// One UDP socket per local address (port 0, or a free port in the range), each giving one
/// host candidate.
fn bind_sockets(settings: &RtcSettings) -> Result<Vec<UdpSocket>, RtcError> {
    if settings.bind_ips.is_empty() {
        return Err(RtcError::Settings("no bind_ips"));
    }
    let bind_err = |e: std::io::Error| RtcError::Bind(e.to_string());
    local_ips(&settings.bind_ips)
        .into_iter()
        .map(|ip| {
            let socket = match settings.udp_ports {
                None => StdUdpSocket::bind(SocketAddr::new(ip, 0)).map_err(bind_err)?,
                Some((lo, hi)) => bind_in_range(ip, lo, hi)?,
            };
            socket.set_nonblocking(true).map_err(bind_err)?;
            UdpSocket::from_std(socket).map_err(bind_err)
        })
        .collect()
}

/// `bind_ips` with each wildcard expanded into the machine's interface addresses of its
/// family (a wildcard socket's candidate would be `0.0.0.0`, which no caller can use), without
/// loopback or link-local ones; a wildcard with no such interface is kept as it is.
fn local_ips(bind_ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for &ip in bind_ips {
        if !ip.is_unspecified() {
            push(ip);
            continue;
        }
        let interfaces = rtc::shared::ifaces::ifaces().unwrap_or_default();
        let usable: Vec<IpAddr> = interfaces
            .iter()
            .filter_map(|i| i.addr.map(|a| a.ip()))
            .filter(|a| a.is_ipv4() == ip.is_ipv4())
            .filter(|a| !a.is_loopback() && !a.is_unspecified() && !is_link_local(a))
            .collect();
        if usable.is_empty() {
            push(ip);
        }
        usable.into_iter().for_each(&mut push);
    }
    out
}

/// Link-local unicast: `169.254.0.0/16` and `fe80::/10`.
fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Binds a port in `lo..=hi` on `ip`, trying each once from a random offset.
fn bind_in_range(ip: IpAddr, lo: u16, hi: u16) -> Result<StdUdpSocket, RtcError> {
    if lo == 0 || lo > hi {
        return Err(RtcError::Settings("UDP port range is empty or inverted"));
    }
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    (0..span)
        .map(|i| lo + ((start + i) % span) as u16)
        .find_map(|port| StdUdpSocket::bind(SocketAddr::new(ip, port)).ok())
        .ok_or_else(|| RtcError::Bind(format!("no free UDP port in {lo}..={hi}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_is_respected_and_validated() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let socket = bind_in_range(ip, 40000, 40100).unwrap();
        assert!((40000..=40100).contains(&socket.local_addr().unwrap().port()));
        assert!(matches!(
            bind_in_range(ip, 5, 4),
            Err(RtcError::Settings(_))
        ));
        // A one-port range whose port is held is exhausted.
        let held = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let p = held.local_addr().unwrap().port();
        assert!(matches!(bind_in_range(ip, p, p), Err(RtcError::Bind(_))));
        let empty = RtcSettings {
            bind_ips: vec![],
            ..RtcSettings::loopback()
        };
        assert!(matches!(bind_sockets(&empty), Err(RtcError::Settings(_))));
    }

    #[test]
    fn a_wildcard_becomes_interface_addresses_and_explicit_ones_stay() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(local_ips(&[loopback, loopback]), vec![loopback]);
        let expanded = local_ips(&[IpAddr::from([0, 0, 0, 0])]);
        assert!(!expanded.is_empty());
        assert!(expanded
            .iter()
            .all(|ip| ip.is_ipv4() && !ip.is_loopback() || ip.is_unspecified()));
        assert!(is_link_local(&IpAddr::from([169, 254, 1, 1])));
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local(&loopback));
    }

    #[test]
    fn faults_classify() {
        assert_eq!(RtcError::NoAudio.fault(), Fault::Caller);
        assert_eq!(RtcError::Settings("x").fault(), Fault::Config);
        assert_eq!(RtcError::Webrtc("x".into()).fault(), Fault::Internal);
        assert!(RtcError::Bind("x".into()).retryable());
        assert!(!RtcError::BadOffer("x".into()).retryable());
    }

    #[test]
    fn send_state_gate() {
        assert!(matches!(
            state_error(STATE_CONNECTING),
            Err(RtcError::NotLive)
        ));
        assert!(state_error(STATE_LIVE).is_ok());
        assert!(matches!(
            state_error(STATE_FAILED),
            Err(RtcError::ConnectionFailed)
        ));
        assert!(matches!(state_error(STATE_CLOSED), Err(RtcError::Closed)));
    }
}

//! An in-process webrtc-rs caller for end-to-end tests: posts a WHIP-style SDP offer, connects
//! on loopback, talks (a quiet 300 Hz tone with a syllable-like envelope, 20 ms Opus frames
//! with in-band FEC) and records every RTP packet it receives with its arrival time.
//!
//! HTTP is a minimal HTTP/1.1 client over `tokio::net::TcpStream` (`Connection: close`, one
//! request per connection), so no extra dependency is needed.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, MutSignals, SampleRate};
use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// Errors are strings: this is test code, the message is what matters.
pub type CallerError = Box<dyn std::error::Error + Send + Sync>;

/// Frequency of the caller's own voice.
pub const CALLER_TONE_HZ: f64 = 300.0;
/// Samples per 20 ms at 48 kHz.
const FRAME: usize = 960;

/// One RTP packet as received by the caller.
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// When the packet was handed to the track (after SRTP), local monotonic time.
    pub arrival: Instant,
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub rtp_timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// RTP payload type: Opus, or [`TELEPHONE_EVENT_PT`] for DTMF.
    pub payload_type: u8,
    /// The payload.
    pub payload: Bytes,
}

/// The payload type this caller offers RFC 4733 telephone-event (DTMF) under, at 48 kHz.
pub const TELEPHONE_EVENT_PT: u8 = 101;

struct State {
    packets: Mutex<Vec<ReceivedPacket>>,
    arrived: Notify,
    connection: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
}

struct Handler(Arc<State>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.gathered.send(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.connection.send(state);
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    let arrival = Instant::now();
                    state.packets.lock().unwrap().push(ReceivedPacket {
                        arrival,
                        sequence: p.header.sequence_number,
                        rtp_timestamp: p.header.timestamp,
                        payload_type: p.header.payload_type,
                        marker: p.header.marker,
                        payload: p.payload,
                    });
                    state.arrived.notify_waiters();
                }
            }
        });
    }
}

/// A connected test caller. Closing: [`WebrtcCaller::hang_up`] then [`WebrtcCaller::close`]
/// (or drop inside the runtime, which closes the connection).
pub struct WebrtcCaller {
    pc: Arc<dyn PeerConnection>,
    state: Arc<State>,
    origin: String,
    location: String,
    bearer: Option<String>,
    talker: tokio::task::JoinHandle<()>,
    /// Key presses for the talker to send.
    keys: tokio::sync::mpsc::UnboundedSender<String>,
}

/// RFC 4733 events at Opus' clock, as browsers offer them.
fn telephone_event_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "audio/telephone-event".to_owned(),
            clock_rate: 48_000,
            channels: 1,
            sdp_fmtp_line: "0-15".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: TELEPHONE_EVENT_PT,
    }
}

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

impl WebrtcCaller {
    /// Posts an offer to `url` (e.g. `http://127.0.0.1:P/v1/calls`), expects `201` with an
    /// answer and a `Location`, applies the answer and waits until connected (10 s guard).
    pub async fn dial(url: &str, bearer: Option<&str>) -> Result<WebrtcCaller, CallerError> {
        Self::dial_with(url, bearer, |_| async {}).await
    }

    /// [`WebrtcCaller::dial`], running `before_connect(location)` after the `201` and before
    /// the answer is applied: whatever it does happens before any media can flow.
    pub async fn dial_with<F, Fut>(
        url: &str,
        bearer: Option<&str>,
        before_connect: F,
    ) -> Result<WebrtcCaller, CallerError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        Self::dial_via(url, bearer, before_connect, |offer| offer, |answer| answer).await
    }

    /// [`WebrtcCaller::dial`], posting `edit(offer)` instead of the offer (e.g. with extra
    /// candidates); the caller's own peer keeps the unedited offer.
    pub async fn dial_editing(
        url: &str,
        bearer: Option<&str>,
        edit: impl FnOnce(String) -> String,
    ) -> Result<WebrtcCaller, CallerError> {
        Self::dial_via(url, bearer, |_| async {}, edit, |answer| answer).await
    }

    /// [`WebrtcCaller::dial_with`], posting `rewrite_offer(offer)` and applying
    /// `rewrite_answer(answer)` instead of the SDP as it is (e.g. the candidates rewritten by
    /// [`super::lossy_relay::LossyRelay`], to put a relay in the path); the caller's own peer
    /// keeps its unedited offer.
    pub async fn dial_via<F, Fut>(
        url: &str,
        bearer: Option<&str>,
        before_connect: F,
        rewrite_offer: impl FnOnce(String) -> String,
        rewrite_answer: impl FnOnce(String) -> String,
    ) -> Result<WebrtcCaller, CallerError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (packets_state, connection_rx, mut gathered_rx) = {
            let (connection, connection_rx) = watch::channel(RTCPeerConnectionState::New);
            let (gathered, gathered_rx) = watch::channel(false);
            (
                Arc::new(State {
                    packets: Mutex::new(Vec::new()),
                    arrived: Notify::new(),
                    connection,
                    gathered,
                }),
                connection_rx,
                gathered_rx,
            )
        };
        let mut media_engine = MediaEngine::default();
        media_engine.register_codec(opus_codec(), RtpCodecKind::Audio)?;
        media_engine.register_codec(telephone_event_codec(), RtpCodecKind::Audio)?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(MulticastDnsMode::Disabled)
                    .build(),
            )
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler(Arc::clone(&packets_state))))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc: u32 = rand::random();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "caller".to_owned(),
            "caller-audio".to_owned(),
            "caller voice".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                // No codec named: the offer carries every registered codec (telephone-event too).
                codec: Default::default(),
                ..Default::default()
            }],
        )));
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        tokio::time::timeout(Duration::from_secs(5), gathered_rx.wait_for(|g| *g)).await??;
        let offer_sdp = rewrite_offer(
            pc.local_description()
                .await
                .ok_or("no local description")?
                .sdp,
        );

        let (origin, path) = split_url(url)?;
        let mut headers = vec![("Content-Type".to_owned(), "application/sdp".to_owned())];
        if let Some(b) = bearer {
            headers.push(("Authorization".to_owned(), format!("Bearer {b}")));
        }
        let resp = http_request(&origin, "POST", &path, &headers, offer_sdp.as_bytes()).await?;
        if resp.status != 201 {
            return Err(format!(
                "POST {url}: status {} body {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            )
            .into());
        }
        let location = resp.header("location").ok_or("201 without Location")?;
        before_connect(location.clone()).await;
        let answer = RTCSessionDescription::answer(rewrite_answer(String::from_utf8(resp.body)?))?;
        pc.set_remote_description(answer).await?;

        let mut conn = connection_rx.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            conn.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed
                )
            }),
        )
        .await??;
        if *connection_rx.borrow() != RTCPeerConnectionState::Connected {
            return Err("caller connection failed".into());
        }
        let payload_type = sender
            .get_parameters()
            .await?
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
            .map(|c| c.payload_type)
            .ok_or("no negotiated codec")?;
        let (keys, keys_rx) = tokio::sync::mpsc::unbounded_channel();
        let talker = tokio::spawn(talk(track, ssrc, payload_type, keys_rx));
        Ok(WebrtcCaller {
            pc,
            state: packets_state,
            origin,
            location,
            bearer: bearer.map(str::to_owned),
            talker,
            keys,
        })
    }

    /// The caller's own SDP (its offer, with every local candidate).
    pub async fn local_sdp(&self) -> String {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default()
    }

    /// Presses `digits` (`0-9 * # A-D`): RFC 4733 events in place of the voice, from the
    /// talker's next slot on.
    pub fn press(&self, digits: &str) {
        let _ = self.keys.send(digits.to_owned());
    }

    /// The RFC 4733 events received, in arrival order: (timestamp, event, end bit).
    pub fn received_events(&self) -> Vec<(u32, u8, bool)> {
        self.packets()
            .iter()
            .filter(|p| p.payload_type == TELEPHONE_EVENT_PT && p.payload.len() >= 4)
            .map(|p| (p.rtp_timestamp, p.payload[0], p.payload[1] & 0x80 != 0))
            .collect()
    }

    /// The `Location` the server returned (a path such as `/v1/calls/ID`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Every packet received so far, in arrival order.
    pub fn packets(&self) -> Vec<ReceivedPacket> {
        self.state.packets.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the packets received so far (arrival order). `pred` is
    /// checked now and again on every arrival (the recorder's `Notify`), never on a clock; it
    /// runs under the recorder's lock, so keep it cheap. Err naming `what` after `timeout`,
    /// which only guards against a hang.
    pub async fn wait_for_rtp(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[ReceivedPacket]) -> bool,
    ) -> Result<(), CallerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check: an arrival in between still wakes us.
            let notified = self.state.arrived.notified();
            if pred(&self.state.packets.lock().unwrap()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let packets = self.packets();
                let span = match (packets.first(), packets.last()) {
                    (Some(a), Some(b)) => b.rtp_timestamp.wrapping_sub(a.rtp_timestamp) / 48,
                    _ => 0,
                };
                return Err(format!(
                    "{what}: not within {timeout:?} ({} packets received, spanning {span} ms of RTP time)",
                    packets.len()
                )
                .into());
            }
        }
    }

    /// Waits until at least `n` packets have arrived; Err on timeout.
    pub async fn wait_packets(&self, n: usize, timeout: Duration) -> Result<(), CallerError> {
        self.wait_for_rtp(&format!("{n} packets"), timeout, |p| p.len() >= n)
            .await
    }

    /// Waits until packets with `n` distinct sequence numbers have arrived: `n` of the
    /// sender's frames, duplicates not counted. With packets arriving in order (loopback),
    /// the caller then holds the sender's `n`-th frame, or a later one if some were lost.
    pub async fn wait_frames(&self, n: usize, timeout: Duration) -> Result<(), CallerError> {
        let mut seen = std::collections::HashSet::new();
        let mut looked = 0;
        self.wait_for_rtp(&format!("{n} distinct frames"), timeout, |p| {
            seen.extend(p[looked..].iter().map(|p| p.sequence));
            looked = p.len();
            seen.len() >= n
        })
        .await
    }

    /// Waits until a packet with RTP timestamp `target` or later (mod 2^32, within half the
    /// range) has arrived.
    pub async fn wait_for_rtp_timestamp(
        &self,
        target: u32,
        timeout: Duration,
    ) -> Result<(), CallerError> {
        self.wait_for_rtp(&format!("RTP timestamp {target}"), timeout, |p| {
            p.iter().any(|p| rtp_at_or_after(p.rtp_timestamp, target))
        })
        .await
    }

    /// Waits for the first audible packet (decoded RMS above [`AUDIBLE_RMS`]) among those
    /// that arrived after the first `from_packet` ones; returns it. Decodes every packet once,
    /// in arrival order, so the decoder state is that of a real receiver.
    pub async fn wait_audible(
        &self,
        from_packet: usize,
        timeout: Duration,
    ) -> Result<ReceivedPacket, CallerError> {
        let mut decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono)?;
        let mut decoded = 0;
        let mut found = None;
        let mut buf = vec![0i16; 5760];
        self.wait_for_rtp("an audible frame", timeout, |packets| {
            for p in &packets[decoded..] {
                let n = audiopus::packet::Packet::try_from(&p.payload[..])
                    .ok()
                    .and_then(|packet| {
                        let signals = MutSignals::try_from(&mut buf[..]).ok()?;
                        decoder.decode(Some(packet), signals, false).ok()
                    })
                    .unwrap_or(0);
                decoded += 1;
                if decoded > from_packet && found.is_none() && rms(&buf[..n]) > AUDIBLE_RMS {
                    found = Some(p.clone());
                }
            }
            found.is_some()
        })
        .await?;
        Ok(found.expect("set when the wait succeeds"))
    }

    /// Waits until `ms` of audio past the first audible packet that arrived after the first
    /// `from_packet` ones has reached the caller: "this much of the utterance has been
    /// heard", whatever the wall clock says. Counted in 20 ms frames by sequence number, not
    /// in RTP time: when the sender stalls it skips RTP slots without dropping audio, so RTP
    /// time can run ahead of the audio. Returns the first audible packet.
    pub async fn wait_audible_ms(
        &self,
        from_packet: usize,
        ms: u32,
        timeout: Duration,
    ) -> Result<ReceivedPacket, CallerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = self.wait_audible(from_packet, timeout).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frames = (ms / 20) as u16;
        self.wait_for_rtp(&format!("{ms} ms of audio"), left, |p| {
            p.iter()
                .any(|p| (frames..0x8000).contains(&p.sequence.wrapping_sub(first.sequence)))
        })
        .await?;
        Ok(first)
    }

    /// Where RTP time did not advance by one frame between consecutive packets (arrival
    /// order): (sequence number of the later packet, 20 ms slots skipped; negative if RTP time
    /// went back). A sender that stalls skips slots (RTP time follows its schedule, no audio is
    /// dropped), and a receiver plays the skip as silence.
    pub fn rtp_skips(&self) -> Vec<(u16, i64)> {
        self.packets()
            .windows(2)
            .filter_map(|w| {
                let advance = i64::from(w[1].rtp_timestamp.wrapping_sub(w[0].rtp_timestamp) as i32);
                (advance != FRAME as i64).then(|| (w[1].sequence, advance / FRAME as i64 - 1))
            })
            .collect()
    }

    /// Waits until `pred` holds for everything received so far, decoded as
    /// [`WebrtcCaller::pcm_48k`] does. Decodes it all again on every arrival: meant for the
    /// end of a call, when what is missing is a few packets in flight.
    pub async fn wait_for_pcm(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[i16]) -> bool,
    ) -> Result<(), CallerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            // Decoded outside the recorder's lock.
            if pred(&self.pcm_48k()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "{what}: not within {timeout:?} ({} packets received)",
                    self.state.packets.lock().unwrap().len()
                )
                .into());
            }
        }
    }

    /// Waits until this caller has heard all of `text` (the `tones` voice): as many
    /// characters as it has, the audio ending silent. For the end of a call, when the daemon
    /// sends nothing after the utterance; decodes everything on each arrival, so wait for
    /// `call.ended` first. Compare the text afterwards.
    pub async fn wait_heard_whole(&self, text: &str, timeout: Duration) -> Result<(), CallerError> {
        let want = super::tones::expected(text).replace(' ', "").len();
        let tail = 480; // 10 ms at 48 kHz
        self.wait_for_pcm("the whole utterance", timeout, |pcm| {
            let quiet_end = pcm.len() >= tail && rms(&pcm[pcm.len() - tail..]) < AUDIBLE_RMS;
            quiet_end && super::tones::decode_i16(pcm, 48_000).replace(' ', "").len() >= want
        })
        .await
    }

    /// The received audio decoded to 48 kHz mono PCM, in RTP timestamp order, duplicates
    /// dropped, gaps filled with silence according to the timestamps.
    pub fn pcm_48k(&self) -> Vec<i16> {
        decode_packets(&self.packets())
    }

    /// Sends `DELETE Location`; returns the HTTP status.
    pub async fn hang_up(&self) -> Result<u16, CallerError> {
        let mut headers = Vec::new();
        if let Some(b) = &self.bearer {
            headers.push(("Authorization".to_owned(), format!("Bearer {b}")));
        }
        let resp = http_request(&self.origin, "DELETE", &self.location, &headers, b"").await?;
        Ok(resp.status)
    }

    /// Stops talking (no more RTP from the caller); the connection stays up.
    pub fn stop_talking(&self) {
        self.talker.abort();
    }

    /// Waits until this caller holds every frame the daemon at `origin` has sent into its
    /// call so far (its `frames_sent`, plus one for a read in the instant between an event
    /// and the count of its frame). After `utterance.done`, the whole utterance: the daemon
    /// releases that event only once the utterance's last frame went out, and it keeps
    /// sending (silence), so this never waits for audio that will not come.
    pub async fn wait_holds_all_sent(&self, origin: &str, timeout: Duration) {
        let call = get_json(origin, self.location()).await;
        let frames = call["frames_sent"].as_u64().expect("frames_sent") + 1;
        self.wait_frames(frames as usize, timeout)
            .await
            .unwrap_or_else(|e| panic!("the caller never got the frames the daemon sent: {e}"));
    }

    /// What the caller heard, decoded as the `tones` voice, runs of spaces collapsed.
    pub fn heard_tones(&self) -> String {
        super::tones::collapse_spaces(&super::tones::decode_i16(&self.pcm_48k(), 48_000))
    }

    /// Asserts that the caller heard `expected` (text as the `tones` voice speaks it), spaces
    /// ignored (silences of any length: between utterances, over a reconnect). Character for
    /// character when RTP time ran on without a skip at the caller. When it skipped (a daemon
    /// starved by a busy machine skips slots, its timing contract, or a packet was lost), the
    /// silence can fall inside a character, which is then heard twice: runs of one character
    /// are compared as one, and the skips are printed.
    pub fn assert_heard_tones(&self, expected: &str, context: &str) {
        let squeeze = |s: &str, runs: bool| {
            let mut out: Vec<char> = Vec::new();
            for c in s.chars().filter(|c| *c != ' ') {
                if !(runs && out.last() == Some(&c)) {
                    out.push(c);
                }
            }
            out.into_iter().collect::<String>()
        };
        let heard = self.heard_tones();
        let skips = self.rtp_skips();
        let runs = !skips.is_empty();
        if runs {
            println!("RTP skips at the caller {skips:?}: runs of a character count as one");
        }
        assert_eq!(
            squeeze(&heard, runs),
            squeeze(expected, runs),
            "heard {heard:?}; RTP skips {skips:?}\n{context}"
        );
    }

    /// Stops talking and closes the caller's peer connection.
    pub async fn close(&self) {
        self.talker.abort();
        let _ = self.pc.close().await;
    }
}

impl Drop for WebrtcCaller {
    fn drop(&mut self) {
        self.talker.abort();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let pc = Arc::clone(&self.pc);
            h.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// The caller's voice ([`voice_frame`]), one Opus frame per absolute 20 ms deadline.
async fn talk(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    // The slots of key presses still to send: a packet, or `None` for a gap of voice.
    let mut pending: std::collections::VecDeque<Option<DtmfPacket>> = Default::default();
    let Ok(mut encoder) = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
    else {
        return;
    };
    // In-band FEC, as browsers send it when the answer says `useinbandfec=1` and they see
    // loss: the daemon can rebuild a lost packet from the next one.
    if encoder.set_inband_fec(true).is_err() || encoder.set_packet_loss_perc(10).is_err() {
        return;
    }
    let t0 = tokio::time::Instant::now();
    let mut seq: u16 = rand::random();
    let base: u32 = rand::random();
    let mut out = [0u8; 1500];
    for n in 0u64.. {
        tokio::time::sleep_until(t0 + Duration::from_millis(20 * n)).await;
        let timestamp = base.wrapping_add((n as u32).wrapping_mul(FRAME as u32));
        while let Ok(digits) = keys.try_recv() {
            pending.extend(dtmf_packets(&digits, timestamp));
        }
        // Key presses replace the voice while they last, as browsers do.
        let (marker, pt, payload, timestamp) = match pending.pop_front().flatten() {
            Some(key) => (
                key.marker,
                TELEPHONE_EVENT_PT,
                key.payload.to_vec(),
                key.timestamp,
            ),
            None => {
                let pcm = voice_frame(n as usize * FRAME);
                let Ok(len) = encoder.encode(&pcm, &mut out) else {
                    return;
                };
                (n == 0, payload_type, out[..len].to_vec(), timestamp)
            }
        };
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: pt,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        seq = seq.wrapping_add(1);
        if track.write_rtp(packet).await.is_err() {
            return;
        }
    }
}

/// One RFC 4733 packet of a key press, written out by hand (independently of the daemon's
/// own DTMF code): event, E bit, volume 10, duration in 48 kHz ticks.
struct DtmfPacket {
    marker: bool,
    timestamp: u32,
    payload: [u8; 4],
}

/// `digits` as a browser sends them from RTP time `start`, one entry per 20 ms slot: each key
/// 100 ms (five packets, duration growing by 960 ticks), its end packet three times, then
/// 60 ms of voice (`None`).
fn dtmf_packets(digits: &str, start: u32) -> Vec<Option<DtmfPacket>> {
    const TONE_SLOTS: u32 = 5;
    const GAP_SLOTS: u32 = 3;
    let mut packets = Vec::new();
    let mut slot = 0u32;
    for digit in digits.chars() {
        let event = match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => digit as u8 - b'A' + 12,
            _ => continue,
        };
        let timestamp = start.wrapping_add(slot * FRAME as u32);
        for i in 1..=TONE_SLOTS + 2 {
            let end = i >= TONE_SLOTS;
            let duration = (i.min(TONE_SLOTS) * FRAME as u32) as u16;
            let [d0, d1] = duration.to_be_bytes();
            packets.push(Some(DtmfPacket {
                marker: i == 1,
                timestamp,
                payload: [event, if end { 0x80 | 10 } else { 10 }, d0, d1],
            }));
        }
        slot += TONE_SLOTS + 2 + GAP_SLOTS;
        packets.extend((0..GAP_SLOTS).map(|_| None));
    }
    packets
}

/// RMS (s16 units) above which a decoded frame counts as audible: about -30 dBFS. Encoded
/// digital silence decodes to (nearly) zero; the `tones` voice is at half scale.
pub const AUDIBLE_RMS: f64 = 1000.0;

/// Root mean square of `pcm`, in s16 units (0 for no samples).
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / pcm.len() as f64).sqrt()
}

/// Whether RTP timestamp `ts` is `target` or later (serial-number arithmetic mod 2^32).
pub fn rtp_at_or_after(ts: u32, target: u32) -> bool {
    (ts.wrapping_sub(target) as i32) >= 0
}

/// The caller's voice from absolute sample `start`: 20 ms of [`CALLER_TONE_HZ`] at amplitude
/// 3000 with a 4 Hz syllable-like envelope (0.5 to 1), so that Opus' voice detector takes it
/// for speech and codes in-band FEC for it (a steady tone soon counts as noise, and noise
/// gets none).
fn voice_frame(start: usize) -> Vec<i16> {
    sine_frame(CALLER_TONE_HZ, 3000.0, start)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let t = (start + i) as f64 / 48_000.0;
            let envelope = 0.75 + 0.25 * (2.0 * std::f64::consts::PI * 4.0 * t).cos();
            (f64::from(s) * envelope) as i16
        })
        .collect()
}

/// 20 ms of a sine at `hz`, amplitude `amp`, starting at absolute sample `start`.
pub fn sine_frame(hz: f64, amp: f64, start: usize) -> Vec<i16> {
    (0..FRAME)
        .map(|i| {
            let t = (start + i) as f64 / 48_000.0;
            (amp * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// Decodes Opus packets into 48 kHz mono PCM in RTP order, concealing gaps with silence.
pub fn decode_packets(packets: &[ReceivedPacket]) -> Vec<i16> {
    let Some(first) = packets.first() else {
        return Vec::new();
    };
    let ts0 = first.rtp_timestamp;
    let mut ordered: Vec<&ReceivedPacket> = packets
        .iter()
        .filter(|p| p.payload_type != TELEPHONE_EVENT_PT)
        .collect();
    ordered.sort_by_key(|p| p.rtp_timestamp.wrapping_sub(ts0) as i32);
    ordered.dedup_by_key(|p| p.rtp_timestamp);
    let Ok(mut decoder) = Decoder::new(SampleRate::Hz48000, Channels::Mono) else {
        return Vec::new();
    };
    let start = ordered.first().map(|p| p.rtp_timestamp).unwrap_or(ts0);
    let mut pcm: Vec<i16> = Vec::new();
    let mut buf = vec![0i16; 5760];
    for p in ordered {
        let pos = p.rtp_timestamp.wrapping_sub(start) as usize;
        if pos > pcm.len() {
            pcm.resize(pos, 0);
        }
        let Ok(packet) = audiopus::packet::Packet::try_from(&p.payload[..]) else {
            continue;
        };
        let Ok(signals) = MutSignals::try_from(&mut buf[..]) else {
            continue;
        };
        if let Ok(n) = decoder.decode(Some(packet), signals, false) {
            let skip = pcm.len().saturating_sub(pos).min(n);
            pcm.extend_from_slice(&buf[skip..n]);
        }
    }
    pcm
}

/// Decodes Opus packets into 48 kHz mono PCM as a browser's receiver does (NetEq with
/// libopus): in sequence order, duplicates dropped; a lost packet is rebuilt from the next
/// packet's in-band FEC when that one arrived (libopus decodes its LBRR, or conceals when it
/// carries none), else concealed (PLC), 20 ms each. Telephone-events are skipped.
pub fn decode_packets_with_fec(packets: &[ReceivedPacket]) -> Vec<i16> {
    let audio: Vec<&ReceivedPacket> = packets
        .iter()
        .filter(|p| p.payload_type != TELEPHONE_EVENT_PT)
        .collect();
    let Some(first) = audio.first() else {
        return Vec::new();
    };
    // Sequence numbers relative to the first packet (within half the range either way).
    let offset = |p: &ReceivedPacket| i64::from(p.sequence.wrapping_sub(first.sequence) as i16);
    let mut by_seq = std::collections::BTreeMap::new();
    for p in &audio {
        by_seq.entry(offset(p)).or_insert(*p);
    }
    let (Some(&lo), Some(&hi)) = (by_seq.keys().next(), by_seq.keys().next_back()) else {
        return Vec::new();
    };
    let Ok(mut decoder) = Decoder::new(SampleRate::Hz48000, Channels::Mono) else {
        return Vec::new();
    };
    let mut pcm = Vec::new();
    let mut buf = vec![0i16; 5760];
    for seq in lo..=hi {
        let (packet, fec) = match (by_seq.get(&seq), by_seq.get(&(seq + 1))) {
            (Some(p), _) => (Some(p), false),
            (None, Some(next)) => (Some(next), true),
            (None, None) => (None, false),
        };
        let len = if fec || packet.is_none() {
            FRAME
        } else {
            buf.len()
        };
        let Ok(signals) = MutSignals::try_from(&mut buf[..len]) else {
            continue;
        };
        let opus = packet.and_then(|p| audiopus::packet::Packet::try_from(&p.payload[..]).ok());
        if let Ok(n) = decoder.decode(opus, signals, fec) {
            pcm.extend_from_slice(&buf[..n]);
        }
    }
    pcm
}

/// Relative power of `hz` in `pcm` (Goertzel), normalised by the signal energy: close to 1
/// for a pure tone at `hz`, near 0 for other frequencies.
pub fn tone_ratio(pcm: &[i16], hz: f64) -> f64 {
    tone_ratio_at(pcm, hz, 48_000)
}

/// [`tone_ratio`] for PCM at `rate` Hz.
pub fn tone_ratio_at(pcm: &[i16], hz: f64, rate: u32) -> f64 {
    let n = pcm.len() as f64;
    if pcm.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in pcm {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        2.0 * power / (n * energy)
    }
}

/// `GET path` on `origin`, expecting `200` and a JSON body.
pub async fn get_json(origin: &str, path: &str) -> serde_json::Value {
    let reply = http_request(origin, "GET", path, &[], b"")
        .await
        .expect("GET");
    assert_eq!(
        reply.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).expect("JSON")
}

/// The value of one sample of the daemon's `/metrics` at `origin` (a counter, a gauge, or a
/// histogram's `_count` or `_sum`) whose labels include `labels`; None when the daemon has
/// not reported it yet.
pub async fn get_metric(origin: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let reply = http_request(origin, "GET", "/metrics", &[], b"")
        .await
        .expect("GET /metrics");
    assert_eq!(reply.status, 200);
    let body = String::from_utf8(reply.body).expect("UTF-8 metrics");
    let (_, _, samples) = super::prometheus::parse(&body);
    super::prometheus::value(&samples, name, labels)
}

/// How many calls the daemon at `origin` has ended with `reason`
/// (`lmnt_bridge_calls_ended_total`); None before the first.
pub async fn calls_ended(origin: &str, reason: &str) -> Option<f64> {
    get_metric(
        origin,
        "lmnt_bridge_calls_ended_total",
        &[("reason", reason)],
    )
    .await
}

/// A parsed HTTP response.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The `code` of a JSON error body (`{"error":{"code":...}}`); empty when there is none.
    pub fn error_code(&self) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String), CallerError> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_owned(), path.to_owned()))
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole response (5 s guard).
pub async fn http_request(
    origin: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<HttpResponse, CallerError> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(origin).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(5), work).await?
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, CallerError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or("no status")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, CallerError> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end])?.trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("short chunk")?;
    }
}

//! A seeded userspace UDP relay that loses, delays and jitters RTP between a test caller and
//! the daemon (this kernel has no `sch_netem`; stack-notes.md).
//!
//! ```text
//! caller ──▶ relay.addr() ──(upstream: drop/delay)──▶ daemon's candidate
//! caller ◀── relay.addr() ◀─(downstream: drop/delay)── daemon
//! ```
//!
//! Placed in the path by rewriting candidates: [`LossyRelay::rewrite_answer`] makes the
//! daemon's candidate in its answer the relay's caller-facing port, and
//! [`LossyRelay::rewrite_offer`] the caller's candidate in its offer the relay's
//! daemon-facing port, so every check and packet either side sends goes through the relay
//! (neither side learns the other's real address).
//!
//! Only RTP is lost or delayed (STUN, DTLS and RTCP pass at once: the subject is media loss,
//! not a handshake's retransmission timers). Each direction draws its own decisions from the
//! seed, one draw per RTP packet in the order they come, so a profile with the same seed
//! loses the same packet indices on every run. Loss comes in bursts whose length is drawn in
//! `burst`, each followed by at least one packet that passes; the chance that a burst starts
//! is set so that the long-run loss is `loss`. [`LossyRelay::restart_at_speech`] starts the
//! pattern again from the seed at the first downstream datagram long enough to carry speech,
//! so two calls can lose exactly the same frames of an utterance. Delay
//! and jitter keep packets in order (each leaves no earlier than the one before it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How a direction treats RTP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossProfile {
    /// Long-run fraction of RTP packets dropped, 0 to 1 (below 1).
    pub loss: f64,
    /// Burst length range, in packets (`(1, 1)`: independent losses).
    pub burst: (u32, u32),
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly in `0..=jitter` per packet (order kept).
    pub jitter: Duration,
    /// RTP packets per direction passed untouched before loss starts (the handshake settles).
    pub warmup_packets: u64,
}

impl LossProfile {
    /// A clean path.
    pub fn none() -> Self {
        LossProfile {
            loss: 0.0,
            burst: (1, 1),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            warmup_packets: 0,
        }
    }

    /// Independent random loss of `loss`.
    pub fn random(loss: f64) -> Self {
        LossProfile {
            loss,
            ..LossProfile::none()
        }
    }

    /// Loss of `loss` in bursts of `min..=max` packets.
    pub fn bursts(loss: f64, min: u32, max: u32) -> Self {
        LossProfile {
            loss,
            burst: (min, max.max(min)),
            ..LossProfile::none()
        }
    }

    /// The chance that a burst starts at a packet outside a burst (the packet right after a
    /// burst always passes, so bursts stay within `burst`), for long-run loss `loss`: with
    /// mean burst `b`, good runs average `1/q` packets and loss = b / (b + 1/q).
    fn burst_start_chance(&self) -> f64 {
        let (lo, hi) = self.burst;
        let mean = f64::from(lo.max(1) + hi.max(lo.max(1))) / 2.0;
        let loss = self.loss.clamp(0.0, 0.5);
        (loss / (mean * (1.0 - loss))).min(1.0)
    }
}

/// splitmix64: a tiny seeded generator, identical on every platform and crate version.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction's loss decisions.
#[derive(Debug)]
struct Lossy {
    seed: u64,
    /// The pattern restart this one belongs to.
    generation: u64,
    drops: Rng,
    jitter: Rng,
    /// Packets of the current burst still to drop.
    burst_left: u32,
    /// The last packet ended a burst: this one passes.
    after_burst: bool,
    rtp_seen: u64,
}

impl Lossy {
    fn new(seed: u64) -> Self {
        Lossy {
            seed,
            generation: 0,
            drops: Rng(seed),
            jitter: Rng(seed ^ 0x5EED_0F11_77E5),
            burst_left: 0,
            after_burst: false,
            rtp_seen: 0,
        }
    }

    /// Whether this RTP packet is dropped.
    fn drop_next(&mut self, profile: &LossProfile) -> bool {
        self.rtp_seen += 1;
        // One draw per packet whatever happens, so the pattern depends only on the index.
        let draw = self.drops.unit();
        let length = self.drops.next_u64();
        if self.rtp_seen <= profile.warmup_packets || profile.loss <= 0.0 {
            self.burst_left = 0;
            return false;
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            self.after_burst = self.burst_left == 0;
            return true;
        }
        if std::mem::take(&mut self.after_burst) {
            return false;
        }
        if draw < profile.burst_start_chance() {
            let (lo, hi) = profile.burst;
            let span = u64::from(hi.saturating_sub(lo)) + 1;
            self.burst_left = lo.max(1) - 1 + (length % span) as u32;
            self.after_burst = self.burst_left == 0;
            return true;
        }
        false
    }

    fn delay(&mut self, profile: &LossProfile) -> Duration {
        profile.delay + profile.jitter.mul_f64(self.jitter.unit())
    }
}

/// What one direction did with RTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub rtp_forwarded: u64,
    pub rtp_dropped: u64,
}

struct Shared {
    /// The profile, and how many times the pattern was restarted.
    profile: Mutex<(LossProfile, u64)>,
    /// A restart waiting for the first downstream RTP datagram of at least this many bytes.
    restart_at: Mutex<Option<(LossProfile, usize)>>,
    daemon: Mutex<Option<SocketAddr>>,
    caller: Mutex<Option<SocketAddr>>,
    up_forwarded: AtomicU64,
    up_dropped: AtomicU64,
    down_forwarded: AtomicU64,
    down_dropped: AtomicU64,
}

impl Shared {
    /// A new profile, and each direction's pattern from the seed again at its next packet.
    fn restart(&self, profile: LossProfile) {
        let mut current = self.profile.lock().unwrap();
        *current = (profile, current.1 + 1);
    }
}

/// A running relay; its tasks stop when it is dropped.
pub struct LossyRelay {
    addr: SocketAddr,
    daemon_side_port: u16,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a datagram is RTP (RFC 5761 demultiplexing: version 2, and a second byte outside
/// RTCP's 192..=223). STUN starts with 0..=3, DTLS with 20..=63.
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1])
}

impl LossyRelay {
    /// Binds the relay's two loopback sockets and starts it with `profile`, both directions
    /// seeded from `seed`.
    pub async fn start(seed: u64, profile: LossProfile) -> LossyRelay {
        let caller_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let daemon_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = caller_side.local_addr().expect("relay address");
        let daemon_side_port = daemon_side.local_addr().expect("relay address").port();
        let shared = Arc::new(Shared {
            profile: Mutex::new((profile, 0)),
            restart_at: Mutex::new(None),
            daemon: Mutex::new(None),
            caller: Mutex::new(None),
            up_forwarded: AtomicU64::new(0),
            up_dropped: AtomicU64::new(0),
            down_forwarded: AtomicU64::new(0),
            down_dropped: AtomicU64::new(0),
        });
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(receive(
                Arc::clone(&caller_side),
                Arc::clone(&shared),
                Lossy::new(seed),
                true,
                up_tx,
            )),
            tokio::spawn(receive(
                Arc::clone(&daemon_side),
                Arc::clone(&shared),
                Lossy::new(seed.rotate_left(17) ^ 0xD057),
                false,
                down_tx,
            )),
            tokio::spawn(send(daemon_side, up_rx)),
            tokio::spawn(send(caller_side, down_rx)),
        ];
        LossyRelay {
            addr,
            daemon_side_port,
            shared,
            tasks,
        }
    }

    /// The caller-facing address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the profile from the next packet on (e.g. [`LossProfile::none`] to take the
    /// loss away).
    pub fn set_profile(&self, profile: LossProfile) {
        self.shared.profile.lock().unwrap().0 = profile;
    }

    /// Changes the profile and starts each direction's loss pattern again from the seed at
    /// the first RTP datagram from the daemon of at least `min_bytes` (that datagram is the
    /// first of the new pattern): the start of speech, since an Opus frame of silence is a
    /// few dozen bytes and one of speech more (SRTP adds 22). Two calls saying the same thing
    /// then lose exactly the same frames of it.
    pub fn restart_at_speech(&self, profile: LossProfile, min_bytes: usize) {
        *self.shared.restart_at.lock().unwrap() = Some((profile, min_bytes));
    }

    /// RTP from the caller to the daemon.
    pub fn upstream(&self) -> DirectionStats {
        DirectionStats {
            rtp_forwarded: self.shared.up_forwarded.load(Ordering::Relaxed),
            rtp_dropped: self.shared.up_dropped.load(Ordering::Relaxed),
        }
    }

    /// RTP from the daemon to the caller.
    pub fn downstream(&self) -> DirectionStats {
        DirectionStats {
            rtp_forwarded: self.shared.down_forwarded.load(Ordering::Relaxed),
            rtp_dropped: self.shared.down_dropped.load(Ordering::Relaxed),
        }
    }

    /// Rewrites the daemon's SDP answer so its (first) loopback candidate is the relay's
    /// caller-facing port, and remembers the daemon's address to forward to. Panics when the
    /// answer has no candidate on 127.0.0.0/8 (test setup).
    pub fn rewrite_answer(&self, answer: &str) -> String {
        let (sdp, daemon) = rewrite_candidate(answer, self.addr.port());
        *self.shared.daemon.lock().unwrap() = Some(daemon);
        sdp
    }

    /// Rewrites the caller's SDP offer so its (first) loopback candidate is the relay's
    /// daemon-facing port, and remembers the caller's address to forward to. Panics when the
    /// offer has no candidate on 127.0.0.0/8 (test setup).
    pub fn rewrite_offer(&self, offer: &str) -> String {
        let (sdp, caller) = rewrite_candidate(offer, self.daemon_side_port);
        *self.shared.caller.lock().unwrap() = Some(caller);
        sdp
    }
}

/// `sdp` with its first loopback candidate moved to `127.0.0.1:port` and every other
/// candidate removed (one path: through the relay); also the address it had.
fn rewrite_candidate(sdp: &str, port: u16) -> (String, SocketAddr) {
    let mut original = None;
    let rewritten: Vec<String> = sdp
        .lines()
        .filter_map(|line| {
            let Some(candidate) = line.strip_prefix("a=candidate:") else {
                return Some(line.to_owned());
            };
            // foundation component transport priority address port typ host ...
            let mut fields: Vec<&str> = candidate.split(' ').collect();
            let addr: SocketAddr = format!("{}:{}", fields.get(4)?, fields.get(5)?)
                .parse()
                .ok()?;
            if original.is_some() || !addr.ip().is_loopback() {
                return None;
            }
            original = Some(addr);
            let port = port.to_string();
            fields[4] = "127.0.0.1";
            fields[5] = &port;
            Some(format!("a=candidate:{}", fields.join(" ")))
        })
        .collect();
    let original = original.expect("the SDP has a loopback candidate");
    let mut sdp = rewritten.join("\r\n");
    sdp.push_str("\r\n");
    (sdp, original)
}

/// Reads one socket: from the caller when `upstream`, else from the daemon; decides and
/// queues each datagram for the other side.
async fn receive(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    mut lossy: Lossy,
    upstream: bool,
    out: mpsc::UnboundedSender<(Instant, SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 2048];
    let mut last_due = Instant::now();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let datagram = buf[..n].to_vec();
        let to = if upstream {
            *shared.caller.lock().unwrap() = Some(from);
            *shared.daemon.lock().unwrap()
        } else {
            *shared.caller.lock().unwrap()
        };
        let Some(to) = to else { continue };
        if !upstream && is_rtp(&datagram) {
            let mut armed = shared.restart_at.lock().unwrap();
            if let Some((profile, min_bytes)) = *armed {
                if datagram.len() >= min_bytes {
                    *armed = None;
                    shared.restart(profile);
                }
            }
        }
        let (profile, generation) = *shared.profile.lock().unwrap();
        if generation != lossy.generation {
            lossy = Lossy::new(lossy.seed);
            lossy.generation = generation;
        }
        let mut due = Instant::now();
        if is_rtp(&datagram) {
            let (forwarded, dropped) = if upstream {
                (&shared.up_forwarded, &shared.up_dropped)
            } else {
                (&shared.down_forwarded, &shared.down_dropped)
            };
            if lossy.drop_next(&profile) {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            forwarded.fetch_add(1, Ordering::Relaxed);
            due = (due + lossy.delay(&profile)).max(last_due);
            last_due = due;
        }
        if out.send((due, to, datagram)).is_err() {
            return;
        }
    }
}

/// Sends queued datagrams when due, in order.
async fn send(
    socket: Arc<UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<(Instant, SocketAddr, Vec<u8>)>,
) {
    while let Some((due, to, datagram)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        let _ = socket.send_to(&datagram, to).await;
    }
}

//! Load tool: N callers and their bots in one process against a running daemon and
//! `local-tts` (project issue 10).
//!
//! - Callers: one thread drives every caller's sans-IO `str0m` peer over one UDP socket on
//!   127.0.0.1 (RTP mode, so every received packet's sequence number and RTP timestamp are
//!   seen), sends one pre-encoded 20 ms Opus frame per caller on an absolute 20 ms schedule,
//!   and logs each received packet's kernel arrival time (`SO_TIMESTAMPNS`).
//! - Bots: one control websocket per call (tokio, one thread), speaking continuously:
//!   short random words of the `tones` voice, flush, wait for `utterance.done`, repeat.
//! - Every `--sample-every`th call keeps its Opus payloads; they are decoded afterwards and
//!   each utterance's tones compared with the text the bot sent (exact).
//!
//! `cargo build --release && cargo bench --bench loadtest -- --calls 50 --seconds 20`
//! `cargo bench --bench loadtest -- --churn 200 --concurrency 20`
//! `--silent`: bots attach and never speak (the cost of a call waiting for its bot to talk).
//! `--ramp S`: the calls are placed evenly over S seconds (default 0: all at once, which puts
//! every bot in lockstep and is the hardest load; a ramp is how calls reach a box in
//! production, and lets overload protection find the level the box holds).
//! `--overload-late-ms MS`: the daemon's `limits.overload_late_ms` (default 10, the daemon's
//! default; 0 turns overload protection off); calls refused with `503 overloaded` are counted.
//! Without `--daemon-url` it starts `local-tts` and `serve` (release binary) on loopback
//! itself; with it, `--daemon-pid` names the process whose CPU and RSS are measured.

#[path = "../tests/support/daemon.rs"]
#[allow(dead_code)]
mod daemon;
#[path = "../tests/support/local_tts.rs"]
#[allow(dead_code)]
mod local_tts;
#[path = "../tests/support/tones.rs"]
#[allow(dead_code)]
mod tones;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const FRAME: Duration = Duration::from_millis(20);
/// A decoded 20 ms frame above this RMS carries a tone; the daemon's silence decodes to ~0.
const TONE_RMS: f64 = 300.0;
/// Above this RMS a frame still carries some of an utterance's audio (a tone's decaying end).
const AUDIBLE_RMS: f64 = 20.0;
const LOAD_CONFIG: &str = "[lmnt]\nvoice = \"tones\"\n\n[limits]\nmax_calls = 5000\n\n\
[rtc]\nbind_ips = [\"127.0.0.1\"]\n";

struct Args {
    calls: usize,
    seconds: f64,
    churn: Option<usize>,
    concurrency: usize,
    daemon_url: Option<String>,
    daemon_pid: Option<u32>,
    sample_every: usize,
    silent: bool,
    overload_late_ms: u32,
    ramp: Duration,
}

fn parse_args() -> Option<Args> {
    let mut a = Args {
        calls: 10,
        seconds: 10.0,
        churn: None,
        concurrency: 20,
        daemon_url: None,
        daemon_pid: None,
        sample_every: 10,
        silent: false,
        overload_late_ms: 10,
        ramp: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--calls" => a.calls = val("--calls").parse().expect("--calls N"),
            "--seconds" => a.seconds = val("--seconds").parse().expect("--seconds S"),
            "--churn" => a.churn = Some(val("--churn").parse().expect("--churn TOTAL")),
            "--concurrency" => {
                a.concurrency = val("--concurrency").parse().expect("--concurrency C")
            }
            "--daemon-url" => a.daemon_url = Some(val("--daemon-url")),
            "--daemon-pid" => a.daemon_pid = Some(val("--daemon-pid").parse().expect("PID")),
            "--silent" => a.silent = true,
            "--ramp" => {
                a.ramp = Duration::from_secs_f64(val("--ramp").parse().expect("--ramp SECONDS"))
            }
            "--overload-late-ms" => {
                a.overload_late_ms = val("--overload-late-ms")
                    .parse()
                    .expect("--overload-late-ms MS")
            }
            "--sample-every" => {
                a.sample_every = val("--sample-every").parse().expect("--sample-every K")
            }
            // `cargo bench` passes a filter: one that is not ours means another bench.
            other if !other.starts_with('-') && !"loadtest".contains(other) => return None,
            other if !other.starts_with('-') => {}
            other => panic!("unknown option {other}"),
        }
    }
    a.concurrency = a.concurrency.max(1);
    a.sample_every = a.sample_every.max(1);
    Some(a)
}

// ---------------------------------------------------------------------------------------
// /proc figures

/// utime + stime of `pid` ("self" for this process).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time `pid` (if any) used since it had used `before`.
fn cpu_since(pid: Option<&str>, before: Duration) -> Duration {
    pid.map(cpu_time).unwrap_or_default().saturating_sub(before)
}

fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

// ---------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (Connection: close)

struct HttpReply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

async fn http(
    host: &str,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        req.push_str(&format!("Content-Type: {c}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if len == 0 || eol + 2 + len > b.len() {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[(eol + 4 + len).min(b.len())..];
    }
    out
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

// ---------------------------------------------------------------------------------------
// The callers' thread

/// One received RTP packet.
#[derive(Clone, Copy)]
struct Pkt {
    at: Instant,
    seq: u64,
    ts: u32,
    /// Decoded, it carries a tone (sampled calls only; false elsewhere).
    tone: bool,
    /// Decoded, it carries any audio ([`AUDIBLE_RMS`]; sampled calls only).
    audible: bool,
}

#[derive(Default)]
struct RxLog {
    packets: Vec<Pkt>,
    /// Payloads in receive order (sampled calls only).
    payloads: Vec<Vec<u8>>,
    failed: Option<String>,
}

struct NewCall {
    idx: usize,
    rtc: Rtc,
    mid: Mid,
    pt: Pt,
    remote: Vec<SocketAddr>,
    keep_payloads: bool,
}

enum Cmd {
    Add(Box<NewCall>),
    Remove(usize),
    Stop,
}

struct Live {
    c: NewCall,
    log: RxLog,
    timeout: Instant,
    connected: bool,
    next_send: Instant,
    seq: u64,
    ts: u32,
    dead: bool,
}

/// Shared between the callers' thread and the bots: per call, when the caller's DTLS
/// handshake completed and when the first RTP packet arrived (ns since `epoch`, 0 = not yet).
struct Shared {
    epoch: Instant,
    dtls_connected: Vec<AtomicU64>,
    first_rtp: Vec<AtomicU64>,
}

impl Shared {
    fn mark(&self, slot: &AtomicU64, at: Instant) {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        let _ = slot.compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn at(&self, slot: &AtomicU64) -> Option<Instant> {
        let ns = slot.load(Ordering::Relaxed);
        (ns != 0).then(|| self.epoch + Duration::from_nanos(ns))
    }

    /// Set-up time of the calls posted at `posts` (call index, when `POST /v1/calls` was
    /// sent), split where the caller's DTLS handshake completes: before it the answer, ICE
    /// (including the caller's own nomination pacing: str0m nominates on its next check of
    /// the pair, about 500 ms after it first succeeds) and DTLS; after it the first frame.
    fn print_setup(&self, posts: impl Iterator<Item = (usize, Instant)>) {
        let (mut whole, mut dtls, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for (i, post) in posts {
            let (Some(connected), Some(first)) = (
                self.at(&self.dtls_connected[i]),
                self.at(&self.first_rtp[i]),
            ) else {
                continue;
            };
            whole.push(ms(first.saturating_duration_since(post)));
            dtls.push(ms(connected.saturating_duration_since(post)));
            rest.push(ms(first.saturating_duration_since(connected)));
        }
        line_p("POST -> first RTP packet at the caller", &mut whole);
        line_p("  of which POST -> DTLS connected at the caller", &mut dtls);
        line_p("  of which DTLS connected -> first RTP", &mut rest);
    }
}

fn drain(l: &mut Live, sock: &UdpSocket, arrival: Instant, shared: &Shared) {
    loop {
        match l.c.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                l.timeout = t;
                return;
            }
            Ok(Output::Transmit(t)) => {
                let _ = sock.send_to(&t.contents, t.destination);
            }
            Ok(Output::Event(e)) => match e {
                Event::Connected => {
                    shared.mark(&shared.dtls_connected[l.c.idx], arrival);
                    l.connected = true;
                    l.next_send = Instant::now();
                }
                Event::RtpPacket(p) => {
                    if l.log.packets.is_empty() {
                        shared.mark(&shared.first_rtp[l.c.idx], arrival);
                    }
                    l.log.packets.push(Pkt {
                        at: arrival,
                        seq: *p.seq_no,
                        ts: p.header.timestamp,
                        tone: false,
                        audible: false,
                    });
                    if l.c.keep_payloads {
                        l.log.payloads.push(p.payload.to_vec());
                    }
                }
                _ => {}
            },
            Err(e) => {
                l.dead = true;
                l.log.failed = Some(format!("str0m: {e}"));
                l.timeout = Instant::now() + Duration::from_secs(3600);
                return;
            }
        }
    }
}

/// recvmsg with the kernel's receive timestamp (CLOCK_REALTIME), non-blocking.
fn recv_ts(fd: i32, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    // SAFETY: plain recvmsg into stack buffers sized for what we pass.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ts = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                ts =
                    Some(SystemTime::UNIX_EPOCH + Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let from = SocketAddr::from((ip, u16::from_be(addr.sin_port)));
        Ok((n as usize, from, ts))
    }
}

fn callers_thread(
    sock: UdpSocket,
    cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    frame: Arc<[u8]>,
) -> HashMap<usize, RxLog> {
    let fd = sock.as_raw_fd();
    let kernel_ts = set_socket_option(fd, libc::SO_TIMESTAMPNS, 1);
    // A larger receive buffer is best effort: without it, bursts may drop (counted as loss).
    set_socket_option(fd, libc::SO_RCVBUF, 4 << 20);
    let local = sock.local_addr().expect("local addr");
    let mut lives: Vec<Live> = Vec::new();
    let mut routes: HashMap<SocketAddr, usize> = HashMap::new(); // remote -> index in lives
    let mut done: HashMap<usize, RxLog> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let rebuild = |lives: &Vec<Live>, routes: &mut HashMap<SocketAddr, usize>| {
        routes.clear();
        for (i, l) in lives.iter().enumerate() {
            for a in &l.c.remote {
                routes.insert(*a, i);
            }
        }
    };
    loop {
        let mut stop = false;
        let mut changed = false;
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Add(c) => {
                    let now = Instant::now();
                    let mut l = Live {
                        c: *c,
                        log: RxLog::default(),
                        timeout: now,
                        connected: false,
                        next_send: now,
                        seq: rand::rng().random_range(0..30_000),
                        ts: rand::rng().random(),
                        dead: false,
                    };
                    drain(&mut l, &sock, now, &shared);
                    lives.push(l);
                    changed = true;
                }
                Cmd::Remove(idx) => {
                    if let Some(i) = lives.iter().position(|l| l.c.idx == idx) {
                        let l = lives.swap_remove(i);
                        done.insert(idx, l.log);
                        changed = true;
                    }
                }
                Cmd::Stop => stop = true,
            }
        }
        if changed {
            rebuild(&lives, &mut routes);
        }
        if stop {
            break;
        }
        let now = Instant::now();
        for l in lives.iter_mut().filter(|l| !l.dead) {
            if l.connected && now >= l.next_send {
                // Absolute schedule; after a stall of more than 3 frames, skip ahead.
                if now - l.next_send > 3 * FRAME {
                    l.next_send = now;
                }
                l.seq += 1;
                l.ts = l.ts.wrapping_add(960);
                if let Some(tx) = l.c.rtc.direct_api().stream_tx_by_mid(l.c.mid, None) {
                    tx.write_rtp(RtpWrite::new(
                        l.c.pt,
                        l.seq.into(),
                        l.ts,
                        now,
                        frame.clone(),
                    ));
                }
                l.next_send += FRAME;
                drain(l, &sock, now, &shared);
            }
            if now >= l.timeout {
                if let Err(e) = l.c.rtc.handle_input(Input::Timeout(now)) {
                    l.dead = true;
                    l.log.failed = Some(format!("str0m timeout: {e}"));
                } else {
                    drain(l, &sock, now, &shared);
                }
            }
        }
        let mut wake = now + Duration::from_millis(5);
        for l in lives.iter().filter(|l| !l.dead) {
            wake = wake.min(l.timeout);
            if l.connected {
                wake = wake.min(l.next_send);
            }
        }
        // Rounded up: a 0 ms poll would spin until the deadline.
        let wait_ms = wake
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on our own socket.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        loop {
            let (n, from, kts) = match recv_ts(fd, &mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            let now = Instant::now();
            let arrival = match (kernel_ts, kts) {
                (true, Some(k)) => {
                    let lag = SystemTime::now().duration_since(k).unwrap_or_default();
                    now.checked_sub(lag).unwrap_or(now)
                }
                _ => now,
            };
            let Ok(contents) = buf[..n].try_into() else {
                continue;
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: local,
                    contents,
                },
            );
            let target = routes
                .get(&from)
                .copied()
                .or_else(|| lives.iter().position(|l| l.c.rtc.accepts(&input)));
            if let Some(i) = target {
                let l = &mut lives[i];
                if l.dead {
                    continue;
                }
                if let Err(e) = l.c.rtc.handle_input(input) {
                    l.log.failed = Some(format!("str0m input: {e}"));
                    l.dead = true;
                    continue;
                }
                drain(l, &sock, arrival, &shared);
            }
        }
    }
    for l in lives {
        done.insert(l.c.idx, l.log);
    }
    done
}

// ---------------------------------------------------------------------------------------
// Placing a call and its bot

struct Ctx {
    host: String,
    local: SocketAddr,
    cmds: Mutex<mpsc::Sender<Cmd>>,
    shared: Arc<Shared>,
    sample_every: usize,
    /// Bots attach but never speak.
    silent: bool,
    stop: AtomicBool,
}

struct Utt {
    text: String,
    flush_at: Instant,
    started_at: Option<Instant>,
    done_at: Option<Instant>,
}

#[derive(Default)]
struct CallOut {
    id: Option<String>,
    post_at: Option<Instant>,
    utts: Vec<Utt>,
    error: Option<String>,
}

async fn place(ctx: &Ctx, idx: usize, out: &mut CallOut) -> Result<(), String> {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(ctx.local, "udp").map_err(|e| e.to_string())?);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().ok_or("no offer")?;
    out.post_at = Some(Instant::now());
    let reply = http(
        &ctx.host,
        "POST",
        "/v1/calls",
        Some("application/sdp"),
        offer.to_sdp_string().as_bytes(),
    )
    .await
    .map_err(|e| format!("POST: {e}"))?;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    if reply.status != 201 {
        return Err(format!("POST {}: {}", reply.status, body.trim()));
    }
    let id = header(&reply.headers, "location")
        .and_then(|l| l.rsplit('/').next())
        .ok_or("no Location")?
        .to_owned();
    out.id = Some(id);
    let answer = str0m::change::SdpAnswer::from_sdp_string(&body).map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    let mut pt = None;
    let mut remote = Vec::new();
    for line in body.lines() {
        if let Some(r) = line.strip_prefix("a=rtpmap:") {
            if r.to_ascii_lowercase().contains("opus/48000") && pt.is_none() {
                pt = r
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u8>().ok());
            }
        }
        if let Some(c) = line.strip_prefix("a=candidate:") {
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() > 5 && f[2].eq_ignore_ascii_case("udp") {
                if let Ok(a) = format!("{}:{}", f[4], f[5]).parse::<SocketAddr>() {
                    remote.push(a);
                }
            }
        }
    }
    let pt = pt.ok_or("answer has no opus")?;
    if let Some(bad) = remote.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("answer candidate {bad} is not on loopback"));
    }
    let call = NewCall {
        idx,
        rtc,
        mid,
        pt: pt.into(),
        remote,
        keep_payloads: idx.is_multiple_of(ctx.sample_every),
    };
    ctx.cmds
        .lock()
        .unwrap()
        .send(Cmd::Add(Box::new(call)))
        .map_err(|_| "callers thread gone")?;
    Ok(())
}

fn random_text() -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let words = rng.random_range(1..=3);
    (0..words)
        .map(|_| {
            (0..rng.random_range(2..=6))
                .map(|_| A[rng.random_range(0..A.len())] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Next JSON event (text frames; binary caller audio is skipped), with a deadline.
async fn next_event(ws: &mut Ws, deadline: Instant) -> Result<serde_json::Value, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err("timeout waiting for an event".into()),
            Ok(None) => return Err("control channel closed".into()),
            Ok(Some(Err(e))) => return Err(format!("control channel: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(&t).map_err(|e| e.to_string())
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn attach(ctx: &Ctx, id: &str) -> Result<Ws, String> {
    let url = format!("ws://{}/v1/calls/{id}/control", ctx.host);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("control connect: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = next_event(&mut ws, deadline).await?;
        if ev["type"] == "call.started" {
            return Ok(ws);
        }
    }
}

/// One utterance: text, flush, wait for started and done.
async fn speak(ws: &mut Ws, n: u64, text: String) -> Result<Utt, String> {
    let send = |v: serde_json::Value| Message::Text(v.to_string().into());
    ws.send(send(serde_json::json!({"type": "text", "text": text})))
        .await
        .map_err(|e| e.to_string())?;
    let flush_at = Instant::now();
    ws.send(send(serde_json::json!({"type": "flush"})))
        .await
        .map_err(|e| e.to_string())?;
    let mut u = Utt {
        text,
        flush_at,
        started_at: None,
        done_at: None,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while u.done_at.is_none() {
        let ev = next_event(ws, deadline).await?;
        let this = ev["utterance"].as_u64() == Some(n);
        match ev["type"].as_str() {
            Some("utterance.started") if this => u.started_at = Some(Instant::now()),
            Some("utterance.done") if this => u.done_at = Some(Instant::now()),
            Some("error") | Some("call.ended") => return Err(format!("daemon: {ev}")),
            _ => {}
        }
    }
    Ok(u)
}

async fn wait_first_rtp(ctx: &Ctx, idx: usize, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while ctx.shared.first_rtp[idx].load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err("no RTP from the daemon".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Steady mode: place, attach, speak until `ctx.stop`.
async fn steady_call(
    ctx: Arc<Ctx>,
    idx: usize,
    gate: Arc<tokio::sync::Semaphore>,
    place_at: Instant,
) -> CallOut {
    let mut out = CallOut::default();
    tokio::time::sleep_until(place_at.into()).await;
    let r: Result<(), String> = async {
        let ws = {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            place(&ctx, idx, &mut out).await?;
            let id = out.id.clone().unwrap_or_default();
            let ws = attach(&ctx, &id).await?;
            wait_first_rtp(&ctx, idx, Duration::from_secs(20)).await?;
            ws
        };
        let mut ws = ws;
        let mut n = 0;
        while ctx.silent && !ctx.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while !ctx.stop.load(Ordering::Relaxed) {
            n += 1;
            let u = speak(&mut ws, n, random_text()).await?;
            out.utts.push(u);
        }
        let _ = ws.close(None).await;
        Ok(())
    }
    .await;
    out.error = r.err();
    out
}

/// Churn mode: place, attach, one short utterance, hang up.
async fn churn_call(ctx: Arc<Ctx>, idx: usize) -> CallOut {
    let mut out = CallOut::default();
    let r: Result<(), String> = async {
        place(&ctx, idx, &mut out).await?;
        let id = out.id.clone().unwrap_or_default();
        let mut ws = attach(&ctx, &id).await?;
        wait_first_rtp(&ctx, idx, Duration::from_secs(20)).await?;
        let u = speak(&mut ws, 1, random_text()).await?;
        out.utts.push(u);
        let reply = http(&ctx.host, "DELETE", &format!("/v1/calls/{id}"), None, b"")
            .await
            .map_err(|e| format!("DELETE: {e}"))?;
        if reply.status != 204 {
            return Err(format!("DELETE {}", reply.status));
        }
        let _ = ws.close(None).await;
        Ok(())
    }
    .await;
    if out.id.is_some() && r.is_err() {
        let id = out.id.clone().unwrap_or_default();
        let _ = http(&ctx.host, "DELETE", &format!("/v1/calls/{id}"), None, b"").await;
    }
    let _ = ctx.cmds.lock().unwrap().send(Cmd::Remove(idx));
    out.error = r.err();
    out
}

// ---------------------------------------------------------------------------------------
// Figures

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line_p(label: &str, v: &mut [f64]) {
    let n = v.len();
    println!(
        "  {label:<52} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (n={n})",
        pct(v, 0.50),
        pct(v, 0.99),
        pct(v, 1.0)
    );
}

/// Like [`line_p`] for a figure that can be negative: min and p1 too.
fn line_p_signed(label: &str, v: &mut [f64]) {
    println!("  {label}");
    println!(
        "  {:<52} min {:>8.2} ms  p1 {:>8.2} ms  p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})",
        "",
        pct(v, 0.0),
        pct(v, 0.01),
        pct(v, 0.50),
        pct(v, 0.99),
        v.len()
    );
}

/// Sums every `key` number anywhere in `v`.
fn sum_key(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k == key {
                    x.as_u64().unwrap_or(0)
                } else {
                    sum_key(x, key)
                }
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(|x| sum_key(x, key)).sum(),
        _ => 0,
    }
}

/// Each utterance's first tone-carrying packet (index into `packets`, receive order): the
/// first one to arrive after its flush whose sequence number is past the previous
/// utterance's audio (one 60 ms slot, 3 frames, a character). Under load the previous
/// utterance's last frames can arrive after `utterance.done` and the next flush.
fn utterance_starts(packets: &[Pkt], utts: &[Utt]) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(utts.len());
    let mut min_seq = 0u64;
    for u in utts {
        let from = packets.partition_point(|p| p.at < u.flush_at);
        let found = (from..packets.len()).find(|&i| packets[i].tone && packets[i].seq >= min_seq);
        if let Some(i) = found {
            // The tones voice speaks 60 ms (3 frames) a character, and the daemon frames
            // LMNT's audio as it comes (no resampler delay): an utterance is exactly 3 frames a
            // character, and the next one, when it follows at once, starts right after.
            min_seq = packets[i].seq + 3 * tones::expected(&u.text).chars().count() as u64;
        }
        out.push(found);
    }
    out
}

/// Per utterance flushed within `window`: when `utterance.done` reached the bot minus when
/// the utterance's last audible packet reached the caller (kernel receive time), in ms.
/// Negative means the event ran ahead of the audio. An utterance's packets are those from its
/// first tone packet up to the next utterance's (by sequence number); an utterance whose
/// successor's first tone was not found is left out.
fn done_after_last_tone(
    packets: &[Pkt],
    utts: &[Utt],
    starts: &[Option<usize>],
    window: (Instant, Instant),
) -> Vec<f64> {
    let mut by_seq: Vec<&Pkt> = packets.iter().collect();
    by_seq.sort_unstable_by_key(|p| p.seq);
    let start_seqs: Vec<Option<u64>> = starts.iter().map(|s| s.map(|i| packets[i].seq)).collect();
    let mut out = Vec::new();
    for (u, utt) in utts.iter().enumerate() {
        let (Some(done), Some(first)) = (utt.done_at, start_seqs[u]) else {
            continue;
        };
        if utt.flush_at < window.0 || utt.flush_at > window.1 {
            continue;
        }
        // Bounded by the next utterance's first tone; without one found, not measured.
        let end = match start_seqs.get(u + 1) {
            Some(Some(next)) => *next,
            Some(None) => continue,
            None => u64::MAX,
        };
        let from = by_seq.partition_point(|p| p.seq < first);
        let to = by_seq.partition_point(|p| p.seq < end);
        let last_tone = by_seq[from..to].iter().rev().find(|p| p.audible);
        if let Some(p) = last_tone {
            let ms_after = if done >= p.at {
                ms(done - p.at)
            } else {
                -ms(p.at - done)
            };
            out.push(ms_after);
        }
    }
    out
}

/// A sampled call's audio decoded on the sequence-number grid: (first sequence number, PCM
/// where frame k is packet first + k; a missing packet is concealed).
fn decode_on_seq_grid(log: &RxLog) -> (u64, Vec<i16>) {
    let mut dec =
        audiopus::coder::Decoder::new(audiopus::SampleRate::Hz48000, audiopus::Channels::Mono)
            .expect("opus decoder");
    let first_seq = log.packets.iter().map(|p| p.seq).min().unwrap_or(0);
    let last_seq = log.packets.iter().map(|p| p.seq).max().unwrap_or(0);
    let frames = (last_seq - first_seq + 1) as usize;
    let mut by_seq: Vec<Option<usize>> = vec![None; frames];
    for (i, p) in log.packets.iter().enumerate() {
        by_seq[(p.seq - first_seq) as usize] = Some(i);
    }
    let mut pcm = vec![0i16; frames * 960];
    for (k, slot) in by_seq.iter().enumerate() {
        let packet =
            slot.and_then(|i| audiopus::packet::Packet::try_from(log.payloads[i].as_slice()).ok());
        let out = &mut pcm[k * 960..(k + 1) * 960];
        if let Ok(sig) = audiopus::MutSignals::try_from(out) {
            let _ = dec.decode(packet, sig, false);
        }
    }
    (first_seq, pcm)
}

/// Marks a sampled call's tone-carrying packets (decoded RMS above [`TONE_RMS`]).
fn mark_tones(log: &mut RxLog) {
    if log.payloads.is_empty() {
        return;
    }
    let (first_seq, pcm) = decode_on_seq_grid(log);
    for p in &mut log.packets {
        let k = (p.seq - first_seq) as usize;
        let frame = &pcm[k * 960..(k + 1) * 960];
        let rms = (frame.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 960.0).sqrt();
        p.tone = rms > TONE_RMS;
        p.audible = rms > AUDIBLE_RMS;
    }
}

/// Decodes a sampled call's audio and checks each utterance's text: (exact, checked,
/// mismatches shown).
fn check_text(log: &RxLog, utts: &[Utt], show: &mut Vec<String>) -> (usize, usize) {
    if log.packets.is_empty() || utts.is_empty() {
        return (0, 0);
    }
    let (first_seq, pcm) = decode_on_seq_grid(log);
    let frames = pcm.len() / 960;
    // Utterance u spans from its first tone frame to the next utterance's.
    let starts: Vec<Option<usize>> = utterance_starts(&log.packets, utts)
        .into_iter()
        .map(|i| i.map(|i| (log.packets[i].seq - first_seq) as usize))
        .collect();
    let (mut exact, mut checked) = (0, 0);
    for (u, utt) in utts.iter().enumerate() {
        if utt.done_at.is_none() {
            continue;
        }
        let Some(s) = starts[u] else { continue };
        let e = starts
            .get(u + 1)
            .copied()
            .flatten()
            .unwrap_or(frames)
            .min(frames);
        if e <= s {
            continue;
        }
        checked += 1;
        let got = tones::collapse_spaces(&tones::decode_i16(&pcm[s * 960..e * 960], 48_000));
        let want = tones::collapse_spaces(&tones::expected(&utt.text));
        if got == want {
            exact += 1;
        } else if show.len() < 5 {
            show.push(format!("said {want:?}, heard {got:?}"));
        }
    }
    (exact, checked)
}

/// The whole sampled call decoded as one text against everything the bot said (utterance
/// gaps collapsed): tells a segmentation slip from audio that is missing or out of order.
fn check_whole_call(log: &RxLog, utts: &[Utt]) -> bool {
    let mut dec =
        audiopus::coder::Decoder::new(audiopus::SampleRate::Hz48000, audiopus::Channels::Mono)
            .expect("opus decoder");
    let mut order: Vec<usize> = (0..log.packets.len()).collect();
    order.sort_by_key(|&i| log.packets[i].seq);
    let mut pcm = vec![0i16; order.len() * 960];
    for (k, &i) in order.iter().enumerate() {
        let out = &mut pcm[k * 960..(k + 1) * 960];
        let packet = audiopus::packet::Packet::try_from(log.payloads[i].as_slice()).ok();
        if let Ok(sig) = audiopus::MutSignals::try_from(out) {
            let _ = dec.decode(packet, sig, false);
        }
    }
    let said: Vec<String> = utts
        .iter()
        .filter(|u| u.done_at.is_some())
        .map(|u| tones::expected(&u.text))
        .collect();
    // Spaces are not compared: between two utterances the bot's pause may be shorter than a
    // space (the per-utterance check covers the words within each).
    let unspaced = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    let heard = unspaced(&tones::decode_i16(&pcm, 48_000));
    let said = unspaced(&said.concat());
    // The call hangs up mid-utterance: what follows the finished utterances must be the
    // start of the one in progress (its last character possibly cut, so not compared).
    let Some(rest) = heard.strip_prefix(&said) else {
        return false;
    };
    let in_progress = utts
        .iter()
        .find(|u| u.done_at.is_none())
        .map(|u| unspaced(&tones::expected(&u.text)))
        .unwrap_or_default();
    let whole: Vec<char> = rest.chars().collect();
    let complete: String = whole[..whole.len().saturating_sub(1)].iter().collect();
    in_progress.starts_with(&complete)
}

/// The caller's 20 ms frame, encoded as a phone or browser sends speech: VoIP, signal voice,
/// 32 kbps (browsers' default), so SILK or hybrid mode. A quiet voiced buzz (300 Hz and its
/// harmonics); the frame is taken once the encoder has settled (its 25th), then repeated.
fn quiet_tone_frame() -> Arc<[u8]> {
    let mut enc = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Mono,
        audiopus::Application::Voip,
    )
    .expect("opus encoder");
    enc.set_signal(audiopus::Signal::Voice).expect("signal");
    enc.set_bitrate(audiopus::Bitrate::BitsPerSecond(32_000))
        .expect("bitrate");
    let tau = 2.0 * std::f64::consts::PI;
    let mut out = vec![0u8; 400];
    let mut n = 0;
    for frame in 0..25 {
        let pcm: Vec<i16> = (0..960)
            .map(|i| {
                let t = (frame * 960 + i) as f64 / 48_000.0;
                let v: f64 = (1..=10)
                    .map(|h| (tau * 300.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (600.0 * v) as i16
            })
            .collect();
        n = enc.encode(&pcm, &mut out).expect("encode");
    }
    out.truncate(n);
    out.into()
}

// ---------------------------------------------------------------------------------------

fn main() {
    let Some(args) = parse_args() else { return };
    // Processes started here (killed on drop).
    let mut own: Option<(local_tts::Process, daemon::Daemon)> = None;
    let (base, pid) = match &args.daemon_url {
        Some(url) => (url.trim_end_matches('/').to_owned(), args.daemon_pid),
        None => {
            if !std::path::Path::new(BIN).exists() {
                eprintln!("loadtest: {BIN} is missing: run `cargo build --release` first");
                std::process::exit(1);
            }
            let tts = local_tts::spawn(BIN, &[], &[], std::process::Stdio::null());
            let overload = args.overload_late_ms.to_string();
            let d = daemon::Daemon::start(
                &tts.base_url,
                LOAD_CONFIG,
                &[
                    ("RUST_LOG", "warn"),
                    ("LMNT_BRIDGE_OVERLOAD_LATE_MS", &overload),
                ],
            );
            let base = d.base();
            let pid = d.pid();
            own = Some((tts, d));
            (base, Some(pid))
        }
    };
    let host = base
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("--daemon-url must be http://HOST:PORT, got {base}"))
        .to_owned();
    let host_ip: SocketAddr = host.parse().expect("daemon URL host must be IP:PORT");
    assert!(
        host_ip.ip().is_loopback(),
        "the load tool only talks to 127.0.0.0/8"
    );
    let pid_s = pid.map(|p| p.to_string());

    let total = args.churn.unwrap_or(args.calls);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let local = sock.local_addr().expect("addr");
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        dtls_connected: (0..total).map(|_| AtomicU64::new(0)).collect(),
        first_rtp: (0..total).map(|_| AtomicU64::new(0)).collect(),
    });
    let (tx, rx) = mpsc::channel();
    let frame = quiet_tone_frame();
    let callers = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("callers".into())
            .spawn(move || callers_thread(sock, rx, shared, frame))
            .expect("callers thread")
    };
    let ctx = Arc::new(Ctx {
        host: host.clone(),
        local,
        cmds: Mutex::new(tx),
        shared: shared.clone(),
        sample_every: args.sample_every,
        silent: args.silent,
        stop: AtomicBool::new(false),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    if let Some(total) = args.churn {
        run_churn(&rt, &ctx, total, args.concurrency, &pid_s);
    } else {
        run_steady(&rt, &ctx, &args, &pid_s, callers_join(callers, &ctx));
        drop(own);
        return;
    }
    let _ = ctx.cmds.lock().unwrap().send(Cmd::Stop);
    let _ = callers.join();
    drop(own);
}

/// Wraps the join so that `run_steady` can stop the callers' thread and collect its logs.
fn callers_join(
    h: std::thread::JoinHandle<HashMap<usize, RxLog>>,
    ctx: &Arc<Ctx>,
) -> impl FnOnce() -> HashMap<usize, RxLog> {
    let ctx = ctx.clone();
    move || {
        let _ = ctx.cmds.lock().unwrap().send(Cmd::Stop);
        h.join().expect("callers thread")
    }
}

fn run_steady(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<Ctx>,
    args: &Args,
    pid: &Option<String>,
    finish: impl FnOnce() -> HashMap<usize, RxLog>,
) {
    let n = args.calls;
    let rss_before = pid.as_deref().map(rss_bytes).unwrap_or(0);
    let setup_started = Instant::now();
    let (outs, window, cpu_d, cpu_self, rss_after, late, underrun) = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(10));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let place_at = setup_started + args.ramp.mul_f64(i as f64 / n as f64);
                tokio::spawn(steady_call(ctx.clone(), i, gate.clone(), place_at))
            })
            .collect();
        // Every call up (first RTP at the caller) or failed (refused, say), or 60 s after the
        // ramp.
        let deadline = Instant::now() + args.ramp + Duration::from_secs(60);
        while Instant::now() < deadline
            && (0..n).any(|i| {
                ctx.shared.first_rtp[i].load(Ordering::Relaxed) == 0 && !handles[i].is_finished()
            })
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let up = (0..n)
            .filter(|&i| ctx.shared.first_rtp[i].load(Ordering::Relaxed) != 0)
            .count();
        println!(
            "loadtest: {up}/{n} calls up after {:.1} s; measuring {:.0} s",
            setup_started.elapsed().as_secs_f64(),
            args.seconds
        );
        tokio::time::sleep(Duration::from_secs(1)).await; // first utterances under way
        let w0 = Instant::now();
        let c0 = pid.as_deref().map(cpu_time).unwrap_or_default();
        let s0 = cpu_time("self");
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        let w1 = Instant::now();
        let cpu_d = cpu_since(pid.as_deref(), c0);
        let cpu_self = cpu_time("self").saturating_sub(s0);
        let rss_after = pid.as_deref().map(rss_bytes).unwrap_or(0);
        let calls = http(&ctx.host, "GET", "/v1/calls", None, b"")
            .await
            .ok()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .unwrap_or_default();
        let late = sum_key(&calls, "late_frames");
        let underrun = sum_key(&calls, "underrun_frames");
        ctx.stop.store(true, Ordering::Relaxed);
        let mut outs = Vec::new();
        for h in handles {
            outs.push(h.await.unwrap_or_default());
        }
        for o in &outs {
            if let Some(id) = &o.id {
                let _ = http(&ctx.host, "DELETE", &format!("/v1/calls/{id}"), None, b"").await;
            }
        }
        (outs, (w0, w1), cpu_d, cpu_self, rss_after, late, underrun)
    });
    let mut logs = finish();
    // Which packets carry a tone is read from the decoded audio of the sampled calls: the
    // tone figures below (first tone, last tone against `utterance.done`) come from those.
    for log in logs.values_mut() {
        mark_tones(log);
    }
    let (w0, w1) = window;
    let wall = (w1 - w0).as_secs_f64();
    let failed: Vec<&String> = outs.iter().filter_map(|o| o.error.as_ref()).collect();
    let up = (0..n)
        .filter(|&i| logs.get(&i).is_some_and(|l| !l.packets.is_empty()))
        .count();

    let (mut dev, mut flush_audio, mut flush_started) = (Vec::new(), Vec::new(), Vec::new());
    let mut done_after_audio = Vec::new();
    let (mut lost, mut received, mut disc) = (0u64, 0u64, 0u64);
    let (mut exact, mut checked) = (0, 0);
    let (mut whole_exact, mut whole_calls) = (0, 0);
    let mut mismatches = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let Some(log) = logs.get(&i) else { continue };
        let p = &log.packets;
        for w in p.windows(2) {
            if w[0].at >= w0 && w[1].at <= w1 {
                dev.push((ms(w[1].at.saturating_duration_since(w[0].at)) - 20.0).abs());
            }
        }
        let mut seqs: Vec<(u64, u32)> = p.iter().map(|x| (x.seq, x.ts)).collect();
        seqs.sort_unstable();
        seqs.dedup_by_key(|x| x.0);
        if let (Some(a), Some(b)) = (seqs.first(), seqs.last()) {
            lost += (b.0 - a.0 + 1) - seqs.len() as u64;
            received += seqs.len() as u64;
        }
        disc += seqs
            .windows(2)
            .filter(|w| w[1].0 == w[0].0 + 1 && w[1].1.wrapping_sub(w[0].1) != 960)
            .count() as u64;
        let starts = utterance_starts(p, &o.utts);
        done_after_audio.extend(done_after_last_tone(p, &o.utts, &starts, (w0, w1)));
        for (u, start) in o.utts.iter().zip(starts) {
            if u.flush_at < w0 || u.flush_at > w1 {
                continue;
            }
            if let Some(s) = u.started_at {
                flush_started.push(ms(s - u.flush_at));
            }
            if let Some(k) = start {
                flush_audio.push(ms(p[k].at.saturating_duration_since(u.flush_at)));
            }
        }
        if !log.payloads.is_empty() {
            let (e, c) = check_text(log, &o.utts, &mut mismatches);
            exact += e;
            checked += c;
            whole_calls += 1;
            whole_exact += usize::from(check_whole_call(log, &o.utts));
        }
    }
    let utts: usize = outs.iter().map(|o| o.utts.len()).sum();
    println!("loadtest: {n} calls, {wall:.1} s measured, tones voice, str0m callers on loopback");
    let overloaded = failed
        .iter()
        .filter(|f| f.contains("503") && f.contains("overloaded"))
        .count();
    println!(
        "  calls up {up} of {n}; failed {} (of which refused 503 overloaded: {overloaded})",
        failed.len()
    );
    for f in failed.iter().take(5) {
        println!("    failure: {f}");
    }
    // Costs are per call admitted: past capacity, the refused ones cost next to nothing.
    let per_call = up.max(1) as f64;
    match pid {
        Some(_) => {
            let cpu_pct = 100.0 * cpu_d.as_secs_f64() / wall;
            println!(
                "  daemon CPU {:.1} % of one core; per call up {:.3} %",
                cpu_pct,
                cpu_pct / per_call
            );
            println!(
                "  daemon RSS {:.1} MB -> {:.1} MB; per call up {:.0} KB",
                rss_before as f64 / 1e6,
                rss_after as f64 / 1e6,
                rss_after.saturating_sub(rss_before) as f64 / 1e3 / per_call
            );
        }
        None => println!("  daemon CPU/RSS: n/a (pass --daemon-pid)"),
    }
    line_p("inter-arrival |gap - 20 ms| (kernel rx time)", &mut dev);
    println!("  packets received {received}, lost (sequence gaps) {lost}");
    println!("  RTP timestamp discontinuities (step != 960 at seq+1) {disc}");
    println!(
        "  daemon late frames {late}, underrun frames {underrun} (GET /v1/calls before hang-up)"
    );
    line_p(
        "flush -> first tone RTP packet at the caller (sampled calls)",
        &mut flush_audio,
    );
    line_p("flush -> utterance.started at the bot", &mut flush_started);
    line_p_signed(
        "utterance.done at the bot - its last audible packet at the caller (sampled calls; >= 0: never early)",
        &mut done_after_audio,
    );
    ctx.shared.print_setup(
        outs.iter()
            .enumerate()
            .filter_map(|(i, o)| Some((i, o.post_at?))),
    );
    println!(
        "  exact text: {exact} of {checked} sampled utterances (every {}th call; {utts} utterances in all)",
        ctx.sample_every
    );
    println!(
        "  exact text, whole call (its finished utterances' characters in order, then the start of the one cut by the hang-up): {whole_exact} of {whole_calls} sampled calls"
    );
    for m in &mismatches {
        println!("    mismatch: {m}");
    }
    let self_pct = 100.0 * cpu_self.as_secs_f64() / wall;
    println!(
        "  load client CPU {:.1} % of one core; per call up {:.3} %",
        self_pct,
        self_pct / per_call
    );
    // The client does the same work per call whatever the daemon does, so this ratio cancels
    // the machine's own drift in speed (a shared VM's raw figures move by a third within an
    // hour): the figure to compare two daemon builds by, in alternating runs.
    if pid.is_some() && cpu_self > Duration::ZERO {
        println!(
            "  daemon CPU / load client CPU {:.2}",
            cpu_d.as_secs_f64() / cpu_self.as_secs_f64()
        );
    }
}

fn run_churn(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<Ctx>,
    total: usize,
    concurrency: usize,
    pid: &Option<String>,
) {
    let started = Instant::now();
    let c0 = pid.as_deref().map(cpu_time).unwrap_or_default();
    let s0 = cpu_time("self");
    // The daemon's RSS once the first `concurrency` calls have ended: the baseline the end
    // of the run is compared with (allocator pools and caches warmed, no call leaked yet).
    let rss_warm = Arc::new(AtomicU64::new(0));
    let (outs, remaining, active) = rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let ctx = ctx.clone();
                let (next, done, rss_warm, pid) =
                    (next.clone(), done.clone(), rss_warm.clone(), pid.clone());
                tokio::spawn(async move {
                    let mut outs = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return outs;
                        }
                        outs.push((i, churn_call(ctx.clone(), i).await));
                        if done.fetch_add(1, Ordering::Relaxed) + 1 == concurrency {
                            let rss = pid.as_deref().map(rss_bytes).unwrap_or(0);
                            rss_warm.store(rss, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let mut outs = Vec::new();
        for w in workers {
            outs.extend(w.await.unwrap_or_default());
        }
        // The daemon's registry should empty out.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut remaining = usize::MAX;
        while Instant::now() < deadline {
            remaining = http(&ctx.host, "GET", "/v1/calls", None, b"")
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .and_then(|v| v["calls"].as_array().map(|a| a.len()))
                .unwrap_or(usize::MAX);
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The live-call gauge, which must be back to 0.
        let active = http(&ctx.host, "GET", "/metrics", None, b"")
            .await
            .ok()
            .and_then(|r| {
                let text = String::from_utf8_lossy(&r.body).into_owned();
                text.lines()
                    .find_map(|l| l.strip_prefix("lmnt_bridge_calls_active "))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        (outs, remaining, active)
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu_d = cpu_since(pid.as_deref(), c0);
    let cpu_self = cpu_time("self").saturating_sub(s0);
    let ok = outs.iter().filter(|(_, o)| o.error.is_none()).count();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for (_, o) in &outs {
        if let Some(e) = &o.error {
            *errors.entry(e.chars().take(80).collect()).or_default() += 1;
        }
    }
    let mut flush_started = Vec::new();
    for (_, o) in &outs {
        for u in &o.utts {
            if let Some(s) = u.started_at {
                flush_started.push(ms(s - u.flush_at));
            }
        }
    }
    println!(
        "loadtest churn: {total} calls, {concurrency} at a time, {wall:.1} s ({:.1} calls/s)",
        total as f64 / wall
    );
    println!(
        "  succeeded {ok} (created, first RTP, one utterance done, DELETE 204), failed {}",
        total - ok
    );
    for (e, k) in &errors {
        println!("    {k} x {e}");
    }
    ctx.shared
        .print_setup(outs.iter().filter_map(|(i, o)| Some((*i, o.post_at?))));
    line_p("flush -> utterance.started at the bot", &mut flush_started);
    println!(
        "  GET /v1/calls at the end: {} calls",
        if remaining == usize::MAX {
            "unknown".to_owned()
        } else {
            remaining.to_string()
        }
    );
    println!("  lmnt_bridge_calls_active at the end: {active}");
    if pid.is_some() {
        let (warm, end) = (
            rss_warm.load(Ordering::Relaxed) as f64,
            pid.as_deref().map(rss_bytes).unwrap_or(0) as f64,
        );
        println!(
            "  daemon CPU {:.1} % of one core over the run; RSS after the first {concurrency} calls \
             {:.1} MB, at the end {:.1} MB ({:+.1} %)",
            100.0 * cpu_d.as_secs_f64() / wall,
            warm / 1e6,
            end / 1e6,
            100.0 * (end - warm) / warm.max(1.0)
        );
    }
    println!(
        "  load client CPU {:.1} % of one core over the run",
        100.0 * cpu_self.as_secs_f64() / wall
    );
}

/// Sets the `SOL_SOCKET` integer option `option` on our own socket `fd`; true when it took.
fn set_socket_option(fd: std::os::fd::RawFd, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt reads one c_int from a live local for the length we pass.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        ) == 0
    }
}

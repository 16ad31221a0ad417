//! A full-duplex LMNT speech-session client.
//!
//! [`connect`] opens the websocket, sends the init frame and returns a [`SessionSender`] and a
//! [`SessionEvents`]. Two tasks own the socket: a writer (commands from the sender, pings) and
//! a reader (frames to events, liveness deadline). Sending never waits on receiving: sender
//! methods only queue, and the writer never reads.
//!
//! Nonces: the caller owns them. [`SessionSender::send_flush`] and
//! [`SessionSender::send_reset`] send the nonce they are given, and the matching
//! `FlushComplete`/`ResetComplete` carries it back; the client keeps no counter. LMNT's SDKs
//! number flushes and resets together from 1 on every session; callers that want to look
//! like them do the same.
//!
//! Backpressure: the reader hands events to the consumer over a queue of
//! [`EVENT_QUEUE_CAPACITY`] events and waits for room before it reads the next frame. While
//! the consumer does not call [`SessionEvents::recv`], the reader does not read the socket:
//! tungstenite's read buffer and the kernel's receive window fill, and TCP flow control
//! stops the server. Time the reader spends waiting for room is not LMNT's silence: the
//! liveness clock is paused meanwhile (see [`crate::lmnt::liveness`]). While it waits, the
//! reader does not answer the server's websocket pings either (tungstenite answers them as
//! it reads); a server that closes on a missed pong does so while the consumer lags.
//!
//! Resources: the tasks hold the socket halves. Audio LMNT sent and the consumer has not
//! taken is held by this client in at most [`EVENT_QUEUE_CAPACITY`] + 1 events plus
//! tungstenite's read buffer, however fast the server sends; the rest stays in the socket.
//! An audio event is a slice of a tungstenite read buffer and keeps that buffer's allocation
//! alive until the consumer drops it: about 128 KiB, or the message's size when larger (at
//! most [`MAX_MESSAGE_BYTES`]).
//!
//! The other two channels are unbounded, and grow only with what we send, never with what
//! LMNT sends. Commands (sender to writer) are the caller's own text and requests; when LMNT
//! stops reading they wait here, as many as the caller queued, so the caller, which keeps
//! that text anyway until LMNT acknowledges it, is where such a limit belongs. Notes of the
//! flushes, resets and finishes written (writer to reader, for the liveness clock) are one
//! per such command, and the reader takes them even while it waits for room.
//!
//! The session ends (tasks return, socket dropped) when the server closes, on a terminal
//! error, after [`SessionSender::close`], or when the [`SessionEvents`] is dropped.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, trace, warn};
use url::Url;

use crate::lmnt::error::LmntError;
use crate::lmnt::liveness::Liveness;
use crate::lmnt::protocol::{
    container_signature, encode_init, parse_server_frame, AudioFormat, ClientCommand, InitParams,
    ServerFrame, Timestamp,
};
use crate::secret::Secret;

/// Largest message accepted from the server: 1 MiB, the limit of LMNT's own Python SDK, so a
/// server that works with the SDK works with us and a runaway frame cannot exhaust memory.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The session socket's read buffer. tungstenite zero-fills its read buffer up to this size
/// before every read (its default, 128 KiB, cost a 128 KiB memset per audio chunk); 16 KiB
/// holds an LMNT audio chunk (about 100 ms of 24 kHz PCM is 4.8 KB) in one read.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Events the reader may queue for a consumer that has not asked for them yet: a handful,
/// because this queue is the only slack between the consumer and LMNT's socket. When it is
/// full the reader stops reading and TCP flow control holds LMNT back; a larger queue would
/// only hold more unread audio in memory (each event at most one read-buffer allocation,
/// see the module docs; at the chunk sizes LMNT and local-tts send, 20 to 100 ms of audio,
/// the audio itself is a few KiB an event). More than one, so the reader does not stop and
/// start for every frame.
pub const EVENT_QUEUE_CAPACITY: usize = 4;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to open a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The session URL (see [`crate::lmnt::protocol::session_url`]).
    pub url: Url,
    /// Sent only inside the init frame; never logged.
    pub api_key: Secret,
    pub voice: String,
    pub format: AudioFormat,
    /// 8000, 16000 or 24000.
    pub sample_rate: u32,
    pub language: Option<String>,
    pub return_timestamps: bool,
    /// TCP + TLS + websocket handshake must finish within this.
    pub connect_timeout: Duration,
    /// A websocket ping is sent this often.
    pub ping_interval: Duration,
    /// See [`crate::lmnt::liveness`].
    pub liveness_timeout: Duration,
}

impl SessionOptions {
    /// Options with the defaults LMNT documents (PCM s16le at 24 kHz, no timestamps) and
    /// timeouts of 5 s connect, 10 s ping, 5 s liveness.
    pub fn new(url: Url, api_key: Secret, voice: impl Into<String>) -> Self {
        SessionOptions {
            url,
            api_key,
            voice: voice.into(),
            format: AudioFormat::PcmS16le,
            sample_rate: 24_000,
            language: None,
            return_timestamps: false,
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
            liveness_timeout: Duration::from_secs(5),
        }
    }
}

/// What the session reports, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The server confirmed the session.
    Ready { request_id: Option<String> },
    /// One binary frame of audio in the requested format (may split samples).
    Audio(Bytes),
    /// Timestamps for the audio frame before it.
    Timestamps(Vec<Timestamp>),
    /// All audio of the flush with this nonce has arrived.
    FlushComplete { nonce: u64 },
    /// The reset with this nonce is done; audio received before this event belongs to text
    /// sent before the reset.
    ResetComplete { nonce: u64 },
    /// A failure. `Server` errors are followed by `Closed`; every other error ends the
    /// session by itself.
    Error(LmntError),
    /// The websocket closed (after `finish`, `close`, or a server error). Always last.
    Closed { code: Option<u16>, reason: String },
}

impl SessionEvent {
    fn is_terminal(&self) -> bool {
        match self {
            SessionEvent::Closed { .. } => true,
            SessionEvent::Error(e) => !matches!(e, LmntError::Server { .. }),
            _ => false,
        }
    }
}

enum Outgoing {
    Command(ClientCommand),
    /// Send a close frame (code 1000 unless given) and stop writing.
    Close(Option<CloseFrame>),
    /// The peer closed: flush tungstenite's queued close reply and stop writing.
    Drain,
}

/// What the writer tells the reader, so the reader's liveness clock knows what is owed.
enum Sent {
    Flush(u64),
    Reset(u64),
    Finish,
}

/// The sending half. Clone freely; every method only queues and never blocks.
#[derive(Clone)]
pub struct SessionSender {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl SessionSender {
    fn push(&self, cmd: ClientCommand) -> Result<(), LmntError> {
        self.tx
            .send(Outgoing::Command(cmd))
            .map_err(|_| LmntError::Closed)
    }

    /// Appends text to the session. Errs with `Closed` once the session has ended.
    pub fn send_text(&self, text: &str) -> Result<(), LmntError> {
        self.push(ClientCommand::Text {
            text: text.to_owned(),
        })
    }

    /// Asks the server to speak all text sent so far; its `FlushComplete` carries `nonce`.
    /// The caller chooses the nonce (see the module docs); a nonce still outstanding on this
    /// session makes the acknowledgements ambiguous.
    pub fn send_flush(&self, nonce: u64) -> Result<(), LmntError> {
        self.push(ClientCommand::Flush { nonce })
    }

    /// Asks the server to drop buffered text; its `ResetComplete` carries `nonce`.
    pub fn send_reset(&self, nonce: u64) -> Result<(), LmntError> {
        self.push(ClientCommand::Reset { nonce })
    }

    /// Asks the server to speak the rest and then close the session.
    pub fn send_finish(&self) -> Result<(), LmntError> {
        self.push(ClientCommand::Finish)
    }

    /// Closes the websocket at once (code 1000); audio in flight is lost. Idempotent.
    pub fn close(&self) {
        let _ = self.tx.send(Outgoing::Close(None));
    }
}

/// The receiving half. Not calling [`SessionEvents::recv`] holds the server back (see the
/// module docs); dropping it ends the session.
pub struct SessionEvents {
    rx: mpsc::Receiver<SessionEvent>,
    done: bool,
}

impl SessionEvents {
    /// The next event; None after `Closed` or a session-ending `Error` was delivered.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        match &ev {
            Some(e) if !e.is_terminal() => {}
            _ => self.done = true,
        }
        ev
    }
}

fn map_connect_error(e: tungstenite::Error) -> LmntError {
    match e {
        tungstenite::Error::Http(resp) => LmntError::HandshakeRejected {
            status: resp.status().as_u16(),
        },
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            LmntError::ConnectRefused(io.to_string())
        }
        tungstenite::Error::Url(u) => LmntError::Url(u.to_string()),
        other => LmntError::Connect(other.to_string()),
    }
}

/// Opens a session: connects (within `connect_timeout`), sends the init frame, and starts the
/// reader and writer tasks. Does not wait for `ready`: text may be sent at once.
pub async fn connect(opts: &SessionOptions) -> Result<(SessionSender, SessionEvents), LmntError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES);
    // Nagle off: small command frames (flush) must leave at once, not after a delayed ACK.
    let disable_nagle = true;
    let fut = tokio_tungstenite::connect_async_with_config(
        opts.url.as_str(),
        Some(config),
        disable_nagle,
    );
    let mut ws = match tokio::time::timeout(opts.connect_timeout, fut).await {
        Err(_) => return Err(LmntError::ConnectTimeout(opts.connect_timeout)),
        Ok(Err(e)) => return Err(map_connect_error(e)),
        Ok(Ok((ws, _response))) => ws,
    };
    debug!(url = %opts.url, voice = %opts.voice, format = %opts.format, "lmnt session connected");
    let init = encode_init(&InitParams {
        api_key: &opts.api_key,
        voice: &opts.voice,
        format: opts.format,
        sample_rate: opts.sample_rate,
        language: opts.language.as_deref(),
        return_timestamps: opts.return_timestamps,
    });
    ws.send(Message::text(init.into_text()))
        .await
        .map_err(|e| LmntError::Connect(e.to_string()))?;

    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE_CAPACITY);
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(sink, out_rx, sent_tx, opts.ping_interval));
    tokio::spawn(reader(
        stream,
        ev_tx,
        sent_rx,
        out_tx.clone(),
        Liveness::new(opts.liveness_timeout),
        opts.format,
    ));
    Ok((
        SessionSender { tx: out_tx },
        SessionEvents {
            rx: ev_rx,
            done: false,
        },
    ))
}

async fn writer(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    sent: mpsc::UnboundedSender<(Instant, Sent)>,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let out = tokio::select! {
            out = rx.recv() => out,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match out {
            // Every sender is gone: nothing more will be written; the reader goes on.
            None => return,
            Some(Outgoing::Close(frame)) => {
                let frame = frame.unwrap_or(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                });
                let _ = sink.send(Message::Close(Some(frame))).await;
                let _ = sink.close().await;
                return;
            }
            Some(Outgoing::Drain) => {
                let _ = sink.close().await;
                return;
            }
            Some(Outgoing::Command(cmd)) => {
                let note = match &cmd {
                    ClientCommand::Flush { nonce } => Some(Sent::Flush(*nonce)),
                    ClientCommand::Reset { nonce } => Some(Sent::Reset(*nonce)),
                    ClientCommand::Finish => Some(Sent::Finish),
                    ClientCommand::Text { .. } => None,
                };
                if let Err(e) = sink.send(Message::text(cmd.encode())).await {
                    debug!(error = %e, "lmnt session write failed");
                    return;
                }
                if let Some(note) = note {
                    let _ = sent.send((Instant::now(), note));
                }
            }
        }
    }
}

/// Applies one note of the writer to the liveness clock; false once the writer is gone.
fn apply_note(liveness: &mut Liveness, note: Option<(Instant, Sent)>) -> bool {
    match note {
        Some((at, Sent::Flush(n))) => liveness.on_flush_sent(at.into_std(), n),
        Some((at, Sent::Reset(n))) => liveness.on_reset_sent(at.into_std(), n),
        Some((at, Sent::Finish)) => liveness.on_finish_sent(at.into_std()),
        None => return false,
    }
    true
}

async fn reader<S>(
    mut stream: S,
    events: mpsc::Sender<SessionEvent>,
    mut sent: mpsc::UnboundedReceiver<(Instant, Sent)>,
    out: mpsc::UnboundedSender<Outgoing>,
    mut liveness: Liveness,
    format: AudioFormat,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut sent_open = true;
    // The session's first audio frame is checked for a container's signature (raw PCM only).
    let mut check_format = matches!(format, AudioFormat::PcmS16le | AudioFormat::PcmF32le);
    loop {
        let deadline = liveness.deadline().map(Instant::from_std);
        let msg = tokio::select! {
            biased;
            note = sent.recv(), if sent_open => {
                sent_open = apply_note(&mut liveness, note);
                continue;
            }
            msg = stream.next() => msg,
            _ = sleep_until_opt(deadline) => {
                if liveness.expired(Instant::now().into_std()) {
                    warn!(timeout = ?liveness.timeout(), "lmnt session liveness deadline passed");
                    let _ = out.send(Outgoing::Close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "liveness timeout".into(),
                    })));
                    let error = SessionEvent::Error(LmntError::Liveness(liveness.timeout()));
                    deliver(&events, error, &mut sent, &mut sent_open, &mut liveness).await;
                    return;
                }
                continue;
            }
            _ = events.closed() => {
                // Nobody listens any more: end the session.
                let _ = out.send(Outgoing::Close(None));
                return;
            }
        };
        let now = Instant::now().into_std();
        let event = match msg {
            None | Some(Err(tungstenite::Error::ConnectionClosed)) => SessionEvent::Closed {
                code: None,
                reason: String::new(),
            },
            Some(Err(tungstenite::Error::Capacity(_))) => {
                SessionEvent::Error(LmntError::FrameTooLarge {
                    limit: MAX_MESSAGE_BYTES,
                })
            }
            Some(Err(e)) => SessionEvent::Error(LmntError::Transport(e.to_string())),
            Some(Ok(Message::Binary(data))) => {
                liveness.on_progress(now);
                let first = std::mem::take(&mut check_format);
                match container_signature(&data).filter(|_| first) {
                    Some(found) => SessionEvent::Error(LmntError::AudioFormat {
                        expected: format,
                        found,
                    }),
                    None => SessionEvent::Audio(data),
                }
            }
            Some(Ok(Message::Text(text))) => match parse_server_frame(text.as_str()) {
                Ok(ServerFrame::Ready { request_id }) => SessionEvent::Ready { request_id },
                Ok(ServerFrame::Timestamps(ts)) => {
                    liveness.on_progress(now);
                    SessionEvent::Timestamps(ts)
                }
                Ok(ServerFrame::FlushComplete { nonce }) => {
                    liveness.on_flush_complete(now, nonce);
                    SessionEvent::FlushComplete { nonce }
                }
                Ok(ServerFrame::ResetComplete { nonce }) => {
                    liveness.on_reset_complete(now, nonce);
                    SessionEvent::ResetComplete { nonce }
                }
                Ok(ServerFrame::Error { slug, message, .. }) => {
                    SessionEvent::Error(LmntError::Server { slug, message })
                }
                Ok(ServerFrame::Unknown { kind }) => {
                    debug!(kind = %kind, "ignoring lmnt frame of unknown type");
                    continue;
                }
                Err(e) => SessionEvent::Error(LmntError::Protocol(e.to_string())),
            },
            Some(Ok(Message::Close(frame))) => {
                let _ = out.send(Outgoing::Drain);
                SessionEvent::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
        };
        trace!(event = event_kind(&event), "lmnt session event");
        let terminal = event.is_terminal();
        let violation = match &event {
            SessionEvent::Error(LmntError::Protocol(_) | LmntError::AudioFormat { .. }) => {
                Some((CloseCode::Protocol, "protocol violation"))
            }
            SessionEvent::Error(LmntError::FrameTooLarge { .. }) => {
                Some((CloseCode::Size, "message too large"))
            }
            _ => None,
        };
        if let Some((code, reason)) = violation {
            let _ = out.send(Outgoing::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })));
        }
        let delivered = deliver(&events, event, &mut sent, &mut sent_open, &mut liveness).await;
        if !delivered {
            // Nobody listens any more: end the session.
            let _ = out.send(Outgoing::Close(None));
            return;
        }
        if terminal {
            return;
        }
    }
}

/// Hands `event` to the consumer, waiting for room in the queue without reading the socket
/// (backpressure) and with the liveness clock paused meanwhile; the writer's notes are taken
/// while waiting. False when the consumer is gone.
async fn deliver(
    events: &mpsc::Sender<SessionEvent>,
    event: SessionEvent,
    sent: &mut mpsc::UnboundedReceiver<(Instant, Sent)>,
    sent_open: &mut bool,
    liveness: &mut Liveness,
) -> bool {
    let event = match events.try_send(event) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(event)) => event,
    };
    trace!("lmnt session consumer lags; not reading the socket");
    liveness.on_paused(Instant::now().into_std());
    loop {
        tokio::select! {
            biased;
            note = sent.recv(), if *sent_open => {
                *sent_open = apply_note(liveness, note);
            }
            permit = events.reserve() => {
                liveness.on_resumed(Instant::now().into_std());
                return match permit {
                    Ok(permit) => {
                        permit.send(event);
                        true
                    }
                    Err(_) => false,
                };
            }
        }
    }
}

fn event_kind(e: &SessionEvent) -> &'static str {
    match e {
        SessionEvent::Ready { .. } => "ready",
        SessionEvent::Audio(_) => "audio",
        SessionEvent::Timestamps(_) => "timestamps",
        SessionEvent::FlushComplete { .. } => "flush_complete",
        SessionEvent::ResetComplete { .. } => "reset_complete",
        SessionEvent::Error(_) => "error",
        SessionEvent::Closed { .. } => "closed",
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    type Frames = Pin<Box<dyn Stream<Item = Result<Message, tungstenite::Error>> + Send>>;

    /// A reader on a scripted socket, in virtual time.
    struct Harness {
        /// What the "server" sends.
        server: mpsc::UnboundedSender<Result<Message, tungstenite::Error>>,
        /// Frames the reader has taken from the socket.
        taken: Arc<AtomicUsize>,
        /// The writer's notes to the reader.
        notes: mpsc::UnboundedSender<(Instant, Sent)>,
        /// What the reader asks the writer to do.
        out: mpsc::UnboundedReceiver<Outgoing>,
        events: SessionEvents,
    }

    fn start(liveness_timeout: Duration) -> Harness {
        let (server, socket) = mpsc::unbounded_channel();
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let stream: Frames = Box::pin(
            futures_util::stream::unfold(socket, |mut socket| async move {
                socket.recv().await.map(|frame| (frame, socket))
            })
            .inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE_CAPACITY);
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (out_tx, out) = mpsc::unbounded_channel();
        tokio::spawn(reader(
            stream,
            ev_tx,
            notes_rx,
            out_tx,
            Liveness::new(liveness_timeout),
            AudioFormat::PcmS16le,
        ));
        Harness {
            server,
            taken,
            notes,
            out,
            events: SessionEvents {
                rx: ev_rx,
                done: false,
            },
        }
    }

    fn audio(i: usize) -> Result<Message, tungstenite::Error> {
        Ok(Message::binary(vec![i as u8; 960]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_does_not_read_stops_the_reader_without_tripping_liveness() {
        const T: Duration = Duration::from_secs(1);
        let mut h = start(T);
        h.notes.send((Instant::now(), Sent::Flush(1))).unwrap();
        let sent = 50;
        for i in 0..sent {
            h.server.send(audio(i)).unwrap();
        }
        // The consumer does not read for a minute, 60 liveness timeouts.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            h.taken.load(Ordering::SeqCst),
            EVENT_QUEUE_CAPACITY + 1,
            "the reader stops reading once the queue is full (and it holds one event)"
        );
        assert!(
            h.out.try_recv().is_err(),
            "no close while we were not reading"
        );
        for i in 0..sent {
            assert_eq!(
                h.events.recv().await,
                Some(SessionEvent::Audio(Bytes::from(vec![i as u8; 960])))
            );
        }
        assert_eq!(h.taken.load(Ordering::SeqCst), sent);
        // Now LMNT is silent while the flush is owed: that is a liveness failure.
        let silent_from = Instant::now();
        assert_eq!(
            h.events.recv().await,
            Some(SessionEvent::Error(LmntError::Liveness(T)))
        );
        assert_eq!(silent_from.elapsed(), T);
        assert!(matches!(h.out.recv().await, Some(Outgoing::Close(Some(_)))));
        assert_eq!(h.events.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_resumes_where_it_stood_when_the_reader_stopped() {
        const T: Duration = Duration::from_secs(1);
        let mut h = start(T);
        h.notes.send((Instant::now(), Sent::Flush(1))).unwrap();
        // Exactly enough audio to stop the reader; LMNT sends nothing after it.
        for i in 0..=EVENT_QUEUE_CAPACITY {
            h.server.send(audio(i)).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        // A flush written while the reader waits is noted (and owed) meanwhile.
        h.notes.send((Instant::now(), Sent::Flush(2))).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let resumed = Instant::now();
        for _ in 0..=EVENT_QUEUE_CAPACITY {
            assert!(matches!(
                h.events.recv().await,
                Some(SessionEvent::Audio(_))
            ));
        }
        // The last frame arrived just before the reader stopped: LMNT has T from the resume.
        tokio::time::sleep(T / 2).await;
        h.server
            .send(Ok(Message::text(r#"{"type":"flush_complete","nonce":1}"#)))
            .unwrap();
        assert_eq!(
            h.events.recv().await,
            Some(SessionEvent::FlushComplete { nonce: 1 })
        );
        // Flush 2 is still owed: the deadline counts from that acknowledgement.
        assert_eq!(
            h.events.recv().await,
            Some(SessionEvent::Error(LmntError::Liveness(T)))
        );
        assert_eq!(resumed.elapsed(), T / 2 + T);
    }

    #[tokio::test(start_paused = true)]
    async fn audio_in_the_wrong_format_ends_the_session_with_a_named_error() {
        let mut h = start(Duration::from_secs(5));
        // A WAV header where raw s16le was asked for; later frames are not checked.
        h.server
            .send(Ok(Message::binary(
                b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec(),
            )))
            .unwrap();
        assert_eq!(
            h.events.recv().await,
            Some(SessionEvent::Error(LmntError::AudioFormat {
                expected: AudioFormat::PcmS16le,
                found: "wav",
            }))
        );
        assert!(matches!(
            h.out.recv().await,
            Some(Outgoing::Close(Some(CloseFrame {
                code: CloseCode::Protocol,
                ..
            })))
        ));
        assert_eq!(h.events.recv().await, None);
        // Only the session's first frame is checked: PCM that happens to read "RIFF" later
        // is audio.
        let mut h = start(Duration::from_secs(5));
        h.server.send(audio(0)).unwrap();
        h.server
            .send(Ok(Message::binary(b"RIFFRIFF".to_vec())))
            .unwrap();
        assert!(matches!(
            h.events.recv().await,
            Some(SessionEvent::Audio(_))
        ));
        assert!(matches!(
            h.events.recv().await,
            Some(SessionEvent::Audio(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_events_ends_the_session_even_while_the_reader_waits() {
        for frames in [0, EVENT_QUEUE_CAPACITY + 3] {
            let mut h = start(Duration::from_secs(5));
            for i in 0..frames {
                h.server.send(audio(i)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(h.events);
            assert!(
                matches!(h.out.recv().await, Some(Outgoing::Close(None))),
                "{frames} frames"
            );
            assert!(h.taken.load(Ordering::SeqCst) <= EVENT_QUEUE_CAPACITY + 1);
        }
    }
}

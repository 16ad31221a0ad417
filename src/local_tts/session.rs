//! One websocket session of `local-tts`: init, then a reader task and a worker.
//!
//! The reader reads client frames strictly in order and queues them. A `reset` bumps the
//! session's epoch the moment it is read, so the worker drops text queued before it and
//! stops delivering audio mid-piece; every flush is still acknowledged, in order. The worker
//! owns the write half: it renders, encodes and delivers audio, and writes every JSON reply.
//! A session's failure ends only that session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::delivery::Delivery;
use super::dialect::{self, Command, Dialect, Refusal, SessionInit};
use super::encode::Encoder;
use super::text::TextBuffer;
use super::voice;
use super::{InjectFrame, LocalTtsConfig, OVERSIZE_FRAME_BYTES};
use crate::lmnt::protocol::{AudioFormat, ErrorSlug, SESSION_PATH};

/// Largest client message: 64 KiB. SDK text messages are small; the utterance limit is
/// enforced separately by the text buffer.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// The init frame must arrive this soon after the upgrade, or the connection is dropped.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// After our close frame, wait this long for the client's close reply.
pub const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;

/// Serves one accepted TCP connection until the session ends.
pub async fn handle(
    tcp: TcpStream,
    cfg: Arc<LocalTtsConfig>,
    id: u64,
    shutdown: CancellationToken,
) {
    // The error type is fixed by tungstenite's callback signature.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == SESSION_PATH {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some(format!("no such path; use {SESSION_PATH}")));
            *e.status_mut() = StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        // Clients send small JSON frames; tungstenite zero-fills this much before every
        // read (its default is 128 KiB).
        .read_buffer_size(4 * 1024);
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, check_path, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            debug!(session = id, error = %e, "websocket handshake failed");
            return;
        }
    };
    let (sink, stream) = ws.split();
    Session::run(sink, stream, cfg, id, shutdown).await;
}

enum Queued {
    Cmd { epoch: u64, cmd: Command },
    Fail(Refusal),
    Gone,
}

/// Why the worker stops.
enum Stop {
    /// The client closed or the socket broke.
    Gone,
    /// `--disconnect-after-bytes`: drop the TCP connection without a close frame.
    Disconnect,
    /// Send an error frame, then close with this code.
    Fail(Refusal, CloseCode),
    /// Server shutdown.
    Shutdown,
}

struct Session {
    cfg: Arc<LocalTtsConfig>,
    id: u64,
    request_id: String,
    init: SessionInit,
    sink: Sink,
    epoch: Arc<AtomicU64>,
    encoder: Encoder,
    delivery: Delivery,
    text: TextBuffer,
    /// Seconds of audio since the last flush or reset (timestamps are cumulative, API 1.2).
    utterance_secs: f64,
    bytes_sent: u64,
    /// Whether `--inject-frame` has sent its frame in this session.
    injected: bool,
    shutdown: CancellationToken,
}

async fn send_text(sink: &mut Sink, text: String) -> Result<(), Stop> {
    sink.send(Message::text(text)).await.map_err(|_| Stop::Gone)
}

async fn close(sink: &mut Sink, code: CloseCode, reason: &str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        })))
        .await;
}

impl Session {
    async fn run(
        mut sink: Sink,
        mut stream: SplitStream<Ws>,
        cfg: Arc<LocalTtsConfig>,
        id: u64,
        shutdown: CancellationToken,
    ) {
        let request_id = format!("local-{id:06}");
        let first = tokio::select! {
            m = tokio::time::timeout(INIT_TIMEOUT, stream.next()) => m,
            _ = shutdown.cancelled() => return,
        };
        let text = match first {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => {
                let r = Refusal::new(
                    ErrorSlug::InvalidRequest,
                    "the first message must be the JSON init",
                );
                let _ = send_text(&mut sink, dialect::error(Dialect::Typed, &r, &request_id)).await;
                close(&mut sink, CloseCode::Policy, "bad init").await;
                return;
            }
            _ => return,
        };
        let init = match dialect::parse_init(text.as_str()) {
            Ok(init) => init,
            Err((d, r)) => return refuse(sink, stream, d, &r, &request_id).await,
        };
        if let Some(required) = &cfg.require_key {
            if init.api_key.as_deref() != Some(required.expose()) {
                let r = Refusal::new(ErrorSlug::Authentication, "missing or invalid API key");
                return refuse(sink, stream, init.dialect, &r, &request_id).await;
            }
        }
        // `--force-format`: a server that ignores the format the client asked for.
        let format = cfg.force_format.unwrap_or(init.format);
        let encoder = match Encoder::new(format, init.sample_rate) {
            Ok(e) => e,
            Err(e) => {
                let r = Refusal::new(ErrorSlug::InternalServer, e.to_string());
                return refuse(sink, stream, init.dialect, &r, &request_id).await;
            }
        };
        info!(
            session = id,
            dialect = init.dialect.as_str(),
            voice = %init.voice,
            format = %init.format,
            sample_rate = init.sample_rate,
            extras = init.extras,
            "local-tts session started"
        );
        if let Some(ready) = dialect::ready(init.dialect, &request_id) {
            if send_text(&mut sink, ready).await.is_err() {
                return;
            }
        }
        let epoch = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(stream, init.dialect, epoch.clone(), tx));
        let delivery = Delivery::new(cfg.delivery.clone(), encoder.bytes_per_ms());
        let mut s = Session {
            cfg,
            id,
            request_id,
            init,
            sink,
            epoch,
            encoder,
            delivery,
            text: TextBuffer::default(),
            utterance_secs: 0.0,
            bytes_sent: 0,
            injected: false,
            shutdown,
        };
        let stop = s.work(rx).await;
        match stop {
            Stop::Gone => {}
            Stop::Disconnect => {
                debug!(
                    session = s.id,
                    "dropping the connection (--disconnect-after-bytes)"
                );
            }
            Stop::Fail(r, code) => {
                warn!(session = s.id, error = %r.message, "local-tts session failed");
                let msg = dialect::error(s.init.dialect, &r, &s.request_id);
                let _ = send_text(&mut s.sink, msg).await;
                close(&mut s.sink, code, "error").await;
            }
            Stop::Shutdown => close(&mut s.sink, CloseCode::Away, "server shutting down").await,
        }
        // Dropping both halves closes the TCP connection.
        reader.abort();
    }

    async fn work(&mut self, mut rx: mpsc::UnboundedReceiver<Queued>) -> Stop {
        loop {
            let q = tokio::select! {
                q = rx.recv() => q,
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
            };
            let (stamp, cmd) = match q {
                None | Some(Queued::Gone) => return Stop::Gone,
                Some(Queued::Fail(r)) => return Stop::Fail(r, CloseCode::Policy),
                Some(Queued::Cmd { epoch, cmd }) => (epoch, cmd),
            };
            let current = stamp == self.epoch.load(Ordering::SeqCst);
            let result = match cmd {
                Command::Text(t) if current => self.on_text(&t, stamp).await,
                Command::Text(_) => Ok(()),
                Command::Flush(nonce) => self.on_flush(nonce, stamp, current).await,
                Command::Reset(nonce) => {
                    self.text.clear();
                    self.utterance_secs = 0.0;
                    match dialect::reset_complete(self.init.dialect, nonce) {
                        Some(ack) => send_text(&mut self.sink, ack).await,
                        None => Ok(()),
                    }
                }
                Command::Finish => {
                    if let Err(stop) = self.speak_rest(stamp, current).await {
                        return stop;
                    }
                    close(&mut self.sink, CloseCode::Normal, "").await;
                    // The reader sees the client's close reply (or the socket end) as Gone.
                    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
                        while let Some(q) = rx.recv().await {
                            if matches!(q, Queued::Gone) {
                                break;
                            }
                        }
                    })
                    .await;
                    return Stop::Gone;
                }
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    async fn on_text(&mut self, t: &str, stamp: u64) -> Result<(), Stop> {
        if self.text.push(t).is_err() {
            return Err(Stop::Fail(
                Refusal::new(
                    ErrorSlug::InvalidRequest,
                    format!(
                        "text too long: an utterance may hold at most {} bytes before a flush",
                        super::text::MAX_BUFFERED_TEXT_BYTES
                    ),
                ),
                CloseCode::Policy,
            ));
        }
        if let Some(sentences) = self.text.take_sentences() {
            self.speak(&sentences, false, stamp).await?;
        }
        Ok(())
    }

    async fn speak_rest(&mut self, stamp: u64, current: bool) -> Result<(), Stop> {
        let rest = if current { self.text.take_all() } else { None };
        self.speak(rest.as_deref().unwrap_or(""), true, stamp).await
    }

    async fn on_flush(
        &mut self,
        nonce: Option<u64>,
        stamp: u64,
        current: bool,
    ) -> Result<(), Stop> {
        self.speak_rest(stamp, current).await?;
        self.utterance_secs = 0.0;
        match dialect::flush_complete(self.init.dialect, nonce) {
            Some(ack) => send_text(&mut self.sink, ack).await,
            None => Ok(()),
        }
    }

    async fn render(&self, text: &str) -> Result<Vec<f32>, Stop> {
        if self.init.voice == "tones" {
            return Ok(voice::render_tones(text, self.init.sample_rate));
        }
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        voice::render_espeak(
            &self.cfg.espeak_program,
            text,
            self.init.language.as_deref(),
            self.init.sample_rate,
        )
        .await
        .map_err(|e| {
            Stop::Fail(
                Refusal::new(ErrorSlug::InternalServer, e.to_string()),
                CloseCode::Error,
            )
        })
    }

    /// Renders and delivers one piece. `end` marks the end of an utterance (flush/finish):
    /// the codec is drained and legacy extras say `buffer_empty`.
    async fn speak(&mut self, text: &str, end: bool, stamp: u64) -> Result<(), Stop> {
        let samples = self.render(text).await?;
        let bytes = self.encoder.encode(&samples, end).map_err(|e| {
            Stop::Fail(
                Refusal::new(ErrorSlug::InternalServer, e.to_string()),
                CloseCode::Error,
            )
        })?;
        let secs = samples.len() as f64 / f64::from(self.init.sample_rate);
        let offset = self.utterance_secs;
        let stamps = voice::word_timestamps(text, secs, offset);
        self.utterance_secs += secs;
        // Typed timestamps describe "the audio chunk that was just streamed": after each
        // chunk of raw PCM, the words that start in it. Containers (a WAV header, MP3, WebM)
        // get them all after the piece.
        let bytes_per_second = match self.cfg.force_format.unwrap_or(self.init.format) {
            AudioFormat::PcmS16le => Some(2.0 * f64::from(self.init.sample_rate)),
            AudioFormat::PcmF32le => Some(4.0 * f64::from(self.init.sample_rate)),
            AudioFormat::Ulaw | AudioFormat::Mp3 | AudioFormat::Webm => None,
        };
        let stamp_per_chunk = self.init.extras && self.init.dialect == Dialect::Typed;
        let mut streamed_bytes = 0usize;
        let mut stamps_sent = 0usize;
        let chunks = self.delivery.chunk(&bytes);
        let legacy_extras = self.init.dialect == Dialect::Legacy && self.init.extras;
        if chunks.is_empty() {
            if legacy_extras && end {
                send_text(&mut self.sink, dialect::extras(&[], true)).await?;
                self.sink
                    .send(Message::binary(Vec::new()))
                    .await
                    .map_err(|_| Stop::Gone)?;
            }
            return Ok(());
        }
        self.delivery.start_piece(Instant::now().into_std());
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            if self.epoch.load(Ordering::SeqCst) != stamp {
                // A reset arrived: stop generating.
                return Ok(());
            }
            let at = self
                .delivery
                .schedule(Instant::now().into_std(), chunk.len());
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(at)) => {}
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
            if legacy_extras {
                let durations = if i == 0 { stamps.as_slice() } else { &[] };
                send_text(&mut self.sink, dialect::extras(durations, end && i == last)).await?;
            }
            let len = chunk.len() as u64;
            streamed_bytes += chunk.len();
            self.sink
                .send(Message::binary(chunk))
                .await
                .map_err(|_| Stop::Gone)?;
            if let (true, Some(bps)) = (stamp_per_chunk, bytes_per_second) {
                let streamed_to = offset + streamed_bytes as f64 / bps;
                let ready = stamps[stamps_sent..]
                    .iter()
                    .take_while(|t| t.start < streamed_to)
                    .count();
                if ready > 0 {
                    let batch = &stamps[stamps_sent..stamps_sent + ready];
                    send_text(&mut self.sink, dialect::timestamps(batch)).await?;
                    stamps_sent += ready;
                }
            }
            self.bytes_sent += len;
            self.inject_frame().await?;
            if self
                .cfg
                .disconnect_after_bytes
                .is_some_and(|n| self.bytes_sent >= n)
            {
                return Err(Stop::Disconnect);
            }
            if self
                .cfg
                .error_after_bytes
                .is_some_and(|n| self.bytes_sent >= n)
            {
                return Err(Stop::Fail(
                    Refusal::new(
                        ErrorSlug::InternalServer,
                        "injected error (--error-after-bytes)",
                    ),
                    CloseCode::Error,
                ));
            }
        }
        if self.init.extras && stamps.len() > stamps_sent {
            match self.init.dialect {
                Dialect::Typed => {
                    send_text(&mut self.sink, dialect::timestamps(&stamps[stamps_sent..])).await?
                }
                Dialect::Pv2 => send_text(&mut self.sink, dialect::extras(&stamps, end)).await?,
                Dialect::Legacy => {}
            }
        }
        Ok(())
    }
}

impl Session {
    /// `--inject-frame`: sends its malformed frame once, after `inject_after_bytes`.
    async fn inject_frame(&mut self) -> Result<(), Stop> {
        let Some(kind) = self.cfg.inject_frame else {
            return Ok(());
        };
        if self.injected || self.bytes_sent < self.cfg.inject_after_bytes {
            return Ok(());
        }
        self.injected = true;
        debug!(
            session = self.id,
            ?kind,
            "injecting a malformed frame (--inject-frame)"
        );
        let frame = match kind {
            InjectFrame::Garbage => Message::text("{this is not JSON"),
            InjectFrame::UnknownType => {
                Message::text(r#"{"type":"surprise","detail":"a frame type LMNT does not define"}"#)
            }
            InjectFrame::Oversize => Message::binary(vec![0u8; OVERSIZE_FRAME_BYTES]),
        };
        self.sink.send(frame).await.map_err(|_| Stop::Gone)
    }
}

async fn refuse(
    mut sink: Sink,
    mut stream: SplitStream<Ws>,
    d: Dialect,
    r: &Refusal,
    request_id: &str,
) {
    info!(dialect = d.as_str(), slug = %r.slug, reason = %r.message, "local-tts refused a session");
    let _ = send_text(&mut sink, dialect::error(d, r, request_id)).await;
    close(&mut sink, CloseCode::Policy, "refused").await;
    // Read until the client's close reply so the close handshake completes.
    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    d: Dialect,
    epoch: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Queued>,
) {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                let _ = tx.send(Queued::Fail(Refusal::new(
                    ErrorSlug::InvalidRequest,
                    "binary messages are not accepted; send JSON text",
                )));
                return;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match dialect::parse_command(d, text.as_str()) {
            Ok(cmds) => {
                for cmd in cmds {
                    let e = if matches!(cmd, Command::Reset(_)) {
                        epoch.fetch_add(1, Ordering::SeqCst) + 1
                    } else {
                        epoch.load(Ordering::SeqCst)
                    };
                    if tx.send(Queued::Cmd { epoch: e, cmd }).is_err() {
                        return;
                    }
                }
            }
            Err(r) => {
                let _ = tx.send(Queued::Fail(r));
                return;
            }
        }
    }
    let _ = tx.send(Queued::Gone);
}

//! An LMNT-compatible speech-session server (`lmnt-bridge local-tts`).
//!
//! Serves `ws://ADDR/v1/ai/speech/stream` in all three wire dialects of LMNT's SDKs (typed,
//! pv2, legacy; told apart by the init frame, `lmnt-protocol.md` section 6), with the voices
//! of interface.md section 5: `tones` (a deterministic test voice a decoder can read back)
//! and espeak-ng for any other voice id. Formats: `pcm_s16le`, `pcm_f32le`, `ulaw` (one WAV
//! header per session, see [`encode`]) and `mp3` (system libmp3lame, dynamically linked).
//!
//! Text is held until a sentence ends or a flush/finish arrives, as LMNT does. Every session
//! is its own task; one session's failure touches no other. Delivery knobs
//! ([`delivery::DeliveryKnobs`]) simulate a slow, jittery or failing TTS for tests. By default
//! delivery is immediate: the first frame of a flushed `tones` utterance leaves within a
//! millisecond or two of the flush.

pub mod delivery;
pub mod dialect;
pub mod encode;
mod session;
pub mod text;
pub mod voice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::exit::CommandError;
use crate::lmnt::protocol::{AudioFormat, SESSION_PATH};
use crate::secret::Secret;
use delivery::DeliveryKnobs;

/// After a failed `accept` (e.g. out of file descriptors), wait this long before the next,
/// so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `lmnt-bridge local-tts` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalTtsArgs {
    /// Listener address; sessions are served on `ws://ADDR/v1/ai/speech/stream`.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Delay before the first audio frame of every rendered piece, in ms.
    #[arg(long, default_value_t = 0)]
    pub first_byte_delay_ms: u64,
    /// Deliver audio at this multiple of real time (default: as fast as synthesized).
    #[arg(long)]
    pub speed: Option<f64>,
    /// Audio per binary frame, in ms.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk_ms: u32,
    /// Random extra delay per frame, 0 to this many ms (see --seed).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u32,
    /// Seed of the jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send frames of odd byte length, splitting samples across frames.
    #[arg(long)]
    pub odd_chunks: bool,
    /// Pause delivery once, after this much audio (ms) in a session.
    #[arg(long)]
    pub stall_after_ms: Option<u64>,
    /// Length of that pause, in ms.
    #[arg(long, default_value_t = 0)]
    pub stall_ms: u64,
    /// Drop the TCP connection (no close frame) after this many audio bytes in a session.
    #[arg(long)]
    pub disconnect_after_bytes: Option<u64>,
    /// Send an error frame and close after this many audio bytes in a session.
    #[arg(long)]
    pub error_after_bytes: Option<u64>,
    /// Refuse sessions whose init does not carry this API key.
    #[arg(long)]
    pub require_key: Option<String>,
    /// Send one malformed frame of this kind after --inject-after-bytes audio bytes in a
    /// session: `garbage` (a text frame that is not JSON), `unknown-type` (a JSON frame of a
    /// type LMNT does not define), `oversize` (a binary frame one byte above the 1 MiB LMNT's
    /// SDKs accept).
    #[arg(long, value_enum)]
    pub inject_frame: Option<InjectFrame>,
    /// Audio bytes a session delivers before the --inject-frame frame.
    #[arg(long, default_value_t = 0)]
    pub inject_after_bytes: u64,
    /// Deliver audio in this format whatever the init asked for (`pcm_s16le`, `pcm_f32le`,
    /// `ulaw`, `mp3`): a server that ignores the requested format.
    #[arg(long, value_parser = parse_format)]
    pub force_format: Option<AudioFormat>,
    /// Apply the fault knobs (stall, disconnect, error, inject, force-format) only to the
    /// first N sessions the server accepts; later sessions are healthy (a reconnect then
    /// succeeds). Default: every session.
    #[arg(long)]
    pub faulty_sessions: Option<u64>,
}

/// A malformed frame `--inject-frame` sends once per faulty session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectFrame {
    /// A text frame that is not JSON.
    Garbage,
    /// A JSON text frame whose `type` LMNT does not define.
    UnknownType,
    /// A binary frame of [`OVERSIZE_FRAME_BYTES`].
    Oversize,
}

/// The `oversize` frame: one byte above the 1 MiB message limit of LMNT's Python SDK (and of
/// this crate's client).
pub const OVERSIZE_FRAME_BYTES: usize = (1 << 20) + 1;

fn parse_format(name: &str) -> Result<AudioFormat, String> {
    AudioFormat::from_wire_name(name).ok_or_else(|| format!("unknown audio format {name:?}"))
}

/// Server settings: voices and delivery.
#[derive(Debug, Clone)]
pub struct LocalTtsConfig {
    /// How audio leaves the server.
    pub delivery: DeliveryKnobs,
    /// Drop the connection after this many audio bytes (per session).
    pub disconnect_after_bytes: Option<u64>,
    /// Send an error frame and close after this many audio bytes (per session).
    pub error_after_bytes: Option<u64>,
    /// When set, the init's `X-API-Key` must equal it (else `authentication_error`).
    pub require_key: Option<Secret>,
    /// One malformed frame per session, after `inject_after_bytes` audio bytes.
    pub inject_frame: Option<InjectFrame>,
    pub inject_after_bytes: u64,
    /// Audio in this format whatever the init asked for.
    pub force_format: Option<AudioFormat>,
    /// The fault knobs apply to the first N sessions only (None: to every session).
    pub faulty_sessions: Option<u64>,
    /// The espeak-ng program for speech voices.
    pub espeak_program: String,
}

impl Default for LocalTtsConfig {
    fn default() -> Self {
        LocalTtsConfig {
            delivery: DeliveryKnobs::default(),
            disconnect_after_bytes: None,
            error_after_bytes: None,
            require_key: None,
            inject_frame: None,
            inject_after_bytes: 0,
            force_format: None,
            faulty_sessions: None,
            espeak_program: "espeak-ng".into(),
        }
    }
}

impl LocalTtsConfig {
    /// The configuration the command-line flags describe.
    pub fn from_args(a: &LocalTtsArgs) -> Self {
        LocalTtsConfig {
            delivery: DeliveryKnobs {
                first_byte_delay: Duration::from_millis(a.first_byte_delay_ms),
                speed: a.speed.filter(|s| s.is_finite() && *s > 0.0),
                chunk_ms: a.chunk_ms,
                jitter_ms: a.jitter_ms,
                seed: a.seed,
                odd_chunks: a.odd_chunks,
                stall_after: a.stall_after_ms.map(Duration::from_millis),
                stall: Duration::from_millis(a.stall_ms),
            },
            disconnect_after_bytes: a.disconnect_after_bytes,
            error_after_bytes: a.error_after_bytes,
            require_key: a.require_key.clone().map(Secret::new),
            inject_frame: a.inject_frame,
            inject_after_bytes: a.inject_after_bytes,
            force_format: a.force_format,
            faulty_sessions: a.faulty_sessions,
            espeak_program: "espeak-ng".into(),
        }
    }

    /// The settings of session number `id` (1 for the first accepted): these, or without
    /// any fault knob once `faulty_sessions` sessions have been served.
    pub fn for_session(&self, id: u64) -> LocalTtsConfig {
        if self.faulty_sessions.is_none_or(|n| id <= n) {
            return self.clone();
        }
        LocalTtsConfig {
            delivery: DeliveryKnobs {
                stall_after: None,
                ..self.delivery.clone()
            },
            disconnect_after_bytes: None,
            error_after_bytes: None,
            inject_frame: None,
            force_format: None,
            ..self.clone()
        }
    }
}

/// Serves sessions on `listener` until `shutdown` is cancelled; then stops accepting, closes
/// open sessions with 1001 and returns when they are gone.
pub async fn serve(
    listener: TcpListener,
    cfg: LocalTtsConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let cfg = Arc::new(cfg);
    let tracker = TaskTracker::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                next_id += 1;
                let _ = tcp.set_nodelay(true);
                tracing::debug!(session = next_id, %peer, "local-tts connection");
                let session_cfg = Arc::new(cfg.for_session(next_id));
                tracker.spawn(session::handle(tcp, session_cfg, next_id, shutdown.clone()));
            }
            Err(e) => {
                warn!(error = %e, "local-tts accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// `lmnt-bridge local-tts`: binds (exit 69 if it cannot), prints the session URL on stdout,
/// serves until SIGTERM or SIGINT.
pub async fn run(args: LocalTtsArgs) -> Result<(), CommandError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| CommandError::Unavailable(format!("cannot bind {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Unavailable(format!("listener address: {e}")))?;
    let url = format!("ws://{addr}{SESSION_PATH}");
    info!(%url, "local-tts listening");
    println!("local-tts listening on {url}");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("local-tts shutting down");
        signal.cancel();
    });
    serve(listener, LocalTtsConfig::from_args(&args), shutdown)
        .await
        .map_err(|e| CommandError::Failed(format!("local-tts: {e}")))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

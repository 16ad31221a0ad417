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
use crate::lmnt::protocol::SESSION_PATH;
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
            espeak_program: "espeak-ng".into(),
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
                tracker.spawn(session::handle(tcp, cfg.clone(), next_id, shutdown.clone()));
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

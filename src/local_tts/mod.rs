//! An LMNT-compatible speech-session server (`lmnt-bridge local-tts`).

use std::net::SocketAddr;

use crate::exit::CommandError;

/// `lmnt-bridge local-tts` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalTtsArgs {
    /// Listener address; sessions are served on `ws://ADDR/v1/ai/speech/stream`.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(_args: LocalTtsArgs) -> Result<(), CommandError> {
    Err(CommandError::Failed("local-tts: not built yet".into()))
}

//! `lmnt-bridge speak`: text into one LMNT session, audio into a WAV file.

use crate::exit::CommandError;

/// `lmnt-bridge speak` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SpeakArgs {
    /// Text to speak; read from stdin, line by line as it arrives, when absent.
    pub text: Option<String>,
}

/// Runs one session.
pub async fn run(_args: SpeakArgs) -> Result<(), CommandError> {
    Err(CommandError::Failed("speak: not built yet".into()))
}

//! The command line: one binary, several commands (interface.md section 1).

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// lmnt-bridge: bot text -> LMNT speech session -> paced Opus into live WebRTC calls.
#[derive(Debug, Parser)]
#[command(name = "lmnt-bridge", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr (`RUST_LOG` sets the filter).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "LMNT_BRIDGE_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: bridges WebRTC calls to LMNT speech sessions.
    Serve(crate::config::ServeArgs),
    /// An LMNT-compatible speech-session server (all three wire dialects).
    LocalTts(crate::local_tts::LocalTtsArgs),
    /// `serve` with an embedded `local-tts` and a browser call page at `/`.
    Demo(crate::config::DemoArgs),
    /// Streams text into one LMNT session and writes the audio to a WAV file.
    Speak(crate::speak::SpeakArgs),
    /// Parses and validates the configuration, prints the effective values (secrets redacted).
    CheckConfig(crate::config::CheckConfigArgs),
}

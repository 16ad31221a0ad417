//! Process exit codes (sysexits.h values, as systemd and operators expect) and the error a
//! command returns to `main`.

use std::process::ExitCode;

/// Why a command ended unsuccessfully; each maps to one distinct exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command line was wrong (exit 64, `EX_USAGE`).
    #[error("usage: {0}")]
    Usage(String),
    /// The configuration is invalid (exit 78, `EX_CONFIG`). systemd must not restart on this.
    #[error("configuration: {0}")]
    Config(String),
    /// Something the command needs at start is unavailable, e.g. a port cannot be bound
    /// (exit 69, `EX_UNAVAILABLE`). A retry may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The command ran and failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CommandError::Usage(_) => 64,
            CommandError::Config(_) => 78,
            CommandError::Unavailable(_) => 69,
            CommandError::Failed(_) => 1,
        })
    }
}

//! Whose fault a failure is, and whether retrying can help. Every error type in the crate
//! classifies itself with [`Fault`] so logs, metrics and the bot see the same answer.

use serde::Serialize;

/// The party responsible for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The caller or its WebRTC peer (bad SDP, ICE failure, vanished peer).
    Caller,
    /// The LMNT service (or the configured LMNT-compatible server).
    Lmnt,
    /// The bot driving the call (malformed or oversized control input).
    Bot,
    /// The operator's configuration.
    Config,
    /// A bug or resource exhaustion inside this process.
    Internal,
}

impl Fault {
    /// A stable lowercase name, for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Caller => "caller",
            Fault::Lmnt => "lmnt",
            Fault::Bot => "bot",
            Fault::Config => "config",
            Fault::Internal => "internal",
        }
    }
}

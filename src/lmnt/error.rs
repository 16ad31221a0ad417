//! Why a speech session failed, whose fault it is and whether a new session may help.

use std::time::Duration;

use crate::fault::Fault;
use crate::lmnt::protocol::{AudioFormat, ErrorSlug};

/// A speech-session failure. Cheap to clone so it can travel in [`super::SessionEvent`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LmntError {
    /// The base URL cannot give a session URL.
    #[error("LMNT URL: {0}")]
    Url(String),
    /// Nothing listens at the session address (TCP connection refused).
    #[error("LMNT connection refused: {0}")]
    ConnectRefused(String),
    /// TCP, TLS and the websocket handshake did not finish within the connect timeout.
    #[error("LMNT connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Connecting failed otherwise (DNS, TLS, reset during the handshake).
    #[error("LMNT connect failed: {0}")]
    Connect(String),
    /// The server answered the upgrade with an HTTP status instead of 101.
    #[error("LMNT rejected the websocket handshake with HTTP {status}")]
    HandshakeRejected { status: u16 },
    /// The server sent an `error` frame; it closes the session right after.
    #[error("LMNT error {slug}: {message}")]
    Server { slug: ErrorSlug, message: String },
    /// The server sent something the protocol does not allow (e.g. non-JSON text).
    #[error("LMNT protocol violation: {0}")]
    Protocol(String),
    /// The server sent a message larger than the client accepts
    /// ([`crate::lmnt::client::MAX_MESSAGE_BYTES`]). The session was ended.
    #[error("LMNT sent a message over the {limit}-byte limit")]
    FrameTooLarge { limit: usize },
    /// The server sent audio in another format than the session asked for: a container's
    /// signature (WAV, MP3 with ID3, Ogg, WebM, FLAC) where raw PCM was due. The session was
    /// ended. (Raw PCM of the wrong sample type cannot be told from the right one.)
    #[error("LMNT sent {found} audio where {expected} was asked for")]
    AudioFormat {
        expected: AudioFormat,
        found: &'static str,
    },
    /// No audio and no acknowledgement for this long while a flush, reset or finish was
    /// outstanding. The session was ended.
    #[error("LMNT sent nothing for {0:?} while speech was owed")]
    Liveness(Duration),
    /// The connection broke mid-session (reset, EOF without a close frame).
    #[error("LMNT connection lost: {0}")]
    Transport(String),
    /// The session has ended; nothing more can be sent.
    #[error("LMNT session closed")]
    Closed,
}

impl LmntError {
    /// Whose fault the failure is.
    pub fn fault(&self) -> Fault {
        match self {
            LmntError::Url(_) => Fault::Config,
            LmntError::HandshakeRejected {
                status: 401 | 403 | 404,
            } => Fault::Config,
            LmntError::Server {
                slug:
                    ErrorSlug::Authentication
                    | ErrorSlug::Permission
                    | ErrorSlug::PaymentRequired
                    | ErrorSlug::NotFound
                    | ErrorSlug::InvalidRequest,
                ..
            } => Fault::Config,
            _ => Fault::Lmnt,
        }
    }

    /// A stable snake_case name of the cause, for metric labels and the bot's error events.
    pub fn kind(&self) -> &'static str {
        match self {
            LmntError::Url(_) => "url",
            LmntError::ConnectRefused(_) => "connect_refused",
            LmntError::ConnectTimeout(_) => "connect_timeout",
            LmntError::Connect(_) => "connect",
            LmntError::HandshakeRejected { .. } => "handshake_rejected",
            LmntError::Server { .. } => "server_error",
            LmntError::Protocol(_) => "protocol",
            LmntError::FrameTooLarge { .. } => "frame_too_large",
            LmntError::AudioFormat { .. } => "audio_format",
            LmntError::Liveness(_) => "liveness",
            LmntError::Transport(_) => "transport",
            LmntError::Closed => "closed",
        }
    }

    /// Whether opening a new session may succeed where this one failed. A server that
    /// breaks the protocol (garbage, an oversized message, audio in the wrong format) is
    /// expected to do it again: the utterances it owed are given up at once, and later ones
    /// get a new session after the longest backoff.
    pub fn is_retryable(&self) -> bool {
        match self {
            LmntError::Url(_)
            | LmntError::Protocol(_)
            | LmntError::FrameTooLarge { .. }
            | LmntError::AudioFormat { .. } => false,
            LmntError::HandshakeRejected { status } => *status == 429 || *status >= 500,
            LmntError::Server { slug, .. } => {
                matches!(slug, ErrorSlug::RateLimit | ErrorSlug::InternalServer)
            }
            LmntError::ConnectRefused(_)
            | LmntError::ConnectTimeout(_)
            | LmntError::Connect(_)
            | LmntError::Liveness(_)
            | LmntError::Transport(_)
            | LmntError::Closed => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let auth = LmntError::Server {
            slug: ErrorSlug::Authentication,
            message: "x".into(),
        };
        assert_eq!(auth.fault(), Fault::Config);
        assert!(!auth.is_retryable());
        let rl = LmntError::Server {
            slug: ErrorSlug::RateLimit,
            message: "x".into(),
        };
        assert_eq!(rl.fault(), Fault::Lmnt);
        assert!(rl.is_retryable());
        assert_eq!(
            LmntError::HandshakeRejected { status: 401 }.fault(),
            Fault::Config
        );
        assert!(LmntError::HandshakeRejected { status: 503 }.is_retryable());
        assert!(!LmntError::HandshakeRejected { status: 400 }.is_retryable());
        assert!(LmntError::Liveness(Duration::from_secs(1)).is_retryable());
        assert_eq!(LmntError::Url("x".into()).fault(), Fault::Config);
    }
}

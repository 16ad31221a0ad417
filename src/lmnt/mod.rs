//! LMNT speech sessions, client side: the typed wire codec ([`protocol`]), the liveness
//! deadline ([`liveness`]), errors ([`error`]) and the full-duplex [`client`].
//!
//! One session per call: text streams in as it comes, `flush` ends each utterance, `finish`
//! at hang-up; audio streams back as binary frames, each flush acknowledged after its audio.

pub mod client;
pub mod error;
pub mod liveness;
pub mod protocol;

pub use client::{connect, SessionEvent, SessionEvents, SessionOptions, SessionSender};
pub use error::LmntError;
pub use protocol::{session_url, AudioFormat, Timestamp};

use crate::secret::Secret;

/// Default LMNT base URL, as in LMNT's SDKs.
pub const DEFAULT_BASE_URL: &str = "https://api.lmnt.com";

/// The API key from `LMNT_API_KEY`, else from the systemd credential file
/// `$CREDENTIALS_DIRECTORY/lmnt-api-key` (trailing newline trimmed). None when neither is
/// set or non-empty.
pub fn api_key_from_env() -> Option<Secret> {
    if let Ok(k) = std::env::var("LMNT_API_KEY") {
        let k = k.trim();
        if !k.is_empty() {
            return Some(Secret::new(k));
        }
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("lmnt-api-key")).ok()?;
    let k = text.trim();
    (!k.is_empty()).then(|| Secret::new(k))
}

/// `LMNT_BASE_URL`, or [`DEFAULT_BASE_URL`] when unset or empty.
pub fn base_url_from_env() -> String {
    std::env::var("LMNT_BASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
}

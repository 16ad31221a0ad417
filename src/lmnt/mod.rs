//! LMNT speech sessions, client side: the typed wire codec ([`protocol`]), the liveness
//! deadline ([`liveness`]), errors ([`error`]), the full-duplex [`client`], and the [`link`]
//! that keeps one call's session up, reconnecting with jittered [`backoff`].
//!
//! One session per call: text streams in as it comes, `flush` ends each utterance, `finish`
//! at hang-up; audio streams back as binary frames, each flush acknowledged after its audio.

pub mod backoff;
pub mod client;
pub mod error;
pub mod link;
pub mod liveness;
pub mod protocol;

pub use client::{connect, SessionEvent, SessionEvents, SessionOptions, SessionSender};
pub use error::LmntError;
pub use link::{Link, LinkEvent};
pub use protocol::{session_url, AudioFormat, Timestamp};

/// Default LMNT base URL, as in LMNT's SDKs.
pub const DEFAULT_BASE_URL: &str = "https://api.lmnt.com";

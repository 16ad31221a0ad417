//! The typed wire dialect of LMNT speech sessions (API 1.2), exactly as `lmnt` 2.13.0 puts it
//! on the wire (`shared/spec/lmnt-protocol.md` section 3). Pure encoding and parsing: no I/O,
//! no clock.
//!
//! Client frames are JSON text frames, one object each; the first is the init frame carrying
//! the API key. Server text frames are `ready`, `timestamps`, `flush_complete`,
//! `reset_complete` and `error`; audio arrives as binary frames (not parsed here).

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::Secret;

/// The `lmnt-version` the init frame announces (what `lmnt` 2.13.0 sends).
pub const LMNT_VERSION: &str = "1.2";

/// The session path LMNT's SDKs append to the base URL.
pub const SESSION_PATH: &str = "/v1/ai/speech/stream";

/// Audio formats a session can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioFormat {
    /// Raw PCM, signed 16-bit little-endian, mono, headerless.
    PcmS16le,
    /// Raw PCM, 32-bit float little-endian, mono, headerless.
    PcmF32le,
    /// G.711 µ-law, 8 bits a sample, with a WAV header.
    Ulaw,
    /// MP3 (LMNT's default).
    Mp3,
    /// WebM with Opus.
    Webm,
}

impl AudioFormat {
    /// The name on the wire (`"pcm_s16le"`, ...).
    pub fn wire_name(self) -> &'static str {
        match self {
            AudioFormat::PcmS16le => "pcm_s16le",
            AudioFormat::PcmF32le => "pcm_f32le",
            AudioFormat::Ulaw => "ulaw",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Webm => "webm",
        }
    }

    /// Parses a wire name; returns None for a name LMNT does not define. The legacy name
    /// `raw` is 16-bit PCM.
    pub fn from_wire_name(name: &str) -> Option<AudioFormat> {
        Some(match name {
            "pcm_s16le" | "raw" => AudioFormat::PcmS16le,
            "pcm_f32le" => AudioFormat::PcmF32le,
            "ulaw" => AudioFormat::Ulaw,
            "mp3" => AudioFormat::Mp3,
            "webm" => AudioFormat::Webm,
            _ => return None,
        })
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// The container whose signature opens `audio`, if any: what a server that ignored the
/// requested raw PCM format would send first (a WAV header, MP3 with an ID3 tag, Ogg, WebM,
/// FLAC). Raw PCM could begin with these bytes only by a coincidence of four exact sample
/// bytes at the very start of a session's audio, where speech begins near silence.
pub fn container_signature(audio: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 5] = [
        (b"RIFF", "wav"),
        (b"ID3", "mp3"),
        (b"OggS", "ogg"),
        (&[0x1a, 0x45, 0xdf, 0xa3], "webm"),
        (b"fLaC", "flac"),
    ];
    SIGNATURES
        .iter()
        .find(|(magic, _)| audio.starts_with(magic))
        .map(|(_, name)| *name)
}

/// Why a base URL cannot give a session URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The base URL does not parse as a URL.
    #[error("invalid LMNT base URL {base:?}: {reason}")]
    Invalid { base: String, reason: String },
    /// The scheme is none of http, https, ws, wss.
    #[error("unsupported scheme {0:?} in LMNT base URL (use https, http, wss or ws)")]
    Scheme(String),
}

/// The session URL for a base URL, mapped as LMNT's SDKs do: strip trailing `/`, `https` ->
/// `wss`, `http` -> `ws` (`ws`/`wss` kept), keep any path prefix, append
/// `/v1/ai/speech/stream`. Query and fragment of the base are dropped.
pub fn session_url(base: &str) -> Result<Url, UrlError> {
    let trimmed = base.trim().trim_end_matches('/');
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => {
            return Err(UrlError::Invalid {
                base: base.to_owned(),
                reason: "no scheme".into(),
            })
        }
    };
    let ws_scheme = match scheme.as_str() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        _ => return Err(UrlError::Scheme(scheme)),
    };
    let mut url = Url::parse(&format!("{ws_scheme}://{rest}")).map_err(|e| UrlError::Invalid {
        base: base.to_owned(),
        reason: e.to_string(),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::Invalid {
            base: base.to_owned(),
            reason: "no host".into(),
        });
    }
    url.set_query(None);
    url.set_fragment(None);
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}{SESSION_PATH}"));
    Ok(url)
}

/// The settings the init frame carries.
#[derive(Debug, Clone)]
pub struct InitParams<'a> {
    pub api_key: &'a Secret,
    pub voice: &'a str,
    pub format: AudioFormat,
    pub sample_rate: u32,
    pub language: Option<&'a str>,
    pub return_timestamps: bool,
}

/// An encoded init frame. It carries the API key, so `Debug` prints no content; the text
/// is reachable only through [`InitFrame::into_text`], for the socket.
pub struct InitFrame(String);

impl InitFrame {
    /// The JSON text to send as the first frame.
    pub fn into_text(self) -> String {
        self.0
    }
}

impl fmt::Debug for InitFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InitFrame([redacted])")
    }
}

#[derive(Serialize)]
struct InitWire<'a> {
    #[serde(rename = "X-API-Key")]
    api_key: &'a str,
    #[serde(rename = "lmnt-version")]
    lmnt_version: &'a str,
    voice: &'a str,
    format: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    return_timestamps: bool,
    sample_rate: u32,
}

/// Encodes the init frame in the key order `lmnt` 2.13.0 uses.
pub fn encode_init(p: &InitParams<'_>) -> InitFrame {
    let wire = InitWire {
        api_key: p.api_key.expose(),
        lmnt_version: LMNT_VERSION,
        voice: p.voice,
        format: p.format.wire_name(),
        language: p.language,
        return_timestamps: p.return_timestamps,
        sample_rate: p.sample_rate,
    };
    // Serializing a struct of strings, a bool and an integer cannot fail.
    InitFrame(serde_json::to_string(&wire).unwrap_or_default())
}

/// A client command after init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientCommand {
    /// Append text to the session's text stream.
    Text { text: String },
    /// Speak everything buffered; acknowledged by `flush_complete` with this nonce.
    Flush { nonce: u64 },
    /// Drop buffered text; acknowledged by `reset_complete` with this nonce.
    Reset { nonce: u64 },
    /// Speak the rest, then the server closes the session.
    Finish,
}

impl ClientCommand {
    /// The JSON text frame for this command (`{"type":"text","text":...}`, ...).
    pub fn encode(&self) -> String {
        // An enum of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One timestamp entry: a text token and where its audio lies, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timestamp {
    pub text: String,
    pub start: f64,
    pub duration: f64,
}

/// The error category LMNT names in an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorSlug {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    PaymentRequired,
    RateLimit,
    InternalServer,
    /// A slug this version does not know, kept verbatim.
    Other(String),
}

impl ErrorSlug {
    /// Parses a wire slug (`"authentication_error"`, ...).
    pub fn from_wire(s: &str) -> ErrorSlug {
        match s {
            "invalid_request_error" => ErrorSlug::InvalidRequest,
            "authentication_error" => ErrorSlug::Authentication,
            "permission_error" => ErrorSlug::Permission,
            "not_found_error" => ErrorSlug::NotFound,
            "payment_required_error" => ErrorSlug::PaymentRequired,
            "rate_limit_error" => ErrorSlug::RateLimit,
            "internal_server_error" => ErrorSlug::InternalServer,
            other => ErrorSlug::Other(other.to_owned()),
        }
    }

    /// The wire slug.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorSlug::InvalidRequest => "invalid_request_error",
            ErrorSlug::Authentication => "authentication_error",
            ErrorSlug::Permission => "permission_error",
            ErrorSlug::NotFound => "not_found_error",
            ErrorSlug::PaymentRequired => "payment_required_error",
            ErrorSlug::RateLimit => "rate_limit_error",
            ErrorSlug::InternalServer => "internal_server_error",
            ErrorSlug::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed server text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The session is established.
    Ready { request_id: Option<String> },
    /// Timestamps for the audio frame just received.
    Timestamps(Vec<Timestamp>),
    /// All audio for the flush with this nonce has been sent.
    FlushComplete { nonce: u64 },
    /// The reset with this nonce is done; audio before it may be dropped.
    ResetComplete { nonce: u64 },
    /// The server failed the session; it closes right after.
    Error {
        slug: ErrorSlug,
        message: String,
        request_id: Option<String>,
    },
    /// A JSON object with a `type` this version does not know (ignored, as lmnt-node does).
    Unknown { kind: String },
}

/// A server text frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, or not an object.
    #[error("server text frame is not a JSON object: {0}")]
    NotJson(String),
    /// A JSON object without a string `type`.
    #[error("server text frame has no \"type\"")]
    NoType,
    /// A known `type` whose fields are missing or of the wrong type.
    #[error("server {kind} frame is malformed: {reason}")]
    Malformed { kind: String, reason: String },
}

#[derive(Deserialize)]
struct ReadyWire {
    request_id: Option<String>,
}
#[derive(Deserialize)]
struct TimestampsWire {
    #[serde(default)]
    timestamps: Option<Vec<Timestamp>>,
}
#[derive(Deserialize)]
struct NonceWire {
    nonce: u64,
}
#[derive(Deserialize)]
struct ErrorWire {
    error: ErrorBodyWire,
    #[serde(default)]
    request_id: Option<String>,
}
#[derive(Deserialize)]
struct ErrorBodyWire {
    #[serde(rename = "type", default)]
    slug: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses one server text frame.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, FrameError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(FrameError::NotJson("not an object".into()));
    }
    let kind = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or(FrameError::NoType)?
        .to_owned();
    let malformed = |e: serde_json::Error| FrameError::Malformed {
        kind: kind.clone(),
        reason: e.to_string(),
    };
    Ok(match kind.as_str() {
        "ready" => {
            let w: ReadyWire = serde_json::from_value(value).map_err(malformed)?;
            ServerFrame::Ready {
                request_id: w.request_id,
            }
        }
        "timestamps" => {
            let w: TimestampsWire = serde_json::from_value(value).map_err(malformed)?;
            ServerFrame::Timestamps(w.timestamps.unwrap_or_default())
        }
        "flush_complete" => {
            let w: NonceWire = serde_json::from_value(value).map_err(malformed)?;
            ServerFrame::FlushComplete { nonce: w.nonce }
        }
        "reset_complete" => {
            let w: NonceWire = serde_json::from_value(value).map_err(malformed)?;
            ServerFrame::ResetComplete { nonce: w.nonce }
        }
        "error" => {
            let w: ErrorWire = serde_json::from_value(value).map_err(malformed)?;
            ServerFrame::Error {
                slug: ErrorSlug::from_wire(w.error.slug.as_deref().unwrap_or("")),
                message: w.error.message.unwrap_or_default(),
                request_id: w.request_id,
            }
        }
        _ => ServerFrame::Unknown { kind },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_url_follows_the_sdk_mapping() {
        let cases = [
            (
                "https://api.lmnt.com",
                "wss://api.lmnt.com/v1/ai/speech/stream",
            ),
            (
                "https://api.lmnt.com/",
                "wss://api.lmnt.com/v1/ai/speech/stream",
            ),
            (
                "http://127.0.0.1:9000",
                "ws://127.0.0.1:9000/v1/ai/speech/stream",
            ),
            (
                "http://localhost:9000/proxy/lmnt/",
                "ws://localhost:9000/proxy/lmnt/v1/ai/speech/stream",
            ),
            ("ws://h:1", "ws://h:1/v1/ai/speech/stream"),
            ("wss://h", "wss://h/v1/ai/speech/stream"),
        ];
        for (base, want) in cases {
            assert_eq!(session_url(base).unwrap().as_str(), want, "base {base}");
        }
        assert!(matches!(session_url("ftp://x"), Err(UrlError::Scheme(_))));
        assert!(matches!(
            session_url("nonsense"),
            Err(UrlError::Invalid { .. })
        ));
        assert!(session_url("http://").is_err());
    }

    #[test]
    fn init_matches_the_sdk_and_hides_the_key_from_debug() {
        let key = Secret::new("k-123");
        let f = encode_init(&InitParams {
            api_key: &key,
            voice: "leah",
            format: AudioFormat::PcmS16le,
            sample_rate: 24000,
            language: Some("en"),
            return_timestamps: false,
        });
        assert!(!format!("{f:?}").contains("k-123"));
        assert_eq!(
            f.into_text(),
            r#"{"X-API-Key":"k-123","lmnt-version":"1.2","voice":"leah","format":"pcm_s16le","language":"en","return_timestamps":false,"sample_rate":24000}"#
        );
    }

    #[test]
    fn commands_encode_as_typed_json() {
        assert_eq!(
            ClientCommand::Text {
                text: "hi \"x\"".into()
            }
            .encode(),
            r#"{"type":"text","text":"hi \"x\""}"#
        );
        assert_eq!(
            ClientCommand::Flush { nonce: 1 }.encode(),
            r#"{"type":"flush","nonce":1}"#
        );
        assert_eq!(
            ClientCommand::Reset { nonce: 2 }.encode(),
            r#"{"type":"reset","nonce":2}"#
        );
        assert_eq!(ClientCommand::Finish.encode(), r#"{"type":"finish"}"#);
    }

    #[test]
    fn server_frames_parse() {
        assert_eq!(
            parse_server_frame(r#"{"type": "ready", "request_id": "r1"}"#),
            Ok(ServerFrame::Ready {
                request_id: Some("r1".into())
            })
        );
        assert_eq!(
            parse_server_frame(r#"{"type":"flush_complete","nonce":3}"#),
            Ok(ServerFrame::FlushComplete { nonce: 3 })
        );
        assert_eq!(
            parse_server_frame(r#"{"type":"reset_complete","nonce":4}"#),
            Ok(ServerFrame::ResetComplete { nonce: 4 })
        );
        assert_eq!(
            parse_server_frame(
                r#"{"type":"timestamps","timestamps":[{"text":"Hi","start":0.0,"duration":0.25}]}"#
            ),
            Ok(ServerFrame::Timestamps(vec![Timestamp {
                text: "Hi".into(),
                start: 0.0,
                duration: 0.25
            }]))
        );
        assert_eq!(
            parse_server_frame(r#"{"type":"timestamps"}"#),
            Ok(ServerFrame::Timestamps(vec![]))
        );
        assert_eq!(
            parse_server_frame(
                r#"{"type":"error","error":{"type":"authentication_error","message":"bad key"},"request_id":"r"}"#
            ),
            Ok(ServerFrame::Error {
                slug: ErrorSlug::Authentication,
                message: "bad key".into(),
                request_id: Some("r".into())
            })
        );
        assert_eq!(
            parse_server_frame(r#"{"type":"later"}"#),
            Ok(ServerFrame::Unknown {
                kind: "later".into()
            })
        );
    }

    #[test]
    fn broken_server_frames_are_errors_not_panics() {
        for bad in ["", "nope", "[1]", "{}", r#"{"type":1}"#] {
            assert!(parse_server_frame(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_server_frame(r#"{"type":"flush_complete","nonce":"x"}"#),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            parse_server_frame(r#"{"type":"error","error":3}"#),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn format_names_round_trip() {
        for f in [
            AudioFormat::PcmS16le,
            AudioFormat::PcmF32le,
            AudioFormat::Ulaw,
            AudioFormat::Mp3,
            AudioFormat::Webm,
        ] {
            assert_eq!(AudioFormat::from_wire_name(f.wire_name()), Some(f));
        }
        assert_eq!(
            AudioFormat::from_wire_name("raw"),
            Some(AudioFormat::PcmS16le)
        );
        assert_eq!(AudioFormat::from_wire_name("wav"), None);
    }

    #[test]
    fn container_signatures_are_named_and_pcm_is_not_mistaken_for_one() {
        assert_eq!(
            container_signature(b"RIFF\x24\x00\x00\x00WAVE"),
            Some("wav")
        );
        assert_eq!(container_signature(b"ID3\x04\x00"), Some("mp3"));
        assert_eq!(container_signature(b"OggS\x00"), Some("ogg"));
        assert_eq!(
            container_signature(&[0x1a, 0x45, 0xdf, 0xa3, 0x01]),
            Some("webm")
        );
        assert_eq!(container_signature(b"fLaC"), Some("flac"));
        // Silence, a quiet start and a frame too short to tell are PCM.
        assert_eq!(container_signature(&[0; 960]), None);
        assert_eq!(container_signature(&[0x01, 0x00, 0xff, 0xff]), None);
        assert_eq!(container_signature(b"RI"), None);
    }
}

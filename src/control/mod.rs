//! The bot's control channel (interface.md section 4): JSON text frames, one object each,
//! with a `type`. This module is the codec only; the per-call task in [`crate::bridge`] acts
//! on the messages and the HTTP layer moves the frames.

use std::collections::BTreeMap;
pub mod rate;

use serde::{Deserialize, Serialize};

use crate::fault::Fault;

/// Largest control frame accepted, whatever the configured text limits: a text message is
/// bounded by `limits.max_text_message_bytes`, and JSON escaping can at most sextuple it
/// (`\uXXXX`); anything beyond this is not a control message.
pub const MAX_CONTROL_FRAME_BYTES: usize = 256 * 1024;
/// The control socket's read buffer (either side of the connection). tungstenite zero-fills
/// its read buffer up to this size before every read: its default of 128 KiB meant a
/// 128 KiB memset per bot frame and per call, a tenth of the daemon's CPU under load. A
/// bot's frames are small JSON; a larger one is simply read in several reads.
pub const CONTROL_READ_BUFFER_BYTES: usize = 4 * 1024;

/// A message from the bot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BotMessage {
    /// Append text to the current utterance.
    Text { text: String },
    /// End of utterance: speak everything buffered.
    Flush,
    /// Barge-in: stop playout at once, drop queued audio and unspoken text.
    Clear,
    /// Report when all audio before this point has been played into the call.
    Mark { name: String },
    /// Send key presses to the caller as RFC 4733 events (for a bot navigating another IVR);
    /// the bot's audio pauses meanwhile.
    Dtmf {
        /// `0-9 * # A-D`.
        digits: String,
        /// Each tone's length (default 100 ms).
        duration_ms: Option<u32>,
        /// Silence between tones (default 60 ms).
        gap_ms: Option<u32>,
    },
    /// End the call.
    Hangup,
}

/// A message to the bot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum BotEvent {
    /// Sent when the bot attaches.
    #[serde(rename = "call.started")]
    CallStarted {
        call: String,
        voice: String,
        sample_rate: u32,
        /// The codec the call negotiated (SDP name, e.g. `opus`).
        codec: &'static str,
        /// PCM format of the binary frames carrying the caller's audio.
        caller_audio: &'static str,
        /// The `x-` query parameters of the call's `POST /v1/calls`, as given.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        custom: BTreeMap<String, String>,
    },
    /// The utterance's first frame went into the call.
    #[serde(rename = "utterance.started")]
    UtteranceStarted { utterance: u64 },
    /// The utterance's last frame went into the call.
    #[serde(rename = "utterance.done")]
    UtteranceDone {
        utterance: u64,
        audio_ms: u64,
        /// The text the bot sent for it.
        text: String,
    },
    /// Everything before the mark has been played (`played`), or a `clear` dropped audio it
    /// waited for (`played: false`).
    #[serde(rename = "mark")]
    Mark { name: String, played: bool },
    /// After `clear`: how much of the interrupted utterance the caller heard, in time and in
    /// words (those whose audio had fully played before the fade, from LMNT's timestamps).
    #[serde(rename = "cleared")]
    Cleared {
        utterance: u64,
        played_ms: u64,
        heard_text: String,
    },
    /// The caller pressed a key (RFC 4733), reported once per press.
    #[serde(rename = "dtmf")]
    Dtmf { digit: String, duration_ms: u32 },
    /// The last of the bot's key presses went out.
    #[serde(rename = "dtmf.sent")]
    DtmfSent { digits: String },
    /// A named failure.
    #[serde(rename = "error")]
    Error { code: &'static str, message: String },
    /// The call is over.
    #[serde(rename = "call.ended")]
    CallEnded {
        reason: String,
        /// The call's recording (a WAV, finalized as the call ends), when it was recorded.
        #[serde(skip_serializing_if = "Option::is_none")]
        recording: Option<String>,
    },
}

impl BotEvent {
    /// The JSON text frame for this event.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Why a control frame was rejected. The call goes on; the bot gets an `error` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The frame is not JSON, or not one of the message shapes (bot fault, do not retry as is).
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The JSON has a `type` this daemon does not know (bot fault).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A binary frame: the bot channel carries JSON text only (bot fault).
    #[error("binary frames are not accepted from the bot")]
    BinaryFrame,
    /// The frame is larger than [`MAX_CONTROL_FRAME_BYTES`] (bot fault).
    #[error("control frame of {len} bytes exceeds {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// One `text` message exceeds `limits.max_text_message_bytes`; none of it is spoken (bot fault).
    #[error("text message of {len} bytes exceeds the limit of {max} bytes; it was dropped")]
    TextTooLong { len: usize, max: usize },
    /// The utterance would exceed `limits.max_utterance_bytes`; the message is dropped and the
    /// text accepted before it is still spoken whole at the flush (bot fault).
    #[error(
        "utterance would reach {len} bytes, over the limit of {max} bytes; the message was dropped"
    )]
    UtteranceTooLong { len: usize, max: usize },
    /// `flush` with no text since the last flush: nothing to speak (bot fault, harmless).
    #[error("flush with no text since the previous flush")]
    EmptyUtterance,
    /// `dtmf` on a call whose caller did not offer `telephone-event` (bot fault; the call
    /// cannot carry key presses).
    #[error("the caller's offer carries no telephone-event: key presses cannot be sent")]
    DtmfUnavailable,
    /// `dtmf` while the previous digits are still going out (bot fault; retry after
    /// `dtmf.sent`).
    #[error("key presses are still being sent; wait for dtmf.sent")]
    DtmfBusy,
    /// The digits or their timing are invalid (bot fault).
    #[error(transparent)]
    Dtmf(#[from] crate::codec::dtmf::DtmfError),
    /// The bot exceeded the call's message or flush rate (`limits.bot_*`); the message was
    /// dropped unread (bot fault; the same message passes after `retry_after_ms`).
    #[error("over the call's rate limit for {limit}: the message was dropped; retry in {retry_after_ms} ms")]
    RateLimited {
        /// `messages` or `flushes`.
        limit: &'static str,
        /// How long until the same message would pass.
        retry_after_ms: u64,
    },
}

impl From<rate::Refused> for ControlError {
    fn from(refused: rate::Refused) -> Self {
        ControlError::RateLimited {
            limit: refused.limit.name(),
            // Rounded up: retrying after this many milliseconds passes.
            retry_after_ms: u64::try_from(refused.retry_after.as_micros().div_ceil(1000))
                .unwrap_or(u64::MAX),
        }
    }
}

impl ControlError {
    /// The `code` of the `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Malformed(_) => "malformed_message",
            ControlError::UnknownType(_) => "unknown_message_type",
            ControlError::BinaryFrame => "binary_frame",
            ControlError::FrameTooLarge { .. } => "frame_too_large",
            ControlError::TextTooLong { .. } => "text_too_long",
            ControlError::UtteranceTooLong { .. } => "utterance_too_long",
            ControlError::EmptyUtterance => "empty_utterance",
            ControlError::DtmfUnavailable => "dtmf_unavailable",
            ControlError::DtmfBusy => "dtmf_busy",
            ControlError::Dtmf(err) => err.code(),
            ControlError::RateLimited { .. } => "rate_limited",
        }
    }

    /// Always the bot's.
    pub fn fault(&self) -> Fault {
        Fault::Bot
    }

    /// The event telling the bot about it.
    pub fn to_event(&self) -> BotEvent {
        BotEvent::Error {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Parses one text frame from the bot.
pub fn parse(frame: &str) -> Result<BotMessage, ControlError> {
    if frame.len() > MAX_CONTROL_FRAME_BYTES {
        return Err(ControlError::FrameTooLarge {
            len: frame.len(),
            max: MAX_CONTROL_FRAME_BYTES,
        });
    }
    match serde_json::from_str::<BotMessage>(frame) {
        Ok(message) => Ok(message),
        Err(err) => {
            // Tell "unknown type" apart from "malformed" so the bot sees the useful error.
            #[derive(Deserialize)]
            struct Tagged {
                #[serde(rename = "type")]
                kind: String,
            }
            match serde_json::from_str::<Tagged>(frame) {
                Ok(Tagged { kind })
                    if !matches!(
                        kind.as_str(),
                        "text" | "flush" | "clear" | "mark" | "dtmf" | "hangup"
                    ) =>
                {
                    Err(ControlError::UnknownType(kind))
                }
                _ => Err(ControlError::Malformed(err.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_bot_message() {
        assert_eq!(
            parse(r#"{"type":"text","text":"Hi"}"#),
            Ok(BotMessage::Text { text: "Hi".into() })
        );
        assert_eq!(parse(r#"{"type":"flush"}"#), Ok(BotMessage::Flush));
        assert_eq!(parse(r#"{"type":"clear"}"#), Ok(BotMessage::Clear));
        assert_eq!(
            parse(r#"{"type":"mark","name":"m1"}"#),
            Ok(BotMessage::Mark { name: "m1".into() })
        );
        assert_eq!(parse(r#"{"type":"hangup"}"#), Ok(BotMessage::Hangup));
        assert_eq!(
            parse(r#"{"type":"dtmf","digits":"1#","duration_ms":80}"#),
            Ok(BotMessage::Dtmf {
                digits: "1#".into(),
                duration_ms: Some(80),
                gap_ms: None
            })
        );
        assert_eq!(
            BotEvent::Dtmf {
                digit: "5".into(),
                duration_ms: 120
            }
            .to_json(),
            r#"{"type":"dtmf","digit":"5","duration_ms":120}"#
        );
    }

    #[test]
    fn names_each_kind_of_bad_frame() {
        assert_eq!(parse("not json").unwrap_err().code(), "malformed_message");
        assert_eq!(
            parse(r#"{"text":"x"}"#).unwrap_err().code(),
            "malformed_message"
        );
        assert_eq!(
            parse(r#"{"type":"text"}"#).unwrap_err().code(),
            "malformed_message"
        );
        assert_eq!(
            parse(r#"{"type":"text","text":5}"#).unwrap_err().code(),
            "malformed_message"
        );
        assert_eq!(
            parse(r#"{"type":"dance"}"#),
            Err(ControlError::UnknownType("dance".into()))
        );
        let huge = format!(
            r#"{{"type":"text","text":"{}"}}"#,
            "a".repeat(MAX_CONTROL_FRAME_BYTES)
        );
        assert_eq!(parse(&huge).unwrap_err().code(), "frame_too_large");
    }

    #[test]
    fn events_serialise_as_the_interface_says() {
        assert_eq!(
            BotEvent::UtteranceDone {
                utterance: 2,
                audio_ms: 480,
                text: "Hi.".into()
            }
            .to_json(),
            r#"{"type":"utterance.done","utterance":2,"audio_ms":480,"text":"Hi."}"#
        );
        assert_eq!(
            BotEvent::CallEnded {
                reason: "hangup".into(),
                recording: None
            }
            .to_json(),
            r#"{"type":"call.ended","reason":"hangup"}"#
        );
        assert_eq!(
            ControlError::TextTooLong { len: 9, max: 4 }
                .to_event()
                .to_json(),
            r#"{"type":"error","code":"text_too_long","message":"text message of 9 bytes exceeds the limit of 4 bytes; it was dropped"}"#
        );
    }
}

//! The three wire dialects on the server side (`lmnt-protocol.md` sections 3 to 6): parsing
//! the init frame and client commands, and encoding replies. Pure functions, no I/O.

use serde_json::{json, Map, Value};

use crate::lmnt::protocol::{AudioFormat, ErrorSlug, Timestamp};

/// Sample rates LMNT sessions offer.
pub const SAMPLE_RATES: [u32; 3] = [8000, 16000, 24000];

/// Longest voice id accepted: LMNT ids are short slugs; anything longer is not a voice.
pub const MAX_VOICE_ID_CHARS: usize = 64;

/// Which SDK generation is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `lmnt` >= 2.6, `lmnt-node` 2.12: typed JSON with `type`.
    Typed,
    /// `lmnt` 2.2 to 2.5, `lmnt-node` 2.11: `command` + `nonce`, `complete` acks.
    Pv2,
    /// Older SDKs: `{"flush":true}`, `{"eof":true}`, extras before every binary frame.
    Legacy,
}

impl Dialect {
    /// A stable lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Typed => "typed",
            Dialect::Pv2 => "pv2",
            Dialect::Legacy => "legacy",
        }
    }
}

/// A valid session init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInit {
    pub dialect: Dialect,
    /// The key as sent; compared with `--require-key` and never logged.
    pub api_key: Option<String>,
    pub voice: String,
    pub format: AudioFormat,
    pub sample_rate: u32,
    /// None for "auto" or absent.
    pub language: Option<String>,
    /// Typed: `return_timestamps`; pv2/legacy: `return_extras` or `send_extras`.
    pub extras: bool,
}

/// A refusal to send to the client before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub slug: ErrorSlug,
    pub message: String,
}

impl Refusal {
    /// A refusal with this slug and message.
    pub fn new(slug: ErrorSlug, message: impl Into<String>) -> Self {
        Refusal {
            slug,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Refusal::new(ErrorSlug::InvalidRequest, message)
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "True" || s == "true",
        _ => false,
    }
}

fn parse_object(text: &str) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Refusal::invalid("each message must be a JSON object")),
        Err(e) => Err(Refusal::invalid(format!("malformed JSON: {e}"))),
    }
}

/// Detects the dialect of an init object (section 6).
pub fn detect_dialect(init: &Map<String, Value>) -> Dialect {
    if init.contains_key("lmnt-version") || init.get("type").and_then(Value::as_str) == Some("init")
    {
        return Dialect::Typed;
    }
    match init.get("protocol_version") {
        Some(Value::Number(n)) if n.as_u64() == Some(2) => Dialect::Pv2,
        Some(Value::String(s)) if s == "2" => Dialect::Pv2,
        _ => Dialect::Legacy,
    }
}

/// Parses the init frame. On a refusal, the dialect is returned too (when the frame was a
/// JSON object) so the error frame can be worded for the client.
pub fn parse_init(text: &str) -> Result<SessionInit, (Dialect, Refusal)> {
    let m = parse_object(text).map_err(|r| (Dialect::Typed, r))?;
    let dialect = detect_dialect(&m);
    let fail = |r: Refusal| (dialect, r);
    let api_key = match m.get("X-API-Key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(fail(Refusal::invalid("X-API-Key must be a string"))),
    };
    let voice = match m.get("voice") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(fail(Refusal::invalid("voice is required"))),
    };
    let voice_ok = voice.chars().count() <= MAX_VOICE_ID_CHARS
        && voice
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !voice_ok {
        return Err(fail(Refusal::new(
            ErrorSlug::NotFound,
            format!("voice {voice:?} not found"),
        )));
    }
    let format = match m.get("format") {
        None | Some(Value::Null) => AudioFormat::Mp3,
        Some(Value::String(s)) => match AudioFormat::from_wire_name(s) {
            Some(AudioFormat::Webm) => {
                return Err(fail(Refusal::invalid(
                    "format \"webm\" is not supported by local-tts; use mp3, pcm_s16le, pcm_f32le or ulaw",
                )))
            }
            Some(f) => f,
            None => {
                return Err(fail(Refusal::invalid(format!(
                    "unknown format {s:?}; use mp3, pcm_s16le, pcm_f32le or ulaw"
                ))))
            }
        },
        Some(_) => return Err(fail(Refusal::invalid("format must be a string"))),
    };
    let sample_rate = match m.get("sample_rate") {
        None | Some(Value::Null) => Some(24_000),
        Some(Value::Number(n)) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Some(Value::String(s)) => s.trim().parse::<u32>().ok(),
        Some(_) => None,
    };
    let sample_rate = match sample_rate {
        Some(r) if SAMPLE_RATES.contains(&r) => r,
        _ => {
            return Err(fail(Refusal::invalid(format!(
                "sample_rate must be 8000, 16000 or 24000, got {}",
                m.get("sample_rate")
                    .map(Value::to_string)
                    .unwrap_or_default()
            ))))
        }
    };
    let language = match m.get("language") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s))
            if (2..=3).contains(&s.len()) && s.chars().all(|c| c.is_ascii_lowercase()) =>
        {
            Some(s.clone())
        }
        Some(other) => {
            return Err(fail(Refusal::invalid(format!(
                "language must be \"auto\" or an ISO-639-1 code, got {other}"
            ))))
        }
    };
    let extras = match dialect {
        Dialect::Typed => truthy(m.get("return_timestamps")),
        _ => truthy(m.get("return_extras")) || truthy(m.get("send_extras")),
    };
    Ok(SessionInit {
        dialect,
        api_key,
        voice,
        format,
        sample_rate,
        language,
        extras,
    })
}

/// A client command after init. One frame may carry several (legacy `{"text":..,"flush":true}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Text(String),
    /// `nonce` is None in the legacy dialect (no acknowledgement).
    Flush(Option<u64>),
    Reset(Option<u64>),
    Finish,
}

fn nonce(m: &Map<String, Value>) -> Result<u64, Refusal> {
    match m.get("nonce") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Refusal::invalid("nonce must be a non-negative integer")),
    }
}

fn text_of(m: &Map<String, Value>) -> Result<Option<String>, Refusal> {
    match m.get("text") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::invalid("text must be a string")),
    }
}

/// Parses one client text frame after init.
pub fn parse_command(dialect: Dialect, text: &str) -> Result<Vec<Command>, Refusal> {
    let m = parse_object(text)?;
    match dialect {
        Dialect::Typed => {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            Ok(vec![match kind {
                "text" => Command::Text(
                    text_of(&m)?.ok_or_else(|| Refusal::invalid("text message without text"))?,
                ),
                "flush" => Command::Flush(Some(nonce(&m)?)),
                "reset" => Command::Reset(Some(nonce(&m)?)),
                "finish" => Command::Finish,
                "" => return Err(Refusal::invalid("message without \"type\"")),
                other => return Err(Refusal::invalid(format!("unknown message type {other:?}"))),
            }])
        }
        Dialect::Pv2 | Dialect::Legacy => {
            let mut out = Vec::new();
            if let Some(t) = text_of(&m)? {
                out.push(Command::Text(t));
            }
            match m.get("command").and_then(Value::as_str) {
                Some("flush") => out.push(Command::Flush(Some(nonce(&m)?))),
                Some("reset") => out.push(Command::Reset(Some(nonce(&m)?))),
                Some("eof") => out.push(Command::Finish),
                Some(other) => return Err(Refusal::invalid(format!("unknown command {other:?}"))),
                None => {}
            }
            if truthy(m.get("flush")) {
                out.push(Command::Flush(None));
            }
            if truthy(m.get("eof")) {
                out.push(Command::Finish);
            }
            if out.is_empty() {
                return Err(Refusal::invalid("message has no text and no command"));
            }
            Ok(out)
        }
    }
}

/// The `ready` frame (typed only; None for the other dialects).
pub fn ready(dialect: Dialect, request_id: &str) -> Option<String> {
    (dialect == Dialect::Typed)
        .then(|| json!({"type": "ready", "request_id": request_id}).to_string())
}

/// The error frame in the client's dialect.
pub fn error(dialect: Dialect, refusal: &Refusal, request_id: &str) -> String {
    match dialect {
        Dialect::Typed => json!({
            "type": "error",
            "error": {"type": refusal.slug.as_str(), "message": refusal.message},
            "request_id": request_id,
        })
        .to_string(),
        Dialect::Pv2 | Dialect::Legacy => json!({ "error": refusal.message }).to_string(),
    }
}

/// The acknowledgement of a flush; None when the dialect has none (legacy).
pub fn flush_complete(dialect: Dialect, nonce: Option<u64>) -> Option<String> {
    match (dialect, nonce) {
        (Dialect::Typed, n) => {
            Some(json!({"type": "flush_complete", "nonce": n.unwrap_or(0)}).to_string())
        }
        (Dialect::Pv2, n) => {
            Some(json!({"complete": "flush", "nonce": n.unwrap_or(0)}).to_string())
        }
        (Dialect::Legacy, _) => None,
    }
}

/// The acknowledgement of a reset; None when the dialect has none (legacy).
pub fn reset_complete(dialect: Dialect, nonce: Option<u64>) -> Option<String> {
    match (dialect, nonce) {
        (Dialect::Typed, n) => {
            Some(json!({"type": "reset_complete", "nonce": n.unwrap_or(0)}).to_string())
        }
        (Dialect::Pv2, n) => {
            Some(json!({"complete": "reset", "nonce": n.unwrap_or(0)}).to_string())
        }
        (Dialect::Legacy, _) => None,
    }
}

/// Typed `timestamps` frame.
pub fn timestamps(ts: &[Timestamp]) -> String {
    json!({"type": "timestamps", "timestamps": ts}).to_string()
}

/// pv2/legacy extras frame.
pub fn extras(durations: &[Timestamp], buffer_empty: bool) -> String {
    json!({"durations": durations, "buffer_empty": buffer_empty}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_sdk_generation() {
        let typed = r#"{"X-API-Key": "k", "lmnt-version": "1.2", "voice": "leah", "format": "pcm_s16le", "sample_rate": 24000}"#;
        let i = parse_init(typed).unwrap();
        assert_eq!(i.dialect, Dialect::Typed);
        assert_eq!(i.format, AudioFormat::PcmS16le);
        let pv2 = r#"{"X-API-Key": "k", "voice": "leah", "protocol_version": 2, "sample_rate": "16000", "return_extras": "True"}"#;
        let i = parse_init(pv2).unwrap();
        assert_eq!(
            (i.dialect, i.sample_rate, i.extras),
            (Dialect::Pv2, 16000, true)
        );
        assert_eq!(i.format, AudioFormat::Mp3);
        let legacy = r#"{"X-API-Key":"k","voice":"tones","format":"raw","send_extras":true}"#;
        let i = parse_init(legacy).unwrap();
        assert_eq!(
            (i.dialect, i.format, i.extras),
            (Dialect::Legacy, AudioFormat::PcmS16le, true)
        );
        let coval = r#"{"type":"init","voice":"v"}"#;
        assert_eq!(parse_init(coval).unwrap().dialect, Dialect::Typed);
    }

    #[test]
    fn refuses_bad_inits_with_slugs() {
        let cases = [
            (r#"{"lmnt-version":"1.2"}"#, ErrorSlug::InvalidRequest),
            (
                r#"{"lmnt-version":"1.2","voice":"a b"}"#,
                ErrorSlug::NotFound,
            ),
            (
                r#"{"lmnt-version":"1.2","voice":"v","format":"flac"}"#,
                ErrorSlug::InvalidRequest,
            ),
            (
                r#"{"lmnt-version":"1.2","voice":"v","format":"webm"}"#,
                ErrorSlug::InvalidRequest,
            ),
            (
                r#"{"lmnt-version":"1.2","voice":"v","sample_rate":44100}"#,
                ErrorSlug::InvalidRequest,
            ),
            (
                r#"{"lmnt-version":"1.2","voice":"v","sample_rate":"x"}"#,
                ErrorSlug::InvalidRequest,
            ),
            (
                r#"{"lmnt-version":"1.2","voice":"v","language":"english!"}"#,
                ErrorSlug::InvalidRequest,
            ),
            ("not json", ErrorSlug::InvalidRequest),
            ("[]", ErrorSlug::InvalidRequest),
        ];
        for (text, slug) in cases {
            let (_, r) = parse_init(text).unwrap_err();
            assert_eq!(r.slug, slug, "{text}");
        }
    }

    #[test]
    fn commands_per_dialect() {
        assert_eq!(
            parse_command(Dialect::Typed, r#"{"type": "text", "text": "Hi"}"#).unwrap(),
            vec![Command::Text("Hi".into())]
        );
        assert_eq!(
            parse_command(Dialect::Typed, r#"{"type":"flush","nonce":2}"#).unwrap(),
            vec![Command::Flush(Some(2))]
        );
        assert_eq!(
            parse_command(Dialect::Pv2, r#"{"command":"reset","nonce":1}"#).unwrap(),
            vec![Command::Reset(Some(1))]
        );
        assert_eq!(
            parse_command(Dialect::Pv2, r#"{"command":"eof"}"#).unwrap(),
            vec![Command::Finish]
        );
        assert_eq!(
            parse_command(Dialect::Legacy, r#"{"text":"a","flush":true}"#).unwrap(),
            vec![Command::Text("a".into()), Command::Flush(None)]
        );
        assert_eq!(
            parse_command(Dialect::Legacy, r#"{"eof": true}"#).unwrap(),
            vec![Command::Finish]
        );
        for (d, bad) in [
            (Dialect::Typed, "{"),
            (Dialect::Typed, r#"{"type":"dance"}"#),
            (Dialect::Typed, r#"{"type":"flush","nonce":-1}"#),
            (Dialect::Legacy, r#"{"other":1}"#),
            (Dialect::Pv2, r#"{"text":5}"#),
        ] {
            assert!(parse_command(d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_per_dialect() {
        assert_eq!(ready(Dialect::Pv2, "r"), None);
        assert!(ready(Dialect::Typed, "r").unwrap().contains("\"ready\""));
        let r = Refusal::new(ErrorSlug::Authentication, "bad key");
        let e: Value = serde_json::from_str(&error(Dialect::Typed, &r, "r")).unwrap();
        assert_eq!(e["error"]["type"], "authentication_error");
        let e: Value = serde_json::from_str(&error(Dialect::Legacy, &r, "r")).unwrap();
        assert_eq!(e["error"], "bad key");
        assert_eq!(flush_complete(Dialect::Legacy, None), None);
        assert_eq!(
            flush_complete(Dialect::Pv2, Some(3)).unwrap(),
            r#"{"complete":"flush","nonce":3}"#
        );
        assert_eq!(
            reset_complete(Dialect::Typed, Some(1)).unwrap(),
            r#"{"nonce":1,"type":"reset_complete"}"#
        );
    }
}

//! Bot dial-out: instead of waiting for a bot to open `GET /v1/calls/{id}/control`, the
//! daemon opens the bot's WebSocket when the call is created and speaks the same control
//! protocol over it (Twilio's `<Stream>` model: a bot is a stateless WebSocket server).
//!
//! - Which URL: `POST /v1/calls?bot=URL` when URL starts with one of `bots.url_prefixes`
//!   ([`DialSettings::target`]), else `bots.default_url`.
//! - Who is calling: the upgrade request carries `X-Lmnt-Bridge-Call: {id}` and
//!   `X-Lmnt-Bridge-Signature: t={unix seconds},v1={hex}` where hex is
//!   HMAC-SHA256(secret, "{t}.{id}") ([`signature`]), the secret being the systemd credential
//!   `bot-signing-secret`. A bot recomputes it and rejects strangers and stale timestamps.
//! - When the bot is unreachable or drops, the call goes on (the caller hears silence) and
//!   the connection is retried with backoff ([`retry::RetryBudget`]) for
//!   `bots.retry_budget_ms`; then the call ends with `bot_unreachable`.
//! - Redirects are never followed (a `3xx` is a failed attempt). The secret never reaches a
//!   log line (it is not even on the wire); this module never logs the bot's URL (it may
//!   carry a token), though `tungstenite` logs the upgrade request at trace level.

pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use crate::call::{AttachBotError, CallCommand, CallHandle};
use crate::config::BotsConfig;
use crate::control::{CONTROL_READ_BUFFER_BYTES, MAX_CONTROL_FRAME_BYTES};
use crate::fault::Fault;
use crate::secret::Secret;
use retry::{Next, RetryBudget};

/// The header naming the call a dial-out is for.
pub const CALL_HEADER: &str = "x-lmnt-bridge-call";
/// The header carrying the dial-out's timestamp and signature.
pub const SIGNATURE_HEADER: &str = "x-lmnt-bridge-signature";
/// Longest bot URL accepted in `?bot=`: URLs are short; more is abuse.
pub const MAX_BOT_URL_BYTES: usize = 2048;

/// Why a bot URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotUrlError {
    /// Not a `ws://` or `wss://` URL without credentials and fragment, of at most
    /// [`MAX_BOT_URL_BYTES`] (the caller's fault, or the operator's in the configuration).
    #[error("`{0}` is not a ws:// or wss:// URL without credentials or fragment")]
    Malformed(String),
    /// `?bot=` names a URL under none of `bots.url_prefixes` (the caller's fault: the
    /// operator did not allow that bot).
    #[error("the bot URL is not under any of the configured bots.url_prefixes")]
    NotAllowed,
}

impl BotUrlError {
    /// Whose fault: whoever supplied the URL (the caller, for `?bot=`).
    pub fn fault(&self) -> Fault {
        Fault::Caller
    }
}

/// Parses a bot URL: `ws://` or `wss://`, no credentials (they would be logged or leak in
/// `Referer`-like places), no fragment. Returns the normalized URL (host lowercased, default
/// port dropped), the form prefixes are compared in.
pub fn parse_bot_url(raw: &str) -> Result<Url, BotUrlError> {
    let malformed = || BotUrlError::Malformed(shorten(raw));
    if raw.len() > MAX_BOT_URL_BYTES {
        return Err(malformed());
    }
    let url = Url::parse(raw.trim()).map_err(|_| malformed())?;
    let ok = matches!(url.scheme(), "ws" | "wss")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none();
    if ok {
        Ok(url)
    } else {
        Err(malformed())
    }
}

/// The first 64 bytes of a URL for an error message (a URL's query may carry a token, but
/// the caller who sent it may read it back).
fn shorten(raw: &str) -> String {
    let mut end = raw.len().min(64);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_owned()
}

/// Why one connection attempt to the bot failed. Every cause is the bot's (or the network's
/// to it), and a retry may help: the call retries within its budget.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP, TLS and the upgrade did not finish within `bots.connect_timeout_ms`.
    #[error("no WebSocket upgrade within {0:?}")]
    Timeout(Duration),
    /// The bot answered the upgrade with another status (a `3xx` is not followed).
    #[error("the bot answered HTTP {0} instead of upgrading")]
    Refused(u16),
    /// The connection could not be made or broke during the handshake.
    #[error("connection failed: {0}")]
    Connect(String),
}

impl DialError {
    /// Always the bot's.
    pub fn fault(&self) -> Fault {
        Fault::Bot
    }

    /// Always: a bot restarting comes back.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// The dial-out settings every call uses, from `[bots]` and the signing secret.
#[derive(Debug, Clone)]
pub struct DialSettings {
    /// Normalized allowed prefixes, each ending in `/`.
    prefixes: Vec<String>,
    default_url: Option<Url>,
    connect_timeout: Duration,
    retry_budget: Duration,
    /// `None` only when dial-out is off (validation requires it otherwise).
    secret: Option<Secret>,
}

impl Default for DialSettings {
    /// Dial-out off: no allowed prefix, no default bot.
    fn default() -> Self {
        DialSettings::from_config(&BotsConfig::default())
    }
}

impl DialSettings {
    /// From a validated `[bots]` section.
    pub fn from_config(bots: &BotsConfig) -> Self {
        DialSettings {
            prefixes: bots
                .url_prefixes
                .iter()
                .filter_map(|p| parse_bot_url(p).ok())
                .map(String::from)
                .collect(),
            default_url: bots
                .default_url
                .as_deref()
                .and_then(|u| parse_bot_url(u).ok()),
            connect_timeout: Duration::from_millis(bots.connect_timeout_ms),
            retry_budget: Duration::from_millis(bots.retry_budget_ms),
            secret: bots.signing_secret.clone(),
        }
    }

    /// The bot a new call dials: `requested` (`?bot=`) when it is under an allowed prefix,
    /// else the default bot; `None` when neither (a bot may attach).
    pub fn target(&self, requested: Option<&str>) -> Result<Option<Url>, BotUrlError> {
        let Some(raw) = requested else {
            return Ok(self.default_url.clone());
        };
        let url = parse_bot_url(raw)?;
        if self.prefixes.iter().any(|p| url.as_str().starts_with(p)) {
            Ok(Some(url))
        } else {
            Err(BotUrlError::NotAllowed)
        }
    }
}

/// `t={unix_seconds},v1={hex}`: HMAC-SHA256 with `secret` over `"{unix_seconds}.{call_id}"`.
pub fn signature(secret: &Secret, unix_seconds: u64, call_id: &str) -> String {
    let message = format!("{unix_seconds}.{call_id}");
    let hex = hmac_sha256_hex(secret.expose().as_bytes(), message.as_bytes());
    format!("t={unix_seconds},v1={hex}")
}

/// HMAC-SHA256 of `message` under `key`, lowercase hex.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts dialing `url` for `call` and keeps the bot connected for the call's life: the
/// task ends with the call (its command queue closes), when another bot has attached, or
/// once an outage outlasts the budget, asking the call to end with `bot_unreachable`
/// ([`CallCommand::BotUnreachable`]).
pub fn spawn(call: CallHandle, url: Url, settings: Arc<DialSettings>) {
    tokio::spawn(async move {
        let id = call.info.id.clone();
        let mut retry = RetryBudget::new(settings.retry_budget);
        loop {
            retry.on_attempt(std::time::Instant::now());
            let attempt = tokio::select! {
                _ = call.commands.closed() => return,
                attempt = connect(&url, &id, &settings) => attempt,
            };
            match attempt {
                Ok(socket) => {
                    retry.on_connected();
                    match call.attach_bot().await {
                        Ok((bot, outbound)) => {
                            tracing::debug!(call = %id, "bot dialed");
                            if crate::http::control::pump(socket, &call, bot, outbound).await
                                == crate::http::control::PumpEnd::CallOver
                            {
                                return;
                            }
                            tracing::debug!(call = %id, "dialed bot dropped");
                        }
                        // Another bot attached meanwhile: it drives the call.
                        Err(AttachBotError::AlreadyAttached) => return,
                        Err(AttachBotError::CallOver) => return,
                    }
                }
                Err(error) => tracing::debug!(call = %id, %error, "bot dial-out failed"),
            }
            match retry.on_failure(std::time::Instant::now()) {
                Next::RetryAt(at) => {
                    tokio::select! {
                        _ = call.commands.closed() => return,
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                Next::GiveUp => {
                    // Ends the call unless a bot attached by itself meanwhile.
                    tracing::warn!(call = %id, budget = ?settings.retry_budget, "bot unreachable");
                    let _ = call.commands.send(CallCommand::BotUnreachable).await;
                    return;
                }
            }
        }
    });
}

type BotSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One attempt: TCP, TLS for `wss://`, and the signed upgrade, within the connect timeout.
async fn connect(
    url: &Url,
    call_id: &str,
    settings: &DialSettings,
) -> Result<BotSocket, DialError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| DialError::Connect(err.to_string()))?;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let headers = request.headers_mut();
    let header = |value: String| {
        HeaderValue::from_str(&value).map_err(|err| DialError::Connect(err.to_string()))
    };
    headers.insert(CALL_HEADER, header(call_id.to_owned())?);
    if let Some(secret) = &settings.secret {
        headers.insert(SIGNATURE_HEADER, header(signature(secret, unix, call_id))?);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CONTROL_FRAME_BYTES))
        .max_frame_size(Some(MAX_CONTROL_FRAME_BYTES))
        .read_buffer_size(CONTROL_READ_BUFFER_BYTES);
    let handshake = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(settings.connect_timeout, handshake).await {
        Err(_) => Err(DialError::Timeout(settings.connect_timeout)),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            Err(DialError::Refused(response.status().as_u16()))
        }
        Ok(Err(err)) => Err(DialError::Connect(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefixes: &[&str], default_url: Option<&str>) -> DialSettings {
        DialSettings::from_config(&BotsConfig {
            url_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            default_url: default_url.map(str::to_owned),
            ..BotsConfig::default()
        })
    }

    #[test]
    fn only_urls_under_an_allowed_prefix_are_dialed() {
        let s = settings(
            &["wss://bots.example.com/voice/", "ws://127.0.0.1:9000/"],
            None,
        );
        for ok in [
            "wss://bots.example.com/voice/agent?x=1",
            "wss://BOTS.example.com:443/voice/a",
            "ws://127.0.0.1:9000/",
        ] {
            assert!(matches!(s.target(Some(ok)), Ok(Some(_))), "{ok}");
        }
        for (bad, want) in [
            ("wss://bots.example.com/other", BotUrlError::NotAllowed),
            (
                "wss://bots.example.com.evil.net/voice/",
                BotUrlError::NotAllowed,
            ),
            (
                "wss://x@bots.example.com/voice/",
                BotUrlError::Malformed(String::new()),
            ),
            ("ws://127.0.0.1:9001/", BotUrlError::NotAllowed),
            (
                "https://bots.example.com/voice/",
                BotUrlError::Malformed(String::new()),
            ),
            ("not a url", BotUrlError::Malformed(String::new())),
        ] {
            let got = s.target(Some(bad)).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{bad}: {got}"
            );
        }
        assert_eq!(s.target(None), Ok(None));
        let with_default = settings(&[], Some("wss://bot.example.com/a"));
        assert_eq!(
            with_default
                .target(None)
                .unwrap()
                .map(String::from)
                .as_deref(),
            Some("wss://bot.example.com/a")
        );
        assert_eq!(
            with_default.target(Some("wss://bot.example.com/a")),
            Err(BotUrlError::NotAllowed)
        );
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_call_id() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let secret = Secret::new("k".repeat(32));
        assert_eq!(
            signature(&secret, 1_764_553_203, "n1.00ff"),
            format!(
                "t=1764553203,v1={}",
                hmac_sha256_hex("k".repeat(32).as_bytes(), b"1764553203.n1.00ff")
            )
        );
    }
}

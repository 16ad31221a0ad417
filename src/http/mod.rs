//! The one HTTP listener (interface.md section 3): WHIP-style signaling, the bot's control
//! channel, `say`, health, readiness and metrics. Handlers only translate HTTP to
//! [`crate::bridge`] calls and back.

pub(crate) mod control;
mod error;
pub mod listener;
mod page;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use error::ApiError;

use crate::call::{CallCommand, CallHandle, CallInfo, CallOptions, Calls, CreateError};
use crate::control::rate::Request as BotRequest;
use crate::dialout::BotUrlError;
use crate::fault::Fault;
use crate::metrics::MetricsHandle;
use crate::secret::Secret;

/// Largest `say` body: the text limit plus JSON framing and escaping room.
const MAX_SAY_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub calls: Arc<Calls>,
    pub bearer_tokens: Arc<Vec<Secret>>,
    pub metrics: MetricsHandle,
    pub max_sdp_bytes: usize,
    /// A request body must arrive within this (`server.body_timeout_ms`), else `408`.
    pub body_timeout: std::time::Duration,
    /// Serve the browser call page at `/` (the `demo` command).
    pub demo_page: bool,
}

/// The router with every route of the interface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/calls", post(create_call).get(list_calls))
        .route("/v1/calls/{id}", get(get_call).delete(delete_call))
        .route("/v1/calls/{id}/control", get(control::upgrade))
        .route("/v1/calls/{id}/say", post(say))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ));
    let mut router = Router::new().route("/healthz", get(healthz)).merge(api);
    if state.demo_page {
        router = router
            .route("/", get(page::index))
            .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
    }
    router
        .route_layer(middleware::from_fn(count_request))
        .with_state(state)
}

/// Counts every routed request by route template and status.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let response = next.run(request).await;
    crate::metrics::http_request(&route, response.status().as_u16());
    response
}

/// When tokens are configured, every route but `/healthz` (and the demo page) needs
/// `Authorization: Bearer <token>`.
async fn require_bearer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.bearer_tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = presented.is_some_and(|token| token_matches(&state.bearer_tokens, token));
    if authorized {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// Whether `presented` is one of `tokens`, compared in constant time (`subtle`): every token
/// is compared in full, whichever matches, so timing reveals neither a prefix nor which token
/// matched. Only a token's length can show (tokens are random and at least 16 bytes).
fn token_matches(tokens: &[Secret], presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found | token.expose().as_bytes().ct_eq(presented.as_bytes())
        })
        .into()
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    voice: Option<String>,
    language: Option<String>,
    /// `true` or `false`; read by [`flag`] so a bad value gets a named error.
    dtmf_barge_in: Option<String>,
    /// `true` or `false`, as `dtmf_barge_in`.
    record: Option<String>,
    /// A `ws://` or `wss://` URL under one of `bots.url_prefixes`: the daemon dials this bot.
    bot: Option<String>,
}

/// Most `x-` query parameters one call may carry to its bot.
const MAX_CUSTOM_PARAMS: usize = 32;
/// Most bytes of `x-` names and values together: a few ids for the bot, not a payload.
const MAX_CUSTOM_BYTES: usize = 4096;

/// The `x-`-prefixed query parameters, for the bot's `call.started`.
fn custom_params(
    raw_query: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut custom = std::collections::BTreeMap::new();
    let mut bytes = 0;
    for (name, value) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if !name.starts_with("x-") {
            continue;
        }
        bytes += name.len() + value.len();
        custom.insert(name.into_owned(), value.into_owned());
        if custom.len() > MAX_CUSTOM_PARAMS || bytes > MAX_CUSTOM_BYTES {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!(
                    "at most {MAX_CUSTOM_PARAMS} x- parameters of {MAX_CUSTOM_BYTES} bytes in all"
                ),
            ));
        }
    }
    Ok(custom)
}

/// A boolean query parameter: `true`/`false` (or `1`/`0`).
fn flag(name: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("{name} must be true or false"),
        )),
    }
}

/// Longest voice id or language code accepted in a query.
const MAX_QUERY_VALUE_BYTES: usize = 64;

async fn create_call(
    State(state): State<AppState>,
    Query(query): Query<CreateQuery>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_content_type(&headers, "application/sdp")?;
    let bot_url = state
        .calls
        .settings()
        .dial
        .target(query.bot.as_deref())
        .map_err(|err| match err {
            BotUrlError::NotAllowed => ApiError::new(
                StatusCode::FORBIDDEN,
                "bot_url_not_allowed",
                err.to_string(),
            ),
            BotUrlError::Malformed(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_query", err.to_string())
            }
        })?;
    let custom = custom_params(raw_query.as_deref())?;
    for value in [&query.voice, &query.language].into_iter().flatten() {
        if value.is_empty() || value.len() > MAX_QUERY_VALUE_BYTES {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("voice and language must be 1 to {MAX_QUERY_VALUE_BYTES} bytes"),
            ));
        }
    }
    let body = read_limited(
        body,
        state.max_sdp_bytes,
        "sdp_too_large",
        state.body_timeout,
    )
    .await?;
    let offer = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the SDP offer is not UTF-8",
        )
    })?;
    let options = CallOptions {
        dtmf_barge_in: flag("dtmf_barge_in", query.dtmf_barge_in.as_deref())?,
        record: flag("record", query.record.as_deref())?,
        voice: query.voice,
        language: query.language,
        custom,
        bot_url,
    };
    let (id, answer) = state
        .calls
        .create(offer, options)
        .await
        .map_err(create_error)?;
    tracing::info!(call = %id, "call created");
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_owned()),
            (header::LOCATION, format!("/v1/calls/{id}")),
        ],
        answer,
    )
        .into_response())
}

fn create_error(err: CreateError) -> ApiError {
    let message = err.to_string();
    match err {
        CreateError::Draining => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining", message)
        }
        CreateError::AtCapacity(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "at_capacity", message)
        }
        CreateError::Overloaded => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
        CreateError::Peer(crate::rtc::RtcError::NoCommonCodec(_)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "no_common_codec", message)
        }
        CreateError::Peer(crate::rtc::RtcError::NoAllowedCandidate { .. }) => {
            ApiError::new(StatusCode::BAD_REQUEST, "no_allowed_candidate", message)
        }
        CreateError::Peer(err) if err.fault() == Fault::Caller => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", message)
        }
        CreateError::Peer(_) | CreateError::Audio(_) | CreateError::SetupAborted(_) => {
            tracing::error!(error = %message, "call setup failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}

#[derive(Serialize)]
struct CallView {
    id: String,
    voice: String,
    /// Seconds since the Unix epoch.
    started_at: f64,
    #[serde(flatten)]
    snapshot: crate::call::CallSnapshot,
}

fn view(info: &CallInfo) -> CallView {
    CallView {
        id: info.id.clone(),
        voice: info.voice.clone(),
        started_at: info
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
        snapshot: info.snapshot(),
    }
}

async fn list_calls(State(state): State<AppState>) -> Json<serde_json::Value> {
    let calls: Vec<CallView> = state.calls.list().iter().map(|i| view(i)).collect();
    Json(serde_json::json!({ "calls": calls }))
}

async fn get_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallView>, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
    Ok(Json(view(&call.info)))
}

async fn delete_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
    call.hang_up(crate::call::EndReason::CallerHangup);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SayBody {
    text: String,
}

async fn say(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
    require_content_type(&headers, "application/json")?;
    // A say is one utterance: a message and a flush of the call's rate limits.
    admit(&call, BotRequest::Flush, "say")?;
    let body = read_limited(
        body,
        MAX_SAY_BODY_BYTES,
        "body_too_large",
        state.body_timeout,
    )
    .await?;
    let SayBody { text } = serde_json::from_slice(&body).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("expected {{\"text\": \"...\"}}: {err}"),
        )
    })?;
    let (reply, answer) = oneshot::channel();
    call.commands
        .send(CallCommand::Say { text, reply })
        .await
        .map_err(|_| ApiError::unknown_call())?;
    match answer.await {
        Ok(Ok(utterance)) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "utterance": utterance })),
        )
            .into_response()),
        Ok(Err(err)) => {
            let status = match err {
                crate::control::ControlError::TextTooLong { .. }
                | crate::control::ControlError::UtteranceTooLong { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError::new(status, err.code(), err.to_string()))
        }
        Err(_) => Err(ApiError::unknown_call()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.calls.is_draining() {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the daemon is draining for shutdown",
        ))
    } else if state.calls.is_overloaded() {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the calls in progress are running late",
        ))
    } else if !state.calls.is_ready() {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "at_capacity",
            "the daemon is at capacity",
        ))
    } else {
        Ok("ready\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Admits an HTTP request of `call`'s bot (`what` names it in the debug line) against the
/// call's rate limits, or answers `429 rate_limited` with `Retry-After`.
fn admit(call: &CallHandle, request: BotRequest, what: &str) -> Result<(), ApiError> {
    call.admit(request, std::time::Instant::now())
        .map_err(|refused| {
            tracing::debug!(call = %call.info.id, limit = refused.limit.name(), "{what} over the call's rate limit");
            crate::metrics::rate_limited(refused.limit.name(), "http");
            ApiError::rate_limited(refused)
        })
}

fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let actual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = actual.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {expected}, got {actual:?}"),
        ))
    }
}

/// Reads a body of at most `limit` bytes, without buffering more than that, within
/// `timeout`: a client that sends it slower gets `408 body_timeout` (and the connection is
/// closed with the reply, the rest of the body unread).
async fn read_limited(
    body: Body,
    limit: usize,
    code: &'static str,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code,
            format!("the body exceeds {limit} bytes (or could not be read)"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_in_full() {
        let tokens = [
            Secret::new("0123456789abcdef"),
            Secret::new("fedcba9876543210-second"),
        ];
        assert!(token_matches(&tokens, "0123456789abcdef"));
        assert!(token_matches(&tokens, "fedcba9876543210-second"));
        for wrong in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcdeF",
            "fedcba9876543210",
        ] {
            assert!(!token_matches(&tokens, wrong), "{wrong:?}");
        }
        assert!(!token_matches(&[], "0123456789abcdef"));
    }

    #[test]
    fn x_parameters_reach_the_bot_within_limits() {
        let custom = custom_params(Some(
            "voice=a&x-customer=42&x-note=a%20b&bot=ws%3A%2F%2Fh%2F",
        ))
        .unwrap();
        let got: Vec<(&str, &str)> = custom
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, [("x-customer", "42"), ("x-note", "a b")]);
        assert!(custom_params(None).unwrap().is_empty());

        let many: Vec<String> = (0..=MAX_CUSTOM_PARAMS)
            .map(|i| format!("x-{i}=1"))
            .collect();
        let err = custom_params(Some(&many.join("&"))).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_REQUEST, "bad_query")
        );
        let big = format!("x-big={}", "a".repeat(MAX_CUSTOM_BYTES));
        assert_eq!(custom_params(Some(&big)).unwrap_err().code, "bad_query");
    }
}

//! `GET /v1/calls/{id}/control`: the bot's WebSocket. Attaches to the call task, then moves
//! frames: bot JSON -> [`CallCommand::Bot`]; call events and caller audio -> bot.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{ApiError, AppState};
use crate::call::{AttachError, CallHandle, BOT_QUEUE_FRAMES};
use crate::call::{BotOutput, CallCommand};
use crate::control::rate::Request;
use crate::control::{self, BotMessage, ControlError, MAX_CONTROL_FRAME_BYTES};

/// Close code sent when the call is over (RFC 6455: normal closure).
const CLOSE_NORMAL: u16 = 1000;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
    // Attaching is a message of the call's rate limits: a bot cannot reconnect in a loop.
    call.admit(Request::Message, std::time::Instant::now())
        .map_err(|refused| {
            tracing::debug!(call = %id, limit = refused.limit.name(), "control channel attach over the call's rate limit");
            crate::metrics::rate_limited(refused.limit.name(), "http");
            ApiError::rate_limited(refused)
        })?;
    let (bot_tx, mut bot_rx) = mpsc::channel(BOT_QUEUE_FRAMES);
    let (reply, attached) = oneshot::channel();
    call.commands
        .send(CallCommand::Attach { bot: bot_tx, reply })
        .await
        .map_err(|_| ApiError::unknown_call())?;
    let bot = match attached.await {
        Ok(Ok(bot)) => bot,
        Ok(Err(AttachError::AlreadyAttached)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "bot_already_attached",
                "another bot holds this call's control channel",
            ))
        }
        Err(_) => return Err(ApiError::unknown_call()),
    };
    Ok(ws
        .max_message_size(MAX_CONTROL_FRAME_BYTES)
        .max_frame_size(MAX_CONTROL_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            // Dropped without the call having ended: the call keeps what the bot missed.
            if let Some(unsent) = run(socket, &call, &mut bot_rx).await {
                let _ = call
                    .commands
                    .send(CallCommand::Detach {
                        bot,
                        unsent,
                        queued: bot_rx,
                    })
                    .await;
            }
        }))
}

/// How the call's rate limits count a frame from the bot: a flush takes a flush token too;
/// `hangup` is always admitted (ending the call is the cheapest outcome); anything else,
/// malformed frames included, is one message.
fn request_kind(frame: &Result<BotMessage, ControlError>) -> Option<Request> {
    match frame {
        Ok(BotMessage::Flush) => Some(Request::Flush),
        Ok(BotMessage::Hangup) => None,
        _ => Some(Request::Message),
    }
}

/// Moves frames until the call ends (returns None) or the bot's side drops (returns
/// Some, with the output whose write failed, if one did).
async fn run(
    socket: WebSocket,
    call: &CallHandle,
    outbound: &mut mpsc::Receiver<BotOutput>,
) -> Option<Option<BotOutput>> {
    let commands = &call.commands;
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            output = outbound.recv() => {
                let Some(output) = output else {
                    // The call ended (its last event, call.ended, was sent before).
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code: CLOSE_NORMAL, reason: "call ended".into() })))
                        .await;
                    return None;
                };
                let message = match &output {
                    BotOutput::Event(event) => Message::Text(event.to_json().into()),
                    BotOutput::CallerAudio(pcm) => Message::Binary(pcm.clone()),
                };
                if sink.send(message).await.is_err() {
                    return Some(Some(output));
                }
            }
            frame = stream.next() => {
                let parsed = match frame {
                    Some(Ok(Message::Text(text))) => control::parse(text.as_str()),
                    Some(Ok(Message::Binary(_))) => Err(ControlError::BinaryFrame),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Some(None),
                };
                let admitted = match request_kind(&parsed) {
                    Some(kind) => call.admit(kind, std::time::Instant::now()),
                    None => Ok(()),
                };
                let error = match (admitted, parsed) {
                    (Err(refused), _) => {
                        tracing::trace!(call = %call.info.id, limit = refused.limit.name(), "bot message over the call's rate limit");
                        crate::metrics::rate_limited(refused.limit.name(), "control");
                        ControlError::from(refused)
                    }
                    (Ok(()), Ok(message)) => {
                        let received_at = tokio::time::Instant::now();
                        if commands.send(CallCommand::Bot(message, received_at)).await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    (Ok(()), Err(err)) => err,
                };
                crate::metrics::control_error(error.code());
                if sink.send(Message::Text(error.to_event().to_json().into())).await.is_err() {
                    return Some(None);
                }
            }
        }
    }
}

//! `GET /v1/calls/{id}/control`: the bot's WebSocket. Attaches to the call task, then moves
//! frames: bot JSON -> [`CallCommand::Bot`]; call events and caller audio -> bot.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{ApiError, AppState};
use crate::call::{AttachError, BOT_QUEUE_FRAMES};
use crate::call::{BotOutput, CallCommand};
use crate::control::{self, ControlError, MAX_CONTROL_FRAME_BYTES};

/// Close code sent when the call is over (RFC 6455: normal closure).
const CLOSE_NORMAL: u16 = 1000;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
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
    let commands = call.commands;
    Ok(ws
        .max_message_size(MAX_CONTROL_FRAME_BYTES)
        .max_frame_size(MAX_CONTROL_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            // Dropped without the call having ended: the call keeps what the bot missed.
            if let Some(unsent) = run(socket, &commands, &mut bot_rx).await {
                let _ = commands
                    .send(CallCommand::Detach {
                        bot,
                        unsent,
                        queued: bot_rx,
                    })
                    .await;
            }
        }))
}

/// Moves frames until the call ends (returns None) or the bot's side drops (returns
/// Some, with the output whose write failed, if one did).
async fn run(
    socket: WebSocket,
    commands: &mpsc::Sender<CallCommand>,
    outbound: &mut mpsc::Receiver<BotOutput>,
) -> Option<Option<BotOutput>> {
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
                let error = match frame {
                    Some(Ok(Message::Text(text))) => match control::parse(text.as_str()) {
                        Ok(message) => {
                            let received_at = tokio::time::Instant::now();
                            if commands.send(CallCommand::Bot(message, received_at)).await.is_err() {
                                return None;
                            }
                            continue;
                        }
                        Err(err) => err,
                    },
                    Some(Ok(Message::Binary(_))) => ControlError::BinaryFrame,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Some(None),
                };
                crate::metrics::control_error(error.code());
                if sink.send(Message::Text(error.to_event().to_json().into())).await.is_err() {
                    return Some(None);
                }
            }
        }
    }
}

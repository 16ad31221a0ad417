//! The bot's control channel over a WebSocket: `GET /v1/calls/{id}/control` (the bot
//! connects) and bot dial-out ([`crate::dialout`]: the daemon connects). Either way the same
//! [`pump`] moves frames: bot JSON -> [`CallCommand::Bot`]; call events and caller audio -> bot.

use axum::extract::ws::{self, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use super::{ApiError, AppState};
use crate::call::{AttachBotError, BotId, BotOutput, CallCommand, CallHandle};
use crate::control::rate::Request;
use crate::control::{
    self, BotMessage, ControlError, CONTROL_READ_BUFFER_BYTES, MAX_CONTROL_FRAME_BYTES,
};

/// Close code sent when the call is over (RFC 6455: normal closure).
const CLOSE_NORMAL: u16 = 1000;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let call = state.calls.get(&id).ok_or_else(ApiError::unknown_call)?;
    // Attaching is a message of the call's rate limits: a bot cannot reconnect in a loop.
    super::admit(&call, Request::Message, "control channel attach")?;
    let (bot, outbound) = match call.attach_bot().await {
        Ok(attached) => attached,
        Err(AttachBotError::AlreadyAttached) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "bot_already_attached",
                "another bot holds this call's control channel",
            ))
        }
        Err(AttachBotError::CallOver) => return Err(ApiError::unknown_call()),
    };
    Ok(ws
        .max_message_size(MAX_CONTROL_FRAME_BYTES)
        .max_frame_size(MAX_CONTROL_FRAME_BYTES)
        .read_buffer_size(CONTROL_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            // On the call's shard: the caller audio the call queues for the bot is written
            // by the thread that queued it.
            let shard = call.shard.clone();
            let _ = shard
                .spawn(async move { pump(socket, &call, bot, outbound).await })
                .await;
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

/// One frame from the bot, whichever WebSocket library carried it.
pub(crate) enum Incoming {
    /// A text frame: one control message.
    Text(String),
    /// A binary frame (refused: the channel carries JSON).
    Binary,
    /// Ping or pong (answered by the library).
    Ignore,
    /// The bot closed the channel.
    Close,
}

/// A WebSocket message type the control channel can travel in: axum's (the bot connected)
/// or tungstenite's (the daemon dialed the bot).
pub(crate) trait ControlFrame: Sized {
    fn text(text: String) -> Self;
    fn binary(data: Bytes) -> Self;
    /// The normal closure sent once the call is over.
    fn close_call_ended() -> Self;
    fn incoming(self) -> Incoming;
}

impl ControlFrame for ws::Message {
    fn text(text: String) -> Self {
        ws::Message::Text(text.into())
    }
    fn binary(data: Bytes) -> Self {
        ws::Message::Binary(data)
    }
    fn close_call_ended() -> Self {
        ws::Message::Close(Some(ws::CloseFrame {
            code: CLOSE_NORMAL,
            reason: "call ended".into(),
        }))
    }
    fn incoming(self) -> Incoming {
        match self {
            ws::Message::Text(text) => Incoming::Text(text.as_str().to_owned()),
            ws::Message::Binary(_) => Incoming::Binary,
            ws::Message::Ping(_) | ws::Message::Pong(_) => Incoming::Ignore,
            ws::Message::Close(_) => Incoming::Close,
        }
    }
}

impl ControlFrame for tungstenite::Message {
    fn text(text: String) -> Self {
        tungstenite::Message::Text(text.into())
    }
    fn binary(data: Bytes) -> Self {
        tungstenite::Message::Binary(data)
    }
    fn close_call_ended() -> Self {
        tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: CLOSE_NORMAL.into(),
            reason: "call ended".into(),
        }))
    }
    fn incoming(self) -> Incoming {
        match self {
            tungstenite::Message::Text(text) => Incoming::Text(text.as_str().to_owned()),
            tungstenite::Message::Binary(_) => Incoming::Binary,
            tungstenite::Message::Ping(_)
            | tungstenite::Message::Pong(_)
            | tungstenite::Message::Frame(_) => Incoming::Ignore,
            tungstenite::Message::Close(_) => Incoming::Close,
        }
    }
}

/// Why [`pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The call is over: `call.ended` went out and the channel was closed.
    CallOver,
    /// The bot closed the channel or the connection broke; the call goes on.
    BotGone,
}

/// Moves one attached bot's frames (attachment `bot`, whose queue is `outbound`) until the
/// call ends or the bot goes: bot text frames are admitted by the call's rate limits, parsed
/// and queued to the call (a bad or refused one gets an `error` event, the call goes on); the
/// call's events and caller audio go out in order. When the bot's side drops first, the call
/// gets back what the bot missed ([`CallCommand::Detach`]) for a bot that attaches again.
pub(crate) async fn pump<S, M, E>(
    socket: S,
    call: &CallHandle,
    bot: BotId,
    mut outbound: mpsc::Receiver<BotOutput>,
) -> PumpEnd
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: ControlFrame,
{
    // Shutdown waits for this channel to deliver the call's last events.
    let _open = call.bot_channels.token();
    match move_frames(socket, call, &mut outbound).await {
        None => PumpEnd::CallOver,
        Some(unsent) => {
            let _ = call
                .commands
                .send(CallCommand::Detach {
                    bot,
                    unsent,
                    queued: outbound,
                })
                .await;
            PumpEnd::BotGone
        }
    }
}

/// [`pump`]'s loop: returns None once the call is over, or Some when the bot's side dropped,
/// with the output whose write failed, if one did.
async fn move_frames<S, M, E>(
    socket: S,
    call: &CallHandle,
    outbound: &mut mpsc::Receiver<BotOutput>,
) -> Option<Option<BotOutput>>
where
    S: Stream<Item = Result<M, E>> + Sink<M> + Unpin,
    M: ControlFrame,
{
    let commands = &call.commands;
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            output = outbound.recv() => {
                let Some(output) = output else {
                    // The call ended (its last event, call.ended, was sent before).
                    let _ = sink.send(M::close_call_ended()).await;
                    return None;
                };
                let message = match &output {
                    BotOutput::Event(event) => M::text(event.to_json()),
                    BotOutput::CallerAudio(pcm) => M::binary(pcm.clone()),
                };
                if sink.send(message).await.is_err() {
                    return Some(Some(output));
                }
            }
            frame = stream.next() => {
                let parsed = match frame.map(|f| f.map(M::incoming)) {
                    Some(Ok(Incoming::Text(text))) => control::parse(&text),
                    Some(Ok(Incoming::Binary)) => Err(ControlError::BinaryFrame),
                    Some(Ok(Incoming::Ignore)) => continue,
                    Some(Ok(Incoming::Close)) | None | Some(Err(_)) => return Some(None),
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
                if sink.send(M::text(error.to_event().to_json())).await.is_err() {
                    return Some(None);
                }
            }
        }
    }
}

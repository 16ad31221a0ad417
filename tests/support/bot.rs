//! A test bot: the control channel of one call over a real WebSocket.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One attached bot.
pub struct Bot {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every JSON event received, with its arrival time.
    pub events: Vec<(Instant, Value)>,
    /// Binary frames (caller audio) received.
    pub caller_audio_frames: usize,
    /// Bytes of caller audio received.
    pub caller_audio_bytes: usize,
    /// The caller's audio as received: 16 kHz mono samples.
    pub caller_pcm: Vec<i16>,
}

impl Bot {
    /// A bot over an already open WebSocket (the server side of a daemon's dial-out).
    pub fn from_socket(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Bot {
        Bot {
            ws,
            events: Vec::new(),
            caller_audio_frames: 0,
            caller_audio_bytes: 0,
            caller_pcm: Vec::new(),
        }
    }

    /// Opens `ws://ADDR{location}/control`.
    pub async fn attach(base_http: &str, location: &str) -> Bot {
        Bot::attach_with(base_http, location, None).await
    }

    /// [`Bot::attach`] with `Authorization: Bearer <bearer>`.
    pub async fn attach_with(base_http: &str, location: &str, bearer: Option<&str>) -> Bot {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}{location}/control",
            base_http.replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request().expect("control URL");
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("control channel");
        Bot::from_socket(ws)
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send to control channel");
    }

    /// Streams `text` one character at a time, then flushes.
    pub async fn say_by_char(&mut self, text: &str) {
        for ch in text.chars() {
            self.send(json!({"type": "text", "text": ch.to_string()}))
                .await;
        }
        self.send(json!({"type": "flush"})).await;
    }

    /// Waits for the next JSON event matching `pred`; returns it. Panics after `timeout`.
    pub async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no matching event within {timeout:?}; got {:?}",
                        self.event_values()
                    )
                });
            if let Some(value) = self.record(frame) {
                if pred(&value) {
                    return value;
                }
            }
        }
    }

    /// Reads (and records) whatever arrives for `duration`, so the daemon's queue towards
    /// the bot never fills. Panics if the control channel ends.
    pub async fn listen_for(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            self.record(frame);
        }
    }

    /// Records one frame of the control channel; returns it when it is a JSON event.
    fn record(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Value> {
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("event is JSON");
                self.events.push((Instant::now(), value.clone()));
                Some(value)
            }
            Some(Ok(Message::Binary(pcm))) => {
                self.caller_audio_frames += 1;
                self.caller_audio_bytes += pcm.len();
                self.caller_pcm.extend(
                    pcm.chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
                None
            }
            Some(Ok(_)) => None,
            other => panic!(
                "control channel ended: {other:?}; events {:?}",
                self.event_values()
            ),
        }
    }

    /// Waits for an event of this `type`.
    pub async fn wait_type(&mut self, kind: &str, timeout: Duration) -> Value {
        self.wait_for(timeout, |v| v["type"] == kind).await
    }

    /// The events received so far.
    pub fn event_values(&self) -> Vec<Value> {
        self.events.iter().map(|(_, v)| v.clone()).collect()
    }
}

impl Bot {
    /// Reads until the daemon closes the channel (or the connection drops); returns the JSON
    /// events that came meanwhile. Panics after `timeout`.
    pub async fn events_until_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("control channel still open after {timeout:?}; got {events:?}")
                });
            match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return events,
                // Events and caller audio are recorded as everywhere else.
                other => events.extend(self.record(other)),
            }
        }
    }

    /// Sends a raw text frame (for malformed-input tests).
    pub async fn send_raw(&mut self, frame: &str) {
        self.ws
            .send(Message::Text(frame.to_owned().into()))
            .await
            .expect("send to control channel");
    }
}

/// How long a test waits for a call to be placed and its bot attached.
const PLACE_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Places a call to `daemon` from an in-process webrtc-rs caller and attaches a bot; returns
/// once the bot has seen `call.started`.
pub async fn place_call(
    daemon: &super::daemon::Daemon,
) -> (super::webrtc_caller::WebrtcCaller, Bot) {
    let base = daemon.base();
    let caller = super::webrtc_caller::WebrtcCaller::dial(&format!("{base}/v1/calls"), None)
        .await
        .expect("place a call");
    let mut bot = Bot::attach(&base, caller.location()).await;
    bot.wait_type("call.started", PLACE_CALL_TIMEOUT).await;
    (caller, bot)
}

/// A bot server on 127.0.0.1 for the daemon to dial (bot dial-out): accepts WebSocket
/// upgrades on any path and hands each over as a [`Bot`], with the upgrade request's headers.
pub struct BotServer {
    listener: tokio::net::TcpListener,
    /// `ws://127.0.0.1:PORT/`.
    pub url: String,
}

impl BotServer {
    /// Binds a free loopback port.
    pub async fn bind() -> BotServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the bot server");
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        BotServer { listener, url }
    }

    /// Accepts the next dial-out: returns the request's path and headers (names lowercased)
    /// and the bot. Panics after `timeout`.
    pub async fn accept(&self, timeout: Duration) -> (String, Vec<(String, String)>, Bot) {
        let work = async {
            let (tcp, _) = self.listener.accept().await.expect("accept");
            let seen = std::sync::Arc::new(std::sync::Mutex::new((String::new(), Vec::new())));
            let record = seen.clone();
            // The error type is tungstenite's, as its `Callback` trait requires.
            #[allow(clippy::result_large_err)]
            let callback =
                move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                      response| {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_ascii_lowercase(),
                                v.to_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect();
                    *record.lock().unwrap() = (request.uri().to_string(), headers);
                    Ok(response)
                };
            let ws = tokio_tungstenite::accept_hdr_async(MaybeTlsStream::Plain(tcp), callback)
                .await
                .expect("WebSocket upgrade from the daemon");
            let (path, headers) = std::mem::take(&mut *seen.lock().unwrap());
            (path, headers, Bot::from_socket(ws))
        };
        tokio::time::timeout(timeout, work)
            .await
            .expect("the daemon dialed the bot")
    }
}

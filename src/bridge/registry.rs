//! The daemon's calls: admission (capacity, draining), creation, lookup, drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::call::{self, CallCommand, CallInfo, CallSetup, EndReason};
use super::ledger::TextLimits;
use crate::audio::{AudioError, InputFormat, OpusSettings};
use crate::config::Config;
use crate::fault::Fault;
use crate::lmnt::{AudioFormat, SessionOptions};
use crate::pacer::PlayoutConfig;
use crate::rtc::{CallPeer, RtcError, RtcSettings};
use crate::secret::Secret;

/// Commands queued to one call task. Bots send a handful of messages per utterance; 1024
/// absorbs a bot streaming tokens one by one while the task sends a frame.
const CALL_COMMAND_QUEUE: usize = 1024;
/// The audio format every call asks LMNT for, and the same format as the playout decodes
/// it: raw 16-bit PCM concatenates without gaps (mp3/webm chunks are container fragments).
const LMNT_FORMAT: (AudioFormat, InputFormat) = (AudioFormat::PcmS16le, InputFormat::PcmS16le);
/// Interval between WebSocket pings on the LMNT session (LMNT's SDKs use 20 s).
const LMNT_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Per-call settings derived once from the configuration.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub lmnt_url: url::Url,
    pub api_key: Secret,
    pub voice: String,
    pub language: Option<String>,
    pub sample_rate: u32,
    pub connect_timeout: Duration,
    pub liveness_timeout: Duration,
    pub limits: TextLimits,
    pub max_calls: usize,
    pub playout: PlayoutConfig,
    pub rtc: RtcSettings,
}

impl BridgeSettings {
    /// Derives the settings from a validated configuration.
    pub fn from_config(config: &Config, lmnt_url: url::Url, api_key: Secret) -> Self {
        let audio = &config.audio;
        BridgeSettings {
            lmnt_url,
            api_key,
            voice: config.lmnt.voice.clone(),
            language: config.lmnt.language.clone(),
            sample_rate: config.lmnt.sample_rate,
            connect_timeout: Duration::from_millis(config.lmnt.connect_timeout_ms),
            liveness_timeout: Duration::from_millis(config.lmnt.liveness_timeout_ms),
            limits: TextLimits {
                max_text_message_bytes: config.limits.max_text_message_bytes,
                max_utterance_bytes: config.limits.max_utterance_bytes,
            },
            max_calls: config.limits.max_calls,
            playout: PlayoutConfig {
                input_format: LMNT_FORMAT.1,
                input_rate: config.lmnt.sample_rate,
                opus: OpusSettings::from_config(audio),
                jitter_min: Duration::from_millis(audio.jitter_min_ms.into()),
                jitter_max: Duration::from_millis(audio.jitter_max_ms.into()),
                max_queued: Duration::from_millis(audio.max_queued_ms.into()),
            },
            rtc: RtcSettings::from(&config.rtc),
        }
    }
}

/// Per-call choices from the request (`?voice=&language=`).
#[derive(Debug, Default, Clone)]
pub struct CallOptions {
    pub voice: Option<String>,
    pub language: Option<String>,
}

/// Why a call could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The daemon is shutting down (retry on another instance).
    #[error("the daemon is draining for shutdown")]
    Draining,
    /// `limits.max_calls` calls are up (retry later).
    #[error("at capacity: {0} calls in progress")]
    AtCapacity(usize),
    /// The offer or the peer connection failed.
    #[error(transparent)]
    Peer(#[from] RtcError),
    /// The audio pipeline could not be built (internal).
    #[error(transparent)]
    Audio(#[from] AudioError),
}

impl CreateError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            CreateError::Draining | CreateError::AtCapacity(_) => Fault::Internal,
            CreateError::Peer(err) => err.fault(),
            CreateError::Audio(_) => Fault::Internal,
        }
    }
}

/// A handle to a live call.
#[derive(Clone)]
pub struct CallHandle {
    pub commands: mpsc::Sender<CallCommand>,
    pub info: Arc<CallInfo>,
}

/// All calls of the daemon. Shared by the HTTP handlers and the lifecycle.
pub struct Calls {
    settings: BridgeSettings,
    calls: Mutex<HashMap<String, CallHandle>>,
    /// Calls being set up (admitted, not yet in `calls`), counted against capacity.
    reserved: Mutex<usize>,
    draining: AtomicBool,
    /// Number of live calls, for waiting on drain.
    count: watch::Sender<usize>,
}

impl Calls {
    /// An empty registry.
    pub fn new(settings: BridgeSettings) -> Arc<Self> {
        Arc::new(Calls {
            settings,
            calls: Mutex::new(HashMap::new()),
            reserved: Mutex::new(0),
            draining: AtomicBool::new(false),
            count: watch::channel(0).0,
        })
    }

    /// The settings every call uses.
    pub fn settings(&self) -> &BridgeSettings {
        &self.settings
    }

    /// Answers an offer and starts the call. Returns the call id and the SDP answer.
    pub async fn create(
        self: &Arc<Self>,
        offer: &str,
        options: CallOptions,
    ) -> Result<(String, String), CreateError> {
        let _reservation = self.reserve()?;
        let (peer, answer, peer_events) = CallPeer::answer(&self.settings.rtc, offer).await?;
        let id = new_call_id();
        let s = &self.settings;
        let voice = options.voice.unwrap_or_else(|| s.voice.clone());
        let setup = CallSetup {
            id: id.clone(),
            voice: voice.clone(),
            sample_rate: s.sample_rate,
            session: SessionOptions {
                url: s.lmnt_url.clone(),
                api_key: s.api_key.clone(),
                voice,
                format: LMNT_FORMAT.0,
                sample_rate: s.sample_rate,
                language: options.language.or_else(|| s.language.clone()),
                return_timestamps: false,
                connect_timeout: s.connect_timeout,
                ping_interval: LMNT_PING_INTERVAL,
                liveness_timeout: s.liveness_timeout,
            },
            limits: s.limits,
            playout: s.playout.clone(),
        };
        let (commands_tx, commands_rx) = mpsc::channel(CALL_COMMAND_QUEUE);
        let registry: Weak<Calls> = Arc::downgrade(self);
        let ended_id = id.clone();
        let info = match call::spawn(setup, peer, peer_events, commands_rx, move |_reason| {
            if let Some(calls) = registry.upgrade() {
                calls.remove(&ended_id);
            }
        }) {
            Ok(info) => info,
            Err(err) => return Err(err.into()),
        };
        let mut calls = self.lock_calls();
        calls.insert(
            id.clone(),
            CallHandle {
                commands: commands_tx,
                info,
            },
        );
        self.count.send_replace(calls.len());
        Ok((id, answer))
    }

    /// The call with this id, if it is live.
    pub fn get(&self, id: &str) -> Option<CallHandle> {
        self.lock_calls().get(id).cloned()
    }

    /// Every live call's info.
    pub fn list(&self) -> Vec<Arc<CallInfo>> {
        let mut infos: Vec<_> = self.lock_calls().values().map(|e| e.info.clone()).collect();
        infos.sort_by_key(|i| i.started_at);
        infos
    }

    /// Live calls.
    pub fn len(&self) -> usize {
        self.lock_calls().len()
    }

    /// Whether no call is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a new call would be admitted now.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.len() + self.reserved() < self.settings.max_calls
    }

    /// Whether drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting calls and asks every call to finish its utterances and end.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for entry in self.lock_calls().values() {
            let _ = entry.commands.try_send(CallCommand::Drain);
        }
    }

    /// Ends every call now with `reason`.
    pub fn hang_up_all(&self, reason: EndReason) {
        for entry in self.lock_calls().values() {
            let _ = entry.commands.try_send(CallCommand::Hangup(reason));
        }
    }

    /// Resolves when no call is live.
    pub async fn wait_empty(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    fn remove(&self, id: &str) {
        let mut calls = self.lock_calls();
        calls.remove(id);
        self.count.send_replace(calls.len());
    }

    fn reserve(self: &Arc<Self>) -> Result<Reservation, CreateError> {
        if self.is_draining() {
            return Err(CreateError::Draining);
        }
        let live = self.len();
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        if live + *reserved >= self.settings.max_calls {
            return Err(CreateError::AtCapacity(live + *reserved));
        }
        *reserved += 1;
        Ok(Reservation(self.clone()))
    }

    fn reserved(&self) -> usize {
        *self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallHandle>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A capacity slot held while a call is being set up; released on drop (after the call is
/// inserted, or when setup failed).
struct Reservation(Arc<Calls>);

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.0.reserved.lock().unwrap_or_else(|e| e.into_inner());
        *reserved = reserved.saturating_sub(1);
    }
}

/// 128 random bits, hex: unguessable, so a call id is not an invitation.
fn new_call_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

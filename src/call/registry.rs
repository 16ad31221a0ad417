//! The daemon's calls: admission, creation, lookup, hang-up and drain.
//!
//! Admission is a semaphore of `max_calls` permits: a create takes one before anything is
//! built and moves it into the call's task, which releases it when the call is over, so no
//! interleaving of creates and ends can admit more. Hang-up and drain reach a call through a
//! `watch` and a `CancellationToken`, never through its bounded command queue, so they
//! cannot be lost when that queue is full.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::core::{AttachError, BotOutput, CallCore, CallParams, EndReason, Recording};
use super::driver::{self, BotId, CallCommand, CallInfo, CallIo, CallSignals, BOT_QUEUE_FRAMES};
use super::ledger::TextLimits;
use super::overload::{self, FrameClock, OverloadPolicy};
use super::shards::{ShardLease, Shards};
use crate::audio::{AudioError, InputFormat};
use crate::codec::loss::LossAdaptation;
use crate::codec::{EncoderSettings, OpusSettings};
use crate::config::Config;
use crate::control::rate::{BotRateLimiter, RateLimits};
use crate::dialout::DialSettings;
use crate::fault::Fault;
use crate::lmnt::{AudioFormat, Link, SessionOptions};
use crate::playout::PlayoutConfig;
use crate::recording::Recorder;
use crate::rtc::{CallPeer, RtcError, RtcSettings};
use crate::secret::Secret;

/// Commands queued to one call task. Bots send a handful of messages per utterance; 1024
/// absorbs a bot streaming tokens one by one while the task sends a frame. A full queue makes
/// the bot's channel wait (backpressure on the bot), never drops a command.
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
    /// Each call's bot rate limits (`limits.bot_*`).
    pub bot_rate: RateLimits,
    pub max_calls: usize,
    /// Encoder settings of every codec.
    pub encoder: EncoderSettings,
    /// Lower bound of the playout's start-up buffer.
    pub jitter_min: Duration,
    /// Upper bound of the playout's start-up buffer.
    pub jitter_max: Duration,
    /// Queued audio at which a call stops reading LMNT.
    pub max_queued: Duration,
    /// How late a frame may go out with continuous RTP time.
    pub max_late: Duration,
    pub rtc: RtcSettings,
    /// Every call's key presses act as barge-in (`calls.dtmf_barge_in`).
    pub dtmf_barge_in: bool,
    /// Every call is recorded (`calls.record`).
    pub record: bool,
    /// Where recordings are written.
    pub recordings_dir: std::path::PathBuf,
    /// This node's id, the first part of every call id (`{node_id}_{random}`).
    pub node_id: String,
    /// Which bots calls may dial, and how.
    pub dial: Arc<DialSettings>,
    /// How long a call waits for its bot to attach again (`calls.bot_grace_ms`).
    pub bot_grace: Duration,
    /// The test-only panic hook (`testing.panic_marker`).
    pub panic_marker: Option<String>,
    /// When the frame clock counts as overloaded (`limits.overload_*`).
    pub overload: OverloadPolicy,
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
            bot_rate: RateLimits {
                messages_per_sec: config.limits.bot_messages_per_sec,
                message_burst: config.limits.bot_message_burst,
                flushes_per_sec: config.limits.bot_flushes_per_sec,
                flush_burst: config.limits.bot_flush_burst,
            },
            max_calls: config.limits.max_calls,
            encoder: EncoderSettings {
                opus: OpusSettings::from_config(audio),
                adaptation: LossAdaptation::from_config(audio),
            },
            jitter_min: Duration::from_millis(audio.jitter_min_ms.into()),
            jitter_max: Duration::from_millis(audio.jitter_max_ms.into()),
            max_queued: Duration::from_millis(audio.max_queued_ms.into()),
            max_late: Duration::from_millis(audio.max_late_ms.into()),
            rtc: RtcSettings::from(&config.rtc),
            dtmf_barge_in: config.calls.dtmf_barge_in,
            record: config.calls.record,
            recordings_dir: config.calls.recordings_dir(),
            node_id: config.server.node_id().to_owned(),
            dial: Arc::new(DialSettings::from_config(&config.bots)),
            bot_grace: Duration::from_millis(config.calls.bot_grace_ms),
            panic_marker: config.testing.panic_marker.clone(),
            overload: OverloadPolicy {
                late_after: (config.limits.overload_late_ms > 0)
                    .then(|| Duration::from_millis(config.limits.overload_late_ms.into())),
                late_share: config.limits.overload_late_percent / 100.0,
            },
        }
    }
}

/// Per-call choices from the request (`?voice=&language=`).
#[derive(Debug, Default, Clone)]
pub struct CallOptions {
    pub voice: Option<String>,
    pub language: Option<String>,
    /// `?dtmf_barge_in=`: overrides `calls.dtmf_barge_in` for this call.
    pub dtmf_barge_in: Option<bool>,
    /// `?record=`: overrides `calls.record` for this call.
    pub record: Option<bool>,
    /// The `x-` query parameters, for the bot's `call.started`.
    pub custom: BTreeMap<String, String>,
    /// The bot to dial for this call (`?bot=`, checked, or `bots.default_url`).
    pub bot_url: Option<url::Url>,
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
    /// The calls in progress run late (see [`super::overload`]); retry later or elsewhere.
    #[error("overloaded: the calls in progress are running late")]
    Overloaded,
    /// The offer or the peer connection failed.
    #[error(transparent)]
    Peer(#[from] RtcError),
    /// The audio pipeline could not be built (internal).
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The set-up task on the call's shard ended without an answer: it panicked, or the
    /// daemon is stopping (internal; retry).
    #[error("call set-up did not finish: {0}")]
    SetupAborted(String),
}

impl CreateError {
    /// Whose fault.
    pub fn fault(&self) -> Fault {
        match self {
            CreateError::Draining | CreateError::AtCapacity(_) | CreateError::Overloaded => {
                Fault::Internal
            }
            CreateError::Peer(err) => err.fault(),
            CreateError::Audio(_) | CreateError::SetupAborted(_) => Fault::Internal,
        }
    }
}

/// A handle to a live call.
#[derive(Clone)]
pub struct CallHandle {
    /// The call's command queue (bot messages, `say`, attach).
    pub commands: mpsc::Sender<CallCommand>,
    /// The call's figures.
    pub info: Arc<CallInfo>,
    /// The call's bot rate limits, shared by its control channel and `say` (see
    /// [`CallHandle::admit`]).
    rate: Arc<Mutex<BotRateLimiter>>,
    hangup: Arc<watch::Sender<Option<EndReason>>>,
    /// The runtime of the call's shard: the bot's socket is served there, next to the call.
    pub shard: tokio::runtime::Handle,
    /// Every call's bot control channels (see [`Calls::wait_bot_channels`]).
    pub(crate) bot_channels: TaskTracker,
}

/// Why a bot's channel cannot be attached to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachBotError {
    /// Another bot holds the control channel (bot fault; retry after it leaves).
    #[error("another bot is attached to this call")]
    AlreadyAttached,
    /// The call ended meanwhile (nobody's fault; nothing to retry).
    #[error("the call is over")]
    CallOver,
}

impl CallHandle {
    /// Attaches a bot's channel (an upgraded `GET …/control` or a dial-out): the bot gets
    /// `call.started`, then the call's events and the caller's audio from the returned queue,
    /// which closes when the call is over (its last item is `call.ended`). The id names this
    /// attachment in its [`CallCommand::Detach`], should the bot's side drop first.
    pub async fn attach_bot(&self) -> Result<(BotId, mpsc::Receiver<BotOutput>), AttachBotError> {
        let (bot_tx, bot_rx) = mpsc::channel(BOT_QUEUE_FRAMES);
        let (reply, attached) = oneshot::channel();
        self.commands
            .send(CallCommand::Attach { bot: bot_tx, reply })
            .await
            .map_err(|_| AttachBotError::CallOver)?;
        match attached.await {
            Ok(Ok(id)) => Ok((id, bot_rx)),
            Ok(Err(AttachError::AlreadyAttached)) => Err(AttachBotError::AlreadyAttached),
            Err(_) => Err(AttachBotError::CallOver),
        }
    }

    /// Admits one bot request at `now` against the call's rate limits, or says which limit
    /// refused it (nothing is taken then).
    pub fn admit(
        &self,
        request: crate::control::rate::Request,
        now: std::time::Instant,
    ) -> Result<(), crate::control::rate::Refused> {
        self.rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(request, now)
    }

    /// Ends the call with `reason`, unless another reason got there first. Never waits and
    /// cannot be lost.
    pub fn hang_up(&self, reason: EndReason) {
        self.hangup.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(reason);
            }
            first
        });
    }
}

/// All calls of the daemon. Shared by the HTTP handlers and the lifecycle.
pub struct Calls {
    settings: BridgeSettings,
    calls: Mutex<HashMap<String, CallHandle>>,
    /// `max_calls` permits; each call holds one from admission until its task ends.
    admission: Arc<Semaphore>,
    draining: AtomicBool,
    /// Cancelled at drain; every call holds a clone.
    drain: CancellationToken,
    /// Number of live calls, for waiting on drain.
    count: watch::Sender<usize>,
    /// Every call's frame lateness; judged by [`overload::monitor`].
    frame_clock: Arc<FrameClock>,
    /// The threads the calls run on.
    shards: Shards,
    /// The bot control channels: each holds a token while it moves frames.
    bot_channels: TaskTracker,
}

impl Calls {
    /// An empty registry whose calls run on `shards`.
    pub fn new(settings: BridgeSettings, shards: Shards) -> Arc<Self> {
        let settings_overload = settings.overload;
        Arc::new(Calls {
            shards,
            admission: Arc::new(Semaphore::new(settings.max_calls)),
            settings,
            calls: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drain: CancellationToken::new(),
            count: watch::channel(0).0,
            frame_clock: Arc::new(FrameClock::new(settings_overload)),
            bot_channels: TaskTracker::new(),
        })
    }

    /// The settings every call uses.
    pub fn settings(&self) -> &BridgeSettings {
        &self.settings
    }

    /// The call threads (the watchdog asks whether one has stalled).
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Answers an offer and starts the call on the least loaded shard. Returns the call id
    /// and the SDP answer. Once admitted, the set-up runs to its end even if the caller
    /// stops waiting for the answer (the call then ends when ICE never connects).
    pub async fn create(
        self: &Arc<Self>,
        offer: &str,
        options: CallOptions,
    ) -> Result<(String, String), CreateError> {
        if self.is_draining() {
            return Err(CreateError::Draining);
        }
        if self.frame_clock.is_overloaded() {
            return Err(CreateError::Overloaded);
        }
        let permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| CreateError::AtCapacity(self.settings.max_calls))?;
        let lease = self.shards.lease();
        let shard = lease.handle();
        let (calls, offer) = (Arc::clone(self), offer.to_owned());
        shard
            .spawn(async move { calls.start(&offer, options, permit, lease).await })
            .await
            .map_err(|err| CreateError::SetupAborted(err.to_string()))?
    }

    /// [`Calls::create`] once admitted, on the call's shard: every task it spawns stays
    /// there.
    async fn start(
        self: &Arc<Self>,
        offer: &str,
        options: CallOptions,
        permit: OwnedSemaphorePermit,
        lease: ShardLease,
    ) -> Result<(String, String), CreateError> {
        let (peer, answer, peer_events) = CallPeer::answer(&self.settings.rtc, offer).await?;
        let s = &self.settings;
        let codec = peer.codec();
        let id = new_call_id(&s.node_id);
        let voice = options.voice.unwrap_or_else(|| s.voice.clone());
        // A recording that cannot be created is no reason to refuse the call: the bot is
        // told, and the call goes on unrecorded.
        let recorder = options.record.unwrap_or(s.record).then(|| {
            Recorder::start(&s.recordings_dir, &id).inspect_err(|err| {
                tracing::warn!(call = %id, error = %err, "call not recorded");
            })
        });
        let pcm_rate = codec.pcm_rate(s.sample_rate);
        let core = CallCore::new(CallParams {
            id: id.clone(),
            voice: voice.clone(),
            pcm_rate,
            codec,
            limits: s.limits,
            playout: PlayoutConfig {
                input_format: LMNT_FORMAT.1,
                input_rate: pcm_rate,
                output_rate: pcm_rate,
                jitter_min: s.jitter_min,
                jitter_max: s.jitter_max,
                max_queued: s.max_queued,
                max_late: s.max_late,
            },
            dtmf_barge_in: options.dtmf_barge_in.unwrap_or(s.dtmf_barge_in),
            recording: match &recorder {
                None => Recording::Off,
                Some(Ok(recorder)) => Recording::To(recorder.path().to_owned()),
                Some(Err(err)) => Recording::Failed(err.to_string()),
            },
            custom: options.custom,
            encoder: s.encoder,
            bot_grace: s.bot_grace,
        })?;
        let encoder = codec.encoder(&s.encoder, pcm_rate)?;
        let link = Link::start(SessionOptions {
            url: s.lmnt_url.clone(),
            api_key: s.api_key.clone(),
            voice: voice.clone(),
            format: LMNT_FORMAT.0,
            sample_rate: pcm_rate,
            language: options.language.or_else(|| s.language.clone()),
            // Word timings give `heard_text` after a barge-in.
            return_timestamps: true,
            connect_timeout: s.connect_timeout,
            ping_interval: LMNT_PING_INTERVAL,
            liveness_timeout: s.liveness_timeout,
        });
        let (commands_tx, commands_rx) = mpsc::channel(CALL_COMMAND_QUEUE);
        let (hangup_tx, hangup_rx) = watch::channel(None);
        let io = CallIo {
            peer,
            peer_events,
            commands: commands_rx,
            link,
            encoder,
            signals: CallSignals {
                hangup: hangup_rx,
                drain: self.drain.clone(),
            },
            permit,
            recorder: recorder.and_then(Result::ok),
            panic_marker: s.panic_marker.clone(),
            frame_clock: Arc::clone(&self.frame_clock),
            ticks: lease.subscribe_ticks(),
        };
        let registry: Weak<Calls> = Arc::downgrade(self);
        let ended_id = id.clone();
        // Held across the spawn: the call's own removal waits for its insertion.
        let mut calls = self.lock_calls();
        let shard = lease.handle();
        let info = driver::spawn(id.clone(), voice, core, io, move |_reason| {
            if let Some(calls) = registry.upgrade() {
                calls.remove(&ended_id);
            }
            // The shard counts the call until it has ended.
            drop(lease);
        });
        let handle = CallHandle {
            commands: commands_tx,
            info,
            rate: Arc::new(Mutex::new(BotRateLimiter::new(
                &s.bot_rate,
                std::time::Instant::now(),
            ))),
            hangup: Arc::new(hangup_tx),
            shard,
            bot_channels: self.bot_channels.clone(),
        };
        calls.insert(id.clone(), handle.clone());
        self.count.send_replace(calls.len());
        drop(calls);
        if let Some(url) = options.bot_url {
            crate::dialout::spawn(handle, url, Arc::clone(&s.dial));
        }
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
        !self.is_draining() && !self.is_overloaded() && self.admission.available_permits() > 0
    }

    /// Whether new calls are refused because the calls in progress run late.
    pub fn is_overloaded(&self) -> bool {
        self.frame_clock.is_overloaded()
    }

    /// Judges the calls' frame clock until `shutdown` (see [`overload::monitor`]); spawn it
    /// once beside the listener.
    pub fn monitor_overload(&self, shutdown: CancellationToken) -> impl Future<Output = ()> {
        overload::monitor(Arc::clone(&self.frame_clock), shutdown)
    }

    /// Whether drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops admitting calls and asks every call, present and being set up, to finish its
    /// utterances and end.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain.cancel();
    }

    /// Ends every call now with `reason`.
    pub fn hang_up_all(&self, reason: EndReason) {
        for call in self.lock_calls().values() {
            call.hang_up(reason);
        }
    }

    /// Resolves when no call is live.
    pub async fn wait_empty(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Resolves when no bot control channel is open. For shutdown, once no call is live: a
    /// channel whose call has ended still writes the call's last events (`utterance.done`,
    /// `call.ended`) and its close frame, which exiting first would cut off.
    pub async fn wait_bot_channels(&self) {
        self.bot_channels.close();
        self.bot_channels.wait().await;
    }

    fn remove(&self, id: &str) {
        let mut calls = self.lock_calls();
        calls.remove(id);
        self.count.send_replace(calls.len());
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallHandle>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `{node_id}.{128 random bits, hex}`: unguessable, so a call id is not an invitation, and
/// it names the node that holds the call, so a load balancer routes every request for it
/// there (`deploy/haproxy/haproxy.cfg`). A node id never holds a `_`, and the id is a safe file name (recordings).
fn new_call_id(node_id: &str) -> String {
    let bits: u128 = rand::random();
    format!("{node_id}_{bits:032x}")
}

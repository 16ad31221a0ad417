//! Configuration: TOML file, then environment, then flags (the later wins), validated before
//! any socket is bound (interface.md section 2).
//!
//! The schema below is the contract the rest of the crate codes against. [`load_serve`] is
//! what `serve` calls; [`load`] is the same without the API-key rule (for `demo` and tests).
//! Environment variables are listed in [`load`](mod@load); every range rule is in
//! [`Config::validate`] and the named constants of [`validate`](mod@validate).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exit::CommandError;
use crate::secret::Secret;

mod error;
pub mod load;
pub mod validate;

pub use error::ConfigError;
pub use load::{process_env, EnvLookup};
pub use validate::session_url;

/// `lmnt-bridge serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "LMNT_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listener address (overrides `server.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// `lmnt-bridge demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// HTTP listener address for the daemon and the call page.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// `lmnt-bridge check-config` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "LMNT_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listener address (overrides `server.listen`), as `serve --listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub lmnt: LmntConfig,
    pub limits: LimitsConfig,
    pub rtc: RtcConfig,
    pub audio: AudioConfig,
    pub calls: CallsConfig,
    pub bots: BotsConfig,
    /// Test hooks; refused unless `LMNT_BRIDGE_TEST_HOOKS=1` (see [`TestingConfig`]).
    #[serde(skip_serializing_if = "TestingConfig::is_empty")]
    pub testing: TestingConfig,
}

/// Hooks for the test suite only. Any key set here makes loading fail unless the environment
/// has `LMNT_BRIDGE_TEST_HOOKS=1` ([`load::TEST_HOOKS_ENV`]), so a production configuration
/// cannot switch one on by accident (a stray key alone is refused, naming the key).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Bot text containing this string makes the call's task panic: the test of "a bug in
    /// one call ends that call only".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub panic_marker: Option<String>,
}

impl TestingConfig {
    /// No hook set.
    pub fn is_empty(&self) -> bool {
        self.panic_marker.is_none()
    }
}

/// The HTTP listener and process lifecycle.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listener (signaling, control channel, health, metrics).
    pub listen: SocketAddr,
    /// Bearer tokens, one per line, read from this file (or `$CREDENTIALS_DIRECTORY/bearer-tokens`).
    pub bearer_tokens_file: Option<PathBuf>,
    /// Loaded tokens (not part of the TOML; filled from the file).
    #[serde(skip)]
    pub bearer_tokens: Vec<Secret>,
    /// How long SIGTERM lets calls in progress finish before hanging them up.
    pub drain_timeout_ms: u64,
    /// Keep IP addresses and ports in log lines (for debugging). Off: every address in every
    /// line is `<redacted>`, since callers' addresses are personal data.
    pub log_addresses: bool,
    /// This node's name, the first part of every call id it creates (`{node_id}_{random}`),
    /// so a load balancer routes a call's requests back to it. Lowercase letters, digits and
    /// `-`, at most 63. Default: the host name's first label (a StatefulSet's pod name).
    pub node_id: Option<String>,
    /// Serve a listener on a non-loopback address without bearer tokens. Off: such a
    /// configuration is refused (anyone who reaches the port could place calls on the
    /// operator's LMNT account).
    pub allow_unauthenticated: bool,
    /// Open HTTP connections (WebSockets included) at most; one more is answered `503` and
    /// closed. Keep it below the file-descriptor limit minus the calls' sockets.
    pub max_connections: usize,
    /// A request's header (and, on a kept-alive connection, the wait for the next one) must
    /// arrive within this; a slower client is disconnected.
    pub header_timeout_ms: u64,
    /// A request body (SDP offer, `say` JSON) must arrive within this once its header has;
    /// a slower client gets `408`.
    pub body_timeout_ms: u64,
    /// Threads the calls run on, each call whole on one of them; 0: one per CPU the
    /// process may use. The HTTP API runs beside them on its own runtime.
    pub call_threads: usize,
}

/// The LMNT speech session every call opens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmntConfig {
    /// LMNT base URL (`https://api.lmnt.com`); the session URL is derived as LMNT's SDKs do.
    pub base_url: String,
    /// Not read from TOML (use `LMNT_API_KEY` or the systemd credential `lmnt-api-key`).
    #[serde(skip)]
    pub api_key: Option<Secret>,
    pub voice: String,
    pub language: Option<String>,
    /// 8000, 16000 or 24000.
    pub sample_rate: u32,
    pub connect_timeout_ms: u64,
    /// No audio and no acknowledgement this long after a flush: the session is dead.
    pub liveness_timeout_ms: u64,
}

/// Admission and input limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_calls: usize,
    pub max_sdp_bytes: usize,
    pub max_text_message_bytes: usize,
    pub max_utterance_bytes: usize,
    /// A frame sent more than this many ms after its deadline counts as late for overload
    /// protection; 0 turns protection off.
    pub overload_late_ms: u32,
    /// Late frames, in percent of a window's frames (a quarter second,
    /// [`crate::call::overload::WINDOW`]), at which new calls are refused. Default 1: about
    /// what keeps the admitted calls' inter-arrival deviation p99 under 10 ms (the load tool,
    /// 300 calls placed over 10 s: at 2 % once 202 were admitted at p99 20 ms). A box with
    /// few calls is judged by [`crate::call::overload::MIN_LATE_FRAMES`] instead.
    pub overload_late_percent: f64,
    /// Control messages (and `say` requests) a call's bot may send a second, sustained;
    /// more are refused with `rate_limited`.
    pub bot_messages_per_sec: f64,
    /// Control messages a call's bot may send at once after a quiet spell.
    pub bot_message_burst: u32,
    /// Flushes (and `say` requests) a call's bot may send a second, sustained: each one is a
    /// paid LMNT synthesis.
    pub bot_flushes_per_sec: f64,
    /// Flushes a call's bot may send at once after a quiet spell.
    pub bot_flush_burst: u32,
}

/// ICE/UDP settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// Local addresses to gather host candidates on.
    pub bind_ips: Vec<IpAddr>,
    /// Addresses announced instead (1:1 NAT), empty for none.
    pub public_ips: Vec<IpAddr>,
    pub udp_port_min: u16,
    pub udp_port_max: u16,
    /// Networks (CIDR) an offer's candidates must be in for ICE to check them; empty for any.
    pub ice_allow: Vec<crate::rtc::IpNet>,
    /// Networks (CIDR) ICE never checks; wins over `ice_allow`.
    pub ice_deny: Vec<crate::rtc::IpNet>,
}

/// Opus encoder and playout buffer settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub opus_bitrate_bps: u32,
    pub opus_fec: bool,
    pub opus_expected_loss_pct: u8,
    pub opus_complexity: u8,
    /// The caller's RTCP receiver reports drive FEC, expected loss and bitrate (from the
    /// quiet `opus_*` values above up to the two maxima below).
    pub opus_loss_adaptation: bool,
    /// The highest bitrate loss adaptation may set (>= `opus_bitrate_bps`).
    pub opus_max_bitrate_bps: u32,
    /// The highest expected loss adaptation may set (>= `opus_expected_loss_pct`).
    pub opus_max_expected_loss_pct: u8,
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    pub max_queued_ms: u32,
    /// How late a frame may still go out with continuous RTP time (the receiver's jitter
    /// buffer absorbs it); beyond this the schedule skips ahead. 0: skip once a frame late.
    pub max_late_ms: u32,
}

/// Per-call features switched on for every call; each can also be asked for per call in
/// `POST /v1/calls`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Record every call: a stereo WAV (caller left, bot right) under
    /// `state_dir/recordings`. Per call: `?record=true`.
    pub record: bool,
    /// A caller's key press (DTMF) stops the bot's speech as `clear` does. Per call:
    /// `?dtmf_barge_in=true`.
    pub dtmf_barge_in: bool,
    /// The daemon's state: recordings live in its `recordings` folder. Default: systemd's
    /// `$STATE_DIRECTORY` (`StateDirectory=`), else `/var/lib/lmnt-bridge`.
    pub state_dir: PathBuf,
    /// When a bot's control channel drops without `hangup`, the call waits this long for a
    /// bot to attach again (it then gets what it missed, in order), else ends with
    /// `bot_gone`. 0 ends the call as the channel drops.
    pub bot_grace_ms: u64,
}

/// Bot dial-out: the daemon opens the bot's WebSocket when a call is created, instead of
/// waiting for a bot to attach. Off while `url_prefixes` is empty and `default_url` unset.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotsConfig {
    /// `POST /v1/calls?bot=URL` is allowed only when URL starts with one of these (each a
    /// `ws://` or `wss://` URL ending in `/`); any other gets `403 bot_url_not_allowed`.
    pub url_prefixes: Vec<String>,
    /// The bot every call without `?bot=` dials, if set (`ws://` or `wss://`).
    pub default_url: Option<String>,
    /// One connection attempt (TCP, TLS, WebSocket upgrade) must finish within this.
    pub connect_timeout_ms: u64,
    /// How long a call keeps retrying (with backoff) a bot that is unreachable or dropped
    /// before it ends with `bot_unreachable`; the caller hears silence meanwhile.
    pub retry_budget_ms: u64,
    /// Not read from TOML: the HMAC key that signs each dial-out
    /// (`$CREDENTIALS_DIRECTORY/bot-signing-secret`).
    #[serde(skip)]
    pub signing_secret: Option<Secret>,
}

impl Default for BotsConfig {
    fn default() -> Self {
        BotsConfig {
            url_prefixes: Vec::new(),
            default_url: None,
            connect_timeout_ms: 5_000,
            retry_budget_ms: 10_000,
            signing_secret: None,
        }
    }
}

impl BotsConfig {
    /// Whether calls may dial out to a bot at all.
    pub fn dial_out_enabled(&self) -> bool {
        !self.url_prefixes.is_empty() || self.default_url.is_some()
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            record: false,
            dtmf_barge_in: false,
            state_dir: PathBuf::from("/var/lib/lmnt-bridge"),
            bot_grace_ms: 10_000,
        }
    }
}

impl CallsConfig {
    /// Where call recordings are written.
    pub fn recordings_dir(&self) -> PathBuf {
        self.state_dir.join("recordings")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            bearer_tokens_file: None,
            bearer_tokens: Vec::new(),
            drain_timeout_ms: 30_000,
            log_addresses: false,
            node_id: None,
            allow_unauthenticated: false,
            max_connections: 2_048,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            call_threads: 0,
        }
    }
}

impl Default for LmntConfig {
    fn default() -> Self {
        LmntConfig {
            base_url: crate::lmnt::DEFAULT_BASE_URL.into(),
            api_key: None,
            voice: "leah".into(),
            language: None,
            sample_rate: 24_000,
            connect_timeout_ms: 5_000,
            liveness_timeout_ms: 5_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_calls: 200,
            max_sdp_bytes: 16 * 1024,
            max_text_message_bytes: 4 * 1024,
            max_utterance_bytes: 5_000,
            overload_late_ms: 10,
            overload_late_percent: 1.0,
            bot_messages_per_sec: 200.0,
            bot_message_burst: 400,
            bot_flushes_per_sec: 5.0,
            bot_flush_burst: 10,
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            public_ips: Vec::new(),
            udp_port_min: 0,
            udp_port_max: 0,
            ice_allow: Vec::new(),
            ice_deny: Vec::new(),
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            opus_bitrate_bps: 32_000,
            opus_fec: false,
            opus_expected_loss_pct: 0,
            opus_complexity: 0,
            opus_loss_adaptation: true,
            opus_max_bitrate_bps: 48_000,
            opus_max_expected_loss_pct: 25,
            jitter_min_ms: 0,
            jitter_max_ms: 300,
            max_queued_ms: 120_000,
            max_late_ms: 100,
        }
    }
}

/// Loads the configuration `serve` runs with: the file (`args.config`), the environment, the
/// flags, secrets; validated. Refuses with [`ConfigError::MissingKey`] when there is no API key
/// and `lmnt.base_url` was not set explicitly.
pub fn load_serve(args: &ServeArgs) -> Result<Config, ConfigError> {
    load_serve_with(args, &process_env)
}

/// [`load_serve`] with an injected environment.
pub fn load_serve_with(args: &ServeArgs, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let loaded = load::load(args.config.as_deref(), args.listen, env)?;
    require_key(&loaded)?;
    Ok(loaded.config)
}

/// Loads and validates file, environment and `listen` flag without the API-key rule of
/// [`load_serve`] (for `demo`, which brings its own speech server).
pub fn load(
    file: Option<&std::path::Path>,
    listen: Option<SocketAddr>,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    load::load(file, listen, env).map(|loaded| loaded.config)
}

/// The LMNT settings from the environment alone (`LMNT_API_KEY` or the systemd credential,
/// `LMNT_BASE_URL`), under the same rules as `serve`: refused with
/// [`ConfigError::MissingKey`] when there is neither a key nor an explicit base URL. For
/// `speak`, which has no configuration file.
pub fn lmnt_from_env(env: EnvLookup<'_>) -> Result<LmntConfig, ConfigError> {
    let loaded = load::load(None, None, env)?;
    require_key(&loaded)?;
    Ok(loaded.config.lmnt)
}

fn require_key(loaded: &load::Loaded) -> Result<(), ConfigError> {
    if loaded.config.lmnt.api_key.is_none() && !loaded.base_url_explicit {
        return Err(ConfigError::MissingKey);
    }
    Ok(())
}

/// `lmnt-bridge check-config`: loads exactly as `serve` would and prints the effective
/// configuration as TOML on stdout, secrets described but never printed. Any problem is a
/// [`CommandError::Config`] (exit 78) naming the key.
pub fn check_config(args: CheckConfigArgs) -> Result<(), CommandError> {
    print!("{}", effective_toml(&args, &process_env)?);
    Ok(())
}

/// The text `check-config` prints: comment lines for the derived session URL and the secrets
/// (their source, never their value), then the effective configuration as TOML, which
/// `--config` accepts back.
pub fn effective_toml(args: &CheckConfigArgs, env: EnvLookup<'_>) -> Result<String, CommandError> {
    let loaded = load::load(args.config.as_deref(), args.listen, env)?;
    require_key(&loaded)?;
    let body = toml::to_string_pretty(&loaded.config)
        .map_err(|err| CommandError::Failed(format!("cannot print the configuration: {err}")))?;
    let session = loaded.config.lmnt.session_url()?;
    let key = match &loaded.api_key_from {
        Some(from) => format!("[redacted] (from {from})"),
        None => "not set".to_string(),
    };
    let tokens = match &loaded.tokens_from {
        Some(from) => format!(
            "{} [redacted] (from {})",
            loaded.config.server.bearer_tokens.len(),
            from.display()
        ),
        None => "none: the HTTP API accepts requests without a token".to_string(),
    };
    let bot_secret = match &loaded.bot_secret_from {
        Some(from) => format!("[redacted] (from {})", from.display()),
        None => "not set".to_string(),
    };
    Ok(format!(
        "# lmnt-bridge effective configuration (file, then environment, then flags)\n\
         # LMNT session URL: {session}\n\
         # LMNT API key: {key}\n\
         # bearer tokens: {tokens}\n\
         # bot signing secret: {bot_secret}\n\n{body}"
    ))
}

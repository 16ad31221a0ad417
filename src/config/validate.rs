//! Range and consistency checks, run before any socket is bound.

use url::Url;

use super::{
    AudioConfig, BotsConfig, Config, ConfigError, LimitsConfig, LmntConfig, RtcConfig, ServerConfig,
};

/// Sample rates LMNT sessions deliver as raw PCM.
pub const SAMPLE_RATES: [u32; 3] = [8_000, 16_000, 24_000];
/// Opus accepts 6 kbit/s to 510 kbit/s (RFC 6716).
pub const OPUS_BITRATE_RANGE: std::ops::RangeInclusive<u32> = 6_000..=510_000;
/// libopus complexity levels.
pub const OPUS_COMPLEXITY_MAX: u8 = 10;
/// Beyond 2 s of playout buffer a conversation stops feeling live.
pub const MAX_JITTER_MS: u32 = 2_000;
/// Ten minutes of queued audio per call bounds memory (about 29 MB of s16 PCM at LMNT's default
/// 24 kHz).
pub const MAX_QUEUED_MS: u32 = 600_000;
/// A frame later than a second is not worth sending late: receivers have concealed it.
pub const MAX_LATE_MS: u32 = 1_000;
/// Timeouts above ten minutes are a typo (milliseconds taken for seconds).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// A drain longer than an hour would outlive any sensible `TimeoutStopSec=`.
pub const MAX_DRAIN_TIMEOUT_MS: u64 = 3_600_000;
/// One process cannot hold more calls than it has UDP ports, and memory runs out long before.
pub const MAX_CALLS: usize = 10_000;
/// `limits.overload_late_ms` beyond this could never trip: frames later than
/// `audio.max_late_ms` (at most [`MAX_LATE_MS`]) are skipped, not sent.
pub const MAX_OVERLOAD_LATE_MS: u32 = MAX_LATE_MS;
/// Upper bound for every byte limit: SDP offers and bot text are small; more is abuse.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Ports below 1024 need a capability the unit does not grant.
pub const MIN_UDP_PORT: u16 = 1024;
/// A call waits at most a minute for its bot to come back: meanwhile it keeps the caller's
/// audio for it (32 KB a second) and the caller hears nothing new.
pub const MAX_BOT_GRACE_MS: u64 = 60_000;
/// LMNT voice ids are short; a long one is a pasted mistake.
pub const MAX_VOICE_BYTES: usize = 256;
/// A node id is a DNS label (a host or pod name), so at most 63 bytes.
pub const MAX_NODE_ID_BYTES: usize = 63;
/// More open HTTP connections than this is more file descriptors than the unit's
/// `LimitNOFILE=65536` leaves beside the calls' sockets.
pub const MAX_CONNECTIONS: usize = 60_000;
/// More call threads than this is a typo: each is a thread spinning a runtime, and a
/// machine with more cores than this runs several daemons (one per NUMA node) anyway.
pub const MAX_CALL_THREADS: usize = 256;
/// A bot rate above this (per second) is no limit at all: the control channel cannot carry it.
pub const MAX_BOT_RATE_PER_SEC: f64 = 100_000.0;
/// A burst above this is no limit at all.
pub const MAX_BOT_BURST: u32 = 100_000;

impl Config {
    /// Checks every range and cross-field rule. Returns the first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.lmnt.validate()?;
        self.limits.validate()?;
        self.rtc.validate(self.limits.max_calls)?;
        self.audio.validate()?;
        self.calls.validate()?;
        self.bots.validate()
    }
}

impl super::CallsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bot_grace_ms > MAX_BOT_GRACE_MS {
            return Err(ConfigError::invalid(
                "calls.bot_grace_ms",
                format!(
                    "{} is above {MAX_BOT_GRACE_MS}: a call keeps the caller's audio for its bot \
                     that long",
                    self.bot_grace_ms
                ),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "calls.state_dir",
                format!("{} is not an absolute path", self.state_dir.display()),
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_timeout_ms > MAX_DRAIN_TIMEOUT_MS {
            return Err(ConfigError::invalid(
                "server.drain_timeout_ms",
                format!("{} is above {MAX_DRAIN_TIMEOUT_MS}", self.drain_timeout_ms),
            ));
        }
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError::invalid(
                "server.max_connections",
                format!("{} is not in 1..={MAX_CONNECTIONS}", self.max_connections),
            ));
        }
        if self.call_threads > MAX_CALL_THREADS {
            return Err(ConfigError::invalid(
                "server.call_threads",
                format!("{} is above {MAX_CALL_THREADS}", self.call_threads),
            ));
        }
        timeout("server.header_timeout_ms", self.header_timeout_ms)?;
        timeout("server.body_timeout_ms", self.body_timeout_ms)?;
        // The address itself is not printed: log lines and errors redact addresses anyway,
        // and the operator knows which listener they configured.
        if !self.listen.ip().is_loopback()
            && self.bearer_tokens.is_empty()
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::invalid(
                "server.bearer_tokens_file",
                "the listener is not on a loopback address, and no bearer token is configured: \
                 anyone who reaches it could place calls on your LMNT account. Configure \
                 tokens (server.bearer_tokens_file or the systemd credential `bearer-tokens`), \
                 or set server.allow_unauthenticated = true (env \
                 LMNT_BRIDGE_ALLOW_UNAUTHENTICATED=true) when something in front authenticates",
            ));
        }
        if let Some(node) = &self.node_id {
            if !is_node_id(node) {
                return Err(ConfigError::invalid(
                    "server.node_id",
                    format!(
                        "`{node}` is not 1 to {MAX_NODE_ID_BYTES} lowercase letters, digits \
                         and inner `-`"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The node id (load fills it from the host name when the configuration has none).
    pub fn node_id(&self) -> &str {
        self.node_id.as_deref().unwrap_or("node")
    }
}

/// A DNS label in lowercase: what a load balancer can name a backend after, and what never
/// holds the `_` that separates it from the random part of a call id.
fn is_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

impl BotsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for prefix in &self.url_prefixes {
            crate::dialout::parse_bot_url(prefix)
                .map_err(|err| ConfigError::invalid("bots.url_prefixes", err.to_string()))?;
            if !prefix.trim().ends_with('/') {
                // Without a path, `wss://bots.example.com` would admit
                // `wss://bots.example.com.attacker.net/`.
                return Err(ConfigError::invalid(
                    "bots.url_prefixes",
                    format!("`{prefix}` must end with `/`"),
                ));
            }
        }
        if let Some(url) = &self.default_url {
            crate::dialout::parse_bot_url(url)
                .map_err(|err| ConfigError::invalid("bots.default_url", err.to_string()))?;
        }
        timeout("bots.connect_timeout_ms", self.connect_timeout_ms)?;
        if self.retry_budget_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::invalid(
                "bots.retry_budget_ms",
                format!("{} is above {MAX_TIMEOUT_MS}", self.retry_budget_ms),
            ));
        }
        if self.dial_out_enabled() && self.signing_secret.is_none() {
            return Err(ConfigError::invalid(
                "bots",
                format!(
                    "dialing out to bots needs the signing secret: the systemd credential \
                     `{}` ($CREDENTIALS_DIRECTORY/{})",
                    super::load::BOT_SIGNING_SECRET_CREDENTIAL,
                    super::load::BOT_SIGNING_SECRET_CREDENTIAL
                ),
            ));
        }
        Ok(())
    }
}

impl LmntConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        session_url(&self.base_url)?;
        if self.voice.trim().is_empty() {
            return Err(ConfigError::invalid("lmnt.voice", "must not be empty"));
        }
        if self.voice.len() > MAX_VOICE_BYTES {
            return Err(ConfigError::invalid(
                "lmnt.voice",
                format!("longer than {MAX_VOICE_BYTES} bytes"),
            ));
        }
        if let Some(language) = &self.language {
            if language.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "lmnt.language",
                    "must not be empty (leave it out for the voice's default)",
                ));
            }
        }
        if !SAMPLE_RATES.contains(&self.sample_rate) {
            return Err(ConfigError::invalid(
                "lmnt.sample_rate",
                format!("{} is not one of 8000, 16000, 24000", self.sample_rate),
            ));
        }
        timeout("lmnt.connect_timeout_ms", self.connect_timeout_ms)?;
        timeout("lmnt.liveness_timeout_ms", self.liveness_timeout_ms)
    }

    /// The speech-session WebSocket URL derived from `base_url` as LMNT's SDKs do: trailing
    /// `/` stripped, `https` -> `wss`, `http` -> `ws`, `/v1/ai/speech/stream` appended, a path
    /// prefix kept. Returns an error when `base_url` does not parse or has another scheme.
    pub fn session_url(&self) -> Result<Url, ConfigError> {
        session_url(&self.base_url)
    }
}

/// Maps an LMNT base URL to its session URL with LMNT's own rule
/// ([`crate::lmnt::session_url`]), refusing what an operator must not configure: a query or
/// fragment (the SDKs would silently drop it) and credentials in the URL (the key belongs in
/// `LMNT_API_KEY`, never in a URL that may be logged).
pub fn session_url(base_url: &str) -> Result<Url, ConfigError> {
    const KEY: &str = "lmnt.base_url";
    let base = Url::parse(base_url.trim())
        .map_err(|err| ConfigError::invalid(KEY, format!("`{base_url}` is not a URL: {err}")))?;
    if base.query().is_some() || base.fragment().is_some() {
        return Err(ConfigError::invalid(
            KEY,
            format!("`{base_url}` must not carry a query or fragment"),
        ));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(ConfigError::invalid(
            KEY,
            "must not carry credentials (use LMNT_API_KEY)",
        ));
    }
    crate::lmnt::session_url(base_url).map_err(|err| ConfigError::invalid(KEY, err.to_string()))
}

fn timeout(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 || value > MAX_TIMEOUT_MS {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is not in 1..={MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(())
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_calls == 0 || self.max_calls > MAX_CALLS {
            return Err(ConfigError::invalid(
                "limits.max_calls",
                format!("{} is not in 1..={MAX_CALLS}", self.max_calls),
            ));
        }
        if self.overload_late_ms > MAX_OVERLOAD_LATE_MS {
            return Err(ConfigError::invalid(
                "limits.overload_late_ms",
                format!(
                    "{} is not in 0..={MAX_OVERLOAD_LATE_MS}",
                    self.overload_late_ms
                ),
            ));
        }
        if !(self.overload_late_percent > 0.0 && self.overload_late_percent <= 100.0) {
            return Err(ConfigError::invalid(
                "limits.overload_late_percent",
                format!("{} is not in (0, 100]", self.overload_late_percent),
            ));
        }
        for (key, value) in [
            ("limits.max_sdp_bytes", self.max_sdp_bytes),
            ("limits.max_text_message_bytes", self.max_text_message_bytes),
            ("limits.max_utterance_bytes", self.max_utterance_bytes),
        ] {
            if value == 0 || value > MAX_INPUT_BYTES {
                return Err(ConfigError::invalid(
                    key,
                    format!("{value} is not in 1..={MAX_INPUT_BYTES}"),
                ));
            }
        }
        for (key, value) in [
            ("limits.bot_messages_per_sec", self.bot_messages_per_sec),
            ("limits.bot_flushes_per_sec", self.bot_flushes_per_sec),
        ] {
            // Written so that NaN fails too.
            if !(value > 0.0 && value <= MAX_BOT_RATE_PER_SEC) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{value} is not above 0 and at most {MAX_BOT_RATE_PER_SEC}"),
                ));
            }
        }
        for (key, value) in [
            ("limits.bot_message_burst", self.bot_message_burst),
            ("limits.bot_flush_burst", self.bot_flush_burst),
        ] {
            if value == 0 || value > MAX_BOT_BURST {
                return Err(ConfigError::invalid(
                    key,
                    format!("{value} is not in 1..={MAX_BOT_BURST}"),
                ));
            }
        }
        Ok(())
    }
}

impl RtcConfig {
    fn validate(&self, max_calls: usize) -> Result<(), ConfigError> {
        if self.bind_ips.is_empty() {
            return Err(ConfigError::invalid(
                "rtc.bind_ips",
                "needs at least one address",
            ));
        }
        for ip in &self.bind_ips {
            if ip.is_multicast() {
                return Err(ConfigError::invalid(
                    "rtc.bind_ips",
                    format!("{ip} is a multicast address"),
                ));
            }
        }
        for ip in &self.public_ips {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::invalid(
                    "rtc.public_ips",
                    format!("{ip} cannot be announced to a peer"),
                ));
            }
        }
        match (self.udp_port_min, self.udp_port_max) {
            // Both zero: the operating system picks an ephemeral port per call.
            (0, 0) => Ok(()),
            (0, _) | (_, 0) => Err(ConfigError::invalid(
                "rtc.udp_port_min",
                "set both rtc.udp_port_min and rtc.udp_port_max, or neither",
            )),
            (min, _) if min < MIN_UDP_PORT => Err(ConfigError::invalid(
                "rtc.udp_port_min",
                format!("{min} is below {MIN_UDP_PORT}"),
            )),
            (min, max) if min > max => Err(ConfigError::invalid(
                "rtc.udp_port_max",
                format!("{max} is below rtc.udp_port_min ({min})"),
            )),
            (min, max) => {
                // Each call binds its own UDP socket, so the range must hold max_calls ports.
                let ports = usize::from(max - min) + 1;
                if ports < max_calls {
                    Err(ConfigError::invalid(
                        "rtc.udp_port_max",
                        format!(
                            "{min}..={max} holds {ports} ports, fewer than limits.max_calls ({max_calls})"
                        ),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl AudioConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !OPUS_BITRATE_RANGE.contains(&self.opus_bitrate_bps) {
            return Err(ConfigError::invalid(
                "audio.opus_bitrate_bps",
                format!("{} is not in 6000..=510000", self.opus_bitrate_bps),
            ));
        }
        if self.opus_complexity > OPUS_COMPLEXITY_MAX {
            return Err(ConfigError::invalid(
                "audio.opus_complexity",
                format!(
                    "{} is not in 0..={OPUS_COMPLEXITY_MAX}",
                    self.opus_complexity
                ),
            ));
        }
        if self.opus_expected_loss_pct > 100 {
            return Err(ConfigError::invalid(
                "audio.opus_expected_loss_pct",
                format!("{} is not in 0..=100", self.opus_expected_loss_pct),
            ));
        }
        if !OPUS_BITRATE_RANGE.contains(&self.opus_max_bitrate_bps)
            || self.opus_max_bitrate_bps < self.opus_bitrate_bps
        {
            return Err(ConfigError::invalid(
                "audio.opus_max_bitrate_bps",
                format!(
                    "{} is not in audio.opus_bitrate_bps ({})..=510000",
                    self.opus_max_bitrate_bps, self.opus_bitrate_bps
                ),
            ));
        }
        if self.opus_max_expected_loss_pct > 100
            || self.opus_max_expected_loss_pct < self.opus_expected_loss_pct
        {
            return Err(ConfigError::invalid(
                "audio.opus_max_expected_loss_pct",
                format!(
                    "{} is not in audio.opus_expected_loss_pct ({})..=100",
                    self.opus_max_expected_loss_pct, self.opus_expected_loss_pct
                ),
            ));
        }
        if self.jitter_max_ms > MAX_JITTER_MS {
            return Err(ConfigError::invalid(
                "audio.jitter_max_ms",
                format!("{} is above {MAX_JITTER_MS}", self.jitter_max_ms),
            ));
        }
        if self.jitter_min_ms > self.jitter_max_ms {
            return Err(ConfigError::invalid(
                "audio.jitter_min_ms",
                format!(
                    "{} is above audio.jitter_max_ms ({})",
                    self.jitter_min_ms, self.jitter_max_ms
                ),
            ));
        }
        if self.max_queued_ms == 0 || self.max_queued_ms > MAX_QUEUED_MS {
            return Err(ConfigError::invalid(
                "audio.max_queued_ms",
                format!("{} is not in 1..={MAX_QUEUED_MS}", self.max_queued_ms),
            ));
        }
        if self.max_late_ms > MAX_LATE_MS {
            return Err(ConfigError::invalid(
                "audio.max_late_ms",
                format!("{} is above {MAX_LATE_MS}", self.max_late_ms),
            ));
        }
        if self.max_queued_ms < self.jitter_max_ms {
            return Err(ConfigError::invalid(
                "audio.max_queued_ms",
                format!(
                    "{} is below audio.jitter_max_ms ({})",
                    self.max_queued_ms, self.jitter_max_ms
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn session_url_maps_like_the_sdks() {
        let cases = [
            (
                "https://api.lmnt.com",
                "wss://api.lmnt.com/v1/ai/speech/stream",
            ),
            (
                "http://127.0.0.1:7070/",
                "ws://127.0.0.1:7070/v1/ai/speech/stream",
            ),
            (
                "http://localhost:9000/proxy/lmnt/",
                "ws://localhost:9000/proxy/lmnt/v1/ai/speech/stream",
            ),
            ("ws://127.0.0.1:1", "ws://127.0.0.1:1/v1/ai/speech/stream"),
        ];
        for (base, want) in cases {
            assert_eq!(
                session_url(base).map(|u| u.to_string()).ok().as_deref(),
                Some(want),
                "{base}"
            );
        }
        for bad in [
            "ftp://x",
            "not a url",
            "https://api.lmnt.com/?a=b",
            "https://u:p@h",
        ] {
            let err = session_url(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("lmnt.base_url: "), "{bad}: {err}");
        }
    }

    #[test]
    fn each_rule_names_its_key() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "lmnt.sample_rate: 44100 is not one of 8000, 16000, 24000",
                Box::new(|c| c.lmnt.sample_rate = 44_100),
            ),
            ("lmnt.voice:", Box::new(|c| c.lmnt.voice = " ".into())),
            (
                "lmnt.language:",
                Box::new(|c| c.lmnt.language = Some(String::new())),
            ),
            (
                "lmnt.connect_timeout_ms:",
                Box::new(|c| c.lmnt.connect_timeout_ms = 0),
            ),
            ("limits.max_calls:", Box::new(|c| c.limits.max_calls = 0)),
            (
                "limits.max_sdp_bytes:",
                Box::new(|c| c.limits.max_sdp_bytes = 0),
            ),
            ("rtc.bind_ips:", Box::new(|c| c.rtc.bind_ips.clear())),
            (
                "rtc.udp_port_min:",
                Box::new(|c| c.rtc.udp_port_min = 40_000),
            ),
            (
                "rtc.udp_port_max:",
                Box::new(|c| {
                    c.rtc.udp_port_min = 40_010;
                    c.rtc.udp_port_max = 40_000
                }),
            ),
            (
                "rtc.udp_port_max:",
                Box::new(|c| {
                    c.rtc.udp_port_min = 40_000;
                    c.rtc.udp_port_max = 40_010
                }),
            ),
            (
                "audio.opus_bitrate_bps:",
                Box::new(|c| c.audio.opus_bitrate_bps = 5_999),
            ),
            (
                "audio.opus_complexity:",
                Box::new(|c| c.audio.opus_complexity = 11),
            ),
            (
                "audio.opus_max_bitrate_bps:",
                Box::new(|c| c.audio.opus_max_bitrate_bps = 24_000),
            ),
            (
                "audio.opus_max_expected_loss_pct:",
                Box::new(|c| {
                    c.audio.opus_expected_loss_pct = 10;
                    c.audio.opus_max_expected_loss_pct = 5
                }),
            ),
            (
                "audio.jitter_min_ms:",
                Box::new(|c| {
                    c.audio.jitter_min_ms = 200;
                    c.audio.jitter_max_ms = 100
                }),
            ),
            (
                "audio.max_queued_ms:",
                Box::new(|c| c.audio.max_queued_ms = 0),
            ),
            (
                "audio.max_late_ms:",
                Box::new(|c| c.audio.max_late_ms = 5_000),
            ),
            (
                "server.drain_timeout_ms:",
                Box::new(|c| c.server.drain_timeout_ms = u64::MAX),
            ),
            (
                "server.node_id:",
                Box::new(|c| c.server.node_id = Some("Node.1".into())),
            ),
            (
                "bots.url_prefixes: `wss://bots.example.com` must end with `/`",
                Box::new(|c| c.bots.url_prefixes = vec!["wss://bots.example.com".into()]),
            ),
            (
                "bots.url_prefixes:",
                Box::new(|c| c.bots.url_prefixes = vec!["https://bots.example.com/".into()]),
            ),
            (
                "bots.default_url:",
                Box::new(|c| c.bots.default_url = Some("wss://u:p@bots.example.com/".into())),
            ),
            (
                "bots: dialing out to bots needs the signing secret",
                Box::new(|c| c.bots.default_url = Some("wss://bots.example.com/a".into())),
            ),
            (
                "server.max_connections:",
                Box::new(|c| c.server.max_connections = 0),
            ),
            (
                "server.call_threads:",
                Box::new(|c| c.server.call_threads = MAX_CALL_THREADS + 1),
            ),
            (
                "server.header_timeout_ms:",
                Box::new(|c| c.server.header_timeout_ms = 0),
            ),
            (
                "server.body_timeout_ms:",
                Box::new(|c| c.server.body_timeout_ms = MAX_TIMEOUT_MS + 1),
            ),
            (
                "server.bearer_tokens_file: the listener is not on a loopback address",
                Box::new(|c| c.server.listen = "0.0.0.0:8080".parse().unwrap()),
            ),
            (
                "limits.bot_messages_per_sec:",
                Box::new(|c| c.limits.bot_messages_per_sec = f64::NAN),
            ),
            (
                "limits.bot_flushes_per_sec:",
                Box::new(|c| c.limits.bot_flushes_per_sec = 0.0),
            ),
            (
                "limits.bot_flush_burst:",
                Box::new(|c| c.limits.bot_flush_burst = 0),
            ),
        ];
        for (want, mutate) in cases {
            let mut config = Config::default();
            mutate(&mut config);
            let got = config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(got.starts_with(want), "want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn a_public_listener_needs_tokens_or_the_waiver() {
        let mut config = Config::default();
        config.server.listen = "[::]:8080".parse().unwrap();
        assert!(config.validate().is_err());
        config.server.allow_unauthenticated = true;
        assert!(config.validate().is_ok());
        config.server.allow_unauthenticated = false;
        config.server.bearer_tokens = vec![crate::secret::Secret::new("0123456789abcdef")];
        assert!(config.validate().is_ok());
        // Loopback (v4 and v6) needs neither.
        for listen in ["127.0.0.5:80", "[::1]:8080"] {
            let mut config = Config::default();
            config.server.listen = listen.parse().unwrap();
            assert!(config.validate().is_ok(), "{listen}");
        }
    }

    #[test]
    fn port_range_holding_max_calls_is_valid() {
        let mut config = Config::default();
        config.limits.max_calls = 11;
        config.rtc.udp_port_min = 40_000;
        config.rtc.udp_port_max = 40_010;
        assert!(config.validate().is_ok());
        config.audio.opus_bitrate_bps = 510_000;
        config.audio.opus_max_bitrate_bps = 510_000;
        config.audio.opus_complexity = 10;
        assert!(config.validate().is_ok());
    }
}

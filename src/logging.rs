//! Log output: human-readable (default) or JSON lines on stderr, filtered by `RUST_LOG`.
//!
//! What an operator reads at the default level: one line when a call starts and one when it
//! ends (with its figures), lifecycle lines, and warnings only for what asks for action.
//!
//! - **The WebRTC stack is quiet.** webrtc-rs (`webrtc`, `rtc`, `rtc_*`) logs expected
//!   per-packet conditions at `warn` (media before the SRTP keys, STUN from an address that is
//!   not a candidate yet). They are capped at `error` unless `RUST_LOG` asks for `debug` or
//!   `trace` or names one of their targets (`RUST_LOG=info,rtc_ice=debug`), and every warning
//!   or error they raise is counted in `lmnt_bridge_webrtc_log_events_total{level,target}`
//!   whether or not it is printed.
//! - **Addresses are redacted.** Callers' IP addresses and ports are personal data. Every
//!   formatted line (ours and every crate's, at every level) has its IPv4 and IPv6 addresses,
//!   with their ports, replaced by `<redacted>`, unless [`set_log_addresses`] turned that off
//!   (`[server] log_addresses = true`, for debugging). Redaction is on from the first line:
//!   the configuration, read after logging starts, can only turn it off.
//! - **Secrets never reach a line**: see [`PAYLOAD_LOGGING_TARGETS`].

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use tracing::{Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line (for journald/Loki pipelines).
    Json,
}

/// Targets capped at `debug`, whatever `RUST_LOG` says: at `trace`, tungstenite prints every
/// websocket frame's payload, and the LMNT init frame carries the API key (a test runs with
/// `RUST_LOG=trace` and asserts the key never appears).
const PAYLOAD_LOGGING_TARGETS: [&str; 2] = ["tungstenite=debug", "tokio_tungstenite=debug"];

/// The WebRTC stack's target prefixes. Filters match targets by prefix, so `rtc` covers every
/// `rtc_*` crate (`rtc_ice`, `rtc_srtp`, ...); `webrtc` is the async wrapper crate.
const WEBRTC_TARGETS: [&str; 2] = ["rtc", "webrtc"];

/// The filter when `RUST_LOG` is unset: our `info`, and only errors from the WebRTC stack.
const DEFAULT_FILTER: &str = "info";

/// What replaces an address (and its port) in a redacted line.
pub const REDACTED: &str = "<redacted>";

/// Whether lines keep IP addresses. Off (redacting) until the configuration says otherwise.
static LOG_ADDRESSES: AtomicBool = AtomicBool::new(false);

/// Turns address redaction off (`true`: lines keep callers' addresses) or back on. Called
/// once the configuration is loaded (`[server] log_addresses`).
pub fn set_log_addresses(on: bool) {
    LOG_ADDRESSES.store(on, Ordering::Relaxed);
}

/// Installs the global subscriber. `RUST_LOG` overrides [`DEFAULT_FILTER`] (see the module
/// docs for the WebRTC stack's cap), except that [`PAYLOAD_LOGGING_TARGETS`] never log below
/// `debug`. Calling it twice is harmless (the second call is ignored).
pub fn init(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rust_log.as_deref());
    // Colours only for a person at a terminal, not in the journal or a file.
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(RedactingStderr);
    let lines = match format {
        LogFormat::Human => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(WebrtcEventCounter.with_filter(webrtc_warnings()))
        .try_init();
}

/// The line filter for this `RUST_LOG` value (None or unparsable: [`DEFAULT_FILTER`]).
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let parsed = rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok().map(|f| (f, s)));
    let (mut filter, spec) = match parsed {
        Some((filter, spec)) => (filter, spec),
        None => (EnvFilter::new(DEFAULT_FILTER), DEFAULT_FILTER),
    };
    let mut directives: Vec<String> = PAYLOAD_LOGGING_TARGETS.map(String::from).to_vec();
    if caps_webrtc(spec) {
        directives.extend(WEBRTC_TARGETS.map(|t| format!("{t}=error")));
    }
    for directive in directives {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Whether the WebRTC stack stays capped at `error` under this filter spec: yes unless the
/// spec names one of its targets or sets a global level of `debug` or `trace`.
fn caps_webrtc(spec: &str) -> bool {
    !spec.split(',').map(str::trim).any(|directive| {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (target, Some(level)),
            None => (directive, None),
        };
        let target = target.split('[').next().unwrap_or_default().trim();
        if level.is_none() {
            if let Ok(level) = target.parse::<LevelFilter>() {
                return level >= LevelFilter::DEBUG;
            }
        }
        !target.is_empty() && WEBRTC_TARGETS.iter().any(|t| target.starts_with(t))
    })
}

/// Warnings and errors of the WebRTC stack, whatever the line filter prints.
fn webrtc_warnings() -> Targets {
    WEBRTC_TARGETS.iter().fold(Targets::new(), |t, target| {
        t.with_target(*target, Level::WARN)
    })
}

/// The WebRTC stack's crates, as bounded metric labels.
const WEBRTC_CRATES: [&str; 17] = [
    "webrtc",
    "rtc",
    "rtc_crypto",
    "rtc_datachannel",
    "rtc_dtls",
    "rtc_ice",
    "rtc_interceptor",
    "rtc_mdns",
    "rtc_media",
    "rtc_rtcp",
    "rtc_rtp",
    "rtc_sctp",
    "rtc_sdp",
    "rtc_shared",
    "rtc_srtp",
    "rtc_stun",
    "rtc_turn",
];

/// Counts the WebRTC stack's warnings and errors by level and crate.
struct WebrtcEventCounter;

impl<S: Subscriber> Layer<S> for WebrtcEventCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        // The WebRTC stack logs through `log`: its records arrive under a `log` callsite
        // with their own target in a field.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let krate = meta.target().split("::").next().unwrap_or_default();
        let target = WEBRTC_CRATES
            .iter()
            .find(|c| **c == krate)
            .copied()
            .unwrap_or("other");
        let level = if *meta.level() == Level::ERROR {
            "error"
        } else {
            "warn"
        };
        crate::metrics::webrtc_log_event(level, target);
    }
}

/// Stderr, with addresses redacted from each formatted line unless [`set_log_addresses`]
/// turned redaction off. The formatter writes one whole event per `write` call.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter
    }
}

struct RedactingWriter;

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        if LOG_ADDRESSES.load(Ordering::Relaxed) {
            stderr.write_all(buf)?;
        } else {
            let text = String::from_utf8_lossy(buf);
            stderr.write_all(redact_addresses(&text).as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Characters an address token is made of (IPv6 with an embedded IPv4 included).
fn in_address(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// Characters that make a neighbouring token part of a word (`rtc::ice`, `v1.2.3.4x`).
fn in_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Replaces every IPv4 or IPv6 address in `line`, with its port (`1.2.3.4:5`, `[::1]:5`, and
/// SDP's `1.2.3.4 5 typ`), by [`REDACTED`]. Words that merely look alike (`rtc::ice`,
/// versions, clock times) are kept.
pub fn redact_addresses(line: &str) -> Cow<'_, str> {
    let bytes = line.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // An address starts a token, or follows a `:` (`UDP:1.2.3.4:5`).
        let starts = in_address(bytes[i])
            && (i == 0
                || !(in_word(bytes[i - 1]) || bytes[i - 1] == b'.')
                || ends_colour_code(&bytes[..i]));
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < bytes.len() && in_address(bytes[end]) {
            end += 1;
        }
        if end < bytes.len() && in_word(bytes[end]) {
            i += 1;
            continue;
        }
        // Sentence punctuation after an address is not part of it.
        let mut token_end = end;
        while token_end > i && matches!(bytes[token_end - 1], b'.' | b':') {
            token_end -= 1;
        }
        let token = &line[i..token_end];
        if !is_address(token) {
            i += 1;
            continue;
        }
        let (mut start, mut stop) = (i, token_end);
        // `[v6]:port`
        if start > 0 && bytes[start - 1] == b'[' && bytes.get(stop) == Some(&b']') {
            start -= 1;
            stop += 1;
            stop = skip_port(bytes, stop, b':');
        }
        // SDP candidates: `ADDRESS PORT typ`.
        let after_port = skip_port(bytes, stop, b' ');
        if line[after_port..].starts_with(" typ") {
            stop = after_port;
        }
        let out = out.get_or_insert_with(|| String::with_capacity(line.len()));
        out.push_str(&line[copied..start]);
        out.push_str(REDACTED);
        copied = stop;
        i = stop;
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut out) => {
            out.push_str(&line[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Whether `before` ends with a terminal colour code (`ESC [ 0 m`), which is not a word.
fn ends_colour_code(before: &[u8]) -> bool {
    let Some((b'm', rest)) = before.split_last() else {
        return false;
    };
    let params = rest
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    rest[..rest.len() - params].ends_with(b"\x1b[")
}

/// `at` moved past `SEP DIGITS` when that follows, else `at`.
fn skip_port(bytes: &[u8], at: usize, sep: u8) -> usize {
    if bytes.get(at) != Some(&sep) {
        return at;
    }
    let digits = bytes[at + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 5 {
        at
    } else {
        at + 1 + digits
    }
}

/// An IPv4 address (optionally `:port`) or an IPv6 address with at least one digit.
fn is_address(token: &str) -> bool {
    if token.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    if let Some((host, port)) = token.rsplit_once(':') {
        if host.parse::<Ipv4Addr>().is_ok()
            && !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            return true;
        }
    }
    token.contains(':')
        && token.bytes().any(|b| b.is_ascii_hexdigit())
        && token.parse::<Ipv6Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_redacted() {
        let cases = [
            ("from 127.0.0.1:54321 ok", "from <redacted> ok"),
            ("peer=10.1.2.3.", "peer=<redacted>."),
            ("UDP:192.168.1.20:5000", "UDP:<redacted>"),
            ("addr [::1]:5000 x", "addr <redacted> x"),
            ("addr=fe80::1%eth0", "addr=<redacted>%eth0"),
            ("ip ::ffff:10.0.0.1 end", "ip <redacted> end"),
            (
                "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                "a=candidate:1 1 udp 2130706431 <redacted> typ host",
            ),
            (
                "V4(127.0.0.1:9), V6([2001:db8::2]:77)",
                "V4(<redacted>), V6(<redacted>)",
            ),
            (r#"{"listen":"0.0.0.0:8080"}"#, r#"{"listen":"<redacted>"}"#),
            (
                "\x1b[2m=\x1b[0m127.0.0.1:9 x",
                "\x1b[2m=\x1b[0m<redacted> x",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(redact_addresses(line), want, "{line}");
        }
    }

    #[test]
    fn lookalikes_are_kept() {
        for line in [
            "2025-01-02T12:34:56.789012Z  INFO lmnt_bridge::call::driver: call ended",
            "rtc::peer_connection::handler::srtp: x",
            "webrtc 0.21.1, ratio 1.5, ::",
            "deadbeef cafe:babe 12:00",
            "call=c-1a2b3c4d duration_ms=1234",
        ] {
            assert_eq!(redact_addresses(line), line);
        }
    }

    #[test]
    fn the_webrtc_cap_yields_to_debug_and_to_named_targets() {
        assert!(caps_webrtc("info"));
        assert!(caps_webrtc("info,lmnt_bridge=trace"));
        assert!(caps_webrtc("warn"));
        assert!(!caps_webrtc("debug"));
        assert!(!caps_webrtc("trace"));
        assert!(!caps_webrtc("info,rtc_ice=debug"));
        assert!(!caps_webrtc("webrtc=warn"));
        assert!(!caps_webrtc("info,rtc[span]=trace"));
    }
}

//! Log output: human-readable (default) or JSON lines, filtered by `RUST_LOG`.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

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

/// The filter when `RUST_LOG` is unset: our `info`, and only errors from the WebRTC stack
/// (`rtc` matches every `rtc_*` crate), whose info and warning lines (state changes, a DTLS
/// server-name default, ICE pings before candidates) are per-call noise: our `rtc` module
/// reports what matters about a peer itself.
const DEFAULT_FILTER: &str = "info,rtc=error";

/// Installs the global subscriber. `RUST_LOG` overrides [`DEFAULT_FILTER`], except
/// that [`PAYLOAD_LOGGING_TARGETS`] never log below `debug`.
/// Calling it twice is harmless (the second call is ignored).
pub fn init(format: LogFormat) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    for directive in PAYLOAD_LOGGING_TARGETS {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

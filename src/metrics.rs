//! Prometheus metrics: every name, label and bucket lives here, behind one typed function per
//! metric, so the rest of the crate cannot misspell a name or invent an unbounded label.
//!
//! [`install`] sets the process-wide recorder (idempotent); the HTTP layer serves
//! [`MetricsHandle::render`] on `GET /metrics`. Recording before `install` is a no-op.
//! Label values are `&'static str` (bounded cardinality) except HTTP status, a number.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::fault::Fault;

/// Every metric name starts with this.
pub const PREFIX: &str = "lmnt_bridge_";

/// Latency buckets in seconds, 1 ms to 5 s, roughly ×2 apart (finer where speech latency lives).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Queued-audio buckets in seconds: one frame (20 ms) up to the default 120 s queue limit.
pub const QUEUED_AUDIO_BUCKETS: [f64; 11] =
    [0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 30.0, 120.0];
/// Loss-ratio buckets for the caller's receiver reports (fraction lost per report): none, one
/// packet in a 1 s report (2 %), the 5 % and 15 % of lossy mobile legs, and beyond.
pub const LOSS_RATIO_BUCKETS: [f64; 8] = [0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5];
/// How often [`MetricsHandle::run_upkeep_until`] drains histogram samples between scrapes,
/// bounding their memory when nobody scrapes.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

const CALLS_ACTIVE: &str = "lmnt_bridge_calls_active";
const CALLS: &str = "lmnt_bridge_calls_total";
const CALLS_ENDED: &str = "lmnt_bridge_calls_ended_total";
const UTTERANCES: &str = "lmnt_bridge_utterances_total";
const LMNT_SESSIONS: &str = "lmnt_bridge_lmnt_sessions_opened_total";
const LMNT_RECONNECTS: &str = "lmnt_bridge_lmnt_reconnects_total";
const LMNT_ERRORS: &str = "lmnt_bridge_lmnt_errors_total";
const TEXT_TO_LMNT: &str = "lmnt_bridge_text_to_lmnt_seconds";
const FLUSH_TO_FIRST_AUDIO: &str = "lmnt_bridge_flush_to_first_audio_byte_seconds";
const FIRST_BYTE_TO_RTP: &str = "lmnt_bridge_first_byte_to_first_rtp_seconds";
const FLUSH_TO_DONE: &str = "lmnt_bridge_flush_to_utterance_done_seconds";
const PACER_LATE: &str = "lmnt_bridge_pacer_late_frames_total";
const PACER_DELAYED: &str = "lmnt_bridge_pacer_delayed_frames_total";
const PACER_UNDERRUN: &str = "lmnt_bridge_pacer_underrun_frames_total";
const PACER_SENT: &str = "lmnt_bridge_pacer_frames_sent_total";
const FRAMES_UNCONFIRMED: &str = "lmnt_bridge_frames_unconfirmed_total";
const OVERLOADED: &str = "lmnt_bridge_overloaded";
const FRAME_CLOCK_LATE_RATIO: &str = "lmnt_bridge_frame_clock_late_ratio";
const PACER_QUEUED: &str = "lmnt_bridge_pacer_queued_audio_seconds";
const CALLER_RECOVERED: &str = "lmnt_bridge_caller_frames_recovered_total";
const CALLER_CONCEALED: &str = "lmnt_bridge_caller_frames_concealed_total";
const RECEIVER_REPORT_LOSS: &str = "lmnt_bridge_receiver_report_loss_ratio";
const OPUS_FEC_CALLS: &str = "lmnt_bridge_opus_fec_calls";
const OPUS_ADAPTATIONS: &str = "lmnt_bridge_opus_adaptations_total";
const CONTROL_ERRORS: &str = "lmnt_bridge_control_errors_total";
const HTTP_REQUESTS: &str = "lmnt_bridge_http_requests_total";
const WEBRTC_LOG_EVENTS: &str = "lmnt_bridge_webrtc_log_events_total";
const ICE_CANDIDATES_REFUSED: &str = "lmnt_bridge_ice_candidates_refused_total";
const HTTP_CONNECTIONS: &str = "lmnt_bridge_http_connections";
const HTTP_CONNECTIONS_REFUSED: &str = "lmnt_bridge_http_connections_refused_total";
const RATE_LIMITED: &str = "lmnt_bridge_rate_limited_total";

/// The recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another metrics recorder is already installed in this process (a bug in startup code).
    #[error("another metrics recorder is already installed")]
    OtherRecorder,
    /// The exporter refused a bucket layout (a bug in the constants above).
    #[error("prometheus exporter: {0}")]
    Build(#[from] BuildError),
}

impl MetricsError {
    /// Whose fault: ours.
    pub fn fault(&self) -> Fault {
        Fault::Internal
    }

    /// Retrying gives the same answer.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Renders the installed recorder's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    inner: PrometheusHandle,
}

impl MetricsHandle {
    /// The Prometheus text exposition (`text/plain; version=0.0.4`) of every metric recorded
    /// so far. Metrics never touched since start are absent.
    pub fn render(&self) -> String {
        self.inner.run_upkeep();
        self.inner.render()
    }

    /// Drains histogram samples into their buckets every [`UPKEEP_PERIOD`] until `stop` is
    /// cancelled. Run it as a task for the daemon's lifetime.
    pub async fn run_upkeep_until(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(UPKEEP_PERIOD) => self.inner.run_upkeep(),
            }
        }
    }
}

static INSTALLED: Mutex<Option<MetricsHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder process-wide and describes every metric. Idempotent: a
/// later call returns a handle to the same recorder. Fails when another recorder was
/// installed by someone else.
pub fn install() -> Result<MetricsHandle, MetricsError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for name in [
        TEXT_TO_LMNT,
        FLUSH_TO_FIRST_AUDIO,
        FIRST_BYTE_TO_RTP,
        FLUSH_TO_DONE,
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), &LATENCY_BUCKETS)?;
    }
    builder = builder
        .set_buckets_for_metric(Matcher::Full(PACER_QUEUED.into()), &QUEUED_AUDIO_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(RECEIVER_REPORT_LOSS.into()),
            &LOSS_RATIO_BUCKETS,
        )?;
    let recorder = builder.build_recorder();
    let handle = MetricsHandle {
        inner: recorder.handle(),
    };
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::OtherRecorder)?;
    describe();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    describe_gauge!(CALLS_ACTIVE, "Calls in progress.");
    describe_gauge!(
        OVERLOADED,
        "1 while new calls are refused because the calls in progress run late (limits.overload_*)."
    );
    describe_gauge!(
        FRAME_CLOCK_LATE_RATIO,
        "Share of frames sent more than limits.overload_late_ms after their deadline, last second."
    );
    describe_counter!(CALLS, "Calls accepted since start.");
    describe_counter!(CALLS_ENDED, "Calls ended, by reason.");
    describe_counter!(UTTERANCES, "Utterances (flushes) received from bots.");
    describe_counter!(LMNT_SESSIONS, "LMNT speech sessions opened.");
    describe_counter!(
        LMNT_RECONNECTS,
        "LMNT speech sessions reopened after a failure."
    );
    describe_counter!(LMNT_ERRORS, "LMNT session errors, by kind.");
    describe_histogram!(
        TEXT_TO_LMNT,
        Unit::Seconds,
        "From bot text received to it being sent to LMNT."
    );
    describe_histogram!(
        FLUSH_TO_FIRST_AUDIO,
        Unit::Seconds,
        "From flush sent to LMNT to the utterance's first audio byte."
    );
    describe_histogram!(
        FIRST_BYTE_TO_RTP,
        Unit::Seconds,
        "From an utterance's first audio byte to its first RTP packet."
    );
    describe_histogram!(
        FLUSH_TO_DONE,
        Unit::Seconds,
        "From flush received to the utterance's last frame played."
    );
    describe_counter!(
        PACER_LATE,
        "Frame slots skipped because the schedule ran more than audio.max_late_ms late (RTP time jumps)."
    );
    describe_counter!(
        PACER_DELAYED,
        "Frames sent more than a frame late, within audio.max_late_ms (RTP time continuous)."
    );
    describe_counter!(
        PACER_UNDERRUN,
        "Frame slots with no audio ready during an utterance."
    );
    describe_counter!(PACER_SENT, "Opus frames sent into calls.");
    describe_counter!(
        FRAMES_UNCONFIRMED,
        "Frames carrying bot events whose datagram the socket did not report sent within 250 ms (events released anyway)."
    );
    describe_histogram!(
        PACER_QUEUED,
        Unit::Seconds,
        "Audio queued ahead of playout, sampled per call."
    );
    describe_counter!(
        CALLER_RECOVERED,
        "Lost caller packets rebuilt from the next packet's Opus in-band FEC for the bot."
    );
    describe_counter!(
        CALLER_CONCEALED,
        "Lost caller packets concealed by the decoder (PLC) for the bot."
    );
    describe_histogram!(
        RECEIVER_REPORT_LOSS,
        "Fraction of our packets lost, per RTCP receiver report from callers."
    );
    describe_gauge!(
        OPUS_FEC_CALLS,
        "Calls whose Opus encoder has in-band FEC on now (loss reported)."
    );
    describe_counter!(
        OPUS_ADAPTATIONS,
        "Opus encoder settings changed after callers' loss reports."
    );
    describe_counter!(
        CONTROL_ERRORS,
        "Errors sent to bots on the control channel, by code."
    );
    describe_counter!(
        WEBRTC_LOG_EVENTS,
        "Warnings and errors the WebRTC stack raised (printed or not), by level and crate."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests, by route template and status."
    );
    describe_counter!(
        ICE_CANDIDATES_REFUSED,
        "Offer candidates removed because rtc.ice_allow/ice_deny refuse their address."
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "Open HTTP connections (WebSockets included)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections refused with 503 at server.max_connections."
    );
    describe_counter!(
        RATE_LIMITED,
        "Bot requests refused by a call's rate limit, by limit (messages, flushes) and channel (control, http)."
    );
}

/// The WebRTC stack raised a warning or an error (`level`: `warn` or `error`; `target`: its
/// crate, such as `rtc_srtp`). Most are expected per-packet conditions, counted rather than
/// printed one by one (see [`crate::logging`]).
pub fn webrtc_log_event(level: &'static str, target: &'static str) {
    counter!(WEBRTC_LOG_EVENTS, "level" => level, "target" => target).increment(1);
}

/// A call was admitted: calls total +1, calls active +1.
pub fn call_started() {
    counter!(CALLS).increment(1);
    gauge!(CALLS_ACTIVE).increment(1.0);
}

/// A call ended for `reason` (a fixed snake_case word such as `caller_hangup`, `bot_hangup`,
/// `ice_failed`, `shutdown`): calls active -1.
pub fn call_ended(reason: &'static str) {
    gauge!(CALLS_ACTIVE).decrement(1.0);
    counter!(CALLS_ENDED, "reason" => reason).increment(1);
}

/// A bot flushed an utterance.
pub fn utterance() {
    counter!(UTTERANCES).increment(1);
}

/// An LMNT session opened.
pub fn lmnt_session_opened() {
    counter!(LMNT_SESSIONS).increment(1);
}

/// An LMNT session was reopened after a failure.
pub fn lmnt_reconnect() {
    counter!(LMNT_RECONNECTS).increment(1);
}

/// An LMNT session error of `kind` (a fixed snake_case word such as `connect`, `timeout`,
/// `server_error`, `protocol`).
pub fn lmnt_error(kind: &'static str) {
    counter!(LMNT_ERRORS, "kind" => kind).increment(1);
}

/// `n` lost caller packets were rebuilt from the next packet's in-band FEC.
pub fn caller_frames_recovered(n: u64) {
    counter!(CALLER_RECOVERED).increment(n);
}

/// `n` lost caller packets were concealed by the decoder.
pub fn caller_frames_concealed(n: u64) {
    counter!(CALLER_CONCEALED).increment(n);
}

/// A caller's receiver report about our stream said `fraction` (0 to 1) was lost.
pub fn receiver_report(fraction: f64) {
    histogram!(RECEIVER_REPORT_LOSS).record(fraction);
}

/// A call's Opus FEC went on (`true`) or off (`false`, also when a call with FEC on ends).
pub fn opus_fec_call(on: bool) {
    if on {
        gauge!(OPUS_FEC_CALLS).increment(1.0);
    } else {
        gauge!(OPUS_FEC_CALLS).decrement(1.0);
    }
}

/// A call's Opus encoder took new settings after loss reports.
pub fn opus_adaptation() {
    counter!(OPUS_ADAPTATIONS).increment(1);
}

/// Bot text received -> sent to LMNT.
pub fn observe_text_to_lmnt(latency: Duration) {
    histogram!(TEXT_TO_LMNT).record(latency.as_secs_f64());
}

/// Flush sent to LMNT -> first audio byte of the utterance.
pub fn observe_flush_to_first_audio_byte(latency: Duration) {
    histogram!(FLUSH_TO_FIRST_AUDIO).record(latency.as_secs_f64());
}

/// First audio byte -> first RTP packet of the utterance.
pub fn observe_first_byte_to_first_rtp(latency: Duration) {
    histogram!(FIRST_BYTE_TO_RTP).record(latency.as_secs_f64());
}

/// Flush received from the bot -> last frame of the utterance played.
pub fn observe_flush_to_utterance_done(latency: Duration) {
    histogram!(FLUSH_TO_DONE).record(latency.as_secs_f64());
}

/// `n` frame slots were skipped: the schedule ran too late to send them.
pub fn pacer_late_frames(n: u64) {
    counter!(PACER_LATE).increment(n);
}

/// `n` frames went out late but in their own slots (continuous RTP time).
pub fn pacer_delayed_frames(n: u64) {
    counter!(PACER_DELAYED).increment(n);
}

/// `n` frame slots found no audio during an utterance.
pub fn pacer_underrun_frames(n: u64) {
    counter!(PACER_UNDERRUN).increment(n);
}

/// `n` frames were sent.
pub fn pacer_frames_sent(n: u64) {
    counter!(PACER_SENT).increment(n);
}

/// One second of the frame clock judged: `late` of `frames` late; `overloaded` the verdict.
pub fn frame_clock_window(frames: u64, late: u64, overloaded: bool) {
    gauge!(OVERLOADED).set(if overloaded { 1.0 } else { 0.0 });
    let ratio = if frames == 0 {
        0.0
    } else {
        late as f64 / frames as f64
    };
    gauge!(FRAME_CLOCK_LATE_RATIO).set(ratio);
}

/// A frame's events were released without its datagram reported sent.
pub fn frame_unconfirmed() {
    counter!(FRAMES_UNCONFIRMED).increment(1);
}

/// One sample of a call's queued audio.
pub fn observe_queued_audio(queued: Duration) {
    histogram!(PACER_QUEUED).record(queued.as_secs_f64());
}

/// An error `code` (the control channel's snake_case code) was sent to a bot.
pub fn control_error(code: &'static str) {
    counter!(CONTROL_ERRORS, "code" => code).increment(1);
}

/// `n` offer candidates were removed by the ICE network policy.
pub fn ice_candidates_refused(n: u64) {
    counter!(ICE_CANDIDATES_REFUSED).increment(n);
}

/// An HTTP connection was accepted (`+1`) or ended (`-1`).
pub fn http_connections(delta: f64) {
    gauge!(HTTP_CONNECTIONS).increment(delta);
}

/// An HTTP connection was refused at the connection cap.
pub fn http_connection_refused() {
    counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
}

/// A bot request was refused by its call's rate limit (`limit`: `messages` or `flushes`;
/// `channel`: `control` or `http`).
pub fn rate_limited(limit: &'static str, channel: &'static str) {
    counter!(RATE_LIMITED, "limit" => limit, "channel" => channel).increment(1);
}

/// An HTTP request on `route` (the route template, e.g. `/v1/calls/{id}`, never the raw path)
/// answered with `status`.
pub fn http_request(route: &str, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
}

/// The tests' Prometheus text parser, shared with the daemon tests.
#[cfg(test)]
#[path = "../tests/support/prometheus.rs"]
mod prometheus_text;

#[cfg(test)]
mod tests {
    use super::prometheus_text::{parse, value, Sample};
    use super::*;

    #[test]
    fn render_parses_as_prometheus_text_and_histograms_move() {
        let handle = install().unwrap();
        assert!(install().is_ok(), "install is idempotent");
        let before = parse(&handle.render()).2;
        let count = |s: &[Sample], n: &str| value(s, n, &[]).unwrap_or(0.0);

        call_started();
        call_ended("caller_hangup");
        utterance();
        lmnt_session_opened();
        lmnt_reconnect();
        lmnt_error("timeout");
        observe_text_to_lmnt(Duration::from_micros(500));
        observe_flush_to_first_audio_byte(Duration::from_millis(180));
        observe_first_byte_to_first_rtp(Duration::from_millis(12));
        observe_flush_to_utterance_done(Duration::from_millis(2_400));
        pacer_late_frames(2);
        pacer_delayed_frames(1);
        pacer_underrun_frames(3);
        pacer_frames_sent(50);
        observe_queued_audio(Duration::from_millis(80));
        control_error("text_too_long");
        http_request("/v1/calls", 201);

        let (help, types, after) = parse(&handle.render());
        for (name, kind) in &types {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(help.contains_key(name), "{name} has no HELP");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        for name in [
            TEXT_TO_LMNT,
            FLUSH_TO_FIRST_AUDIO,
            FIRST_BYTE_TO_RTP,
            FLUSH_TO_DONE,
            PACER_QUEUED,
        ] {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some("histogram"),
                "{name}"
            );
            let n = format!("{name}_count");
            assert!(
                count(&after, &n) >= count(&before, &n) + 1.0,
                "{name} did not move"
            );
        }
        // 0.18 s lands in the 0.25 bucket but not in the 0.15 one.
        let bucket = |s: &[Sample], le: &str| {
            value(s, &format!("{FLUSH_TO_FIRST_AUDIO}_bucket"), &[("le", le)]).unwrap_or(0.0)
        };
        assert!(bucket(&after, "0.25") >= bucket(&before, "0.25") + 1.0);
        assert!(bucket(&after, "+Inf") >= bucket(&after, "0.25"));
        assert!(value(&after, CALLS_ENDED, &[("reason", "caller_hangup")]).unwrap_or(0.0) >= 1.0);
        assert!(value(&after, LMNT_ERRORS, &[("kind", "timeout")]).unwrap_or(0.0) >= 1.0);
        assert!(value(&after, CONTROL_ERRORS, &[("code", "text_too_long")]).unwrap_or(0.0) >= 1.0);
        let http = [("route", "/v1/calls"), ("status", "201")];
        assert!(value(&after, HTTP_REQUESTS, &http).unwrap_or(0.0) >= 1.0);
        assert!(count(&after, PACER_SENT) >= count(&before, PACER_SENT) + 50.0);
        for name in [
            CALLS,
            UTTERANCES,
            LMNT_SESSIONS,
            LMNT_RECONNECTS,
            PACER_LATE,
            PACER_DELAYED,
            PACER_UNDERRUN,
        ] {
            assert!(
                count(&after, name) > count(&before, name),
                "{name} did not move"
            );
        }
        assert!(types.get(CALLS_ACTIVE).is_some_and(|k| k == "gauge"));
    }
}

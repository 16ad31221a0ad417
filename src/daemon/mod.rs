//! Process lifecycle (linkerd2-proxy discipline): configuration is parsed and validated
//! before any socket is bound; then bind, notify READY, serve, and on SIGTERM drain with a
//! deadline; a second signal exits at once.

pub mod notify;
pub mod signals;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::call::{BridgeSettings, Calls, EndReason, Shards};
use crate::config::{Config, DemoArgs, ServeArgs};
use crate::exit::CommandError;
use crate::http::{self, AppState};
use crate::secret::Secret;
use notify::Notifier;
use signals::ShutdownSignals;

/// After the drain deadline, calls are hung up; this is how long their tasks get to send
/// `call.ended` and close their peers, and then how long the bots' channels get to deliver
/// those last events, before the process exits anyway.
const HANG_UP_GRACE: Duration = Duration::from_secs(2);
/// How often systemd hears `EXTEND_TIMEOUT_USEC` while draining.
const DRAIN_EXTEND_EVERY: Duration = Duration::from_secs(1);

/// `lmnt-bridge serve`.
pub async fn serve(args: ServeArgs) -> Result<(), CommandError> {
    let config = crate::config::load_serve(&args)?;
    let url = config.lmnt.session_url()?;
    // Validation refused a missing key unless the base URL was set explicitly (a local
    // LMNT-compatible server that needs none); such a server gets an empty key.
    let api_key = config
        .lmnt
        .api_key
        .clone()
        .unwrap_or_else(|| Secret::new(""));
    let signals = signals::install()
        .map_err(|e| CommandError::Unavailable(format!("signal handlers: {e}")))?;
    run(config, url, api_key, false, signals).await
}

/// `lmnt-bridge demo`: `serve` with an embedded `local-tts` and the browser call page.
pub async fn demo(args: DemoArgs) -> Result<(), CommandError> {
    let config = crate::config::load(None, Some(args.listen), &crate::config::process_env)?;
    let signals = signals::install()
        .map_err(|e| CommandError::Unavailable(format!("signal handlers: {e}")))?;
    let tts_listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| CommandError::Unavailable(format!("embedded local-tts: {e}")))?;
    let tts_addr = tts_listener
        .local_addr()
        .map_err(|e| CommandError::Unavailable(format!("embedded local-tts: {e}")))?;
    let tts_stop = CancellationToken::new();
    tokio::spawn(crate::local_tts::serve(
        tts_listener,
        crate::local_tts::LocalTtsConfig::default(),
        tts_stop.clone(),
    ));
    let url = url::Url::parse(&format!("ws://{tts_addr}/v1/ai/speech/stream"))
        .map_err(|e| CommandError::Failed(format!("embedded local-tts URL: {e}")))?;
    println!(
        "lmnt-bridge demo: open http://{}/ in a browser, press Call, and type what the bot says",
        config.server.listen
    );
    let result = run(config, url, Secret::new("local-demo"), true, signals).await;
    tts_stop.cancel();
    result
}

/// Serves until `signals.drain`, then drains. Returns when the process may exit.
pub async fn run(
    config: Config,
    lmnt_url: url::Url,
    api_key: Secret,
    demo_page: bool,
    signals: ShutdownSignals,
) -> Result<(), CommandError> {
    // Lines before this one were redacted; the configuration may turn that off.
    crate::logging::set_log_addresses(config.server.log_addresses);
    let metrics =
        crate::metrics::install().map_err(|e| CommandError::Failed(format!("metrics: {e}")))?;
    repair_recordings(&config.calls.recordings_dir());
    let listener = TcpListener::bind(config.server.listen).await.map_err(|e| {
        CommandError::Unavailable(format!("cannot listen on {}: {e}", config.server.listen))
    })?;
    let listen = listener.local_addr().unwrap_or(config.server.listen);
    let shards = Shards::start(call_threads(&config))
        .map_err(|e| CommandError::Unavailable(format!("call threads: {e}")))?;
    let calls = Calls::new(
        BridgeSettings::from_config(&config, lmnt_url, api_key),
        shards,
    );
    let state = AppState {
        calls: calls.clone(),
        bearer_tokens: std::sync::Arc::new(config.server.bearer_tokens.clone()),
        metrics: metrics.clone(),
        max_sdp_bytes: config.limits.max_sdp_bytes,
        body_timeout: Duration::from_millis(config.server.body_timeout_ms),
        demo_page,
    };
    let http_stop = CancellationToken::new();
    let limits = http::listener::ListenerLimits {
        max_connections: config.server.max_connections,
        header_timeout: Duration::from_millis(config.server.header_timeout_ms),
    };
    let mut server = tokio::spawn(http::listener::serve(
        listener,
        http::router(state),
        limits,
        http_stop.clone(),
    ));
    let notifier = Notifier::new();
    report(notifier.ready());
    tracing::info!(%listen, "lmnt-bridge serving");
    let background = CancellationToken::new();
    // The watchdog task runs on the HTTP runtime, so a stalled one sends no ping, and it
    // withholds the ping while a call thread is stalled.
    let watched = calls.clone();
    notify::spawn_watchdog_from_env(
        notifier,
        move || !watched.shards().stalled(std::time::Instant::now()),
        background.clone(),
    );
    // Histogram samples (queued audio is observed every frame) are folded into buckets
    // periodically, not only when someone scrapes /metrics.
    tokio::spawn(metrics.run_upkeep_until(background.clone()));
    tokio::spawn(report_status(notifier, calls.clone(), background.clone()));
    tokio::spawn(calls.monitor_overload(background.clone()));

    tokio::select! {
        _ = signals.drain.cancelled() => {}
        result = &mut server => {
            background.cancel();
            let reason = match result {
                Ok(()) => "stopped".to_owned(),
                Err(err) => err.to_string(),
            };
            return Err(CommandError::Failed(format!("HTTP server ended unexpectedly: {reason}")));
        }
    }

    // Drain: no new calls, utterances in progress finish, then the rest are hung up.
    report(notifier.stopping());
    let deadline = Duration::from_millis(config.server.drain_timeout_ms);
    tracing::info!(calls = calls.len(), ?deadline, "draining");
    calls.start_drain();
    let drained = async {
        let mut extend = tokio::time::interval(DRAIN_EXTEND_EVERY);
        loop {
            tokio::select! {
                _ = calls.wait_empty() => return,
                _ = extend.tick() => report(notifier.extend_timeout(DRAIN_EXTEND_EVERY * 3)),
            }
        }
    };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!(calls = calls.len(), "drain deadline reached; hanging up");
            calls.hang_up_all(EndReason::Shutdown);
            let _ = tokio::time::timeout(HANG_UP_GRACE, calls.wait_empty()).await;
        }
        _ = signals.abort.cancelled() => {
            return Err(CommandError::Failed("second signal: exiting without draining".into()));
        }
    }
    let _ = tokio::time::timeout(HANG_UP_GRACE, calls.wait_bot_channels()).await;
    http_stop.cancel();
    background.cancel();
    let _ = tokio::time::timeout(HANG_UP_GRACE, server).await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// The call threads to start: `server.call_threads`, or one per CPU this process may use.
fn call_threads(config: &Config) -> usize {
    match config.server.call_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        threads => threads,
    }
}

/// Repairs the headers of recordings a crash left unfinished, before any call can start.
/// Problems are logged, never fatal: a recording is not worth refusing calls over.
fn repair_recordings(dir: &std::path::Path) {
    match crate::recording::repair_dir(dir) {
        Ok(reports) => {
            for (path, outcome) in reports {
                match outcome {
                    Ok(crate::recording::RepairOutcome::Intact) => {}
                    Ok(repaired) => {
                        tracing::info!(path = %path.display(), ?repaired, "unfinished recording repaired")
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "recording not repaired")
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "recordings not checked"),
    }
}

/// How often `STATUS=` is refreshed for `systemctl status`.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Keeps systemd's `STATUS=` line current: calls, LMNT sessions up, draining.
async fn report_status(notifier: Notifier, calls: std::sync::Arc<Calls>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let infos = calls.list();
        let lmnt_up = infos.iter().filter(|i| i.snapshot().lmnt_connected).count();
        let mut status = format!(
            "{} calls, LMNT sessions up {lmnt_up}/{}",
            infos.len(),
            infos.len()
        );
        if calls.is_draining() {
            status.push_str(", draining");
        }
        report(notifier.status(&status));
    }
}

/// sd_notify failures are logged, never fatal: the daemon works without systemd.
fn report(result: Result<(), notify::NotifyError>) {
    if let Err(err) = result {
        tracing::warn!(error = %err, "sd_notify failed");
    }
}

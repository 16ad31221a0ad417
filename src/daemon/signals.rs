//! Shutdown signals: the first SIGTERM or SIGINT starts the drain, a second one aborts.
//!
//! The daemon passes [`ShutdownSignals::drain`] into its accept loop and calls (stop admitting,
//! let calls finish within `server.drain_timeout_ms`) and exits at once when
//! [`ShutdownSignals::abort`] fires. Tests cancel the tokens directly or send real signals.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The two shutdown phases as tokens. Cancelled by the signal task installed by [`install`],
/// or by anyone holding a clone (e.g. a test, or `DELETE`-style admin paths).
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignals {
    /// Cancelled on the first SIGTERM/SIGINT: stop admitting calls, finish those in progress.
    pub drain: CancellationToken,
    /// Cancelled on the second SIGTERM/SIGINT: exit now, hanging up whatever is left.
    pub abort: CancellationToken,
}

/// Registers SIGTERM and SIGINT handlers and spawns the task that cancels `drain` on the first
/// signal and `abort` on the second. Once installed, these signals no longer kill the process
/// by default; the daemon must act on the tokens. Fails when called outside a tokio runtime
/// or when the handlers cannot be registered.
pub fn install() -> std::io::Result<ShutdownSignals> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|err| {
        std::io::Error::other(format!("signal handlers need a tokio runtime: {err}"))
    })?;
    let terminate = signal(SignalKind::terminate())?;
    let interrupt = signal(SignalKind::interrupt())?;
    let signals = ShutdownSignals::default();
    runtime.spawn(watch(terminate, interrupt, signals.clone()));
    Ok(signals)
}

async fn watch(mut terminate: Signal, mut interrupt: Signal, signals: ShutdownSignals) {
    let Some(first) = next(&mut terminate, &mut interrupt).await else {
        return;
    };
    tracing::info!(
        signal = first,
        "shutdown: draining calls; send the signal again to exit at once"
    );
    signals.drain.cancel();
    let Some(second) = next(&mut terminate, &mut interrupt).await else {
        return;
    };
    tracing::warn!(signal = second, "shutdown: second signal, aborting");
    signals.abort.cancel();
}

/// The name of the next signal, `None` when both streams have closed (runtime shutting down).
async fn next(terminate: &mut Signal, interrupt: &mut Signal) -> Option<&'static str> {
    tokio::select! {
        got = terminate.recv() => got.map(|()| "SIGTERM"),
        got = interrupt.recv() => got.map(|()| "SIGINT"),
    }
}

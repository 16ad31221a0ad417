//! `sd_notify` to systemd (`Type=notify`): readiness, status, stopping, timeout extension and
//! the watchdog. Every call is a no-op when `NOTIFY_SOCKET` is unset (not under systemd), and
//! nothing here changes the environment.
//!
//! The watchdog pings from a tokio task ([`spawn_watchdog`]), so a stalled runtime stops the
//! pings and systemd restarts the service; a liveness probe adds any further condition.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fault::Fault;

/// Floor for the ping period, so a tiny `WATCHDOG_USEC` cannot turn the task into a busy loop.
pub const MIN_PING_PERIOD: Duration = Duration::from_millis(1);

/// A notification could not be delivered to the service manager.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Sending the datagram to `NOTIFY_SOCKET` failed (socket gone, permission, buffer full).
    #[error("sd_notify {state}: {source}")]
    Send {
        /// The state that was being sent (`READY=1`, ...).
        state: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
}

impl NotifyError {
    /// Whose fault: the host (service manager socket), classified as internal.
    pub fn fault(&self) -> Fault {
        Fault::Internal
    }

    /// A later notification may get through (a full socket buffer drains).
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// Sends notifications with `sd_notify::notify` (the plain call: `NOTIFY_SOCKET` stays set).
/// Stateless and cheap to copy; each method returns `Ok(())` without `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    /// A notifier for this process.
    pub fn new() -> Self {
        Notifier
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_enabled(&self) -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some()
    }

    /// `READY=1`: call once the listener is bound and the daemon accepts calls.
    pub fn ready(&self) -> Result<(), NotifyError> {
        send("READY=1", &[NotifyState::Ready])
    }

    /// `STATUS=...`: a one-line status `systemctl status` shows. Newlines are replaced by
    /// spaces (a newline would start a new notification field).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let line = status.replace(['\n', '\r'], " ");
        send("STATUS", &[NotifyState::Status(&line)])
    }

    /// `STOPPING=1`: call when the drain starts.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        send("STOPPING=1", &[NotifyState::Stopping])
    }

    /// `EXTEND_TIMEOUT_USEC=...`: asks systemd to wait `by` longer for the current start or
    /// stop (e.g. a drain longer than `TimeoutStopSec=`). Saturates at `u32::MAX` µs (71 min).
    pub fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError> {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        send(
            "EXTEND_TIMEOUT_USEC",
            &[NotifyState::ExtendTimeoutUsec(usec)],
        )
    }

    /// `WATCHDOG=1`: one keep-alive ping. Normally sent by [`spawn_watchdog`].
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        send("WATCHDOG=1", &[NotifyState::Watchdog])
    }
}

fn send(state: &'static str, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
    sd_notify::notify(states).map_err(|source| NotifyError::Send { state, source })
}

/// The watchdog timeout systemd expects pings within (`WATCHDOG_USEC`), or `None` when the
/// watchdog is off or meant for another process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from explicit values: `None` when `usec` is absent, malformed or
/// zero, or when `pid` is present and is not `own_pid` (a malformed `pid` counts as another).
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// The period between pings for a watchdog `interval`: half of it, at least
/// [`MIN_PING_PERIOD`].
pub fn ping_period(interval: Duration) -> Duration {
    (interval / 2).max(MIN_PING_PERIOD)
}

/// Spawns the watchdog task on the current tokio runtime: every [`ping_period`]`(interval)` it
/// sends `WATCHDOG=1` if `alive()` returns true, and skips the ping (letting systemd's timer
/// run down) when it returns false. The task ends when `stop` is cancelled. Because it is a
/// task of the runtime, a stalled runtime sends no pings. Send failures are logged and the
/// task keeps going.
///
/// Must be called from within a tokio runtime.
pub fn spawn_watchdog<F>(
    notifier: Notifier,
    interval: Duration,
    alive: F,
    stop: CancellationToken,
) -> JoinHandle<()>
where
    F: Fn() -> bool + Send + 'static,
{
    let period = ping_period(interval);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            if !alive() {
                tracing::warn!("watchdog: liveness probe failed; withholding the ping");
                continue;
            }
            if let Err(err) = notifier.watchdog() {
                tracing::warn!(error = %err, "watchdog ping not delivered");
            }
        }
    })
}

/// Spawns [`spawn_watchdog`] with the interval systemd set ([`watchdog_interval`]); returns
/// `None` (and spawns nothing) when the watchdog is off.
pub fn spawn_watchdog_from_env<F>(
    notifier: Notifier,
    alive: F,
    stop: CancellationToken,
) -> Option<JoinHandle<()>>
where
    F: Fn() -> bool + Send + 'static,
{
    watchdog_interval().map(|interval| spawn_watchdog(notifier, interval, alive, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_rules() {
        let d = Duration::from_micros;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(d(30_000_000))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(d(30_000_000))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("-1"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
    }

    #[test]
    fn ping_period_is_half_with_a_floor() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(ping_period(Duration::from_micros(1)), MIN_PING_PERIOD);
    }
}

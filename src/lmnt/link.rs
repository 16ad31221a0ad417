//! One call's LMNT session, kept up for the whole call: connects in the background (so the
//! call's pacing never waits on a handshake), reconnects with jittered backoff
//! ([`super::backoff`]) when the session dies.
//! What to send on a new session, and when to give up on the utterances, is the call core's
//! decision ([`crate::call::CallCore`]); this is only the I/O.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::{connect, LmntError, SessionEvent, SessionEvents, SessionOptions, SessionSender};

/// What happened to the link.
#[derive(Debug)]
pub enum LinkEvent {
    /// A new session is up: send it everything not yet acknowledged.
    Up,
    /// An event of the live session (never `Closed`/`Error`: those become `Down`).
    Session(SessionEvent),
    /// The session (or an attempt to open one) failed. `attempts` counts consecutive
    /// failures with no audio or acknowledgement in between.
    Down { error: LmntError, attempts: u32 },
}

enum State {
    Connecting(JoinHandle<Result<(SessionSender, SessionEvents), LmntError>>),
    Up {
        sender: SessionSender,
        events: SessionEvents,
    },
    Backoff(Instant),
    /// Hung up: no more attempts.
    Stopped,
}

/// One call's LMNT session with reconnects. Owned by the call task; dropping it aborts a
/// pending connect and closes the session.
pub struct Link {
    options: Arc<SessionOptions>,
    state: State,
    /// Consecutive failures and the jittered delay before the next attempt.
    backoff: Backoff,
}

impl Link {
    /// Starts connecting at once.
    pub fn start(options: SessionOptions) -> Self {
        let options = Arc::new(options);
        let state = State::Connecting(spawn_connect(options.clone()));
        Link {
            options,
            state,
            backoff: Backoff::new(rand::random()),
        }
    }

    /// The live session's sender, if one is up.
    pub fn sender(&self) -> Option<&SessionSender> {
        match &self.state {
            State::Up { sender, .. } => Some(sender),
            _ => None,
        }
    }

    /// Waits for the next link event. With `read_audio` false the live session is not read
    /// (backpressure: the playout buffer is full), but connects and backoffs go on.
    /// Cancel-safe: every await inside is.
    pub async fn next(&mut self, read_audio: bool) -> LinkEvent {
        loop {
            match &mut self.state {
                State::Connecting(handle) => {
                    let result = match handle.await {
                        Ok(result) => result,
                        Err(join) => Err(LmntError::Connect(format!("connect task ended: {join}"))),
                    };
                    match result {
                        Ok((sender, events)) => {
                            self.state = State::Up { sender, events };
                            return LinkEvent::Up;
                        }
                        Err(error) => return self.fail(error),
                    }
                }
                State::Up { events, .. } => {
                    if !read_audio {
                        return std::future::pending().await;
                    }
                    match events.recv().await {
                        Some(SessionEvent::Error(error)) => return self.fail(error),
                        Some(SessionEvent::Closed { code, reason }) => {
                            return self.fail(LmntError::Transport(format!(
                                "session closed by LMNT (code {code:?}) {reason}"
                            )))
                        }
                        Some(event) => {
                            // A session that delivers is healthy: the next failure backs off
                            // from the start. One that dies before delivering backs off further.
                            if matches!(
                                event,
                                SessionEvent::Audio(_)
                                    | SessionEvent::FlushComplete { .. }
                                    | SessionEvent::ResetComplete { .. }
                            ) {
                                self.backoff.reset();
                            }
                            return LinkEvent::Session(event);
                        }
                        None => return self.fail(LmntError::Closed),
                    }
                }
                State::Backoff(until) => {
                    tokio::time::sleep_until(*until).await;
                    self.state = State::Connecting(spawn_connect(self.options.clone()));
                }
                State::Stopped => return std::future::pending().await,
            }
        }
    }

    /// Ends the session: `finish` then close (the caller hung up; nothing more will be heard).
    pub fn hang_up(&mut self) {
        if let State::Up { sender, .. } = &self.state {
            let _ = sender.send_finish();
            sender.close();
        }
        self.stop();
    }

    fn fail(&mut self, error: LmntError) -> LinkEvent {
        if let State::Up { sender, .. } = &self.state {
            sender.close();
        }
        let delay = self.backoff.on_failure(error.is_retryable());
        tracing::debug!(error = %error, ?delay, "LMNT session down; reconnecting after the backoff");
        self.state = State::Backoff(Instant::now() + delay);
        LinkEvent::Down {
            error,
            attempts: self.backoff.failures(),
        }
    }

    fn stop(&mut self) {
        if let State::Connecting(handle) = &self.state {
            handle.abort();
        }
        self.state = State::Stopped;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let State::Up { sender, .. } = &self.state {
            sender.close();
        }
        self.stop();
    }
}

fn spawn_connect(
    options: Arc<SessionOptions>,
) -> JoinHandle<Result<(SessionSender, SessionEvents), LmntError>> {
    tokio::spawn(async move { connect(&options).await })
}

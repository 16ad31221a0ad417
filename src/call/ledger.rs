//! The call's text-and-audio ledger: which text belongs to which utterance, which LMNT nonce
//! acknowledges it, which audio bytes belong to it, and what must be sent again when the
//! LMNT session is replaced. A plain state machine: no I/O, no clock.
//!
//! Contract with LMNT (lmnt-protocol.md §3.4): frames are handled in order, so all audio
//! between `flush_complete(n-1)` and `flush_complete(n)` belongs to the utterance flushed by
//! `n`; audio that arrives while no flush is outstanding belongs to the open utterance (the
//! server may speak at a sentence end before the flush). After `reset`, audio is dropped until
//! its `reset_complete`.
//!
//! Recovery: when a session dies, every utterance not yet acknowledged is sent again on the
//! next session (its text, then a flush), followed by the open utterance's text. The audio the
//! dead session already delivered for an utterance is skipped byte for byte in the new
//! session's audio for it, so the caller never hears a part twice.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::control::ControlError;

/// What the ledger asks the LMNT session to do, in order. The ledger owns the nonces: the
/// session sends exactly these (flushes and resets numbered together from 1 on every new
/// session, as LMNT's SDKs do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmntCommand {
    Text(String),
    Flush { nonce: u64 },
    Reset { nonce: u64 },
}

/// Where a chunk of LMNT audio goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioRoute {
    /// Play it as part of this utterance.
    Play { utterance: u64, audio: Bytes },
    /// Dropped on purpose: pre-reset audio, or audio the caller already heard before a
    /// reconnect.
    Discard,
    /// Audio with no utterance to belong to (the server spoke without text): a protocol
    /// anomaly, dropped.
    Unexpected,
}

/// Per-call text limits (from `limits.*` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct TextLimits {
    pub max_text_message_bytes: usize,
    pub max_utterance_bytes: usize,
}

#[derive(Debug)]
struct Utterance {
    number: u64,
    text: String,
    /// The nonce of this utterance's flush on the current session; `None` for the open one
    /// and for flushed ones not yet sent on the current session.
    nonce: Option<u64>,
    /// Audio bytes routed to playout for this utterance, over all sessions.
    played_bytes: u64,
    /// Audio bytes still to skip on the current session (already heard before a reconnect).
    skip_bytes: u64,
}

impl Utterance {
    fn new(number: u64) -> Self {
        Utterance {
            number,
            text: String::new(),
            nonce: None,
            played_bytes: 0,
            skip_bytes: 0,
        }
    }
}

/// The ledger of one call. See the module docs for the contract.
#[derive(Debug)]
pub struct Ledger {
    limits: TextLimits,
    /// Flushed, not yet acknowledged utterances, oldest first.
    flushed: VecDeque<Utterance>,
    /// The utterance collecting text (number = flushes so far + 1).
    open: Utterance,
    /// Whether an LMNT session is up; commands are produced only then.
    connected: bool,
    /// The last nonce handed out on the current session.
    last_nonce: u64,
    /// Audio is dropped until `reset_complete` with this nonce.
    awaiting_reset: Option<u64>,
}

impl Ledger {
    /// A ledger with no session yet: text is held until [`Ledger::on_connected`].
    pub fn new(limits: TextLimits) -> Self {
        Ledger {
            limits,
            flushed: VecDeque::new(),
            open: Utterance::new(1),
            connected: false,
            last_nonce: 0,
            awaiting_reset: None,
        }
    }

    /// The number the next flush will give its utterance.
    pub fn open_utterance(&self) -> u64 {
        self.open.number
    }

    /// Utterances flushed but not yet acknowledged by LMNT.
    pub fn unacknowledged(&self) -> impl Iterator<Item = u64> + '_ {
        self.flushed.iter().map(|u| u.number)
    }

    /// Bot text for the open utterance. A message over a limit is rejected whole.
    pub fn on_text(&mut self, text: &str) -> Result<Vec<LmntCommand>, ControlError> {
        if text.len() > self.limits.max_text_message_bytes {
            return Err(ControlError::TextTooLong {
                len: text.len(),
                max: self.limits.max_text_message_bytes,
            });
        }
        let len = self.open.text.len() + text.len();
        if len > self.limits.max_utterance_bytes {
            return Err(ControlError::UtteranceTooLong {
                len,
                max: self.limits.max_utterance_bytes,
            });
        }
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.open.text.push_str(text);
        Ok(if self.connected {
            vec![LmntCommand::Text(text.to_owned())]
        } else {
            Vec::new()
        })
    }

    /// Bot flush: closes the open utterance. Returns its number and the commands to send.
    pub fn on_flush(&mut self) -> Result<(u64, Vec<LmntCommand>), ControlError> {
        if self.open.text.trim().is_empty() {
            return Err(ControlError::EmptyUtterance);
        }
        let next = Utterance::new(self.open.number + 1);
        let mut utterance = std::mem::replace(&mut self.open, next);
        let number = utterance.number;
        let mut commands = Vec::new();
        if self.connected {
            let nonce = self.next_nonce();
            utterance.nonce = Some(nonce);
            commands.push(LmntCommand::Flush { nonce });
        }
        self.flushed.push_back(utterance);
        Ok((number, commands))
    }

    /// Bot clear: drops every unacknowledged utterance and the open text. Returns the
    /// utterances dropped and the reset to send (none without a session: the next session
    /// simply never hears of them).
    pub fn on_clear(&mut self) -> (Vec<u64>, Vec<LmntCommand>) {
        let dropped: Vec<u64> = self.flushed.drain(..).map(|u| u.number).collect();
        self.open = Utterance::new(self.open.number);
        if !self.connected {
            return (dropped, Vec::new());
        }
        let nonce = self.next_nonce();
        self.awaiting_reset = Some(nonce);
        (dropped, vec![LmntCommand::Reset { nonce }])
    }

    /// LMNT cannot be had for the flushed utterances: they are given up (returned with their
    /// text) and will not be sent again. The open utterance's text is kept for the next
    /// session: the bot has not finished it yet.
    pub fn abandon_flushed(&mut self) -> Vec<(u64, String)> {
        self.flushed.drain(..).map(|u| (u.number, u.text)).collect()
    }

    /// The utterance LMNT's audio belongs to now, which its `timestamps` (sent right after
    /// the audio they describe) describe too; `None` while a reset is awaited.
    pub fn audio_utterance(&self) -> Option<u64> {
        if self.awaiting_reset.is_some() {
            return None;
        }
        match self.flushed.front() {
            Some(u) => Some(u.number),
            None if !self.open.text.is_empty() => Some(self.open.number),
            None => None,
        }
    }

    /// A new LMNT session is up: everything not acknowledged is sent again, in order.
    pub fn on_connected(&mut self) -> Vec<LmntCommand> {
        self.connected = true;
        self.last_nonce = 0;
        self.awaiting_reset = None;
        let mut commands = Vec::new();
        let mut nonce = 0;
        for utterance in &mut self.flushed {
            utterance.skip_bytes = utterance.played_bytes;
            nonce += 1;
            utterance.nonce = Some(nonce);
            commands.push(LmntCommand::Text(utterance.text.clone()));
            commands.push(LmntCommand::Flush { nonce });
        }
        self.last_nonce = nonce;
        self.open.skip_bytes = self.open.played_bytes;
        if !self.open.text.is_empty() {
            commands.push(LmntCommand::Text(self.open.text.clone()));
        }
        commands
    }

    /// The LMNT session is gone; nothing is sent until the next [`Ledger::on_connected`].
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        for utterance in &mut self.flushed {
            utterance.nonce = None;
        }
    }

    /// Routes one chunk of LMNT audio.
    pub fn on_audio(&mut self, audio: Bytes) -> AudioRoute {
        if self.awaiting_reset.is_some() {
            return AudioRoute::Discard;
        }
        let utterance = match self.flushed.front_mut() {
            Some(u) => u,
            None if !self.open.text.is_empty() => &mut self.open,
            None => return AudioRoute::Unexpected,
        };
        let skip = utterance.skip_bytes.min(audio.len() as u64);
        utterance.skip_bytes -= skip;
        let audio = audio.slice(skip as usize..);
        if audio.is_empty() {
            return AudioRoute::Discard;
        }
        utterance.played_bytes += audio.len() as u64;
        AudioRoute::Play {
            utterance: utterance.number,
            audio,
        }
    }

    /// LMNT acknowledged a flush. Returns the utterance whose audio is now complete, with its
    /// text (the ledger's part in it is over), or `None` for a nonce that belongs to nothing
    /// live (e.g. a flush cleared before its acknowledgement).
    pub fn on_flush_complete(&mut self, nonce: u64) -> Option<(u64, String)> {
        if self.awaiting_reset.is_some() {
            return None;
        }
        match self.flushed.front() {
            Some(u) if u.nonce == Some(nonce) => {
                self.flushed.pop_front().map(|u| (u.number, u.text))
            }
            _ => None,
        }
    }

    /// LMNT acknowledged a reset: audio flows again.
    pub fn on_reset_complete(&mut self, nonce: u64) {
        if self.awaiting_reset == Some(nonce) {
            self.awaiting_reset = None;
        }
    }

    fn next_nonce(&mut self) -> u64 {
        self.last_nonce += 1;
        self.last_nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TextLimits = TextLimits {
        max_text_message_bytes: 16,
        max_utterance_bytes: 32,
    };

    fn play(route: AudioRoute) -> (u64, Vec<u8>) {
        match route {
            AudioRoute::Play { utterance, audio } => (utterance, audio.to_vec()),
            other => panic!("expected audio to play, got {other:?}"),
        }
    }

    fn connected() -> Ledger {
        let mut ledger = Ledger::new(LIMITS);
        assert!(ledger.on_connected().is_empty());
        ledger
    }

    #[test]
    fn utterances_are_numbered_by_flushes_and_audio_follows_acknowledgements() {
        let mut l = connected();
        assert_eq!(
            l.on_text("ab").unwrap(),
            vec![LmntCommand::Text("ab".into())]
        );
        assert_eq!(
            l.on_flush().unwrap(),
            (1, vec![LmntCommand::Flush { nonce: 1 }])
        );
        l.on_text("cd").unwrap();
        assert_eq!(
            l.on_flush().unwrap(),
            (2, vec![LmntCommand::Flush { nonce: 2 }])
        );
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"1111"))),
            (1, b"1111".to_vec())
        );
        assert_eq!(l.on_flush_complete(1), Some((1, "ab".into())));
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"22"))),
            (2, b"22".to_vec())
        );
        assert_eq!(l.on_flush_complete(2), Some((2, "cd".into())));
        assert_eq!(l.on_audio(Bytes::from_static(b"?")), AudioRoute::Unexpected);
    }

    #[test]
    fn audio_before_the_flush_belongs_to_the_open_utterance() {
        let mut l = connected();
        l.on_text("Hello. ").unwrap();
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"hh"))),
            (1, b"hh".to_vec())
        );
    }

    #[test]
    fn limits_reject_the_whole_message_and_keep_what_came_before() {
        let mut l = connected();
        assert_eq!(
            l.on_text(&"x".repeat(17)).unwrap_err().code(),
            "text_too_long"
        );
        l.on_text(&"y".repeat(16)).unwrap();
        l.on_text(&"y".repeat(16)).unwrap();
        assert_eq!(l.on_text("z").unwrap_err().code(), "utterance_too_long");
        assert_eq!(l.on_flush().unwrap().0, 1);
        assert_eq!(l.on_flush().unwrap_err().code(), "empty_utterance");
    }

    #[test]
    fn clear_drops_audio_until_reset_complete_and_ignores_stale_acks() {
        let mut l = connected();
        l.on_text("ab").unwrap();
        l.on_flush().unwrap();
        l.on_text("cd").unwrap();
        let (dropped, commands) = l.on_clear();
        assert_eq!(dropped, vec![1]);
        assert_eq!(commands, vec![LmntCommand::Reset { nonce: 2 }]);
        assert_eq!(l.on_audio(Bytes::from_static(b"old")), AudioRoute::Discard);
        assert_eq!(l.on_flush_complete(1), None);
        l.on_reset_complete(2);
        l.on_text("ef").unwrap();
        assert_eq!(
            l.on_flush().unwrap(),
            (2, vec![LmntCommand::Flush { nonce: 3 }])
        );
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"new"))),
            (2, b"new".to_vec())
        );
    }

    #[test]
    fn reconnect_replays_unacknowledged_text_and_skips_audio_already_heard() {
        let mut l = connected();
        l.on_text("one").unwrap();
        l.on_flush().unwrap();
        l.on_text("two").unwrap();
        l.on_flush().unwrap();
        l.on_text("thr").unwrap();
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"abc"))),
            (1, b"abc".to_vec())
        );
        l.on_disconnected();
        assert!(
            l.on_text("ee").unwrap().is_empty(),
            "nothing is sent while disconnected"
        );
        assert_eq!(
            l.on_connected(),
            vec![
                LmntCommand::Text("one".into()),
                LmntCommand::Flush { nonce: 1 },
                LmntCommand::Text("two".into()),
                LmntCommand::Flush { nonce: 2 },
                LmntCommand::Text("three".into()),
            ]
        );
        // The new session speaks utterance 1 from its start: the first 3 bytes were heard.
        assert_eq!(l.on_audio(Bytes::from_static(b"ab")), AudioRoute::Discard);
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"cdef"))),
            (1, b"def".to_vec())
        );
        assert_eq!(l.on_flush_complete(1), Some((1, "one".into())));
        assert_eq!(
            play(l.on_audio(Bytes::from_static(b"xy"))),
            (2, b"xy".to_vec())
        );
        assert_eq!(l.on_flush_complete(2), Some((2, "two".into())));
        assert_eq!(l.open_utterance(), 3);
    }

    #[test]
    fn abandoning_keeps_the_open_text_for_the_next_session() {
        let mut l = connected();
        l.on_text("one").unwrap();
        l.on_flush().unwrap();
        l.on_text("tw").unwrap();
        l.on_disconnected();
        assert_eq!(l.abandon_flushed(), vec![(1, "one".to_owned())]);
        assert_eq!(l.on_connected(), vec![LmntCommand::Text("tw".into())]);
        l.on_text("o").unwrap();
        assert_eq!(l.on_flush().unwrap().0, 2);
    }

    #[test]
    fn clear_without_a_session_needs_no_reset() {
        let mut l = Ledger::new(LIMITS);
        l.on_text("ab").unwrap();
        l.on_flush().unwrap();
        assert_eq!(l.on_clear(), (vec![1], vec![]));
        assert!(l.on_connected().is_empty());
    }
}

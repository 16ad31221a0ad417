//! A caller's early nomination, handed to the ICE agent a second time.
//!
//! webrtc-rs 0.21's controlled ICE agent drops a Binding request carrying USE-CANDIDATE that
//! arrives before its own check of the pair has succeeded, with no answer and no memory of it
//! (RFC 8445 §7.3.1.5 says to nominate the pair once that check succeeds). A caller that
//! nominates at once (str0m does, within a millisecond of its first check) then waits for its
//! retransmission: 500 ms of every call's set-up. So the first nomination is copied and read
//! again once this agent's check has its answer.

use std::net::SocketAddr;

/// The caller's first nomination, held until this agent's own check has an answer, then
/// delivered again (once per socket). A repeated Binding request is harmless: it is
/// answered again, as a retransmission would be.
#[derive(Debug, Default)]
pub(super) enum NominationReplay {
    /// No nomination seen yet.
    #[default]
    Watching,
    /// A nomination was delivered; a copy waits for a Binding success response.
    Held(Vec<u8>, SocketAddr),
    /// The copy is due: deliver it at the next read.
    Due(Vec<u8>, SocketAddr),
    /// Replayed (or never needed): nothing more to do.
    Done,
}

impl NominationReplay {
    /// Looks at one datagram the socket delivered.
    pub(super) fn observe(&mut self, datagram: &[u8], from: SocketAddr) {
        *self = match (std::mem::take(self), stun_kind(datagram)) {
            (NominationReplay::Watching, Some(StunKind::Nomination)) => {
                NominationReplay::Held(datagram.to_vec(), from)
            }
            (NominationReplay::Held(copy, from), Some(StunKind::BindingSuccess)) => {
                NominationReplay::Due(copy, from)
            }
            (state, _) => state,
        };
    }

    /// The held copy, once it is due.
    pub(super) fn take_due(&mut self) -> Option<(Vec<u8>, SocketAddr)> {
        match std::mem::replace(self, NominationReplay::Done) {
            NominationReplay::Due(copy, from) => Some((copy, from)),
            other => {
                *self = other;
                None
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum StunKind {
    /// A Binding request with USE-CANDIDATE.
    Nomination,
    /// A Binding success response.
    BindingSuccess,
}

/// What a datagram is, if it is one of the two STUN messages [`NominationReplay`] watches.
fn stun_kind(datagram: &[u8]) -> Option<StunKind> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USE_CANDIDATE: u16 = 0x0025;
    if datagram.len() < 20 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    match u16::from_be_bytes([datagram[0], datagram[1]]) {
        0x0101 => Some(StunKind::BindingSuccess),
        0x0001 => {
            let mut attrs = &datagram[20..];
            while attrs.len() >= 4 {
                let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
                if kind == USE_CANDIDATE {
                    return Some(StunKind::Nomination);
                }
                let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
                attrs = attrs.get(4 + len.next_multiple_of(4)..)?;
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN message: `kind`, then attributes (type, value) padded to 4 bytes.
    fn stun(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = kind.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    fn from() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5000))
    }

    #[test]
    fn tells_a_nomination_and_a_binding_success_from_other_datagrams() {
        let username: (u16, &[u8]) = (0x0006, b"abcd:efg");
        let nomination = stun(0x0001, &[username, (0x0025, b"")]);
        assert_eq!(stun_kind(&nomination), Some(StunKind::Nomination));
        assert_eq!(stun_kind(&stun(0x0001, &[username])), None);
        assert_eq!(
            stun_kind(&stun(0x0101, &[])),
            Some(StunKind::BindingSuccess)
        );
        let rtp = [
            0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42, 0xAA, 0xAA, 0xAA, 0xAA, 0, 0, 0, 0,
        ];
        assert_eq!(stun_kind(&rtp), None);
        // Truncated or lying attribute lengths end the walk, never panic.
        assert_eq!(stun_kind(&nomination[..22]), None);
        let mut lying = stun(0x0001, &[username]);
        lying[22..24].copy_from_slice(&0xfff0u16.to_be_bytes());
        assert_eq!(stun_kind(&lying), None);
    }

    #[test]
    fn an_early_nomination_is_replayed_once_after_the_first_binding_success() {
        let nomination = stun(0x0001, &[(0x0025, b"")]);
        let success = stun(0x0101, &[]);
        let mut replay = NominationReplay::default();
        replay.observe(&stun(0x0001, &[]), from());
        assert!(replay.take_due().is_none());
        replay.observe(&nomination, from());
        assert!(
            replay.take_due().is_none(),
            "held until this agent's check is answered"
        );
        replay.observe(&success, from());
        let (copy, at) = replay.take_due().expect("due after the success response");
        assert_eq!((copy, at), (nomination.clone(), from()));
        // Once only, whatever comes next.
        replay.observe(&nomination, from());
        replay.observe(&success, from());
        assert!(replay.take_due().is_none());
    }
}

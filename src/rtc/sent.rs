//! Knowing when a frame has left: events that claim "this audio has been played out" must
//! not run ahead of the datagram carrying it. The peer reports every outbound RTP packet of
//! the call's stream as its datagram is handed to the kernel.
//!
//! The report is the packet's sequence number, read from the RTP header (SRTP leaves it in
//! the clear), published on a `watch`: waiting costs a wake-up only while someone waits.

use tokio::sync::watch;

/// The sequence number of the newest outbound RTP packet of one stream whose datagram has
/// been handed to the kernel (or whose send the kernel refused: the stack is done with it
/// either way). `None` until the first one.
pub type SentReceiver = watch::Receiver<Option<u16>>;

/// The sequence number of `datagram` when it is an RTP (or SRTP) packet of stream `ssrc`.
/// STUN (first byte 0-3), DTLS (20-63) and RTCP (payload types 64-95, RFC 5761) are not.
pub(super) fn rtp_sequence_of(datagram: &[u8], ssrc: u32) -> Option<u16> {
    const RTP_HEADER_BYTES: usize = 12;
    if datagram.len() < RTP_HEADER_BYTES || datagram[0] >> 6 != 2 {
        return None;
    }
    if (64..=95).contains(&(datagram[1] & 0x7f)) {
        return None;
    }
    let packet_ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    (packet_ssrc == ssrc).then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(payload_type: u8, sequence: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, payload_type];
        p.extend_from_slice(&sequence.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xAA; 20]);
        p
    }

    #[test]
    fn reads_the_sequence_of_the_watched_stream_only() {
        assert_eq!(rtp_sequence_of(&rtp(111, 7, 42), 42), Some(7));
        assert_eq!(
            rtp_sequence_of(&rtp(0x80 | 101, 65535, 42), 42),
            Some(65535)
        );
        assert_eq!(rtp_sequence_of(&rtp(111, 7, 43), 42), None);
        // RTCP sender report (PT 200), STUN, DTLS, runts.
        assert_eq!(rtp_sequence_of(&rtp(200, 7, 42), 42), None);
        assert_eq!(
            rtp_sequence_of(&[0x00, 0x01, 0, 8, 0x21, 0x12, 0xA4, 0x42], 42),
            None
        );
        assert_eq!(rtp_sequence_of(&[22; 40], 42), None);
        assert_eq!(rtp_sequence_of(&[0x80, 111, 0, 1], 42), None);
    }
}

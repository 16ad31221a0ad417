//! Checks on a caller's SDP offer made before webrtc-rs sees it: size, text, and an audio
//! m-line that offers Opus. Pure functions over the text; no I/O.

use super::RtcError;

/// Largest offer accepted here. Browser offers with audio only are 2 to 6 KB; the HTTP layer
/// applies the operator's (smaller) `max_sdp_bytes` first, this is the last line of defence.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// What the offer's audio section says about Opus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusOffer {
    /// The payload type the caller assigned to `opus/48000`.
    pub payload_type: u8,
}

/// Validates `sdp` as an offer we can answer.
///
/// Returns the Opus payload type of the first audio m-line that offers Opus. Errors:
/// [`RtcError::OfferTooLarge`] above [`MAX_OFFER_BYTES`], [`RtcError::BadOffer`] when the text
/// is not an SDP offer (no `v=0` first line, control characters), [`RtcError::NoAudio`] when no
/// `m=audio` line exists, [`RtcError::NoOpus`] when no audio m-line lists an `opus/48000`
/// rtpmap among its formats.
pub fn check_offer(sdp: &str) -> Result<OpusOffer, RtcError> {
    if sdp.len() > MAX_OFFER_BYTES {
        return Err(RtcError::OfferTooLarge {
            size: sdp.len(),
            limit: MAX_OFFER_BYTES,
        });
    }
    if sdp
        .chars()
        .any(|c| c.is_control() && c != '\r' && c != '\n' && c != '\t')
    {
        return Err(RtcError::BadOffer("control characters in SDP".into()));
    }
    let mut lines = sdp.lines().map(str::trim_end).filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(RtcError::BadOffer("SDP does not start with v=0".into()));
    }

    // Walk media sections: for each audio one, collect its formats and rtpmaps.
    let mut saw_audio = false;
    let mut section: Option<AudioSection> = None;
    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(found) = section.take().and_then(|s| s.opus()) {
                return Ok(found);
            }
            let mut parts = m.split_ascii_whitespace();
            if parts.next() == Some("audio") {
                saw_audio = true;
                // port, proto, then formats
                let formats = parts.skip(2).filter_map(|f| f.parse::<u8>().ok()).collect();
                section = Some(AudioSection {
                    formats,
                    opus_pts: Vec::new(),
                });
            }
        } else if let (Some(s), Some(map)) = (section.as_mut(), line.strip_prefix("a=rtpmap:")) {
            let mut parts = map.split_ascii_whitespace();
            let pt = parts.next().and_then(|p| p.parse::<u8>().ok());
            let codec = parts.next().unwrap_or("");
            let mut codec_parts = codec.split('/');
            let name = codec_parts.next().unwrap_or("");
            let rate = codec_parts.next().unwrap_or("");
            if let Some(pt) = pt {
                if name.eq_ignore_ascii_case("opus") && rate == "48000" {
                    s.opus_pts.push(pt);
                }
            }
        }
    }
    if let Some(found) = section.and_then(|s| s.opus()) {
        return Ok(found);
    }
    Err(if saw_audio {
        RtcError::NoOpus
    } else {
        RtcError::NoAudio
    })
}

/// One `m=audio` section being read.
struct AudioSection {
    formats: Vec<u8>,
    opus_pts: Vec<u8>,
}

impl AudioSection {
    /// The first Opus payload type that is also listed on the m-line; None when there is none.
    fn opus(&self) -> Option<OpusOffer> {
        self.opus_pts
            .iter()
            .find(|pt| self.formats.contains(pt))
            .map(|&payload_type| OpusOffer { payload_type })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn finds_opus_payload_type() {
        assert_eq!(check_offer(OPUS_OFFER).unwrap().payload_type, 111);
    }

    #[test]
    fn opus_in_second_audio_section() {
        let sdp = "v=0\nm=audio 9 RTP/SAVPF 0\na=rtpmap:0 PCMU/8000\nm=audio 9 RTP/SAVPF 96\na=rtpmap:96 OPUS/48000/2\n";
        assert_eq!(check_offer(sdp).unwrap().payload_type, 96);
    }

    #[test]
    fn named_errors() {
        assert!(matches!(check_offer("hello"), Err(RtcError::BadOffer(_))));
        assert!(matches!(check_offer(""), Err(RtcError::BadOffer(_))));
        assert!(matches!(
            check_offer("v=0\r\nm=video 9 RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"),
            Err(RtcError::NoAudio)
        ));
        assert!(matches!(
            check_offer("v=0\r\nm=audio 9 RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n"),
            Err(RtcError::NoOpus)
        ));
        // rtpmap for opus whose payload type is not on the m-line
        assert!(matches!(
            check_offer("v=0\r\nm=audio 9 RTP/SAVPF 0\r\na=rtpmap:111 opus/48000/2\r\n"),
            Err(RtcError::NoOpus)
        ));
        assert!(matches!(
            check_offer(&"v=0\n".repeat(MAX_OFFER_BYTES)),
            Err(RtcError::OfferTooLarge { .. })
        ));
        assert!(matches!(
            check_offer("v=0\r\n\0m=audio"),
            Err(RtcError::BadOffer(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and a byte-rotated copy of a real offer.
        let bytes = OPUS_OFFER.as_bytes();
        for cut in 0..bytes.len() {
            let _ = check_offer(&String::from_utf8_lossy(&bytes[..cut]));
            let rotated: Vec<u8> = bytes.iter().map(|b| b.wrapping_add(cut as u8)).collect();
            let _ = check_offer(&String::from_utf8_lossy(&rotated));
        }
    }
}

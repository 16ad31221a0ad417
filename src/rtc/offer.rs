//! Checks on a caller's SDP offer made before webrtc-rs sees it (size, text, an audio
//! m-line) and the audio formats it offers, for [`crate::codec::negotiate`]. Pure functions
//! over the text; no I/O.

use super::RtcError;

/// Largest offer accepted here. Browser offers with audio only are 2 to 6 KB; the HTTP layer
/// applies the operator's (smaller) `max_sdp_bytes` first, this is the last line of defence.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// One audio format an offer lists: a payload type on the m-line and what it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFormat {
    /// The payload type the caller assigned.
    pub payload_type: u8,
    /// The encoding name as written (`opus`, `PCMU`...).
    pub name: String,
    /// The RTP clock rate.
    pub clock_rate: u32,
}

/// Validates `sdp` as an offer with audio and returns the formats of its audio sections, in
/// the offer's order (sections in order, formats in m-line order).
///
/// A format counts when its payload type is on its section's m-line and it has an
/// `a=rtpmap`, or is one of RFC 3551's static audio types that need none (0 PCMU, 8 PCMA).
/// Errors: [`RtcError::OfferTooLarge`] above [`MAX_OFFER_BYTES`], [`RtcError::BadOffer`] when
/// the text is not an SDP offer (no `v=0` first line, control characters),
/// [`RtcError::NoAudio`] when no `m=audio` line exists.
pub fn check_offer(sdp: &str) -> Result<Vec<OfferedFormat>, RtcError> {
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

    let mut sections: Vec<AudioSection> = Vec::new();
    let mut in_audio = false;
    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_ascii_whitespace();
            in_audio = parts.next() == Some("audio");
            if in_audio {
                // port, proto, then formats
                let formats = parts.skip(2).filter_map(|f| f.parse::<u8>().ok()).collect();
                sections.push(AudioSection {
                    formats,
                    rtpmaps: Vec::new(),
                });
            }
        } else if let (true, Some(section), Some(map)) = (
            in_audio,
            sections.last_mut(),
            line.strip_prefix("a=rtpmap:"),
        ) {
            let mut parts = map.split_ascii_whitespace();
            let pt = parts.next().and_then(|p| p.parse::<u8>().ok());
            let mut codec = parts.next().unwrap_or("").split('/');
            let name = codec.next().unwrap_or("");
            let rate = codec.next().and_then(|r| r.parse::<u32>().ok());
            if let (Some(payload_type), Some(clock_rate), false) = (pt, rate, name.is_empty()) {
                section.rtpmaps.push(OfferedFormat {
                    payload_type,
                    name: name.to_owned(),
                    clock_rate,
                });
            }
        }
    }
    if sections.is_empty() {
        return Err(RtcError::NoAudio);
    }
    Ok(sections.iter().flat_map(AudioSection::offered).collect())
}

/// One `m=audio` section as read.
struct AudioSection {
    formats: Vec<u8>,
    rtpmaps: Vec<OfferedFormat>,
}

impl AudioSection {
    /// The m-line's formats that have a mapping, in m-line order.
    fn offered(&self) -> impl Iterator<Item = OfferedFormat> + '_ {
        self.formats.iter().filter_map(|&pt| {
            self.rtpmaps
                .iter()
                .find(|m| m.payload_type == pt)
                .cloned()
                .or_else(|| static_format(pt))
        })
    }
}

/// RFC 3551's static audio payload types that offers may list without an rtpmap.
fn static_format(payload_type: u8) -> Option<OfferedFormat> {
    let name = match payload_type {
        0 => "PCMU",
        8 => "PCMA",
        _ => return None,
    };
    Some(OfferedFormat {
        payload_type,
        name: name.to_owned(),
        clock_rate: 8000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";

    fn names(formats: &[OfferedFormat]) -> Vec<(u8, &str, u32)> {
        formats
            .iter()
            .map(|f| (f.payload_type, f.name.as_str(), f.clock_rate))
            .collect()
    }

    #[test]
    fn lists_the_formats_in_offer_order() {
        assert_eq!(
            names(&check_offer(OPUS_OFFER).unwrap()),
            [(111, "opus", 48000), (0, "PCMU", 8000)]
        );
    }

    #[test]
    fn every_audio_section_counts_and_static_types_need_no_rtpmap() {
        let sdp = "v=0\nm=audio 9 RTP/SAVPF 8\nm=video 9 RTP/SAVPF 96\na=rtpmap:96 VP8/90000\nm=audio 9 RTP/SAVPF 96\na=rtpmap:96 OPUS/48000/2\n";
        assert_eq!(
            names(&check_offer(sdp).unwrap()),
            [(8, "PCMA", 8000), (96, "OPUS", 48000)]
        );
    }

    #[test]
    fn named_errors() {
        assert!(matches!(check_offer("hello"), Err(RtcError::BadOffer(_))));
        assert!(matches!(check_offer(""), Err(RtcError::BadOffer(_))));
        assert!(matches!(
            check_offer("v=0\r\nm=video 9 RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"),
            Err(RtcError::NoAudio)
        ));
        // rtpmap for opus whose payload type is not on the m-line
        assert_eq!(
            names(
                &check_offer("v=0\r\nm=audio 9 RTP/SAVPF 0\r\na=rtpmap:111 opus/48000/2\r\n")
                    .unwrap()
            ),
            [(0, "PCMU", 8000)]
        );
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

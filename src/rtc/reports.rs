//! The caller's RTCP reception reports about the stream we send.
//!
//! webrtc-rs 0.21 ends inbound RTCP inside its interceptor chain unless an interceptor marks
//! a packet [`Attribute::DeliverToApplication`]; a marked packet about a stream we send
//! reaches that track's [`TrackLocal::poll`] as `TrackLocalEvent::OnRtcpPacket`.
//! [`ReportForwarder`] marks the compound packets that carry reception reports (receiver
//! and sender reports), after every stock interceptor has read them; [`read_reports`] takes
//! the blocks about our SSRC off the send track.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport as RtcpReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::Registry;

use crate::codec::loss::ReceiverReport;

/// Where [`ReportForwarder`] sits in the chain: application-most (above the stock jitter
/// buffer at 13 000), so the stock report interceptors have read each packet first.
const FORWARDER_SLOT: usize = 14_000;

/// `registry` with the [`ReportForwarder`] added.
pub(super) fn with_report_forwarder(registry: Registry) -> Registry {
    registry.with(Slot::from(FORWARDER_SLOT), ReportForwarder::default())
}

/// Marks inbound RTCP that carries reception reports for the application; passes everything
/// else as it is (unmarked RTCP still stops at the end of the chain).
#[derive(Default)]
struct ReportForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// The reception report blocks of one RTCP packet (receiver or sender report), if any.
fn blocks(packet: &dyn rtc::rtcp::Packet) -> &[ReceptionReport] {
    let any = packet.as_any();
    if let Some(rr) = any.downcast_ref::<RtcpReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else {
        &[]
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets.iter().any(|p| !blocks(p.as_ref()).is_empty()) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for ReportForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Reads the send track's RTCP until the track is unbound (the call closes), handing each
/// reception report about `ssrc` to `report`. Must start after the track is bound
/// (`add_track`), or it ends at once.
pub(super) async fn read_reports(
    track: Arc<dyn TrackLocal>,
    ssrc: u32,
    mut report: impl FnMut(ReceiverReport),
) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for block in packets.iter().flat_map(|p| blocks(p.as_ref())) {
            if block.ssrc == ssrc {
                report(ReceiverReport {
                    fraction_lost: block.fraction_lost,
                    jitter: block.jitter,
                });
            }
        }
    }
}

//! The caller's RTCP reception reports about the stream we send.
//!
//! webrtc-rs 0.21 ends inbound RTCP inside its interceptor chain unless an interceptor marks
//! a packet [`Attribute::DeliverToApplication`]; a marked packet comes out of the peer
//! connection's `poll_read`. [`ReportForwarder`] marks the compound packets that carry
//! reception reports (receiver and sender reports), after every stock interceptor has read
//! them; the peer task takes the [`blocks`] about our SSRC.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport as RtcpReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;

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
pub(super) fn blocks(packet: &dyn rtc::rtcp::Packet) -> &[ReceptionReport] {
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

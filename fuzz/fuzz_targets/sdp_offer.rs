//! AFL target `sdp_offer`: [`lmnt_bridge_fuzz::sdp_offer`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::sdp_offer(data));
}

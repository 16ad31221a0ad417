//! AFL target `caller_rtp`: [`lmnt_bridge_fuzz::caller_rtp`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::caller_rtp(data));
}

//! AFL target `dtmf`: [`lmnt_bridge_fuzz::dtmf`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::dtmf(data));
}

//! AFL target `control`: [`lmnt_bridge_fuzz::control`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::control(data));
}

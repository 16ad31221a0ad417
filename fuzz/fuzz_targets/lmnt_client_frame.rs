//! AFL target `lmnt_client_frame`: [`lmnt_bridge_fuzz::lmnt_client_frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::lmnt_client_frame(data));
}

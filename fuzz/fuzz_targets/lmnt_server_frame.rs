//! AFL target `lmnt_server_frame`: [`lmnt_bridge_fuzz::lmnt_server_frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::lmnt_server_frame(data));
}

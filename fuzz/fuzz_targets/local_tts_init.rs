//! AFL target `local_tts_init`: [`lmnt_bridge_fuzz::local_tts_init`].

fn main() {
    afl::fuzz!(|data: &[u8]| lmnt_bridge_fuzz::local_tts_init(data));
}

pub mod webrtc_caller;
